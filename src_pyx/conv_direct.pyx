# cython: language_level=3
"""Direct 2-D convolution: the formula (conv.fwd) as loops, in register tiles and row updates.

``algo="auto"`` runs this module for convolutions with one output channel (K == 1, where a
GEMM has nothing to reuse), and for a first layer on image data (at most 3 input channels,
float32, on AVX2 or AVX-512): its forward, and its dw where the stride along the rows is 1
and the kernel 3 or 5 wide; everything else runs conv_im2col.pyx or conv_winograd.pyx.
The inner loop that runs by default in float32 on such a CPU is, for the forward,
``fc_tile16_body`` (AVX-512; ``fc_tile8_body``, its AVX2 copy) in
src_pyx/include/fc_conv_direct.h: y = b + sum over the C*R*S taps of a weight times a row
of the image, for a few channels x 1 or 2 vectors of columns held in registers; for a
first layer's dw ``fastconv_dw_rows_f32`` (AVX-512) or ``fastconv_dw_row_f32`` (AVX2).
Elsewhere (float64, or a CPU without AVX2) the row update of ``_plane_axpy`` and the
register tiles ``fastconv_tile_*`` (forward), and ``_dw_slice`` or the dw tiles.

Compiled twin of ``fastconv/reference/conv_direct.py`` (same functions and signatures);
``fastconv.functional`` validates every argument before calling here.

(conv.out)  P = floor((H + 2*ph - dh*(R - 1) - 1) / sh) + 1,  Q likewise with W, S, sw, pw, dw
(conv.fwd)  y[n,k,p,q] = b[k] + sum_{c,r,s} w[k,c,r,s] * x[n, c, p*sh + r*dh - ph, q*sw + s*dw - pw]
(conv.bwd)  db[k] = sum_{n,p,q} dy[n,k,p,q]
            dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p*sh + r*dh - ph, q*sw + s*dw - pw]
            dx[n, c, p*sh + r*dh - ph, q*sw + s*dw - pw] += sum_k dy[n,k,p,q] * w[k,c,r,s]
(x is zero outside the image; (dh, dw) is the dilation, 1 for an ordinary convolution.)

How the loops are laid out, and why
-----------------------------------
* The loop nest to study is ``_plane_axpy``: for each tap (c, r, s), one row update
  ``y[p, :] += w[k,c,r,s] * x̄[c, p*sh + r*dh, s*dw::sw]`` over the zero-padded input x̄
  (one copy of x, so the loop has no bounds tests); gcc vectorises it along q. It runs for
  layers narrower than a tile (K < 4 or Q < 8). Dilation only moves where each tap reads.
* Wider layers: each task computes 4 output channels of one image in register tiles of
  4 channels x 8 columns (float; 4 columns for double): the tile's accumulators stay in
  registers for the whole sum over c, r, s, so each input vector loaded feeds 4 channels
  and no partial output goes back to memory (``fastconv_tile_*``, in C: see the header).
* float32 on AVX2 or AVX-512 (``_forward_simd``): the same idea with wider vectors and up
  to 16 channels per tile, the weights transposed to (C*R*S, K) so that a tap's weights
  for the tile's channels are adjacent, and the padded image split into column phases
  so that strided rows read contiguous columns too.
* Fused epilogue (conv.fused): a ReLU alone is applied by the SIMD tiles as they store
  their accumulators; with ``residual=`` (or on the other paths), each task ends with
  ``_epilogue`` (src_pyx/_conv_shared.pxi) on its channels' planes, still in cache. With
  ``pool_out=``, each image's task then pools its output 2x2 (conv.pool, ``_pool_image``).
* dx with stride 1 is itself a convolution (of dy, zero-padded, with the kernel flipped and
  its channel axes swapped), so it reuses the forward's tiles. With a larger stride, each
  input plane dx[n, c] gathers its windows' contributions as row updates along q; padding
  never becomes a per-element test: the rows p and columns q whose input lies inside the
  image form one interval per tap (``first_inside``, ``end_inside``).
* dw[k, c, r, s] is a long dot product over (n, p, q). Vector lanes run along q, 4 output
  channels share each input vector (``fastconv_dw_tile_*``), and the lanes are added up
  once at the end in a fixed order. On AVX2 in float32 with stride 1, a whole row of taps
  at once: 2 channels x S taps share the vectors of dy and x (``fastconv_dw_row_f32``);
  on AVX-512, all taps of up to 4 channels, one image at a time (``fastconv_dw_rows_f32``;
  with padding, each image's plane is first padded into the thread's scratch, in L1).
  With K < 4, each tap accumulates a row of partial sums along q instead (``_dw_slice``).
* Parallel axes need no locks and give the same bits for any thread count: forward over
  (image, block of 4 channels), dx over (image, block of channels) or over the N*C input
  planes, dw over (block of 4 output channels, input channel) pairs or the K*C slices
  (each reduces over n, p, q in a fixed order), db over K. No task's result depends on
  which thread runs it, so the big loops use ``schedule="dynamic"``: on a shared machine
  one thread often runs slower, and a static split would make the whole call wait for it.

NaN and Inf: as the formula, 0 * NaN = NaN, padding included. Two paths skip the zero
padding: the transposed convolution for dx (stride 1) multiplies w with dy's zero border,
sums the formula does not have, and ``_dw_slice`` clamps its loops to the image. One pass
over w (dx) or dy (dw) with ``_all_finite`` sends non-finite inputs to the scatter path
for dx and to ``_dw_slice`` on the padded input for dw, so that NaN and Inf land exactly
where the reference puts them.
"""
import numpy as np

