"""Convolution options beyond stride and padding: dilation.

Same chain of trust as test_conv.py: the naive loops check both references on tiny dilated
shapes, the references check the fast kernels on a grid, finite differences check the
backward pass, and the fast kernels give the same bits on any thread count.
Formulas: (conv.out), (conv.fwd), (conv.bwd) with the dilation (dh, dw), docs/formulas.md.
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


def dilated_out_shape(x_shape, w_shape, stride, padding, dilation):
    (N, _, H, W), (K, _, R, S) = x_shape, w_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    return (N, K, (H + 2 * ph - dh * (R - 1) - 1) // sh + 1,
            (W + 2 * pw - dw * (S - 1) - 1) // sw + 1)


def make(rng, dtype, x_shape, w_shape, stride, padding, dilation):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    dy = rng.standard_normal(dilated_out_shape(x_shape, w_shape, stride, padding,
                                               dilation)).astype(dtype)
    return x, w, b, dy


def case_id(case):
    (N, C, H, W), (K, _, R, S), s, p, d = case
    return f"N{N}C{C}H{H}W{W}-K{K}R{R}S{S}-s{s[0]}{s[1]}-p{p[0]}{p[1]}-d{d[0]}{d[1]}"


# (x shape, w shape, stride, padding, dilation)
DILATED_TINY = [
    ((2, 2, 7, 6), (3, 2, 3, 2), (1, 1), (0, 0), (2, 3)),
    ((1, 2, 9, 8), (2, 2, 3, 3), (2, 1), (2, 1), (2, 2)),
    ((1, 1, 5, 5), (1, 1, 2, 2), (1, 1), (1, 1), (3, 3)),     # extent = padded input
]

DILATED_GRID = [
    ((2, 3, 11, 12), (4, 3, 3, 3), (1, 1), (2, 2), (2, 2)),     # 'same' for d = 2
    ((2, 3, 13, 11), (5, 3, 3, 3), (1, 1), (0, 0), (3, 3)),
    ((2, 4, 12, 15), (6, 4, 3, 2), (2, 2), (1, 1), (2, 3)),     # strided, R != S
    ((2, 2, 14, 13), (1, 2, 3, 3), (1, 1), (3, 3), (3, 3)),     # K = 1 (direct by default)
    ((1, 5, 16, 17), (3, 5, 3, 3), (1, 2), (2, 0), (2, 1)),     # K < 4: row updates
    ((3, 6, 10, 21), (9, 6, 3, 3), (1, 1), (2, 2), (2, 2)),     # register tiles, K % 4 != 0
    ((2, 16, 9, 10), (16, 16, 3, 3), (1, 1), (2, 2), (2, 2)),   # S*C = 48: channels-last
    ((2, 8, 11, 9), (20, 8, 3, 3), (2, 1), (1, 2), (1, 2)),     # dilation along one axis
    ((2, 16, 9, 12), (8, 16, 3, 3), (1, 1), (2, 2), (2, 1)),    # dilated rows, S*C runs
    ((2, 3, 12, 12), (4, 3, 5, 5), (1, 1), (0, 0), (2, 2)),
    ((2, 6, 6, 6), (4, 6, 2, 2), (1, 1), (0, 0), (5, 5)),       # P = Q = 1
    ((2, 6, 9, 8), (4, 6, 1, 1), (1, 1), (0, 0), (3, 2)),       # 1x1: dilation is moot
    ((17, 3, 8, 8), (5, 3, 3, 3), (2, 2), (1, 1), (2, 2)),      # several images per chunk
]


def check_fast_against_reference(x, w, b, dy, stride, padding, dilation, algo, dtype):
    N, K, P, Q = dy.shape
    _, C, R, S = w.shape
    y_ref = F.conv2d(x, w, b, stride, padding, dilation, algo="direct", backend="reference")
    y = F.conv2d(x, w, b, stride, padding, dilation, algo=algo, backend="fast")
    assert_close(y, y_ref, dtype, reduction=C * R * S, err_msg=f"y ({algo})")
    grads_ref = F.conv2d_backward(dy, x, w, stride, padding, dilation, algo="direct",
                                  backend="reference")
    grads = F.conv2d_backward(dy, x, w, stride, padding, dilation, algo=algo, backend="fast")
    for name, got, want, red in zip(("dx", "dw", "db"), grads, grads_ref,
                                    (K * R * S, N * P * Q, N * P * Q)):
        assert_close(got, want, dtype, reduction=red, err_msg=f"{name} ({algo})")


# --------------------------------------------------------------------------- dilation

@pytest.mark.parametrize("case", DILATED_TINY, ids=case_id)
def test_dilated_references_match_naive_loops(case, rng):
    x, w, b, dy = make(rng, np.float64, *case)
    stride, padding, dilation = case[2:]
    y_naive = naive_conv2d_forward(x, w, b, stride, padding, dilation)
    grads_naive = naive_conv2d_backward(dy, x, w, stride, padding, dilation)
    for ref in (ref_direct, ref_im2col):
        assert_close(ref.conv2d_forward(x, w, b, stride, padding, 1, dilation=dilation),
                     y_naive, err_msg=ref.__name__)
        for name, got, want in zip(("dx", "dw", "db"),
                                   ref.conv2d_backward(dy, x, w, stride, padding, 1,
                                                       dilation=dilation), grads_naive):
            assert_close(got, want, err_msg=f"{ref.__name__} {name}")


def test_naive_dilated_conv_on_a_hand_made_example():
    """A 2x2 kernel with dilation 2 reads the corners of each 3x3 patch."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y = naive_conv2d_forward(x, w, None, (1, 1), (0, 0), (2, 2))
    # y[p, q] = x[p, q] + 2 x[p, q+2] + 3 x[p+2, q] + 4 x[p+2, q+2]
    want = [[x[0, 0, p, q] + 2 * x[0, 0, p, q + 2] + 3 * x[0, 0, p + 2, q]
             + 4 * x[0, 0, p + 2, q + 2] for q in range(2)] for p in range(2)]
    np.testing.assert_array_equal(y[0, 0], want)
    np.testing.assert_array_equal(F.conv2d(x, w, dilation=2), y)


