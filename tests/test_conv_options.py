"""Convolution options beyond stride and padding: dilation, padding="same" / "valid",
padding modes (F.pad), unbatched (C, H, W) input and an empty batch.

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
from test_conv import check_against_reference

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
    check_against_reference(x, w, b, dy, stride, padding, algo, dtype, dilation)


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


# Each above the kernels' grain (1048576 multiply-adds), so two threads really run.
DILATED_THREAD_CASES = [
    ((38, 5, 12, 11), (6, 5, 3, 3), (1, 1), (2, 2), (2, 2)),
    ((18, 16, 10, 10), (32, 16, 3, 3), (1, 1), (3, 3), (3, 3)),
    ((90, 4, 24, 26), (2, 4, 3, 2), (2, 1), (1, 0), (2, 3)),
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
    for padding in (2, "same"):
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1),
                              nn.Conv2d(2, 2, 3, padding=padding, dilation=2))
        s = summary(model, (1, 16, 16), print_fn=None)
        assert s.receptive_field == ((7, 1, 0.0), (7, 1, 0.0))
        assert s.output_shape == (1, 2, 16, 16)
        assert s.rows[1]["macs"] == 2 * 2 * 9 * 16 * 16
    # an even kernel with "same": one pixel more padding at the bottom / right, the first
    # window's centre half a pixel in: start = (4 - 1) / 2 - 1 = 0.5
    s = summary(nn.Conv2d(1, 1, 4, padding="same"), (1, 8, 8), print_fn=None)
    assert s.receptive_field == ((4, 1, 0.5), (4, 1, 0.5))


# --------------------------------------------------------------------------- "same" / "valid"

SAME_CASES = [  # (x shape, w shape, dilation): odd and even kernels, with and without dilation
    ((2, 3, 9, 10), (4, 3, 3, 3), (1, 1)),
    ((2, 3, 9, 10), (4, 3, 4, 2), (1, 1)),      # even kernels: one more zero bottom / right
    ((2, 3, 9, 10), (4, 3, 4, 3), (1, 3)),      # d*(k-1) = 3 rows, 6 columns
    ((1, 5, 7, 8), (6, 5, 2, 5), (3, 2)),
    ((2, 2, 6, 7), (1, 2, 2, 2), (1, 1)),       # K = 1
]


@pytest.mark.parametrize("case", SAME_CASES, ids=str)
@pytest.mark.parametrize("backend,algo", [("reference", "im2col"), ("fast", "direct"),
                                          ("fast", "im2col")])
def test_padding_same_keeps_the_size_and_pads_as_pytorch(case, backend, algo, rng):
    """"same": d*(k - 1) zeros in all, total // 2 at the top / left and the rest at the
    bottom / right; the same as padding x explicitly and convolving without padding."""
    x_shape, w_shape, dilation = case
    x = rng.standard_normal(x_shape)
    w, b = rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    y = F.conv2d(x, w, b, padding="same", dilation=dilation, algo=algo, backend=backend)
    assert y.shape == (x_shape[0], w_shape[0]) + x_shape[2:]
    th, tw = (d * (k - 1) for d, k in zip(dilation, w_shape[2:]))
    xp = np.pad(x, ((0, 0), (0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2)))
    assert_close(y, naive_conv2d_forward(xp, w, b, (1, 1), (0, 0), dilation))
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(dy, x, w, padding="same", dilation=dilation, algo=algo,
                                   backend=backend)
    dxp, dw_want, db_want = naive_conv2d_backward(dy, xp, w, (1, 1), (0, 0), dilation)
    H, W = x_shape[2:]
    assert_close(dx, dxp[:, :, th // 2:th // 2 + H, tw // 2:tw // 2 + W])
    assert_close(dw, dw_want)
    assert_close(db, db_want)


@pytest.mark.parametrize("algo", ALGOS)
def test_padding_same_asymmetric_gradients(algo, rng):
    x, w, b = rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((3, 2, 2, 3)), None
    g = rng.standard_normal((2, 3, 5, 6))

    def loss():
        return float(np.sum(F.conv2d(x, w, b, padding="same", dilation=(1, 2), algo=algo,
                                     backend="fast") * g))

    dx, dw, _ = F.conv2d_backward(g, x, w, padding="same", dilation=(1, 2), algo=algo,
                                  backend="fast")
    assert_grad_matches(dx, loss, x, err_msg="dx")
    assert_grad_matches(dw, loss, w, err_msg="dw")


def test_padding_valid_is_no_padding(rng):
    x, w = rng.standard_normal((2, 3, 8, 7)), rng.standard_normal((4, 3, 3, 2))
    np.testing.assert_array_equal(F.conv2d(x, w, padding="valid"), F.conv2d(x, w, padding=0))
    assert F.conv2d(x, w, padding="valid", dilation=2).shape == (2, 4, 4, 5)
    layer = nn.Conv2d(3, 4, (3, 2), padding="valid")
    assert layer(x.astype(np.float32)).shape == (2, 4, 6, 6)
    assert layer.padding == "valid" and "padding='valid'" in repr(layer)


def test_padding_strings_errors():
    x, w = np.zeros((1, 2, 6, 6)), np.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        F.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        F.conv2d_backward(np.zeros((1, 3, 6, 6)), x, w, stride=(1, 2), padding="same")
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        nn.Conv2d(2, 3, 3, stride=2, padding="same")
    for bad in ("SAME", "full", ""):
        with pytest.raises(ValueError, match="'same' or 'valid'"):
            F.conv2d(x, w, padding=bad)
        with pytest.raises(ValueError, match="'same' or 'valid'"):
            nn.Conv2d(2, 3, 3, padding=bad)
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(2, 3, 3, padding_mode="mirror")


# --------------------------------------------------------------------------- F.pad

def test_pad_modes_on_a_hand_made_row():
    """[a b c d] padded by (2, 1) in each mode (the examples of F.pad's docstring)."""
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    want = {"constant": [0, 0, 1, 2, 3, 4, 0], "reflect": [3, 2, 1, 2, 3, 4, 3],
            "replicate": [1, 1, 1, 2, 3, 4, 4], "circular": [3, 4, 1, 2, 3, 4, 1]}
    for mode, row in want.items():
        np.testing.assert_array_equal(F.pad(x, (2, 1), mode)[0], row, err_msg=mode)
    np.testing.assert_array_equal(F.pad(x, (1, 0), value=-1.5)[0], [-1.5, 1, 2, 3, 4])


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_pad_matches_numpy_and_its_backward_is_the_adjoint(mode, rng):
    """pad_backward is pad's adjoint: <pad(x), g> == <x, pad_backward(g)> for every x, g
    (pad is linear), checked on random arrays, and against finite differences."""
    x = rng.standard_normal((2, 3, 5, 4))
    p = (3, 1, 0, 4) if mode != "reflect" else (3, 1, 0, 4)[:2] + (0, 4)
    np_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
               "circular": "wrap"}[mode]
    y = F.pad(x, p, mode)
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (0, 0), (0, 4), (3, 1)), mode=np_mode))
    g = rng.standard_normal(y.shape)
    dx = F.pad_backward(g, p, mode)
    assert dx.shape == x.shape
    assert np.isclose(np.sum(y * g), np.sum(x * dx), rtol=1e-12)
    assert_grad_matches(dx, lambda: float(np.sum(F.pad(x, p, mode) * g)), x)
    x32 = x.astype(np.float32)
    assert F.pad(x32, p, mode).dtype == F.pad_backward(g.astype(np.float32), p, mode).dtype \
        == np.float32


