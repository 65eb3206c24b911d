# cython: language_level=3
"""Depthwise 2-D convolution (groups == C): one R x S window per channel plane, eq. (conv.dw).

``algo="auto"`` runs this module for every convolution with ``groups`` equal to the input
channels. Read ``_forward_plane`` first, the loop nest to study (row updates along q, which
gcc vectorises because consecutive q are consecutive addresses), then ``_dw_plane`` and
``_dx_plane`` for the backward. What runs by default computes the same sums in register
tiles:

* float32 (forward and backward): ``_forward_block`` and ``_backward_block``, 8 channels at
  a time, one per SIMD lane of a channel-interleaved copy of their planes; inner loops
  ``fc_dwi_forward``, ``fc_dwi_dw`` and ``fc_dwi_dx`` of src_pyx/include/fc_depthwise.h
  (SSE2 and AVX2 copies, the same bits; ``_kernel_isa`` switches). The forward adds the
  same terms in the same order as ``_forward_plane`` (same bits). In the backward, dx is the
  forward's correlation of dy with the turned window when m == 1, stride 1 and every weight
  is finite, and the scatter of ``_dx_plane`` in the same order otherwise; dw sums over
  (p, q) per tap in registers (its own order of additions).
* float64: the forward runs ``fc_dw_row_f64`` (one output row per call, same bits as
  ``_forward_plane``); the backward runs ``_dw_plane`` and ``_dx_plane`` as written.

``_set_tuned(False)`` runs the loop nests instead, for both dtypes.

Compiled twin of ``fastconv/reference/conv_depthwise.py`` (same functions and signatures);
``fastconv.functional`` validates every argument before calling here.

(conv.dw)   y[n,k,p,q]  = b[k] + sum_{r,s} w[k,0,r,s] * xp[n, k//m, p*sh + r*dh, q*sw + s*dw]
            dw[k,0,r,s] = sum_{n,p,q} dy[n,k,p,q] * xp[n, k//m, p*sh + r*dh, q*sw + s*dw]
            dxp[n, k//m, p*sh + r*dh, q*sw + s*dw] += dy[n,k,p,q] * w[k,0,r,s]
(xp: x zero-padded by (ph, pw); m = K/C windows per input channel; (dh, dw) the dilation.)

How the loops are laid out, and why
-----------------------------------
* A depthwise layer does R*S multiply-adds per output value, not C*R*S: there is no
  channel sum to reuse an input value across, so im2col's GEMMs (which reduce over C*R*S)
  would copy every input R*S times to do almost no arithmetic on it. The layer is limited
  by memory traffic, so the loops below touch each plane once from memory: one task takes
  one (image, input channel) plane, copies it into a small zero-padded scratch plane (which
  then stays in cache for all R*S taps and the m output planes), and walks the output rows.
* The padded copy also makes the loops free of bounds tests and gives NaN and Inf the
  formula's meaning, 0 * NaN = NaN on the padding's zeros, with no special path.
* Forward: for each output row p and tap (r, s), ``y[p, :] += w[r, s] * xp[p*sh + r*dh,
  s*dw + q*sw]`` along q (``_forward_plane``).
* Backward: one task per (batch chunk, input channel). dx scatters each dy row back through
  its taps into a padded scratch plane (``_dx_plane``), then the border is cut off. dw and db
  are sums over (n, p, q): a row of partial sums along q per tap accumulates over the
  chunk's images (``_dw_plane``), and each row is added up once, in order, at the end of
  the chunk. The batch splits into chunks fixed by N alone (``_n_chunks``), and the chunks'
  partial dw are added in chunk order, so every result is bitwise the same for any thread
  count, whichever thread runs which task.
* float32 channel blocks: a depthwise layer has no channel sum, so a SIMD vector along a
  row is all the parallelism there is, and a 7x7 map's rows are shorter than a vector plus
  a remainder. Eight channels side by side fill every vector on any map (oneDNN's NHWC
  blocks do the same); copying a block into and out of that layout costs 4x4 transposes,
  small next to the R*S multiply-adds of each value. dx as a correlation (a gather) sums
  each dx value in registers instead of reading and writing it once per tap. The backward
  splits the batch into the same fixed chunks, one task per (chunk, block of 8 channels).

Memory (scratch beyond the outputs): per thread two padded planes and m*(R*S + 1)*Q partial
sums (float32: three interleaved planes of 8 channels); chunks x K x (R*S + 1) partial sums
for dw and db.
"""
import numpy as np

