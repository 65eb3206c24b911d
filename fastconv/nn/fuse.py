"""fuse_for_inference: a model's eval-mode forward with fewer passes over memory.

Three rewrites, each exact up to rounding (eq. (conv.fused) of docs/formulas.md):

1. every BatchNorm right after a Conv2d or Linear is folded into its weights and bias
   (:func:`~fastconv.nn.fold_batchnorm`: in eval mode BN is an affine map per channel);
2. a Conv2d followed by a ReLU becomes one :class:`FusedConv2d`, whose kernel applies the
   ReLU in its epilogue, to each block of output as it is written
   (``F.conv2d(..., relu=True)``), and pools each image 2x2 when a plain
   ``MaxPool2d(2)`` comes next (``F.conv2d_max_pool``, eq. (conv.pool));
3. a residual block ``relu(body(x) + shortcut(x))`` whose body ends in a convolution
   becomes a :class:`FusedResidual`: the shortcut is computed first and the body's last
   convolution adds it and applies the ReLU in its epilogue
   (``F.conv2d(..., relu=True, residual=shortcut)``).

Layers that do nothing in eval mode (Identity, what folding leaves, and Dropout) are dropped.
Anything else is kept as it is, so any model can be fused; what does not match a pattern
simply runs unfused.

>>> import numpy as np
>>> from fastconv import nn
>>> from fastconv.models import resnet20
>>> model = resnet20(seed=0)
>>> fast = nn.fuse_for_inference(model)             # model itself is not changed
>>> x = np.zeros((2, 1, 28, 28), np.float32)
>>> np.allclose(fast(x), model.eval()(x), atol=1e-4)
True
"""
import copy

import numpy as np

from .. import functional as F
from .activation import ReLU
from .container import Residual, Sequential
from .conv import Conv2d
from .dropout import Dropout
from .fold import fold_batchnorm_in_place
from .linear import Identity
from .module import Module
from .pooling import MaxPool2d

__all__ = ["fuse_for_inference", "FusedConv2d", "FusedResidual"]


def _inference_only(layer):
    raise RuntimeError(f"{type(layer).__name__} is for inference only (made by "
                       "fastconv.nn.fuse_for_inference): train the original model, then fuse it "
                       "again")


class FusedConv2d(Conv2d):
    """A Conv2d (with any BatchNorm after it already folded in) and, with ``relu``, the ReLU
    after it: ``y = relu(conv2d(x, weight, bias) + residual)``, the ReLU and the optional
    residual applied in the convolution kernel's epilogue (``F.conv2d(..., relu=,
    residual=)``); with ``pool``, the 2x2 stride-2 max pooling after those, each image
    pooled by the kernel as it finishes it (``F.conv2d_max_pool``). Inference only: it keeps
    nothing for a backward pass.

    Made by :func:`fuse_for_inference` from a Conv2d (sharing its parameters); shapes as
    :class:`Conv2d`, and ``residual``, when given, has the output's shape.
    """

    @classmethod
    def from_conv(cls, conv, relu, pool=False):
        """The FusedConv2d of ``conv`` (its parameters, not copies), with or without ReLU
        and pooling."""
        fused = cls.__new__(cls)
        fused.__dict__.update(conv.__dict__)
        fused._x = None
        fused.relu = bool(relu)
        fused.pool = bool(pool)
        return fused

    def forward(self, x, residual=None, relu=None):
        """conv2d + bias, + ``residual`` (None: nothing), then ReLU when ``relu`` (None:
        this layer's ``relu``), then the pooling when ``pool``, in one kernel call."""
        b = None if self.bias is None else self.bias.data
        conv = F.conv2d_max_pool if self.pool else F.conv2d
        y = conv(x, self.weight.data, b, stride=self.stride, padding=self.padding,
                 algo=self.algo, relu=self.relu if relu is None else relu, residual=residual)
        return y[1] if self.pool else y

    def backward(self, dy):
        _inference_only(self)

    def backward_params(self, dy):
        _inference_only(self)

    def extra_repr(self):
        return (super().extra_repr() + (", relu=True" if self.relu else "")
                + (", max_pool=2" if self.pool else ""))


class FusedResidual(Residual):
    """A residual block ``relu(body(x) + shortcut(x))`` whose body ends in a convolution,
    for inference: the shortcut runs first, then the body, whose last layer (a
    :class:`FusedConv2d`) adds the shortcut's output and applies the ReLU in its epilogue,
    so the sum and the ReLU make no pass of their own over memory.

    Made by :func:`fuse_for_inference` from a :class:`~fastconv.nn.Residual` (e.g. ResNet's
    BasicBlock), with the same ``body``, ``shortcut`` and ``activation`` (what ``summary``
    and ``repr`` show). Inference only.
    """

    def forward(self, x):
        s = x if self.shortcut is None else self.shortcut(x)
        *head, last = self.body
        for layer in head:
            x = layer(x)
        return last.forward(x, residual=s, relu=self.activation is not None)

    def backward(self, dy):
        _inference_only(self)

    def backward_params(self, dy):
        _inference_only(self)


