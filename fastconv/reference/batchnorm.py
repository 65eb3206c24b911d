"""Batch normalisation in NumPy, per channel over the batch and the image.

Reference twin of ``fastconv._ext.batchnorm`` (same functions, same signatures); the tests
use it as the oracle. x is always 4-D (N, C, H, W) here: ``fastconv.functional`` views a
BatchNorm1d input (N, C) as (N, C, 1, 1) and (N, C, L) as (N, C, 1, L), and answers an empty
batch itself. Each channel c has M = N*H*W values.

(bn.fwd)  mean = sum x / M,   var = sum (x - mean)^2 / M   (biased),
          x_hat = (x - mean) / sqrt(var + eps),   y = gamma * x_hat + beta
(bn.bwd)  dbeta = sum dy,   dgamma = sum dy * x_hat,
          dx = gamma / (M * sqrt(var + eps)) * (M * dy - sum dy - x_hat * sum(dy * x_hat))
(bn.run)  running = (1 - m) * running + m * stat, running_var taking var * M / (M - 1),
          m = momentum, or 1/t at the t-th training batch for momentum=None (a cumulative
          average) (``running_update`` below; ``fastconv.functional.batch_norm`` calls it).
NaN or Inf in a channel makes its variance, outputs and gradients NaN, as in PyTorch.

Sums are over n, h, w for one channel. Statistics are computed in float64 even for float32
input, and returned as float64 (C,) arrays.
"""
import numpy as np

__all__ = ["batch_norm_train_forward", "batch_norm_eval_forward", "batch_norm_backward"]

_AXES = (0, 2, 3)   # every axis but the channel


def _per_channel(v):
    """A (C,) vector shaped (1, C, 1, 1), to broadcast against x."""
    return np.asarray(v)[None, :, None, None]


def _batch_stats(x):
    """(bn.fwd) mean and biased var per channel, in float64; x (N, C, H, W) -> ((C,), (C,)).

    Two passes (the mean, then the mean of the centred squares): numerically better than
    E[x^2] - E[x]^2, which loses every digit when |mean| >> std.
    """
    x64 = x.astype(np.float64, copy=False)
    mean = x64.mean(axis=_AXES)
    var = np.square(x64 - _per_channel(mean)).mean(axis=_AXES)
    return mean, var


def _normalise(x, gamma, beta, mean, var, eps):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, in float64, cast to x's dtype."""
    invstd = 1.0 / np.sqrt(var + eps)
    x_hat = (x.astype(np.float64, copy=False) - _per_channel(mean)) * _per_channel(invstd)
    y = _per_channel(gamma.astype(np.float64)) * x_hat + _per_channel(beta.astype(np.float64))
    return y.astype(x.dtype)


def batch_norm_train_forward(x, gamma, beta, eps, n_threads=None):
    """Training-mode batch norm with the batch statistics, notes eq. (bn.fwd).

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    gamma, beta : ndarray (C,), x's dtype
    eps : float
    n_threads : ignored (the fast twin uses it)

    Returns
    -------
    y : ndarray (N, C, H, W), x's dtype
    mean, var : ndarray (C,) float64; var is the biased batch variance (divided by M).
    """
    mean, var = _batch_stats(x)
    return _normalise(x, gamma, beta, mean, var, eps), mean, var


def batch_norm_eval_forward(x, gamma, beta, mean, var, eps, n_threads=None):
    """Eval-mode batch norm: eq. (bn.fwd) with the given (running) statistics.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    gamma, beta : ndarray (C,), x's dtype
    mean, var : ndarray (C,) float64, the running statistics
    eps : float
    n_threads : ignored

    Returns
    -------
    y : ndarray (N, C, H, W), x's dtype.
    """
    return _normalise(x, gamma, beta, mean, var, eps)


def batch_norm_backward(dy, x, gamma, eps, n_threads=None, mean=None, var=None):
    """Training-mode gradients, notes eq. (bn.bwd), with the batch statistics mean and var
    saved by the forward pass, or recomputed from x when they are None.

    Parameters
    ----------
    dy, x : ndarray (N, C, H, W)
    gamma : ndarray (C,)
    eps : float
    n_threads : ignored
    mean, var : ndarray (C,) float64 (var biased), as batch_norm_train_forward returns
        them, or None (both or neither)

    Returns
    -------
    dx : ndarray (N, C, H, W), dgamma : ndarray (C,), dbeta : ndarray (C,), all x's dtype.
    """
    N, C, H, W = x.shape
    M = N * H * W
    if (mean is None) != (var is None):
        raise ValueError("batch_norm_backward: give both saved statistics mean and var, or neither")
    if mean is None:
        mean, var = _batch_stats(x)
    invstd = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    x_hat = (x.astype(np.float64, copy=False) - _per_channel(mean)) * _per_channel(invstd)
    dy64 = dy.astype(np.float64, copy=False)
    dbeta = dy64.sum(axis=_AXES)                                     # sum dy
    dgamma = (dy64 * x_hat).sum(axis=_AXES)                          # sum dy * x_hat
    scale = gamma.astype(np.float64) * invstd / M
    dx = _per_channel(scale) * (M * dy64 - _per_channel(dbeta) - x_hat * _per_channel(dgamma))
    return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)


def running_update(running_mean, running_var, mean, var, momentum, M):
    """(bn.run) In place, for each running statistic that is not None:
    ``running = (1 - momentum) * running + momentum * stat``, where the running variance takes
    the unbiased batch variance ``var * M / (M - 1)`` (as PyTorch).

    running_mean, running_var : ndarray (C,) or None; mean, var : ndarray (C,) float64, the
    batch statistics; momentum : the weight of the batch (1/t for a cumulative average);
    M : values per channel (>= 2).
    """
    for running, stat, scale in ((running_mean, mean, 1.0), (running_var, var, M / (M - 1))):
        if running is not None:
            running *= 1 - momentum
            running += (momentum * scale) * stat
