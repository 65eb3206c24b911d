# cython: language_level=3
"""2-D convolution as matrix products: im2col + GEMM, one image per thread (Caffe's method).

``algo="auto"`` runs this module for the backward pass of every dense convolution with
more than one output channel, and for its forward pass unless Winograd takes it (3x3,
stride 1, at least 16 channels in and out: src_pyx/conv_winograd.pyx).
Its inner loop is a GEMM: on CPUs without AVX-512 (and for float64) BLAS's, called from
``_forward_sample_hwc`` -> ``_gemm_small`` -> ``gemm_rm`` (src_pyx/_blas.pxd); with
AVX-512, float32, the register tile ``fc_itile`` of src_pyx/include/fc_conv_microkernel.h.

Compiled twin of ``fastconv/reference/conv_im2col.py`` (same functions and signatures);
``fastconv.functional`` validates every argument and limits BLAS to one thread around
each call, so the GEMMs issued from inside ``prange`` do not oversubscribe the cores.

(im2col)      col_n[(c*R + r)*S + s, p*Q + q] = x[n, c, p*sh + r*dh - ph, q*sw + s*dw - pw]
              (0 outside the image; (dh, dw) the dilation, 1 for an ordinary convolution)
(conv.fwd)    Y_n = W @ col_n (+ b),   W = w viewed as (K, C*R*S)
(conv.bwd)    dW = sum_n dY_n @ col_n^T,   db[k] = sum_{n,p,q} dy[n,k,p,q],
              dcol_n = W^T @ dY_n, then col2im scatter-adds dcol_n into dx[n]
(im2col.hwc)  the same with the image channels-last and the reduction axis in (r, s, c)
              order, so that each window is R contiguous runs of S*C values

Read it in this order:

1. The classic path (the one to study): ``_im2col_sample`` builds one image's columns,
   one GEMM per image gives Y_n (``_forward_sample``); backward, ``_backward_chunk``
   accumulates dW^T and scatters dcol back with ``_col2im_sample``. It runs where the
   runs S*C are short (lenet_c1: one channel) and, without building columns, for 1x1
   stride-1 unpadded layers (x[n] viewed as (C, H*W) already is col_n).
2. The tuned, channels-last path (``_forward_sample_hwc``, ``_backward_chunk_hwc``), eq.
   (im2col.hwc): most layers. The products are in the orientations that keep the small
   side (K channels) in registers; with the AVX-512 micro-kernel colT is never built (the
   kernel reads each window in the padded image through an offset per output pixel).

Fused epilogue (conv.fused): ``conv2d_forward(..., relu=, residual=)`` hands each block of
output, right after it is written, to ``_epilogue`` (src_pyx/_conv_shared.pxi), which adds
the residual and applies the ReLU while the block is in cache; with ``pool_out=``, each
image's task then pools its output 2x2 (conv.pool, ``_pool_image``).

Threads and determinism. Forward: one image per task. Backward: dW is summed over fixed
batch chunks in a fixed order (see "dW: fixed batch chunks" below), so every result is
bitwise the same for any thread count, whichever thread runs which task.

Memory (scratch beyond the outputs), in values; "columns" is one image's C*R*S x P*Q:
  forward   threads x columns (plus Wr, the weights in the channels-last layout, K*C*R*S,
            on one thread where it does not fit beside the padded image);
  backward  threads x columns (a thread's padded image and block of columns), plus the
            partial dWs of a round: the largest of threads x columns, threads x one dW
            and 1 MiB, plus Wr (one dW).
Tested in tests/test_conv.py::test_im2col_memory_within_bound.

NaN and Inf: as the formula, 0 * NaN = NaN, padding included. The AVX-512 forward skips
taps that fall in the zero padding; one pass over w first (``_all_finite``) keeps them
where w holds NaN or Inf, so both backends give NaN exactly where the reference does.
Measurements behind the choices here: docs/performance.md, "Convolution".
"""
import numpy as np

from cython cimport floating
from libc.string cimport memcpy
from cython.parallel cimport prange, threadid

from _blas cimport gemm_rm
from _isa cimport FC_ISA_AVX2, FC_ISA_AVX512, fc_isa_level
from _common cimport end_inside, first_inside, imax, out_size, threads_for_macs

# The float32 AVX-512 and AVX2 pieces, in C (intrinsics): headers under src_pyx/include/,
# each starting with how it is built. Used only where fc_isa_level() says so.
cdef extern from "fc_conv_pack.h":
    void fc_pad_hwc_f32(const float* x, float* xp, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t ph, Py_ssize_t pw) noexcept nogil
    void fc_unpad_hwc_f32(const float* dxp, float* dx, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t ph, Py_ssize_t pw) noexcept nogil
    void fc_unpack_yT_f32(const float* yT, const float* b, float* y, Py_ssize_t K,
                          Py_ssize_t PQ, Py_ssize_t ldy) noexcept nogil
    void fc_pad_hwc8_f32(const float* x, float* xp, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t ph, Py_ssize_t pw) noexcept nogil
    void fc_unpad_hwc8_f32(const float* dxp, float* dx, Py_ssize_t C, Py_ssize_t H,
                           Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw) noexcept nogil
    void fc_unpack_yT8_f32(const float* yT, const float* b, float* y, Py_ssize_t K,
                           Py_ssize_t PQ, Py_ssize_t ldy) noexcept nogil
    void fc_take_even_f32(float* dst, const float* src, Py_ssize_t n) noexcept nogil
    void fc_unpatch_hwc_f32(const float* dcolT, float* dxp, Py_ssize_t C, Py_ssize_t Wp,
                            Py_ssize_t R, Py_ssize_t S, Py_ssize_t Q, Py_ssize_t sh,
                            Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t p0,
                            Py_ssize_t p1) noexcept nogil


cdef extern from "fc_gemm_avx2.h":
    void fc_gemm8_f32(Py_ssize_t M, Py_ssize_t N, Py_ssize_t KR, const float* A,
                      Py_ssize_t a_rs, Py_ssize_t a_cs, const float* B, Py_ssize_t ldb,
                      bint accumulate, float* C, Py_ssize_t ldc) noexcept nogil

cdef extern from "fc_conv_microkernel.h":
    void fc_dconv_f32(Py_ssize_t P, Py_ssize_t Q, Py_ssize_t K, Py_ssize_t R, Py_ssize_t S,
                      Py_ssize_t C, Py_ssize_t sh, Py_ssize_t ph, Py_ssize_t H, Py_ssize_t Wp,
                      const float* xp, const float* wrT, float* yT) noexcept nogil
    void fc_gemm_f32(Py_ssize_t M, Py_ssize_t N, Py_ssize_t KR, const float* A,
                     Py_ssize_t a_rs, Py_ssize_t a_cs, const float* B, Py_ssize_t ldb,
                     int accumulate, float* C, Py_ssize_t ldc) noexcept nogil
    void fc_igemm_f32(Py_ssize_t M, Py_ssize_t N, Py_ssize_t R, Py_ssize_t SC, Py_ssize_t seg,
                      const float* A, const Py_ssize_t* offs, const float* B, Py_ssize_t ldb,
                      float* C, Py_ssize_t ldc) noexcept nogil
    void fc_bgemm_f32(Py_ssize_t M, Py_ssize_t N, Py_ssize_t KR, const float* A,
                      Py_ssize_t a_rs, Py_ssize_t a_cs, const float* B,
                      const Py_ssize_t* boffs, Py_ssize_t SC, Py_ssize_t seg, int accumulate,
                      float* C, Py_ssize_t ldc) noexcept nogil
    void fc_cgemm_f32(Py_ssize_t M, Py_ssize_t N, Py_ssize_t KR, const float* A,
                      Py_ssize_t a_rs, Py_ssize_t a_cs, const float* B, Py_ssize_t ldb, float* C,
                      const Py_ssize_t* roffs, Py_ssize_t SC, Py_ssize_t seg) noexcept nogil


