/* fc_conv_pack.h: layout changes around the float32 products of the channels-last path.
 *
 * The channels-last ("hwc") path of conv_im2col.pyx wants the image as xp (Hp, Wp, C),
 * zero-padded, so that every output pixel's window is R runs of S*C contiguous values,
 * eq. (im2col.hwc). These routines move data between layouts and do no arithmetic (but
 * the bias add in fc_unpack_yT_f32, the same single float add as the scalar loop), so
 * the results are bitwise those of the scalar loops in conv_im2col.pyx:
 *
 *   fc_pad_hwc_f32    x (C, H, W)  ->  xp (H + 2ph, W + 2pw, C), zero border
 *   fc_unpad_hwc_f32  dxp (H + 2ph, W + 2pw, C)  ->  dx (C, H, W), border dropped
 *   fc_unpack_yT_f32  yT (P*Q, K)  ->  y (K, P*Q), plus the bias (or none: a transpose)
 *   fc_unpatch_hwc_f32  dxp += the runs of dcolT (adds: col2im on the channels-last path)
 *   fc_take_even_f32  every second value of a row (the classic im2col with stride 2; AVX2)
 *
 * Structure: each is a transpose, done by square blocks held in registers, where a
 * scalar loop pays a strided load or store per element: 16 x 16 blocks in sixteen
 * 512-bit registers with AVX-512 (fc_transpose16: 16 row loads, 64 shuffles, 16 row
 * stores per block), 8 x 8 blocks in eight 256-bit registers with AVX2 (fc_transpose8,
 * in fc_transpose8.h; the functions named ..._hwc8 and ..._yT8). Partial
 * blocks at the edges use masked loads and stores (fc_mask; fc_load8, fc_store8).
 * Three channels (RGB images) would leave 13 of 16 rows of a block empty, so the
 * AVX-512 fc_pad_hwc_f32 interleaves them with two permutes per vector instead.
 *
 * ISA: AVX-512F or AVX2, each compiled with a target attribute (FC_AVX512, FC_AVX2) so
 * that the module still builds for, and runs on, any x86-64; the caller uses each only
 * where fc_isa_level() (fc_isa.h) says so. Elsewhere they are empty stubs, never called.
 */
#ifndef FC_CONV_PACK_H
#define FC_CONV_PACK_H

#include <string.h>
#include "fc_isa.h"
#include "fc_transpose8.h"

#ifdef Py_PYTHON_H
typedef Py_ssize_t fc_index;      /* the kernels' index type, as Cython declares them */
#else
#include <stddef.h>
typedef ptrdiff_t fc_index;       /* standalone (the C tests) */
#endif

#if FC_HAVE_X86_SIMD
#include <immintrin.h>
#define FC_AVX512 __attribute__((target("avx512f,fma")))

/* The zero border of xp (H + 2ph, W + 2pw, C): ph rows above and below, pw pixels left
 * and right of every image row. */
static inline void fc_zero_border(float *xp, fc_index C, fc_index H, fc_index W,
                                  fc_index ph, fc_index pw)
{
    fc_index Wp = W + 2 * pw;
    memset(xp, 0, sizeof(float) * ph * Wp * C);
    memset(xp + (ph + H) * Wp * C, 0, sizeof(float) * ph * Wp * C);
    for (fc_index ih = 0; ih < H; ih++) {
        float *row = xp + (ih + ph) * Wp * C;
        memset(row, 0, sizeof(float) * pw * C);
        memset(row + (pw + W) * C, 0, sizeof(float) * pw * C);
    }
}

/* ---- AVX-512, by 16 x 16 blocks (AVX-512F shuffles only) ---- */

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
FC_AVX512 static inline void fc_pad_hwc_f32(const float *x, float *xp, fc_index C, fc_index H,
                                            fc_index W, fc_index ph, fc_index pw)
{
    fc_index Wp = W + 2 * pw, HW = H * W;
    fc_zero_border(xp, C, H, W, ph, pw);
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
FC_AVX512 static inline void fc_unpad_hwc_f32(const float *dxp, float *dx, fc_index C,
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

/* y (K, PQ) = yT (PQ, K) transposed, plus b[k] on row k (b NULL: the plain transpose). */
FC_AVX512 static inline void fc_unpack_yT_f32(const float *yT, const float *b, float *y,
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
                                          b == NULL ? v[j]
                                          : _mm512_add_ps(v[j], _mm512_set1_ps(b[k0 + j])));
        }
    }
}

