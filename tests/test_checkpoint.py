"""Damaged and hostile checkpoints: every one raises CheckpointError naming the file and the
problem, reads no more than the file holds, and leaves the model and optimiser untouched."""
import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest

from fastconv import nn
from fastconv.optim import SGD, Adam
from fastconv.train import CheckpointError, fit, load_checkpoint, read_checkpoint, save_checkpoint


def make_model(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(4, 3, dtype=np.float64, rng=rng), nn.Dropout(0.5, rng=rng),
                         nn.Linear(3, 2, dtype=np.float64, rng=rng))


def make_state(seed=0):
    model = make_model(seed)
    opt = Adam(model.parameters(), lr=0.01)
    for p in model.parameters():                 # one step, so the optimiser state is not zero
        p.grad[...] = np.random.default_rng(seed + 1).standard_normal(p.grad.shape)
    opt.step()
    return model, opt


@pytest.fixture
def good(tmp_path):
    model, opt = make_state()
    history = {"epoch": [1, 2], "train_loss": [0.5, 0.4]}
    path = tmp_path / "good.npz"
    save_checkpoint(path, model, opt, epoch=2, history=history, meta={"model": "tiny"})
    return path


def members(path):
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def npy(array):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=True)
    return buf.getvalue()


def write_zip(path, files, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def edit(changes):
    """A variant: the good checkpoint's members with some ({name: bytes}) replaced, or
    removed (None)."""
    def apply(files):
        files = dict(files)
        for key, value in changes.items():
            name = key + ".npy"
            if value is None:
                del files[name]
            else:
                files[name] = value
        return files
    return zipped(apply)


def huge_header(shape, dtype="<f8"):
    """A .npy header declaring ``shape`` followed by 16 bytes of data."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + b"\0" * 16


def truncated(fraction):
    def variant(path, out):
        data = path.read_bytes()
        out.write_bytes(data[:int(len(data) * fraction)])
    return variant


def raw(data):
    return lambda path, out: out.write_bytes(data)


def zipped(transform, compression=zipfile.ZIP_STORED):
    """A variant: the good checkpoint's members, transformed, in a new zip."""
    return lambda path, out: write_zip(out, transform(members(path)), compression)


def meta_edit(change):
    """A variant whose JSON metadata is edited in place by change(info)."""
    def transform(files):
        info = json.loads(str(np.load(io.BytesIO(files["meta.npy"]))))
        change(info)
        return {**files, "meta.npy": npy(np.array(json.dumps(info)))}
    return zipped(transform)


W0 = "model/0.weight"       # the first Linear's weight: shape (3, 4)

VARIANTS = {
    "empty file": (raw(b""), "cannot be read"),
    "text file": (raw(b"epoch,loss\n1,0.5\n"), "cannot be read"),
    "single .npy": (raw(npy(np.zeros(3))), "single .npy array"),
    "truncated 10%": (truncated(0.1), "cannot be read"),
    "truncated 50%": (truncated(0.5), None),
    "truncated 90%": (truncated(0.9), None),
    "truncated by 1 byte": (truncated(0.9999), None),
    "meta is 5": (edit({"meta": npy(np.array("5"))}), "JSON object"),
    "meta is null": (edit({"meta": npy(np.array("null"))}), "JSON object"),
    "meta not JSON": (edit({"meta": npy(np.array("{not json"))}), "not valid JSON"),
    "meta too long": (edit({"meta": npy(np.array(" " * (1 << 20)))}), "at most"),
    "meta is an array": (edit({"meta": npy(np.zeros(3))}), "'meta' must be"),
    "wrong format": (meta_edit(lambda info: info.update(format="other")), "not a fastconv"),
    "future version": (meta_edit(lambda info: info.update(version=99)), "version 99"),
    "inner meta is 5": (meta_edit(lambda info: info.update(meta=5)), "meta['meta']"),
    "inner meta is null": (meta_edit(lambda info: info.update(meta=None)), "meta['meta']"),
    "rng is a list": (meta_edit(lambda info: info.update(rng=[1])), "meta['rng']"),
    "bad rng state": (meta_edit(lambda info: info["rng"].update({"1.rng": {"state": 5}})),
                      "random state"),
    "optimizer is 5": (meta_edit(lambda info: info.update(optimizer=5)), "optimizer"),
    "other optimizer": (meta_edit(lambda info: info.update(optimizer="SGD")), "SGD"),
    "missing epoch": (edit({"epoch": None}), "'epoch'"),
    "missing meta": (edit({"meta": None}), "'meta'"),
    "missing weight": (edit({"model/0.weight": None}), "missing"),
    "missing optimizer state": (edit({"optim/exp_avg.1": None}), "missing"),
    "extra weight": (edit({"model/9.weight": npy(np.zeros(2))}), "unexpected"),
    "extra group": (edit({"junk/x": npy(np.zeros(2))}), "unexpected entry"),
    "not an .npy member": (zipped(lambda f: {**f, "notes.txt": b"hello"}), "notes.txt"),
    "compressed": (zipped(lambda f: f, zipfile.ZIP_DEFLATED), "compressed"),
    "epoch -5": (edit({"epoch": npy(np.array(-5))}), "epoch -5"),
    "epoch 10**15": (edit({"epoch": npy(np.array(10**15))}), "epoch 1000000000000000"),
    "epoch is a float": (edit({"epoch": npy(np.array(2.0))}), "'epoch' must be an integer"),
    "epoch differs from meta": (edit({"epoch": npy(np.array(1))}), "differs"),
    "history longer than epochs": (edit({"history/train_loss": npy(np.zeros(5))}),
                                   "one value per"),
    "history 2-D": (edit({"history/train_loss": npy(np.zeros((2, 1)))}), "one value per"),
    "wrong shape": (edit({"model/0.weight": npy(np.zeros((4, 3)))}), "shape (4, 3)"),
    "wrong dtype int": (edit({"model/0.weight": npy(np.zeros((3, 4), np.int64))}), "dtype"),
    "wrong dtype complex": (edit({"model/0.weight": npy(np.zeros((3, 4), complex))}),
                            "numbers only"),
    "wrong dtype text": (edit({"model/0.weight": npy(np.full((3, 4), "x"))}),
                         "numbers only"),
    "object array (pickle)": (edit({"model/0.weight": npy(np.array([{}, 1], object))}),
                              "Python objects"),
    "huge declared shape": (edit({"model/0.weight": huge_header((1 << 20, 1 << 20))}),
                            "header says"),
    "huge declared shape, 1 KB file": (lambda p, out: write_zip(out, {
        "meta.npy": members(p)["meta.npy"], "epoch.npy": npy(np.array(2)),
        "model/0.weight.npy": huge_header((1 << 40,))}), "header says"),
    "header shorter than data": (edit({"model/0.weight": huge_header((1,))}),
                                 "header says"),
    "bad .npy magic": (edit({"model/0.weight": b"NOTNUMPY" + b"\0" * 100}),
                       "not a valid .npy"),
}


def _build(name, good, tmp_path):
    out = tmp_path / "bad.npz"
    VARIANTS[name][0](good, out)
    return out


def _state(model, opt):
    return ({k: v.copy() for k, v in model.state_dict().items()},
            {k: np.array(v, copy=True) for k, v in opt.state_dict().items()},
            model[1].rng.bit_generator.state)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_damaged_checkpoint_is_refused_and_changes_nothing(name, good, tmp_path):
    bad = _build(name, good, tmp_path)
    model, opt = make_state(seed=7)
    before = _state(model, opt)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad, model, opt)
    message = str(info.value)
    assert str(bad) in message
    words = VARIANTS[name][1]
    if words:
        assert words in message, message
    after = _state(model, opt)
    for b, a in zip(before[:2], after[:2]):
        assert b.keys() == a.keys() and all(np.array_equal(b[k], a[k]) for k in b)
    assert before[2] == after[2]
    if "other optimizer" not in name and "optimizer state" not in name \
            and "rng" not in name and name not in ("missing weight", "extra weight",
                                                   "wrong shape", "wrong dtype int"):
        with pytest.raises(CheckpointError):        # read without a model: the same verdict
            read_checkpoint(bad)


