"""Which implementation the ops use: "fast" (compiled kernels) or "reference" (NumPy)."""
import contextlib
import glob
import contextvars
import importlib
import os
import sys

BACKENDS = ("fast", "reference")
_default_backend = "fast"
# The backend of the innermost ``use_backend`` block of the calling thread (None outside any):
# a context variable, so that blocks in different threads never see each other's choice.
_block_backend = contextvars.ContextVar("fastconv_backend", default=None)

REBUILD_HINT = ("Rebuild it from the source folder with `pip install .` (or "
                "`pip install -e .` for development); a C compiler is required. "
                "fastconv.info() shows which modules loaded, and backend=\"reference\" "
                "works without them.")


def get_backend():
    """The backend an op called now from this thread with ``backend=None`` uses: the innermost
    ``use_backend`` block's, else the process default (set_backend)."""
    backend = _block_backend.get()
    return _default_backend if backend is None else backend


def set_backend(backend):
    """Make ``backend`` ("fast" or "reference") the process default of every op (a
    ``use_backend`` block overrides it in the thread that opened the block)."""
    global _default_backend
    _default_backend = resolve_backend(backend, op="set_backend")


@contextlib.contextmanager
def use_backend(backend):
    """Context manager: ``with fastconv.use_backend("reference"): ...`` makes the ops called
    in the block, in this thread, use ``backend``; other threads keep theirs. Restored when
    the block ends, even after an error."""
    token = _block_backend.set(resolve_backend(backend, op="use_backend"))
    try:
        yield
    finally:
        _block_backend.reset(token)


def resolve_backend(backend, op):
    if backend is None:
        return get_backend()
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
