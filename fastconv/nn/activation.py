"""Element-wise activations (ReLU, Sigmoid, Tanh) and Softmax."""
import numpy as np
from scipy.special import expit

from .. import functional as F
from .module import Module


class ReLU(Module):
    r"""``y = max(x, 0)``; backward ``dx = dy * (y > 0)`` (the gradient at 0 is taken as 0).

    Parameters
    ----------
    inplace : bool
        Overwrite x with y (saves an array per layer, as PyTorch's ``inplace=True``). Only
        safe when nothing else keeps x: the models use it after Conv2d, BatchNorm, Linear and
        residual adds, whose outputs no layer caches. ``backward`` never changes dy.
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)
        self._y = None

    def forward(self, x):
        self._y = y = F.relu(x, inplace=self.inplace)
        return y

    def backward(self, dy):
        return F.relu_backward(dy, self._y)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class Sigmoid(Module):
    r"""``y = 1 / (1 + exp(-x))`` (overflow-free, scipy's ``expit``); ``dx = dy * y * (1 - y)``."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        self._y = y = expit(x)
        return y

    def backward(self, dy):
        y = self._y
        return dy * y * (1 - y)


class Tanh(Module):
    r"""``y = tanh(x)``; ``dx = dy * (1 - y**2)``."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        self._y = y = np.tanh(x)
        return y

    def backward(self, dy):
        y = self._y
        return dy * (1 - y * y)


class Softmax(Module):
    r"""``y_i = exp(x_i) / sum_j exp(x_j)`` along ``dim`` (default 1, the classes), computed
    as ``exp(x - max x)`` so that it never overflows; ``dx = y * (dy - sum_j dy_j y_j)``.

    For training use :class:`fastconv.nn.CrossEntropyLoss` on the logits instead: it fuses
    softmax and the log, which is both faster and numerically safer.
    """

    def __init__(self, dim=1):
        super().__init__()
        self.dim = int(dim)
        self._y = None

    def forward(self, x):
        z = x - x.max(axis=self.dim, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=self.dim, keepdims=True)
        self._y = z
        return z

    def backward(self, dy):
        y = self._y
        return y * (dy - np.sum(dy * y, axis=self.dim, keepdims=True))

    def extra_repr(self):
        return f"dim={self.dim}"
