"""The thread setting of fastconv's OpenMP kernels and of BLAS.

``set_num_threads`` sets the process default; ``with num_threads(n)`` overrides it for the
calling thread only, and the ops read the calling thread's value at each call, so threads
that use different settings at the same time never mix them up.

The fast kernels parallelise over an outer axis with OpenMP; some of them call BLAS
inside that parallel loop. If BLAS were multi-threaded there, every OpenMP thread
would start its own BLAS team (oversubscription: tens of times slower), so those
calls run under :func:`blas_single_thread`. The NumPy reference, which calls BLAS
from Python, gets the same number of BLAS threads that the kernels get OpenMP threads.
"""
import contextlib
import contextvars
import functools
import os
import threading

from threadpoolctl import ThreadpoolController

_controller = None      # created on first use: inspecting the loaded libraries costs ~ms
_default_n = None       # the process default (set_num_threads); None until first asked
# The count of the innermost ``num_threads`` block of the calling thread (None outside any):
# a context variable, so that blocks in different threads never see each other's setting.
_block_n = contextvars.ContextVar("fastconv_num_threads", default=None)

# BLAS has one thread setting per process, so it cannot follow each thread's block. It
# follows the most recently entered block still open (any thread), else the process
# default, and stays on one thread while any kernel runs (blas_single_thread). All of this
# state changes under one lock, so overlapping blocks and kernels in several threads always
# leave it as set_num_threads left it.
_blas_lock = threading.Lock()
_open_blocks = {}       # one entry per open num_threads block, in the order they were entered
_kernels_running = 0    # calls inside blas_single_thread, all threads together
_kernel_side_saved = [] # (set function, count) to restore when the last kernel call ends


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


def _process_default():
    global _default_n
    if _default_n is None:   # read the environment once, as OpenMP itself does
        _default_n = default_num_threads()
    return _default_n


def get_num_threads():
    """The number of threads the fast kernels use for a call made now from this thread: the
    innermost ``num_threads`` block's count, else the process default (set_num_threads)."""
    n = _block_n.get()
    return _process_default() if n is None else n


def _checked(op, n):
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{op}: n must be an int or None, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{op}: n must be >= 1, got {n}")
    return n


def set_num_threads(n):
    """Make ``n`` threads the process default for the fast kernels and for BLAS; ``None``
    restores the default (``OMP_NUM_THREADS`` when set, else every core this process may use).

    A ``num_threads`` block overrides it in the thread that opened the block. Results are
    bitwise identical for any ``n``: only the speed changes.
    """
    global _default_n
    n = _checked("set_num_threads", default_num_threads() if n is None else n)
    with _blas_lock:
        _default_n = n
        if not _open_blocks:
            _set_blas(n)


@contextlib.contextmanager
def num_threads(n):
    """Context manager: ``with fastconv.num_threads(1): ...`` runs the kernels called in the
    block on ``n`` threads.

    The setting belongs to the calling thread (other threads keep theirs) and is restored when
    the block ends, even after an error. NumPy's BLAS, which has one setting per process,
    uses ``n`` threads too while the block is the most recently entered one still open.
    """
    n = _checked("num_threads", n)
    key = object()
    token = _block_n.set(n)
    with _blas_lock:
        _open_blocks[key] = n
        _set_blas(n)
    try:
        yield
    finally:
        with _blas_lock:
            del _open_blocks[key]
            _set_blas(next(reversed(_open_blocks.values())) if _open_blocks
                      else _process_default())
        _block_n.reset(token)


def _set_blas(n):
    """Every BLAS library on ``n`` threads, except the kernels' while a kernel runs (they get
    ``n`` when the last one ends). Called with _blas_lock held."""
    global _kernel_side_saved, _blas_n
    kernel_side, numpy_side = _blas_controllers()
    _blas_n = n
    if _kernels_running:
        _kernel_side_saved = [(set_n, n) for _, set_n in _kernel_calls()]
        libraries = [lc for lc in numpy_side if lc not in kernel_side]
    else:
        libraries = list({id(lc): lc for lc in kernel_side + numpy_side}.values())
    for lc in libraries:
        _thread_calls(lc)[1](n)


