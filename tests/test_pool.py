"""Pooling: naive loops vs reference, fast vs reference, gradients, ties, padding, threads.

The chain of trust: naive Python loops (below, PyTorch's rules written out window by window)
are checked on hand-made examples, then check the NumPy reference on tiny shapes; the
reference checks the compiled kernels on a grid of awkward shapes and on random ones;
finite differences check both backward passes through the public API; and the fast kernels
must give the same bits on 1 and 2 threads. Formulas: (conv.out), (pool.max), (pool.avg).
"""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
import fastconv.functional as F
from fastconv.reference import pool as ref
from fastconv.reference.naive import naive_avg_pool, naive_max_pool
from helpers import assert_close, assert_close_nonfinite, assert_grad_matches

BACKENDS = ["reference", "fast"]


# --------------------------------------------------------------------------- naive oracle
# (fastconv.reference.naive: the formulas as explicit loops)

def test_naive_max_pool_by_hand():
    x = np.array([[[[1., 5., 2.],
                    [4., 3., 0.],
                    [-1., 6., 7.]]]])
    y, dx = naive_max_pool(x, np.ones((1, 1, 2, 2)), (2, 2), (1, 1), (0, 0))
    assert y[0, 0].tolist() == [[5., 5.], [6., 7.]]
    # 5 is the max of two windows: its gradient adds up
    assert dx[0, 0].tolist() == [[0., 2., 0.], [0., 0., 0.], [0., 1., 1.]]


def test_naive_max_pool_ties_go_to_first_cell_and_padding_never_wins():
    x = np.full((1, 1, 4, 4), -3.0)        # all equal and negative, padded with -inf
    y, dx = naive_max_pool(x, np.arange(1., 5.).reshape(1, 1, 2, 2), (3, 3), (2, 2), (1, 1))
    assert np.all(y == -3.0)
    # windows start at rows/cols -1 and 1: their first real cells are (0,0), (0,1), (1,0), (1,1)
    assert dx[0, 0].tolist() == [[1., 2., 0., 0.], [3., 4., 0., 0.], [0.] * 4, [0.] * 4]


def test_naive_avg_pool_by_hand():
    x = np.arange(1., 10.).reshape(1, 1, 3, 3)     # 1..9, padded by one zero on each side
    dy = np.ones((1, 1, 2, 2))
    y, dx = naive_avg_pool(x, dy, (2, 2), (2, 2), (1, 1), count_include_pad=True)
    assert np.allclose(y[0, 0], [[1 / 4, (2 + 3) / 4], [(4 + 7) / 4, (5 + 6 + 8 + 9) / 4]])
    assert np.allclose(dx[0, 0], np.full((3, 3), 1 / 4))
    y, dx = naive_avg_pool(x, dy, (2, 2), (2, 2), (1, 1), count_include_pad=False)
    assert np.allclose(y[0, 0], [[1., 2.5], [5.5, 7.]])
    assert np.allclose(dx[0, 0], [[1., 1 / 2, 1 / 2], [1 / 2, 1 / 4, 1 / 4], [1 / 2, 1 / 4, 1 / 4]])


# --------------------------------------------------------------------------- shapes

# (x shape, kernel_size, stride, padding)
TINY = [
    ((2, 3, 4, 4), (2, 2), (2, 2), (0, 0)),
    ((1, 2, 5, 7), (3, 3), (2, 2), (1, 1)),       # overlapping windows, padding
    ((2, 1, 6, 5), (2, 3), (1, 2), (1, 1)),       # non-square kernel, stride != kernel
    ((1, 2, 7, 7), (2, 2), (3, 3), (0, 0)),       # stride > kernel: rows no window covers
    ((2, 2, 4, 5), (4, 5), (1, 1), (0, 0)),       # global
    ((1, 1, 6, 6), (5, 4), (2, 1), (2, 2)),       # padding k // 2
]

GRID = TINY + [
    ((3, 4, 9, 11), (2, 2), (2, 2), (0, 0)),      # odd sizes: last row/column unused
    ((1, 5, 16, 16), (3, 3), (2, 2), (1, 1)),     # N = 1
    ((4, 1, 13, 10), (3, 3), (1, 1), (1, 1)),     # C = 1, stride 1 (heavy overlap)
    ((2, 3, 12, 9), (3, 2), (2, 3), (1, 1)),
    ((2, 3, 10, 10), (2, 2), (4, 3), (1, 0)),     # stride > kernel
    ((2, 6, 8, 8), (8, 8), (1, 1), (0, 0)),       # global average (window = whole plane)
    ((2, 3, 7, 6), (7, 6), (1, 1), (3, 3)),       # whole-plane window with padding: P, Q > 1
    ((3, 2, 15, 17), (5, 5), (3, 2), (2, 1)),
    ((2, 2, 1, 9), (1, 3), (1, 2), (0, 1)),       # H = 1
]

