"""Conv2d: a convolution layer over ``fastconv.functional.conv2d``."""
import numpy as np

from .. import functional as F
from ..functional import _pair
from . import init
from .module import Module, Parameter, _trainable


class Conv2d(Module):
    r"""2-D convolution layer (cross-correlation, as PyTorch's ``nn.Conv2d``), notes eq. (conv.fwd).

    ``y[n, k, p, q] = bias[k] + sum_{c, r, s} weight[k, c, r, s] * x[n, c, p*stride + r - pad,
    q*stride + s - pad]`` with x = 0 outside the image.

    Parameters
    ----------
    in_channels, out_channels : int
        C and K.
    kernel_size, stride, padding : int or (h, w)
        The R x S window, its step and the zeros added on each side.
    groups : int
        G dividing C and K: output channel k sees only the C/G input channels of its group
        (eq. (conv.groups)); G = C is a depthwise convolution (one window per channel).
    bias : bool
        Learn an additive bias per output channel.
    algo : "auto", "direct" or "im2col"
        Passed to :func:`fastconv.functional.conv2d` ("auto" picks the faster for the shape).
    dtype : float32 (default) or float64
    rng : numpy Generator, optional
        Draws the initial weights (default: the generator of :mod:`fastconv.nn.init`).

    Shape
    -----
    x : (N, C, H, W)  ->  y : (N, K, P, Q), P = floor((H + 2*pad_h - R) / stride_h) + 1 (conv.out).

    Attributes
    ----------
    weight : Parameter (K, C/G, R, S), ``U(-1/sqrt(C/G*R*S), 1/sqrt(C/G*R*S))`` (PyTorch's
        ``kaiming_uniform_(a=sqrt(5))``; C/G*R*S is the fan-in).
    bias : Parameter (K,) with the same bound, or None.

    Examples
    --------
    >>> Conv2d(1, 6, 5, padding=2)(np.zeros((8, 1, 28, 28), np.float32)).shape
    (8, 6, 28, 28)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, algo="auto", dtype=np.float32, rng=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair("Conv2d", "kernel_size", kernel_size, minimum=1)
        self.stride = _pair("Conv2d", "stride", stride, minimum=1)
        self.padding = _pair("Conv2d", "padding", padding, minimum=0)
        self.groups = F._groups_arg("Conv2d", groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv2d: groups={self.groups} must divide in_channels "
                             f"({self.in_channels}) and out_channels ({self.out_channels})")
        self.algo = algo
        R, S = self.kernel_size
        fan_in = self.in_channels // self.groups * R * S
        self.weight = Parameter(init.kaiming_uniform(
            (self.out_channels, self.in_channels // self.groups, R, S), fan_in, rng=rng,
            dtype=dtype))
        self.bias = (Parameter(init.uniform_bias((self.out_channels,), fan_in, rng=rng, dtype=dtype))
                     if bias else None)
        self._x = None

    def forward(self, x):
        # Contiguous once here, so that backward does not copy x a second time.
        self._x = x = np.ascontiguousarray(x)
        b = None if self.bias is None else self.bias.data
        return F.conv2d(x, self.weight.data, b, stride=self.stride, padding=self.padding,
                        groups=self.groups, algo=self.algo)

    def backward(self, dy):
        """Eq. (conv.bwd): adds dw and db into the gradients and returns dx."""
        return self._backward(dy, need_dx=True)

    def backward_params(self, dy):
        """dw and db only: skips dx, about a third of the backward pass (first layer)."""
        self._backward(dy, need_dx=False)

    def _backward(self, dy, need_dx):
        if not need_dx and not _trainable(self.weight, self.bias):
            return None                                  # frozen, and nothing needs dx
        # A frozen layer that must pass dx on still gets dw and db from the kernel (which
        # computes them with dx) and drops them: dx alone as a transposed convolution in
        # NumPy was slower than the kernel's whole backward.
        dx, dw, db = F.conv2d_backward(dy, self._x, self.weight.data, stride=self.stride,
                                       padding=self.padding, groups=self.groups,
                                       algo=self.algo, need_dx=need_dx)
        if self.weight.requires_grad:
            self.weight.grad += dw
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += db
        return dx

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.algo != "auto":
            s += f", algo={self.algo!r}"
        return s
