"""Blocks of layers that the classic models repeat: ResNet's BasicBlock (with its
parameter-free ZeroPadShortcut) and GoogLeNet's Inception. Each is built from the
containers (Residual, Concat, Sequential) and the layers of this package, so its backward
is theirs; only ZeroPadShortcut has a forward and backward of its own."""
import numpy as np

from .activation import ReLU
from .container import Concat, Residual, Sequential
from .conv import Conv2d
from .module import Module
from .normalization import BatchNorm2d
from .pooling import MaxPool2d

SHORTCUTS = ("B", "A", "conv3x3")
"""The shortcut kinds of :class:`BasicBlock` (He et al.'s options B and A, the notes' 3x3)."""


class ZeroPadShortcut(Module):
    """He et al.'s option A shortcut, parameter-free: take every ``stride``-th pixel and add
    zero channels (half before, half after) up to ``out_channels``.

    x : (N, C, H, W)  ->  y : (N, out_channels, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        s = self.stride
        sub = x[:, :, ::s, ::s]
        before = (self.out_channels - self.in_channels) // 2
        y = np.zeros((x.shape[0], self.out_channels) + sub.shape[2:], dtype=x.dtype)
        y[:, before:before + self.in_channels] = sub
        return y

    def backward(self, dy):
        s = self.stride
        before = (self.out_channels - self.in_channels) // 2
        dx = np.zeros(self._shape, dtype=dy.dtype)
        dx[:, :, ::s, ::s] = dy[:, before:before + self.in_channels]
        return dx

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(Residual):
    """ResNet's basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with
    3x3 convs (no bias: BN follows), conv1 carrying the stride.

    The shortcut is the identity when the shape is kept. When it changes (stride 2, more
    channels) it is, by ``shortcut``:

    * "B" (default): a 1x1 conv with the stride + BN, He et al.'s projection (option B), as
      torchvision's ResNets;
    * "A": :class:`ZeroPadShortcut`, He et al.'s parameter-free option A (their CIFAR models);
    * "conv3x3": a 3x3 conv with the stride + BN, the course notes' code.
    """

    def __init__(self, in_channels, out_channels, stride=1, shortcut="B", dtype=np.float32):
        if shortcut not in SHORTCUTS:
            raise ValueError(f"BasicBlock: shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        d = dict(dtype=dtype)
        body = Sequential({
            "conv1": Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, **d),
            "bn1": BatchNorm2d(out_channels, **d),
            "relu": ReLU(inplace=True),
            "conv2": Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, **d),
            "bn2": BatchNorm2d(out_channels, **d),
        })
        proj = None
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                proj = ZeroPadShortcut(in_channels, out_channels, stride)
            else:
                k = 1 if shortcut == "B" else 3
                proj = Sequential(Conv2d(in_channels, out_channels, k, stride, k // 2,
                                         bias=False, **d),
                                  BatchNorm2d(out_channels, **d))
        super().__init__(body, proj, ReLU(inplace=True))


def conv_bn_relu(c_in, c_out, k, dtype=np.float32):
    """[Conv2d (k x k, "same" padding), BatchNorm2d, ReLU]: GoogLeNet's unit, as a list of
    layers to splice into a Sequential."""
    return [Conv2d(c_in, c_out, k, padding=k // 2, dtype=dtype), BatchNorm2d(c_out, dtype=dtype),
            ReLU(inplace=True)]


class Inception(Concat):
    """The Inception block: four branches on the same input, joined along channels.

    b1: 1x1 conv; b2: 1x1 conv then 3x3 conv; b3: 1x1 conv then two 3x3 convs (in place of
    one 5x5); b4: 3x3/1 max pool then 1x1 conv. Every conv is followed by BatchNorm and ReLU,
    and every branch keeps the height and width, so the output has
    ``n1x1 + n3x3 + n5x5 + pool_planes`` channels.
    """

    def __init__(self, in_planes, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes,
                 dtype=np.float32):
        super().__init__({
            "b1": Sequential(*conv_bn_relu(in_planes, n1x1, 1, dtype)),
            "b2": Sequential(*conv_bn_relu(in_planes, n3x3red, 1, dtype),
                             *conv_bn_relu(n3x3red, n3x3, 3, dtype)),
            "b3": Sequential(*conv_bn_relu(in_planes, n5x5red, 1, dtype),
                             *conv_bn_relu(n5x5red, n5x5, 3, dtype),
                             *conv_bn_relu(n5x5, n5x5, 3, dtype)),
            "b4": Sequential(MaxPool2d(3, stride=1, padding=1),
                             *conv_bn_relu(in_planes, pool_planes, 1, dtype)),
        })
        self.out_channels = n1x1 + n3x3 + n5x5 + pool_planes
