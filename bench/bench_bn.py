"""Batch norm forward (training mode) and backward on the layer suite: reference, fast, torch.

Training-mode forward updates the running statistics in place, so it runs under
``benchmark.pedantic`` with a setup that hands every round fresh running arrays: after the
timing, the last round's statistics have been updated exactly once and are checked.
"""
import numpy as np
import pytest
from benchutil import annotate, as_numpy, assert_close, layers_of, make_call, prepare, run_layer

from fastconv.benchmark.cases import OTHER_IMPLS

IMPLS = OTHER_IMPLS + ("torch",)
ROUNDS = 30


def _fresh_running(d):
    C = d["gamma"].shape[0]
    return {**d, "running_mean": np.zeros(C, np.float32), "running_var": np.ones(C, np.float32)}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("lay", layers_of("batch_norm_fwd"), ids=lambda lay: lay.name)
def test_batch_norm_fwd(benchmark, lay, impl, n_threads, rng):
    d = lay.make_inputs(lay.layer, rng)
    prepare(lay.op, impl, lay.layer, _fresh_running(d))       # skips when unavailable
    case = lay.cases[0]
    annotate(benchmark, lay.op, lay.name, impl, n_threads, lay.layer, case.work, case.unit)
    last = {}

    def setup():
        last["d"] = _fresh_running(d)
        return (make_call(lay.op, impl, lay.layer, last["d"]),), {}

    y = as_numpy(benchmark.pedantic(lambda fn: fn(), setup=setup, rounds=ROUNDS,
                                    warmup_rounds=1))
    assert y.shape == d["x"].shape
    ref = _fresh_running(d)
    want = make_call(lay.op, "reference", lay.layer, ref)()
    M = d["x"].size // d["x"].shape[1]
    assert_close(y, want, reduction=M, err_msg=f"y: {impl} vs reference")
    for key in ("running_mean", "running_var"):             # updated exactly once
        assert_close(last["d"][key], ref[key], reduction=M, err_msg=f"{key}: {impl}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("lay", layers_of("batch_norm_bwd"), ids=lambda lay: lay.name)
def test_batch_norm_bwd(benchmark, lay, impl, n_threads, rng):
    (dx, dgamma, dbeta), want = run_layer(benchmark, lay, impl, n_threads, rng)
    C = lay.layer["C"]
    assert dgamma.shape == dbeta.shape == (C,)
    if want is not None:
        M = dx.size // C
        assert dx.shape == want[0].shape
        for name, got, ref in zip(("dx", "dgamma", "dbeta"), (dx, dgamma, dbeta), want):
            assert_close(got, ref, reduction=M, err_msg=f"{name}: {impl} vs reference")
