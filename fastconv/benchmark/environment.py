"""The environment a benchmark ran in: every figure is meaningless without it.

CPU model and cores, thread settings, OpenMP, the BLAS libraries with the kernel
threadpoolctl reports (OpenBLAS picks a kernel per CPU; ``OPENBLAS_CORETYPE`` overrides the
choice, e.g. Haswell = AVX2 on an AVX-512 machine, which halves its GEMM rate), the
allocator variables (page faults dominate small layers here), versions, and the kernel
modules that loaded.
"""
import datetime
import io
import os
import platform
import sys

import numpy as np

# Variables that change the figures: thread counts, OpenBLAS kernel choice, glibc malloc.
ENV_VARS = ("OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
            "KMP_BLOCKTIME", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "MKL_NUM_THREADS",
            "GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average():
    """The 1, 5 and 15-minute load averages, or None where the OS has none."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def busy_cores_warning(threshold=0.5):
    """'load average X on N usable cores: other programs are busy' when the 1-minute load
    average exceeds ``threshold``, else None. ``fastconv bench`` and ``fastconv train`` say it."""
    load = load_average()
    if not load or load[0] <= threshold:
        return None
    return (f"load average {load[0]:.2f} on {usable_cores()} usable cores: other programs "
            f"compete for the cores")


def torch_details():
    """PyTorch's version and threading/back-end summary (it imports torch), or None."""
    from . import torch_impl
    try:
        torch = torch_impl.load()
    except ImportError:
        return None
    return {"version": torch.__version__, "mkldnn": torch.backends.mkldnn.is_available(),
            "parallel_info": torch.__config__.parallel_info().strip().splitlines()}


def collect(threads, with_torch=True):
    """A JSON-ready dict describing this machine and process; ``warnings`` lists what skews.

    ``with_torch`` adds PyTorch's threading details (importing it: about 2 s).
    """
    import scipy
    import threadpoolctl

    import fastconv
    from .. import _threads
    from . import torch_impl

    with io.StringIO() as sink:          # fastconv.info() prints; keep the dict only
        info = fastconv.info(file=sink)
    env = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
    warnings = []
    if "OPENBLAS_CORETYPE" in env:
        warnings.append(
            f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} is set: OpenBLAS uses that kernel "
            "instead of the best for this CPU (Haswell = AVX2 only, about half the AVX-512 "
            "GEMM rate). Unset it (and OPENBLAS_L2_SIZE) in the benchmark command for "
            "GEMM-heavy figures.")
    if info.get("openmp") is False:
        warnings.append("fastconv was built without OpenMP: its kernels run on one thread.")
    load = load_average()
    busy = busy_cores_warning()
    if busy:
        warnings.append(f"{busy} when the run started, so the figures (multi-thread ones most) "
                        "are noisy; rerun on a quiet machine for figures to quote.")
    if max(threads) > usable_cores():
        warnings.append(f"{max(threads)} threads requested on {usable_cores()} usable cores: "
                        "oversubscribed, figures for those thread counts are not meaningful.")
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores_online": os.cpu_count(),
        "cores_usable": usable_cores(),
        "threads_measured": list(threads),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {"fastconv": fastconv.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "threadpoolctl": threadpoolctl.__version__,
                     "torch": torch_impl.version()},
        "openmp": info.get("openmp"),
        "kernels": info.get("kernels"),
        "compile_args": info.get("compile_args"),
        "blas": _threads.blas_info(),
        "torch": torch_details() if with_torch else None,
        "env": env,
        "load_average_start": load,
        "warnings": warnings,
    }


def summary_line(env):
    """One line for the table header and the README: date, CPU, cores, BLAS, versions."""
    blas = ", ".join(f"{b['internal_api']} {b['version']} ({b['architecture']})"
                     for b in env["blas"]) or "no BLAS found"
    torch = env["versions"]["torch"]
    return (f"{env['date_utc']}  {env['cpu']}, {env['cores_usable']} cores, "
            f"OpenMP {'on' if env['openmp'] else 'off'}, BLAS {blas}; "
            f"fastconv {env['versions']['fastconv']}, NumPy {env['versions']['numpy']}, "
            f"PyTorch {torch or 'not installed'}; "
            f"OPENBLAS_CORETYPE={env['env'].get('OPENBLAS_CORETYPE', 'unset')}"
            + (f"; malloc {env['malloc']}" if env.get("malloc") else ""))
