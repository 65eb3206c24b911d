"""Convolution: reference vs naive loops, fast vs reference, gradients, threads, inputs.

The chain of trust: naive Python loops (below, the formula written out) check both NumPy
references on tiny shapes; the references check the compiled kernels on a grid of awkward
shapes and on random ones; finite differences check the backward pass through the public
API; and the fast kernels must give the same bits on 1 and 2 threads.
Formulas: (conv.out), (conv.fwd), (conv.bwd), (im2col), see docs/formulas.md.
"""
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
import fastconv.functional as F
from fastconv._backend import load_kernels
from fastconv.reference import conv_direct as ref_direct
from fastconv.reference import conv_im2col as ref_im2col
from fastconv.reference.naive import naive_conv2d_backward, naive_conv2d_forward
from helpers import assert_close, assert_grad_matches

ALGOS = ["direct", "im2col"]
IMPLS = [("reference", "direct"), ("reference", "im2col"), ("fast", "direct"), ("fast", "im2col")]


def out_shape(x_shape, w_shape, stride, padding):
    N, _, H, W = x_shape
    K, _, R, S = w_shape
    return (N, K, (H + 2 * padding[0] - R) // stride[0] + 1,
            (W + 2 * padding[1] - S) // stride[1] + 1)


def make_inputs(rng, dtype, x_shape, w_shape, stride, padding):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    dy = rng.standard_normal(out_shape(x_shape, w_shape, stride, padding)).astype(dtype)
    return x, w, b, dy


# (x shape (N, C, H, W), w shape (K, C, R, S), stride, padding)
TINY = [
    ((2, 3, 5, 4), (2, 3, 3, 2), (1, 1), (0, 0)),
    ((1, 2, 6, 7), (3, 2, 3, 3), (2, 3), (1, 2)),     # strides not dividing, asymmetric
    ((2, 1, 4, 4), (1, 1, 1, 1), (1, 1), (0, 0)),     # 1x1 (im2col skipped in the fast twin)
    ((1, 2, 3, 3), (2, 2, 5, 4), (1, 2), (2, 3)),     # kernel = padded input, pad > R//2
]

# A grid of awkward shapes for fast vs reference.
GRID = [
    ((3, 1, 9, 8), (4, 1, 3, 3), (1, 1), (1, 1)),     # C = 1
    ((2, 5, 7, 9), (1, 5, 3, 3), (1, 1), (0, 0)),     # K = 1
    ((1, 4, 8, 8), (6, 4, 3, 3), (1, 1), (1, 1)),     # N = 1
    ((3, 6, 5, 7), (4, 6, 1, 1), (1, 1), (0, 0)),     # 1x1, stride 1, unpadded: no im2col
    ((2, 6, 9, 7), (4, 6, 1, 1), (2, 2), (0, 0)),     # 1x1 strided
    ((2, 3, 6, 5), (4, 3, 1, 1), (1, 1), (1, 0)),     # 1x1 padded
    ((2, 3, 11, 10), (5, 3, 3, 5), (1, 1), (1, 2)),   # R != S
    ((2, 3, 10, 11), (4, 3, 5, 2), (1, 1), (2, 1)),   # R != S, asymmetric padding
    ((2, 3, 12, 11), (4, 3, 3, 3), (2, 2), (1, 1)),   # stride 2, odd size
    ((2, 2, 13, 11), (3, 2, 4, 3), (3, 3), (1, 0)),   # stride 3, not dividing
    ((2, 3, 11, 13), (2, 3, 3, 3), (2, 3), (0, 2)),   # stride (h, w) different
    ((2, 3, 9, 9), (3, 3, 3, 4), (3, 1), (2, 3)),     # padding R-1 / S-1
    ((2, 2, 5, 4), (3, 2, 7, 6), (1, 1), (1, 1)),     # kernel = padded input: P = Q = 1
    ((2, 2, 3, 2), (3, 2, 5, 6), (2, 1), (1, 2)),     # kernel = padded input, stride > 1
    ((1, 2, 1, 1), (2, 2, 3, 3), (1, 1), (1, 1)),     # 1x1 image, padded
    ((2, 3, 6, 6), (2, 3, 6, 6), (1, 1), (0, 0)),     # kernel = whole image (a dense layer)
    ((2, 3, 6, 7), (5, 3, 3, 3), (1, 1), (3, 4)),     # padding > R-1 (dx: dy is cropped)
    ((2, 3, 9, 21), (6, 3, 3, 3), (2, 2), (1, 1)),    # strided register tiles, K % 4 != 0
    ((1, 2, 7, 30), (4, 2, 2, 3), (1, 3), (0, 1)),    # stride (1, 3), wide rows
    ((2, 9, 10, 19), (9, 9, 3, 3), (1, 1), (1, 1)),   # Q % 8 != 0: shifted last tile
    ((17, 3, 6, 5), (4, 3, 3, 3), (1, 1), (1, 1)),    # N > 16: several images per dW chunk
    ((20, 2, 5, 5), (3, 2, 2, 2), (2, 2), (0, 0)),
]


def grid_id(case):
    (N, C, H, W), (K, _, R, S), s, p = case
    return f"N{N}C{C}H{H}W{W}-K{K}R{R}S{S}-s{s[0]}{s[1]}-p{p[0]}{p[1]}"


def check_against_reference(x, w, b, dy, stride, padding, algo, dtype, dilation=1):
    """fast(algo) vs the reference, forward and backward, tolerances scaled by the reduction
    lengths: C*R*S for y, K*R*S for dx, N*P*Q for dw and db."""
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


# --------------------------------------------------------------------------- the oracle

@pytest.mark.parametrize("case", TINY, ids=grid_id)
def test_references_match_naive_loops(case, rng):
    x, w, b, dy = make_inputs(rng, np.float64, *case)
    stride, padding = case[2], case[3]
    y_naive = naive_conv2d_forward(x, w, b, stride, padding)
    grads_naive = naive_conv2d_backward(dy, x, w, stride, padding)
    for ref in (ref_direct, ref_im2col):
        y = ref.conv2d_forward(x, w, b, stride, padding, 1)
        assert y.dtype == np.float64 and y.flags.c_contiguous
        assert_close(y, y_naive, err_msg=ref.__name__)
        assert_close(ref.conv2d_forward(x, w, None, stride, padding, 1),
                     y_naive - b[None, :, None, None], err_msg=ref.__name__)
        for name, got, want in zip(("dx", "dw", "db"),
                                   ref.conv2d_backward(dy, x, w, stride, padding, 1), grads_naive):
            assert_close(got, want, err_msg=f"{ref.__name__} {name}")


def test_references_keep_float32(rng):
    x, w, b, dy = make_inputs(rng, np.float32, *TINY[1])
    for ref in (ref_direct, ref_im2col):
        assert ref.conv2d_forward(x, w, b, TINY[1][2], TINY[1][3], 1).dtype == np.float32
        assert all(g.dtype == np.float32
                   for g in ref.conv2d_backward(dy, x, w, TINY[1][2], TINY[1][3], 1))


def test_output_size_matches_conv_out():
    """(conv.out): floor((H + 2p - R) / s) + 1, e.g. 7x7, 3x3, stride 2, pad 1 -> 4x4."""
    x = np.ones((1, 1, 7, 7))
    assert F.conv2d(x, np.ones((1, 1, 3, 3)), stride=2, padding=1).shape == (1, 1, 4, 4)
    assert F.conv2d(x, np.ones((1, 1, 3, 3)), stride=3, padding=0).shape == (1, 1, 2, 2)


# the channels-last paths of the im2col backward: S*C a multiple of 16 (in place) or not
TILE_CASES_NEED_DX = [((2, 16, 6, 6), (8, 16, 3, 3), (1, 1), (1, 1)),
                      ((2, 6, 9, 8), (5, 6, 3, 3), (2, 1), (1, 0))]


# --------------------------------------------------------------------------- fast vs reference

@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", GRID, ids=grid_id)
def test_fast_matches_reference(case, algo, dtype, rng, n_threads):
    x, w, b, dy = make_inputs(rng, dtype, *case)
    check_against_reference(x, w, b, dy, case[2], case[3], algo, dtype)


@pytest.mark.parametrize("algo", ALGOS)
def test_fast_without_bias(algo, dtype, rng):
    x, w, b, _ = make_inputs(rng, dtype, *GRID[6])
    want = F.conv2d(x, w, None, GRID[6][2], GRID[6][3], algo="direct", backend="reference")
    got = F.conv2d(x, w, None, GRID[6][2], GRID[6][3], algo=algo, backend="fast")
    assert_close(got, want, dtype, reduction=w[0].size)


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", [GRID[0], GRID[6], TILE_CASES_NEED_DX[0], TILE_CASES_NEED_DX[1]],
                         ids=grid_id)
