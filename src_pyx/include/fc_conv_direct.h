/* fc_conv_direct.h: the register tiles of the direct convolution (conv_direct.pyx).
 *
 * Two portable tiles, each written once for a type T and instantiated for float and double
 * (C has no templates, hence the macros FC_DIRECT_TILE(T, NAME) and FC_DIRECT_DW_TILE(T,
 * NAME)), and float32 tiles for AVX2 and AVX-512, the ones that run by default there:
 *
 *   fastconv_tile_*     forward, eq. (conv.fwd): y[k0 + j, p, q0 + i] for 4 output
 *       channels j and 2 vectors of L columns i (8 floats or 4 doubles), summed over
 *       (c, r, s) with the 8 accumulators held in registers; each input vector loaded
 *       feeds 4 channels, each weight 2 vectors. x is one zero-padded image, so the loop
 *       has no bounds tests. Tap (r, s) reads x[c, r*dh + .., s*dw + ..] (dilation).
 *   fastconv_dw_tile_*  backward, eq. (conv.bwd): dw[k0 + j, c, r, s] for 4 output
 *       channels and one tap, a dot product over (n, p, q) with L lanes along q; the
 *       lanes and the scalar tail (Q % L columns) are added in a fixed order at the end.
 *
 *   fastconv_dw_row_f32 backward on AVX2, float32, stride 1: dw[k0 + j, c, r, s] for
 *       2 output channels and a whole row of S <= 5 taps, 2 x S accumulators of 8 lanes:
 *       per 8 columns, 2 vectors of dy and S of x feed 2*S fused multiply-adds (the
 *       one-tap tile loads 5 vectors for 4 products). Compiled for AVX2 with a target
 *       attribute, called only where fc_isa_level() (fc_isa.h) allows it.
 *   fastconv_row_f32    forward on AVX2 or AVX-512, float32 (fc_tile16_body, its AVX2
 *       copy fc_tile8_body): one output row of up to 16 channels as a sum over the C*R*S
 *       taps, each tap one vector load of the image row feeding a broadcast weight per
 *       channel; the accumulators (channels x 1 or 2 vectors) stay in registers.
 *   fastconv_dw_rows_f32 backward on AVX-512, float32, stride 1: the same sums for up
 *       to 4 output channels and ALL R x S taps, image by image, so that each image's
 *       rows are read from memory once (the row tile reads x and dy once per kernel row).
 *
 * Why 4 x 2 vectors: 8 accumulators + 2 input vectors + a broadcast weight fit the 16
 * registers of SSE2, the baseline every x86-64 has. Why C: written as Cython loops, gcc
 * vectorises the tap loop instead, spills the accumulators, and runs about 3x slower;
 * GCC/Clang vector extensions (16-byte vectors, any ISA) state which loop is the vector.
 * The order of every sum depends on the shapes only.
 */
#ifndef FC_CONV_DIRECT_H
#define FC_CONV_DIRECT_H

#include <string.h>

#include "fc_isa.h"

/* fastconv_dw_rows_f32's padding: where a thread builds one zero-padded input plane */
typedef struct {
    float *plane;                 /* (H + 2*ph) x (W + 2*pw) floats, or NULL: no padding */
    Py_ssize_t H, W, ph, pw;      /* the input plane's size and its zero border */
} fc_dw_padding;


