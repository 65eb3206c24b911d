"""Winograd convolution: reference vs direct, fast vs reference, accuracy, threads, NaN/Inf;
forward, dx and dW, dilated or not.

The reference (fastconv/reference/conv_winograd.py) is checked against the direct formula
in float64; the compiled kernel against the reference with the same tile size; both tile
sizes against float64 truth for the stated float32 error bounds; and the public API's
algo="winograd" / algo="auto" for errors, thread invariance and non-finite inputs.
"""
import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from fastconv._backend import load_kernels
from fastconv.reference import conv_direct as ref_direct
from fastconv.reference import conv_winograd as ref_wino
from helpers import assert_close, assert_close_nonfinite, assert_grad_matches, outputs_with_isa

wino = load_kernels("conv_winograd")
TILES = [2, 4]

# (x shape (N, C, H, W), K, padding[, dilation]): odd and tiny sizes leave partial tiles
CASES = [
    ((2, 3, 7, 9), 4, (1, 1)),       # odd H and W: partial tiles for both tile sizes
    ((1, 2, 5, 6), 3, (0, 0)),       # batch 1, unpadded
    ((2, 3, 6, 7), 5, (3, 2)),       # padding > 2: dx's padding 2 - p is a crop
    ((1, 2, 3, 3), 2, (2, 0)),       # asymmetric padding, a 1-wide output
    ((1, 1, 1, 1), 2, (1, 1)),       # a 1x1 image: one partial tile
    ((3, 5, 13, 11), 7, (1, 1)),     # tiles of a block span images
    ((2, 16, 8, 8), 16, (1, 1)),     # m divides the output
    ((1, 4, 18, 30), 6, (1, 0)),     # more tiles than one block holds
    ((2, 8, 16, 16), 12, (1, 1)),    # whole tiles, 12 channels: 8 at a time and 4 one by one
    ((2, 3, 12, 12), 4, (2, 2), (2, 2)),   # dilated: 4 phases of 6x6 outputs
    ((1, 3, 13, 10), 5, (1, 3), (3, 2)),   # phases of unequal sizes, dilation > padding
    ((2, 2, 9, 17), 3, (4, 0), (4, 1)),    # a phase with no whole tile, mixed dilation
]


def case_id(case):
    (N, C, H, W), K, (ph, pw), (dh, dw) = unpack(case)
    return f"N{N}C{C}H{H}W{W}K{K}p{ph}{pw}" + (f"d{dh}{dw}" if (dh, dw) != (1, 1) else "")


def unpack(case):
    return case if len(case) == 4 else (*case, (1, 1))


def make(rng, dtype, case):
    (N, C, H, W), K, (ph, pw), (dh, dw) = unpack(case)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    dy = rng.standard_normal((N, K, H + 2 * ph - 2 * dh, W + 2 * pw - 2 * dw)).astype(dtype)
    return x, w, b, dy


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_reference_matches_direct(case, tile, rng):
    """The NumPy Winograd (both tile sizes) is the direct formula, to float64 rounding:
    forward, dx and dW (eq. wino.dw), dilated or not."""
    x, w, b, dy = make(rng, np.float64, case)
    _, _, pad, dil = unpack(case)
    y = ref_wino.conv2d_forward(x, w, b, (1, 1), pad, None, dil, tile=tile)
    assert_close(y, ref_direct.conv2d_forward(x, w, b, (1, 1), pad, dilation=dil), np.float64,
                 9 * x.shape[1])
    got = ref_wino.conv2d_backward(dy, x, w, (1, 1), pad, None, True, True, dil, tile=tile)
    want = ref_direct.conv2d_backward(dy, x, w, (1, 1), pad, dilation=dil)
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        assert_close(g, r, np.float64, 9 * w.shape[0] if name == "dx" else dy[:, 0].size,
                     err_msg=name)


