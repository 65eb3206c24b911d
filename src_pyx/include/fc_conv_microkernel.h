/* fc_conv_microkernel.h: the float32 AVX-512 micro-kernel of the im2col convolution.
 *
 * What it computes. Small matrix products C (M, N) (+)= A (M, KR) @ B (KR, N), one side
 * small (K = 16..128 channels): B and C row-major, A read through strides (a_rs between
 * rows, a_cs between columns) so that a transposed operand needs no copy. For the
 * channels-last path of conv_im2col.pyx, eq. (im2col.hwc), one operand may also be given
 * "indirectly": the rows of colT are runs inside the padded image xp, found through an
 * offset per output pixel, so the column matrix is never built.
 *
 * Structure (as BLIS: a register tile inside loops over blocks, here without packing):
 *   fc_gemm_f32, fc_igemm_f32, fc_bgemm_f32, fc_cgemm_f32   the drivers: columns of C in
 *       blocks of 64 (4 vectors of 16 floats), rows in tiles of the largest MR that fits,
 *       then smaller tiles for the rest (fc_mr lists them);
 *   fc_tile, fc_itile, fc_btile, fc_ctile   the register tile: MR rows x NV vectors of C
 *       held in MR*NV zmm registers over the whole reduction; per step kk, NV loads of a
 *       row of B and MR broadcasts of A feed MR*NV fused multiply-adds. They differ only
 *       in where A, B or C are read or written: in place (tile), A through window
 *       offsets (itile: the forward, Y^T = colT @ Wr^T), B through window offsets
 *       (btile: dWr = dY @ colT), C through window offsets, added to (ctile: dcolT
 *       straight back onto the padded image's gradient);
 *   fc_dtile, fc_dconv_f32   for few output channels (K <= 16): a tile is M neighbouring
 *       outputs of one row, and the loop runs over the input columns, so that each input
 *       value, broadcast once, feeds the S outputs that use it.
 *
 * Why these tile sizes: AVX-512 has 32 vector registers. MR x NV = 16x1, 12x2, 8x3, 6x4
 * keeps 16 to 24 accumulators plus NV vectors of B and a broadcast in registers; nothing
 * is packed, since each element of the big operand is used only K times (OpenBLAS's
 * packing costs more than it saves on these shapes). Each tile is a separate function
 * (instantiated by FC_TILE(MR, NV): C has no templates) so that MR and NV are constants
 * and the accumulators are registers. Every output sums its products in the same order
 * (kk ascending) whichever tile or block computes it.
 *
 * ISA: AVX-512F + FMA through a target attribute (FC_AVX512), used only where
 * fc_isa_level() (fc_isa.h) says AVX-512; elsewhere empty stubs, never called, and the
 * products run on BLAS. Measurements: docs/performance.md, "Convolution".
 */
#ifndef FC_CONV_MICROKERNEL_H
#define FC_CONV_MICROKERNEL_H

#include "fc_conv_pack.h"

#if FC_HAVE_X86_SIMD

/* Step kk + u of fc_itile's reduction (Ar: run r of the windows, Br: its rows of B): NV
 * vectors of B, MR broadcasts of A, MR * NV FMAs. fc_itile takes two steps per loop
 * turn, so that each pixel's address (Ar + kk + offs[i]) is worked out once for two
 * broadcasts: with one step per turn, the integer work of indexing 12 or 16 windows per
 * step held the K = 16 and 32 tiles well under the FMA peak. */
/* acc (MR x NV vectors) = 0 */
#define FC_ZERO(MR, NV)                                                                 \
    FC_UNROLL for (int i = 0; i < MR; i++)                                              \
        FC_UNROLL for (int j = 0; j < NV; j++) acc[i][j] = _mm512_setzero_ps();
/* acc[i][j] += A_i * b[j]: row i's value of A (the expression A_I, which uses i)
 * broadcast, times the NV vectors b of one row of B; the rank-1 step of every tile */
#define FC_RANK1(MR, NV, A_I)                                                           \
    FC_UNROLL for (int i = 0; i < MR; i++) {                                            \
        __m512 a = _mm512_set1_ps(A_I);                                                 \
        FC_UNROLL for (int j = 0; j < NV; j++)                                          \
            acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);                            \
    }
