"""Containers: Sequential (a chain), Residual (y = f(x) + shortcut(x)) and Concat (branches
joined along channels). Every model of fastconv.models is built from these three."""
import numpy as np

from .. import functional as F
from .activation import ReLU
from .conv import Conv2d
from .linear import Linear
from .module import Module
from .pooling import MaxPool2d


def _named(modules, owner):
    """(names, modules) from ``(m0, m1, ...)`` (named "0", "1", ...) or one ``{name: module}``."""
    if len(modules) == 1 and isinstance(modules[0], dict):
        names, mods = list(modules[0]), list(modules[0].values())
    else:
        names, mods = [str(i) for i in range(len(modules))], list(modules)
    for name, m in zip(names, mods):
        if not isinstance(m, Module):
            raise TypeError(f"{owner}: {name!r} must be a Module, got {type(m).__name__}")
    return names, mods


def _add(a, b, *protected):
    """a + b (:func:`fastconv.functional.add`, on all threads), in place into a when a is a
    fresh array: one that overlaps neither b nor the ``protected`` arrays (the dy we were
    given, which a layer such as Identity may pass on)."""
    if (not (a.flags.writeable and a.flags.c_contiguous) or a.dtype != b.dtype
            or any(np.may_share_memory(a, o) for o in (b,) + protected)):
        return F.add(a, b) if a.dtype == b.dtype else a + b
    return F.add(a, b, out=a)


# Layers whose kernels apply a ReLU as they write their output (forward(x, relu=True)),
# and layers whose backward applies the ReLU's mask to the dx they write for the ReLU in
# front of them (backward_through_relu).
_RELU_AFTER = (Conv2d, Linear)
_RELU_BEFORE = (MaxPool2d, Linear, Conv2d)


def _fusable(first, second, first_types, second_types, method):
    """True when ``first`` and ``second`` are exactly of these layer types and both run
    their class's ``method``: none was replaced on the instance (as ``fastconv.viz`` does
    to capture a layer's output), so running the two as one pass skips no one's code."""
    return (type(first) in first_types and type(second) in second_types
            and method not in first.__dict__ and method not in second.__dict__)


def _conv_relu_pool(layers, i):
    """True when layers i, i+1, i+2 are a Conv2d, a ReLU and a plain 2x2 MaxPool2d that
    can run as one kernel call (``MaxPool2d.forward_after``)."""
    return (i + 2 < len(layers) and _fusable(layers[i], layers[i + 1], (Conv2d,), (ReLU,),
                                             "forward")
            and _fusable(layers[i + 1], layers[i + 2], (ReLU,), (MaxPool2d,), "forward")
            and layers[i + 2].pools_2x2())


def _backward_chain(layers, dy):
    """dy through ``layers`` backwards (Sequential's backward). A ReLU followed by a
    MaxPool2d, a Linear or a Conv2d that took its output runs as one pass (their
    ``backward_through_relu``)."""
    i = len(layers) - 1
    while i >= 0:
        layer = layers[i]
        if (i > 0 and _fusable(layers[i - 1], layer, (ReLU,), _RELU_BEFORE, "backward")
                and layer._x is layers[i - 1]._y):
            dy = layer.backward_through_relu(dy)
            i -= 2
        else:
            dy = layer.backward(dy)
            i -= 1
    return dy


