"""Pooling options, as PyTorch's: ceil_mode, max-pool dilation, divisor_override,
return_indices on the layer, max unpooling, adaptive average/max pooling, unbatched
(C, H, W) input and an empty batch. Formulas (pool.out), (pool.adapt), (pool.unpool).

Chain of trust as in test_pool.py: hand-made examples check the reference (no PyTorch
needed), the reference checks the fast kernels (float32 and float64, 1 and 2 threads, the
same bits on both), finite differences check every backward in float64, and where PyTorch
is installed both backends are compared with it.
"""
import numpy as np
import pytest

import fastconv
import fastconv.functional as F
import fastconv.nn as nn
from fastconv.reference import pool as ref
from helpers import assert_close, assert_grad_matches

BACKENDS = ["reference", "fast"]

# (x shape, kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    ((2, 3, 7, 7), 3, 2, 1, 1, True),          # ceil adds a last partial window
    ((1, 2, 6, 9), 2, 2, 0, 1, True),          # odd W: 2x2 stride 2 with a half window
    ((2, 2, 9, 8), 3, 1, 1, 2, False),         # dilation 2
    ((1, 3, 10, 11), (3, 2), (2, 3), (1, 1), (2, 3), True),
    ((2, 1, 5, 5), 2, 1, 0, 3, False),
    ((1, 2, 12, 7), 3, 3, 0, 1, True),
]
# (x shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CASES = [
    ((2, 3, 7, 7), 3, 2, 1, True, True, None),
    ((2, 3, 7, 7), 3, 2, 1, True, False, None),
    ((1, 2, 6, 9), 2, 2, 0, True, True, None),
    ((2, 2, 8, 8), 3, 2, 1, False, True, 5),
    ((1, 2, 9, 10), (3, 2), (2, 3), (1, 1), True, False, 7),
    ((2, 4, 4, 4), 4, 1, 0, False, True, 3),        # whole plane with an override
]
ADAPTIVE = [((2, 3, 7, 5), (3, 2)), ((1, 2, 5, 5), (5, 5)), ((2, 2, 6, 9), (4, 4)),
            ((1, 1, 3, 8), (1, 3)), ((2, 2, 4, 4), (7, 2))]     # output larger than input


def ids(case):
    return "-".join(str(v) for v in case).replace(" ", "")


def max_kw(case):
    _, k, s, p, d, c = case
    return dict(stride=s, padding=p, dilation=d, ceil_mode=c), k


# --------------------------------------------------------------------------- by hand

