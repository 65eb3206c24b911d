"""Losses: CrossEntropyLoss (softmax + negative log-likelihood, fused) and MSELoss.

A loss is called with two arrays and returns a Python float; ``backward()`` (no argument)
returns the gradient of that float with respect to the first array, ready for
``model.backward``::

    loss = criterion(model(x), labels)
    model.zero_grad()
    model.backward(criterion.backward())
"""
import numpy as np

from .module import Module


class _Loss(Module):
    def __call__(self, input, target):
        return self.forward(input, target)

    def forward(self, input, target):
        raise NotImplementedError

    def backward(self, dy=None):
        raise NotImplementedError


class CrossEntropyLoss(_Loss):
    r"""Softmax cross-entropy over class logits, mean over the batch (PyTorch's
    ``nn.CrossEntropyLoss()``).

    ``loss = mean_n [ logsumexp(z_n) - z_n[label_n] ]``, computed with
    ``logsumexp(z) = m + log(sum exp(z - m))``, ``m = max(z)``, so no exp overflows. Fusing the
    softmax and the log also gives the simple gradient
    ``dloss/dz = (softmax(z) - onehot(label)) / N``.

    forward(logits (N, classes), labels (N,) integers in [0, classes)) -> float;
    backward() -> dlogits (N, classes), logits' dtype.
    """

    def __init__(self):
        super().__init__()
        self._probs = self._labels = None

    def forward(self, logits, labels):
        logits = np.asarray(logits)
        labels = np.asarray(labels)
        if logits.ndim != 2:
            raise ValueError(f"CrossEntropyLoss: logits must be (N, classes), got {logits.shape}")
        N, K = logits.shape
        if labels.shape != (N,) or labels.dtype.kind not in "iu":    # signed or unsigned ints
            raise ValueError(f"CrossEntropyLoss: labels must be ({N},) integers, got shape "
                             f"{labels.shape} dtype {labels.dtype}")
        if N and (labels.min() < 0 or labels.max() >= K):
            raise ValueError(f"CrossEntropyLoss: labels must be in [0, {K}), got values in "
                             f"[{labels.min()}, {labels.max()}]")
        z = logits - logits.max(axis=1, keepdims=True)      # <= 0: exp cannot overflow
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        rows = np.arange(N)
        # log p[label] = z[label] - log(sum exp z); the mean is accumulated in float64.
        loss = np.mean(np.log(s[:, 0], dtype=np.float64) - z[rows, labels], dtype=np.float64)
        e /= s
        self._probs, self._labels = e, labels
        return float(loss)

    def backward(self, dy=None):
        N = self._probs.shape[0]
        d = self._probs * (1.0 / N)
        d[np.arange(N), self._labels] -= 1.0 / N
        return d


class MSELoss(_Loss):
    r"""Mean squared error over all elements (PyTorch's ``nn.MSELoss()``):
    ``loss = mean((input - target)**2)``, ``dloss/dinput = 2 (input - target) / input.size``."""

    def __init__(self):
        super().__init__()
        self._diff = None

    def forward(self, input, target):
        input, target = np.asarray(input), np.asarray(target)
        if input.shape != target.shape:
            raise ValueError(f"MSELoss: input {input.shape} and target {target.shape} differ")
        self._diff = diff = input - target.astype(input.dtype, copy=False)
        return float(np.mean(np.square(diff), dtype=np.float64))

    def backward(self, dy=None):
        return self._diff * (2.0 / self._diff.size)