# Bigger than the kernels' one-thread grain (32768 input values), so 2 threads really run.
THREAD_CASES = [
    ((8, 16, 32, 32), (2, 2), (2, 2), (0, 0)),
    ((4, 24, 23, 21), (3, 3), (2, 2), (1, 1)),
    ((4, 24, 22, 20), (3, 3), (2, 2), (1, 1)),    # even W: the one-loop horizontal pass
    ((16, 64, 8, 8), (8, 8), (1, 1), (0, 0)),
    ((4, 8, 30, 31), (3, 2), (3, 1), (1, 1)),
]


def grid_id(case):
    shape, k, s, p = case
    return "x{}-k{}{}-s{}{}-p{}{}".format("x".join(map(str, shape)), *k, *s, *p)


def out_shape(case):
    (N, C, H, W), (kh, kw), (sh, sw), (ph, pw) = case
    return (N, C, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1)


def make_inputs(rng, dtype, case):
    x = rng.standard_normal(case[0]).astype(dtype)
    dy = rng.standard_normal(out_shape(case)).astype(dtype)
    return x, dy


# --------------------------------------------------------------------------- reference

@pytest.mark.parametrize("case", TINY, ids=grid_id)
def test_reference_max_matches_naive(case, rng):
    x, dy = make_inputs(rng, np.float64, case)
    y_want, dx_want = naive_max_pool(x, dy, *case[1:])
    assert_close(ref.max_pool2d_forward(x, *case[1:]), y_want)
    assert_close(ref.max_pool2d_backward(dy, x, *case[1:]), dx_want)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", TINY, ids=grid_id)
def test_reference_avg_matches_naive(case, count_include_pad, rng):
    x, dy = make_inputs(rng, np.float64, case)
    y_want, dx_want = naive_avg_pool(x, dy, *case[1:], count_include_pad)
    assert_close(ref.avg_pool2d_forward(x, *case[1:], count_include_pad), y_want)
    assert_close(ref.avg_pool2d_backward(dy, x, *case[1:], count_include_pad), dx_want)


def test_reference_keeps_float32(rng):
    case = TINY[1]
    x, dy = make_inputs(rng, np.float32, case)
    outs = [ref.max_pool2d_forward(x, *case[1:]), ref.max_pool2d_backward(dy, x, *case[1:]),
            ref.avg_pool2d_forward(x, *case[1:], True),
            ref.avg_pool2d_backward(dy, x, *case[1:], False)]
    assert all(o.dtype == np.float32 and o.flags.c_contiguous for o in outs)


# --------------------------------------------------------------------------- fast vs reference

def run_all(x, dy, case, backend, count_include_pad=True):
    """Every pooling op on one case through the public API: (y_max, dx_max, y_avg, dx_avg)."""
    _, k, s, p = case
    return (F.max_pool2d(x, k, s, p, backend=backend),
            F.max_pool2d_backward(dy, x, k, s, p, backend=backend),
            F.avg_pool2d(x, k, s, p, count_include_pad, backend=backend),
            F.avg_pool2d_backward(dy, x, k, s, p, count_include_pad, backend=backend))


def assert_fast_matches_reference(x, dy, case, count_include_pad, dtype):
    reduction = case[1][0] * case[1][1]
    fast = run_all(x, dy, case, "fast", count_include_pad)
    want = run_all(x, dy, case, "reference", count_include_pad)
    for name, got, exp in zip(("max y", "max dx", "avg y", "avg dx"), fast, want):
        assert_close(got, exp, dtype, reduction=reduction, err_msg=f"{name} {grid_id(case)}")


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl_pad", "excl_pad"])
@pytest.mark.parametrize("case", GRID, ids=grid_id)
def test_fast_matches_reference(case, count_include_pad, dtype, rng, n_threads):
    x, dy = make_inputs(rng, dtype, case)
    assert_fast_matches_reference(x, dy, case, count_include_pad, dtype)


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    H = draw(st.integers(max(1, kh - 2 * ph), 14))
    W = draw(st.integers(max(1, kw - 2 * pw), 14))
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    return ((N, C, H, W), (kh, kw), (draw(st.integers(1, 4)), draw(st.integers(1, 4))), (ph, pw))


