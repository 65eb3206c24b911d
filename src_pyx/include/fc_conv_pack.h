/* fc_conv_pack.h: layout changes around the AVX-512 convolution micro-kernel (float32).
 *
 * The channels-last ("hwc") path of conv_im2col.pyx wants the image as xp (Hp, Wp, C),
 * zero-padded, so that every output pixel's window is R runs of S*C contiguous values,
 * eq. (im2col.hwc). These routines move data between layouts and do no arithmetic (but
 * the bias add in fc_unpack_yT_f32, the same single float add as the scalar loop), so
 * the results are bitwise those of the scalar loops in conv_im2col.pyx:
 *
 *   fc_pad_hwc_f32    x (C, H, W)  ->  xp (H + 2ph, W + 2pw, C), zero border
 *   fc_unpad_hwc_f32  dxp (H + 2ph, W + 2pw, C)  ->  dx (C, H, W), border dropped
 *   fc_unpack_yT_f32  yT (P*Q, K)  ->  y (K, P*Q), plus the bias
 *
 * Structure: each is a transpose, done by 16 x 16 blocks held in sixteen 512-bit
 * registers (fc_transpose16): 16 row loads, 64 shuffles, 16 row stores per block, where
 * a scalar loop pays a strided load or store per element. Partial blocks at the edges
 * use masked loads and stores (fc_mask). Three channels (RGB images) would leave 13 of
 * 16 rows of a block empty, so fc_pad_hwc_f32 interleaves them with two permutes per
 * vector instead.
 *
 * ISA: AVX-512F only, compiled with a target attribute (FC_AVX512) so that the module
 * still builds for, and runs on, any x86-64; the caller uses them only where
 * fc_isa_level() (fc_isa.h) says AVX-512. Elsewhere they are empty stubs, never called.
 */
#ifndef FC_CONV_PACK_H
#define FC_CONV_PACK_H

#include <string.h>
#include "fc_isa.h"

#ifdef Py_PYTHON_H
typedef Py_ssize_t fc_index;      /* the kernels' index type, as Cython declares them */
#else
#include <stddef.h>
typedef ptrdiff_t fc_index;       /* standalone (the C tests) */
#endif

#if FC_HAVE_X86_SIMD
#include <immintrin.h>
#define FC_AVX512 __attribute__((target("avx512f,fma")))

/* Layout changes by 16 x 16 blocks transposed in registers (AVX-512F shuffles only):
 * 16 row loads, 64 shuffles, 16 row stores per block, where a scalar loop pays one
 * strided load and store per element. Partial blocks at the edges use masked loads
 * and stores. They move data without arithmetic (the output's bias add is the same
 * single float add as in the scalar loop), so results are bitwise those of the
 * scalar code; measured in conv2d_forward, see _pad_hwc and _forward_sample_hwc. */
FC_AVX512 static inline void fc_transpose16(__m512 r[16])
{   /* r[i][j] -> r[j][i]: rows interleaved by 32-bit, 64-bit, then 128-bit lanes */
    __m512 t[16];
    FC_UNROLL for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    FC_UNROLL for (int i = 0; i < 16; i += 4) {   /* r[i + j], lane L: column 4L + j */
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]),
                                                   _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]),
                                                       _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]),
                                                       _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]),
                                                       _mm512_castps_pd(t[i + 3])));
    }
    FC_UNROLL for (int j = 0; j < 4; j++) {
        t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
        t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
        t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    }
    FC_UNROLL for (int j = 0; j < 4; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
        r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
        r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xDD);
    }
}

static inline __mmask16 fc_mask(fc_index n)    /* the first min(n, 16) lanes */
{
    return (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1);
}

/* xp (H + 2ph, W + 2pw, C) = x (C, H, W) channels-last, zero border: blocks of 16
 * channels x 16 pixels, the pixels counted along the flattened image (ih*W + iw) so that
 * narrow images (W = 8) still fill whole blocks; each transposed row (one pixel's 16
 * channels) is stored at that pixel's place in the padded image. */
