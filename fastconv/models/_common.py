"""Helpers shared by the model builders."""
import numpy as np

from ..functional import conv_output_size
from ..nn import ZeroPad2d, init


def check_args(name, in_channels, num_classes, input_size):
    for arg, value in (("in_channels", in_channels), ("num_classes", num_classes),
                       ("input_size", input_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: {arg} must be a positive int, got {value!r}")


def pad_to_32(name, input_size):
    """The ZeroPad2d that lays a smaller image out as 32x32 (None for 32), for the models whose
    fixed-size layers (a classifier on a 2x2 or 1x1 map) were designed for CIFAR's 32x32."""
    if input_size > 32:
        raise ValueError(f"{name}: input_size {input_size} > 32 is not supported (the "
                         "classifier expects the CIFAR 32x32 layout); resize or crop the images")
    extra = 32 - input_size
    if extra == 0:
        return None
    return ZeroPad2d((extra // 2, extra - extra // 2, extra // 2, extra - extra // 2))


def seeded(seed):
    """Context for building a model: ``seed`` fixes every initial weight and Dropout mask."""
    return init.seeded(seed)


__all__ = ["check_args", "pad_to_32", "seeded", "conv_output_size"]
