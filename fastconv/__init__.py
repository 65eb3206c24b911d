"""fastconv: an educational CNN engine, NumPy references side by side with fast kernels.

>>> import numpy as np, fastconv.functional as F
>>> x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
>>> w = np.random.default_rng(1).standard_normal((16, 3, 3, 3)).astype(np.float32)
>>> F.conv2d(x, w, padding=1).shape
(8, 16, 32, 32)
"""
import os

# How long an OpenMP thread spins, waiting for the next parallel region, before it sleeps.
# Spinning wakes it at once for the next layer, but a spinning thread steals the core of any
# other busy thread (a NumPy matmul's BLAS threads, another process). Measured on 2 cores,
# 2 threads, medians: a LeNet-5 training step (batch 64) took 4.4 ms sleeping at once
# (OMP_WAIT_POLICY=PASSIVE), 3.8 ms spinning 2000 rounds (libgomp's GOMP_SPINCOUNT, a few
# microseconds) and 3.6 ms spinning 20000; a loop that alternates NumPy matmuls with
# fastconv calls took 3.8, 4.1 and 7.0 ms (libgomp's default, 300000 rounds, and
# OMP_WAIT_POLICY=ACTIVE are worse still). So 2000 for libgomp (gcc builds), and no spinning
# for LLVM's libomp (KMP_BLOCKTIME=0). Set before any kernel module loads (they load
# lazily); values already in the environment win.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "2000")
    os.environ.setdefault("KMP_BLOCKTIME", "0")

from ._backend import get_backend, set_backend, use_backend  # noqa: E402
from ._threads import get_num_threads, num_threads, set_num_threads  # noqa: E402
from ._info import info  # noqa: E402
from ._malloc import keep_freed_memory  # noqa: E402
from .gradcheck import gradcheck  # noqa: E402
from .summary import summary  # noqa: E402

__version__ = "0.1.0"

__all__ = ["get_backend", "set_backend", "use_backend", "get_num_threads", "set_num_threads",
           "num_threads", "info", "summary", "gradcheck", "keep_freed_memory", "__version__"]