def test_transform_matrices_are_exact_for_polynomials():
    """(wino.1d) on single columns: A^T [(G g) * (B^T d)] is the 3-tap correlation for any
    d and g, which checks B, G and A of both tile sizes together."""
    rng = np.random.default_rng(3)
    for m in TILES:
        BT, G, AT = ref_wino.transform_matrices(m)
        assert BT.shape == (m + 2, m + 2) and G.shape == (m + 2, 3) and AT.shape == (m, m + 2)
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        want = [d[i:i + 3] @ g for i in range(m)]
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="tile"):
        ref_wino.transform_matrices(3)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fast_matches_reference(case, tile, dtype, rng, n_threads):
    """The kernel computes what the reference computes, with the same tile size: forward,
    dx, dW and db, dilated or not."""
    x, w, b, dy = make(rng, dtype, case)
    _, _, pad, dil = unpack(case)
    y = wino.conv2d_forward(x, w, b, (1, 1), pad, n_threads, dil, tile=tile)
    assert y.dtype == dtype
    assert_close(y, ref_wino.conv2d_forward(x, w, b, (1, 1), pad, None, dil, tile=tile), dtype,
                 9 * x.shape[1])
    got = wino.conv2d_backward(dy, x, w, (1, 1), pad, n_threads, True, True, dil, tile=tile)
    want = ref_wino.conv2d_backward(dy, x, w, (1, 1), pad, None, True, True, dil, tile=tile)
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        assert g.dtype == dtype
        assert_close(g, r, dtype, 9 * w.shape[0] if name == "dx" else dy[:, 0].size,
                     err_msg=name)
    dx, dw, db = wino.conv2d_backward(dy, x, w, (1, 1), pad, n_threads, False, True, dil,
                                      tile=tile)
    assert dx is None and np.array_equal(dw, got[1]) and np.array_equal(db, got[2])
    dx, dw, db = wino.conv2d_backward(dy, x, w, (1, 1), pad, n_threads, True, False, dil,
                                      tile=tile)
    assert np.array_equal(dx, got[0]) and dw is None and db is None


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_public_api_matches_direct(backend, dtype, rng):
    """F.conv2d / conv2d_backward with algo="winograd", both backends, both dtypes."""
    x, w, b, dy = make(rng, dtype, CASES[0])
    y = F.conv2d(x, w, b, 1, 1, algo="winograd", backend=backend)
    assert_close(y, F.conv2d(x, w, b, 1, 1, algo="direct", backend="reference"), dtype, 27)
    got = F.conv2d_backward(dy, x, w, 1, 1, algo="winograd", backend=backend)
    want = F.conv2d_backward(dy, x, w, 1, 1, algo="direct", backend="reference")
    for g, r in zip(got, want):
        assert_close(g, r, dtype, 9 * 4 * 7 * 9)
    for algo in ("winograd", "auto"):            # need_db=False: the same dx, dw bits, no db
        full = F.conv2d_backward(dy, x, w, 1, 1, algo=algo, backend=backend)
        no_db = F.conv2d_backward(dy, x, w, 1, 1, algo=algo, backend=backend, need_db=False)
        assert no_db[2] is None and full[2] is not None
        assert np.array_equal(no_db[0], full[0]) and np.array_equal(no_db[1], full[1])


