/* fc_transpose8.h: an 8 x 8 block of floats transposed in eight AVX2 registers.
 *
 * The layout changes of the convolutions (fc_conv_pack.h: an image to channels-last and
 * back; fc_winograd.h: input tiles side by side) are transposes. Done element by element
 * they pay one strided load or store per value; by 8 x 8 blocks, 8 row loads, 24
 * shuffles and 8 row stores. The shuffles only move values: the results are bitwise
 * those of the scalar loops.
 *
 * ISA: AVX2 through a target attribute (FC_AVX2), so that the modules still build for,
 * and run on, any x86-64; callers use it only where fc_isa_level() (fc_isa.h) says AVX2.
 */
#ifndef FC_TRANSPOSE8_H
#define FC_TRANSPOSE8_H

#include <stddef.h>
#include "fc_isa.h"

#if FC_HAVE_X86_SIMD
#include <immintrin.h>

#define FC_AVX2 __attribute__((target("avx2,fma")))

/* r[i][j] -> r[j][i]: rows interleaved by 32-bit, 64-bit, then 128-bit lanes */
FC_AVX2 static inline void fc_transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
    FC_UNROLL for (int i = 0; i < 8; i += 2) {   /* pairs of rows, lanes 0 1 | 4 5 and 2 3 | 6 7 */
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    FC_UNROLL for (int i = 0; i < 8; i += 4) {   /* u[i + j]: column j | column j + 4, 4 rows */
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    FC_UNROLL for (int j = 0; j < 4; j++) {      /* rows 0-3 and 4-7 of each column */
        r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
        r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
    }
}

/* The first min(n, 8) lanes set (none for n <= 0) */
FC_AVX2 static inline __m256i fc_lanes8(ptrdiff_t n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n >= 8 ? 8 : (int)n),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

#endif

#endif
