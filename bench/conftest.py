"""pytest-benchmark suite of fastconv: the layer suite as benchmarks, one group per layer.

Run with ``pytest bench --benchmark-only`` (add ``--benchmark-autosave`` to keep the run and
``--benchmark-compare`` to diff against the last one). Plain ``pytest`` does not collect this
folder (``testpaths = ["tests"]``). Shared helpers live in ``benchutil.py``.
"""
import numpy as np
import pytest

import fastconv
from fastconv.benchmark import torch_impl
from fastconv.benchmark.environment import usable_cores

THREADS = sorted({1, usable_cores()})


@pytest.fixture(params=THREADS, ids=[f"{n}thr" for n in THREADS])
def n_threads(request):
    """Run the benchmark on 1 thread and on every usable core (fastconv, BLAS and torch)."""
    with fastconv.num_threads(request.param):
        torch_impl.set_threads(request.param)
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)
