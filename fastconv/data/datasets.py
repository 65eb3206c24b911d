"""Finding and loading datasets: Fashion-MNIST, MNIST, CIFAR-10 and the embedded subset.

Search path for the files of a dataset (first hit wins):

1. the ``data_dir`` argument (``fastconv train --data-dir``),
2. each directory in the ``FASTCONV_DATA`` environment variable (``os.pathsep``-separated),
3. the Debian package's directory, ``/usr/share/datasets/<name>/``
   (``apt-get install dataset-fashion-mnist`` for Fashion-MNIST).

Each directory is tried as is and with the dataset's usual sub-folder names
(``fashion-mnist/``, ``FashionMNIST/raw/``, ``cifar-10-batches-bin/`` ...).

The embedded subset (``name="fashion-mnist-subset"``) ships inside the package, so
training works with nothing installed; see ``make_subset.py`` for how it was made.
"""
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .idx import read_cifar10_bin, read_idx

__all__ = ["Dataset", "load_dataset", "find_dataset_dir", "dataset_available", "DATASETS",
           "SUBSET_PATH", "FASHION_MNIST_CLASSES", "CIFAR10_CLASSES", "DatasetNotFoundError",
           "DatasetIncompleteError"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

SUBSET_PATH = Path(__file__).with_name("fashion_mnist_subset.npz")
SUBSET_NAME = "fashion-mnist-subset"
DATASETS = ("fashion-mnist", "mnist", "cifar10", SUBSET_NAME)
_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10",
            "embedded": SUBSET_NAME, "subset": SUBSET_NAME}

_SUBDIRS = {
    "fashion-mnist": ("", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
    "mnist": ("", "mnist", "MNIST/raw", "MNIST"),
    "cifar10": ("", "cifar-10-batches-bin", "cifar10/cifar-10-batches-bin", "cifar10", "cifar-10"),
}
_SYSTEM_DIRS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
    "cifar10": "/usr/share/datasets/cifar10",
}
# The four IDX files; MNIST's original site names them with a dot (train-images.idx3-ubyte).
_IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = "test_batch.bin"


