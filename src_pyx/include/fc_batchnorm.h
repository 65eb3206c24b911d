/* fc_batchnorm.h: the SIMD float32 copies of batch norm's inner loops.
 *
 * src_pyx/batchnorm.pyx writes every inner loop once, in Cython, for both dtypes (the
 * functions under "inner loops" there: _group_sum, _group_affine, _group_moments,
 * _group_dx, _rows_moments, _rows_affine, _rows_sums, _rows_dx); float64 runs those. For
 * float32 each calls its copy here, fc_<loop>_f32, which does the same operations in the
 * same order on SIMD vectors, so the same bits (fc_group_moments sums each piece in
 * registers first: its own rounding). The Cython loops compiled for float32 were measured
 * 9-57% slower on the benchmark's BN cases (docs/performance.md).
 *
 * Structure: each kernel is written ONCE, inside the macro FC_KERNELS(ISA, TARGET, VF, VD, W),
 * over GCC vector types of W floats (VF) and W/2 doubles (VD). The macro is expanded twice:
 * fc_<kernel>_base with 16-byte vectors (SSE2, all a portable x86-64 build may assume) and
 * fc_<kernel>_avx2 with 32-byte vectors under __attribute__((target("avx2"))). The copies
 * differ in width only, never in the order of an operation, and FMA is left off, so both
 * give the same bits. At the end, one small function per kernel, fc_<kernel>_f32(isa, ...),
 * calls the AVX2 copy when isa >= FC_ISA_AVX2, the level that fc_isa_level() (fc_isa.h, the
 * one place that decides the instruction set) reported at import; else the baseline copy.
 * Other compilers or CPUs have the baseline copy only (FC_AVX2 is 0), with the same results.
 *
 * Names: the run of channel j of a group for sample n is the HW values at x0 + n*sn + j*HW
 * (sn = C*HW); "shift" arrays hold the per-channel value subtracted
 * before a sum of squares; ca, cb, cc are dx's per-channel coefficients (bn.bwd).
 * Pointer arguments are marked IN (read) or OUT (written).
 */
#ifndef FC_BATCHNORM_H
#define FC_BATCHNORM_H

#include <string.h>
#if defined(__SSE2__)
#  include <emmintrin.h>
#endif
#include "fc_isa.h"

/* The AVX2 copies need the target attribute and __builtin_convertvector: GCC 9 or later
 * (clang should do, untested). */
#if FC_HAVE_X86_SIMD && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9))
#  define FC_AVX2 1
#else
#  define FC_AVX2 0
#endif

/* the Cython enum's LANES, CGROUP, RUN_PIECE and CHUNK */
enum { FC_LANES = 8, FC_GROUP = 64, FC_PIECE = 128, FC_CHUNK = 256 };

typedef float fc_v4sf __attribute__((vector_size(16)));
typedef float fc_v8sf __attribute__((vector_size(32)));
typedef double fc_v2df __attribute__((vector_size(16)));
typedef double fc_v4df __attribute__((vector_size(32)));
/* unaligned vector load and store: memcpy is the portable way, one move instruction */
#define FC_LOAD(v, p) memcpy(&(v), (p), sizeof(v))
#define FC_STORE(p, v) memcpy((p), &(v), sizeof(v))

/* FC_CVT_<isa>(p, lo, hi): the W floats at p, in double, as two vectors of W/2 */
#define FC_CVT_avx2(p, lo, hi) do { fc_v4sf l_, h_; FC_LOAD(l_, p); FC_LOAD(h_, (p) + 4); \
    lo = __builtin_convertvector(l_, fc_v4df); hi = __builtin_convertvector(h_, fc_v4df); \
} while (0)
#if defined(__SSE2__)       /* gcc 12 converts a 2-float vector one value at a time */
#  define FC_CVT_base(p, lo, hi) do { __m128 l_ = _mm_loadu_ps(p);                    \
    lo = (fc_v2df)_mm_cvtps_pd(l_); hi = (fc_v2df)_mm_cvtps_pd(_mm_movehl_ps(l_, l_)); \
} while (0)
#else
#  define FC_CVT_base(p, lo, hi) do { lo = (fc_v2df){(p)[0], (p)[1]};                 \
    hi = (fc_v2df){(p)[2], (p)[3]}; } while (0)
#endif

