"""Network in Network (Lin et al., 2013), as in the course notes (003: "NiN")."""
import numpy as np

from .. import nn
from ._common import check_args, seeded


class NiN(nn.Sequential):
    """The notes' NiN: three "MLP conv" blocks (a 5x5/5x5/3x3 conv followed by two 1x1
    convs, each with ReLU) separated by a 3x3/2 max pool and a 3x3/2 average pool with
    Dropout(0.5); the last 1x1 conv has ``num_classes`` channels, and global average
    pooling turns its maps into the class scores (no fully connected layer).

    The notes end with ``AvgPool2d(8)`` followed by a global average pool; on 32x32 input the
    map is 8x8 there, so both are one global average. Here it is one
    :class:`~fastconv.nn.GlobalAvgPool2d`, which also works on 28x28 input (a 7x7 map).
    As in the notes the last ReLU comes before the pooling, so the scores are >= 0.

    Layers: classifier (Sequential, the notes' indices; its last layer the global pool) flatten.
    """

    def __init__(self, in_channels=1, num_classes=10, input_size=28, dropout=0.5,
                 dtype=np.float32, seed=None):
        check_args("nin", in_channels, num_classes, input_size)
        d = dict(dtype=dtype)
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        with seeded(seed):
            classifier = nn.Sequential(
                nn.Conv2d(in_channels, 192, 5, padding=2, **d), relu(),
                nn.Conv2d(192, 160, 1, **d), relu(),
                nn.Conv2d(160, 96, 1, **d), relu(),
                nn.MaxPool2d(3, stride=2, padding=1),
                nn.Dropout(dropout),

                nn.Conv2d(96, 192, 5, padding=2, **d), relu(),
                nn.Conv2d(192, 192, 1, **d), relu(),
                nn.Conv2d(192, 192, 1, **d), relu(),
                nn.AvgPool2d(3, stride=2, padding=1),
                nn.Dropout(dropout),

                nn.Conv2d(192, 192, 3, padding=1, **d), relu(),
                nn.Conv2d(192, 192, 1, **d), relu(),
                nn.Conv2d(192, num_classes, 1, **d), relu(),
                nn.GlobalAvgPool2d(),
            )
        super().__init__({"classifier": classifier, "flatten": nn.Flatten()})


def nin(in_channels=1, num_classes=10, input_size=28, dropout=0.5, dtype=np.float32, seed=None):
    """The notes' Network in Network (see :class:`NiN`)."""
    return NiN(in_channels, num_classes, input_size, dropout, dtype, seed)
