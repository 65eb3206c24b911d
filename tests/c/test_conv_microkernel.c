/* The AVX-512 pieces of src_pyx/include/fc_conv_microkernel.h and fc_conv_pack.h against
 * naive loops (double accumulators), on shapes that leave partial tiles and masked tails.
 * Exit status: 0 all agree, 1 a mismatch (printed), 77 this CPU has no AVX-512 (skip).
 * Compiled and run by tests/test_conv_microkernel.py. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "fc_conv_microkernel.h"
#include "test_util.h"

/* C (+)= A @ B, A through strides: all tile heights and 1..4 vectors with a tail. */
static void test_gemm(unsigned *seed)
{
    fc_index M = 37, N = 70, KR = 29;
    for (int transposed = 0; transposed < 2; transposed++) {
        for (int accumulate = 0; accumulate < 2; accumulate++) {
            fc_index a_rs = transposed ? 1 : KR, a_cs = transposed ? M : 1;
            float *A = randoms(M * KR, seed), *B = randoms(KR * N, seed), *C = randoms(M * N, seed);
            double *want = malloc(sizeof(double) * M * N);
            for (fc_index m = 0; m < M; m++)
                for (fc_index n = 0; n < N; n++) {
                    double acc = accumulate ? C[m * N + n] : 0;
                    for (fc_index k = 0; k < KR; k++)
                        acc += (double)A[m * a_rs + k * a_cs] * B[k * N + n];
                    want[m * N + n] = acc;
                }
            fc_gemm_f32(M, N, KR, A, a_rs, a_cs, B, N, accumulate, C, N);
            check(transposed ? "fc_gemm_f32 (A^T)" : "fc_gemm_f32", C, want, M * N, KR);
            free(A); free(B); free(C); free(want);
        }
    }
}

/* want (PQ, K) = colT @ wrT, row i of colT read at xp + offs[i]: runs of SC values seg apart */
static void naive_forward(const float *xp, const fc_index *offs, const float *wrT, double *want,
                          fc_index PQ, fc_index K, fc_index CRS, fc_index SC, fc_index seg)
{
    for (fc_index i = 0; i < PQ; i++)
        for (fc_index k = 0; k < K; k++) {
            double acc = 0;
            for (fc_index j = 0; j < CRS; j++)
                acc += (double)xp[offs[i] + (j / SC) * seg + j % SC] * wrT[j * K + k];
            want[i * K + k] = acc;
        }
}

/* The convolution through window offsets: forward (igemm), dW (bgemm), dx (cgemm, for runs
 * of whole vectors: S*C a multiple of 16) and the row tiles (dconv), on a padded
 * channels-last image of C channels and an R x S kernel. */