def test_output_size_formula_by_hand():
    """(pool.out): floor or ceil of (H + 2p - d(k - 1) - 1) / s, plus 1, and ceil_mode's
    last window must start inside the input or its left padding."""
    assert ref.pool_output_size(7, 3, 2, 1) == 4
    assert ref.pool_output_size(6, 3, 2, 1) == 3 and ref.pool_output_size(6, 3, 2, 1, 1, True) == 4
    assert ref.pool_output_size(5, 2, 2, 0, 1, True) == 3       # (5 - 2)/2 = 1.5 -> 2, + 1
    assert ref.pool_output_size(9, 3, 1, 1, 2) == 7             # span 5
    # ceil would give (4 + 2 - 2 + 2)/3 + 1 = 3, but window 2 would start at 6 - 1 = 5 >= 4
    assert ref.pool_output_size(4, 2, 3, 1, 1, True) == 2
    assert F.pool_output_size(4, 2, 3, 1, 1, True) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_ceil_mode_by_hand(backend):
    x = np.arange(1., 10.).reshape(1, 1, 3, 3)                  # 1..9
    y = F.max_pool2d(x, 2, ceil_mode=True, backend=backend)
    assert y[0, 0].tolist() == [[5., 6.], [8., 9.]]
    y = F.avg_pool2d(x, 2, ceil_mode=True, backend=backend)
    assert y[0, 0].tolist() == [[3., 4.5], [7.5, 9.]]           # partial windows: real cells
    y = F.avg_pool2d(x, 2, ceil_mode=True, divisor_override=2, backend=backend)
    assert y[0, 0].tolist() == [[6., 4.5], [7.5, 4.5]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_dilation_by_hand(backend):
    x = np.arange(16.).reshape(1, 1, 4, 4)
    x[0, 0, 2, 0] = 100.                                        # tap (1, 0) of window (0, 0)
    y, ind = F.max_pool2d(x, 2, 1, dilation=2, return_indices=True, backend=backend)
    assert y[0, 0].tolist() == [[100., 11.], [14., 15.]]
    assert ind[0, 0].tolist() == [[8, 11], [14, 15]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaptive_and_unpool_by_hand(backend):
    x = np.arange(1., 6.).reshape(1, 1, 1, 5)                   # windows [0,3) and [2,5)
    assert F.adaptive_avg_pool2d(x, (1, 2), backend=backend)[0, 0, 0].tolist() == [2., 4.]
    y, ind = F.adaptive_max_pool2d(x, (1, 2), return_indices=True, backend=backend)
    assert y[0, 0, 0].tolist() == [3., 5.] and ind[0, 0, 0].tolist() == [2, 4]
    dx = F.adaptive_avg_pool2d_backward(np.array([[[[3., 6.]]]]), x, (1, 2), backend=backend)
    assert dx[0, 0, 0].tolist() == [1., 1., 3., 2., 2.]        # cell 2 is in both windows
    up = F.max_unpool2d(y, ind, (1, 2), (1, 2), output_size=(1, 5), backend=backend)
    assert up[0, 0, 0].tolist() == [0., 0., 3., 0., 5.]
    dxu = F.max_unpool2d_backward(np.arange(5.).reshape(1, 1, 1, 5), ind, backend=backend)
    assert dxu[0, 0, 0].tolist() == [2., 4.]


# --------------------------------------------------------------------------- fast == reference

@pytest.mark.parametrize("case", MAX_CASES, ids=ids)
def test_max_options_fast_matches_reference(case, dtype, rng, n_threads):
    kw, k = max_kw(case)
    x = rng.standard_normal(case[0]).astype(dtype)
    y, ind = F.max_pool2d(x, k, return_indices=True, **kw)
    y_ref, ind_ref = F.max_pool2d(x, k, return_indices=True, backend="reference", **kw)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(ind, ind_ref)
    np.testing.assert_array_equal(F.max_pool2d(x, k, **kw), y_ref)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx_ref = F.max_pool2d_backward(dy, x, k, backend="reference", **kw)
    assert_close(F.max_pool2d_backward(dy, x, k, **kw), dx_ref, dtype)
    assert_close(F.max_pool2d_backward(dy, x, k, indices=ind, **kw), dx_ref, dtype)


@pytest.mark.parametrize("case", AVG_CASES, ids=ids)
def test_avg_options_fast_matches_reference(case, dtype, rng, n_threads):
    shape, k, s, p, c, cip, div = case
    kw = dict(ceil_mode=c, divisor_override=div)
    x = rng.standard_normal(shape).astype(dtype)
    y = F.avg_pool2d(x, k, s, p, cip, **kw)
    assert_close(y, F.avg_pool2d(x, k, s, p, cip, backend="reference", **kw), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_close(F.avg_pool2d_backward(dy, x, k, s, p, cip, **kw),
                 F.avg_pool2d_backward(dy, x, k, s, p, cip, backend="reference", **kw), dtype)


@pytest.mark.parametrize("case", ADAPTIVE, ids=ids)
def test_adaptive_and_unpool_fast_match_reference(case, dtype, rng, n_threads):
    shape, out = case
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape[:2] + out).astype(dtype)
    y = F.adaptive_avg_pool2d(x, out)
    assert_close(y, F.adaptive_avg_pool2d(x, out, backend="reference"), dtype)
    assert_close(F.adaptive_avg_pool2d_backward(dy, x, out),
                 F.adaptive_avg_pool2d_backward(dy, x, out, backend="reference"), dtype)
    y, ind = F.adaptive_max_pool2d(x, out, return_indices=True)
    y_ref, ind_ref = F.adaptive_max_pool2d(x, out, return_indices=True, backend="reference")
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(ind, ind_ref)
    assert_close(F.adaptive_max_pool2d_backward(dy, x, out),
                 F.adaptive_max_pool2d_backward(dy, x, out, backend="reference"), dtype)


@pytest.mark.parametrize("case", [((2, 3, 8, 7), 2, 2, 0), ((1, 4, 9, 9), 3, 2, 1),
                                  ((2, 2, 5, 6), 3, 1, 1)], ids=ids)
def test_unpool_fast_matches_reference(case, dtype, rng, n_threads):
    shape, k, s, p = case
    x = rng.standard_normal(shape).astype(dtype)
    y, ind = F.max_pool2d(x, k, s, p, return_indices=True)
    up = F.max_unpool2d(y, ind, k, s, p, output_size=shape[2:])
    np.testing.assert_array_equal(up, F.max_unpool2d(y, ind, k, s, p, output_size=shape[2:],
                                                     backend="reference"))
    g = rng.standard_normal(up.shape).astype(dtype)
    np.testing.assert_array_equal(F.max_unpool2d_backward(g, ind),
                                  F.max_unpool2d_backward(g, ind, backend="reference"))


def test_new_kernels_are_bitwise_thread_invariant(rng):
    x = rng.standard_normal((4, 16, 30, 30)).astype(np.float32)
    calls = [lambda: F.max_pool2d(x, 3, 2, 1, dilation=2, return_indices=True),
             lambda: F.max_pool2d_backward(np.ones((4, 16, 14, 14), np.float32), x, 3, 2, 1,
                                           dilation=2),
             lambda: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, divisor_override=4),
             lambda: F.avg_pool2d_backward(np.ones((4, 16, 16, 16), np.float32), x, 3, 2, 1,
                                           ceil_mode=True),
             lambda: F.adaptive_avg_pool2d(x, 7),
             lambda: F.adaptive_avg_pool2d_backward(np.ones((4, 16, 7, 7), np.float32), x, 7),
             lambda: F.adaptive_max_pool2d(x, 7, return_indices=True)]
    for call in calls:
        with fastconv.num_threads(1):
            one = call()
        with fastconv.num_threads(2):
            two = call()
        for a, b in zip(one if isinstance(one, tuple) else (one,),
                        two if isinstance(two, tuple) else (two,)):
            assert a.tobytes() == b.tobytes()


def test_max_nan_rule_with_dilation_and_ceil():
    x = np.arange(25.).reshape(1, 1, 5, 5)
    x[0, 0, 0, 0] = x[0, 0, 2, 2] = np.nan
    for be in BACKENDS:
        y, ind = F.max_pool2d(x, 3, 2, ceil_mode=True, dilation=1, return_indices=True,
                              backend=be)
        assert np.isnan(y[0, 0, 0, 0]) and ind[0, 0, 0, 0] == 12    # the last NaN
        y, ind = F.max_pool2d(x, 2, 1, dilation=2, return_indices=True, backend=be)
        assert np.isnan(y[0, 0, 0, 0]) and ind[0, 0, 0, 0] == 12


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("backend", BACKENDS)
def test_option_gradients_match_finite_differences(backend, rng):
    x = rng.standard_normal((1, 2, 7, 6))
    ops = [
        (lambda x: F.max_pool2d(x, 3, 2, 1, dilation=1, ceil_mode=True, backend=backend),
         lambda dy, x: F.max_pool2d_backward(dy, x, 3, 2, 1, ceil_mode=True, backend=backend)),
        (lambda x: F.max_pool2d(x, 2, 1, dilation=2, backend=backend),
         lambda dy, x: F.max_pool2d_backward(dy, x, 2, 1, dilation=2, backend=backend)),
        (lambda x: F.avg_pool2d(x, 3, 2, 1, False, ceil_mode=True, backend=backend),
         lambda dy, x: F.avg_pool2d_backward(dy, x, 3, 2, 1, False, ceil_mode=True,
                                             backend=backend)),
        (lambda x: F.avg_pool2d(x, 2, ceil_mode=True, divisor_override=3, backend=backend),
         lambda dy, x: F.avg_pool2d_backward(dy, x, 2, ceil_mode=True, divisor_override=3,
                                             backend=backend)),
        (lambda x: F.adaptive_avg_pool2d(x, (4, 5), backend=backend),
         lambda dy, x: F.adaptive_avg_pool2d_backward(dy, x, (4, 5), backend=backend)),
        (lambda x: F.adaptive_max_pool2d(x, (3, 4), backend=backend),
         lambda dy, x: F.adaptive_max_pool2d_backward(dy, x, (3, 4), backend=backend)),
    ]
    for fwd, bwd in ops:
        dy = rng.standard_normal(fwd(x).shape)
        assert_grad_matches(bwd(dy, x), lambda: float((fwd(x) * dy).sum()), x)
    # max unpooling is linear in x: its gradient is dy gathered at the indices
    y, ind = F.max_pool2d(x, 2, return_indices=True)
    dy = rng.standard_normal(x.shape)
    assert_grad_matches(F.max_unpool2d_backward(dy, ind, backend=backend),
                        lambda: float((F.max_unpool2d(y, ind, 2, output_size=x.shape[2:],
                                                      backend=backend) * dy).sum()), y)


# --------------------------------------------------------------------------- layers

def test_layers_unbatched_and_empty_batch(rng):
    layers = [nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d(2, dilation=2),
              nn.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=4),
              nn.AdaptiveAvgPool2d((3, None)), nn.AdaptiveMaxPool2d(2), nn.GlobalAvgPool2d()]
    x = rng.standard_normal((2, 3, 7, 8))
    for layer in layers:
        y = layer(x)
        dy = rng.standard_normal(y.shape)
        dx = layer.backward(dy)
        y1 = layer(x[1])                                     # unbatched (C, H, W)
        assert_close(y1, y[1])
        assert_close(layer.backward(dy[1]), dx[1])
        y0 = layer(x[:0])                                    # N = 0
        assert y0.shape == (0,) + y.shape[1:]
        assert layer.backward(y0).shape == (0, 3, 7, 8)


