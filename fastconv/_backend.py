"""Which implementation the ops use: "fast" (compiled kernels) or "reference" (NumPy)."""
import contextlib
import importlib

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


def load_kernels(name):
    """Import fastconv._ext.<name>, or raise an ImportError that says how to rebuild."""
    try:
        return importlib.import_module(f"fastconv._ext.{name}")
    except ImportError as exc:
        raise ImportError(f"fastconv's compiled module fastconv._ext.{name} could not be "
                          f"imported ({exc}). {REBUILD_HINT}") from exc


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
