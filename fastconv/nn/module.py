"""The layer base classes: a Parameter (value + gradient) and a Module (forward/backward).

There is no autograd: every layer writes its own ``backward``, next to its ``forward``,
so a student sees the whole backward pass. A layer caches in ``forward`` what its
``backward`` needs, and ``backward(dy)`` returns ``dx`` while *adding* the parameter
gradients into ``param.grad`` (call ``zero_grad()`` before each step, as in PyTorch).
Training calls ``backward_params(dy)`` on the model instead: the same parameter gradients,
without the gradient of the input images, which nothing uses (PyTorch skips it too).

Two rules keep the containers correct without copies: ``backward`` never changes ``dy``
(a residual block hands the same ``dy`` to two branches), and ``forward`` never changes
``x`` unless the layer says so (``ReLU(inplace=True)``, used by the models only where no
other layer keeps ``x``). ``backward`` uses what the latest ``forward`` cached.
"""
import copy

import numpy as np


class Parameter:
    """A trainable array and its gradient (``grad`` has data's shape and dtype)."""

    def __init__(self, data):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and model.

    Subclasses set ``Parameter`` attributes (trainable), buffer arrays registered with
    ``register_buffer`` (state that is saved but not trained, e.g. BN running statistics)
    and child ``Module`` attributes; ``parameters()``, ``state_dict()`` and
    ``train()``/``eval()`` find them by walking attributes in definition order.
    """

    training = True

    def __init__(self):
        self.training = True
        self._buffers = {}

    # --- the computation -------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def backward_params(self, dy):
        """As ``backward(dy)``, for a module whose input needs no gradient (the first layer
        of a network, whose input is the data): adds the parameter gradients and returns
        None. Conv2d and Linear then skip computing dx; containers skip the layers in front
        of their first trainable one."""
        self.backward(dy)

    def __call__(self, x):
        return self.forward(x)

    def __deepcopy__(self, memo):
        """Copy parameters, buffers and children, but not the arrays a forward pass cached
        for backward (private ``_name`` arrays): a copy starts with a fresh forward."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for name, value in vars(self).items():
            if name.startswith("_") and isinstance(value, np.ndarray):
                value = None
            setattr(new, name, copy.deepcopy(value, memo))
        return new

    # --- structure -------------------------------------------------------------
    def children(self):
        """Direct sub-modules as (name, module), in definition order."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            # (value[0] first: the tuples of ints of every layer, e.g. kernel_size, stop
            # there without a generator; zero_grad walks the model every training step)
            elif (isinstance(value, (list, tuple)) and value and isinstance(value[0], Module)
                  and all(isinstance(v, Module) for v in value)):
                for i, v in enumerate(value):
                    yield f"{name}.{i}", v

    def named_modules(self, prefix=""):
        """(dotted name, module) for this module (name ``prefix``) and every descendant."""
        yield prefix, self
        for name, child in self.children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) for this module and its children, in a fixed order."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield (f"{prefix}.{name}" if prefix else name), value
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self):
        return list(self._parameters())

    def _parameters(self):
        """The Parameters of parameters(), in the same order, without building their dotted
        names (the f-strings cost most of a walk; zero_grad walks every training step)."""
        for value in vars(self).values():
            if isinstance(value, Parameter):
                yield value
        for _, child in self.children():
            yield from child._parameters()

    def modules(self):
        """This module and every descendant, depth first."""
        return [m for _, m in self.named_modules()]

    @property
    def dtype(self):
        """The dtype of the first parameter (or buffer); None for a layer without state."""
        for _, p in self.named_parameters():
            return p.data.dtype
        for _, b in self.named_buffers():
            return b.dtype
        return None

    def register_buffer(self, name, array):
        """Keep ``array`` as saved, untrained state (``self.<name>``), e.g. running statistics."""
        self._buffers[name] = None
        setattr(self, name, array)

    def named_buffers(self, prefix=""):
        for name in getattr(self, "_buffers", {}):
            yield (f"{prefix}.{name}" if prefix else name), getattr(self, name)
        for name, child in self.children():
            yield from child.named_buffers(f"{prefix}.{name}" if prefix else name)

    def zero_grad(self):
        for p in self._parameters():
            p.grad.fill(0)

    def train(self, mode=True):
        """Set training mode (BN uses batch statistics, Dropout drops) here and in every child."""
        for _, module in self.named_modules():
            module.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # --- saving ----------------------------------------------------------------
    def state_dict(self):
        """Copies of every parameter and buffer, by dotted name (what a checkpoint stores)."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update({name: np.array(b, copy=True) for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state):
        """Load arrays saved by ``state_dict``; names and shapes must match exactly."""
        own = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        expected = set(own) | set(buffers)
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, value in state.items():
            value = np.asarray(value)
            target = own[name].data if name in own else buffers[name]
            if value.shape != target.shape:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape}, "
                                 f"the model expects {target.shape}")
            target[...] = value    # in place: keeps dtypes and any references to the arrays

    def to(self, dtype):
        """Convert every parameter, gradient and buffer to ``dtype`` (float32 or float64)."""
        dtype = np.dtype(dtype)
        for _, p in self.named_parameters():
            p.data = p.data.astype(dtype)
            p.grad = p.grad.astype(dtype)
        for _, module in self.named_modules():
            for name in getattr(module, "_buffers", {}):
                setattr(module, name, getattr(module, name).astype(dtype))
        return self

    def num_parameters(self):
        """The number of trainable values (what PyTorch's ``sum(p.numel() ...)`` counts)."""
        return sum(p.data.size for p in self.parameters())

    # --- printing --------------------------------------------------------------
    def extra_repr(self):
        """The hyperparameters shown in repr, e.g. ``1, 6, kernel_size=(5, 5)``."""
        return ""

    def __repr__(self):
        children = list(self.children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(")")
        return "\n".join(lines)
