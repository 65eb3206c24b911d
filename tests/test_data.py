"""Datasets, readers, the batch loader and transforms."""
import gzip

import numpy as np
import pytest

from fastconv.data import (DataLoader, DatasetNotFoundError, Normalize, RandomCrop,
                           RandomHorizontalFlip, RandomTranslate, find_dataset_dir, load_dataset,
                           make_augmentation, read_cifar10_bin, read_idx, write_idx)
from fastconv.data.datasets import SUBSET_PATH


# --------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, rng, compress, dtype):
    a = (rng.standard_normal((5, 3, 4)) * 100).astype(dtype)
    path = tmp_path / ("a.idx" + (".gz" if compress else ""))
    write_idx(path, a)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.shape == a.shape
    np.testing.assert_array_equal(got, a)


def test_idx_header_by_hand(tmp_path):
    """The bytes of a 2x3 uint8 IDX file, written without write_idx."""
    raw = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    (tmp_path / "m-idx2-ubyte").write_bytes(raw)
    with gzip.open(tmp_path / "m-idx2-ubyte.gz", "wb") as f:
        f.write(raw)
    for name in ("m-idx2-ubyte", "m-idx2-ubyte.gz"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), [[1, 2, 3], [4, 5, 6]])


def test_idx_bad_magic(tmp_path):
    (tmp_path / "bad").write_bytes(bytes([0x50, 0x4B, 3, 4]) + bytes(20))   # a zip header
    with pytest.raises(ValueError, match="bad magic number"):
        read_idx(tmp_path / "bad")
    (tmp_path / "bad_type").write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 9]))
    with pytest.raises(ValueError, match="bad magic number"):
        read_idx(tmp_path / "bad_type")


def test_idx_truncated(tmp_path):
    write_idx(tmp_path / "a", np.zeros((4, 5), np.uint8))
    data = (tmp_path / "a").read_bytes()
    (tmp_path / "short").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    write_idx(tmp_path / "b.gz", np.zeros((4, 5), np.uint8))
    (tmp_path / "short.gz").write_bytes((tmp_path / "b.gz").read_bytes()[:-10])
    with pytest.raises(ValueError):
        read_idx(tmp_path / "short.gz")


# --------------------------------------------------------------------------- CIFAR-10

def _write_cifar(path, images, labels):
    records = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(len(labels), -1)], 1)
    records.astype(np.uint8).tofile(path)


def test_cifar_reader(tmp_path, rng):
    images = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    labels = np.array([7, 0, 9], np.uint8)
    _write_cifar(tmp_path / "data_batch_1.bin", images, labels)
    x, y = read_cifar10_bin(tmp_path / "data_batch_1.bin")
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    # channel planes are stored R, G, B: the first byte after the label is red pixel (0, 0)
    assert (tmp_path / "data_batch_1.bin").read_bytes()[1] == images[0, 0, 0, 0]


def test_cifar_reader_bad_size(tmp_path):
    (tmp_path / "x.bin").write_bytes(bytes(3073 + 5))
    with pytest.raises(ValueError, match="3073"):
        read_cifar10_bin(tmp_path / "x.bin")


def test_cifar_dataset_from_dir(tmp_path, rng):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        _write_cifar(folder / name, rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8),
                     np.array([1, 2], np.uint8))
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (2, 3, 32, 32)
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 10 and len(ds.mean) == 3


# --------------------------------------------------------------------------- search path

