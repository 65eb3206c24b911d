"""ReLU's backward pass: fast kernel vs NumPy reference, PyTorch's semantics, bad input.

(relu.bwd): dx = dy where y > 0, else 0 (at 0, and even where dy is NaN, as PyTorch).
"""
import numpy as np
import pytest

import fastconv.functional as F
from fastconv.reference import activation as ref
from helpers import outputs_with_isa

BACKENDS = ["reference", "fast"]
# sizes around the kernel's block of 16384 values, and a 4-D layer output
SHAPES = [(1,), (7,), (16384,), (16385,), (3, 40000), (4, 6, 28, 28)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fast_matches_reference(shape, dtype, rng, n_threads):
    y = np.maximum(rng.standard_normal(shape), 0).astype(dtype)     # a ReLU output: many zeros
    dy = rng.standard_normal(shape).astype(dtype)
    got = F.relu_backward(dy, y, backend="fast")
    want = F.relu_backward(dy, y, backend="reference")
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_semantics_by_hand(backend):
    """dx = dy where y > 0; 0 where y <= 0 (also where dy is NaN or inf), as PyTorch."""
    y = np.array([2.0, 0.0, -1.0, 0.5, 0.0, 3.0], np.float32)
    dy = np.array([1.5, 7.0, 2.0, -4.0, np.nan, np.inf], np.float32)
    np.testing.assert_array_equal(F.relu_backward(dy, y, backend=backend),
                                  np.array([1.5, 0, 0, -4.0, 0, np.inf], np.float32))


def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((5, 7)).astype(np.float32)
    x[0, :3] = 0.0                                                  # the kink
    dy = rng.standard_normal(x.shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    torch.relu(xt).backward(torch.tensor(dy))
    np.testing.assert_array_equal(F.relu_backward(dy, np.maximum(x, 0), backend="fast"),
                                  xt.grad.numpy())


def test_inputs_untouched_and_strided_input(rng):
    y = np.maximum(rng.standard_normal((6, 8)), 0)
    dy = rng.standard_normal((8, 6)).T                              # Fortran order
    y0, dy0 = y.copy(), dy.copy()
    got = F.relu_backward(dy, y, backend="fast")
    np.testing.assert_array_equal(got, ref.relu_backward(np.ascontiguousarray(dy), y))
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(dy, dy0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend):
    y = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="relu_backward: dy must have"):
        F.relu_backward(np.ones((3, 2), np.float32), y, backend=backend)
    with pytest.raises(TypeError, match="relu_backward: dy has dtype float64"):
        F.relu_backward(np.ones((2, 3)), y, backend=backend)
    with pytest.raises(TypeError, match="relu_backward: y must be float32 or float64"):
        F.relu_backward(y, y.astype(np.int32), backend=backend)


def test_kernel_called_directly_rejects_mismatched_lengths():
    from fastconv._backend import load_kernels
    with pytest.raises(ValueError, match="relu_backward"):
        load_kernels("activation").relu_backward(np.ones(3), np.ones(4), 1)


# --------------------------------------------------------------------------- forward (relu.fwd)

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("inplace", [False, True])
def test_forward_fast_matches_reference(shape, inplace, dtype, rng, n_threads):
    x = rng.standard_normal(shape).astype(dtype)
    want = F.relu(x, backend="reference")
    xc = x.copy()
    got = F.relu(xc, inplace=inplace, backend="fast")
    assert got.dtype == dtype and got.shape == shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, np.maximum(x, 0))
    assert (got is xc) == inplace
    if not inplace:
        np.testing.assert_array_equal(xc, x)                        # x untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_semantics_by_hand(backend):
    """max(x, 0); NaN stays NaN and inf stays inf, as np.maximum and PyTorch."""
    x = np.array([2.0, 0.0, -1.0, np.nan, -np.inf, np.inf, -0.0], np.float32)
    np.testing.assert_array_equal(F.relu(x, backend=backend),
                                  np.array([2.0, 0, 0, np.nan, 0, np.inf, 0], np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_strided_and_readonly(backend, rng):
    x = rng.standard_normal((8, 6)).T                               # Fortran order
    x0 = x.copy()
    np.testing.assert_array_equal(F.relu(x, backend=backend), np.maximum(x0, 0))
    np.testing.assert_array_equal(x, x0)
    assert F.relu(x, inplace=True, backend=backend) is x           # copied back in place
    np.testing.assert_array_equal(x, np.maximum(x0, 0))
    r = x0.copy()
    r.flags.writeable = False
    np.testing.assert_array_equal(F.relu(r, backend=backend), np.maximum(x0, 0))
    with pytest.raises(ValueError, match="relu: inplace=True needs a writeable x"):
        F.relu(r, inplace=True, backend=backend)
    with pytest.raises(TypeError, match="relu: x must be float32 or float64"):
        F.relu(np.ones(3, np.int32), backend=backend)


def test_forward_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((5, 7)).astype(np.float32)
    np.testing.assert_array_equal(F.relu(x, backend="fast"), torch.relu(torch.tensor(x)).numpy())


_RELU_RUN = """
import sys
import numpy as np
import fastconv.functional as F
rng = np.random.default_rng(5)
out = {}
for dt in (np.float32, np.float64):
    x = rng.standard_normal(50000).astype(dt)
    x[::97] = np.nan
    x[::89] = -0.0
    dy = rng.standard_normal(50000).astype(dt)
    y = F.relu(x, backend="fast")
    out[dt.__name__ + "_y"] = y
    out[dt.__name__ + "_dx"] = F.relu_backward(dy, y, backend="fast")
    out[dt.__name__ + "_add"] = F.add(x, dy, backend="fast")
    out[dt.__name__ + "_add_relu"] = F.add(x, dy, relu=True, backend="fast")
np.savez(sys.argv[1], **out)
"""


def test_every_instruction_set_gives_the_same_bits(tmp_path):
    """The baseline, AVX2 and AVX-512 copies of the loops (whichever this CPU has), chosen by
    FASTCONV_ISA in a fresh process, give identical outputs."""
    results = {isa: outputs_with_isa(_RELU_RUN, isa, tmp_path)
               for isa in ("baseline", "avx2", "avx512")}
    for isa in ("avx2", "avx512"):
        for key in results["baseline"].files:
            a, b = results[isa][key], results["baseline"][key]
            np.testing.assert_array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"),
                                          err_msg=f"{isa} {key}")          # bit for bit


# --------------------------------------------------------------------------- the residual add (add.fwd)

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_add_fast_matches_reference(shape, relu, inplace, dtype, rng, n_threads):
    a = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape).astype(dtype)
    want = F.add(a, b, relu=relu, backend="reference")
    np.testing.assert_array_equal(want, np.maximum(a + b, 0) if relu else a + b)
    ac = a.copy()
    got = F.add(ac, b, relu=relu, out=ac if inplace else None, backend="fast")
    assert got.dtype == dtype and got.shape == shape and (got is ac) == inplace
    np.testing.assert_array_equal(got, want)
    if not inplace:
        np.testing.assert_array_equal(ac, a)                        # a untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_semantics_by_hand(backend):
    """IEEE sums (inf - inf is NaN); with relu, NaN stays NaN and -0 gives +0, as relu."""
    a = np.array([1.0, -3.0, np.inf, np.nan, -0.0, 2.0], np.float32)
    b = np.array([2.0, 1.0, -np.inf, 1.0, 0.0, -2.0], np.float32)
    np.testing.assert_array_equal(F.add(a, b, backend=backend),
                                  np.array([3.0, -2.0, np.nan, np.nan, 0.0, 0.0], np.float32))
    got = F.add(a, b, relu=True, backend=backend)
    np.testing.assert_array_equal(got, np.array([3.0, 0, np.nan, np.nan, 0, 0], np.float32))
    assert not np.signbit(got[4:]).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_aliasing_strides_and_bad_input(backend, rng):
    a = rng.standard_normal((8, 6)).T                               # Fortran order
    a0 = a.copy()
    np.testing.assert_array_equal(F.add(a, a, backend=backend), 2 * a0)
    with pytest.raises(ValueError, match="add: out=a needs a writeable, C-contiguous a"):
        F.add(a, a0, out=a, backend=backend)
    c = a0.copy(order="C")
    assert F.add(c, c, out=c, backend=backend) is c                 # b is a: read before written
    np.testing.assert_array_equal(c, 2 * a0)
    with pytest.raises(ValueError, match="add: a and b must have one shape"):
        F.add(np.ones((2, 3)), np.ones(3), backend=backend)         # no broadcasting
    with pytest.raises(ValueError, match="add: out must be None or a itself"):
        F.add(c, c, out=c.copy(), backend=backend)
    with pytest.raises(TypeError, match="add: b has dtype float32"):
        F.add(c, c.astype(np.float32), backend=backend)


def test_add_kernel_called_directly_rejects_mismatched_lengths():
    from fastconv._backend import load_kernels
    with pytest.raises(ValueError, match="add_forward"):
        load_kernels("activation").add_forward(np.ones(3), np.ones(4), np.ones(3), True, 1)