#define FC_DIRECT_TILE(T, NAME)                                                        \
static inline void NAME(const T *x, const T *w, const T *b, T *y, Py_ssize_t C,       \
                        Py_ssize_t R, Py_ssize_t S, Py_ssize_t Hp, Py_ssize_t Wp,     \
                        Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t y_step,\
                        Py_ssize_t j_first)                                           \
{                                                                                     \
    typedef T vec __attribute__((vector_size(16)));                                   \
    enum { L = 16 / sizeof(T) };                                                      \
    const Py_ssize_t CRS = C * R * S;                                                 \
    vec zero = {0}, x0 = zero, x1 = zero;                                                   \
    vec a00 = zero, a01 = zero, a10 = zero, a11 = zero;                               \
    vec a20 = zero, a21 = zero, a30 = zero, a31 = zero;                               \
    if (b) {                                                                          \
        a00 = a01 = zero + b[0]; a10 = a11 = zero + b[1];                             \
        a20 = a21 = zero + b[2]; a30 = a31 = zero + b[3];                             \
    }                                                                                 \
    for (Py_ssize_t c = 0; c < C; c++) {                                              \
        for (Py_ssize_t r = 0; r < R; r++) {                                          \
            const T *x_row = x + (c * Hp + r * dh) * Wp;                              \
            const T *w_row = w + (c * R + r) * S;                                     \
            for (Py_ssize_t s = 0; s < S; s++) {                                      \
                const T *x_tap = x_row + s * dw;                                      \
                if (sw == 1) {                                                        \
                    memcpy(&x0, x_tap, 16);                                           \
                    memcpy(&x1, x_tap + L, 16);                                       \
                } else {                                                              \
                    for (int i = 0; i < L; i++) {                                     \
                        x0[i] = x_tap[i * sw];                                        \
                        x1[i] = x_tap[(i + L) * sw];                                  \
                    }                                                                 \
                }                                                                     \
                T w0 = w_row[s], w1 = w_row[CRS + s];                                 \
                T w2 = w_row[2 * CRS + s], w3 = w_row[3 * CRS + s];                   \
                a00 += w0 * x0; a01 += w0 * x1; a10 += w1 * x0; a11 += w1 * x1;       \
                a20 += w2 * x0; a21 += w2 * x1; a30 += w3 * x0; a31 += w3 * x1;       \
            }                                                                         \
        }                                                                             \
    }                                                                                 \
    if (j_first <= 0) { memcpy(y, &a00, 16); memcpy(y + L, &a01, 16); }              \
    y += y_step;                                                                      \
    if (j_first <= 1) { memcpy(y, &a10, 16); memcpy(y + L, &a11, 16); }               \
    y += y_step;                                                                      \
    if (j_first <= 2) { memcpy(y, &a20, 16); memcpy(y + L, &a21, 16); }               \
    y += y_step;                                                                      \
    memcpy(y, &a30, 16); memcpy(y + L, &a31, 16);                                     \
}
FC_DIRECT_TILE(float, fastconv_tile_f32)
FC_DIRECT_TILE(double, fastconv_tile_f64)

#define FC_DIRECT_DW_TILE(T, NAME)                                                     \
static inline void NAME(const T *x, const T *dy, T *out, Py_ssize_t N, Py_ssize_t P,  \
                        Py_ssize_t Q, Py_ssize_t x_n, Py_ssize_t x_p, Py_ssize_t sw,  \
                        Py_ssize_t dy_n, Py_ssize_t dy_k, Py_ssize_t j_first)         \
{                                                                                     \
    typedef T vec __attribute__((vector_size(16)));                                   \
    enum { L = 16 / sizeof(T) };                                                      \
    vec zero = {0}, xv = zero, d0, d1, d2, d3;                                        \
    vec a0 = zero, a1 = zero, a2 = zero, a3 = zero;                                   \
    T t0 = 0, t1 = 0, t2 = 0, t3 = 0, sums[4];                                        \
    for (Py_ssize_t n = 0; n < N; n++) {                                              \
        for (Py_ssize_t p = 0; p < P; p++) {                                          \
            const T *x_row = x + n * x_n + p * x_p;                                   \
            const T *dy0 = dy + n * dy_n + p * Q, *dy1 = dy0 + dy_k;                  \
            const T *dy2 = dy1 + dy_k, *dy3 = dy2 + dy_k;                             \
            Py_ssize_t q = 0;                                                         \
            for (; q + L <= Q; q += L) {                                              \
                if (sw == 1) {                                                        \
                    memcpy(&xv, x_row + q, 16);                                       \
                } else {                                                              \
                    for (int i = 0; i < L; i++) xv[i] = x_row[(q + i) * sw];          \
                }                                                                     \
                memcpy(&d0, dy0 + q, 16); memcpy(&d1, dy1 + q, 16);                   \
                memcpy(&d2, dy2 + q, 16); memcpy(&d3, dy3 + q, 16);                   \
                a0 += d0 * xv; a1 += d1 * xv; a2 += d2 * xv; a3 += d3 * xv;           \
            }                                                                         \
            for (; q < Q; q++) {                                                      \
                T xs = x_row[q * sw];                                                 \
                t0 += dy0[q] * xs; t1 += dy1[q] * xs;                                 \
                t2 += dy2[q] * xs; t3 += dy3[q] * xs;                                 \
            }                                                                         \
        }                                                                             \
    }                                                                                 \
    sums[0] = t0; sums[1] = t1; sums[2] = t2; sums[3] = t3;                           \
    for (int i = 0; i < L; i++) {                                                     \
        sums[0] += a0[i]; sums[1] += a1[i]; sums[2] += a2[i]; sums[3] += a3[i];       \
    }                                                                                 \
    for (int j = (int)j_first; j < 4; j++) out[j] = sums[j];                          \
}
FC_DIRECT_DW_TILE(float, fastconv_dw_tile_f32)
FC_DIRECT_DW_TILE(double, fastconv_dw_tile_f64)

#define FC_DW_ROW_MAX_S 5      /* taps per row fastconv_dw_row_f32 handles (3 or 5) */