def test_backward_without_dx(case, algo, backend, dtype, rng):
    """need_dx=False returns None for dx and bitwise the same dw and db (the first layer of a
    network: its input is the data)."""
    x, w, b, dy = make_inputs(rng, dtype, *case)
    dx, dw, db = F.conv2d_backward(dy, x, w, case[2], case[3], algo=algo, backend=backend)
    none, dw2, db2 = F.conv2d_backward(dy, x, w, case[2], case[3], algo=algo, backend=backend,
                                       need_dx=False)
    assert none is None and dx is not None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


def test_backward_without_dx_needs_no_dx_buffer(dtype, rng):
    """need_dx=False with several images: the kernels must not form a pointer into the absent
    dx (a bounds-checked build once swallowed that error and returned a wrong dw)."""
    x = rng.standard_normal((2, 1, 6, 6)).astype(dtype)
    w = rng.standard_normal((2, 1, 3, 3)).astype(dtype)
    dy = rng.standard_normal((2, 2, 4, 4)).astype(dtype)
    _, dw_ref, db_ref = F.conv2d_backward(dy, x, w, backend="reference")
    for algo in ALGOS:
        dx, dw, db = F.conv2d_backward(dy, x, w, algo=algo, backend="fast", need_dx=False)
        assert dx is None
        assert_close(dw, dw_ref, dtype, reduction=2 * 16, err_msg=algo)
        assert_close(db, db_ref, dtype, reduction=2 * 16, err_msg=algo)


