"""Direct 2-D convolution in NumPy: the formula itself, one sliding window per output pixel.

Reference twin of ``fastconv._ext.conv_direct`` (same functions, same signatures); the
tests use it as the oracle. The labels are defined in docs/formulas.md:

(conv.out)  P = floor((H + 2*ph - dh*(R - 1) - 1) / sh) + 1,  Q likewise with W, pw, dw, S, sw
(conv.fwd)  y[n,k,p,q] = b[k] + sum_{c,r,s} w[k,c,r,s] * xp[n, c, p*sh + r*dh, q*sw + s*dw]
(conv.bwd)  db[k]       = sum_{n,p,q} dy[n,k,p,q]
            dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * xp[n, c, p*sh + r*dh, q*sw + s*dw]
            dxp[n, c, p*sh + r*dh, q*sw + s*dw] += sum_k dy[n,k,p,q] * w[k,c,r,s]

where ``xp`` is x zero-padded by (ph, pw) on each side, so ``xp[.., ih + ph, iw + pw] =
x[.., ih, iw]``; dx is dxp with the padding cut off. The dilation (dh, dw) spreads the
kernel's taps dh rows and dw columns apart (1: an ordinary convolution). This is
cross-correlation, as in PyTorch: the kernel is not flipped; a true convolution is the same
formula with ``w[:, :, ::-1, ::-1]``.

(conv.groups) With G groups, w is (K, C/G, R, S) and output channel k of group
g = k // (K/G) sums only over the input channels g*C/G + c', c' < C/G: the formulas above
hold for each group on its own slice of channels, which is how they are computed here
(:func:`per_group_forward`, :func:`per_group_backward`, also used by the fast backend).
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from .pool import max_pool2d_forward

__all__ = ["conv2d_forward", "conv2d_backward"]


def _pad(x, padding):
    """x (N, C, H, W) -> xp (N, C, H + 2*ph, W + 2*pw), zeros around the image."""
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _windows(xp, R, S, stride, P, Q, dilation=(1, 1)):
    """The receptive field of every output pixel, as a view (no copy).

    xp (N, C, Hp, Wp) -> win (N, C, P, Q, R, S) with
    ``win[n, c, p, q, r, s] = xp[n, c, p*sh + r*dh, q*sw + s*dw]``.
    """
    (sh, sw), (dh, dw) = stride, dilation
    Re, Se = dh * (R - 1) + 1, dw * (S - 1) + 1           # the dilated window's extent
    win = sliding_window_view(xp, (Re, Se), axis=(2, 3))  # (N, C, Hp-Re+1, Wp-Se+1, Re, Se)
    # every stride-th window (P x Q of them), every dilation-th tap of each (R x S)
    return win[:, :, ::sh, ::sw][:, :, :P, :Q, ::dh, ::dw]


def conv_epilogue(y, relu=False, residual=None, pool_out=None):
    """The fused epilogue of a convolution, eq. (conv.fused): ``relu(y + residual)``, each
    part optional (y is changed in place and returned); then, into ``pool_out`` where
    given, y's 2x2 stride-2 max pooling, eq. (conv.pool). The fast kernels apply it to
    each block (and pool each image) of output as they write it; here it is one NumPy pass
    per part."""
    if residual is not None:
        if residual.shape != y.shape:
            raise ValueError(f"conv2d_forward: residual must have the output's shape "
                             f"{y.shape}, got {residual.shape}")
        y += residual
    if relu:
        np.copyto(y, y.dtype.type(0), where=y <= 0)      # NaN is kept (NaN <= 0 is False)
    if pool_out is not None:
        N, K, P, Q = y.shape
        if pool_out.shape != (N, K, P // 2, Q // 2):
            raise ValueError(f"conv2d_forward: pool_out must have shape "
                             f"{(N, K, P // 2, Q // 2)}, got {pool_out.shape}")
        pool_out[...] = max_pool2d_forward(y, (2, 2), (2, 2), (0, 0))
    return y


def group_slices(groups, C, K):
    """(conv.groups) [(input channels, output channels)] of each group, as slices."""
    Cg, Kg = C // groups, K // groups
    return [(slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)) for g in range(groups)]


def per_group_forward(forward, x, w, b, groups, *args):
    """(conv.groups) ``forward(x_g, w_g, b_g, *args)`` on each group's slices of channels,
    the outputs side by side: y (N, K, P, Q)."""
    return np.concatenate([forward(np.ascontiguousarray(x[:, cs]), w[ks],
                                   None if b is None else b[ks], *args)
                           for cs, ks in group_slices(groups, x.shape[1], w.shape[0])], axis=1)


def per_group_backward(backward, dy, x, w, groups, need_dx, need_dw, *args, **kwargs):
    """(conv.groups) ``backward(dy_g, x_g, w_g, *args, **kwargs)`` on each group's slices
    (kwargs: need_dx, need_dw and the like), the gradients put back together: dx (N, C, H,
    W) or None, dw (K, C/G, R, S) or None and db (K,) or None (as the groups' db)."""
    parts = [backward(np.ascontiguousarray(dy[:, ks]), np.ascontiguousarray(x[:, cs]), w[ks],
                      *args, **kwargs)
             for cs, ks in group_slices(groups, x.shape[1], w.shape[0])]
    dx = np.concatenate([p[0] for p in parts], axis=1) if need_dx else None
    dw = np.concatenate([p[1] for p in parts], axis=0) if need_dw else None
    db = (np.concatenate([p[2] for p in parts], axis=0)
          if need_dw and parts[0][2] is not None else None)
    return dx, dw, db


def conv2d_forward(x, w, b, stride, padding, n_threads=None, dilation=(1, 1), groups=1, *,
                   relu=False, residual=None, pool_out=None):
    """Cross-correlation ``y = w * x + b``, eq. (conv.fwd), then ``relu(y + residual)``
    where asked (eq. (conv.fused), :func:`conv_epilogue`), and y's 2x2 max pooling into
    ``pool_out`` (eq. (conv.pool)).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    w : ndarray (K, C, R, S), same dtype
    b : ndarray (K,) or None
    stride, padding : (int, int)
        (sh, sw) and (ph, pw).
    n_threads : ignored (NumPy decides; the fast twin uses it)
    dilation : (int, int)
        (dh, dw): the spacing of the kernel's taps.
    groups : int dividing C and K (w is then (K, C/groups, R, S))
    relu : bool;  residual : ndarray (N, K, P, Q) or None (keyword only)
    pool_out : ndarray (N, K, P // 2, Q // 2) or None (keyword only), written

    Returns
    -------
    y : ndarray (N, K, P, Q), x's dtype; P, Q by eq. (conv.out).
    """
    if groups > 1:
        y = per_group_forward(conv2d_forward, x, w, b, groups, stride, padding, n_threads,
                              dilation)
        return conv_epilogue(y, relu, residual, pool_out)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (dh, dw) = dilation
    P = (H + 2 * padding[0] - dh * (R - 1) - 1) // stride[0] + 1          # (conv.out)
    Q = (W + 2 * padding[1] - dw * (S - 1) - 1) // stride[1] + 1
    win = _windows(_pad(x, padding), R, S, stride, P, Q, dilation)       # (N, C, P, Q, R, S)
    # (conv.fwd): contract c, r, s of the window with c, r, s of the kernel.
    y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))                # (N, P, Q, K)
    y = y.transpose(0, 3, 1, 2)                                          # (N, K, P, Q)
    if b is not None:
        y = y + b[None, :, None, None]
    return conv_epilogue(np.ascontiguousarray(y, dtype=x.dtype), relu, residual, pool_out)


