"""fastconv.viz: every figure draws with Agg and saves a PNG of the expected size, the
offline page links every picture it shows, ``fastconv viz`` works end to end on a tiny
checkpoint, and a missing matplotlib gives a clear message (simulated)."""
import argparse
import html.parser
import os
import struct
import sys

import numpy as np
import pytest

import fastconv.functional as F
from fastconv import nn
from fastconv.models import get_model
from fastconv.summary import summary
from fastconv.viz import (activation, confusion_matrix, layer_names, plot_confusion_matrix,
                          plot_feature_maps, plot_filters, plot_history, plot_lr_find,
                          plot_receptive_field, resolve_layer, save_training_figures, write_index)
from fastconv.viz import _mpl
from helpers import run_python

DPI = 40          # small PNGs: the tests check sizes and contents, not looks


def png_size(path):
    """(width, height) in pixels from a PNG's IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def assert_png_of(fig, path):
    """fig is a Figure and path holds a non-empty PNG of exactly figsize x dpi pixels."""
    from matplotlib.figure import Figure
    assert isinstance(fig, Figure)
    assert os.path.getsize(path) > 0
    w_in, h_in = fig.get_size_inches()
    assert png_size(path) == (round(w_in * fig.dpi), round(h_in * fig.dpi))
    leftovers = [f for f in os.listdir(os.path.dirname(path)) if ".tmp" in f]
    assert leftovers == [], "the atomic write left a temporary file"


@pytest.fixture(scope="module")
def lenet():
    return get_model("lenet5", seed=0)


@pytest.fixture
def image(rng):
    return rng.standard_normal((1, 1, 28, 28)).astype(np.float32)


# --------------------------------------------------------------------------- filters

@pytest.mark.parametrize("C", [1, 3, 6])
def test_plot_filters_grey_rgb_and_per_channel(tmp_path, rng, C):
    conv = nn.Conv2d(C, 8, 5, rng=rng)
    path = tmp_path / "f.png"
    fig = plot_filters(conv, path=path, dpi=DPI)
    assert_png_of(fig, path)
    tiles = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    if C in (1, 3):
        assert len(tiles) == 8                                      # one tile per filter
        if C == 3:
            assert tiles[0].shape == (5, 5, 3)                      # drawn in colour
        groups = [np.asarray(t) - (0.5 if C == 3 else 0) for t in tiles]
    else:                      # one mosaic: row k = filter k, a 5x5 tile per channel, 1-pixel gaps
        (mosaic,) = tiles
        assert mosaic.shape == (8 * 6 - 1, C * 6 - 1)
        groups = [np.asarray(mosaic[k * 6:k * 6 + 5]) for k in range(8)]
    # each filter is scaled by its own max |w|: its extreme weight reaches the end of the range
    for group in groups:
        assert np.isclose(np.nanmax(np.abs(group)), 0.5 if C == 3 else 1.0)
    # and is drawn as it is: filter 0, channel 0, divided by its max |w|
    w0 = conv.weight.data[0] / np.abs(conv.weight.data[0]).max()
    first = {1: groups[0], 3: 2 * groups[0][..., 0], 6: groups[0][:, :5]}[C]
    np.testing.assert_allclose(first, w0[0], rtol=1e-6)


def test_plot_filters_takes_an_array_and_caps_the_grid(rng):
    w = rng.standard_normal((100, 20, 3, 3))
    fig = plot_filters(w, max_filters=10, max_channels=4, dpi=DPI)
    assert fig.axes[0].images[0].get_array().shape == (10 * 4 - 1, 4 * 4 - 1)
    assert "10 of 100 filters" in fig.texts[0].get_text()
    with pytest.raises(ValueError, match="K, C, R, S"):
        plot_filters(np.zeros((3, 3)))


def test_plot_filters_does_not_change_the_weights(lenet):
    before = lenet.conv1.weight.data.copy()
    plot_filters(lenet.conv1, dpi=DPI)
    np.testing.assert_array_equal(lenet.conv1.weight.data, before)


# --------------------------------------------------------------------------- feature maps

def test_activation_is_the_layer_output(lenet, image):
    """The captured conv1 output equals conv1 applied by hand, even though the ReLU after it
    works in place (the capture is a copy)."""
    want = F.conv2d(image, lenet.conv1.weight.data, lenet.conv1.bias.data, padding=2)
    got = activation(lenet, image, "conv1")
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(activation(lenet, image[0], 0), got)    # index 0 = conv1, (C,H,W) ok
    after_pool = activation(lenet, image, "pool2")
    assert after_pool.shape == (1, 16, 5, 5)
    assert activation(lenet, image, "fc3").shape == (1, 10)
    np.testing.assert_allclose(activation(lenet, image, -1), lenet.eval()(image.copy()), rtol=1e-6)


def test_activation_restores_modes_and_forward(image):
    model = get_model("lenet5_bn", seed=0)
    model.train()
    model.bn1.training = False          # a mixed state survives
    activation(model, image, "bn2")
    assert model.training and model.conv2.training and not model.bn1.training
    assert "forward" not in vars(model.bn2)       # the spy is gone


def test_layer_resolution_errors(lenet, image):
    assert layer_names(lenet)[:3] == ["conv1", "act1", "pool1"]
    assert resolve_layer(lenet, lenet.conv2)[0] == "conv2"
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        activation(lenet, image, "nope")
    with pytest.raises(ValueError, match="out of range"):
        activation(lenet, image, 99)


@pytest.mark.parametrize("layer", ["act1", "conv2", "fc1"])
def test_plot_feature_maps(tmp_path, lenet, image, layer):
    x = image.copy()
    path = tmp_path / f"{layer}.png"
    fig = plot_feature_maps(lenet, x, layer, path=path, dpi=DPI)
    assert_png_of(fig, path)
    np.testing.assert_array_equal(x, image)                 # input untouched
    if layer != "fc1":
        maps = [ax for ax in fig.axes if ax.images][1:]     # the first tile is the input
        assert len(maps) == activation(lenet, image, layer).shape[1]


def test_feature_maps_of_a_residual_model(rng):
    model = get_model("resnet20", in_channels=3, input_size=32, seed=0)
    x = rng.standard_normal((3, 32, 32)).astype(np.float32)
    name = [n for n in layer_names(model) if n.endswith("conv1")][3]
    fig = plot_feature_maps(model, x, name, max_maps=8, dpi=DPI)
    assert sum(1 for ax in fig.axes if ax.images) == 1 + 8


# --------------------------------------------------------------------------- curves

def test_plot_history(tmp_path):
    history = dict(epoch=[1, 2, 3], train_loss=[1.0, 0.6, 0.4], test_loss=[0.8, 0.5, 0.45],
                   train_acc=[0.6, 0.8, 0.85], test_acc=[0.7, 0.82, 0.84])
    path = tmp_path / "h.png"
    fig = plot_history(history, path=path, dpi=DPI)
    assert_png_of(fig, path)
    ax_loss, ax_acc = fig.axes
    assert [ln.get_label() for ln in ax_loss.lines] == ["train", "test"]
    np.testing.assert_array_equal(ax_acc.lines[1].get_ydata(), history["test_acc"])
    # without a test set (NaN) only the training curves are drawn
    fig = plot_history(dict(train_loss=[1.0, 0.5], test_loss=[np.nan, np.nan],
                            train_acc=[0.5, 0.7]), dpi=DPI)
    assert [ln.get_label() for ln in fig.axes[0].lines] == ["train"]
    with pytest.raises(ValueError, match="no epochs"):
        plot_history({"train_loss": []})


def test_plot_history_draws_every_step_under_the_epochs():
    """A 1-epoch run: two dots alone said nothing; the loss of every step makes the curve."""
    steps = 200
    step_loss = list(2.3 * np.exp(-np.arange(steps) / 60) + 0.3)
    history = dict(epoch=[1], train_loss=[float(np.mean(step_loss))], test_loss=[0.5],
                   train_acc=[0.7], test_acc=[0.8], step=list(range(1, steps + 1)),
                   step_epoch=list((np.arange(steps) + 1) / steps), step_loss=step_loss)
    ax_loss = plot_history(history, dpi=DPI).axes[0]
    labels = [ln.get_label() for ln in ax_loss.lines]
    assert labels == ["train, each step", "train, mean of 4 steps", "train, epoch mean", "test"]
    np.testing.assert_array_equal(ax_loss.lines[0].get_ydata(), step_loss)
    assert ax_loss.get_xlim()[0] == 0 and ax_loss.get_xlim()[1] >= 1


def test_plot_lr_find(tmp_path):
    lrs = np.logspace(-5, 1, 50)
    losses = 2.3 - np.log10(lrs / 1e-5) * 0.3
    losses[-5:] = [5, 8, 20, np.inf, np.nan]
    path = tmp_path / "lr.png"
    fig = plot_lr_find(lrs, losses, smoothed=losses, suggestion=1e-2, path=path, dpi=DPI)
    assert_png_of(fig, path)
    assert fig.axes[0].get_xscale() == "log"

    from fastconv.schedules import LRFinderResult     # what fastconv.schedules.lr_find returns
    r = LRFinderResult(lrs, losses, losses)
    lines = plot_lr_find(r, dpi=DPI).axes[0].lines    # loss, its median, the two suggestions
    assert [ln.get_label().split(":")[0] for ln in lines] == [
        "loss of each step", "median of 5 steps", "steepest fall", "minimum / 10"]
    with pytest.raises(ValueError, match="same length"):
        plot_lr_find([1, 2], [1.0])


def test_confusion_matrix_counts_and_figure(tmp_path):
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2])
    cm = confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    path = tmp_path / "cm.png"
    fig = plot_confusion_matrix(y_true, y_pred, ["a", "b", "c"], path=path, dpi=DPI)
    assert_png_of(fig, path)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert "accuracy 0.714" in ax.get_title()
    assert sorted(t.get_text() for t in ax.texts) == sorted(["1", "1", "2", "1", "2"])
    with pytest.raises(ValueError, match="< 3"):
        confusion_matrix([0, 3], [0, 1], 3)


# --------------------------------------------------------------------------- receptive field

def _boxes(fig):
    """{legend label: (width, height)} of the receptive-field boxes."""
    return {p.get_label(): (p.get_width(), p.get_height()) for p in fig.axes[0].patches
            if not p.get_label().startswith("_")}


def test_plot_receptive_field_uses_summary_numbers(tmp_path, lenet, rng):
    path = tmp_path / "rf.png"
    img = rng.integers(0, 256, (1, 28, 28), dtype=np.uint8)
    fig = plot_receptive_field(lenet, (1, 28, 28), "pool2", image=img, path=path, dpi=DPI)
    assert_png_of(fig, path)
    rows = {r["name"]: r["rf"] for r in summary(lenet, (1, 1, 28, 28), print_fn=None).rows}
    boxes = _boxes(fig)
    assert list(boxes) == ["conv1: 5x5", "pool1: 6x6", "conv2: 14x14", "pool2: 16x16"]
    for label, (w, h) in boxes.items():
        size = rows[label.split(":")[0]][0][0]
        assert (w, h) == (size, size)
    # the centre unit (2, 2) of pool2: start 1.5 - ... from the summary: centre = start + 2 * jump
    (r, j, start), _ = rows["pool2"]
    target = [p for p in fig.axes[0].patches if p.get_label() == "pool2: 16x16"][0]
    assert target.get_y() == pytest.approx(start + 2 * j - (r - 1) / 2 - 0.5)
    # by index, without an image, and a corner unit
    fig = plot_receptive_field(lenet, (1, 28, 28), 0, unit=(0, 0), dpi=DPI)
    assert list(_boxes(fig)) == ["conv1: 5x5"]
    with pytest.raises(ValueError, match="outside"):
        plot_receptive_field(lenet, (1, 28, 28), "conv1", unit=(28, 0))


# --------------------------------------------------------------------------- page and command

class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("src", "href"):
            if key in attrs:
                self.urls.append(attrs[key])


def check_page(folder):
    """Every <img> of index.html is a relative link to a file in the folder, every PNG there is
    shown, and nothing is fetched from elsewhere (the page works offline)."""
    page = os.path.join(folder, "index.html")
    links = _Links()
    with open(page, encoding="utf-8") as f:
        text = f.read()
    links.feed(text)
    assert links.images, "the page shows no picture"
    for src in links.images:
        assert not os.path.isabs(src) and "/" not in src and ":" not in src
        assert os.path.isfile(os.path.join(folder, src)), f"{src} is linked but missing"
        assert png_size(os.path.join(folder, src))[0] > 0
    pngs = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
    assert sorted(links.images) == pngs
    assert all(u.startswith("#") or u in links.images for u in links.urls)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    return links.images, text


def test_write_index(tmp_path):
    from fastconv.viz.report import Item
    fig = plot_history(dict(train_loss=[1.0, 0.5]), dpi=DPI)
    _mpl.save_png(fig, tmp_path / "a.png")
    page = write_index(tmp_path, [Item("a.png", "Curves <1>", "what & why")], "T",
                       info=[("model", "lenet5")])
    images, text = check_page(tmp_path)
    assert images == ["a.png"] and "what &amp; why" in text and "Curves &lt;1&gt;" in text
    assert page == os.path.join(tmp_path, "index.html")
    with pytest.raises(FileNotFoundError):
        write_index(tmp_path, [Item("missing.png", "x", "y")])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """LeNet-5 trained for a few steps on 128 images of the embedded subset, saved with the
    training code's checkpoint format (plus an LR range test file beside it)."""
    from fastconv.data import DataLoader, Normalize, load_dataset
    from fastconv.optim import make_optimizer
    from fastconv.train import fit
    folder = tmp_path_factory.mktemp("run")
    ds = load_dataset("fashion-mnist-subset").limit(128, 100)
    model = get_model("lenet5", seed=1)
    loader = DataLoader(ds.x_train, ds.y_train, 32, shuffle=True, seed=1,
                        normalize=Normalize(ds.mean, ds.std))
    test = DataLoader(ds.x_test, ds.y_test, 100, normalize=Normalize(ds.mean, ds.std))
    opt = make_optimizer("sgd", model.parameters(), 0.05, momentum=0.9)
    path = folder / "checkpoint.npz"
    fit(model, loader, opt, 2, test_loader=test, checkpoint=str(path), progress=False, log=None,
        meta={"model": "lenet5", "dtype": "float32"})
    lrs = np.logspace(-4, 0, 20)
    np.savez(folder / "lr_find.npz", lrs=lrs, losses=2.3 - 0.1 * np.arange(20),
             smoothed=2.3 - 0.1 * np.arange(20), suggestion=np.array(1e-2))
    return path


