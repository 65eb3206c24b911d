"""fold_batchnorm: fuse each eval-mode BatchNorm into the Conv2d or Linear before it."""
import copy

import numpy as np

from .container import Sequential
from .conv import Conv2d
from .linear import Identity, Linear
from .module import Parameter
from .normalization import _BatchNorm


def fold_batchnorm(model):
    r"""A copy of ``model`` for inference, with every BatchNorm that directly follows a Conv2d
    or Linear (in a Sequential) folded into that layer and replaced by an Identity.

    At test time BN uses its running statistics, so it is an affine map per channel (the
    notes: "during testing batch norm becomes a linear operator ... can be fused with the
    previous fully-connected or conv layer"):

    ``BN(z) = gamma * (z - mu) / sqrt(var + eps) + beta = a * z + c``, with
    ``a = gamma / sqrt(var + eps)`` and ``c = beta - a * mu``.

    With ``z = W * x + b`` (conv or matrix product), ``BN(z) = (a W) * x + (a b + c)``, so

    ``W'[k] = a[k] * W[k]`` and ``b'[k] = a[k] * (b[k] - mu[k]) + beta[k]``.

    The original model is not changed. The copy is in eval mode (a BN without running
    statistics, which uses batch statistics even in eval mode, is left alone); its outputs
    equal the unfolded eval model's up to rounding, and one pass over each feature map is saved.
    """
    folded = copy.deepcopy(model)
    fold_batchnorm_in_place(folded)
    return folded


def fold_batchnorm_in_place(model):
    """:func:`fold_batchnorm` on ``model`` itself (set to eval mode); returns it. The folded
    layers get new weight and bias arrays: arrays they shared before are not written."""
    model.eval()
    for module in model.modules():
        if not isinstance(module, Sequential):
            continue
        layers = list(module)
        for i in range(1, len(layers)):
            prev, bn = layers[i - 1], layers[i]
            if (isinstance(bn, _BatchNorm) and bn.track_running_stats
                    and isinstance(prev, (Conv2d, Linear))
                    and prev.weight.shape[0] == bn.num_features):
                _fold_into(prev, bn)
                module[i] = Identity()
    return model


def _fold_into(layer, bn):
    """W' = a W, b' = a (b - mu) + beta, computed in float64 and stored in the layer's dtype."""
    a, c = bn.affine_params()                   # BN(z) = a * z + c
    w = layer.weight.data
    dtype = w.dtype
    shape = (-1,) + (1,) * (w.ndim - 1)
    layer.weight.data = (w.astype(np.float64) * a.reshape(shape)).astype(dtype)
    layer.weight.grad = np.zeros_like(layer.weight.data)
    b = 0.0 if layer.bias is None else layer.bias.data.astype(np.float64)
    layer.bias = Parameter((a * b + c).astype(dtype))