@settings(max_examples=40, deadline=None)
@given(case=pool_cases(), count_include_pad=st.booleans(), seed=st.integers(0, 2**32 - 1),
       double=st.booleans())
def test_fast_matches_reference_random_shapes(case, count_include_pad, seed, double):
    dtype = np.float64 if double else np.float32
    x, dy = make_inputs(np.random.default_rng(seed), dtype, case)
    assert_fast_matches_reference(x, dy, case, count_include_pad, dtype)


# --------------------------------------------------------------------------- ties and padding

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [((2, 3, 6, 6), (2, 2), (2, 2), (0, 0)),
                                  ((1, 2, 7, 7), (3, 3), (2, 2), (1, 1)),
                                  ((1, 2, 6, 8), (3, 3), (2, 2), (1, 1)),   # even W: 1 loop
                                  ((1, 2, 7, 8), (2, 2), (2, 2), (1, 1)),   # split rows, pw 1
                                  ((1, 1, 5, 6), (2, 3), (1, 2), (1, 1))], ids=grid_id)
def test_max_ties_send_gradient_to_first_cell(case, backend, dtype, rng):
    """Constant input: every window's gradient lands on its first real cell (row-major)."""
    x = np.full(case[0], 0.5, dtype)
    dy = rng.standard_normal(out_shape(case)).astype(dtype)
    _, dx_want = naive_max_pool(x.astype(np.float64), dy.astype(np.float64), *case[1:])
    dx = F.max_pool2d_backward(dy, x, *case[1:], backend=backend)
    assert_close(dx, dx_want.astype(dtype), dtype)
    if case[1:] == ((2, 2), (2, 2), (0, 0)):          # tiling windows: the top-left cell
        assert np.array_equal(dx[:, :, ::2, ::2], dy)
        assert np.all(dx[:, :, 1::2, :] == 0) and np.all(dx[:, :, :, 1::2] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_ties_inside_window(backend, dtype):
    """The first of two equal maxima wins, wherever they are in the 2x2 window."""
    for first, second in itertools.combinations(range(4), 2):
        window = np.zeros(4, dtype)
        window[[first, second]] = 1.0
        x = window.reshape(1, 1, 2, 2)
        dx = F.max_pool2d_backward(np.ones((1, 1, 1, 1), dtype), x, 2, backend=backend)
        assert dx.reshape(4).tolist() == [1.0 if i == first else 0.0 for i in range(4)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [((2, 3, 5, 5), (3, 3), (2, 2), (1, 1)),
                                  ((2, 3, 6, 6), (3, 3), (2, 2), (1, 1)),
                                  ((1, 2, 6, 7), (2, 2), (1, 1), (1, 1)),
                                  ((1, 1, 4, 4), (4, 4), (3, 3), (2, 2))], ids=grid_id)
def test_max_padding_never_wins_on_negative_input(case, backend, dtype, rng):
    x = (-1.0 - rng.random(case[0])).astype(dtype)          # all in [-2, -1)
    dy = rng.standard_normal(out_shape(case)).astype(dtype)
    y = F.max_pool2d(x, *case[1:], backend=backend)
    assert np.all(np.isfinite(y)) and np.all(y < -0.5)
    y_want, dx_want = naive_max_pool(x.astype(np.float64), dy.astype(np.float64), *case[1:])
    assert_close(y, y_want.astype(dtype), dtype)
    dx = F.max_pool2d_backward(dy, x, *case[1:], backend=backend)
    assert_close(dx, dx_want.astype(dtype), dtype)
    assert_close(dx.sum(), dy.sum(), dtype, reduction=dy.size)   # no gradient is lost


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_all_minus_infinity_keeps_the_gradient(backend, dtype):
    """Real -inf cells tie with the -inf padding: the gradient goes to the first real cell
    (PyTorch), never to the padding where it would be lost."""
    x = np.full((1, 1, 4, 4), -np.inf, dtype)
    dy = np.arange(1., 5., dtype=dtype).reshape(1, 1, 2, 2)
    assert np.all(F.max_pool2d(x, 3, 2, 1, backend=backend) == -np.inf)
    dx = F.max_pool2d_backward(dy, x, 3, 2, 1, backend=backend)
    assert dx[0, 0].tolist() == [[1., 2., 0., 0.], [3., 4., 0., 0.], [0.] * 4, [0.] * 4]
    # odd W (the fast kernel's row-by-row path) and other windows with padding
    x5 = np.full((1, 1, 4, 5), -np.inf, dtype)
    for k, s, p in ((3, 2, 1), (2, 2, 1), (3, 1, 1), (5, 3, 2)):
        dy5 = np.ones(F.max_pool2d(x5, k, s, p, backend=backend).shape, dtype)
        _, want = naive_max_pool(x5.astype(np.float64), dy5.astype(np.float64), (k, k),
                                 (s, s), (p, p))
        got = F.max_pool2d_backward(dy5, x5, k, s, p, backend=backend)
        assert np.array_equal(got, want.astype(dtype)), (k, s, p)


@pytest.mark.parametrize("backend", BACKENDS)
def test_avg_divisor_rule(backend, dtype):
    """Ones in, so y is the fraction of the divisor's cells that are real."""
    x = np.ones((1, 1, 5, 5), dtype)
    y_in = F.avg_pool2d(x, 3, 2, 1, count_include_pad=True, backend=backend)
    assert_close(y_in[0, 0], np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]], dtype) / 9, dtype)
    y_ex = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False, backend=backend)
    assert_close(y_ex, np.ones_like(y_ex), dtype)