_SUBSET_HINT = f"The embedded subset needs nothing: --dataset {SUBSET_NAME}."


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are in none of the search-path directories."""


class DatasetIncompleteError(FileNotFoundError):
    """A folder given explicitly (``data_dir``) holds some of the dataset's files but not all:
    an error rather than a quiet fall back to another copy of the data."""


@dataclass
class Dataset:
    """Train and test splits held in memory.

    x_* are uint8 (N, C, H, W) images, y_* int64 (N,) labels; ``mean``/``std`` are the
    training images' per-channel statistics on the [0, 1] scale (for ``Normalize``).
    """
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple
    source: str = ""
    mean: tuple = field(default=None)
    std: tuple = field(default=None)

    def __post_init__(self):
        if self.mean is None or self.std is None:
            self.mean, self.std = channel_stats(self.x_train)

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def image_shape(self):
        return tuple(self.x_train.shape[1:])

    def limit(self, n_train=None, n_test=None):
        """The first n_train / n_test images (for quick runs); statistics are kept."""
        return Dataset(self.name, self.x_train[:n_train], self.y_train[:n_train],
                       self.x_test[:n_test], self.y_test[:n_test], self.classes,
                       self.source, self.mean, self.std)

    def __repr__(self):
        return (f"Dataset({self.name!r}, train {self.x_train.shape}, test {self.x_test.shape}, "
                f"from {self.source})")


def channel_stats(x):
    """Per-channel mean and std of images scaled to [0, 1], in float64 (population std).

    uint8 images (every dataset here) are counted, not converted: with n values k_i of a
    channel, S1 = sum k_i and S2 = sum k_i**2 are exact integers, so mean = S1 / (255 n) and
    var = (n S2 - S1**2) / (255 n)**2 are each rounded once; no float copy of the training
    set is made (60,000 Fashion-MNIST images would take 376 MB and seconds in float64).
    """
    x = np.asarray(x)
    mean, std = [], []
    for c in range(x.shape[1]):
        if x.dtype == np.uint8:
            counts = np.bincount(x[:, c].ravel(), minlength=256).tolist()
            n = sum(counts)
            s1 = sum(k * m for k, m in enumerate(counts))
            s2 = sum(k * k * m for k, m in enumerate(counts))
            mean.append(s1 / (255 * n))
            std.append(math.sqrt((n * s2 - s1 * s1) / (255 * n) ** 2))
        else:
            xc = x[:, c].astype(np.float64)
            mean.append(float(xc.mean()))
            std.append(float(xc.std()))
    return tuple(mean), tuple(std)


def canonical_name(name):
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return key


def search_path(name, data_dir=None):
    """The directories searched for ``name``, in order (see the module docstring)."""
    bases = []
    if data_dir:
        bases.append(Path(data_dir))
    for entry in os.environ.get("FASTCONV_DATA", "").split(os.pathsep):
        if entry.strip():
            bases.append(Path(entry.strip()))
    if name in _SYSTEM_DIRS:
        bases.append(Path(_SYSTEM_DIRS[name]))
    dirs = []
    for base in bases:
        for sub in _SUBDIRS[name]:
            d = base / sub if sub else base
            if d not in dirs:
                dirs.append(d)
    return dirs


def _found_idx_files(directory):
    """{'x_train': path, ...} for those of the four IDX files that are in directory."""
    found = {}
    for key, stems in _IDX_FILES.items():
        paths = [directory / (stem + suffix) for stem in stems for suffix in ("", ".gz")]
        found.update({key: p for p in reversed(paths) if p.is_file()})
    return found


def _idx_files(directory):
    """{'x_train': path, ...} when all four IDX files are in directory, else None."""
    found = _found_idx_files(directory)
    return found if len(found) == len(_IDX_FILES) else None


def _missing_files(name, directory):
    """The names of ``name``'s files missing from directory, when some (not all) are there."""
    if name == "cifar10":
        wanted = {f: f for f in _CIFAR_TRAIN + (_CIFAR_TEST,)}
        present = {f for f in wanted if (directory / f).is_file()}
    else:
        wanted = {key: f"{stems[0]}[.gz]" for key, stems in _IDX_FILES.items()}
        present = set(_found_idx_files(directory))
    return [wanted[k] for k in wanted if k not in present] if present else []


def _has_cifar(directory):
    return all((directory / f).is_file() for f in _CIFAR_TRAIN + (_CIFAR_TEST,))


def _check_explicit_dir(name, data_dir):
    """An explicitly given folder must exist, and may not hold only part of the dataset."""
    base = Path(data_dir)
    if not base.is_dir():
        raise DatasetNotFoundError(f"dataset {name!r}: the data folder {base} does not exist. "
                                   f"{_SUBSET_HINT}")
    for sub in _SUBDIRS[name]:
        d = base / sub if sub else base
        if d.is_dir() and (missing := _missing_files(name, d)):
            raise DatasetIncompleteError(
                f"dataset {name!r}: the folder {d} holds only part of it; missing "
                f"{', '.join(missing)}")


def find_dataset_dir(name, data_dir=None):
    """The first directory of the search path holding ``name``'s files.

    Raises DatasetNotFoundError listing every directory tried and how to get the data.
    """
    name = canonical_name(name)
    if name == SUBSET_NAME:
        return SUBSET_PATH.parent
    if data_dir:
        _check_explicit_dir(name, data_dir)
    tried = search_path(name, data_dir)
    for d in tried:
        if (name == "cifar10" and _has_cifar(d)) or (name != "cifar10" and _idx_files(d)):
            return d
    hint = {
        "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist`, or download the "
                         "four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist",
        "mnist": "download the four *-ubyte.gz files of MNIST",
        "cifar10": "download and unpack the binary version, cifar-10-binary.tar.gz, from "
                   "https://www.cs.toronto.edu/~kriz/cifar.html",
    }[name]
    raise DatasetNotFoundError(
        f"dataset {name!r} not found; searched: {', '.join(str(d) for d in tried) or '(nothing)'}. "
        f"Name a folder with --data-dir or FASTCONV_DATA, or {hint}. {_SUBSET_HINT}")