def test_dilated_output_size():
    """(conv.out): floor((H + 2p - d(R - 1) - 1) / s) + 1; a 3x3 kernel with dilation 2
    spans 5x5, so 'same' output needs padding 2."""
    assert F.conv_output_size(7, 3, 1, 0, 2) == 3
    assert F.conv_output_size(7, 3, 1, 2, 2) == 7
    assert F.conv_output_size(10, 3, 2, 1, 3) == 3
    assert F.conv_output_size(10, 3, 2, 1) == F.conv_output_size(10, 3, 2, 1, 1) == 5
    x = np.ones((1, 1, 9, 9))
    assert F.conv2d(x, np.ones((1, 1, 3, 3)), padding=2, dilation=2).shape == (1, 1, 9, 9)
    assert F.conv2d(x, np.ones((1, 1, 3, 3)), dilation=(4, 1)).shape == (1, 1, 1, 7)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", DILATED_GRID, ids=case_id)
def test_fast_dilated_matches_reference(case, algo, dtype, rng, n_threads):
    x, w, b, dy = make(rng, dtype, *case)
    check_fast_against_reference(x, w, b, dy, *case[2:], algo, dtype)


@pytest.mark.parametrize("case", DILATED_GRID, ids=case_id)
def test_fast_dilated_im2col_blas_path(case, rng):
    """float32 with the AVX-512 micro-kernel off (the path CPUs without it take)."""
    from fastconv._backend import load_kernels
    kern = load_kernels("conv_im2col")
    previous = kern._set_microkernel(False)
    try:
        x, w, b, dy = make(rng, np.float32, *case)
        check_fast_against_reference(x, w, b, dy, *case[2:], "im2col", np.float32)
    finally:
        kern._set_microkernel(previous)


def test_fast_dilated_random_shapes():
    rng = np.random.default_rng(7)
    for _ in range(40):
        R, S = rng.integers(1, 4, size=2)
        dh, dw = rng.integers(1, 4, size=2)
        sh, sw = rng.integers(1, 3, size=2)
        ph, pw = rng.integers(0, 4, size=2)
        H = int(rng.integers(max(1, dh * (R - 1) + 1 - 2 * ph), 14))
        W = int(rng.integers(max(1, dw * (S - 1) + 1 - 2 * pw), 14))
        N, C, K = rng.integers(1, 4), rng.integers(1, 6), rng.integers(1, 7)
        case = ((N, C, H, W), (K, C, R, S), (sh, sw), (ph, pw), (dh, dw))
        x, w, b, dy = make(rng, np.float64, *case)
        for algo in ALGOS:
            check_fast_against_reference(x, w, b, dy, *case[2:], algo, np.float64)


@pytest.mark.parametrize("backend,algo", [(be, a) for be in ("reference", "fast") for a in ALGOS])
def test_dilated_backward_matches_finite_differences(backend, algo, rng):
    stride, padding, dilation = (1, 2), (2, 1), (2, 3)
    x, w, b, g = make(rng, np.float64, (2, 2, 7, 8), (3, 2, 2, 2), stride, padding, dilation)

    def loss():
        return float(np.sum(F.conv2d(x, w, b, stride, padding, dilation, algo=algo,
                                     backend=backend) * g))

    dx, dw, db = F.conv2d_backward(g, x, w, stride, padding, dilation, algo=algo,
                                   backend=backend)
    assert_grad_matches(dx, loss, x, err_msg="dx")
    assert_grad_matches(dw, loss, w, err_msg="dw")
    assert_grad_matches(db, loss, b, err_msg="db")


