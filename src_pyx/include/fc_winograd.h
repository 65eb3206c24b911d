/* fc_winograd.h: the 1-D Winograd transforms of conv_winograd.pyx, n columns at a time.
 *
 * Every 2-D transform of conv_winograd.pyx, (B^T d B) of an input tile, A^T M A of a
 * transformed output tile and A dY A^T of a tile of dy (for dW), is two passes of one 1-D
 * transform (columns, then rows), and
 * the driver lays the tiles out so that each pass works on n tiles at once: the a-th input
 * of the 1-D transform for column i is in[a * in_step + i], its j-th output goes to
 * out[j * out_step + i]. The loop over i is then plain vector code: 4 floats (2 doubles)
 * per SSE2 instruction on every x86-64, and 8 (4) in the copy compiled for AVX2, which
 * fc_wino_1d_* calls where fc_isa_level() (fc_isa.h) says so. The copies do the
 * same operations in the same order (no FMA), so they give the same bits.
 *
 *   fc_wino_in4_*   B^T of F(2x2, 3x3):  4 values -> 4   (points 0, 1, -1, infinity)
 *   fc_wino_in6_*   B^T of F(4x4, 3x3):  6 values -> 6   (points 0, 1, -1, 2, -2, infinity)
 *   fc_wino_out4_*  A^T of F(2x2, 3x3):  4 values -> 2
 *   fc_wino_out6_*  A^T of F(4x4, 3x3):  6 values -> 4
 *   fc_wino_dy4_*   A   of F(2x2, 3x3):  2 values -> 4   (the transpose of A^T, for dW)
 *   fc_wino_dy6_*   A   of F(4x4, 3x3):  4 values -> 6
 *
 * and around them, fc_wino_gather_f32 and fc_wino_scatter_f32: the input tiles of one
 * plane side by side, and the output tiles back into their plane (transposes, by 8 x 8
 * blocks with AVX2: fc_transpose8.h); fc_wino_filter_transform_* (G g G^T) and
 * fc_wino_filter_gradient_* (G^T Mw G), 8 filters at a time.
 *
 * The matrices are written out (with their derivation) in fastconv/reference/conv_winograd.py.
 * Why C: the outputs are several streams of one buffer at a distance gcc cannot see, so it
 * would only vectorise the loop behind a runtime test of every pair of streams, more pairs
 * than it is willing to test; `#pragma GCC ivdep` states that they never overlap. Each
 * transform is written once for a type T and instantiated for float and double (C has no
 * templates, hence the macro). Sums are in a fixed order: the same bits for any n.
 */
#ifndef FC_WINOGRAD_H
#define FC_WINOGRAD_H

#include <stddef.h>

#include "fc_isa.h"
#include "fc_transpose8.h"

#if defined(__GNUC__) && !defined(__clang__)
#define FC_IVDEP _Pragma("GCC ivdep")
#elif defined(__clang__)
#define FC_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define FC_IVDEP
#endif

#define FC_WINO_TRANSFORMS(T, SUFFIX, ATTR)                                                \
/* B^T of F(2x2, 3x3): t0 = d0 - d2, t1 = d1 + d2, t2 = d2 - d1, t3 = d1 - d3 */          \
ATTR static void fc_wino_in4_##SUFFIX(const T *in, ptrdiff_t in_step, T *out,        \
                                        ptrdiff_t out_step, ptrdiff_t n)               \
{                                                                                      \
    const T *d0 = in, *d1 = in + in_step, *d2 = in + 2 * in_step, *d3 = in + 3 * in_step; \
    T *t0 = out, *t1 = out + out_step, *t2 = out + 2 * out_step, *t3 = out + 3 * out_step; \
    FC_IVDEP                                                                           \
    for (ptrdiff_t i = 0; i < n; i++) {                                                \
        T a = d0[i], b = d1[i], c = d2[i], d = d3[i];                                  \
        t0[i] = a - c;                                                                 \
        t1[i] = b + c;                                                                 \
        t2[i] = c - b;                                                                 \
        t3[i] = b - d;                                                                 \
    }                                                                                  \
}                                                                                      \
                                                                                       \
