"""Pooling layers: MaxPool2d, AvgPool2d and GlobalAvgPool2d (over fastconv.functional)."""
import numpy as np

from .. import functional as F
from ..functional import _pair
from .module import Module


class MaxPool2d(Module):
    r"""2-D max pooling over NCHW input, notes eq. (pool.max), as PyTorch's ``nn.MaxPool2d``.

    Parameters
    ----------
    kernel_size, stride, padding : int or (h, w)
        Window R x S; ``stride`` defaults to ``kernel_size``; padding (at most half the window)
        acts as -inf, so it never wins the max.

    Shape
    -----
    x : (N, C, H, W)  ->  y : (N, C, P, Q), with P = floor((H + 2*padding - R) / stride) + 1.

    Examples
    --------
    >>> MaxPool2d(2)(np.zeros((8, 6, 28, 28), np.float32)).shape
    (8, 6, 14, 14)
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _pair("MaxPool2d", "kernel_size", kernel_size, minimum=1)
        self.stride = (self.kernel_size if stride is None
                       else _pair("MaxPool2d", "stride", stride, minimum=1))
        self.padding = _pair("MaxPool2d", "padding", padding, minimum=0)
        self._x = self._indices = None
        # Keep the argmaxes in training, as PyTorch's autograd does, so that backward only
        # scatters dy; not for 2x2 stride 2 without padding, whose kernels find them again
        # in one branch-free pass faster than they write and read them (docs/performance.md).
        self._keep_indices = not (self.kernel_size == self.stride == (2, 2)
                                  and self.padding == (0, 0))

    def forward(self, x):
        self._x = x = np.ascontiguousarray(x)
        if not (self.training and self._keep_indices):
            self._indices = None
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        y, self._indices = F.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                        return_indices=True)
        return y

    def backward(self, dy):
        """Each dy goes to its window's maximum (the first one on ties)."""
        return F.max_pool2d_backward(dy, self._x, self.kernel_size, self.stride, self.padding,
                                     indices=self._indices)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    r"""2-D average pooling, notes eq. (pool.avg), as PyTorch's ``nn.AvgPool2d``.

    Parameters
    ----------
    kernel_size, stride, padding : int or (h, w)
        As :class:`MaxPool2d`.
    count_include_pad : bool
        True (PyTorch's default): padded zeros count, every window divides by R*S.

    Shape
    -----
    x : (N, C, H, W)  ->  y : (N, C, P, Q), with P = floor((H + 2*padding - R) / stride) + 1.

    Examples
    --------
    >>> AvgPool2d(3, stride=2, padding=1)(np.zeros((2, 4, 32, 32), np.float32)).shape
    (2, 4, 16, 16)
    """

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__()
        self.kernel_size = _pair("AvgPool2d", "kernel_size", kernel_size, minimum=1)
        self.stride = (self.kernel_size if stride is None
                       else _pair("AvgPool2d", "stride", stride, minimum=1))
        self.padding = _pair("AvgPool2d", "padding", padding, minimum=0)
        self.count_include_pad = bool(count_include_pad)
        self._x = None

    def forward(self, x):
        self._x = x = np.ascontiguousarray(x)
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def backward(self, dy):
        """Each dy spreads evenly over its window."""
        return F.avg_pool2d_backward(dy, self._x, self.kernel_size, self.stride, self.padding,
                                     self.count_include_pad)

    def extra_repr(self):
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        if not self.count_include_pad:
            s += ", count_include_pad=False"
        return s


class GlobalAvgPool2d(Module):
    r"""Global average pooling: the mean of each channel's H x W map (NiN, GoogLeNet, ResNet).

    The same as PyTorch's ``nn.AdaptiveAvgPool2d(1)``, and as ``AvgPool2d(H)`` for an H x H
    input, but for any input size: this is what lets the models take 28x28 and 32x32 images.

    Shape
    -----
    x : (N, C, H, W)  ->  y : (N, C, 1, 1)  (follow it with :class:`Flatten` for (N, C)).
    """

    def __init__(self):
        super().__init__()
        self._x = None

    def forward(self, x):
        self._x = x = np.ascontiguousarray(x)
        return F.avg_pool2d(x, x.shape[2:])

    def backward(self, dy):
        return F.avg_pool2d_backward(dy, self._x, self._x.shape[2:])
