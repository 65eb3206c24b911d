# cython: language_level=3
"""Max and average pooling: Cython + OpenMP twin of ``fastconv.reference.pool``.

Runs by default: the tuned kernels. The calls, from the Python entry points down:

* max_pool2d_forward: one _max_forward_share per thread -> _max_unit -> 2x2 stride 2:
  _max_rows_2x2; any other window: _max_plane, whose horizontal half is _max_hpass;
  return_indices=True -> _max_forward_with_indices -> _plane_forward_with_indices ->
  _max_plane_argmax.
* max_pool2d_backward: 2x2 stride 2 -> _max_plane_backward_2x2 (float32 on AVX-512: its
  copy with intrinsics, fc_max_backward_2x2_f32 in include/fc_pool.h); with the forward's
  indices -> _max_backward_from_indices -> _scatter_plane; any other window ->
  _max_backward_by_argmax -> _plane_backward_by_argmax -> _max_plane_argmax (the argmaxes),
  then _scatter_plane (dy added there).

To study max pooling first, read the teaching path just below: _window_argmax and the
_max_plane_*_plain loops, which also take over any plane that holds NaN. Timings behind the
choices here: docs/performance.md, "Pooling".

Same functions and signatures as the reference; read its docstring for the formulas
(conv.out), (pool.max), (pool.avg) (docs/formulas.md) and PyTorch's divisor rule for
average pooling.

How the kernels work
--------------------
Every (n, c) plane is independent, so ``prange`` runs over the N*C planes
(``schedule="static"``): each output value is computed by one thread in a fixed order,
and the results are bitwise identical for any number of threads.

Forward (max and avg) is separable, one output row p at a time (2x2 stride 2 unpadded
max pooling has its own one-pass loop, _max_rows_2x2, with the same folds):

1. vertical pass: ``v[iw] = reduce over the window's rows ih of x[ih, iw]`` for all W
   columns; a contiguous, vectorised loop over iw (the window's rows are clipped to the
   image, so padded rows are simply skipped);
2. horizontal pass: ``y[p, q] = reduce over s of vbuf[q*sw + s]``, where vbuf is v with pw
   cells of padding on each side (-inf for max, 0 for avg), so no window needs clipping.

This reads each input row kh/sh times instead of kh*kw/(sh*sw) times.

Backward, per plane:

* max: each dy goes to its window's argmax, recomputed from x: the first maximum in
  row-major window order (strict ``>``), as in PyTorch; padding (-inf) never wins, and a
  window whose real cells are all -inf sends its gradient to its first real cell.
  The argmax is separable, horizontal pass first (the first maximum of a window lies in
  the first of its rows that holds the window's maximum, at that row's first maximum):

  1. horizontal: for each input row, the maximum of every window's columns and the flat
     index of its first occurrence (each row once, however many windows share it);
  2. vertical: for each output row p, fold the window's rows top to bottom;
  3. zero the dx plane and add dy[p, q] at each window's argmax (overlaps add up).

  Every loop over q is branch-free (compare, then select) and vectorised: a branch per
  cell (``if v > best``) is mispredicted half the time on random data. Rows of stride-2
  windows are first split into even and odd columns so that the loads are unit-stride;
  3x3 stride 2 with padding 1 and even W runs the horizontal pass as one loop over the
  whole plane. 2x2 stride 2 unpadded (tiling windows) has its own one-pass kernel that
  writes every dx cell (dy or 0) without zeroing or scattering.
* max with the argmaxes given (``indices``, from ``max_pool2d_forward(...,
  return_indices=True)``, which finds them as steps 1-2 above and takes the maxima from
  the same fold): only step 3, which is why nn.MaxPool2d keeps them in training (but not
  for 2x2 stride 2 unpadded, whose one-pass kernels are cheaper still).
* avg: separable again, and each dx row is written exactly once: a horizontal scatter of
  dy / D into one row buffer per output row p, then every dx row is the sum of the rows of
  the windows that cover it (a memcpy when only one does). Global average pooling (the
  window is the whole plane) has its own sum / fill loops.

Small calls run on one thread (``threads_for_values`` in _common.pxd); which thread runs
a plane never changes a result.

NaN, as PyTorch: a max-pooling window holding NaN gives NaN, its argmax (and gradient) at
its last NaN in row-major order. The tuned loops compare with plain ``>``, which the
compiler turns into vector max instructions but which drops NaN; such a plane is done by
the teaching loops. The forward finds those planes for free: a comparison that meets NaN
raises the floating-point 'invalid' flag, tested once per thread (_max_forward_share); the
backward scans each plane (or notes NaN in its 2x2 loop). Average pooling adds, so NaN and
Inf spread through it as through any sum.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY
from libc.stdint cimport INT32_MAX, int32_t, int64_t
from libc.string cimport memcpy, memset

from _common cimport imax, imin, out_size, threads_for_values
from _isa cimport fc_isa_level
from _relu cimport relu_backward_block

from fastconv.reference.pool import adaptive_ranges, pool_output_size


cdef extern from "<fenv.h>" nogil:
    int FE_INVALID
    int feclearexcept(int excepts)
    int fetestexcept(int excepts)


# The float32 AVX-512 copy of _max_plane_backward_2x2 (include/fc_pool.h)
cdef extern from "fc_pool.h" nogil:
    bint fc_max_backward_2x2_applies(int isa)
    ctypedef struct fc_narrow_2x2:
        pass
    void fc_narrow_2x2_tables(Py_ssize_t W, fc_narrow_2x2* t)
    bint fc_max_backward_2x2_f32(const float* dy, const float* x, float* dx, Py_ssize_t H,
                                 Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q, int relu,
                                 const fc_narrow_2x2* narrow)

cdef bint _SIMD_2X2 = fc_max_backward_2x2_applies(fc_isa_level())   # fc_isa.h decides
cdef int _ISA = fc_isa_level()      # which copy of ReLU's loops runs (through_relu)


cdef enum:
    _ROW_PAIRS = 32     # row pairs per work unit of the 2x2 kernels (any split: same bits)


# The argmax of a max-pooling window is kept as a flat index into its plane, in an integer
# as wide as the values (int32 with float32, int64 with float64): compares and selects then
# use the same vector lanes and gcc vectorises them; with mixed widths it did not (float64
# with int32 indices). float32 planes must therefore hold < 2**31 values (checked).
ctypedef fused index_t:
    int32_t
    int64_t







def _pool_geometry(op, x_shape, kernel_size, stride, padding, dy_shape=None,
                   dilation=(1, 1), ceil_mode=False):
    """(kh, kw, sh, sw, ph, pw, P, Q) of a pooling call, P, Q by (pool.out), after an O(1)
    guard for direct calls (functional.py validates for users) that rejects what would read
    or write out of bounds. (A memoryview's shape has 8 entries.)"""
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    x_shape = tuple(x_shape[:4])
    H, W = x_shape[2], x_shape[3]
    if min(x_shape) <= 0:
        raise ValueError(f"{op}: empty arrays are not supported, got x of shape {x_shape}")
    if (min(kh, kw, sh, sw, dh, dw) < 1 or ph < 0 or pw < 0 or ph > kh // 2
            or pw > kw // 2):
        raise ValueError(f"{op}: need kernel_size, stride, dilation >= 1 and 0 <= padding <= "
                         f"kernel_size // 2, got {(kh, kw)}, {(sh, sw)}, {(dh, dw)}, "
                         f"{(ph, pw)}")
    P = pool_output_size(H, kh, sh, ph, dh, ceil_mode)
    Q = pool_output_size(W, kw, sw, pw, dw, ceil_mode)
    if P < 1 or Q < 1:
        raise ValueError(f"{op}: window {kh}x{kw} (dilation {(dh, dw)}) larger than the "
                         f"padded input {H + 2 * ph}x{W + 2 * pw}")
    if dy_shape is not None and tuple(dy_shape[:4]) != (x_shape[0], x_shape[1], P, Q):
        raise ValueError(f"{op}: dy must have shape {(x_shape[0], x_shape[1], P, Q)}, "
                         f"got {tuple(dy_shape[:4])}")
    return kh, kw, sh, sw, ph, pw, P, Q


def _is_plain_geometry(H, W, kh, kw, sh, sw, ph, pw, P, Q, dilation):
    """True when the tuned kernels apply: no dilation, and every window inside the padded
    input (P, Q are the floor sizes; ceil_mode may add a window that reaches past it)."""
    return (dilation == (1, 1) and P == pool_output_size(H, kh, sh, ph)
            and Q == pool_output_size(W, kw, sw, pw))


# --------------------------------------------------------------------------- teaching path
# The loop nest of (pool.max) to study: one window at a time, its cells in row-major order.
# The tuned kernels below compute the same with plain ``>`` in vectorised loops, which drop
# NaN; each of them reports whether its input held NaN, and the caller then redoes that
# plane (or block of rows) with these loops, so NaN comes out as in PyTorch.

cdef inline bint _wins(floating v, floating m) noexcept nogil:
    """(pool.max)'s rule, PyTorch's: the cell v, read after the running maximum m, replaces
    it (and becomes the argmax) if v > m or v is NaN. So a window holding NaN has the maximum
    NaN at its LAST NaN in row-major order, and among equal maxima the first one stays."""
    return (v > m) | (v != v)


cdef Py_ssize_t _window_argmax(const floating* xp, floating* m_out, Py_ssize_t H,
                               Py_ssize_t W, Py_ssize_t p, Py_ssize_t q, Py_ssize_t kh,
                               Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                               Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """The argmax of window (p, q) of the plane xp (H, W), as the flat index ih*W + iw, and
    its maximum in m_out: PyTorch's loop. The window's cells are rows p*sh - ph + r*dh
    (r < kh) and columns likewise (dilation dh, dw), clipped to the image (padding is -inf
    and never wins). The search starts at -inf and the window's first real cell, which
    keeps the gradient of a window whose real cells are all -inf. A window with no real
    cell (possible with dilation) gives -inf and that first cell's index, which may lie
    outside the plane (the gradient then goes nowhere)."""
    cdef Py_ssize_t h0 = p * sh - ph, w0 = q * sw - pw
    cdef Py_ssize_t h1 = imin(h0 + (kh - 1) * dh + 1, H), w1 = imin(w0 + (kw - 1) * dw + 1, W)
    cdef Py_ssize_t r, c, ih, iw, best
    cdef floating m = -INFINITY, v
    while h0 < 0:
        h0 += dh
    while w0 < 0:
        w0 += dw
    best = h0 * W + w0
    for r in range((h1 - h0 + dh - 1) // dh):     # rows h0, h0 + dh, ... < h1
        ih = h0 + r * dh
        for c in range((w1 - w0 + dw - 1) // dw):
            iw = w0 + c * dw
            v = xp[ih * W + iw]
            if _wins(v, m):
                m = v
                best = ih * W + iw
    m_out[0] = m
    return best


cdef void _max_plane_plain(const floating* xp, floating* yp, Py_ssize_t H, Py_ssize_t W,
                           Py_ssize_t P, Py_ssize_t Q, Py_ssize_t kh, Py_ssize_t kw,
                           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                           Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    # IN: xp (H, W); OUT: yp (P, Q)
    """(pool.max) forward of one plane: y[p, q] = the window's maximum."""
    cdef Py_ssize_t p, q
    for p in range(P):
        for q in range(Q):
            _window_argmax(xp, yp + p * Q + q, H, W, p, q, kh, kw, sh, sw, ph, pw, dh, dw)


cdef void _max_plane_indices_plain(const floating* xp, floating* yp, int64_t* ind,
                                   Py_ssize_t H, Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q,
                                   Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                                   Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh,
                                   Py_ssize_t dw) noexcept nogil:
    """(pool.max) forward with the argmaxes: ind[p, q] = the window's argmax (flat index in
    the plane), yp[p, q] = its maximum.   IN: xp (H, W); OUT: yp, ind (P, Q)"""
    cdef Py_ssize_t p, q
    for p in range(P):
        for q in range(Q):
            ind[p * Q + q] = _window_argmax(xp, yp + p * Q + q, H, W, p, q, kh, kw, sh, sw,
                                            ph, pw, dh, dw)


cdef void _max_plane_backward_plain(const floating* dyp, const floating* xp, floating* dxp,
                                    Py_ssize_t H, Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q,
                                    Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                                    Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                                    Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    # IN: dyp, xp; OUT: dxp
    """(pool.max) gradient of one plane: dx = 0, then dy[p, q] added at each window's argmax
    (overlapping windows add up; an argmax outside the plane receives nothing)."""
    cdef Py_ssize_t p, q, j
    cdef floating m
    memset(dxp, 0, H * W * sizeof(floating))
    for p in range(P):
        for q in range(Q):
            j = _window_argmax(xp, &m, H, W, p, q, kh, kw, sh, sw, ph, pw, dh, dw)
            if j < H * W:
                dxp[j] += dyp[p * Q + q]


cdef inline bint _has_nan(const floating* p, Py_ssize_t n) noexcept nogil:
    """True if one of the n values at p is NaN (a vectorised pass, no branch)."""
    cdef Py_ssize_t i
    cdef int found = 0
    for i in range(n):
        found |= p[i] != p[i]
    return found


# --------------------------------------------------------------------------- max pooling (tuned)

cdef void _max_hpass(const floating* vbuf, floating* yrow, Py_ssize_t Q, Py_ssize_t kw,
                     Py_ssize_t sw) noexcept nogil:
    """yrow[q] = max_{s < kw} vbuf[q*sw + s]: the horizontal half of (pool.max).

    The common windows get their own loops with a fixed trip count, which gcc vectorises;
    ``b if b > a else a`` is the pattern it turns into a vector max.
    """
    cdef Py_ssize_t q, s
    cdef floating m, t
    if kw == 2 and sw == 2:
        for q in range(Q):
            m = vbuf[2 * q]
            t = vbuf[2 * q + 1]
            yrow[q] = t if t > m else m
    elif kw == 3 and sw == 2:
        for q in range(Q):
            m = vbuf[2 * q]
            t = vbuf[2 * q + 1]
            m = t if t > m else m
            t = vbuf[2 * q + 2]
            yrow[q] = t if t > m else m
    else:
        for q in range(Q):
            m = vbuf[q * sw]
            for s in range(1, kw):
                t = vbuf[q * sw + s]
                m = t if t > m else m
            yrow[q] = m


cdef void _max_plane(const floating* xp, floating* yp, floating* vbuf,
                     Py_ssize_t H, Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q,
                     Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                     Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """One (n, c) plane of (pool.max): xp (H, W) -> yp (P, Q), separably (module docstring).
    Plain ``>`` folds: a NaN is dropped, and raises the 'invalid' flag (_max_forward_share).

    vbuf holds W + 2*pw values; its pw cells on each side are -inf, so padding never wins.
    """
    cdef Py_ssize_t p, ih, iw, h0, h1, i
    cdef const floating* row
    cdef const floating* row2
    cdef floating* v = vbuf + pw
    cdef floating a, b
    for i in range(pw):
        vbuf[i] = -INFINITY
        v[W + i] = -INFINITY
    for p in range(P):
        h0 = imax(p * sh - ph, 0)                 # the window's rows, clipped to the image
        h1 = imin(p * sh - ph + kh, H)            # (never empty: padding <= kh // 2)
        row = xp + h0 * W
        if h1 - h0 >= 2:                           # first two rows in one pass
            row2 = row + W
            for iw in range(W):
                a = row[iw]
                b = row2[iw]
                v[iw] = b if b > a else a
            h0 += 2
        else:
            memcpy(v, row, W * sizeof(floating))
            h0 += 1
        for ih in range(h0, h1):
            row = xp + ih * W
            for iw in range(W):
                a = v[iw]
                b = row[iw]
                v[iw] = b if b > a else a
        _max_hpass(vbuf, yp + p * Q, Q, kw, sw)


cdef inline void _split_row(const floating* xrow, floating* rowbuf, const Py_ssize_t* bounds,
                            Py_ssize_t W, Py_ssize_t sw, Py_ssize_t pw,
                            Py_ssize_t L) noexcept nogil:
    """Copy one input row into rowbuf split by column phase: padded column c = j*sw + t
    (x column c - pw) goes to rowbuf[t*L + j], t < sw. Column s of window q is then
    rowbuf[(s % sw)*L + q + s // sw]: unit-stride in q. (Read with stride sw, gcc peels the
    loop's last iterations into scalar code whose branches random data mispredicts.)
    Only real columns are written, j in [bounds[2t], bounds[2t + 1]): the padding cells
    keep the -inf they were given once.
    """
    cdef Py_ssize_t t, j
    cdef floating* dst
    cdef const floating* srow
    if sw == 1:
        memcpy(rowbuf + pw, xrow, W * sizeof(floating))
        return
    for t in range(sw):
        dst = rowbuf + t * L
        srow = xrow + t - pw
        if sw == 2:
            for j in range(bounds[2 * t], bounds[2 * t + 1]):
                dst[j] = srow[2 * j]
        else:
            for j in range(bounds[2 * t], bounds[2 * t + 1]):
                dst[j] = srow[j * sw]


cdef inline void _row_argmax(const floating* rowbuf, floating* hb, index_t* hi,
                             index_t base, Py_ssize_t Q, Py_ssize_t kw, Py_ssize_t sw,
                             Py_ssize_t pw, Py_ssize_t L) noexcept nogil:
    """The horizontal half of the argmax, for one row: for each window q, the maximum hb[q]
    of its kw cells in this row and the flat index hi[q] of the first cell that holds it
    (strict ``>``, so the first maximum wins). If all its real cells are -inf, hb[q] = -inf
    and hi[q] = its first real cell. rowbuf is the row from _split_row; padded column c is
    at flat index base + c (base = ih*W - pw).

    Branch-free loops over q, innermost: 2 and 3 columns of stride 2 keep the running
    maximum in registers, any other window updates hb and hi in memory one column at a
    time. gcc vectorises all three (check with -fopt-info-vec after any edit: a shared
    ``take`` flag, a mask expression for the index, a ``-INFINITY`` constant or a ``q == 0``
    test in these loops each stopped it, and the scalar loop it falls back to branches).
    """
    cdef Py_ssize_t q, s, c0
    cdef floating v, m
    cdef index_t j, pos
    cdef const floating* src
    cdef const floating* ev = rowbuf              # padded columns 0, 2, 4, ... (stride 2)
    cdef const floating* od = rowbuf + L          # padded columns 1, 3, 5, ...
    if sw == 2 and kw == 3:
        for q in range(Q):
            pos = base + <index_t>(2 * q)
            m = ev[q]                                       # column 0
            j = pos
            v = od[q]
            j = pos + 1 if v > m else j
            m = v if v > m else m
            v = ev[q + 1]
            j = pos + 2 if v > m else j
            m = v if v > m else m
            hb[q] = m
            hi[q] = j
    elif sw == 2 and kw == 2:
        for q in range(Q):
            pos = base + <index_t>(2 * q)
            m = ev[q]                                       # column 0
            j = pos
            v = od[q]
            j = pos + 1 if v > m else j
            m = v if v > m else m
            hb[q] = m
            hi[q] = j
    else:
        for q in range(Q):
            hb[q] = rowbuf[q]                              # column 0
            c0 = q * sw
            hi[q] = base + <index_t>(c0 if c0 > pw else pw)  # the first real cell
        for s in range(1, kw):
            src = rowbuf + (s % sw) * L + s // sw
            for q in range(Q):
                v = src[q]
                m = hb[q]
                j = hi[q]
                pos = base + <index_t>(q * sw + s)
                hi[q] = pos if v > m else j
                hb[q] = m if m >= v else v
        return
    # The two loops above start window q at its column 0, a real cell and so its first
    # real cell, except in window 0 when pw = 1 (pw <= kw // 2): there column 0 is padding
    # (-inf), which never wins, and only a window whose real cells are all -inf still points
    # at it; it gets its first real cell, column 1. (Testing q == 0 inside the loops
    # stopped gcc vectorising them.)
    if pw > 0 and hi[0] == base:
        hi[0] = base + 1


cdef void _row_argmax_3s2_plane(const floating* xp, floating* hbest, index_t* hidx,
                                Py_ssize_t H, Py_ssize_t W, Py_ssize_t Q) noexcept nogil:
    """_row_argmax for every row of the plane at once, for 3 columns, stride 2, padding 1
    and even W (the usual 3x3 stride 2 pooling; then W == 2*Q): window (ih, q) covers x
    columns 2q - 1 .. 2q + 1 of row ih, flat indices 2k - 1 .. 2k + 1 with k = ih*Q + q,
    so ONE loop over k covers the plane, with no row copy and no per-row loop set-up, which
    cost more than the work in rows of Q = 16.
    Window 0 of each row reads the previous row's last cell as its column -1 (padding);
    it is redone afterwards on its two real cells. k starts at 1 so that no read leaves
    the plane (window (H-1, Q-1) ends at column W - 1).
    """
    cdef Py_ssize_t k, c, r, ih
    cdef floating v, m
    cdef index_t j, pos
    cdef const floating* x = xp
    for k in range(1, H * Q):
        c = 2 * k - 1                             # loads at a Py_ssize_t offset (an int32
        pos = <index_t>c                          # one is not affine to gcc)
        m = x[c]
        j = pos
        v = x[c + 1]
        j = pos + 1 if v > m else j
        m = v if v > m else m
        v = x[c + 2]
        j = pos + 2 if v > m else j
        m = v if v > m else m
        hbest[k] = m
        hidx[k] = j
    for ih in range(H):                           # window 0: columns 0 and 1
        r = ih * W
        m = x[r]
        v = x[r + 1]
        # the index as an integer plus the comparison, not a select: gcc branched on the
        # select, mispredicted half the time on random data
        hidx[ih * Q] = <index_t>r + <index_t>(v > m)
        hbest[ih * Q] = v if v > m else m


cdef void _max_plane_argmax(const floating* xp, floating* rowbuf, floating* hbest,
                            index_t* hidx, index_t* widx, floating* yp,
                            const Py_ssize_t* bounds, Py_ssize_t H, Py_ssize_t W, Py_ssize_t P,
                            Py_ssize_t Q, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                            Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                            Py_ssize_t L) noexcept nogil:
    # IN: xp (H, W); OUT: widx, yp (P, Q); scratch: rowbuf, hbest, hidx
    """widx[p, q] = the flat index ih*W + iw in the plane xp (H, W) of window (p, q)'s
    argmax, and yp[p, q] its maximum, (pool.max): steps 1 and 2 below. The gradient
    scatters dy to widx (_plane_backward_by_argmax; its yp is scratch), the forward with
    indices returns both (_plane_forward_with_indices).

    The argmax is the first maximum of the window in row-major order (strict ``>``). It is
    separable, horizontal pass first: the first maximum of the window is in the first of
    its rows whose maximum is the window's maximum, at that row's first maximum. So

    1. horizontal: for every input row ih, hbest[ih, q] and hidx[ih, q] = the maximum of
       window q's columns in that row and the flat index ih*W + iw of its first
       occurrence (_row_argmax, or _row_argmax_3s2_plane). Each row is read once,
       although kh / sh windows use it.
    2. vertical: for each output row p, fold the window's rows h0 .. h1-1 top to bottom
       with strict ``>``; widx[p, q] = the winner's flat index. 3 rows (3x3 windows) are
       folded in registers, more in yp / widx in place.
    (3. in _scatter_plane: dxp = 0, then dxp[widx[p, q]] += dy[p, q].)

    Padding never wins: padded rows are not in [h0, h1), padded columns are -inf in rowbuf
    (sw*L values, see _split_row; bounds are its column ranges). A window whose real cells
    are all -inf keeps its first real cell, where PyTorch sends the gradient too.
    hbest, hidx hold H*Q values.
    """
    cdef Py_ssize_t p, q, ih, h0, h1
    cdef floating v, m
    cdef index_t j, k
    cdef const floating* hb
    cdef const index_t* hi
    cdef const floating* fb
    cdef const index_t* fi
    cdef index_t* w
    cdef floating* yr
    if kw == 3 and sw == 2 and pw == 1 and W == 2 * Q:
        _row_argmax_3s2_plane(xp, hbest, hidx, H, W, Q)
    else:
        for ih in range(H):
            _split_row(xp + ih * W, rowbuf, bounds, W, sw, pw, L)
            _row_argmax(rowbuf, hbest + ih * Q, hidx + ih * Q, <index_t>(ih * W - pw), Q, kw,
                        sw, pw, L)
    for p in range(P):
        h0 = imax(p * sh - ph, 0)                 # the window's rows, clipped to the image
        h1 = imin(p * sh - ph + kh, H)            # (never empty: padding <= kh // 2)
        fb = hbest + h0 * Q                       # the window's first row: the result so far
        fi = hidx + h0 * Q
        w = widx + p * Q                          # -> the argmax of window (p, q)
        yr = yp + p * Q                           # -> its maximum
        if h1 - h0 == 1:
            memcpy(w, fi, Q * sizeof(index_t))
            memcpy(yr, fb, Q * sizeof(floating))
            continue
        hb = fb + Q
        hi = fi + Q
        if h1 - h0 == 3:                          # 3 rows (3x3 windows): in registers
            for q in range(Q):
                m = fb[q]
                j = fi[q]
                v = hb[q]
                k = hi[q]
                j = k if v > m else j
                m = m if m >= v else v
                v = hb[Q + q]
                k = hi[Q + q]
                w[q] = k if v > m else j
                yr[q] = m if m >= v else v
            continue
        for q in range(Q):                        # rows h0 and h0 + 1
            m = fb[q]
            v = hb[q]
            j = fi[q]
            k = hi[q]
            w[q] = k if v > m else j
            yr[q] = m if m >= v else v
        for ih in range(h0 + 2, h1):              # later rows: update yr, w in place
            hb = hbest + ih * Q
            hi = hidx + ih * Q
            for q in range(Q):
                m = yr[q]
                v = hb[q]
                j = w[q]
                k = hi[q]
                w[q] = k if v > m else j
                yr[q] = m if m >= v else v


cdef inline void _widen(const index_t* src, int64_t* dst, Py_ssize_t n) noexcept nogil:
    """dst[i] = src[i] as int64, i < n: the argmaxes as the forward returns them."""
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = src[i]


cdef inline Py_ssize_t _scatter_plane(const floating* dyp, const index_t* widx, floating* dxp,
                                      Py_ssize_t HW, Py_ssize_t PQ) noexcept nogil:
    """dxp (HW values) = 0, then dxp[widx[i]] += dyp[i] for i < PQ, in order (overlapping
    windows add up): step 3 of the (pool.max) gradient. An index outside [0, HW) (only
    indices given by a caller can be) is skipped and counted: the number is returned."""
    cdef Py_ssize_t i, bad = 0
    cdef index_t j
    memset(dxp, 0, HW * sizeof(floating))
    for i in range(PQ):
        j = widx[i]
        if j < 0 or j >= HW:
            bad += 1
        else:
            dxp[j] += dyp[i]
    return bad


cdef bint _max_plane_backward_2x2(const floating* dyp, const floating* xp, floating* dxp,
                                  Py_ssize_t H, Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q,
                                  bint relu, const fc_narrow_2x2* narrow) noexcept nogil:
    """The (pool.max) gradient of one plane for the 2x2, stride 2, unpadded window, without
    branches (the other windows: _max_backward_by_argmax).

    The first maximum of the window (a b / c d) in row-major order: a unless b > a in the
    top row (top = max(a, b)), c unless d > c in the bottom row, and the bottom row only
    if max(c, d) > top, all with strict ``>``. Each cell's condition is computed on its own
    from comparisons and bitwise ``&``: written with shared 0/1 flags and ``and``/``or``,
    gcc threaded jumps through them and the loop was no longer vectorised (3x slower).
    The windows tile the plane, so every dx cell of rows 2p, 2p + 1 and columns < 2Q is
    WRITTEN once (dy at the winner, 0 at the three others) instead of zeroing the plane and
    scattering: one pass over dx, with no data-dependent address. With ``relu`` (x is a
    ReLU's output, dx the gradient of the ReLU's input: eq. (relu.bwd) in the same pass),
    a cell also needs x > 0 to get its dy. ``narrow``: the float32 AVX-512 kernel's index
    tables for rows of at most 16 values (fc_narrow_2x2_tables), else NULL.
    """
    cdef Py_ssize_t p, q
    cdef const floating* r0
    cdef const floating* r1
    cdef floating* d0
    cdef floating* d1
    cdef const floating* g
    cdef floating a, b, c, d, v, top, bottom
    cdef int nan = 0
    cdef bint keep_all = not relu          # without relu, no cell is masked
    if floating is float and _SIMD_2X2:
        return fc_max_backward_2x2_f32(dyp, xp, dxp, H, W, P, Q, relu, narrow)  # 16 at once
    for p in range(P):
        r0 = xp + 2 * p * W
        r1 = r0 + W
        d0 = dxp + 2 * p * W
        d1 = d0 + W
        g = dyp + p * Q
        for q in range(Q):
            a = r0[2 * q]
            b = r0[2 * q + 1]
            c = r1[2 * q]
            d = r1[2 * q + 1]
            v = g[q]
            nan |= (a != a) | (b != b) | (c != c) | (d != d)
            top = b if b > a else a
            bottom = d if d > c else c
            d0[2 * q] = v if (a >= b) & (top >= bottom) & ((a > 0) | keep_all) else 0
            d0[2 * q + 1] = v if (b > a) & (top >= bottom) & ((b > 0) | keep_all) else 0
            d1[2 * q] = v if (c >= d) & (bottom > top) & ((c > 0) | keep_all) else 0
            d1[2 * q + 1] = v if (d > c) & (bottom > top) & ((d > 0) | keep_all) else 0
        if W > 2 * Q:                              # odd W: the last column is in no window
            d0[W - 1] = 0
            d1[W - 1] = 0
    if H > 2 * P:                                  # odd H: nor is the last row
        memset(dxp + (H - 1) * W, 0, W * sizeof(floating))
    return nan      # True: x held NaN, the caller redoes it with _max_plane_backward_plain


cdef _through_relu(dx_arr, const floating[:, :, :, ::1] x, int n_threads):
    """dx_arr in place: 0 where x <= 0 (eq. (relu.bwd) on a pooling gradient, for
    ``through_relu`` on the paths that do not fold it into their own pass), in parallel
    over the planes; returns it."""
    cdef floating[:, :, :, ::1] dx = dx_arr
    cdef Py_ssize_t HW = x.shape[2] * x.shape[3], n_planes = x.shape[0] * x.shape[1], nc
    if n_planes * HW == 0:
        return dx_arr
    cdef const floating* x0 = &x[0, 0, 0, 0]
    cdef floating* dx0 = &dx[0, 0, 0, 0]
    n_threads = threads_for_values(n_planes * HW, n_threads)
    with nogil:
        for nc in prange(n_planes, schedule="static", num_threads=n_threads):
            relu_backward_block(_ISA, dx0 + nc * HW, x0 + nc * HW, dx0 + nc * HW, HW)
    return dx_arr


cdef void _max_rows_2x2(const floating* xp, floating* yp, Py_ssize_t n_pairs, Py_ssize_t W,
                        Py_ssize_t Q) noexcept nogil:
    """(pool.max) for the 2x2, stride 2, unpadded window, one pass: output row j (Q values)
    from input rows 2j and 2j + 1, for n_pairs row pairs. The same folds as _max_plane
    (vertical pairs first, then the two columns), so the same bits, zeros' signs included;
    a NaN is dropped, and raises the 'invalid' flag (_max_forward_share).
    Called on one plane, or, when H is even, on a run of whole planes at once: their rows
    are contiguous and no pair straddles two planes, so the per-plane set-up (row buffer,
    plane indices) disappears, which cost more than the work on 10 x 10 planes."""
    cdef Py_ssize_t j, q
    cdef const floating* r0
    cdef const floating* r1
    cdef floating* yr
    cdef floating a, b, c, d
    for j in range(n_pairs):
        r0 = xp + 2 * j * W
        r1 = r0 + W
        yr = yp + j * Q
        for q in range(Q):
            a = r0[2 * q]
            c = r1[2 * q]
            b = r0[2 * q + 1]
            d = r1[2 * q + 1]
            a = c if c > a else a
            b = d if d > b else b
            yr[q] = b if b > a else a


cdef bint _folds_raise_invalid = True     # see _check_folds_raise_invalid


cdef inline void _max_unit(const floating* x0, floating* y0, floating* vbuf, Py_ssize_t u,
                           bint pair_blocks, Py_ssize_t n_pairs, Py_ssize_t H, Py_ssize_t W,
                           Py_ssize_t P, Py_ssize_t Q, Py_ssize_t kh, Py_ssize_t kw,
                           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                           bint plain) noexcept nogil:     # IN: x0; OUT: y0 (unit u)
    """Work unit u of max_pool2d_forward: plane u, or, with pair_blocks (2x2 stride 2 and
    even H), output rows u*_ROW_PAIRS .. of the N*C*P stacked rows (n_pairs in all), a
    plane of their own (no window straddles two planes). Tuned folds, or with ``plain``
    the teaching loops if the unit holds NaN."""
    cdef Py_ssize_t r0, nr
    if pair_blocks:
        r0 = u * _ROW_PAIRS
        nr = imin(_ROW_PAIRS, n_pairs - r0)
        x0 += 2 * r0 * W
        y0 += r0 * Q
        H = 2 * nr
        P = nr
    else:
        x0 += u * H * W
        y0 += u * P * Q
    if plain:
        if _has_nan(x0, H * W):
            _max_plane_plain(x0, y0, H, W, P, Q, kh, kw, sh, sw, ph, pw, 1, 1)
    elif kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0:
        _max_rows_2x2(x0, y0, P, W, Q)
    else:
        _max_plane(x0, y0, vbuf, H, W, P, Q, kh, kw, sh, sw, ph, pw)


cdef void _max_forward_share(const floating* x0, floating* y0, floating* vbuf,
                             Py_ssize_t u0, Py_ssize_t u1, bint pair_blocks,
                             Py_ssize_t n_pairs, Py_ssize_t H, Py_ssize_t W, Py_ssize_t P,
                             Py_ssize_t Q, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                             Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """One thread's share of max_pool2d_forward: units u0 .. u1 - 1 (_max_unit).

    NaN for free: the tuned folds compare with plain ``>``, which gcc turns into vector max
    instructions; they drop a NaN but, as every IEEE ordered comparison that meets one,
    raise the floating-point 'invalid' flag (a NaN that meets no comparison, alone in its
    window, is copied to y as it is, which is PyTorch's answer). So the flag is cleared
    before the share and tested after it; if it was raised, each unit holding NaN is done
    again by the teaching loops, which follow PyTorch's NaN rule. (Should a build's folds
    not raise the flag, _check_folds_raise_invalid finds out at import and every share is
    scanned.)
    """
    cdef Py_ssize_t u
    feclearexcept(FE_INVALID)
    for u in range(u0, u1):
        _max_unit(x0, y0, vbuf, u, pair_blocks, n_pairs, H, W, P, Q, kh, kw, sh, sw, ph, pw,
                  False)
    if fetestexcept(FE_INVALID) or not _folds_raise_invalid:
        for u in range(u0, u1):
            _max_unit(x0, y0, vbuf, u, pair_blocks, n_pairs, H, W, P, Q, kh, kw, sh, sw, ph,
                      pw, True)


def _check_folds_raise_invalid():
    """True if this build's tuned max folds raise the 'invalid' flag on every NaN they meet
    (tried at each cell of 4 x 38 planes, wide enough for the vector loops and their scalar
    ends, whose every cell is in a window, for 2x2 stride 2, 3x3 stride 2 padding 1 and
    3x3 stride 1); sets the module's switch, so that otherwise every forward scans its
    input for NaN."""
    global _folds_raise_invalid
    cdef Py_ssize_t i, k, s, pad, P, Q, H = 4, W = 38, n = 0
    cdef double[:, ::1] x = np.arange(H * W, dtype=np.float64).reshape(H, W)
    cdef float[:, ::1] xf = np.arange(H * W, dtype=np.float32).reshape(H, W)
    cdef double[::1] y = np.empty(H * W)
    cdef float[::1] yf = np.empty(H * W, dtype=np.float32)
    cdef double[::1] vb = np.empty(64)
    cdef float[::1] vbf = np.empty(64, dtype=np.float32)
    ok = True
    for k, s, pad in ((2, 2, 0), (3, 2, 1), (3, 1, 0)):
        P, Q = out_size(H, k, s, pad), out_size(W, k, s, pad)
        for i in range(H * W):
            x[i // W, i % W] = np.nan                       # one NaN, at cell i
            xf[i // W, i % W] = np.nan
            feclearexcept(FE_INVALID)
            if k == 2:
                _max_rows_2x2(&x[0, 0], &y[0], P, W, Q)
            else:
                _max_plane(&x[0, 0], &y[0], &vb[0], H, W, P, Q, k, k, s, s, pad, pad)
            n = fetestexcept(FE_INVALID) != 0
            feclearexcept(FE_INVALID)
            if k == 2:
                _max_rows_2x2(&xf[0, 0], &yf[0], P, W, Q)
            else:
                _max_plane(&xf[0, 0], &yf[0], &vbf[0], H, W, P, Q, k, k, s, s, pad, pad)
            ok = ok and n and fetestexcept(FE_INVALID) != 0
            x[i // W, i % W] = i
            xf[i // W, i % W] = i
    _folds_raise_invalid = ok
    return ok


def _set_folds_raise_invalid(bint value):
    """Trust the 'invalid' flag (True) or scan every share for NaN (False): for the tests,
    which run both ways; _check_folds_raise_invalid() restores this build's answer."""
    global _folds_raise_invalid
    _folds_raise_invalid = value


_check_folds_raise_invalid()


def max_pool2d_forward(const floating[:, :, :, ::1] x, kernel_size, stride, padding,
                       int n_threads, bint return_indices=False, dilation=(1, 1),
                       bint ceil_mode=False):
    """Max pooling, notes eq. (pool.max); padding acts as -inf, as in PyTorch.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64, C-contiguous (may be read-only)
    kernel_size, stride, padding : (int, int)
        (kh, kw), (sh, sw), (ph, pw); ph <= kh // 2 and pw <= kw // 2 (checked by functional).
    n_threads : int
        OpenMP threads; the result does not depend on it.
    return_indices : bool
        Also return each window's argmax, for max_pool2d_backward(indices=...).
    dilation : (int, int)
    ceil_mode : bool
        With dilation > 1, or a ceil_mode window past the padded input, every plane is done
        by the teaching loops (_max_dilated_planes).

    Returns
    -------
    y : ndarray (N, C, P, Q), x's dtype; P, Q by eq. (pool.out).
    indices : ndarray (N, C, P, Q) int64, only with return_indices: the flat index
        ih*W + iw in its (n, c) plane of each window's argmax (as PyTorch's return_indices),
        the first maximum in row-major window order.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t kh, kw, sh, sw, ph, pw, P, Q, nc
    kh, kw, sh, sw, ph, pw, P, Q = _pool_geometry("max_pool2d_forward", x.shape, kernel_size,
                                                  stride, padding, None, dilation, ceil_mode)
    cdef Py_ssize_t dh = dilation[0], dw = dilation[1]
    if not _is_plain_geometry(H, W, kh, kw, sh, sw, ph, pw, P, Q, tuple(dilation)):
        return _max_dilated_planes(x, None, kh, kw, sh, sw, ph, pw, dh, dw, P, Q, n_threads,
                                   return_indices)
    if return_indices:
        return _max_forward_with_indices(x, kh, kw, sh, sw, ph, pw, P, Q, n_threads)
    dtype = np.float32 if floating is float else np.float64
    y_arr = np.empty((N, C, P, Q), dtype=dtype)
    n_threads = threads_for_values(N * C * H * W, n_threads)
    cdef floating[:, :, :, ::1] y = y_arr
    cdef const floating* x0 = &x[0, 0, 0, 0]
    cdef floating* y0 = &y[0, 0, 0, 0]
    # 2x2 stride 2 with even H: blocks of _ROW_PAIRS output rows over all planes (no row
    # buffer, no per-plane set-up); otherwise one plane per unit.
    cdef bint pair_blocks = (kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0
                             and pw == 0 and H % 2 == 0)
    cdef Py_ssize_t n_pairs = N * C * P, t
    cdef Py_ssize_t n_units = (n_pairs + _ROW_PAIRS - 1) // _ROW_PAIRS if pair_blocks else N * C
    # One row buffer per thread; which thread uses which buffer does not change any result.
    # Rows padded to whole 64-byte lines and one more, so two threads never write to one
    # cache line (as in max_pool2d_backward).
    buf_arr = np.empty((n_threads, (W + 2 * pw) // 16 * 16 + 32), dtype=dtype)
    cdef floating[:, ::1] buf = buf_arr
    with nogil:
        # thread t's share: units [t*n_units // n_threads, (t+1)*n_units // n_threads)
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            _max_forward_share(x0, y0, &buf[t, 0], t * n_units // n_threads,
                               (t + 1) * n_units // n_threads, pair_blocks, n_pairs,
                               H, W, P, Q, kh, kw, sh, sw, ph, pw)
    return y_arr


def max_pool2d_backward(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                        kernel_size, stride, padding, int n_threads, indices=None,
                        dilation=(1, 1), bint ceil_mode=False, bint through_relu=False):
    """Gradient of :func:`max_pool2d_forward`: each dy goes to its window's argmax (pool.max).

    The argmax is recomputed from x (module docstring, "Backward"), or taken from
    ``indices``, as the forward returned them (then only dx = 0 and the scatter remain, as
    in PyTorch's backward); ties go to the first maximum in row-major window order, as in
    PyTorch; padding never wins, and a window whose real cells are all -inf sends its
    gradient to its first real cell; overlapping windows add up. float32 planes must hold
    fewer than 2**31 values (int32 indices).

    Parameters
    ----------
    dy : ndarray (N, C, P, Q)
    x : ndarray (N, C, H, W), same dtype
    kernel_size, stride, padding : (int, int)
    n_threads : int
    indices : ndarray (N, C, P, Q) int64, C-contiguous, or None
    through_relu : bool
        x is the output of a ReLU: return the gradient of the ReLU's input instead, i.e.
        also 0 wherever x is not > 0 (eq. (relu.bwd)); the 2x2 stride-2 kernels fold
        this into their one pass, the other paths add a pass over dx.

    Returns
    -------
    dx : ndarray (N, C, H, W), x's dtype.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t kh, kw, sh, sw, ph, pw, P, Q, nc
    kh, kw, sh, sw, ph, pw, P, Q = _pool_geometry("max_pool2d_backward", x.shape, kernel_size,
                                                  stride, padding, dy.shape, dilation,
                                                  ceil_mode)
    cdef Py_ssize_t dh = dilation[0], dw = dilation[1]
    if indices is not None:
        dx_arr = _max_backward_from_indices(dy, indices, H, W, n_threads)
        return _through_relu(dx_arr, x, n_threads) if through_relu else dx_arr
    if not _is_plain_geometry(H, W, kh, kw, sh, sw, ph, pw, P, Q, tuple(dilation)):
        dx_arr = _max_dilated_planes(x, dy, kh, kw, sh, sw, ph, pw, dh, dw, P, Q, n_threads,
                                     False)
        return _through_relu(dx_arr, x, n_threads) if through_relu else dx_arr
    if floating is float and H * W + pw > INT32_MAX:
        # float32 keeps the argmax as an int32 flat index into the plane (see index_t)
        raise ValueError(f"max_pool2d_backward: float32 planes of 2**31 values or more are "
                         f"not supported, got {H}x{W}")
    cdef bint tile2x2 = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
    dtype = np.float32 if floating is float else np.float64
    dx_arr = np.empty((N, C, H, W), dtype=dtype)
    n_threads = threads_for_values(N * C * H * W, n_threads)
    cdef floating[:, :, :, ::1] dx = dx_arr
    # planes are contiguous: plane nc starts at nc*H*W (no nc // C, nc % C divisions)
    cdef const floating* x0 = &x[0, 0, 0, 0]
    cdef const floating* dy0 = &dy[0, 0, 0, 0]
    cdef floating* dx0 = &dx[0, 0, 0, 0]
    cdef Py_ssize_t n_pairs = N * C * P, blk, np0
    cdef fc_narrow_2x2 tables               # the narrow-row kernel's, made once per call
    cdef const fc_narrow_2x2* narrow = NULL
    if floating is float and tile2x2 and _SIMD_2X2 and W % 2 == 0 and W <= 16:
        fc_narrow_2x2_tables(W, &tables)
        narrow = &tables
    if tile2x2:
        # No scratch at all: the dozen NumPy calls that set up the buffers below cost
        # more than this kernel on small layers. With even H the planes are one tall plane
        # of N*C*P row pairs (no pair straddles two planes), cut into blocks of _ROW_PAIRS.
        with nogil:
            if H % 2 == 0:
                for blk in prange((n_pairs + _ROW_PAIRS - 1) // _ROW_PAIRS, schedule="static",
                                  num_threads=n_threads):
                    np0 = imin(_ROW_PAIRS, n_pairs - blk * _ROW_PAIRS)
                    if _max_plane_backward_2x2(dy0 + blk * _ROW_PAIRS * Q,
                                               x0 + 2 * blk * _ROW_PAIRS * W,
                                               dx0 + 2 * blk * _ROW_PAIRS * W, 2 * np0, W,
                                               np0, Q, through_relu, narrow):
                        _max_plane_backward_plain(dy0 + blk * _ROW_PAIRS * Q,      # NaN
                                                  x0 + 2 * blk * _ROW_PAIRS * W,
                                                  dx0 + 2 * blk * _ROW_PAIRS * W, 2 * np0, W,
                                                  np0, Q, 2, 2, 2, 2, 0, 0, 1, 1)
                        if through_relu:
                            relu_backward_block(_ISA, dx0 + 2 * blk * _ROW_PAIRS * W,
                                                x0 + 2 * blk * _ROW_PAIRS * W,
                                                dx0 + 2 * blk * _ROW_PAIRS * W, 2 * np0 * W)
            else:
                for nc in prange(N * C, schedule="static", num_threads=n_threads):
                    if _max_plane_backward_2x2(dy0 + nc * P * Q, x0 + nc * H * W,
                                               dx0 + nc * H * W, H, W, P, Q, through_relu,
                                               narrow):
                        _max_plane_backward_plain(dy0 + nc * P * Q, x0 + nc * H * W,
                                                  dx0 + nc * H * W, H, W, P, Q,
                                                  2, 2, 2, 2, 0, 0, 1, 1)
                        if through_relu:
                            relu_backward_block(_ISA, dx0 + nc * H * W, x0 + nc * H * W,
                                                dx0 + nc * H * W, H * W)
        return dx_arr
    _max_backward_by_argmax(x, dy0, dx0, kh, kw, sh, sw, ph, pw, P, Q, n_threads)
    return _through_relu(dx_arr, x, n_threads) if through_relu else dx_arr


def _argmax_scratch(int n_threads, dtype, Py_ssize_t H, Py_ssize_t W, Py_ssize_t P,
                    Py_ssize_t Q, Py_ssize_t sw, Py_ssize_t pw):
    """Per-thread scratch of _max_plane_argmax, and its bounds: (buf, hbest, hidx, widx,
    ymax, bounds, L).

    Per thread: the split row (sw phases of L values; -inf where no real column lands, and
    _split_row never writes there), the horizontal maxima and argmaxes (H*Q each), the
    windows' argmaxes widx and maxima ymax (P*Q each; ymax is only used by the backward),
    the indices int32 for float32 and int64 for float64 (see index_t). Separate arrays:
    before it enters a vectorised loop, gcc checks at run time that they do not overlap.
    Each thread's row leaves at least 16 unused values (>= 64 bytes) before the next
    thread's, so two threads never write to the same cache line (false sharing:
    docs/performance.md). bounds: _split_row's range of j for each column phase t (the same
    for every row).
    """
    cdef Py_ssize_t L = (W + 2 * pw + sw - 1) // sw + 1
    itype = np.int32 if dtype == np.float32 else np.int64
    pad = lambda size: (size // 16 + 2) * 16
    t_arr = np.arange(sw)
    lo_arr = np.maximum(0, -((t_arr - pw) // sw))            # first j: j*sw + t - pw >= 0
    hi_arr = np.minimum(L, np.maximum(lo_arr, (W - 1 - t_arr + pw) // sw + 1))  # ... < W
    return (np.full((n_threads, pad(sw * L)), -np.inf, dtype=dtype),
            np.empty((n_threads, pad(H * Q)), dtype=dtype),
            np.empty((n_threads, pad(H * Q)), dtype=itype),
            np.empty((n_threads, pad(P * Q)), dtype=itype),
            np.empty((n_threads, pad(P * Q)), dtype=dtype),
            np.ascontiguousarray(np.stack([lo_arr, hi_arr], axis=1).ravel(), dtype=np.intp),
            L)


cdef inline void _plane_backward_by_argmax(
        const floating* xp, const floating* dyp, floating* dxp,
        floating* rowbuf, floating* hbest, index_t* hidx, index_t* widx, floating* ymax,
        const Py_ssize_t* bounds, Py_ssize_t H, Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q,
        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
        Py_ssize_t pw, Py_ssize_t L) noexcept nogil:    # IN: xp, dyp; OUT: dxp (one plane)
    """The gradient of one plane, with one thread's scratch: the argmaxes
    (_max_plane_argmax), then dy scattered to them (_scatter_plane); a plane holding NaN
    goes to the teaching loops, which follow PyTorch's NaN rule."""
    if _has_nan(xp, H * W):
        _max_plane_backward_plain(dyp, xp, dxp, H, W, P, Q, kh, kw, sh, sw, ph, pw, 1, 1)
        return
    _max_plane_argmax(xp, rowbuf, hbest, hidx, widx, ymax, bounds, H, W, P, Q, kh, kw,
                      sh, sw, ph, pw, L)
    _scatter_plane(dyp, widx, dxp, H * W, P * Q)


cdef inline void _plane_forward_with_indices(
        const floating* xp, floating* yp, int64_t* indp,
        floating* rowbuf, floating* hbest, index_t* hidx, index_t* widx,
        const Py_ssize_t* bounds, Py_ssize_t H, Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q,
        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
        Py_ssize_t pw, Py_ssize_t L) noexcept nogil:    # IN: xp; OUT: yp, indp (one plane)
    """The maxima and the int64 argmaxes of one plane, with one thread's scratch; a plane
    holding NaN goes to the teaching loops."""
    if _has_nan(xp, H * W):
        _max_plane_indices_plain(xp, yp, indp, H, W, P, Q, kh, kw, sh, sw, ph, pw, 1, 1)
        return
    _max_plane_argmax(xp, rowbuf, hbest, hidx, widx, yp, bounds, H, W, P, Q, kh, kw, sh, sw,
                      ph, pw, L)
    _widen(widx, indp, P * Q)


cdef _max_backward_by_argmax(const floating[:, :, :, ::1] x, const floating* dy0,
                             floating* dx0, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                             Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t P,
                             Py_ssize_t Q, int n_threads):
    """max_pool2d_backward without indices, any window but 2x2 stride 2: per (n, c) plane,
    _plane_backward_by_argmax. dy0: (N, C, P, Q), dx0: (N, C, H, W), C-contiguous."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t nc, L
    cdef int t
    dtype = np.float32 if floating is float else np.float64
    buf_arr, hbest_arr, hidx_arr, widx_arr, ymax_arr, bounds_arr, L = _argmax_scratch(
        n_threads, dtype, H, W, P, Q, sw, pw)
    cdef const Py_ssize_t[::1] bounds = bounds_arr
    cdef floating[:, ::1] buf = buf_arr
    cdef floating[:, ::1] hbest = hbest_arr
    cdef floating[:, ::1] ymax = ymax_arr
    cdef int32_t[:, ::1] hidx32, widx32          # the index_t arrays: only one pair is used
    cdef int64_t[:, ::1] hidx64, widx64
    if floating is float:
        hidx32, widx32 = hidx_arr, widx_arr
    else:
        hidx64, widx64 = hidx_arr, widx_arr
    cdef const floating* x0 = &x[0, 0, 0, 0]     # planes are contiguous: plane nc at nc*H*W
    with nogil:
        for nc in prange(N * C, schedule="static", num_threads=n_threads):
            t = threadid()
            if floating is float:
                _plane_backward_by_argmax(x0 + nc * H * W, dy0 + nc * P * Q, dx0 + nc * H * W,
                                          &buf[t, 0], &hbest[t, 0], &hidx32[t, 0],
                                          &widx32[t, 0], &ymax[t, 0], &bounds[0],
                                          H, W, P, Q, kh, kw, sh, sw, ph, pw, L)
            else:
                _plane_backward_by_argmax(x0 + nc * H * W, dy0 + nc * P * Q, dx0 + nc * H * W,
                                          &buf[t, 0], &hbest[t, 0], &hidx64[t, 0],
                                          &widx64[t, 0], &ymax[t, 0], &bounds[0],
                                          H, W, P, Q, kh, kw, sh, sw, ph, pw, L)


cdef _max_forward_with_indices(const floating[:, :, :, ::1] x, Py_ssize_t kh, Py_ssize_t kw,
                               Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                               Py_ssize_t P, Py_ssize_t Q, int n_threads):
    """max_pool2d_forward(..., return_indices=True): (y, indices), per (n, c) plane
    _plane_forward_with_indices."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t nc, L
    cdef int t
    if floating is float and H * W + pw > INT32_MAX:
        raise ValueError(f"max_pool2d_forward: float32 planes of 2**31 values or more are "
                         f"not supported, got {H}x{W}")
    dtype = np.float32 if floating is float else np.float64
    y_arr = np.empty((N, C, P, Q), dtype=dtype)
    ind_arr = np.empty((N, C, P, Q), dtype=np.int64)
    cdef floating* y0
    cdef floating[:, :, :, ::1] y = y_arr
    cdef int64_t[:, :, :, ::1] ind = ind_arr
    n_threads = threads_for_values(N * C * H * W, n_threads)
    buf_arr, hbest_arr, hidx_arr, widx_arr, _, bounds_arr, L = _argmax_scratch(
        n_threads, dtype, H, W, P, Q, sw, pw)
    cdef const Py_ssize_t[::1] bounds = bounds_arr
    cdef floating[:, ::1] buf = buf_arr
    cdef floating[:, ::1] hbest = hbest_arr
    cdef int32_t[:, ::1] hidx32, widx32          # the index_t arrays: only one pair is used
    cdef int64_t[:, ::1] hidx64, widx64
    if floating is float:
        hidx32, widx32 = hidx_arr, widx_arr
    else:
        hidx64, widx64 = hidx_arr, widx_arr
    cdef const floating* x0 = &x[0, 0, 0, 0]     # planes are contiguous: plane nc at nc*H*W
    y0 = &y[0, 0, 0, 0]
    cdef int64_t* ind0 = &ind[0, 0, 0, 0]
    with nogil:
        for nc in prange(N * C, schedule="static", num_threads=n_threads):
            t = threadid()
            if floating is float:
                _plane_forward_with_indices(x0 + nc * H * W, y0 + nc * P * Q, ind0 + nc * P * Q,
                                            &buf[t, 0], &hbest[t, 0], &hidx32[t, 0],
                                            &widx32[t, 0], &bounds[0],
                                            H, W, P, Q, kh, kw, sh, sw, ph, pw, L)
            else:
                _plane_forward_with_indices(x0 + nc * H * W, y0 + nc * P * Q, ind0 + nc * P * Q,
                                            &buf[t, 0], &hbest[t, 0], &hidx64[t, 0],
                                            &widx64[t, 0], &bounds[0],
                                            H, W, P, Q, kh, kw, sh, sw, ph, pw, L)
    return y_arr, ind_arr


cdef _max_dilated_planes(const floating[:, :, :, ::1] x, dy_arr, Py_ssize_t kh,
                         Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                         Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t P,
                         Py_ssize_t Q, int n_threads, bint return_indices):
    """Max pooling with dilation, or with ceil_mode windows past the padded input: the
    teaching loops on every plane, in parallel over the planes. dy_arr None: the forward,
    y (and the int64 indices); else the gradient dx from dy_arr (N, C, P, Q)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], nc
    dtype = np.float32 if floating is float else np.float64
    n_threads = threads_for_values(N * C * H * W, n_threads)
    cdef const floating* x0 = &x[0, 0, 0, 0]
    cdef const floating[:, :, :, ::1] dy
    cdef floating[:, :, :, ::1] out
    cdef int64_t[:, :, :, ::1] ind
    if dy_arr is not None:
        dy = dy_arr
        out_arr = np.empty((N, C, H, W), dtype=dtype)
        out = out_arr
        with nogil:
            for nc in prange(N * C, schedule="static", num_threads=n_threads):
                _max_plane_backward_plain(&dy[0, 0, 0, 0] + nc * P * Q, x0 + nc * H * W,
                                          &out[0, 0, 0, 0] + nc * H * W, H, W, P, Q,
                                          kh, kw, sh, sw, ph, pw, dh, dw)
        return out_arr
    out_arr = np.empty((N, C, P, Q), dtype=dtype)
    out = out_arr
    if return_indices:
        ind_arr = np.empty((N, C, P, Q), dtype=np.int64)
    else:
        ind_arr = np.empty((1, 1, 1, 1), dtype=np.int64)
    ind = ind_arr
    with nogil:
        for nc in prange(N * C, schedule="static", num_threads=n_threads):
            if return_indices:
                _max_plane_indices_plain(x0 + nc * H * W, &out[0, 0, 0, 0] + nc * P * Q,
                                         &ind[0, 0, 0, 0] + nc * P * Q, H, W, P, Q,
                                         kh, kw, sh, sw, ph, pw, dh, dw)
            else:
                _max_plane_plain(x0 + nc * H * W, &out[0, 0, 0, 0] + nc * P * Q, H, W, P, Q,
                                 kh, kw, sh, sw, ph, pw, dh, dw)
    return (out_arr, ind_arr) if return_indices else out_arr


cdef _max_backward_from_indices(const floating[:, :, :, ::1] dy, indices, Py_ssize_t H,
                                Py_ssize_t W, int n_threads):
    """max_pool2d_backward(..., indices=...): per plane dx = 0, then dx[indices] += dy
    (_scatter_plane); an index outside its plane raises ValueError (dx is not returned)."""
    cdef const int64_t[:, :, :, ::1] ind = indices
    cdef Py_ssize_t N = dy.shape[0], C = dy.shape[1], PQ = dy.shape[2] * dy.shape[3], nc
    cdef Py_ssize_t bad = 0
    if not (ind.shape[0] == N and ind.shape[1] == C and ind.shape[2] == dy.shape[2]
            and ind.shape[3] == dy.shape[3]):
        raise ValueError(f"max_pool2d_backward: indices must have dy's shape "
                         f"{(N, C, dy.shape[2], dy.shape[3])}, got {indices.shape}")
    dx_arr = np.empty((N, C, H, W), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, :, :, ::1] dx = dx_arr
    n_threads = threads_for_values(N * C * H * W, n_threads)
    with nogil:
        for nc in prange(N * C, schedule="static", num_threads=n_threads):
            bad += _scatter_plane(&dy[0, 0, 0, 0] + nc * PQ, &ind[0, 0, 0, 0] + nc * PQ,
                                  &dx[0, 0, 0, 0] + nc * H * W, H * W, PQ)
    if bad:
        raise ValueError(f"max_pool2d_backward: {bad} indices lie outside their {H}x{W} "
                         f"plane (they must be max_pool2d(..., return_indices=True)'s)")
    return dx_arr


# --------------------------------------------------------------------------- average pooling

cdef inline Py_ssize_t _avg_count(Py_ssize_t i, Py_ssize_t size, Py_ssize_t k, Py_ssize_t s,
                                  Py_ssize_t pad, bint count_include_pad) noexcept nogil:
    """Rows (or columns) of window i that count in the divisor D of (pool.avg), PyTorch's rule:
    clipped to the padded input if count_include_pad, else to the real input."""
    cdef Py_ssize_t start = i * s - pad
    if count_include_pad:
        return imin(start + k, size + pad) - start
    return imin(start + k, size) - imax(start, 0)


cdef void _avg_plane(const floating* xp, floating* yp, double* vbuf, const double* inv_rows,
                     const double* inv_cols, Py_ssize_t H, Py_ssize_t W, Py_ssize_t P,
                     Py_ssize_t Q, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                     Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t pr) noexcept nogil:
    """One (n, c) plane of (pool.avg): xp (H, W) -> yp (P, Q), separably, sums in double.

    vbuf holds pw + W + pr doubles whose pw cells on the left and pr on the right are 0
    (zero padding; pr > pw where ceil_mode adds a window past the padded input);
    D[p, q] = 1 / (inv_rows[p] * inv_cols[q]) (the window is a rectangle), precomputed.
    """
    cdef Py_ssize_t p, q, s, ih, iw, h0, h1, i
    cdef const floating* row
    cdef double* v = vbuf + pw
    cdef double acc, inv_r
    for i in range(pw):
        vbuf[i] = 0
    for i in range(pr):
        v[W + i] = 0
    for p in range(P):
        h0 = imax(p * sh - ph, 0)                 # (never empty, ceil_mode included)
        h1 = imin(p * sh - ph + kh, H)
        inv_r = inv_rows[p]
        row = xp + h0 * W
        for iw in range(W):
            v[iw] = row[iw]
        for ih in range(h0 + 1, h1):
            row = xp + ih * W
            for iw in range(W):
                v[iw] += row[iw]
        if kw == 2 and sw == 2:
            for q in range(Q):
                yp[p * Q + q] = <floating>((vbuf[2 * q] + vbuf[2 * q + 1])
                                           * (inv_r * inv_cols[q]))
        else:
            for q in range(Q):
                acc = vbuf[q * sw]
                for s in range(1, kw):
                    acc = acc + vbuf[q * sw + s]
                yp[p * Q + q] = <floating>(acc * (inv_r * inv_cols[q]))


cdef void _avg_plane_backward(const floating* dyp, floating* dxp, double* buf, floating* fbuf,
                              const double* inv_rows, const double* inv_cols,
                              const Py_ssize_t* first_p, const Py_ssize_t* last_p,
                              Py_ssize_t H, Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q,
                              Py_ssize_t kw, Py_ssize_t sw, Py_ssize_t pw,
                              Py_ssize_t pr) noexcept nogil:
    """One plane of the (pool.avg) gradient: dxp[cell] = sum of dy[p, q] / D[p, q] over the
    windows that contain the cell; separable, and each dx row is written exactly once.

    1. horizontal scatter: G[p, j] = sum over the windows q of row p that cover padded
       column j of dy[p, q] / D[p, q]  (G: P rows of pw + W + pr doubles, at buf), and the
       real columns of each G row once more in x's dtype (fbuf, P rows of W);
    2. vertical gather: dx[ih, :] = sum of G[p, pw:pw + W] over the windows p that cover
       row ih, ascending p (a fixed order). A row covered by one window is a memcpy of
       its fbuf row (the usual case: 2x2 stride 2, and half the rows of 3x3 stride 2).
       Writing rows once (rather than zeroing dx and adding each window into it) saves a
       read-modify-write pass over dx.
    buf holds P*(pw + W + pr) + W doubles; the last W are scratch for rows in 3+ windows.
    Row ih is covered by the windows first_p[ih] .. last_p[ih] (none if first > last), and
    1 / D[p, q] = inv_rows[p] * inv_cols[q]: both precomputed once per call, since integer
    divisions in this per-plane loop cost more than the arithmetic.
    """
    cdef Py_ssize_t Wp = pw + W + pr, p, q, s, ih, iw, p_lo, p_hi
    cdef double g, inv_r, carry
    cdef double* grow
    cdef floating* frow
    cdef const double* g0
    cdef const double* g1
    cdef double* t = buf + P * Wp
    cdef floating* drow
    for p in range(P):
        grow = buf + p * Wp
        inv_r = inv_rows[p]
        # The common windows write each cell of the row once, without a read-modify-write
        # chain through memory (3x3 stride 2: the shared column gets the previous g + g).
        if kw == 2 and sw == 2:
            for q in range(Q):
                g = dyp[p * Q + q] * (inv_r * inv_cols[q])
                grow[2 * q] = g
                grow[2 * q + 1] = g
            memset(grow + 2 * Q, 0, (Wp - 2 * Q) * sizeof(double))
        elif kw == 3 and sw == 2:
            carry = 0
            for q in range(Q):
                g = dyp[p * Q + q] * (inv_r * inv_cols[q])
                grow[2 * q] = carry + g
                grow[2 * q + 1] = g
                carry = g
            grow[2 * Q] = carry
            memset(grow + 2 * Q + 1, 0, (Wp - 2 * Q - 1) * sizeof(double))
        else:
            memset(grow, 0, Wp * sizeof(double))
            for q in range(Q):
                g = dyp[p * Q + q] * (inv_r * inv_cols[q])
                for s in range(kw):
                    grow[q * sw + s] += g
        frow = fbuf + p * W
        for iw in range(W):
            frow[iw] = <floating>grow[pw + iw]
    for ih in range(H):
        p_lo = first_p[ih]
        p_hi = last_p[ih]
        drow = dxp + ih * W
        if p_lo > p_hi:                            # a row no window covers (stride > kernel)
            memset(drow, 0, W * sizeof(floating))
        elif p_lo == p_hi:
            memcpy(drow, fbuf + p_lo * W, W * sizeof(floating))
        elif p_hi == p_lo + 1:
            g0 = buf + p_lo * Wp + pw
            g1 = g0 + Wp
            for iw in range(W):
                drow[iw] = <floating>(g0[iw] + g1[iw])
        else:
            g0 = buf + p_lo * Wp + pw
            for iw in range(W):
                t[iw] = g0[iw]
            for p in range(p_lo + 1, p_hi + 1):
                g0 = buf + p * Wp + pw
                for iw in range(W):
                    t[iw] += g0[iw]
            for iw in range(W):
                drow[iw] = <floating>t[iw]


cdef void _avg_plane_backward_2x2(const floating* dyp, floating* dxp, Py_ssize_t H,
                                  Py_ssize_t W, Py_ssize_t P, Py_ssize_t Q) noexcept nogil:
    """_avg_plane_backward for the 2x2, stride 2, unpadded window (D = 4 everywhere): each
    window's 4 cells get dy / 4; the second row of each pair is a copy of the first."""
    cdef Py_ssize_t p, q
    cdef floating* d0
    cdef floating v
    for p in range(P):
        d0 = dxp + 2 * p * W
        for q in range(Q):
            v = <floating>(dyp[p * Q + q] * 0.25)
            d0[2 * q] = v
            d0[2 * q + 1] = v
        if W > 2 * Q:                              # odd W: the last column is in no window
            d0[W - 1] = 0
        memcpy(d0 + W, d0, W * sizeof(floating))
    if H > 2 * P:                                  # odd H: nor is the last row
        memset(dxp + (H - 1) * W, 0, W * sizeof(floating))


cdef void _global_avg_plane(const floating* xp, floating* yp, Py_ssize_t HW) noexcept nogil:
    """Global average pooling (the window is the whole plane): yp[0] = sum(xp[:HW]) / HW.

    The plane is contiguous; 8 lanes (lane k sums the i with i % 8 == k), added in a fixed
    order, let gcc vectorise the sum. Each block of 64 values is first summed in x's dtype
    (8 values per lane: for float32 at most ~7 roundings of 6e-8 each), then added to double
    lanes: converting every value to double made this loop compute-bound, at 2 doubles per
    SSE2 instruction instead of 4 floats.
    """
    cdef double acc[8]
    cdef floating part[8]
    cdef Py_ssize_t b, j, i, k, nblk = HW // 64, done = HW // 64 * 64
    cdef const floating* base
    for k in range(8):
        acc[k] = 0
    for b in range(nblk):
        base = xp + b * 64
        for k in range(8):
            part[k] = base[k]
        for j in range(8, 64, 8):
            for k in range(8):
                part[k] = part[k] + base[j + k]
        for k in range(8):
            acc[k] += part[k]
    for i in range(done, HW):
        acc[(i - done) % 8] += xp[i]
    yp[0] = <floating>((((acc[0] + acc[1]) + (acc[2] + acc[3]))
                        + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) / HW)


cdef void _global_avg_plane_backward(const floating* dyp, floating* dxp,
                                     Py_ssize_t HW) noexcept nogil:
    """Gradient of global average pooling: every cell of the plane gets dy / HW."""
    cdef Py_ssize_t i
    cdef floating g = <floating>(<double>dyp[0] / HW)
    for i in range(HW):
        dxp[i] = g


def _inv_counts(Py_ssize_t size, Py_ssize_t n_out, Py_ssize_t k, Py_ssize_t stride,
                Py_ssize_t pad, bint count_include_pad, divisor=None):
    """1 / (rows, or columns, of each window that count in the divisor D), an (n_out,) array;
    with a divisor (divisor_override for the columns, 1 for the rows), 1 / divisor
    everywhere (inv_rows[p] * inv_cols[q] = 1 / D[p, q])."""
    cdef Py_ssize_t i
    if divisor is not None:
        return np.full(n_out, 1.0 / divisor)
    return np.array([1.0 / _avg_count(i, size, k, stride, pad, count_include_pad)
                     for i in range(n_out)], dtype=np.float64)


def _covering_windows(Py_ssize_t size, Py_ssize_t n_out, Py_ssize_t k, Py_ssize_t stride,
                      Py_ssize_t pad):
    """For each input row i: the first and last window p with p*stride - pad <= i <=
    p*stride - pad + k - 1, clipped to [0, n_out); first > last when no window covers i."""
    i = np.arange(size)
    first = np.maximum(0, -((k - 1 - i - pad) // stride))     # ceil((i + pad - k + 1) / stride)
    last = np.minimum(n_out - 1, (i + pad) // stride)
    return first.astype(np.intp), last.astype(np.intp)


def avg_pool2d_forward(const floating[:, :, :, ::1] x, kernel_size, stride, padding,
                       bint count_include_pad, int n_threads, bint ceil_mode=False,
                       divisor_override=None):
    """Average pooling, notes eq. (pool.avg), with PyTorch's divisor rule.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64, C-contiguous (may be read-only)
    kernel_size, stride, padding : (int, int)
    count_include_pad : bool
        True: padded zeros count in the mean (divide by kh*kw); False: only real cells.
    n_threads : int
    ceil_mode : bool
    divisor_override : int or None
        As the reference's.

    Returns
    -------
    y : ndarray (N, C, P, Q), x's dtype.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t kh, kw, sh, sw, ph, pw, P, Q, nc, pr
    kh, kw, sh, sw, ph, pw, P, Q = _pool_geometry("avg_pool2d_forward", x.shape, kernel_size,
                                                  stride, padding, None, (1, 1), ceil_mode)
    pr = imax(pw, (Q - 1) * sw + kw - W - pw)     # right padding the windows reach
    y_arr = np.empty((N, C, P, Q), dtype=np.float32 if floating is float else np.float64)
    n_threads = threads_for_values(N * C * H * W, n_threads)
    cdef floating[:, :, :, ::1] y = y_arr
    cdef const floating* x0
    cdef floating* y0
    if (P == 1 and Q == 1 and kh == H and kw == W and ph == 0 and pw == 0
            and divisor_override is None):
        # Global average pooling (the window is the whole plane; a padded window with P == 1
        # would not be): planes are contiguous, so plane nc starts at x0 + nc*H*W. Its own
        # loop skips the separable path's buffers and divisor tables (a few us of Python per
        # call) and the nc // C, nc % C index divisions (~40% of a 64-value plane's time).
        x0 = &x[0, 0, 0, 0]
        y0 = &y[0, 0, 0, 0]
        with nogil:
            for nc in prange(N * C, schedule="static", num_threads=n_threads):
                _global_avg_plane(x0 + nc * H * W, y0 + nc, H * W)
        return y_arr
    buf_arr = np.empty((n_threads, pw + W + pr), dtype=np.float64)   # one row per thread
    cdef double[:, ::1] buf = buf_arr
    cdef const double[::1] inv_rows = _inv_counts(H, P, kh, sh, ph, count_include_pad,
                                                  None if divisor_override is None else 1)
    cdef const double[::1] inv_cols = _inv_counts(W, Q, kw, sw, pw, count_include_pad,
                                                  divisor_override)
    with nogil:
        for nc in prange(N * C, schedule="static", num_threads=n_threads):
            _avg_plane(&x[nc // C, nc % C, 0, 0], &y[nc // C, nc % C, 0, 0],
                       &buf[threadid(), 0], &inv_rows[0], &inv_cols[0], H, W, P, Q,
                       kh, kw, sh, sw, ph, pw, pr)
    return y_arr


def avg_pool2d_backward(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                        kernel_size, stride, padding, bint count_include_pad, int n_threads,
                        bint ceil_mode=False, divisor_override=None):
    """Gradient of :func:`avg_pool2d_forward`: dy / D spreads evenly over its window.

    Parameters
    ----------
    dy : ndarray (N, C, P, Q)
    x : ndarray (N, C, H, W) (only its shape and dtype are used)
    kernel_size, stride, padding, count_include_pad, ceil_mode, divisor_override :
        as in :func:`avg_pool2d_forward`
    n_threads : int

    Returns
    -------
    dx : ndarray (N, C, H, W), x's dtype.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t kh, kw, sh, sw, ph, pw, P, Q, nc, pr
    kh, kw, sh, sw, ph, pw, P, Q = _pool_geometry("avg_pool2d_backward", x.shape, kernel_size,
                                                  stride, padding, dy.shape, (1, 1), ceil_mode)
    pr = imax(pw, (Q - 1) * sw + kw - W - pw)     # right padding the windows reach
    cdef bint is_global = (P == 1 and Q == 1 and kh == H and kw == W and ph == 0 and pw == 0
                           and divisor_override is None)
    cdef bint tile2x2 = (kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
                         and 2 * P <= H and 2 * Q <= W and divisor_override is None)
    n_threads = threads_for_values(N * C * H * W, n_threads)
    dx_arr = np.empty((N, C, H, W), dtype=np.float32 if floating is float else np.float64)
    # per thread: the P rows of G and one scratch row (see _avg_plane_backward)
    cdef bint no_buffers = is_global or tile2x2
    buf_arr = np.empty((n_threads, 1 if no_buffers else P * (pw + W + pr) + W), dtype=np.float64)
    fbuf_arr = np.empty((n_threads, 1 if no_buffers else P * W), dtype=dx_arr.dtype)
    cdef floating[:, :, :, ::1] dx = dx_arr
    cdef double[:, ::1] buf = buf_arr
    cdef floating[:, ::1] fbuf = fbuf_arr
    cdef const double[::1] inv_rows = _inv_counts(H, P, kh, sh, ph, count_include_pad,
                                                  None if divisor_override is None else 1)
    cdef const double[::1] inv_cols = _inv_counts(W, Q, kw, sw, pw, count_include_pad,
                                                  divisor_override)
    first_arr, last_arr = _covering_windows(H, P, kh, sh, ph)
    cdef const Py_ssize_t[::1] first_p = first_arr
    cdef const Py_ssize_t[::1] last_p = last_arr
    with nogil:
        for nc in prange(N * C, schedule="static", num_threads=n_threads):
            if is_global:
                _global_avg_plane_backward(&dy[nc // C, nc % C, 0, 0], &dx[nc // C, nc % C, 0, 0],
                                           H * W)
            elif tile2x2:
                _avg_plane_backward_2x2(&dy[nc // C, nc % C, 0, 0], &dx[nc // C, nc % C, 0, 0],
                                        H, W, P, Q)
            else:
                _avg_plane_backward(&dy[nc // C, nc % C, 0, 0], &dx[nc // C, nc % C, 0, 0],
                                    &buf[threadid(), 0], &fbuf[threadid(), 0], &inv_rows[0],
                                    &inv_cols[0], &first_p[0], &last_p[0], H, W, P, Q, kw, sw, pw,
                                    pr)
    return dx_arr


# --------------------------------------------------------------------------- adaptive pooling
# (pool.adapt): window p covers rows hs[p] .. he[p] - 1, hs[p] = floor(p*H/P),
# he[p] = ceil((p + 1)*H/P), columns likewise (tables computed once per call). Plain loop
# nests, one plane per prange iteration: neighbouring windows overlap by at most a row, so
# there is little to share between them.

def _adaptive_tables(Py_ssize_t H, Py_ssize_t W, output_size, op):
    """(P, Q, hs, he, ws, we) of adaptive pooling to output_size, after a guard."""
    P, Q = output_size
    if P < 1 or Q < 1:
        raise ValueError(f"{op}: output_size must be >= 1, got {tuple(output_size)}")
    hs, he = adaptive_ranges(H, P)
    ws, we = adaptive_ranges(W, Q)
    as_intp = lambda a: np.ascontiguousarray(a, dtype=np.intp)
    return P, Q, as_intp(hs), as_intp(he), as_intp(ws), as_intp(we)


cdef void _adaptive_avg_plane(const floating* xp, floating* yp, Py_ssize_t W, Py_ssize_t P,
                              Py_ssize_t Q, const Py_ssize_t* hs, const Py_ssize_t* he,
                              const Py_ssize_t* ws, const Py_ssize_t* we) noexcept nogil:
    """y[p, q] = mean of x over window (p, q), summed in double.  IN: xp; OUT: yp (P, Q)"""
    cdef Py_ssize_t p, q, ih, iw
    cdef double acc
    for p in range(P):
        for q in range(Q):
            acc = 0
            for ih in range(hs[p], he[p]):
                for iw in range(ws[q], we[q]):
                    acc += xp[ih * W + iw]
            yp[p * Q + q] = <floating>(acc / ((he[p] - hs[p]) * (we[q] - ws[q])))


cdef void _adaptive_avg_plane_backward(const floating* dyp, floating* dxp, double* acc,
                                       Py_ssize_t H, Py_ssize_t W, Py_ssize_t P,
                                       Py_ssize_t Q, const Py_ssize_t* hs,
                                       const Py_ssize_t* he, const Py_ssize_t* ws,
                                       const Py_ssize_t* we) noexcept nogil:
    """dx = each window's dy / area added to its cells, in double (acc: H*W scratch),
    windows in row-major order (a fixed order).  IN: dyp (P, Q); OUT: dxp (H, W)"""
    cdef Py_ssize_t p, q, ih, iw
    cdef double g
    memset(acc, 0, H * W * sizeof(double))
    for p in range(P):
        for q in range(Q):
            g = <double>dyp[p * Q + q] / ((he[p] - hs[p]) * (we[q] - ws[q]))
            for ih in range(hs[p], he[p]):
                for iw in range(ws[q], we[q]):
                    acc[ih * W + iw] += g
    for ih in range(H * W):
        dxp[ih] = <floating>acc[ih]


cdef void _adaptive_max_plane(const floating* xp, floating* yp, int64_t* ind, Py_ssize_t W,
                              Py_ssize_t P, Py_ssize_t Q, const Py_ssize_t* hs,
                              const Py_ssize_t* he, const Py_ssize_t* ws,
                              const Py_ssize_t* we) noexcept nogil:
    """y[p, q] = max of window (p, q), ind[p, q] = its argmax, (pool.max)'s rule (_wins:
    the first maximum, or the last NaN).  IN: xp; OUT: yp, ind (P, Q)"""
    cdef Py_ssize_t p, q, ih, iw, best
    cdef floating m, v
    for p in range(P):
        for q in range(Q):
            m = -INFINITY
            best = hs[p] * W + ws[q]
            for ih in range(hs[p], he[p]):
                for iw in range(ws[q], we[q]):
                    v = xp[ih * W + iw]
                    if _wins(v, m):
                        m = v
                        best = ih * W + iw
            yp[p * Q + q] = m
            ind[p * Q + q] = best


def adaptive_avg_pool2d_forward(const floating[:, :, :, ::1] x, output_size, int n_threads):
    """Adaptive average pooling, (pool.adapt): x (N, C, H, W) -> y (N, C, P, Q)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], nc
    cdef Py_ssize_t P, Q
    P, Q, hs_arr, he_arr, ws_arr, we_arr = _adaptive_tables(H, W, output_size,
                                                            "adaptive_avg_pool2d")
    cdef const Py_ssize_t[::1] hs = hs_arr, he = he_arr, ws = ws_arr, we = we_arr
    y_arr = np.empty((N, C, P, Q), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, :, :, ::1] y = y_arr
    n_threads = threads_for_values(N * C * H * W, n_threads)
    if N * C == 0:
        return y_arr
    with nogil:
        for nc in prange(N * C, schedule="static", num_threads=n_threads):
            _adaptive_avg_plane(&x[0, 0, 0, 0] + nc * H * W, &y[0, 0, 0, 0] + nc * P * Q, W,
                                P, Q, &hs[0], &he[0], &ws[0], &we[0])
    return y_arr


def adaptive_avg_pool2d_backward(const floating[:, :, :, ::1] dy,
                                 const floating[:, :, :, ::1] x, output_size, int n_threads):
    """Gradient of :func:`adaptive_avg_pool2d_forward`: dy (N, C, P, Q) -> dx like x."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], nc
    cdef Py_ssize_t P, Q
    P, Q, hs_arr, he_arr, ws_arr, we_arr = _adaptive_tables(H, W, output_size,
                                                            "adaptive_avg_pool2d_backward")
    dy_shape = (dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3])
    if dy_shape != (N, C, P, Q):
        raise ValueError(f"adaptive_avg_pool2d_backward: dy must have shape {(N, C, P, Q)}, "
                         f"got {dy_shape}")
    cdef const Py_ssize_t[::1] hs = hs_arr, he = he_arr, ws = ws_arr, we = we_arr
    dx_arr = np.empty((N, C, H, W), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, :, :, ::1] dx = dx_arr
    n_threads = threads_for_values(N * C * H * W, n_threads)
    cdef double[:, ::1] acc = np.empty((n_threads, (H * W // 8 + 2) * 8))  # 64-byte gaps
    if N * C == 0:
        return dx_arr
    with nogil:
        for nc in prange(N * C, schedule="static", num_threads=n_threads):
            _adaptive_avg_plane_backward(&dy[0, 0, 0, 0] + nc * P * Q,
                                         &dx[0, 0, 0, 0] + nc * H * W, &acc[threadid(), 0],
                                         H, W, P, Q, &hs[0], &he[0], &ws[0], &we[0])
    return dx_arr


def adaptive_max_pool2d_forward(const floating[:, :, :, ::1] x, output_size, int n_threads,
                                bint return_indices=False):
    """Adaptive max pooling, (pool.adapt): x (N, C, H, W) -> y (N, C, P, Q), and with
    return_indices the int64 flat argmaxes ih*W + iw in each plane."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], nc
    cdef Py_ssize_t P, Q
    P, Q, hs_arr, he_arr, ws_arr, we_arr = _adaptive_tables(H, W, output_size,
                                                            "adaptive_max_pool2d")
    cdef const Py_ssize_t[::1] hs = hs_arr, he = he_arr, ws = ws_arr, we = we_arr
    y_arr = np.empty((N, C, P, Q), dtype=np.float32 if floating is float else np.float64)
    ind_arr = np.empty((N, C, P, Q), dtype=np.int64)
    cdef floating[:, :, :, ::1] y = y_arr
    cdef int64_t[:, :, :, ::1] ind = ind_arr
    n_threads = threads_for_values(N * C * H * W, n_threads)
    if N * C > 0:
        with nogil:
            for nc in prange(N * C, schedule="static", num_threads=n_threads):
                _adaptive_max_plane(&x[0, 0, 0, 0] + nc * H * W, &y[0, 0, 0, 0] + nc * P * Q,
                                    &ind[0, 0, 0, 0] + nc * P * Q, W, P, Q, &hs[0], &he[0],
                                    &ws[0], &we[0])
    return (y_arr, ind_arr) if return_indices else y_arr


def adaptive_max_pool2d_backward(const floating[:, :, :, ::1] dy,
                                 const floating[:, :, :, ::1] x, output_size, int n_threads,
                                 indices=None):
    """Gradient of :func:`adaptive_max_pool2d_forward`: each dy to its window's argmax
    (``indices``, or found again), then _scatter_plane, as max_pool2d_backward."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    if indices is None:
        _, indices = adaptive_max_pool2d_forward(x, output_size, n_threads, True)
    dy_shape = (dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3])
    if dy_shape != tuple(indices.shape):
        raise ValueError(f"adaptive_max_pool2d_backward: dy must have shape "
                         f"{tuple(indices.shape)}, got {dy_shape}")
    return _max_backward_from_indices(dy, indices, H, W, n_threads)


# --------------------------------------------------------------------------- max unpooling

cdef Py_ssize_t _unpool_plane(const floating* xp, const int64_t* ind, floating* yp,
                              Py_ssize_t PQ, Py_ssize_t HW) noexcept nogil:
    """(pool.unpool) of one plane: yp (HW values) = 0, then yp[ind[i]] = xp[i] in order (a
    later equal index wins, as PyTorch's loop). Indices outside [0, HW) are skipped and
    counted: the number is returned.   IN: xp, ind (PQ); OUT: yp"""
    cdef Py_ssize_t i, bad = 0
    cdef int64_t j
    memset(yp, 0, HW * sizeof(floating))
    for i in range(PQ):
        j = ind[i]
        if j < 0 or j >= HW:
            bad += 1
        else:
            yp[j] = xp[i]
    return bad


cdef Py_ssize_t _unpool_plane_backward(const floating* dyp, const int64_t* ind,
                                       floating* dxp, Py_ssize_t PQ,
                                       Py_ssize_t HW) noexcept nogil:
    """dx[i] = dy[ind[i]] (a gather), i < PQ; an index outside [0, HW) gives 0 and is
    counted.   IN: dyp (HW), ind (PQ); OUT: dxp (PQ)"""
    cdef Py_ssize_t i, bad = 0
    cdef int64_t j
    for i in range(PQ):
        j = ind[i]
        if j < 0 or j >= HW:
            bad += 1
            dxp[i] = 0
        else:
            dxp[i] = dyp[j]
    return bad


def max_unpool2d_forward(const floating[:, :, :, ::1] x, indices, output_hw, int n_threads):
    """Max unpooling, (pool.unpool): x, indices (N, C, P, Q) -> y (N, C, Ho, Wo), zero but
    at the indices. indices: int64, C-contiguous; one outside its plane raises ValueError."""
    cdef const int64_t[:, :, :, ::1] ind = indices
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], PQ = x.shape[2] * x.shape[3], nc
    cdef Py_ssize_t HW = output_hw[0] * output_hw[1], bad = 0
    if tuple(indices.shape) != (x.shape[0], x.shape[1], x.shape[2], x.shape[3]):
        raise ValueError(f"max_unpool2d: indices must have x's shape, got "
                         f"{tuple(indices.shape)}")
    y_arr = np.empty((N, C) + tuple(output_hw),
                     dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, :, :, ::1] y = y_arr
    n_threads = threads_for_values(N * C * HW, n_threads)
    if N * C == 0:
        return y_arr
    with nogil:
        for nc in prange(N * C, schedule="static", num_threads=n_threads):
            bad += _unpool_plane(&x[0, 0, 0, 0] + nc * PQ, &ind[0, 0, 0, 0] + nc * PQ,
                                 &y[0, 0, 0, 0] + nc * HW, PQ, HW)
    if bad:
        raise ValueError(f"max_unpool2d: {bad} indices lie outside the {output_hw[0]}x"
                         f"{output_hw[1]} output plane")
    return y_arr


def max_unpool2d_backward(const floating[:, :, :, ::1] dy, indices, int n_threads):
    """Gradient of :func:`max_unpool2d_forward` w.r.t. x: dx[n, c, p, q] =
    dy[n, c].flat[indices[n, c, p, q]].  dy (N, C, Ho, Wo) -> dx like indices."""
    cdef const int64_t[:, :, :, ::1] ind = indices
    cdef Py_ssize_t N = dy.shape[0], C = dy.shape[1], HW = dy.shape[2] * dy.shape[3], nc
    cdef Py_ssize_t PQ = ind.shape[2] * ind.shape[3], bad = 0
    if ind.shape[0] != N or ind.shape[1] != C:
        raise ValueError(f"max_unpool2d_backward: indices must have dy's (N, C) = {(N, C)}, "
                         f"got {tuple(indices.shape)}")
    dx_arr = np.empty(tuple(indices.shape), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, :, :, ::1] dx = dx_arr
    n_threads = threads_for_values(N * C * HW, n_threads)
    if N * C * PQ == 0:
        return dx_arr
    with nogil:
        for nc in prange(N * C, schedule="static", num_threads=n_threads):
            bad += _unpool_plane_backward(&dy[0, 0, 0, 0] + nc * HW, &ind[0, 0, 0, 0] + nc * PQ,
                                          &dx[0, 0, 0, 0] + nc * PQ, PQ, HW)
    if bad:
        raise ValueError(f"max_unpool2d_backward: {bad} indices lie outside the "
                         f"{dy.shape[2]}x{dy.shape[3]} plane")
    return dx_arr