FC_AVX512 static void fc_pad_hwc_f32(const float *x, float *xp, fc_index C, fc_index H,
                                     fc_index W, fc_index ph, fc_index pw)
{
    fc_index Wp = W + 2 * pw, HW = H * W;
    memset(xp, 0, sizeof(float) * ph * Wp * C);
    memset(xp + (ph + H) * Wp * C, 0, sizeof(float) * ph * Wp * C);
    for (fc_index ih = 0; ih < H; ih++) {
        float *row = xp + (ih + ph) * Wp * C;
        memset(row, 0, sizeof(float) * pw * C);
        memset(row + (pw + W) * C, 0, sizeof(float) * pw * C);
    }
    if (C == 3) {
        /* RGB images: 16 pixels of the 3 planes a, b, c become 48 interleaved floats,
         * each output vector by two permutes (16 x 16 blocks would be 13/16 empty):
         * out[E] = plane E % 3 at pixel E / 3, first a or b, then c over it. */
        __m512i jab[3], jc[3];
        for (int v = 0; v < 3; v++) {
            int iab[16], ic[16];
            for (int e = 0; e < 16; e++) {
                int E = 16 * v + e, I = E / 3, j = E % 3;
                iab[e] = j == 1 ? 16 + I : I;        /* b or a (don't care for c) */
                ic[e] = j == 2 ? 16 + I : e;         /* c, or keep */
            }
            jab[v] = _mm512_loadu_si512(iab);
            jc[v] = _mm512_loadu_si512(ic);
        }
        for (fc_index ih = 0; ih < H; ih++) {
            float *row = xp + ((ih + ph) * Wp + pw) * 3;
            const float *x0 = x + ih * W;
            for (fc_index w0 = 0; w0 < W; w0 += 16) {
                __mmask16 m = fc_mask(W - w0);
                __m512 a = _mm512_maskz_loadu_ps(m, x0 + w0);
                __m512 b = _mm512_maskz_loadu_ps(m, x0 + HW + w0);
                __m512 c = _mm512_maskz_loadu_ps(m, x0 + 2 * HW + w0);
                fc_index n = 3 * (W - w0 < 16 ? W - w0 : 16);   /* floats to store */
                for (int v = 0; v < 3 && 16 * v < n; v++) {
                    __m512 ab = _mm512_permutex2var_ps(a, jab[v], b);
                    _mm512_mask_storeu_ps(row + 3 * w0 + 16 * v, fc_mask(n - 16 * v),
                                          _mm512_permutex2var_ps(ab, jc[v], c));
                }
            }
        }
        return;
    }
    __m512 v[16];
    for (fc_index c0 = 0; c0 < C; c0 += 16) {
        __mmask16 cmask = fc_mask(C - c0);
        for (fc_index i0 = 0; i0 < HW; i0 += 16) {
            __mmask16 imask = fc_mask(HW - i0);
            FC_UNROLL for (int j = 0; j < 16; j++)
                v[j] = c0 + j < C ? _mm512_maskz_loadu_ps(imask, x + (c0 + j) * HW + i0)
                                  : _mm512_setzero_ps();
            fc_transpose16(v);                   /* v[j]: pixel i0 + j, 16 channels */
            fc_index ih = i0 / W, iw = i0 % W;
            FC_UNROLL for (int j = 0; j < 16; j++) {
                if (i0 + j >= HW) break;
                _mm512_mask_storeu_ps(xp + ((ih + ph) * Wp + iw + pw) * C + c0, cmask, v[j]);
                if (++iw == W) { iw = 0; ih++; }
            }
        }
    }
}

/* dx (C, H, W) = the inside of dxp (H + 2ph, W + 2pw, C): fc_pad_hwc_f32 backwards. */
FC_AVX512 static void fc_unpad_hwc_f32(const float *dxp, float *dx, fc_index C,
                                       fc_index H, fc_index W, fc_index ph,
                                       fc_index pw)
{
    fc_index Wp = W + 2 * pw, HW = H * W;
    __m512 v[16];
    for (fc_index c0 = 0; c0 < C; c0 += 16) {
        __mmask16 cmask = fc_mask(C - c0);
        for (fc_index i0 = 0; i0 < HW; i0 += 16) {
            __mmask16 imask = fc_mask(HW - i0);
            fc_index ih = i0 / W, iw = i0 % W;
            FC_UNROLL for (int j = 0; j < 16; j++) {
                v[j] = i0 + j < HW ? _mm512_maskz_loadu_ps(
                           cmask, dxp + ((ih + ph) * Wp + iw + pw) * C + c0)
                                   : _mm512_setzero_ps();
                if (++iw == W) { iw = 0; ih++; }
            }
            fc_transpose16(v);                   /* v[j]: channel c0 + j, 16 pixels */
            FC_UNROLL for (int j = 0; j < 16; j++)
                if (c0 + j < C) _mm512_mask_storeu_ps(dx + (c0 + j) * HW + i0, imask, v[j]);
        }
    }
}

/* y (K, PQ) = yT (PQ, K) transposed, plus b[k] on row k. */
FC_AVX512 static void fc_unpack_yT_f32(const float *yT, const float *b, float *y,
                                       fc_index K, fc_index PQ, fc_index ldy)
{   /* y[k, i] (row stride ldy) = yT[i, k] + b[k] for PQ pixels i and K channels k */
    __m512 v[16];
    for (fc_index i0 = 0; i0 < PQ; i0 += 16) {
        __mmask16 imask = fc_mask(PQ - i0);
        for (fc_index k0 = 0; k0 < K; k0 += 16) {
            __mmask16 kmask = fc_mask(K - k0);
            FC_UNROLL for (int j = 0; j < 16; j++)
                v[j] = i0 + j < PQ ? _mm512_maskz_loadu_ps(kmask, yT + (i0 + j) * K + k0)
                                   : _mm512_setzero_ps();
            fc_transpose16(v);                   /* v[j]: channel k0 + j, 16 pixels */
            FC_UNROLL for (int j = 0; j < 16; j++)
                if (k0 + j < K)
                    _mm512_mask_storeu_ps(y + (k0 + j) * ldy + i0, imask,
                                          _mm512_add_ps(v[j], _mm512_set1_ps(b[k0 + j])));
        }
    }
}


#else   /* no x86 SIMD: never called (fc_isa_level() is baseline) */
static void fc_pad_hwc_f32(const float *x, float *xp, fc_index C, fc_index H,
                           fc_index W, fc_index ph, fc_index pw) {}
static void fc_unpad_hwc_f32(const float *dxp, float *dx, fc_index C, fc_index H,
                             fc_index W, fc_index ph, fc_index pw) {}
static void fc_unpack_yT_f32(const float *yT, const float *b, float *y, fc_index K,
                             fc_index PQ, fc_index ldy) {}
#endif

#endif
