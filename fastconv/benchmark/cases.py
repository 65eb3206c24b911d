"""What ``fastconv bench`` times: one :class:`Case` per (op, suite layer, implementation).

The suite layers come from :mod:`fastconv.benchmark.shapes`. For every layer the inputs are
made once (float32, seeded) and shared by all implementations, so fastconv and PyTorch
compute on the very same numbers. Each case knows its *work*, the figure its speed is quoted
in:

* convolution: FLOPs, ``2*N*K*C*R*S*P*Q`` forward (a multiply-add is 2), twice that backward
  (dx and dw each cost one forward; db is negligible) -> GFLOP/s;
* pooling and batch norm: the bytes that must cross the memory bus at least once, every
  array read or written exactly once -> GB/s. The model is the same for every
  implementation, so the GB/s of two rows compare like their speeds:

  ====================  ===================================
  max_pool2d fwd        x read, y written
  max_pool2d bwd        dy and the int64 argmaxes read, dx written
  avg_pool2d fwd        x read, y written
  avg_pool2d bwd        dy read, dx written
  batch_norm fwd        x read, y written (training mode: batch statistics)
  batch_norm bwd        dy and x read, dx written
  ====================  ===================================
"""
from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from . import shapes, torch_impl

DTYPE = np.float32
# Implementations of each op family, in table order. "fast:auto" is what users get by default.
CONV_IMPLS = ("reference", "fast:direct", "fast:im2col", "fast:auto")
OTHER_IMPLS = ("reference", "fast")
TORCH = "torch"

OPS = ("conv2d_fwd", "conv2d_bwd", "max_pool2d_fwd", "max_pool2d_bwd",
       "avg_pool2d_fwd", "avg_pool2d_bwd", "batch_norm_fwd", "batch_norm_bwd")
OP_TITLES = {
    "conv2d_fwd": "conv2d forward",
    "conv2d_bwd": "conv2d backward (dx, dw, db)",
    "max_pool2d_fwd": "max_pool2d forward",
    "max_pool2d_bwd": "max_pool2d backward",
    "avg_pool2d_fwd": "avg_pool2d forward",
    "avg_pool2d_bwd": "avg_pool2d backward",
    "batch_norm_fwd": "batch_norm forward (training mode)",
    "batch_norm_bwd": "batch_norm backward",
}


@dataclass
class Case:
    """One benchmarked call: ``build(inputs)`` returns the zero-argument callable to time."""

    op: str                 # one of OPS
    name: str               # the suite layer, e.g. "resnet20_s1"
    impl: str               # "reference", "fast", "fast:direct", ..., "torch"
    layer: dict             # the suite row as a dict (N, C, H, W, ...), batch possibly capped
    work: float             # FLOPs (conv) or bytes (pool, BN) of one call
    unit: str               # "flop" or "byte"
    build: object = field(repr=False)

    @property
    def id(self):
        """``op:layer:impl``, what ``--filter`` and ``--compare`` match on."""
        return f"{self.op}:{self.name}:{self.impl}"

    @property
    def backend(self):
        return "torch" if self.impl == TORCH else self.impl.split(":")[0]

    @property
    def algo(self):
        return self.impl.split(":")[1] if ":" in self.impl else None


@dataclass
class Layer:
    """A suite layer with the cases of one op on it; ``make_inputs()`` builds the shared data."""

    op: str
    name: str
    layer: dict
    make_inputs: object
    cases: list


# --------------------------------------------------------------------------- inputs

def _randn(rng, *shape):
    return rng.standard_normal(shape, dtype=DTYPE)


def conv_inputs(layer, rng):
    """x (N, C, H, W), w (K, C/groups, R, S), b (K,), dy (N, K, P, Q) for a conv suite row."""
    N, C, H, W, K, R, S = (layer[k] for k in "NCHWKRS")
    Cg = C // layer.get("groups", 1)
    P, Q = shapes.conv_out(H, W, R, S, layer["stride"], layer["pad"], layer.get("dilation", 1))
    scale = 1.0 / np.sqrt(Cg * R * S)      # keeps y of order 1, as a real layer's init does
    return {"x": _randn(rng, N, C, H, W), "w": _randn(rng, K, Cg, R, S) * DTYPE(scale),
            "b": _randn(rng, K), "dy": _randn(rng, N, K, P, Q)}