def _viz_args(*argv):
    from fastconv.viz.cli import configure_parser
    return configure_parser(argparse.ArgumentParser()).parse_args(list(argv))


@pytest.mark.slow
def test_viz_command_end_to_end(tiny_checkpoint, tmp_path, capsys):
    from fastconv.viz.cli import run
    out = tmp_path / "viz"
    args = _viz_args(str(tiny_checkpoint), "--out", str(out), "--limit-test", "100",
                     "--dpi", str(DPI), "--image", "3")
    assert run(args) == 0
    assert "open " in capsys.readouterr().out
    images, text = check_page(out)
    assert set(images) == {"filters_conv1.png", "filters_conv2.png", "feature_maps_act1.png",
                           "feature_maps_act2.png", "receptive_field_pool2.png",
                           "confusion_matrix.png", "history.png", "lr_find.png"}
    assert "test image #3" in text and "notes 001" in text and "100 test images" in text
    # explicit layers by name and index; default output folder next to the checkpoint
    args = _viz_args(str(tiny_checkpoint), "--limit-test", "50", "--dpi", str(DPI),
                     "--layers", "conv2", "0", "--rf-layer", "conv2")
    assert run(args) == 0
    images, _ = check_page(tiny_checkpoint.parent / "viz")
    assert {"feature_maps_conv2.png", "feature_maps_conv1.png",
            "receptive_field_conv2.png"} <= set(images)


