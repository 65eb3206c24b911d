/* fc_depthwise.h: the register tiles of the depthwise convolution (conv_depthwise.pyx).
 *
 * Two kernels, each the same sums as the teaching loop nest _forward_plane:
 *
 *   - fc_dwi_* (second half of this file), float32, the default: 8 channels at a time, one
 *     per SIMD lane, forward and backward. Read that section first.
 *   - fc_dw_row_* (here), float64: one output row of one channel, eq. (conv.dw),
 *
 *     y[q] = b + sum_{r,s} w[r, s] * xp[r*dh, q*sw + s*dw]      (xp at the row's first input row)
 *
 * in tiles of 2 vectors of L columns (8 floats or 4 doubles), each tile's accumulators held
 * in registers over all R*S taps and stored once. The row-update form of the teaching path
 * (conv_depthwise.pyx, _forward_plane) loads and stores the whole row once per tap instead,
 * and pays a loop start per tap and row: on the 7x7 and 4x4 maps of a small network that
 * overhead is most of the time. A last partial tile is a full vector shifted back to end at
 * Q (it recomputes a few columns with the same arithmetic, so the same bits); rows shorter
 * than one vector are scalar. Each output sums b, then the taps in (r, s) order, exactly as
 * the teaching path does, so both give the same bits.
 *
 * Written once for a type T and instantiated for float and double (C has no templates,
 * hence the macro); GCC/Clang vector extensions (16-byte vectors, the x86-64 baseline) say
 * which loop is the vector one.
 */
#ifndef FC_DEPTHWISE_H
#define FC_DEPTHWISE_H

#include <string.h>

#define FC_DW_ROW(T, NAME)                                                             \
static inline void NAME(const T *restrict x, const T *restrict w, T b, T *restrict y,  \
                        Py_ssize_t Wp, Py_ssize_t R, Py_ssize_t S, Py_ssize_t sw,      \
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Q)                    \
{                                                                                     \
    typedef T vec __attribute__((vector_size(16)));                                   \
    enum { L = 16 / sizeof(T) };                                                      \
    vec zero = {0}, x0 = zero, x1 = zero;                                             \
    Py_ssize_t q = 0;                                                                 \
    if (Q < L) {                                   /* shorter than a vector */        \
        for (; q < Q; q++) {                                                          \
            T a = b;                                                                  \
            for (Py_ssize_t r = 0; r < R; r++)                                        \
                for (Py_ssize_t s = 0; s < S; s++)                                    \
                    a += w[r * S + s] * x[r * dh * Wp + q * sw + s * dw];             \
            y[q] = a;                                                                 \
        }                                                                             \
        return;                                                                       \
    }                                                                                 \
    for (; q + 2 * L <= Q; q += 2 * L) {           /* two vectors */                  \
        vec a0 = zero + b, a1 = a0;                                                   \
        for (Py_ssize_t r = 0; r < R; r++) {                                          \
            const T *x_row = x + r * dh * Wp + q * sw;                                \
            for (Py_ssize_t s = 0; s < S; s++) {                                      \
                const T *xs = x_row + s * dw;                                         \
                if (sw == 1) {                                                        \
                    memcpy(&x0, xs, 16);                                              \
                    memcpy(&x1, xs + L, 16);                                          \
                } else {                                                              \
                    for (int i = 0; i < L; i++) {                                     \
                        x0[i] = xs[i * sw];                                           \
                        x1[i] = xs[(i + L) * sw];                                     \
                    }                                                                 \
                }                                                                     \
                T wv = w[r * S + s];                                                  \
                a0 += wv * x0;                                                        \
                a1 += wv * x1;                                                        \
            }                                                                         \
        }                                                                             \
        memcpy(y + q, &a0, 16);                                                       \
        memcpy(y + q + L, &a1, 16);                                                   \
    }                                                                                 \
    while (q < Q) {                                /* one vector, the last shifted */ \
        if (q + L > Q)                                                                \
            q = Q - L;                                                                \
        vec a0 = zero + b;                                                            \
        for (Py_ssize_t r = 0; r < R; r++) {                                          \
            const T *x_row = x + r * dh * Wp + q * sw;                                \
            for (Py_ssize_t s = 0; s < S; s++) {                                      \
                const T *xs = x_row + s * dw;                                         \
                if (sw == 1)                                                          \
                    memcpy(&x0, xs, 16);                                              \
                else                                                                  \
                    for (int i = 0; i < L; i++)                                       \
                        x0[i] = xs[i * sw];                                           \
                a0 += w[r * S + s] * x0;                                              \
            }                                                                         \
        }                                                                             \
        memcpy(y + q, &a0, 16);                                                       \
        q += L;                                                                       \
    }                                                                                 \
}
FC_DW_ROW(float, fc_dw_row_f32)
FC_DW_ROW(double, fc_dw_row_f64)