def _fusable_conv(layer):
    """A plain Conv2d whose forward FusedConv2d reproduces (attributes it does not know,
    e.g. a subclass's, keep the layer unfused)."""
    return (type(layer) is Conv2d and getattr(layer, "groups", 1) == 1
            and tuple(getattr(layer, "dilation", (1, 1))) == (1, 1)
            and getattr(layer, "padding_mode", "zeros") == "zeros")


def _takes_relu(layer):
    """Whether a ReLU after ``layer`` can move into its epilogue."""
    return ((_fusable_conv(layer) or type(layer) is FusedConv2d)
            and not getattr(layer, "relu", False))


def _fuse_sequence(named):
    """The (name, layer) pairs of a Sequential, fused: each layer fused inside, the no-ops
    dropped, each Conv2d + ReLU one FusedConv2d (under the conv's name), with a plain 2x2
    MaxPool2d after them too."""
    out = []
    for name, layer in named:
        layer = _fuse(layer)
        if type(layer) in (Identity, Dropout):
            continue
        if type(layer) is ReLU and out and _takes_relu(out[-1][1]):
            out[-1] = (out[-1][0], FusedConv2d.from_conv(out[-1][1], relu=True))
            continue
        last = out[-1][1] if out else None
        if (type(layer) is MaxPool2d and layer.pools_2x2() and type(last) is FusedConv2d
                and last.relu and not last.pool):
            out[-1] = (out[-1][0], FusedConv2d.from_conv(last, relu=True, pool=True))
            continue
        out.append((name, layer))
    return out


def _fuse_residual(block):
    """A FusedResidual for ``block`` (already fused inside), or the block itself when its
    body does not end in a convolution or its activation is not a ReLU."""
    body = block.body
    if not (isinstance(body, Sequential) and len(body) and _takes_relu(body[-1])
            and (block.activation is None or type(block.activation) is ReLU)):
        return block
    body[-1] = FusedConv2d.from_conv(body[-1], relu=False)   # FusedResidual passes the ReLU
    fused = FusedResidual(body, block.shortcut, block.activation)
    fused.eval()
    return fused


def _set_child(module, name, child):
    """Put ``child`` in the place of ``module``'s child called ``name`` (see children())."""
    if hasattr(type(module), "__setitem__"):                     # Sequential, Concat
        module[name] = child
    elif isinstance(getattr(module, "_layers", None), list):     # Graph
        module._layers[module._names.index(name)] = child
    elif "." in name:                                            # a list attribute
        attr, i = name.rsplit(".", 1)
        getattr(module, attr)[int(i)] = child
    else:
        setattr(module, name, child)


def _fuse(module):
    """``module`` with the fusions applied inside it (in place), or its replacement.
    Containers whose forward a subclass overrides are only fused inside."""
    if isinstance(module, Sequential) and type(module).forward is Sequential.forward:
        named = _fuse_sequence(list(module.children()))
        module._names, module._layers = [n for n, _ in named], [m for _, m in named]
        return module
    for name, child in list(module.children()):
        new = _fuse(child)
        if new is not child:
            _set_child(module, name, new)
    if isinstance(module, Residual) and type(module).forward is Residual.forward:
        return _fuse_residual(module)
    return module


def fuse_for_inference(model):
    """A new model that computes ``model``'s eval-mode forward faster; ``model`` itself is
    not changed (its weights are copied).

    BatchNorm layers are folded into the Conv2d or Linear before them, bias + ReLU (and a
    residual block's add) run in the convolution kernel's epilogue, and layers that do
    nothing in eval mode are dropped (see this module's docstring). The outputs equal the
    unfused eval model's up to rounding: folding BN changes the weights' last bits.

    The copy is for inference only: its fused layers raise on ``backward``. Use it like the
    model (``fused(x)``, ``fused.predict(x, batch_size=...)``); train the original and fuse
    again after changing its weights.

    Parameters
    ----------
    model : Module (any: layers that match no fusion run as they are)

    Returns
    -------
    Module, in eval mode, with ``fused_for_inference`` True.
    """
    if not isinstance(model, Module):
        raise TypeError(f"fuse_for_inference: model must be a fastconv.nn.Module, got "
                        f"{type(model).__name__}")
    return _fused_copy(model, share_weights=False)


def _fused_copy(model, share_weights):
    """fuse_for_inference's model; with ``share_weights`` its unchanged layers read the
    weight arrays of ``model`` instead of copies (for one predict call, which only reads
    them: copying VGG's weights would cost more than the forward pass of a small batch)."""
    memo = {}
    if share_weights:
        for p in model._parameters():
            memo[id(p.data)] = p.data
            memo[id(p.grad)] = p.grad
    fused = copy.deepcopy(model, memo)
    if getattr(fused, "fused_for_inference", False):
        return fused
    fused = _fuse(fold_batchnorm_in_place(fused))
    fused.eval()
    fused.fused_for_inference = True
    return fused


def _drop_caches(model):
    """Forget the arrays the forward pass kept for a backward pass (private ndarray
    attributes, as Module.__deepcopy__ does): predict needs none of them."""
    for module in model.modules():
        for name, value in vars(module).items():
            if name.startswith("_") and isinstance(value, np.ndarray):
                setattr(module, name, None)