/* B^T of F(4x4, 3x3), its rows regrouped to share the sums:                           \
 * t0 = 4 d0 - 5 d2 + d4          t3 = (d4 - d2) + 2 (d3 - d1)                          \
 * t1 = (d3 + d4) - 4 (d1 + d2)   t4 = (d4 - d2) - 2 (d3 - d1)                          \
 * t2 = (d4 - d3) + 4 (d1 - d2)   t5 = 4 d1 - 5 d3 + d5 */                               \
ATTR static void fc_wino_in6_##SUFFIX(const T *in, ptrdiff_t in_step, T *out,        \
                                        ptrdiff_t out_step, ptrdiff_t n)               \
{                                                                                      \
    const T *d0 = in, *d1 = in + in_step, *d2 = in + 2 * in_step;                       \
    const T *d3 = in + 3 * in_step, *d4 = in + 4 * in_step, *d5 = in + 5 * in_step;     \
    T *t0 = out, *t1 = out + out_step, *t2 = out + 2 * out_step;                       \
    T *t3 = out + 3 * out_step, *t4 = out + 4 * out_step, *t5 = out + 5 * out_step;     \
    FC_IVDEP                                                                           \
    for (ptrdiff_t i = 0; i < n; i++) {                                                \
        T x0 = d0[i], x1 = d1[i], x2 = d2[i], x3 = d3[i], x4 = d4[i], x5 = d5[i];      \
        T p = x4 - x2, q = x3 - x1;                                                    \
        t0[i] = ((T)4 * x0 - (T)5 * x2) + x4;                                          \
        t1[i] = (x3 + x4) - (T)4 * (x1 + x2);                                          \
        t2[i] = (x4 - x3) + (T)4 * (x1 - x2);                                          \
        t3[i] = p + (T)2 * q;                                                          \
        t4[i] = p - (T)2 * q;                                                          \
        t5[i] = ((T)4 * x1 - (T)5 * x3) + x5;                                          \
    }                                                                                  \
}                                                                                      \
                                                                                       \
/* A^T of F(2x2, 3x3): y0 = m0 + m1 + m2, y1 = m1 - m2 - m3 */                           \
ATTR static void fc_wino_out4_##SUFFIX(const T *in, ptrdiff_t in_step, T *out,       \
                                         ptrdiff_t out_step, ptrdiff_t n)              \
{                                                                                      \
    const T *m0 = in, *m1 = in + in_step, *m2 = in + 2 * in_step, *m3 = in + 3 * in_step; \
    T *y0 = out, *y1 = out + out_step;                                                 \
    FC_IVDEP                                                                           \
    for (ptrdiff_t i = 0; i < n; i++) {                                                \
        T b = m1[i], c = m2[i];                                                        \
        y0[i] = (m0[i] + b) + c;                                                       \
        y1[i] = (b - c) - m3[i];                                                       \
    }                                                                                  \
}                                                                                      \
                                                                                       \
/* A^T of F(4x4, 3x3), with s = m1 + m2, d = m1 - m2, S = m3 + m4, D = m3 - m4:         \
 * y0 = m0 + s + S, y1 = d + 2 D, y2 = s + 4 S, y3 = d + 8 D + m5 */                      \