def test_pad_errors():
    x = np.zeros((1, 2, 3, 4))
    with pytest.raises(ValueError, match="reflect padding .* smaller"):
        F.pad(x, (1, 1, 3, 0), "reflect")               # 3 rows: at most 2
    with pytest.raises(ValueError, match="circular padding .* must not exceed"):
        F.pad(x, (5, 0), "circular")
    with pytest.raises(ValueError, match="pad must be >= 0"):
        F.pad(x, (-1, 0))
    with pytest.raises(TypeError, match="pad must be"):
        F.pad(x, (1, 1, 1))
    with pytest.raises(ValueError, match="mode"):
        F.pad(x, (1, 1), "wrap")
    with pytest.raises(ValueError, match="too few axes"):
        F.pad(np.zeros((3, 4)), (1, 1, 1, 1), "reflect")
    with pytest.raises(ValueError, match="smaller than pad"):
        F.pad_backward(np.zeros((1, 1, 2, 2)), (1, 1, 1, 1), "replicate")


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv2d_layer_padding_modes(mode, rng):
    """Conv2d pads with F.pad then convolves without padding (PyTorch's method); float64
    gradients against finite differences, on an even kernel with "same" and dilation."""
    layer = nn.Conv2d(2, 3, (2, 3), padding="same", dilation=(2, 1), padding_mode=mode,
                      dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 2, 5, 6))
    y = layer(x)
    assert y.shape == (2, 3, 5, 6)
    f_mode = "constant" if mode == "zeros" else mode
    xp = F.pad(x, (1, 1, 1, 1), f_mode)                 # d*(k-1) = 2 rows, 2 columns
    assert_close(y, F.conv2d(xp, layer.weight.data, layer.bias.data, dilation=(2, 1)))
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    assert_grad_matches(dx, lambda: float(np.sum(layer(x) * g)), x, err_msg="dx")
    if mode != "zeros":
        assert f"padding_mode='{mode}'" in repr(layer)