class Sequential(Module):
    """Layers applied one after the other; backward runs them in reverse order.

    ``Sequential(conv, relu, pool)`` names its layers "0", "1", "2" (as PyTorch);
    ``Sequential({"conv1": conv, "relu1": relu})`` names them, and ``seq.conv1`` works.
    Indexing (``seq[0]``, ``seq[-1]``, ``seq["conv1"]``), ``len`` and iteration work too.

    Neighbours run as one pass, with the same results as one at a time (each layer keeps
    what its own backward needs): a Conv2d or Linear followed by a ReLU (the ReLU applied
    as the layer's kernel writes its output, ``ReLU.forward_after``), and a Conv2d, a ReLU
    and a 2x2 MaxPool2d (each image pooled as the kernel finishes it,
    ``MaxPool2d.forward_after``); backwards, a ReLU followed by a MaxPool2d, a Linear or a
    Conv2d (the ReLU's mask applied as that layer writes its dx,
    ``backward_through_relu``). Each saves a pass over an activation and a call.
    """

    def __init__(self, *layers):
        super().__init__()
        self._names, self._layers = _named(layers, type(self).__name__)

    def children(self):
        return zip(self._names, self._layers)

    def __getattr__(self, name):
        # Only called when normal lookup fails: gives access to named layers.
        names = self.__dict__.get("_names", ())
        if name in names:
            return self.__dict__["_layers"][names.index(name)]
        raise AttributeError(f"{type(self).__name__} has no attribute or layer {name!r}")

    def __getitem__(self, index):
        if isinstance(index, str):
            return self._layers[self._names.index(index)]
        return self._layers[index]

    def __setitem__(self, index, module):
        if isinstance(index, str):
            index = self._names.index(index)
        self._layers[index] = module

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)

    def append(self, module, name=None):
        self._names.append(str(len(self._layers)) if name is None else name)
        self._layers.append(module)
        return self

    def split(self, name):
        """(body, head): the layers before layer ``name`` and those from it on, as two
        Sequentials that share this one's layers (training either trains this model), e.g.
        ``body, head = lenet.split("fc3")`` to precompute the body's outputs for a new head."""
        if name not in self._names:
            raise ValueError(f"{type(self).__name__}.split: no layer {name!r}; layers: {self._names}")
        i = self._names.index(name)
        return (Sequential(dict(zip(self._names[:i], self._layers[:i]))),
                Sequential(dict(zip(self._names[i:], self._layers[i:]))))

    def forward(self, x):
        layers, i = self._layers, 0
        while i < len(layers):
            layer = layers[i]
            if _conv_relu_pool(layers, i):                      # conv + ReLU + pool in one
                x = layers[i + 2].forward_after(layers[i + 1], layer, x)
                i += 3
            elif i + 1 < len(layers) and _fusable(layer, layers[i + 1], _RELU_AFTER, (ReLU,),
                                                  "forward"):
                x = layers[i + 1].forward_after(layer, x)       # layer + ReLU in one pass
                i += 2
            else:
                x = layer(x)
                i += 1
        return x

    def backward(self, dy):
        return _backward_chain(self._layers, dy)

    def backward_params(self, dy):
        """Parameter gradients only (see Module.backward_params): layers in front of the first
        one with trainable parameters are skipped (a frozen body costs no backward at all),
        and that one computes no dx."""
        first = next((i for i, layer in enumerate(self._layers)
                      if any(p.requires_grad for p in layer._parameters())), None)
        if first is None:
            return
        dy = _backward_chain(self._layers[first + 1:], dy)
        self._layers[first].backward_params(dy)


class Residual(Module):
    """A residual block: ``y = activation(body(x) + shortcut(x))`` (ResNet's "add").

    Parameters
    ----------
    body : Module
        The residual branch F(x), e.g. conv-BN-ReLU-conv-BN.
    shortcut : Module or None
        None is the identity (x itself); a projection (1x1 conv + BN) when the shape changes.
    activation : Module or None
        Applied after the add (ReLU in ResNet).

    Backward: the gradient of the sum reaches both branches unchanged, and the gradients
    that flow back to x are added: ``dx = body.backward(d) + shortcut.backward(d)``.
    """

    def __init__(self, body, shortcut=None, activation=None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.activation = activation

    def forward(self, x):
        f = self.body(x)
        s = x if self.shortcut is None else self.shortcut(x)
        if f.shape != s.shape:
            raise ValueError(f"Residual: the body gives shape {f.shape} but the shortcut gives "
                             f"{s.shape}; use a projection shortcut")
        if hasattr(self.activation, "forward_sum"):     # ReLU: add and ReLU in one pass
            return self.activation.forward_sum(f, s)
        y = F.add(f, s)    # a new array: body's last layer may cache its output
        return y if self.activation is None else self.activation(y)

    def backward(self, dy):
        d = dy if self.activation is None else self.activation.backward(dy)
        ds = d if self.shortcut is None else self.shortcut.backward(d)
        return _add(self.body.backward(d), ds, d, dy)


class Concat(Module):
    """Parallel branches on the same input, joined along channels (GoogLeNet's Inception).

    ``Concat(b1, b2, ...)`` or ``Concat({"b1": b1, ...})``;
    ``y = concatenate([b(x) for b in branches], axis=1)``. Backward slices dy by channel,
    sends each slice back through its branch and adds the gradients of x.
    """

    def __init__(self, *branches):
        super().__init__()
        self._names, self._branches = _named(branches, type(self).__name__)
        self._splits = None

    def children(self):
        return zip(self._names, self._branches)

    def __getattr__(self, name):
        names = self.__dict__.get("_names", ())
        if name in names:
            return self.__dict__["_branches"][names.index(name)]
        raise AttributeError(f"{type(self).__name__} has no attribute or branch {name!r}")

    def __setitem__(self, index, module):
        if isinstance(index, str):
            index = self._names.index(index)
        self._branches[index] = module

    def forward(self, x):
        ys = [b(x) for b in self._branches]
        self._splits = np.cumsum([0] + [y.shape[1] for y in ys])
        return np.concatenate(ys, axis=1)

    def backward(self, dy):
        dx = None
        for b, c0, c1 in zip(self._branches, self._splits[:-1], self._splits[1:]):
            d = b.backward(np.ascontiguousarray(dy[:, c0:c1]))
            dx = d if dx is None else _add(dx, d, dy)
        return dx
