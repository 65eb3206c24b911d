/* The AVX2 register tile of src_pyx/include/fc_gemm_avx2.h against naive loops (double
 * accumulators), on shapes that leave partial row tiles, 8-column strips and masked tails.
 * Exit status: 0 all agree, 1 a mismatch (printed), 77 this CPU has no AVX2 (skip).
 * Compiled and run by tests/test_conv_microkernel.py. */
#include "fc_gemm_avx2.h"
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

int main(void)
{
    unsigned seed = 12345u;
    if (fc_isa_cpu() < FC_ISA_AVX2) {
        printf("no AVX2 on this CPU\n");
        return 77;
    }
    test_gemm8(&seed, 29);
    test_gemm8(&seed, 3000);
    if (failures == 0)
        printf("all agree\n");
    return failures ? 1 : 0;
}
