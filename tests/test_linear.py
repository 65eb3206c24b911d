"""Fully connected layer: fast kernel vs NumPy reference vs PyTorch, gradients by finite
differences, thread invariance, bad input.

(linear.fwd) y = x @ w^T + b;  (linear.bwd) dx = dy @ w, dw = dy^T @ x, db = sum_n dy.
"""
import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from helpers import assert_close, assert_grad_matches, outputs_with_isa

# (N, in, out): LeNet-5's three layers, sizes around the kernels' blocks of 16 and 32 rows,
# single rows and columns
SHAPES = [(64, 400, 120), (64, 120, 84), (64, 84, 10), (1, 7, 3), (33, 5, 17), (17, 1, 1),
          (50, 16, 33)]


def _inputs(rng, dtype, N, I, O):
    x = rng.standard_normal((N, I)).astype(dtype)
    w = rng.standard_normal((O, I)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    dy = rng.standard_normal((N, O)).astype(dtype)
    return x, w, b, dy


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_fast_matches_reference(shape, bias, dtype, rng, n_threads):
    x, w, b, dy = _inputs(rng, dtype, *shape)
    b = b if bias else None
    y = F.linear(x, w, b, backend="fast")
    assert y.dtype == dtype and y.shape == (shape[0], shape[2])
    assert_close(y, F.linear(x, w, b, backend="reference"), dtype, reduction=shape[1])
    got = F.linear_backward(dy, x, w, backend="fast")
    want = F.linear_backward(dy, x, w, backend="reference")
    for g, r, n in zip(got, want, (shape[2], shape[0], shape[0])):
        assert g.dtype == dtype and g.shape == r.shape
        assert_close(g, r, dtype, reduction=n)
    dx, dw, db = F.linear_backward(dy, x, w, backend="fast", need_dx=False)
    assert dx is None
    np.testing.assert_array_equal(dw, got[1])
    np.testing.assert_array_equal(db, got[2])


@pytest.mark.parametrize("shape", [(64, 400, 120), (300, 200, 150), (50, 16, 33)], ids=str)
def test_same_bits_for_any_thread_count(shape, rng):
    x, w, b, dy = _inputs(rng, np.float32, *shape)
    results = []
    for n in (1, 2, 3):
        with fastconv.num_threads(n):
            results.append((F.linear(x, w, b),) + F.linear_backward(dy, x, w))
    for other in results[1:]:
        for a, c in zip(results[0], other):
            np.testing.assert_array_equal(a, c)


def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, w, b, dy = _inputs(rng, np.float64, 9, 13, 5)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(dy))
    assert_close(F.linear(x, w, b, backend="fast"), yt.detach().numpy(), np.float64)
    for g, t in zip(F.linear_backward(dy, x, w, backend="fast"), (xt, wt, bt)):
        assert_close(g, t.grad.numpy(), np.float64)


def test_inputs_untouched_strided_and_readonly(rng):
    x, w, b, dy = _inputs(rng, np.float32, 6, 8, 4)
    xf = np.asfortranarray(x)
    w.flags.writeable = False
    copies = [a.copy() for a in (xf, w, b, dy)]
    assert_close(F.linear(xf, w, b), F.linear(x, w, b, backend="reference"), np.float32)
    F.linear_backward(dy, xf, w)
    for a, c in zip((xf, w, b, dy), copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_bad_input(backend):
    x, w = np.ones((4, 3), np.float32), np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="linear: w has 5 input features"):
        F.linear(x, np.ones((2, 5), np.float32), backend=backend)
    with pytest.raises(ValueError, match="linear: x must be 2-D"):
        F.linear(np.ones((4, 3, 1), np.float32), w, backend=backend)
    with pytest.raises(ValueError, match="linear: b must have shape"):
        F.linear(x, w, np.ones(3, np.float32), backend=backend)
    with pytest.raises(TypeError, match="linear: w has dtype float64"):
        F.linear(x, w.astype(np.float64), backend=backend)
    with pytest.raises(TypeError, match="linear: x must be float32 or float64"):
        F.linear(x.astype(np.int64), w, backend=backend)
    with pytest.raises(ValueError, match="linear_backward: dy must have the output's shape"):
        F.linear_backward(np.ones((4, 3), np.float32), x, w, backend=backend)


def test_kernel_called_directly_rejects_bad_shapes():
    from fastconv._backend import load_kernels
    k = load_kernels("linear")
    with pytest.raises(ValueError, match="linear_forward"):
        k.linear_forward(np.ones((2, 3)), np.ones((4, 5)), None, 1)
    with pytest.raises(ValueError, match="linear_backward"):
        k.linear_backward(np.ones((2, 3)), np.ones((2, 5)), np.ones((4, 5)), 1)
    with pytest.raises(ValueError, match=r"linear_forward: w has 5 inputs, x has 3"):
        k.linear_forward(np.ones((2, 3)), np.ones((4, 5)), None, 1)
    with pytest.raises(ValueError, match=r"linear_forward: b must have shape \(4,\)"):
        k.linear_forward(np.ones((2, 5)), np.ones((4, 5)), np.ones(3), 1)
    with pytest.raises(ValueError, match=r"linear_backward: dy must have shape \(2, 4\), "
                                         r"got \(2, 3\)"):
        k.linear_backward(np.ones((2, 3)), np.ones((2, 5)), np.ones((4, 5)), 1)


