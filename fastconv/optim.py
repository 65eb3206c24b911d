"""Optimisers: SGD (momentum, Nesterov, weight decay), Adam and AdamW.

Each optimiser updates ``Parameter.data`` in place from ``Parameter.grad``, with the
same formulas as ``torch.optim`` (so results can be checked against PyTorch):

SGD, with g = grad + weight_decay * p (L2 regularisation folded into the gradient)::

    v <- g                              (first step)
    v <- momentum * v + (1 - dampening) * g
    p <- p - lr * (g + momentum * v)    (nesterov=True)
    p <- p - lr * v                     (otherwise; plain SGD when momentum = 0)

Adam (Kingma & Ba), with g = grad + weight_decay * p, step t = 1, 2, ...::

    m <- beta1 * m + (1 - beta1) * g
    v <- beta2 * v + (1 - beta2) * g**2
    p <- p - lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)

AdamW (Loshchilov & Hutter, decoupled weight decay): first p <- p * (1 - lr * weight_decay),
then the Adam step with g = grad (the decay is not scaled by Adam's 1/sqrt(v)).

The learning rate is the attribute ``optimizer.lr``; a schedule sets it before each
step. State (momentum buffers, Adam moments, step count) is saved by ``state_dict()``
as plain arrays, which is what a checkpoint stores.
"""
import numpy as np

from ._backend import get_backend, implementation
from ._threads import get_num_threads
from .reference import optim as _reference_optim

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "make_optimizer", "OPTIMIZERS", "param_groups"]


