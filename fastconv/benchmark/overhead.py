"""Per-call overhead: the op API on inputs so small that the arithmetic is nothing.

Each op of ``fastconv.functional`` validates its arguments, resolves the backend, the
algorithm and the thread count, makes its arrays kernel-ready and then calls the compiled
kernel. On a tiny input that Python work is most of the call, and a network of small
layers (LeNet-5 at batch 1) pays it on every layer. Three implementations per op:

* ``fast``: the public call, e.g. ``F.conv2d(x, w, b)``;
* ``fast:kernel``: only the compiled-kernel calls that the public call makes, replayed
  with the very arguments it passed (recorded on a first call): the floor below which the
  Python layer cannot go; ``fast`` minus ``fast:kernel`` is the Python overhead;
* ``torch``: ``torch.nn.functional`` on the same (shared) data, which does its own
  checking and dispatch in C++.

The inputs, float32: conv2d (1, 1, 4, 4) with a (1, 1, 3, 3) kernel and a bias;
max_pool2d (1, 1, 4, 4), 2x2; batch_norm in training mode on (2, 3, 4, 4); relu
(1, 1, 4, 4); linear (1, 4) -> 2 with a bias.
"""
import numpy as np

OPS = ("conv2d", "max_pool2d", "batch_norm", "relu", "linear")
IMPLS = ("fast", "fast:kernel", "torch")


def inputs():
    rng = np.random.default_rng(0)

    def randn(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    return {"x": randn(1, 1, 4, 4), "w": randn(1, 1, 3, 3), "b": randn(1),
            "xb": randn(2, 3, 4, 4), "gamma": randn(3), "beta": randn(3),
            "mean": np.zeros(3, np.float32), "var": np.ones(3, np.float32),
            "xl": randn(1, 4), "wl": randn(2, 4), "bl": randn(2)}


def fastconv_call(op, d):
    from .. import functional as F
    return {
        "conv2d": lambda: F.conv2d(d["x"], d["w"], d["b"]),
        "max_pool2d": lambda: F.max_pool2d(d["x"], 2),
        "batch_norm": lambda: F.batch_norm(d["xb"], d["gamma"], d["beta"], d["mean"],
                                           d["var"], training=True),
        "relu": lambda: F.relu(d["x"]),
        "linear": lambda: F.linear(d["xl"], d["wl"], d["bl"]),
    }[op]


def torch_call(op, d):
    from .torch_impl import load
    torch = load()
    TF = torch.nn.functional
    t = {k: torch.from_numpy(v) for k, v in d.items()}
    return {
        "conv2d": lambda: TF.conv2d(t["x"], t["w"], t["b"]),
        "max_pool2d": lambda: TF.max_pool2d(t["x"], 2),
        "batch_norm": lambda: TF.batch_norm(t["xb"], t["mean"], t["var"], t["gamma"],
                                            t["beta"], training=True),
        "relu": lambda: TF.relu(t["x"]),
        "linear": lambda: TF.linear(t["xl"], t["wl"], t["bl"]),
    }[op]


class _Recorder:
    """Stands in for a kernel module: each function called through it is called for real
    and recorded, with its arguments, in ``calls``."""

    def __init__(self, module, calls):
        self._module, self._calls = module, calls

    def __getattr__(self, name):
        fn = getattr(self._module, name)

        def record(*args, **kwargs):
            self._calls.append((fn, args, kwargs))
            return fn(*args, **kwargs)
        return record


def kernel_calls(public_call):
    """A callable that replays the compiled-kernel calls ``public_call()`` makes, with the
    arguments it passes them (recorded on one call of ``public_call``)."""
    from .. import functional as F
    calls, real = [], F.implementation

    def recording(name, backend):
        return _Recorder(real(name, backend), calls)

    F.implementation = recording
    try:
        public_call()
    finally:
        F.implementation = real
    if not calls:
        raise RuntimeError("the op called no compiled kernel")

    def replay():
        for fn, args, kwargs in calls:
            fn(*args, **kwargs)
    return replay


def call(op, impl):
    """The zero-argument callable of overhead case ``op`` with ``impl`` (see IMPLS)."""
    d = inputs()
    if impl == "torch":
        return torch_call(op, d)
    public = fastconv_call(op, d)
    return kernel_calls(public) if impl == "fast:kernel" else public