@pytest.mark.parametrize("backend", ["fast", "reference"])
@pytest.mark.parametrize("algo", ["winograd", "auto", "im2col", "direct"])
def test_backward_through_relu_is_relu_backward_of_dx(algo, backend, dtype, rng):
    """through_relu=True (x a ReLU's output): dx is relu_backward(dx, x) bit for bit, whether
    the Winograd kernel applies the mask as it writes dx or another algorithm after; dw
    and db unchanged. Whole and partial tiles, 16 channels (auto picks Winograd), a NaN
    and an Inf in dy (auto falls back to im2col), -0.0 and NaN in x, "same" padding,
    unbatched x, groups; with and without dw."""
    cases = [((2, 16, 8, 8), 16, 1, 1), ((2, 3, 7, 9), 5, 1, 1), ((1, 4, 6, 6), 8, "same", 1),
             ((2, 4, 9, 9), 6, 1, 2)]
    for i, ((N, C, H, W), K, pad, groups) in enumerate(cases):
        if algo == "winograd" and groups > 1:
            continue
        x = np.maximum(rng.standard_normal((N, C, H, W)), 0).astype(dtype)
        x[0, 0, 0, :3] = (-0.0, np.nan, 0.0)
        w = rng.standard_normal((K, C // groups, 3, 3)).astype(dtype)
        dy = rng.standard_normal((N, K, H, W)).astype(dtype)
        if i == 1:
            dy[1, 2, 3, 4], dy[0, 1, 0, 0] = np.nan, np.inf
        for xs, dys in ((x, dy), (x[0], dy[0])):
            plain = F.conv2d_backward(dys, xs, w, 1, pad, groups=groups, algo=algo,
                                      backend=backend)
            fused = F.conv2d_backward(dys, xs, w, 1, pad, groups=groups, algo=algo,
                                      backend=backend, through_relu=True)
            want = F.relu_backward(plain[0], xs)
            assert fused[0].shape == xs.shape
            np.testing.assert_array_equal(fused[0].view(f"u{dtype().itemsize}"),
                                          want.view(f"u{dtype().itemsize}"))
            np.testing.assert_array_equal(fused[1], plain[1])
            np.testing.assert_array_equal(fused[2], plain[2])
            # dx alone (auto may then run Winograd where the NaN in x sent dW to im2col)
            plain = F.conv2d_backward(dys, xs, w, 1, pad, groups=groups, algo=algo,
                                      backend=backend, need_dw=False)
            fused = F.conv2d_backward(dys, xs, w, 1, pad, groups=groups, algo=algo,
                                      backend=backend, through_relu=True, need_dw=False)
            np.testing.assert_array_equal(fused[0].view(f"u{dtype().itemsize}"),
                                          F.relu_backward(plain[0], xs).view(
                                              f"u{dtype().itemsize}"))


@pytest.mark.parametrize("dilation", [1, 2])
def test_backward_matches_finite_differences(dilation, rng):
    x = rng.standard_normal((2, 2, 5, 6))
    w = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    dy = rng.standard_normal((2, 3, 5, 6))
    d = dilation

    def loss():
        return float(np.sum(F.conv2d(x, w, b, 1, d, d, algo="winograd") * dy))
    dx, dw, db = F.conv2d_backward(dy, x, w, 1, d, d, algo="winograd")
    for got, arr in ((dx, x), (dw, w), (db, b)):
        assert_grad_matches(got, loss, arr)


@pytest.mark.parametrize("tile", TILES)
def test_bitwise_thread_invariant(tile, dtype, rng, monkeypatch):
    """The blocks of tiles, and dW's runs of blocks with their partial sums, depend on the
    shapes only: 1, 2 and 3 threads give the same bits."""
    monkeypatch.setattr(wino, "_DW_GROUPS", 3)      # runs of more than one block, and fewer
    results = {1: [], 2: [], 3: []}                  # runs than threads
    # one block; then 4 (F(4x4)) or 6 (F(2x2)) blocks, dilated
    for case in (((5, 8, 19, 17), 12, (1, 1)), ((8, 16, 40, 36), 16, (2, 2), (2, 2))):
        x, w, b, dy = make(rng, dtype, case)
        _, _, pad, dil = unpack(case)
        for n in results:
            y = wino.conv2d_forward(x, w, b, (1, 1), pad, n, dil, tile=tile)
            results[n] += (y,) + wino.conv2d_backward(dy, x, w, (1, 1), pad, n, True, True, dil,
                                                      tile=tile)
    for n in (2, 3):
        for a, c in zip(results[1], results[n]):
            assert np.array_equal(a, c)
    # dW's partials are added in group order whichever thread adds which slice of the values
    monkeypatch.setattr(wino, "_DW_SLICE", 1000)
    with_slices = wino.conv2d_backward(dy, x, w, (1, 1), pad, 3, True, True, dil, tile=tile)
    assert np.array_equal(with_slices[1], results[1][-2])
    x, w, b, dy = make(rng, dtype, ((5, 8, 19, 17), 12, (1, 1)))
    with fastconv.num_threads(3):
        assert np.array_equal(F.conv2d(x, w, b, 1, 1, algo="winograd"),
                              wino.conv2d_forward(x, w, b, (1, 1), (1, 1), 1))


# The float32 error of each tile size, relative to the largest output, against float64
# truth, on the layer suite's 3x3 stride-1 layers (smaller batches), standard normal data:
# y, dx and dW. The bounds are the ones the reference's docstring states.
BOUND = {2: 2e-6, 4: 3e-5}
SUITE_3X3 = [((4, 16, 32, 32), 16), ((4, 32, 16, 16), 32), ((4, 64, 8, 8), 64),
             ((2, 64, 32, 32), 128)]


@pytest.mark.slow
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("layer", SUITE_3X3, ids=lambda c: f"C{c[0][1]}H{c[0][2]}K{c[1]}")
def test_float32_error_within_the_stated_bound(layer, tile):
    rng = np.random.default_rng(11)
    (N, C, H, W), K = layer
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((K, C, 3, 3))
    dy = rng.standard_normal((N, K, H, W))
    direct = load_kernels("conv_direct")
    y64 = direct.conv2d_forward(x, w, None, (1, 1), (1, 1), 2)
    dx64, dw64, _ = direct.conv2d_backward(dy, x, w, (1, 1), (1, 1), 2)
    x32, w32, dy32 = (a.astype(np.float32) for a in (x, w, dy))

    def rel(got, want):
        return np.abs(got - want).max() / np.abs(want).max()
    assert rel(wino.conv2d_forward(x32, w32, None, (1, 1), (1, 1), 2, tile=tile), y64) < BOUND[tile]
    for got, want in zip(wino.conv2d_backward(dy32, x32, w32, (1, 1), (1, 1), 2, tile=tile),
                         (dx64, dw64)):
        assert rel(got, want) < BOUND[tile]
    assert rel(wino.conv2d_forward(x, w, None, (1, 1), (1, 1), 2, tile=tile), y64) < 1e-12
    for got, want in zip(wino.conv2d_backward(dy, x, w, (1, 1), (1, 1), 2, tile=tile),
                         (dx64, dw64)):
        assert rel(got, want) < 1e-12


def test_bad_arguments_are_rejected(rng):
    x = rng.standard_normal((1, 2, 8, 8))
    for w_shape, stride in (((3, 2, 5, 5), 1), ((3, 2, 3, 3), 2), ((3, 2, 1, 3), 1)):
        w = np.zeros(w_shape)
        for call in (lambda: F.conv2d(x, w, None, stride, 1, algo="winograd"),
                     lambda: F.conv2d_backward(np.zeros((1, 3, 1, 1)), x, w, stride, 1,
                                               algo="winograd")):
            with pytest.raises(ValueError, match="winograd.*3x3 kernel with stride 1"):
                call()
    w = np.zeros((3, 2, 3, 3))
    for impl in (wino, ref_wino):
        with pytest.raises(ValueError, match="tile"):
            impl.conv2d_forward(x, w, None, (1, 1), (1, 1), 1, tile=3)
        with pytest.raises(ValueError, match="3x3 kernel with stride 1"):
            impl.conv2d_forward(x, w, None, (2, 2), (1, 1), 1)
    with pytest.raises(ValueError):                       # dy of the wrong shape
        wino.conv2d_backward(np.zeros((1, 3, 7, 8)), x, w, (1, 1), (1, 1), 1)


def test_auto_picks_winograd_for_wide_3x3_stride_1(rng):
    """auto, forward: Winograd for 3x3 stride-1 layers with >= 16 channels in and out (the
    suite's resnet20_s1-s3, vgg_c3), im2col for narrower ones and other shapes, bitwise the
    result of algo="winograd"; backward likewise; the reference backend keeps im2col."""
    picks = [((8, 16, 32, 32), (16, 16, 3, 3), 1, 1, "winograd"),
             ((8, 64, 8, 8), (64, 64, 3, 3), 1, 1, "winograd"),
             ((8, 64, 32, 32), (128, 64, 3, 3), 1, 0, "winograd"),
             ((8, 8, 32, 32), (8, 8, 3, 3), 1, 1, "im2col"),
             ((8, 4, 32, 32), (64, 4, 3, 3), 1, 1, "im2col"),
             ((8, 16, 32, 32), (32, 16, 3, 3), 2, 1, "im2col"),
             ((8, 16, 32, 32), (16, 16, 5, 5), 1, 2, "im2col")]
    for x_shape, w_shape, s, p, want in picks:
        assert F.choose_conv_algo(x_shape, w_shape, (s, s), (p, p)) == want, (x_shape, w_shape)
        assert F.choose_conv_algo(x_shape, w_shape, (s, s), (p, p), backward=True) == want
        assert F.choose_conv_algo(x_shape, w_shape, (s, s), (p, p), "reference") == "im2col"
    for dilation in ((2, 2), (4, 4), (1, 3)):               # dilated (the suite's atrous_d2, d4)
        for backward in (False, True):
            assert F.choose_conv_algo((8, 64, 32, 32), (64, 64, 3, 3), (1, 1), (2, 2),
                                      backward=backward, dilation=dilation) == "winograd"
        assert F.choose_conv_algo((8, 64, 32, 32), (64, 64, 3, 3), (2, 2), (2, 2),
                                  dilation=dilation) == "im2col"
    x = rng.standard_normal((2, 16, 12, 11)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 16, 12, 11)).astype(np.float32)
    assert np.array_equal(F.conv2d(x, w, None, 1, 2, 2),
                          F.conv2d(x, w, None, 1, 2, 2, algo="winograd"))
    for a, c in zip(F.conv2d_backward(dy, x, w, 1, 2, 2),
                    F.conv2d_backward(dy, x, w, 1, 2, 2, algo="winograd")):
        assert np.array_equal(a, c)
    x = rng.standard_normal((2, 16, 9, 7)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 16, 9, 7)).astype(np.float32)
    assert np.array_equal(F.conv2d(x, w, None, 1, 1), F.conv2d(x, w, None, 1, 1, algo="winograd"))
    for a, c in zip(F.conv2d_backward(dy, x, w, 1, 1),
                    F.conv2d_backward(dy, x, w, 1, 1, algo="winograd")):
        assert np.array_equal(a, c)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["x", "w", "dy"])
