"""Grouped convolution (conv.groups): naive loops -> references -> fast kernels, gradients,
errors, the layer and its summary. The depthwise kernel has its own file
(test_conv_depthwise.py).
"""
import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from fastconv import nn
from fastconv.reference import conv_direct as ref_direct
from fastconv.reference import conv_im2col as ref_im2col
from fastconv.reference.naive import naive_conv2d_backward, naive_conv2d_forward
from helpers import assert_close, assert_grad_matches

ALGOS = ["direct", "im2col"]


def make_inputs(rng, dtype, x_shape, w_shape, stride, padding, groups):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    y = F.conv2d(x, w, None, stride, padding, groups=groups, backend="reference")
    dy = rng.standard_normal(y.shape).astype(dtype)
    return x, w, b, dy


# (x shape, w shape (K, C/G, R, S), stride, padding, groups)
TINY = [
    ((2, 4, 5, 4), (2, 2, 3, 2), (1, 1), (0, 0), 2),
    ((1, 6, 6, 7), (9, 2, 3, 3), (2, 3), (1, 2), 3),
    ((2, 3, 4, 4), (6, 1, 3, 3), (1, 1), (1, 1), 3),       # depthwise, multiplier 2
]
GRID = [
    ((3, 4, 9, 8), (6, 2, 3, 3), (1, 1), (1, 1), 2),
    ((2, 6, 11, 10), (6, 2, 3, 5), (2, 2), (1, 2), 3),
    ((2, 8, 7, 9), (4, 2, 1, 1), (1, 1), (0, 0), 4),       # 1x1, one output channel per group
    ((2, 8, 7, 9), (8, 2, 1, 1), (2, 1), (0, 0), 4),       # 1x1 strided
    ((17, 6, 6, 5), (12, 3, 3, 3), (1, 1), (1, 1), 2),     # N > 16: several images per dW chunk
    ((2, 12, 12, 11), (24, 3, 3, 3), (2, 2), (1, 1), 4),
    ((2, 4, 5, 6), (4, 1, 3, 3), (1, 1), (1, 1), 4),       # depthwise (forced dense algos)
]


def case_id(case):
    (N, C, H, W), (K, Cg, R, S), s, p, g = case
    return f"N{N}C{C}H{H}W{W}-K{K}R{R}S{S}-s{s[0]}{s[1]}-p{p[0]}{p[1]}-g{g}"


@pytest.mark.parametrize("case", TINY, ids=case_id)
def test_references_match_naive_loops(case, rng):
    x, w, b, dy = make_inputs(rng, np.float64, *case)
    stride, padding, groups = case[2:]
    y_naive = naive_conv2d_forward(x, w, b, stride, padding, groups=groups)
    grads_naive = naive_conv2d_backward(dy, x, w, stride, padding, groups=groups)
    for ref in (ref_direct, ref_im2col):
        assert_close(ref.conv2d_forward(x, w, b, stride, padding, 1, groups=groups), y_naive)
        for got, want in zip(ref.conv2d_backward(dy, x, w, stride, padding, 1, groups=groups),
                             grads_naive):
            assert_close(got, want)


def test_one_group_per_slice_is_the_definition(rng):
    """A grouped conv equals G separate convs on the channel slices, concatenated."""
    x, w, b, dy = make_inputs(rng, np.float64, *GRID[1])
    stride, padding, G = GRID[1][2:]
    y = F.conv2d(x, w, b, stride, padding, groups=G, backend="reference")
    Cg, Kg = x.shape[1] // G, w.shape[0] // G
    parts = [F.conv2d(x[:, g * Cg:(g + 1) * Cg], w[g * Kg:(g + 1) * Kg], b[g * Kg:(g + 1) * Kg],
                      stride, padding, backend="reference") for g in range(G)]
    assert_close(y, np.concatenate(parts, axis=1))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_fast_matches_reference(case, algo, dtype, rng, n_threads):
    x, w, b, dy = make_inputs(rng, dtype, *case)
    stride, padding, groups = case[2:]
    N, K, P, Q = dy.shape
    _, Cg, R, S = w.shape
    y_ref = F.conv2d(x, w, b, stride, padding, groups=groups, algo="direct", backend="reference")
    y = F.conv2d(x, w, b, stride, padding, groups=groups, algo=algo, backend="fast")
    assert_close(y, y_ref, dtype, reduction=Cg * R * S)
    want = F.conv2d_backward(dy, x, w, stride, padding, groups=groups, algo="direct",
                             backend="reference")
    got = F.conv2d_backward(dy, x, w, stride, padding, groups=groups, algo=algo, backend="fast")
    for name, g, r, red in zip(("dx", "dw", "db"), got, want, (K * R * S, N * P * Q, N * P * Q)):
        assert_close(g, r, dtype, reduction=red, err_msg=name)
    dx, dw, db = F.conv2d_backward(dy, x, w, stride, padding, groups=groups, algo=algo,
                                   backend="fast", need_dx=False)
    assert dx is None
    assert np.array_equal(dw, got[1]) and np.array_equal(db, got[2])


@pytest.mark.parametrize("backend,algo", [("reference", "direct"), ("reference", "im2col"),
                                          ("fast", "direct"), ("fast", "im2col")])