static void test_conv(unsigned *seed, fc_index C, fc_index R, fc_index S)
{
    fc_index H = 7, W = 9, ph = 1, pw = 1, sh = 1, sw = 1, K = 20;
    fc_index Hp = H + 2 * ph, Wp = W + 2 * pw, P = (Hp - R) / sh + 1, Q = (Wp - S) / sw + 1;
    fc_index SC = S * C, CRS = R * SC, PQ = P * Q, seg = Wp * C;
    float *x = randoms(C * H * W, seed), *xp = malloc(sizeof(float) * Hp * Wp * C);
    float *wrT = randoms(CRS * K, seed), *dy = randoms(K * PQ, seed);
    fc_index *offs = malloc(sizeof(fc_index) * PQ);
    for (fc_index p = 0; p < P; p++)
        for (fc_index q = 0; q < Q; q++)
            offs[p * Q + q] = (p * sh * Wp + q * sw) * C;
    fc_pad_hwc_f32(x, xp, C, H, W, ph, pw);
    double *want_xp = padded_hwc(x, C, H, W, ph, pw);
    check("fc_pad_hwc_f32", xp, want_xp, Hp * Wp * C, 1);

    /* forward: yT (PQ, K) = colT @ wrT */
    float *yT = malloc(sizeof(float) * PQ * K);
    double *want = malloc(sizeof(double) * PQ * (K > CRS ? K : CRS));
    naive_forward(xp, offs, wrT, want, PQ, K, CRS, SC, seg);
    fc_igemm_f32(PQ, K, R, SC, seg, xp, offs, wrT, K, yT, K);
    check("fc_igemm_f32", yT, want, PQ * K, CRS);

    /* the same with K <= 16 row tiles (taps in the zero rows skipped: exact zeros) */
    fc_index K16 = 11;
    naive_forward(xp, offs, wrT, want, PQ, K16, CRS, SC, seg);
    fc_dconv_f32(P, Q, K16, R, S, C, sh, ph, H, Wp, xp, wrT, yT);
    check("fc_dconv_f32", yT, want, PQ * K16, CRS);

    /* y (K, PQ) = yT^T + b */
    float *b = randoms(K, seed), *y = malloc(sizeof(float) * K * PQ);
    fc_igemm_f32(PQ, K, R, SC, seg, xp, offs, wrT, K, yT, K);
    double *want_y = malloc(sizeof(double) * K * PQ);
    for (fc_index k = 0; k < K; k++)
        for (fc_index i = 0; i < PQ; i++)
            want_y[k * PQ + i] = (double)(yT[i * K + k] + b[k]);
    fc_unpack_yT_f32(yT, b, y, K, PQ, PQ);
    check("fc_unpack_yT_f32", y, want_y, K * PQ, 1);

    /* dWr (K, CRS) = dY (K, PQ) @ colT, colT read in place */
    float *dwr = malloc(sizeof(float) * K * CRS);
    for (fc_index k = 0; k < K; k++)
        for (fc_index j = 0; j < CRS; j++) {
            double acc = 0;
            for (fc_index i = 0; i < PQ; i++)
                acc += (double)dy[k * PQ + i] * xp[offs[i] + (j / SC) * seg + j % SC];
            want[k * CRS + j] = acc;
        }
    fc_bgemm_f32(K, CRS, PQ, dy, PQ, 1, xp, offs, SC, seg, 0, dwr, CRS);
    check("fc_bgemm_f32", dwr, want, K * CRS, PQ);

    /* dxp += dY^T @ Wr, added onto each window; then dx = its inside */
    if (SC % 16 != 0) {
        free(x); free(xp); free(wrT); free(dy); free(offs); free(want_xp); free(yT);
        free(want); free(b); free(y); free(want_y); free(dwr);
        return;
    }
    float *wr = randoms(K * CRS, seed), *dxp = calloc(Hp * Wp * C, sizeof(float));
    double *want_dxp = calloc(Hp * Wp * C, sizeof(double));
    for (fc_index i = 0; i < PQ; i++)
        for (fc_index j = 0; j < CRS; j++) {
            double acc = 0;
            for (fc_index k = 0; k < K; k++)
                acc += (double)dy[k * PQ + i] * wr[k * CRS + j];
            want_dxp[offs[i] + (j / SC) * seg + j % SC] += acc;
        }
    fc_cgemm_f32(PQ, CRS, K, dy, 1, PQ, wr, CRS, dxp, offs, SC, seg);
    check("fc_cgemm_f32", dxp, want_dxp, Hp * Wp * C, K * R * S);
    float *dx = malloc(sizeof(float) * C * H * W);
    double *want_dx = unpadded_hwc(dxp, C, H, W, ph, pw);
    fc_unpad_hwc_f32(dxp, dx, C, H, W, ph, pw);
    check("fc_unpad_hwc_f32", dx, want_dx, C * H * W, 1);

    free(x); free(xp); free(wrT); free(dy); free(offs); free(want_xp); free(yT); free(want);
    free(b); free(y); free(want_y); free(dwr); free(wr); free(dxp); free(want_dxp);
    free(dx); free(want_dx);
}

int main(void)
{
    unsigned seed = 12345u;
    if (fc_isa_cpu() < FC_ISA_AVX512) {
        printf("no AVX-512 on this CPU\n");
        return 77;
    }
    test_gemm(&seed);
    test_conv(&seed, 16, 3, 3);       /* runs of 48: whole vectors */
    test_conv(&seed, 6, 5, 5);        /* runs of 30 = 16 + 14: dW's last vector masked */
    if (failures == 0)
        printf("all agree\n");
    return failures ? 1 : 0;
}