def test_maxpool_return_indices_and_unpool_round_trip(rng):
    x = rng.standard_normal((2, 3, 8, 7))
    pool = nn.MaxPool2d(2, return_indices=True)
    y, ind = pool(x)
    np.testing.assert_array_equal(ind, F.max_pool2d(x, 2, return_indices=True)[1])
    up = nn.MaxUnpool2d(2)(y, ind, output_size=x.shape)
    assert up.shape == x.shape
    # every maximum is back in its cell, everything else is 0
    np.testing.assert_array_equal(up[up != 0], x[up != 0])
    assert (up != 0).sum() == y.size
    assert "return_indices=True" in repr(pool)


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("call, exc, words", [
    (lambda x: F.max_pool2d(x, 2, dilation=0), ValueError, ["dilation", ">= 1"]),
    (lambda x: F.max_pool2d(x, 3, 1, dilation=4), ValueError, ["larger than the padded"]),
    (lambda x: F.avg_pool2d(x, 2, divisor_override=0), ValueError, ["divisor_override"]),
    (lambda x: F.avg_pool2d(x, 2, divisor_override=1.5), ValueError, ["divisor_override"]),
    (lambda x: F.adaptive_avg_pool2d(x, 0), ValueError, ["output_size", ">= 1"]),
    (lambda x: F.adaptive_max_pool2d(x, (2, 2, 2)), TypeError, ["output_size"]),
    (lambda x: F.max_pool2d(x[0, 0], 2), ValueError, ["3-D (C, H, W) or 4-D"]),
    (lambda x: F.max_pool2d(x[:, :0], 2), ValueError, ["C, H, W >= 1"]),
    (lambda x: F.max_unpool2d(x, np.full(x.shape, 99), 2), ValueError, ["outside"]),
    (lambda x: F.max_unpool2d(x, np.zeros(x.shape), 2), TypeError, ["integers"]),
    (lambda x: F.max_unpool2d(x, np.zeros(x.shape, int), 2, output_size=(20, 20)), ValueError,
     ["within one stride"]),
    (lambda x: F.max_unpool2d_backward(x, np.full((2, 3, 2, 2), 99)), ValueError, ["outside"]),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_options_raise_clear_errors(call, exc, words, backend):
    x = np.ones((2, 3, 4, 4))
    with fastconv.use_backend(backend), pytest.raises(exc) as info:
        call(x)
    for word in words:
        assert word in str(info.value)


# --------------------------------------------------------------------------- PyTorch

@pytest.mark.parametrize("backend", BACKENDS)
def test_options_match_torch(backend, rng):
    torch = pytest.importorskip("torch")
    TF = torch.nn.functional
    worst = 0.0

    def check(ours, theirs):
        nonlocal worst
        theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
        assert ours.shape == theirs.shape
        worst = max(worst, float(np.abs(ours - theirs).max(initial=0)))
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)

    for case in MAX_CASES:
        kw, k = max_kw(case)
        x = rng.standard_normal(case[0])
        xt = torch.tensor(x, requires_grad=True)
        yt, it = TF.max_pool2d(xt, k, return_indices=True, **kw)
        dy = rng.standard_normal(yt.shape)
        yt.backward(torch.tensor(dy))
        y, ind = F.max_pool2d(x, k, return_indices=True, backend=backend, **kw)
        check(y, yt)
        np.testing.assert_array_equal(ind, it.numpy())
        check(F.max_pool2d_backward(dy, x, k, backend=backend, **kw), xt.grad)
    for shape, k, s, p in (((2, 3, 8, 7), 2, 2, 0), ((1, 4, 9, 9), 3, 2, 1)):
        x = rng.standard_normal(shape)
        yt, it = TF.max_pool2d(torch.tensor(x), k, s, p, return_indices=True)
        yv = torch.tensor(yt.numpy(), requires_grad=True)
        ut = TF.max_unpool2d(yv, it, k, s, p, output_size=shape[2:])
        dy = rng.standard_normal(ut.shape)
        ut.backward(torch.tensor(dy))
        check(F.max_unpool2d(yt.numpy(), it.numpy(), k, s, p, output_size=shape[2:],
                             backend=backend), ut)
        check(F.max_unpool2d_backward(dy, it.numpy(), backend=backend), yv.grad)
    for shape, k, s, p, c, cip, div in AVG_CASES:
        x = rng.standard_normal(shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = TF.avg_pool2d(xt, k, s, p, c, cip, div)
        dy = rng.standard_normal(yt.shape)
        yt.backward(torch.tensor(dy))
        kw = dict(ceil_mode=c, divisor_override=div)
        check(F.avg_pool2d(x, k, s, p, cip, backend=backend, **kw), yt)
        check(F.avg_pool2d_backward(dy, x, k, s, p, cip, backend=backend, **kw), xt.grad)
    for shape, out in ADAPTIVE:
        x = rng.standard_normal(shape)
        for ours, ours_bwd, theirs in (
                (F.adaptive_avg_pool2d, F.adaptive_avg_pool2d_backward, TF.adaptive_avg_pool2d),
                (F.adaptive_max_pool2d, F.adaptive_max_pool2d_backward, TF.adaptive_max_pool2d)):
            xt = torch.tensor(x, requires_grad=True)
            yt = theirs(xt, out)
            dy = rng.standard_normal(yt.shape)
            yt.backward(torch.tensor(dy))
            check(ours(x, out, backend=backend), yt)
            check(ours_bwd(dy, x, out, backend=backend), xt.grad)
    # unbatched and empty batches, as the layers
    x = rng.standard_normal((3, 7, 7))
    check(nn.MaxPool2d(3, 2, 1, ceil_mode=True)(x),
          torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)(torch.tensor(x)))
    assert (nn.AvgPool2d(2)(np.zeros((0, 2, 4, 4))).shape
            == tuple(torch.nn.AvgPool2d(2)(torch.zeros(0, 2, 4, 4)).shape))
    print(f"largest difference from PyTorch ({backend}): {worst:.3g}")


def test_summary_receptive_field_of_a_dilated_max_pool():
    """A 3-tap window with dilation 2 spans 5 input pixels (pool.out)."""
    s = fastconv.summary(nn.Sequential(nn.MaxPool2d(3, 1, dilation=2), nn.MaxPool2d(2)),
                         (1, 1, 16, 16))
    assert s.rows[0]["output_shape"] == (1, 1, 12, 12)
    assert s.rows[0]["rf"][0][0] == 5 and s.rows[1]["rf"][0][0] == 6