# need_dw=False: dx alone (a frozen layer between trainable ones). The cases cover the
# classic path (1x1 without columns, strided, N > 16 images: several dW chunks) and the
# channels-last one (in place where S*C is whole vectors; columns in blocks of rows).
NO_DW_CASES = [GRID[0], GRID[3], GRID[8], GRID[20], TILE_CASES_NEED_DX[0],
               TILE_CASES_NEED_DX[1],
               ((20, 32, 6, 6), (64, 32, 3, 3), (1, 1), (1, 1)),    # K >= P*Q: rows in blocks
               ((20, 3, 20, 20), (24, 3, 3, 3), (1, 1), (1, 1))]


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", NO_DW_CASES, ids=grid_id)
def test_backward_without_dw_gives_the_same_dx_bits(case, algo, backend, dtype, rng, n_threads):
    x, w, b, dy = make_inputs(rng, dtype, *case)
    dx, dw, db = F.conv2d_backward(dy, x, w, case[2], case[3], algo=algo, backend=backend)
    dx2, none_w, none_b = F.conv2d_backward(dy, x, w, case[2], case[3], algo=algo,
                                            backend=backend, need_dw=False)
    assert none_w is None and none_b is None and dw is not None and db is not None
    assert dx2.dtype == dx.dtype and dx2.shape == dx.shape
    np.testing.assert_array_equal(dx2, dx)


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", NO_DW_CASES[:4] + NO_DW_CASES[-1:], ids=grid_id)
def test_backward_without_db_gives_the_same_dx_and_dw_bits(case, algo, backend, dtype, rng,
                                                            n_threads):
    """need_db=False (a layer without a bias): db is None, dx and dw are bitwise those of
    the full call, with and without dx."""
    x, w, b, dy = make_inputs(rng, dtype, *case)
    for need_dx in (True, False):
        dx, dw, db = F.conv2d_backward(dy, x, w, case[2], case[3], algo=algo, backend=backend,
                                       need_dx=need_dx)
        dx2, dw2, none_b = F.conv2d_backward(dy, x, w, case[2], case[3], algo=algo,
                                             backend=backend, need_dx=need_dx, need_db=False)
        assert none_b is None and db is not None and (dx2 is None) == (not need_dx)
        np.testing.assert_array_equal(dw2, dw)
        if need_dx:
            np.testing.assert_array_equal(dx2, dx)


def test_backward_needs_dx_or_dw(rng):
    x, w, b, dy = make_inputs(rng, np.float32, *GRID[0])
    for backend in ("reference", "fast"):
        with pytest.raises(ValueError, match="conv2d_backward: need_dx=False and need_dw=False"):
            F.conv2d_backward(dy, x, w, 1, 1, backend=backend, need_dx=False, need_dw=False)
    for kern in (ref_direct, ref_im2col, load_kernels("conv_direct"),
                 load_kernels("conv_im2col")):      # the kernels guard it too: no NULL dx
        with pytest.raises(ValueError, match="need_dx and need_dw are both False"):
            kern.conv2d_backward(dy, x, w, (1, 1), (1, 1), 1, False, False)


# --------------------------------------------------------------------------- NaN and Inf

# Padding next to the non-finite value is what matters: the fast kernels skip some taps in
# the zero padding, which is exact for finite values only (0 * NaN = NaN, 0 * Inf = NaN).
NONFINITE_CASES = [
    ((2, 1, 6, 6), (2, 1, 3, 3), (1, 1), (1, 1)),     # K < 4 (direct: dw by slices), C*S < 16
    ((2, 8, 6, 7), (16, 8, 3, 3), (1, 1), (1, 1)),    # channels-last im2col, K <= 16
    ((2, 6, 7, 6), (5, 6, 3, 3), (2, 2), (2, 1)),     # strided, padding >= R - 1
]


def assert_same_values(got, want, dtype, reduction, err_msg):
    """NaN where want is NaN, the same infinities, and close finite values."""
    got, want = np.asarray(got), np.asarray(want)
    for kind in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(kind(got), kind(want), err_msg=f"{err_msg} {kind.__name__}")
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite], dtype, reduction=reduction, err_msg=err_msg)


def check_nonfinite_like_reference(x, w, b, dy, stride, padding, dtype, what):
    N, K, P, Q = dy.shape
    _, C, R, S = w.shape
    want_y = F.conv2d(x, w, b, stride, padding, backend="reference")
    want_grads = F.conv2d_backward(dy, x, w, stride, padding, backend="reference")
    for algo in ALGOS:
        y = F.conv2d(x, w, b, stride, padding, algo=algo, backend="fast")
        assert_same_values(y, want_y, dtype, C * R * S, f"{what}: y ({algo})")
        grads = F.conv2d_backward(dy, x, w, stride, padding, algo=algo, backend="fast")
        for name, got, want, red in zip(("dx", "dw", "db"), grads, want_grads,
                                        (K * R * S, N * P * Q, N * P * Q)):
            assert_same_values(got, want, dtype, red, f"{what}: {name} ({algo})")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["x", "w", "dy"])
