"""2-D convolution as a matrix product: im2col, then one GEMM (Caffe's method), in NumPy.

Reference twin of ``fastconv._ext.conv_im2col`` (same functions, same signatures). Each
image's receptive fields are unrolled into the columns of a matrix, so the convolution
becomes a matrix product that BLAS runs at full speed:

(im2col)    col_n[(c*R + r)*S + s, p*Q + q] = xp[n, c, p*sh + r, q*sw + s]   (CRS x PQ)
            Y_n  = W @ col_n            with W = w.reshape(K, C*R*S)            (conv.fwd)
            dW   = sum_n dY_n @ col_n^T                                          (conv.bwd)
            dcol_n = W^T @ dY_n, then col2im: dxp[n, c, p*sh + r, q*sw + s] += dcol_n[...]

``xp`` is x zero-padded by (ph, pw); P, Q by (conv.out) ``P = floor((H + 2*ph - R)/sh) + 1``.

(conv.groups) With G groups the rows of col_n split into G blocks of (C/G)*R*S, one per
slice of input channels, and W into G blocks of (K/G) x (C/G)*R*S: one GEMM per group,
Y_n[g] = W[g] @ col_n[g] (a batched matrix product, Caffe's grouped convolution).
This reference builds the column matrix of the whole batch at once (simple; memory
N*C*R*S*P*Q); the fast twin keeps only one image's columns per thread.
Cross-correlation, as in PyTorch: the kernel is not flipped.
"""
import numpy as np

__all__ = ["conv2d_forward", "conv2d_backward"]


def _out_size(x_shape, w_shape, stride, padding):
    """(conv.out) (P, Q)."""
    H, W = x_shape[2:]
    R, S = w_shape[2:]
    return ((H + 2 * padding[0] - R) // stride[0] + 1,
            (W + 2 * padding[1] - S) // stride[1] + 1)


def im2col(x, R, S, stride, padding, P, Q):
    """(im2col) x (N, C, H, W) -> col (N, C*R*S, P*Q).

    ``col[n, (c*R + r)*S + s, p*Q + q] = xp[n, c, p*sh + r, q*sw + s]``: row (c, r, s) is
    the padded input shifted by the kernel tap (r, s) and sampled every stride.
    """
    N, C = x.shape[:2]
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    col = np.empty((N, C, R, S, P, Q), dtype=x.dtype)
    for r in range(R):
        for s in range(S):
            col[:, :, r, s] = xp[:, :, r:r + sh * P:sh, s:s + sw * Q:sw]
    return col.reshape(N, C * R * S, P * Q)


def col2im(col, x_shape, R, S, stride, padding, P, Q):
    """The adjoint of :func:`im2col`: col (N, C*R*S, P*Q) -> dx (N, C, H, W).

    Every column entry is added back onto the input pixel it was copied from
    (pixels covered by several windows receive several contributions; padding is dropped).
    """
    N, C, H, W = x_shape
    (sh, sw), (ph, pw) = stride, padding
    col = col.reshape(N, C, R, S, P, Q)
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=col.dtype)
    for r in range(R):
        for s in range(S):
            dxp[:, :, r:r + sh * P:sh, s:s + sw * Q:sw] += col[:, :, r, s]
    return dxp[:, :, ph:ph + H, pw:pw + W]


def conv2d_forward(x, w, b, stride, padding, n_threads=None, groups=1):
    """Cross-correlation by im2col + GEMM, eqs. (im2col), (conv.fwd), one GEMM per group.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    w : ndarray (K, C/groups, R, S), same dtype
    b : ndarray (K,) or None
    stride, padding : (int, int)
    n_threads : ignored (NumPy's BLAS threads are set by fastconv.num_threads)
    groups : int dividing C and K

    Returns
    -------
    y : ndarray (N, K, P, Q), x's dtype.
    """
    N, G = x.shape[0], groups
    K, Cg, R, S = w.shape                                            # Cg = C / G
    P, Q = _out_size(x.shape, w.shape, stride, padding)
    col = im2col(x, R, S, stride, padding, P, Q)                     # (N, CRS, PQ)
    col = col.reshape(N, G, Cg * R * S, P * Q)                       # col_n[g]
    Wg = w.reshape(G, K // G, Cg * R * S)                            # W[g]
    y = np.matmul(Wg, col)                                           # Y_n[g] = W[g] @ col_n[g]
    y = y.reshape(N, K, P * Q)
    if b is not None:
        y += b[:, None]
    return y.reshape(N, K, P, Q).astype(x.dtype, copy=False)


def conv2d_backward(dy, x, w, stride, padding, n_threads=None, need_dx=True, groups=1):
    """Gradients by GEMM and col2im, eqs. (im2col), (conv.bwd), per group.

    Parameters
    ----------
    dy : ndarray (N, K, P, Q);  x : ndarray (N, C, H, W);  w : ndarray (K, C/groups, R, S)
    stride, padding : (int, int)
    n_threads : ignored
    need_dx : bool
        False skips dx (None is returned in its place): a network's first layer needs only dw, db.
    groups : int dividing C and K

    Returns
    -------
    dx : (N, C, H, W) or None, dw : (K, C/groups, R, S), db : (K,), all of x's dtype.
    """
    N, G = x.shape[0], groups
    K, Cg, R, S = w.shape
    P, Q = dy.shape[2:]
    CgRS = Cg * R * S
    dY = dy.reshape(N, G, K // G, P * Q)                             # dY_n[g]
    col = im2col(x, R, S, stride, padding, P, Q).reshape(N, G, CgRS, P * Q)
    db = dy.sum(axis=(0, 2, 3))                                      # db[k] = sum_{n,p,q} dy
    # dW[g] = sum_n dY_n[g] @ col_n[g]^T: contract n and pq, one product per group
    dW = np.matmul(dY.transpose(1, 2, 0, 3).reshape(G, K // G, N * P * Q),
                   col.transpose(1, 0, 3, 2).reshape(G, N * P * Q, CgRS))     # (G, K/G, CgRS)
    dtype = x.dtype
    dW, db = dW.reshape(K, Cg, R, S).astype(dtype, copy=False), db.astype(dtype, copy=False)
    if not need_dx:
        return None, dW, db
    Wg = w.reshape(G, K // G, CgRS)
    dcol = np.matmul(Wg.transpose(0, 2, 1), dY)                      # W[g]^T @ dY_n[g]: (N, G, CgRS, PQ)
    dx = col2im(dcol.reshape(N, G * CgRS, P * Q), x.shape, R, S, stride, padding, P, Q)
    return np.ascontiguousarray(dx, dtype=dtype), dW, db