/* ---------------------------------------------------------------- channel blocks (float32)
 *
 * The float32 path that runs by default works on blocks of FC_DW_LANES = 8 neighbouring
 * channels of one image at a time, in a channel-interleaved copy: value (i, j) of the
 * block's 8 planes is the 8 floats at xi[(i * Wp + j) * 8], one channel per SIMD lane. Every
 * tap of every output is then one multiply and one add on full vectors, whatever the width
 * of the map: a 7x7 map gives 7-wide rows, which the row tiles above cover with one vector
 * and scalar or overlapping remainders, but 8 channels of a 7x7 map are 49 full vectors.
 * (PyTorch's oneDNN gets the same effect from its NHWC-blocked layout.) The price is the
 * copy into and out of that layout (fc_dwi_pack / fc_dwi_unpack, 4x4 SSE transposes),
 * which is memory traffic the layer pays anyway: it reads each plane once.
 *
 *   fc_dwi_forward: yi[p, q] = b + sum_{r,s} w[r, s] * xi[p*sh + r*dh, q*sw + s*dw], in
 *       tiles of 4 outputs held in registers over all taps; b first, then the taps in (r, s)
 *       order, one multiply then one add: the additions of the teaching loop nest
 *       (_forward_plane), so the same bits.
 *   fc_dwi_dw: acc[t] += sum_{p,q} dy[p, q] * xi[p*sh + r*dh, q*sw + s*dw] for each tap
 *       t = r*S + s, in registers (up to 9 taps at a time), and acc[R*S] += sum dy (db).
 *   fc_dwi_dx: dxi[p*sh + r*dh, q*sw + s*dw] += w[r, s] * dy[p, q], in the order of the
 *       teaching loop nest (_dx_plane): p, then the taps, then q; so the same bits. With
 *       m = 1 and stride 1 the caller runs fc_dwi_forward instead, on dy padded by the
 *       dilated window's size less one and the window turned by 180 degrees: a gather, each
 *       dx value summed in registers, not read and written back once per tap.
 *
 * Each is written once in FC_DWI(ISA, TARGET, VF, W) over vectors VF of W floats (a block
 * is 8 / W of them) and expanded twice: fc_dwi_*_base with 16-byte SSE2 vectors, the x86-64
 * baseline, and fc_dwi_*_avx2 with 32-byte vectors under target("avx2"). Neither uses FMA,
 * and the copies differ in width only, so they give the same bits; fc_dwi_*(isa, ...) calls
 * the copy fc_isa_level() (fc_isa.h) chose. Each kernel's body is also inlined once with
 * R = S = 3, dilation 1 and stride 1 or 2 as constants, so that the compiler unrolls the
 * taps and keeps the 9 weights or 9 dw sums in registers; other shapes run the same body
 * with the loop bounds read at run time.
 */
#if defined(__SSE2__)
#  include <xmmintrin.h>
#endif
#include "fc_isa.h"

#if FC_HAVE_X86_SIMD && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9))
#  define FC_DW_AVX2 1
#else
#  define FC_DW_AVX2 0
#endif

enum { FC_DW_LANES = 8, FC_DW_QT = 4, FC_DW_TAPS = 9 };

typedef float fc_dw_v4sf __attribute__((vector_size(16)));
typedef float fc_dw_v8sf __attribute__((vector_size(32)));

