"""Direct 2-D convolution in NumPy: the formula itself, one sliding window per output pixel.

Reference twin of ``fastconv._ext.conv_direct`` (same functions, same signatures); the
tests use it as the oracle. The labels are defined in docs/formulas.md:

(conv.out)  P = floor((H + 2*ph - R) / sh) + 1,  Q = floor((W + 2*pw - S) / sw) + 1
(conv.fwd)  y[n,k,p,q] = b[k] + sum_{c,r,s} w[k,c,r,s] * xp[n, c, p*sh + r, q*sw + s]
(conv.bwd)  db[k]       = sum_{n,p,q} dy[n,k,p,q]
            dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * xp[n, c, p*sh + r, q*sw + s]
            dxp[n, c, p*sh + r, q*sw + s] += sum_k dy[n,k,p,q] * w[k,c,r,s]

where ``xp`` is x zero-padded by (ph, pw) on each side, so ``xp[.., ih + ph, iw + pw] =
x[.., ih, iw]``; dx is dxp with the padding cut off.

(conv.groups) With G groups, w is (K, C/G, R, S) and output channel k of group
g = k // (K/G) sums only over the input channels g*C/G + c', c' < C/G: the formulas above
hold for each group on its own slice of channels, which is how they are computed here. This is cross-correlation, as in
PyTorch: the kernel is not flipped; a true convolution is the same formula with ``w[:, :, ::-1, ::-1]``.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["conv2d_forward", "conv2d_backward"]


def _pad(x, padding):
    """x (N, C, H, W) -> xp (N, C, H + 2*ph, W + 2*pw), zeros around the image."""
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _windows(xp, R, S, stride, P, Q):
    """The receptive field of every output pixel, as a view (no copy).

    xp (N, C, Hp, Wp) -> win (N, C, P, Q, R, S) with
    ``win[n, c, p, q, r, s] = xp[n, c, p*sh + r, q*sw + s]``.
    """
    sh, sw = stride
    win = sliding_window_view(xp, (R, S), axis=(2, 3))   # (N, C, Hp-R+1, Wp-S+1, R, S)
    return win[:, :, ::sh, ::sw][:, :, :P, :Q]           # every stride-th window: P x Q of them


def _group_slices(groups, C, K):
    """(conv.groups) [(input channels, output channels)] of each group, as slices."""
    Cg, Kg = C // groups, K // groups
    return [(slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)) for g in range(groups)]


def conv2d_forward(x, w, b, stride, padding, n_threads=None, groups=1):
    """Cross-correlation ``y = w * x + b``, eq. (conv.fwd), per group (conv.groups).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    w : ndarray (K, C/groups, R, S), same dtype
    b : ndarray (K,) or None
    stride, padding : (int, int)
        (sh, sw) and (ph, pw).
    n_threads : ignored (NumPy decides; the fast twin uses it)
    groups : int dividing C and K

    Returns
    -------
    y : ndarray (N, K, P, Q), x's dtype; P, Q by eq. (conv.out).
    """
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P = (H + 2 * padding[0] - R) // stride[0] + 1                         # (conv.out)
    Q = (W + 2 * padding[1] - S) // stride[1] + 1
    win = _windows(_pad(x, padding), R, S, stride, P, Q)                 # (N, C, P, Q, R, S)
    y = np.empty((N, K, P, Q), dtype=np.result_type(x, w))
    for cs, ks in _group_slices(groups, C, K):
        # (conv.fwd): contract c, r, s of the window with c, r, s of the kernel.
        y_g = np.tensordot(win[:, cs], w[ks], axes=([1, 4, 5], [1, 2, 3]))  # (N, P, Q, K/G)
        y[:, ks] = y_g.transpose(0, 3, 1, 2)
    if b is not None:
        y = y + b[None, :, None, None]
    return np.ascontiguousarray(y, dtype=x.dtype)


def conv2d_backward(dy, x, w, stride, padding, n_threads=None, need_dx=True, groups=1):
    """Gradients of :func:`conv2d_forward`, eq. (conv.bwd), per group (conv.groups).

    Parameters
    ----------
    dy : ndarray (N, K, P, Q), dLoss/dy
    x : ndarray (N, C, H, W);  w : ndarray (K, C/groups, R, S)
    stride, padding : (int, int)
    n_threads : ignored
    need_dx : bool
        False skips dx (None is returned in its place): a network's first layer needs only dw, db.
    groups : int dividing C and K

    Returns
    -------
    dx : (N, C, H, W) or None, dw : (K, C/groups, R, S), db : (K,), all of x's dtype.
    """
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = dy.shape[2:]
    (sh, sw), (ph, pw) = stride, padding
    xp = _pad(x, padding)
    win = _windows(xp, R, S, stride, P, Q)                               # (N, C, P, Q, R, S)

    # db[k] = sum_{n,p,q} dy[n,k,p,q]
    db = dy.sum(axis=(0, 2, 3))
    # dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * win[n,c,p,q,r,s], c in k's group
    groups_ = _group_slices(groups, C, K)
    dw = np.empty(w.shape, dtype=np.result_type(dy, x))
    for cs, ks in groups_:
        dw[ks] = np.tensordot(dy[:, ks], win[:, cs], axes=([0, 2, 3], [0, 2, 3]))  # (K/G, C/G, R, S)
    dtype = x.dtype
    dw, db = np.ascontiguousarray(dw, dtype=dtype), np.ascontiguousarray(db, dtype=dtype)
    if not need_dx:
        return None, dw, db
    # dx: every dy[n,k,p,q] flows back through the window that produced it. For one kernel
    # tap (r, s) the windows' pixels xp[:, :, p*sh + r, q*sw + s] form a strided grid, so
    # the taps are R*S strided scatter-adds of (sum_k dy * w[k, :, r, s]).
    dxp = np.zeros(xp.shape, dtype=np.result_type(dy, w))
    for cs, ks in groups_:
        for r in range(R):
            for s in range(S):
                contrib = np.tensordot(w[ks, :, r, s], dy[:, ks], axes=([0], [1]))  # (C/G, N, P, Q)
                dxp[:, cs, r:r + sh * P:sh, s:s + sw * Q:sw] += contrib.transpose(1, 0, 2, 3)
    dx = dxp[:, :, ph:ph + H, pw:pw + W]                                 # cut the padding off
    return np.ascontiguousarray(dx, dtype=dtype), dw, db
