/* fc_pool.h: the float32 AVX-512 copy of max pooling's 2x2, stride 2 backward, for
 * pool.pyx (_max_plane_backward_2x2: its docstring states the rule, and float64 and other
 * CPUs run it); and, at the end, the 2x2 stride-2 max pooling that the convolution
 * kernels apply to each image's output as they finish it (fc_max_pool_2x2_float/_double,
 * F.conv2d_max_pool).
 *
 * Per 16 windows of a row pair: the two input rows are loaded as 2 + 2 vectors and split
 * into their even and odd columns (a b / c d of each window) by two-source permutes; the
 * rule's comparisons become lane masks (fc_max_2x2_route); dy goes to the winning cell of
 * each window, 0 to the three others; the four results are interleaved back into two rows
 * of dx by permutes and stored, every dx cell of the window written once. Rows of at most
 * 16 values (fc_max_backward_2x2_narrow_f32) put the windows of several row pairs in one
 * vector instead, through index tables made once per call. The same comparisons as the
 * Cython loop on every window, so the same bits. Written with intrinsics: compiled from
 * the plain loop under target("avx512f"), gcc's vector code was 10x slower than the
 * scalar loop.
 */
#ifndef FC_POOL_H
#define FC_POOL_H

#include <string.h>

#include "fc_isa.h"

/* Whether fc_max_backward_2x2_f32 runs here: AVX-512 (isa from fc_isa_level()). */
static inline int fc_max_backward_2x2_applies(int isa)
{
    return FC_HAVE_X86_SIMD && isa >= FC_ISA_AVX512;
}


/* The rule below for narrow rows (W even, at most 16: Q <= 8 windows per row pair), where
 * one row pair would leave most lanes empty: the windows of k = 16 / Q consecutive row
 * pairs share the lanes (lane j*Q + q: pair j, window q). Their 2kW <= 64 values are
 * contiguous, loaded as 4 vectors; index vectors pick each window's a b / c d from them
 * (a two-source permute per half and a blend), and put the four results back in place
 * (the same per output vector). The comparisons are the wide loop's, so the same bits.
 * The index vectors depend on W only: fc_narrow_2x2_tables makes them once per call of
 * the pooling (a table per block of rows cost more than the block). */
typedef struct {
    int from[4][16];                /* lane l of cell a, b, c, d: its value's place */
    unsigned short from_hi[4];      /* lanes whose value is in the upper two vectors */
    int back[4][16];                /* out: output vector o, lane l: the lane of ga..gd */
    unsigned short back_bottom[4];  /* ... taken from gc / gd (the pair's bottom row) */
} fc_narrow_2x2;

/* The tables for rows of W values (W even, 2 <= W <= 16). */
static void fc_narrow_2x2_tables(Py_ssize_t W, fc_narrow_2x2 *t)
{
    Py_ssize_t Q = W / 2, k = 16 / Q;                /* windows per pair, pairs per step */
    memset(t, 0, sizeof *t);
    for (int l = 0; l < 16; l++) {                   /* in: cell (a, b, c, d) of lane l */
        Py_ssize_t j = l / Q, q = l % Q;
        for (int cell = 0; cell < 4; cell++) {
            Py_ssize_t f = l < k * Q ? 2 * j * W + (cell >= 2 ? W : 0) + 2 * q + (cell & 1) : 0;
            t->from[cell][l] = (int)(f & 31);
            if (f >= 32) t->from_hi[cell] |= (unsigned short)(1u << l);
        }
    }
    for (int o = 0; o < 4; o++)                      /* out: value 16*o + l of the step */
        for (int l = 0; l < 16; l++) {
            Py_ssize_t f = 16 * o + l, j = f / (2 * W), rem = f % (2 * W), col = rem % W;
            t->back[o][l] = j < k ? (int)(j * Q + col / 2 + (col % 2 ? 16 : 0)) : 0;
            if (rem >= W) t->back_bottom[o] |= (unsigned short)(1u << l);
        }
}