def pool_inputs(layer, rng):
    N, C, H, W, k, s, p = (layer[key] for key in ("N", "C", "H", "W", "k", "stride", "pad"))
    P, Q = shapes.conv_out(H, W, k, k, s, p)
    return {"x": _randn(rng, N, C, H, W), "dy": _randn(rng, N, C, P, Q)}


def bn_inputs(layer, rng):
    N, C, H, W = (layer[k] for k in "NCHW")
    shape = (N, C) if H == 0 else (N, C, H, W)
    return {"x": _randn(rng, *shape), "dy": _randn(rng, *shape),
            "gamma": 1 + 0.1 * _randn(rng, C), "beta": 0.1 * _randn(rng, C),
            "running_mean": np.zeros(C, DTYPE), "running_var": np.ones(C, DTYPE)}


def make_inputs(op, layer, seed=0):
    """The inputs of ``op`` on suite row ``layer``, from a generator seeded with ``seed``: the
    same numbers in every process (each engine's worker makes its own copy)."""
    rng = np.random.default_rng(seed)
    if op.startswith("conv2d"):
        return conv_inputs(layer, rng)
    if "pool" in op:
        return pool_inputs(layer, rng)
    return bn_inputs(layer, rng)


# --------------------------------------------------------------------------- fastconv calls

def fastconv_call(op, impl, layer, d):
    """The zero-argument callable that runs ``op`` with fastconv's ``impl`` on inputs ``d``."""
    backend = impl.split(":")[0]
    algo = impl.split(":")[1] if ":" in impl else "auto"
    if op.startswith("conv2d"):
        s, p, g = layer["stride"], layer["pad"], layer.get("groups", 1)
        dil = layer.get("dilation", 1)
        if op == "conv2d_fwd":
            return lambda: F.conv2d(d["x"], d["w"], d["b"], s, p, dil, g, algo=algo,
                                    backend=backend)
        return lambda: F.conv2d_backward(d["dy"], d["x"], d["w"], s, p, dil, g, algo=algo,
                                         backend=backend)
    if "pool" in op:
        k, s, p = layer["k"], layer["stride"], layer["pad"]
        saved = []

        def indices():                         # computed once, at the first (untimed) call
            if not saved:
                saved.append(F.max_pool2d(d["x"], k, s, p, backend=backend,
                                          return_indices=True)[1])
            return saved[0]
        return {
            "max_pool2d_fwd": lambda: F.max_pool2d(d["x"], k, s, p, backend=backend),
            # with the argmaxes the forward returned, as PyTorch's side uses the indices
            # its forward saved
            "max_pool2d_bwd": lambda: F.max_pool2d_backward(d["dy"], d["x"], k, s, p,
                                                            backend=backend,
                                                            indices=indices()),
            "avg_pool2d_fwd": lambda: F.avg_pool2d(d["x"], k, s, p, backend=backend),
            "avg_pool2d_bwd": lambda: F.avg_pool2d_backward(d["dy"], d["x"], k, s, p,
                                                            backend=backend),
        }[op]
    if op == "batch_norm_fwd":
        # Training mode updates the running statistics in place: harmless for timing.
        return lambda: F.batch_norm(d["x"], d["gamma"], d["beta"], d["running_mean"],
                                    d["running_var"], training=True, backend=backend)
    if op == "batch_norm_bwd":
        # With the statistics saved by the forward, as PyTorch's side (and a training step).
        _, mean, var = F.batch_norm(d["x"], d["gamma"], d["beta"], None, None, training=True,
                                    backend=backend, return_stats=True)
        return lambda: F.batch_norm_backward(d["dy"], d["x"], d["gamma"], backend=backend,
                                             mean=mean, var=var)
    raise ValueError(f"unknown op {op!r}")


# --------------------------------------------------------------------------- work models

def conv_work(op, layer):
    flops = shapes.conv_flops(*(layer[k] for k in ("N", "C", "H", "W", "K", "R", "S",
                                                   "stride", "pad")),
                              layer.get("groups", 1), layer.get("dilation", 1))
    return flops if op == "conv2d_fwd" else 2 * flops


