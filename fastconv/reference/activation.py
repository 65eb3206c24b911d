"""ReLU, forward and backward, and the residual add, in NumPy: the readable twin of
``fastconv._ext.activation``.

(relu.fwd)  y = max(x, 0)   (NaN stays NaN, as PyTorch and np.maximum; -0 gives +0)
(relu.bwd)  dx = dy where y > 0, else 0,   y = max(x, 0)
            (the gradient at 0 is taken as 0, and dx is 0 there even where dy is NaN, as PyTorch)
(add.fwd)   y = a + b, or y = max(a + b, 0): a ResNet block's add and ReLU in one pass
"""
import numpy as np


def relu_forward(x, out, n_threads=None):
    """ReLU, eq. (relu.fwd): out = max(x, 0), written into ``out`` (which may be x).

    x, out : ndarray (n,), one float dtype; n_threads : ignored  ->  None (out is written).
    """
    if out.shape != x.shape:
        raise ValueError(f"relu_forward: x has {x.shape[0]} values but out has {out.shape[0]}")
    # "not x <= 0" rather than "x > 0": NaN is kept, as np.maximum and PyTorch keep it
    np.copyto(out, np.where(x <= 0, x.dtype.type(0), x))


def relu_backward(dy, y, n_threads=None):
    """Gradient of y = max(x, 0), eq. (relu.bwd): dx = dy where y > 0, else 0.

    dy, y : ndarray (n,), one float dtype; n_threads : ignored  ->  dx : ndarray (n,).
    """
    if y.shape != dy.shape:
        raise ValueError(f"relu_backward: dy has {dy.shape[0]} values but y has {y.shape[0]}")
    return np.where(y > 0, dy, dy.dtype.type(0))


def add_forward(a, b, out, relu, n_threads=None):
    """The residual add, eq. (add.fwd): out = a + b, or max(a + b, 0) when ``relu``.

    a, b, out : ndarray (n,), one float dtype (out may be a); relu : bool;
    n_threads : ignored  ->  None (out is written).
    """
    if not a.shape == b.shape == out.shape:
        raise ValueError(f"add_forward: a, b and out have {a.shape[0]}, {b.shape[0]} and "
                         f"{out.shape[0]} values")
    with np.errstate(invalid="ignore", over="ignore"):     # inf - inf is NaN, as in C
        np.add(a, b, out=out)
    if relu:
        relu_forward(out, out)