@pytest.mark.parametrize("case", NONFINITE_CASES, ids=grid_id)
def test_nonfinite_values_propagate_as_in_the_formula(case, where, value, dtype, rng):
    """A NaN or Inf in x, w or dy makes exactly the sums that contain it NaN or Inf, the
    padding's zeros included (0 * NaN = NaN): fast == reference, both algorithms. Corner
    positions, whose windows or taps reach into the padding."""
    x, w, b, dy = make_inputs(rng, dtype, *case)
    arrays = {"x": x, "w": w, "dy": dy}
    arrays[where][0, 0, 0, 0] = value
    arrays[where][-1, -1, -1, -1] = value
    check_nonfinite_like_reference(x, w, b, dy, case[2], case[3], dtype, f"{value} in {where}")


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("case", NONFINITE_CASES, ids=grid_id)
def test_overflow_gives_inf_as_reference(case, dtype, rng):
    """Products of large finite values overflow to Inf in both backends (all positive, so
    the order of the sums cannot turn Inf into NaN)."""
    x, w, b, dy = (np.abs(a) for a in make_inputs(rng, dtype, *case))
    big = dtype(1e30 if dtype == np.float32 else 1e200)
    x[0] *= big
    w[0] *= big
    dy[0] *= big
    check_nonfinite_like_reference(x, w, b, dy, case[2], case[3], dtype, "overflow")


# Channel counts that fill the im2col micro-kernel's register tiles (16 float32 columns per
# vector, 1..4 vectors per tile) and leave tails: K = 16, 40, 64, 70, 20 output channels;
# S*C a multiple of 16 (the in-place backward) or not.
TILE_CASES = [
    ((3, 16, 9, 9), (16, 16, 3, 3), (1, 1), (1, 1)),
    ((2, 8, 7, 6), (40, 8, 3, 3), (2, 1), (1, 1)),
    ((2, 20, 6, 6), (64, 20, 3, 3), (1, 1), (1, 1)),
    ((2, 5, 10, 10), (70, 5, 5, 5), (1, 1), (2, 2)),
    ((2, 16, 9, 8), (20, 16, 3, 2), (2, 1), (1, 0)),      # S*C = 32: backward reads the
    ((2, 32, 6, 7), (16, 32, 3, 1), (1, 2), (2, 0)),      # padded image in place
]


@pytest.mark.parametrize("case", TILE_CASES, ids=grid_id)
def test_fast_im2col_matches_reference_on_full_tiles(case, dtype, rng, n_threads):
    x, w, b, dy = make_inputs(rng, dtype, *case)
    check_against_reference(x, w, b, dy, case[2], case[3], "im2col", dtype)


# The channels-last ("hwc") path of the float32 forward on the micro-kernel: images moved to
# and from channels-last by 16 x 16 blocks with partial blocks at the edges (C = 8, 20, 33
# channels, H*W not a multiple of 16) or, for 3 channels, by permutes (W = 10, 21, 37);
# short runs S*C = 9..15 (this path from S*C = 9 on); output rows whose windows reach into
# the zero rows of the padding, which skip those taps (padding >= R leaves whole output
# rows with no tap at all: y = b there); and the row tiles of fc_dtile (K <= 16, S = 3 or
# 5, column stride 1).
HWC_CASES = [
    ((2, 8, 7, 5), (16, 8, 3, 3), (1, 1), (1, 1)),
    ((2, 20, 9, 6), (24, 20, 3, 3), (1, 1), (1, 1)),
    ((2, 33, 5, 7), (17, 33, 3, 3), (2, 1), (2, 1)),
    ((2, 3, 11, 10), (64, 3, 3, 3), (2, 2), (1, 1)),      # S*C = 9, alexnet_c1-like
    ((2, 2, 9, 9), (16, 2, 5, 5), (1, 1), (2, 2)),        # S*C = 10
    ((2, 5, 8, 9), (12, 5, 3, 3), (1, 2), (0, 1)),        # S*C = 15
    ((2, 16, 5, 6), (16, 16, 3, 3), (1, 1), (4, 1)),      # padding > R: rows with no taps
    ((2, 16, 12, 10), (32, 16, 5, 3), (3, 2), (4, 1)),    # stride 3, R = 5, deep padding
    ((2, 4, 9, 31), (7, 4, 5, 5), (2, 1), (2, 2)),        # K <= 16 row tiles: Q = 16+12+2+1
    ((1, 3, 6, 21), (16, 3, 3, 3), (1, 1), (4, 1)),       # ... and rows with no taps
    ((2, 3, 5, 37), (20, 3, 3, 3), (1, 2), (1, 1)),       # 3 channels: the RGB copy
]