/* FC_KERNELS(ISA, TARGET, VF, VD, W) defines the five float32 kernels of the channel
 * path, named fc_<kernel>_<ISA>, doing their arithmetic on vectors VF of W floats (VD:
 * W/2 doubles). A channel's 8 lanes are 8/W such vectors, kept in small arrays that gcc
 * unrolls into registers: the copies differ in width only, not in the order of any
 * operation. (One vector type of 8 floats for both would have been simpler, but without
 * AVX gcc keeps such vectors in memory: 2-2.5x slower.)
 *
 * Every kernel works on a group of nc <= FC_GROUP neighbouring channels of a float32
 * (N, C, H, W) array: x0 points at channel 0 of the group, and the run of channel j
 * for sample n is the HW values at x0 + n*sn + j*HW (sn = C*HW). Loops go n outer,
 * j inner: memory order. Lane k takes the values i % 8 == k of a run (of a piece of
 * FC_PIECE values in the chunked sums); the last HW % 8 values go to lanes 0, 1, ...
 * The Cython loop of the same name says what each computes. */
#define FC_KERNELS(ISA, TARGET, VF, VD, W)                                            \
                                                                                      \
/* _group_sum: acc[8j + k] = lane k of channel j's sum of x (m NULL) or of            \
 * (x - m[j])^2, in double */                                                         \
TARGET static void fc_group_sum_##ISA(const float* x0, Py_ssize_t N, Py_ssize_t sn,   \
                                      Py_ssize_t HW, Py_ssize_t nc, const double* m,  \
                                      double* acc) {                                  \
    enum { ND = 16 / (W) };                 /* double vectors per 8 lanes */          \
    Py_ssize_t full = HW - HW % 8;                                                    \
    memset(acc, 0, nc * 8 * sizeof(double));                                          \
    for (Py_ssize_t n = 0; n < N; n++)                                                \
        for (Py_ssize_t j = 0; j < nc; j++) {                                         \
            const float* a = x0 + n * sn + j * HW;                                    \
            double* s = acc + 8 * j;                                                  \
            double mj = m == NULL ? 0 : m[j];                                         \
            VD t[ND], lo, hi;                                                         \
            for (int q = 0; q < ND; q++)                                              \
                FC_LOAD(t[q], s + q * (W) / 2);                                       \
            if (m == NULL) {                                                          \
                for (Py_ssize_t i = 0; i < full; i += 8)                              \
                    for (int q = 0; q < ND; q += 2) {                                 \
                        FC_CVT_##ISA(a + i + q * (W) / 2, lo, hi);                    \
                        t[q] += lo;                                                   \
                        t[q + 1] += hi;                                               \
                    }                                                                 \
            } else {                                                                  \
                for (Py_ssize_t i = 0; i < full; i += 8)                              \
                    for (int q = 0; q < ND; q += 2) {                                 \
                        FC_CVT_##ISA(a + i + q * (W) / 2, lo, hi);                    \
                        lo -= mj;                                                     \
                        hi -= mj;                                                     \
                        t[q] += lo * lo;                                              \
                        t[q + 1] += hi * hi;                                          \
                    }                                                                 \
            }                                                                         \
            for (int q = 0; q < ND; q++)                                              \
                FC_STORE(s + q * (W) / 2, t[q]);                                      \
            for (Py_ssize_t i = full; i < HW; i++) {                                  \
                double d = m == NULL ? a[i] : (a[i] - mj) * (a[i] - mj);              \
                s[i - full] += d;                                                     \
            }                                                                         \
        }                                                                             \
}                                                                                     \
                                                                                      \
/* _group_affine: y = (x - fm[j]) * fa[j] + fb[j] */                                  \
TARGET static void fc_group_affine_##ISA(const float* x0, float* y0, Py_ssize_t N,    \
                                         Py_ssize_t sn, Py_ssize_t HW, Py_ssize_t nc, \
                                         const float* fm, const float* fa,            \
                                         const float* fb) {                           \
    Py_ssize_t full = HW - HW % (W);                                                  \
    for (Py_ssize_t n = 0; n < N; n++)                                                \
        for (Py_ssize_t j = 0; j < nc; j++) {                                         \
            const float* a = x0 + n * sn + j * HW;                                    \
            float* o = y0 + n * sn + j * HW;                                          \
            float m = fm[j], s = fa[j], b = fb[j];                                    \
            VF v;                                                                     \
            for (Py_ssize_t i = 0; i < full; i += (W)) {                              \
                FC_LOAD(v, a + i);                                                    \
                v = (v - m) * s + b;                                                  \
                FC_STORE(o + i, v);                                                   \
            }                                                                         \
            for (Py_ssize_t i = full; i < HW; i++)                                    \
                o[i] = (a[i] - m) * s + b;                                            \
        }                                                                             \
}                                                                                     \
                                                                                      \
