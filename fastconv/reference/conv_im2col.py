"""2-D convolution as a matrix product: im2col, then one GEMM (Caffe's method), in NumPy.

Reference twin of ``fastconv._ext.conv_im2col`` (same functions, same signatures). Each
image's receptive fields are unrolled into the columns of a matrix, so the convolution
becomes a matrix product that BLAS runs at full speed:

(im2col)    col_n[(c*R + r)*S + s, p*Q + q] = xp[n, c, p*sh + r*dh, q*sw + s*dw]   (CRS x PQ)
            Y_n  = W @ col_n            with W = w.reshape(K, C*R*S)            (conv.fwd)
            dW   = sum_n dY_n @ col_n^T                                          (conv.bwd)
            dcol_n = W^T @ dY_n, then col2im: dxp[n, c, p*sh + r*dh, q*sw + s*dw] += dcol_n[...]

``xp`` is x zero-padded by (ph, pw); (dh, dw) the dilation (1: ordinary convolution); P, Q
by (conv.out) ``P = floor((H + 2*ph - dh*(R - 1) - 1)/sh) + 1``.
This reference builds the column matrix of the whole batch at once (simple; memory
N*C*R*S*P*Q); the fast twin keeps only one image's columns per thread.
Cross-correlation, as in PyTorch: the kernel is not flipped.
"""
import numpy as np

from .conv_direct import conv_epilogue, per_group_backward, per_group_forward

__all__ = ["conv2d_forward", "conv2d_backward"]


def _out_size(x_shape, w_shape, stride, padding, dilation=(1, 1)):
    """(conv.out) (P, Q)."""
    H, W = x_shape[2:]
    R, S = w_shape[2:]
    return ((H + 2 * padding[0] - dilation[0] * (R - 1) - 1) // stride[0] + 1,
            (W + 2 * padding[1] - dilation[1] * (S - 1) - 1) // stride[1] + 1)


def im2col(x, R, S, stride, padding, P, Q, dilation=(1, 1)):
    """(im2col) x (N, C, H, W) -> col (N, C*R*S, P*Q).

    ``col[n, (c*R + r)*S + s, p*Q + q] = xp[n, c, p*sh + r*dh, q*sw + s*dw]``: row (c, r, s)
    is the padded input shifted by the kernel tap (r*dh, s*dw) and sampled every stride.
    """
    N, C = x.shape[:2]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    col = np.empty((N, C, R, S, P, Q), dtype=x.dtype)
    for r in range(R):
        for s in range(S):
            i, j = r * dh, s * dw
            col[:, :, r, s] = xp[:, :, i:i + sh * P:sh, j:j + sw * Q:sw]
    return col.reshape(N, C * R * S, P * Q)


def col2im(col, x_shape, R, S, stride, padding, P, Q, dilation=(1, 1)):
    """The adjoint of :func:`im2col`: col (N, C*R*S, P*Q) -> dx (N, C, H, W).

    Every column entry is added back onto the input pixel it was copied from
    (pixels covered by several windows receive several contributions; padding is dropped).
    """
    N, C, H, W = x_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    col = col.reshape(N, C, R, S, P, Q)
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=col.dtype)
    for r in range(R):
        for s in range(S):
            i, j = r * dh, s * dw
            dxp[:, :, i:i + sh * P:sh, j:j + sw * Q:sw] += col[:, :, r, s]
    return dxp[:, :, ph:ph + H, pw:pw + W]


def conv2d_forward(x, w, b, stride, padding, n_threads=None, dilation=(1, 1), groups=1, *,
                   relu=False, residual=None, pool_out=None):
    """Cross-correlation by im2col + GEMM, eqs. (im2col), (conv.fwd), then
    ``relu(y + residual)`` where asked (eq. (conv.fused), ``conv_direct.conv_epilogue``),
    and y's 2x2 max pooling into ``pool_out`` (eq. (conv.pool)).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    w : ndarray (K, C, R, S), same dtype
    b : ndarray (K,) or None
    stride, padding : (int, int)
    n_threads : ignored (NumPy's BLAS threads are set by fastconv.num_threads)
    dilation : (int, int)
        (dh, dw): the spacing of the kernel's taps.
    groups : int dividing C and K: one product per group (conv.groups), w (K, C/groups, R, S)
    relu : bool;  residual : ndarray (N, K, P, Q) or None (keyword only)
    pool_out : ndarray (N, K, P // 2, Q // 2) or None (keyword only), written

    Returns
    -------
    y : ndarray (N, K, P, Q), x's dtype.
    """
    if groups > 1:
        y = per_group_forward(conv2d_forward, x, w, b, groups, stride, padding, n_threads,
                              dilation)
        return conv_epilogue(y, relu, residual, pool_out)
    N = x.shape[0]
    K, C, R, S = w.shape
    P, Q = _out_size(x.shape, w.shape, stride, padding, dilation)
    col = im2col(x, R, S, stride, padding, P, Q, dilation)           # (N, CRS, PQ)
    y = np.matmul(w.reshape(K, C * R * S), col)                      # Y_n = W @ col_n: (N, K, PQ)
    if b is not None:
        y += b[:, None]
    return conv_epilogue(y.reshape(N, K, P, Q).astype(x.dtype, copy=False), relu, residual,
                         pool_out)


def conv2d_backward(dy, x, w, stride, padding, n_threads=None, need_dx=True, need_dw=True,
                    dilation=(1, 1), groups=1, *, need_db=True):
    """Gradients by GEMM and col2im, eqs. (im2col), (conv.bwd).

    Parameters
    ----------
    dy : ndarray (N, K, P, Q);  x : ndarray (N, C, H, W);  w : ndarray (K, C, R, S)
    stride, padding : (int, int)
    n_threads : ignored
    need_dx : bool
        False skips dx (None is returned in its place): a network's first layer needs only dw, db.
    need_dw : bool
        False skips dw and db (None for both; the columns of x are not built): a frozen
        layer that passes dx on.
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
    N = x.shape[0]
    K, C, R, S = w.shape
    P, Q = dy.shape[2:]
    dY = dy.reshape(N, K, P * Q)
    dtype = x.dtype
    dW = db = None
    if need_dw:
        col = im2col(x, R, S, stride, padding, P, Q, dilation)       # (N, CRS, PQ)
        if need_db:
            db = dy.sum(axis=(0, 2, 3)).astype(dtype, copy=False)    # db[k] = sum_{n,p,q} dy
        dW = np.tensordot(dY, col, axes=([0, 2], [0, 2]))            # sum_n dY_n @ col_n^T: (K, CRS)
        dW = dW.reshape(K, C, R, S).astype(dtype, copy=False)
    if not need_dx:
        return None, dW, db
    dcol = np.matmul(w.reshape(K, C * R * S).T, dY)                  # W^T @ dY_n: (N, CRS, PQ)
    dx = col2im(dcol, x.shape, R, S, stride, padding, P, Q, dilation)
    return np.ascontiguousarray(dx, dtype=dtype), dW, db