@pytest.mark.parametrize("case", HWC_CASES, ids=grid_id)
def test_fast_im2col_channels_last_paths(case, dtype, rng):
    x, w, b, dy = make_inputs(rng, dtype, *case)
    stride, padding = case[2], case[3]
    check_against_reference(x, w, b, dy, stride, padding, "im2col", dtype)
    ys = []
    for n in (1, 2, 3):
        with fastconv.num_threads(n):
            ys.append(F.conv2d(x, w, b, stride, padding, algo="im2col", backend="fast"))
    assert np.array_equal(ys[0], ys[1]) and np.array_equal(ys[0], ys[2])


@pytest.mark.parametrize("case", GRID + TILE_CASES + HWC_CASES, ids=grid_id)
def test_fast_im2col_blas_path_matches_reference(case, rng):
    """float32 products run on the AVX-512 micro-kernel where the CPU has it; the BLAS path
    that other CPUs take must agree with the reference too."""
    from fastconv._backend import load_kernels
    kern = load_kernels("conv_im2col")
    previous = kern._set_microkernel(False)
    try:
        x, w, b, dy = make_inputs(rng, np.float32, *case)
        check_against_reference(x, w, b, dy, case[2], case[3], "im2col", np.float32)
    finally:
        kern._set_microkernel(previous)


@st.composite
def conv_cases(draw):
    N, C, K = (draw(st.integers(1, 4)) for _ in range(3))
    R, S = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, R - 1)), draw(st.integers(0, S - 1))
    H = draw(st.integers(max(1, R - 2 * ph), 12))       # the kernel fits the padded input
    W = draw(st.integers(max(1, S - 2 * pw), 12))
    return (N, C, H, W), (K, C, R, S), (sh, sw), (ph, pw)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases(), seed=st.integers(0, 2**32 - 1))
def test_fast_matches_reference_random_shapes(case, seed):
    rng = np.random.default_rng(seed)
    x, w, b, dy = make_inputs(rng, np.float64, *case)
    for algo in ALGOS:
        check_against_reference(x, w, b, dy, case[2], case[3], algo, np.float64)


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("backend,algo", IMPLS)
def test_backward_matches_finite_differences(backend, algo, rng):
    """(conv.bwd) against central differences of L = sum(conv2d(x, w, b) * g), float64."""
    stride, padding = (2, 1), (1, 1)
    x, w, b, g = make_inputs(rng, np.float64, (2, 2, 5, 4), (3, 2, 3, 2), stride, padding)

    def loss():
        return float(np.sum(F.conv2d(x, w, b, stride, padding, algo=algo, backend=backend) * g))

    dx, dw, db = F.conv2d_backward(g, x, w, stride, padding, algo=algo, backend=backend)
    assert_grad_matches(dx, loss, x, err_msg="dx")
    assert_grad_matches(dw, loss, w, err_msg="dw")
    assert_grad_matches(db, loss, b, err_msg="db")


# --------------------------------------------------------------------------- threads

# Each case is above the kernels' grain (1048576 multiply-adds), so two threads really run.
THREAD_CASES = [
    ((38, 5, 11, 10), (6, 5, 3, 3), (1, 1), (1, 1)),
    ((63, 4, 24, 26), (7, 4, 3, 2), (2, 3), (1, 0)),
    ((105, 16, 12, 12), (5, 16, 1, 1), (1, 1), (0, 0)),
    ((18, 16, 10, 10), (32, 16, 3, 3), (1, 1), (1, 1)),   # full micro-kernel tiles
    ((20, 32, 6, 6), (64, 32, 3, 3), (1, 1), (1, 1)),     # K >= P*Q: dW by output blocks
    ((20, 3, 20, 20), (24, 3, 3, 3), (1, 1), (1, 1)),     # columns built in row blocks
    ((1, 32, 24, 24), (32, 32, 3, 3), (1, 1), (1, 1)),    # one image: fewer chunks than threads
]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", THREAD_CASES, ids=grid_id)
def test_fast_is_bitwise_thread_invariant(case, algo, dtype, rng):
    """The reductions (dw, db) use a fixed order, so 1, 2 and 3 threads give the same bits,
    and so do two runs on 2 threads."""
    x, w, b, dy = make_inputs(rng, dtype, *case)
    stride, padding = case[2], case[3]
    results = []
    for n in (1, 2, 3):
        with fastconv.num_threads(n):
            y = F.conv2d(x, w, b, stride, padding, algo=algo, backend="fast")
            results.append((y,) + F.conv2d_backward(dy, x, w, stride, padding, algo=algo,
                                                     backend="fast"))
    with fastconv.num_threads(2):      # dynamic scheduling: a rerun may split work differently
        y = F.conv2d(x, w, b, stride, padding, algo=algo, backend="fast")
        results.append((y,) + F.conv2d_backward(dy, x, w, stride, padding, algo=algo,
                                                 backend="fast"))
    for name, one, two, three, again in zip(("y", "dx", "dw", "db"), *results):
        assert np.array_equal(one, two), f"{name} differs between 1 and 2 threads"
        assert np.array_equal(one, three), f"{name} differs between 1 and 3 threads"
        assert np.array_equal(two, again), f"{name} differs between two 2-thread runs"