# --------------------------------------------------------------------------- unbatched, N = 0

@pytest.mark.parametrize("algo", ALGOS)
def test_unbatched_input(algo, rng):
    x, w, b = rng.standard_normal((3, 8, 7)), rng.standard_normal((4, 3, 3, 3)), None
    y = F.conv2d(x, w, b, 2, 1, algo=algo)
    np.testing.assert_array_equal(y, F.conv2d(x[None], w, b, 2, 1, algo=algo)[0])
    dy = rng.standard_normal(y.shape)
    grads = F.conv2d_backward(dy, x, w, 2, 1, algo=algo)
    want = F.conv2d_backward(dy[None], x[None], w, 2, 1, algo=algo)
    assert grads[0].shape == x.shape
    for got, exp in zip(grads, (want[0][0],) + want[1:]):
        np.testing.assert_array_equal(got, exp)
    with pytest.raises(ValueError, match=r"dy must have the output's shape \(4, 4, 4\)"):
        F.conv2d_backward(dy[None], x, w, 2, 1, algo=algo)
    with pytest.raises(ValueError, match=r"3-D \(C, H, W\) or 4-D"):
        F.conv2d(x[0], w)
    layer = nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect", dtype=np.float64, rng=rng)
    y = layer(x)
    assert y.shape == (4, 8, 7)
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape
    y_batched = layer(x[None])
    np.testing.assert_array_equal(y, y_batched[0])
    np.testing.assert_array_equal(dx, layer.backward(np.ones_like(y_batched))[0])


def test_empty_batch(rng):
    """N = 0: an empty output; backward an empty dx and zero dw, db (nothing to sum), as
    PyTorch."""
    x, w, b = np.zeros((0, 3, 8, 7), np.float32), rng.standard_normal((4, 3, 3, 3)).astype(
        np.float32), np.ones(4, np.float32)
    for backend in ("reference", "fast"):
        y = F.conv2d(x, w, b, padding="same", dilation=2, backend=backend)
        assert y.shape == (0, 4, 8, 7) and y.dtype == np.float32
        dx, dw, db = F.conv2d_backward(y, x, w, padding="same", dilation=2, backend=backend)
        assert dx.shape == x.shape and dx.dtype == np.float32
        assert not dw.any() and dw.shape == w.shape and not db.any() and db.shape == (4,)
        assert F.conv2d_backward(y, x, w, padding=1, backend=backend, need_dx=False)[0] is None
    layer = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
    y = layer(x)
    assert y.shape == (0, 4, 8, 7)
    assert layer.backward(y).shape == x.shape
    assert not layer.weight.grad.any() and not layer.bias.grad.any()
    with pytest.raises(ValueError, match="empty"):
        F.conv2d(np.zeros((2, 3, 0, 7), np.float32), w)