def test_auto_keeps_the_formulas_nonfinite_semantics(where, value, dtype, rng):
    """A non-finite value on a shape where auto picks Winograd: the result is the
    formula's (im2col's), NaN and Inf exactly where the reference has them."""
    x = rng.standard_normal((2, 16, 9, 10)).astype(dtype)
    w = rng.standard_normal((16, 16, 3, 3)).astype(dtype)
    dy = rng.standard_normal((2, 16, 9, 10)).astype(dtype)
    index = (1, 3, 2, 1) if where == "w" else (1, 3, 4, 5)
    {"x": x, "w": w, "dy": dy}[where][index] = value
    assert F.choose_conv_algo(x.shape, w.shape, (1, 1), (1, 1)) == "winograd"
    y = F.conv2d(x, w, None, 1, 1)
    assert_close_nonfinite(y, F.conv2d(x, w, None, 1, 1, algo="direct", backend="reference"),
                           dtype, 144, same_kind=False)
    fallback = "winograd" if where == "dy" else "im2col"     # dy is not in the forward pass
    assert np.array_equal(y, F.conv2d(x, w, None, 1, 1, algo=fallback), equal_nan=True)
    got = F.conv2d_backward(dy, x, w, 1, 1)
    want = F.conv2d_backward(dy, x, w, 1, 1, algo="direct", backend="reference")
    for g, r in zip(got, want):
        assert_close_nonfinite(g, r, dtype, 2 * 9 * 10, same_kind=False)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_auto_recomputes_where_a_transform_overflows(rng):
    """Finite float32 inputs near the top of the range: the transforms overflow where the
    formula may not, so auto falls back; the result equals im2col's bit for bit."""
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    x[0, 0, 3, 3] = 3e37
    w = (rng.standard_normal((16, 16, 3, 3)) * 0.01).astype(np.float32)
    assert wino.conv2d_forward(x, w, None, (1, 1), (1, 1), 1, check_finite=True) is None
    assert np.array_equal(F.conv2d(x, w, None, 1, 1), F.conv2d(x, w, None, 1, 1, algo="im2col"),
                          equal_nan=True)