def conv2d_backward(dy, x, w, stride, padding, n_threads=None, need_dx=True, need_dw=True,
                    dilation=(1, 1), groups=1, *, need_db=True):
    """Gradients of :func:`conv2d_forward`, eq. (conv.bwd).

    Parameters
    ----------
    dy : ndarray (N, K, P, Q), dLoss/dy
    x : ndarray (N, C, H, W);  w : ndarray (K, C, R, S)
    stride, padding : (int, int)
    n_threads : ignored
    need_dx : bool
        False skips dx (None is returned in its place): a network's first layer needs only dw, db.
    need_dw : bool
        False skips dw and db (None for both): a frozen layer that passes dx on.
    dilation, groups : as in :func:`conv2d_forward`
    need_db : bool, keyword only
        False skips db (None in its place): a layer without a bias.

    Returns
    -------
    dx : (N, C, H, W) or None, dw : (K, C/groups, R, S) or None, db : (K,) or None, x's dtype.
    """
    if not (need_dx or need_dw):
        raise ValueError("conv2d_backward: need_dx and need_dw are both False (nothing to do)")
    if groups > 1:
        return per_group_backward(conv2d_backward, dy, x, w, groups, need_dx, need_dw, stride,
                                  padding, n_threads, need_dx, need_dw, dilation,
                                  need_db=need_db)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = dy.shape[2:]
    (sh, sw), (ph, pw), (dh, dw_) = stride, padding, dilation
    dtype = x.dtype
    dw = db = None
    if need_dw:
        win = _windows(_pad(x, padding), R, S, stride, P, Q, dilation)   # (N, C, P, Q, R, S)
        # db[k] = sum_{n,p,q} dy[n,k,p,q]
        db = dy.sum(axis=(0, 2, 3)) if need_db else None
        # dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * win[n,c,p,q,r,s]
        dw = np.tensordot(dy, win, axes=([0, 2, 3], [0, 2, 3]))          # (K, C, R, S)
        dw = np.ascontiguousarray(dw, dtype=dtype)
        db = None if db is None else np.ascontiguousarray(db, dtype=dtype)
    if not need_dx:
        return None, dw, db
    # dx: every dy[n,k,p,q] flows back through the window that produced it. For one kernel
    # tap (r, s) the windows' pixels xp[:, :, p*sh + r*dh, q*sw + s*dw] form a strided grid,
    # so the taps are R*S strided scatter-adds of (sum_k dy * w[k, :, r, s]).
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=np.result_type(dy, w))
    for r in range(R):
        for s in range(S):
            contrib = np.tensordot(w[:, :, r, s], dy, axes=([0], [1]))   # (C, N, P, Q)
            i, j = r * dh, s * dw_
            dxp[:, :, i:i + sh * P:sh, j:j + sw * Q:sw] += contrib.transpose(1, 0, 2, 3)
    dx = dxp[:, :, ph:ph + H, pw:pw + W]                                 # cut the padding off
    return np.ascontiguousarray(dx, dtype=dtype), dw, db