#define FC_ISTEP(MR, NV, u)                                                               \
    FC_UNROLL for (int j = 0; j < NV; j++)                                              \
        b[j] = _mm512_maskz_loadu_ps(mask[j], Br + (kk + (u)) * ldb + 16 * j);          \
    FC_RANK1(MR, NV, (Ar + kk)[offs[i] + (u)])
#define FC_TILE(MR, NV)                                                                 \
FC_AVX512 static void fc_tile_##MR##_##NV(fc_index KR, const float *A, fc_index a_rs, \
    fc_index a_cs, const float *B, fc_index ldb, int accumulate, float *C,           \
    fc_index ldc, __mmask16 tail)                                                     \
{                                                                                       \
    __m512 acc[MR][NV], b[NV];                                                          \
    __mmask16 mask[NV];                                                                 \
    FC_UNROLL for (int j = 0; j < NV; j++) mask[j] = j == NV - 1 ? tail : 0xFFFF;       \
    FC_ZERO(MR, NV)                                                                     \
    for (fc_index kk = 0; kk < KR; kk++) {                                            \
        FC_UNROLL for (int j = 0; j < NV; j++)                                          \
            b[j] = _mm512_maskz_loadu_ps(mask[j], B + kk * ldb + 16 * j);               \
        FC_RANK1(MR, NV, A[i * a_rs + kk * a_cs])                                       \
    }                                                                                   \
    FC_UNROLL for (int i = 0; i < MR; i++)                                              \
        FC_UNROLL for (int j = 0; j < NV; j++) {                                        \
            float *c = C + i * ldc + 16 * j;                                            \
            __m512 v = acc[i][j];                                                       \
            if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask[j], c), v);    \
            _mm512_mask_storeu_ps(c, mask[j], v);                                       \
        }                                                                               \
}                                                                                       \
/* The same tile with A given indirectly (an "indirection buffer", as XNNPACK): row i  \
 * of A is R runs of SC values, run r at A + offs[i] + r * seg. With A the padded      \
 * channels-last image, offs the start of each output pixel's window and seg one image \
 * row, this is the convolution itself, eq. (im2col.hwc), with no column matrix.  */   \
FC_AVX512 static void fc_itile_##MR##_##NV(fc_index R, fc_index SC, fc_index seg, \
    const float *A, const fc_index *offs, const float *B, fc_index ldb, float *C,   \
    fc_index ldc, __mmask16 tail)                                                     \
{                                                                                       \
    __m512 acc[MR][NV], b[NV];                                                          \
    __mmask16 mask[NV];                                                                 \
    FC_UNROLL for (int j = 0; j < NV; j++) mask[j] = j == NV - 1 ? tail : 0xFFFF;       \
    FC_ZERO(MR, NV)                                                                     \
    for (fc_index r = 0; r < R; r++) {                                                \
        const float *Ar = A + r * seg, *Br = B + r * SC * ldb;                          \
        fc_index kk = 0;                                                              \
        for (; kk + 2 <= SC; kk += 2) {                                                 \
            FC_ISTEP(MR, NV, 0) FC_ISTEP(MR, NV, 1)                                     \
        }                                                                               \
        for (; kk < SC; kk++) { FC_ISTEP(MR, NV, 0) }                                   \
    }                                                                                   \
    FC_UNROLL for (int i = 0; i < MR; i++)                                              \
        FC_UNROLL for (int j = 0; j < NV; j++)                                          \
            _mm512_mask_storeu_ps(C + i * ldc + 16 * j, mask[j], acc[i][j]);            \
}                                                                                       \
/* B given indirectly: vector j of row kk of B at B + boffs[kk] + coff[j] (the last     \
 * one cut to the lanes of tail). With B the padded channels-last image this reads    \
 * colT in place.  */                                                                  \