@pytest.mark.parametrize("tile", TILES)
def test_explicit_winograd_confines_nan_to_the_tiles_that_read_it(tile, rng):
    """The documented behaviour of algo="winograd": a NaN in x is NaN wherever the formula
    has it, and only in the output tiles whose (tile+2)^2 input window contains it."""
    m = tile
    x = rng.standard_normal((1, 2, 12, 12))
    w = rng.standard_normal((3, 2, 3, 3))
    x[0, 1, 5, 6] = np.nan
    y = wino.conv2d_forward(x, w, None, (1, 1), (1, 1), 1, tile=m)
    want = np.isnan(ref_direct.conv2d_forward(x, w, None, (1, 1), (1, 1)))
    nan = np.isnan(y)
    assert np.all(nan[want])
    # output tile (i, j) reads input rows i*m - 1 .. i*m + m (padding 1)
    reads = np.zeros_like(nan)
    for i in range(0, 12, m):
        for j in range(0, 12, m):
            if i - 1 <= 5 <= i + m and j - 1 <= 6 <= j + m:
                reads[:, :, i:i + m, j:j + m] = True
    assert not np.any(nan & ~reads)
    assert wino.conv2d_forward(x, w, None, (1, 1), (1, 1), 1, tile=m, check_finite=True) is None


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("case", [CASES[0], CASES[6], CASES[8], CASES[9]], ids=case_id)
def test_kernel_through_relu_masks_dx_as_it_writes(case, tile, dtype, rng):
    """The kernel's through_relu (its scatter applying the ReLU's mask): dx bitwise
    relu_backward of the plain dx, both tile sizes, whole and partial tiles, dilated."""
    (N, C, H, W), K, pad, dil = unpack(case)
    x, w, b, dy = make(rng, dtype, case)
    x = np.maximum(x, 0)
    x.flat[::7] = -0.0
    x.flat[3] = np.nan
    for n in (1, 2):
        plain = wino.conv2d_backward(dy, x, w, (1, 1), pad, n, True, False, dil, tile=tile)[0]
        fused = wino.conv2d_backward(dy, x, w, (1, 1), pad, n, True, False, dil, tile=tile,
                                     through_relu=True)[0]
        want = F.relu_backward(plain, x)
        assert np.array_equal(fused.view(f"u{x.itemsize}"), want.view(f"u{x.itemsize}"))
        assert np.count_nonzero(fused) < np.count_nonzero(plain)


