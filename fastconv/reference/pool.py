"""Max and average pooling in NumPy: one sliding window per output pixel.

Reference twin of ``fastconv._ext.pool`` (same functions, same signatures); the tests use
it as the oracle. Read it next to the notes' labels:

(conv.out)  P = floor((H + 2*ph - kh) / sh) + 1,  Q = floor((W + 2*pw - kw) / sw) + 1
(pool.max)  y[n,c,p,q] = max_{r,s} xp[n, c, p*sh + r, q*sw + s]   (xp padded with -inf)
            dxp[n, c, p*sh + r*, q*sw + s*] += dy[n,c,p,q]  at the window's argmax (r*, s*),
            the FIRST maximum in row-major window order when there are ties; a window
            holding NaN has the maximum NaN and its argmax at its LAST NaN (as PyTorch)
(pool.avg)  y[n,c,p,q] = sum_{r,s} xp[n, c, p*sh + r, q*sw + s] / D[p, q]  (xp padded with 0)
            dxp[n, c, p*sh + r, q*sw + s] += dy[n,c,p,q] / D[p, q]  for every cell of the window

where ``xp[.., ih + ph, iw + pw] = x[.., ih, iw]``, dx is dxp with the padding cut off, and
the divisor D follows PyTorch (aten/src/ATen/native/cpu/AvgPoolKernel.cpp):

* ``count_include_pad=True``: the window clipped to the PADDED input, so
  ``D = (min(h0 + kh, H + ph) - h0) * (min(w0 + kw, W + pw) - w0)`` with ``h0 = p*sh - ph``.
  With the floor output size a window never runs past the padded border, so D = kh*kw.
* ``count_include_pad=False``: the number of REAL input cells in the window,
  ``D = (min(h0 + kh, H) - max(h0, 0)) * (min(w0 + kw, W) - max(w0, 0))``.

Padding is at most half the window (checked by ``fastconv.functional``), so every window
holds at least one real cell: -inf never wins a max and D is never 0.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["max_pool2d_forward", "max_pool2d_backward",
           "avg_pool2d_forward", "avg_pool2d_backward"]


def _out_size(H, k, s, p):
    """(conv.out) floor((H + 2p - k) / s) + 1."""
    return (H + 2 * p - k) // s + 1


def _pad(x, padding, value):
    """x (N, C, H, W) -> xp (N, C, H + 2*ph, W + 2*pw), ``value`` around the image."""
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _windows(xp, kernel_size, stride, P, Q):
    """Every pooling window as a view (no copy): xp (N, C, Hp, Wp) -> (N, C, P, Q, kh, kw),
    ``win[n, c, p, q, r, s] = xp[n, c, p*sh + r, q*sw + s]``."""
    sh, sw = stride
    win = sliding_window_view(xp, kernel_size, axis=(2, 3))
    return win[:, :, ::sh, ::sw][:, :, :P, :Q]


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


def _crop(dxp, padding, H, W):
    ph, pw = padding
    return dxp[:, :, ph:ph + H, pw:pw + W]


def _avg_divisor(H, W, kernel_size, stride, padding, count_include_pad):
    """D[p, q] of eq. (pool.avg), PyTorch's rule (see the module docstring); shape (P, Q)."""
    def counts(size, k, s, pad):
        n_out = _out_size(size, k, s, pad)
        start = np.arange(n_out) * s - pad                 # first cell of each window
        if count_include_pad:
            return np.minimum(start + k, size + pad) - start   # clipped to the padded input
        return np.minimum(start + k, size) - np.maximum(start, 0)  # real cells only
    rows = counts(H, kernel_size[0], stride[0], padding[0])
    cols = counts(W, kernel_size[1], stride[1], padding[1])
    return np.outer(rows, cols)                            # the window is a rectangle


def _argmax(x, kernel_size, stride, padding, P, Q):
    """Each window's argmax as the flat index ih*W + iw in its (n, c) plane, (N, C, P, Q)
    int64, PyTorch's rule: the FIRST real cell holding the window's maximum, in row-major
    window order, or, in a window holding NaN, its LAST NaN (PyTorch's loop lets a cell
    replace the maximum if it is greater or NaN).

    (argmax of a boolean is its first True.) Plain np.argmax over the padded window would
    agree except for a window whose real cells are all -inf: there a padded cell would come
    first and the gradient would be lost; PyTorch gives it to the first real cell."""
    N, C, H, W = x.shape
    kh, kw = kernel_size
    win = _windows(_pad(x, padding, -np.inf), kernel_size, stride, P, Q).reshape(
        N, C, P, Q, kh * kw)
    real = _windows(_pad(np.ones((1, 1, H, W), bool), padding, False), kernel_size, stride,
                    P, Q).reshape(1, 1, P, Q, kh * kw)
    first = np.argmax((win == win.max(axis=4, keepdims=True)) & real, axis=4)  # r*kw + s
    nan = np.isnan(win)                                 # padding is -inf, never NaN
    last_nan = kh * kw - 1 - np.argmax(nan[..., ::-1], axis=4)
    first = np.where(nan.any(axis=4), last_nan, first)
    ih = np.arange(P)[:, None] * stride[0] - padding[0] + first // kw
    iw = np.arange(Q)[None, :] * stride[1] - padding[1] + first % kw
    return (ih * W + iw).astype(np.int64)


