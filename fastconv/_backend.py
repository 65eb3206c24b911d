"""Which implementation the ops use: "fast" (compiled kernels) or "reference" (NumPy)."""
import contextlib
import glob
import importlib
import os
import sys

BACKENDS = ("fast", "reference")
_default_backend = "fast"

REBUILD_HINT = ("Rebuild it from the source folder with `pip install .` (or "
                "`pip install -e .` for development); a C compiler is required. "
                "fastconv.info() shows which modules loaded, and backend=\"reference\" "
                "works without them.")


def get_backend():
    """The backend used when an op is called with ``backend=None``."""
    return _default_backend


def set_backend(backend):
    """Make ``backend`` ("fast" or "reference") the default of every op."""
    global _default_backend
    _default_backend = resolve_backend(backend, op="set_backend")


@contextlib.contextmanager
def use_backend(backend):
    """Context manager: ``with fastconv.use_backend("reference"): ...``."""
    previous = _default_backend
    set_backend(backend)
    try:
        yield
    finally:
        set_backend(previous)


def resolve_backend(backend, op):
    if backend is None:
        return _default_backend
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS} or None, got {backend!r}")
    return backend


def _compiled_modules(package_dir):
    ext = os.path.join(package_dir, "_ext")
    return glob.glob(os.path.join(ext, "*.so")) + glob.glob(os.path.join(ext, "*.pyd"))


def source_folder_problem():
    """A sentence when this fastconv was imported from a source checkout without compiled
    kernels (typically: Python started in the repository root, whose ``fastconv/`` folder
    comes before the installed package on sys.path), else None."""
    package = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(package)
    if not (os.path.isfile(os.path.join(root, "setup.py"))
            and os.path.isdir(os.path.join(root, "src_pyx"))) or _compiled_modules(package):
        return None
    installed = [os.path.join(os.path.abspath(entry or "."), "fastconv") for entry in sys.path
                 if os.path.abspath(entry or ".") != root]
    installed = [p for p in installed if _compiled_modules(p)]
    where = f" (the installed one is {installed[0]})" if installed else ""
    return (f"this fastconv was imported from the source folder {package}, whose kernels are "
            f"not compiled, instead of the installed package{where}: Python looks in the "
            f"current folder first. Run Python from another folder (e.g. `cd ..`), or compile "
            f"the kernels in this folder with `pip install -e .`.")


def load_kernels(name):
    """Import fastconv._ext.<name>, or raise an ImportError that says how to rebuild."""
    try:
        return importlib.import_module(f"fastconv._ext.{name}")
    except ImportError as exc:
        problem = source_folder_problem()
        raise ImportError(f"fastconv's compiled module fastconv._ext.{name} could not be "
                          f"imported ({exc}). " + (problem[0].upper() + problem[1:] if problem
                                                   else REBUILD_HINT)) from exc


_implementations = {}   # (name, backend) -> module: an op call should not pay for an import


def implementation(name, backend):
    """The module that implements op family ``name`` for ``backend``: both have the same functions."""
    module = _implementations.get((name, backend))
    if module is None:
        if backend == "fast":
            module = load_kernels(name)
        else:
            module = importlib.import_module(f"fastconv.reference.{name}")
        _implementations[name, backend] = module
    return module