def _workspace(call):
    """Peak NumPy memory of ``call()`` beyond the arrays it returns, in bytes (all of the
    im2col kernel's scratch is NumPy arrays, which tracemalloc sees)."""
    tracemalloc.start()
    try:
        outputs = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return peak - sum(a.nbytes for a in outputs)


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("microkernel", [True, False], ids=["microkernel", "blas"])
def test_im2col_memory_within_bound(direction, microkernel, dtype, rng):
    """The im2col kernel's scratch on every conv layer of the benchmark suite, for 1, 2 and
    3 threads (the bounds of conv_im2col's module docstring). Forward: threads x one
    image's columns (C*R*S x P*Q values), plus the weights in the channels-last layout (Wr,
    K x C*R*S) on 1 thread, where they do not fit beside the padded image (resnet20_s3,
    alexnet_c1). Backward: threads x one image's columns, plus the partial dWs of a round
    (the largest of threads x columns, threads x one dW and 1 MiB), plus Wr."""
    from fastconv._backend import load_kernels
    from fastconv.benchmark.shapes import CONV, conv_out
    kern = load_kernels("conv_im2col")
    if microkernel and not kern._microkernel_in_use():
        pytest.skip("this CPU has no AVX-512 micro-kernel")
    previous = kern._set_microkernel(microkernel)
    try:
        for name, N, C, H, W, K, R, S, stride, pad in CONV:
            P, Q = conv_out(H, W, R, S, stride, pad)
            x = rng.standard_normal((N, C, H, W)).astype(dtype)
            w = rng.standard_normal((K, C, R, S)).astype(dtype)
            dy = rng.standard_normal((N, K, P, Q)).astype(dtype)
            columns = C * R * S * P * Q
            for threads in (1, 2, 3):
                if direction == "forward":
                    used = _workspace(lambda: kern.conv2d_forward(
                        x, w, None, (stride, stride), (pad, pad), threads))
                    bound = threads * columns + (w.size if threads == 1 else 0)
                else:
                    used = _workspace(lambda: kern.conv2d_backward(
                        dy, x, w, (stride, stride), (pad, pad), threads))
                    partials = max(threads * columns, threads * w.size,
                                   2**20 // x.itemsize)
                    bound = threads * columns + partials + w.size
                bound *= x.itemsize
                assert used <= bound, (f"{name} {direction}, {threads} threads: "
                                       f"{used / 2**20:.3f} MB of scratch for a bound of "
                                       f"{bound / 2**20:.3f} MB")
                # and not far below it: the bound is what the kernel needs
                if direction == "backward" and threads == 2:
                    assert used >= 2 * w.size * x.itemsize, f"{name}: no partial dW per thread?"
    finally:
        kern._set_microkernel(previous)


# --------------------------------------------------------------------------- inputs

@pytest.mark.parametrize("backend,algo", IMPLS)
def test_inputs_are_not_modified(backend, algo, rng):
    x, w, b, dy = make_inputs(rng, np.float64, *GRID[8])
    copies = [a.copy() for a in (x, w, b, dy)]
    F.conv2d(x, w, b, GRID[8][2], GRID[8][3], algo=algo, backend=backend)
    F.conv2d_backward(dy, x, w, GRID[8][2], GRID[8][3], algo=algo, backend=backend)
    for a, before in zip((x, w, b, dy), copies):
        assert np.array_equal(a, before)


@pytest.mark.parametrize("algo", ALGOS)
def test_read_only_and_non_contiguous_inputs(algo, rng):
    x, w, b, dy = make_inputs(rng, np.float32, (2, 3, 9, 8), (4, 3, 3, 3), (1, 1), (1, 1))
    want_y = F.conv2d(x, w, b, 1, 1, algo=algo, backend="fast")
    want_grads = F.conv2d_backward(dy, x, w, 1, 1, algo=algo, backend="fast")
    for a in (x, w, b, dy):
        a.flags.writeable = False
    assert np.array_equal(F.conv2d(x, w, b, 1, 1, algo=algo, backend="fast"), want_y)
    for got, want in zip(F.conv2d_backward(dy, x, w, 1, 1, algo=algo, backend="fast"),
                         want_grads):
        assert np.array_equal(got, want)
    # Non-contiguous views: NHWC storage seen as NCHW, and a strided slice.
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert not x_nhwc.flags.c_contiguous
    assert np.array_equal(F.conv2d(x_nhwc, w, b, 1, 1, algo=algo, backend="fast"), want_y)
    x_big = np.zeros((2, 6, 9, 16), np.float32)
    x_big[:, ::2, :, ::2] = x
    y_strided = F.conv2d(x_big[:, ::2, :, ::2], w, b, 1, 1, algo=algo, backend="fast")
    assert np.array_equal(y_strided, want_y)


def test_auto_picks_the_documented_algorithm(rng):
    """algo="auto" runs im2col, except with one output channel (K == 1: a matrix-vector
    product, nothing for a GEMM to reuse) and for the float32 forward of layers with at
    most 3 input channels on AVX2 or AVX-512, where it runs direct, and for 3x3 stride-1 layers
    with >= 16 channels in and out, where it runs winograd; the reference backend always
    runs im2col. Checked on the choice and on the call itself: the result of algo="auto"
    is bitwise that of the algorithm it names."""
    first = "im2col" if load_kernels("_openmp").simd_isa()[0] == "baseline" else "direct"
    cases = [((8, 1, 28, 28), (6, 1, 5, 5), 1, 2, first),
             ((8, 3, 16, 16), (32, 3, 3, 3), 2, 1, first),
             ((8, 4, 16, 16), (32, 4, 3, 3), 2, 1, "im2col"),
             ((4, 16, 12, 12), (16, 16, 3, 3), 1, 1, "winograd"),
             ((8, 64, 8, 8), (64, 64, 1, 1), 1, 0, "im2col"),
             ((8, 16, 16, 16), (32, 16, 3, 3), 2, 1, "im2col"),
             ((4, 16, 12, 12), (1, 16, 3, 3), 1, 1, "direct"),
             ((4, 1, 12, 12), (1, 1, 3, 3), 2, 0, "direct")]
    for x_shape, w_shape, s, p, want in cases:
        assert F.choose_conv_algo(x_shape, w_shape, (s, s), (p, p)) == want, (x_shape, w_shape)
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        auto = F.conv2d(x, w, None, s, p, algo="auto", backend="fast")
        assert np.array_equal(auto, F.conv2d(x, w, None, s, p, algo=want, backend="fast"))
        assert F.choose_conv_algo(x_shape, w_shape, (s, s), (p, p), "reference") == "im2col"
    # the first layer's forward: float32 only; its backward's dx from im2col
    assert F.choose_conv_algo((8, 1, 28, 28), (6, 1, 5, 5), 1, 2, dtype=np.float64) == "im2col"
    assert F.choose_conv_algo((8, 1, 28, 28), (6, 1, 5, 5), 1, 2, backward=True) == "im2col"


# --------------------------------------------------------------------------- kernel guards

@pytest.mark.parametrize("algo", ALGOS)
def test_kernels_called_directly_reject_inconsistent_shapes(algo):
    """functional.py validates for users; the kernels still guard O(1) shape consistency so a
    direct call raises instead of reading out of bounds."""
    from fastconv._backend import load_kernels
    kern = load_kernels(f"conv_{algo}")
    x = np.zeros((2, 3, 5, 5))
    w = np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError):
        kern.conv2d_forward(x, np.zeros((4, 2, 3, 3)), None, (1, 1), (0, 0), 1)  # channels
    with pytest.raises(ValueError):
        kern.conv2d_forward(x, np.zeros((4, 3, 8, 3)), None, (1, 1), (1, 1), 1)  # kernel too big
    with pytest.raises(ValueError):
        kern.conv2d_forward(x, w, np.zeros(3), (1, 1), (0, 0), 1)                 # bias length
    with pytest.raises(ValueError):
        kern.conv2d_forward(x, w, None, (0, 1), (0, 0), 1)                        # stride 0
    with pytest.raises(ValueError):
        kern.conv2d_backward(np.zeros((2, 4, 3, 4)), x, w, (1, 1), (0, 0), 1)     # dy shape
    with pytest.raises(ValueError):                                              # mixed dtypes
        kern.conv2d_forward(x, w.astype(np.float32), None, (1, 1), (0, 0), 1)