from cython cimport floating
from libc.string cimport memcpy
from cython.parallel cimport prange, threadid

from _common cimport end_inside, first_inside, out_size, threads_for_macs
from _isa cimport fc_isa_level

cdef int _ISA = fc_isa_level()      # which SIMD tiles may run: fc_isa.h decides


# --------------------------------------------------------------------------- padding

cdef void _pad_plane(const floating* src, floating* dst, Py_ssize_t Hs, Py_ssize_t Ws,
                     Py_ssize_t Hd, Py_ssize_t Wd, Py_ssize_t oh, Py_ssize_t ow) noexcept nogil:
    """dst (Hd x Wd) = src (Hs x Ws) shifted by (oh, ow), zeros elsewhere:
    ``dst[i, j] = src[i - oh, j - ow]`` where that is inside src. Negative offsets crop."""
    cdef Py_ssize_t i, j, j_lo, j_hi
    cdef floating* row
    cdef const floating* src_row
    j_lo = ow if ow > 0 else 0                       # first j with j - ow >= 0
    if j_lo > Wd:
        j_lo = Wd
    j_hi = Ws + ow if Ws + ow < Wd else Wd            # one past the last j with j - ow < Ws
    if j_hi < j_lo:
        j_hi = j_lo
    for i in range(Hd):
        row = dst + i * Wd
        if i - oh < 0 or i - oh >= Hs:
            for j in range(Wd):
                row[j] = 0
            continue
        src_row = src + (i - oh) * Ws
        for j in range(j_lo):
            row[j] = 0
        for j in range(j_lo, j_hi):
            row[j] = src_row[j - ow]
        for j in range(j_hi, Wd):
            row[j] = 0


