"""Depthwise 2-D convolution (groups == C) in NumPy: one window per channel plane.

Reference twin of ``fastconv._ext.conv_depthwise`` (same functions, same signatures); the
tests use it as the oracle. Input channel c has m = K/C windows of its own (the depth
multiplier); output channel k = c*m + j reads input channel c = k // m only. Labels as in
docs/formulas.md:

(conv.dw)   y[n,k,p,q]  = b[k] + sum_{r,s} w[k,0,r,s] * xp[n, k//m, p*sh + r*dh, q*sw + s*dw]
            dw[k,0,r,s] = sum_{n,p,q} dy[n,k,p,q] * xp[n, k//m, p*sh + r*dh, q*sw + s*dw]
            dxp[n, k//m, p*sh + r*dh, q*sw + s*dw] += dy[n,k,p,q] * w[k,0,r,s]
            P = floor((H + 2*ph - dh*(R-1) - 1) / sh) + 1, Q likewise

where ``xp`` is x zero-padded by (ph, pw) and (dh, dw) is the dilation (1 for an ordinary
window). Each tap (r, s) is one whole-array multiply-add over a strided view of xp.
"""
import numpy as np

__all__ = ["conv2d_forward", "conv2d_backward"]


def _geometry(x_shape, w_shape, stride, padding, dilation):
    """(m, P, Q, strided view bounds) of a depthwise convolution, eq. (conv.dw)."""
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    P = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Q = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    return K // C, P, Q


def _tap(xp, r, s, stride, dilation, P, Q):
    """xp[:, :, p*sh + r*dh, q*sw + s*dw] for all (p, q): the input under tap (r, s)."""
    (sh, sw), (dh, dw) = stride, dilation
    return xp[:, :, r * dh:r * dh + sh * (P - 1) + 1:sh, s * dw:s * dw + sw * (Q - 1) + 1:sw]


def conv2d_forward(x, w, b, stride, padding, dilation, n_threads=None):
    """Depthwise cross-correlation, eq. (conv.dw).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    w : ndarray (K, 1, R, S), K = m*C, same dtype
    b : ndarray (K,) or None
    stride, padding, dilation : (int, int)
    n_threads : ignored (the fast twin uses it)

    Returns
    -------
    y : ndarray (N, K, P, Q), x's dtype.
    """
    K, _, R, S = w.shape
    m, P, Q = _geometry(x.shape, w.shape, stride, padding, dilation)
    (ph, pw) = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    xp = np.repeat(xp, m, axis=1)                       # channel k of xp is input channel k // m
    y = np.zeros((x.shape[0], K, P, Q), dtype=np.result_type(x, w))
    for r in range(R):
        for s in range(S):
            y += w[None, :, 0, r, s, None, None] * _tap(xp, r, s, stride, dilation, P, Q)
    if b is not None:
        y += b[None, :, None, None]
    return y.astype(x.dtype, copy=False)


def conv2d_backward(dy, x, w, stride, padding, dilation, n_threads=None, need_dx=True):
    """Gradients of :func:`conv2d_forward`, eq. (conv.dw).

    Parameters
    ----------
    dy : ndarray (N, K, P, Q);  x : ndarray (N, C, H, W);  w : ndarray (K, 1, R, S)
    stride, padding, dilation : (int, int)
    n_threads : ignored
    need_dx : bool
        False skips dx (None is returned in its place).

    Returns
    -------
    dx : (N, C, H, W) or None, dw : (K, 1, R, S), db : (K,), all of x's dtype.
    """
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    m, P, Q = _geometry(x.shape, w.shape, stride, padding, dilation)
    (ph, pw) = padding
    xp = np.repeat(np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))), m, axis=1)
    dtype = x.dtype
    db = dy.sum(axis=(0, 2, 3)).astype(dtype, copy=False)
    dw = np.empty(w.shape, dtype=dtype)
    for r in range(R):
        for s in range(S):
            dw[:, 0, r, s] = np.sum(dy * _tap(xp, r, s, stride, dilation, P, Q), axis=(0, 2, 3))
    if not need_dx:
        return None, dw, db
    dxp = np.zeros(xp.shape, dtype=dtype)               # (N, K, Hp, Wp): per output channel
    for r in range(R):
        for s in range(S):
            _tap(dxp, r, s, stride, dilation, P, Q)[...] += dy * w[None, :, 0, r, s, None, None]
    dxp = dxp.reshape(N, C, m, *xp.shape[2:]).sum(axis=2)   # the m windows of each channel
    return np.ascontiguousarray(dxp[:, :, ph:ph + H, pw:pw + W], dtype=dtype), dw, db
