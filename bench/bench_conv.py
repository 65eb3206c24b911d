"""Conv forward and backward on the layer suite: reference, fast direct/im2col/auto, torch.

    pytest bench/bench_conv.py --benchmark-only --benchmark-group-by=group
"""
import pytest
from benchutil import assert_close, layers_of, run_layer

from fastconv.benchmark.cases import CONV_IMPLS
from fastconv.benchmark.shapes import conv_out

IMPLS = CONV_IMPLS + ("torch",)


def _sizes(layer):
    N, C, H, W, K, R, S = (layer[k] for k in "NCHWKRS")
    return N, C, H, W, K, R, S, conv_out(H, W, R, S, layer["stride"], layer["pad"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("lay", layers_of("conv2d_fwd"), ids=lambda lay: lay.name)
def test_conv2d_fwd(benchmark, lay, impl, n_threads, rng):
    y, want = run_layer(benchmark, lay, impl, n_threads, rng)
    N, C, H, W, K, R, S, (P, Q) = _sizes(lay.layer)
    assert y.shape == (N, K, P, Q)
    if want is not None:
        assert_close(y, want, reduction=C * R * S, err_msg=f"{impl} vs reference")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("lay", layers_of("conv2d_bwd"), ids=lambda lay: lay.name)
def test_conv2d_bwd(benchmark, lay, impl, n_threads, rng):
    (dx, dw, db), want = run_layer(benchmark, lay, impl, n_threads, rng)
    N, C, H, W, K, R, S, (P, Q) = _sizes(lay.layer)
    assert (dx.shape, dw.shape, db.shape) == ((N, C, H, W), (K, C, R, S), (K,))
    if want is not None:
        assert_close(dx, want[0], reduction=K * R * S, err_msg=f"dx: {impl} vs reference")
        assert_close(dw, want[1], reduction=N * P * Q, err_msg=f"dw: {impl} vs reference")
        assert_close(db, want[2], reduction=N * P * Q, err_msg=f"db: {impl} vs reference")