ATTR static void fc_wino_out6_##SUFFIX(const T *in, ptrdiff_t in_step, T *out,       \
                                         ptrdiff_t out_step, ptrdiff_t n)              \
{                                                                                      \
    const T *m0 = in, *m1 = in + in_step, *m2 = in + 2 * in_step;                       \
    const T *m3 = in + 3 * in_step, *m4 = in + 4 * in_step, *m5 = in + 5 * in_step;     \
    T *y0 = out, *y1 = out + out_step, *y2 = out + 2 * out_step, *y3 = out + 3 * out_step; \
    FC_IVDEP                                                                           \
    for (ptrdiff_t i = 0; i < n; i++) {                                                \
        T s = m1[i] + m2[i], d = m1[i] - m2[i], S = m3[i] + m4[i], D = m3[i] - m4[i];  \
        y0[i] = (m0[i] + s) + S;                                                       \
        y1[i] = d + (T)2 * D;                                                          \
        y2[i] = s + (T)4 * S;                                                          \
        y3[i] = (d + (T)8 * D) + m5[i];                                                \
    }                                                                                  \
}                                                                                      \
                                                                                       \
/* A of F(2x2, 3x3): z0 = y0, z1 = y0 + y1, z2 = y0 - y1, z3 = -y1 */                    \
ATTR static void fc_wino_dy4_##SUFFIX(const T *in, ptrdiff_t in_step, T *out,        \
                                        ptrdiff_t out_step, ptrdiff_t n)               \
{                                                                                      \
    const T *y0 = in, *y1 = in + in_step;                                              \
    T *z0 = out, *z1 = out + out_step, *z2 = out + 2 * out_step, *z3 = out + 3 * out_step; \
    FC_IVDEP                                                                           \
    for (ptrdiff_t i = 0; i < n; i++) {                                                \
        T a = y0[i], b = y1[i];                                                        \
        z0[i] = a;                                                                     \
        z1[i] = a + b;                                                                 \
        z2[i] = a - b;                                                                 \
        z3[i] = -b;                                                                    \
    }                                                                                  \
}                                                                                      \
                                                                                       \
/* A of F(4x4, 3x3), with e = y0 + y2, o = y1 + y3, E = y0 + 4 y2, O = 2 y1 + 8 y3:      \
 * z0 = y0, z1 = e + o, z2 = e - o, z3 = E + O, z4 = E - O, z5 = y3 */                    \
ATTR static void fc_wino_dy6_##SUFFIX(const T *in, ptrdiff_t in_step, T *out,        \
                                        ptrdiff_t out_step, ptrdiff_t n)               \
{                                                                                      \
    const T *y0 = in, *y1 = in + in_step, *y2 = in + 2 * in_step, *y3 = in + 3 * in_step; \
    T *z0 = out, *z1 = out + out_step, *z2 = out + 2 * out_step;                       \
    T *z3 = out + 3 * out_step, *z4 = out + 4 * out_step, *z5 = out + 5 * out_step;     \
    FC_IVDEP                                                                           \
    for (ptrdiff_t i = 0; i < n; i++) {                                                \
        T a = y0[i], b = y1[i], c = y2[i], d = y3[i];                                  \
        T e = a + c, o = b + d, E = a + (T)4 * c, O = (T)2 * b + (T)8 * d;             \
        z0[i] = a;                                                                     \
        z1[i] = e + o;                                                                 \
        z2[i] = e - o;                                                                 \
        z3[i] = E + O;                                                                 \
        z4[i] = E - O;                                                                 \
        z5[i] = d;                                                                     \
    }                                                                                  \
}

