"""Layers that only move values around: Flatten and ZeroPad2d."""
import numpy as np

from .module import Module


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W), as PyTorch's ``nn.Flatten()`` (a view, no copy)."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)


class ZeroPad2d(Module):
    """Add zeros around the image, as PyTorch's ``nn.ZeroPad2d``.

    Parameters
    ----------
    padding : int or (left, right, top, bottom)

    Shape
    -----
    x : (N, C, H, W)  ->  y : (N, C, H + top + bottom, W + left + right).

    The models use ``ZeroPad2d(2)`` to lay 28x28 images out as the 32x32 that their
    fixed-size layers were designed for (as LeNet-5 did with MNIST).
    """

    def __init__(self, padding):
        super().__init__()
        if isinstance(padding, (int, np.integer)):
            padding = (int(padding),) * 4
        if len(padding) != 4 or min(padding) < 0:
            raise ValueError(f"ZeroPad2d: padding must be an int or (left, right, top, bottom) "
                             f">= 0, got {padding!r}")
        self.padding = tuple(int(p) for p in padding)
        self._shape = None

    def forward(self, x):
        left, right, top, bottom = self.padding
        N, C, H, W = x.shape
        self._shape = x.shape
        y = np.zeros((N, C, H + top + bottom, W + left + right), dtype=x.dtype)
        y[:, :, top:top + H, left:left + W] = x
        return y

    def backward(self, dy):
        left, _, top, _ = self.padding
        H, W = self._shape[2:]
        return np.ascontiguousarray(dy[:, :, top:top + H, left:left + W])

    def extra_repr(self):
        return f"{self.padding}"
