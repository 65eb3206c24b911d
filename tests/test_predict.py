"""fastconv predict: one's own images (PNG, JPEG, .npy) through a trained checkpoint."""
import json

import numpy as np
import pytest
from helpers import assert_close

from PIL import Image

from fastconv import nn
from fastconv.cli import main
from fastconv.data import DataLoader, Normalize, load_dataset
from fastconv.models import get_model
from fastconv.predict import Classifier, ImageError, load_classifier
from fastconv.train import load_checkpoint, read_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow       # a (tiny) training run first


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained LeNet-5 checkpoint, the subset's first test images as PNG, JPEG and
    .npy files, and the model's own eval-mode probabilities of those images."""
    folder = tmp_path_factory.mktemp("predict")
    assert main(["train", "--dataset", "fashion-mnist-subset", "--limit", "1024",
                 "--limit-test", "64", "--epochs", "1", "--out", str(folder / "run"),
                 "--no-progress", "--threads", "1", "--seed", "1"]) == 0
    ds = load_dataset("fashion-mnist-subset")
    files = {}
    for i in range(3):
        Image.fromarray(ds.x_test[i, 0]).save(folder / f"img{i}.png")
        np.save(folder / f"img{i}.npy", ds.x_test[i, 0])
        files[i] = (folder / f"img{i}.png", folder / f"img{i}.npy")
    Image.fromarray(ds.x_test[0, 0]).save(folder / "img0.jpg", quality=95)
    model = get_model("lenet5", seed=0)
    load_checkpoint(folder / "run" / "checkpoint.npz", model)
    loader = DataLoader(ds.x_test[:3], ds.y_test[:3], 3, normalize=Normalize(ds.mean, ds.std))
    xb, _ = next(iter(loader))
    logits = model.eval()(xb).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return dict(folder=folder, ckpt=folder / "run", files=files, x=xb, probs=probs,
                classes=ds.classes)


def test_images_are_prepared_exactly_as_the_training_data(run):
    clf = load_classifier(run["ckpt"])
    assert clf.image_shape == (1, 28, 28) and clf.classes == run["classes"]
    assert isinstance(clf.model, nn.Module) and clf.model.fused_for_inference
    for i, (png, npy) in run["files"].items():
        np.testing.assert_array_equal(clf.load_image(png), run["x"][i])
        np.testing.assert_array_equal(clf.load_image(npy), run["x"][i])
    # (H, W, 1) and float [0, 1] arrays are the same image
    hwc = run["folder"] / "hwc.npy"
    np.save(hwc, np.load(run["files"][0][1])[:, :, None].astype(np.float32) / 255)
    assert_close(clf.load_image(hwc), run["x"][0])