/* _group_moments: with d = x - shift[j], acc[24j + k] = lane k of channel j's sum of d^2 \
 * (only if with_dd), acc[24j + 8 + k] of dy, acc[24j + 16 + k] of dy * d, in float   \
 * chunks as above */                                                                 \
TARGET static void fc_group_moments_##ISA(const float* x0, const float* g0,           \
                                          Py_ssize_t N, Py_ssize_t sn, Py_ssize_t HW, \
                                          Py_ssize_t nc, const float* shift, int with_dd, \
                                          double* acc) {                              \
    enum { NV = 8 / (W) };                                                            \
    float part[FC_GROUP * 24];                                                        \
    Py_ssize_t pending = 0, p = 0;                                                    \
    memset(part, 0, nc * 24 * sizeof(float));                                         \
    memset(acc, 0, nc * 24 * sizeof(double));                                         \
    for (Py_ssize_t n = 0; n < N; n++) {                                              \
        for (Py_ssize_t j = 0; j < nc; j++) {                                         \
            const float* a = x0 + n * sn + j * HW;                                    \
            const float* g = g0 + n * sn + j * HW;                                    \
            float* pt = part + 24 * j;                                                \
            float sj = shift[j];                                                      \
            p = pending;                                                              \
            for (Py_ssize_t i0 = 0; i0 < HW; i0 += FC_PIECE) {                        \
                Py_ssize_t i1 = i0 + FC_PIECE < HW ? i0 + FC_PIECE : HW;              \
                Py_ssize_t full = i1 - (i1 - i0) % 8;                                 \
                VF dd[NV] = {{0}}, sg[NV] = {{0}}, sgd[NV] = {{0}}, d, y, t;          \
                if (with_dd) {                                                        \
                    for (Py_ssize_t i = i0; i < full; i += 8)                         \
                        for (int q = 0; q < NV; q++) {                                \
                            FC_LOAD(d, a + i + q * (W));                              \
                            FC_LOAD(y, g + i + q * (W));                              \
                            d -= sj;                                                  \
                            dd[q] += d * d;                                           \
                            sg[q] += y;                                               \
                            sgd[q] += y * d;                                          \
                        }                                                             \
                } else {        /* the saved-statistics backward: one sum fewer */    \
                    for (Py_ssize_t i = i0; i < full; i += 8)                         \
                        for (int q = 0; q < NV; q++) {                                \
                            FC_LOAD(d, a + i + q * (W));                              \
                            FC_LOAD(y, g + i + q * (W));                              \
                            d -= sj;                                                  \
                            sg[q] += y;                                               \
                            sgd[q] += y * d;                                          \
                        }                                                             \
                }                                                                     \
                for (int q = 0; q < NV; q++) {                                        \
                    FC_LOAD(t, pt + q * (W));                                         \
                    t += dd[q];                                                       \
                    FC_STORE(pt + q * (W), t);                                        \
                    FC_LOAD(t, pt + 8 + q * (W));                                     \
                    t += sg[q];                                                       \
                    FC_STORE(pt + 8 + q * (W), t);                                    \
                    FC_LOAD(t, pt + 16 + q * (W));                                    \
                    t += sgd[q];                                                      \
                    FC_STORE(pt + 16 + q * (W), t);                                   \
                }                                                                     \
                for (Py_ssize_t i = full; i < i1; i++) {                              \
                    float e = a[i] - sj;                                              \
                    pt[i - full] += e * e;                                            \
                    pt[8 + i - full] += g[i];                                         \
                    pt[16 + i - full] += g[i] * e;                                    \
                }                                                                     \
                p += i1 - i0;                                                         \
                if (p >= FC_CHUNK) {                                                  \
                    for (int k = 0; k < 24; k++) { acc[24 * j + k] += pt[k]; pt[k] = 0; } \
                    p = 0;                                                            \
                }                                                                     \
            }                                                                         \
        }                                                                             \
        pending = p;                                                                  \
    }                                                                                 \
    for (Py_ssize_t k = 0; k < nc * 24; k++)                                          \
        acc[k] += part[k];                                                            \
}                                                                                     \
                                                                                      \