def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 16, 11, 9)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    dy = rng.standard_normal((2, 8, 11, 9)).astype(np.float32)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=1, padding=1)
    yt.backward(torch.tensor(dy))
    assert_close(F.conv2d(x, w, b, 1, 1, algo="winograd"), yt.detach().numpy(), np.float32, 144)
    for g, t in zip(F.conv2d_backward(dy, x, w, 1, 1, algo="winograd"), (xt, wt, bt)):
        assert_close(g, t.grad.numpy(), np.float32, 2 * 99)


_ISA_RUN = """
import sys
import numpy as np
from fastconv._ext import conv_winograd
rng = np.random.default_rng(5)
out = {}
for dtype in (np.float32, np.float64):
    x = rng.standard_normal((2, 16, 13, 11)).astype(dtype)
    w = rng.standard_normal((8, 16, 3, 3)).astype(dtype)
    dy = rng.standard_normal((2, 8, 13, 11)).astype(dtype)
    for m in (2, 4):
        out[f"y{m}{dtype.__name__}"] = conv_winograd.conv2d_forward(x, w, None, (1, 1), (1, 1),
                                                                    1, tile=m)
        dx, dw, _ = conv_winograd.conv2d_backward(dy, x, w, (1, 1), (1, 1), 1, tile=m)
        out[f"dx{m}{dtype.__name__}"], out[f"dw{m}{dtype.__name__}"] = dx, dw
np.savez(sys.argv[1], **out)
"""


def test_every_instruction_set_gives_the_same_answer(tmp_path):
    """The baseline and AVX2 copies of the transforms (FASTCONV_ISA, in a fresh process)
    do the same operations in the same order: in float64, where the products run on BLAS
    either way, the same bits. In float32 the AVX2 level also multiplies with its own
    kernel (fused multiply-adds) instead of BLAS: the same answer to float32 rounding."""
    results = {isa: outputs_with_isa(_ISA_RUN, isa, tmp_path) for isa in ("baseline", "avx2")}
    for key in results["baseline"].files:
        if key.endswith("float64"):
            assert np.array_equal(results["avx2"][key], results["baseline"][key]), key
        else:
            assert_close(results["avx2"][key], results["baseline"][key], np.float32,
                         16 * 9, err_msg=key)
            assert not np.array_equal(results["avx2"][key], np.zeros_like(results["avx2"][key]))
