"""The LR range test's suggestions: robust to the noisy first steps and to single spikes, and
on real data they land where training works."""
import numpy as np
import pytest

import fastconv
from fastconv.data import DataLoader, Normalize, load_dataset
from fastconv.models import get_model
from fastconv.optim import make_optimizer
from fastconv.schedules import LRFinderResult, lr_find, make_schedule
from fastconv.train import fit


def _curve(n=300, seed=0, spike_at=None):
    """A range test as it looks: flat initial loss plus noise, a fall over one decade, then
    an explosion; the very first raw losses dip by chance (what fooled the old rule)."""
    rng = np.random.default_rng(seed)
    lrs = 1e-6 * (1e7) ** (np.arange(n) / (n - 1))
    x = np.log10(lrs)
    loss = 2.3 - 1.2 / (1 + np.exp(-(x + 1.5) * 6)) + np.where(x > -0.5, 8 * (x + 0.5) ** 2, 0)
    loss = loss + rng.normal(0, 0.03, n)
    loss[1:4] -= 0.4                                        # noise at the start
    if spike_at is not None:
        loss[np.argmin(abs(x - np.log10(spike_at)))] -= 0.8  # one lucky batch
    smoothed = np.copy(loss)
    return lrs, loss, smoothed


def test_suggestions_skip_the_noisy_start():
    lrs, loss, smoothed = _curve()
    r = LRFinderResult(lrs, loss, smoothed)
    # the fall is centred at 10^-1.5 = 0.032; the lowest loss is near 0.1-0.3
    assert 0.01 < r.steepest < 0.08, r
    assert r.suggestion == r.steepest
    assert 0.005 < r.min_div_10 < 0.05, r


def test_a_single_spike_does_not_decide():
    lrs, loss, smoothed = _curve(spike_at=0.15)
    r = LRFinderResult(lrs, loss, smoothed)
    assert 0.01 < r.steepest < 0.08, r


def test_no_fall_no_suggestion():
    lrs = np.logspace(-6, 1, 100)
    loss = 2.3 + np.random.default_rng(1).normal(0, 0.02, 100)
    r = LRFinderResult(lrs, loss, loss)
    assert np.isnan(r.steepest) and np.isnan(r.min_div_10)


def test_plot_takes_the_result_and_keeps_a_sensible_axis(tmp_path):
    pytest.importorskip("matplotlib")
    from fastconv.viz import plot_lr_find
    lrs, loss, smoothed = _curve()
    loss[-5:] = [50, 200, 1000, 5000, np.inf]              # the explosion at the end
    r = LRFinderResult(lrs, loss, smoothed)
    fig = plot_lr_find(r, path=tmp_path / "lr.png")         # the result alone is enough
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert 0 <= low < 1.2 and 2.3 < high < 4, (low, high)   # no negative losses, no 5000
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("steepest fall") for t in labels)
    assert any(t.startswith("minimum / 10") for t in labels)
    assert (tmp_path / "lr.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def subset():
    return load_dataset("fashion-mnist-subset")


def _loader(ds, seed):
    return DataLoader(ds.x_train, ds.y_train, 64, shuffle=True, seed=seed, drop_last=True,
                      normalize=Normalize(ds.mean, ds.std), dtype=np.float32)


def _sgd(model, lr):
    return make_optimizer("sgd", model.parameters(), lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)


def test_suggestion_trains_lenet5_on_the_embedded_subset(subset):
    """What `fastconv train --lr-find` does on the embedded subset, then one epoch of training
    at the suggested LR: it learns, where a tenth of the LR range's start does not."""
    with fastconv.num_threads(1):
        train = _loader(subset, seed=0)
        test = DataLoader(subset.x_test, subset.y_test, 1000, normalize=Normalize(subset.mean, subset.std),
                          dtype=np.float32)
        model = get_model("lenet5", seed=0)
        r = lr_find(model, train, _sgd(model, 0.05), start_lr=1e-6, num_steps=300, verbose=False)
        assert 3e-3 < r.steepest < 0.3, r
        assert 1e-3 < r.min_div_10 < r.steepest, r
        accuracy = {}
        for lr in (r.steepest, 1e-4):
            model = get_model("lenet5", seed=0)
            hist = fit(model, train, _sgd(model, lr), 1, make_schedule("onecycle", lr, 1, len(train)),
                       test_loader=test, progress=False, log=None)
            accuracy[lr] = hist["test_acc"][-1]
    assert accuracy[r.steepest] > 0.6, accuracy
    assert accuracy[1e-4] < 0.4, accuracy