#if FC_HAVE_X86_SIMD
#include <immintrin.h>

/* The first min(n, 16) lanes (none for n <= 0). */
static inline __mmask16 fc_pool_mask(Py_ssize_t n)
{
    return (__mmask16)(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1);
}

/* The cells a b / c d of the 2x2 windows q .. q + n - 1 (n <= 16, lane i: window q + i)
 * of the row pair r0 (top), r1 (bottom): each row's 2n values as 2 masked vector loads,
 * split into its even (a, c) and odd (b, d) columns by two-source permutes. */
static inline __attribute__((target("avx512f"), always_inline))
void fc_2x2_cells(const float *r0, const float *r1, Py_ssize_t q, Py_ssize_t n,
                  __m512 cell[4])
{
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14,
                                           16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __mmask16 m1 = fc_pool_mask(2 * n), m2 = fc_pool_mask(2 * n - 16);
    __m512 t0 = _mm512_maskz_loadu_ps(m1, r0 + 2 * q);
    __m512 t1 = _mm512_maskz_loadu_ps(m2, r0 + 2 * q + 16);
    __m512 b0 = _mm512_maskz_loadu_ps(m1, r1 + 2 * q);
    __m512 b1 = _mm512_maskz_loadu_ps(m2, r1 + 2 * q + 16);
    cell[0] = _mm512_permutex2var_ps(t0, even, t1);             /* top row: a b a b ... */
    cell[1] = _mm512_permutex2var_ps(t0, odd, t1);
    cell[2] = _mm512_permutex2var_ps(b0, even, b1);             /* bottom row: c d c d ... */
    cell[3] = _mm512_permutex2var_ps(b0, odd, b1);
}

/* The first-maximum rule on 16 windows at once: cells a b / c d (vectors), v their dy.
 * Writes g[0..3], the dy each cell gets (dy at the window's winner, 0 at the three
 * others; with relu (keep_all 0) only where the cell is > 0), and returns the lanes
 * among ``lanes`` whose cells hold NaN. Without NaN, a >= b is not (b > a), and
 * bottom > top is not (top >= bottom). */
static inline __attribute__((target("avx512f"), always_inline))
__mmask16 fc_max_2x2_route(__m512 a, __m512 b, __m512 c, __m512 d, __m512 v,
                           __mmask16 lanes, __mmask16 keep_all, __m512 g[4])
{
    const __m512 zero = _mm512_setzero_ps();
    __mmask16 nan = _mm512_mask_cmp_ps_mask(lanes, a, b, _CMP_UNORD_Q)
                    | _mm512_mask_cmp_ps_mask(lanes, c, d, _CMP_UNORD_Q);
    __mmask16 b_gt_a = _mm512_cmp_ps_mask(b, a, _CMP_GT_OQ);
    __mmask16 d_gt_c = _mm512_cmp_ps_mask(d, c, _CMP_GT_OQ);
    __m512 top = _mm512_mask_blend_ps(b_gt_a, a, b);            /* b if b > a else a */
    __m512 bottom = _mm512_mask_blend_ps(d_gt_c, c, d);
    __mmask16 top_wins = _mm512_cmp_ps_mask(top, bottom, _CMP_GE_OQ);
    __mmask16 pa = _mm512_cmp_ps_mask(a, zero, _CMP_GT_OQ) | keep_all;
    __mmask16 pb = _mm512_cmp_ps_mask(b, zero, _CMP_GT_OQ) | keep_all;
    __mmask16 pc = _mm512_cmp_ps_mask(c, zero, _CMP_GT_OQ) | keep_all;
    __mmask16 pd = _mm512_cmp_ps_mask(d, zero, _CMP_GT_OQ) | keep_all;
    g[0] = _mm512_maskz_mov_ps(~b_gt_a & top_wins & pa, v);
    g[1] = _mm512_maskz_mov_ps(b_gt_a & top_wins & pb, v);
    g[2] = _mm512_maskz_mov_ps(~d_gt_c & ~top_wins & pc, v);
    g[3] = _mm512_maskz_mov_ps(d_gt_c & ~top_wins & pd, v);
    return nan;
}