def test_cli_prints_the_top_k_classes_with_probabilities(run, capsys):
    png0, npy1 = run["files"][0][0], run["files"][1][1]
    assert main(["predict", str(run["ckpt"]), str(png0), str(npy1), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line, i, path in zip(lines, (0, 1), (png0, npy1)):
        order = np.argsort(-run["probs"][i])[:2]
        want = ", ".join(f"{run['classes'][j]} {run['probs'][i, j]:.3f}" for j in order)
        assert line == f"{path}: {want}"


def test_cli_json(run, capsys):
    paths = [str(run["files"][i][0]) for i in range(3)] + [str(run["folder"] / "img0.jpg")]
    assert main(["predict", str(run["ckpt"] / "checkpoint.npz"), *paths, "--json",
                 "--top-k", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "lenet5" and report["classes"] == list(run["classes"])
    for i, result in enumerate(report["results"][:3]):
        assert result["file"] == paths[i]
        top = result["top"]
        assert len(top) == 10                                  # K above the classes: all
        got = {t["class"]: t["probability"] for t in top}
        assert_close(np.array([got[c] for c in run["classes"]]), run["probs"][i])
        assert [t["probability"] for t in top] == sorted(got.values(), reverse=True)
    jpeg = report["results"][3]["top"][0]["class"]        # lossy, but the same picture
    assert jpeg == run["classes"][int(np.argmax(run["probs"][0]))]


def test_pictures_are_converted_and_resized(run):
    clf = load_classifier(run["ckpt"])
    grey = np.load(run["files"][2][1])
    big = Image.fromarray(grey).resize((56, 70), Image.Resampling.NEAREST)
    big.convert("RGB").save(run["folder"] / "big_rgb.png")
    big.save(run["folder"] / "big.png")
    x = clf.load_image(run["folder"] / "big_rgb.png")
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(x, clf.load_image(run["folder"] / "big.png"))
    assert np.corrcoef(x.ravel(), run["x"][2].ravel())[0, 1] > 0.9
    inverted = clf.load_image(run["files"][2][0], invert=True)
    mean, std = clf.mean[0], clf.std[0]
    assert_close(inverted * std + mean, 1 - (run["x"][2] * std + mean), reduction=4)


def test_rgb_models_take_rgb_pictures_and_arrays(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    clf = Classifier(model, "tiny", (3, 4, 4), ("a", "b"), (0.5, 0.4, 0.3), (0.2, 0.2, 0.2),
                     np.dtype(np.float64))
    rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    np.save(tmp_path / "hwc.npy", rgb)
    np.save(tmp_path / "chw.npy", np.moveaxis(rgb, -1, 0))
    want = (np.moveaxis(rgb, -1, 0) / 255 - np.array([0.5, 0.4, 0.3])[:, None, None]) / 0.2
    for name in ("rgb.png", "hwc.npy", "chw.npy"):
        assert_close(clf.load_image(tmp_path / name), want)
    grey = clf.load_image(tmp_path / "grey.png")               # grey -> RGB: 3 equal planes
    np.testing.assert_allclose(grey[0] * 0.2 + 0.5, grey[2] * 0.2 + 0.3)
    np.save(tmp_path / "two.npy", rgb[..., :2])
    with pytest.raises(ImageError, match=r"two.npy: shape \(4, 4, 2\) does not fit the "
                                         r"model's 3-channel input"):
        clf.load_image(tmp_path / "two.npy")


def test_bad_files_are_one_line_errors_with_status_1(run, capsys):
    folder = run["folder"]
    (folder / "text.png").write_text("not a picture")
    png = run["files"][0][0].read_bytes()
    (folder / "cut.png").write_bytes(png[:len(png) // 2])
    np.save(folder / "rgb.npy", np.zeros((3, 28, 28), np.uint8))
    np.save(folder / "nan.npy", np.full((28, 28), np.nan))
    np.save(folder / "strings.npy", np.array([["a"]]))
    cases = {"missing.png": "missing.png: no such file",
             "text.png": "text.png: not an image Pillow can read",
             "cut.png": "cut.png: damaged image",
             "rgb.npy": "rgb.npy: shape (3, 28, 28) does not fit the model's 1-channel input",
             "nan.npy": "nan.npy: holds NaN or Inf",
             "strings.npy": "strings.npy: holds <U1 values"}
    for name, words in cases.items():
        assert main(["predict", str(run["ckpt"]), str(folder / name)]) == 1, name
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("fastconv predict: error: ") and words in captured.err
        assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    # the good files of a mixed list are still classified; the status says one failed
    assert main(["predict", str(run["ckpt"]), str(run["files"][0][0]),
                 str(folder / "missing.png")]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{run['files'][0][0]}: ") and "missing.png" in captured.err


def test_bad_checkpoints_are_one_line_errors_with_status_1(run, tmp_path, capsys):
    png = str(run["files"][0][0])
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes((run["ckpt"] / "checkpoint.npz").read_bytes()[:3000])
    for ckpt, words in ((damaged, "truncated or not a fastconv"),
                        (tmp_path / "none.npz", "does not exist"),
                        (run["files"][0][1], "is a single .npy array")):
        assert main(["predict", str(ckpt), png]) == 1
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:                       # a usage error: status 2
        main(["predict", str(run["ckpt"]), png, "--top-k", "0"])
    assert exc.value.code == 2 and "--top-k" in capsys.readouterr().err


def test_checkpoint_without_stored_normalisation_uses_its_dataset(run, tmp_path, capsys,
                                                                   monkeypatch):
    """Checkpoints written before fastconv train stored the preprocessing still work: the
    statistics and classes come from the run's dataset."""
    ck = read_checkpoint(run["ckpt"] / "checkpoint.npz")
    meta = dict(ck["meta"]["meta"])
    assert meta.pop("data_info")["mean"] == list(load_dataset("fashion-mnist-subset").mean)
    model = get_model("lenet5", seed=0)
    load_checkpoint(run["ckpt"] / "checkpoint.npz", model)
    old = tmp_path / "old.npz"
    save_checkpoint(old, model, epoch=1, meta=meta)
    png = str(run["files"][1][0])
    assert main(["predict", str(run["ckpt"]), png]) == 0
    new_out = capsys.readouterr().out
    assert main(["predict", str(old), png]) == 0
    assert capsys.readouterr().out == new_out
    # ... and say so when that dataset is not found
    meta["dataset_resolved"] = "mnist"
    save_checkpoint(old, model, epoch=1, meta=meta)
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "nothing"))
    import fastconv.data.datasets as datasets
    monkeypatch.setitem(datasets._SYSTEM_DIRS, "mnist", str(tmp_path / "none"))
    assert main(["predict", str(old), png]) == 1
    err = capsys.readouterr().err
    assert "dataset 'mnist' not found" in err and err.count("\n") == 1
