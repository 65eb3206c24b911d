"""Linear (fully connected) and Identity layers."""
import numpy as np

from .. import functional as F
from . import init
from .module import Module, Parameter, _trainable


class Linear(Module):
    r"""Fully connected layer, as PyTorch's ``nn.Linear``: ``y = x @ weight.T + bias``.

    One matrix product forward and two backward (:func:`fastconv.functional.linear`,
    which shares them among the threads): ``dx = dy @ weight``, ``dweight = dy.T @ x``,
    ``dbias = sum_n dy``.

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

    def forward(self, x, relu=False):
        """y = x @ weight^T + bias, eq. (linear.fwd); ``relu=True`` returns relu(y), applied
        as each block is written (``ReLU.forward_after``)."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}): x must be "
                             f"(N, {self.in_features}), got shape {x.shape} (add a Flatten?)")
        if x.dtype != self.weight.data.dtype:
            raise TypeError(f"Linear: x has dtype {x.dtype} but the layer is "
                            f"{self.weight.data.dtype} (convert x, or the model with .to())")
        x = np.ascontiguousarray(x)               # once here, not again in backward
        self._x = self._for_backward(x)
        return F.linear(x, self.weight.data, None if self.bias is None else self.bias.data,
                        **({"relu": True} if relu else {}))

    def backward(self, dy):
        return self._backward(dy, need_dx=True)

    def backward_params(self, dy):
        """dweight and dbias only (no dx): see Module.backward_params."""
        self._backward(dy, need_dx=False)

    def backward_through_relu(self, dy):
        """``relu.backward(self.backward(dy))`` in one pass, for the ReLU whose output is this
        layer's input: dx is 0 where that is <= 0 (eq. (relu.bwd)). How :class:`Sequential`
        runs a ReLU followed by a Linear; the same bits as the two calls."""
        return self._backward(dy, need_dx=True, through_relu=True)

    def _backward(self, dy, need_dx, through_relu=False):
        x = self._cached(self._x)
        if not _trainable(self.weight, self.bias):      # frozen: dx = dy @ weight only
            if not need_dx:
                return None
            dx = F.linear(dy, np.ascontiguousarray(self.weight.data.T))
            return F.relu_backward(dx, x) if through_relu else dx
        dx, dw, db = F.linear_backward(dy, x, self.weight.data, need_dx=need_dx,
                                       **({"through_relu": True} if through_relu else {}))
        if self.weight.requires_grad:
            self.weight.grad += dw
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += db
        return dx

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}"
                + ("" if self.bias is not None else ", bias=False"))


class Identity(Module):
    """Returns its input unchanged (what :func:`fold_batchnorm` leaves where a BN was)."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy
