"""Softmax cross-entropy in NumPy: the readable twin of ``fastconv._ext.loss``.

For logits z (N, K) and labels y (N,), with m_n = max_k z[n, k] (so that no exp
overflows; the shift cancels in the ratio)::

    (ce.fwd)  loss = mean_n [ log(sum_k exp(z[n, k] - m_n)) - (z[n, y_n] - m_n) ]
    (ce.p)    p[n, k] = exp(z[n, k] - m_n) / sum_j exp(z[n, j] - m_n)      (softmax)
    (ce.bwd)  dloss/dz = (p - onehot(y)) / N

The loss is accumulated in float64; p and the gradient keep the logits' dtype. NaN in a
row's logits makes that row's p, and the loss, NaN.
"""
import numpy as np


def cross_entropy_forward(logits, labels, n_threads=None):
    """Eqs. (ce.fwd), (ce.p): logits (N, K) float, labels (N,) int64 in [0, K)  ->
    (loss : float, p : (N, K) logits' dtype). n_threads: ignored.

    Raises ValueError for a label outside [0, K) (the caller's message says which)."""
    N, K = logits.shape
    if N and (labels.min() < 0 or labels.max() >= K):
        raise ValueError("cross_entropy_forward: a label is outside [0, K)")
    z = logits - logits.max(axis=1, keepdims=True)      # <= 0: exp cannot overflow
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    # log p[label] = z[label] - log(sum exp z); the mean is accumulated in float64
    loss = np.mean(np.log(s[:, 0], dtype=np.float64) - z[np.arange(N), labels],
                   dtype=np.float64)
    e /= s
    return float(loss), e


def cross_entropy_backward(p, labels, n_threads=None):
    """Eq. (ce.bwd): p (N, K) from cross_entropy_forward, labels (N,)  ->  dz (N, K), p's
    dtype: (p - onehot(labels)) / N. n_threads: ignored."""
    N = p.shape[0]
    d = p * (1.0 / N)
    d[np.arange(N), labels] -= 1.0 / N
    return d