def test_global_average_is_the_plane_mean(dtype, rng):
    x = rng.standard_normal((3, 5, 7, 6)).astype(dtype)
    for backend in BACKENDS:
        y = F.avg_pool2d(x, x.shape[2:], backend=backend)
        assert_close(y, x.mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(dtype),
                     dtype, reduction=42)


# --------------------------------------------------------------------------- gradients

GRAD_CASES = [((2, 2, 7, 6), (3, 3), (2, 2), (1, 1)),     # overlapping windows
              ((1, 2, 6, 7), (2, 3), (1, 2), (1, 1)),
              ((2, 1, 6, 6), (2, 2), (2, 2), (0, 0))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=grid_id)
def test_max_backward_matches_finite_differences(case, backend, rng):
    """Distinct values at least 0.01 apart, so a step of 1e-6 never changes an argmax."""
    x_shape, k, s, p = case
    x = (rng.permutation(int(np.prod(x_shape))) * 0.01).reshape(x_shape).astype(np.float64)
    g = rng.standard_normal(out_shape(case))
    dx = F.max_pool2d_backward(g, x, k, s, p, backend=backend)
    assert_grad_matches(dx, lambda: float(np.sum(F.max_pool2d(x, k, s, p, backend=backend) * g)),
                        x)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=grid_id)
def test_avg_backward_matches_finite_differences(case, backend, count_include_pad, rng):
    x_shape, k, s, p = case
    x = rng.standard_normal(x_shape)
    g = rng.standard_normal(out_shape(case))
    dx = F.avg_pool2d_backward(g, x, k, s, p, count_include_pad, backend=backend)
    assert_grad_matches(
        dx, lambda: float(np.sum(F.avg_pool2d(x, k, s, p, count_include_pad, backend=backend) * g)),
        x)


# --------------------------------------------------------------------------- threads, inputs

@pytest.mark.parametrize("case", THREAD_CASES, ids=grid_id)
def test_fast_is_bitwise_thread_invariant(case, dtype, rng):
    x, dy = make_inputs(rng, dtype, case)
    results = []
    for n in (1, 2):
        with fastconv.num_threads(n):
            results.append(run_all(x, dy, case, "fast", True)
                           + run_all(x, dy, case, "fast", False)[2:])
    for name, one, two in zip(("max y", "max dx", "avg y", "avg dx", "avg y excl", "avg dx excl"),
                              *results):
        assert np.array_equal(one, two), f"{name} differs between 1 and 2 threads"


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_are_not_modified_and_may_be_read_only(backend, rng):
    case = GRID[1]
    x, dy = make_inputs(rng, np.float32, case)
    copies = (x.copy(), dy.copy())
    want = run_all(x, dy, case, backend)
    x.flags.writeable = False
    dy.flags.writeable = False
    for got, exp in zip(run_all(x, dy, case, backend), want):
        assert np.array_equal(got, exp)
    assert np.array_equal(x, copies[0]) and np.array_equal(dy, copies[1])


