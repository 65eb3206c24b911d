"""Helpers of the pytest-benchmark suite (imported as ``benchutil``).

The inputs, the calls and the FLOP/byte models are those of ``fastconv bench``
(``fastconv.benchmark.cases``), so both tools measure the same thing. Correctness is asserted
after timing (shape, and closeness to the NumPy reference with the test suite's tolerances),
never a time. Cases whose kernel or module does not exist yet are skipped with the reason.
"""
import os
import sys

import numpy as np
import pytest

from fastconv.benchmark import cases, torch_impl
from fastconv.benchmark.environment import usable_cores

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from helpers import assert_close  # noqa: E402,F401  the shared tolerances of the test suite


def make_call(op, impl, layer, d):
    """The zero-argument callable running ``op`` with ``impl`` (a fastconv impl or "torch")
    on the inputs ``d``; raises ImportError (and the like) when it does not exist yet."""
    if impl == "torch":
        return torch_impl.op_call(op, layer, d)
    return cases.fastconv_call(op, impl, layer, d)


def prepare(op, impl, layer, d):
    """(fn, first result): the callable to time and its first call's result.

    Skips the test, with the reason, when the kernel, module or torch is unavailable. The
    first call doubles as the warm-up that loads the kernels and starts the thread pools.
    """
    try:
        fn = make_call(op, impl, layer, d)
        return fn, fn()
    except Exception as exc:                            # noqa: BLE001
        status, reason = cases.classify_exception(exc)
        if status == "unavailable":
            pytest.skip(f"unavailable: {reason}")
        raise


def reference_or_none(op, layer, d):
    """The NumPy reference result on the same inputs, or None while it does not exist."""
    try:
        return cases.fastconv_call(op, "reference", layer, d)()
    except Exception as exc:                            # noqa: BLE001
        if cases.classify_exception(exc)[0] == "unavailable":
            return None
        raise


def as_numpy(result):
    """fastconv returns arrays or tuples of arrays; torch returns tensors: all to NumPy."""
    if isinstance(result, (tuple, list)):
        return tuple(as_numpy(r) for r in result)
    return result.numpy() if hasattr(result, "numpy") else np.asarray(result)


def annotate(benchmark, op, name, impl, threads, layer, work, unit):
    """One group per (op, layer); extra_info says what ran and how much work it did."""
    benchmark.group = f"{op}:{name}"
    benchmark.extra_info.update(
        backend="torch" if impl == "torch" else impl.split(":")[0],
        algo=impl.split(":")[1] if ":" in impl else None,
        threads=threads, layer=layer, machine_cores=usable_cores(),
        **{"flops" if unit == "flop" else "bytes": work})


def layers_of(op):
    """The suite layers of ``op`` (full batch), for ``pytest.mark.parametrize``."""
    return [lay for lay in cases.suite_layers(with_torch=False) if lay.op == op]


def run_layer(benchmark, lay, impl, n_threads, rng):
    """Time ``impl`` on suite layer ``lay``; return (result, reference result or None).

    Both as NumPy (tuples for backward passes). The reference runs after the timing, on the
    same inputs, and is None for the reference itself or while it does not exist.
    """
    d = lay.make_inputs(lay.layer, rng)
    fn, _ = prepare(lay.op, impl, lay.layer, d)
    case = lay.cases[0]
    annotate(benchmark, lay.op, lay.name, impl, n_threads, lay.layer, case.work, case.unit)
    got = as_numpy(benchmark(fn))
    want = None if impl == "reference" else reference_or_none(lay.op, lay.layer, d)
    return got, want
