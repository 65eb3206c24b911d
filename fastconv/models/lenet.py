"""LeNet-5 (LeCun et al., 1998), as in the course notes (003: "LeNet")."""
import numpy as np

from .. import nn
from ._common import check_args, conv_output_size, seeded


class LeNet5(nn.Sequential):
    """Classic LeNet-5: two 5x5 conv + 2x2 max-pool stages (6 and 16 channels), then fully
    connected layers 120-84-classes.

    On 28x28 input (MNIST, Fashion-MNIST) conv1 pads by 2, which lays the image out as the
    32x32 that LeNet-5 was designed for (LeCun padded MNIST the same way); on 32x32 input
    conv1 does not pad. Either way the maps are 28 -> 14 -> 10 -> 5 and fc1 sees 16*5*5 = 400
    values: 61,706 parameters for one input channel, as ``torch.nn`` builds it. Other sizes
    work too (fc1 is sized for them).

    ``batch_norm=True`` inserts BatchNorm after conv1, conv2 (BatchNorm2d), fc1 and fc2
    (BatchNorm1d), before the activation, as the notes' "LeNet with batch normalisation".
    ``activation`` is "relu" (the notes' code) or "sigmoid"/"tanh" (the original paper).

    Layers: conv1 [bn1] act1 pool1 conv2 [bn2] act2 pool2 flatten fc1 [bn3] act3 fc2 [bn4] act4 fc3.
    """

    def __init__(self, in_channels=1, num_classes=10, input_size=28, batch_norm=False,
                 activation="relu", dtype=np.float32, seed=None):
        check_args("lenet5", in_channels, num_classes, input_size)
        act = {"relu": lambda: nn.ReLU(inplace=True), "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
        if activation not in act:
            raise ValueError(f"lenet5: activation must be one of {sorted(act)}, got {activation!r}")
        pad = max(0, (32 - input_size) // 2)
        size = conv_output_size(input_size, 5, 1, pad) // 2      # conv1 then 2x2 pool
        size = conv_output_size(size, 5, 1, 0) // 2              # conv2 then 2x2 pool
        if size < 1:
            raise ValueError(f"lenet5: input_size {input_size} is too small")
        d = dict(dtype=dtype)
        layers = {}
        with seeded(seed):
            layers["conv1"] = nn.Conv2d(in_channels, 6, 5, padding=pad, **d)
            if batch_norm:
                layers["bn1"] = nn.BatchNorm2d(6, **d)
            layers["act1"] = act[activation]()
            layers["pool1"] = nn.MaxPool2d(2)
            layers["conv2"] = nn.Conv2d(6, 16, 5, **d)
            if batch_norm:
                layers["bn2"] = nn.BatchNorm2d(16, **d)
            layers["act2"] = act[activation]()
            layers["pool2"] = nn.MaxPool2d(2)
            layers["flatten"] = nn.Flatten()
            layers["fc1"] = nn.Linear(16 * size * size, 120, **d)
            if batch_norm:
                layers["bn3"] = nn.BatchNorm1d(120, **d)
            layers["act3"] = act[activation]()
            layers["fc2"] = nn.Linear(120, 84, **d)
            if batch_norm:
                layers["bn4"] = nn.BatchNorm1d(84, **d)
            layers["act4"] = act[activation]()
            layers["fc3"] = nn.Linear(84, num_classes, **d)
        super().__init__(layers)


def lenet5(in_channels=1, num_classes=10, input_size=28, batch_norm=False, activation="relu",
           dtype=np.float32, seed=None):
    """LeNet-5 (see :class:`LeNet5`); 61,706 parameters on 1x28x28 or 1x32x32 input."""
    return LeNet5(in_channels, num_classes, input_size, batch_norm, activation, dtype, seed)