/* G of F(2x2, 3x3) and of F(4x4, 3x3) (alpha x 3; the reference derives them). */
static const double fc_wino_g2[6][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
static const double fc_wino_g4[6][3] = {
    {0.25, 0, 0}, {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};

/* The filter transform U = G g G^T (step 1 of wino.gemm) and its transpose G^T Mw G (step 4
 * of wino.dw), for n 3x3 filters, 8 at a time: the loops over l run across 8 filters (one
 * vector), each lane the plain formula, the products with G's zeros skipped (0 times Inf is
 * not 0). Filter l's tap (r, s) is g[l * l_step + r * r_step + s * s_step] (negative steps
 * read it flipped); value e = i * alpha + j of its transform is u[e * e_step + l]. */
#define FC_WINO_FILTERS(T, SUFFIX, ATTR)                                                \
ATTR static void fc_wino_filters_##SUFFIX(int m, const T *g, ptrdiff_t l_step,          \
                                          ptrdiff_t r_step, ptrdiff_t s_step, ptrdiff_t n, \
                                          T *u, ptrdiff_t e_step)                        \
{                                                                                       \
    const double (*G)[3] = m == 2 ? fc_wino_g2 : fc_wino_g4;                            \
    int alpha = m + 2;                                                                  \
    T x[9][8], t[6][3][8], acc[8];                                                      \
    for (ptrdiff_t l0 = 0; l0 < n; l0 += 8) {                                           \
        ptrdiff_t nl = n - l0 < 8 ? n - l0 : 8;                                         \
        for (int r = 0; r < 3; r++)                                                     \
            for (int s = 0; s < 3; s++)                                                 \
                for (int l = 0; l < 8; l++)                                             \
                    x[r * 3 + s][l] = l < nl ? g[(l0 + l) * l_step + r * r_step + s * s_step] : 0; \
        for (int i = 0; i < alpha; i++)                         /* t = G g  (alpha x 3) */ \
            for (int j = 0; j < 3; j++) {                                               \
                for (int l = 0; l < 8; l++) acc[l] = 0;                                 \
                for (int a = 0; a < 3; a++) {                                           \
                    T c = (T)G[i][a];                                                   \
                    if (c != 0)                                                         \
                        for (int l = 0; l < 8; l++) acc[l] = acc[l] + c * x[a * 3 + j][l]; \
                }                                                                       \
                for (int l = 0; l < 8; l++) t[i][j][l] = acc[l];                        \
            }                                                                           \
        for (int i = 0; i < alpha; i++)                 /* u = t G^T  (alpha x alpha) */ \
            for (int j = 0; j < alpha; j++) {                                           \
                for (int l = 0; l < 8; l++) acc[l] = 0;                                 \
                for (int a = 0; a < 3; a++) {                                           \
                    T c = (T)G[j][a];                                                   \
                    if (c != 0)                                                         \
                        for (int l = 0; l < 8; l++) acc[l] = acc[l] + t[i][a][l] * c;   \
                }                                                                       \
                for (int l = 0; l < nl; l++) u[(i * alpha + j) * e_step + l0 + l] = acc[l]; \
            }                                                                           \
    }                                                                                   \
}                                                                                       \
                                                                                        \
/* g[l * l_step + r * 3 + s] = (G^T Mw_l G)[r, s], Mw_l[i][j] = mw[(i * alpha + j) * e_step \
 * + l]: the filter gradients of n transformed gradients, 8 at a time. */               \
ATTR static void fc_wino_filter_grads_##SUFFIX(int m, const T *mw, ptrdiff_t e_step,    \
                                               ptrdiff_t n, T *g, ptrdiff_t l_step)      \
{                                                                                       \
    const double (*G)[3] = m == 2 ? fc_wino_g2 : fc_wino_g4;                            \
    int alpha = m + 2;                                                                  \
    T x[36][8], t[3][6][8], acc[8];                                                     \
    for (ptrdiff_t l0 = 0; l0 < n; l0 += 8) {                                           \
        ptrdiff_t nl = n - l0 < 8 ? n - l0 : 8;                                         \
        for (int e = 0; e < alpha * alpha; e++)                                         \
            for (int l = 0; l < 8; l++) x[e][l] = l < nl ? mw[e * e_step + l0 + l] : 0; \
        for (int a = 0; a < 3; a++)                             /* t = G^T Mw  (3 x alpha) */ \
            for (int j = 0; j < alpha; j++) {                                           \
                for (int l = 0; l < 8; l++) acc[l] = 0;                                 \
                for (int i = 0; i < alpha; i++) {                                       \
                    T c = (T)G[i][a];                                                   \
                    if (c != 0)                                                         \
                        for (int l = 0; l < 8; l++) acc[l] = acc[l] + c * x[i * alpha + j][l]; \
                }                                                                       \
                for (int l = 0; l < 8; l++) t[a][j][l] = acc[l];                        \
            }                                                                           \
        for (int a = 0; a < 3; a++)                             /* g = t G  (3 x 3) */   \
            for (int i = 0; i < 3; i++) {                                               \
                for (int l = 0; l < 8; l++) acc[l] = 0;                                 \
                for (int j = 0; j < alpha; j++) {                                       \
                    T c = (T)G[j][i];                                                   \
                    if (c != 0)                                                         \
                        for (int l = 0; l < 8; l++) acc[l] = acc[l] + t[a][j][l] * c;   \
                }                                                                       \
                for (int l = 0; l < nl; l++) g[(l0 + l) * l_step + a * 3 + i] = acc[l]; \
            }                                                                           \
    }                                                                                   \
}