def test_kernels_called_directly_reject_inconsistent_shapes():
    """functional.py validates for users; the kernels still guard O(1) shape consistency so
    a direct call raises instead of reading or writing out of bounds."""
    from fastconv._backend import load_kernels
    kern = load_kernels("pool")
    x = np.zeros((2, 3, 5, 5))
    with pytest.raises(ValueError):
        kern.max_pool2d_backward(np.zeros((2, 3, 3, 3)), x, (2, 2), (2, 2), (0, 0), 1)
    with pytest.raises(ValueError):
        kern.avg_pool2d_backward(np.zeros((2, 3, 3, 3)), x, (2, 2), (2, 2), (0, 0), True, 1)
    with pytest.raises(ValueError):
        kern.avg_pool2d_forward(x, (8, 8), (1, 1), (0, 0), True, 1)        # window too big
    with pytest.raises(ValueError):
        kern.max_pool2d_forward(x, (2, 2), (2, 2), (2, 2), 1)              # padding > k // 2
    with pytest.raises(ValueError):
        kern.max_pool2d_forward(x, (2, 2), (0, 2), (0, 0), 1)              # stride 0


# --------------------------------------------------------------------------- torch (optional)

@pytest.mark.parametrize("case", GRID[:10], ids=grid_id)
def test_matches_torch(case, rng):
    torch = pytest.importorskip("torch")
    x, dy = make_inputs(rng, np.float64, case)
    _, k, s, p = case
    for cip in (True, False):
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.avg_pool2d(xt, k, s, p, count_include_pad=cip)
        yt.backward(torch.tensor(dy))
        assert_close(F.avg_pool2d(x, k, s, p, cip, backend="fast"), yt.detach().numpy())
        assert_close(F.avg_pool2d_backward(dy, x, k, s, p, cip, backend="fast"), xt.grad.numpy())
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, k, s, p)
    yt.backward(torch.tensor(dy))
    assert_close(F.max_pool2d(x, k, s, p, backend="fast"), yt.detach().numpy())
    assert_close(F.max_pool2d_backward(dy, x, k, s, p, backend="fast"), xt.grad.numpy())


@pytest.mark.parametrize("shape", [(3, 2, 10, 10), (2, 3, 9, 7), (2, 2, 8, 5), (1, 1, 2, 2),
                                   (5, 7, 6, 6), (2, 40, 12, 9), (2, 3, 6, 40), (1, 2, 5, 35),
                                   (1, 1, 4, 64)], ids=str)
def test_max_2x2_one_pass_paths_match_reference(shape, dtype, rng, n_threads):
    """The 2x2 stride-2 kernels: even H runs all planes as one run of row pairs, odd H and
    odd W leave the last row / column out of every window (dx = 0 there); rows of 16
    windows and more (the SIMD copy's vectors, full and cut), ties, zeros of both signs."""
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0, 0, :2] = 1.5                                             # a tie in a window
    x[-1, -1, :2, :2] = [[-0.0, 0.0], [0.0, -0.0]]                   # equal zeros
    if shape[3] >= 4:
        x[-1, 0, :2, 2:4] = [[-1.0, -2.0], [3.0, 3.0]]               # a tie in the bottom row
    y = F.max_pool2d(x, 2, backend="fast")
    np.testing.assert_array_equal(y, F.max_pool2d(x, 2, backend="reference"))
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(F.max_pool2d_backward(dy, x, 2, backend="fast"),
                                  F.max_pool2d_backward(dy, x, 2, backend="reference"))


# --------------------------------------------------------------------------- saved argmaxes

