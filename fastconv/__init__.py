"""fastconv: an educational CNN engine, NumPy references side by side with fast kernels.

>>> import numpy as np, fastconv.functional as F
>>> x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
>>> w = np.random.default_rng(1).standard_normal((16, 3, 3, 3)).astype(np.float32)
>>> F.conv2d(x, w, padding=1).shape
(8, 16, 32, 32)
"""
from ._backend import get_backend, set_backend, use_backend
from ._threads import get_num_threads, num_threads, set_num_threads
from ._info import info
from ._malloc import keep_freed_memory
from ._omp_wait import tune_openmp_waiting
from .gradcheck import gradcheck
from .nn.module import is_grad_enabled, no_grad
from .summary import summary

__version__ = "0.1.0"

__all__ = ["get_backend", "set_backend", "use_backend", "get_num_threads", "set_num_threads",
           "num_threads", "info", "summary", "gradcheck", "keep_freed_memory", "tune_openmp_waiting",
           "no_grad", "is_grad_enabled", "__version__"]
