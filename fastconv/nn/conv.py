"""Conv2d and ConvTranspose2d: convolution layers over ``fastconv.functional``."""
import numpy as np

from .. import functional as F
from ..functional import _pair
from . import init
from .module import Module, Parameter


def _layer_backward(layer, dy, need_dx, grads):
    """A conv layer's backward: ``grads(need_dw, need_db)`` runs the op's backward, giving
    (dx, dw, db). A frozen weight asks for dx alone (need_dw=False: no dW work at all); with
    the weight frozen and the bias trainable, db is dy summed over (n, p, q) here; a layer
    without a (trainable) bias asks for no db."""
    train_w, dx = layer.weight.requires_grad, None
    train_b = layer.bias is not None and layer.bias.requires_grad
    if need_dx or train_w:
        dx, dw, db = grads(train_w, train_b)
        if train_w:
            layer.weight.grad += dw
    if train_b:
        sum_axes = tuple(i for i in range(dy.ndim) if i != dy.ndim - 3)   # all but channels
        layer.bias.grad += (db if train_w else
                            dy.sum(axis=sum_axes, dtype=np.float64).astype(dy.dtype))
    return dx

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")   # the last three: F.pad's modes


class Conv2d(Module):
    r"""2-D convolution layer (cross-correlation, as PyTorch's ``nn.Conv2d``), notes eq. (conv.fwd).

    ``y[n, k, p, q] = bias[k] + sum_{c, r, s} weight[k, c, r, s] * x[n, c, p*stride + r*dilation
    - pad, q*stride + s*dilation - pad]`` with x = 0 outside the image.

    Parameters
    ----------
    in_channels, out_channels : int
        C and K.
    kernel_size, stride : int or (h, w)
        The R x S window and its step.
    padding : int, (h, w), "same" or "valid"
        Added on each side. "valid": none; "same": the output keeps the input's size
        (stride 1 only; an odd total puts the extra row / column at the bottom / right).
    dilation : int or (h, w)
        The spacing of the window's taps (1: adjacent; 2 spreads a 3x3 kernel over 5x5).
    groups : int
        G dividing C and K: output channel k sees only the C/G input channels of its group
        (eq. (conv.groups)); G = C is a depthwise convolution (one window per channel).
    bias : bool
        Learn an additive bias per output channel.
    padding_mode : "zeros", "reflect", "replicate" or "circular"
        What the padding holds. Other than zeros, the input is padded explicitly by
        :func:`fastconv.functional.pad` and convolved without padding, as PyTorch does.
    algo : "auto", "direct", "im2col" or "winograd" (3x3 kernels with stride 1 only)
        Passed to :func:`fastconv.functional.conv2d` ("auto" picks the faster for the shape).
    dtype : float32 (default) or float64
    rng : numpy Generator, optional
        Draws the initial weights (default: the generator of :mod:`fastconv.nn.init`).

    Shape
    -----
    x : (N, C, H, W) or unbatched (C, H, W)  ->  y : (N, K, P, Q) or (K, P, Q),
    P = floor((H + 2*pad_h - dilation_h*(R - 1) - 1) / stride_h) + 1 (conv.out), likewise Q.

    Attributes
    ----------
    weight : Parameter (K, C/groups, R, S), ``U(-1/sqrt(C/G*R*S), 1/sqrt(C/G*R*S))`` (PyTorch's
        ``kaiming_uniform_(a=sqrt(5))``).
    bias : Parameter (K,) with the same bound, or None.
    padding : as given ("same", "valid" or an (h, w) pair); padding_before : (h, w), the
        rows / columns added before the image ("same" adds one more after it when odd).

    Examples
    --------
    >>> Conv2d(1, 6, 5, padding=2)(np.zeros((8, 1, 28, 28), np.float32)).shape
    (8, 6, 28, 28)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", algo="auto", dtype=np.float32,
                 rng=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair("Conv2d", "kernel_size", kernel_size, minimum=1)
        self.stride = _pair("Conv2d", "stride", stride, minimum=1)
        self.dilation = _pair("Conv2d", "dilation", dilation, minimum=1)
        self.groups = F._groups_arg("Conv2d", groups)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv2d: groups={self.groups} must divide in_channels "
                             f"({self.in_channels}) and out_channels ({self.out_channels})")
        # padding stays "same" / "valid" when given so (as PyTorch); the numbers it means:
        self.padding = padding if isinstance(padding, str) else _pair("Conv2d", "padding",
                                                                      padding, minimum=0)
        sym, extra = F._conv_padding("Conv2d", padding, self.stride, self.dilation,
                                     self.kernel_size)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"Conv2d: padding_mode must be one of {PADDING_MODES}, "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode
        # (top, left) and (bottom, right): the zeros or padded values on each side
        self.padding_before = sym
        self._padding_after = (sym[0] + extra[0], sym[1] + extra[1])
        self.algo = algo
        R, S = self.kernel_size
        fan_in = self.in_channels // self.groups * R * S
        self.weight = Parameter(init.kaiming_uniform(
            (self.out_channels, self.in_channels // self.groups, R, S), fan_in, rng=rng,
            dtype=dtype))
        self.bias = (Parameter(init.uniform_bias((self.out_channels,), fan_in, rng=rng, dtype=dtype))
                     if bias else None)
        self._x = None

    def _explicit_pad(self):
        """F.pad's (left, right, top, bottom) for a padding_mode other than zeros."""
        (top, left), (bottom, right) = self.padding_before, self._padding_after
        return (left, right, top, bottom)

    def forward(self, x, relu=False, max_pool=False):
        """y = conv(x), eq. (conv.fwd); ``relu=True`` returns relu(y), the ReLU applied in
        the kernel's epilogue (``ReLU.forward_after``); ``max_pool=True`` returns (y, its
        2x2 stride-2 max pooling), pooled by the kernel too (``MaxPool2d.forward_after``)."""
        # Contiguous once here, so that backward does not copy x a second time.
        x = np.ascontiguousarray(x)
        b = None if self.bias is None else self.bias.data
        fused = {"relu": True} if relu else {}
        conv = F.conv2d_max_pool if max_pool else F.conv2d
        padding = self.padding
        if self.padding_mode != "zeros":
            # as PyTorch: pad explicitly, then convolve without padding
            x = F.pad(x, self._explicit_pad(), self.padding_mode)
            padding = 0
        self._x = self._for_backward(x)
        return conv(x, self.weight.data, b, stride=self.stride, padding=padding,
                    dilation=self.dilation, groups=self.groups, algo=self.algo, **fused)

    def backward(self, dy):
        """Eq. (conv.bwd): adds dw and db into the gradients and returns dx."""
        return self._backward(dy, need_dx=True)

    def backward_params(self, dy):
        """dw and db only: skips dx, about a third of the backward pass (first layer)."""
        self._backward(dy, need_dx=False)

    def backward_through_relu(self, dy):
        """``relu.backward(self.backward(dy))`` in one pass, for the ReLU whose output is this
        layer's input: dx is 0 where that is <= 0 (eq. (relu.bwd)), applied as the Winograd
        kernel writes dx. How :class:`Sequential` runs a ReLU followed by a Conv2d; the same
        bits as the two calls."""
        if self.padding_mode != "zeros":    # self._x is the padded input: the ReLU's after
            dx = self._backward(dy, need_dx=True)
            (top, left), (bottom, right) = self.padding_before, self._padding_after
            H, W = self._x.shape[-2:]
            return F.relu_backward(dx, self._x[..., top:H - bottom, left:W - right])
        return self._backward(dy, need_dx=True, through_relu=True)

    def _backward(self, dy, need_dx, through_relu=False):
        x = self._cached(self._x)
        explicit = self.padding_mode != "zeros"
        relu = {"through_relu": True} if through_relu else {}
        dx = _layer_backward(self, dy, need_dx, lambda need_dw, need_db: F.conv2d_backward(
            dy, x, self.weight.data, stride=self.stride,
            padding=0 if explicit else self.padding, dilation=self.dilation, groups=self.groups,
            algo=self.algo, need_dx=need_dx, need_dw=need_dw, need_db=need_db, **relu))
        if explicit and dx is not None:
            dx = F.pad_backward(dx, self._explicit_pad(), self.padding_mode)
        return dx

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
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
        x = np.ascontiguousarray(x)
        self._x = self._for_backward(x)
        b = None if self.bias is None else self.bias.data
        return F.conv_transpose2d(x, self.weight.data, b, **self._options())

    def backward(self, dy):
        """Eq. (conv_t.bwd): adds dw and db into the gradients and returns dx."""
        return self._backward(dy, need_dx=True)

    def backward_params(self, dy):
        """dw and db only (the first layer)."""
        self._backward(dy, need_dx=False)

    def _backward(self, dy, need_dx):
        x = self._cached(self._x)
        return _layer_backward(self, dy, need_dx,
                               lambda need_dw, need_db: F.conv_transpose2d_backward(
                                   dy, x, self.weight.data, **self._options(),
                                   need_dx=need_dx, need_dw=need_dw))

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
