"""VGG-11 and VGG-16 for 32x32 images (the notes' "VGG": pytorch-vgg-cifar10)."""
import numpy as np

from .. import nn
from ._common import check_args, pad_to_32, seeded

# Numbers are 3x3 conv output channels (padding 1), "M" a 2x2 max pool (Simonyan & Zisserman,
# configurations A = VGG-11 and D = VGG-16).
CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


class VGG(nn.Sequential):
    """VGG for CIFAR-size input, as the notes' pytorch-vgg-cifar10: 3x3 convs and five 2x2
    max pools take 32x32 to a 512x1x1 map, then Dropout-512-Dropout-512-classes.

    ``batch_norm=True`` puts a BatchNorm2d after every conv (before its ReLU). 28x28 input
    is zero-padded to 32x32 first (a ``pad`` layer; no parameters). Weights use PyTorch's
    default initialisation (the reference code re-draws conv weights from N(0, 2/(9K))).

    Layers: [pad] features (Sequential, same indices as the reference code) flatten classifier.
    """

    def __init__(self, config="vgg16", in_channels=1, num_classes=10, input_size=28,
                 batch_norm=False, dropout=0.5, dtype=np.float32, seed=None):
        cfg = CONFIGS[config] if isinstance(config, str) else list(config)
        name = config if isinstance(config, str) else "vgg"
        check_args(name, in_channels, num_classes, input_size)
        d = dict(dtype=dtype)
        pad = pad_to_32(name, input_size)
        with seeded(seed):
            features = nn.Sequential()
            c = in_channels
            for v in cfg:
                if v == "M":
                    features.append(nn.MaxPool2d(2))
                    continue
                features.append(nn.Conv2d(c, v, 3, padding=1, **d))
                if batch_norm:
                    features.append(nn.BatchNorm2d(v, **d))
                features.append(nn.ReLU(inplace=True))
                c = v
            classifier = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(c, 512, **d), nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(512, 512, **d), nn.ReLU(inplace=True),
                nn.Linear(512, num_classes, **d),
            )
        layers = {} if pad is None else {"pad": pad}
        layers.update(features=features, flatten=nn.Flatten(), classifier=classifier)
        super().__init__(layers)


def vgg11(in_channels=1, num_classes=10, input_size=28, batch_norm=False, dropout=0.5,
          dtype=np.float32, seed=None):
    """VGG-11 (configuration A) for 32x32 or 28x28 input (see :class:`VGG`)."""
    return VGG("vgg11", in_channels, num_classes, input_size, batch_norm, dropout, dtype, seed)


def vgg16(in_channels=1, num_classes=10, input_size=28, batch_norm=False, dropout=0.5,
          dtype=np.float32, seed=None):
    """VGG-16 (configuration D) for 32x32 or 28x28 input (see :class:`VGG`)."""
    return VGG("vgg16", in_channels, num_classes, input_size, batch_norm, dropout, dtype, seed)
