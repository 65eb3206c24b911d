/* fc_isa.h: which instruction set fastconv's SIMD inner loops use, decided in one place.
 *
 * Every kernel module is compiled for the baseline of its CPU family (plain x86-64 with
 * 16-byte SSE2 vectors, or any other CPU), so the same build runs everywhere. A few inner
 * loops also exist in copies compiled for AVX2 or AVX-512 with gcc/clang's
 * __attribute__((target(...))). At import each module asks fc_isa_level() which copies it
 * may call, and calls those: the decision is this function's alone, for every kernel.
 *
 * FASTCONV_ISA=baseline|avx2|avx512 in the environment lowers the level (never raises it
 * above what the CPU has): for tests that compare the copies, and for a reader who wants
 * to time one against the other.
 */
#ifndef FC_ISA_H
#define FC_ISA_H

#include <stdlib.h>
#include <string.h>

#define FC_ISA_BASELINE 0
#define FC_ISA_AVX2 1          /* AVX2 + FMA: 8 float32 lanes */
#define FC_ISA_AVX512 2        /* AVX-512F + FMA: 16 float32 lanes */

/* 1 when this compiler can build the AVX2 / AVX-512 copies at all. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define FC_HAVE_X86_SIMD 1
#define FC_UNROLL _Pragma("GCC unroll 32")  /* unrolled: the values stay in registers */
#else
#define FC_HAVE_X86_SIMD 0
#endif

/* The best level this CPU runs. */
static inline int fc_isa_cpu(void)
{
#if FC_HAVE_X86_SIMD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"))
        return FC_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return FC_ISA_AVX2;
#endif
    return FC_ISA_BASELINE;
}

/* The level the kernels use: the CPU's, lowered by FASTCONV_ISA when that is set. */
static inline int fc_isa_level(void)
{
    int level = fc_isa_cpu();
    const char *cap = getenv("FASTCONV_ISA");
    if (cap != NULL) {
        if (strcmp(cap, "baseline") == 0 && level > FC_ISA_BASELINE) level = FC_ISA_BASELINE;
        else if (strcmp(cap, "avx2") == 0 && level > FC_ISA_AVX2) level = FC_ISA_AVX2;
    }
    return level;
}

static inline const char *fc_isa_name(int level)
{
    return level == FC_ISA_AVX512 ? "avx512" : level == FC_ISA_AVX2 ? "avx2" : "baseline";
}

#endif
