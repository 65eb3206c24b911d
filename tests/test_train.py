"""The training loop: learning, determinism, checkpoints and resuming."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv.data import DataLoader, Normalize, load_dataset
from fastconv.nn import CrossEntropyLoss, Module, Parameter
from fastconv.optim import SGD, Adam
from fastconv.schedules import OneCycleLR
from fastconv.train import (CheckpointError, evaluate, fit, latest_checkpoint, load_checkpoint,
                            new_run_folder, read_checkpoint, save_checkpoint, write_history)


class TinyMLP(Module):
    """784 -> 32 -> ReLU -> Dropout(0.2) -> 10, written here with NumPy so these tests check
    the loop alone. It holds a random Generator (its dropout masks) like fastconv.nn.Dropout,
    so resuming must restore that generator's state too."""

    def __init__(self, seed=0, hidden=32):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w1 = Parameter((rng.standard_normal((784, hidden)) / 28).astype(np.float32))
        self.b1 = Parameter(np.zeros(hidden, np.float32))
        self.w2 = Parameter((rng.standard_normal((hidden, 10)) / np.sqrt(hidden)).astype(np.float32))
        self.b2 = Parameter(np.zeros(10, np.float32))
        self.rng = np.random.default_rng(seed + 1)

    def forward(self, x):
        self.x = x.reshape(len(x), -1)
        self.h = np.maximum(self.x @ self.w1.data + self.b1.data, 0)
        self.mask = ((self.rng.random(self.h.shape) > 0.2) / 0.8).astype(np.float32) \
            if self.training else np.ones_like(self.h)
        self.hd = self.h * self.mask
        return self.hd @ self.w2.data + self.b2.data

    def backward(self, dy):
        self.w2.grad += self.hd.T @ dy
        self.b2.grad += dy.sum(0)
        dh = (dy @ self.w2.data.T) * self.mask * (self.h > 0)
        self.w1.grad += self.x.T @ dh
        self.b1.grad += dh.sum(0)
        return None


@pytest.fixture(scope="module")
def subset():
    return load_dataset("fashion-mnist-subset")


def _loaders(ds, n_train=1024, batch_size=64, seed=0):
    norm = Normalize(ds.mean, ds.std)
    train = DataLoader(ds.x_train[:n_train], ds.y_train[:n_train], batch_size, shuffle=True,
                       seed=seed, drop_last=True, normalize=norm)
    test = DataLoader(ds.x_test, ds.y_test, 1000, normalize=norm)
    return train, test


def _run(ds, epochs=2, checkpoint=None, resume=None, stop_after=None):
    model = TinyMLP()
    train, test = _loaders(ds)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = OneCycleLR(0.1, epochs * len(train))
    hist = fit(model, train, opt, stop_after or epochs, sched, test_loader=test,
               checkpoint=checkpoint, resume=resume, progress=False, log=None)
    return model, opt, hist


def test_tiny_model_learns(subset):
    model, _, hist = _run(subset, epochs=2)
    assert hist["epoch"] == [1, 2]
    assert hist["train_loss"][1] < hist["train_loss"][0]
    assert hist["test_acc"][-1] > 0.70
    loss, acc = evaluate(model, _loaders(subset)[1])
    assert acc == hist["test_acc"][-1] and loss == pytest.approx(hist["test_loss"][-1])
    assert model.training       # evaluate restores the mode


def test_same_seed_same_result(subset):
    a, _, ha = _run(subset, epochs=1)
    b, _, hb = _run(subset, epochs=1)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert ha["train_loss"] == hb["train_loss"]