def _write_mnist_dir(folder, rng, n_train=12, n_test=4, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(folder / f"train-labels-idx1-ubyte{sfx}", np.arange(n_train, dtype=np.uint8) % 10)
    write_idx(folder / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    write_idx(folder / f"t10k-labels-idx1-ubyte{sfx}", np.arange(n_test, dtype=np.uint8) % 10)


def test_search_path_order(tmp_path, rng, monkeypatch):
    _write_mnist_dir(tmp_path / "a" / "mnist", rng, n_train=12)
    _write_mnist_dir(tmp_path / "b", rng, n_train=6, gz=False)
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "b"))
    assert find_dataset_dir("mnist") == tmp_path / "b"                       # env
    assert find_dataset_dir("mnist", tmp_path / "a") == tmp_path / "a" / "mnist"   # --data-dir first
    ds = load_dataset("mnist", tmp_path / "a")
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.y_test.tolist() == [0, 1, 2, 3]
    assert load_dataset("mnist").x_train.shape == (6, 1, 28, 28)


def test_dataset_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="fashion-mnist-subset"):
        load_dataset("mnist", data_dir=tmp_path / "nothing")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


def test_embedded_subset():
    assert SUBSET_PATH.is_file() and SUBSET_PATH.stat().st_size < 6e6
    assert (SUBSET_PATH.parent / "LICENSE-fashion-mnist.txt").is_file()
    ds = load_dataset("fashion-mnist-subset")
    assert ds.x_train.shape == (8000, 1, 28, 28) and ds.x_test.shape == (2000, 1, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(ds.y_train), [800] * 10)    # class-balanced
    np.testing.assert_array_equal(np.bincount(ds.y_test), [200] * 10)
    assert 0.25 < ds.mean[0] < 0.32 and 0.3 < ds.std[0] < 0.4
    assert ds.classes[9] == "Ankle boot"


# --------------------------------------------------------------------------- loader

@pytest.fixture
def small():
    x = np.arange(10 * 1 * 2 * 2, dtype=np.uint8).reshape(10, 1, 2, 2)
    return x, np.arange(10) % 3


def test_loader_shapes_dtypes(small):
    x, y = small
    batches = list(DataLoader(x, y, batch_size=4))
    assert [b[0].shape for b in batches] == [(4, 1, 2, 2), (4, 1, 2, 2), (2, 1, 2, 2)]
    xb, yb = batches[0]
    assert xb.dtype == np.float32 and yb.dtype == np.int64 and xb.flags.c_contiguous
    np.testing.assert_allclose(xb, x[:4] / 255, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)   # no shuffle: in order
    assert len(DataLoader(x, y, batch_size=4)) == 3
    assert next(iter(DataLoader(x, y, 4, dtype=np.float64)))[0].dtype == np.float64


def test_loader_drop_last(small):
    x, y = small
    loader = DataLoader(x, y, batch_size=4, drop_last=True)
    assert len(loader) == 2 and loader.num_samples == 8
    assert [len(b[1]) for b in loader] == [4, 4]