FC_WINO_FILTERS(float, f32, )
FC_WINO_FILTERS(double, f64, )
#if FC_HAVE_X86_SIMD
FC_WINO_FILTERS(float, f32_avx2, __attribute__((target("avx2"))))
FC_WINO_FILTERS(double, f64_avx2, __attribute__((target("avx2"))))
#endif

FC_WINO_TRANSFORMS(float, f32, )
FC_WINO_TRANSFORMS(double, f64, )
#if FC_HAVE_X86_SIMD
FC_WINO_TRANSFORMS(float, f32_avx2, __attribute__((target("avx2"))))
FC_WINO_TRANSFORMS(double, f64_avx2, __attribute__((target("avx2"))))
#endif

/* Which 1-D transform: B^T of an input tile, A^T of a transformed output tile, A of a
 * tile of dy. */
enum { FC_WINO_INPUT = 0, FC_WINO_OUTPUT = 1, FC_WINO_DY = 2 };

/* The transform the driver calls, `kind` of F(m x m, 3x3), in the copy for isa
 * (fc_isa_level() at import). */
#if FC_HAVE_X86_SIMD
#define FC_WINO_CALL(name, args)                                                      \
    do { if (isa >= FC_ISA_AVX2) name##_avx2 args; else name args; } while (0)
#else
#define FC_WINO_CALL(name, args) name args
#endif
#define FC_WINO_DISPATCH(T, SUFFIX)                                                    \
/* IN in; OUT out */                                                                  \
static inline void fc_wino_1d_##SUFFIX(int isa, int m, int kind, const T *in,         \
                                       ptrdiff_t in_step, T *out, ptrdiff_t out_step, \
                                       ptrdiff_t n)                                   \
{                                                                                     \
    if (kind == FC_WINO_INPUT && m == 2)                                              \
        FC_WINO_CALL(fc_wino_in4_##SUFFIX, (in, in_step, out, out_step, n));          \
    else if (kind == FC_WINO_INPUT)                                                   \
        FC_WINO_CALL(fc_wino_in6_##SUFFIX, (in, in_step, out, out_step, n));          \
    else if (kind == FC_WINO_OUTPUT && m == 2)                                        \
        FC_WINO_CALL(fc_wino_out4_##SUFFIX, (in, in_step, out, out_step, n));         \
    else if (kind == FC_WINO_OUTPUT)                                                  \
        FC_WINO_CALL(fc_wino_out6_##SUFFIX, (in, in_step, out, out_step, n));         \
    else if (m == 2)                                                                  \
        FC_WINO_CALL(fc_wino_dy4_##SUFFIX, (in, in_step, out, out_step, n));          \
    else                                                                              \
        FC_WINO_CALL(fc_wino_dy6_##SUFFIX, (in, in_step, out, out_step, n));          \
}

FC_WINO_DISPATCH(float, f32)
FC_WINO_DISPATCH(double, f64)

#define FC_WINO_FILTERS_DISPATCH(T, SUFFIX)                                             \
static inline void fc_wino_filter_transform_##SUFFIX(int isa, int m, const T *g,        \
                                                     ptrdiff_t l_step, ptrdiff_t r_step, \
                                                     ptrdiff_t s_step, ptrdiff_t n, T *u, \
                                                     ptrdiff_t e_step)                   \
{                                                                                       \
    FC_WINO_CALL(fc_wino_filters_##SUFFIX, (m, g, l_step, r_step, s_step, n, u, e_step)); \
}                                                                                       \
static inline void fc_wino_filter_gradient_##SUFFIX(int isa, int m, const T *mw,         \
                                                     ptrdiff_t e_step, ptrdiff_t n, T *g, \
                                                     ptrdiff_t l_step)                   \
{                                                                                       \
    FC_WINO_CALL(fc_wino_filter_grads_##SUFFIX, (m, mw, e_step, n, g, l_step));         \
}

FC_WINO_FILTERS_DISPATCH(float, f32)
FC_WINO_FILTERS_DISPATCH(double, f64)

/* The tb input tiles of the H x W plane x side by side: D[(a * alpha + b) * ld + t] = the
 * tap (in_row[t] + dh * a, in_col[t] + b) of x (columns adjacent, rows dh apart), 0 outside
 * the plane (the padding); tap (a, b) of tile t is at x + in_off[t] + dh * a * W + b.
 * By 8 tiles with AVX2: row a of each tile is one load (lanes b < alpha inside the plane,
 * of 8), the 8 x 8 block transposed makes value b of the 8 tiles one vector, stored whole:
 * alpha stores where the scalar loop makes 8 alpha; the next channel's rows are
 * prefetched. The tiles left over, and CPUs without AVX2, element by element. IN x; OUT D */
#if FC_HAVE_X86_SIMD
FC_AVX2 static void fc_wino_gather8_f32(const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t dh,
                                        const ptrdiff_t *in_off, const ptrdiff_t *in_row,
                                        const ptrdiff_t *in_col, ptrdiff_t tb, int alpha,
                                        float *D, ptrdiff_t ld)
{
    __m256 v[8];
    __m256i inside[8];
    for (ptrdiff_t t0 = 0; t0 + 8 <= tb; t0 += 8) {
        for (int j = 0; j < 8; j++) {       /* the lanes -in_col <= b < W - in_col, b < alpha */
            ptrdiff_t hi = W - in_col[t0 + j];
            inside[j] = _mm256_andnot_si256(fc_lanes8(-in_col[t0 + j]),
                                            fc_lanes8(hi < alpha ? hi : alpha));
        }
        for (int a = 0; a < alpha; a++) {
            FC_UNROLL for (int j = 0; j < 8; j++) {
                ptrdiff_t r = in_row[t0 + j] + dh * a;
                /* masked lanes are not read (no fault), even left of the plane's start */
                const float *row = x + in_off[t0 + j] + dh * a * W;
                v[j] = r >= 0 && r < H ? _mm256_maskload_ps(row, inside[j]) : _mm256_setzero_ps();
                /* the same row of the next channel, which the caller gathers next: asked
                 * for now, it arrives while this plane is transformed (a prefetch never
                 * faults, also past the last plane) */
                _mm_prefetch((const char *)(row + H * W), _MM_HINT_T0);
            }
            fc_transpose8(v);                   /* v[b]: value (a, b) of tiles t0 .. t0 + 7 */
            for (int b = 0; b < alpha; b++)
                _mm256_storeu_ps(D + (a * alpha + b) * ld + t0, v[b]);
        }
    }
}
#endif

static inline void fc_wino_gather_f32(int isa, const float *x, ptrdiff_t H, ptrdiff_t W,
                                      ptrdiff_t dh, const ptrdiff_t *in_off,
                                      const ptrdiff_t *in_row, const ptrdiff_t *in_col,
                                      ptrdiff_t tb, int alpha, float *D, ptrdiff_t ld)
{
    ptrdiff_t t = 0;
#if FC_HAVE_X86_SIMD
    if (isa >= FC_ISA_AVX2) {
        fc_wino_gather8_f32(x, H, W, dh, in_off, in_row, in_col, tb, alpha, D, ld);
        t = tb - tb % 8;
    }
#endif
    for (; t < tb; t++)
        for (int a = 0; a < alpha; a++)
            for (int b = 0; b < alpha; b++) {
                ptrdiff_t r = in_row[t] + dh * a, c = in_col[t] + b;
                D[(a * alpha + b) * ld + t] = r >= 0 && r < H && c >= 0 && c < W
                    ? x[in_off[t] + dh * a * W + b] : 0.0f;
            }
}

/* A whole 4 x 4 tile of dy with adjacent columns, for dW's dy transform (step 2' of
 * wino.dw): Dy[(a * 4 + b) * K + k] = dy[k * PQ + a * row_step + b], 8 channels k at a time
 * with AVX2: row a of channels k and k + 4 in one vector, and 4 x 4 transposes in both
 * halves make value b of the 8 channels one vector. Returns the channels done (a multiple
 * of 8; none below AVX2): the caller copies the others one by one. IN dy; OUT Dy */
#if FC_HAVE_X86_SIMD
FC_AVX2 static ptrdiff_t fc_wino_dy_tile8_f32(const float *dy, ptrdiff_t K, ptrdiff_t PQ,
                                              ptrdiff_t row_step, float *Dy)
{
    ptrdiff_t k0;
    for (k0 = 0; k0 + 8 <= K; k0 += 8)
        for (int a = 0; a < 4; a++) {
            const float *src = dy + k0 * PQ + a * row_step;
            __m256 r[4], lo01, lo23, hi01, hi23;
            for (int j = 0; j < 4; j++)     /* r[j]: row a of channel k0 + j | of k0 + 4 + j */
                r[j] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(src + j * PQ)),
                                            _mm_loadu_ps(src + (4 + j) * PQ), 1);
            lo01 = _mm256_unpacklo_ps(r[0], r[1]);
            lo23 = _mm256_unpacklo_ps(r[2], r[3]);
            hi01 = _mm256_unpackhi_ps(r[0], r[1]);
            hi23 = _mm256_unpackhi_ps(r[2], r[3]);
            float *dst = Dy + a * 4 * K + k0;
            _mm256_storeu_ps(dst, _mm256_shuffle_ps(lo01, lo23, 0x44));            /* b = 0 */
            _mm256_storeu_ps(dst + K, _mm256_shuffle_ps(lo01, lo23, 0xEE));        /* b = 1 */
            _mm256_storeu_ps(dst + 2 * K, _mm256_shuffle_ps(hi01, hi23, 0x44));    /* b = 2 */
            _mm256_storeu_ps(dst + 3 * K, _mm256_shuffle_ps(hi01, hi23, 0xEE));    /* b = 3 */
        }
    return k0;
}
#endif

static inline ptrdiff_t fc_wino_dy_tile_f32(int isa, const float *dy, ptrdiff_t K, ptrdiff_t PQ,
                                            ptrdiff_t row_step, float *Dy)
{
#if FC_HAVE_X86_SIMD
    if (isa >= FC_ISA_AVX2) return fc_wino_dy_tile8_f32(dy, K, PQ, row_step, Dy);
#endif
    (void)isa; (void)dy; (void)K; (void)PQ; (void)row_step; (void)Dy;
    return 0;
}

/* The inverse of the gather, for the m x m output tiles (columns adjacent), plus bias:
 * y[out_off[t] + i * row_step + j] = O[(i * m + j) * ld + t] + bias for the i < rows[t],
 * j < cols[t] outputs of tile t inside the plane; with a mask (not NULL, laid out as y),
 * 0 where the mask is not > 0: the backward of a ReLU whose output the mask is (relu.bwd).
 * By 8 whole tiles with AVX2: row i of the 8 tiles is m vectors of O, transposed so that
 * each tile's row is one vector, of which m lanes are stored. Returns whether all m x m
 * values of the tiles (those past the plane's edge too, before the mask) are finite: v - v
 * is 0 for a finite v, NaN for NaN and Inf, and a sum of them is 0 or NaN. IN O, mask;
 * OUT y */
#if FC_HAVE_X86_SIMD
FC_AVX2 static int fc_wino_scatter8_f32(const float *O, ptrdiff_t ld, float *y,
                                        ptrdiff_t row_step, const ptrdiff_t *out_off, int m,
                                        float bias, const float *mask)
{
    __m256 v[8], b = _mm256_set1_ps(bias), sums = _mm256_setzero_ps();
    for (int i = 0; i < m; i++) {
        FC_UNROLL for (int j = 0; j < 8; j++) {
            v[j] = j < m ? _mm256_add_ps(_mm256_loadu_ps(O + (i * m + j) * ld), b)
                         : _mm256_setzero_ps();
            sums = _mm256_add_ps(sums, _mm256_sub_ps(v[j], v[j]));
        }
        fc_transpose8(v);                       /* v[t]: row i of tile t, m lanes */
        FC_UNROLL for (int t = 0; t < 8; t++) {
            ptrdiff_t at = out_off[t] + i * row_step;
            __m128 row = _mm256_castps256_ps128(v[t]);
            if (mask != NULL && m == 4)
                row = _mm_and_ps(row, _mm_cmpgt_ps(_mm_loadu_ps(mask + at), _mm_setzero_ps()));
            else if (mask != NULL)
                row = _mm_and_ps(row, _mm_cmpgt_ps(
                    _mm_castpd_ps(_mm_load_sd((const double *)(mask + at))), _mm_setzero_ps()));
            if (m == 4) _mm_storeu_ps(y + at, row);
            else _mm_storel_pi((__m64 *)(y + at), row);
        }
    }
    return _mm256_movemask_ps(_mm256_cmp_ps(sums, sums, _CMP_UNORD_Q)) == 0;  /* no NaN */
}
#endif

static inline int fc_wino_scatter_f32(int isa, const float *O, ptrdiff_t ld, float *y,
                                      ptrdiff_t row_step, const ptrdiff_t *out_off,
                                      const ptrdiff_t *rows, const ptrdiff_t *cols,
                                      ptrdiff_t tb, int m, float bias, const float *mask)
{
    float sums = 0;
    int finite = 1;
    for (ptrdiff_t t0 = 0; t0 < tb; t0 += 8) {
        ptrdiff_t n = tb - t0 < 8 ? tb - t0 : 8, whole = n == 8;
        for (ptrdiff_t t = t0; t < t0 + n; t++) whole = whole && rows[t] == m && cols[t] == m;
#if FC_HAVE_X86_SIMD
        if (whole && isa >= FC_ISA_AVX2) {
            finite &= fc_wino_scatter8_f32(O + t0, ld, y, row_step, out_off + t0, m, bias, mask);
            continue;
        }
#endif
        for (ptrdiff_t t = t0; t < t0 + n; t++)
            for (ptrdiff_t i = 0; i < m; i++)
                for (ptrdiff_t j = 0; j < m; j++) {
                    float v = O[(i * m + j) * ld + t] + bias;
                    ptrdiff_t at = out_off[t] + i * row_step + j;
                    sums += v - v;
                    if (i < rows[t] && j < cols[t]) y[at] = mask == NULL || mask[at] > 0 ? v : 0;
                }
    }
    return finite && sums == 0;
}

#endif
