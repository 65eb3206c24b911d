"""fastconv: an educational CNN engine, NumPy references side by side with fast kernels.

>>> import numpy as np, fastconv.functional as F
>>> x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
>>> w = np.random.default_rng(1).standard_normal((16, 3, 3, 3)).astype(np.float32)
>>> F.conv2d(x, w, padding=1).shape
(8, 16, 32, 32)
"""
import os

# libgomp spin-waits between parallel regions by default. When there are more runnable
# threads than cores (BLAS threads of a NumPy matmul between two layers, or any other busy
# process), a spinning thread steals the core its partner needs: a LeNet-5 training step
# (batch 64) measured 6.5 ms on 1 thread, 17-90 ms on 2 spinning threads and 6.6-9.5 ms on 2
# passive ones; ResNet-20 steps were the same either way. Set before any kernel module loads
# (they load lazily); an OMP_WAIT_POLICY already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._backend import get_backend, set_backend, use_backend  # noqa: E402
from ._threads import get_num_threads, num_threads, set_num_threads  # noqa: E402
from ._info import info  # noqa: E402
from .gradcheck import gradcheck  # noqa: E402
from .summary import summary  # noqa: E402

__version__ = "0.1.0"

__all__ = ["get_backend", "set_backend", "use_backend", "get_num_threads", "set_num_threads",
           "num_threads", "info", "summary", "gradcheck", "__version__"]
