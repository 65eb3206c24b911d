"""fastconv.info(): what was built, what loaded, and how many threads run."""
import platform
import sys

import numpy as np

from . import _threads
from ._backend import get_backend, source_folder_problem

KERNEL_MODULES = ("_openmp", "conv_direct", "conv_im2col", "conv_winograd", "conv_depthwise",
                  "pool", "batchnorm", "activation", "linear", "optim", "loss")


def _build_config():
    try:
        from . import _build_config
    except ImportError:
        return None
    return _build_config


def _mpi():
    """The MPI line: library and world size under mpirun; else whether mpi4py is there."""
    from . import distributed
    if not distributed.available():
        return 'not installed (data-parallel training: pip install "fastconv[mpi]")'
    if distributed.launched_by_mpi():
        return distributed.mpi_description()
    import mpi4py
    return f"mpi4py {mpi4py.__version__} (not launched by mpirun: one process)"


def info(file=None):
    """Print, and return as a dict, fastconv's version, build and runtime settings.

    Shows the compiled kernel modules (and why one failed to load), whether OpenMP is on,
    the thread count, MPI (library and world size when run under mpirun), the BLAS libraries with the kernel threadpoolctl reports, and the
    compiler flags of the build.
    """
    from . import __version__
    modules = {}
    for name in KERNEL_MODULES:
        try:
            __import__(f"fastconv._ext.{name}")
            modules[name] = "ok"
        except ImportError as exc:
            modules[name] = f"MISSING ({exc})"
    openmp = None
    if modules["_openmp"] == "ok":
        from ._ext import _openmp
        openmp = _openmp.openmp_enabled()
        isa_used, isa_cpu = _openmp.simd_isa()
    else:
        isa_used = isa_cpu = None
    simd = {}      # which copy of the runtime-dispatched float32 kernels this CPU runs
    if modules["conv_im2col"] == "ok":
        from ._ext import conv_im2col
        simd["conv_im2col"] = conv_im2col._products_kernel()
    if modules["batchnorm"] == "ok":
        from ._ext import batchnorm
        simd["batchnorm"] = batchnorm._kernel_isa()
    cfg = _build_config()
    report = {
        "version": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "backend": get_backend(),
        "kernels": modules,
        "openmp": openmp,
        "threads": _threads.get_num_threads(),
        "blas": _threads.blas_info(),
        "simd": simd,
        "isa": isa_used,
        "isa_cpu": isa_cpu,
        "compile_args": cfg.COMPILE_ARGS if cfg else None,
        "link_args": cfg.LINK_ARGS if cfg else None,
        "source_folder_problem": source_folder_problem(),
        "mpi": _mpi(),
    }
    lines = [
        f"fastconv {report['version']}  (Python {report['python']}, NumPy {report['numpy']}, "
        f"{report['platform']})",
        f"  default backend : {report['backend']}",
        f"  OpenMP          : {'on' if openmp else 'OFF (kernels run on one thread)' if openmp is False else 'unknown (module missing)'}",
        f"  threads         : {report['threads']}",
        f"  SIMD            : {isa_used} (this CPU: {isa_cpu})",
        f"  MPI             : {report['mpi']}",
        f"  compile flags   : {' '.join(report['compile_args']) if cfg else 'unknown'}",
    ]
    for name, status in modules.items():
        extra = f" (float32: {simd[name]})" if name in simd else ""
        lines.append(f"  kernel {name:<15}: {status}{extra}")
    for lib in report["blas"]:
        lines.append(f"  BLAS            : {lib['internal_api']} {lib['version']} "
                     f"kernel={lib['architecture']} threads={lib['num_threads']} "
                     f"({lib['filepath']})")
    if report["source_folder_problem"]:
        lines.insert(1, f"WARNING: {report['source_folder_problem']}")
    print("\n".join(lines), file=file)
    return report
