"""Pooling layers over fastconv.functional: MaxPool2d, AvgPool2d, GlobalAvgPool2d,
AdaptiveAvgPool2d, AdaptiveMaxPool2d and MaxUnpool2d. Each takes (N, C, H, W) or unbatched
(C, H, W) input, and an empty batch (N = 0), as PyTorch's."""
import numpy as np

from .. import functional as F
from ..functional import _pair
from .module import Module, is_grad_enabled


class MaxPool2d(Module):
    r"""2-D max pooling, notes eq. (pool.max), as PyTorch's ``nn.MaxPool2d``.

    Parameters
    ----------
    kernel_size, stride, padding : int or (h, w)
        Window R x S; ``stride`` defaults to ``kernel_size``; padding (at most half the window)
        acts as -inf, so it never wins the max.
    dilation : int or (h, w)
        Gaps between the window's cells (rows p*stride - padding + r*dilation).
    return_indices : bool
        forward returns ``(y, indices)``, the argmaxes as :class:`MaxUnpool2d` takes them.
    ceil_mode : bool
        Round the output size up (a last, partial window).

    Shape
    -----
    x : (N, C, H, W) or (C, H, W)  ->  y : (N, C, P, Q) or (C, P, Q), with
    P = floor((H + 2*padding - dilation*(R - 1) - 1) / stride) + 1 (ceil with ceil_mode).

    Examples
    --------
    >>> MaxPool2d(2)(np.zeros((8, 6, 28, 28), np.float32)).shape
    (8, 6, 14, 14)
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        self.kernel_size = _pair("MaxPool2d", "kernel_size", kernel_size, minimum=1)
        self.stride = (self.kernel_size if stride is None
                       else _pair("MaxPool2d", "stride", stride, minimum=1))
        self.padding = _pair("MaxPool2d", "padding", padding, minimum=0)
        self.dilation = _pair("MaxPool2d", "dilation", dilation, minimum=1)
        self.return_indices = bool(return_indices)
        self.ceil_mode = bool(ceil_mode)
        self._x = self._indices = None
        # Keep the argmaxes in training, as PyTorch's autograd does, so that backward only
        # scatters dy; not for 2x2 stride 2 without padding, whose kernels find them again
        # in one branch-free pass faster than they write and read them (docs/performance.md).
        # Nor with dilation, whose kernel finds them again plane by plane anyway.
        self._keep_indices = not (self.kernel_size == self.stride == (2, 2)
                                  and self.padding == (0, 0)) and self.dilation == (1, 1)

    def _args(self):
        return dict(dilation=self.dilation, ceil_mode=self.ceil_mode)

    def forward(self, x):
        x = np.ascontiguousarray(x)
        self._x = self._for_backward(x)
        keep = self.training and self._keep_indices and is_grad_enabled()
        if not (self.return_indices or keep):
            self._indices = None
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, **self._args())
        y, indices = F.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                  return_indices=True, **self._args())
        self._indices = indices if keep else None
        return (y, indices) if self.return_indices else y

    def pools_2x2(self):
        """True for plain 2x2 stride-2 pooling (no padding, dilation, ceil_mode or
        indices returned): what a convolution's kernel can do as it writes its output
        (:meth:`forward_after`)."""
        return (self.kernel_size == self.stride == (2, 2) and self.padding == (0, 0)
                and self.dilation == (1, 1) and not self.ceil_mode and not self.return_indices)

    def forward_after(self, relu, conv, x):
        """``forward(relu(conv(x)))`` in one call of the convolution's kernel, which applies
        the ReLU and pools each image as it writes its output (``F.conv2d_max_pool``, eq.
        (conv.pool)): how :class:`Sequential` runs a Conv2d, a ReLU and this layer (when
        :meth:`pools_2x2`). The same bits as the three calls; the ReLU and this layer keep
        the convolution's output for their backward, as they would have."""
        y, pooled = conv.forward(x, relu=True, max_pool=True)
        relu._y = relu._for_backward(y)
        self._x = self._for_backward(y)
        self._indices = None
        return pooled

    def backward(self, dy):
        """Each dy goes to its window's maximum (the first one on ties)."""
        return F.max_pool2d_backward(dy, self._cached(self._x), self.kernel_size, self.stride,
                                     self.padding, indices=self._indices, **self._args())

    def backward_through_relu(self, dy):
        """``relu.backward(self.backward(dy))`` in one pass, for the ReLU whose output this
        layer pooled: the gradient goes to each window's maximum where that is > 0 (eq.
        (relu.bwd)). How :class:`Sequential` runs a ReLU followed by a max-pool; the same
        bits as the two calls."""
        return F.max_pool2d_backward(dy, self._cached(self._x), self.kernel_size, self.stride,
                                     self.padding, indices=self._indices, through_relu=True,
                                     **self._args())

    def extra_repr(self):
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.return_indices:
            s += ", return_indices=True"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        return s


