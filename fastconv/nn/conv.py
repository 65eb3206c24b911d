"""Conv2d and ConvTranspose2d: convolution layers over ``fastconv.functional``."""
import numpy as np

from .. import functional as F
from ..functional import _pair
from . import init
from .module import Module, Parameter


def _layer_backward(layer, dy, need_dx, grads):
    """A conv layer's backward: ``grads(need_dw)`` runs the op's backward, giving (dx, dw, db).
    A frozen weight asks for dx alone (need_dw=False: no dW work at all); with the weight
    frozen and the bias trainable, db is dy summed over (n, p, q) here."""
    train_w, dx = layer.weight.requires_grad, None
    if need_dx or train_w:
        dx, dw, db = grads(train_w)
        if train_w:
            layer.weight.grad += dw
    if layer.bias is not None and layer.bias.requires_grad:
        layer.bias.grad += (db if train_w else
                            dy.sum(axis=(0, 2, 3), dtype=np.float64).astype(dy.dtype))
    return dx


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
    weight : Parameter (K, C, R, S), ``U(-1/sqrt(C*R*S), 1/sqrt(C*R*S))`` (PyTorch's
        ``kaiming_uniform_(a=sqrt(5))``).
    bias : Parameter (K,) with the same bound, or None.

    Examples
    --------
    >>> Conv2d(1, 6, 5, padding=2)(np.zeros((8, 1, 28, 28), np.float32)).shape
    (8, 6, 28, 28)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 algo="auto", dtype=np.float32, rng=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair("Conv2d", "kernel_size", kernel_size, minimum=1)
        self.stride = _pair("Conv2d", "stride", stride, minimum=1)
        self.padding = _pair("Conv2d", "padding", padding, minimum=0)
        self.algo = algo
        R, S = self.kernel_size
        fan_in = self.in_channels * R * S
        self.weight = Parameter(init.kaiming_uniform((self.out_channels, self.in_channels, R, S),
                                                     fan_in, rng=rng, dtype=dtype))
        self.bias = (Parameter(init.uniform_bias((self.out_channels,), fan_in, rng=rng, dtype=dtype))
                     if bias else None)
        self._x = None

    def forward(self, x):
        # Contiguous once here, so that backward does not copy x a second time.
        self._x = x = np.ascontiguousarray(x)
        b = None if self.bias is None else self.bias.data
        return F.conv2d(x, self.weight.data, b, stride=self.stride, padding=self.padding,
                        algo=self.algo)

    def backward(self, dy):
        """Eq. (conv.bwd): adds dw and db into the gradients and returns dx."""
        return self._backward(dy, need_dx=True)

    def backward_params(self, dy):
        """dw and db only: skips dx, about a third of the backward pass (first layer)."""
        self._backward(dy, need_dx=False)

    def _backward(self, dy, need_dx):
        return _layer_backward(self, dy, need_dx, lambda need_dw: F.conv2d_backward(
            dy, self._x, self.weight.data, stride=self.stride, padding=self.padding,
            algo=self.algo, need_dx=need_dx, need_dw=need_dw))

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.bias is None:
            s += ", bias=False"
        if self.algo != "auto":
            s += f", algo={self.algo!r}"
        return s


class ConvTranspose2d(Module):
    r"""2-D transposed convolution (PyTorch's ``nn.ConvTranspose2d``): the gradient of a conv
    with respect to its input, used as a layer, typically to upsample (decoders, segmentation).

    Each input pixel adds the kernel, scaled by its value, onto the output, ``stride`` pixels
    apart (:func:`fastconv.functional.conv_transpose2d`, eq. (conv_t.fwd)); its backward is
    the conv's forward (dx) and the conv's dw with input and output swapped.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, output_padding : int or (h, w)
        padding crops the output; output_padding (smaller than stride) adds rows at the
        bottom and columns on the right.
    groups, dilation : 1 (the only values this version supports)
    bias : bool
    dtype : float32 (default) or float64
    rng : numpy Generator, optional

    Shape
    -----
    x : (N, C_in, H, W)  ->  y : (N, C_out, H_out, W_out),
    ``H_out = (H - 1)*stride - 2*padding + dilation*(R - 1) + output_padding + 1`` (conv_t.out).

    Attributes
    ----------
    weight : Parameter (C_in, C_out/groups, R, S), ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with
        fan_in = C_out/groups * R * S (PyTorch's rule, which reads fan_in from axis 1).
    bias : Parameter (C_out,) with the same bound, or None.

    Examples
    --------
    >>> up = ConvTranspose2d(8, 4, kernel_size=2, stride=2)       # doubles height and width
    >>> up(np.zeros((1, 8, 7, 7), np.float32)).shape
    (1, 4, 14, 14)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, dtype=np.float32, rng=None):
        super().__init__()
        name = "ConvTranspose2d"
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(name, "kernel_size", kernel_size, minimum=1)
        self.stride = _pair(name, "stride", stride, minimum=1)
        self.padding = _pair(name, "padding", padding, minimum=0)
        self.output_padding = _pair(name, "output_padding", output_padding, minimum=0)
        self.dilation = _pair(name, "dilation", dilation, minimum=1)
        if (not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1
                or self.in_channels % groups or self.out_channels % groups):
            raise ValueError(f"{name}: groups must be a positive int dividing in_channels "
                             f"{self.in_channels} and out_channels {self.out_channels}, "
                             f"got {groups!r}")
        self.groups = int(groups)
        F._conv_options(name, self.groups, self.dilation)     # refuses what is unsupported
        if any(o >= max(s, d) for o, s, d in zip(self.output_padding, self.stride,
                                                 self.dilation)):
            raise ValueError(f"{name}: output_padding {self.output_padding} must be smaller "
                             f"than stride {self.stride} or dilation {self.dilation}")
        R, S = self.kernel_size
        fan_in = self.out_channels // groups * R * S
        self.weight = Parameter(init.kaiming_uniform(
            (self.in_channels, self.out_channels // groups, R, S), fan_in, rng=rng, dtype=dtype))
        self.bias = (Parameter(init.uniform_bias((self.out_channels,), fan_in, rng=rng, dtype=dtype))
                     if bias else None)
        self._x = None

    def _options(self):
        return dict(stride=self.stride, padding=self.padding, output_padding=self.output_padding,
                    groups=self.groups, dilation=self.dilation)

    def forward(self, x):
        self._x = x = np.ascontiguousarray(x)
        b = None if self.bias is None else self.bias.data
        return F.conv_transpose2d(x, self.weight.data, b, **self._options())

    def backward(self, dy):
        """Eq. (conv_t.bwd): adds dw and db into the gradients and returns dx."""
        return self._backward(dy, need_dx=True)

    def backward_params(self, dy):
        """dw and db only (the first layer)."""
        self._backward(dy, need_dx=False)

    def _backward(self, dy, need_dx):
        return _layer_backward(self, dy, need_dx, lambda need_dw: F.conv_transpose2d_backward(
            dy, self._x, self.weight.data, **self._options(), need_dx=need_dx, need_dw=need_dw))

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.bias is None:
            s += ", bias=False"
        return s
