"""Depthwise convolution (groups == C), eq. (conv.dw): naive loops -> reference -> the
conv_depthwise kernel; gradients, threads, NaN and Inf, guards, and PyTorch when installed.
"""
import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from fastconv._backend import load_kernels
from fastconv.reference import conv_depthwise as ref
from fastconv.reference.naive import naive_conv2d_backward, naive_conv2d_forward
from helpers import assert_close, assert_close_nonfinite, assert_grad_matches

fast = load_kernels("conv_depthwise")


def out_shape(x_shape, K, R, S, stride, padding, dilation):
    N, C, H, W = x_shape
    return (N, K, (H + 2 * padding[0] - dilation[0] * (R - 1) - 1) // stride[0] + 1,
            (W + 2 * padding[1] - dilation[1] * (S - 1) - 1) // stride[1] + 1)


def make_inputs(rng, dtype, case):
    x_shape, m, (R, S), stride, padding, dilation = case
    K = m * x_shape[1]
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((K, 1, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    dy = rng.standard_normal(out_shape(x_shape, K, R, S, stride, padding, dilation)).astype(dtype)
    return x, w, b, dy


# (x shape, multiplier m, (R, S), stride, padding, dilation)
TINY = [
    ((2, 3, 5, 4), 1, (3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 7, 6), 2, (3, 2), (2, 1), (1, 2), (1, 1)),
    ((2, 2, 8, 7), 3, (2, 3), (1, 2), (0, 1), (2, 3)),
]
GRID = [
    ((3, 4, 9, 8), 1, (3, 3), (1, 1), (1, 1), (1, 1)),
    ((2, 5, 11, 13), 1, (3, 3), (2, 2), (1, 1), (1, 1)),     # stride 2, odd sizes
    ((2, 3, 10, 9), 2, (3, 3), (1, 1), (1, 1), (1, 1)),      # multiplier 2
    ((2, 3, 7, 12), 3, (5, 3), (2, 1), (2, 0), (1, 1)),      # R != S, asymmetric
    ((1, 6, 12, 11), 1, (3, 3), (1, 1), (2, 2), (2, 2)),     # dilation
    ((2, 2, 9, 10), 2, (3, 2), (3, 2), (3, 1), (2, 3)),      # dilation, padding > kernel
    ((2, 7, 5, 6), 1, (1, 1), (1, 1), (0, 0), (1, 1)),       # 1x1
    ((2, 3, 4, 5), 1, (6, 7), (1, 1), (1, 1), (1, 1)),       # kernel = padded input
    ((1, 3, 1, 1), 1, (3, 3), (1, 1), (1, 1), (1, 1)),       # 1x1 image, padded
    ((19, 3, 6, 5), 2, (3, 3), (1, 1), (1, 1), (1, 1)),      # N > 16: several images per chunk
    ((2, 4, 6, 40), 1, (3, 3), (1, 2), (1, 1), (1, 1)),      # long rows
    # float32 runs blocks of 8 channels: full blocks, a last partial one, 7-wide rows
    ((2, 16, 7, 7), 1, (3, 3), (1, 1), (1, 1), (1, 1)),
    ((2, 11, 9, 10), 1, (3, 3), (2, 2), (1, 1), (1, 1)),
    ((2, 8, 6, 5), 2, (3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 9, 7, 7), 1, (3, 3), (1, 1), (2, 2), (2, 2)),      # dx as a correlation, dilated
    ((2, 8, 6, 7), 1, (3, 3), (1, 1), (3, 2), (1, 1)),      # ... padding > kernel
    ((2, 8, 3, 2), 1, (3, 3), (1, 1), (1, 1), (1, 1)),      # rows shorter than a transpose
    ((2, 8, 8, 9), 1, (5, 4), (1, 1), (2, 1), (1, 1)),      # > 9 taps, R != S
]


def case_id(case):
    (N, C, H, W), m, (R, S), s, p, d = case
    return f"N{N}C{C}H{H}W{W}-m{m}-R{R}S{S}-s{s[0]}{s[1]}-p{p[0]}{p[1]}-d{d[0]}{d[1]}"


def _args(case):
    return case[3], case[4], case[5]


@pytest.mark.parametrize("case", TINY, ids=case_id)
def test_reference_matches_naive_loops(case, rng):
    x, w, b, dy = make_inputs(rng, np.float64, case)
    stride, padding, dilation = _args(case)
    C = x.shape[1]
    assert_close(ref.conv2d_forward(x, w, b, stride, padding, dilation),
                 naive_conv2d_forward(x, w, b, stride, padding, dilation, C))
    for got, want in zip(ref.conv2d_backward(dy, x, w, stride, padding, dilation),
                         naive_conv2d_backward(dy, x, w, stride, padding, dilation, C)):
        assert_close(got, want)


@pytest.mark.parametrize("case", GRID + TINY, ids=case_id)
def test_fast_matches_reference(case, dtype, rng, n_threads):
    x, w, b, dy = make_inputs(rng, dtype, case)
    stride, padding, dilation = _args(case)
    N, K, P, Q = dy.shape
    R, S = case[2]
    m = case[1]
    for bias in (b, None):
        assert_close(fast.conv2d_forward(x, w, bias, stride, padding, dilation, n_threads),
                     ref.conv2d_forward(x, w, bias, stride, padding, dilation), dtype,
                     reduction=R * S)
    got = fast.conv2d_backward(dy, x, w, stride, padding, dilation, n_threads)
    want = ref.conv2d_backward(dy, x, w, stride, padding, dilation)
    for name, g, r, red in zip(("dx", "dw", "db"), got, want, (m * R * S, N * P * Q, N * P * Q)):
        assert_close(g, r, dtype, reduction=red, err_msg=name)
    none, dw, db = fast.conv2d_backward(dy, x, w, stride, padding, dilation, n_threads, False)
    assert none is None and np.array_equal(dw, got[1]) and np.array_equal(db, got[2])


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_conv2d_with_groups_equal_to_channels_runs_the_depthwise_kernel(backend, rng):
    """algo="auto" picks "depthwise" when groups == C, in both backends, and the result is
    the kernel's own, bit for bit; the dense algorithms agree when forced."""
    case = GRID[2]
    x, w, b, dy = make_inputs(rng, np.float32, case)
    stride, padding, _ = _args(case)
    C = x.shape[1]
    assert F.choose_conv_algo(x.shape, w.shape, stride, padding, backend, groups=C) == "depthwise"
    assert F.choose_conv_algo(x.shape, w.shape, stride, padding, backend, groups=1) != "depthwise"
    impl = fast if backend == "fast" else ref
    y = F.conv2d(x, w, b, stride, padding, groups=C, backend=backend)
    assert np.array_equal(y, impl.conv2d_forward(x, w, b, stride, padding, (1, 1), 1))
    grads = F.conv2d_backward(dy, x, w, stride, padding, groups=C, backend=backend)
    for got, want in zip(grads, impl.conv2d_backward(dy, x, w, stride, padding, (1, 1), 1)):
        assert np.array_equal(got, want)
    for algo in ("direct", "im2col"):
        assert_close(F.conv2d(x, w, b, stride, padding, groups=C, algo=algo, backend=backend), y,
                     reduction=9)


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("case", [GRID[3], TINY[2]], ids=case_id)
def test_backward_matches_finite_differences(case, backend, rng):
    """(conv.dw) against central differences of L = sum(y * g), float64."""
    x, w, b, g = make_inputs(rng, np.float64, case)
    stride, padding, dilation = _args(case)
    impl = fast if backend == "fast" else ref

    def loss():
        return float(np.sum(impl.conv2d_forward(x, w, b, stride, padding, dilation, 2) * g))

    dx, dw, db = impl.conv2d_backward(g, x, w, stride, padding, dilation, 2)
    assert_grad_matches(dx, loss, x, err_msg="dx")
    assert_grad_matches(dw, loss, w, err_msg="dw")
    assert_grad_matches(db, loss, b, err_msg="db")


def test_public_api_gradients_match_finite_differences(rng):
    x, w, b, g = make_inputs(rng, np.float64, GRID[2])
    C = x.shape[1]

    def loss():
        return float(np.sum(F.conv2d(x, w, b, 1, 1, groups=C) * g))

    dx, dw, db = F.conv2d_backward(g, x, w, 1, 1, groups=C)
    for analytic, wrt in ((dx, x), (dw, w), (db, b)):
        assert_grad_matches(analytic, loss, wrt)


# Each above the kernel's grain (1048576 multiply-adds), so several threads really run.
THREAD_CASES = [
    ((42, 16, 14, 14), 1, (3, 3), (1, 1), (1, 1), (1, 1)),
    ((108, 8, 17, 15), 2, (3, 3), (2, 2), (1, 1), (1, 1)),
    ((6, 32, 20, 20), 1, (5, 5), (1, 1), (2, 2), (2, 2)),
]


@pytest.mark.parametrize("case", THREAD_CASES, ids=case_id)
def test_fast_is_bitwise_thread_invariant(case, dtype, rng):
    x, w, b, dy = make_inputs(rng, dtype, case)
    args = _args(case)
    results = [(fast.conv2d_forward(x, w, b, *args, n),) + fast.conv2d_backward(dy, x, w, *args, n)
               for n in (1, 2, 3, 2)]
    for name, *versions in zip(("y", "dx", "dw", "db"), *results):
        for other in versions[1:]:
            assert np.array_equal(versions[0], other), name


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["x", "w", "dy"])
@pytest.mark.parametrize("case", [GRID[0], GRID[3], GRID[5]], ids=case_id)
def test_nonfinite_values_propagate_as_in_the_formula(case, where, value, dtype, rng):
    """0 * NaN = NaN, padding included: a NaN in w reaches every output whose window holds
    that tap, even over the padding; one in dy reaches dw through the padding's zeros."""
    x, w, b, dy = make_inputs(rng, dtype, case)
    args = _args(case)
    target = {"x": x, "w": w, "dy": dy}[where]
    target.reshape(-1)[[0, target.size // 2]] = value
    assert_close_nonfinite(fast.conv2d_forward(x, w, b, *args, 2),
                           ref.conv2d_forward(x, w, b, *args), dtype, reduction=50)
    for name, got, want in zip(("dx", "dw", "db"), fast.conv2d_backward(dy, x, w, *args, 2),
                               ref.conv2d_backward(dy, x, w, *args)):
        assert_close_nonfinite(got, want, dtype, reduction=dy.size, err_msg=name,
                               same_kind=False)


def test_kernel_called_directly_rejects_inconsistent_shapes():
    x = np.zeros((2, 3, 5, 5))
    w = np.zeros((6, 1, 3, 3))
    bad = [
        lambda: fast.conv2d_forward(x, np.zeros((6, 3, 3, 3)), None, (1, 1), (0, 0), (1, 1), 1),
        lambda: fast.conv2d_forward(x, np.zeros((4, 1, 3, 3)), None, (1, 1), (0, 0), (1, 1), 1),
        lambda: fast.conv2d_forward(x, w, np.zeros(3), (1, 1), (0, 0), (1, 1), 1),
        lambda: fast.conv2d_forward(x, w, None, (0, 1), (0, 0), (1, 1), 1),
        lambda: fast.conv2d_forward(x, w, None, (1, 1), (0, 0), (3, 1), 1),   # dilated too big
        lambda: fast.conv2d_backward(np.zeros((2, 6, 3, 4)), x, w, (1, 1), (0, 0), (1, 1), 1),
    ]
    for call in bad:
        with pytest.raises(ValueError):
            call()


@pytest.mark.usefixtures("layer_test_backend")
def test_depthwise_layer_trains_against_reference(rng):
    layer = fastconv.nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=4, dtype=np.float64, rng=rng)
    x = rng.standard_normal((3, 4, 9, 9))
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    want = ref.conv2d_backward(dy, x, layer.weight.data, (2, 2), (1, 1), (1, 1))
    assert_close(y, ref.conv2d_forward(x, layer.weight.data, layer.bias.data, (2, 2), (1, 1), (1, 1)))
    for got, w_ in zip((dx, layer.weight.grad, layer.bias.grad), want):
        assert_close(got, w_)


def test_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    worst = 0.0
    for case in GRID + TINY + THREAD_CASES:
        x, w, b, dy = make_inputs(rng, np.float64, case)
        stride, padding, dilation = _args(case)
        C = x.shape[1]
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        yt = torch.nn.functional.conv2d(xt, wt, bt, stride, padding, dilation, C)
        yt.backward(torch.tensor(dy))
        got = (fast.conv2d_forward(x, w, b, stride, padding, dilation, 2),
               *fast.conv2d_backward(dy, x, w, stride, padding, dilation, 2))
        for g, t in zip(got, (yt, xt.grad, wt.grad, bt.grad)):
            t = t.detach().numpy()
            assert_close(g, t, err_msg=case_id(case))
            worst = max(worst, float(np.max(np.abs(g - t))))
    print(f"largest |fastconv - torch| (float64): {worst:.3g}")


@pytest.mark.parametrize("case", GRID + TINY, ids=case_id)
def test_teaching_loop_nest_gives_the_same_bits(case, dtype, rng):
    """The forward's register tiles (include/fc_depthwise.h) add the same terms in the same
    order as the loop nest _forward_plane: the same bits, in float32 and float64."""
    x, w, b, dy = make_inputs(rng, dtype, case)
    args = _args(case)
    tiled = fast.conv2d_forward(x, w, b, *args, 2)
    previous = fast._set_tuned(False)
    try:
        nest = fast.conv2d_forward(x, w, b, *args, 2)
    finally:
        fast._set_tuned(previous)
    assert previous is True
    assert np.array_equal(tiled, nest)


@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_channel_block_isa_copies_give_the_same_bits(case, rng):
    """float32 runs fc_dwi_* (include/fc_depthwise.h): the SSE2 and AVX2 copies add the same
    terms in the same order, so the same bits, forward and backward."""
    x, w, b, dy = make_inputs(rng, np.float32, case)
    args = _args(case)
    previous = fast._kernel_isa()
    results = {}
    try:
        for isa in ("baseline", "avx2"):
            fast._kernel_isa(isa)
            results[isa] = ((fast.conv2d_forward(x, w, b, *args, 2),)
                            + fast.conv2d_backward(dy, x, w, *args, 2))
    finally:
        fast._kernel_isa(previous)
    for name, a, c in zip(("y", "dx", "dw", "db"), results["baseline"], results["avx2"]):
        assert np.array_equal(a, c), name


@pytest.mark.parametrize("case", [GRID[0], GRID[11], GRID[14]], ids=case_id)
def test_channel_blocks_backward_matches_the_teaching_loops(case, rng):
    """The float32 backward on channel blocks against _backward_task's loops (_set_tuned(False))
    with a non-finite weight too, where dx leaves the correlation for the scatter: NaN and Inf
    reach exactly the dx values the formula gives them."""
    x, w, b, dy = make_inputs(rng, np.float32, case)
    args = _args(case)
    for w_ in (w, np.where(np.arange(w.size).reshape(w.shape) == 0, np.nan, w)):
        blocks = fast.conv2d_backward(dy, x, w_, *args, 2)
        previous = fast._set_tuned(False)
        try:
            loops = fast.conv2d_backward(dy, x, w_, *args, 2)
        finally:
            fast._set_tuned(previous)
        for name, got, want in zip(("dx", "dw", "db"), blocks, loops):
            assert_close_nonfinite(got, want, np.float32, reduction=dy.size, err_msg=name)
