"""Batch norm: naive loops vs reference, fast vs reference, gradients, running statistics.

The chain of trust: naive Python loops (below, the formulas written out channel by channel)
are checked on a hand-made example, then check the NumPy reference on tiny shapes; the
reference checks the compiled kernels on a grid of shapes (4-D, BatchNorm1d's (N, C), few
and many channels) and on random ones; finite differences check the backward pass through
the public API; the running statistics follow PyTorch's update; and the fast kernels must
give the same bits on 1 and 2 threads. Formulas: (bn.fwd), (bn.bwd), (bn.run).
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
import fastconv.functional as F
from fastconv.reference import batchnorm as ref
from fastconv.reference.naive import naive_batch_norm
from helpers import ATOL, RTOL, assert_close, assert_close_nonfinite, assert_grad_matches

BACKENDS = ["reference", "fast"]
EPS = 1e-5


# --------------------------------------------------------------------------- naive oracle
# (fastconv.reference.naive: the formulas as explicit loops)

def test_naive_batch_norm_by_hand():
    x = np.array([1., 2., 3., 4.]).reshape(2, 1, 1, 2)        # one channel, M = 4
    dy = np.array([1., 0., 0., 0.]).reshape(x.shape)
    y, mean, var, dx, dgamma, dbeta = naive_batch_norm(x, dy, np.array([2.]), np.array([1.]), 0.0)
    assert mean[0] == 2.5 and var[0] == 1.25                  # biased: sum of squares / 4
    x_hat = (np.array([1., 2., 3., 4.]) - 2.5) / math.sqrt(1.25)
    assert np.allclose(y.ravel(), 2 * x_hat + 1)
    assert dbeta[0] == 1.0 and np.isclose(dgamma[0], x_hat[0])
    # dx sums to 0 (shifting x changes nothing) and is orthogonal to x_hat (nor does scaling)
    assert np.isclose(dx.sum(), 0) and np.isclose(np.dot(dx.ravel(), x_hat), 0)


def test_naive_backward_matches_finite_differences(rng):
    x = rng.standard_normal((3, 2, 2, 2))
    g = rng.standard_normal(x.shape)
    gamma, beta = rng.standard_normal(2), rng.standard_normal(2)
    dx = naive_batch_norm(x, g, gamma, beta, EPS)[3]
    assert_grad_matches(dx, lambda: float(np.sum(naive_batch_norm(x, g, gamma, beta, EPS)[0] * g)),
                        x)


# --------------------------------------------------------------------------- shapes

TINY = [(2, 3, 2, 3), (4, 1, 1, 1), (1, 2, 3, 3), (5, 4, 1, 1), (3, 2, 2, 1)]

GRID = [
    (8, 3, 5, 7),          # odd image
    (1, 4, 6, 6),          # N = 1
    (16, 1, 4, 4),         # C = 1
    (2, 5, 1, 3),          # H = 1
    (4, 6, 17, 9),         # HW not a multiple of the 8 accumulator lanes
    (3, 7, 2, 2),          # tiny image
    (32, 10, 1, 1),        # BatchNorm1d as (N, C, 1, 1)
    (7, 130, 1, 1),        # > 64 channels: several channel blocks on the (N, C) path
    (2, 3, 1, 1),          # M = 2, the smallest batch training accepts
]

# Bigger than the kernels' one-thread grain (32768 values), so 2 threads really run.
THREAD_SHAPES = [(8, 16, 32, 32), (32, 24, 9, 7), (600, 130), (64, 64, 3, 3)]


def make_inputs(rng, dtype, shape, shift=0.0):
    C = shape[1]
    x = (rng.standard_normal(shape) * 2.0 + shift).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    return x, dy, gamma, beta


def shape_id(shape):
    return "x".join(map(str, shape))


# --------------------------------------------------------------------------- reference

@pytest.mark.parametrize("shape", TINY, ids=shape_id)
def test_reference_matches_naive(shape, rng):
    x, dy, gamma, beta = make_inputs(rng, np.float64, shape, shift=1.0)
    y, mean, var, dx, dgamma, dbeta = naive_batch_norm(x, dy, gamma, beta, EPS)
    M = shape[0] * shape[2] * shape[3]
    got = ref.batch_norm_train_forward(x, gamma, beta, EPS)
    for a, b in zip(got, (y, mean, var)):
        assert_close(a, b, reduction=M)
    assert_close(ref.batch_norm_eval_forward(x, gamma, beta, mean, var, EPS), y, reduction=M)
    for a, b in zip(ref.batch_norm_backward(dy, x, gamma, EPS), (dx, dgamma, dbeta)):
        assert_close(a, b, reduction=M)


def test_reference_dtypes(rng):
    x, dy, gamma, beta = make_inputs(rng, np.float32, (4, 3, 2, 2))
    y, mean, var = ref.batch_norm_train_forward(x, gamma, beta, EPS)
    assert y.dtype == np.float32 and mean.dtype == np.float64 and var.dtype == np.float64
    assert all(a.dtype == np.float32 for a in ref.batch_norm_backward(dy, x, gamma, EPS))


# --------------------------------------------------------------------------- fast vs reference

def assert_fast_matches_reference(x, dy, gamma, beta, dtype):
    """Every kernel of the family, fast vs reference, on one (N, C, H, W) input."""
    from fastconv._backend import load_kernels
    fast = load_kernels("batchnorm")
    n_threads = fastconv.get_num_threads()
    M = x.shape[0] * x.shape[2] * x.shape[3]
    want = ref.batch_norm_train_forward(x, gamma, beta, EPS)
    got = fast.batch_norm_train_forward(x, gamma, beta, EPS, n_threads)
    for name, a, b in zip(("y", "mean", "var"), got, want):
        # mean and var are float64 for both dtypes, from float64 sums of the same data
        assert_close(a, b, np.float64 if name != "y" else dtype, reduction=M, err_msg=name)
    mean, var = want[1], want[2] + 0.25
    assert_close(fast.batch_norm_eval_forward(x, gamma, beta, mean, var, EPS, n_threads),
                 ref.batch_norm_eval_forward(x, gamma, beta, mean, var, EPS), dtype)
    # backward with the statistics recomputed, with the ones the forward saved (as the layer
    # passes them), and with other ones (which must be used as given)
    saved = ref.batch_norm_train_forward(x, gamma, beta, EPS)[1:]
    for stats in ((), saved, (saved[0] + 0.1, saved[1] * 1.5)):
        want = ref.batch_norm_backward(dy, x, gamma, EPS, None, *stats)
        got = fast.batch_norm_backward(dy, x, gamma, EPS, n_threads, *stats)
        for name, a, b in zip(("dgamma", "dbeta"), got[1:], want[1:]):
            assert_close(a, b, dtype, reduction=M, err_msg=name)
        # dx = gamma*invstd*dy + (terms that nearly cancel it): its rounding error scales with
        # the size of gamma*invstd*dy, not with dx (which is exactly 0 when M = 2, for example).
        invstd = 1 / np.sqrt((stats or saved)[1] + EPS)
        term = np.max(np.abs(dy * (gamma * invstd)[None, :, None, None]))
        np.testing.assert_allclose(got[0], want[0], rtol=RTOL[dtype],
                                   atol=ATOL[dtype] * np.sqrt(M) * max(1.0, term), err_msg="dx")
        assert got[0].dtype == want[0].dtype


@pytest.mark.parametrize("shape", GRID, ids=shape_id)
def test_fast_matches_reference(shape, dtype, rng, n_threads):
    x, dy, gamma, beta = make_inputs(rng, dtype, shape, shift=0.5)
    assert_fast_matches_reference(x, dy, gamma, beta, dtype)


@pytest.mark.parametrize("shape", [(16, 8, 12, 12), (256, 40)], ids=shape_id)
def test_fast_matches_reference_far_from_zero(shape, rng):
    """|mean| >> std: the two-pass variance keeps its digits (E[x^2] - E[x]^2 would not)."""
    x, dy, gamma, beta = make_inputs(rng, np.float64, shape, shift=1e4)
    x4 = x.reshape(x.shape + (1, 1)) if x.ndim == 2 else x
    assert_fast_matches_reference(x4, dy.reshape(x4.shape), gamma, beta, np.float64)
    y = F.batch_norm(x, gamma, beta, None, None, True, backend="fast")
    x_hat = (y - beta.reshape((1, -1) + (1,) * (x.ndim - 2))) / gamma.reshape((1, -1) + (1,) * (x.ndim - 2))
    axes = (0,) + tuple(range(2, x.ndim))
    assert np.allclose(x_hat.var(axis=axes), 1.0, rtol=1e-4)


@pytest.mark.parametrize("shape", [(16, 8, 12, 12), (256, 40)], ids=shape_id)
@pytest.mark.parametrize("offset", [1e2, 1e4])
def test_fast_matches_reference_first_value_an_outlier(shape, offset, dtype, rng):
    """The fast kernels take their sums shifted by each channel's first value K = x[0, c]
    (one pass instead of two; see _shifted_moments in batchnorm.pyx). The worst case for the
    shift is a K far from the mean, here up to offset / std = 5000 standard deviations."""
    x, dy, gamma, beta = make_inputs(rng, dtype, shape, shift=1.0)
    x4 = x.reshape(x.shape + (1, 1)) if x.ndim == 2 else x
    x4[0, :, 0, 0] += offset
    assert_fast_matches_reference(x4, dy.reshape(x4.shape), gamma, beta, dtype)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 9), C=st.integers(1, 70), H=st.integers(1, 9), W=st.integers(1, 9),
       seed=st.integers(0, 2**32 - 1), double=st.booleans())
def test_fast_matches_reference_random_shapes(N, C, H, W, seed, double):
    if N * H * W < 2:
        H = 2
    dtype = np.float64 if double else np.float32
    x, dy, gamma, beta = make_inputs(np.random.default_rng(seed), dtype, (N, C, H, W), shift=1.0)
    assert_fast_matches_reference(x, dy, gamma, beta, dtype)


@pytest.mark.parametrize("shape", [(6, 5), (40, 70), (3, 4, 5, 6)], ids=shape_id)
def test_functional_fast_matches_reference_2d_and_4d(shape, dtype, rng):
    x, dy, gamma, beta = make_inputs(rng, dtype, shape, shift=0.5)
    M = x.size // shape[1]
    for training in (True, False):
        outs = []
        for backend in BACKENDS:
            rm, rv = np.linspace(-1, 1, shape[1]), np.linspace(0.5, 2, shape[1])
            outs.append((F.batch_norm(x, gamma, beta, rm, rv, training, backend=backend), rm, rv))
        for a, b in zip(*outs):
            assert_close(a, b, a.dtype, reduction=M)
    grads = [F.batch_norm_backward(dy, x, gamma, backend=b) for b in BACKENDS]
    for a, b in zip(*grads):
        assert a.shape == b.shape and a.dtype == dtype
        assert_close(a, b, dtype, reduction=M)


# --------------------------------------------------------------------------- running statistics

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(8, 3, 4, 5), (10, 6)], ids=shape_id)
def test_running_statistics_follow_pytorch(shape, backend, rng):
    """(bn.run): running = (1 - m) * running + m * stat, with the unbiased variance."""
    x, _, gamma, beta = make_inputs(rng, np.float64, shape, shift=3.0)
    axes = (0,) + tuple(range(2, x.ndim))
    M = x.size // shape[1]
    running_mean = rng.standard_normal(shape[1])
    running_var = rng.uniform(0.5, 2.0, shape[1])
    rm, rv = running_mean.copy(), running_var.copy()
    momentum = 0.3
    y = F.batch_norm(x, gamma, beta, rm, rv, True, momentum=momentum, backend=backend)
    mean, var_biased = x.mean(axis=axes), x.var(axis=axes)
    np.testing.assert_allclose(rm, (1 - momentum) * running_mean + momentum * mean, rtol=1e-12)
    np.testing.assert_allclose(
        rv, (1 - momentum) * running_var + momentum * var_biased * M / (M - 1), rtol=1e-12)
    # the output itself uses the BIASED batch variance
    shape_c = (1, -1) + (1,) * (x.ndim - 2)
    want = (x - mean.reshape(shape_c)) / np.sqrt(var_biased.reshape(shape_c) + EPS)
    assert_close(y, want * gamma.reshape(shape_c) + beta.reshape(shape_c), reduction=M)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_mode_uses_running_statistics(backend, dtype, rng):
    x, _, gamma, beta = make_inputs(rng, dtype, (5, 4, 3, 3), shift=2.0)
    rm, rv = np.array([0.5, -1., 2., 0.]), np.array([1., 0.25, 4., 2.])
    before = (rm.copy(), rv.copy())
    y = F.batch_norm(x, gamma, beta, rm, rv, False, backend=backend)
    want = ((x.astype(np.float64) - rm[None, :, None, None]) / np.sqrt(rv + EPS)[None, :, None, None]
            * gamma[None, :, None, None] + beta[None, :, None, None]).astype(dtype)
    assert_close(y, want, dtype)
    assert np.array_equal(rm, before[0]) and np.array_equal(rv, before[1])   # not updated


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_without_running_statistics(backend, rng):
    x, _, gamma, beta = make_inputs(rng, np.float32, (6, 3, 2, 2))
    y = F.batch_norm(x, gamma, beta, None, None, True, backend=backend)
    y2 = F.batch_norm(x, gamma, beta, np.zeros(3, np.float32), np.ones(3, np.float32), True,
                      backend=backend)
    assert np.array_equal(y, y2)
    y3 = F.batch_norm(x, None, None, None, None, True, backend=backend)   # no affine transform
    assert_close(y3.mean(axis=(0, 2, 3)), np.zeros(3, np.float32), reduction=24)


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 2, 3, 4), (5, 3), (2, 2, 1, 3)], ids=shape_id)
def test_backward_matches_finite_differences(shape, backend, rng):
    """dx, dgamma and dbeta of the scalar loss sum(y * g), y = batch_norm in training mode."""
    x, _, gamma, beta = make_inputs(rng, np.float64, shape, shift=0.5)
    g = rng.standard_normal(shape)

    def loss():
        return float(np.sum(F.batch_norm(x, gamma, beta, None, None, True, backend=backend) * g))

    dx, dgamma, dbeta = F.batch_norm_backward(g, x, gamma, backend=backend)
    assert dx.shape == x.shape
    assert_grad_matches(dx, loss, x, err_msg="dx")
    assert_grad_matches(dgamma, loss, gamma, err_msg="dgamma")
    assert_grad_matches(dbeta, loss, beta, err_msg="dbeta")


# --------------------------------------------------------------------------- threads, inputs

@pytest.mark.parametrize("shape", THREAD_SHAPES, ids=shape_id)
def test_fast_is_bitwise_thread_invariant(shape, dtype, rng):
    """Statistics are reduced in an order fixed by the shape: 1 and 2 threads, same bits."""
    x, dy, gamma, beta = make_inputs(rng, dtype, shape, shift=1.0)
    C = shape[1]
    results = []
    for n in (1, 2):
        with fastconv.num_threads(n):
            rm, rv = np.zeros(C), np.ones(C)
            y = F.batch_norm(x, gamma, beta, rm, rv, True, backend="fast")
            y_eval = F.batch_norm(x, gamma, beta, rm, rv, False, backend="fast")
            results.append((y, rm, rv, y_eval) + F.batch_norm_backward(dy, x, gamma, backend="fast"))
    for name, one, two in zip(("y", "running_mean", "running_var", "y_eval", "dx", "dgamma",
                               "dbeta"), *results):
        assert np.array_equal(one, two), f"{name} differs between 1 and 2 threads"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (9, 70)], ids=shape_id)
def test_inputs_are_not_modified_and_may_be_read_only(shape, backend, rng):
    x, dy, gamma, beta = make_inputs(rng, np.float32, shape)
    arrays = (x, dy, gamma, beta)
    copies = [a.copy() for a in arrays]
    want = (F.batch_norm(x, gamma, beta, None, None, True, backend=backend),
            F.batch_norm(x, gamma, beta, np.zeros(shape[1]), np.ones(shape[1]), False,
                         backend=backend)) + F.batch_norm_backward(dy, x, gamma, backend=backend)
    for a in arrays:
        a.flags.writeable = False
    got = (F.batch_norm(x, gamma, beta, None, None, True, backend=backend),
           F.batch_norm(x, gamma, beta, np.zeros(shape[1]), np.ones(shape[1]), False,
                        backend=backend)) + F.batch_norm_backward(dy, x, gamma, backend=backend)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    for a, before in zip(arrays, copies):
        assert np.array_equal(a, before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(6, 3, 5, 4), (20, 7)], ids=shape_id)
def test_saved_statistics(shape, backend, dtype, rng):
    """batch_norm(return_stats=True) gives the batch statistics; batch_norm_backward given
    them matches the backward that recomputes them (the layer passes them, as PyTorch)."""
    x, dy, gamma, beta = make_inputs(rng, dtype, shape, shift=1.0)
    M = x.size // shape[1]
    y, mean, var = F.batch_norm(x, gamma, beta, None, None, True, backend=backend,
                                return_stats=True)
    want_y, want_mean, want_var = ref.batch_norm_train_forward(
        x.reshape(shape[:2] + (-1, 1)), gamma, beta, EPS)
    assert mean.dtype == var.dtype == np.float64
    assert_close(mean, want_mean, np.float64, reduction=M)
    assert_close(var, want_var, np.float64, reduction=M)
    assert_close(y, want_y.reshape(shape), dtype, reduction=M)
    recomputed = F.batch_norm_backward(dy, x, gamma, backend=backend)
    given = F.batch_norm_backward(dy, x, gamma, backend=backend, mean=mean, var=var)
    for a, b in zip(given, recomputed):
        assert_close(a, b, dtype, reduction=M)
    # in eval mode the statistics used are the running ones
    rm, rv = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    _, m_eval, v_eval = F.batch_norm(x, gamma, beta, rm, rv, False, backend=backend,
                                     return_stats=True)
    np.testing.assert_array_equal(m_eval, rm)
    np.testing.assert_array_equal(v_eval, rv)


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_statistics_bad_input(backend):
    x = np.ones((4, 3, 2, 2), np.float32)
    c3 = np.ones(3)
    with pytest.raises(ValueError, match="both"):
        F.batch_norm_backward(x, x, None, backend=backend, mean=c3)
    with pytest.raises(ValueError, match="both"):
        F.batch_norm_backward(x, x, None, backend=backend, var=c3)
    with pytest.raises(ValueError, match=r"var must have shape \(3,\)"):
        F.batch_norm_backward(x, x, None, backend=backend, mean=c3, var=np.ones(2))
    with pytest.raises(TypeError):
        F.batch_norm_backward(x, x, None, backend=backend, mean=c3, var=np.ones(3, np.int64))


def test_kernels_called_directly_reject_inconsistent_shapes():
    """functional.py validates for users; the kernels still guard O(1) shape consistency."""
    from fastconv._backend import load_kernels
    kern = load_kernels("batchnorm")
    x = np.zeros((2, 3, 4, 4))
    c3, c2 = np.ones(3), np.ones(2)
    with pytest.raises(ValueError):
        kern.batch_norm_train_forward(x, c2, c3, EPS, 1)
    with pytest.raises(ValueError):
        kern.batch_norm_eval_forward(x, c3, c3, c3, c2, EPS, 1)
    with pytest.raises(ValueError):
        kern.batch_norm_backward(x[:1], x, c3, EPS, 1)
    with pytest.raises(ValueError):
        kern.batch_norm_backward(x, x, c3, EPS, 1, c3, c2)
    with pytest.raises(ValueError):
        kern.batch_norm_backward(x, x, c3, EPS, 1, c3, None)
    # the wrappers read raw data pointers: dtype, axes and layout are checked before that
    with pytest.raises(TypeError, match="gamma must be a float64 ndarray"):
        kern.batch_norm_train_forward(x, c3.astype(np.float32), c3, EPS, 1)
    with pytest.raises(TypeError, match="x must be a float64 ndarray"):
        kern.batch_norm_train_forward(x.astype(np.int64), c3, c3, EPS, 1)
    with pytest.raises(TypeError, match="beta must be a float64 ndarray"):
        kern.batch_norm_train_forward(x, c3, [1.0, 1.0, 1.0], EPS, 1)
    with pytest.raises(ValueError, match="not C-contiguous"):
        kern.batch_norm_eval_forward(x[:, :, ::2], c3, c3, c3, c3, EPS, 1)
    with pytest.raises(ValueError, match="4 axes"):
        kern.batch_norm_backward(x[0], x, c3, EPS, 1)
    with pytest.raises(TypeError, match="mean must be a float64 ndarray"):
        kern.batch_norm_backward(x, x, c3, EPS, 1, c3.astype(np.float32), c3)
    with pytest.raises(TypeError, match="writeable"):
        kern.running_update(c3.astype(np.int64), None, c3, c3, 0.1, 4)
    with pytest.raises(ValueError, match="channels"):
        kern.running_update(c2.copy(), None, c3, c3, 0.1, 4)


# --------------------------------------------------------------------------- torch (optional)

@pytest.mark.parametrize("shape", [(8, 3, 5, 7), (16, 10), (7, 130, 1, 1)], ids=shape_id)
def test_matches_torch(shape, rng):
    torch = pytest.importorskip("torch")
    x, dy, gamma, beta = make_inputs(rng, np.float64, shape, shift=1.0)
    C = shape[1]
    M = x.size // C
    rm, rv = np.zeros(C), np.ones(C)
    trm, trv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    xt = torch.tensor(x, requires_grad=True)
    gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    yt = torch.nn.functional.batch_norm(xt, trm, trv, gt, bt, training=True, momentum=0.1, eps=EPS)
    yt.backward(torch.tensor(dy))
    y = F.batch_norm(x, gamma, beta, rm, rv, True, momentum=0.1, eps=EPS, backend="fast")
    assert_close(y, yt.detach().numpy(), reduction=M)
    assert_close(rm, trm.numpy(), reduction=M)
    assert_close(rv, trv.numpy(), reduction=M)
    for a, b in zip(F.batch_norm_backward(dy, x, gamma, eps=EPS, backend="fast"),
                    (xt.grad, gt.grad, bt.grad)):
        assert_close(a, b.numpy(), reduction=M)
    y_eval = F.batch_norm(x, gamma, beta, rm, rv, False, eps=EPS, backend="fast")
    yt_eval = torch.nn.functional.batch_norm(torch.tensor(x), trm, trv, torch.tensor(gamma),
                                             torch.tensor(beta), training=False, eps=EPS)
    assert_close(y_eval, yt_eval.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_update_fast_matches_reference(dtype, rng):
    """(bn.run) on strided running statistics, either of them None, both backends alike."""
    from fastconv._backend import load_kernels
    fast = load_kernels("batchnorm")
    mean, var = rng.standard_normal(5), rng.random(5) + 0.5
    for skip in (None, "mean", "var"):
        runs = {}
        for name, impl in (("fast", fast), ("ref", ref)):
            buf_m, buf_v = np.ones(10, dtype), np.full(10, 2.0, dtype)
            impl.running_update(None if skip == "mean" else buf_m[::2],
                                None if skip == "var" else buf_v[::2], mean, var, 0.3, 7)
            runs[name] = (buf_m, buf_v)
        for got, want in zip(runs["fast"], runs["ref"]):
            assert_close(got, want, dtype)
        buf_m, buf_v = runs["fast"]
        assert np.all(buf_m[1::2] == 1) and np.all(buf_v[1::2] == 2)    # the gaps untouched
        if skip != "var":
            assert_close(buf_v[::2], (0.7 * 2 + 0.3 * var * 7 / 6).astype(dtype), dtype)


@pytest.mark.parametrize("shape", [(5, 70, 9, 7), (3, 16, 8, 8), (9, 130, 1, 1), (33, 21)],
                         ids=shape_id)
def test_baseline_and_avx2_kernels_give_the_same_bits(shape, rng):
    """The float32 kernels exist in a baseline (SSE2) and an AVX2 copy, picked at import by
    the CPU; both do the same operations in the same order, so every output is identical."""
    from fastconv._backend import load_kernels
    kern = load_kernels("batchnorm")
    if kern._kernel_isa("avx2") != "avx2":
        kern._kernel_isa("baseline")
        pytest.skip("this CPU or build has no AVX2 copy: only the baseline kernels exist")
    x, dy, gamma, beta = make_inputs(rng, np.float32, shape, shift=0.5)
    x, dy = (a.reshape(a.shape + (1,) * (4 - a.ndim)) for a in (x, dy))     # (N, C) as BN1d
    runs = {}
    try:
        for isa in ("baseline", "avx2"):
            assert kern._kernel_isa(isa) == isa
            y, mean, var = kern.batch_norm_train_forward(x, gamma, beta, EPS, 2)
            runs[isa] = (y, mean, var, kern.batch_norm_eval_forward(x, gamma, beta, mean, var, EPS, 2),
                         *kern.batch_norm_backward(dy, x, gamma, EPS, 2),
                         *kern.batch_norm_backward(dy, x, gamma, EPS, 2, mean, var))
    finally:
        kern._kernel_isa("avx2")
    for a, b in zip(runs["baseline"], runs["avx2"]):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- NaN, Inf, overflow

# As in PyTorch: a channel holding NaN (or +Inf and -Inf, or an Inf, whose x - mean is NaN)
# has a NaN batch variance, NaN outputs and gradients, and passes NaN on to the running
# statistics; the other channels are untouched. Both paths (HW > 1 and BatchNorm1d's rows),
# both dtypes, every kernel, fast == reference.

NONFINITE_SHAPES = [(6, 3, 4, 5), (16, 10, 1, 1), (4, 70, 3, 3), (40, 20, 1, 1)]


def _all_outputs(impl, x, dy, gamma, beta):
    y, mean, var = impl.batch_norm_train_forward(x, gamma, beta, EPS, 1)
    return (y, mean, var, impl.batch_norm_eval_forward(x, gamma, beta, mean, var, EPS, 1),
            *impl.batch_norm_backward(dy, x, gamma, EPS, 1),
            *impl.batch_norm_backward(dy, x, gamma, EPS, 1, mean, var))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["x", "x_first", "dy"])
@pytest.mark.parametrize("shape", NONFINITE_SHAPES, ids=shape_id)
def test_nonfinite_fast_matches_reference(shape, where, value, dtype, rng):
    from fastconv._backend import load_kernels
    fast = load_kernels("batchnorm")
    x, dy, gamma, beta = make_inputs(rng, dtype, shape, shift=0.5)
    target = dy if where == "dy" else x
    target[0 if where == "x_first" else 2, 1].flat[0] = value   # x_first: the row path's shift
    with np.errstate(invalid="ignore", over="ignore"):
        got = _all_outputs(fast, x, dy, gamma, beta)
        want = _all_outputs(ref, x, dy, gamma, beta)
    M = x.size // shape[1]
    # an Inf in dy meets Infs of both signs in dx's sums: NaN or Inf by the order of the sums
    same_kind = not (where == "dy" and np.isinf(value))
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close_nonfinite(a, b, dtype, reduction=M, err_msg=f"output {i}",
                               same_kind=same_kind)
    if where != "dy":                                  # channel 1 is all NaN, the others finite
        y, mean, var = got[:3]
        assert np.isnan(var[1]) and np.isnan(y[:, 1]).all() and np.isnan(got[4][:, 1]).all()
        assert np.isfinite(np.delete(y, 1, axis=1)).all() and np.isfinite(np.delete(var, 1)).all()
        assert mean[1] == value if not np.isnan(value) else np.isnan(mean[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_reaches_the_running_statistics(backend, dtype):
    x = np.array([[1.0, 2.0], [np.nan, 3.0], [3.0, 5.0]], dtype)
    rm, rv = np.zeros(2, dtype), np.ones(2, dtype)
    y = F.batch_norm(x, None, None, rm, rv, True, backend=backend)
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1]).all()
    assert np.isnan(rm[0]) and np.isnan(rv[0]) and np.isfinite(rm[1]) and np.isfinite(rv[1])


@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (16, 10, 1, 1), (64, 9, 1, 1)], ids=shape_id)
def test_float32_values_near_the_largest_float(shape, rng):
    """Values near float32's largest: the variance (~1e76) only exists in double, where the
    statistics are kept, and the outputs are the true normalised values, fast == reference
    (the float32 loops would overflow on x - mean and lose dx's x term, so such channels go
    to the plain double loops). PyTorch keeps its float32 variance, which overflows to Inf:
    its output is beta and its gradient NaN; the running variance (float32) is Inf in both."""
    from fastconv._backend import load_kernels
    fast = load_kernels("batchnorm")
    x, dy, gamma, beta = make_inputs(rng, np.float32, shape)
    x[:, 0] = np.sign(x[:, 0]) * np.float32(0.9) * np.finfo(np.float32).max
    got = _all_outputs(fast, x, dy, gamma, beta)
    want = _all_outputs(ref, x, dy, gamma, beta)
    M = x.size // shape[1]
    for i, (a, b) in enumerate(zip(got, want)):
        assert np.isfinite(a).all(), i
        assert_close(a, b, np.float32, reduction=M, err_msg=f"output {i}")
    y = got[0]
    assert_close(y[:, 0].mean(), np.float32(beta[0]), np.float32, reduction=M)
    rm, rv = np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)
    with np.errstate(over="ignore"):
        F.batch_norm(x.reshape(shape[:2]) if shape[2] == 1 else x, gamma, beta, rm, rv, True,
                     backend="fast")
    assert np.isinf(rv[0]) and np.isfinite(rv[1:]).all()


def test_float64_overflow_is_not_finite(dtype=np.float64):
    """float64 values whose variance overflows: the variance says so (Inf or NaN, not a
    finite number), in both backends, on both paths; the other channel is untouched."""
    from fastconv._backend import load_kernels
    for shape in ((8, 2, 1, 1), (8, 2, 3, 3)):
        x = np.full(shape, 0.9 * np.finfo(np.float64).max)
        x[::2, 0] *= -1
        x[:, 1] = np.arange(shape[0]).reshape(-1, 1, 1)
        g, b = np.ones(2), np.zeros(2)
        with np.errstate(over="ignore", invalid="ignore"):
            got = load_kernels("batchnorm").batch_norm_train_forward(x, g, b, EPS, 1)
            want = ref.batch_norm_train_forward(x, g, b, EPS)
        for out in (got, want):       # (the mean's own overflow depends on the sums' order)
            assert not np.isfinite(out[2][0]) and np.isfinite(out[2][1])
        for a, b_ in zip(got, want):
            assert_close(a[..., 1:2, :, :] if a.ndim == 4 else a[1:], b_[..., 1:2, :, :]
                         if b_.ndim == 4 else b_[1:])


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_matches_torch(value, rng):
    torch = pytest.importorskip("torch")
    for shape in ((8, 3, 5, 7), (16, 10)):
        x, dy, gamma, beta = make_inputs(rng, np.float64, shape)
        x[2, 1] = value
        C = shape[1]
        rm, rv = np.zeros(C), np.ones(C)
        trm, trv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.batch_norm(xt, trm, trv, torch.tensor(gamma),
                                            torch.tensor(beta), training=True, eps=EPS)
        yt.backward(torch.tensor(dy))
        with np.errstate(invalid="ignore"):
            y = F.batch_norm(x, gamma, beta, rm, rv, True, eps=EPS, backend="fast")
            dx = F.batch_norm_backward(dy, x, gamma, eps=EPS, backend="fast")[0]
        M = x.size // C
        assert_close_nonfinite(y, yt.detach().numpy(), reduction=M)
        assert_close_nonfinite(rm, trm.numpy(), reduction=M)
        assert_close_nonfinite(rv, trv.numpy(), reduction=M)
        assert_close_nonfinite(dx, xt.grad.numpy(), reduction=M)


# --------------------------------------------------------------------------- layer options
# PyTorch's BatchNorm options: BatchNorm1d on (N, C, L), momentum=None (a cumulative moving
# average counted by num_batches_tracked), affine=False, track_running_stats=False, and an
# empty batch. Each test checks the rule written out in NumPy (always), then PyTorch itself
# where it is installed.

try:
    import torch
except ImportError:       # the NumPy checks above still run
    torch = None

import fastconv.nn as nn


def _numpy_batch_norm(x, gamma=None, beta=None, eps=EPS):
    """(bn.fwd) over every axis but C, in float64: y, mean, biased var, unbiased var."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=axes), x64.var(axis=axes)
    y = (x64 - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if gamma is not None:
        y = y * gamma.reshape(shape) + beta.reshape(shape)
    M = x.size // x.shape[1]
    return y, mean, var, var * M / max(M - 1, 1)


def _torch_layer(layer):
    """The PyTorch twin of a fastconv BatchNorm layer, same options and state (float64)."""
    cls = getattr(torch.nn, type(layer).__name__)
    t = cls(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
            track_running_stats=layer.track_running_stats, dtype=torch.float64)
    with torch.no_grad():
        for name, value in layer.state_dict().items():
            getattr(t, name).copy_(torch.tensor(value))
    return t.train(layer.training)


def _check_against_torch(layer, t, x, dy):
    """Forward, backward (dx and the parameter gradients) and every buffer, layer vs t."""
    M = max(1, x.size // x.shape[1])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = t(xt)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    y = layer(x)
    assert y.shape == tuple(yt.shape)
    assert_close(y, yt.detach().numpy().astype(x.dtype), x.dtype, reduction=M)
    for p in layer.parameters():
        p.grad[...] = 0
    dx = layer.backward(dy)
    assert_close(dx, xt.grad.numpy().astype(x.dtype), x.dtype, reduction=M)
    if layer.affine:
        assert_close(layer.weight.grad, t.weight.grad.numpy().astype(x.dtype), x.dtype, reduction=M)
        assert_close(layer.bias.grad, t.bias.grad.numpy().astype(x.dtype), x.dtype, reduction=M)
    for name, value in layer.state_dict().items():
        want = getattr(t, name).detach().numpy()
        if value.dtype.kind == "f":
            assert_close(value, want.astype(value.dtype), x.dtype, reduction=M, err_msg=name)
        else:                                   # num_batches_tracked
            assert value.dtype == want.dtype and value == want, name


@pytest.mark.parametrize("shape", [(6, 3, 5), (4, 70, 9), (5, 2, 1), (16, 10, 33)], ids=shape_id)
def test_batchnorm1d_on_sequences(shape, dtype, rng):
    """BatchNorm1d on (N, C, L): statistics over N and L (M = N*L), both backends agree."""
    x, dy, gamma, beta = make_inputs(rng, dtype, shape, shift=0.5)
    want, mean, var, unbiased = _numpy_batch_norm(x, gamma, beta)
    M = shape[0] * shape[2]
    outs = {}
    for backend in BACKENDS:
        rm, rv = np.zeros(shape[1], dtype), np.ones(shape[1], dtype)
        y, m, v = F.batch_norm(x, gamma, beta, rm, rv, True, momentum=0.1, backend=backend,
                               return_stats=True)
        assert y.shape == shape and y.dtype == dtype
        assert_close(y, want.astype(dtype), dtype, reduction=M)
        assert_close(m, mean, np.float64, reduction=M)
        assert_close(v, var, np.float64, reduction=M)
        assert_close(rv, (0.9 + 0.1 * unbiased).astype(dtype), dtype, reduction=M)
        outs[backend] = (y, *F.batch_norm_backward(dy, x, gamma, backend=backend, mean=m, var=v),
                         F.batch_norm(x, gamma, beta, rm, rv, False, backend=backend))
    # the same numbers as BatchNorm2d on (N, C, 1, L), fast == reference
    x4 = x.reshape(shape[0], shape[1], 1, shape[2])
    assert_close(F.batch_norm(x4, gamma, beta, None, None, True).reshape(shape), outs["fast"][0],
                 dtype, reduction=M)
    for a, b in zip(outs["fast"], outs["reference"]):
        assert_close(a, b, dtype, reduction=M)
    layer = nn.BatchNorm1d(shape[1], dtype=dtype)
    layer.weight.data[...], layer.bias.data[...] = gamma, beta
    if torch is not None:
        _check_against_torch(layer, _torch_layer(layer), x, dy)


@pytest.mark.parametrize("cls, shape", [(nn.BatchNorm2d, (4, 3, 2, 5)), (nn.BatchNorm1d, (6, 3)),
                                        (nn.BatchNorm1d, (3, 3, 4))], ids=["2d", "1d", "1d_seq"])
def test_momentum_none_is_a_cumulative_average(cls, shape, rng):
    """momentum=None: at the t-th training batch the weight is 1/t, so the running statistics
    are the plain averages of the batches' mean and unbiased variance (bn.run)."""
    layer = cls(3, momentum=None)
    means, variances = [], []
    for t in range(4):
        x = (rng.standard_normal(shape) * (t + 1) + t).astype(np.float32)
        _, mean, _, unbiased = _numpy_batch_norm(x)
        means.append(mean)
        variances.append(unbiased)
        layer(x)
        assert int(layer.num_batches_tracked) == t + 1
        assert_close(layer.running_mean, np.mean(means, axis=0).astype(np.float32), reduction=24)
        assert_close(layer.running_var, np.mean(variances, axis=0).astype(np.float32), reduction=24)
    layer.eval()
    layer(x)
    assert int(layer.num_batches_tracked) == 4              # eval mode counts nothing
    assert "momentum=None" in repr(layer)
    if torch is not None:
        layer.train()
        x = rng.standard_normal(shape)
        _check_against_torch(layer.to(np.float64), _torch_layer(layer), x,
                             rng.standard_normal(shape))


def test_num_batches_tracked_counts_with_a_momentum_too(rng):
    layer = nn.BatchNorm2d(2)
    for _ in range(3):
        layer(rng.standard_normal((2, 2, 3, 3)).astype(np.float32))
    assert layer.num_batches_tracked.dtype == np.int64 and int(layer.num_batches_tracked) == 3
    assert_close(layer.running_mean.dtype.type(0), np.float32(0))   # still float32 buffers


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_affine_false(training, rng):
    """No gamma and beta: y = x_hat, weight and bias None, nothing else to learn."""
    layer = nn.BatchNorm1d(4, affine=False, dtype=np.float64).train(training)
    assert layer.weight is None and layer.bias is None and layer.parameters() == []
    assert set(layer.state_dict()) == {"running_mean", "running_var", "num_batches_tracked"}
    x, dy = rng.standard_normal((7, 4, 3)), rng.standard_normal((7, 4, 3))
    layer.running_mean[...], layer.running_var[...] = 0.5, 2.0
    y = layer(x)
    if training:
        assert_close(y, _numpy_batch_norm(x)[0])
    else:
        assert_close(y, (x - 0.5) / np.sqrt(2.0 + EPS))
    assert layer.backward(dy).shape == x.shape
    assert fastconv.gradcheck(nn.BatchNorm1d(4, affine=False).train(training), x).ok
    if torch is not None:
        layer.running_mean[...], layer.running_var[...] = 0.5, 2.0
        _check_against_torch(layer, _torch_layer(layer), x, dy)


def test_track_running_stats_false(rng):
    """No running statistics: the three buffers are None, and eval mode normalises with the
    batch's statistics as training does."""
    layer = nn.BatchNorm2d(3, track_running_stats=False, dtype=np.float64)
    assert layer.running_mean is None and layer.running_var is None
    assert layer.num_batches_tracked is None
    assert set(layer.state_dict()) == {"weight", "bias"}
    x, dy = rng.standard_normal((4, 3, 2, 3)), rng.standard_normal((4, 3, 2, 3))
    layer.weight.data[...] = [0.5, 1.0, 2.0]
    y_train = layer(x)
    layer.eval()
    y_eval = layer(x)
    assert np.array_equal(y_train, y_eval)
    assert_close(y_eval, _numpy_batch_norm(x, layer.weight.data, layer.bias.data)[0])
    assert fastconv.gradcheck(layer, x).ok          # eval mode, batch statistics: bn.bwd
    assert "track_running_stats=False" in repr(layer)
    if torch is not None:
        _check_against_torch(layer, _torch_layer(layer), x, dy)


@pytest.mark.parametrize("layer_args, shape", [((nn.BatchNorm2d, 3), (0, 3, 4, 4)),
                                               ((nn.BatchNorm1d, 3), (0, 3)),
                                               ((nn.BatchNorm1d, 3), (0, 3, 5)),
                                               ((nn.BatchNorm2d, 3), (2, 3, 0, 4))],
                         ids=["2d", "1d", "1d_seq", "2d_empty_image"])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_empty_batch(layer_args, shape, momentum, training, layer_test_backend):
    """As PyTorch: an empty output, the running statistics untouched (training still counts
    the batch), dx empty and zero gradients for gamma and beta."""
    cls, C = layer_args
    layer = cls(C, momentum=momentum).train(training)
    layer.running_mean[...], layer.running_var[...] = 0.25, 3.0
    x = np.zeros(shape, np.float32)
    y = layer(x)
    assert y.shape == shape and y.dtype == np.float32
    assert np.all(layer.running_mean == 0.25) and np.all(layer.running_var == 3.0)
    assert int(layer.num_batches_tracked) == int(training)
    dx = layer.backward(y)
    assert dx.shape == shape
    assert np.all(layer.weight.grad == 0) and np.all(layer.bias.grad == 0)
    if torch is not None:
        t = _torch_layer(layer)
        t.num_batches_tracked.zero_()
        layer.num_batches_tracked[...] = 0
        _check_against_torch(layer.to(np.float64), t, x.astype(np.float64), x.astype(np.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_functional(backend):
    x = np.zeros((0, 4, 3, 3), np.float64)
    rm, rv = np.full(4, 0.5), np.full(4, 2.0)
    y, mean, var = F.batch_norm(x, None, None, rm, rv, True, backend=backend, return_stats=True)
    assert y.shape == x.shape and np.all(rm == 0.5) and np.all(rv == 2.0)
    assert np.all(np.isnan(mean)) and np.all(np.isnan(var))     # statistics of no values
    dx, dgamma, dbeta = F.batch_norm_backward(x, x, None, backend=backend, mean=mean, var=var)
    assert dx.shape == x.shape and np.all(dgamma == 0) and np.all(dbeta == 0)
    assert F.batch_norm(x, None, None, rm, rv, False, backend=backend).shape == x.shape
    dx, dgamma, dbeta = F.batch_norm_eval_backward(x, x, None, rm, rv, backend=backend)
    assert dx.shape == x.shape and np.all(dgamma == 0) and np.all(dbeta == 0)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1)], ids=shape_id)
def test_one_value_per_channel_trains_no_statistics(shape):
    """PyTorch's rule: training needs more than one value per channel; eval mode does not."""
    layer = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(3)
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer(np.ones(shape, np.float32))
    assert layer.eval()(np.ones(shape, np.float32)).shape == shape


def test_unsupported_inputs_and_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): x must be \(N, C\) or \(N, C, L\)"):
        nn.BatchNorm1d(3)(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\): x must be \(N, C, H, W\)"):
        nn.BatchNorm2d(3)(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="C = 3"):
        nn.BatchNorm1d(3)(np.zeros((2, 4, 5), np.float32))
    for momentum in (-0.1, 1.5, "0.1"):
        with pytest.raises(ValueError, match="momentum must be a number in"):
            nn.BatchNorm2d(3, momentum=momentum)
    with pytest.raises(ValueError, match="2-D .*3-D .*4-D"):
        F.batch_norm(np.zeros((2, 3, 4, 4, 4)), None, None, None, None, True)


