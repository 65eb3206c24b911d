/* The AVX2 register tile of src_pyx/include/fc_gemm_avx2.h against naive loops (double
 * accumulators), on shapes that leave partial row tiles, 8-column strips and masked tails;
 * the AVX2 layout changes of fc_conv_pack.h and fc_winograd.h against the loops they
 * replace, on shapes that leave partial 8 x 8 blocks and partial vectors.
 * Exit status: 0 all agree, 1 a mismatch (printed), 77 this CPU has no AVX2 (skip).
 * Compiled and run by tests/test_conv_microkernel.py. */
#include "fc_conv_pack.h"
#include "fc_gemm_avx2.h"
#include "fc_winograd.h"
#include "test_util.h"

/* C (+)= A @ B with A row-major or transposed, over every row-tile height and column
 * tail; a long reduction (KR = 3000) splits the rows into blocks (FC_GEMM8_A_BLOCK). */
static void test_gemm8(unsigned *seed, ptrdiff_t KR)
{
    static const ptrdiff_t widths[] = {70, 16, 13, 8, 5, 1};
    ptrdiff_t M = 37;
    for (int w = 0; w < (int)(sizeof widths / sizeof widths[0]); w++) {
        ptrdiff_t N = widths[w];
        for (int transposed = 0; transposed < 2; transposed++) {
            for (int accumulate = 0; accumulate < 2; accumulate++) {
                ptrdiff_t a_rs = transposed ? 1 : KR, a_cs = transposed ? M : 1;
                ptrdiff_t ldc = N + 3;                      /* the columns beyond N stay */
                float *A = randoms(M * KR, seed), *B = randoms(KR * N, seed);
                float *C = randoms(M * ldc, seed);
                double *want = malloc(sizeof(double) * M * ldc);
                for (ptrdiff_t m = 0; m < M; m++)
                    for (ptrdiff_t n = 0; n < ldc; n++) {
                        double acc = accumulate || n >= N ? C[m * ldc + n] : 0;
                        for (ptrdiff_t k = 0; n < N && k < KR; k++)
                            acc += (double)A[m * a_rs + k * a_cs] * B[k * N + n];
                        want[m * ldc + n] = acc;
                    }
                fc_gemm8_f32(M, N, KR, A, a_rs, a_cs, B, N, accumulate, C, ldc);
                char what[64];
                snprintf(what, sizeof what, "fc_gemm8_f32 N=%ld KR=%ld%s%s", (long)N, (long)KR,
                         transposed ? " (A^T)" : "", accumulate ? " +=" : "");
                check(what, C, want, M * ldc, KR);
                free(A); free(B); free(C); free(want);
            }
        }
    }
}

/* x (C, H, W) -> padded channels-last xp and back; yT (PQ, K) -> y (K, PQ) + b, with a
 * row stride ldy > PQ (the values beyond PQ stay). A misplaced value shows as another. */
static void test_layouts8(unsigned *seed, fc_index C, fc_index H, fc_index W, fc_index ph,
                          fc_index pw)
{
    fc_index Hp = H + 2 * ph, Wp = W + 2 * pw;
    float *x = randoms(C * H * W, seed), *xp = randoms(Hp * Wp * C, seed);
    double *want_xp = padded_hwc(x, C, H, W, ph, pw);
    fc_pad_hwc8_f32(x, xp, C, H, W, ph, pw);
    check("fc_pad_hwc8_f32", xp, want_xp, Hp * Wp * C, 1);

    float *dxp = randoms(Hp * Wp * C, seed), *dx = malloc(sizeof(float) * C * H * W);
    double *want_dx = unpadded_hwc(dxp, C, H, W, ph, pw);
    fc_unpad_hwc8_f32(dxp, dx, C, H, W, ph, pw);
    check("fc_unpad_hwc8_f32", dx, want_dx, C * H * W, 1);

    fc_index K = C, PQ = H * W, ldy = PQ + 3;
    float *yT = randoms(PQ * K, seed), *b = randoms(K, seed), *y = randoms(K * ldy, seed);
    double *want_y = malloc(sizeof(double) * K * ldy);
    for (fc_index k = 0; k < K; k++)
        for (fc_index i = 0; i < ldy; i++)
            want_y[k * ldy + i] = i < PQ ? (double)(yT[i * K + k] + b[k]) : y[k * ldy + i];
    fc_unpack_yT8_f32(yT, b, y, K, PQ, ldy);
    check("fc_unpack_yT8_f32", y, want_y, K * ldy, 1);

    free(x); free(xp); free(want_xp); free(dxp); free(dx); free(want_dx);
    free(yT); free(b); free(y); free(want_y);
}

