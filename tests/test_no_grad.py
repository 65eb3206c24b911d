"""fastconv.no_grad: a forward that keeps nothing for backward (PyTorch's torch.no_grad).

The same outputs bit for bit (every model, eval and training mode, BN's running statistics
too), no cached arrays left in any layer, a clear RuntimeError from every layer's backward
after such a forward (or before any), and the grad mode itself: restored on exit and on an
exception, nested, as a decorator, per thread.
"""
import threading

import numpy as np
import pytest

import fastconv
from fastconv import nn
from fastconv.models import MODELS, get_model


def cached_arrays(model):
    """(layer name, attribute) of every array a layer keeps for backward."""
    return [(name, attr) for name, m in model.named_modules()
            for attr in ("_x", "_y", "_indices", "_mask")
            if isinstance(getattr(m, attr, None), np.ndarray)]


@pytest.mark.parametrize("name", MODELS)
def test_models_give_the_same_bits_and_keep_nothing(name, rng):
    model = get_model(name, in_channels=3, input_size=32, seed=0)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    model.eval()
    want = model(x)
    assert cached_arrays(model)                  # outside no_grad the layers keep arrays
    with fastconv.no_grad():
        got = model(x)
    np.testing.assert_array_equal(got, want)
    assert cached_arrays(model) == []
    with pytest.raises(RuntimeError, match="no forward pass to go back through"):
        model.backward(np.ones_like(got))
    model(x)                                     # a forward outside: backward works again
    assert model.backward(np.ones_like(want)).shape == x.shape


@pytest.mark.parametrize("name", ["resnet20", "lenet5", "googlenet"])
def test_training_mode_forward_is_unchanged(name, rng):
    """BN normalises with the batch and updates its running statistics as outside."""
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    outside, inside = (get_model(name, in_channels=3, input_size=32, seed=0) for _ in range(2))
    want = outside(x)
    with fastconv.no_grad():
        got = inside(x)
    np.testing.assert_array_equal(got, want)
    for (n, a), (_, b) in zip(outside.state_dict().items(), inside.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=n)


LAYERS = [
    (lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 2, 5, 5)),
    (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2), (2, 2, 4, 4)),
    (lambda: nn.Linear(4, 3), (2, 4)),
    (lambda: nn.BatchNorm2d(2), (3, 2, 4, 4)),
    (lambda: nn.BatchNorm1d(4), (3, 4)),
    (nn.ReLU, (2, 5)), (nn.Sigmoid, (2, 5)), (nn.Tanh, (2, 5)), (nn.Softmax, (2, 5)),
    (lambda: nn.MaxPool2d(2), (1, 2, 4, 4)),
    (lambda: nn.MaxPool2d(3, stride=1, padding=1), (1, 2, 4, 4)),
    (lambda: nn.AvgPool2d(2), (1, 2, 4, 4)),
    (nn.GlobalAvgPool2d, (1, 2, 4, 4)),
    (lambda: nn.AdaptiveAvgPool2d(2), (1, 2, 5, 5)),
    (lambda: nn.AdaptiveMaxPool2d(2), (1, 2, 5, 5)),
]


@pytest.mark.parametrize("make, shape", LAYERS)
def test_every_layer_refuses_backward_without_a_kept_forward(make, shape, rng):
    layer = make()
    x = rng.standard_normal(shape).astype(np.float32)
    dy = np.ones_like(make()(x))
    with pytest.raises(RuntimeError, match=f"{type(layer).__name__}.backward: no forward"):
        layer.backward(dy)                         # no forward yet: the same message
    y = layer(x)
    layer.backward(np.ones_like(y))
    with fastconv.no_grad():
        y = layer(x)
    with pytest.raises(RuntimeError, match="outside fastconv.no_grad"):
        layer.backward(np.ones_like(y))


def test_losses_refuse_too(rng):
    logits = rng.standard_normal((4, 3))
    for loss, target in ((nn.CrossEntropyLoss(), np.array([0, 2, 1, 1])),
                         (nn.MSELoss(), rng.standard_normal((4, 3)))):
        value = loss(logits, target)
        want = loss.backward()
        with fastconv.no_grad():
            assert loss(logits, target) == value
        with pytest.raises(RuntimeError, match=f"{type(loss).__name__}.backward: no forward"):
            loss.backward()
        loss(logits, target)
        np.testing.assert_array_equal(loss.backward(), want)


def test_fused_neighbours_refuse_too(rng):
    """A ReLU followed by a layer that fuses its backward (whose caches are both None)."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 2))
    x = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    with fastconv.no_grad():
        y = net(x)
    with pytest.raises(RuntimeError, match="no forward pass"):
        net.backward(np.ones_like(y))


def test_grad_mode_is_restored_nested_and_per_thread():
    assert fastconv.is_grad_enabled()
    with fastconv.no_grad():
        assert not fastconv.is_grad_enabled()
        with fastconv.no_grad():
            assert not fastconv.is_grad_enabled()
        assert not fastconv.is_grad_enabled()     # the inner exit restores the outer's
        seen = []
        thread = threading.Thread(target=lambda: seen.append(fastconv.is_grad_enabled()))
        thread.start()
        thread.join()
        assert seen == [True]                     # another thread keeps its own mode
    assert fastconv.is_grad_enabled()
    with pytest.raises(ZeroDivisionError):
        with fastconv.no_grad():
            1 / 0
    assert fastconv.is_grad_enabled()

    @fastconv.no_grad()
    def inside(a):
        """docstring kept"""
        return fastconv.is_grad_enabled(), a

    assert inside(5) == (False, 5) and inside.__doc__ == "docstring kept"
    assert fastconv.is_grad_enabled()
    assert nn.no_grad is fastconv.no_grad