_INT_MAX = 2**31 - 1                   # BLAS sizes are C ints
_MAX_CHUNKS = 16                       # batch chunks of the dW reduction (parallelism of it)
_PARTIALS_BYTES = 64 * 2**20           # ... fewer where adding 16 partial dWs would cost more
_ROUND_BYTES = 2**20                   # partial dWs a round may hold beyond threads x columns
DEF _TBLOCK = 64                       # rows per block of the blocked transposes
DEF _TILE8_MAX_SIDE = 64               # the AVX2 tile for products with a side this short
DEF _TILE8_CLASSIC_K = 64              # ... and for the classic forward up to K channels
DEF _HWC_MIN_RUN = 16                  # shortest S*C run worth the channels-last path ...
DEF _HWC_MIN_RUN_FWD_MK = 9            # ... and for the float32 forward on the micro-kernel


# --------------------------------------------------------------------------- small GEMMs

cdef bint _use_microkernel = fc_isa_level() >= FC_ISA_AVX512  # float32 products on it
cdef bint _use_tile8 = fc_isa_level() == FC_ISA_AVX2  # ... on AVX2's tile (and its layouts)


def _microkernel_in_use():
    """Whether float32 products run on the AVX-512 micro-kernel (see _set_microkernel)."""
    return bool(_use_microkernel)


def _products_kernel():
    """Which kernel runs the float32 products: "avx512 micro-kernel", "avx2 register tile"
    (the products of _gemm_small only) or "BLAS"."""
    return ("avx512 micro-kernel" if _use_microkernel else
            "avx2 register tile" if _use_tile8 else "BLAS")


def _set_microkernel(bint on):
    """Use fastconv's own float32 products (the AVX-512 micro-kernel, or the AVX2 register
    tile of fc_gemm_avx2.h: the default where the CPU has them) or BLAS; returns the
    previous setting. For tests and benchmarks: the results of the two differ in rounding,
    so it is a process-wide switch, never chosen per call."""
    global _use_microkernel, _use_tile8
    previous = _use_microkernel or _use_tile8
    _use_microkernel = on and fc_isa_level() >= FC_ISA_AVX512
    _use_tile8 = on and fc_isa_level() == FC_ISA_AVX2
    return previous


cdef void _gemm_small(Py_ssize_t M, Py_ssize_t N, Py_ssize_t KR, const floating* A,
                      Py_ssize_t a_rs, Py_ssize_t a_cs, const floating* B, Py_ssize_t ldb,
                      bint accumulate, floating* C, Py_ssize_t ldc) noexcept nogil:
    """C (M, N) = A (M, KR) @ B (KR, N), or += with ``accumulate``; B and C row-major, A read
    through strides: a_cs == 1 (row-major, lda = a_rs) or a_rs == 1 (A^T row-major, lda = a_cs).

    These products have one small side (K channels), where BLAS packs (copies) the big
    operand for few uses of each element; fastconv's float32 kernels, the AVX-512
    micro-kernel or the AVX2 register tile (fc_gemm_avx2.h), read both in place and keep
    their tile of C in registers. Elsewhere BLAS, and on AVX2 also where every side is
    longer than _TILE8_MAX_SIDE (there BLAS's blocking pays for its copies: VGG's 128
    channels, measured in docs/performance.md).
    """
    if floating is float:
        if _use_microkernel:
            fc_gemm_f32(M, N, KR, A, a_rs, a_cs, B, ldb, accumulate, C, ldc)
            return
        if _use_tile8 and min(M, N, KR) <= _TILE8_MAX_SIDE:
            fc_gemm8_f32(M, N, KR, A, a_rs, a_cs, B, ldb, accumulate, C, ldc)
            return
    # BLAS wants lda >= the stored row length even where there is a single row (M or KR = 1)
    if a_cs == 1 and (a_rs >= KR or M == 1):
        gemm_rm(False, False, <int>M, <int>N, <int>KR, 1, A, <int>imax(a_rs, KR), B,
                <int>ldb, 1 if accumulate else 0, C, <int>ldc)
    else:                                                    # a_rs == 1: A^T is row-major
        gemm_rm(True, False, <int>M, <int>N, <int>KR, 1, A, <int>imax(a_cs, M), B,
                <int>ldb, 1 if accumulate else 0, C, <int>ldc)


# --------------------------------------------------------------------------- im2col / col2im

cdef inline (Py_ssize_t, Py_ssize_t) _rows_inside(Py_ssize_t H, Py_ssize_t off, Py_ssize_t sh,
                                                  Py_ssize_t P, Py_ssize_t p0,
                                                  Py_ssize_t p1) noexcept nogil:
    """The output rows p0 <= p_lo <= p < p_hi <= p1 whose input row p*sh + off is inside
    [0, H) (first_inside / end_inside, clamped to the block of rows p0:p1)."""
    cdef Py_ssize_t lo = first_inside(off, sh, P)
    cdef Py_ssize_t hi = end_inside(H, off, sh, P, lo)
    lo = min(max(lo, p0), p1)
    return lo, max(min(hi, p1), lo)


cdef void _im2col_sample(const floating* x_n, floating* col, Py_ssize_t C, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t R, Py_ssize_t S, Py_ssize_t P, Py_ssize_t Q,
                         Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                         Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t p0,
                         Py_ssize_t p1) noexcept nogil:
    """(im2col) x_n (C, H, W) -> col (C*R*S, (p1 - p0)*Q): the columns of output rows
    p0 <= p < p1 (all of them: 0, P), zeros where the window is in the padding.

    Row (c, r, s) of col is the image plane c shifted by the tap (r*dh, s*dw) and sampled
    every stride; each output row p of it is [zeros | a contiguous/strided copy | zeros].
    """
    cdef Py_ssize_t c, r, s, p, q, p_lo, p_hi, q_lo, q_hi, off, PQb = (p1 - p0) * Q
    cdef floating* col_row
    cdef floating* dst
    cdef const floating* x_row
    for c in range(C):
        for r in range(R):
            p_lo, p_hi = _rows_inside(H, r * dh - ph, sh, P, p0, p1)
            for s in range(S):
                col_row = col + ((c * R + r) * S + s) * PQb - p0 * Q   # output row p at p*Q
                off = s * dw - pw
                q_lo = first_inside(off, sw, Q)
                q_hi = end_inside(W, off, sw, Q, q_lo)
                for q in range(p0 * Q, p_lo * Q):          # rows above the image
                    col_row[q] = 0
                for p in range(p_lo, p_hi):
                    dst = col_row + p * Q
                    x_row = x_n + (c * H + p * sh + r * dh - ph) * W
                    for q in range(q_lo):
                        dst[q] = 0
                    if floating is float and sw == 2 and _use_tile8 and q_hi > q_lo:
                        fc_take_even_f32(dst + q_lo, x_row + 2 * q_lo + off, q_hi - q_lo)
                    elif sw != 1:
                        for q in range(q_lo, q_hi):
                            dst[q] = x_row[q * sw + off]
                    elif q_hi > q_lo:
                        # memcpy: libc copies at full vector width (gcc's loop: 16 bytes)
                        memcpy(dst + q_lo, x_row + q_lo + off,
                               (q_hi - q_lo) * sizeof(floating))
                    for q in range(q_hi, Q):
                        dst[q] = 0
                for q in range(p_hi * Q, p1 * Q):          # rows below the image
                    col_row[q] = 0


