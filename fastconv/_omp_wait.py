"""tune_openmp_waiting: how long idle OpenMP threads spin before they sleep.

Between two parallel regions (two layers) an OpenMP worker thread waits for the next one.
Spinning wakes it at once, but a spinning thread takes the core from any other busy thread
(the BLAS threads of a NumPy matmul, another process); sleeping at once makes every layer
pay a wake-up. OpenMP runtimes read their waiting policy from the environment once, when
they start (libgomp when it is loaded, libomp at its first parallel region), so the setting
must be in ``os.environ`` before fastconv's first kernel loads. ``import fastconv`` does not
do this by itself, as it would change every OpenMP runtime in the process (PyTorch's
included); the ``fastconv`` command does it first thing, and a script may call
:func:`tune_openmp_waiting` at its start. docs/performance.md has the measurements.
"""
import os
import sys
import warnings

SETTINGS = {"GOMP_SPINCOUNT": "2000",   # libgomp (gcc builds): spin ~2000 rounds, a few us
            "KMP_BLOCKTIME": "0"}       # LLVM's libomp and Intel's: sleep at once
"""What :func:`tune_openmp_waiting` puts in the environment."""

_RUNTIMES = ("libgomp.so", "libomp.so", "libiomp5.so")   # as the kernels link them
_applied = {}           # what tune_openmp_waiting put in os.environ in this process


def _openmp_started():
    """True when an OpenMP runtime that fastconv's kernels would use may already have read
    the environment: a kernel module is imported, or such a library is loaded (Linux)."""
    if any(name.startswith("fastconv._ext.") for name in sys.modules):
        return True
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:          # not Linux: the kernel modules are the only sign
        return False
    return any(f"/{lib}" in maps for lib in _RUNTIMES)


def tune_openmp_waiting(*, warn=True):
    """Make idle OpenMP threads spin briefly, then sleep: the waiting policy fastconv's
    kernels are fastest with (it is what the ``fastconv`` command uses).

    Sets ``GOMP_SPINCOUNT=2000`` (libgomp) and ``KMP_BLOCKTIME=0`` (libomp) in
    ``os.environ``, each unless it is already set, and neither when ``OMP_WAIT_POLICY`` is
    set (the user chose). This changes every OpenMP runtime that starts later in the
    process, PyTorch's included.

    It must run before the first fast kernel loads (first thing in a script, before any
    ``fastconv.functional`` call or model step): OpenMP reads these variables only when it
    starts. Called later it changes nothing and warns (unless ``warn=False``).

    Parameters
    ----------
    warn : bool, keyword only
        Warn (RuntimeWarning) when called too late. The ``fastconv`` command passes False:
        its ``main`` may also be called in a process whose kernels already ran.

    Returns
    -------
    dict : the variables it set (empty when the user's environment already decided or when
    it came too late).
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return {}
    todo = {k: v for k, v in SETTINGS.items() if k not in os.environ}
    if not todo:
        return {}
    if _openmp_started():
        if warn:
            warnings.warn("fastconv.tune_openmp_waiting() was called after the OpenMP runtime "
                          "started, so it has no effect: call it before the first fastconv "
                          "kernel runs", RuntimeWarning, stacklevel=2)
        return {}
    os.environ.update(todo)
    _applied.update(todo)
    return todo


def applied_settings():
    """The variables :func:`tune_openmp_waiting` set in this process (not the user's own):
    ``fastconv bench`` leaves them out of PyTorch's worker process."""
    return dict(_applied)
