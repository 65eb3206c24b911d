/* fc_pool.h: the float32 AVX-512 copy of max pooling's 2x2, stride 2 backward, for
 * pool.pyx (_max_plane_backward_2x2: its docstring states the rule, and float64 and other
 * CPUs run it).
 *
 * Per 16 windows of a row pair: the two input rows are loaded as 2 + 2 vectors and split
 * into their even and odd columns (a b / c d of each window) by two-source permutes; the
 * rule's comparisons become lane masks; dy goes to the winning cell of each window, 0 to
 * the three others; the four results are interleaved back into two rows of dx by permutes
 * and stored, every dx cell of the window written once. The same comparisons as the
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

#if FC_HAVE_X86_SIMD
#include <immintrin.h>

/* dx (H, W) of one plane (or of a run of planes stacked into one, H even) from dy (P, Q)
 * and x (H, W), 2x2 windows at stride 2, unpadded; cells in no window get 0, and with
 * relu every cell whose x is not > 0. Returns 1 where x holds NaN (the caller then redoes
 * the plane on its NaN-aware path). */
static __attribute__((target("avx512f"), noinline))
int fc_max_backward_2x2_f32(const float *dy, const float *x, float *dx, Py_ssize_t H,
                            Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q, int relu)
{
    const __m512 zero = _mm512_setzero_ps();
    const __mmask16 keep_all = relu ? 0 : 0xFFFF;     /* without relu, no cell is masked */
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14,
                                           16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19,
                                         4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    __mmask16 nan = 0;
    for (Py_ssize_t p = 0; p < P; p++) {
        const float *r0 = x + 2 * p * W, *r1 = r0 + W, *g = dy + p * Q;
        float *d0 = dx + 2 * p * W, *d1 = d0 + W;
        for (Py_ssize_t q = 0; q < Q; q += 16) {
            Py_ssize_t n = Q - q < 16 ? Q - q : 16;            /* windows in this step */
            __mmask16 mw = (__mmask16)((1u << n) - 1);          /* their lanes */
            __mmask16 m1 = (__mmask16)(n >= 8 ? 0xFFFF : (1u << (2 * n)) - 1);
            __mmask16 m2 = (__mmask16)(n <= 8 ? 0 : (1u << (2 * n - 16)) - 1);
            __m512 t0 = _mm512_maskz_loadu_ps(m1, r0 + 2 * q);
            __m512 t1 = _mm512_maskz_loadu_ps(m2, r0 + 2 * q + 16);
            __m512 b0 = _mm512_maskz_loadu_ps(m1, r1 + 2 * q);
            __m512 b1 = _mm512_maskz_loadu_ps(m2, r1 + 2 * q + 16);
            __m512 a = _mm512_permutex2var_ps(t0, even, t1);    /* top row: a b a b ... */
            __m512 b = _mm512_permutex2var_ps(t0, odd, t1);
            __m512 c = _mm512_permutex2var_ps(b0, even, b1);    /* bottom row: c d c d ... */
            __m512 d = _mm512_permutex2var_ps(b0, odd, b1);
            __m512 v = _mm512_maskz_loadu_ps(mw, g + q);
            nan |= _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q)
                   | _mm512_cmp_ps_mask(c, d, _CMP_UNORD_Q);
            __mmask16 b_gt_a = _mm512_cmp_ps_mask(b, a, _CMP_GT_OQ);
            __mmask16 d_gt_c = _mm512_cmp_ps_mask(d, c, _CMP_GT_OQ);
            __m512 top = _mm512_mask_blend_ps(b_gt_a, a, b);        /* b if b > a else a */
            __m512 bottom = _mm512_mask_blend_ps(d_gt_c, c, d);
            __mmask16 top_wins = _mm512_cmp_ps_mask(top, bottom, _CMP_GE_OQ);
            /* without NaN, a >= b is not (b > a), and bottom > top is not (top >= bottom) */
            __mmask16 pa = _mm512_cmp_ps_mask(a, zero, _CMP_GT_OQ) | keep_all;
            __mmask16 pb = _mm512_cmp_ps_mask(b, zero, _CMP_GT_OQ) | keep_all;
            __mmask16 pc = _mm512_cmp_ps_mask(c, zero, _CMP_GT_OQ) | keep_all;
            __mmask16 pd = _mm512_cmp_ps_mask(d, zero, _CMP_GT_OQ) | keep_all;
            __m512 ga = _mm512_maskz_mov_ps(~b_gt_a & top_wins & pa, v);
            __m512 gb = _mm512_maskz_mov_ps(b_gt_a & top_wins & pb, v);
            __m512 gc = _mm512_maskz_mov_ps(~d_gt_c & ~top_wins & pc, v);
            __m512 gd = _mm512_maskz_mov_ps(d_gt_c & ~top_wins & pd, v);
            _mm512_mask_storeu_ps(d0 + 2 * q, m1, _mm512_permutex2var_ps(ga, lo, gb));
            _mm512_mask_storeu_ps(d0 + 2 * q + 16, m2, _mm512_permutex2var_ps(ga, hi, gb));
            _mm512_mask_storeu_ps(d1 + 2 * q, m1, _mm512_permutex2var_ps(gc, lo, gd));
            _mm512_mask_storeu_ps(d1 + 2 * q + 16, m2, _mm512_permutex2var_ps(gc, hi, gd));
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
                                   Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q, int relu)
{ (void)dy; (void)x; (void)dx; (void)H; (void)W; (void)P; (void)Q; (void)relu; return 1; }
#endif

#endif
