"""Max and average pooling, forward and backward, on the layer suite: reference, fast, torch."""
import pytest
from benchutil import assert_close, layers_of, run_layer

from fastconv.benchmark.cases import OTHER_IMPLS
from fastconv.benchmark.shapes import conv_out

IMPLS = OTHER_IMPLS + ("torch",)
OPS = ("max_pool2d_fwd", "max_pool2d_bwd", "avg_pool2d_fwd", "avg_pool2d_bwd")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("lay", [lay for op in OPS for lay in layers_of(op)],
                         ids=lambda lay: f"{lay.op}-{lay.name}")
def test_pool(benchmark, lay, impl, n_threads, rng):
    out, want = run_layer(benchmark, lay, impl, n_threads, rng)
    N, C, H, W, k, s, p = (lay.layer[key] for key in ("N", "C", "H", "W", "k", "stride", "pad"))
    expected = (N, C, *conv_out(H, W, k, k, s, p)) if lay.op.endswith("fwd") else (N, C, H, W)
    assert out.shape == expected
    if want is not None:
        assert_close(out, want, reduction=k * k, err_msg=f"{impl} vs reference")