static __attribute__((target("avx512f"), noinline))
int fc_max_backward_2x2_narrow_f32(const float *dy, const float *x, float *dx, Py_ssize_t P,
                                   Py_ssize_t W, int relu, const fc_narrow_2x2 *t)
{
    const Py_ssize_t Q = W / 2, k = 16 / Q;
    const int (*from)[16] = t->from, (*back)[16] = t->back;
    const unsigned short *from_hi = t->from_hi, *back_bottom = t->back_bottom;
    __m512i ia = _mm512_loadu_si512(from[0]), ib = _mm512_loadu_si512(from[1]);
    __m512i ic = _mm512_loadu_si512(from[2]), id = _mm512_loadu_si512(from[3]);
    __m512i out[4];
    for (int o = 0; o < 4; o++) out[o] = _mm512_loadu_si512(back[o]);
    const __mmask16 keep_all = relu ? 0 : 0xFFFF;
    __mmask16 nan = 0;
    for (Py_ssize_t p0 = 0; p0 < P; p0 += k) {
        Py_ssize_t pairs = P - p0 < k ? P - p0 : k, n = 2 * pairs * W;   /* values */
        const float *xs = x + 2 * p0 * W;
        float *ds = dx + 2 * p0 * W;
        __m512 v0 = _mm512_maskz_loadu_ps(fc_pool_mask(n), xs);
        __m512 v1 = _mm512_maskz_loadu_ps(fc_pool_mask(n - 16), xs + 16);
        __m512 v2 = _mm512_maskz_loadu_ps(fc_pool_mask(n - 32), xs + 32);
        __m512 v3 = _mm512_maskz_loadu_ps(fc_pool_mask(n - 48), xs + 48);
        __m512 a = _mm512_mask_blend_ps(from_hi[0], _mm512_permutex2var_ps(v0, ia, v1),
                                        _mm512_permutex2var_ps(v2, ia, v3));
        __m512 b = _mm512_mask_blend_ps(from_hi[1], _mm512_permutex2var_ps(v0, ib, v1),
                                        _mm512_permutex2var_ps(v2, ib, v3));
        __m512 c = _mm512_mask_blend_ps(from_hi[2], _mm512_permutex2var_ps(v0, ic, v1),
                                        _mm512_permutex2var_ps(v2, ic, v3));
        __m512 d = _mm512_mask_blend_ps(from_hi[3], _mm512_permutex2var_ps(v0, id, v1),
                                        _mm512_permutex2var_ps(v2, id, v3));
        __mmask16 lanes = fc_pool_mask(pairs * Q);
        __m512 g[4];                                 /* what cells a, b, c, d get */
        nan |= fc_max_2x2_route(a, b, c, d, _mm512_maskz_loadu_ps(lanes, dy + p0 * Q), lanes,
                                keep_all, g);
        for (int o = 0; o < 4 && 16 * o < n; o++)
            _mm512_mask_storeu_ps(ds + 16 * o, fc_pool_mask(n - 16 * o),
                                  _mm512_mask_blend_ps(back_bottom[o],
                                                       _mm512_permutex2var_ps(g[0], out[o], g[1]),
                                                       _mm512_permutex2var_ps(g[2], out[o], g[3])));
    }
    return nan != 0;
}

/* dx (H, W) of one plane (or of a run of planes stacked into one, H even) from dy (P, Q)
 * and x (H, W), 2x2 windows at stride 2, unpadded; cells in no window get 0, and with
 * relu every cell whose x is not > 0. Returns 1 where x holds NaN (the caller then redoes
 * the plane on its NaN-aware path). */