#if defined(__SSE2__)
/* the 4 x 4 floats at src (rows ss floats apart), transposed, at dst (rows ds apart) */
static inline void fc_dw_transpose4(const float *src, Py_ssize_t ss, float *dst, Py_ssize_t ds)
{
    __m128 a = _mm_loadu_ps(src), b = _mm_loadu_ps(src + ss);
    __m128 c = _mm_loadu_ps(src + 2 * ss), d = _mm_loadu_ps(src + 3 * ss);
    _MM_TRANSPOSE4_PS(a, b, c, d);
    _mm_storeu_ps(dst, a);
    _mm_storeu_ps(dst + ds, b);
    _mm_storeu_ps(dst + 2 * ds, c);
    _mm_storeu_ps(dst + 3 * ds, d);
}
#endif

/* W columns of nc <= 8 planes (cs floats apart, starting at planar) to or from one
 * interleaved row of W x 8 (lane l = plane l): into the row if in (lanes nc..7 then 0),
 * else out of it. 4 x 4 transposes, the last 4 columns overlapping the one before. */
static void fc_dw_interleave_row(float *planar, Py_ssize_t cs, float *row, Py_ssize_t W,
                                 Py_ssize_t nc, int in)     /* IN planar, OUT row if in; else back */
{
    const Py_ssize_t L = FC_DW_LANES;
    Py_ssize_t j = 0;
#if defined(__SSE2__)
    if (nc == L && W >= 4)
        for (; j < W; j += 4) {
            if (j + 4 > W)
                j = W - 4;
            for (Py_ssize_t h = 0; h < L; h += 4) {
                if (in)
                    fc_dw_transpose4(planar + h * cs + j, cs, row + j * L + h, L);
                else
                    fc_dw_transpose4(row + j * L + h, L, planar + h * cs + j, cs);
            }
        }
#endif
    for (; j < W; j++)
        for (Py_ssize_t l = 0; l < L; l++) {
            if (in)
                row[j * L + l] = l < nc ? planar[l * cs + j] : 0.0f;
            else if (l < nc)
                planar[l * cs + j] = row[j * L + l];
        }
}

/* xi ((H + 2ph) x (W + 2pw) x 8) = the nc <= 8 planes at x, cs floats apart, interleaved
 * (lane l = plane l); lanes nc..7 are zero. Writes the inside only: the border of zeros is
 * the caller's, set once per call in a scratch that only this function writes. */
static void fc_dwi_pack(const float *x, Py_ssize_t cs, Py_ssize_t nc, Py_ssize_t H,
                        Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw, float *xi)  /* IN x; OUT xi */
{
    if (ph == 0 && pw == 0) {               /* one long row: fewer, longer transposes */
        W *= H;
        H = 1;
    }
    const Py_ssize_t Wp = W + 2 * pw, L = FC_DW_LANES;
    for (Py_ssize_t i = 0; i < H; i++)
        fc_dw_interleave_row((float *)x + i * W, cs, xi + ((ph + i) * Wp + pw) * L, W, nc,
                             1);                                               /* read only */
}

/* The inverse: the nc planes at x (cs floats apart) = the H x W window at (oh, ow) of the
 * interleaved xi, whose rows are Ws values long. */
static void fc_dwi_unpack(const float *xi, Py_ssize_t Ws, Py_ssize_t oh, Py_ssize_t ow,
                          Py_ssize_t nc, Py_ssize_t H, Py_ssize_t W, float *x,
                          Py_ssize_t cs)                                    /* IN xi; OUT x */
{
    if (oh == 0 && ow == 0 && Ws == W) {     /* one long row: fewer, longer transposes */
        W *= H;
        H = 1;
    }
    for (Py_ssize_t i = 0; i < H; i++)
        fc_dw_interleave_row(x + i * W, cs, (float *)xi + ((oh + i) * Ws + ow) * FC_DW_LANES,
                             W, nc, 0);                                        /* read only */
}

/* a block of 8 floats at p as NV vectors, and back; VFU is the kernel's vector type
 * without its alignment (a plain unaligned move: memcpy made gcc copy the tile through
 * the stack) */