def max_pool2d_forward(x, kernel_size, stride, padding, n_threads=None, return_indices=False):
    """Max pooling, notes eq. (pool.max); padding acts as -inf, as in PyTorch.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    kernel_size, stride, padding : (int, int)
        (kh, kw), (sh, sw), (ph, pw); ph <= kh // 2 and pw <= kw // 2.
    n_threads : ignored (the fast twin uses it)
    return_indices : bool
        Also return each window's argmax (see :func:`_argmax`), for the backward.

    Returns
    -------
    y : ndarray (N, C, P, Q), x's dtype; P, Q by eq. (conv.out).
    indices : ndarray (N, C, P, Q) int64, only with return_indices.
    """
    N, C, H, W = x.shape
    P = _out_size(H, kernel_size[0], stride[0], padding[0])
    Q = _out_size(W, kernel_size[1], stride[1], padding[1])
    win = _windows(_pad(x, padding, -np.inf), kernel_size, stride, P, Q)
    y = np.ascontiguousarray(win.max(axis=(4, 5)), dtype=x.dtype)
    if return_indices:
        return y, _argmax(x, kernel_size, stride, padding, P, Q)
    return y


def max_pool2d_backward(dy, x, kernel_size, stride, padding, n_threads=None, indices=None):
    """Gradient of :func:`max_pool2d_forward`: dy goes to each window's argmax (pool.max).

    The argmax is recomputed from x, or taken from ``indices`` (the forward's, with
    return_indices); on ties it is the first maximum in row-major window order, as in
    PyTorch. Overlapping windows that share their argmax add their gradients.

    Parameters
    ----------
    dy : ndarray (N, C, P, Q)
    x : ndarray (N, C, H, W)
    kernel_size, stride, padding : (int, int)
    n_threads : ignored
    indices : ndarray (N, C, P, Q) of ints, or None

    Returns
    -------
    dx : ndarray (N, C, H, W), x's dtype.
    """
    N, C, H, W = x.shape
    P, Q = dy.shape[2:]
    if indices is None:
        indices = _argmax(x, kernel_size, stride, padding, P, Q)
    flat = np.asarray(indices).reshape(N * C, P * Q)
    if flat.size and (flat.min() < 0 or flat.max() >= H * W):
        raise ValueError(f"max_pool2d_backward: indices lie outside their {H}x{W} plane "
                         "(they must be max_pool2d(..., return_indices=True)'s)")
    dx = np.zeros((N * C, H * W), dtype=x.dtype)
    # dx[plane, flat[plane, i]] += dy[plane, i], repeated indices (overlapping windows with
    # one argmax) adding up: np.add.at does not buffer, unlike dx[...] += dy.
    np.add.at(dx, (np.arange(N * C)[:, None], flat), dy.reshape(N * C, P * Q))
    return dx.reshape(N, C, H, W)


def avg_pool2d_forward(x, kernel_size, stride, padding, count_include_pad, n_threads=None):
    """Average pooling, notes eq. (pool.avg), with PyTorch's divisor rule.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    kernel_size, stride, padding : (int, int)
    count_include_pad : bool
        True: padded zeros count in the mean (divide by kh*kw); False: only real cells.
    n_threads : ignored

    Returns
    -------
    y : ndarray (N, C, P, Q), x's dtype.
    """
    N, C, H, W = x.shape
    P = _out_size(H, kernel_size[0], stride[0], padding[0])
    Q = _out_size(W, kernel_size[1], stride[1], padding[1])
    win = _windows(_pad(x, padding, 0), kernel_size, stride, P, Q)
    total = win.sum(axis=(4, 5), dtype=np.float64)                      # double: exact enough
    D = _avg_divisor(H, W, kernel_size, stride, padding, count_include_pad)
    return np.ascontiguousarray(total / D, dtype=x.dtype)


def avg_pool2d_backward(dy, x, kernel_size, stride, padding, count_include_pad,
                        n_threads=None):
    """Gradient of :func:`avg_pool2d_forward`: dy / D spreads evenly over its window.

    Parameters
    ----------
    dy : ndarray (N, C, P, Q)
    x : ndarray (N, C, H, W) (only its shape and dtype are used)
    kernel_size, stride, padding, count_include_pad : as in :func:`avg_pool2d_forward`
    n_threads : ignored

    Returns
    -------
    dx : ndarray (N, C, H, W), x's dtype.
    """
    N, C, H, W = x.shape
    kh, kw = kernel_size
    ph, pw = padding
    P, Q = dy.shape[2:]
    D = _avg_divisor(H, W, kernel_size, stride, padding, count_include_pad)
    g = dy / D                                                          # (N, C, P, Q)
    g = np.broadcast_to(g[..., None, None], (N, C, P, Q, kh, kw))       # same for every cell
    dxp = _scatter_windows(g, kernel_size, stride, (N, C, H + 2 * ph, W + 2 * pw))
    return np.ascontiguousarray(_crop(dxp, padding, H, W), dtype=x.dtype)