/* dxp (Hp, Wp, C) += every run of dcolT ((p1 - p0)*Q, R*S*C), output rows p0 <= p < p1,
 * onto the run of the padded image it came from (the adjoint of the columns, with the
 * window's columns next to each other: dilation 1 along the width): window (p, q), run
 * r adds its S*C values at row p*sh + r*dh, column q*sw, as vectors of 16, the last one
 * masked; the same single adds, in the same order, as conv_im2col.pyx's loop. */
FC_AVX512 static inline void fc_unpatch_hwc_f32(const float *dcolT, float *dxp, fc_index C,
                                                fc_index Wp, fc_index R, fc_index S,
                                                fc_index Q, fc_index sh, fc_index sw,
                                                fc_index dh, fc_index p0, fc_index p1)
{
    fc_index SC = S * C, CRS = R * SC;
    for (fc_index p = p0; p < p1; p++)
        for (fc_index q = 0; q < Q; q++)
            for (fc_index r = 0; r < R; r++) {
                const float *src = dcolT + ((p - p0) * Q + q) * CRS + r * SC;
                float *dst = dxp + ((p * sh + r * dh) * Wp + q * sw) * C;
                for (fc_index i = 0; i < SC; i += 16) {
                    __mmask16 m = fc_mask(SC - i);
                    _mm512_mask_storeu_ps(dst + i, m,
                                          _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst + i),
                                                        _mm512_maskz_loadu_ps(m, src + i)));
                }
            }
}

/* ---- the same three with AVX2, by 8 x 8 blocks ---- */

/* The first min(n, 8) floats at p, the other lanes zero; and the store of as many: whole
 * vectors by plain loads and stores, the partial ones at the edges lane by lane (AMD's
 * masked store, vmaskmovps, is microcoded and slower than the scalar stores). */
FC_AVX2 static inline __m256 fc_load8(const float *p, fc_index n)
{
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, fc_lanes8(n));
}

FC_AVX2 static inline void fc_store8(float *p, fc_index n, __m256 v)
{
    if (n >= 8) {
        _mm256_storeu_ps(p, v);
        return;
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, v);
    for (fc_index i = 0; i < n; i++) p[i] = lanes[i];
}

/* The 8 x 8 block at src (rows src_step apart) transposed into dst (rows dst_step apart),
 * plus add[j] on output row j where add is not NULL; rows x cols of it are there (<= 8
 * each). Whole blocks, the common case, take the branch without conditions. */
FC_AVX2 static inline void fc_block8(const float *src, fc_index src_step, fc_index rows,
                                     fc_index cols, const float *add, float *dst,
                                     fc_index dst_step)
{
    __m256 v[8];
    if (rows == 8 && cols == 8) {
        FC_UNROLL for (int j = 0; j < 8; j++) v[j] = _mm256_loadu_ps(src + j * src_step);
        fc_transpose8(v);
        FC_UNROLL for (int j = 0; j < 8; j++) {
            if (add) v[j] = _mm256_add_ps(v[j], _mm256_set1_ps(add[j]));
            _mm256_storeu_ps(dst + j * dst_step, v[j]);
        }
        return;
    }
    for (int j = 0; j < 8; j++)
        v[j] = j < rows ? fc_load8(src + j * src_step, cols) : _mm256_setzero_ps();
    fc_transpose8(v);
    for (int j = 0; j < cols; j++) {
        if (add) v[j] = _mm256_add_ps(v[j], _mm256_set1_ps(add[j]));
        fc_store8(dst + j * dst_step, rows, v[j]);
    }
}

/* fc_pad_hwc_f32 by blocks of 8 channels x 8 pixels of an image row (8 pixels of a row
 * are C floats apart in xp; a block running past the row's end would not be) */
