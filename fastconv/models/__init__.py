"""The classic CNNs of the course notes, built from fastconv.nn layers.

Every builder takes ``in_channels``, ``num_classes`` and ``input_size`` (the images' height
= width: 28 for MNIST/Fashion-MNIST, 32 for CIFAR-10; other sizes up to 32 work), ``dtype``
(float32 by default) and ``seed`` (fixes the initial weights and Dropout masks). The
defaults, 1 channel, 10 classes, 28x28, fit Fashion-MNIST. How each model takes both
28x28 and 32x32 input: LeNet-5 pads in conv1, AlexNet and VGG zero-pad 28x28 to 32x32,
NiN, GoogLeNet, ResNet and MobileNet end with global average pooling. The ResNets use He et al.'s
option B (1x1 conv + BN projection where the shape changes; ``shortcut="A"`` gives the
parameter-free option A, ``shortcut="conv3x3"`` the course notes' 3x3 projection).
Parameter counts equal those of the same architectures built with torch.nn
(tests/test_models.py compares them, and the outputs, when torch is installed).

>>> from fastconv.models import get_model, MODELS
>>> get_model("lenet5").num_parameters()
61706
>>> get_model("resnet20", in_channels=3, input_size=32).num_parameters()
272474
"""
from ..nn.blocks import BasicBlock, Inception, ZeroPadShortcut  # where they lived before
from .alexnet import AlexNet, alexnet
from .googlenet import GoogLeNet, googlenet
from .lenet import LeNet5, lenet5
from .mobilenet import MobileNet, mobilenet
from .nin import NiN, nin
from .resnet import ResNet, resnet20, resnet32, resnet56
from .vgg import VGG, vgg11, vgg16


def _with(builder, **fixed):
    def build(**kw):
        return builder(**{**fixed, **kw})
    build.__doc__ = builder.__doc__
    return build


_REGISTRY = {
    "lenet5": lenet5,
    "lenet5_bn": _with(lenet5, batch_norm=True),
    "alexnet": alexnet,
    "vgg11": vgg11,
    "vgg11_bn": _with(vgg11, batch_norm=True),
    "vgg16": vgg16,
    "vgg16_bn": _with(vgg16, batch_norm=True),
    "nin": nin,
    "googlenet": googlenet,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "mobilenet": mobilenet,
    "mobilenet_plain": _with(mobilenet, separable=False),
}

MODELS = list(_REGISTRY)
"""The names :func:`get_model` knows."""


def get_model(name, **kwargs):
    """Build model ``name`` (one of :data:`MODELS`, case-insensitive) with ``kwargs``, e.g.
    ``get_model("resnet20", in_channels=3, num_classes=10, input_size=32, seed=0)``."""
    key = str(name).lower().replace("-", "")
    if key not in _REGISTRY:
        raise ValueError(f"get_model: unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return _REGISTRY[key](**kwargs)


__all__ = ["get_model", "MODELS",
           "lenet5", "alexnet", "vgg11", "vgg16", "nin", "googlenet",
           "resnet20", "resnet32", "resnet56", "mobilenet",
           "LeNet5", "MobileNet", "AlexNet", "VGG", "NiN", "GoogLeNet", "Inception", "ResNet", "BasicBlock",
           "ZeroPadShortcut"]
