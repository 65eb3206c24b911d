"""Layers with explicit forward and backward, built only on fastconv.functional.

No autograd: each layer's ``backward(dy)`` sits next to its ``forward(x)``, returns dx and
adds its parameter gradients into ``param.grad``. Names, arguments, initialisation and
semantics follow PyTorch's ``torch.nn``. Weights are drawn from :mod:`fastconv.nn.init`'s
generator (``fastconv.nn.init.seed(0)`` makes a model reproducible) or from an ``rng``
argument.

>>> import numpy as np, fastconv.nn as nn
>>> net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
...                     nn.Flatten(), nn.Linear(6 * 14 * 14, 10))
>>> net(np.zeros((4, 1, 28, 28), np.float32)).shape
(4, 10)
"""
from . import init
from .activation import ReLU, Sigmoid, Softmax, Tanh
from .blocks import BasicBlock, Inception, ZeroPadShortcut
from .container import Concat, Residual, Sequential
from .conv import Conv2d, ConvTranspose2d
from .dropout import Dropout
from .fold import fold_batchnorm
from .fuse import FusedConv2d, FusedResidual, fuse_for_inference
from .graph import Concatenate, Graph
from .linear import Identity, Linear
from .loss import CrossEntropyLoss, MSELoss
from .module import Module, Parameter, is_grad_enabled, no_grad
from .normalization import BatchNorm1d, BatchNorm2d
from .pooling import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, GlobalAvgPool2d,
                      MaxPool2d, MaxUnpool2d)
from .shape import Flatten, ZeroPad2d

__all__ = [
    "Module", "Parameter", "init", "no_grad", "is_grad_enabled",
    "Conv2d", "ConvTranspose2d", "Linear", "Identity",
    "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
    "MaxUnpool2d",
    "BatchNorm1d", "BatchNorm2d",
    "ReLU", "Sigmoid", "Tanh", "Softmax", "Dropout",
    "Flatten", "ZeroPad2d",
    "Sequential", "Residual", "Concat", "Graph", "Concatenate",
    "BasicBlock", "Inception", "ZeroPadShortcut",
    "CrossEntropyLoss", "MSELoss",
    "fold_batchnorm", "fuse_for_inference", "FusedConv2d", "FusedResidual",
]