# --------------------------------------------------------------------------- against PyTorch

# (Conv2d keyword arguments, input shape): dilation, padding strings and modes, unbatched
# input and an empty batch, alone and together.
TORCH_CONFIGS = [
    (dict(kernel_size=3, dilation=2), (2, 3, 10, 9)),
    (dict(kernel_size=(3, 2), stride=(2, 1), padding=(2, 1), dilation=(3, 2)), (2, 3, 13, 11)),
    (dict(kernel_size=3, padding="same"), (2, 3, 8, 7)),
    (dict(kernel_size=4, padding="same", dilation=(1, 3)), (2, 3, 9, 12)),
    (dict(kernel_size=(2, 5), padding="same"), (1, 3, 6, 7)),
    (dict(kernel_size=3, padding="valid", dilation=2), (2, 3, 9, 9)),
    (dict(kernel_size=3, padding=2, padding_mode="reflect"), (2, 3, 6, 7)),
    (dict(kernel_size=3, padding=(1, 2), padding_mode="replicate", stride=2), (2, 3, 7, 8)),
    (dict(kernel_size=3, padding=1, padding_mode="circular", dilation=2), (2, 3, 6, 6)),
    (dict(kernel_size=4, padding="same", padding_mode="reflect"), (2, 3, 7, 8)),
    (dict(kernel_size=2, padding="same", padding_mode="circular", dilation=3), (2, 3, 6, 7)),
    (dict(kernel_size=3, padding=1), (3, 8, 7)),                                  # unbatched
    (dict(kernel_size=3, padding="same", padding_mode="replicate", dilation=2), (3, 9, 8)),
    (dict(kernel_size=3, padding=1), (0, 3, 8, 7)),                               # N = 0
    (dict(kernel_size=3, padding="same", padding_mode="reflect"), (0, 3, 5, 5)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("kwargs,x_shape", TORCH_CONFIGS, ids=lambda v: str(v))
def test_conv2d_layer_matches_pytorch(kwargs, x_shape, algo, rng):
    torch = pytest.importorskip("torch")
    C = x_shape[-3]
    ours = nn.Conv2d(C, 4, algo=algo, dtype=np.float64, rng=rng, **kwargs)
    theirs = torch.nn.Conv2d(C, 4, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.weight.data))
        theirs.bias.copy_(torch.from_numpy(ours.bias.data))
    x = rng.standard_normal(x_shape)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = theirs(xt)
    y = ours(x)
    assert y.shape == tuple(yt.shape)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(y.shape)
    yt.backward(torch.from_numpy(g))
    dx = ours.backward(g)
    assert dx.shape == x.shape
    for got, want in ((dx, xt.grad), (ours.weight.grad, theirs.weight.grad),
                      (ours.bias.grad, theirs.bias.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-11)


def test_pad_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    for mode in ("constant", "reflect", "replicate", "circular"):
        for p in ((1, 2), (2, 0, 1, 3), (0, 4, 4, 0)):
            x = rng.standard_normal((2, 3, 5, 6)[(4 - len(p)) // 2:])   # 3-D for 1-D padding
            xt = torch.from_numpy(x.copy()).requires_grad_(True)
            yt = torch.nn.functional.pad(xt, p, mode=mode)
            np.testing.assert_array_equal(F.pad(x, p, mode), yt.detach().numpy())
            g = rng.standard_normal(tuple(yt.shape))
            yt.backward(torch.from_numpy(g))
            np.testing.assert_allclose(F.pad_backward(g, p, mode), xt.grad.numpy(),
                                       rtol=1e-13, atol=1e-13)