DILATED_THREAD_CASES = [
    ((19, 5, 12, 11), (6, 5, 3, 3), (1, 1), (2, 2), (2, 2)),
    ((18, 16, 10, 10), (32, 16, 3, 3), (1, 1), (3, 3), (3, 3)),
    ((9, 4, 24, 26), (2, 4, 3, 2), (2, 1), (1, 0), (2, 3)),
]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", DILATED_THREAD_CASES, ids=case_id)
def test_fast_dilated_is_bitwise_thread_invariant(case, algo, dtype, rng):
    x, w, b, dy = make(rng, dtype, *case)
    results = []
    for n in (1, 2, 3):
        with fastconv.num_threads(n):
            results.append((F.conv2d(x, w, b, *case[2:], algo=algo, backend="fast"),)
                           + F.conv2d_backward(dy, x, w, *case[2:], algo=algo, backend="fast"))
    for name, one, two, three in zip(("y", "dx", "dw", "db"), *results):
        assert np.array_equal(one, two), f"{name} differs between 1 and 2 threads"
        assert np.array_equal(one, three), f"{name} differs between 1 and 3 threads"


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("where", ["x", "w", "dy"])
def test_dilated_nonfinite_values_as_reference(where, value, dtype, rng):
    """0 * NaN = NaN over the padding's zeros too, as without dilation (corner positions)."""
    for case in (((2, 3, 9, 8), (5, 3, 3, 3), (1, 1), (2, 2), (2, 2)),
                 ((2, 2, 9, 9), (2, 2, 2, 3), (2, 1), (2, 1), (3, 2))):
        x, w, b, dy = make(rng, dtype, *case)
        arrays = {"x": x, "w": w, "dy": dy}
        arrays[where][0, 0, 0, 0] = value
        arrays[where][-1, -1, -1, -1] = value
        want = (F.conv2d(x, w, b, *case[2:], backend="reference"),) + F.conv2d_backward(
            dy, x, w, *case[2:], backend="reference")
        for algo in ALGOS:
            got = (F.conv2d(x, w, b, *case[2:], algo=algo, backend="fast"),) + \
                F.conv2d_backward(dy, x, w, *case[2:], algo=algo, backend="fast")
            for name, g, wnt in zip(("y", "dx", "dw", "db"), got, want):
                np.testing.assert_array_equal(np.isnan(g), np.isnan(wnt), err_msg=f"{name} {algo}")
                np.testing.assert_array_equal(np.isinf(g), np.isinf(wnt), err_msg=f"{name} {algo}")


def test_dilation_errors():
    x, w = np.zeros((1, 2, 6, 6)), np.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError, match="dilation"):
        F.conv2d(x, w, dilation=0)
    with pytest.raises(TypeError, match="dilation"):
        F.conv2d(x, w, dilation=1.5)
    with pytest.raises(ValueError, match="dilation .* extent 7x7"):     # 2*(3-1)+1 > 6
        F.conv2d(x, w, dilation=3)
    with pytest.raises(ValueError, match="dilation"):
        nn.Conv2d(2, 3, 3, dilation=(1, -1))
    from fastconv._backend import load_kernels
    for name in ("conv_direct", "conv_im2col"):
        with pytest.raises(ValueError, match="dilation"):
            load_kernels(name).conv2d_forward(x, w, None, (1, 1), (0, 0), 1, dilation=(0, 1))


def test_conv2d_layer_with_dilation(rng):
    layer = nn.Conv2d(3, 4, 3, padding=2, dilation=2, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 3, 8, 9))
    y = layer(x)
    assert y.shape == (2, 4, 8, 9)
    assert_close(y, F.conv2d(x, layer.weight.data, layer.bias.data, 1, 2, 2, backend="reference"))
    dx = layer.backward(np.ones_like(y))
    want = F.conv2d_backward(np.ones_like(y), x, layer.weight.data, 1, 2, 2, backend="reference")
    assert_close(dx, want[0])
    assert_close(layer.weight.grad, want[1])
    assert "dilation=(2, 2)" in repr(layer)


def test_summary_receptive_field_counts_dilation():
    """Two 3x3 convs, the second with dilation 2: 3 + (5 - 1) = 7 pixels (r_out = r_in +
    (d(k - 1) + 1 - 1) j_in); undilated it would be 5."""
    from fastconv.summary import summary
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=2, dilation=2))
    s = summary(model, (1, 16, 16), print_fn=None)
    assert s.receptive_field == ((7, 1, 0.0), (7, 1, 0.0))
    assert s.output_shape == (1, 2, 16, 16)
    assert s.rows[1]["macs"] == 2 * 2 * 9 * 16 * 16
