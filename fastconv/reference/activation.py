"""ReLU's backward pass in NumPy: the readable twin of ``fastconv._ext.activation``.

(relu.bwd)  dx = dy where y > 0, else 0,   y = max(x, 0)
            (the gradient at 0 is taken as 0, and dx is 0 there even where dy is NaN, as PyTorch)
"""
import numpy as np


def relu_backward(dy, y, n_threads=None):
    """Gradient of y = max(x, 0), eq. (relu.bwd): dx = dy where y > 0, else 0.

    dy, y : ndarray (n,), one float dtype; n_threads : ignored  ->  dx : ndarray (n,).
    """
    if y.shape != dy.shape:
        raise ValueError(f"relu_backward: dy has {dy.shape[0]} values but y has {y.shape[0]}")
    return np.where(y > 0, dy, dy.dtype.type(0))