cdef void _col2im_sample(const floating* col, floating* dx_n, Py_ssize_t C, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t R, Py_ssize_t S, Py_ssize_t P, Py_ssize_t Q,
                         Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                         Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t p0,
                         Py_ssize_t p1) noexcept nogil:
    """The adjoint of _im2col_sample: dx_n (C, H, W) += col's entries (output rows
    p0 <= p < p1) onto the pixels they were copied from (entries that came from the padding
    are dropped). The caller zeroes dx_n once per image."""
    cdef Py_ssize_t c, r, s, p, q, p_lo, p_hi, q_lo, q_hi, off, PQb = (p1 - p0) * Q
    cdef const floating* src
    cdef floating* dx_row
    for c in range(C):
        for r in range(R):
            p_lo, p_hi = _rows_inside(H, r * dh - ph, sh, P, p0, p1)
            for s in range(S):
                off = s * dw - pw
                q_lo = first_inside(off, sw, Q)
                q_hi = end_inside(W, off, sw, Q, q_lo)
                for p in range(p_lo, p_hi):
                    src = col + ((c * R + r) * S + s) * PQb + (p - p0) * Q
                    dx_row = dx_n + (c * H + p * sh + r * dh - ph) * W
                    if sw == 1:
                        for q in range(q_lo, q_hi):
                            dx_row[q + off] += src[q]
                    else:
                        for q in range(q_lo, q_hi):
                            dx_row[q * sw + off] += src[q]


# ------------------------------------------------- channels-last patches (the "hwc" path)
#
# OpenBLAS is fast on these small-K GEMMs only when the big column matrix is its streamed B
# operand with the reduction axis contiguous, i.e. stored as col^T (PQ, CRS) (figures in
# docs/performance.md). Building col^T element by element would be a slow strided scatter, but if the
# reduction axis is ordered (r, s, c) instead of (c, r, s) and the image is first copied to
# channels-last (H, W, C) with its zero padding, every (p, q, r) of col^T is ONE contiguous
# run of S*C values, copied with vectorised loads and stores:
#
# (im2col.hwc)  xp[ih + ph, iw + pw, c] = x[n, c, ih, iw]     (0 in the border)
#               colT[p*Q + q, (r*S + s)*C + c] = xp[p*sh + r, q*sw + s, c]
#               Y_n^T (PQ, K) = colT (PQ, CRS) @ Wr^T,  Wr[k, (r*S + s)*C + c] = w[k, c, r, s]
#
# Better still, the run starts at xp + offs[p*Q + q] + r*(W + 2pw)*C with
# offs[p*Q + q] = (p*sh*(W + 2pw) + q*sw)*C, so the micro-kernel reads colT without building
# it (an indirect GEMM): colT is materialised only for BLAS (float64, CPUs without AVX-512,
# and a backward whose runs are not whole 16-float vectors).

