/* fc_gemm_avx2.h: fastconv's float32 matrix product on AVX2, C (+)= A @ B.
 *
 * What it computes. C (M, N) = A (M, KR) @ B (KR, N), or C += with accumulate; B and C
 * row-major (leading dimensions ldb, ldc), A read through strides (a_rs between rows,
 * a_cs between columns) so that a transposed A needs no copy. The convolutions call it
 * for products with a short side (K = 16..512 channels) whose big operand they have just
 * written into the cache:
 *   - Winograd, step 3: M[e] (Kout, tiles) = U[e] (Kout, Cin) @ V[e] (Cin, tiles);
 *   - im2col on the channels-last path: its forward, dx and dW products.
 * BLAS first copies ("packs") both operands into its own layout, which on these shapes
 * costs about as much as the multiply-adds (docs/performance.md); this kernel reads them
 * where they are.
 *
 * Structure: the register tile of BLIS's Haswell kernel, 6 rows x 16 columns of C held in
 * 12 ymm accumulators over the whole reduction (AVX2 has 16 registers: 12 accumulators,
 * 2 vectors of a row of B, one broadcast of A). Per step kk: 2 loads of B, 6 broadcasts
 * of A, 12 fused multiply-adds. The columns go in strips of 16 (the last may be 8, or a
 * masked part of 8), and within a strip the rows in tiles of 6, then 4, 2, 1, so that the
 * strip of B (KR x 16 floats) stays in L1 while every row of A uses it; the rows go in
 * blocks of 256 KiB of A, which stays in L2 while the strips pass. Every output sums
 * its KR products in the same order (kk ascending), whichever tile computes it, so the
 * result does not depend on how the work is split. Each tile size is its own function
 * (FC_TILE8(MR, NV): C has no templates), so that MR and NV are constants and the
 * accumulators are registers.
 *
 * ISA: AVX2 + FMA through a target attribute, so that the module still builds for, and
 * runs on, any x86-64; callers use it only where fc_isa_level() (fc_isa.h) says AVX2.
 * Elsewhere an empty stub, never called.
 */
#ifndef FC_GEMM_AVX2_H
#define FC_GEMM_AVX2_H

#include <stddef.h>
#include "fc_isa.h"

#if FC_HAVE_X86_SIMD
#include <immintrin.h>

#define FC_AVX2_FMA __attribute__((target("avx2,fma")))

/* The register tile: C[i, 8j .. 8j+7] for i < MR, j < NV, the last vector j = NV - 1
 * limited to the lanes of `tail` (all lanes but in the last strip). */
#define FC_TILE8(MR, NV)                                                                  \
FC_AVX2_FMA static void fc_tile8_##MR##_##NV(ptrdiff_t KR, const float *A, ptrdiff_t a_rs, \
    ptrdiff_t a_cs, const float *B, ptrdiff_t ldb, int accumulate, float *C,             \
    ptrdiff_t ldc, __m256i tail)                                                          \
{                                                                                         \
    __m256 acc[MR][NV], b[NV];                                                            \
    FC_UNROLL for (int i = 0; i < MR; i++)                                                \
        FC_UNROLL for (int j = 0; j < NV; j++) acc[i][j] = _mm256_setzero_ps();           \
    for (ptrdiff_t kk = 0; kk < KR; kk++) {                                               \
        FC_UNROLL for (int j = 0; j < NV - 1; j++) b[j] = _mm256_loadu_ps(B + kk * ldb + 8 * j); \
        b[NV - 1] = _mm256_maskload_ps(B + kk * ldb + 8 * (NV - 1), tail);                \
        FC_UNROLL for (int i = 0; i < MR; i++) {                                          \
            __m256 a = _mm256_broadcast_ss(A + i * a_rs + kk * a_cs);                     \
            FC_UNROLL for (int j = 0; j < NV; j++)                                        \
                acc[i][j] = _mm256_fmadd_ps(a, b[j], acc[i][j]);                          \
        }                                                                                 \
    }                                                                                     \
    FC_UNROLL for (int i = 0; i < MR; i++) {                                              \
        float *c = C + i * ldc;                                                           \
        FC_UNROLL for (int j = 0; j < NV - 1; j++) {                                      \
            if (accumulate) acc[i][j] = _mm256_add_ps(_mm256_loadu_ps(c + 8 * j), acc[i][j]); \
            _mm256_storeu_ps(c + 8 * j, acc[i][j]);                                       \
        }                                                                                 \
        if (accumulate)                                                                   \
            acc[i][NV - 1] = _mm256_add_ps(_mm256_maskload_ps(c + 8 * (NV - 1), tail),    \
                                           acc[i][NV - 1]);                               \
        _mm256_maskstore_ps(c + 8 * (NV - 1), tail, acc[i][NV - 1]);                      \
    }                                                                                     \
}
FC_TILE8(6, 2) FC_TILE8(4, 2) FC_TILE8(2, 2) FC_TILE8(1, 2)
FC_TILE8(6, 1) FC_TILE8(4, 1) FC_TILE8(2, 1) FC_TILE8(1, 1)