static __attribute__((target("avx512f"), noinline))
int fc_max_backward_2x2_f32(const float *dy, const float *x, float *dx, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q, int relu,
                            const fc_narrow_2x2 *narrow)
{
    const __mmask16 keep_all = relu ? 0 : 0xFFFF;     /* without relu, no cell is masked */
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19,
                                         4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    __mmask16 nan = 0;
    Py_ssize_t wide = P;                     /* the row pairs of the loop below */
    if (narrow != NULL) {                    /* narrow rows: several pairs per vector */
        nan = (__mmask16)fc_max_backward_2x2_narrow_f32(dy, x, dx, P, W, relu, narrow);
        wide = 0;
    }
    for (Py_ssize_t p = 0; p < wide; p++) {
        const float *r0 = x + 2 * p * W, *r1 = r0 + W, *g = dy + p * Q;
        float *d0 = dx + 2 * p * W, *d1 = d0 + W;
        for (Py_ssize_t q = 0; q < Q; q += 16) {
            Py_ssize_t n = Q - q < 16 ? Q - q : 16;            /* windows in this step */
            __mmask16 mw = fc_pool_mask(n);                     /* their lanes */
            __mmask16 m1 = fc_pool_mask(2 * n), m2 = fc_pool_mask(2 * n - 16);
            __m512 cell[4], gv[4];                     /* a, b, c, d; what each gets */
            fc_2x2_cells(r0, r1, q, n, cell);
            nan |= fc_max_2x2_route(cell[0], cell[1], cell[2], cell[3],
                                    _mm512_maskz_loadu_ps(mw, g + q), mw, keep_all, gv);
            _mm512_mask_storeu_ps(d0 + 2 * q, m1, _mm512_permutex2var_ps(gv[0], lo, gv[1]));
            _mm512_mask_storeu_ps(d0 + 2 * q + 16, m2,
                                  _mm512_permutex2var_ps(gv[0], hi, gv[1]));
            _mm512_mask_storeu_ps(d1 + 2 * q, m1, _mm512_permutex2var_ps(gv[2], lo, gv[3]));
            _mm512_mask_storeu_ps(d1 + 2 * q + 16, m2,
                                  _mm512_permutex2var_ps(gv[2], hi, gv[3]));
        }
        if (W > 2 * Q) {                     /* odd W: the last column is in no window */
            d0[W - 1] = 0;
            d1[W - 1] = 0;
        }
    }
    if (H > 2 * P)                           /* odd H: nor is the last row */
        memset(dx + (H - 1) * W, 0, W * sizeof(float));
    return nan != 0;
}
#else   /* no x86 SIMD: never called (fc_max_backward_2x2_applies is false) */
static int fc_max_backward_2x2_f32(const float *dy, const float *x, float *dx, Py_ssize_t H,
                                   Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q, int relu,
                                   const fc_narrow_2x2 *narrow)
{
    (void)dy; (void)x; (void)dx; (void)H; (void)W; (void)P; (void)Q; (void)relu;
    (void)narrow;
    return 1;
}
#endif

/* ---- 2x2 stride-2 max pooling of a convolution's output, image by image ----
 *
 * out (planes, P/2, Q/2) = the 2x2 stride-2 max pooling of y (planes, P, Q), an odd last
 * row or column left out (floor mode), by PyTorch's rule: a window's four cells a b / c d
 * in row-major order, each replacing the running maximum when it is greater or NaN. Only
 * comparisons and selections, so the same bits as F.max_pool2d on any path: the plain
 * loop for any dtype and CPU, and on AVX-512 16 windows at a time (each input row's even
 * and odd columns split by two-source permutes, as in the backward above). */
