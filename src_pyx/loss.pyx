# cython: language_level=3
"""Softmax cross-entropy: Cython twin of ``fastconv.reference.loss``.

For logits z (N, K) and labels y (N,), with m_n = max_k z[n, k]::

    (ce.fwd)  loss = mean_n [ log(sum_k exp(z[n, k] - m_n)) - (z[n, y_n] - m_n) ]
    (ce.p)    p[n, k] = exp(z[n, k] - m_n) / sum_j exp(z[n, j] - m_n)      (softmax)
    (ce.bwd)  dloss/dz = (p - onehot(y)) / N

Runs by default: cross_entropy_forward below, one pass per row where NumPy makes a dozen
calls (max, subtract, exp, sum, log, a gather, the mean...), each a few microseconds on a
batch of logits. A loss sees N x K values (64 x 10 for LeNet-5): too few for threads, so
one thread. exp is the C library's, so p can differ from the reference's in the last
bit; the loss is accumulated in float64, row by row.
"""
import numpy as np

from cython cimport floating
from libc.math cimport exp, log


def cross_entropy_forward(const floating[:, ::1] logits, const long long[::1] labels,
                          int n_threads=1):
    """Eqs. (ce.fwd), (ce.p): the mean loss and the softmax p.

    Parameters
    ----------
    logits : ndarray (N, K), float32 or float64, C-contiguous
    labels : ndarray (N,) int64, each in [0, K)
    n_threads : int, unused (one thread: see the module docstring)

    Returns
    -------
    (loss, p) : a Python float and an ndarray (N, K) of logits' dtype.

    Raises ValueError for a label outside [0, K), before anything is computed.
    """
    cdef Py_ssize_t N = logits.shape[0], K = logits.shape[1], n, k
    if labels.shape[0] != N:
        raise ValueError(f"cross_entropy_forward: {labels.shape[0]} labels for {N} rows")
    for n in range(N):
        if labels[n] < 0 or labels[n] >= K:
            raise ValueError("cross_entropy_forward: a label is outside [0, K)")
    p_arr = np.empty((N, K), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] p = p_arr
    cdef floating m, v, s
    cdef double total = 0
    with nogil:
        for n in range(N):
            m = logits[n, 0]
            for k in range(1, K):       # the row's max; a NaN stays (v > NaN is false)
                v = logits[n, k]
                if v > m or v != v:
                    m = v
            s = 0
            for k in range(K):
                v = <floating>exp(logits[n, k] - m)
                p[n, k] = v
                s = s + v
            total += log(<double>s) - <double>(logits[n, labels[n]] - m)
            for k in range(K):
                p[n, k] = p[n, k] / s
    return (total / N if N else float("nan")), p_arr


def cross_entropy_backward(const floating[:, ::1] p, const long long[::1] labels,
                           int n_threads=1):
    """Eq. (ce.bwd): (p - onehot(labels)) / N.

    Parameters
    ----------
    p : ndarray (N, K), from cross_entropy_forward
    labels : ndarray (N,) int64, as given to it
    n_threads : int, unused

    Returns
    -------
    dz : ndarray (N, K), p's dtype.
    """
    cdef Py_ssize_t N = p.shape[0], K = p.shape[1], n, k
    if labels.shape[0] != N:
        raise ValueError(f"cross_entropy_backward: {labels.shape[0]} labels for {N} rows")
    d_arr = np.empty((N, K), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] d = d_arr
    cdef floating inv_n = <floating>(1.0 / N) if N else 0
    with nogil:
        for n in range(N):
            for k in range(K):
                d[n, k] = p[n, k] * inv_n
            d[n, labels[n]] = d[n, labels[n]] - inv_n
    return d_arr
