"""AlexNet, the CIFAR-size variant of the course notes (003: "AlexNet")."""
import numpy as np

from .. import nn
from ._common import check_args, pad_to_32, seeded


class AlexNet(nn.Sequential):
    """The notes' AlexNet for 32x32 images: five 3x3 convs (64, 192, 384, 256, 256 channels;
    the first with stride 2) with three 2x2 max pools, then Dropout-4096-Dropout-4096-classes
    on the 256x2x2 map (23.3M parameters for 3 input channels, as ``torch.nn`` builds it).

    28x28 input is zero-padded to 32x32 first (a ``pad`` layer; no parameters), so the
    feature map before the classifier is 2x2 for both input kinds.

    Layers: [pad] features (Sequential, same indices as the notes) flatten classifier.
    """

    def __init__(self, in_channels=1, num_classes=10, input_size=28, dropout=0.5,
                 dtype=np.float32, seed=None):
        check_args("alexnet", in_channels, num_classes, input_size)
        d = dict(dtype=dtype)
        pad = pad_to_32("alexnet", input_size)
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        with seeded(seed):
            features = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, stride=2, padding=1, **d), relu(),
                nn.MaxPool2d(2),
                nn.Conv2d(64, 192, 3, padding=1, **d), relu(),
                nn.MaxPool2d(2),
                nn.Conv2d(192, 384, 3, padding=1, **d), relu(),
                nn.Conv2d(384, 256, 3, padding=1, **d), relu(),
                nn.Conv2d(256, 256, 3, padding=1, **d), relu(),
                nn.MaxPool2d(2),
            )
            classifier = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(256 * 2 * 2, 4096, **d), relu(),
                nn.Dropout(dropout),
                nn.Linear(4096, 4096, **d), relu(),
                nn.Linear(4096, num_classes, **d),
            )
        layers = {} if pad is None else {"pad": pad}
        layers.update(features=features, flatten=nn.Flatten(), classifier=classifier)
        super().__init__(layers)


def alexnet(in_channels=1, num_classes=10, input_size=28, dropout=0.5, dtype=np.float32,
            seed=None):
    """The notes' CIFAR-size AlexNet (see :class:`AlexNet`)."""
    return AlexNet(in_channels, num_classes, input_size, dropout, dtype, seed)
