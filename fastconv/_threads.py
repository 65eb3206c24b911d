"""One thread setting for fastconv's OpenMP kernels and for BLAS.

The fast kernels parallelise over an outer axis with OpenMP; some of them call BLAS
inside that parallel loop. If BLAS were multi-threaded there, every OpenMP thread
would start its own BLAS team (oversubscription: tens of times slower), so those
calls run under :func:`blas_single_thread`. The NumPy reference, which calls BLAS
from Python, gets the same number of BLAS threads that the kernels get OpenMP threads.
"""
import contextlib
import os

from threadpoolctl import ThreadpoolController

_controller = None      # created on first use: inspecting the loaded libraries costs ~ms
_n_threads = None       # None until first asked: then default_num_threads()


def _threadpools():
    global _controller
    if _controller is None:
        import scipy.linalg  # noqa: F401  loads SciPy's BLAS (the one cython_blas calls) first
        _controller = ThreadpoolController()
    return _controller


def default_num_threads():
    """OMP_NUM_THREADS when it is set to a positive integer, else the cores this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def get_num_threads():
    """The number of threads the fast kernels (and BLAS) use."""
    global _n_threads
    if _n_threads is None:   # read the environment once, as OpenMP itself does
        _n_threads = default_num_threads()
    return _n_threads


def set_num_threads(n):
    """Use ``n`` threads for the fast kernels and for BLAS; ``None`` restores the default.

    The default is ``OMP_NUM_THREADS`` when set, else every core this process may use.
    Results are bitwise identical for any ``n``: only the speed changes.
    """
    global _n_threads
    if n is None:
        n = default_num_threads()
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int or None, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _n_threads = n
    _threadpools().limit(limits=n, user_api="blas")


@contextlib.contextmanager
def num_threads(n):
    """Context manager: ``with fastconv.num_threads(1): ...`` runs the block on ``n`` threads."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


_blas_sides = None      # (kernel side, NumPy side): see _blas_controllers


def _blas_controllers():
    """(kernel side, NumPy side): threadpoolctl's controllers of the BLAS the kernels call
    (SciPy's, through cython_blas) and of the BLAS behind NumPy's matmul. In wheels these are
    two libraries (NumPy's lives under numpy.libs); where one library serves both, it is on
    both sides."""
    global _blas_sides
    if _blas_sides is None:
        blas = [lc for lc in _threadpools().lib_controllers if lc.user_api == "blas"]
        numpy_side = [lc for lc in blas if "numpy" in os.path.normcase(lc.filepath or "")]
        kernel_side = [lc for lc in blas if lc not in numpy_side]
        _blas_sides = (kernel_side or blas, numpy_side or blas)
    return _blas_sides


@contextlib.contextmanager
def _one_thread(controllers):
    """The block with these BLAS libraries on one thread, their settings restored after.

    Straight calls to the libraries' own get/set functions (~2 us a library), where
    threadpoolctl's ``limit`` context re-reads every library's state (~12 us): the kernels
    pay this on every call, and a LeNet-5 step makes dozens."""
    changed = [(lc, n) for lc, n in ((lc, lc.get_num_threads()) for lc in controllers) if n != 1]
    for lc, _ in changed:
        lc.set_num_threads(1)
    try:
        yield
    finally:
        for lc, n in changed:
            lc.set_num_threads(n)


def blas_single_thread():
    """Context manager: the kernels' BLAS on one thread (their BLAS calls run inside OpenMP
    loops, one per thread)."""
    return _one_thread(_blas_controllers()[0])


def blas_info():
    """A list of dicts describing the BLAS libraries loaded (threadpoolctl's view)."""
    return [
        {k: info.get(k) for k in ("internal_api", "version", "architecture",
                                   "threading_layer", "num_threads", "filepath")}
        for info in _threadpools().info() if info.get("user_api") == "blas"
    ]
