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

Under :class:`no_grad` a forward caches nothing (PyTorch's ``torch.no_grad``): inference
then holds one or two activations at a time instead of all of them.
"""
import copy
import functools
import threading

import numpy as np

_grad_mode = threading.local()      # per Python thread, as PyTorch's grad mode


def is_grad_enabled():
    """False inside :class:`no_grad` (in this thread): layers then keep nothing for backward."""
    return getattr(_grad_mode, "enabled", True)


class no_grad:
    """A forward that keeps nothing for backward, as PyTorch's ``torch.no_grad``:
    ``with fastconv.no_grad(): logits = model(x)``, or ``@fastconv.no_grad()`` on a function.

    Without it every layer keeps its input (or output) until the next forward, for its
    backward. Inside it each activation is freed once the next layer has read it, so an
    inference pass holds only a few activations, and the memory a layer frees is still in
    the cache when the next layer's output takes it, which makes inference faster too
    (docs/performance.md). A ``backward`` after such a forward raises RuntimeError.
    Everything else is as outside: eval or training mode, BN's running statistics, the
    same output bits. Per thread; nests.
    """

    def __enter__(self):
        self._outer = is_grad_enabled()
        _grad_mode.enabled = False
        return self

    def __exit__(self, *exc):
        _grad_mode.enabled = self._outer
        return False

    def __call__(self, function):
        @functools.wraps(function)
        def without_grad(*args, **kwargs):
            with no_grad():
                return function(*args, **kwargs)
        return without_grad


class Parameter:
    """A trainable array and its gradient (``grad`` has data's shape and dtype).

    ``requires_grad`` False freezes it (``Module.freeze``): layers then do not compute its
    gradient, which stays zero, and optimisers leave it unchanged.
    """

    def __init__(self, data, requires_grad=True):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)
        self.requires_grad = bool(requires_grad)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}{frozen})"


def _trainable(*params):
    """True when any of ``params`` (Parameters or None) needs a gradient."""
    return any(p is not None and p.requires_grad for p in params)


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

    @staticmethod
    def _for_backward(value):
        """``value`` to cache for backward in forward, or None under :class:`no_grad`."""
        return value if is_grad_enabled() else None

    def _cached(self, value):
        """What forward cached for backward (``value``), checked: a clear error where it
        cached nothing (no forward yet, or one under :class:`no_grad`)."""
        if value is None:
            raise RuntimeError(f"{type(self).__name__}.backward: no forward pass to go back "
                               "through (call the model first, outside fastconv.no_grad())")
        return value

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

    def predict(self, x, batch_size=256):
        """The model's outputs for the inputs ``x`` in eval mode, ``batch_size`` inputs at a
        time, through the fused inference path (:func:`fastconv.nn.fuse_for_inference`).

        Nothing of this model changes (not its mode, weights or the arrays its layers keep
        for backward): the fused copy is made for this call. For many calls with the same
        weights, fuse once, ``fast = nn.fuse_for_inference(model)``, and call
        ``fast.predict(x)`` (a fused model predicts with itself).

        Parameters
        ----------
        x : ndarray (N, ...), what the model's forward takes (e.g. (N, C, H, W) images,
            normalised as in training), in the model's dtype
        batch_size : int >= 1, inputs per forward pass (bounds the memory)

        Returns
        -------
        ndarray (N, ...): the outputs (e.g. (N, classes) logits) of every input, in order;
        a tuple of them for a model with several outputs.
        """
        from .fuse import _drop_caches, _fused_copy
        if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                or batch_size < 1):
            raise ValueError(f"predict: batch_size must be a positive int, got {batch_size!r}")
        x = np.asarray(x)
        if x.ndim == 0 or len(x) == 0:
            raise ValueError(f"predict: x must hold at least one input along its first axis, "
                             f"got shape {x.shape}")
        fused = (self if getattr(self, "fused_for_inference", False)
                 else _fused_copy(self, share_weights=True))
        with no_grad():
            outs = [fused(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        if fused is self:
            _drop_caches(self)
        if isinstance(outs[0], tuple):
            return tuple(np.concatenate(parts) for parts in zip(*outs))
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

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
        """Set training mode (BN uses batch statistics, Dropout drops) here and in every child
        (a BatchNorm frozen with ``freeze(..., freeze_bn_stats=True)`` stays in eval mode)."""
        for _, module in self.named_modules():
            module.training = bool(mode) and not getattr(module, "frozen_stats", False)
        return self

    def eval(self):
        return self.train(False)

    # --- freezing (fine-tuning) --------------------------------------------------
    def _match(self, prefixes, what):
        """{parameter name: Parameter} under each dotted ``prefix`` (a layer or parameter
        name: "features" matches "features.0.weight", not "features2.weight")."""
        params = dict(self.named_parameters())
        chosen = {}
        for prefix in prefixes:
            if not isinstance(prefix, str):
                raise TypeError(f"{what}: layer names must be strings, got {prefix!r}")
            hits = {n: p for n, p in params.items() if n == prefix or n.startswith(prefix + ".")}
            if not hits:
                top = [n for n, m in self.children() if m.parameters()]
                raise ValueError(f"{what}: {prefix!r} matches no parameter of "
                                 f"{type(self).__name__}; its layers with parameters are "
                                 f"{top} (dotted names reach inside them)")
            chosen.update(hits)
        return chosen

    def _set_requires_grad(self, flag, names, until, what, freeze_bn_stats=False):
        if names and until is not None:
            raise ValueError(f"{what}: give layer names or until=, not both")
        if until is not None:
            under = set(self._match([until], what))
            params, chosen, seen = list(self.named_parameters()), {}, False
            for name, p in params:      # every parameter up to the last one under `until`
                if seen and name not in under:
                    break
                seen |= name in under
                chosen[name] = p
        elif names:
            chosen = self._match(names, what)
        else:
            chosen = dict(self.named_parameters())
        for p in chosen.values():
            p.requires_grad = flag
            if not flag:
                p.grad.fill(0)
        ids = {id(p) for p in chosen.values()}
        for _, m in self.named_modules():       # BatchNorm layers whose parameters all changed
            own = [p for p in vars(m).values() if isinstance(p, Parameter)]
            if "running_mean" in getattr(m, "_buffers", {}) and own and all(id(p) in ids for p in own):
                if flag:
                    m.frozen_stats = False
                elif freeze_bn_stats:
                    m.frozen_stats, m.training = True, False
        return self

    def freeze(self, *names, until=None, freeze_bn_stats=False):
        """Stop training some parameters (fine-tuning): they get no gradient (the layers skip
        that work) and optimisers leave them as they are.

        ``freeze()`` freezes everything; ``freeze("features", "fc1")`` the layers (or
        parameters) with these dotted names and everything under them;
        ``freeze(until="layer3")`` every parameter in definition order up to and including
        layer3's (fastai's ``freeze_to``). A name that matches nothing is a ValueError.
        Returns the module.

        BatchNorm layers of a frozen part still normalise with the batch's statistics in
        training mode and update their running ones; ``freeze_bn_stats=True`` keeps them in
        eval mode instead (running statistics used and left unchanged, even under
        ``train()``), until they are unfrozen.
        """
        return self._set_requires_grad(False, names, until, "freeze", freeze_bn_stats)

    def unfreeze(self, *names, until=None):
        """Train again what :meth:`freeze` froze (same arguments; no argument: everything)."""
        return self._set_requires_grad(True, names, until, "unfreeze")

    def trainable_parameters(self):
        """The parameters that are not frozen."""
        return [p for p in self._parameters() if p.requires_grad]

    def layer_groups(self, n=3):
        """Split the model into ``n`` layer groups for differential learning rates: the
        top-level layers that have parameters, in order, cut into n contiguous runs of
        nearly equal length (the first ones longer). Returns a list of n lists of layer names.

        LeNet-5 with n=3: [["conv1", "conv2"], ["fc1", "fc2"], ["fc3"]] — early, general
        filters; the middle; the head. The notes train them at e.g. [0.001, 0.01, 0.1].
        """
        names = [name for name, m in self.children() if m.parameters()]
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"layer_groups: n must be a positive int, got {n!r}")
        if len(names) < n:
            raise ValueError(f"layer_groups: {type(self).__name__} has {len(names)} top-level "
                             f"layers with parameters ({names}), too few for {n} groups")
        return [list(part) for part in np.array_split(np.array(names, dtype=object), n)]

    def head_layer(self):
        """The name of the head: the last top-level layer that has parameters (the layer a
        new task replaces, e.g. LeNet-5's "fc3", ResNet's "fc"); "" for a single layer."""
        names = [name for name, m in self.children() if m.parameters()]
        return names[-1] if names else ""

    def head_names(self):
        """The dotted names of the head's parameters and buffers (see :meth:`head_layer`)."""
        head = self.head_layer()
        return [n for n in self.state_dict() if not head or n.startswith(head + ".")]

    # --- saving ----------------------------------------------------------------
    def state_dict(self):
        """Copies of every parameter and buffer, by dotted name (what a checkpoint stores)."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update({name: np.array(b, copy=True) for name, b in self.named_buffers()})
        return state

    def optional_state_names(self):
        """The state_dict names a saved state may lack (they then keep their current values):
        buffers a layer lists in ``_optional_buffers``, e.g. BatchNorm's num_batches_tracked,
        which older checkpoints do not have."""
        return {f"{prefix}.{name}" if prefix else name for prefix, m in self.named_modules()
                for name in getattr(m, "_optional_buffers", ()) if name in m._buffers}

    def load_state_dict(self, state):
        """Load arrays saved by ``state_dict``; names and shapes must match exactly (a name of
        :meth:`optional_state_names` may be missing)."""
        own = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        expected = set(own) | set(buffers)
        missing = sorted(expected - set(state) - self.optional_state_names())
        unexpected = sorted(set(state) - expected)
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
        """Convert every parameter, gradient and float buffer to ``dtype`` (float32 or float64);
        integer buffers (BatchNorm's num_batches_tracked) stay as they are, as in PyTorch."""
        dtype = np.dtype(dtype)
        for _, p in self.named_parameters():
            p.data = p.data.astype(dtype)
            p.grad = p.grad.astype(dtype)
        for _, module in self.named_modules():
            for name in getattr(module, "_buffers", {}):
                if getattr(module, name).dtype.kind == "f":
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