FC_AVX512 static void fc_btile_##MR##_##NV(fc_index KR, const float *A, fc_index a_rs, \
    fc_index a_cs, const float *B, const fc_index *boffs, const fc_index *coff,    \
    int accumulate, float *C, fc_index ldc, __mmask16 tail)                           \
{                                                                                       \
    __m512 acc[MR][NV], b[NV];                                                          \
    __mmask16 mask[NV];                                                                 \
    FC_UNROLL for (int j = 0; j < NV; j++) mask[j] = j == NV - 1 ? tail : 0xFFFF;       \
    FC_ZERO(MR, NV)                                                                     \
    for (fc_index kk = 0; kk < KR; kk++) {                                            \
        const float *Bk = B + boffs[kk];                                                \
        FC_UNROLL for (int j = 0; j < NV; j++)                                          \
            b[j] = _mm512_maskz_loadu_ps(mask[j], Bk + coff[j]);                        \
        FC_RANK1(MR, NV, A[i * a_rs + kk * a_cs])                                       \
    }                                                                                   \
    FC_UNROLL for (int i = 0; i < MR; i++)                                              \
        FC_UNROLL for (int j = 0; j < NV; j++) {                                        \
            float *c = C + i * ldc + 16 * j;                                            \
            __m512 v = acc[i][j];                                                       \
            if (accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask[j], c), v);    \
            _mm512_mask_storeu_ps(c, mask[j], v);                                       \
        }                                                                               \
}                                                                                       \
/* C given indirectly and added to: vector j of row i at C + roffs[i] + coff[j] (full  \
 * vectors only). Rows may overlap (neighbouring windows of one image): they are added \
 * one after another, in program order, so overlapping sums stay exact and ordered. */ \
FC_AVX512 static void fc_ctile_##MR##_##NV(fc_index KR, const float *A, fc_index a_rs, \
    fc_index a_cs, const float *B, fc_index ldb, float *C, const fc_index *roffs, \
    const fc_index *coff)                                                             \
{                                                                                       \
    __m512 acc[MR][NV], b[NV];                                                          \
    FC_ZERO(MR, NV)                                                                     \
    for (fc_index kk = 0; kk < KR; kk++) {                                            \
        FC_UNROLL for (int j = 0; j < NV; j++)                                          \
            b[j] = _mm512_loadu_ps(B + kk * ldb + 16 * j);                              \
        FC_RANK1(MR, NV, A[i * a_rs + kk * a_cs])                                       \
    }                                                                                   \
    FC_UNROLL for (int i = 0; i < MR; i++)                                              \
        FC_UNROLL for (int j = 0; j < NV; j++) {                                        \
            float *c = C + roffs[i] + coff[j];                                          \
            _mm512_storeu_ps(c, _mm512_add_ps(_mm512_loadu_ps(c), acc[i][j]));          \
        }                                                                               \
}
FC_TILE(16, 1) FC_TILE(8, 1) FC_TILE(4, 1) FC_TILE(2, 1) FC_TILE(1, 1)
FC_TILE(12, 2) FC_TILE(8, 2) FC_TILE(4, 2) FC_TILE(2, 2) FC_TILE(1, 2)
FC_TILE(8, 3) FC_TILE(4, 3) FC_TILE(2, 3) FC_TILE(1, 3)
FC_TILE(6, 4) FC_TILE(4, 4) FC_TILE(2, 4) FC_TILE(1, 4)

/* tiles for NV = 1..4 vectors, largest MR first (24 or fewer accumulators of 32 registers) */
static const int fc_mr[4][5] = {{16, 8, 4, 2, 1}, {12, 8, 4, 2, 1}, {8, 4, 2, 1, 0},
                                {6, 4, 2, 1, 0}};