FC_AVX2 static inline void fc_pad_hwc8_f32(const float *x, float *xp, fc_index C, fc_index H,
                                           fc_index W, fc_index ph, fc_index pw)
{
    fc_index Wp = W + 2 * pw;
    fc_zero_border(xp, C, H, W, ph, pw);
    for (fc_index ih = 0; ih < H; ih++)
        for (fc_index c0 = 0; c0 < C; c0 += 8)
            for (fc_index iw = 0; iw < W; iw += 8)
                fc_block8(x + (c0 * H + ih) * W + iw, H * W, C - c0 < 8 ? C - c0 : 8,
                          W - iw < 8 ? W - iw : 8, NULL,
                          xp + ((ih + ph) * Wp + iw + pw) * C + c0, C);
}

/* fc_unpad_hwc_f32 by blocks of 8 pixels of an image row x 8 channels */
FC_AVX2 static inline void fc_unpad_hwc8_f32(const float *dxp, float *dx, fc_index C,
                                             fc_index H, fc_index W, fc_index ph,
                                             fc_index pw)
{
    fc_index Wp = W + 2 * pw;
    for (fc_index ih = 0; ih < H; ih++)
        for (fc_index iw = 0; iw < W; iw += 8)
            for (fc_index c0 = 0; c0 < C; c0 += 8)
                fc_block8(dxp + ((ih + ph) * Wp + iw + pw) * C + c0, C,
                          W - iw < 8 ? W - iw : 8, C - c0 < 8 ? C - c0 : 8, NULL,
                          dx + (c0 * H + ih) * W + iw, H * W);
}

/* fc_unpack_yT_f32 by blocks of 8 pixels x 8 channels */
FC_AVX2 static inline void fc_unpack_yT8_f32(const float *yT, const float *b, float *y,
                                             fc_index K, fc_index PQ, fc_index ldy)
{
    for (fc_index i0 = 0; i0 < PQ; i0 += 8)
        for (fc_index k0 = 0; k0 < K; k0 += 8)
            fc_block8(yT + i0 * K + k0, K, PQ - i0 < 8 ? PQ - i0 : 8,
                      K - k0 < 8 ? K - k0 : 8, b + k0, y + k0 * ldy + i0, ldy);
}

/* dst[i] = src[2 i] for i < n: a row of im2col's column matrix with stride 2, 8 values a
 * vector (two loads, a shuffle that takes the even lanes of each 128-bit half, and a
 * permute that puts the halves in order) where the loop moves one; the last vector is
 * left to the loop, so that no load reads past src[2 (n - 1)]. */
FC_AVX2 static inline void fc_take_even_f32(float *dst, const float *src, fc_index n)
{
    fc_index i = 0;
    for (; i + 8 < n; i += 8) {
        __m256 a = _mm256_loadu_ps(src + 2 * i), b = _mm256_loadu_ps(src + 2 * i + 8);
        __m256 even = _mm256_shuffle_ps(a, b, 0x88);    /* s0 s2 s8 s10 | s4 s6 s12 s14 */
        even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), 0xD8));
        _mm256_storeu_ps(dst + i, even);
    }
    for (; i < n; i++) dst[i] = src[2 * i];
}

#else   /* no x86 SIMD: never called (fc_isa_level() is baseline) */
static void fc_pad_hwc_f32(const float *x, float *xp, fc_index C, fc_index H,
                           fc_index W, fc_index ph, fc_index pw) {}
static void fc_unpad_hwc_f32(const float *dxp, float *dx, fc_index C, fc_index H,
                             fc_index W, fc_index ph, fc_index pw) {}
static void fc_unpack_yT_f32(const float *yT, const float *b, float *y, fc_index K,
                             fc_index PQ, fc_index ldy) {}
static void fc_pad_hwc8_f32(const float *x, float *xp, fc_index C, fc_index H,
                            fc_index W, fc_index ph, fc_index pw) {}
static void fc_unpad_hwc8_f32(const float *dxp, float *dx, fc_index C, fc_index H,
                              fc_index W, fc_index ph, fc_index pw) {}
static void fc_unpack_yT8_f32(const float *yT, const float *b, float *y, fc_index K,
                              fc_index PQ, fc_index ldy) {}
static void fc_take_even_f32(float *dst, const float *src, fc_index n) {}
static void fc_unpatch_hwc_f32(const float *dcolT, float *dxp, fc_index C, fc_index Wp,
                               fc_index R, fc_index S, fc_index Q, fc_index sh, fc_index sw,
                               fc_index dh, fc_index p0, fc_index p1) {}
#endif

#endif