def test_viz_command_errors(tiny_checkpoint, tmp_path, capsys):
    from fastconv.viz.cli import run
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert run(_viz_args(str(bad))) == 1             # the file fails, not the command line
    assert "cannot be read" in capsys.readouterr().err
    assert run(_viz_args(str(tiny_checkpoint), "--model", "lenet5_bn", "--out", str(tmp_path))) == 2
    assert "does not fit" in capsys.readouterr().err
    assert run(_viz_args(str(tiny_checkpoint), "--image", "999999", "--out", str(tmp_path))) == 2
    assert "--image" in capsys.readouterr().err
    assert run(_viz_args(str(tiny_checkpoint), "--layers", "nope", "--out", str(tmp_path))) == 2
    assert "unknown layer" in capsys.readouterr().err


def test_save_training_figures(tmp_path, lenet):
    paths = save_training_figures(lenet, dict(epoch=[1], train_loss=[0.5], train_acc=[0.8],
                                              test_loss=[0.6], test_acc=[0.7]), tmp_path, dpi=DPI)
    assert [os.path.basename(p) for p in paths] == ["history.png", "filters.png"]
    assert all(png_size(p)[0] > 0 for p in paths)


# --------------------------------------------------------------------------- without matplotlib

def _hide_matplotlib(monkeypatch):
    """Make every ``import matplotlib...`` fail, as if it were not installed."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_missing_matplotlib_gives_a_clear_message(monkeypatch, lenet, tmp_path, capsys):
    _hide_matplotlib(monkeypatch)
    with pytest.raises(ImportError, match=r"pip install 'fastconv\[viz\]'.*pip install matplotlib"):
        plot_history(dict(train_loss=[1.0]))
    with pytest.raises(ImportError, match="matplotlib"):
        plot_filters(lenet.conv1)
    assert save_training_figures(lenet, dict(train_loss=[1.0]), tmp_path) == []
    assert os.listdir(tmp_path) == []
    from fastconv.viz.cli import run
    assert run(_viz_args(str(tmp_path / "x.npz"))) == 2
    assert "pip install 'fastconv[viz]'" in capsys.readouterr().err


def test_package_imports_without_matplotlib():
    """``import fastconv.viz`` works in a fresh interpreter that cannot import matplotlib;
    only drawing fails, with the install command."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import fastconv.viz as v\n"
            "assert not v.available()\n"
            "try:\n"
            "    v.plot_history({'train_loss': [1.0]})\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    out = run_python(["-c", code])
    assert out.returncode == 0, out.stderr
    assert "pip install 'fastconv[viz]'" in out.stdout


