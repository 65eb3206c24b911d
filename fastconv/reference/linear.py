"""Fully connected layer in NumPy: the readable twin of ``fastconv._ext.linear``.

(linear.fwd)  y[n, o] = b[o] + sum_i x[n, i] * w[o, i]          y = x @ w^T + b
(linear.bwd)  dx = dy @ w,   dw = dy^T @ x,   db[o] = sum_n dy[n, o]
"""
import numpy as np

from .activation import relu_backward, relu_forward


def linear_forward(x, w, b, n_threads=None, relu=False):
    """Eq. (linear.fwd): x (N, I), w (O, I), b (O,) or None  ->  y (N, O); with relu,
    relu(y) (relu.fwd). n_threads: ignored."""
    y = x @ w.T                     # w.T is a view: BLAS reads it transposed, no copy
    if b is not None:
        y += b
    if relu:
        relu_forward(y, y)
    return y


def linear_backward(dy, x, w, n_threads=None, need_dx=True, through_relu=False):
    """Eq. (linear.bwd): dy (N, O), x (N, I), w (O, I)  ->  dx (N, I) or None, dw (O, I), db (O,).
    through_relu: x is a ReLU's output, dx the gradient of its input (0 where x <= 0)."""
    dx = dy @ w if need_dx else None
    if dx is not None and through_relu:
        dx = relu_backward(dx, x)
    return dx, dy.T @ x, dy.sum(axis=0)