def test_calls_blas_follows_the_instruction_set():
    """calls_blas, which decides whether F.linear keeps BLAS on one thread around the
    kernel, says BLAS exactly where the kernel's products run on it: float64 always;
    float32 unless the AVX-512 micro-kernel runs them (a forward of fewer than 16 rows
    runs on BLAS there too)."""
    from fastconv._backend import load_kernels
    k = load_kernels("linear")
    avx512 = load_kernels("_openmp").simd_isa()[0] == "avx512"
    assert k.calls_blas(np.dtype(np.float64), 64, True)
    assert k.calls_blas(np.dtype(np.float64), 64, False)
    assert k.calls_blas(np.dtype(np.float32), 64, True) != avx512
    assert k.calls_blas(np.dtype(np.float32), 1, False) != avx512
    assert k.calls_blas(np.dtype(np.float32), 15, True)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_backward_matches_finite_differences(backend, rng):
    """(linear.bwd) against central differences of sum(linear(x, w, b) * g), float64."""
    x, w, b, g = _inputs(rng, np.float64, 5, 7, 4)
    dx, dw, db = F.linear_backward(g, x, w, backend=backend)

    def loss():
        return float(np.sum(F.linear(x, w, b, backend=backend) * g))

    assert_grad_matches(dx, loss, x, err_msg="dx")
    assert_grad_matches(dw, loss, w, err_msg="dw")
    assert_grad_matches(db, loss, b, err_msg="db")


_LINEAR_RUN = """
import sys
import numpy as np
import fastconv.functional as F
rng = np.random.default_rng(5)
out = {}
for N, I, O in [(64, 400, 120), (33, 5, 17), (300, 200, 150)]:
    x = rng.standard_normal((N, I)).astype(np.float32)
    w = rng.standard_normal((O, I)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    dy = rng.standard_normal((N, O)).astype(np.float32)
    key = f"{N}_{I}_{O}"
    out[key + "_y"] = F.linear(x, w, b, backend="fast")
    out[key + "_dx"], out[key + "_dw"], out[key + "_db"] = F.linear_backward(dy, x, w)
    out[key + "_want_y"] = F.linear(x, w, b, backend="reference")
    (out[key + "_want_dx"], out[key + "_want_dw"],
     out[key + "_want_db"]) = F.linear_backward(dy, x, w, backend="reference")
np.savez(sys.argv[1], **out)
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_every_instruction_set_matches_reference(isa, tmp_path):
    """float32 products run on the AVX-512 micro-kernel where the CPU has it and on BLAS
    elsewhere (FASTCONV_ISA lowers the level, in a fresh process): each against the
    reference."""
    out = outputs_with_isa(_LINEAR_RUN, isa, tmp_path)
    for key in out.files:
        if "_want_" in key:
            continue
        N, I, O = map(int, key.split("_")[:3])
        what = key.split("_")[3]
        reduction = {"y": I, "dx": O, "dw": N, "db": N}[what]
        want = out[key.replace(f"_{what}", f"_want_{what}")]
        assert_close(out[key], want, np.float32, reduction=reduction)


@pytest.mark.parametrize("backend", ["reference", "fast"])
@pytest.mark.parametrize("shape", [(64, 400, 120), (64, 120, 84), (3, 7, 5), (40, 9, 33)],
                         ids=str)
def test_relu_forward_and_backward_through_relu(shape, backend, dtype, rng):
    """linear(relu=True) is relu(linear) and linear_backward(through_relu=True)'s dx is
    relu_backward(dx, x), bit for bit (x a ReLU's output, with zeros, -0.0 and a NaN;
    y with a NaN from it): the blocks of rows, and of columns on the micro-kernel."""
    x, w, b, dy = _inputs(rng, dtype, *shape)
    x = F.relu(x)
    x[0, :2] = [-0.0, 0.0]
    x[-1, -1] = np.nan
    y = F.linear(x, w, b, backend=backend)
    got = F.linear(x, w, b, backend=backend, relu=True)
    np.testing.assert_array_equal(got.view(f"u{got.itemsize}"),
                                  F.relu(y).view(f"u{got.itemsize}"))
    dx, dw, db = F.linear_backward(dy, x, w, backend=backend)
    gdx, gdw, gdb = F.linear_backward(dy, x, w, backend=backend, through_relu=True)
    want = F.relu_backward(dx, x)
    np.testing.assert_array_equal(gdx.view(f"u{gdx.itemsize}"), want.view(f"u{gdx.itemsize}"))
    np.testing.assert_array_equal(gdw, dw)
    np.testing.assert_array_equal(gdb, db)
    assert np.isnan(y[-1]).all() and (gdx[x <= 0] == 0).all()