/* _group_dx: dx = ca[j] * dy + cb[j] * (x - fm[j]) + cc[j] */                        \
TARGET static void fc_group_dx_##ISA(const float* x0, const float* g0, float* dx0,    \
                                     Py_ssize_t N, Py_ssize_t sn, Py_ssize_t HW,      \
                                     Py_ssize_t nc, const float* ca, const float* cb, \
                                     const float* cc, const float* fm) {              \
    Py_ssize_t full = HW - HW % (W);                                                  \
    for (Py_ssize_t n = 0; n < N; n++)                                                \
        for (Py_ssize_t j = 0; j < nc; j++) {                                         \
            const float* a = x0 + n * sn + j * HW;                                    \
            const float* g = g0 + n * sn + j * HW;                                    \
            float* o = dx0 + n * sn + j * HW;                                         \
            float A = ca[j], B = cb[j], Cc = cc[j], m = fm[j];                        \
            VF u, y;                                                                  \
            for (Py_ssize_t i = 0; i < full; i += (W)) {                              \
                FC_LOAD(u, a + i);                                                    \
                FC_LOAD(y, g + i);                                                    \
                u = A * y + B * (u - m) + Cc;                                         \
                FC_STORE(o + i, u);                                                   \
            }                                                                         \
            for (Py_ssize_t i = full; i < HW; i++)                                    \
                o[i] = A * g[i] + B * (a[i] - m) + Cc;                                \
        }                                                                             \
}                                                                                     \
                                                                                      \
/* The row path (BatchNorm1d, an (N, C) array): each kernel takes 8 neighbouring      \
 * channels (x and g point at the first one's column, rows C apart) down all N rows,  \
 * their sums or coefficients in registers (w = 8 of the Cython _rows_* loops). */    \
                                                                                      \
/* _rows_moments: s1[k] = sum d, s2[k] = sum d^2 in double, d = x - shift[k] */       \
TARGET static void fc_rows_moments_##ISA(const float* x, Py_ssize_t N, Py_ssize_t C,  \
                                         const double* shift, double* s1, double* s2) { \
    enum { ND = 16 / (W) };                                                           \
    VD sh[ND], t1[ND], t2[ND], lo, hi;                                                \
    for (int q = 0; q < ND; q++) {                                                    \
        FC_LOAD(sh[q], shift + q * (W) / 2);                                          \
        t1[q] = t2[q] = (VD){0};                                                      \
    }                                                                                 \
    for (Py_ssize_t n = 0; n < N; n++)                                                \
        for (int q = 0; q < ND; q += 2) {                                             \
            FC_CVT_##ISA(x + n * C + q * (W) / 2, lo, hi);                            \
            lo -= sh[q];                                                              \
            hi -= sh[q + 1];                                                          \
            t1[q] += lo;                                                              \
            t1[q + 1] += hi;                                                          \
            t2[q] += lo * lo;                                                         \
            t2[q + 1] += hi * hi;                                                     \
        }                                                                             \
    for (int q = 0; q < ND; q++) {                                                    \
        FC_STORE(s1 + q * (W) / 2, t1[q]);                                            \
        FC_STORE(s2 + q * (W) / 2, t2[q]);                                            \
    }                                                                                 \
}                                                                                     \
                                                                                      \
/* _rows_affine: y = (x - fm[k]) * fa[k] + fb[k] */                                   \
TARGET static void fc_rows_affine_##ISA(const float* x, float* y, Py_ssize_t N,       \
                                        Py_ssize_t C, const float* fm,                \
                                        const float* fa, const float* fb) {           \
    enum { NV = 8 / (W) };                                                            \
    VF m[NV], a[NV], b[NV], v;                                                        \
    for (int q = 0; q < NV; q++) {                                                    \
        FC_LOAD(m[q], fm + q * (W));                                                  \
        FC_LOAD(a[q], fa + q * (W));                                                  \
        FC_LOAD(b[q], fb + q * (W));                                                  \
    }                                                                                 \
    for (Py_ssize_t n = 0; n < N; n++)                                                \
        for (int q = 0; q < NV; q++) {                                                \
            FC_LOAD(v, x + n * C + q * (W));                                          \
            v = (v - m[q]) * a[q] + b[q];                                             \
            FC_STORE(y + n * C + q * (W), v);                                         \
        }                                                                             \
}                                                                                     \
                                                                                      \
/* _rows_sums: with d = x - shift[k], sx[k] = sum d, sxx[k] = sum d^2 (only if        \
 * with_x), s1[k] = sum g, sdx[k] = sum g * d, each over blocks of 8 rows in float,   \
 * then added to the double sums */                                                   \