def test_resume_equals_uninterrupted(subset, tmp_path):
    """Stop after epoch 1 (as Ctrl-C would), resume from the checkpoint: bitwise the same run."""
    full, full_opt, full_hist = _run(subset, epochs=3)
    ck = tmp_path / "ck.npz"
    _run(subset, epochs=3, checkpoint=ck, stop_after=1)
    assert read_checkpoint(ck)["epoch"] == 1
    resumed, resumed_opt, hist = _run(subset, epochs=3, checkpoint=ck, resume=ck)
    for (name, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert hist["epoch"] == [1, 2, 3]
    assert hist["test_acc"] == full_hist["test_acc"]
    assert hist["step_loss"] == full_hist["step_loss"] and hist["step"] == full_hist["step"]
    assert resumed_opt.step_count == full_opt.step_count
    assert read_checkpoint(ck)["epoch"] == 3


def test_checkpoint_round_trip(tmp_path, subset):
    model, opt, hist = _run(subset, epochs=1)
    path = tmp_path / "sub" / "ck.npz"
    save_checkpoint(path, model, opt, epoch=1, history=hist, meta={"note": "hi"})
    assert os.listdir(path.parent) == ["ck.npz"]          # no temporary file left behind
    with np.load(path, allow_pickle=False) as f:           # plain arrays: loads without pickle
        assert "model/w1" in f.files and "optim/momentum_buffer.0" in f.files
    other = TinyMLP(seed=5)
    other_opt = SGD(other.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    epoch, hist2, meta = load_checkpoint(path, other, other_opt)
    assert epoch == 1 and meta == {"note": "hi"} and hist2["test_acc"] == hist["test_acc"]
    for (name, p), (_, q) in zip(model.named_parameters(), other.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert other.rng.bit_generator.state == model.rng.bit_generator.state
    assert other_opt.state_dict().keys() == opt.state_dict().keys()


def test_truncated_checkpoint(tmp_path, subset):
    model = TinyMLP()
    path = tmp_path / "ck.npz"
    save_checkpoint(path, model, epoch=0)
    data = path.read_bytes()
    for cut in (len(data) // 2, 10, 0):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            load_checkpoint(bad, model)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.npz", model)
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a fastconv checkpoint"):
        load_checkpoint(tmp_path / "plain.npz", model)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz", model)


def test_wrong_shape_checkpoint(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, TinyMLP(hidden=16), SGD(TinyMLP(hidden=16).parameters(), 0.1), epoch=2)
    model = TinyMLP(hidden=32)
    before = model.w1.data.copy()
    with pytest.raises(CheckpointError, match=r"w1 has shape \(784, 16\) in the checkpoint but \(784, 32\)"):
        load_checkpoint(path, model)
    np.testing.assert_array_equal(model.w1.data, before)    # nothing was changed
    small = TinyMLP(hidden=16)
    with pytest.raises(CheckpointError, match="holds SGD state, not Adam"):
        load_checkpoint(path, small, Adam(small.parameters()))

    class Other(Module):
        def __init__(self):
            super().__init__()
            self.weight = Parameter(np.zeros(3))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path, Other())


def test_interrupt_keeps_last_checkpoint(tmp_path, subset):
    """Ctrl-C in the middle of epoch 2 leaves epoch 1's checkpoint, complete and loadable."""
    model = TinyMLP()
    train, _ = _loaders(subset, n_train=512)
    opt = SGD(model.parameters(), lr=0.05)
    calls = {"n": 0}
    original_step = opt.step

    def step():
        calls["n"] += 1
        if calls["n"] == len(train) + 3:          # a few batches into the second epoch
            raise KeyboardInterrupt
        original_step()
    opt.step = step
    ck = tmp_path / "ck.npz"
    with pytest.raises(KeyboardInterrupt):
        fit(model, train, opt, 5, checkpoint=ck, progress=False, log=None)
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]
    assert load_checkpoint(ck, TinyMLP())[0] == 1


@pytest.mark.slow
def test_lenet5_on_embedded_subset(subset):
    """The real thing: LeNet-5 (fast kernels), 2 epochs on 3,000 embedded images, seeded
    (measured: 0.77 test accuracy on 1,000 test images; chance is 0.10)."""
    from fastconv.models import get_model
    model = get_model("lenet5", seed=0)
    train, test = _loaders(subset, n_train=3000, batch_size=32)
    test = DataLoader(subset.x_test[:1000], subset.y_test[:1000], 500, normalize=test.normalize)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    # One thread: the kernels give bitwise the same result for any count, and on a busy
    # 2-core machine spinning OpenMP threads can make 2 threads many times slower than 1.
    with fastconv.num_threads(1):
        hist = fit(model, train, opt, 2, OneCycleLR(0.05, 2 * len(train)), CrossEntropyLoss(),
                   test_loader=test, progress=False, log=None)
    assert hist["test_acc"][-1] > 0.70, hist


@pytest.mark.slow
def test_keep_freed_memory_stops_refaulting_the_same_pages():
    """fit() tunes glibc's malloc so that a step reuses the memory the last one freed: a
    40 MB array (above glibc's largest automatic mmap threshold, 32 MiB) allocated again
    and again faults its pages in every time by default, and once at most after."""
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the setting exists on glibc only")
    code = """if True:
        import resource, numpy as np, fastconv
        def faults():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(5):
                np.ones(5 << 20)                       # 40 MB, every page written
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        plain = faults()
        applied = fastconv.keep_freed_memory()
        faults()                                       # the heap grows once
        print(plain, applied, faults())
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items()
                              if not k.startswith("MALLOC_")})
    plain, applied, kept = out.stdout.split()
    assert applied == "True", out.stderr
    # Every array faults in again by default: at least one fault per page, and the largest
    # page the kernel maps for it is a 2 MiB transparent huge page (20 per array).
    assert int(plain) >= 5 * 20, (plain, kept)
    assert int(kept) * 10 < int(plain), (plain, kept)


def test_history_has_every_step(subset, tmp_path):
    """A 1-epoch run still has a training curve: one loss per step, placed in epochs."""
    _, _, hist = _run(subset, epochs=1)
    steps = 1024 // 64
    assert hist["step"] == list(range(1, steps + 1))
    assert hist["step_epoch"][0] == pytest.approx(1 / steps) and hist["step_epoch"][-1] == 1.0
    assert len(hist["step_loss"]) == steps and all(np.isfinite(hist["step_loss"]))
    # the epoch's mean loss is the mean of its steps (all batches have 64 images)
    assert np.mean(hist["step_loss"]) == pytest.approx(hist["train_loss"][0], rel=1e-12)
    paths = write_history(hist, tmp_path)
    assert sorted(os.path.basename(p) for p in paths) == ["history.csv", "history.json",
                                                          "history_steps.csv"]
    rows = (tmp_path / "history_steps.csv").read_text().splitlines()
    assert rows[0] == "step,step_epoch,step_loss" and len(rows) == steps + 1
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 2


def test_run_folders(tmp_path):
    group = tmp_path / "runs" / "lenet5-mnist"
    first, second = new_run_folder(group), new_run_folder(group)
    assert os.path.basename(first) == "001" and os.path.basename(second) == "002"
    assert os.path.realpath(group / "latest") == os.path.realpath(second)
    assert latest_checkpoint(tmp_path / "runs") is None
    for folder in (second, first):          # the newest checkpoint wins, not the highest number
        (tmp_path / folder / "checkpoint.npz").write_bytes(b"x")
    other = new_run_folder(tmp_path / "runs" / "resnet20-mnist")
    os.utime(os.path.join(first, "checkpoint.npz"), (1e9, 2e9))
    os.utime(os.path.join(second, "checkpoint.npz"), (1e9, 1e9))
    assert latest_checkpoint(tmp_path / "runs") == os.path.join(first, "checkpoint.npz")
    (tmp_path / other / "checkpoint.npz").write_bytes(b"x")
    os.utime(os.path.join(other, "checkpoint.npz"), (1e9, 3e9))
    assert latest_checkpoint(tmp_path / "runs") == os.path.join(other, "checkpoint.npz")
    assert latest_checkpoint(tmp_path / "runs", "lenet5-") == os.path.join(first, "checkpoint.npz")
