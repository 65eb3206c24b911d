"""MobileNet (Howard et al., 2017) for small images: depthwise-separable convolutions.

A standard 3x3 convolution from C to K channels mixes space and channels at once:
K*C*9 weights and K*C*9 multiply-adds per output pixel. MobileNet factors it into a
depthwise 3x3 convolution (``groups=C``: one 3x3 window per channel, C*9) followed by a
pointwise 1x1 convolution (K*C) that mixes the channels: about 1/K + 1/9 of the cost, 8 to
9 times less for the widths used here. ``separable=False`` builds the same network with
every separable block replaced by one full 3x3 convolution (the "plain" net of the same
depth), for comparing parameters and multiply-adds with ``fastconv.summary``.
"""
import numpy as np

from .. import nn
from ._common import check_args, seeded

# (output channels, stride) of each depthwise-separable block, after a 3x3 stem of 32:
# on 28x28 input the maps are 28 -> 14 -> 7 -> 4 (32x32: 32 -> 16 -> 8 -> 4).
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1))


def _conv_bn_relu(c_in, c_out, kernel, stride, groups, d):
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups,
                      bias=False, **d),
            nn.BatchNorm2d(c_out, **d), nn.ReLU(inplace=True)]


class MobileNet(nn.Sequential):
    """MobileNet v1 for 28x28 or 32x32 input: a 3x3 conv (32 channels, stride 1) + BN + ReLU,
    seven depthwise-separable blocks (:data:`BLOCKS`: 64, 128, 128, 256, 256, 512, 512
    channels; strides 2 at the 2nd, 4th and 6th), global average pooling and a linear layer.
    Each block is ``dw`` (3x3 depthwise conv, ``groups`` = its channels) + ``bn1`` + ``relu1``
    + ``pw`` (1x1 conv) + ``bn2`` + ``relu2``, as in the paper. The paper's network starts
    with stride 2 and five 512-channel blocks for 224x224 ImageNet images; this one keeps
    the stem at stride 1 and has one, for 28x28 maps.

    ``width_mult`` (the paper's alpha) scales every width. ``separable=False`` replaces each
    block by a full 3x3 conv + BN + ReLU of the same widths and strides (``conv``, ``bn``,
    ``relu``): the plain net of the same depth.

    Layers: stem (conv bn relu) block1 ... block7 avg_pool flatten fc.
    """

    def __init__(self, in_channels=1, num_classes=10, input_size=28, width_mult=1.0,
                 separable=True, dtype=np.float32, seed=None):
        name = "mobilenet" if separable else "mobilenet_plain"
        check_args(name, in_channels, num_classes, input_size)
        if not (isinstance(width_mult, (int, float)) and width_mult > 0):
            raise ValueError(f"{name}: width_mult must be a positive number, got {width_mult!r}")
        d = dict(dtype=dtype)

        def width(c):
            return max(1, int(round(c * width_mult)))

        with seeded(seed):
            c = width(32)
            layers = {"stem": nn.Sequential(dict(zip(
                ("conv", "bn", "relu"), _conv_bn_relu(in_channels, c, 3, 1, 1, d))))}
            for i, (out, stride) in enumerate(BLOCKS):
                out = width(out)
                if separable:
                    parts = (_conv_bn_relu(c, c, 3, stride, c, d)          # depthwise
                             + _conv_bn_relu(c, out, 1, 1, 1, d))          # pointwise
                    names = ("dw", "bn1", "relu1", "pw", "bn2", "relu2")
                else:
                    parts = _conv_bn_relu(c, out, 3, stride, 1, d)
                    names = ("conv", "bn", "relu")
                layers[f"block{i + 1}"] = nn.Sequential(dict(zip(names, parts)))
                c = out
            layers.update(avg_pool=nn.GlobalAvgPool2d(), flatten=nn.Flatten(),
                          fc=nn.Linear(c, num_classes, **d))
        super().__init__(layers)


def mobilenet(in_channels=1, num_classes=10, input_size=28, width_mult=1.0, separable=True,
              dtype=np.float32, seed=None):
    """MobileNet with depthwise-separable blocks (see :class:`MobileNet`)."""
    return MobileNet(in_channels, num_classes, input_size, width_mult, separable, dtype, seed)