def test_loader_shuffle_reproducible(small):
    x, y = small

    def order(seed, epoch):
        loader = DataLoader(x, np.arange(10), batch_size=3, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return np.concatenate([b[1] for b in loader])

    a = order(0, 0)
    assert sorted(a) == list(range(10)) and not np.array_equal(a, np.arange(10))
    np.testing.assert_array_equal(a, order(0, 0))            # same seed, same epoch: same order
    assert not np.array_equal(a, order(0, 1))                # a new permutation each epoch
    assert not np.array_equal(a, order(1, 0))
    loader = DataLoader(x, np.arange(10), batch_size=3, shuffle=True, seed=0)
    first = np.concatenate([b[1] for b in loader])
    second = np.concatenate([b[1] for b in loader])          # epoch advances by itself
    np.testing.assert_array_equal(first, a)
    np.testing.assert_array_equal(second, order(0, 1))
    # labels stay with their images
    for xb, yb in DataLoader(x, y, batch_size=3, shuffle=True, seed=5):
        idx = np.rint(xb[:, 0, 0, 0] * 255).astype(int) // 4
        np.testing.assert_array_equal(yb, y[idx])


def test_loader_bad_args(small):
    x, y = small
    with pytest.raises(ValueError, match="4-D"):
        DataLoader(x[:, 0], y)
    with pytest.raises(ValueError, match="y must have shape"):
        DataLoader(x, y[:5])
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(x, y, batch_size=0)


# --------------------------------------------------------------------------- transforms

def test_normalize():
    x = np.ones((2, 3, 2, 2), np.float32) * np.array([0.5, 0.25, 1.0], np.float32)[None, :, None, None]
    y = Normalize([0.5, 0.0, 0.5], [0.5, 0.25, 0.25])(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0, :, 0, 0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError):
        Normalize(0, 0)


def test_random_crop_is_a_shift_with_zero_fill(rng):
    x = rng.random((6, 2, 5, 5)).astype(np.float32) + 1    # no zeros inside the image
    y = RandomCrop(padding=2)(x, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    for n in range(6):   # find the shift: each output is the padded image at some offset
        xp = np.pad(x[n], ((0, 0), (2, 2), (2, 2)))
        hits = [(a, b) for a in range(5) for b in range(5) if np.array_equal(xp[:, a:a + 5, b:b + 5], y[n])]
        assert hits, n
    y2 = RandomCrop(size=3, padding=0)(x, np.random.default_rng(1))
    assert y2.shape == (6, 2, 3, 3)
    np.testing.assert_array_equal(RandomCrop(padding=2)(x, np.random.default_rng(0)), y)  # seeded


def test_random_flip(rng):
    x = rng.random((200, 1, 3, 4))
    y = RandomHorizontalFlip()(x, np.random.default_rng(0))
    flipped = np.array([np.array_equal(y[n], x[n, :, :, ::-1]) for n in range(200)])
    same = np.array([np.array_equal(y[n], x[n]) for n in range(200)])
    assert np.all(flipped | same) and 60 < flipped.sum() < 140
    assert np.array_equal(RandomHorizontalFlip(p=0)(x, rng), x)
    assert np.array_equal(RandomHorizontalFlip(p=1)(x, rng), x[..., ::-1])


def test_random_translate(rng):
    x = np.zeros((50, 1, 10, 10))
    x[:, :, 5, 5] = 1                    # one bright pixel: where it lands is the shift
    y = RandomTranslate(2)(x, np.random.default_rng(0))
    pos = np.argwhere(y[:, 0] == 1)
    assert len(pos) == 50 and np.all(np.abs(pos[:, 1:] - 5) <= 2)
    assert len({tuple(p) for p in pos[:, 1:]}) > 5      # several different shifts
    assert y.sum() == 50                                 # nothing else appears: zero fill
    y = RandomTranslate(0.1)(x, np.random.default_rng(0))    # 10% of 10 pixels = 1
    assert np.all(np.abs(np.argwhere(y[:, 0] == 1)[:, 1:] - 5) <= 1)


def test_make_augmentation_and_loader(small):
    assert make_augmentation("none", 28) is None
    aug = make_augmentation("crop,flip,translate", 28)
    assert len(aug.transforms) == 3
    with pytest.raises(ValueError, match="unknown augmentation"):
        make_augmentation("spin", 28)
    x, y = small
    run = lambda: [b[0] for b in DataLoader(x, y, 4, shuffle=True, seed=3, augment=aug,
                                            normalize=Normalize(0.5, 0.25))]
    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)       # augmentation is reproducible with the seed


def test_channel_stats_of_uint8_images_match_the_float64_formula():
    from fastconv.data.datasets import channel_stats
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(500, 3, 9, 7), dtype=np.uint8)
    x[:, 1] //= 7                                  # a darker channel: different statistics
    mean, std = channel_stats(x)
    xf = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, xf.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(std, xf.std(axis=(0, 2, 3)), rtol=1e-12)
    assert channel_stats(np.full((4, 1, 2, 2), 200, np.uint8)) == ((200 / 255,), (0.0,))
    fmean, fstd = channel_stats(xf)                # already scaled floats: the same figures
    np.testing.assert_allclose(fmean, mean, rtol=1e-13)
    np.testing.assert_allclose(fstd, std, rtol=1e-12)