def test_backward_matches_finite_differences(backend, algo, rng):
    stride, padding, groups = (2, 1), (1, 1), 2
    x, w, b, g = make_inputs(rng, np.float64, (2, 4, 5, 4), (4, 2, 3, 2), stride, padding, groups)

    def loss():
        return float(np.sum(F.conv2d(x, w, b, stride, padding, groups=groups, algo=algo,
                                     backend=backend) * g))

    dx, dw, db = F.conv2d_backward(g, x, w, stride, padding, groups=groups, algo=algo,
                                   backend=backend)
    assert_grad_matches(dx, loss, x, err_msg="dx")
    assert_grad_matches(dw, loss, w, err_msg="dw")
    assert_grad_matches(db, loss, b, err_msg="db")


@pytest.mark.parametrize("algo", ALGOS)
def test_fast_grouped_is_bitwise_thread_invariant(algo, dtype, rng):
    # each group above the kernels' grain (1048576 multiply-adds): two threads really run
    x, w, b, dy = make_inputs(rng, dtype, (57, 8, 10, 10), (12, 4, 3, 3), (1, 1), (1, 1), 2)
    results = []
    for n in (1, 2, 3):
        with fastconv.num_threads(n):
            results.append((F.conv2d(x, w, b, 1, 1, groups=2, algo=algo, backend="fast"),)
                           + F.conv2d_backward(dy, x, w, 1, 1, groups=2, algo=algo, backend="fast"))
    for name, one, two, three in zip(("y", "dx", "dw", "db"), *results):
        assert np.array_equal(one, two) and np.array_equal(one, three), name


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("op", ["conv2d", "conv2d_backward"])
def test_bad_groups_raise_clear_errors(op):
    x = np.zeros((2, 6, 5, 5), np.float32)

    def call(w, groups):
        if op == "conv2d":
            return F.conv2d(x, w, groups=groups)
        return F.conv2d_backward(np.zeros((2, w.shape[0], 3, 3), np.float32), x, w, groups=groups)

    cases = [
        (np.zeros((4, 2, 3, 3), np.float32), 4, ValueError, ["groups=4", "6"]),      # C % G
        (np.zeros((4, 2, 3, 3), np.float32), 3, ValueError, ["groups=3", "4"]),      # K % G
        (np.zeros((6, 3, 3, 3), np.float32), 3, ValueError, ["C / groups", "2"]),    # w's C
        (np.zeros((6, 6, 3, 3), np.float32), 0, ValueError, ["groups", ">= 1"]),
        (np.zeros((6, 6, 3, 3), np.float32), 2.0, TypeError, ["groups", "int"]),
        (np.zeros((6, 6, 3, 3), np.float32), True, TypeError, ["groups"]),
    ]
    for w, groups, exc, words in cases:
        with pytest.raises(exc) as info:
            call(w, groups)
        for word in words + [op]:
            assert word in str(info.value), (groups, str(info.value))


def test_layer_rejects_groups_not_dividing_channels():
    with pytest.raises(ValueError, match="groups=4 must divide in_channels"):
        nn.Conv2d(6, 8, 3, groups=4)
    with pytest.raises(ValueError, match="groups=2 must divide"):
        nn.Conv2d(4, 3, 3, groups=2)


# --------------------------------------------------------------------------- layer, summary

@pytest.mark.usefixtures("layer_test_backend")
def test_layer_weight_shape_init_and_gradients(rng):
    layer = nn.Conv2d(6, 9, 3, padding=1, groups=3, dtype=np.float64, rng=rng)
    assert layer.weight.shape == (9, 2, 3, 3)
    bound = 1 / np.sqrt(2 * 3 * 3)                       # fan-in C/G * R * S
    assert np.abs(layer.weight.data).max() <= bound
    assert "groups=3" in repr(layer)
    x = rng.standard_normal((2, 6, 5, 5))
    y = layer(x)
    assert_close(y, F.conv2d(x, layer.weight.data, layer.bias.data, 1, 1, groups=3,
                             backend="reference"))
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    want = F.conv2d_backward(dy, x, layer.weight.data, 1, 1, groups=3, backend="reference")
    assert_close(dx, want[0])
    assert_close(layer.weight.grad, want[1])
    assert_close(layer.bias.grad, want[2])


@pytest.mark.usefixtures("layer_test_backend")
def test_summary_counts_grouped_parameters_and_macs():
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=4), nn.Conv2d(16, 16, 3, groups=16))
    s = fastconv.summary(model, (8, 10, 10), print_fn=None)
    assert [r["params"] for r in s.rows] == [16 * 2 * 9 + 16, 16 * 1 * 9 + 16]
    assert [r["macs"] for r in s.rows] == [16 * 2 * 9 * 10 * 10, 16 * 1 * 9 * 8 * 8]


# --------------------------------------------------------------------------- PyTorch

def test_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    for case in GRID + TINY:
        x, w, b, dy = make_inputs(rng, np.float64, *case)
        stride, padding, groups = case[2:]
        xt = torch.tensor(x, requires_grad=True)
        wt = torch.tensor(w, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        yt = torch.nn.functional.conv2d(xt, wt, bt, stride, padding, 1, groups)
        yt.backward(torch.tensor(dy))
        y = F.conv2d(x, w, b, stride, padding, groups=groups, backend="fast")
        assert_close(y, yt.detach().numpy(), err_msg=case_id(case))
        for got, t in zip(F.conv2d_backward(dy, x, w, stride, padding, groups=groups,
                                            backend="fast"), (xt, wt, bt)):
            assert_close(got, t.grad.numpy(), err_msg=case_id(case))
