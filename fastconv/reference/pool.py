"""Max and average pooling in NumPy: one sliding window per output pixel.

Reference twin of ``fastconv._ext.pool`` (same functions, same signatures); the tests use
it as the oracle. Read it next to the notes' labels:

(conv.out)  P = floor((H + 2*ph - kh) / sh) + 1,  Q = floor((W + 2*pw - kw) / sw) + 1
(pool.out)  with dilation d and ceil_mode: P = rnd((H + 2*ph - d*(kh - 1) - 1) / sh) + 1,
            rnd = ceil with ceil_mode else floor; with ceil_mode the last window must start
            inside the input or its left padding, else P -= 1 (PyTorch's rule)
(pool.max)  y[n,c,p,q] = max_{r,s} xp[n, c, p*sh + r, q*sw + s]   (xp padded with -inf)
            dxp[n, c, p*sh + r*, q*sw + s*] += dy[n,c,p,q]  at the window's argmax (r*, s*),
            the FIRST maximum in row-major window order when there are ties; a window
            holding NaN has the maximum NaN and its argmax at its LAST NaN (as PyTorch)
(pool.avg)  y[n,c,p,q] = sum_{r,s} xp[n, c, p*sh + r, q*sw + s] / D[p, q]  (xp padded with 0)
            dxp[n, c, p*sh + r, q*sw + s] += dy[n,c,p,q] / D[p, q]  for every cell of the window
(pool.adapt) adaptive pooling to (P, Q): window p covers rows floor(p*H/P) .. ceil((p+1)*H/P) - 1
            (columns likewise); max or mean over it, gradients as (pool.max), (pool.avg)
(pool.unpool) max unpooling: y = 0 of shape (N, C, Ho, Wo), then y[n, c].flat[ind[n,c,p,q]] =
            x[n,c,p,q]; its gradient dx[n,c,p,q] = dy[n, c].flat[ind[n,c,p,q]]

Max pooling with dilation (dh, dw) reads the cells p*sh - ph + r*dh (r < kh) of each window.

where ``xp[.., ih + ph, iw + pw] = x[.., ih, iw]``, dx is dxp with the padding cut off, and
the divisor D follows PyTorch (aten/src/ATen/native/cpu/AvgPoolKernel.cpp):

* ``count_include_pad=True``: the window clipped to the PADDED input, so
  ``D = (min(h0 + kh, H + ph) - h0) * (min(w0 + kw, W + pw) - w0)`` with ``h0 = p*sh - ph``.
  With the floor output size a window never runs past the padded border, so D = kh*kw;
  with ceil_mode the last window can, and counts only what lies inside the padded input.
* ``count_include_pad=False``: the number of REAL input cells in the window,
  ``D = (min(h0 + kh, H) - max(h0, 0)) * (min(w0 + kw, W) - max(w0, 0))``.
* ``divisor_override=d``: D = d for every window.

Padding is at most half the window (checked by ``fastconv.functional``), so every window
holds at least one real cell: -inf never wins a max and D is never 0.
"""
import numpy as np

from .activation import relu_backward

__all__ = ["max_pool2d_forward", "max_pool2d_backward",
           "avg_pool2d_forward", "avg_pool2d_backward",
           "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
           "adaptive_max_pool2d_forward", "adaptive_max_pool2d_backward",
           "max_unpool2d_forward", "max_unpool2d_backward", "pool_output_size"]


def pool_output_size(H, k, s, p, d=1, ceil_mode=False):
    """(pool.out): floor (or ceil) ((H + 2p - d*(k - 1) - 1) / s) + 1; with ceil_mode, one
    less if the last window would start past the input and its left padding (PyTorch)."""
    span = H + 2 * p - d * (k - 1) - 1
    P = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (P - 1) * s >= H + p:
        P -= 1
    return P


def _scatter_windows(g, kernel_size, stride, padded_shape):
    """Add each window's gradient back to its cells: dxp[.., p*sh + r, q*sw + s] += g[.., p, q, r, s].

    g (N, C, P, Q, kh, kw) -> dxp (N, C, Hp, Wp). One strided slice per window offset (r, s):
    within a slice the P x Q targets are distinct, so ``+=`` is safe; overlapping windows
    meet across different (r, s) and add up.
    """
    N, C, P, Q, kh, kw = g.shape
    sh, sw = stride
    dxp = np.zeros(padded_shape, dtype=g.dtype)
    for r in range(kh):
        for s in range(kw):
            dxp[:, :, r:r + (P - 1) * sh + 1:sh, s:s + (Q - 1) * sw + 1:sw] += g[:, :, :, :, r, s]
    return dxp


