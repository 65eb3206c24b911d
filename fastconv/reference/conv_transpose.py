"""Transposed convolution in NumPy, written as the scatter it is: the reference twin of
``fastconv.functional.conv_transpose2d`` (whose fast path runs the convolution kernels).

A convolution gathers: each output pixel is a weighted sum of the window under it. Its
transpose scatters: each *input* pixel adds a copy of the kernel, scaled by its value, onto
the output, at a step of ``stride`` (conv_t.fwd):

    y[n, o, i*sh + r*dh - ph, j*sw + s*dw - pw] += x[n, c, i, j] * w[c, o', r, s]

for every input pixel (i, j) and tap (r, s), with c in group g (c // (C_in/groups) == g)
and o = g * (C_out/groups) + o'; then y += b[o]. Output positions outside
[0, H_out) x [0, W_out) (the "padding", cut off) are dropped. x is (N, C_in, H, W), w is
(C_in, C_out/groups, R, S) as in PyTorch, and (conv_t.out)

    H_out = (H - 1)*sh - 2*ph + dh*(R - 1) + oph + 1,   W_out likewise,

oph (output_padding) adding rows at the bottom (and columns on the right) that a stride
> 1 leaves ambiguous: several input sizes of a strided conv give the same output size.

That scatter is exactly dx of the convolution with the same w, stride and padding, seen as
(K = C_in, C = C_out/groups, R, S): the gradient of a conv with respect to its input.
Its own gradients gather (conv_t.bwd): with dyp = dy zero-padded by (ph, pw),

    dx[n, c, i, j]    = sum_{o', r, s} w[c, o', r, s] * dyp[n, o, i*sh + r*dh, j*sw + s*dw]
    dw[c, o', r, s]   = sum_{n, i, j}  x[n, c, i, j]  * dyp[n, o, i*sh + r*dh, j*sw + s*dw]
    db[o]             = sum_{n, p, q}  dy[n, o, p, q]

so dx is the convolution of dy with w, and dw is the conv's dw with the roles of x and dy
swapped. Cross-correlation convention, as PyTorch: no kernel flip anywhere.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["conv_transpose2d_forward", "conv_transpose2d_backward", "output_size"]


def output_size(size, kernel, stride, padding, output_padding=0, dilation=1):
    """(conv_t.out) (size - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def _groups(C_in, C_out, groups):
    """(input channel slice, output channel slice) of each group."""
    ci, co = C_in // groups, C_out // groups
    return [(slice(g * ci, (g + 1) * ci), slice(g * co, (g + 1) * co)) for g in range(groups)]


def conv_transpose2d_forward(x, w, b, stride, padding, output_padding, groups=1,
                             dilation=(1, 1), n_threads=None):
    """Eq. (conv_t.fwd): every input pixel scatters the kernel, scaled, onto the output.

    x : (N, C_in, H, W); w : (C_in, C_out/groups, R, S); b : (C_out,) or None;
    stride, padding, output_padding, dilation : (int, int); n_threads : ignored.
    Returns y : (N, C_out, H_out, W_out) by (conv_t.out), x's dtype.
    """
    N, C_in, H, W = x.shape
    _, Cog, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    H_out = output_size(H, R, sh, ph, output_padding[0], dh)
    W_out = output_size(W, S, sw, pw, output_padding[1], dw)
    # every scatter position i*sh + r*dh lies in [0, H_out + 2*ph): y with its padding
    yp = np.zeros((N, Cog * groups, H_out + 2 * ph, W_out + 2 * pw), dtype=np.result_type(x, w))
    for cs, os in _groups(C_in, Cog * groups, groups):
        for r in range(R):
            for s in range(S):
                # the kernel tap (r, s) of every input pixel lands on a strided grid of y
                contrib = np.tensordot(x[:, cs], w[cs, :, r, s], axes=([1], [0]))  # (N, H, W, Cog)
                yp[:, os, r * dh:r * dh + (H - 1) * sh + 1:sh,
                   s * dw:s * dw + (W - 1) * sw + 1:sw] += contrib.transpose(0, 3, 1, 2)
    y = yp[:, :, ph:ph + H_out, pw:pw + W_out]                    # cut the padding off
    if b is not None:
        y = y + b[None, :, None, None]
    return np.ascontiguousarray(y, dtype=x.dtype)


def _dy_windows(dy, R, S, stride, padding, dilation, H, W):
    """win[n, o, i, j, r, s] = dyp[n, o, i*sh + r*dh, j*sw + s*dw] (a view), dyp = dy padded."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    dyp = np.pad(dy, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = sliding_window_view(dyp, (dh * (R - 1) + 1, dw * (S - 1) + 1), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :H, :W]


def conv_transpose2d_backward(dy, x, w, stride, padding, output_padding, groups=1,
                              dilation=(1, 1), n_threads=None, need_dx=True, need_dw=True):
    """Eq. (conv_t.bwd): the gradients gather through the windows the forward scattered into.

    dy : (N, C_out, H_out, W_out); x, w and the options as the forward.
    Returns dx (N, C_in, H, W) or None, dw (C_in, C_out/groups, R, S) or None, db (C_out,)
    or None (need_dx / need_dw False skip them), x's dtype.
    """
    N, C_in, H, W = x.shape
    _, Cog, R, S = w.shape
    win = _dy_windows(dy, R, S, stride, padding, dilation, H, W)   # (N, C_out, H, W, R, S)
    dx = np.zeros(x.shape, dtype=x.dtype) if need_dx else None
    dw = np.zeros(w.shape, dtype=x.dtype) if need_dw else None
    for cs, os in _groups(C_in, Cog * groups, groups):
        if need_dx:   # contract o', r, s: (N, H, W, C_in/groups)
            dx[:, cs] = np.tensordot(win[:, os], w[cs], axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
        if need_dw:   # contract n, i, j: (C_in/groups, C_out/groups, R, S)
            dw[cs] = np.tensordot(x[:, cs], win[:, os], axes=([0, 2, 3], [0, 2, 3]))
    db = dy.sum(axis=(0, 2, 3)).astype(x.dtype) if need_dw else None
    return dx, dw, db