# --------------------------------------------------------------------------- hooks in the CLI

@pytest.mark.slow
def test_fastconv_viz_subcommand(tiny_checkpoint, tmp_path, capsys):
    from fastconv.cli import main
    out = tmp_path / "v"
    assert main(["viz", str(tiny_checkpoint), "--out", str(out), "--limit-test", "50",
                 "--dpi", str(DPI)]) == 0
    check_page(out)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "viz" in capsys.readouterr().out


@pytest.mark.slow
def test_train_writes_history_and_filter_pictures(tmp_path, monkeypatch, capsys):
    from fastconv.cli import main
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "nothing"))
    out = tmp_path / "run"
    args = ["train", "--dataset", "fashion-mnist-subset", "--limit", "128", "--limit-test", "100",
            "--batch-size", "64", "--epochs", "1", "--out", str(out), "--no-progress",
            "--threads", "1"]
    assert main(args) == 0
    assert {"history.png", "filters.png"} <= set(os.listdir(out))
    assert png_size(out / "history.png") == (800, 320)          # plot_history's 8 x 3.2 in
    # the LR range test draws its curve with plot_lr_find (6 x 4 in at 100 dpi)
    lr_out = tmp_path / "lr"
    assert main(args[:args.index("--out")] + ["--out", str(lr_out), "--no-progress", "--lr-find"]) == 0
    assert png_size(lr_out / "lr_find.png") == (600, 400)
    capsys.readouterr()


