"""Fully connected layer in NumPy: the readable twin of ``fastconv._ext.linear``.

(linear.fwd)  y[n, o] = b[o] + sum_i x[n, i] * w[o, i]          y = x @ w^T + b
(linear.bwd)  dx = dy @ w,   dw = dy^T @ x,   db[o] = sum_n dy[n, o]
"""
import numpy as np


def linear_forward(x, w, b, n_threads=None):
    """Eq. (linear.fwd): x (N, I), w (O, I), b (O,) or None  ->  y (N, O). n_threads: ignored."""
    y = x @ w.T                     # w.T is a view: BLAS reads it transposed, no copy
    if b is not None:
        y += b
    return y


def linear_backward(dy, x, w, n_threads=None, need_dx=True):
    """Eq. (linear.bwd): dy (N, O), x (N, I), w (O, I)  ->  dx (N, I) or None, dw (O, I), db (O,)."""
    dx = dy @ w if need_dx else None
    return dx, dy.T @ x, dy.sum(axis=0)