from libc.string cimport memset
from cython cimport floating
from cython.parallel cimport prange, threadid

from _common cimport chunk_for, threads_for_macs

DEF _MAX_CHUNKS = 16       # batch chunks of the dw reduction: its parallelism over images

# The forward's register tile, in C (include/fc_depthwise.h says why).
cdef extern from "fc_depthwise.h":
    void fc_dw_row_f32(const float* x, const float* w, float b, float* y, Py_ssize_t Wp,
                       Py_ssize_t R, Py_ssize_t S, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                       Py_ssize_t Q) noexcept nogil
    void fc_dw_row_f64(const double* x, const double* w, double b, double* y, Py_ssize_t Wp,
                       Py_ssize_t R, Py_ssize_t S, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                       Py_ssize_t Q) noexcept nogil
    # float32 channel blocks (the header's second half says why)
    enum: FC_DW_LANES
    int FC_DW_AVX2
    void fc_dwi_pack(const float* x, Py_ssize_t cs, Py_ssize_t nc, Py_ssize_t H, Py_ssize_t W,
                     Py_ssize_t ph, Py_ssize_t pw, float* xi) noexcept nogil
    void fc_dwi_unpack(const float* xi, Py_ssize_t Ws, Py_ssize_t oh, Py_ssize_t ow,
                       Py_ssize_t nc, Py_ssize_t H, Py_ssize_t W, float* x,
                       Py_ssize_t cs) noexcept nogil
    void fc_dwi_forward(int isa, const float* xi, const float* wi, const float* bi, float* yi,
                        Py_ssize_t Wp, Py_ssize_t R, Py_ssize_t S, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t P, Py_ssize_t Q) noexcept nogil
    void fc_dwi_dw(int isa, const float* dyi, Py_ssize_t Wd, const float* xi, float* acc,
                   Py_ssize_t Wp, Py_ssize_t R, Py_ssize_t S, Py_ssize_t sh, Py_ssize_t sw,
                   Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t P, Py_ssize_t Q) noexcept nogil
    void fc_dwi_dx(int isa, const float* dyi, Py_ssize_t Wd, const float* wi, float* dxi,
                   Py_ssize_t Wp, Py_ssize_t R, Py_ssize_t S, Py_ssize_t sh, Py_ssize_t sw,
                   Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t P, Py_ssize_t Q) noexcept nogil

from _isa cimport FC_ISA_AVX2, FC_ISA_BASELINE, fc_isa_level

cdef bint _tuned = True
cdef int _ISA = fc_isa_level()      # the float32 channel-block kernels' copy: fc_isa.h decides


def _kernel_isa(isa=None):
    """The instruction set of the float32 channel-block kernels in use: "avx2" or "baseline"
    (they give the same bits). isa="baseline" or "avx2" switches (avx2 only where the CPU,
    the build and FASTCONV_ISA allow it): for tests and timings; not thread-safe."""
    global _ISA
    if isa is not None:
        if isa not in ("baseline", "avx2"):
            raise ValueError(f"_kernel_isa: isa must be 'baseline' or 'avx2', got {isa!r}")
        _ISA = min(fc_isa_level(), FC_ISA_AVX2 if isa == "avx2" and FC_DW_AVX2 else FC_ISA_BASELINE)
    return "avx2" if _ISA >= FC_ISA_AVX2 else "baseline"


def _set_tuned(bint on):
    """Run the register tiles (True, the default) or the teaching loop nests
    ``_forward_plane``, ``_dw_plane`` and ``_dx_plane`` (False); returns the previous setting.
    The forwards give the same bits; the backwards agree to rounding. For tests, and for a
    reader who wants to time one against the other."""
    global _tuned
    previous = _tuned
    _tuned = on
    return previous


# --------------------------------------------------------------------------- padding