def _padded(const floating[:, :, :, ::1] a, Py_ssize_t Hd, Py_ssize_t Wd, Py_ssize_t oh,
            Py_ssize_t ow, int n_threads):
    """a (N, C, Hs, Ws) -> a new (N, C, Hd, Wd) array, a shifted by (oh, ow), zeros around."""
    cdef Py_ssize_t N = a.shape[0], C = a.shape[1], Hs = a.shape[2], Ws = a.shape[3], i
    out_arr = np.empty((N, C, Hd, Wd), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, :, :, ::1] out = out_arr
    with nogil:
        for i in prange(N * C, schedule="static", num_threads=n_threads):
            _pad_plane(&a[i // C, i % C, 0, 0], &out[i // C, i % C, 0, 0], Hs, Ws, Hd, Wd, oh, ow)
    return out_arr


# --------------------------------------------------------------------------- forward

# The register tiles, in C (include/fc_conv_direct.h says why): 4 output channels x 2
# vectors of 16 bytes, accumulated in registers.
cdef extern from "fc_conv_direct.h":
    void fastconv_tile_f32(const float* x, const float* w, const float* b, float* y,
                           Py_ssize_t C, Py_ssize_t R, Py_ssize_t S, Py_ssize_t Hp,
                           Py_ssize_t Wp, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                           Py_ssize_t y_step, Py_ssize_t j_first) noexcept nogil
    void fastconv_tile_f64(const double* x, const double* w, const double* b, double* y,
                           Py_ssize_t C, Py_ssize_t R, Py_ssize_t S, Py_ssize_t Hp,
                           Py_ssize_t Wp, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                           Py_ssize_t y_step, Py_ssize_t j_first) noexcept nogil

    # AVX2 or AVX-512, float32: one output row of a few channels, over column phases
    bint fastconv_row_applies(int isa) noexcept nogil
    Py_ssize_t fastconv_row_max_kt(int isa, Py_ssize_t Q) noexcept nogil
    void fastconv_row_f32(int isa, const float* x, const Py_ssize_t* tap, Py_ssize_t T,
                          const float* wT, Py_ssize_t K, const float* b, float* y,
                          Py_ssize_t kt, Py_ssize_t Q, Py_ssize_t y_step,
                          bint relu) noexcept nogil

cdef enum:
    KB = 4      # output channels per register tile (the C tile above is written for 4)


cdef inline Py_ssize_t _qb(floating dummy) noexcept nogil:
    """Output columns per register tile: two 16-byte vectors, 8 floats or 4 doubles."""
    return 8 if floating is float else 4


cdef inline void _tile(const floating* xp, const floating* w, const floating* b, floating* y,
                       Py_ssize_t C, Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t R, Py_ssize_t S,
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                       Py_ssize_t P, Py_ssize_t Q, Py_ssize_t k0, Py_ssize_t j_first,
                       Py_ssize_t p, Py_ssize_t q0) noexcept nogil:
    """y[k0 + j, p, q0 + i] for j < KB, i < QB: a KB x QB tile of outputs (conv.fwd).

    The tile's accumulators stay in registers for the whole sum over c, r, s; each input
    vector loaded is used KB times and each weight QB times (the plain row-axpy form would
    load and store y for every multiply-add). xp is one padded image (C, Hp, Wp), w is
    (K, C, R, S), y is one image's output (K, P, Q); b is NULL or the bias (K,). Rows
    j < j_first are not stored (the last block of channels may overlap the one before).
    """
    cdef const floating* x_tile = xp + p * sh * Wp + q0 * sw          # xp[0, p*sh, q0*sw]
    cdef const floating* w_tile = w + k0 * C * R * S                  # w[k0, 0, 0, 0]
    cdef const floating* b_tile = NULL
    cdef floating* y_tile = y + (k0 * P + p) * Q + q0                 # y[k0, p, q0]
    if b != NULL:
        b_tile = b + k0
    if floating is float:
        fastconv_tile_f32(x_tile, w_tile, b_tile, y_tile, C, R, S, Hp, Wp, sw, dh, dw, P * Q,
                          j_first)
    else:
        fastconv_tile_f64(x_tile, w_tile, b_tile, y_tile, C, R, S, Hp, Wp, sw, dh, dw, P * Q,
                          j_first)


cdef void _plane_axpy(const floating* xp, const floating* w, const floating* b, floating* y,
                      Py_ssize_t C, Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t R, Py_ssize_t S,
                      Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                      Py_ssize_t P, Py_ssize_t Q, Py_ssize_t k) noexcept nogil:
    """Output plane y[k] (P x Q) for layers narrower than one tile (K < KB or Q < QB):
    bias, then for each tap (c, r, s) one row update ``y[p, :] += w[k,c,r,s] * xp[c,
    p*sh + r*dh, s*dw::sw]`` (conv.fwd); the padded input needs no bounds tests, and the
    q loop vectorises."""
    cdef Py_ssize_t c, r, s, p, q
    cdef floating wv
    cdef floating* y_plane = y + k * P * Q
    cdef floating* y_row
    cdef const floating* x_row
    for q in range(P * Q):
        y_plane[q] = 0 if b == NULL else b[k]
    for c in range(C):
        for r in range(R):
            for p in range(P):
                x_row = xp + (c * Hp + p * sh + r * dh) * Wp
                y_row = y_plane + p * Q
                for s in range(S):
                    wv = w[((k * C + c) * R + r) * S + s]
                    if sw == 1:
                        for q in range(Q):
                            y_row[q] += wv * x_row[q + s * dw]
                    else:
                        for q in range(Q):
                            y_row[q] += wv * x_row[q * sw + s * dw]


cdef void _conv_block(const floating* xp, const floating* w, const floating* b, floating* y,
                      Py_ssize_t K, Py_ssize_t C, Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t R,
                      Py_ssize_t S, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                      Py_ssize_t P, Py_ssize_t Q, Py_ssize_t kb, const floating* res, bint relu) noexcept nogil:
    """Output channels [kb*KB, kb*KB + KB) of one image, all (p, q), in register tiles;
    then the fused epilogue (``_epilogue``: + res, ReLU) on those channels' planes, where
    asked (res: the image's residual or NULL).

    A partial last block of channels (or of columns) is computed as a full tile shifted back
    to end at K (or Q). It overlaps outputs already computed, which is cheaper than a scalar
    remainder loop; the overlapping channels (owned by the previous task) are not stored.
    """
    cdef Py_ssize_t QB = _qb(<floating>0)
    cdef Py_ssize_t k0 = kb * KB, j_first = 0, p, q0, k
    cdef Py_ssize_t k_end = min(k0 + KB, K)       # this task's channels: k0 <= k < k_end
    if K < KB or Q < QB:
        for k in range(k0, k_end):
            _plane_axpy(xp, w, b, y, C, Hp, Wp, R, S, sh, sw, dh, dw, P, Q, k)
    else:
        if k0 + KB > K:
            j_first = k0 + KB - K                 # rows j < j_first belong to block kb - 1
            k0 = K - KB
        for p in range(P):
            q0 = 0
            while q0 < Q:
                if q0 + QB > Q:
                    q0 = Q - QB                   # last columns: a shifted full tile
                _tile(xp, w, b, y, C, Hp, Wp, R, S, sh, sw, dh, dw, P, Q, k0, j_first, p,
                      q0)
                q0 = q0 + QB
    if res != NULL or relu:
        _epilogue(y, res, kb * KB * P * Q, k_end - kb * KB, P * Q, P * Q, relu)


cdef void _phase_plane(const float* src, float* dst, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t Hp, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sw,
                       Py_ssize_t Wph) noexcept nogil:
    """One plane src (H x W), zero-padded to Hp rows and sw * Wph columns, its columns
    split into sw phases: dst row h holds phase f (the padded columns f, f + sw, f + 2sw,
    ...) at [f * Wph, (f + 1) * Wph). With sw = 1, the plain zero-padded plane."""
    cdef Py_ssize_t h, f, j, j_lo, j_hi
    cdef float* d
    cdef const float* row
    for h in range(Hp * sw * Wph):
        dst[h] = 0
    for h in range(H):
        row = src + h * W
        for f in range(sw):
            d = dst + ((h + ph) * sw + f) * Wph
            # phase f's column j is the padded column f + sw*j, input column f + sw*j - pw
            j_lo = (pw - f + sw - 1) // sw if pw > f else 0
            j_hi = (W + pw - f + sw - 1) // sw
            if j_hi > Wph:
                j_hi = Wph
            if sw == 1:
                memcpy(d + j_lo, row + j_lo - pw, (j_hi - j_lo) * sizeof(float))
            else:
                for j in range(j_lo, j_hi):
                    d[j] = row[f + sw * j - pw]


cdef void _conv_block_simd(const float* xs, const Py_ssize_t* tap, const float* wT,
                           const float* b, float* y, Py_ssize_t K, Py_ssize_t T,
                           Py_ssize_t row, Py_ssize_t sh, Py_ssize_t P, Py_ssize_t Q,
                           Py_ssize_t k0, Py_ssize_t k1, const float* res,
                           bint relu) noexcept nogil:
    """Output channels k0 <= k < k1 of one image on AVX2 or AVX-512, row by row
    (fastconv_row_f32: tiles of those channels x 1 or 2 vectors of columns) over the image xs
    split into column phases (_phase_plane). A ReLU alone goes through the tiles' stores;
    with a residual, the fused epilogue runs on those channels' planes after."""
    cdef Py_ssize_t p
    for p in range(P):
        fastconv_row_f32(_ISA, xs + p * sh * row, tap, T, wT + k0, K,
                         NULL if b == NULL else b + k0, y + k0 * P * Q + p * Q, k1 - k0, Q,
                         P * Q, relu and res == NULL)
    if res != NULL:
        _epilogue(y, res, k0 * P * Q, k1 - k0, P * Q, P * Q, relu)


cdef object _forward_simd(const float[:, :, :, ::1] x, const float[:, :, :, ::1] w,
                          const float* b, const float* res, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                          Py_ssize_t P, Py_ssize_t Q, int nt, bint relu, float* pooled):
    """conv2d_forward in float32 on AVX2 or AVX-512, as a sum over the C*R*S taps
    (fc_tile16_body, fc_tile8_body). One task per image: the image zero-padded into the
    thread's scratch and split into sw column phases (_phase_plane), so that tap
    t = (c, r, s) of output column q reads tap[t] + q from the start of its output row:
    (c*Hp + r*dh) rows down, in phase (s*dw) % sw, (s*dw) // sw columns in; the weights
    transposed to wT (C*R*S, K); then the output channels in blocks of K // n_kb or one
    more (as many as a tile holds); then, unless pooled is NULL, the image's pooling."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3], t, c, r, s, n
    cdef Py_ssize_t Hp = H + 2 * ph, Wph = (W + 2 * pw + sw - 1) // sw, row = sw * Wph
    cdef Py_ssize_t T = C * R * S, kt = fastconv_row_max_kt(_ISA, Q), n_kb = (K + kt - 1) // kt
    xs_arr = np.empty((nt, C * Hp * row), dtype=np.float32)     # one padded image per thread
    tap_arr = np.empty(T, dtype=np.intp)
    wT_arr = np.ascontiguousarray(np.asarray(w).reshape(K, T).T)
    y_arr = np.empty((N, K, P, Q), dtype=np.float32)
    cdef float[:, ::1] xs = xs_arr
    cdef Py_ssize_t[::1] tap = tap_arr
    cdef const float[:, ::1] wT = wT_arr
    cdef float[:, :, :, ::1] y = y_arr
    cdef float* xs_t
    for c in range(C):
        for r in range(R):
            for s in range(S):
                tap[(c * R + r) * S + s] = ((c * Hp + r * dh) * row + (s * dw) % sw * Wph
                                            + (s * dw) // sw)
    with nogil:
        for n in prange(N, schedule="dynamic", num_threads=nt):
            xs_t = &xs[threadid(), 0]
            for c in range(C):
                _phase_plane(&x[n, c, 0, 0], xs_t + c * Hp * row, H, W, Hp, ph, pw, sw, Wph)
            for t in range(n_kb):
                _conv_block_simd(xs_t, &tap[0], &wT[0, 0], b, &y[n, 0, 0, 0], K, T, row, sh,
                                 P, Q, t * K // n_kb, (t + 1) * K // n_kb,
                                 NULL if res == NULL else res + n * K * P * Q, relu)
            if pooled != NULL:
                _pool_image(&y[n, 0, 0, 0], pooled + n * K * (P // 2) * (Q // 2), K, P, Q)
    return y_arr


def conv2d_forward(const floating[:, :, :, ::1] x,     # IN (N, C, H, W)
                   const floating[:, :, :, ::1] w,     # IN (K, C, R, S)
                   b,                                  # IN (K,) or None
                   stride, padding, int n_threads,
                   dilation=(1, 1), *, bint relu=False,  # returns y, OUT (N, K, P, Q)
                   residual=None,                      # IN (N, K, P, Q) or None
                   pool_out=None):                     # OUT (N, K, P//2, Q//2) or None
    """Direct convolution (cross-correlation, as PyTorch), eq. (conv.fwd).

    The input is zero-padded once (one copy of x, so the hot loop has no bounds tests);
    then each task computes KB output channels of one image in register tiles, and, where
    asked, applies the fused epilogue (conv.fused) ``y = relu(y + residual)`` to them, and
    pools each image's output into pool_out (conv.pool).

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64, C-contiguous (read-only is fine)
    w : ndarray (K, C, R, S), same dtype
    b : ndarray (K,) or None
    stride, padding : (int, int)
        (sh, sw) >= 1 and (ph, pw) >= 0.
    n_threads : int
        OpenMP threads; the result is bitwise the same for any value.
    dilation : (int, int)
        (dh, dw) >= 1: tap (r, s) reads input pixel (p*sh + r*dh - ph, q*sw + s*dw - pw).
    relu : bool, keyword only
        Apply ReLU to the output (after the residual).
    residual : ndarray (N, K, P, Q) of x's dtype, C-contiguous, or None; keyword only
        Added to the output (a ResNet block's shortcut).
    pool_out : ndarray (N, K, P // 2, Q // 2) of x's dtype, C-contiguous, or None; keyword
        only. Gets the 2x2 stride-2 max pooling of the output (after the epilogue), each
        image's as soon as it is written (conv.pool).

    Returns
    -------
    y : ndarray (N, K, P, Q), x's dtype; P, Q by (conv.out).
    """
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3]
    cdef Py_ssize_t sh, sw, ph, pw, P, Q, t, n_kb
    cdef Py_ssize_t dh = dilation[0], dw = dilation[1]
    cdef int nt = 1
    sh, sw, ph, pw, P, Q, nt = _conv_geometry((N, C, H, W), (K, w.shape[1], R, S), stride,
                                              padding, n_threads,
                                              dilation=dilation)    # (conv.out)
    if b is not None and np.shape(b) != (K,):
        raise ValueError(f"conv2d_forward: b must have shape ({K},), got {np.shape(b)}")
    cdef const floating[::1] bv
    cdef const floating* b_ptr = NULL
    if b is not None:
        bv = b
        b_ptr = &bv[0]
    cdef const floating[:, :, :, ::1] res
    cdef const floating* res_ptr = NULL
    if _residual_view(residual, (N, K, P, Q)) is not None:
        res = residual
        res_ptr = &res[0, 0, 0, 0]
    cdef floating[:, :, :, ::1] pooled
    pool_out = _pool_view(pool_out, (N, K, P, Q))
    if pool_out is not None:
        pooled = pool_out
    if floating is float and fastconv_row_applies(_ISA):
        return _forward_simd(x, w, b_ptr, res_ptr, sh, sw, ph, pw, dh, dw, P, Q, nt, relu,
                             NULL if pool_out is None else &pooled[0, 0, 0, 0])
    cdef const floating[:, :, :, ::1] xp = x
    if ph > 0 or pw > 0:
        xp = _padded(x, H + 2 * ph, W + 2 * pw, ph, pw, nt)         # x with its zero border
    cdef Py_ssize_t Hp = xp.shape[2], Wp = xp.shape[3]
    y_arr = np.empty((N, K, P, Q), dtype=dtype)
    cdef floating[:, :, :, ::1] y = y_arr
    n_kb = (K + KB - 1) // KB
    with nogil:
        for t in prange(N * n_kb, schedule="dynamic", num_threads=nt):
            _conv_block(&xp[t // n_kb, 0, 0, 0], &w[0, 0, 0, 0], b_ptr, &y[t // n_kb, 0, 0, 0],
                        K, C, Hp, Wp, R, S, sh, sw, dh, dw, P, Q, t % n_kb,
                        NULL if res_ptr == NULL else res_ptr + (t // n_kb) * K * P * Q, relu)
        if pool_out is not None:
            _pool_images(y, pooled, nt)
    return y_arr


# --------------------------------------------------------------------------- backward

# The dw tile (include/fc_conv_direct.h): one tap (r, s) of one input channel for 4 output
# channels, as 4 vector accumulators along q, lanes added in a fixed order at the end.
cdef extern from "fc_conv_direct.h":
    void fastconv_dw_tile_f32(const float* x, const float* dy, float* out, Py_ssize_t N,
                              Py_ssize_t P, Py_ssize_t Q, Py_ssize_t x_n, Py_ssize_t x_p,
                              Py_ssize_t sw, Py_ssize_t dy_n, Py_ssize_t dy_k,
                              Py_ssize_t j_first) noexcept nogil
    void fastconv_dw_tile_f64(const double* x, const double* dy, double* out, Py_ssize_t N,
                              Py_ssize_t P, Py_ssize_t Q, Py_ssize_t x_n, Py_ssize_t x_p,
                              Py_ssize_t sw, Py_ssize_t dy_n, Py_ssize_t dy_k,
                              Py_ssize_t j_first) noexcept nogil
    # AVX2, float32, stride 1 along the row: 2 channels x a whole row of S = 3 or 5 taps
    enum: FC_DW_ROW_MAX_S
    bint fastconv_dw_row_applies(int isa, Py_ssize_t S) noexcept nogil
    void fastconv_dw_row_f32(const float* x, const float* dy, float* out, Py_ssize_t N,
                             Py_ssize_t P, Py_ssize_t Q, Py_ssize_t x_n, Py_ssize_t x_p,
                             Py_ssize_t dy_n, Py_ssize_t dy_k, Py_ssize_t S) noexcept nogil
    # AVX-512, float32, stride 1 along the row: up to 4 channels x all R x S taps
    enum: FC_DW_ROWS_MAX_KB
    bint fastconv_dw_rows_applies(int isa, Py_ssize_t S) noexcept nogil
    ctypedef struct fc_dw_padding:
        float* plane
        Py_ssize_t H, W, ph, pw
    void fastconv_dw_rows_f32(const float* x, const float* dy, float* dw, float* db,
                              float* sums, fc_dw_padding pad, Py_ssize_t kb, Py_ssize_t N,
                              Py_ssize_t P, Py_ssize_t Q, Py_ssize_t R, Py_ssize_t S,
                              Py_ssize_t x_n, Py_ssize_t x_p, Py_ssize_t x_r,
                              Py_ssize_t dy_n, Py_ssize_t dy_k, Py_ssize_t dw_k) noexcept nogil


cdef inline fc_dw_padding _dw_padding(float* plane, bint padded, Py_ssize_t H, Py_ssize_t W,
                                      Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """fastconv_dw_rows_f32's padding: the thread's scratch plane, or none (NULL)."""
    cdef fc_dw_padding pad
    pad.plane = plane if padded else NULL
    pad.H, pad.W, pad.ph, pad.pw = H, W, ph, pw
    return pad


cdef void _dw_block(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] xp,
                    floating[:, :, :, ::1] dw, Py_ssize_t kb, Py_ssize_t c,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dwd) noexcept nogil:
    """dw[k, c, r, s] for the 4 channels k of block kb, every tap (r, s), by (conv.bwd):
    ``sum_{n,p,q} dy[n,k,p,q] * xp[n, c, p*sh + r*dh, q*sw + s*dwd]`` over the padded input
    xp (dwd: the dilation along the width; dw is the gradient).
    A partial last block is shifted back to end at K; its overlap is not stored."""
    cdef Py_ssize_t N = dy.shape[0], K = dy.shape[1], P = dy.shape[2], Q = dy.shape[3]
    cdef Py_ssize_t C = xp.shape[1], Hp = xp.shape[2], Wp = xp.shape[3]
    cdef Py_ssize_t R = dw.shape[2], S = dw.shape[3], r, s, j, k0 = kb * KB, j_first = 0
    cdef floating out[KB]
    cdef float row[2 * FC_DW_ROW_MAX_S]
    cdef Py_ssize_t j0
    if k0 + KB > K:
        j_first = k0 + KB - K
        k0 = K - KB
    if floating is float and sw == 1 and dwd == 1 and fastconv_dw_row_applies(_ISA, S):
        for r in range(R):              # a whole row of taps per call, 2 channels at a time
            for j0 in range(0, KB, 2):
                fastconv_dw_row_f32(&xp[0, c, r * dh, 0], &dy[0, k0 + j0, 0, 0], row, N, P, Q,
                                    C * Hp * Wp, sh * Wp, K * P * Q, P * Q, S)
                for j in range(j0, j0 + 2):
                    if j >= j_first:
                        for s in range(S):
                            dw[k0 + j, c, r, s] = row[(j - j0) * S + s]
        return
    for r in range(R):
        for s in range(S):
            if floating is float:
                fastconv_dw_tile_f32(&xp[0, c, r * dh, s * dwd], &dy[0, k0, 0, 0], out, N, P, Q,
                                     C * Hp * Wp, sh * Wp, sw, K * P * Q, P * Q, j_first)
            else:
                fastconv_dw_tile_f64(&xp[0, c, r * dh, s * dwd], &dy[0, k0, 0, 0], out, N, P, Q,
                                     C * Hp * Wp, sh * Wp, sw, K * P * Q, P * Q, j_first)
            for j in range(j_first, KB):
                dw[k0 + j, c, r, s] = out[j]


cdef void _dx_plane(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] w,
                    floating[:, :, :, ::1] dx, Py_ssize_t n, Py_ssize_t c,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                    Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """Input-gradient plane dx[n, c] (H x W), for strides > 1: every dy[n, k, p, q] * w[k, c, r, s]
    goes back to the input pixel it was multiplied with (conv.bwd), as row updates along q.
    Only this call writes dx[n, c]."""
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3]
    cdef Py_ssize_t H = dx.shape[2], W = dx.shape[3], P = dy.shape[2], Q = dy.shape[3]
    cdef Py_ssize_t k, r, s, p, q, i, p_lo, p_hi, q_lo, q_hi, off
    cdef floating wv
    cdef floating* dx_plane = &dx[n, c, 0, 0]
    cdef floating* dx_row
    cdef const floating* dy_row

    for i in range(H * W):
        dx_plane[i] = 0
    for k in range(K):
        for r in range(R):
            p_lo = first_inside(r * dh - ph, sh, P)
            p_hi = end_inside(H, r * dh - ph, sh, P, p_lo)
            for p in range(p_lo, p_hi):
                dx_row = dx_plane + (p * sh + r * dh - ph) * W
                dy_row = &dy[n, k, p, 0]
                for s in range(S):
                    wv = w[k, c, r, s]
                    off = s * dw - pw
                    q_lo = first_inside(off, sw, Q)
                    q_hi = end_inside(W, off, sw, Q, q_lo)
                    if sw == 1:
                        for q in range(q_lo, q_hi):
                            dx_row[q + off] += wv * dy_row[q]
                    else:
                        for q in range(q_lo, q_hi):
                            dx_row[q * sw + off] += wv * dy_row[q]


cdef void _dw_slice(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                    floating[:, :, :, ::1] dw, floating* acc, Py_ssize_t k, Py_ssize_t c,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                    Py_ssize_t dh, Py_ssize_t dwd) noexcept nogil:
    """Kernel-gradient slice dw[k, c] (R x S) by (conv.bwd), reducing over n, p, q in order
    (used when K < 4, too few channels for the dw tile).

    A dot product ``sum_q dy_row[q] * x_row[...]`` does not vectorise (gcc keeps the
    floating-point order of a scalar sum), so each tap accumulates elementwise into its own
    row ``acc[(r*S + s)*Q + q]`` (vectorised, no reordering) over all n and p, and the Q
    lanes are summed once at the end. ``acc`` is this thread's scratch of R*S*Q elements.
    """
    cdef Py_ssize_t N = x.shape[0], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t R = dw.shape[2], S = dw.shape[3], P = dy.shape[2], Q = dy.shape[3]
    cdef Py_ssize_t n, r, s, p, q, i, p_lo, p_hi, q_lo, q_hi, off
    cdef floating total
    cdef floating* a
    cdef const floating* x_row
    cdef const floating* dy_row

    for i in range(R * S * Q):
        acc[i] = 0
    for n in range(N):
        for r in range(R):
            p_lo = first_inside(r * dh - ph, sh, P)
            p_hi = end_inside(H, r * dh - ph, sh, P, p_lo)
            for p in range(p_lo, p_hi):
                x_row = &x[n, c, p * sh + r * dh - ph, 0]
                dy_row = &dy[n, k, p, 0]
                for s in range(S):
                    a = acc + (r * S + s) * Q
                    off = s * dwd - pw
                    q_lo = first_inside(off, sw, Q)
                    q_hi = end_inside(W, off, sw, Q, q_lo)
                    if sw == 1:
                        for q in range(q_lo, q_hi):
                            a[q] += dy_row[q] * x_row[q + off]
                    else:
                        for q in range(q_lo, q_hi):
                            a[q] += dy_row[q] * x_row[q * sw + off]
    for r in range(R):
        for s in range(S):
            a = acc + (r * S + s) * Q
            total = 0
            for q in range(Q):
                total = total + a[q]
            dw[k, c, r, s] = total


def conv2d_backward(const floating[:, :, :, ::1] dy,    # IN (N, K, P, Q): dLoss/dy
                    const floating[:, :, :, ::1] x,     # IN (N, C, H, W)
                    const floating[:, :, :, ::1] w,     # IN (K, C, R, S)
                    stride, padding, int n_threads,
                    bint need_dx=True, bint need_dw=True,
                    dilation=(1, 1), *, bint need_db=True):   # returns dx, dw, db (OUT)
    """Gradients of :func:`conv2d_forward`, eq. (conv.bwd).

    Parameters
    ----------
    dy : ndarray (N, K, P, Q), dLoss/dy
    x : ndarray (N, C, H, W);  w : ndarray (K, C, R, S); all of one dtype
    stride, padding : (int, int)
    n_threads : int (results are bitwise the same for any value)
    need_dx : bool
        False skips dx (None is returned in its place): a network's first layer needs only dw, db.
    need_dw : bool
        False skips dw and db (None is returned for both): a frozen layer that must still
        pass dx on. dx is computed exactly as with need_dw (bitwise the same).
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
    cdef Py_ssize_t sh, sw, ph, pw, P, Q, i, k
    cdef Py_ssize_t dh = dilation[0], dwd = dilation[1]     # dw is the kernel's gradient
    cdef int nt = 1
    sh, sw, ph, pw, P, Q, nt = _conv_geometry(
        (N, C, H, W), (K, w.shape[1], R, S), stride, padding, n_threads,
        (dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3]), dilation)
    if not (need_dx or need_dw):
        raise ValueError("conv2d_backward: need_dx and need_dw are both False (nothing to do)")
    # without need_dx, a one-element placeholder that is never read
    dx_arr = np.empty((N if need_dx else 1, C if need_dx else 1, H if need_dx else 1,
                       W if need_dx else 1), dtype=dtype)
    # without need_dw, one-element placeholders that are never written
    dw_arr = np.empty((K, C, R, S) if need_dw else (1,) * 4, dtype=dtype)
    db_arr = np.empty(K if need_dw and need_db else 1, dtype=dtype)
    acc_arr = np.empty((nt, R * S * Q if need_dw else 1), dtype=dtype)  # dw scratch (small)
    cdef floating[:, :, :, ::1] dx = dx_arr
    cdef floating[:, :, :, ::1] dw = dw_arr
    cdef floating[::1] db = db_arr
    cdef floating[:, ::1] acc = acc_arr
    cdef const floating[:, :, :, ::1] dyp
    cdef const floating[:, :, :, ::1] wt
    cdef Py_ssize_t Hd = H + dh * (R - 1), Wd = W + dwd * (S - 1), n_cb = (C + KB - 1) // KB, t
    if not need_dx:
        dx_arr = None
    elif sh == 1 and sw == 1 and _all_finite(&w[0, 0, 0, 0], K * C * R * S):
        # With stride 1, dx is itself a convolution (the transposed convolution):
        #   dx[n, c, ih, iw] = sum_{k,r,s} wt[c, k, r, s] * dyp[n, k, ih + r, iw + s]
        # with the kernel flipped and its channel axes swapped, wt[c, k, r, s] =
        # w[k, c, R-1-r, S-1-s], and dy shifted by (R-1-ph, S-1-pw) into a zero border
        # (dyp, (N, K, H+R-1, W+S-1)). So it runs on the forward's register tiles. With
        # dilation the taps are dh, dw apart: dy shifted by ((R-1)*dh - ph, (S-1)*dw - pw).
        dyp = _padded(dy, Hd, Wd, dh * (R - 1) - ph, dwd * (S - 1) - pw, nt)
        wt = np.ascontiguousarray(np.asarray(w).transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        with nogil:
            for t in prange(N * n_cb, schedule="dynamic", num_threads=nt):
                _conv_block(&dyp[t // n_cb, 0, 0, 0], &wt[0, 0, 0, 0], NULL,
                            &dx[t // n_cb, 0, 0, 0], C, K, Hd, Wd, R, S, 1, 1, dh, dwd, H, W,
                            t % n_cb, NULL, False)
    else:
        # Strided (or non-finite weights, which the transposed convolution would also
        # multiply with dy's zero border): each dy value scatters into its window, one
        # input plane per task.
        with nogil:
            for i in prange(N * C, schedule="dynamic", num_threads=nt):
                _dx_plane(dy, w, dx, i // C, i % C, sh, sw, ph, pw, dh, dwd)
    if not need_dw:
        return dx_arr, None, None
    cdef const floating[:, :, :, ::1] xp
    cdef Py_ssize_t n_kb = (K + KB - 1) // KB, k0, k1
    cdef float[:, ::1] sums
    cdef bint db_done = False                    # db computed with dw (the AVX-512 tiles)
    cdef float[:, ::1] planes
    cdef bint padded = ph > 0 or pw > 0
    if floating is float and sw == 1 and dwd == 1 and fastconv_dw_rows_applies(_ISA, S):
        # AVX-512: one task per (input channel, block of at most 4 output channels), all
        # taps at once, image by image (fastconv_dw_rows_f32), each image's plane padded
        # into the thread's scratch first; blocks of K // n_kb or one more; the tasks of
        # input channel 0 sum db too
        n_kb = (K + FC_DW_ROWS_MAX_KB - 1) // FC_DW_ROWS_MAX_KB
        sums = np.empty((nt, R * FC_DW_ROWS_MAX_KB * S * 16), dtype=np.float32)
        planes = np.empty((nt, (H + 2 * ph) * (W + 2 * pw) if padded else 1),
                          dtype=np.float32)
        with nogil:
            for i in prange(n_kb * C, schedule="dynamic", num_threads=nt):
                k0 = (i // C) * K // n_kb
                k1 = (i // C + 1) * K // n_kb
                fastconv_dw_rows_f32(&x[0, i % C, 0, 0], &dy[0, k0, 0, 0],
                                     &dw[k0, i % C, 0, 0],
                                     &db[k0] if need_db and i % C == 0 else NULL,
                                     &sums[threadid(), 0],
                                     _dw_padding(&planes[threadid(), 0], padded, H, W, ph,
                                                 pw), k1 - k0, N, P, Q, R, S,
                                     C * H * W, sh * (W + 2 * pw), dh * (W + 2 * pw),
                                     K * P * Q, P * Q, C * R * S)
        db_done = True
    elif K >= KB:
        # dw in register tiles over the padded input, one (block of 4 k, c) pair per task
        xp = x
        if ph > 0 or pw > 0:
            xp = _padded(x, H + 2 * ph, W + 2 * pw, ph, pw, nt)
        with nogil:
            for i in prange(n_kb * C, schedule="dynamic", num_threads=nt):
                _dw_block(dy, xp, dw, i // C, i % C, sh, sw, dh, dwd)
    elif _all_finite(&dy[0, 0, 0, 0], N * K * P * Q):
        with nogil:
            for i in prange(K * C, schedule="dynamic", num_threads=nt):
                _dw_slice(dy, x, dw, &acc[threadid(), 0], i // C, i % C, sh, sw, ph, pw, dh,
                          dwd)
    else:
        # dy holds NaN or Inf: the padding's taps, which _dw_slice skips, are multiplied
        # too (0 * NaN = NaN), on the zero-padded input
        xp = _padded(x, H + 2 * ph, W + 2 * pw, ph, pw, nt) if ph > 0 or pw > 0 else x
        with nogil:
            for i in prange(K * C, schedule="dynamic", num_threads=nt):
                _dw_slice(dy, xp, dw, &acc[threadid(), 0], i // C, i % C, sh, sw, 0, 0, dh, dwd)
    if not need_db:
        return dx_arr, dw_arr, None
    if not db_done:
        with nogil:
            for k in prange(K, schedule="static", num_threads=nt):
                _db_one(dy, db, k)
    return dx_arr, dw_arr, db_arr


# --------------------------------------------------------------------------- guard

include "_conv_shared.pxi"