_blas_sides = None      # (kernel side, NumPy side): see _blas_controllers
_kernel_side_calls = None   # [(get, set)] of the kernel side's libraries: see _kernel_calls
_blas_n = None          # the thread count _set_blas last gave every BLAS library (None: never)


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


@functools.cache
def _thread_calls(lc):
    """(get, set) of one BLAS library's thread count (found once per library): OpenBLAS's
    own C functions, called through ctypes, where threadpoolctl's methods wrap each call
    in ~1 us of Python (and ignore a thread other than the one that set OpenBLAS first;
    _blas_lock orders ours); the methods for the libraries whose functions threadpoolctl
    does not name."""
    symbol = getattr(lc, "_get_symbol", None)
    if getattr(lc, "internal_api", None) == "openblas" and symbol is not None:
        omp = getattr(lc, "threading_layer", None) == "openmp"
        get_n = symbol("omp_get_max_threads" if omp else "openblas_get_num_threads")
        set_n = symbol("omp_set_num_threads" if omp else "openblas_set_num_threads")
        if get_n is not None and set_n is not None:
            return get_n, set_n
    return lc.get_num_threads, lc.set_num_threads


def _kernel_calls():
    """[(get, set)] of the thread counts of the BLAS the kernels call (found once)."""
    global _kernel_side_calls
    if _kernel_side_calls is None:
        _kernel_side_calls = [_thread_calls(lc) for lc in _blas_controllers()[0]]
    return _kernel_side_calls


class _BlasSingleThread:
    """The context manager :func:`blas_single_thread` returns (one shared instance: its
    state is the module's, under _blas_lock). A class, not a generator: the kernels enter
    it on every call, and a generator-based context costs ~1.5 us more."""

    __slots__ = ()

    def __enter__(self):
        global _kernels_running, _kernel_side_saved
        calls = _kernel_side_calls if _kernel_side_calls is not None else _kernel_calls()
        with _blas_lock:
            if not _kernels_running:
                saved = []
                for get_n, set_n in calls:
                    n = get_n()
                    if n != 1:
                        saved.append((set_n, n))
                        set_n(1)
                _kernel_side_saved = saved
            _kernels_running += 1
        return self

    def __exit__(self, *exc):
        global _kernels_running, _kernel_side_saved
        with _blas_lock:
            _kernels_running -= 1
            if not _kernels_running and _kernel_side_saved:
                for set_n, n in _kernel_side_saved:
                    set_n(n)
                _kernel_side_saved = []
        return False


class _NothingToLimit:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_BLAS_SINGLE_THREAD = _BlasSingleThread()
NO_LIMIT = _NothingToLimit()   # the context of kernels that call no BLAS


def blas_single_thread():
    """Context manager: the kernels' BLAS on one thread (their BLAS calls run inside OpenMP
    loops, one per thread), restored when the last kernel call running in any thread ends.

    Straight calls to the libraries' own get/set functions (:func:`_thread_calls`), where
    threadpoolctl's ``limit`` context re-reads every library's state (~12 us): the kernels
    pay this on every call, and a LeNet-5 step makes dozens. Nothing at all is done when
    the calling thread runs its kernels on one thread and fastconv last set BLAS to one
    thread (``num_threads(1)``): the kernel's BLAS calls then cannot oversubscribe, and
    reading the libraries' setting would cost more than the tiny calls it guards."""
    if _blas_n == 1 and get_num_threads() == 1:
        return NO_LIMIT
    return _BLAS_SINGLE_THREAD


def blas_info():
    """A list of dicts describing the BLAS libraries loaded (threadpoolctl's view)."""
    return [
        {k: info.get(k) for k in ("internal_api", "version", "architecture",
                                   "threading_layer", "num_threads", "filepath")}
        for info in _threadpools().info() if info.get("user_api") == "blas"
    ]
