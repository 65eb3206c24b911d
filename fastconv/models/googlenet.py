"""GoogLeNet (Szegedy et al., 2014) for 32x32 images, as in the course notes (003: "GoogLeNet";
the code the notes quote is facebookresearch/mixup-cifar10's models/googlenet.py)."""
import numpy as np

from .. import nn
from ..nn.blocks import Inception, conv_bn_relu
from ._common import check_args, seeded


class GoogLeNet(nn.Sequential):
    """The notes' GoogLeNet: a 3x3 conv stem (192 channels), Inception blocks 3a-3b, a 3x3/2
    max pool, 4a-4e, a 3x3/2 max pool, 5a-5b, global average pooling and one linear layer
    (1024 -> classes). 6.2M parameters for 3 input channels.

    The notes pool with ``AvgPool2d(8)`` (the 8x8 map of 32x32 input); here a
    :class:`~fastconv.nn.GlobalAvgPool2d`, the same on 32x32 input, also takes the 7x7 map of
    28x28 input.

    Layers: pre_layers a3 b3 maxpool3 a4 b4 c4 d4 e4 maxpool4 a5 b5 avgpool flatten linear
    (the notes' names; the notes reuse one max-pool module where this needs two, since each
    layer caches its input for backward).
    """

    def __init__(self, in_channels=1, num_classes=10, input_size=28, dtype=np.float32, seed=None):
        check_args("googlenet", in_channels, num_classes, input_size)
        d = dict(dtype=dtype)
        with seeded(seed):
            layers = {
                "pre_layers": nn.Sequential(*conv_bn_relu(in_channels, 192, 3, dtype)),
                "a3": Inception(192, 64, 96, 128, 16, 32, 32, **d),
                "b3": Inception(256, 128, 128, 192, 32, 96, 64, **d),
                "maxpool3": nn.MaxPool2d(3, stride=2, padding=1),
                "a4": Inception(480, 192, 96, 208, 16, 48, 64, **d),
                "b4": Inception(512, 160, 112, 224, 24, 64, 64, **d),
                "c4": Inception(512, 128, 128, 256, 24, 64, 64, **d),
                "d4": Inception(512, 112, 144, 288, 32, 64, 64, **d),
                "e4": Inception(528, 256, 160, 320, 32, 128, 128, **d),
                "maxpool4": nn.MaxPool2d(3, stride=2, padding=1),
                "a5": Inception(832, 256, 160, 320, 32, 128, 128, **d),
                "b5": Inception(832, 384, 192, 384, 48, 128, 128, **d),
                "avgpool": nn.GlobalAvgPool2d(),
                "flatten": nn.Flatten(),
                "linear": nn.Linear(1024, num_classes, **d),
            }
        super().__init__(layers)


def googlenet(in_channels=1, num_classes=10, input_size=28, dtype=np.float32, seed=None):
    """The notes' CIFAR-size GoogLeNet (see :class:`GoogLeNet`)."""
    return GoogLeNet(in_channels, num_classes, input_size, dtype, seed)