#define FC_DW_LOADB(a, p) do { for (int v_ = 0; v_ < NV; v_++)                          \
    (a)[v_] = *(const VFU *)((p) + v_ * (FC_DW_LANES / NV)); } while (0)
#define FC_DW_STOREB(p, a) do { for (int v_ = 0; v_ < NV; v_++)                         \
    *(VFU *)((p) + v_ * (FC_DW_LANES / NV)) = (a)[v_]; } while (0)

/* The arguments every kernel takes: the interleaved planes, then the geometry. */
#define FC_DWI_GEOM Py_ssize_t Wp, Py_ssize_t R, Py_ssize_t S, Py_ssize_t sh, Py_ssize_t sw, \
    Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t P, Py_ssize_t Q
/* Call BODY with the common shapes as constants (see the top of this section). */
#define FC_DWI_SPECIALISE(BODY, ...)                                                    \
    if (R == 3 && S == 3 && dh == 1 && dw == 1 && sh == 1 && sw == 1)                   \
        BODY(__VA_ARGS__, Wp, 3, 3, 1, 1, 1, 1, P, Q);                                 \
    else if (R == 3 && S == 3 && dh == 1 && dw == 1 && sh == 2 && sw == 2)              \
        BODY(__VA_ARGS__, Wp, 3, 3, 2, 2, 1, 1, P, Q);                                 \
    else                                                                                \
        BODY(__VA_ARGS__, Wp, R, S, sh, sw, dh, dw, P, Q)

#define FC_DWI(ISA, TARGET, VF, W)                                                       \
typedef VF fc_dw_u_##ISA __attribute__((aligned(4), may_alias));                        \
/* one tile of NQ outputs (NQ <= FC_DW_QT) of row x_row, stored at y */                 \
static inline __attribute__((always_inline)) TARGET void                                \
fc_dwi_tile_##ISA(const float *restrict x_row, const float *restrict wi, const VF *b,   \
                  float *restrict y, int NQ, FC_DWI_GEOM)                               \
{                                                                                       \
    enum { L = FC_DW_LANES, NV = FC_DW_LANES / (W) };                                   \
    typedef fc_dw_u_##ISA VFU;                                                          \
    VF a[FC_DW_QT][NV], wv[NV], xv[NV];                                                 \
    (void)P; (void)Q; (void)sh;                                                         \
    for (int u = 0; u < NQ; u++)                                                        \
        for (int v = 0; v < NV; v++)                                                    \
            a[u][v] = b[v];                                                             \
    for (Py_ssize_t r = 0; r < R; r++)                                                  \
        for (Py_ssize_t s = 0; s < S; s++) {                                            \
            FC_DW_LOADB(wv, wi + (r * S + s) * L);                                      \
            for (int u = 0; u < NQ; u++) {                                              \
                FC_DW_LOADB(xv, x_row + (r * dh * Wp + u * sw + s * dw) * L);           \
                for (int v = 0; v < NV; v++)                                            \
                    a[u][v] += wv[v] * xv[v];                                           \
            }                                                                           \
        }                                                                               \
    for (int u = 0; u < NQ; u++)                                                        \
        FC_DW_STOREB(y + u * L, a[u]);                                                  \
}                                                                                       \
                                                                                        \