@pytest.mark.parametrize("cls, shape, kwargs", [
    (nn.BatchNorm1d, (5, 3, 4), {}),
    (nn.BatchNorm1d, (6, 2), {"momentum": None}),
    (nn.BatchNorm2d, (3, 2, 2, 3), {"affine": False}),
    (nn.BatchNorm2d, (3, 2, 2, 3), {"track_running_stats": False}),
], ids=["1d_seq", "momentum_none", "affine_false", "no_running_stats"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_options_gradcheck(cls, shape, kwargs, training, rng):
    """Finite differences in float64 through the layer, every option and mode."""
    layer = cls(shape[1], **kwargs).train(training)
    if layer.running_var is not None:
        layer.running_mean[...], layer.running_var[...] = 0.3, 1.7
    report = fastconv.gradcheck(layer, rng.standard_normal(shape) + 0.5)
    assert report.ok, str(report)


def test_num_batches_tracked_in_state_dict_and_checkpoints(tmp_path, rng):
    """Saved, loaded, kept an int64 by to(); a state or checkpoint saved without it (older
    versions) still loads, the counter keeping its value."""
    from fastconv.train import load_checkpoint, save_checkpoint
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=None))
    for _ in range(3):
        model(rng.standard_normal((5, 4)).astype(np.float32))
    state = model.state_dict()
    assert state["1.num_batches_tracked"].dtype == np.int64 and state["1.num_batches_tracked"] == 3
    other = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=None))
    other.load_state_dict(state)
    assert int(other[1].num_batches_tracked) == 3
    other.to(np.float64)
    assert other[1].num_batches_tracked.dtype == np.int64
    assert other[1].running_mean.dtype == np.float64
    old = {k: v for k, v in state.items() if k != "1.num_batches_tracked"}
    fresh = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=None))
    fresh.load_state_dict(old)
    assert int(fresh[1].num_batches_tracked) == 0
    np.testing.assert_array_equal(fresh[1].running_var, state["1.running_var"])
    with pytest.raises(ValueError, match="missing keys"):
        fresh.load_state_dict({k: v for k, v in old.items() if k != "1.running_var"})
    # checkpoints: with the counter, and one written as older versions did (without it)
    save_checkpoint(tmp_path / "new.npz", model)
    fresh = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=None))
    load_checkpoint(tmp_path / "new.npz", fresh)
    assert int(fresh[1].num_batches_tracked) == 3
    del model[1]._buffers["num_batches_tracked"]
    save_checkpoint(tmp_path / "old.npz", model)
    fresh = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=None))
    load_checkpoint(tmp_path / "old.npz", fresh)
    assert int(fresh[1].num_batches_tracked) == 0
    np.testing.assert_array_equal(fresh[1].running_mean, state["1.running_mean"])