class Optimizer:
    """Base class: holds the parameter groups, ``lr`` and per-parameter state arrays.

    ``params`` is a list of Parameters, or a list of parameter groups as in PyTorch:
    dicts ``{"params": [...], "lr": ..., "weight_decay": ...}`` whose ``lr`` and
    ``weight_decay`` (optional) override the optimiser's for that group. This is how the
    layers of a model get different learning rates (see :func:`param_groups`).

    ``optimizer.lr`` is the reference learning rate (the one a schedule sets): setting it
    scales every group's LR by the same factor, so each group keeps its ratio to it
    (``optimizer.param_groups[g]["lr"]`` is the LR group g uses now). Frozen parameters
    (``requires_grad`` False) are skipped by ``step``.
    """

    #: names of the per-parameter state arrays (one array like p.data per name)
    state_names = ()

    def __init__(self, params, lr, weight_decay=0.0):
        name = type(self).__name__
        if not lr >= 0:
            raise ValueError(f"{name}: lr must be >= 0, got {lr}")
        if not weight_decay >= 0:
            raise ValueError(f"{name}: weight_decay must be >= 0, got {weight_decay}")
        self._lr, self.weight_decay = float(lr), float(weight_decay)
        self.param_groups = _as_groups(name, params, self._lr, self.weight_decay)
        self.params = [p for g in self.param_groups for p in g["params"]]
        if not self.params:
            raise ValueError(f"{name}: got an empty parameter list")
        self.step_count = 0
        self.state = {name: [np.zeros_like(p.data) for p in self.params]
                      for name in self.state_names}

    @property
    def lr(self):
        """The reference LR; each group runs at ``lr * group["lr_scale"]``."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = float(value)
        for g in self.param_groups:
            g["lr"] = self._lr * g["lr_scale"]

    def zero_grad(self):
        """Set the gradient of every parameter it updates to zero (before each backward):
        one kernel call for all of them (fastconv._ext.optim.zero_many)."""
        grads = [p.grad for p in self.params]
        try:        # the kernel refuses arrays it cannot take (not C-contiguous, say)
            implementation("optim", get_backend()).zero_many(grads, get_num_threads())
        except ValueError:
            _reference_optim.zero_many(grads)

    def step(self):
        """Update every trainable parameter from its gradient (call after ``model.backward``)."""
        self.step_count += 1
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    self._update(i, p, group["lr"], group["weight_decay"])
                i += 1

    def _update(self, i, p, lr, weight_decay):
        raise NotImplementedError

    def _group_keys(self):
        return [f"group_lr.{g}" for g in range(len(self.param_groups))] \
            if len(self.param_groups) > 1 else []

    def state_dict(self):
        """{'step': array, '<state name>.<i>': array, ...}: everything needed to resume."""
        out = {"step": np.array(self.step_count, np.int64), "lr": np.array(self.lr)}
        for key, g in zip(self._group_keys(), self.param_groups):
            out[key] = np.array(g["lr"])
        for name, arrays in self.state.items():
            for i, a in enumerate(arrays):
                out[f"{name}.{i}"] = a.copy()
        return out

    def load_state_dict(self, state):
        """Restore a ``state_dict``; names and shapes must match (checked before any change)."""
        expected = ({"step", "lr"} | set(self._group_keys())
                    | {f"{n}.{i}" for n in self.state for i in range(len(self.params))})
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        for name, arrays in self.state.items():
            for i, a in enumerate(arrays):
                if np.shape(state[f"{name}.{i}"]) != a.shape:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: {name}.{i} has shape "
                                     f"{np.shape(state[f'{name}.{i}'])}, parameter {i} has {a.shape}")
        for name, arrays in self.state.items():
            for i, a in enumerate(arrays):
                a[...] = state[f"{name}.{i}"]
        self.step_count = int(state["step"])
        self.lr = float(state["lr"])
        for key, g in zip(self._group_keys(), self.param_groups):
            g["lr"] = float(state[key])

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def _groups_repr(self):
        if len(self.param_groups) == 1:
            return ""
        return ", groups=[" + ", ".join(f"lr {g['lr']:.3g}" for g in self.param_groups) + "]"


def _as_groups(owner, params, lr, weight_decay):
    """The parameter groups of ``params`` (Parameters, or dicts as in PyTorch), each a dict
    with params, lr, weight_decay and lr_scale (its LR over the reference ``lr``)."""
    params = list(params)
    if not params or not isinstance(params[0], dict):
        params = [{"params": params}]
    groups, seen = [], set()
    for g, group in enumerate(params):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{owner}: a parameter group must be a dict with a 'params' list, "
                            f"got {type(group).__name__} at position {g}")
        unknown = sorted(set(group) - {"params", "lr", "weight_decay"})
        if unknown:
            raise ValueError(f"{owner}: parameter group {g} has unknown keys {unknown} "
                             f"(allowed: params, lr, weight_decay)")
        ps = list(group["params"])
        for p in ps:
            if id(p) in seen:
                raise ValueError(f"{owner}: a parameter appears in more than one group "
                                 f"(group {g})")
            seen.add(id(p))
        g_lr = float(group.get("lr", lr))
        g_wd = float(group.get("weight_decay", weight_decay))
        if not (g_lr >= 0 and g_wd >= 0):
            raise ValueError(f"{owner}: group {g} needs lr >= 0 and weight_decay >= 0, "
                             f"got {g_lr}, {g_wd}")
        if lr == 0 and g_lr != 0:
            raise ValueError(f"{owner}: the reference lr is 0 but group {g} has lr {g_lr}; "
                             f"give the reference lr (e.g. the largest group LR)")
        groups.append({"params": ps, "lr": g_lr, "weight_decay": g_wd,
                       "lr_scale": g_lr / lr if lr else 1.0})
    return groups


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov momentum and weight decay
    (``torch.optim.SGD``'s formulas; see the module docstring).

    Parameters
    ----------
    params : list of Parameter, e.g. ``model.parameters()``
    lr : float
    momentum : float in [0, 1), 0 is plain SGD
    dampening : float, scales the new gradient in the momentum sum (PyTorch's meaning)
    weight_decay : float, L2 penalty coefficient added to the gradient
    nesterov : bool, look-ahead momentum (needs momentum > 0 and dampening = 0)
    """

    state_names = ("momentum_buffer",)

    def __init__(self, params, lr=0.01, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov=True needs momentum > 0 and dampening = 0")
        if momentum < 0:
            raise ValueError(f"SGD: momentum must be >= 0, got {momentum}")
        super().__init__(params, lr, weight_decay)
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.nesterov = bool(nesterov)

    def step(self):
        """Update every trainable parameter from its gradient (call after ``model.backward``):
        one call of the compiled kernel for all of them (fastconv._ext.optim.
        sgd_update_many: one pass over each p, grad and buffer, the blocks of all shared
        among the threads). Its NumPy twin, fastconv.reference.optim, is the formulas
        written as array operations; it also takes the arrays the kernel refuses (not
        C-contiguous, say), which the kernel checks before it writes anything."""
        self.step_count += 1
        params, grads, bufs, lrs, decays = [], [], [], [], []
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    params.append(p.data)
                    grads.append(p.grad)
                    bufs.append(self.state["momentum_buffer"][i])
                    lrs.append(group["lr"])
                    decays.append(group["weight_decay"])
                i += 1
        args = (params, grads, bufs, lrs, decays, self.momentum, self.dampening,
                self.nesterov, self.step_count == 1)
        try:
            implementation("optim", get_backend()).sgd_update_many(*args, get_num_threads())
        except ValueError:
            _reference_optim.sgd_update_many(*args)

    def extra_repr(self):
        return (f"lr={self.lr}, momentum={self.momentum}, dampening={self.dampening}, "
                f"weight_decay={self.weight_decay}, nesterov={self.nesterov}{self._groups_repr()}")


class Adam(Optimizer):
    """Adam with bias correction (``torch.optim.Adam``; weight decay is L2 added to the gradient).

    Parameters
    ----------
    params : list of Parameter
    lr : float
    betas : (beta1, beta2), decay rates of the first and second moment averages
    eps : float, added to sqrt(v_hat) so the step stays finite
    weight_decay : float
    """

    state_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"{type(self).__name__}: betas must be in [0, 1), got {betas}")
        super().__init__(params, lr, weight_decay)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)

    def _update(self, i, p, lr, weight_decay):
        beta1, beta2 = self.betas
        t = self.step_count
        g = p.grad
        if weight_decay:
            if self.decoupled:     # AdamW: shrink the weights directly
                p.data *= p.data.dtype.type(1 - lr * weight_decay)
            else:                  # Adam: L2 penalty through the gradient
                g = g + p.data.dtype.type(weight_decay) * p.data
        m, v = self.state["exp_avg"][i], self.state["exp_avg_sq"][i]
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * (g * g)
        bias1, bias2 = 1 - beta1 ** t, 1 - beta2 ** t
        denom = np.sqrt(v / bias2) + self.eps
        p.data -= (lr / bias1) * m / denom

    def extra_repr(self):
        return (f"lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay}{self._groups_repr()}")


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``; default weight_decay 0.01)."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make_optimizer(name, params, lr, momentum=0.9, nesterov=False, weight_decay=0.0):
    """Build an optimiser by name ('sgd', 'adam', 'adamw'); momentum/nesterov apply to SGD."""
    name = name.lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    if name == "sgd":
        return SGD(params, lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    return OPTIMIZERS[name](params, lr, weight_decay=weight_decay)


def param_groups(model, lrs, groups=None, weight_decay=None):
    """Parameter groups with one learning rate per layer group (the notes' differential LRs).

    Parameters
    ----------
    model : fastconv.nn.Module
    lrs : list of floats, one per layer group, earliest layers first, e.g. [1e-3, 1e-2, 1e-1]
    groups : list of lists of layer names, or None for ``model.layer_groups(len(lrs))``
    weight_decay : float or None (None: the optimiser's)

    Returns a list of ``{"params": [...], "lr": lr}`` for any optimiser of this module; give
    the optimiser ``lr=max(lrs)`` so that a schedule scales every group alike.

    >>> from fastconv.models import lenet5
    >>> [g["lr"] for g in param_groups(lenet5(seed=0), [1e-3, 1e-2, 1e-1])]
    [0.001, 0.01, 0.1]
    """
    lrs = [float(v) for v in lrs]
    if groups is None:
        groups = model.layer_groups(len(lrs))
    if len(groups) != len(lrs):
        raise ValueError(f"param_groups: {len(lrs)} learning rates {lrs} for {len(groups)} layer "
                         f"groups {groups}; give one LR per group")
    named = list(model.named_parameters())
    out, used = [], set()
    for names, lr in zip(groups, lrs):
        names = [names] if isinstance(names, str) else list(names)
        ps = []
        for prefix in names:
            hits = [(n, p) for n, p in named if n == prefix or n.startswith(prefix + ".")]
            if not hits:
                raise ValueError(f"param_groups: layer {prefix!r} matches no parameter of "
                                 f"{type(model).__name__}")
            ps += [p for n, p in hits if n not in used]
            used.update(n for n, _ in hits)
        group = {"params": ps, "lr": lr}
        if weight_decay is not None:
            group["weight_decay"] = float(weight_decay)
        out.append(group)
    left = [n for n, _ in named if n not in used]
    if left:
        raise ValueError(f"param_groups: parameters {left[:4]}{' ...' if len(left) > 4 else ''} "
                         f"are in no layer group")
    return out