@pytest.mark.parametrize("case", GRID + THREAD_CASES[:2], ids=grid_id)
def test_max_with_indices_fast_matches_reference(case, dtype, rng, n_threads):
    """return_indices gives the same maxima and, exactly, the same argmaxes (flat index in
    the plane, first maximum on ties) in both backends; the backward from them gives the
    gradient of the backward that finds them again (bitwise, in the fast kernels)."""
    x, dy = make_inputs(rng, dtype, case)
    x[..., ::3, 1::2] = x[..., :1, :1]              # ties: equal values across windows
    _, k, s, p = case
    y, idx = F.max_pool2d(x, k, s, p, return_indices=True)
    y_ref, idx_ref = F.max_pool2d(x, k, s, p, return_indices=True, backend="reference")
    assert idx.dtype == np.int64 and idx.shape == y.shape
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(y, F.max_pool2d(x, k, s, p))
    H, W = x.shape[2:]
    assert np.array_equal(np.take_along_axis(x.reshape(*x.shape[:2], H * W),
                                             idx.reshape(*idx.shape[:2], -1), axis=2),
                          y.reshape(*y.shape[:2], -1))          # x at the argmax is the max
    dx = F.max_pool2d_backward(dy, x, k, s, p, indices=idx)
    np.testing.assert_array_equal(dx, F.max_pool2d_backward(dy, x, k, s, p))
    assert_close(F.max_pool2d_backward(dy, x, k, s, p, indices=idx, backend="reference"), dx,
                 dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_backward_rejects_bad_indices(backend):
    x = np.zeros((1, 2, 4, 4))
    dy = np.ones((1, 2, 2, 2))
    _, idx = F.max_pool2d(x, 2, backend=backend, return_indices=True)
    with pytest.raises(TypeError, match="integers"):
        F.max_pool2d_backward(dy, x, 2, backend=backend, indices=idx.astype(float))
    with pytest.raises(ValueError, match="shape"):
        F.max_pool2d_backward(dy, x, 2, backend=backend, indices=idx[:, :1])
    for bad in (16, -1):
        wrong = idx.copy()
        wrong[0, 1, 1, 0] = bad
        with pytest.raises(ValueError, match="outside"):
            F.max_pool2d_backward(dy, x, 2, backend=backend, indices=wrong)


def test_max_pool_layer_keeps_argmaxes_in_training(rng):
    """nn.MaxPool2d keeps the argmaxes in training (not in eval, nor for 2x2 stride 2, whose
    kernels find them again more cheaply); the gradient is the same either way."""
    from fastconv import nn
    x = rng.standard_normal((2, 3, 9, 9))
    for k, s, p, kept in ((3, 2, 1, True), (3, 3, 0, True), (2, 2, 0, False)):
        layer = nn.MaxPool2d(k, s, p)
        y = layer(x)
        assert (layer._indices is not None) == kept
        dy = rng.standard_normal(y.shape)
        np.testing.assert_array_equal(layer.backward(dy), F.max_pool2d_backward(dy, x, k, s, p))
        layer.eval()
        layer(x)
        assert layer._indices is None


def test_max_indices_match_torch(rng):
    torch = pytest.importorskip("torch")
    for case in GRID:
        x, _ = make_inputs(rng, np.float64, case)
        _, k, s, p = case
        _, idx_t = torch.nn.functional.max_pool2d(torch.tensor(x), k, s, p, return_indices=True)
        np.testing.assert_array_equal(F.max_pool2d(x, k, s, p, return_indices=True)[1],
                                      idx_t.numpy(), err_msg=grid_id(case))


# --------------------------------------------------------------------------- NaN and Inf

# PyTorch's rule (its CPU loop: ``if (val > maxval) || isnan(val)`` take val and its index):
# the maximum of a window holding NaN is NaN, its argmax the window's LAST NaN in row-major
# order, and the gradient goes there. Average pooling adds, so NaN and Inf spread as sums do.

@pytest.mark.parametrize("backend", BACKENDS)
def test_max_nan_by_hand(backend, dtype):
    nan = np.nan
    for x, want_idx in (([[1, nan], [2, 3]], 1), ([[nan, 1], [nan, 3]], 2),
                        ([[1, nan], [nan, 3]], 2), ([[nan, nan], [nan, nan]], 3),
                        ([[-np.inf, nan], [np.inf, 3]], 1)):
        x = np.array(x, dtype)[None, None]
        dy = np.array([[[[5.0]]]], dtype)
        y, idx = F.max_pool2d(x, 2, backend=backend, return_indices=True)
        assert np.isnan(F.max_pool2d(x, 2, backend=backend)[0, 0, 0, 0]) and np.isnan(y).all()
        assert idx[0, 0, 0, 0] == want_idx, x
        want_dx = np.zeros(4, dtype)
        want_dx[want_idx] = 5
        for indices in (None, idx):
            dx = F.max_pool2d_backward(dy, x, 2, backend=backend, indices=indices)
            np.testing.assert_array_equal(dx.ravel(), want_dx)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_nan_next_to_padding(backend, dtype):
    """3x3 stride 2 padding 1: NaN in the windows that reach into the padding gives NaN and
    a real index (the reference used to return -1 there, and its backward then refused
    them); PyTorch 2.13 gives these indices."""
    nan = np.nan
    x = np.array([[nan, nan, 2, 3], [nan, 5, 6, 7], [8, 9, 10, 11], [1, 2, 3, 4]],
                 dtype)[None, None]
    y, idx = F.max_pool2d(x, 3, 2, 1, backend=backend, return_indices=True)
    np.testing.assert_array_equal(idx.ravel(), [4, 1, 4, 11])
    np.testing.assert_array_equal(y.ravel(), [nan, nan, nan, 11])
    dy = np.array([1, 2, 4, 8], dtype).reshape(y.shape)
    want = np.zeros(16, dtype)
    np.add.at(want, [4, 1, 4, 11], [1, 2, 4, 8])
    for indices in (None, idx):
        dx = F.max_pool2d_backward(dy, x, 3, 2, 1, backend=backend, indices=indices)
        np.testing.assert_array_equal(dx.ravel(), want)


def _sprinkle(x, rng, values=(np.nan, np.inf, -np.inf), fraction=0.08):
    """x with a fraction of its cells set to NaN, Inf or -Inf (a copy)."""
    x = x.copy()
    hit = rng.random(x.shape) < fraction
    x[hit] = rng.choice(values, size=int(hit.sum()))
    return x


@pytest.mark.parametrize("case", GRID + THREAD_CASES, ids=grid_id)
def test_nonfinite_fast_matches_reference(case, dtype, rng, n_threads):
    """NaN, Inf and -Inf in x and in dy: every path of both ops gives the reference's
    values, the same argmaxes, and the same NaN and Inf."""
    x, dy = make_inputs(rng, dtype, case)
    x = _sprinkle(x, rng)
    dy = _sprinkle(dy, rng, fraction=0.03)
    _, k, s, p = case
    red = k[0] * k[1]
    with np.errstate(invalid="ignore"):
        y, idx = F.max_pool2d(x, k, s, p, return_indices=True)
        y_ref, idx_ref = F.max_pool2d(x, k, s, p, return_indices=True, backend="reference")
        np.testing.assert_array_equal(idx, idx_ref)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(F.max_pool2d(x, k, s, p), y_ref)
        dx_ref = F.max_pool2d_backward(dy, x, k, s, p, backend="reference")
        assert_close_nonfinite(F.max_pool2d_backward(dy, x, k, s, p), dx_ref, dtype, red)
        assert_close_nonfinite(F.max_pool2d_backward(dy, x, k, s, p, indices=idx), dx_ref,
                               dtype, red)
        for cip in (True, False):
            assert_close_nonfinite(F.avg_pool2d(x, k, s, p, cip),
                                   F.avg_pool2d(x, k, s, p, cip, backend="reference"),
                                   dtype, red)
            assert_close_nonfinite(F.avg_pool2d_backward(dy, x, k, s, p, cip),
                                   F.avg_pool2d_backward(dy, x, k, s, p, cip,
                                                         backend="reference"), dtype, red)


@pytest.mark.parametrize("backend", BACKENDS)
def test_avg_nonfinite_by_hand(backend, dtype):
    x = np.array([[1, np.nan, 2, 3], [4, 5, np.inf, 1]], dtype)[None, None]
    y = F.avg_pool2d(x, 2, backend=backend)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == np.inf
    dx = F.avg_pool2d_backward(np.array([[[[np.nan, 4]]]], dtype), x, 2, backend=backend)
    assert np.isnan(dx[..., :2]).all() and (dx[..., 2:] == 1).all()


def test_nonfinite_matches_torch(rng):
    torch = pytest.importorskip("torch")
    for case in GRID:
        x, dy = make_inputs(rng, np.float64, case)
        x, dy = _sprinkle(x, rng), _sprinkle(dy, rng, fraction=0.03)
        _, k, s, p = case
        xt = torch.tensor(x, requires_grad=True)
        yt, it = torch.nn.functional.max_pool2d(xt, k, s, p, return_indices=True)
        yt.backward(torch.tensor(dy))
        y, idx = F.max_pool2d(x, k, s, p, return_indices=True)
        np.testing.assert_array_equal(y, yt.detach().numpy(), err_msg=grid_id(case))
        np.testing.assert_array_equal(idx, it.numpy(), err_msg=grid_id(case))
        assert_close_nonfinite(F.max_pool2d_backward(dy, x, k, s, p), xt.grad.numpy(),
                               reduction=k[0] * k[1], err_msg=grid_id(case))


def test_max_folds_raise_the_invalid_flag():
    """The forward finds NaN through the 'invalid' flag that its plain ``>`` folds raise:
    this build's folds do raise it (else every forward would scan its input)."""
    from fastconv._ext import pool
    assert pool._check_folds_raise_invalid()


@pytest.mark.parametrize("trust_flag", [True, False], ids=["flag", "scan"])
@pytest.mark.parametrize("case", [((1, 2, 6, 38), (2, 2), (2, 2), (0, 0)),
                                  ((1, 2, 7, 37), (2, 2), (2, 2), (0, 0)),   # odd H: planes
                                  ((1, 2, 5, 35), (3, 3), (2, 2), (1, 1)),
                                  ((1, 2, 5, 36), (3, 2), (1, 2), (1, 0)),
                                  ((1, 2, 4, 20), (1, 1), (1, 1), (0, 0))],   # no compares
                         ids=grid_id)
def test_max_forward_one_nan_anywhere(case, trust_flag, dtype, n_threads):
    """One NaN, at every cell in turn (in the vector loops and in their scalar ends): the
    fast forward gives the reference's NaN and values, whether it trusts the flag or scans."""
    from fastconv._ext import pool
    shape, k, s, p = case
    base = np.arange(np.prod(shape), dtype=dtype).reshape(shape) % 7
    try:
        pool._set_folds_raise_invalid(trust_flag)
        for i in range(0, base.size, 3 if base.size > 300 else 1):
            x = base.copy()
            x.flat[i] = np.nan
            with fastconv.num_threads(n_threads):
                y = F.max_pool2d(x, k, s, p)
            np.testing.assert_array_equal(y, F.max_pool2d(x, k, s, p, backend="reference"))
    finally:
        pool._check_folds_raise_invalid()


def test_naive_max_pool_nan_rule():
    """The naive loops follow PyTorch's NaN rule too: NaN wins, the last NaN of the window."""
    x = np.array([[np.nan, 1.0], [np.nan, 3.0]])[None, None]
    y, dx = naive_max_pool(x, np.ones((1, 1, 1, 1)), (2, 2), (2, 2), (0, 0))
    assert np.isnan(y).all()
    np.testing.assert_array_equal(dx.ravel(), [0, 0, 1, 0])
    y_ref = ref.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0))
    assert np.isnan(y_ref).all()