def test_viz_shows_the_runs_own_test_data(tmp_path, monkeypatch, capsys):
    """viz scores the data the run was tested on (dataset and --limit-test from the
    checkpoint), says so, and says when it has to fall back to the embedded subset."""
    from fastconv.cli import main
    import fastconv.data.datasets as datasets
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "nothing"))
    out = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist-subset", "--limit", "128", "--limit-test",
                 "300", "--epochs", "1", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["viz", str(out), "--dpi", str(DPI)]) == 0          # a run folder is enough
    page = (out / "viz" / "index.html").read_text()
    assert "the run&#x27;s own test data" in page or "the run's own test data" in page
    assert "test accuracy on 300 images" in page
    # a run on full Fashion-MNIST, viewed where that data is missing: the subset, and a note
    from fastconv.train import read_checkpoint, save_checkpoint
    from fastconv.models import get_model
    meta = read_checkpoint(out / "checkpoint.npz")["meta"]["meta"]
    meta["dataset_resolved"] = "fashion-mnist"
    save_checkpoint(tmp_path / "full" / "checkpoint.npz", get_model("lenet5"), meta=meta)
    monkeypatch.setitem(datasets._SYSTEM_DIRS, "fashion-mnist", str(tmp_path / "none"))
    assert main(["viz", str(tmp_path / "full"), "--dpi", str(DPI)]) == 0
    captured = capsys.readouterr()
    assert "the run was tested on fashion-mnist, which is not found here" in captured.err
    page = (tmp_path / "full" / "viz" / "index.html").read_text()
    assert "fashion-mnist-subset" in page and "not found here" in page