static inline __attribute__((always_inline)) TARGET void                                \
fc_dwi_forward_body_##ISA(const float *restrict xi, const float *restrict wi,           \
                          const float *restrict bi, float *restrict yi, FC_DWI_GEOM)    \
{                                                                                       \
    enum { L = FC_DW_LANES, NV = FC_DW_LANES / (W) };                                   \
    typedef fc_dw_u_##ISA VFU;                                                          \
    VF b[NV];                                                                           \
    FC_DW_LOADB(b, bi);                                                                 \
    for (Py_ssize_t p = 0; p < P; p++) {                                                \
        const float *x_row = xi + p * sh * Wp * L;                                      \
        float *y_row = yi + p * Q * L;                                                  \
        Py_ssize_t q = 0;                                                               \
        for (; q + FC_DW_QT <= Q; q += FC_DW_QT)                                        \
            fc_dwi_tile_##ISA(x_row + q * sw * L, wi, b, y_row + q * L, FC_DW_QT,       \
                              Wp, R, S, sh, sw, dh, dw, P, Q);                          \
        if (q < Q && Q >= FC_DW_QT)      /* the last tile shifted back: same values again */\
            fc_dwi_tile_##ISA(x_row + (Q - FC_DW_QT) * sw * L, wi, b,                   \
                              y_row + (Q - FC_DW_QT) * L, FC_DW_QT,                     \
                              Wp, R, S, sh, sw, dh, dw, P, Q);                          \
        else                                                                            \
            for (; q < Q; q++)                                                          \
                fc_dwi_tile_##ISA(x_row + q * sw * L, wi, b, y_row + q * L, 1,          \
                                  Wp, R, S, sh, sw, dh, dw, P, Q);                      \
    }                                                                                   \
}                                                                                       \
                                                                                        \
static TARGET void fc_dwi_forward_##ISA(const float *restrict xi, const float *restrict wi,\
                                        const float *restrict bi, float *restrict yi,   \
                                        FC_DWI_GEOM)                                    \
{                                                                                       \
    FC_DWI_SPECIALISE(fc_dwi_forward_body_##ISA, xi, wi, bi, yi);                       \
}                                                                                       \
                                                                                        \
static inline __attribute__((always_inline)) TARGET void                                \
fc_dwi_dw_body_##ISA(const float *restrict dyi, Py_ssize_t Wd, const float *restrict xi, \
                     float *acc,                                                        \
                     FC_DWI_GEOM)                                                       \
{                                                                                       \
    enum { L = FC_DW_LANES, NV = FC_DW_LANES / (W) };                                   \
    typedef fc_dw_u_##ISA VFU;                                                          \
    const Py_ssize_t RS = R * S;                                                        \
    VF a[FC_DW_TAPS][NV], d[NV], xv[NV];                                                \
    for (Py_ssize_t t0 = 0; t0 < RS; t0 += FC_DW_TAPS) {     /* up to 9 taps at a time */\
        const Py_ssize_t nt = RS - t0 < FC_DW_TAPS ? RS - t0 : FC_DW_TAPS;              \
        for (Py_ssize_t u = 0; u < nt; u++)                                             \
            FC_DW_LOADB(a[u], acc + (t0 + u) * L);                                      \
        for (Py_ssize_t p = 0; p < P; p++)                                              \
            for (Py_ssize_t q = 0; q < Q; q++) {                                        \
                const float *x_pq = xi + (p * sh * Wp + q * sw) * L;                    \
                FC_DW_LOADB(d, dyi + (p * Wd + q) * L);                                 \
                for (Py_ssize_t u = 0; u < nt; u++) {                                   \
                    const Py_ssize_t r = (t0 + u) / S, s = (t0 + u) % S;                \
                    FC_DW_LOADB(xv, x_pq + (r * dh * Wp + s * dw) * L);                 \
                    for (int v = 0; v < NV; v++)                                        \
                        a[u][v] += d[v] * xv[v];                                        \
                }                                                                       \
            }                                                                           \
        for (Py_ssize_t u = 0; u < nt; u++)                                             \
            FC_DW_STOREB(acc + (t0 + u) * L, a[u]);                                     \
    }                                                                                   \
    FC_DW_LOADB(a[0], acc + RS * L);                                /* db */            \
    for (Py_ssize_t p = 0; p < P; p++)                                                  \
        for (Py_ssize_t q = 0; q < Q; q++) {                                            \
            FC_DW_LOADB(d, dyi + (p * Wd + q) * L);                                     \
            for (int v = 0; v < NV; v++)                                                \
                a[0][v] += d[v];                                                        \
        }                                                                               \
    FC_DW_STOREB(acc + RS * L, a[0]);                                                   \
}                                                                                       \
                                                                                        \
