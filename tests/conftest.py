import importlib

import numpy as np
import pytest

import fastconv


@pytest.fixture
def rng():
    """A fresh, seeded generator per test: failures reproduce."""
    return np.random.default_rng(20261125)


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def n_threads(request):
    """Run the test body with 1 and with 2 threads (restored afterwards)."""
    with fastconv.num_threads(request.param):
        yield request.param


def fast_kernels_built():
    try:
        for name in ("conv_direct", "conv_im2col", "conv_depthwise", "pool", "batchnorm", "activation", "linear"):
            importlib.import_module(f"fastconv._ext.{name}")
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def layer_test_backend():
    """For the layer, model and summary tests: the fast kernels when they are built (quicker),
    else the NumPy reference; one thread, because these tests run many tiny ops (threads and
    the agreement of the backends are tested with the kernels themselves)."""
    with fastconv.use_backend("fast" if fast_kernels_built() else "reference"), \
            fastconv.num_threads(1):
        yield
