"""CIFAR ResNets (He et al., 2015, section 4.2): ResNet-20, -32 and -56, as in the course
notes (003: "ResNet") with the paper's shortcuts."""
import numpy as np

from .. import nn
from ..nn.blocks import SHORTCUTS, BasicBlock
from ._common import check_args, seeded


class ResNet(nn.Sequential):
    """CIFAR ResNet of depth 6n + 2: a 3x3 conv (16 channels) + BN + ReLU, three stages of n
    basic blocks (16, 32, 64 channels; the 2nd and 3rd stages start with stride 2), global
    average pooling and a linear layer. n = 3, 5, 9 give ResNet-20, -32, -56.

    Parameters (3 input channels, 10 classes) with the default option-B shortcuts:
    ResNet-20 272,474, ResNet-32 466,906, ResNet-56 855,770 (option A: 269,722, 464,154,
    853,018, the paper's 0.27M, 0.46M, 0.85M).

    The notes pool with ``AvgPool2d(8)`` (the 8x8 map of 32x32 input); here a
    :class:`~fastconv.nn.GlobalAvgPool2d`, the same on 32x32 input, also takes the 7x7 map of
    28x28 input.

    Layers: conv bn relu layer1 layer2 layer3 avg_pool flatten fc (the notes' names).
    """

    def __init__(self, depth=20, in_channels=1, num_classes=10, input_size=28, shortcut="B",
                 dtype=np.float32, seed=None):
        name = f"resnet{depth}"
        check_args(name, in_channels, num_classes, input_size)
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"resnet: depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"{name}: shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        n = (depth - 2) // 6
        d = dict(dtype=dtype)
        with seeded(seed):
            layers = {
                "conv": nn.Conv2d(in_channels, 16, 3, padding=1, bias=False, **d),
                "bn": nn.BatchNorm2d(16, **d),
                "relu": nn.ReLU(inplace=True),
            }
            c = 16
            for stage, width in enumerate((16, 32, 64)):
                blocks = []
                for i in range(n):
                    stride = 2 if stage > 0 and i == 0 else 1
                    blocks.append(BasicBlock(c, width, stride, shortcut, **d))
                    c = width
                layers[f"layer{stage + 1}"] = nn.Sequential(*blocks)
            layers.update(avg_pool=nn.GlobalAvgPool2d(), flatten=nn.Flatten(),
                          fc=nn.Linear(64, num_classes, **d))
        super().__init__(layers)


def resnet20(in_channels=1, num_classes=10, input_size=28, shortcut="B", dtype=np.float32,
             seed=None):
    """CIFAR ResNet-20 (see :class:`ResNet`)."""
    return ResNet(20, in_channels, num_classes, input_size, shortcut, dtype, seed)


def resnet32(in_channels=1, num_classes=10, input_size=28, shortcut="B", dtype=np.float32,
             seed=None):
    """CIFAR ResNet-32 (see :class:`ResNet`)."""
    return ResNet(32, in_channels, num_classes, input_size, shortcut, dtype, seed)


def resnet56(in_channels=1, num_classes=10, input_size=28, shortcut="B", dtype=np.float32,
             seed=None):
    """CIFAR ResNet-56 (see :class:`ResNet`)."""
    return ResNet(56, in_channels, num_classes, input_size, shortcut, dtype, seed)
