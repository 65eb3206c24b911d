"""Data-parallel training over MPI (mpi4py): one model, P processes, each on its shard of
every batch (the optional extra ``pip install "fastconv[mpi]"``).

``mpirun -n 4 fastconv train ...`` does all of this for you. In your own training loop::

    from fastconv import distributed as dist
    dp = dist.DataParallel(model, sync_batchnorm=True)  # rank 0's weights and BN buffers to all
    train_loader = dp.shard(train_loader)                # this rank's part of each global batch
    optimizer = dp.distribute(optimizer)                 # step() first sums the gradients
    for xb, yb in train_loader:                          # the loop is the 1-process loop
        optimizer.zero_grad()
        loss = loss_fn.forward(model(xb), yb)
        model.backward_params(loss_fn.backward())
        optimizer.step()

How it matches one process on the global batch (B images, split into P shards of n_r):

* every rank builds the same global batch (same seed, same order, same augmentation) and
  keeps rows ``[lo_r, hi_r)`` of it, so the samples seen are those of a 1-process run;
* rank r's loss is the mean over its n_r images, so its gradient g_r is scaled by n_r / B
  and the scaled gradients are summed over the ranks: sum_r (n_r / B) g_r is the gradient
  of the mean loss over the global batch;
* the sum is an in-place ``Allreduce`` on a few contiguous buckets (the parameters'
  ``grad`` arrays are views into them, so nothing is copied or pickled). A bucket starts
  (``Iallreduce``) as soon as backward has finished every layer in it, while backward goes
  on with the layers further front (as PyTorch DDP and Horovod do); ``step()`` waits for
  the rest. With ``deterministic=True`` the buckets are gathered instead and summed in rank
  order, so the bits do not depend on the MPI library's reduction algorithm;
* BatchNorm uses each rank's own batch statistics by default; ``sync_batchnorm=True``
  allreduces per channel the sum and sum of squares (forward) and sum(dy), sum(dy * x_hat)
  (backward), so the P processes compute what one process computes on the global batch;
* Dropout draws the mask of the global batch and keeps this rank's rows, as one process would.

Every rank runs the same code; only rank 0 should print, show progress and write files
(:func:`is_root`). An exception in one rank (Ctrl-C included) prints its traceback and
stops every rank with ``MPI_Abort`` (:func:`stop_all_on_error`), instead of leaving the
others waiting forever in a collective.
"""
import contextlib
import os
import signal
import sys
import time
import traceback

import numpy as np

from . import functional as F
from .nn.dropout import Dropout
from .nn.normalization import BatchNorm1d, BatchNorm2d
from .train import _generators

__all__ = ["available", "launched_by_mpi", "world", "rank", "size", "is_root",
           "threads_per_rank", "DataParallel", "ShardedLoader", "stop_all_on_error", "StoppedByLauncher",
           "mpi_description", "SyncBatchNorm2d", "SyncBatchNorm1d"]

# What launchers put in each process's environment: Open MPI, then MPICH / Intel MPI / PMIx.
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def available():
    """True when mpi4py can be imported (``pip install "fastconv[mpi]"`` and an MPI library)."""
    try:
        import mpi4py  # noqa: F401   (importing the package does not start MPI)
    except ImportError:
        return False
    return True


def launched_by_mpi():
    """True when this process was started by mpirun/mpiexec (read from the environment,
    without starting MPI)."""
    return any(os.environ.get(v) for v in _SIZE_VARS)