# (x shape, K, kernel width, padding): few input channels, where auto's dw is the direct
# kernel's row tile (float32, stride 1, 3 or 5 wide, on AVX2); K = 6 and 5 end in a part
# block of the 4-channel tasks, Q = 9 and 20 in a part vector of 8 columns
FIRST_LAYERS = [((8, 1, 12, 13), 6, 5, 2), ((4, 3, 9, 20), 16, 3, 1), ((5, 2, 7, 9), 5, 5, 0)]


@pytest.mark.parametrize("case", FIRST_LAYERS, ids=str)
def test_auto_backward_of_a_first_layer(case, rng, n_threads):
    """dw and db from the direct kernel where its row tile applies (else im2col's), dx from
    im2col; all close to the reference, whatever the thread count."""
    (N, C, H, W), K, S, pad = case
    x, w, b, dy = make_inputs(rng, np.float32, (N, C, H, W), (K, C, S, S), (1, 1), (pad, pad))
    dx, dw, db = F.conv2d_backward(dy, x, w, 1, pad, backend="fast")
    dw_algo = "im2col" if load_kernels("_openmp").simd_isa()[0] == "baseline" else "direct"
    _, dw_want, db_want = F.conv2d_backward(dy, x, w, 1, pad, algo=dw_algo, backend="fast")
    np.testing.assert_array_equal(dw, dw_want)
    np.testing.assert_array_equal(db, db_want)
    dx_want = F.conv2d_backward(dy, x, w, 1, pad, algo="im2col", backend="fast", need_dw=False)[0]
    np.testing.assert_array_equal(dx, dx_want)
    ref = F.conv2d_backward(dy, x, w, 1, pad, backend="reference")
    for name, got, want, red in (("dx", dx, ref[0], K * S * S), ("dw", dw, ref[1], N * H * W),
                                 ("db", db, ref[2], N * H * W)):
        assert_close(got, want, np.float32, reduction=red, err_msg=name)
    assert F.conv2d_backward(dy, x, w, 1, pad, backend="fast", need_dx=False)[0] is None
    no_db = F.conv2d_backward(dy, x, w, 1, pad, backend="fast", need_dx=False, need_db=False)
    assert no_db[0] is None and no_db[2] is None
    np.testing.assert_array_equal(no_db[1], dw)


