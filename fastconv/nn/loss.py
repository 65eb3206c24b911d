"""Losses: CrossEntropyLoss (softmax + negative log-likelihood, fused) and MSELoss.

A loss is called with two arrays and returns a Python float; ``backward()`` (no argument)
returns the gradient of that float with respect to the first array, ready for
``model.backward``::

    loss = criterion(model(x), labels)
    model.zero_grad()
    model.backward(criterion.backward())
"""
import numpy as np

from .._backend import get_backend, implementation
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
        if logits.ndim != 2 or logits.shape[1] == 0:
            raise ValueError(f"CrossEntropyLoss: logits must be (N, classes) with at least "
                             f"one class, got {logits.shape}")
        N, K = logits.shape
        if labels.shape != (N,) or labels.dtype.kind not in "iu":    # signed or unsigned ints
            raise ValueError(f"CrossEntropyLoss: labels must be ({N},) integers, got shape "
                             f"{labels.shape} dtype {labels.dtype}")
        if logits.dtype != np.float32 and logits.dtype != np.float64:
            if logits.dtype.kind not in "iuf":
                raise TypeError(f"CrossEntropyLoss: logits must be real numbers, got dtype "
                                f"{logits.dtype}")
            logits = logits.astype(np.float64)
        given = labels
        labels = np.ascontiguousarray(labels, dtype=np.int64)    # uint64 >= 2**63: < 0
        # one pass per row in the kernel (fastconv._ext.loss); its NumPy twin,
        # fastconv.reference.loss, is the formula written as array operations
        kernels = implementation("loss", get_backend())
        try:
            loss, probs = kernels.cross_entropy_forward(np.ascontiguousarray(logits), labels)
        except ValueError:          # the kernels check the labels' range first
            raise ValueError(f"CrossEntropyLoss: labels must be in [0, {K}), got values in "
                             f"[{given.min()}, {given.max()}]") from None
        self._probs, self._labels = self._for_backward(probs), labels
        return loss

    def backward(self, dy=None):
        return implementation("loss", get_backend()).cross_entropy_backward(
            self._cached(self._probs), self._labels)


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
        diff = input - target.astype(input.dtype, copy=False)
        self._diff = self._for_backward(diff)
        return float(np.mean(np.square(diff), dtype=np.float64))

    def backward(self, dy=None):
        diff = self._cached(self._diff)
        return diff * (2.0 / diff.size)