/* Values of A per block of rows (256 KiB): the block stays in L2 while every strip of B
 * passes over it, instead of all of A being read again from memory for each strip. */
#define FC_GEMM8_A_BLOCK (1 << 16)

typedef void (*fc_tile8_fn)(ptrdiff_t, const float *, ptrdiff_t, ptrdiff_t, const float *,
                            ptrdiff_t, int, float *, ptrdiff_t, __m256i);

/* IN A, B; OUT (IN/OUT with accumulate) C */
FC_AVX2_FMA static void fc_gemm8_f32(ptrdiff_t M, ptrdiff_t N, ptrdiff_t KR, const float *A,
                                     ptrdiff_t a_rs, ptrdiff_t a_cs, const float *B,
                                     ptrdiff_t ldb, int accumulate, float *C, ptrdiff_t ldc)
{
    static const int mr[4] = {6, 4, 2, 1};
    static const fc_tile8_fn tile[2][4] = {                 /* [NV - 1][which MR] */
        {fc_tile8_6_1, fc_tile8_4_1, fc_tile8_2_1, fc_tile8_1_1},
        {fc_tile8_6_2, fc_tile8_4_2, fc_tile8_2_2, fc_tile8_1_2}};
    ptrdiff_t mc = FC_GEMM8_A_BLOCK / (KR > 0 ? KR : 1) / 6 * 6;  /* rows of A per block */
    if (mc < 6) mc = 6;
    for (ptrdiff_t i0 = 0; i0 < M; i0 += mc) {              /* a block of rows of A ... */
        ptrdiff_t m = M - i0 < mc ? M - i0 : mc;
        for (ptrdiff_t j = 0; j < N; j += 16) {             /* ... times a strip of B */
            ptrdiff_t width = N - j < 16 ? N - j : 16;
            int nv = width > 8 ? 2 : 1;
            int last = (int)(width - 8 * (nv - 1));         /* lanes of its last vector */
            __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(last),
                                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            ptrdiff_t i = 0;
            for (int t = 0; t < 4; t++)                     /* the block's rows, 6 at a time */
                for (; m - i >= mr[t]; i += mr[t])
                    tile[nv - 1][t](KR, A + (i0 + i) * a_rs, a_rs, a_cs, B + j, ldb,
                                    accumulate, C + (i0 + i) * ldc + j, ldc, tail);
        }
    }
}
#else   /* no x86 SIMD: never called (fc_isa_level() is baseline) */
static void fc_gemm8_f32(ptrdiff_t M, ptrdiff_t N, ptrdiff_t KR, const float *A,
                         ptrdiff_t a_rs, ptrdiff_t a_cs, const float *B, ptrdiff_t ldb,
                         int accumulate, float *C, ptrdiff_t ldc) {}
#endif

#endif