def _taps(P, k, s, pad, d):
    """(P, k) input row (or column) of tap r of window p: p*s - pad + r*d."""
    return np.arange(P)[:, None] * s - pad + np.arange(k)[None, :] * d


def _gather_windows(x, kernel_size, stride, padding, dilation, P, Q, value):
    """Every window's taps, (N, C, P, Q, kh, kw), cells outside x reading ``value``, and
    the (P, Q, kh, kw) mask of the taps inside x. Any dilation, any P, Q (ceil_mode)."""
    N, C, H, W = x.shape
    rows = _taps(P, kernel_size[0], stride[0], padding[0], dilation[0])     # (P, kh)
    cols = _taps(Q, kernel_size[1], stride[1], padding[1], dilation[1])     # (Q, kw)
    inside = (((rows >= 0) & (rows < H))[:, None, :, None]
              & ((cols >= 0) & (cols < W))[None, :, None, :])
    xe = np.concatenate([x.reshape(N, C, H * W), np.full((N, C, 1), value, x.dtype)], axis=2)
    flat = np.where(inside, rows[:, None, :, None] * W + cols[None, :, None, :], H * W)
    return xe[:, :, flat], inside


def _crop(dxp, padding, H, W):
    ph, pw = padding
    return dxp[:, :, ph:ph + H, pw:pw + W]


def _avg_divisor(H, W, kernel_size, stride, padding, count_include_pad, P, Q,
                 divisor_override=None):
    """D[p, q] of eq. (pool.avg), PyTorch's rule (see the module docstring); shape (P, Q)."""
    if divisor_override is not None:
        return np.full((P, Q), float(divisor_override))
    def counts(size, n_out, k, s, pad):
        start = np.arange(n_out) * s - pad                 # first cell of each window
        if count_include_pad:
            return np.minimum(start + k, size + pad) - start   # clipped to the padded input
        return np.minimum(start + k, size) - np.maximum(start, 0)  # real cells only
    rows = counts(H, P, kernel_size[0], stride[0], padding[0])
    cols = counts(W, Q, kernel_size[1], stride[1], padding[1])
    return np.outer(rows, cols)                            # the window is a rectangle


def _argmax(x, kernel_size, stride, padding, P, Q, dilation=(1, 1)):
    """Each window's argmax as the flat index ih*W + iw in its (n, c) plane, (N, C, P, Q)
    int64, PyTorch's rule: the FIRST real cell holding the window's maximum, in row-major
    window order, or, in a window holding NaN, its LAST NaN (PyTorch's loop lets a cell
    replace the maximum if it is greater or NaN).

    (argmax of a boolean is its first True.) Plain np.argmax over the padded window would
    agree except for a window whose real cells are all -inf: there a padded cell would come
    first and the gradient would be lost; PyTorch gives it to the first real cell."""
    N, C, H, W = x.shape
    kh, kw = kernel_size
    win, real = _gather_windows(x, kernel_size, stride, padding, dilation, P, Q, -np.inf)
    win = win.reshape(N, C, P, Q, kh * kw)
    real = real.reshape(1, 1, P, Q, kh * kw)
    first = np.argmax((win == win.max(axis=4, keepdims=True)) & real, axis=4)  # r*kw + s
    nan = np.isnan(win)                                 # padding is -inf, never NaN
    last_nan = kh * kw - 1 - np.argmax(nan[..., ::-1], axis=4)
    first = np.where(nan.any(axis=4), last_nan, first)
    ih = np.arange(P)[:, None] * stride[0] - padding[0] + first // kw * dilation[0]
    iw = np.arange(Q)[None, :] * stride[1] - padding[1] + first % kw * dilation[1]
    ind = ih * W + iw
    # A window with no cell inside x (possible with dilation): y = -inf and PyTorch's index,
    # its first row and column stepped by the dilation until >= 0 (which may lie outside
    # the plane; the backward then sends its gradient nowhere).
    h0 = _first_tap(np.arange(P) * stride[0] - padding[0], dilation[0])
    w0 = _first_tap(np.arange(Q) * stride[1] - padding[1], dilation[1])
    empty = ~real.any(axis=4)
    return np.where(empty, h0[:, None] * W + w0[None, :], ind).astype(np.int64)


