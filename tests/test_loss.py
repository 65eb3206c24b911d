"""The softmax cross-entropy kernel (fastconv._ext.loss) against its NumPy twin
(fastconv.reference.loss), through nn.CrossEntropyLoss: value, softmax, gradient, NaN/Inf,
bad labels."""
import numpy as np
import pytest

import fastconv
from fastconv import nn


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-6), (np.float64, 1e-14)])
def test_cross_entropy_kernel_equals_reference(rng, dtype, rtol):
    """The compiled loss (one pass per row) against its NumPy twin: value, softmax and
    gradient, with huge logits, a NaN row and an Inf row among ordinary ones."""
    logits = (rng.standard_normal((70, 10)) * 5).astype(dtype)
    logits[3] *= 1e4
    labels = rng.integers(0, 10, 70)
    got, want = {}, {}
    for backend, out in (("fast", got), ("reference", want)):
        loss = nn.CrossEntropyLoss()
        with fastconv.use_backend(backend):
            out["value"] = loss(logits, labels.astype(np.int32))
            out["grad"] = loss.backward()
    assert got["grad"].dtype == dtype
    assert got["value"] == pytest.approx(want["value"], rel=rtol)
    np.testing.assert_allclose(got["grad"], want["grad"], rtol=rtol, atol=rtol / 70)
    for bad in (np.nan, np.inf):
        z = logits.copy()
        z[5, 2] = bad
        with fastconv.use_backend("fast"):
            loss = nn.CrossEntropyLoss()
            assert np.isnan(loss(z, labels))
            g = loss.backward()
        assert np.isnan(g[5]).all() and np.isfinite(np.delete(g, 5, axis=0)).all()


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_cross_entropy_kernels_called_directly(backend):
    """Both twins: (loss, p) for int64 labels, and a label outside [0, K) refused before
    anything is computed."""
    kernels = fastconv._backend.implementation("loss", backend)
    z = np.array([[0.0, np.log(3.0)], [2.0, 2.0]])
    labels = np.array([1, 0], np.int64)
    loss, p = kernels.cross_entropy_forward(z, labels)
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-15)
    assert loss == pytest.approx((np.log(4 / 3) + np.log(2)) / 2, rel=1e-15)
    np.testing.assert_allclose(kernels.cross_entropy_backward(p, labels),
                               [[0.125, -0.125], [-0.25, 0.25]], rtol=1e-15)
    with pytest.raises(ValueError, match="label"):
        kernels.cross_entropy_forward(z, np.array([0, 2], np.int64))
