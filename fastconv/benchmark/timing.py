"""The one place where fastconv's benchmarks take time: :func:`measure`.

Method (shared machines are noisy; docs/performance.md has the measurements behind it):

1. one untimed first call: it imports lazily loaded kernels, starts the OpenMP and BLAS
   thread pools and faults in caches; if it raises, the caller learns it before any timing;
2. warm-up calls until ``warmup_s`` has passed (at least ``warmup_calls`` of them);
3. timed calls, each measured on its own with ``time.perf_counter``, until the time budget
   is spent and at least ``min_repeats`` samples exist (never more than ``max_repeats``).

The garbage collector is off while timing (as in ``timeit``), and the page faults of the
timed calls are counted with ``getrusage`` (``ru_minflt``, every thread of the process):
an op that allocates a fresh large array per call can spend more time faulting its pages in
than computing. Report medians (and min/max), not means: a noisy neighbour shows up as a
long tail, not as a shift of the median.
"""
import gc
import statistics
import time
from dataclasses import dataclass, field

try:
    import resource
except ImportError:     # not POSIX: page faults are not counted
    resource = None


@dataclass
class Timing:
    """Samples of one benchmarked callable, in seconds, and its page faults per timed call."""

    samples: list = field(default_factory=list)
    warmup_calls: int = 0
    minflt_per_call: float = None      # None where getrusage is missing

    @property
    def median_ms(self):
        return 1e3 * statistics.median(self.samples)

    @property
    def min_ms(self):
        return 1e3 * min(self.samples)

    @property
    def max_ms(self):
        return 1e3 * max(self.samples)

    def as_dict(self):
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "max_ms": self.max_ms,
                "repeats": len(self.samples), "warmup_calls": self.warmup_calls,
                "samples_ms": [1e3 * s for s in self.samples],
                "minflt_per_call": self.minflt_per_call}


@dataclass(frozen=True)
class Budget:
    """How long to measure one case: the default run takes minutes, ``--quick`` seconds."""

    seconds: float = 0.25      # timed calls stop once this much time has been spent ...
    min_repeats: int = 3       # ... and at least this many samples exist
    max_repeats: int = 200
    warmup_s: float = 0.05     # warm-up calls after the first call, for this long ...
    warmup_calls: int = 1      # ... and at least this many


DEFAULT_BUDGET = Budget()
QUICK_BUDGET = Budget(seconds=0.005, min_repeats=2, max_repeats=3, warmup_s=0.0, warmup_calls=0)


def _minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else None


def measure(fn, budget=DEFAULT_BUDGET):
    """Time ``fn()`` (no arguments) and return a :class:`Timing`.

    Whatever the first call raises propagates before any timing (the runner reports a
    missing kernel as "unavailable"). A call that takes longer than the whole budget gets no
    further warm-up: its first call was warm-up enough, and a slow case costs
    1 + ``min_repeats`` calls.
    """
    start = time.perf_counter()
    fn()
    slow = time.perf_counter() - start > budget.seconds
    warmups = 0
    start = time.perf_counter()
    while not slow and (warmups < budget.warmup_calls
                        or time.perf_counter() - start < budget.warmup_s):
        fn()
        warmups += 1

    samples = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        faults_before = _minflt()
        start = time.perf_counter()
        while len(samples) < budget.max_repeats and (
                len(samples) < budget.min_repeats or time.perf_counter() - start < budget.seconds):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        faults_after = _minflt()
    finally:
        if gc_was_enabled:
            gc.enable()
    minflt = None if faults_before is None else (faults_after - faults_before) / len(samples)
    return Timing(samples=samples, warmup_calls=warmups, minflt_per_call=minflt)


def sgemm_call(n=2048):
    """The callable of the sgemm yardstick: a float32 ``np.matmul`` of two n x n matrices
    (2 n^3 FLOPs) under the current BLAS threads.

    The output is preallocated (``out=``) so that the figure is the arithmetic rate of the
    machine's BLAS, not its page-fault rate: it is the yardstick that conv GFLOP/s are
    quoted against ("share of sgemm").
    """
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    return lambda: np.matmul(a, b, out=c)


def sgemm_rate(n=2048, budget=DEFAULT_BUDGET):
    """GFLOP/s of :func:`sgemm_call` (n x n) in this process, with its timing fields."""
    timing = measure(sgemm_call(n), budget)
    flops = 2 * n ** 3
    return {"n": n, "flops": flops, **timing.as_dict(),
            "gflops": flops / (timing.median_ms * 1e-3) / 1e9}