def dataset_available(name, data_dir=None):
    try:
        find_dataset_dir(name, data_dir)
        return True
    except (DatasetNotFoundError, DatasetIncompleteError):
        return False


def _as_nchw(images):
    """IDX images (N, H, W) -> (N, 1, H, W)."""
    return images[:, None] if images.ndim == 3 else images


def _read_idx_split(images_path, labels_path, num_classes):
    """(images (N, 1, H, W) uint8, labels (N,)) of one split, checked against each other."""
    x, y = read_idx(images_path), read_idx(labels_path)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"{images_path}: expected uint8 images (N, H, W), got {x.dtype} of "
                         f"shape {x.shape}")
    if y.dtype.kind not in "iu" or y.ndim != 1:
        raise ValueError(f"{labels_path}: expected integer labels (N,), got {y.dtype} of "
                         f"shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{images_path} holds {x.shape[0]} images but {labels_path} holds "
                         f"{y.shape[0]} labels")
    _check_labels(labels_path, y, num_classes)
    return _as_nchw(x), y


def _check_labels(path, y, num_classes):
    if y.size == 0:
        raise ValueError(f"{path}: holds no images")
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise ValueError(f"{path}: label {int(bad[0])} is outside 0..{num_classes - 1} "
                         f"({bad.size} such labels)")


def load_dataset(name="fashion-mnist", data_dir=None):
    """Load a dataset as a :class:`Dataset` of uint8 NCHW images and int64 labels.

    Parameters
    ----------
    name : "fashion-mnist", "mnist", "cifar10" or "fashion-mnist-subset" (embedded)
    data_dir : str or None, searched first (then FASTCONV_DATA, then /usr/share/datasets).

    Examples
    --------
    >>> ds = load_dataset("fashion-mnist-subset")
    >>> ds.x_train.shape[1:], ds.x_train.dtype, ds.num_classes
    ((1, 28, 28), dtype('uint8'), 10)
    """
    name = canonical_name(name)
    if name == SUBSET_NAME:
        return load_subset()
    directory = find_dataset_dir(name, data_dir)
    if name == "cifar10":
        parts = [read_cifar10_bin(directory / f) for f in _CIFAR_TRAIN]
        x_train = np.concatenate([p[0] for p in parts])
        y_train = np.concatenate([p[1] for p in parts])
        x_test, y_test = read_cifar10_bin(directory / _CIFAR_TEST)
        classes = CIFAR10_CLASSES
    else:
        files = _idx_files(directory)
        classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
        x_train, y_train = _read_idx_split(files["x_train"], files["y_train"], len(classes))
        x_test, y_test = _read_idx_split(files["x_test"], files["y_test"], len(classes))
        if x_train.shape[1:] != x_test.shape[1:]:
            raise ValueError(f"{files['x_test']}: images of shape {x_test.shape[2:]}, but "
                             f"{files['x_train']} holds {x_train.shape[2:]}")
    return Dataset(name, x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64),
                   classes, source=str(directory))


def load_subset(path=SUBSET_PATH):
    """The embedded, class-balanced Fashion-MNIST subset (see make_subset.py)."""
    if not Path(path).is_file():
        raise DatasetNotFoundError(f"the embedded subset {path} is missing from this installation; "
                                   "rebuild it with `python -m fastconv.data.make_subset`")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    return Dataset(SUBSET_NAME, arrays["x_train"], arrays["y_train"].astype(np.int64),
                   arrays["x_test"], arrays["y_test"].astype(np.int64),
                   FASHION_MNIST_CLASSES, source=f"embedded ({Path(path).name})")