def _first_tap(start, d):
    """PyTorch's first tap of a window starting at ``start``: start + k*d >= 0, k minimal."""
    return np.where(start < 0, start + (-start + d - 1) // d * d, start)


def max_pool2d_forward(x, kernel_size, stride, padding, n_threads=None, return_indices=False,
                       dilation=(1, 1), ceil_mode=False):
    """Max pooling, notes eq. (pool.max); padding acts as -inf, as in PyTorch.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    kernel_size, stride, padding : (int, int)
        (kh, kw), (sh, sw), (ph, pw); ph <= kh // 2 and pw <= kw // 2.
    n_threads : ignored (the fast twin uses it)
    return_indices : bool
        Also return each window's argmax (see :func:`_argmax`), for the backward.
    dilation : (int, int)
        Taps p*sh - ph + r*dh of each window (r < kh), columns likewise.
    ceil_mode : bool
        Output size by (pool.out) rounded up; the windows past the input are clipped.

    Returns
    -------
    y : ndarray (N, C, P, Q), x's dtype; P, Q by eq. (pool.out).
    indices : ndarray (N, C, P, Q) int64, only with return_indices.
    """
    N, C, H, W = x.shape
    P = pool_output_size(H, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    Q = pool_output_size(W, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    win, _ = _gather_windows(x, kernel_size, stride, padding, dilation, P, Q, -np.inf)
    y = np.ascontiguousarray(win.max(axis=(4, 5)), dtype=x.dtype)
    if return_indices:
        return y, _argmax(x, kernel_size, stride, padding, P, Q, dilation)
    return y


def _scatter_add(dy, indices, H, W, op):
    """dx (N, C, H, W) = 0, then dx[n, c].flat[indices[n, c, i]] += dy[n, c, i]."""
    N, C = dy.shape[:2]
    flat = np.asarray(indices).reshape(N * C, -1)
    if flat.size and (flat.min() < 0 or flat.max() >= H * W):
        raise ValueError(f"{op}: indices lie outside their {H}x{W} plane "
                         "(they must be the forward's, with return_indices=True)")
    dx = np.zeros((N * C, H * W), dtype=dy.dtype)
    # repeated indices (overlapping windows with one argmax) add up: np.add.at does not
    # buffer, unlike dx[...] += dy.
    np.add.at(dx, (np.arange(N * C)[:, None], flat), dy.reshape(N * C, -1))
    return dx.reshape(N, C, H, W)


def max_pool2d_backward(dy, x, kernel_size, stride, padding, n_threads=None, indices=None,
                        dilation=(1, 1), ceil_mode=False, through_relu=False):
    """Gradient of :func:`max_pool2d_forward`: dy goes to each window's argmax (pool.max).

    The argmax is recomputed from x, or taken from ``indices`` (the forward's, with
    return_indices); on ties it is the first maximum in row-major window order, as in
    PyTorch. Overlapping windows that share their argmax add their gradients.

    Parameters
    ----------
    dy : ndarray (N, C, P, Q)
    x : ndarray (N, C, H, W)
    kernel_size, stride, padding, dilation, ceil_mode : as :func:`max_pool2d_forward`
    n_threads : ignored
    indices : ndarray (N, C, P, Q) of ints, or None
    through_relu : bool
        x is the output of a ReLU: return the gradient of the ReLU's input, the pooling
        gradient where x > 0 and 0 elsewhere (eq. (relu.bwd) applied to it).

    Returns
    -------
    dx : ndarray (N, C, H, W), x's dtype.
    """
    N, C, H, W = x.shape
    P, Q = dy.shape[2:]
    dy = dy.astype(x.dtype, copy=False)
    if indices is None:
        indices = _argmax(x, kernel_size, stride, padding, P, Q, dilation)
        inside = indices < H * W               # not so only for a window with no real cell
        dy, indices = np.where(inside, dy, 0), np.where(inside, indices, 0)
    dx = _scatter_add(dy, indices, H, W, "max_pool2d_backward")
    return relu_backward(dx, x) if through_relu else dx


def avg_pool2d_forward(x, kernel_size, stride, padding, count_include_pad, n_threads=None,
                       ceil_mode=False, divisor_override=None):
    """Average pooling, notes eq. (pool.avg), with PyTorch's divisor rule.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    kernel_size, stride, padding : (int, int)
    count_include_pad : bool
        True: padded zeros count in the mean (divide by kh*kw); False: only real cells.
    n_threads : ignored
    ceil_mode : bool
        Output size by (pool.out) rounded up; windows past the padded input are clipped.
    divisor_override : int or None
        Divide every window's sum by this instead of D.

    Returns
    -------
    y : ndarray (N, C, P, Q), x's dtype.
    """
    N, C, H, W = x.shape
    P = pool_output_size(H, kernel_size[0], stride[0], padding[0], 1, ceil_mode)
    Q = pool_output_size(W, kernel_size[1], stride[1], padding[1], 1, ceil_mode)
    win, _ = _gather_windows(x, kernel_size, stride, padding, (1, 1), P, Q, 0)
    total = win.sum(axis=(4, 5), dtype=np.float64)                      # double: exact enough
    D = _avg_divisor(H, W, kernel_size, stride, padding, count_include_pad, P, Q,
                     divisor_override)
    return np.ascontiguousarray(total / D, dtype=x.dtype)


def avg_pool2d_backward(dy, x, kernel_size, stride, padding, count_include_pad,
                        n_threads=None, ceil_mode=False, divisor_override=None):
    """Gradient of :func:`avg_pool2d_forward`: dy / D spreads evenly over its window.

    Parameters
    ----------
    dy : ndarray (N, C, P, Q)
    x : ndarray (N, C, H, W) (only its shape and dtype are used)
    kernel_size, stride, padding, count_include_pad, ceil_mode, divisor_override :
        as in :func:`avg_pool2d_forward`
    n_threads : ignored

    Returns
    -------
    dx : ndarray (N, C, H, W), x's dtype.
    """
    N, C, H, W = x.shape
    kh, kw = kernel_size
    ph, pw = padding
    P, Q = dy.shape[2:]
    D = _avg_divisor(H, W, kernel_size, stride, padding, count_include_pad, P, Q,
                     divisor_override)
    g = dy / D                                                          # (N, C, P, Q)
    g = np.broadcast_to(g[..., None, None], (N, C, P, Q, kh, kw))       # same for every cell
    Hp = max(H + 2 * ph, (P - 1) * stride[0] + kh)                      # ceil_mode: more
    Wp = max(W + 2 * pw, (Q - 1) * stride[1] + kw)
    dxp = _scatter_windows(g, kernel_size, stride, (N, C, Hp, Wp))
    return np.ascontiguousarray(_crop(dxp, padding, H, W), dtype=x.dtype)


# --------------------------------------------------------------------------- adaptive

def adaptive_ranges(size, n_out):
    """(pool.adapt) window i covers [floor(i*size/n_out), ceil((i+1)*size/n_out))."""
    i = np.arange(n_out)
    return i * size // n_out, -(-(i + 1) * size // n_out)


def _adaptive_windows(x_shape, output_size):
    """(p, q, rows, cols) of every adaptive window, rows and cols as slices (pool.adapt)."""
    H, W = x_shape[2:]
    (h0, h1), (w0, w1) = adaptive_ranges(H, output_size[0]), adaptive_ranges(W, output_size[1])
    for p in range(output_size[0]):
        for q in range(output_size[1]):
            yield p, q, slice(h0[p], h1[p]), slice(w0[q], w1[q])


def adaptive_avg_pool2d_forward(x, output_size, n_threads=None):
    """Adaptive average pooling, notes eq. (pool.adapt): y[n,c,p,q] = mean of x over rows
    h0(p) .. h1(p) - 1 and columns w0(q) .. w1(q) - 1.

    x : ndarray (N, C, H, W); output_size : (P, Q)  ->  y : ndarray (N, C, P, Q)."""
    y = np.empty(x.shape[:2] + tuple(output_size), dtype=x.dtype)
    for p, q, rows, cols in _adaptive_windows(x.shape, output_size):
        y[:, :, p, q] = x[:, :, rows, cols].mean(axis=(2, 3), dtype=np.float64)
    return y


def adaptive_avg_pool2d_backward(dy, x, output_size, n_threads=None):
    """Gradient of :func:`adaptive_avg_pool2d_forward`: dy[p, q] / (window area) to each
    cell of window (p, q); overlapping windows add up.  ->  dx like x."""
    dx = np.zeros(x.shape, dtype=np.float64)
    for p, q, rows, cols in _adaptive_windows(x.shape, output_size):
        area = (rows.stop - rows.start) * (cols.stop - cols.start)
        dx[:, :, rows, cols] += (dy[:, :, p, q] / area)[:, :, None, None]
    return dx.astype(x.dtype)


def _adaptive_argmax(x, output_size):
    """(N, C, P, Q) int64 flat argmax of each adaptive window, (pool.max)'s rule: the first
    maximum in row-major order, or the last NaN."""
    N, C, H, W = x.shape
    ind = np.empty((N, C) + tuple(output_size), dtype=np.int64)
    for p, q, rows, cols in _adaptive_windows(x.shape, output_size):
        win = x[:, :, rows, cols]
        ww = win.shape[3]
        flat = win.reshape(N, C, -1)
        first = np.argmax(flat == flat.max(axis=2, keepdims=True), axis=2)
        nan = np.isnan(flat)
        last_nan = flat.shape[2] - 1 - np.argmax(nan[..., ::-1], axis=2)
        first = np.where(nan.any(axis=2), last_nan, first)
        ind[:, :, p, q] = (rows.start + first // ww) * W + cols.start + first % ww
    return ind


def adaptive_max_pool2d_forward(x, output_size, n_threads=None, return_indices=False):
    """Adaptive max pooling, notes eq. (pool.adapt): the maximum of each window.

    x : ndarray (N, C, H, W); output_size : (P, Q)  ->  y : ndarray (N, C, P, Q), and with
    return_indices the flat argmaxes ih*W + iw (int64), as :func:`max_pool2d_forward`."""
    N, C, H, W = x.shape
    ind = _adaptive_argmax(x, output_size)
    y = np.take_along_axis(x.reshape(N, C, H * W), ind.reshape(N, C, -1), axis=2)
    y = y.reshape(ind.shape)
    return (y, ind) if return_indices else y


def adaptive_max_pool2d_backward(dy, x, output_size, n_threads=None, indices=None):
    """Gradient of :func:`adaptive_max_pool2d_forward`: dy to each window's argmax
    (recomputed, or ``indices``); overlapping windows add up.  ->  dx like x."""
    N, C, H, W = x.shape
    if indices is None:
        indices = _adaptive_argmax(x, output_size)
    return _scatter_add(dy.astype(x.dtype, copy=False), indices, H, W,
                        "adaptive_max_pool2d_backward")


# --------------------------------------------------------------------------- unpooling

def max_unpool2d_forward(x, indices, output_hw, n_threads=None):
    """Max unpooling, notes eq. (pool.unpool): y = 0, then y[n, c].flat[indices] = x.

    x, indices : ndarray (N, C, P, Q) (indices: ints, as max_pool2d's return_indices);
    output_hw : (Ho, Wo)  ->  y : ndarray (N, C, Ho, Wo), x's dtype. Where two indices of a
    plane are equal, the later one (row-major) wins, as in PyTorch's loop."""
    N, C, P, Q = x.shape
    Ho, Wo = output_hw
    flat = np.asarray(indices, dtype=np.int64).reshape(N * C, P * Q)
    if flat.size and (flat.min() < 0 or flat.max() >= Ho * Wo):
        raise ValueError(f"max_unpool2d: indices lie outside the {Ho}x{Wo} output plane")
    y = np.zeros((N * C, Ho * Wo), dtype=x.dtype)
    xs = x.reshape(N * C, P * Q)
    for i in range(N * C):          # the later index wins: keep each index's last position
        rev = flat[i, ::-1]
        uniq, pos = np.unique(rev, return_index=True)
        y[i, uniq] = xs[i, ::-1][pos]
    return y.reshape(N, C, Ho, Wo)


def max_unpool2d_backward(dy, indices, n_threads=None):
    """Gradient of :func:`max_unpool2d_forward` w.r.t. x: dx[n,c,p,q] = dy[n, c].flat[
    indices[n,c,p,q]] (a gather).  dy : (N, C, Ho, Wo)  ->  dx : (N, C, P, Q)."""
    N, C, Ho, Wo = dy.shape
    ind = np.asarray(indices, dtype=np.int64)
    flat = ind.reshape(N * C, -1)
    if flat.size and (flat.min() < 0 or flat.max() >= Ho * Wo):
        raise ValueError(f"max_unpool2d_backward: indices lie outside the {Ho}x{Wo} plane")
    dx = np.take_along_axis(dy.reshape(N * C, Ho * Wo), flat, axis=1)
    return dx.reshape(ind.shape)
