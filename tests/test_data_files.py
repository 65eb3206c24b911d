"""Damaged dataset files: each raises a clear error naming the file, before any training.

A small MNIST-like folder (12 train, 4 test images, IDX, raw or gzip) is written and one file
is damaged per case; loading must fail with ValueError (or a FileNotFoundError subclass for a
missing file) whose message names the damaged or missing file.
"""
import gzip
import tracemalloc

import numpy as np
import pytest

from fastconv.data import (DataLoader, DatasetIncompleteError, DatasetNotFoundError,
                           load_dataset, read_cifar10_bin, read_idx, write_idx)

N_TRAIN, N_TEST = 12, 4
FILES = {"xtr": "train-images-idx3-ubyte", "ytr": "train-labels-idx1-ubyte",
         "xte": "t10k-images-idx3-ubyte", "yte": "t10k-labels-idx1-ubyte"}


def idx_bytes(array, shape=None, code=None):
    """An IDX file's bytes for ``array``; ``shape``/``code`` override the header's."""
    array = np.asarray(array)
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D}
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    shape = array.shape if shape is None else shape
    header = bytes([0, 0, codes[dtype] if code is None else code, len(shape)])
    return header + np.asarray(shape, ">u4").tobytes() + array.astype(dtype).tobytes()


def good_arrays(rng):
    return {"xtr": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
            "ytr": np.arange(N_TRAIN, dtype=np.uint8) % 10,
            "xte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
            "yte": np.arange(N_TEST, dtype=np.uint8) % 10}


def gz(data):
    return gzip.compress(data)


X = np.zeros((N_TRAIN, 28, 28), np.uint8)
Y = np.arange(N_TRAIN, dtype=np.uint8) % 10

# name -> (file key, bytes of the damaged file (raw IDX unless gzipped here))
CASES = {
    "header claims fewer images": ("xtr", idx_bytes(X, shape=(N_TRAIN - 2, 28, 28))),
    "header claims fewer images, gzip": ("xtr", gz(idx_bytes(X, shape=(N_TRAIN - 2, 28, 28)))),
    "header claims more images": ("xtr", idx_bytes(X, shape=(N_TRAIN + 2, 28, 28))),
    "header claims more images, gzip": ("xtr", gz(idx_bytes(X, shape=(N_TRAIN + 2, 28, 28)))),
    "payload one byte short": ("xtr", idx_bytes(X)[:-1]),
    "payload one byte short, gzip": ("xtr", gz(idx_bytes(X)[:-1])),
    "trailing bytes": ("ytr", idx_bytes(Y) + b"\0\0"),
    "trailing bytes, gzip": ("ytr", gz(idx_bytes(Y) + b"\0\0")),
    "label 10 of 10 classes": ("ytr", idx_bytes(np.where(Y == 3, 10, Y).astype(np.uint8))),
    "label 255": ("yte", idx_bytes(np.array([0, 1, 255, 2], np.uint8))),
    "negative label (int8)": ("ytr", idx_bytes(Y.astype(np.int8) - 1)),
    "huge label (int32)": ("ytr", idx_bytes(Y.astype(np.int32) * 1000)),
    "fewer labels than images": ("ytr", idx_bytes(Y[:-1])),
    "more test labels than images": ("yte", idx_bytes(np.zeros(N_TEST + 1, np.uint8))),
    "no train images": ("xtr", idx_bytes(np.zeros((0, 28, 28), np.uint8))),
    "bad magic": ("xtr", b"\x01\x02" + idx_bytes(X)[2:]),
    "unknown type code": ("xtr", idx_bytes(X, code=0x07)),
    "zero dimensions": ("xtr", b"\0\0\x08\0" + X.tobytes()),
    "header cut short": ("xtr", idx_bytes(X)[:9]),
    "three bytes": ("yte", b"\0\0\x08"),
    "empty file": ("xte", b""),
    "float images": ("xtr", idx_bytes(X.astype(">f4"))),
    "flat images (N, 784)": ("xtr", idx_bytes(X.reshape(N_TRAIN, 784))),
    "images of width 0": ("xte", idx_bytes(np.zeros((N_TEST, 28, 0), np.uint8))),
    "labels 2-D": ("ytr", idx_bytes(Y.reshape(N_TRAIN, 1))),
    "float labels": ("ytr", idx_bytes(Y.astype(">f4"))),
    "test images 14x14": ("xte", idx_bytes(np.zeros((N_TEST, 14, 14), np.uint8))),
    "gzip cut short": ("xtr", gz(idx_bytes(X))[:-30]),
    "gzip bytes flipped": ("xtr", (lambda b: b[:40] + bytes(255 - c for c in b[40:60]) + b[60:])(
        gz(idx_bytes(X)))),
    "huge header, small file": ("xtr", idx_bytes(X, shape=(2**32 - 1, 2**16, 2**16))),
    "huge header, small gzip": ("xtr", gz(idx_bytes(X, shape=(2**32 - 1, 2**16, 2**16)))),
}


def write_folder(folder, rng, damaged=None):
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in good_arrays(rng).items():
        (folder / FILES[key]).write_bytes(idx_bytes(array))
    if damaged is not None:
        key, data = damaged
        (folder / FILES[key]).write_bytes(data)
    return folder


def test_the_good_folder_loads(tmp_path, rng):
    ds = load_dataset("mnist", write_folder(tmp_path / "d", rng))
    assert ds.x_train.shape == (N_TRAIN, 1, 28, 28) and ds.y_test.shape == (N_TEST,)


@pytest.mark.parametrize("name", list(CASES))
def test_damaged_idx_file_is_refused_with_its_name(name, tmp_path, rng):
    key, data = CASES[name]
    folder = write_folder(tmp_path / "d", rng, (key, data))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            load_dataset("mnist", folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(folder / FILES[key]) in str(info.value), info.value
    assert peak < 4 << 20, f"{peak} bytes for a {len(data)}-byte file"   # nothing huge


def test_incomplete_data_dir_names_the_missing_files(tmp_path, rng, monkeypatch):
    """A folder given explicitly that lacks some files is an error, never a silent fall back
    to another copy of the data (FASTCONV_DATA or the system folder)."""
    complete = write_folder(tmp_path / "complete", rng)
    monkeypatch.setenv("FASTCONV_DATA", str(complete))
    partial = write_folder(tmp_path / "partial", rng)
    (partial / FILES["yte"]).unlink()
    (partial / FILES["xte"]).unlink()
    with pytest.raises(DatasetIncompleteError) as info:
        load_dataset("mnist", partial)
    message = str(info.value)
    assert str(partial) in message and FILES["yte"] in message and FILES["xte"] in message
    assert FILES["xtr"] not in message
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset("mnist", tmp_path / "typo")
    assert load_dataset("mnist").source == str(complete)     # without data_dir: the search path


def test_cifar_batch_with_no_records_or_bad_label(tmp_path):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.bin"):
        read_cifar10_bin(empty)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes([10]) + bytes(3072))
    with pytest.raises(ValueError, match="bad.bin"):
        read_cifar10_bin(bad)


def test_read_idx_round_trip_still_exact(tmp_path, rng):
    for suffix in ("", ".gz"):
        a = rng.integers(-100, 100, (3, 5)).astype(np.int32)
        write_idx(tmp_path / f"a{suffix}", a)
        np.testing.assert_array_equal(read_idx(tmp_path / f"a{suffix}"), a)


def test_loader_refuses_an_empty_dataset():
    with pytest.raises(ValueError, match="no images"):
        DataLoader(np.zeros((0, 1, 28, 28), np.uint8), np.zeros(0, np.int64))