def test_huge_declared_shape_allocates_nothing(good, tmp_path):
    bad = _build("huge declared shape, 1 KB file", good, tmp_path)
    assert bad.stat().st_size < 2048
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError):
            read_checkpoint(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_good_checkpoint_round_trips(good):
    model, opt = make_state(seed=7)
    epoch, history, meta = load_checkpoint(good, model, opt)
    want_model, want_opt = make_state()
    assert epoch == 2 and meta == {"model": "tiny"}
    assert history["epoch"] == [1, 2] and history["train_loss"] == [0.5, 0.4]
    for k, v in want_model.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
    for k, v in want_opt.state_dict().items():
        np.testing.assert_array_equal(opt.state_dict()[k], v)
    ck = read_checkpoint(good)
    assert ck["epoch"] == 2 and set(ck["model"]) == set(want_model.state_dict())


def test_checkpoint_without_history_resumes_and_saves_again(tmp_path):
    """A history shorter than the epochs (saved without one) is accepted."""
    model, opt = make_state()
    path = tmp_path / "ck.npz"
    save_checkpoint(path, model, opt, epoch=3)
    assert read_checkpoint(path)["epoch"] == 3
    save_checkpoint(path, model, opt, epoch=4, history={"epoch": [4]})
    assert load_checkpoint(path, model, opt)[0] == 4


def test_resume_beyond_the_epochs_asked_for_is_an_error(good):
    model = make_model()
    opt = Adam(model.parameters(), lr=0.01)
    x, y = np.zeros((4, 4)), np.zeros(4, np.int64)
    from fastconv.data import DataLoader

    class Flat(DataLoader):         # the tiny model takes (N, 4) rows
        def __iter__(self):
            yield x, y

    loader = Flat(np.zeros((4, 1, 2, 2)), y, batch_size=4)
    with pytest.raises(CheckpointError, match="beyond the 1 epochs"):
        fit(model, loader, opt, epochs=1, resume=good, progress=False, log=None)
    history = fit(model, loader, opt, epochs=2, resume=good, progress=False, log=None)
    assert history["epoch"] == [1, 2]      # both done already: nothing trained


def test_sgd_state_is_checked_against_the_optimiser_class(tmp_path):
    model = make_model()
    path = tmp_path / "sgd.npz"
    save_checkpoint(path, model, SGD(model.parameters(), lr=0.1, momentum=0.9), epoch=1)
    with pytest.raises(CheckpointError, match="holds SGD state, not Adam"):
        load_checkpoint(path, model, Adam(model.parameters(), lr=0.1))


@pytest.mark.parametrize("name", ["epoch -5", "epoch 10**15", "meta is null", "missing epoch",
                                  "single .npy"])
def test_command_line_refuses_damaged_checkpoints(name, good, tmp_path, capsys):
    """`fastconv train --resume` and `fastconv viz` answer a damaged checkpoint with one error
    line naming it (exit status 1, a failure of the command rather than of its command line),
    before any training or drawing."""
    from fastconv.cli import main
    bad = _build(name, good, tmp_path)
    code = main(["train", "--dataset", "fashion-mnist-subset", "--limit", "64", "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--no-progress", "--resume", str(bad)])
    out = capsys.readouterr()
    assert code == 1 and str(bad) in out.err
    assert "epoch 1/1" not in out.out
    code = main(["viz", str(bad), "--dataset", "fashion-mnist-subset",
                 "--out", str(tmp_path / "viz")])
    out = capsys.readouterr()
    assert code == 1 and str(bad) in out.err
    assert not (tmp_path / "viz").exists()
