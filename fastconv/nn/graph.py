"""Models with several inputs and several outputs: Graph and Concatenate.

A :class:`Graph` is a list of named layers, each naming the input(s) it reads — the
functional ``Model([inputs], [outputs])`` of Keras, written out as a table:

>>> import numpy as np, fastconv.nn as nn
>>> model = nn.Graph(
...     inputs=["image", "meta"],
...     layers={
...         "body":    (nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU()), "image"),
...         "meta_bn": (nn.BatchNorm1d(2), "meta"),
...         "joined":  (nn.Concatenate(), ["body", "meta_bn"]),
...         "class":   (nn.Linear(10, 3), "joined"),
...         "box":     (nn.Linear(10, 4), "joined"),
...     },
...     outputs=["class", "box"])
>>> logits, box = model((np.zeros((5, 1, 4, 4), np.float32), np.ones((5, 2), np.float32)))
>>> logits.shape, box.shape
((5, 3), (5, 4))

Forward runs the layers in the order given (each may read only inputs and earlier layers);
backward runs them in reverse, adding the gradients that reach a layer's output from every
layer that reads it, and returns one gradient per input.
"""
import numpy as np

from .container import Sequential
from .module import Module


class Concatenate(Module):
    """Join several arrays along axis 1 (features, or channels of images): Keras's
    ``Concatenate``, used to merge a side input (metadata) with image features.

    ``forward((a, b, ...))`` -> ``concatenate([a, b, ...], axis=1)``; ``backward(dy)``
    slices dy back into ``(da, db, ...)``. (``Concat`` is different: several branches on
    one input.)
    """

    def __init__(self):
        super().__init__()
        self._splits = None

    def forward(self, xs):
        if not isinstance(xs, (tuple, list)) or len(xs) < 2:
            raise TypeError("Concatenate: give a tuple of at least two arrays")
        n = {x.shape[0] for x in xs}
        if len(n) != 1:
            raise ValueError(f"Concatenate: the inputs have different batch sizes "
                             f"{[x.shape for x in xs]}")
        self._splits = np.cumsum([0] + [x.shape[1] for x in xs])
        return np.concatenate(xs, axis=1)

    def backward(self, dy):
        return tuple(np.ascontiguousarray(dy[:, a:b])
                     for a, b in zip(self._splits[:-1], self._splits[1:]))


class Graph(Module):
    """A model with several inputs and outputs (see the module docstring).

    Parameters
    ----------
    inputs : list of str
        Names of the model's inputs; ``forward`` takes a tuple of arrays in this order.
    layers : dict {name: (module, source)}
        In order of computation; ``source`` is the name of an input or of an earlier layer,
        or a list of names (the module then gets a tuple, e.g. :class:`Concatenate`).
    outputs : list of str
        Layer names whose values ``forward`` returns, as a tuple in this order.

    ``backward(dys)`` takes one gradient per output (None for an output without a loss)
    and returns one per input (zeros for an input that no gradient reaches).
    """

    def __init__(self, inputs, layers, outputs):
        super().__init__()
        self.inputs, self.outputs = [str(i) for i in inputs], [str(o) for o in outputs]
        if not self.inputs or not self.outputs:
            raise ValueError("Graph: give at least one input and one output")
        known = set(self.inputs)
        if len(known) != len(self.inputs):
            raise ValueError(f"Graph: input names repeat: {self.inputs}")
        self._names, self._layers, self._sources = [], [], []
        for name, spec in layers.items():
            if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], Module)):
                raise TypeError(f"Graph: layer {name!r} must be (Module, source), got {spec!r}")
            module, source = spec
            sources = [source] if isinstance(source, str) else list(source)
            unknown = [s for s in sources if s not in known]
            if unknown:
                raise ValueError(f"Graph: layer {name!r} reads {unknown}, which is neither an "
                                 f"input nor an earlier layer (known: {sorted(known)})")
            if name in known:
                raise ValueError(f"Graph: the name {name!r} is used twice")
            known.add(name)
            self._names.append(name)
            self._layers.append(module)
            self._sources.append(source)
        missing = [o for o in self.outputs if o not in self._names]
        if missing:
            raise ValueError(f"Graph: outputs {missing} are not layers (layers: {self._names})")
        self._input_shapes = None

    # Sequential's access to named layers (the same _names and _layers): children(),
    # model.body, model["box"]
    children = Sequential.children
    __getattr__ = Sequential.__getattr__
    __getitem__ = Sequential.__getitem__

    def forward(self, x):
        xs = (x,) if isinstance(x, np.ndarray) else tuple(x)
        if len(xs) != len(self.inputs):
            raise ValueError(f"Graph: expected {len(self.inputs)} inputs {self.inputs}, "
                             f"got {len(xs)}")
        self._input_shapes = [(a.shape, a.dtype) for a in xs]
        values = dict(zip(self.inputs, xs))
        for name, module, source in zip(self._names, self._layers, self._sources):
            arg = values[source] if isinstance(source, str) else tuple(values[s] for s in source)
            values[name] = module(arg)
        return tuple(values[o] for o in self.outputs)

    def _backward(self, dys, params_only):
        dys = (dys,) if isinstance(dys, np.ndarray) else tuple(dys)
        if len(dys) != len(self.outputs):
            raise ValueError(f"Graph.backward: expected {len(self.outputs)} gradients "
                             f"{self.outputs}, got {len(dys)}")
        grads = {}

        def add(name, d):        # a new array: never write into a gradient we were given
            grads[name] = d if name not in grads else grads[name] + d

        for o, d in zip(self.outputs, dys):
            if d is not None:
                add(o, d)
        for name, module, source in zip(reversed(self._names), reversed(self._layers),
                                        reversed(self._sources)):
            d = grads.pop(name, None)
            if d is None:            # no loss depends on this layer
                continue
            sources = [source] if isinstance(source, str) else list(source)
            if params_only and all(s in self.inputs for s in sources):
                module.backward_params(d)      # reads the data only: no dx needed
                continue
            dx = module.backward(d)
            for s, ds in zip(sources, (dx,) if isinstance(source, str) else dx):
                add(s, ds)
        if params_only:
            return None
        return tuple(grads[i] if i in grads else np.zeros(shape, dtype)
                     for i, (shape, dtype) in zip(self.inputs, self._input_shapes))

    def backward(self, dys):
        return self._backward(dys, params_only=False)

    def backward_params(self, dys):
        """Parameter gradients only: the layers that read the model's inputs compute no dx."""
        self._backward(dys, params_only=True)

    def __repr__(self):
        lines = [f"Graph(inputs={self.inputs}, outputs={self.outputs},"]
        for name, module, source in zip(self._names, self._layers, self._sources):
            body = repr(module).replace("\n", "\n  ")
            lines.append(f"  ({name} <- {source}): {body}")
        lines.append(")")
        return "\n".join(lines)