cdef void _pad_plane(const floating* x, floating* xp, Py_ssize_t H, Py_ssize_t W,
                     Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """xp ((H + 2ph) x (W + 2pw)) = the plane x (H x W) with a border of zeros."""
    cdef Py_ssize_t Wp = W + 2 * pw, i, j
    cdef floating* row
    for j in range(ph * Wp):
        xp[j] = 0
    for i in range(H):
        row = xp + (ph + i) * Wp
        for j in range(pw):
            row[j] = 0
        for j in range(W):
            row[pw + j] = x[i * W + j]
        for j in range(pw + W, Wp):
            row[j] = 0
    for j in range((ph + H) * Wp, (H + 2 * ph) * Wp):
        xp[j] = 0


cdef const floating* _padded_plane(const floating* x, floating* scratch, Py_ssize_t H,
                                   Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """The plane with its zero border: x itself when there is no padding, else scratch."""
    if ph == 0 and pw == 0:
        return x
    _pad_plane(x, scratch, H, W, ph, pw)
    return scratch


# --------------------------------------------------------------------------- forward

cdef void _forward_plane(const floating* xp,          # IN  (Hp, Wp) padded input plane
                         const floating* w,           # IN  (R, S) this channel's window
                         floating b,                  # IN  its bias (0 without)
                         floating* y,                 # OUT (P, Q) output plane
                         Py_ssize_t Wp, Py_ssize_t R, Py_ssize_t S, Py_ssize_t sh,
                         Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t P,
                         Py_ssize_t Q) noexcept nogil:
    """(conv.dw) y[p, q] = b + sum_{r,s} w[r, s] * xp[p*sh + r*dh, q*sw + s*dw].

    The loop nest to study: for each row p and tap (r, s), one row update along q."""
    cdef Py_ssize_t p, q, r, s
    cdef floating wv
    cdef floating* y_row
    cdef const floating* x_tap
    for p in range(P):
        y_row = y + p * Q
        for q in range(Q):
            y_row[q] = b
        for r in range(R):
            for s in range(S):
                wv = w[r * S + s]
                x_tap = xp + (p * sh + r * dh) * Wp + s * dw     # xp[p*sh + r*dh, s*dw]
                if sw == 1:
                    for q in range(Q):
                        y_row[q] += wv * x_tap[q]
                else:
                    for q in range(Q):
                        y_row[q] += wv * x_tap[q * sw]


cdef void _forward_plane_tiled(const floating* xp, const floating* w, floating b, floating* y,
                               Py_ssize_t Wp, Py_ssize_t R, Py_ssize_t S, Py_ssize_t sh,
                               Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t P,
                               Py_ssize_t Q) noexcept nogil:
    """What _forward_plane computes, one output row per register-tile call."""
    cdef Py_ssize_t p
    for p in range(P):
        if floating is float:
            fc_dw_row_f32(xp + p * sh * Wp, w, b, y + p * Q, Wp, R, S, sw, dh, dw, Q)
        else:
            fc_dw_row_f64(xp + p * sh * Wp, w, b, y + p * Q, Wp, R, S, sw, dh, dw, Q)


cdef bint _pack_windows(const float* w,              # IN  (K, 1, R, S)
                        const float* b,              # IN  (K,) or NULL
                        float* wpk,                  # OUT (C/8, m, R*S + 1, 8)
                        Py_ssize_t C, Py_ssize_t m, Py_ssize_t RS, bint flip) noexcept nogil:
    """wpk (C/8 blocks, m, R*S + 1, 8): the windows w (K, 1, R, S) of each block of 8 input
    channels, lane l = output channel (c0 + l)*m + j, turned by 180 degrees if flip; the
    bias b (or 0 without, b NULL) as the last row; zero in the lanes past C. Returns whether
    every weight is finite."""
    cdef Py_ssize_t L = FC_DW_LANES, nb = (C + L - 1) // L, c, j, t, l
    cdef float* dst
    cdef float v
    cdef bint finite = True
    for c in range(nb * L):
        for j in range(m):
            dst = wpk + (((c // L) * m + j) * (RS + 1)) * L + c % L
            for t in range(RS + 1):
                if c >= C:
                    v = 0
                elif t < RS:
                    v = w[(c * m + j) * RS + (RS - 1 - t if flip else t)]
                    finite = finite and v - v == 0
                else:
                    v = b[c * m + j] if b != NULL else 0
                dst[t * L] = v
    return finite


cdef void _forward_block(const float* x,             # IN  (C, H, W) one image
                         const float* wpk,           # IN  its block's windows, _pack_windows
                         float* y,                   # OUT (K, P, Q) its output
                         float* scratch, Py_ssize_t c0, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t m,
                         Py_ssize_t R, Py_ssize_t S, Py_ssize_t sh, Py_ssize_t sw,
                         Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                         Py_ssize_t P, Py_ssize_t Q, int isa) noexcept nogil:
    """float32, channels [c0, c0 + 8) of one image (x at its (C, H, W), y at its (K, P, Q),
    wpk at the block's windows, _pack_windows): the planes interleaved into a padded scratch,
    one channel per SIMD lane, then fc_dwi_forward (include/fc_depthwise.h) once per window
    j < m. scratch: (Hp*Wp + P*Q) * 8 floats, zero when the call began (the padded plane's
    border, never written)."""
    cdef Py_ssize_t L = FC_DW_LANES, RS = R * S, Wp = W + 2 * pw, Hp = H + 2 * ph
    cdef Py_ssize_t nc = min(L, C - c0), j
    cdef float* xi = scratch
    cdef float* yi = xi + Hp * Wp * L
    cdef const float* wi
    fc_dwi_pack(x + c0 * H * W, H * W, nc, H, W, ph, pw, xi)
    for j in range(m):
        wi = wpk + j * (RS + 1) * L
        fc_dwi_forward(isa, xi, wi, wi + RS * L, yi, Wp, R, S, sh, sw, dh, dw, P, Q)
        fc_dwi_unpack(yi, Q, 0, 0, nc, P, Q, y + (c0 * m + j) * P * Q, m * P * Q)


def conv2d_forward(const floating[:, :, :, ::1] x,     # IN (N, C, H, W)
                   const floating[:, :, :, ::1] w,     # IN (K, 1, R, S), K = m*C
                   b,                                  # IN (K,) or None
                   stride, padding, dilation,
                   int n_threads):                     # returns y, OUT (N, K, P, Q)
    """Depthwise convolution (cross-correlation, as PyTorch with groups == C), eq. (conv.dw).

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64, C-contiguous (read-only is fine)
    w : ndarray (K, 1, R, S), K a multiple of C, same dtype
    b : ndarray (K,) or None
    stride, padding, dilation : (int, int)
    n_threads : int
        OpenMP threads; the result is bitwise the same for any value.

    Returns
    -------
    y : ndarray (N, K, P, Q), x's dtype.
    """
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3]
    cdef Py_ssize_t sh, sw, ph, pw, dh, dw, P, Q, m, i, j, k, n, c
    cdef int nt = 1
    sh, sw, ph, pw, dh, dw, P, Q, nt = _geometry((N, C, H, W), (K, w.shape[1], R, S), stride,
                                                 padding, dilation, n_threads)
    m = K // C
    if b is not None and np.shape(b) != (K,):
        raise ValueError(f"conv2d_forward: b must have shape ({K},), got {np.shape(b)}")
    cdef const floating[::1] bv
    cdef bint has_bias = b is not None
    if has_bias:
        bv = b
    cdef Py_ssize_t Hp = H + 2 * ph, Wp = W + 2 * pw
    y_arr = np.empty((N, K, P, Q), dtype=dtype)
    scratch_arr = np.empty((nt, Hp * Wp if ph or pw else 1), dtype=dtype)
    cdef floating[:, :, :, ::1] y = y_arr
    cdef floating[:, ::1] scratch = scratch_arr
    cdef const floating* xp
    cdef bint tuned = _tuned
    cdef Py_ssize_t L = FC_DW_LANES, nb = (C + L - 1) // L
    cdef int isa = _ISA
    cdef floating[::1] wpk
    if floating is float:
        if tuned:                                    # float32: blocks of 8 channels
            # zeros: the padded plane's border, which fc_dwi_pack never writes
            scratch_arr = np.zeros((nt, (Hp * Wp + P * Q) * L), dtype=dtype)
            scratch = scratch_arr
            wpk_arr = np.empty(nb * m * (R * S + 1) * L, dtype=dtype)
            wpk = wpk_arr
            with nogil:
                _pack_windows(&w[0, 0, 0, 0], &bv[0] if has_bias else NULL, &wpk[0], C, m, R * S,
                              False)
                for i in prange(N * nb, schedule="dynamic", chunksize=chunk_for(N * nb, nt),
                                num_threads=nt):
                    n = i // nb
                    _forward_block(&x[n, 0, 0, 0], &wpk[(i % nb) * m * (R * S + 1) * L],
                                   &y[n, 0, 0, 0], &scratch[threadid(), 0], (i % nb) * L, C, H,
                                   W, m, R, S, sh, sw, ph, pw, dh, dw, P, Q, isa)
            return y_arr
    with nogil:
        for i in prange(N * C, schedule="dynamic", chunksize=chunk_for(N * C, nt),
                        num_threads=nt):
            n = i // C
            c = i % C
            xp = _padded_plane(&x[n, c, 0, 0], &scratch[threadid(), 0], H, W, ph, pw)
            for j in range(m):
                k = c * m + j
                if tuned:
                    _forward_plane_tiled(xp, &w[k, 0, 0, 0], bv[k] if has_bias else 0,
                                         &y[n, k, 0, 0], Wp, R, S, sh, sw, dh, dw, P, Q)
                else:
                    _forward_plane(xp, &w[k, 0, 0, 0], bv[k] if has_bias else 0,
                                   &y[n, k, 0, 0], Wp, R, S, sh, sw, dh, dw, P, Q)
    return y_arr


# --------------------------------------------------------------------------- backward

cdef void _dw_plane(const floating* dy,    # IN  (P, Q) one output plane's gradient
                    const floating* xp,    # IN  (Hp, Wp) the padded input plane it read
                    floating* acc,         # IN/OUT (R*S + 1, Q) partial sums along q
                    Py_ssize_t Wp, Py_ssize_t R, Py_ssize_t S, Py_ssize_t sh, Py_ssize_t sw,
                    Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t P, Py_ssize_t Q) noexcept nogil:
    """(conv.dw) row r*S + s of acc += dy[p, q] * xp[p*sh + r*dh, q*sw + s*dw] over p, for
    every tap; row R*S += dy[p, q] (for db). Lanes along q: no reduction inside the loop."""
    cdef Py_ssize_t p, q, r, s
    cdef floating* a
    cdef const floating* dy_row
    cdef const floating* x_tap
    for p in range(P):
        dy_row = dy + p * Q
        a = acc + R * S * Q
        for q in range(Q):
            a[q] += dy_row[q]
        for r in range(R):
            for s in range(S):
                a = acc + (r * S + s) * Q
                x_tap = xp + (p * sh + r * dh) * Wp + s * dw
                if sw == 1:
                    for q in range(Q):
                        a[q] += dy_row[q] * x_tap[q]
                else:
                    for q in range(Q):
                        a[q] += dy_row[q] * x_tap[q * sw]


cdef void _dx_plane(const floating* dy,    # IN  (P, Q) one output plane's gradient
                    const floating* w,     # IN  (R, S) its window
                    floating* dxp,         # IN/OUT (Hp, Wp) padded input-plane gradient
                    Py_ssize_t Wp, Py_ssize_t R, Py_ssize_t S, Py_ssize_t sh, Py_ssize_t sw,
                    Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t P, Py_ssize_t Q) noexcept nogil:
    """(conv.dw) dxp[p*sh + r*dh, q*sw + s*dw] += dy[p, q] * w[r, s]: each dy row scattered
    back through every tap, one row update along q per (p, r, s)."""
    cdef Py_ssize_t p, q, r, s
    cdef floating wv
    cdef const floating* dy_row
    cdef floating* dx_tap
    for p in range(P):
        dy_row = dy + p * Q
        for r in range(R):
            for s in range(S):
                wv = w[r * S + s]
                dx_tap = dxp + (p * sh + r * dh) * Wp + s * dw
                if sw == 1:
                    for q in range(Q):
                        dx_tap[q] += wv * dy_row[q]
                else:
                    for q in range(Q):
                        dx_tap[q * sw] += wv * dy_row[q]


cdef void _backward_task(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                         const floating[:, :, :, ::1] w, floating[:, :, :, ::1] dx,
                         floating[:, :, ::1] part, floating* scratch, Py_ssize_t n0,
                         Py_ssize_t n1, Py_ssize_t ch, Py_ssize_t c, Py_ssize_t sh,
                         Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                         Py_ssize_t dw, bint need_dx) noexcept nogil:
    """Images [n0, n1) (batch chunk ch) of input channel c: dx[n, c] for each image, and the
    chunk's partial dw and db of the channel's m output channels into part[ch, k, :].
    scratch: two padded planes and m*(R*S + 1)*Q partial sums."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3], P = dy.shape[2]
    cdef Py_ssize_t Q = dy.shape[3], m = K // C, Hp = H + 2 * ph, Wp = W + 2 * pw
    cdef Py_ssize_t RS1Q = (R * S + 1) * Q, n, j, k, i, q
    cdef floating* xp_buf = scratch
    cdef floating* dxp = scratch + Hp * Wp
    cdef floating* acc = scratch + 2 * Hp * Wp
    cdef floating total
    cdef const floating* xp
    cdef bint padded = ph > 0 or pw > 0
    for i in range(m * RS1Q):
        acc[i] = 0
    for n in range(n0, n1):
        xp = _padded_plane(&x[n, c, 0, 0], xp_buf, H, W, ph, pw)
        if need_dx:
            if not padded:
                dxp = &dx[n, c, 0, 0]                 # no border to cut off: write in place
            for i in range(Hp * Wp):
                dxp[i] = 0
        for j in range(m):
            k = c * m + j
            _dw_plane(&dy[n, k, 0, 0], xp, acc + j * RS1Q, Wp, R, S, sh, sw, dh, dw, P, Q)
            if need_dx:
                _dx_plane(&dy[n, k, 0, 0], &w[k, 0, 0, 0], dxp, Wp, R, S, sh, sw, dh, dw, P, Q)
        if need_dx and padded:
            for i in range(H):
                for q in range(W):
                    dx[n, c, i, q] = dxp[(ph + i) * Wp + pw + q]
    for j in range(m):                                # each row of partial sums, in order
        for i in range(R * S + 1):
            total = 0
            for q in range(Q):
                total = total + acc[j * RS1Q + i * Q + q]
            part[ch, c * m + j, i] = total


cdef void _backward_block(const float* dy,         # IN  (N, K, P, Q)
                          const float* x,          # IN  (N, C, H, W)
                          const float* wpk,        # IN  the block's windows, _pack_windows
                          float* dx,               # OUT (N, C, H, W), this block's planes
                          float* part,             # OUT (K, R*S + 1) this chunk's sums
                          float* scratch, Py_ssize_t n0, Py_ssize_t n1,
                          Py_ssize_t c0, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t m,
                          Py_ssize_t R, Py_ssize_t S, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                          Py_ssize_t P, Py_ssize_t Q, bint need_dx, bint gather,
                          int isa) noexcept nogil:
    """float32, what _backward_task does for channels [c0, c0 + 8) at once, one per SIMD
    lane: x, dy and dx at their (0, 0) planes, wpk at the block's windows (_pack_windows,
    turned if gather), part at this chunk's (K, R*S + 1) sums.

    dx: with gather (m == 1, stride 1, finite w) dx is the forward's correlation of dy,
    zero-padded by the dilated kernel's size less one, with the turned window: each dx value
    summed in registers (fc_dwi_forward), no read-modify-write; else the scatter fc_dwi_dx.
    scratch: (2*Hp*Wp + (P + 2eh)*(Q + 2ew) + m*(R*S + 1)) * 8, (eh, ew) that padding,
    zero when the call began (the padded planes' borders, never written)."""
    cdef Py_ssize_t L = FC_DW_LANES, RS = R * S, Wp = W + 2 * pw, Hp = H + 2 * ph
    cdef Py_ssize_t nc = min(L, C - c0), K = m * C, n, j, l, t
    cdef Py_ssize_t eh = (R - 1) * dh if gather else 0, ew = (S - 1) * dw if gather else 0
    cdef Py_ssize_t Wd = Q + 2 * ew                  # dy's padded rows
    cdef float* xi = scratch
    cdef float* dxi = xi + Hp * Wp * L
    cdef float* dyi = dxi + Hp * Wp * L
    cdef float* acc = dyi + (P + 2 * eh) * Wd * L    # m x (R*S + 1) x 8: dw taps, then db
    cdef float* dy0 = dyi + (eh * Wd + ew) * L       # dy[0, 0] in its padded copy
    memset(acc, 0, m * (RS + 1) * L * sizeof(float))
    for n in range(n0, n1):
        fc_dwi_pack(x + (n * C + c0) * H * W, H * W, nc, H, W, ph, pw, xi)
        if need_dx and not gather:
            memset(dxi, 0, Hp * Wp * L * sizeof(float))
        for j in range(m):
            fc_dwi_pack(dy + (n * K + c0 * m + j) * P * Q, m * P * Q, nc, P, Q, eh, ew, dyi)
            fc_dwi_dw(isa, dy0, Wd, xi, acc + j * (RS + 1) * L, Wp, R, S, sh, sw, dh, dw, P, Q)
            if need_dx and gather:                   # dx[i, j] = sum w[R-1-r, S-1-s] * dyp[i + ph + r*dh, ...]
                fc_dwi_forward(isa, dyi + (ph * Wd + pw) * L, wpk, wpk + RS * L, dxi, Wd, R, S,
                               1, 1, dh, dw, H, W)
            elif need_dx:
                fc_dwi_dx(isa, dy0, Wd, wpk + j * (RS + 1) * L, dxi, Wp, R, S, sh, sw, dh, dw,
                          P, Q)
        if need_dx and gather:
            fc_dwi_unpack(dxi, W, 0, 0, nc, H, W, dx + (n * C + c0) * H * W, H * W)
        elif need_dx:
            fc_dwi_unpack(dxi, Wp, ph, pw, nc, H, W, dx + (n * C + c0) * H * W, H * W)
    for j in range(m):
        for l in range(nc):
            for t in range(RS + 1):
                part[((c0 + l) * m + j) * (RS + 1) + t] = acc[(j * (RS + 1) + t) * L + l]


def _n_chunks(Py_ssize_t N):
    """Batch chunks of the dw reduction: fixed by N alone, never by the thread count."""
    return min(N, _MAX_CHUNKS)


def conv2d_backward(const floating[:, :, :, ::1] dy,    # IN (N, K, P, Q): dLoss/dy
                    const floating[:, :, :, ::1] x,     # IN (N, C, H, W)
                    const floating[:, :, :, ::1] w,     # IN (K, 1, R, S)
                    stride, padding, dilation, int n_threads,
                    bint need_dx=True):                 # returns dx, dw, db (OUT)
    """Gradients of :func:`conv2d_forward`, eq. (conv.dw).

    Parameters
    ----------
    dy : ndarray (N, K, P, Q), dLoss/dy
    x : ndarray (N, C, H, W);  w : ndarray (K, 1, R, S); all of one dtype
    stride, padding, dilation : (int, int)
    n_threads : int (results are bitwise the same for any value)
    need_dx : bool
        False skips dx (None is returned in its place).

    Returns
    -------
    dx : (N, C, H, W) or None, dw : (K, 1, R, S), db : (K,), all of x's dtype.
    """
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3]
    cdef Py_ssize_t sh, sw, ph, pw, dh, dw, P, Q, t, k, i, ch, n_ch
    cdef int nt = 1
    sh, sw, ph, pw, dh, dw, P, Q, nt = _geometry(
        (N, C, H, W), (K, w.shape[1], R, S), stride, padding, dilation, n_threads,
        (dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3]))
    cdef Py_ssize_t m = K // C, Hp = H + 2 * ph, Wp = W + 2 * pw, RS = R * S
    n_ch = _n_chunks(N)
    # without need_dx, a one-element placeholder that is never read
    dx_arr = np.empty((N if need_dx else 1, C if need_dx else 1, H if need_dx else 1,
                       W if need_dx else 1), dtype=dtype)
    dw_arr = np.empty((K, 1, R, S), dtype=dtype)
    db_arr = np.empty(K, dtype=dtype)
    part_arr = np.empty((n_ch, K, RS + 1), dtype=dtype)
    scratch_arr = np.empty((nt, 2 * Hp * Wp + m * (RS + 1) * Q), dtype=dtype)
    cdef floating[:, :, :, ::1] dx = dx_arr
    cdef floating[:, :, :, ::1] dwv = dw_arr
    cdef floating[::1] db = db_arr
    cdef floating[:, :, ::1] part = part_arr
    cdef floating[:, ::1] scratch = scratch_arr
    cdef floating total
    cdef Py_ssize_t L = FC_DW_LANES, nb = (C + L - 1) // L
    cdef int isa = _ISA
    cdef bint blocks = floating is float and _tuned
    cdef floating[::1] wpk
    if blocks:                                        # float32: blocks of 8 channels
        # zeros: the padded planes' borders, which fc_dwi_pack never writes
        scratch_arr = np.zeros((nt, (2 * Hp * Wp + (P + 2 * (R - 1) * dh) * (Q + 2 * (S - 1) * dw)
                                     + m * (RS + 1)) * L), dtype=dtype)
        scratch = scratch_arr
        wpk_arr = np.empty(nb * m * (RS + 1) * L, dtype=dtype)
        wpk = wpk_arr
    cdef bint gather = m == 1 and sh == 1 and sw == 1
    with nogil:
        if blocks:
            # a non-finite weight times the padding's zeros would reach dx where the
            # formula has no term: the scatter then
            if not _pack_windows(<const float*>&w[0, 0, 0, 0], NULL, <float*>&wpk[0], C, m,
                                 RS, gather) and gather:
                gather = False
                _pack_windows(<const float*>&w[0, 0, 0, 0], NULL, <float*>&wpk[0], C, m, RS,
                              False)
            for t in prange(n_ch * nb, schedule="dynamic", chunksize=chunk_for(n_ch * nb, nt),
                            num_threads=nt):
                ch = t // nb
                _backward_block(<const float*>&dy[0, 0, 0, 0], <const float*>&x[0, 0, 0, 0],
                                <const float*>&wpk[(t % nb) * m * (RS + 1) * L],
                                <float*>&dx[0, 0, 0, 0],
                                <float*>&part[ch, 0, 0], <float*>&scratch[threadid(), 0],
                                ch * N // n_ch, (ch + 1) * N // n_ch, (t % nb) * L, C, H, W, m,
                                R, S, sh, sw, ph, pw, dh, dw, P, Q, need_dx, gather, isa)
        else:
            for t in prange(n_ch * C, schedule="dynamic", num_threads=nt):
                ch = t // C
                _backward_task(dy, x, w, dx, part, &scratch[threadid(), 0], ch * N // n_ch,
                               (ch + 1) * N // n_ch, ch, t % C, sh, sw, ph, pw, dh, dw, need_dx)
        for k in prange(K, schedule="static", num_threads=nt):
            for i in range(RS + 1):                   # the chunks' partial sums, in chunk order
                total = 0
                for ch in range(n_ch):
                    total = total + part[ch, k, i]
                if i < RS:
                    dwv[k, 0, i // S, i % S] = total
                else:
                    db[k] = total
    return (dx_arr if need_dx else None), dw_arr, db_arr


# --------------------------------------------------------------------------- guard

def _geometry(x_shape, w_shape, stride, padding, dilation, int n_threads, dy_shape=None):
    """Check the shapes and return (sh, sw, ph, pw, dh, dw, P, Q, n_threads to use).

    O(1) checks, so that a direct call with inconsistent arguments raises instead of reading
    out of bounds (fastconv.functional does the user-facing validation)."""
    sh, sw = (int(v) for v in stride)
    ph, pw = (int(v) for v in padding)
    dh, dw = (int(v) for v in dilation)
    N, C, H, W = x_shape
    K, one, R, S = w_shape
    if min(x_shape) == 0 or min(w_shape) == 0:
        raise ValueError("conv_depthwise: empty arrays are not supported")
    if one != 1 or K % C:
        raise ValueError(f"conv_depthwise: w must be (m*C, 1, R, S) for x with C = {C} "
                         f"channels, got {tuple(w_shape)}")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0 or dh < 1 or dw < 1:
        raise ValueError(f"conv_depthwise: need stride >= 1, padding >= 0 and dilation >= 1, "
                         f"got {stride}, {padding}, {dilation}")
    if dh * (R - 1) + 1 > H + 2 * ph or dw * (S - 1) + 1 > W + 2 * pw:
        raise ValueError(f"conv_depthwise: (dilated) kernel {R}x{S} larger than the padded "
                         f"input {H + 2 * ph}x{W + 2 * pw}")
    P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Q = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    if dy_shape is not None and tuple(dy_shape) != (N, K, P, Q):
        raise ValueError(f"conv2d_backward: dy must have shape {(N, K, P, Q)}, "
                         f"got {tuple(dy_shape)}")
    return sh, sw, ph, pw, dh, dw, P, Q, threads_for_macs(N * K * P * Q * R * S, n_threads)