TARGET static void fc_rows_sums_##ISA(const float* x, const float* g, Py_ssize_t N,   \
                                      Py_ssize_t C, const float* shift, int with_x,   \
                                      double* sx, double* sxx, double* s1, double* sdx) { \
    enum { NV = 8 / (W) };                                                            \
    VF sh[NV], px[NV], pxx[NV], sg[NV], sgd[NV], d, y;                                \
    float part[32];                                                                   \
    double acc[32] = {0};           /* local: the compiler vectorises acc += part */  \
    for (int q = 0; q < NV; q++)                                                      \
        FC_LOAD(sh[q], shift + q * (W));                                              \
    for (Py_ssize_t n0 = 0; n0 < N; n0 += 8) {                                        \
        Py_ssize_t n1 = n0 + 8 < N ? n0 + 8 : N;                                      \
        for (int q = 0; q < NV; q++)                                                  \
            px[q] = pxx[q] = sg[q] = sgd[q] = (VF){0};                                \
        for (Py_ssize_t n = n0; n < n1; n++)                                          \
            for (int q = 0; q < NV; q++) {                                            \
                FC_LOAD(d, x + n * C + q * (W));                                      \
                FC_LOAD(y, g + n * C + q * (W));                                      \
                d -= sh[q];                                                           \
                if (with_x) {                                                         \
                    px[q] += d;                                                       \
                    pxx[q] += d * d;                                                  \
                }                                                                     \
                sg[q] += y;                                                           \
                sgd[q] += y * d;                                                      \
            }                                                                         \
        for (int q = 0; q < NV; q++) {                                                \
            FC_STORE(part + q * (W), px[q]);                                          \
            FC_STORE(part + 8 + q * (W), pxx[q]);                                     \
            FC_STORE(part + 16 + q * (W), sg[q]);                                     \
            FC_STORE(part + 24 + q * (W), sgd[q]);                                    \
        }                                                                             \
        for (int k = 0; k < 32; k++)                                                  \
            acc[k] += part[k];                                                        \
    }                                                                                 \
    for (int k = 0; k < 8; k++) {                                                     \
        sx[k] = acc[k];                                                               \
        sxx[k] = acc[8 + k];                                                          \
        s1[k] = acc[16 + k];                                                          \
        sdx[k] = acc[24 + k];                                                         \
    }                                                                                 \
}                                                                                     \
                                                                                      \
/* _rows_dx: dx = ca[k] * g + cb[k] * (x - fm[k]) + cc[k] */                          \
TARGET static void fc_rows_dx_##ISA(const float* x, const float* g, float* dx,        \
                                    Py_ssize_t N, Py_ssize_t C, const float* fm,      \
                                    const float* ca, const float* cb,                 \
                                    const float* cc) {                                \
    enum { NV = 8 / (W) };                                                            \
    VF m[NV], a[NV], b[NV], c[NV], u, y;                                              \
    for (int q = 0; q < NV; q++) {                                                    \
        FC_LOAD(m[q], fm + q * (W));                                                  \
        FC_LOAD(a[q], ca + q * (W));                                                  \
        FC_LOAD(b[q], cb + q * (W));                                                  \
        FC_LOAD(c[q], cc + q * (W));                                                  \
    }                                                                                 \
    for (Py_ssize_t n = 0; n < N; n++)                                                \
        for (int q = 0; q < NV; q++) {                                                \
            FC_LOAD(u, x + n * C + q * (W));                                          \
            FC_LOAD(y, g + n * C + q * (W));                                          \
            u = a[q] * y + b[q] * (u - m[q]) + c[q];                                  \
            FC_STORE(dx + n * C + q * (W), u);                                        \
        }                                                                             \
}

FC_KERNELS(base, , fc_v4sf, fc_v2df, 4)
#if FC_AVX2
FC_KERNELS(avx2, __attribute__((target("avx2"))), fc_v8sf, fc_v4df, 8)
#endif

/* The functions the Cython inner loops call for float32: the copy for isa (fc_isa_level() at
 * import). */

/* IN x0, m; OUT acc */
static inline void fc_group_sum_f32(int isa, const float* x0, Py_ssize_t N, Py_ssize_t sn,
        Py_ssize_t HW, Py_ssize_t nc, const double* m, double* acc)
{
#if FC_AVX2
    if (isa >= FC_ISA_AVX2) {
        fc_group_sum_avx2(x0, N, sn, HW, nc, m, acc);
        return;
    }
#endif
    (void)isa;
    fc_group_sum_base(x0, N, sn, HW, nc, m, acc);
}

