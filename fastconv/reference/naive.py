"""The convolution formulas as plain loops: the oracle that checks the NumPy references.

One output (or one product) at a time, in float64, exactly as eqs. (conv.fwd) and
(conv.bwd) of docs/formulas.md read: slow, and meant for tiny shapes. Positions outside
the image are skipped (x is 0 there), so for non-finite weights or gradients use the
references, which multiply the padding's zeros as the formula does.
"""
import itertools

import numpy as np

__all__ = ["naive_conv2d_forward", "naive_conv2d_backward"]


def naive_conv2d_forward(x, w, b, stride, padding):
    """(conv.fwd) with explicit loops; float64."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    P, Q = (H + 2 * ph - R) // sh + 1, (W + 2 * pw - S) // sw + 1      # (conv.out)
    y = np.zeros((N, K, P, Q))
    for n, k, p, q in itertools.product(range(N), range(K), range(P), range(Q)):
        total = 0.0 if b is None else b[k]
        for c, r, s in itertools.product(range(C), range(R), range(S)):
            ih, iw = p * sh + r - ph, q * sw + s - pw
            if 0 <= ih < H and 0 <= iw < W:           # zero padding
                total += w[k, c, r, s] * x[n, c, ih, iw]
        y[n, k, p, q] = total
    return y


def naive_conv2d_backward(dy, x, w, stride, padding):
    """(conv.bwd) with explicit loops: every product of the forward sends dy back to both
    of its factors; float64."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    P, Q = dy.shape[2:]
    dx, dw, db = np.zeros(x.shape), np.zeros(w.shape), np.zeros(K)
    for n, k, p, q in itertools.product(range(N), range(K), range(P), range(Q)):
        db[k] += dy[n, k, p, q]
        for c, r, s in itertools.product(range(C), range(R), range(S)):
            ih, iw = p * sh + r - ph, q * sw + s - pw
            if 0 <= ih < H and 0 <= iw < W:
                dw[k, c, r, s] += dy[n, k, p, q] * x[n, c, ih, iw]
                dx[n, c, ih, iw] += dy[n, k, p, q] * w[k, c, r, s]
    return dx, dw, db