class AvgPool2d(Module):
    r"""2-D average pooling, notes eq. (pool.avg), as PyTorch's ``nn.AvgPool2d``.

    Parameters
    ----------
    kernel_size, stride, padding : int or (h, w)
        As :class:`MaxPool2d`.
    ceil_mode : bool
        Round the output size up; the last window's divisor counts what lies inside the
        padded input.
    count_include_pad : bool
        True (PyTorch's default): padded zeros count, every window divides by R*S.
    divisor_override : int or None
        Divide every window's sum by this number instead.

    Shape
    -----
    x : (N, C, H, W) or (C, H, W)  ->  y : (N, C, P, Q) or (C, P, Q), with
    P = floor((H + 2*padding - R) / stride) + 1 (ceil with ceil_mode).

    Examples
    --------
    >>> AvgPool2d(3, stride=2, padding=1)(np.zeros((2, 4, 32, 32), np.float32)).shape
    (2, 4, 16, 16)
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.kernel_size = _pair("AvgPool2d", "kernel_size", kernel_size, minimum=1)
        self.stride = (self.kernel_size if stride is None
                       else _pair("AvgPool2d", "stride", stride, minimum=1))
        self.padding = _pair("AvgPool2d", "padding", padding, minimum=0)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = F._divisor("AvgPool2d", divisor_override)
        self._x = None

    def _args(self):
        return dict(ceil_mode=self.ceil_mode, divisor_override=self.divisor_override)

    def forward(self, x):
        x = np.ascontiguousarray(x)
        self._x = self._for_backward(x)
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding,
                            self.count_include_pad, **self._args())

    def backward(self, dy):
        """Each dy spreads evenly over its window."""
        return F.avg_pool2d_backward(dy, self._cached(self._x), self.kernel_size, self.stride,
                                     self.padding, self.count_include_pad, **self._args())

    def extra_repr(self):
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        if not self.count_include_pad:
            s += ", count_include_pad=False"
        if self.divisor_override is not None:
            s += f", divisor_override={self.divisor_override}"
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
        x = np.ascontiguousarray(x)
        self._x = self._for_backward(x)
        return F.avg_pool2d(x, x.shape[-2:])

    def backward(self, dy):
        x = self._cached(self._x)
        return F.avg_pool2d_backward(dy, x, x.shape[-2:])


class AdaptiveAvgPool2d(Module):
    r"""Adaptive average pooling to a fixed output size, notes eq. (pool.adapt), as
    PyTorch's ``nn.AdaptiveAvgPool2d``: window (p, q) covers rows floor(p*H/P) ..
    ceil((p+1)*H/P) - 1 and columns likewise, whatever the input size.

    output_size : int or (P, Q) (None keeps that axis's input size).
    x : (N, C, H, W) or (C, H, W)  ->  y : (N, C, P, Q) or (C, P, Q).
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size
        self._x = None

    def forward(self, x):
        x = np.ascontiguousarray(x)
        self._x = self._for_backward(x)
        return F.adaptive_avg_pool2d(x, self.output_size)

    def backward(self, dy):
        return F.adaptive_avg_pool2d_backward(dy, self._cached(self._x), self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(Module):
    r"""Adaptive max pooling, the windows of :class:`AdaptiveAvgPool2d`, as PyTorch's
    ``nn.AdaptiveMaxPool2d``; with return_indices forward returns ``(y, indices)``.

    x : (N, C, H, W) or (C, H, W)  ->  y : (N, C, P, Q) or (C, P, Q).
    """

    def __init__(self, output_size, return_indices=False):
        super().__init__()
        self.output_size = output_size
        self.return_indices = bool(return_indices)
        self._x = self._indices = None

    def forward(self, x):
        x = np.ascontiguousarray(x)
        self._x = self._for_backward(x)
        y, self._indices = F.adaptive_max_pool2d(x, self.output_size, return_indices=True)
        return (y, self._indices) if self.return_indices else y

    def backward(self, dy):
        """Each dy goes to its window's maximum."""
        return F.adaptive_max_pool2d_backward(dy, self._cached(self._x), self.output_size,
                                              indices=self._indices)

    def extra_repr(self):
        s = f"output_size={self.output_size}"
        return s + ", return_indices=True" if self.return_indices else s


class MaxUnpool2d(Module):
    r"""Max unpooling, notes eq. (pool.unpool), as PyTorch's ``nn.MaxUnpool2d``: puts each
    value back where :class:`MaxPool2d` (``return_indices=True``) found it, zeros elsewhere.

    Called as ``unpool(x, indices, output_size=None)``; the output is (N, C, Ho, Wo) with
    Ho = (P - 1)*stride - 2*padding + kernel_size, or ``output_size``.
    backward(dy) returns the gradient w.r.t. x (dy gathered at the indices).
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _pair("MaxUnpool2d", "kernel_size", kernel_size, minimum=1)
        self.stride = (self.kernel_size if stride is None
                       else _pair("MaxUnpool2d", "stride", stride, minimum=1))
        self.padding = _pair("MaxUnpool2d", "padding", padding, minimum=0)
        self._indices = None

    def __call__(self, x, indices, output_size=None):
        return self.forward(x, indices, output_size)

    def forward(self, x, indices, output_size=None):
        self._indices = indices
        return F.max_unpool2d(x, indices, self.kernel_size, self.stride, self.padding,
                              output_size)

    def backward(self, dy):
        return F.max_unpool2d_backward(dy, self._indices)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
