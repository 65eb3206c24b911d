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

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "make_optimizer", "OPTIMIZERS"]


class Optimizer:
    """Base class: holds the parameter list, ``lr`` and per-parameter state arrays."""

    #: names of the per-parameter state arrays (one array like p.data per name)
    state_names = ()

    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not lr >= 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {lr}")
        self.lr = float(lr)
        self.step_count = 0
        self.state = {name: [np.zeros_like(p.data) for p in self.params]
                      for name in self.state_names}

    def zero_grad(self):
        for p in self.params:
            p.grad[...] = 0

    def step(self):
        """Update every parameter from its gradient (call after ``model.backward``)."""
        self.step_count += 1
        for i, p in enumerate(self.params):
            self._update(i, p)

    def _update(self, i, p):
        raise NotImplementedError

    def state_dict(self):
        """{'step': array, '<state name>.<i>': array, ...}: everything needed to resume."""
        out = {"step": np.array(self.step_count, np.int64), "lr": np.array(self.lr)}
        for name, arrays in self.state.items():
            for i, a in enumerate(arrays):
                out[f"{name}.{i}"] = a.copy()
        return out

    def load_state_dict(self, state):
        """Restore a ``state_dict``; names and shapes must match (checked before any change)."""
        expected = {"step", "lr"} | {f"{n}.{i}" for n in self.state for i in range(len(self.params))}
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

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


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
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum and weight_decay must be >= 0, got "
                             f"{momentum}, {weight_decay}")
        super().__init__(params, lr)
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)

    def _update(self, i, p):
        g = p.grad
        if self.weight_decay:
            g = g + p.data.dtype.type(self.weight_decay) * p.data
        if self.momentum:
            v = self.state["momentum_buffer"][i]
            if self.step_count == 1:
                v[...] = g                          # PyTorch starts the buffer at g, not 0
            else:
                v *= self.momentum
                if self.dampening:
                    v += (1 - self.dampening) * g
                else:                               # the same bits, without a temporary
                    v += g
            g = g + self.momentum * v if self.nesterov else v
        p.data -= p.data.dtype.type(self.lr) * g

    def extra_repr(self):
        return (f"lr={self.lr}, momentum={self.momentum}, dampening={self.dampening}, "
                f"weight_decay={self.weight_decay}, nesterov={self.nesterov}")


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
        super().__init__(params, lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay = float(eps), float(weight_decay)

    def _update(self, i, p):
        beta1, beta2 = self.betas
        t = self.step_count
        g = p.grad
        if self.weight_decay:
            if self.decoupled:     # AdamW: shrink the weights directly
                p.data *= p.data.dtype.type(1 - self.lr * self.weight_decay)
            else:                  # Adam: L2 penalty through the gradient
                g = g + p.data.dtype.type(self.weight_decay) * p.data
        m, v = self.state["exp_avg"][i], self.state["exp_avg_sq"][i]
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * (g * g)
        bias1, bias2 = 1 - beta1 ** t, 1 - beta2 ** t
        denom = np.sqrt(v / bias2) + self.eps
        p.data -= (self.lr / bias1) * m / denom

    def extra_repr(self):
        return f"lr={self.lr}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay}"


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
