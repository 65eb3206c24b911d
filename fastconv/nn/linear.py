"""Linear (fully connected) and Identity layers."""
import contextlib

import numpy as np

from .. import _threads
from . import init
from .module import Module, Parameter

# Products of fewer multiply-adds than this run NumPy's BLAS on one thread: splitting them
# gains little, and a multi-threaded BLAS call leaves worker threads spinning on the cores
# the next layer's OpenMP threads need. LeNet-5's fc1 (64 x 400 x 120 = 3.1M) is below it:
# its training step on 2 threads went from 5.4 to 4.6 ms (medians, one session).
SINGLE_THREAD_MACS = 1 << 23


def _blas_threads(macs):
    """The context for one product: NumPy's BLAS on one thread when it is small."""
    if macs < SINGLE_THREAD_MACS:
        return _threads.numpy_blas_single_thread()
    return contextlib.nullcontext()


class Linear(Module):
    r"""Fully connected layer, as PyTorch's ``nn.Linear``: ``y = x @ weight.T + bias``.

    One matrix product (BLAS) forward and two backward:
    ``dx = dy @ weight``, ``dweight = dy.T @ x``, ``dbias = sum_n dy``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    dtype : float32 (default) or float64
    rng : numpy Generator, optional (default: the generator of :mod:`fastconv.nn.init`)

    Shape
    -----
    x : (N, in_features)  ->  y : (N, out_features).

    Attributes
    ----------
    weight : Parameter (out_features, in_features), ``U(-1/sqrt(in), 1/sqrt(in))``
        (PyTorch's ``kaiming_uniform_(a=sqrt(5))``).
    bias : Parameter (out_features,), the same bound, or None.

    Examples
    --------
    >>> Linear(400, 120)(np.zeros((8, 400), np.float32)).shape
    (8, 120)
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        fan_in = self.in_features
        self.weight = Parameter(init.kaiming_uniform((self.out_features, self.in_features), fan_in,
                                                     rng=rng, dtype=dtype))
        self.bias = (Parameter(init.uniform_bias((self.out_features,), fan_in, rng=rng, dtype=dtype))
                     if bias else None)
        self._x = None

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}): x must be "
                             f"(N, {self.in_features}), got shape {x.shape} (add a Flatten?)")
        if x.dtype != self.weight.data.dtype:
            raise TypeError(f"Linear: x has dtype {x.dtype} but the layer is "
                            f"{self.weight.data.dtype} (convert x, or the model with .to())")
        self._x = x
        with _blas_threads(self.weight.data.size * x.shape[0]):
            y = x @ self.weight.data.T   # weight.T is a view: BLAS reads it transposed, no copy
        if self.bias is not None:
            y += self.bias.data           # y is ours: add in place
        return y

    def backward(self, dy):
        self.backward_params(dy)
        with _blas_threads(self.weight.data.size * dy.shape[0]):
            return dy @ self.weight.data

    def backward_params(self, dy):
        """dweight and dbias only (no dx): see Module.backward_params."""
        with _blas_threads(self.weight.data.size * dy.shape[0]):
            self.weight.grad += dy.T @ self._x
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}"
                + ("" if self.bias is not None else ", bias=False"))


class Identity(Module):
    """Returns its input unchanged (what :func:`fold_batchnorm` leaves where a BN was)."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy
