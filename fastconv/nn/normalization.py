"""Batch normalisation layers: BatchNorm1d ((N, C) or (N, C, L)) and BatchNorm2d (N, C, H, W)."""
import numpy as np

from .. import functional as F
from .module import Module, Parameter


class _BatchNorm(Module):
    """Shared code of BatchNorm1d and BatchNorm2d (they differ only in the input's ndim)."""

    _ndims = ()                                  # the input ndims accepted
    _shapes = ""                                 # ... as words, for the error message
    _optional_buffers = ("num_batches_tracked",)  # older checkpoints lack it

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__()
        name = f"{type(self).__name__}({num_features})"
        if momentum is not None and not (isinstance(momentum, (int, float, np.floating))
                                         and 0 <= momentum <= 1):
            raise ValueError(f"{name}: momentum must be a number in [0, 1] or None (a "
                             f"cumulative average), got {momentum!r}")
        C = self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        # PyTorch's names: weight is gamma, bias is beta.
        self.weight = Parameter(np.ones(C, dtype)) if affine else None
        self.bias = Parameter(np.zeros(C, dtype)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(C, dtype))
            self.register_buffer("running_var", np.ones(C, dtype))
            # training batches seen (int64, as PyTorch's), the weight 1/n of momentum=None
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._x = None
        self._mean = self._var = None      # the forward's batch statistics, for backward
        self._batch_stats = True

    def _check(self, x):
        if x.ndim not in self._ndims or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}): x must be "
                             f"{self._shapes} with C = {self.num_features}, got shape {x.shape}")

    def _running_factor(self):
        """Count a training batch and return the weight of its statistics in the running
        ones (bn.run): momentum, or 1 / batches seen when momentum is None (a cumulative
        moving average, PyTorch's rule)."""
        self.num_batches_tracked += 1
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def forward(self, x):
        self._check(x)
        x = np.ascontiguousarray(x)
        self._x = self._for_backward(x)
        # Without running statistics PyTorch uses the batch statistics in eval mode too.
        self._batch_stats = self.training or not self.track_running_stats
        factor = 0.0            # unused unless the running statistics are updated
        if self.training and self.track_running_stats:
            factor = self._running_factor()
        gamma = None if self.weight is None else self.weight.data
        beta = None if self.bias is None else self.bias.data
        # the batch statistics are kept for backward, which then need not recompute them
        y, self._mean, self._var = F.batch_norm(x, gamma, beta, self.running_mean,
                                                self.running_var, training=self._batch_stats,
                                                momentum=factor, eps=self.eps,
                                                return_stats=True)
        return y

    def backward(self, dy):
        """Eq. (bn.bwd) in training mode; in eval mode BN is the affine map of :meth:`affine_params`
        (:func:`fastconv.functional.batch_norm_eval_backward`)."""
        x = self._cached(self._x)
        gamma = None if self.weight is None else self.weight.data
        if self._batch_stats:
            dx, dgamma, dbeta = F.batch_norm_backward(dy, x, gamma, eps=self.eps,
                                                      mean=self._mean, var=self._var)
        else:
            dx, dgamma, dbeta = F.batch_norm_eval_backward(dy, x, gamma, self.running_mean,
                                                           self.running_var, eps=self.eps)
        if self.weight is not None and self.weight.requires_grad:
            self.weight.grad += dgamma
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += dbeta
        return dx

    def affine_params(self):
        """(scale, shift), float64 (C,): eval-mode BN is ``y = scale * x + shift`` per channel,
        with ``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - scale * running_mean``
        (what :func:`fastconv.nn.fold_batchnorm` folds into the preceding layer)."""
        gamma = None if self.weight is None else self.weight.data
        beta = None if self.bias is None else self.bias.data
        return F.batch_norm_affine(gamma, beta, self.running_mean, self.running_var, self.eps)

    def extra_repr(self):
        momentum = "None" if self.momentum is None else f"{self.momentum:g}"
        s = f"{self.num_features}, eps={self.eps:g}, momentum={momentum}"
        if not self.affine:
            s += ", affine=False"
        if not self.track_running_stats:
            s += ", track_running_stats=False"
        return s


class BatchNorm2d(_BatchNorm):
    r"""Batch normalisation of conv feature maps, per channel, notes eqs. (bn.fwd), (bn.run).

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta``, with the batch statistics over the
    M = N*H*W values of each channel in training mode (biased variance) and the running
    statistics in eval mode. The running statistics follow PyTorch:
    ``running = (1 - momentum) * running + momentum * batch_stat`` (unbiased variance), the
    notes' ``momentum = 0.9`` written the other way round.

    Parameters
    ----------
    num_features : int
        C.
    eps : float
    momentum : float in [0, 1], or None
        PyTorch's convention (0.1 = the notes' 0.9). None: a cumulative moving average,
        ``momentum = 1 / num_batches_tracked`` at each training batch, so the running
        statistics are the plain average of every batch's (bn.run).
    affine : bool
        Learn gamma (``weight``, init 1) and beta (``bias``, init 0); without them
        ``weight`` and ``bias`` are None (gamma = 1, beta = 0).
    track_running_stats : bool
        Keep ``running_mean`` (init 0), ``running_var`` (init 1) and ``num_batches_tracked``
        (int64, the training batches seen) as buffers (saved in the state_dict, not
        trained); without them the three are None and eval mode uses batch statistics too.

    An empty batch (N = 0) gives an empty output and leaves the running statistics as they
    are (``num_batches_tracked`` still counts it), as in PyTorch; training on one value per
    channel (N*H*W = 1) is a ValueError.

    Shape
    -----
    x : (N, C, H, W)  ->  y : (N, C, H, W).
    """

    _ndims = (4,)
    _shapes = "(N, C, H, W)"


class BatchNorm1d(_BatchNorm):
    r"""Batch normalisation of fully connected features, or of sequences: as
    :class:`BatchNorm2d`, with the statistics over M = N values per channel for (N, C)
    input, M = N*L for (N, C, L).

    Shape
    -----
    x : (N, C) or (N, C, L)  ->  y : like x.
    """

    _ndims = (2, 3)
    _shapes = "(N, C) or (N, C, L)"