#define FC_MAX_POOL_2X2(T, NAME)                                                           \
static inline void NAME(const T *y, T *out, Py_ssize_t planes, Py_ssize_t P, Py_ssize_t Q) \
{                                                                                          \
    const Py_ssize_t P2 = P / 2, Q2 = Q / 2;                                               \
    for (Py_ssize_t plane = 0; plane < planes; plane++)                                    \
    for (Py_ssize_t p = 0; p < P2; p++) {                                                  \
        const T *r0 = y + (plane * P + 2 * p) * Q, *r1 = r0 + Q;                           \
        T *o = out + (plane * P2 + p) * Q2;                                                \
        for (Py_ssize_t q = 0; q < Q2; q++) {                                              \
            T m = r0[2 * q], b = r0[2 * q + 1], c = r1[2 * q], d = r1[2 * q + 1];          \
            if (b > m || b != b) m = b;                                                    \
            if (c > m || c != c) m = c;                                                    \
            if (d > m || d != d) m = d;                                                    \
            o[q] = m;                                                                      \
        }                                                                                  \
    }                                                                                      \
}
FC_MAX_POOL_2X2(float, fc_max_pool_2x2_plain_f32)
FC_MAX_POOL_2X2(double, fc_max_pool_2x2_plain_f64)

#if FC_HAVE_X86_SIMD
/* the rule for one cell: m where v does not replace it, else v (v > m, or v is NaN) */
static inline __attribute__((always_inline, target("avx512f")))
__m512 fc_pool_take(__m512 m, __m512 v)
{
    __mmask16 take = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ)
                     | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    return _mm512_mask_mov_ps(m, take, v);
}

/* Without NaN the rule is a maximum that keeps the earlier of equal cells: vmaxps(v, m)
 * gives v only where v > m. Pairs (a, b) and (c, d) first, then the two: the same cell
 * as one after the other (a later cell still wins only when strictly greater). A vector
 * of windows holding a NaN takes the rule cell by cell (fc_pool_take). */
static __attribute__((target("avx512f"))) void fc_max_pool_2x2_avx512_f32(
    const float *y, float *out, Py_ssize_t planes, Py_ssize_t P, Py_ssize_t Q)
{
    const Py_ssize_t P2 = P / 2, Q2 = Q / 2;
    for (Py_ssize_t plane = 0; plane < planes; plane++)
    for (Py_ssize_t p = 0; p < P2; p++) {
        const float *r0 = y + (plane * P + 2 * p) * Q, *r1 = r0 + Q;
        float *o = out + (plane * P2 + p) * Q2;
        for (Py_ssize_t q = 0; q < Q2; q += 16) {         /* windows q .. q + 15 */
            Py_ssize_t n = Q2 - q < 16 ? Q2 - q : 16;
            __m512 c[4], m;                               /* the windows' cells a b / c d */
            fc_2x2_cells(r0, r1, q, n, c);
            if (_mm512_cmp_ps_mask(c[0], c[1], _CMP_UNORD_Q)
                | _mm512_cmp_ps_mask(c[2], c[3], _CMP_UNORD_Q))   /* a NaN among them */
                m = fc_pool_take(fc_pool_take(fc_pool_take(c[0], c[1]), c[2]), c[3]);
            else
                m = _mm512_max_ps(_mm512_max_ps(c[3], c[2]), _mm512_max_ps(c[1], c[0]));
            _mm512_mask_storeu_ps(o + q, fc_pool_mask(n), m);
        }
    }
}
#endif

/* The pooling for each dtype; isa from fc_isa_level() */
static void fc_max_pool_2x2_float(int isa, const float *y, float *out, Py_ssize_t planes,
                                  Py_ssize_t P, Py_ssize_t Q)
{
#if FC_HAVE_X86_SIMD
    if (isa >= FC_ISA_AVX512) { fc_max_pool_2x2_avx512_f32(y, out, planes, P, Q); return; }
#endif
    (void)isa;
    fc_max_pool_2x2_plain_f32(y, out, planes, P, Q);
}

static void fc_max_pool_2x2_double(int isa, const double *y, double *out, Py_ssize_t planes,
                                   Py_ssize_t P, Py_ssize_t Q)
{
    (void)isa;
    fc_max_pool_2x2_plain_f64(y, out, planes, P, Q);
}

#endif
