"""Element-wise activations (ReLU, Sigmoid, Tanh) and Softmax: thin layers over
fastconv.functional, which holds the math (the layers keep the output for backward)."""
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
        y = F.relu(x, inplace=self.inplace)
        self._y = self._for_backward(y)
        return y

    def forward_after(self, layer, x):
        """``forward(layer(x))`` for a Conv2d or Linear ``layer``, with the ReLU applied in
        that layer's kernel as each block of output is written (conv.fused), instead of in
        a second pass over memory: how :class:`Sequential` runs such a layer followed by a
        ReLU. The same bits as the two calls."""
        y = layer.forward(x, relu=True)
        self._y = self._for_backward(y)
        return y

    def forward_sum(self, a, b):
        """``forward(a + b)`` in one pass over memory (:func:`fastconv.functional.add` with
        ``relu=True``): how :class:`Residual` applies its ReLU after the add."""
        y = F.add(a, b, relu=True)
        self._y = self._for_backward(y)
        return y

    def backward(self, dy):
        return F.relu_backward(dy, self._cached(self._y))

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class Sigmoid(Module):
    r"""``y = 1 / (1 + exp(-x))`` (overflow-free, scipy's ``expit``); ``dx = dy * y * (1 - y)``."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        y = F.sigmoid(x)
        self._y = self._for_backward(y)
        return y

    def backward(self, dy):
        return F.sigmoid_backward(dy, self._cached(self._y))


class Tanh(Module):
    r"""``y = tanh(x)``; ``dx = dy * (1 - y**2)``."""

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x):
        y = F.tanh(x)
        self._y = self._for_backward(y)
        return y

    def backward(self, dy):
        return F.tanh_backward(dy, self._cached(self._y))


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
        y = F.softmax(x, self.dim)
        self._y = self._for_backward(y)
        return y

    def backward(self, dy):
        return F.softmax_backward(dy, self._cached(self._y), self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"