# --------------------------------------------------------------------------- through a ReLU

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [((4, 6, 28, 28), 2, 2, 0), ((3, 16, 10, 10), 2, 2, 0),
                                  ((2, 3, 9, 11), 2, 2, 0), ((2, 3, 10, 10), 3, 2, 1),
                                  ((2, 3, 7, 7), 2, 2, 1), ((1, 2, 8, 8), 3, 1, 0)], ids=str)
@pytest.mark.parametrize("use_indices", [False, True])
def test_max_backward_through_relu_equals_relu_backward(case, use_indices, backend, dtype,
                                                        rng):
    """through_relu=True is relu_backward(max_pool2d_backward(dy, x), x) bit for bit, x a
    ReLU's output with zeros, ties, -0.0, NaN (a NaN plane takes the NaN-aware path) and
    +Inf; on the 2x2 kernels (one pass), the argmax paths and the indices path."""
    shape, k, s, p = case
    z = rng.standard_normal(shape).astype(dtype)
    z[0, 0, :2, :2] = 0.5                    # a tie
    z[0, 1, 0, :3] = [-0.0, 0.0, np.inf]
    z[-1, -1, 1, 1] = np.nan
    x = F.relu(z)
    y, idx = F.max_pool2d(x, k, s, p, return_indices=True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    ind = {"indices": idx} if use_indices else {}
    want = F.relu_backward(F.max_pool2d_backward(dy, x, k, s, p, backend=backend, **ind), x)
    got = F.max_pool2d_backward(dy, x, k, s, p, backend=backend, through_relu=True, **ind)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{got.itemsize}"))
    assert (got[x <= 0] == 0).all() and np.isnan(x).any()


@pytest.mark.parametrize("W", [2, 4, 6, 8, 10, 12, 14, 16, 18, 9])
@pytest.mark.parametrize("H", [10, 7])
@pytest.mark.parametrize("through_relu", [False, True])
def test_max_backward_2x2_every_narrow_width(W, H, through_relu, rng):
    """2x2 stride-2 backward on narrow rows, whose float32 AVX-512 kernel puts the windows
    of several row pairs in one vector (W even, <= 16): every even width up to 16 (and
    wider, and odd), planes stacked or one by one (odd H), a last step with fewer pairs
    (N*C*P not a multiple of the pairs per step), ties, -0.0 and a NaN plane: the same
    bits as the reference."""
    x = rng.standard_normal((3, 7, H, W)).astype(np.float32)
    x[0, 0, :2, :2] = 1.5                                      # a tie
    x[1, 2, 0, :2] = [-0.0, 0.0]
    x[2, 3, 1, 0] = np.nan
    if through_relu:
        x = F.relu(x)
    dy = rng.standard_normal((3, 7, H // 2, W // 2)).astype(np.float32)
    got = F.max_pool2d_backward(dy, x, 2, through_relu=through_relu, backend="fast")
    want = F.max_pool2d_backward(dy, x, 2, through_relu=through_relu, backend="reference")
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