cdef void _pad_hwc(const floating* x_n, floating* xp, Py_ssize_t C, Py_ssize_t H,
                   Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """xp (H + 2ph, W + 2pw, C) = x_n (C, H, W) moved to channels-last, zero border.

    float32 with AVX-512 or AVX2: fc_pad_hwc_f32 / fc_pad_hwc8_f32 (include/fc_conv_pack.h),
    by 16 x 16 or 8 x 8 blocks transposed in registers, since the scalar transpose below
    stores with a stride of C floats; a few channels by the loop.
    """
    cdef Py_ssize_t Wp = W + 2 * pw, ih, iw, c, i
    cdef floating* row
    if floating is float:
        if _use_microkernel and C >= 3:
            fc_pad_hwc_f32(x_n, xp, C, H, W, ph, pw)
            return
        if _use_tile8 and C >= 8:
            fc_pad_hwc8_f32(x_n, xp, C, H, W, ph, pw)
            return
    for i in range(ph * Wp * C):                                # top and bottom border rows
        xp[i] = 0
        xp[(ph + H) * Wp * C + i] = 0
    for ih in range(H):
        row = xp + (ih + ph) * Wp * C
        for i in range(pw * C):                                 # left and right border
            row[i] = 0
            row[(pw + W) * C + i] = 0
        for c in range(C):                                      # a (C, W) -> (W, C) transpose
            for iw in range(W):
                row[(iw + pw) * C + c] = x_n[(c * H + ih) * W + iw]


cdef void _patches_hwc(const floating* xp, floating* colT, Py_ssize_t C, Py_ssize_t Wp,
                       Py_ssize_t R, Py_ssize_t S, Py_ssize_t Q, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t p0,
                       Py_ssize_t p1) noexcept nogil:
    """(im2col.hwc) colT ((p1 - p0)*Q, R*S*C) for output rows p0 <= p < p1 (all: 0, P):
    row (p - p0)*Q + q is the R runs xp[p*sh + r*dh, q*sw : q*sw + S, :] (with a dilation
    dw > 1 along the width, R*S runs of C values, xp[p*sh + r*dh, q*sw + s*dw, :])."""
    cdef Py_ssize_t SC = S * C, CRS = R * S * C, p, q, r, s, i
    cdef const floating* src
    cdef floating* dst
    for p in range(p0, p1):
        for q in range(Q):
            for r in range(R):
                src = xp + ((p * sh + r * dh) * Wp + q * sw) * C
                dst = colT + ((p - p0) * Q + q) * CRS + r * SC
                if dw == 1:
                    memcpy(dst, src, SC * sizeof(floating))     # see _im2col_sample
                else:
                    for s in range(S):
                        for i in range(C):
                            dst[s * C + i] = src[s * dw * C + i]


cdef void _unpatch_hwc(const floating* dcolT, floating* dxp, Py_ssize_t C, Py_ssize_t Wp,
                       Py_ssize_t R, Py_ssize_t S, Py_ssize_t Q, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t p0,
                       Py_ssize_t p1) noexcept nogil:
    """The adjoint of _patches_hwc: dxp (Hp, Wp, C) += every run of dcolT (output rows
    p0 <= p < p1) onto the run of xp it was copied from (contiguous adds of S*C values, or
    of C values with a dilation dw > 1). The caller zeroes dxp once per image. float32
    with AVX-512 and dw = 1: fc_unpatch_hwc_f32 (include/fc_conv_pack.h), the same adds by
    whole vectors, where this loop's vectors are SSE's four values."""
    cdef Py_ssize_t SC = S * C, CRS = R * S * C, p, q, r, s, i
    cdef const floating* src
    cdef floating* dst
    if floating is float:
        if _use_microkernel and dw == 1:
            fc_unpatch_hwc_f32(dcolT, dxp, C, Wp, R, S, Q, sh, sw, dh, p0, p1)
            return
    for p in range(p0, p1):
        for q in range(Q):
            for r in range(R):
                src = dcolT + ((p - p0) * Q + q) * CRS + r * SC
                dst = dxp + ((p * sh + r * dh) * Wp + q * sw) * C
                if dw == 1:
                    for i in range(SC):
                        dst[i] += src[i]
                else:
                    for s in range(S):
                        for i in range(C):
                            dst[s * dw * C + i] += src[s * C + i]


cdef void _unpad_hwc(const floating* dxp, floating* dx_n, Py_ssize_t C, Py_ssize_t H,
                     Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """dx_n (C, H, W) = the inside of dxp (H + 2ph, W + 2pw, C), back to channels-first (the
    border held gradients of padding zeros, dropped). float32 with AVX-512 or AVX2:
    fc_unpad_hwc_f32 / fc_unpad_hwc8_f32 (see _pad_hwc)."""
    cdef Py_ssize_t Wp = W + 2 * pw, ih, iw, c
    cdef const floating* row
    if floating is float:
        if _use_microkernel and C >= 4:
            fc_unpad_hwc_f32(dxp, dx_n, C, H, W, ph, pw)
            return
        if _use_tile8 and C >= 8:
            fc_unpad_hwc8_f32(dxp, dx_n, C, H, W, ph, pw)
            return
    for ih in range(H):                           # row by row: each (W, C) block stays in L1
        row = dxp + ((ih + ph) * Wp + pw) * C
        for c in range(C):
            for iw in range(W):
                dx_n[(c * H + ih) * W + iw] = row[iw * C + c]


def _window_starts(Py_ssize_t P, Py_ssize_t Q, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t Wp,
                   Py_ssize_t C):
    """offs (P*Q,): offs[p*Q + q] = (p*sh*Wp + q*sw)*C, where output pixel (p, q)'s window
    starts in the padded channels-last image (a loop: cheaper than five NumPy calls)."""
    offs_arr = np.empty(P * Q, dtype=np.intp)
    cdef Py_ssize_t[::1] offs = offs_arr
    cdef Py_ssize_t p, q
    for p in range(P):
        for q in range(Q):
            offs[p * Q + q] = (p * sh * Wp + q * sw) * C
    return offs_arr


cdef bint _in_place_runs(Py_ssize_t C, Py_ssize_t S) noexcept nogil:
    """Whether the float32 backward reads and writes colT's runs inside the padded image
    for both products (fc_bgemm_f32, fc_cgemm_f32): the micro-kernel is on and a run is
    whole vectors. dW alone reads them in place whatever the runs (its last vector masked):
    dx's in-place adds, with runs that are not whole vectors, were no faster than colT."""
    return _use_microkernel and (S * C) % 16 == 0


cdef bint _use_hwc(Py_ssize_t C, Py_ssize_t S, bint is_1x1, bint fwd_mk) noexcept nogil:
    """The channels-last path, unless there are no columns to build (1x1) or its contiguous
    runs of S*C values are too short to pay (lenet_c1, S*C = 5). ``fwd_mk``: the float32
    forward pass on the micro-kernel, which reads the windows in place, pays from S*C = 9
    on; BLAS, and the backward, from _HWC_MIN_RUN (docs/performance.md)."""
    return not is_1x1 and S * C >= (_HWC_MIN_RUN_FWD_MK if fwd_mk else _HWC_MIN_RUN)


# --------------------------------------------------------------------------- forward

cdef void _forward_sample(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                          const floating[::1] b, floating[:, :, :, ::1] y, floating* col,
                          Py_ssize_t n, bint is_1x1, bint has_bias, Py_ssize_t sh,
                          Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                          Py_ssize_t dw, Py_ssize_t rows, const floating* res,
                          bint relu) noexcept nogil:
    """Y_n (K x PQ) = W (K x CRS) @ col_n (CRS x PQ) (+ b), eq. (im2col), by blocks of
    ``rows`` output rows (col holds one block's columns: see _rows_per_block); then, where
    asked, the fused epilogue on each block just written (``_epilogue``: + the image's
    residual ``res`` unless NULL, ReLU)."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3]
    cdef Py_ssize_t P = y.shape[2], Q = y.shape[3], k, i, blk, p0, p1
    cdef int CRS = <int>(C * R * S), PQ = <int>(P * Q), PQb
    cdef floating* y_n = &y[n, 0, 0, 0]
    cdef floating beta = 0
    cdef bint fused = res != NULL or relu
    if has_bias:                             # Y_n = b, then GEMM with beta = 1 adds W @ col_n
        beta = 1
        for k in range(K):
            for i in range(PQ):
                y_n[k * PQ + i] = b[k]
    if is_1x1:      # x[n] as (C, H*W) is col_n already
        _gemm_small(K, PQ, CRS, &w[0, 0, 0, 0], CRS, 1, &x[n, 0, 0, 0], PQ, has_bias, y_n,
                    PQ)
        if fused:
            _epilogue(y_n, res, 0, K, PQ, PQ, relu)
        return
    for blk in range((P + rows - 1) // rows):               # blocks of output rows
        p0 = blk * rows
        p1 = min(p0 + rows, P)
        PQb = <int>((p1 - p0) * Q)
        _im2col_sample(&x[n, 0, 0, 0], col, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw,
                       p0, p1)
        # Y_b (K, PQb) (+)= W @ col_b, in place in y[n] (row stride PQ). BLAS even with
        # AVX-512: with few taps (lenet_c1, C*R*S = 25) the micro-kernel was slower; the
        # AVX2 register tile for few output channels (K rows), where BLAS wasted its tiles
        if floating is float and _use_tile8 and K <= _TILE8_CLASSIC_K:
            fc_gemm8_f32(K, PQb, CRS, &w[0, 0, 0, 0], CRS, 1, col, PQb, has_bias,
                         y_n + p0 * Q, PQ)
        else:
            gemm_rm(False, False, <int>K, PQb, CRS, 1, &w[0, 0, 0, 0], CRS, col, PQb, beta,
                    y_n + p0 * Q, PQ)
        if fused:
            _epilogue(y_n, res, p0 * Q, K, PQb, PQ, relu)


cdef inline Py_ssize_t _first_tap(Py_ssize_t p, Py_ssize_t sh, Py_ssize_t ph) noexcept nogil:
    """The first kernel row r whose input row p*sh + r - ph of output row p is in the image."""
    return ph - p * sh if ph > p * sh else 0


cdef inline Py_ssize_t _end_tap(Py_ssize_t p, Py_ssize_t sh, Py_ssize_t ph, Py_ssize_t H,
                                Py_ssize_t R) noexcept nogil:
    """One past the last kernel row r whose input row p*sh + r - ph is in the image."""
    return H + ph - p * sh if H + ph - p * sh < R else R


cdef void _forward_sample_hwc(const floating[:, :, :, ::1] x, const floating[:, ::1] wrT,
                              const floating[::1] b, const Py_ssize_t[::1] offs,
                              floating[:, :, :, ::1] y, floating* work, Py_ssize_t n,
                              Py_ssize_t R, Py_ssize_t S, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                              Py_ssize_t rows, bint skip_zero_taps, const floating* res,
                              bint relu) noexcept nogil:
    """Y_n = (colT @ Wr^T)^T + b by eq. (im2col.hwc); wrT is Wr^T (R*S*C, K).

    By blocks of ``rows`` output rows (see _rows_per_block), each computed as Y_b^T
    (PQb, K) and moved, transposed, into y[n]; where asked, the fused epilogue
    (``_epilogue``: + the image's residual ``res`` unless NULL, ReLU) follows each piece of
    that move, on the values just written. With the micro-kernel, colT is never built:
    fc_igemm_f32 reads each output pixel's window straight from xp, at
    offs[p*Q + q] = (p*sh*Wp + q*sw)*C (its R runs one row of xp apart). ``work`` holds the
    padded channels-last image xp, then a block of Y_n^T, then (BLAS path) of colT.
    A dilated convolution (dh or dw > 1) always builds colT (the micro-kernels read
    undilated windows).
    """
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3], K = y.shape[1]
    cdef Py_ssize_t P = y.shape[2], Q = y.shape[3], Wp = W + 2 * pw, k, i
    cdef Py_ssize_t CRS = C * R * S, PQ = P * Q, PQb
    cdef floating* xp = work
    cdef floating* yT = xp + (H + 2 * ph) * Wp * C
    cdef floating* colT = yT + rows * Q * K
    cdef floating* y_n = &y[n, 0, 0, 0]
    cdef Py_ssize_t i0, i1, blk, b0, b1
    cdef Py_ssize_t p0, p1, r0, r1, SC = S * C
    cdef bint fused = res != NULL or relu
    _pad_hwc(&x[n, 0, 0, 0], xp, C, H, W, ph, pw)
    for blk in range((P + rows - 1) // rows):               # blocks of output rows
        b0 = blk * rows
        b1 = min(b0 + rows, P)
        PQb = (b1 - b0) * Q
        if dh != 1 or dw != 1:
            _patches_hwc(xp, colT, C, Wp, R, S, Q, sh, sw, dh, dw, b0, b1)
            _gemm_small(PQb, K, CRS, colT, CRS, 1, &wrT[0, 0], K, False, yT, K)  # colT @ Wr^T
        elif (floating is float and _use_microkernel and skip_zero_taps and K <= 16 and sw == 1
                and (S == 3 or S == 5)):
            # few output channels: tiles along the output rows, fc_dtile (see its comment);
            # the block's rows as an image of b1 - b0 rows starting b0*sh rows down xp
            fc_dconv_f32(b1 - b0, Q, K, R, S, C, sh, ph - b0 * sh, H, Wp,
                         xp + b0 * sh * Wp * C, &wrT[0, 0], yT)
        elif floating is float and _use_microkernel:
            # Output rows p whose windows reach into the zero rows above or below the image
            # skip those taps: only r0 <= r < r1 is summed (runs of zeros add nothing). The
            # rows with the same range go in one call; all the inner rows in one. Exact for
            # finite weights (y keeps its bits but for the sign of a zero sum); with NaN or
            # Inf in w, skip_zero_taps is off and every tap is summed (0 * NaN = NaN).
            p0 = b0
            while p0 < b1:
                r0, r1, p1 = 0, R, b1            # all taps (non-finite weights: see below)
                if skip_zero_taps:
                    r0 = _first_tap(p0, sh, ph)
                    r1 = _end_tap(p0, sh, ph, H, R)
                    p1 = p0 + 1
                    while (p1 < b1 and _first_tap(p1, sh, ph) == r0
                           and _end_tap(p1, sh, ph, H, R) == r1):
                        p1 += 1
                fc_igemm_f32((p1 - p0) * Q, K, r1 - r0 if r1 > r0 else 0, SC, Wp * C,
                             xp + r0 * Wp * C, &offs[p0 * Q], &wrT[0, 0] + r0 * SC * K, K,
                             yT + (p0 - b0) * Q * K, K)
                p0 = p1
        else:
            _patches_hwc(xp, colT, C, Wp, R, S, Q, sh, sw, 1, 1, b0, b1)
            _gemm_small(PQb, K, CRS, colT, CRS, 1, &wrT[0, 0], K, False, yT, K)  # colT @ Wr^T
        # y[n][:, b0*Q : b1*Q] (K, PQb) = the block of Y_n^T transposed, plus the bias
        if floating is float and (_use_microkernel or _use_tile8):
            # 16 x 16 or 8 x 8 blocks transposed in registers (see _pad_hwc)
            if _use_microkernel:
                fc_unpack_yT_f32(yT, &b[0], y_n + b0 * Q, K, PQb, PQ)
            else:
                fc_unpack_yT8_f32(yT, &b[0], y_n + b0 * Q, K, PQb, PQ)
            if fused:
                _epilogue(y_n, res, b0 * Q, K, PQb, PQ, relu)
            continue
        # in blocks of _TBLOCK rows of Y_b^T, which stay in L1 while they are read K times
        for i0 in range(0, PQb, _TBLOCK):
            i1 = i0 + _TBLOCK if i0 + _TBLOCK < PQb else PQb
            for k in range(K):
                for i in range(i0, i1):
                    y_n[k * PQ + b0 * Q + i] = yT[i * K + k] + b[k]
                if fused:
                    _epilogue(y_n, res, k * PQ + b0 * Q + i0, 1, i1 - i0, PQ, relu)


def conv2d_forward(const floating[:, :, :, ::1] x,     # IN (N, C, H, W)
                   const floating[:, :, :, ::1] w,     # IN (K, C, R, S)
                   b,                                  # IN (K,) or None
                   stride, padding, int n_threads,
                   dilation=(1, 1), *, bint relu=False,  # returns y, OUT (N, K, P, Q)
                   residual=None,                      # IN (N, K, P, Q) or None
                   pool_out=None):                     # OUT (N, K, P//2, Q//2) or None
    """Convolution (cross-correlation, as PyTorch) by im2col + GEMM, eqs. (im2col), (conv.fwd),
    with the optional fused epilogue (conv.fused) ``y = relu(y + residual)`` applied to each
    image's output as it is written, and its 2x2 max pooling (conv.pool) after.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64, C-contiguous (read-only is fine)
    w : ndarray (K, C, R, S), same dtype
    b : ndarray (K,) or None
    stride, padding : (int, int)
    n_threads : int
        OpenMP threads, one image each at a time; call with BLAS limited to one thread
        (fastconv.functional does). Bitwise the same result for any value.
    dilation : (int, int)
        (dh, dw) >= 1: tap (r, s) reads input pixel (p*sh + r*dh - ph, q*sw + s*dw - pw).
    relu : bool, keyword only
        Apply ReLU to the output (after the residual).
    residual : ndarray (N, K, P, Q) of x's dtype, C-contiguous, or None; keyword only
        Added to the output (a ResNet block's shortcut).
    pool_out : ndarray (N, K, P // 2, Q // 2) of x's dtype, C-contiguous, or None; keyword
        only. Gets the 2x2 stride-2 max pooling of the output (after the epilogue), each
        image's by the task that computed it.

    Returns
    -------
    y : ndarray (N, K, P, Q), x's dtype; P, Q by (conv.out).
    """
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3]
    cdef Py_ssize_t sh, sw, ph, pw, P, Q, n, work_size, pooled_size
    cdef Py_ssize_t dh = dilation[0], dw = dilation[1]
    cdef int nt = 1
    sh, sw, ph, pw, P, Q, nt = _conv_geometry((N, C, H, W), (K, w.shape[1], R, S), stride,
                                              padding, n_threads,
                                              dilation=dilation)    # (conv.out)
    _check_blas_sizes(K, C * R * S, P * Q)
    cdef bint is_1x1 = R == 1 and S == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    # the micro-kernel reads undilated windows in place; a dilated one builds colT
    cdef bint in_place = floating is float and _use_microkernel and dh == 1 and dw == 1
    cdef bint hwc = _use_hwc(C, S, is_1x1, in_place)
    b_arr = np.zeros(K, dtype=dtype) if b is None else np.asarray(b)
    if b_arr.shape != (K,):
        raise ValueError(f"conv2d_forward: b must have shape ({K},), got {b_arr.shape}")
    cdef const floating[::1] bv = b_arr
    cdef bint has_bias = b is not None
    cdef const floating[:, :, :, ::1] res
    cdef const floating* res_ptr = NULL
    if _residual_view(residual, (N, K, P, Q)) is not None:
        res = residual
        res_ptr = &res[0, 0, 0, 0]
    cdef floating[:, :, :, ::1] pool_view
    cdef floating* pooled = NULL
    if _pool_view(pool_out, (N, K, P, Q)) is not None:
        pool_view = pool_out
        pooled = &pool_view[0, 0, 0, 0]
    pooled_size = (P // 2) * (Q // 2)                     # values per pooled plane
    y_arr = np.empty((N, K, P, Q), dtype=dtype)
    # per-thread scratch, within one image's columns (the memory bound) beside Wr^T's share:
    # channels-last, the padded image and a block of rows of Y_n^T (and of colT for BLAS);
    # else a block of rows of the columns
    cdef Py_ssize_t columns = C * R * S * P * Q, xp_size = 0, row_size, rows
    if hwc:
        xp_size = (H + 2 * ph) * (W + 2 * pw) * C
        row_size = Q * (K if in_place else K + C * R * S)
        rows = _rows_per_block(P, row_size, _usable(columns) - xp_size - K * C * R * S // 2)
    else:
        row_size = 0 if is_1x1 else Q * C * R * S
        rows = P if is_1x1 else _rows_per_block(P, row_size, _usable(columns))
    work_size = max(xp_size + rows * row_size, 1)
    col_arr = np.empty((nt, work_size), dtype=dtype)
    # Wr^T (R*S*C, K): wrT[(r*S + s)*C + c, k] = w[k, c, r, s], the (r, s, c) order of colT
    wrT_arr = (np.ascontiguousarray(np.asarray(w).transpose(2, 3, 1, 0).reshape(-1, K)) if hwc
               else np.empty((1, 1), dtype=dtype))
    cdef const floating[:, ::1] wrT = wrT_arr
    # where each output pixel's window starts in the padded channels-last image (hwc path)
    offs_arr = _window_starts(P, Q, sh, sw, W + 2 * pw, C) if hwc else np.zeros(1, np.intp)
    cdef const Py_ssize_t[::1] offs = offs_arr
    cdef floating[:, :, :, ::1] y = y_arr
    cdef floating[:, ::1] col = col_arr
    cdef bint skip_zero_taps = True
    with nogil:
        if hwc:
            if floating is float and _use_microkernel:
                # skipping the padding's taps is exact only for finite weights (0 * NaN = NaN)
                skip_zero_taps = _all_finite(&w[0, 0, 0, 0], K * C * R * S)
            for n in prange(N, schedule="dynamic", num_threads=nt):
                _forward_sample_hwc(x, wrT, bv, offs, y, &col[threadid(), 0], n, R, S, sh, sw,
                                    ph, pw, dh, dw, rows, skip_zero_taps,
                                    NULL if res_ptr == NULL else res_ptr + n * K * P * Q, relu)
                if pooled != NULL:
                    _pool_image(&y[n, 0, 0, 0], pooled + n * K * pooled_size, K, P, Q)
        else:
            for n in prange(N, schedule="dynamic", num_threads=nt):
                _forward_sample(x, w, bv, y, &col[threadid(), 0], n, is_1x1, has_bias,
                                sh, sw, ph, pw, dh, dw, rows,
                                NULL if res_ptr == NULL else res_ptr + n * K * P * Q, relu)
                if pooled != NULL:
                    _pool_image(&y[n, 0, 0, 0], pooled + n * K * pooled_size, K, P, Q)
    return y_arr


# --------------------------------------------------------------------------- backward

cdef void _backward_chunk(const floating[:, :, :, ::1] dy,   # IN (N, K, P, Q)
                          const floating[:, :, :, ::1] x,    # IN (N, C, H, W)
                          const floating[:, :, :, ::1] w,    # IN (K, C, R, S)
                          floating* dx,                      # OUT (N, C, H, W), or NULL
                          floating* dw_part,                 # OUT (C*R*S, K): dW^T, or NULL
                          floating* col,                     # scratch
                          Py_ssize_t n_begin, Py_ssize_t n_end, bint is_1x1, Py_ssize_t sh,
                          Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                          Py_ssize_t dw, Py_ssize_t rows) noexcept nogil:
    """Images n_begin <= n < n_end: dx[n] (unless dx is NULL), and their partial
    dW^T = sum_n col_n @ dY_n^T (unless dw_part is NULL: then no columns are built).

    Per image and block of ``rows`` output rows (so that ``col`` holds only part of an
    image's columns where a whole one would overflow the memory bound, see
    _rows_per_block): build that block of col_n, accumulate dW_part^T += col_b @ dY_b^T,
    then reuse the buffer for dcol_b = W^T @ dY_b and scatter-add it into dx[n] (col2im).
    eqs. (im2col), (conv.bwd).
    """
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3]
    cdef Py_ssize_t P = dy.shape[2], Q = dy.shape[3], n, i, b, p0, p1
    cdef int CRS = <int>(C * R * S), PQ = <int>(P * Q), Ki = <int>K, PQb
    cdef const floating* dy_n
    cdef const floating* w_mat = &w[0, 0, 0, 0]
    cdef floating* dx_n = NULL
    for n in range(n_begin, n_end):
        dy_n = &dy[n, 0, 0, 0]                               # dY_n: (K, PQ)
        if dx != NULL:
            dx_n = dx + n * C * H * W
        if is_1x1:
            # dW_part^T (C, K) += x_n (C, HW) @ dY_n^T (HW, K): x[n] is col_n; see below
            if dw_part != NULL:
                gemm_rm(False, True, CRS, Ki, PQ, 1, &x[n, 0, 0, 0], PQ, dy_n, PQ,
                        0 if n == n_begin else 1, dw_part, Ki)
            if dx_n != NULL:    # dx[n] (C, HW) = W^T (C, K) @ dY_n (K, HW): no col2im needed
                _gemm_small(CRS, PQ, Ki, w_mat, 1, CRS, dy_n, PQ, False, dx_n, PQ)
            continue
        if dx_n != NULL:
            for i in range(C * H * W):
                dx_n[i] = 0
        for b in range((P + rows - 1) // rows):             # blocks of output rows
            p0 = b * rows
            p1 = min(p0 + rows, P)
            PQb = <int>((p1 - p0) * Q)
            if dw_part != NULL:
                _im2col_sample(&x[n, 0, 0, 0], col, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh,
                               dw, p0, p1)
                # dW_part^T (CRS, K) += col_b (CRS, PQb) @ dY_b^T (PQb, K), the first block
                # of the first image overwrites. The transpose of dW, because in this
                # orientation BLAS streams the big col_b as its B operand and packs only the
                # small dY_b.
                gemm_rm(False, True, CRS, Ki, PQb, 1, col, PQb, dy_n + p0 * Q, PQ,
                        0 if n == n_begin and p0 == 0 else 1, dw_part, Ki)
            if dx_n != NULL:
                # dcol_b (CRS, PQb) = W^T (CRS, K) @ dY_b (K, PQb), scatter-added into dx[n]
                gemm_rm(True, False, CRS, PQb, Ki, 1, w_mat, CRS, dy_n + p0 * Q, PQ, 0, col,
                        PQb)
                _col2im_sample(col, dx_n, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw, p0, p1)


cdef void _backward_chunk_hwc(const floating[:, :, :, ::1] dy,  # IN (N, K, P, Q)
                              const floating[:, :, :, ::1] x,   # IN (N, C, H, W)
                              const floating[:, ::1] wr,        # IN (K, R*S*C): Wr
                              const Py_ssize_t[::1] offs,       # IN (P*Q,) window starts
                              floating* dx,                     # OUT (N, C, H, W), or NULL
                              floating* dwr_part,               # OUT (K, R*S*C), or NULL
                              floating* work,                   # scratch
                              Py_ssize_t n_begin, Py_ssize_t n_end,
                              Py_ssize_t R, Py_ssize_t S, Py_ssize_t sh, Py_ssize_t sw,
                              Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                              Py_ssize_t rows) noexcept nogil:
    """As _backward_chunk in the channels-last layout of eq. (im2col.hwc); wr is Wr (K, RSC).

    Per image: xp and colT as in the forward pass, dWr_part (K, RSC) += dY_n @ colT, then
    dcolT = dY_n^T @ Wr (PQ, RSC), added back onto the padded channels-last image (contiguous
    runs) and moved to dx[n] (C, H, W) without the border. With the micro-kernel, dW reads
    colT's runs in the padded image in place (offs: each window's start, as forward; a run
    that is not whole vectors ends in a masked one), and with S*C a multiple of 16 dx adds
    its runs in place too, so colT is never built. Otherwise colT is built (for dx, or for
    both) for blocks of ``rows`` output rows, as _backward_chunk.
    ``work`` holds xp (reused for its gradient), then (other cases) colT, reused for dcolT.
    With dwr_part NULL only dx is computed: x is not even read.
    """
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3], K = wr.shape[0]
    cdef Py_ssize_t P = dy.shape[2], Q = dy.shape[3], Hp = H + 2 * ph, Wp = W + 2 * pw
    cdef Py_ssize_t CRS = C * R * S, PQ = P * Q, n, i, b, p0, p1
    cdef floating* xp = work
    cdef floating* colT = xp + Hp * Wp * C
    cdef const floating* dy_n
    cdef bint in_place = _in_place_runs(C, S) and floating is float and dh == 1 and dw == 1
    cdef bint dw_in_place = _use_microkernel and floating is float and dh == 1 and dw == 1
    for n in range(n_begin, n_end):
        dy_n = &dy[n, 0, 0, 0]                               # dY_n: (K, PQ)
        if dwr_part == NULL:                                 # dx alone
            if floating is float and in_place:
                _dx_sample_in_place(dy_n, &wr[0, 0], &offs[0], xp, dx + n * C * H * W, C, H,
                                    W, K, R, S, PQ, ph, pw)
            else:
                _dx_sample_hwc(dy_n, &wr[0, 0], xp, colT, dx + n * C * H * W, C, H, W, K, R,
                               S, P, Q, sh, sw, ph, pw, dh, dw, rows)
            continue
        _pad_hwc(&x[n, 0, 0, 0], xp, C, H, W, ph, pw)
        if floating is float and dw_in_place:
            # dWr_part (K, RSC) += dY_n (K, PQ) @ colT (PQ, RSC), colT read inside xp
            fc_bgemm_f32(K, CRS, PQ, dy_n, PQ, 1, xp, &offs[0], S * C, Wp * C,
                         n != n_begin, dwr_part, CRS)
            if dx != NULL and in_place:                      # xp becomes its gradient
                _dx_sample_in_place(dy_n, &wr[0, 0], &offs[0], xp, dx + n * C * H * W, C, H,
                                    W, K, R, S, PQ, ph, pw)
            elif dx != NULL:
                _dx_sample_hwc(dy_n, &wr[0, 0], xp, colT, dx + n * C * H * W, C, H, W, K, R,
                               S, P, Q, sh, sw, ph, pw, dh, dw, rows)
            continue
        # dWr_part (K, RSC) += dY_b (K, PQb) @ colT_b (PQb, RSC) block by block (the first
        # block of the first image overwrites)
        for b in range((P + rows - 1) // rows):             # blocks of output rows
            p0 = b * rows
            p1 = min(p0 + rows, P)
            _patches_hwc(xp, colT, C, Wp, R, S, Q, sh, sw, dh, dw, p0, p1)
            _gemm_small(K, CRS, (p1 - p0) * Q, dy_n + p0 * Q, PQ, 1, colT, CRS,
                        n != n_begin or p0 != 0, dwr_part, CRS)
        if dx != NULL:                                       # xp becomes its gradient
            _dx_sample_hwc(dy_n, &wr[0, 0], xp, colT, dx + n * C * H * W, C, H, W, K, R, S,
                           P, Q, sh, sw, ph, pw, dh, dw, rows)


cdef void _dx_sample_hwc(const floating* dy_n, const floating* wr, floating* dxp,
                         floating* colT, floating* dx_n, Py_ssize_t C, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t K, Py_ssize_t R, Py_ssize_t S, Py_ssize_t P,
                         Py_ssize_t Q, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                         Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                         Py_ssize_t rows) noexcept nogil:
    """dx_n (C, H, W) from dY_n (K, PQ) on the channels-last path with colT built: dxp, the
    gradient of the padded image, is zeroed; per block of ``rows`` output rows,
    dcolT_b = dY_b^T @ Wr (dY_n read transposed) goes to colT and is added onto the runs of
    dxp it came from; then the inside of dxp goes back to dx_n."""
    cdef Py_ssize_t Wp = W + 2 * pw, CRS = C * R * S, PQ = P * Q, i, b, p0, p1
    for i in range((H + 2 * ph) * Wp * C):
        dxp[i] = 0
    for b in range((P + rows - 1) // rows):                 # blocks of output rows
        p0 = b * rows
        p1 = min(p0 + rows, P)
        _gemm_small((p1 - p0) * Q, CRS, K, dy_n + p0 * Q, 1, PQ, wr, CRS, False, colT, CRS)
        _unpatch_hwc(colT, dxp, C, Wp, R, S, Q, sh, sw, dh, dw, p0, p1)
    _unpad_hwc(dxp, dx_n, C, H, W, ph, pw)


cdef inline void _dx_sample_in_place(const float* dy_n, const float* wr,
                                     const Py_ssize_t* offs, float* dxp, float* dx_n,
                                     Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t K,
                                     Py_ssize_t R, Py_ssize_t S, Py_ssize_t PQ, Py_ssize_t ph,
                                     Py_ssize_t pw) noexcept nogil:
    """dx_n (C, H, W) from dY_n (K, PQ) on the float32 in-place path: dxp, the gradient of
    the padded channels-last image, is zeroed; each window gets its row of
    dcolT = dY_n^T @ Wr added straight onto it (dY_n read transposed); then the inside of
    dxp goes back to dx_n, its border (gradients of padding zeros) dropped."""
    cdef Py_ssize_t Wp = W + 2 * pw, i
    for i in range((H + 2 * ph) * Wp * C):
        dxp[i] = 0
    fc_cgemm_f32(PQ, C * R * S, K, dy_n, 1, PQ, wr, C * R * S, dxp, offs, S * C, Wp * C)
    _unpad_hwc(dxp, dx_n, C, H, W, ph, pw)


# --------------------------------------------------------------- dW: fixed batch chunks
#
# dW is a sum over the batch. For the same bits on any thread count its order depends on
# the shapes only: the batch is cut into G fixed chunks (_n_chunks), and
#     dW = ((part_0 + part_1) + part_2) + ... + part_{G-1},   part_g = sum over chunk g.
# The chunks run in rounds of B (a function of the shapes and the thread count T: as many
# partial dWs as fit in T images' columns or in 1 MiB, at least T): in each round every chunk goes to
# its own buffer, whichever thread computes it, then the round's partials are added to dW
# in chunk order, in parallel over dW's rows (each element still adds them in chunk
# order). No locks, no thread waits on another's progress but at the end of a round.

cdef inline Py_ssize_t _usable(Py_ssize_t columns) noexcept nogil:
    """Of the memory bound's one image's columns, what the scratch buffers may fill: all but
    1/8, left for a call's small arrays (window offsets: P*Q indices; flags) and objects."""
    return columns - columns // 8


cdef Py_ssize_t _rows_per_block(Py_ssize_t P, Py_ssize_t row_size,
                                Py_ssize_t room) noexcept nogil:
    """Output rows per block of a thread's buffer of ``row_size`` values per output row
    (columns, Y^T): all P where P rows fit in ``room`` values (what the memory bound, one
    image's columns, leaves beside the thread's other scratch); else the fewest equal
    blocks that fit; all P again where not even one row fits (blocks would not bring the
    memory within the bound then). A function of the shapes only (the blocks may change
    the order of a sum, never with the thread count)."""
    cdef Py_ssize_t fit = room // max(row_size, 1)              # rows that fit
    cdef Py_ssize_t n_blocks
    if fit >= P or fit < 1:
        return P
    n_blocks = (P + fit - 1) // fit
    return (P + n_blocks - 1) // n_blocks


def _n_chunks(Py_ssize_t N, Py_ssize_t dw_bytes):
    """How many fixed batch chunks the dW reduction uses: a function of the shapes only
    (never of the thread count), so the summation order, hence the bits, never change.
    Up to _MAX_CHUNKS (the parallelism of the reduction)."""
    return int(max(1, min(N, _MAX_CHUNKS, _PARTIALS_BYTES // max(dw_bytes, 1))))


cdef void _permute_row_to_kcrs(floating* dw, floating* tmp, Py_ssize_t k, Py_ssize_t C,
                               Py_ssize_t R, Py_ssize_t S) noexcept nogil:
    """Row k of dw from Wr's order (r, s, c) to w's (c, r, s), through ``tmp`` (C*R*S)."""
    cdef Py_ssize_t c, rs, CRS = C * R * S
    cdef floating* row = dw + k * CRS
    memcpy(tmp, row, CRS * sizeof(floating))
    for rs in range(R * S):
        for c in range(C):
            row[c * R * S + rs] = tmp[rs * C + c]


def conv2d_backward(const floating[:, :, :, ::1] dy,    # IN (N, K, P, Q): dLoss/dy
                    const floating[:, :, :, ::1] x,     # IN (N, C, H, W)
                    const floating[:, :, :, ::1] w,     # IN (K, C, R, S)
                    stride, padding, int n_threads,
                    bint need_dx=True, bint need_dw=True,
                    dilation=(1, 1), *, bint need_db=True):   # returns dx, dw, db (OUT)
    """Gradients of :func:`conv2d_forward` by GEMM and col2im, eqs. (im2col), (conv.bwd).

    Parameters
    ----------
    dy : ndarray (N, K, P, Q), dLoss/dy
    x : ndarray (N, C, H, W);  w : ndarray (K, C, R, S); all of one dtype
    stride, padding : (int, int)
    n_threads : int (BLAS limited to one thread by the caller; bitwise the same for any value)
    need_dx : bool
        False skips dx (None is returned in its place): a network's first layer needs only
        dw and db, and dx (dcol and col2im) is about a third of the work.
    need_dw : bool
        False skips dw and db (None is returned for both): a frozen layer that must still
        pass dx on. No columns of x are built and there is no dW reduction; each image's dx
        is computed exactly as with need_dw (bitwise the same), one image per task.
    dilation : (int, int), as in :func:`conv2d_forward`
    need_db : bool, keyword only
        False skips db (None in its place): a layer without a bias.

    Returns
    -------
    dx : (N, C, H, W) or None, dw : (K, C, R, S) or None, db : (K,) or None, x's dtype.
    """
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3]
    cdef Py_ssize_t sh, sw, ph, pw, P, Q, k, i, t, ch, rnd, first, in_round, chunk, n_chunks, n
    cdef Py_ssize_t work_size, xp_size, rows, CRS = C * R * S
    cdef Py_ssize_t dh = dilation[0], dwd = dilation[1]     # dw is the kernel's gradient
    cdef int nt = 1
    sh, sw, ph, pw, P, Q, nt = _conv_geometry(
        (N, C, H, W), (K, w.shape[1], R, S), stride, padding, n_threads,
        (dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3]), dilation)
    if not (need_dx or need_dw):
        raise ValueError("conv2d_backward: need_dx and need_dw are both False (nothing to do)")
    _check_blas_sizes(K, CRS, P * Q)
    cdef Py_ssize_t columns = CRS * P * Q                   # one image's columns
    cdef bint is_1x1 = R == 1 and S == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    cdef bint hwc = _use_hwc(C, S, is_1x1, False)
    cdef bint in_place = (hwc and floating is float and _in_place_runs(C, S) and dh == 1
                          and dwd == 1)
    xp_size = (H + 2 * ph) * (W + 2 * pw) * C if hwc else 0
    dx_arr = np.empty((N, C, H, W), dtype=dtype) if need_dx else None
    # without need_dw, one-element placeholders that are never written
    dw_arr = np.empty((K, C, R, S) if need_dw else (1,) * 4, dtype=dtype)
    db_arr = np.empty(K if need_dw and need_db else 1, dtype=dtype)
    # Wr (K, R*S*C): wr[k, (r*S + s)*C + c] = w[k, c, r, s], the (r, s, c) order of colT
    wr_arr = (np.ascontiguousarray(np.asarray(w).transpose(0, 2, 3, 1).reshape(K, -1)) if hwc
              else np.empty((1, 1), dtype=dtype))
    cdef const floating[:, ::1] wr = wr_arr
    offs_arr = _window_starts(P, Q, sh, sw, W + 2 * pw, C) if hwc else np.zeros(1, np.intp)
    cdef const Py_ssize_t[::1] offs = offs_arr
    cdef floating[:, :, :, ::1] dx_view
    cdef floating* dx = NULL                                 # NULL: dx not wanted
    if need_dx:
        dx_view = dx_arr
        dx = &dx_view[0, 0, 0, 0]
    cdef floating[:, :, :, ::1] dw = dw_arr
    cdef floating[::1] db = db_arr
    n_chunks = _n_chunks(N, K * CRS * np.dtype(dtype).itemsize)
    chunk = (N + n_chunks - 1) // n_chunks                  # images per chunk
    n_chunks = (N + chunk - 1) // chunk                     # drop chunks left empty
    # a thread's scratch: its padded image (hwc), then a block of ``rows`` output rows of
    # the columns, within what one image's columns leave beside a dW and Wr (a block that
    # stays cache-sized), or beside the padded image alone where that leaves no row
    # (dW as large as the columns, K >= P*Q: resnet20_s3); see _rows_per_block
    cdef Py_ssize_t room = _usable(columns) - K * CRS - (xp_size + wr_arr.size if hwc else 0)
    if room < Q * CRS:
        room = _usable(columns) - xp_size
    rows = P if is_1x1 or in_place else _rows_per_block(P, Q * CRS, room)
    work_size = xp_size + (0 if is_1x1 or in_place else rows * Q * CRS)
    cdef floating[:, ::1] col = np.empty((nt, max(work_size, CRS)), dtype=dtype)
    if not need_dw:
        # dx alone: no columns of x, no partial dWs; the same ``rows``, hence the same bits
        with nogil:
            for n in prange(N, schedule="dynamic", num_threads=nt):
                if hwc:
                    _backward_chunk_hwc(dy, x, wr, offs, dx, NULL, &col[threadid(), 0], n,
                                        n + 1, R, S, sh, sw, ph, pw, dh, dwd, rows)
                else:
                    _backward_chunk(dy, x, w, dx, NULL, &col[threadid(), 0], n, n + 1,
                                    is_1x1, sh, sw, ph, pw, dh, dwd, rows)
        return dx_arr, None, None
    # chunks per round: as many partial dWs as fit in nt images' columns (or in
    # _ROUND_BYTES, so that small layers run in one round: every round ends in a barrier,
    # which costs milliseconds on a busy machine), at least nt
    cdef Py_ssize_t itemsize = sizeof(floating)
    cdef Py_ssize_t per_round = min(n_chunks, max(
        <Py_ssize_t>nt, max(nt * columns, _ROUND_BYTES // itemsize) // (K * CRS)))
    cdef floating[:, ::1] parts = np.empty((per_round, K * CRS), dtype=dtype)
    cdef floating* total = &dw[0, 0, 0, 0]      # the sum, in the partials' layout until the end
    cdef floating* part
    with nogil:
        for rnd in range((n_chunks + per_round - 1) // per_round):
            first = rnd * per_round
            in_round = min(per_round, n_chunks - first)
            # each chunk has its own buffer, so any thread may take any chunk: dynamic
            for t in prange(in_round, schedule="dynamic", num_threads=nt):
                ch = first + t
                part = total if ch == 0 else &parts[t, 0]   # chunk 0 starts the sum
                if hwc:
                    _backward_chunk_hwc(dy, x, wr, offs, dx, part, &col[threadid(), 0],
                                        ch * chunk, min((ch + 1) * chunk, N), R, S, sh, sw,
                                        ph, pw, dh, dwd, rows)
                else:
                    _backward_chunk(dy, x, w, dx, part, &col[threadid(), 0], ch * chunk,
                                    min((ch + 1) * chunk, N), is_1x1, sh, sw, ph, pw, dh, dwd,
                                    rows)
            for k in prange(K, schedule="dynamic", num_threads=nt):
                for t in range(1 if first == 0 else 0, in_round):   # in chunk order
                    _add_to(total + k * CRS, &parts[t, k * CRS], CRS)
        if hwc:            # the total is in Wr's layout (K, RSC): w's (K, C, R, S) row by row
            for k in prange(K, schedule="static", num_threads=nt):
                _permute_row_to_kcrs(total, &col[threadid(), 0], k, C, R, S)
        else:              # the total is dW^T (CRS, K): transposed to (K, CRS) through parts[0]
            memcpy(&parts[0, 0], total, K * CRS * sizeof(floating))
            for k in prange(K, schedule="static", num_threads=nt):
                for i in range(CRS):
                    total[k * CRS + i] = parts[0, i * K + k]
        if need_db:
            for k in prange(K, schedule="static", num_threads=nt):
                _db_one(dy, db, k)
    return dx_arr, dw_arr, (db_arr if need_db else None)


# --------------------------------------------------------------------------- guards

def _check_blas_sizes(*sizes):
    if max(sizes) > _INT_MAX:
        raise ValueError(f"conv: a GEMM dimension of {sizes} overflows BLAS's 32-bit int")


include "_conv_shared.pxi"