def pool_work(op, layer):
    N, C, H, W, k, s, p = (layer[key] for key in ("N", "C", "H", "W", "k", "stride", "pad"))
    P, Q = shapes.conv_out(H, W, k, k, s, p)
    x, y = N * C * H * W, N * C * P * Q
    arrays = {"max_pool2d_fwd": x + y, "max_pool2d_bwd": y + 2 * y + x,   # int64: 2 floats
              "avg_pool2d_fwd": x + y, "avg_pool2d_bwd": y + x}[op]
    return arrays * np.dtype(DTYPE).itemsize


def bn_work(op, layer):
    N, C, H, W = (layer[k] for k in "NCHW")
    size = N * C * max(H, 1) * max(W, 1)
    return (2 if op == "batch_norm_fwd" else 3) * size * np.dtype(DTYPE).itemsize


# --------------------------------------------------------------------------- the suite

def _cap(layer, batch_cap):
    if batch_cap is not None:
        layer["N"] = min(layer["N"], batch_cap)
    return layer


def suite_layers(batch_cap=None, with_torch=True):
    """Every (op, layer) of the suite with its cases, in table order.

    ``batch_cap`` limits N (``--quick``); ``with_torch`` adds PyTorch's cases (they report
    themselves unavailable when torch cannot be imported).
    """
    layers = []

    def add(op, name, layer, make_inputs, work, unit, impls):
        impls = impls + ((TORCH,) if with_torch else ())
        cases = [Case(op, name, impl, layer, work, unit,
                      build=(lambda d, op=op, layer=layer: torch_impl.op_call(op, layer, d))
                      if impl == TORCH else
                      (lambda d, op=op, impl=impl, layer=layer: fastconv_call(op, impl, layer, d)))
                 for impl in impls]
        layers.append(Layer(op, name, layer, make_inputs, cases))

    for op in ("conv2d_fwd", "conv2d_bwd"):
        for row in shapes.CONV:
            layer = _cap(dict(zip(("N", "C", "H", "W", "K", "R", "S", "stride", "pad"), row[1:])),
                         batch_cap)
            add(op, row[0], layer, conv_inputs, conv_work(op, layer), "flop", CONV_IMPLS)
        for row in shapes.DEPTHWISE:           # groups = K = C: the depthwise kernel
            name, N, C, H, W, R, S, stride, pad = row
            layer = _cap(dict(N=N, C=C, H=H, W=W, K=C, R=R, S=S, stride=stride, pad=pad,
                              groups=C), batch_cap)
            add(op, name, layer, conv_inputs, conv_work(op, layer), "flop",
                ("reference", "fast:auto"))
        for row in shapes.DILATED:
            layer = _cap(dict(zip(("N", "C", "H", "W", "K", "R", "S", "stride", "pad",
                                   "dilation"), row[1:])), batch_cap)
            add(op, row[0], layer, conv_inputs, conv_work(op, layer), "flop", CONV_IMPLS)
    for kind in ("max", "avg"):
        for direction in ("fwd", "bwd"):
            op = f"{kind}_pool2d_{direction}"
            for row in shapes.POOL:
                if row[1] != kind:
                    continue
                layer = _cap(dict(zip(("N", "C", "H", "W", "k", "stride", "pad"), row[2:])),
                             batch_cap)
                add(op, row[0], layer, pool_inputs, pool_work(op, layer), "byte", OTHER_IMPLS)
    for op in ("batch_norm_fwd", "batch_norm_bwd"):
        for row in shapes.BN:
            layer = _cap(dict(zip("NCHW", row[1:])), batch_cap)
            add(op, row[0], layer, bn_inputs, bn_work(op, layer), "byte", OTHER_IMPLS)
    return layers


def matches(case_id, filters):
    """True when ``filters`` (substrings, any of them) is empty or one occurs in ``case_id``."""
    return not filters or any(f in case_id for f in filters)


def classify_exception(exc):
    """("unavailable" | "error", one-line reason) for an exception raised by a case.

    Missing pieces are *unavailable*, not failures: a kernel module not built yet
    (ImportError), a function a module does not have yet (AttributeError on a module),
    NotImplementedError, or PyTorch not installed. Anything else is an error of the case.
    """
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    missing = isinstance(exc, (ImportError, NotImplementedError)) or (
        isinstance(exc, AttributeError) and str(exc).startswith("module "))
    return ("unavailable" if missing else "error"), reason