def world():
    """MPI's COMM_WORLD (starts MPI on first use); a clear error without mpi4py."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("fastconv.distributed needs mpi4py and an MPI library: "
                          "apt-get install openmpi-bin libopenmpi-dev, then "
                          "pip install \"fastconv[mpi]\"") from exc
    return MPI.COMM_WORLD


def rank(comm=None):
    return (comm or world()).Get_rank()


def size(comm=None):
    return (comm or world()).Get_size()


def is_root(comm=None):
    """True on rank 0, the rank that prints, shows progress and writes files."""
    return rank(comm) == 0


def mpi_description(comm=None):
    """One line: the MPI library, mpi4py's version, the world size and this rank."""
    import mpi4py
    from mpi4py import MPI
    comm = comm or MPI.COMM_WORLD
    library = MPI.Get_library_version().splitlines()[0].split(",")[0].strip()
    return (f"{library} (mpi4py {mpi4py.__version__}), world size {comm.Get_size()}, "
            f"this is rank {comm.Get_rank()}")


def threads_per_rank(comm=None):
    """The cores of this node divided among the ranks on it (at least 1), and never more
    than the cores the launcher bound this rank to (mpirun binds each rank to one core when
    there are at most 2 ranks; ``--bind-to none`` or ``--map-by slot:PE=T`` give it more)."""
    from mpi4py import MPI
    comm = comm or MPI.COMM_WORLD
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)     # the ranks that share this node's memory
    try:
        ranks_here = node.Get_size()
    finally:
        node.Free()
    cores = os.cpu_count() or 1
    try:
        bound = len(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        bound = cores
    return max(1, min(cores // ranks_here, bound))


# --------------------------------------------------------------------------- errors

class StoppedByLauncher(KeyboardInterrupt):
    """mpirun sent SIGTERM: Ctrl-C was pressed, or another rank ended the job."""


def _abort(comm, exc, code):
    """Print why this rank stops, then end every rank of the job (never returns)."""
    me, n = comm.Get_rank(), comm.Get_size()
    if isinstance(exc, StoppedByLauncher):
        # (every rank gets the signal, but one may be inside MPI and never see it)
        print(f"\nfastconv: rank {me} of {n} stopped by mpirun (Ctrl-C, or another rank "
              f"ended the job); stopping all {n} ranks.", file=sys.stderr, flush=True)
    elif isinstance(exc, KeyboardInterrupt):
        print(f"\nfastconv: rank {me} of {n} interrupted; stopping all {n} ranks.",
              file=sys.stderr, flush=True)
    else:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        print(f"fastconv: rank {me} of {n} failed, stopping all {n} ranks:\n{text}",
              file=sys.stderr, flush=True)
    comm.Abort(code)


def _raise_stopped(signum, frame):
    raise StoppedByLauncher()


@contextlib.contextmanager
def stop_all_on_error(comm=None):
    """Context manager: an exception (or Ctrl-C) inside the block, on any rank, prints that
    rank's message and traceback and ends the whole job with MPI_Abort, rather than
    leaving the other ranks waiting in a collective. With one process it just propagates.

    (Ctrl-C reaches mpirun, which sends SIGTERM to every rank: inside the block that
    becomes :class:`StoppedByLauncher`, a KeyboardInterrupt.)"""
    comm = comm or world()
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if comm.Get_size() > 1 else None
    try:
        yield
    except SystemExit:
        raise
    except BaseException as exc:
        if comm.Get_size() == 1:
            raise
        _abort(comm, exc, 130 if isinstance(exc, KeyboardInterrupt) else 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- data

def _shard_bounds(n, p, r):
    """Rows [lo, hi) of rank r when n rows are split into p nearly equal, contiguous parts."""
    base, extra = divmod(n, p)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


class ShardedLoader:
    """This rank's rows of every batch of ``loader`` (made with :meth:`DataParallel.shard`).

    Every rank iterates the same global batches (same order and augmentation, from the
    loader's seed and epoch) and keeps rows ``[lo, hi)``: shards differ in size by at most
    one image. ``len``, ``set_epoch`` and ``batch_size`` are the wrapped loader's (global).

    A last batch of fewer images than ranks leaves some ranks without a shard: they skip
    it. That is right for evaluation; for training use ``drop_last=True`` (as ``fastconv
    train`` does), since every rank must take part in every step's gradient sum.
    """

    def __init__(self, loader, group):
        if loader.batch_size < group.size:
            raise ValueError(f"ShardedLoader: batch_size {loader.batch_size} is smaller than the "
                             f"{group.size} processes (each needs at least one image)")
        self.loader, self._group = loader, group

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):        # batch_size, dtype, epoch, num_samples, ...
        if name == "loader":            # not set yet (e.g. while being copied)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __iter__(self):
        g = self._group
        for xb, yb in self.loader:
            lo, hi = _shard_bounds(len(yb), g.size, g.rank)
            if hi == lo:    # a last batch of fewer images than ranks: nothing for this one
                continue
            g._begin_batch(lo, hi, len(yb))
            yield xb[lo:hi], yb[lo:hi]

    def sum_over_ranks(self, *totals):
        """Sums of per-rank totals (e.g. loss sum, correct, count) over all ranks, in rank
        order (so every rank gets the same bits). The training loop calls this."""
        return self._group.sum_over_ranks(*totals)


# --------------------------------------------------------------------------- gradients

def bucket_groups(params, bucket_mb=1.0):
    """The parameters in backward order (last layer first), cut into groups of about
    ``bucket_mb`` MiB of one dtype: the gradient buckets of :class:`DataParallel`."""
    limit = max(1, int(bucket_mb * 2**20))
    groups, current, nbytes = [], [], 0
    for p in reversed(list(params)):
        if current and (nbytes + p.grad.nbytes > limit or p.grad.dtype != current[0].grad.dtype):
            groups.append(current)
            current, nbytes = [], 0
        current.append(p)
        nbytes += p.grad.nbytes
    return groups + [current] if current else groups


class _Bucket:
    """A contiguous gradient buffer shared by some parameters (their grads are views)."""

    def __init__(self, params, dtype):
        self.params = params
        self.flat = np.zeros(sum(p.data.size for p in params), dtype)
        self.pending = len(params)      # parameters whose backward has not finished
        self.request = None
        self.gathered = None            # deterministic mode: (P, n) receive buffer
        offset = 0
        for p in params:
            view = self.flat[offset:offset + p.data.size].reshape(p.data.shape)
            view[...] = p.grad
            p.grad = view
            offset += p.data.size


class DataParallel:
    """Train one model on every rank of ``comm`` (default COMM_WORLD), data-parallel.

    Creating it broadcasts rank 0's parameters and buffers (e.g. BN running statistics) to
    every rank, replaces BatchNorm by its synchronised form when ``sync_batchnorm``, and
    makes Dropout draw global-batch masks. Then :meth:`shard` the loaders and
    :meth:`distribute` the optimiser.

    Parameters
    ----------
    model : fastconv.nn.Module, in its final dtype (the gradients become bucket views).
    comm : mpi4py communicator or None (COMM_WORLD).
    sync_batchnorm : bool
        Batch statistics over the global batch instead of each rank's shard.
    bucket_mb : float
        Gradient bucket size: smaller buckets start earlier during backward, larger ones
        pay the per-message latency less often.
    overlap : bool
        Start each bucket's Iallreduce as soon as backward has filled it (else all in step()).
    deterministic : bool
        Gather the buckets and sum them in rank order (P times the traffic): identical bits
        on every rank and for every MPI algorithm.
    """

    def __init__(self, model, comm=None, sync_batchnorm=False, bucket_mb=1.0, overlap=True,
                 deterministic=False):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = comm or MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.model, self.overlap, self.deterministic = model, bool(overlap), bool(deterministic)
        self.sync_batchnorm = bool(sync_batchnorm)
        self._weight = 1.0                      # n_r / B of the current batch
        self._shard = None                      # (lo, hi, B) of the current batch
        self.stats = dict(steps=0, wait_s=0.0, started_in_backward=0, buckets=0,
                          bytes_per_step=0, bytes_done_in_backward=0)
        self.broadcast_state()
        self._wrap_layers()
        self._buckets = self._make_buckets(model.parameters(), bucket_mb)
        self.stats["bytes_per_step"] = sum(b.flat.nbytes for b in self._buckets)
        if self.overlap:
            self._hook_backward()

    # --- setup -----------------------------------------------------------------------
    def broadcast_state(self, optimizer=None):
        """Copy rank 0's parameters, buffers, layers' random generators (and ``optimizer``'s
        state) to every rank, in place (one Bcast per array, no pickling)."""
        arrays = [p.data for p in self.model.parameters()]
        arrays += [b for _, b in self.model.named_buffers() if isinstance(b, np.ndarray)]
        if optimizer is not None:
            arrays += [a for group in optimizer.state.values() for a in group]
        for a in arrays:
            self.comm.Bcast(a, root=0)
        # the layers' random generators (Dropout's): small dicts of ints, sent as objects
        gens = [g for _, g in _generators(self.model)]
        states = self.comm.bcast([g.bit_generator.state for g in gens], root=0)
        for g, state in zip(gens, states):
            g.bit_generator.state = state

    def _wrap_layers(self):
        swap = {Dropout: ShardedDropout}
        if self.sync_batchnorm:
            swap.update({BatchNorm2d: SyncBatchNorm2d, BatchNorm1d: SyncBatchNorm1d})
        for _, m in self.model.named_modules():
            if type(m) in swap:
                m.__class__ = swap[type(m)]     # same state, same names in checkpoints
                m._dp = self

    def _make_buckets(self, params, bucket_mb):
        buckets = [_Bucket(group, group[0].grad.dtype) for group in bucket_groups(params, bucket_mb)]
        self._bucket_of = {id(p): b for b in buckets for p in b.params}
        self.stats["buckets"] = len(buckets)
        return buckets

    def _hook_backward(self):
        """Give every layer that owns parameters the _ReportsGradients mix-in (a subclass of
        its class, same name): when its outermost backward returns, its gradients are final
        and their bucket may start."""
        from .nn.module import Parameter
        self._own_params = {}
        for _, m in self.model.named_modules():
            own = [v for v in vars(m).values() if isinstance(v, Parameter)]
            if own:
                m.__class__ = _reporting_class(type(m))
                m._dp = self
                self._own_params[id(m)] = own

    def __deepcopy__(self, memo):
        """A copy of the model is an ordinary 1-process model: its layers' ``_dp`` is None."""
        return None

    # --- per step --------------------------------------------------------------------
    def _begin_batch(self, lo, hi, n):
        self._shard = (lo, hi, n)
        self._weight = (hi - lo) / n

    def _params_done(self, module):
        for p in self._own_params[id(module)]:
            b = self._bucket_of[id(p)]
            if b.request is not None:
                raise RuntimeError(f"DataParallel: {type(module).__name__}'s backward ran twice in "
                                   f"one step (a layer used twice?); use overlap=False")
            b.pending -= 1
            if b.pending == 0:
                self._start(b)
                self.stats["started_in_backward"] += 1
        self.MPI.Request.Testall([b.request for b in self._buckets if b.request is not None])

    def _start(self, bucket):
        """Scale by n_r / B, then start summing ``bucket`` over the ranks (non-blocking)."""
        if self._weight != 1.0:
            bucket.flat *= bucket.flat.dtype.type(self._weight)
        if self.deterministic:
            if bucket.gathered is None:
                bucket.gathered = np.empty((self.size, bucket.flat.size), bucket.flat.dtype)
            bucket.request = self.comm.Iallgather(bucket.flat, bucket.gathered)
        else:
            bucket.request = self.comm.Iallreduce(self.MPI.IN_PLACE, bucket.flat,
                                                  op=self.MPI.SUM)

    def allreduce_gradients(self):
        """Sum the scaled gradients of every rank into every rank's ``p.grad`` (what the
        distributed optimiser's step() calls first). Returns the seconds spent waiting."""
        t0 = time.perf_counter()
        for b in self._buckets:
            if b.request is None:       # not started during backward (overlap off, frozen layer)
                self._start(b)
            elif b.request.Test():      # summed while backward ran: fully hidden
                self.stats["bytes_done_in_backward"] += b.flat.nbytes
        self.MPI.Request.Waitall([b.request for b in self._buckets])
        for b in self._buckets:
            if self.deterministic:      # sum in rank order: the same bits on every rank
                np.copyto(b.flat, b.gathered[0])
                for r in range(1, self.size):
                    b.flat += b.gathered[r]
            b.request, b.pending = None, len(b.params)
        waited = time.perf_counter() - t0
        self.stats["steps"] += 1
        self.stats["wait_s"] += waited
        return waited

    def sum_over_ranks(self, *values):
        """Each value summed over the ranks, as floats (ints stay ints when exact)."""
        local = np.array(values, np.float64)
        gathered = np.empty((self.size, len(values)), np.float64)
        self.comm.Allgather(local, gathered)
        total = gathered[0].copy()
        for r in range(1, self.size):
            total += gathered[r]
        return tuple(int(t) if isinstance(v, (int, np.integer)) else float(t)
                     for v, t in zip(values, total))

    # --- the pieces a training loop uses ---------------------------------------------
    def shard(self, loader):
        """``loader`` as a :class:`ShardedLoader`: this rank's rows of every global batch."""
        return ShardedLoader(loader, self)

    def distribute(self, optimizer):
        """Make ``optimizer.step()`` sum the gradients over the ranks first (in place: the
        object keeps its class name, state and checkpoints; rank 0's state is broadcast)."""
        base = type(optimizer)
        if getattr(base, "_data_parallel", False):
            raise ValueError("DataParallel.distribute: this optimizer is distributed already")
        optimizer.__class__ = type(base.__name__, (base,), {
            "_data_parallel": True, "__module__": base.__module__, "step": _distributed_step})
        optimizer._dp = self
        self.broadcast_state(optimizer)
        return optimizer

    def check_in_sync(self):
        """Raise RuntimeError unless every rank holds bitwise the same parameters."""
        from zlib import crc32
        mine = 0
        for p in self.model.parameters():
            mine = crc32(np.ascontiguousarray(p.data).view(np.uint8), mine)
        sums = self.comm.allgather(mine)
        if len(set(sums)) != 1:
            raise RuntimeError(f"DataParallel: the ranks' parameters differ (checksums {sums})")


def _distributed_step(self):
    """Sum the gradients over the ranks, then the optimiser's own step."""
    self._dp.allreduce_gradients()
    super(type(self), self).step()


# --------------------------------------------------------------------------- layers

class _ReportsGradients:
    """Mixed into each layer with parameters by DataParallel: tells it when the layer's
    backward has finished (backward_params may call backward: only the outermost counts)."""

    _dp = None
    _dp_depth = 0

    def backward(self, dy):
        return self._reporting(super().backward, dy)

    def backward_params(self, dy):
        return self._reporting(super().backward_params, dy)

    def _reporting(self, method, dy):
        self._dp_depth += 1
        try:
            return method(dy)
        finally:
            self._dp_depth -= 1
            if self._dp_depth == 0 and self._dp is not None:
                self._dp._params_done(self)


_reporting_classes = {}


def _reporting_class(cls):
    if cls not in _reporting_classes:
        _reporting_classes[cls] = type(cls.__name__, (_ReportsGradients, cls),
                                       {"__module__": cls.__module__})
    return _reporting_classes[cls]


class ShardedDropout(Dropout):
    """Dropout under DataParallel: draws the mask of the global batch (as one process would,
    from the same generator) and keeps this rank's rows."""

    _dp = None

    def forward(self, x):
        shard = None if self._dp is None else self._dp._shard
        if not self.training or shard is None or shard[2] == x.shape[0]:
            return super().forward(x)
        lo, hi, n = shard
        super().forward(np.zeros((n,) + x.shape[1:], x.dtype))     # draws the global mask
        self._mask = self._mask[lo:hi]
        return x * self._mask


class _SyncBatchNorm:
    """Training-mode BatchNorm over the global batch: the per-channel sums travel, not x.

    Forward: allreduce [sum x, sum x^2, M] per channel (float64), so every rank normalises
    with mean = sum x / M and var = sum x^2 / M - mean^2 of the global batch. Backward, with
    w = n_r / B the weight of this rank's loss (see the module docstring):
    ``dx = gamma / sqrt(var + eps) * (dy - (S_dy + x_hat * S_dyx) / (M * w))``, where
    S_dy = sum_r w_r sum dy and S_dyx = sum_r w_r sum dy * x_hat are allreduced; dgamma and
    dbeta stay this rank's sums (the optimiser sums them over the ranks).
    """

    _dp = None

    def forward(self, x):
        if self._dp is None or not (self.training or not self.track_running_stats):
            self._synced = False
            return super().forward(x)
        self._synced = True
        self._check(x)
        x = np.ascontiguousarray(x)
        self._x = self._for_backward(x)
        self._batch_stats = True
        axes = (0,) + tuple(range(2, x.ndim))
        C = self.num_features
        local = np.empty(2 * C + 1)
        local[:C] = np.sum(x, axis=axes, dtype=np.float64)
        local[C:2 * C] = np.sum(np.square(x, dtype=np.float64), axis=axes)
        local[2 * C] = x.size // C
        dp = self._dp
        dp.comm.Allreduce(dp.MPI.IN_PLACE, local, op=dp.MPI.SUM)
        M = local[2 * C]
        mean = local[:C] / M
        var = np.maximum(local[C:2 * C] / M - mean * mean, 0.0)
        if self.track_running_stats:
            m = self._running_factor()
            for running, stat in ((self.running_mean, mean), (self.running_var, var * M / (M - 1))):
                running *= 1 - m
                running += (m * stat).astype(running.dtype)
        self._mean, self._var, self._count = mean, var, M
        gamma = None if self.weight is None else self.weight.data
        beta = None if self.bias is None else self.bias.data
        # normalising with given statistics is what eval mode does (fast kernel)
        return F.batch_norm(x, gamma, beta, mean.astype(x.dtype), var.astype(x.dtype),
                            training=False, eps=self.eps)

    def backward(self, dy):
        if not (self._batch_stats and self._synced):
            return super().backward(dy)
        x, C = self._cached(self._x), self.num_features
        shape = (1, C) + (1,) * (x.ndim - 2)
        axes = (0,) + tuple(range(2, x.ndim))
        invstd = 1.0 / np.sqrt(self._var + self.eps)
        x_hat = (x - self._mean.astype(x.dtype).reshape(shape)) * invstd.astype(x.dtype).reshape(shape)
        dbeta = np.sum(dy, axis=axes, dtype=np.float64)
        dgamma = np.sum(dy * x_hat, axis=axes, dtype=np.float64)
        dp = self._dp
        sums = np.concatenate([dbeta, dgamma]) * dp._weight
        dp.comm.Allreduce(dp.MPI.IN_PLACE, sums, op=dp.MPI.SUM)
        scale = invstd if self.weight is None else self.weight.data * invstd
        k = 1.0 / (self._count * dp._weight)
        dx = (dy - (sums[:C] * k).astype(x.dtype).reshape(shape)
              - x_hat * (sums[C:] * k).astype(x.dtype).reshape(shape))
        dx *= scale.astype(x.dtype).reshape(shape)
        if self.weight is not None:
            self.weight.grad += dgamma.astype(self.weight.grad.dtype)
            self.bias.grad += dbeta.astype(self.bias.grad.dtype)
        return dx


class SyncBatchNorm2d(_SyncBatchNorm, BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (DataParallel)."""


class SyncBatchNorm1d(_SyncBatchNorm, BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch (DataParallel)."""