/* Every second value of a row, for n values: src holds exactly 2n - 1 floats, so that a
 * load past the last one shows under AddressSanitizer. */
static void test_take_even(unsigned *seed)
{
    static const fc_index ns[] = {1, 7, 8, 9, 16, 17, 30};
    for (int k = 0; k < (int)(sizeof ns / sizeof ns[0]); k++) {
        fc_index n = ns[k];
        float *src = randoms(2 * n - 1, seed), *dst = randoms(n + 1, seed);
        double *want = malloc(sizeof(double) * (n + 1));
        for (fc_index i = 0; i < n; i++) want[i] = src[2 * i];
        want[n] = dst[n];                                /* the value after stays */
        fc_take_even_f32(dst, src, n);
        check("fc_take_even_f32", dst, want, n + 1, 1);
        free(src); free(dst); free(want);
    }
}

/* Winograd's tiles, m x m outputs each (alpha = m + 2 inputs), tb of them from tile
 * t_first on, 13 x 5 tiles over an H x W plane with padding 1 (the first tiles start a
 * row and a column before the plane, the last ones run past it), gathered side by side
 * into D (zeros in the padding); then D's first m*m rows scattered back into a P x Q
 * plane plus a bias (the last tiles overhang it: only their outputs inside are stored). */
static void test_wino_tiles(unsigned *seed, int m, ptrdiff_t t_first, ptrdiff_t tb)
{
    ptrdiff_t alpha = m + 2, tw = 13, th = 5, P = m * th - 3, Q = m * tw - 2, ld = tb + 5;
    ptrdiff_t H = P, W = Q;
    float *x = randoms(H * W, seed), *D = randoms(alpha * alpha * ld, seed);
    float *y = randoms(P * Q, seed), bias = 0.25f;
    ptrdiff_t in_off[80], in_row[80], in_col[80], out_off[80], rows[80], cols[80];
    double *want_D = malloc(sizeof(double) * alpha * alpha * ld);
    double *want_y = malloc(sizeof(double) * P * Q);
    for (ptrdiff_t i = 0; i < alpha * alpha * ld; i++) want_D[i] = D[i];
    for (ptrdiff_t i = 0; i < P * Q; i++) want_y[i] = y[i];
    for (ptrdiff_t t = 0; t < tb; t++) {
        ptrdiff_t g = t_first + t, i0 = g / tw * m, j0 = g % tw * m;
        in_row[t] = i0 - 1;
        in_col[t] = j0 - 1;
        in_off[t] = in_row[t] * W + in_col[t];
        out_off[t] = i0 * Q + j0;
        rows[t] = P - i0 < m ? (P - i0 > 0 ? P - i0 : 0) : m;
        cols[t] = Q - j0 < m ? (Q - j0 > 0 ? Q - j0 : 0) : m;
        for (ptrdiff_t a = 0; a < alpha; a++)
            for (ptrdiff_t b = 0; b < alpha; b++) {
                ptrdiff_t r = in_row[t] + a, c = in_col[t] + b;
                want_D[(a * alpha + b) * ld + t] = r >= 0 && r < H && c >= 0 && c < W
                                                   ? x[r * W + c] : 0;
            }
    }
    fc_wino_gather_f32(fc_isa_cpu(), x, H, W, 1, in_off, in_row, in_col, tb, (int)alpha, D,
                       ld);
    check(m == 4 ? "fc_wino_gather_f32 (m = 4)" : "fc_wino_gather_f32 (m = 2)", D, want_D,
          alpha * alpha * ld, 1);
    for (ptrdiff_t t = 0; t < tb; t++)
        for (ptrdiff_t i = 0; i < rows[t]; i++)
            for (ptrdiff_t j = 0; j < cols[t]; j++)
                want_y[out_off[t] + i * Q + j] = (double)(D[(i * m + j) * ld + t] + bias);
    int finite = fc_wino_scatter_f32(fc_isa_cpu(), D, ld, y, Q, out_off, rows, cols, tb, m,
                                     bias, NULL);
    check(m == 4 ? "fc_wino_scatter_f32 (m = 4)" : "fc_wino_scatter_f32 (m = 2)", y, want_y,
          P * Q, 1);
    /* with a ReLU's output as the mask: 0 where it is not > 0 (NaN, -0.0 and 0 included) */
    float *mask = randoms(P * Q, seed);
    mask[out_off[0]] = NAN;
    mask[out_off[0] + 1] = -0.0f;
    mask[out_off[tb - 1]] = 0.0f;
    for (ptrdiff_t t = 0; t < tb; t++)             /* the outputs these tiles write */
        for (ptrdiff_t i = 0; i < rows[t]; i++)
            for (ptrdiff_t j = 0; j < cols[t]; j++)
                if (!(mask[out_off[t] + i * Q + j] > 0)) want_y[out_off[t] + i * Q + j] = 0;
    fc_wino_scatter_f32(fc_isa_cpu(), D, ld, y, Q, out_off, rows, cols, tb, m, bias, mask);
    check(m == 4 ? "fc_wino_scatter_f32 masked (m = 4)" : "fc_wino_scatter_f32 masked (m = 2)",
          y, want_y, P * Q, 1);
    free(mask);
    /* the finiteness it reports: of every value, an overhanging tile's last one included */
    ptrdiff_t planted[2] = {(m * m - 1) * ld + 1, (m * m - 1) * ld + tb - 1};
    for (int k = 0; k < 2; k++) {
        float kept = D[planted[k]];
        D[planted[k]] = k ? NAN : INFINITY;
        if (!finite || fc_wino_scatter_f32(fc_isa_cpu(), D, ld, y, Q, out_off, rows, cols, tb,
                                           m, bias, NULL)) {
            printf("fc_wino_scatter_f32 (m = %d): wrong finiteness (clean: %d; %s planted)\n",
                   m, finite, k ? "NaN" : "Inf");
            failures++;
        }
        D[planted[k]] = kept;
    }
    free(x); free(D); free(y); free(want_D); free(want_y);
}

int main(void)
{
    unsigned seed = 12345u;
    if (fc_isa_cpu() < FC_ISA_AVX2) {
        printf("no AVX2 on this CPU\n");
        return 77;
    }
    test_gemm8(&seed, 29);
    test_gemm8(&seed, 3000);
    test_layouts8(&seed, 13, 5, 7, 2, 1);     /* partial blocks of channels and pixels */
    test_layouts8(&seed, 16, 8, 8, 1, 1);     /* whole blocks */
    test_layouts8(&seed, 4, 3, 3, 0, 2);      /* fewer than 8 of each */
    test_take_even(&seed);
    for (int m = 2; m <= 4; m += 2) {
        test_wino_tiles(&seed, m, 0, 65);         /* all 65 tiles: 8 groups and one left */
        test_wino_tiles(&seed, m, 3, 16);         /* two groups, across tile rows */
    }
    if (failures == 0)
        printf("all agree\n");
    return failures ? 1 : 0;
}
