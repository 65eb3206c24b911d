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