static TARGET void fc_dwi_dw_##ISA(const float *restrict dyi, Py_ssize_t Wd,           \
                                   const float *restrict xi, float *acc, FC_DWI_GEOM)   \
{                                                                                       \
    FC_DWI_SPECIALISE(fc_dwi_dw_body_##ISA, dyi, Wd, xi, acc);                          \
}                                                                                       \
                                                                                        \
static inline __attribute__((always_inline)) TARGET void                                \
fc_dwi_dx_body_##ISA(const float *restrict dyi, Py_ssize_t Wd, const float *restrict wi,\
                     float *restrict dxi, FC_DWI_GEOM)                                  \
{                                                                                       \
    enum { L = FC_DW_LANES, NV = FC_DW_LANES / (W) };                                   \
    typedef fc_dw_u_##ISA VFU;                                                          \
    VF wv[NV], d[NV], xv[NV];                                                           \
    for (Py_ssize_t p = 0; p < P; p++)                                                  \
        for (Py_ssize_t r = 0; r < R; r++)                                              \
            for (Py_ssize_t s = 0; s < S; s++) {                                        \
                float *dx_tap = dxi + ((p * sh + r * dh) * Wp + s * dw) * L;            \
                const float *dy_row = dyi + p * Wd * L;                                 \
                FC_DW_LOADB(wv, wi + (r * S + s) * L);                                  \
                for (Py_ssize_t q = 0; q < Q; q++) {                                    \
                    FC_DW_LOADB(d, dy_row + q * L);                                     \
                    FC_DW_LOADB(xv, dx_tap + q * sw * L);                               \
                    for (int v = 0; v < NV; v++)                                        \
                        xv[v] += wv[v] * d[v];                                          \
                    FC_DW_STOREB(dx_tap + q * sw * L, xv);                              \
                }                                                                       \
            }                                                                           \
}                                                                                       \
                                                                                        \
static TARGET void fc_dwi_dx_##ISA(const float *restrict dyi, Py_ssize_t Wd,           \
                                   const float *restrict wi, float *restrict dxi,       \
                                   FC_DWI_GEOM)                                         \
{                                                                                       \
    FC_DWI_SPECIALISE(fc_dwi_dx_body_##ISA, dyi, Wd, wi, dxi);                          \
}

FC_DWI(base, , fc_dw_v4sf, 4)
#if FC_DW_AVX2
FC_DWI(avx2, __attribute__((target("avx2"))), fc_dw_v8sf, 8)
#endif

/* The calls the Cython kernel makes: the copy for isa (fc_isa_level() at import). */
#if FC_DW_AVX2
#  define FC_DWI_CALL(NAME, ...)                                                          \
    do { if (isa >= FC_ISA_AVX2) NAME##_avx2(__VA_ARGS__, Wp, R, S, sh, sw, dh, dw, P, Q); \
         else NAME##_base(__VA_ARGS__, Wp, R, S, sh, sw, dh, dw, P, Q); } while (0)
#else
#  define FC_DWI_CALL(NAME, ...)                                                          \
    do { (void)isa; NAME##_base(__VA_ARGS__, Wp, R, S, sh, sw, dh, dw, P, Q); } while (0)
#endif

static inline void fc_dwi_forward(int isa, const float *xi, const float *wi, const float *bi,
                                  float *yi, FC_DWI_GEOM)                  /* IN xi wi bi; OUT yi */
{
    FC_DWI_CALL(fc_dwi_forward, xi, wi, bi, yi);
}

static inline void fc_dwi_dw(int isa, const float *dyi, Py_ssize_t Wd, const float *xi,
                             float *acc, FC_DWI_GEOM)              /* IN dyi xi; IN/OUT acc */
{
    FC_DWI_CALL(fc_dwi_dw, dyi, Wd, xi, acc);
}

static inline void fc_dwi_dx(int isa, const float *dyi, Py_ssize_t Wd, const float *wi,
                             float *dxi, FC_DWI_GEOM)              /* IN dyi wi; IN/OUT dxi */
{
    FC_DWI_CALL(fc_dwi_dx, dyi, Wd, wi, dxi);
}

#endif