#if FC_HAVE_X86_SIMD
#include <immintrin.h>

/* AVX-512's mask of the first n of 16 lanes */
static inline __attribute__((always_inline)) __mmask16 fc_lanes16(Py_ssize_t n)
{
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* dw[k0 + j, c, r, s] = sum_{n,p,q} dy[n, k0 + j, p, q] * x[n, c, p*sh + r, q + s] for
 * j < 2 and s < S, by lanes along q: x points at (n = 0, c, row r), rows x_p apart;
 * out[j * S + s] gets the sums. The last Q % 8 columns of a row are read through a mask
 * (zeros beyond), and each accumulator's 8 lanes are added in order at the end, so the
 * order of every sum depends on the shapes only. S is a constant in each copy (3, 5), so
 * that the 2 x S accumulators are registers. */
static inline __attribute__((always_inline, target("avx2,fma")))
void fc_dw_row_body(const float *x, const float *dy, float *out, Py_ssize_t N, Py_ssize_t P,
                    Py_ssize_t Q, Py_ssize_t x_n, Py_ssize_t x_p, Py_ssize_t dy_n,
                    Py_ssize_t dy_k, const int S)
{
    __m256 acc[2][FC_DW_ROW_MAX_S], a0, a1, xv;
    const int rem = (int)(Q % 8);
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    FC_UNROLL for (int s = 0; s < S; s++) acc[0][s] = acc[1][s] = _mm256_setzero_ps();
    for (Py_ssize_t n = 0; n < N; n++) {
        for (Py_ssize_t p = 0; p < P; p++) {
            const float *x_row = x + n * x_n + p * x_p;
            const float *dy0 = dy + n * dy_n + p * Q, *dy1 = dy0 + dy_k;
            Py_ssize_t q = 0;
            for (; q + 8 <= Q; q += 8) {
                a0 = _mm256_loadu_ps(dy0 + q);
                a1 = _mm256_loadu_ps(dy1 + q);
                FC_UNROLL for (int s = 0; s < S; s++) {
                    xv = _mm256_loadu_ps(x_row + q + s);
                    acc[0][s] = _mm256_fmadd_ps(a0, xv, acc[0][s]);
                    acc[1][s] = _mm256_fmadd_ps(a1, xv, acc[1][s]);
                }
            }
            if (rem) {
                a0 = _mm256_maskload_ps(dy0 + q, tail);
                a1 = _mm256_maskload_ps(dy1 + q, tail);
                FC_UNROLL for (int s = 0; s < S; s++) {
                    xv = _mm256_maskload_ps(x_row + q + s, tail);
                    acc[0][s] = _mm256_fmadd_ps(a0, xv, acc[0][s]);
                    acc[1][s] = _mm256_fmadd_ps(a1, xv, acc[1][s]);
                }
            }
        }
    }
    for (int j = 0; j < 2; j++) {
        for (int s = 0; s < S; s++) {
            float lanes[8], sum = 0;
            _mm256_storeu_ps(lanes, acc[j][s]);
            for (int i = 0; i < 8; i++) sum += lanes[i];
            out[j * S + s] = sum;
        }
    }
}

static __attribute__((target("avx2,fma"), noinline))
void fc_dw_row3(const float *x, const float *dy, float *out, Py_ssize_t N, Py_ssize_t P,
                Py_ssize_t Q, Py_ssize_t x_n, Py_ssize_t x_p, Py_ssize_t dy_n, Py_ssize_t dy_k)
{ fc_dw_row_body(x, dy, out, N, P, Q, x_n, x_p, dy_n, dy_k, 3); }

static __attribute__((target("avx2,fma"), noinline))
void fc_dw_row5(const float *x, const float *dy, float *out, Py_ssize_t N, Py_ssize_t P,
                Py_ssize_t Q, Py_ssize_t x_n, Py_ssize_t x_p, Py_ssize_t dy_n, Py_ssize_t dy_k)
{ fc_dw_row_body(x, dy, out, N, P, Q, x_n, x_p, dy_n, dy_k, 5); }

/* AVX-512, the same sums for every row of taps at once: dw[k0 + j, c, r, s] for j < KB
 * channels (1 to 4), all R rows and S = 3 or 5 taps, 16 lanes along q. The row tile
 * above streams all of x and dy from memory once per (pair of channels, kernel row);
 * here the loop over images is outermost, so one image's rows (a few KiB) are read from
 * memory once and from L1 for every r. Per image and kernel row r, the KB x S
 * accumulators of row r come into registers from sums (a scratch of R * KB * S vectors
 * of 16 floats), run over all (p, q) of the image, and go back. Per 16 columns: KB
 * vectors of dy and S of x feed KB * S fused multiply-adds. Each lane sums over n, p,
 * then q in order, and the 16 lanes are added in order at the end: the order depends on
 * the shapes only.
 * x points at plane c of image 0, images x_n apart. Without padding (pad->plane NULL),
 * row p*sh + r*dh of image n is at x + n*x_n + p*x_p + r*x_r. With padding, each image's
 * plane is first copied into pad->plane (the thread's scratch, in L1: its zero border is
 * written once), and the rows are read there, x_p and x_r counting its padded rows.
 * dy points at (n = 0, k0, 0, 0), its channels dy_k apart;
 * dw[j * dw_k + r * S + s] gets the sums. Unless db is NULL, each image's dy is also
 * summed (in double, lane by lane, while it is in L1) into db[j] = sum over (n, p, q). */
static inline __attribute__((always_inline, target("avx512f,fma")))
void fc_dw_rows_body(const float *x, const float *dy, float *dw, float *db, float *sums,
                     const fc_dw_padding *pad, Py_ssize_t N, Py_ssize_t P, Py_ssize_t Q,
                     Py_ssize_t R, Py_ssize_t x_n, Py_ssize_t x_p, Py_ssize_t x_r,
                     Py_ssize_t dy_n, Py_ssize_t dy_k, Py_ssize_t dw_k, const int KB,
                     const int S)
{
    __m512 acc[4][FC_DW_ROW_MAX_S], d[4], xv;
    __m512d dsum[4][2];
    const Py_ssize_t full = Q - Q % 16;
    const __mmask16 tail = (__mmask16)((1u << (Q % 16)) - 1);
    const Py_ssize_t Wp = pad->W + 2 * pad->pw;
    for (Py_ssize_t i = 0; i < R * KB * S * 16; i++) sums[i] = 0;
    if (pad->plane != NULL)
        memset(pad->plane, 0, (size_t)((pad->H + 2 * pad->ph) * Wp) * sizeof(float));
    FC_UNROLL for (int j = 0; j < KB; j++) dsum[j][0] = dsum[j][1] = _mm512_setzero_pd();
    for (Py_ssize_t n = 0; n < N; n++) {
        const float *image = x + n * x_n;
        if (pad->plane != NULL) {          /* the plane inside its zero border */
            for (Py_ssize_t h = 0; h < pad->H; h++) {
                const float *src = image + h * pad->W;
                float *dst = pad->plane + (h + pad->ph) * Wp + pad->pw;
                for (Py_ssize_t w = 0; w < pad->W; w += 16) {
                    const __mmask16 m = fc_lanes16(pad->W - w);
                    _mm512_mask_storeu_ps(dst + w, m, _mm512_maskz_loadu_ps(m, src + w));
                }
            }
            image = pad->plane;
        }
        for (Py_ssize_t r = 0; r < R; r++) {
            float *row_sums = sums + r * KB * S * 16;
            FC_UNROLL for (int j = 0; j < KB; j++)
                FC_UNROLL for (int s = 0; s < S; s++)
                    acc[j][s] = _mm512_loadu_ps(row_sums + (j * S + s) * 16);
            for (Py_ssize_t p = 0; p < P; p++) {
                const float *x_row = image + p * x_p + r * x_r;
                const float *dy_row = dy + n * dy_n + p * Q;
                for (Py_ssize_t q = 0; q < Q; q += 16) {
                    const __mmask16 m = q < full ? (__mmask16)0xFFFF : tail;
                    FC_UNROLL for (int j = 0; j < KB; j++)
                        d[j] = _mm512_maskz_loadu_ps(m, dy_row + j * dy_k + q);
                    FC_UNROLL for (int s = 0; s < S; s++) {
                        xv = _mm512_maskz_loadu_ps(m, x_row + q + s);
                        FC_UNROLL for (int j = 0; j < KB; j++)
                            acc[j][s] = _mm512_fmadd_ps(d[j], xv, acc[j][s]);
                    }
                }
            }
            FC_UNROLL for (int j = 0; j < KB; j++)
                FC_UNROLL for (int s = 0; s < S; s++)
                    _mm512_storeu_ps(row_sums + (j * S + s) * 16, acc[j][s]);
        }
        if (db != NULL)          /* db: the image's dy, still in L1, summed in double */
            for (Py_ssize_t p = 0; p < P; p++) {
                const float *dy_row = dy + n * dy_n + p * Q;
                for (Py_ssize_t q = 0; q < Q; q += 16) {
                    const __mmask16 m = q < full ? (__mmask16)0xFFFF : tail;
                    FC_UNROLL for (int j = 0; j < KB; j++) {
                        __m512 v = _mm512_maskz_loadu_ps(m, dy_row + j * dy_k + q);
                        __m256 lo = _mm512_castps512_ps256(v);             /* lanes 0-7 */
                        __m256 hi = _mm256_castpd_ps(                      /* lanes 8-15 */
                            _mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
                        dsum[j][0] = _mm512_add_pd(dsum[j][0], _mm512_cvtps_pd(lo));
                        dsum[j][1] = _mm512_add_pd(dsum[j][1], _mm512_cvtps_pd(hi));
                    }
                }
            }
    }
    if (db != NULL)
        FC_UNROLL for (int j = 0; j < KB; j++) {
            double lanes[16], total = 0;
            _mm512_storeu_pd(lanes, dsum[j][0]);
            _mm512_storeu_pd(lanes + 8, dsum[j][1]);
            for (int i = 0; i < 16; i++) total += lanes[i];
            db[j] = (float)total;
        }
    for (Py_ssize_t r = 0; r < R; r++)
        for (int j = 0; j < KB; j++)
            for (int s = 0; s < S; s++) {
                const float *lanes = sums + ((r * KB + j) * S + s) * 16;
                float total = 0;
                for (int i = 0; i < 16; i++) total += lanes[i];
                dw[j * dw_k + r * S + s] = total;
            }
}

/* one copy per (KB, S), so that the KB x S accumulators are registers */
#define FC_DW_ROWS(KB, S)                                                                 \
static __attribute__((target("avx512f,fma"), noinline))                                   \
void fc_dw_rows_##KB##_##S(const float *x, const float *dy, float *dw, float *db,        \
                           float *sums, const fc_dw_padding *pad, Py_ssize_t N,           \
                           Py_ssize_t P, Py_ssize_t Q, Py_ssize_t R, Py_ssize_t x_n,      \
                           Py_ssize_t x_p, Py_ssize_t x_r, Py_ssize_t dy_n,               \
                           Py_ssize_t dy_k, Py_ssize_t dw_k)                              \
{ fc_dw_rows_body(x, dy, dw, db, sums, pad, N, P, Q, R, x_n, x_p, x_r, dy_n, dy_k, dw_k,  \
                  KB, S); }
FC_DW_ROWS(1, 3) FC_DW_ROWS(2, 3) FC_DW_ROWS(3, 3) FC_DW_ROWS(4, 3)
FC_DW_ROWS(1, 5) FC_DW_ROWS(2, 5) FC_DW_ROWS(3, 5) FC_DW_ROWS(4, 5)
typedef void (*fc_dw_rows_fn)(const float *, const float *, float *, float *, float *,
                              const fc_dw_padding *, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                              Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                              Py_ssize_t, Py_ssize_t);
static const fc_dw_rows_fn fc_dw_rows[2][4] = {
    {fc_dw_rows_1_3, fc_dw_rows_2_3, fc_dw_rows_3_3, fc_dw_rows_4_3},
    {fc_dw_rows_1_5, fc_dw_rows_2_5, fc_dw_rows_3_5, fc_dw_rows_4_5}};
#endif

#if FC_HAVE_X86_SIMD
/* AVX2's mask of the first n of 8 lanes (all for n >= 8, none for n <= 0) */
static inline __attribute__((always_inline, target("avx2"))) __m256i fc_lanes8(Py_ssize_t n)
{
    int k = n >= 8 ? 8 : n <= 0 ? 0 : (int)n;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* AVX-512 forward: y[k0 + j, p, q0 + i] for j < KT output channels and NV vectors of 16
 * columns i (i < ncols: masks cut the row's end), as a sum over the T = C*R*S taps
 * t = (c, r, s):
 *     y[k0 + j, p, q0 + i] = b[k0 + j] + sum_t wT[t, k0 + j] * x[tap[t] + i]
 * with the KT x NV accumulators held in registers: per tap, NV vectors of x loaded feed
 * KT channels, each weight broadcast NV vectors. x points at the tile's first window in
 * one padded image (split into column phases, see fastconv_row_f32), so tap t of every
 * output column is tap[t] further on; wT (T, K) is the weights transposed, pointing at
 * wT[0, k0]; y at y[k0, p, q0], channels y_step apart; b at b[k0] or NULL. Each output
 * sums the bias, then the taps in order. With relu, each accumulator goes through
 * (relu.fwd), v <= 0 ? 0 : v, on its way out: the same bits as a ReLU pass after. */
static inline __attribute__((always_inline, target("avx512f,fma")))
void fc_tile16_body(const float *x, const Py_ssize_t *tap, Py_ssize_t T, const float *wT,
                    Py_ssize_t K, const float *b, float *y, Py_ssize_t y_step,
                    Py_ssize_t ncols, int relu, const int KT, const int NV)
{
    __m512 acc[16][2], xv[2];
    __mmask16 m[2];
    FC_UNROLL for (int v = 0; v < NV; v++) m[v] = fc_lanes16(ncols - 16 * v);
    FC_UNROLL for (int j = 0; j < KT; j++)
        FC_UNROLL for (int v = 0; v < NV; v++)
            acc[j][v] = b ? _mm512_set1_ps(b[j]) : _mm512_setzero_ps();
    for (Py_ssize_t t = 0; t < T; t++) {
        FC_UNROLL for (int v = 0; v < NV; v++)
            xv[v] = _mm512_maskz_loadu_ps(m[v], x + tap[t] + 16 * v);
        FC_UNROLL for (int j = 0; j < KT; j++) {
            __m512 wv = _mm512_set1_ps(wT[t * K + j]);
            FC_UNROLL for (int v = 0; v < NV; v++)
                acc[j][v] = _mm512_fmadd_ps(wv, xv[v], acc[j][v]);
        }
    }
    FC_UNROLL for (int j = 0; j < KT; j++)
        FC_UNROLL for (int v = 0; v < NV; v++) {
            __m512 out = acc[j][v];
            if (relu)        /* lanes <= 0 (not NaN: the compare is ordered) become +0 */
                out = _mm512_maskz_mov_ps(
                    ~_mm512_cmp_ps_mask(out, _mm512_setzero_ps(), _CMP_LE_OQ), out);
            _mm512_mask_storeu_ps(y + j * y_step + 16 * v, m[v], out);
        }
}

/* One copy of fc_tile<L>_body per (KT, NV), so that the accumulators are registers,
 * compiled for TARGET: fc_tile<L>_<KT>_<NV>, for both instruction sets. */
#define FC_ROW_TILE(L, KT, NV, TARGET)                                                    \
static __attribute__((target(TARGET), noinline))                                          \
void fc_tile##L##_##KT##_##NV(const float *x, const Py_ssize_t *tap, Py_ssize_t T,        \
                              const float *wT, Py_ssize_t K, const float *b, float *y,     \
                              Py_ssize_t y_step, Py_ssize_t ncols, int relu)               \
{ fc_tile##L##_body(x, tap, T, wT, K, b, y, y_step, ncols, relu, KT, NV); }
typedef void (*fc_row_tile_fn)(const float *, const Py_ssize_t *, Py_ssize_t, const float *,
                               Py_ssize_t, const float *, float *, Py_ssize_t, Py_ssize_t,
                               int);

/* AVX-512: NV = 2 vectors (32 columns) of up to 8 channels, or one vector of up to 16 */
#define FC_TILE16(KT, NV) FC_ROW_TILE(16, KT, NV, "avx512f,fma")
FC_TILE16(1, 2) FC_TILE16(2, 2) FC_TILE16(3, 2) FC_TILE16(4, 2)
FC_TILE16(5, 2) FC_TILE16(6, 2) FC_TILE16(7, 2) FC_TILE16(8, 2)
FC_TILE16(1, 1) FC_TILE16(2, 1) FC_TILE16(3, 1) FC_TILE16(4, 1)
FC_TILE16(5, 1) FC_TILE16(6, 1) FC_TILE16(7, 1) FC_TILE16(8, 1)
FC_TILE16(9, 1) FC_TILE16(10, 1) FC_TILE16(11, 1) FC_TILE16(12, 1)
FC_TILE16(13, 1) FC_TILE16(14, 1) FC_TILE16(15, 1) FC_TILE16(16, 1)
static const fc_row_tile_fn fc_tiles16_2[8] = {
    fc_tile16_1_2, fc_tile16_2_2, fc_tile16_3_2, fc_tile16_4_2,
    fc_tile16_5_2, fc_tile16_6_2, fc_tile16_7_2, fc_tile16_8_2};
static const fc_row_tile_fn fc_tiles16_1[16] = {
    fc_tile16_1_1, fc_tile16_2_1, fc_tile16_3_1, fc_tile16_4_1,
    fc_tile16_5_1, fc_tile16_6_1, fc_tile16_7_1, fc_tile16_8_1,
    fc_tile16_9_1, fc_tile16_10_1, fc_tile16_11_1, fc_tile16_12_1,
    fc_tile16_13_1, fc_tile16_14_1, fc_tile16_15_1, fc_tile16_16_1};
#endif

#if FC_HAVE_X86_SIMD
/* The AVX2 copy of fc_tile16_body: vectors of 8 columns, up to 6 channels x 2 vectors or
 * 12 x 1 in AVX2's 16 registers. */
static inline __attribute__((always_inline, target("avx2,fma")))
void fc_tile8_body(const float *x, const Py_ssize_t *tap, Py_ssize_t T, const float *wT,
                   Py_ssize_t K, const float *b, float *y, Py_ssize_t y_step,
                   Py_ssize_t ncols, int relu, const int KT, const int NV)
{
    __m256 acc[12][2], xv[2];
    __m256i m[2];
    int full[2];       /* whole vectors: plain loads and stores (AMD's masked ones are slow) */
    FC_UNROLL for (int v = 0; v < NV; v++) {
        m[v] = fc_lanes8(ncols - 8 * v);
        full[v] = ncols - 8 * v >= 8;
    }
    FC_UNROLL for (int j = 0; j < KT; j++)
        FC_UNROLL for (int v = 0; v < NV; v++)
            acc[j][v] = b ? _mm256_set1_ps(b[j]) : _mm256_setzero_ps();
    for (Py_ssize_t t = 0; t < T; t++) {
        FC_UNROLL for (int v = 0; v < NV; v++)
            xv[v] = full[v] ? _mm256_loadu_ps(x + tap[t] + 8 * v)
                            : _mm256_maskload_ps(x + tap[t] + 8 * v, m[v]);
        FC_UNROLL for (int j = 0; j < KT; j++) {
            __m256 wv = _mm256_set1_ps(wT[t * K + j]);
            FC_UNROLL for (int v = 0; v < NV; v++)
                acc[j][v] = _mm256_fmadd_ps(wv, xv[v], acc[j][v]);
        }
    }
    FC_UNROLL for (int j = 0; j < KT; j++)
        FC_UNROLL for (int v = 0; v < NV; v++) {
            __m256 out = acc[j][v];
            if (relu)        /* lanes <= 0 (not NaN: the compare is ordered) become +0 */
                out = _mm256_andnot_ps(
                    _mm256_cmp_ps(out, _mm256_setzero_ps(), _CMP_LE_OQ), out);
            if (full[v])
                _mm256_storeu_ps(y + j * y_step + 8 * v, out);
            else
                _mm256_maskstore_ps(y + j * y_step + 8 * v, m[v], out);
        }
}

/* AVX2: 2 vectors (16 columns) of up to 6 channels, or one vector of up to 12 */
#define FC_TILE8(KT, NV) FC_ROW_TILE(8, KT, NV, "avx2,fma")
FC_TILE8(1, 2) FC_TILE8(2, 2) FC_TILE8(3, 2) FC_TILE8(4, 2) FC_TILE8(5, 2) FC_TILE8(6, 2)
FC_TILE8(1, 1) FC_TILE8(2, 1) FC_TILE8(3, 1) FC_TILE8(4, 1) FC_TILE8(5, 1) FC_TILE8(6, 1)
FC_TILE8(7, 1) FC_TILE8(8, 1) FC_TILE8(9, 1) FC_TILE8(10, 1) FC_TILE8(11, 1) FC_TILE8(12, 1)
static const fc_row_tile_fn fc_tiles8_2[6] = {
    fc_tile8_1_2, fc_tile8_2_2, fc_tile8_3_2, fc_tile8_4_2, fc_tile8_5_2, fc_tile8_6_2};
static const fc_row_tile_fn fc_tiles8_1[12] = {
    fc_tile8_1_1, fc_tile8_2_1, fc_tile8_3_1, fc_tile8_4_1, fc_tile8_5_1, fc_tile8_6_1,
    fc_tile8_7_1, fc_tile8_8_1, fc_tile8_9_1, fc_tile8_10_1, fc_tile8_11_1, fc_tile8_12_1};

#endif

/* Whether the direct forward's SIMD tiles run here: AVX2 or AVX-512 (isa from
 * fc_isa_level()). */
static int fastconv_row_applies(int isa)
{
    return FC_HAVE_X86_SIMD && isa >= FC_ISA_AVX2;
}

/* Channels per call of fastconv_row_f32, for rows of Q columns: tiles of two vectors
 * (32 columns on AVX-512, 16 on AVX2) of up to 8 (6) channels; one vector of up to 16
 * (12) channels for rows of one vector or fewer. */
static inline Py_ssize_t fastconv_row_max_kt(int isa, Py_ssize_t Q)
{
    if (isa >= FC_ISA_AVX512) return Q > 16 ? 8 : 16;
    return Q > 8 ? 6 : 12;
}

/* One output row of kt channels (at most fastconv_row_max_kt), all its Q columns, by
 * fc_tile16 (AVX-512) or fc_tile8 (AVX2): tiles of two vectors while more than one
 * vector's columns are left, then one of a vector or fewer. x points at the row's first
 * window (output column 0, tap 0), y at y[k0, p, 0], wT at wT[0, k0]; tap[t] as in
 * fc_tile16_body. With stride sw > 1 along the row, the padded image is split into sw
 * column phases (phase f holds the padded columns f, f + sw, ...), so that each tap
 * still reads contiguous columns. */
static void fastconv_row_f32(int isa, const float *x, const Py_ssize_t *tap, Py_ssize_t T,
                             const float *wT, Py_ssize_t K, const float *b, float *y,
                             Py_ssize_t kt, Py_ssize_t Q, Py_ssize_t y_step, int relu)
{
#if FC_HAVE_X86_SIMD
    const Py_ssize_t L = isa >= FC_ISA_AVX512 ? 16 : 8;      /* lanes */
    for (Py_ssize_t q0 = 0; q0 < Q; q0 += 2 * L) {
        Py_ssize_t rem = Q - q0;
        if (L == 16) {
            fc_row_tile_fn tile = rem > 16 ? fc_tiles16_2[kt - 1] : fc_tiles16_1[kt - 1];
            tile(x + q0, tap, T, wT, K, b, y + q0, y_step, rem, relu);
        } else {
            fc_row_tile_fn tile = rem > 8 ? fc_tiles8_2[kt - 1] : fc_tiles8_1[kt - 1];
            tile(x + q0, tap, T, wT, K, b, y + q0, y_step, rem, relu);
        }
    }
#else
    (void)isa; (void)x; (void)tap; (void)T; (void)wT; (void)K; (void)b; (void)y; (void)kt;
    (void)Q; (void)y_step; (void)relu;
#endif
}

#define FC_DW_ROWS_MAX_KB 4    /* channels per call of fastconv_dw_rows_f32 */

/* Whether fastconv_dw_rows_f32 runs here: a CPU with AVX-512 and S = 3 or 5. */
static int fastconv_dw_rows_applies(int isa, Py_ssize_t S)
{
    return FC_HAVE_X86_SIMD && isa >= FC_ISA_AVX512 && (S == 3 || S == 5);
}

/* The call conv_direct.pyx makes where fastconv_dw_rows_applies, for kb <= 4 channels;
 * db (kb values, or NULL: not wanted) gets dy summed over (n, p, q), by lanes in double;
 * sums: a scratch of R * kb * S * 16 floats; pad: see fc_dw_rows_body. */
static void fastconv_dw_rows_f32(const float *x, const float *dy, float *dw, float *db,
                                 float *sums, fc_dw_padding pad, Py_ssize_t kb, Py_ssize_t N,
                                 Py_ssize_t P, Py_ssize_t Q, Py_ssize_t R, Py_ssize_t S,
                                 Py_ssize_t x_n, Py_ssize_t x_p, Py_ssize_t x_r,
                                 Py_ssize_t dy_n, Py_ssize_t dy_k, Py_ssize_t dw_k)
{
#if FC_HAVE_X86_SIMD
    fc_dw_rows[S == 5][kb - 1](x, dy, dw, db, sums, &pad, N, P, Q, R, x_n, x_p, x_r, dy_n,
                                dy_k, dw_k);
#else
    (void)x; (void)dy; (void)dw; (void)db; (void)sums; (void)pad; (void)kb; (void)N;
    (void)P; (void)Q; (void)R; (void)S; (void)x_n; (void)x_p; (void)x_r; (void)dy_n;
    (void)dy_k; (void)dw_k;
#endif
}

/* Whether fastconv_dw_row_f32 runs here: a CPU with AVX2 (isa, from fc_isa_level()) and
 * S = 3 or 5 taps per row. */
static int fastconv_dw_row_applies(int isa, Py_ssize_t S)
{
    return FC_HAVE_X86_SIMD && isa >= FC_ISA_AVX2 && (S == 3 || S == 5);
}

/* The call conv_direct.pyx makes where fastconv_dw_row_applies: out[j * S + s]. */
static void fastconv_dw_row_f32(const float *x, const float *dy, float *out, Py_ssize_t N,
                                Py_ssize_t P, Py_ssize_t Q, Py_ssize_t x_n, Py_ssize_t x_p,
                                Py_ssize_t dy_n, Py_ssize_t dy_k, Py_ssize_t S)
{
#if FC_HAVE_X86_SIMD
    if (S == 3)
        fc_dw_row3(x, dy, out, N, P, Q, x_n, x_p, dy_n, dy_k);
    else
        fc_dw_row5(x, dy, out, N, P, Q, x_n, x_p, dy_n, dy_k);
#else
    (void)x; (void)dy; (void)out; (void)N; (void)P; (void)Q; (void)x_n; (void)x_p;
    (void)dy_n; (void)dy_k; (void)S;
#endif
}

#endif