#define FC_TABLE(P) {{P##16_1, P##8_1, P##4_1, P##2_1, P##1_1},                             \
                     {P##12_2, P##8_2, P##4_2, P##2_2, P##1_2},                             \
                     {P##8_3, P##4_3, P##2_3, P##1_3, 0}, {P##6_4, P##4_4, P##2_4, P##1_4, 0}}
typedef void (*fc_tile_fn)(fc_index, const float *, fc_index, fc_index,
                           const float *, fc_index, int, float *, fc_index, __mmask16);
typedef void (*fc_itile_fn)(fc_index, fc_index, fc_index, const float *,
                            const fc_index *, const float *, fc_index, float *,
                            fc_index, __mmask16);
typedef void (*fc_btile_fn)(fc_index, const float *, fc_index, fc_index,
                            const float *, const fc_index *, const fc_index *, int,
                            float *, fc_index, __mmask16);
typedef void (*fc_ctile_fn)(fc_index, const float *, fc_index, fc_index,
                            const float *, fc_index, float *, const fc_index *,
                            const fc_index *);
static const fc_tile_fn fc_tiles[4][5] = FC_TABLE(fc_tile_);
static const fc_itile_fn fc_itiles[4][5] = FC_TABLE(fc_itile_);
static const fc_btile_fn fc_btiles[4][5] = FC_TABLE(fc_btile_);
static const fc_ctile_fn fc_ctiles[4][5] = FC_TABLE(fc_ctile_);

/* Where vector j of the 64-column block at n0 starts, for columns n = r*SC + s*C + c
 * stored as runs of SC values seg apart (SC a multiple of 16: a vector never straddles). */
static int fc_run_offsets(fc_index n0, fc_index N, fc_index SC, fc_index seg,
                          fc_index coff[4])
{
    int nv = (int)((N - n0 < 64 ? N - n0 : 64) / 16);
    for (int j = 0; j < nv; j++)
        coff[j] = ((n0 + 16 * j) / SC) * seg + (n0 + 16 * j) % SC;
    return nv;
}

/* dWr (M, N) (+)= A (M, KR) @ colT (KR, N), colT read in place from the padded image: row
 * kk at B + boffs[kk], runs of SC values seg apart. With SC a multiple of 16, blocks of
 * 64 columns run on across the runs; otherwise each run is cut into blocks of its own
 * (up to 4 vectors), its last vector masked (lenet_c2: runs of 30 = 16 + 14). Every tile
 * sums each of its outputs in the same order (kk ascending, then added to C), so any
 * split of dWr into blocks gives the same bits. */
static void fc_bgemm_f32(fc_index M, fc_index N, fc_index KR, const float *A,
                         fc_index a_rs, fc_index a_cs, const float *B,
                         const fc_index *boffs, fc_index SC, fc_index seg,
                         int accumulate, float *C, fc_index ldc)
{
    fc_index coff[4], width;
    for (fc_index n0 = 0; n0 < N; n0 += width) {
        int nv;
        __mmask16 tail = 0xFFFF;
        if (SC % 16 == 0) {
            nv = fc_run_offsets(n0, N, SC, seg, coff);
            width = 16 * nv;
        } else {                                  /* within run n0 / SC, from n0 % SC */
            fc_index s0 = n0 % SC;
            width = SC - s0 < 64 ? SC - s0 : 64;
            nv = (int)((width + 15) / 16);
            int rem = (int)(width - 16 * (nv - 1));
            tail = (__mmask16)(rem == 16 ? 0xFFFF : (1u << rem) - 1);
            for (int j = 0; j < nv; j++) coff[j] = (n0 / SC) * seg + s0 + 16 * j;
        }
        fc_index m0 = 0;
        for (int t = 0; t < 5 && fc_mr[nv - 1][t] > 0; t++) {
            int mr = fc_mr[nv - 1][t];
            for (; m0 + mr <= M; m0 += mr)
                fc_btiles[nv - 1][t](KR, A + m0 * a_rs, a_rs, a_cs, B, boffs, coff,
                                     accumulate, C + m0 * ldc + n0, ldc, tail);
        }
    }
}

/* The padded image's gradient += A (M, KR) @ B (KR, N), i.e. dcolT added straight
 * onto the windows it came from: row m at C + roffs[m], runs of SC values seg apart. */
static void fc_cgemm_f32(fc_index M, fc_index N, fc_index KR, const float *A,
                         fc_index a_rs, fc_index a_cs, const float *B, fc_index ldb,
                         float *C, const fc_index *roffs, fc_index SC, fc_index seg)
{
    fc_index coff[4];
    for (fc_index n0 = 0; n0 < N; n0 += 64) {
        int nv = fc_run_offsets(n0, N, SC, seg, coff);
        fc_index m0 = 0;
        for (int t = 0; t < 5 && fc_mr[nv - 1][t] > 0; t++) {
            int mr = fc_mr[nv - 1][t];
            for (; m0 + mr <= M; m0 += mr)
                fc_ctiles[nv - 1][t](KR, A + m0 * a_rs, a_rs, a_cs, B + n0, ldb, C,
                                     roffs + m0, coff);
        }
    }
}

/* Few output channels (K <= 16, one vector), stride 1 along the rows: in fc_itile each
 * broadcast pixel value feeds one FMA only (NV = 1), and the broadcasts, not the FMAs,
 * set the pace. Here a tile is M
 * neighbouring outputs of one row, and the loop runs over the INPUT columns instead:
 * each value xp[h, q0 + u, c], broadcast once, goes to the S outputs q = u - s that
 * use it, with the S weight vectors w[:, c, r, s] held in registers. Per (r, c):
 * M + S - 1 broadcasts and S loads for M * S FMAs (16 x 5: 20 + 5 for 80). Each output
 * sums over r, then c, then s. Tiles of 16, 12, 10, 8, 4, 2, 1 outputs: a row of 10
 * outputs runs as one tile of 10, faster than 8 + 2. */
#define FC_DTILE(M, S)                                                                  \
FC_AVX512 static void fc_dtile_##M##_##S(fc_index R, fc_index C, fc_index seg,  \
    const float *A, const float *B, fc_index K, float *Y, __mmask16 kmask)            \
{                                                                                       \
    __m512 acc[M], w[S];                                                                \
    FC_UNROLL for (int i = 0; i < M; i++) acc[i] = _mm512_setzero_ps();                 \
    for (fc_index r = 0; r < R; r++) {                                                \
        const float *Ar = A + r * seg, *Br = B + r * S * C * K;                         \
        for (fc_index c = 0; c < C; c++) {                                            \
            FC_UNROLL for (int s = 0; s < S; s++)                                       \
                w[s] = _mm512_maskz_loadu_ps(kmask, Br + (s * C + c) * K);              \
            FC_UNROLL for (int u = 0; u < M + S - 1; u++) {                             \
                __m512 a = _mm512_set1_ps(Ar[u * C + c]);                               \
                FC_UNROLL for (int s = 0; s < S; s++)                                   \
                    if (u - s >= 0 && u - s < M)                                        \
                        acc[u - s] = _mm512_fmadd_ps(a, w[s], acc[u - s]);              \
            }                                                                           \
        }                                                                               \
    }                                                                                   \
    FC_UNROLL for (int i = 0; i < M; i++) _mm512_mask_storeu_ps(Y + i * K, kmask, acc[i]); \
}
FC_DTILE(16, 3) FC_DTILE(12, 3) FC_DTILE(10, 3) FC_DTILE(8, 3) FC_DTILE(4, 3)
FC_DTILE(2, 3) FC_DTILE(1, 3)
FC_DTILE(16, 5) FC_DTILE(12, 5) FC_DTILE(10, 5) FC_DTILE(8, 5) FC_DTILE(4, 5)
FC_DTILE(2, 5) FC_DTILE(1, 5)
typedef void (*fc_dtile_fn)(fc_index, fc_index, fc_index, const float *,
                            const float *, fc_index, float *, __mmask16);
static const int fc_dtile_m[7] = {16, 12, 10, 8, 4, 2, 1};
static const fc_dtile_fn fc_dtiles[2][7] = {
    {fc_dtile_16_3, fc_dtile_12_3, fc_dtile_10_3, fc_dtile_8_3, fc_dtile_4_3, fc_dtile_2_3,
     fc_dtile_1_3},
    {fc_dtile_16_5, fc_dtile_12_5, fc_dtile_10_5, fc_dtile_8_5, fc_dtile_4_5, fc_dtile_2_5,
     fc_dtile_1_5}};

/* Y_n^T (P*Q, K) for K <= 16, S = 3 or 5, column stride 1, by fc_dtile: each output row
 * in tiles of 16, 12, 10, 8, 4, 2, 1 outputs; taps in the zero rows of the padding skipped (as
 * in _forward_sample_hwc). xp (Hp, Wp, C) padded channels-last, wrT (R*S*C, K). */
static void fc_dconv_f32(fc_index P, fc_index Q, fc_index K, fc_index R,
                         fc_index S, fc_index C, fc_index sh, fc_index ph,
                         fc_index H, fc_index Wp, const float *xp, const float *wrT,
                         float *yT)
{
    __mmask16 kmask = (__mmask16)(K >= 16 ? 0xFFFF : (1u << K) - 1);
    const fc_dtile_fn *tiles = fc_dtiles[S == 5];
    for (fc_index p = 0; p < P; p++) {
        fc_index r0 = ph > p * sh ? ph - p * sh : 0;
        fc_index r1 = H + ph - p * sh < R ? H + ph - p * sh : R;
        fc_index nr = r1 > r0 ? r1 - r0 : 0;
        const float *A = xp + (p * sh + r0) * Wp * C;
        fc_index q0 = 0;
        for (int t = 0; t < 7; t++)
            for (int m = fc_dtile_m[t]; q0 + m <= Q; q0 += m)
                tiles[t](nr, C, Wp * C, A + q0 * C, wrT + r0 * S * C * K, K,
                         yT + (p * Q + q0) * K, kmask);
    }
}


/* C (M, N) = A' (M, R*SC) @ B with A' given by the indirection of fc_itile. */
static void fc_igemm_f32(fc_index M, fc_index N, fc_index R, fc_index SC,
                         fc_index seg, const float *A, const fc_index *offs,
                         const float *B, fc_index ldb, float *C, fc_index ldc)
{
    for (fc_index n0 = 0; n0 < N; n0 += 64) {
        fc_index width = N - n0 < 64 ? N - n0 : 64;
        int nv = (int)((width + 15) / 16), rem = (int)(width - 16 * (nv - 1));
        __mmask16 tail = (__mmask16)(rem == 16 ? 0xFFFF : (1u << rem) - 1);
        fc_index m0 = 0;
        for (int t = 0; t < 5 && fc_mr[nv - 1][t] > 0; t++) {
            int mr = fc_mr[nv - 1][t];
            for (; m0 + mr <= M; m0 += mr)
                fc_itiles[nv - 1][t](R, SC, seg, A, offs + m0, B + n0, ldb,
                                     C + m0 * ldc + n0, ldc, tail);
        }
    }
}

/* The whole product: columns of C in blocks of up to 64 (4 vectors), rows in tiles of
 * the largest MR that fits, the remainder in smaller tiles. */
static void fc_gemm_f32(fc_index M, fc_index N, fc_index KR, const float *A,
                        fc_index a_rs, fc_index a_cs, const float *B, fc_index ldb,
                        int accumulate, float *C, fc_index ldc)
{
    for (fc_index n0 = 0; n0 < N; n0 += 64) {
        fc_index width = N - n0 < 64 ? N - n0 : 64;
        int nv = (int)((width + 15) / 16), rem = (int)(width - 16 * (nv - 1));
        __mmask16 tail = (__mmask16)(rem == 16 ? 0xFFFF : (1u << rem) - 1);
        fc_index m0 = 0;
        for (int t = 0; t < 5 && fc_mr[nv - 1][t] > 0; t++) {
            int mr = fc_mr[nv - 1][t];
            for (; m0 + mr <= M; m0 += mr)
                fc_tiles[nv - 1][t](KR, A + m0 * a_rs, a_rs, a_cs, B + n0, ldb, accumulate,
                                    C + m0 * ldc + n0, ldc, tail);
        }
    }
}

#else   /* no x86 SIMD: never called (fc_isa_level() is baseline) */
static void fc_dconv_f32(fc_index P, fc_index Q, fc_index K, fc_index R,
                         fc_index S, fc_index C, fc_index sh, fc_index ph,
                         fc_index H, fc_index Wp, const float *xp, const float *wrT,
                         float *yT) {}
static void fc_gemm_f32(fc_index M, fc_index N, fc_index KR, const float *A,
                        fc_index a_rs, fc_index a_cs, const float *B, fc_index ldb,
                        int accumulate, float *C, fc_index ldc) {}
static void fc_igemm_f32(fc_index M, fc_index N, fc_index R, fc_index SC,
                         fc_index seg, const float *A, const fc_index *offs,
                         const float *B, fc_index ldb, float *C, fc_index ldc) {}
static void fc_bgemm_f32(fc_index M, fc_index N, fc_index KR, const float *A,
                         fc_index a_rs, fc_index a_cs, const float *B,
                         const fc_index *boffs, fc_index SC, fc_index seg,
                         int accumulate, float *C, fc_index ldc) {}
static void fc_cgemm_f32(fc_index M, fc_index N, fc_index KR, const float *A,
                         fc_index a_rs, fc_index a_cs, const float *B, fc_index ldb,
                         float *C, const fc_index *roffs, fc_index SC, fc_index seg) {}
#endif

#endif