/* IN x0, fm, fa, fb; OUT y0 */
static inline void fc_group_affine_f32(int isa, const float* x0, float* y0, Py_ssize_t N,
        Py_ssize_t sn, Py_ssize_t HW, Py_ssize_t nc, const float* fm, const float* fa, const
        float* fb)
{
#if FC_AVX2
    if (isa >= FC_ISA_AVX2) {
        fc_group_affine_avx2(x0, y0, N, sn, HW, nc, fm, fa, fb);
        return;
    }
#endif
    (void)isa;
    fc_group_affine_base(x0, y0, N, sn, HW, nc, fm, fa, fb);
}

/* IN x0, g0, shift; OUT acc */
static inline void fc_group_moments_f32(int isa, const float* x0, const float* g0, Py_ssize_t
        N, Py_ssize_t sn, Py_ssize_t HW, Py_ssize_t nc, const float* shift, int with_dd,
        double* acc)
{
#if FC_AVX2
    if (isa >= FC_ISA_AVX2) {
        fc_group_moments_avx2(x0, g0, N, sn, HW, nc, shift, with_dd, acc);
        return;
    }
#endif
    (void)isa;
    fc_group_moments_base(x0, g0, N, sn, HW, nc, shift, with_dd, acc);
}

/* IN x0, g0, ca, cb, cc, fm; OUT dx0 */
static inline void fc_group_dx_f32(int isa, const float* x0, const float* g0, float* dx0,
        Py_ssize_t N, Py_ssize_t sn, Py_ssize_t HW, Py_ssize_t nc, const float* ca, const
        float* cb, const float* cc, const float* fm)
{
#if FC_AVX2
    if (isa >= FC_ISA_AVX2) {
        fc_group_dx_avx2(x0, g0, dx0, N, sn, HW, nc, ca, cb, cc, fm);
        return;
    }
#endif
    (void)isa;
    fc_group_dx_base(x0, g0, dx0, N, sn, HW, nc, ca, cb, cc, fm);
}

/* IN x, shift; OUT s1, s2 */
static inline void fc_rows_moments_f32(int isa, const float* x, Py_ssize_t N, Py_ssize_t C,
        const double* shift, double* s1, double* s2)
{
#if FC_AVX2
    if (isa >= FC_ISA_AVX2) {
        fc_rows_moments_avx2(x, N, C, shift, s1, s2);
        return;
    }
#endif
    (void)isa;
    fc_rows_moments_base(x, N, C, shift, s1, s2);
}

/* IN x, fm, fa, fb; OUT y */
static inline void fc_rows_affine_f32(int isa, const float* x, float* y, Py_ssize_t N,
        Py_ssize_t C, const float* fm, const float* fa, const float* fb)
{
#if FC_AVX2
    if (isa >= FC_ISA_AVX2) {
        fc_rows_affine_avx2(x, y, N, C, fm, fa, fb);
        return;
    }
#endif
    (void)isa;
    fc_rows_affine_base(x, y, N, C, fm, fa, fb);
}

/* IN x, g, shift; OUT sx, sxx, s1, sdx */
static inline void fc_rows_sums_f32(int isa, const float* x, const float* g, Py_ssize_t N,
        Py_ssize_t C, const float* shift, int with_x, double* sx, double* sxx, double* s1,
        double* sdx)
{
#if FC_AVX2
    if (isa >= FC_ISA_AVX2) {
        fc_rows_sums_avx2(x, g, N, C, shift, with_x, sx, sxx, s1, sdx);
        return;
    }
#endif
    (void)isa;
    fc_rows_sums_base(x, g, N, C, shift, with_x, sx, sxx, s1, sdx);
}

/* IN x, g, fm, ca, cb, cc; OUT dx */
static inline void fc_rows_dx_f32(int isa, const float* x, const float* g, float* dx,
        Py_ssize_t N, Py_ssize_t C, const float* fm, const float* ca, const float* cb, const
        float* cc)
{
#if FC_AVX2
    if (isa >= FC_ISA_AVX2) {
        fc_rows_dx_avx2(x, g, dx, N, C, fm, ca, cb, cc);
        return;
    }
#endif
    (void)isa;
    fc_rows_dx_base(x, g, dx, N, C, fm, ca, cb, cc);
}

#endif