def test_train_without_matplotlib_still_works(tmp_path, monkeypatch, capsys):
    from fastconv.cli import main
    _hide_matplotlib(monkeypatch)
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "nothing"))
    out = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist-subset", "--limit", "64", "--limit-test",
                 "50", "--epochs", "1", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    assert not [f for f in os.listdir(out) if f.endswith(".png")]


def test_viz_draws_the_predicted_boxes_of_a_box_model(tmp_path, capsys):
    """``python -m fastconv.multitask --out DIR`` leaves a checkpoint; ``fastconv viz DIR``
    draws its test images with true and predicted boxes and puts the test accuracy and IoU,
    those the demo reported, into the page."""
    from fastconv.cli import main
    from fastconv.multitask import main as multitask_main
    out = tmp_path / "boxes"
    assert multitask_main(["--dataset", "fashion-mnist-subset", "--limit", "128", "--epochs",
                           "1", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    acc, iou = (said.split(f"{what} ")[1].split()[0].rstrip(",")
                for what in ("test accuracy", "box IoU"))
    assert main(["viz", str(out), "--dpi", str(DPI), "--image", "3"]) == 0
    page = (out / "viz" / "index.html").read_text()
    assert f"<td>test accuracy on 2,000 images</td><td>{acc}</td>" in page
    assert f"<td>mean box IoU on 2,000 test images</td><td>{iou}</td>" in page
    assert "the mean training box" in page and 'src="boxes.png"' in page
    assert png_size(out / "viz" / "boxes.png")[0] > 100
    assert (out / "viz" / "history.png").exists()
    assert main(["viz", str(out), "--image", "5000"]) == 2
    assert "--image 5000: the test set has 2000 images" in capsys.readouterr().err