# (x shape, K, (R, S), stride, padding, dilation): the direct kernel's dw of all taps at once
# (float32, stride and dilation 1 along the rows, S = 3 or 5, on AVX-512): K from 1 to 9
# split into blocks of up to 4 channels; Q below, at and past the 16 lanes of a vector;
# strided and dilated along the columns of the kernel (rows of the image)
DW_ROWS_CASES = [((3, 1, 9, 8), 1, (3, 3), (1, 1), (1, 1), (1, 1)),
                 ((2, 2, 6, 16), 5, (5, 5), (1, 1), (2, 2), (1, 1)),
                 ((2, 1, 7, 19), 9, (2, 3), (2, 1), (0, 1), (1, 1)),
                 ((2, 3, 12, 35), 6, (3, 5), (1, 1), (1, 0), (2, 1)),
                 ((17, 1, 5, 18), 7, (4, 3), (3, 1), (2, 1), (1, 1))]


@pytest.mark.parametrize("case", DW_ROWS_CASES, ids=str)
def test_direct_dw_of_all_taps_matches_reference(case, rng, n_threads):
    """dw and db by the direct kernel (all taps at once where AVX-512 runs, else the row or
    one-tap tiles) close to the reference, bitwise the same on 1 and 2 threads."""
    (N, C, H, W), K, (R, S), stride, pad, dil = case
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, R, S)).astype(np.float32)
    y = F.conv2d(x, w, None, stride, pad, dil, backend="reference")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    _, dw, db = F.conv2d_backward(dy, x, w, stride, pad, dil, algo="direct", backend="fast",
                                  need_dx=False)
    _, dw_ref, db_ref = F.conv2d_backward(dy, x, w, stride, pad, dil, backend="reference",
                                          need_dx=False)
    reduction = y.shape[0] * y.shape[2] * y.shape[3]
    assert_close(dw, dw_ref, np.float32, reduction=reduction, err_msg="dw")
    assert_close(db, db_ref, np.float32, reduction=reduction, err_msg="db")
    with fastconv.num_threads(3 - n_threads):
        again = F.conv2d_backward(dy, x, w, stride, pad, dil, algo="direct", backend="fast",
                                  need_dx=False)[1]
    np.testing.assert_array_equal(again, dw)


# (x shape, w shape, stride, padding, dilation) for the direct forward's register tiles
# (float32; AVX-512: up to 8 channels x 32 columns, or 16 x 16 for rows of 16 or fewer;
# AVX2: 6 x 16 or 12 x 8):
# K from 1 to 17 in blocks, rows of 5 to 40 outputs (a 32-column tile, then a remainder),
# strides and dilations along the row (the image split into column phases)
DIRECT_FWD_CASES = [((2, 1, 9, 40), (17, 1, 3, 3), (1, 1), (1, 1), (1, 1)),
                    ((2, 3, 10, 33), (12, 3, 5, 5), (1, 2), (2, 2), (1, 1)),
                    ((3, 2, 11, 16), (16, 2, 3, 3), (1, 1), (1, 1), (1, 1)),
                    ((2, 3, 12, 29), (9, 3, 3, 4), (2, 3), (1, 2), (1, 2)),
                    ((1, 5, 7, 7), (3, 5, 2, 3), (1, 1), (0, 3), (2, 1))]


@pytest.mark.parametrize("case", DIRECT_FWD_CASES, ids=str)
def test_direct_forward_tiles_match_reference(case, dtype, rng, n_threads):
    """The direct kernel's forward close to the reference on shapes that reach every tile
    size and the column phases of strided rows, bitwise the same on 1 and 2 threads."""
    x_shape, w_shape, stride, pad, dil = case
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    y = F.conv2d(x, w, b, stride, pad, dil, algo="direct", backend="fast")
    want = F.conv2d(x, w, b, stride, pad, dil, backend="reference")
    assert_close(y, want, dtype, reduction=int(np.prod(w_shape[1:])))
    with fastconv.num_threads(3 - n_threads):
        again = F.conv2d(x, w, b, stride, pad, dil, algo="direct", backend="fast")
    np.testing.assert_array_equal(again, y)
