"""Build the embedded Fashion-MNIST subset shipped as ``fashion_mnist_subset.npz``.

How it was made (run from a checkout with Fashion-MNIST installed by
``apt-get install dataset-fashion-mnist``)::

    python -m fastconv.data.make_subset            # writes fastconv/data/fashion_mnist_subset.npz

It takes, with ``numpy.random.default_rng(SEED)``, the same number of images of each of
the 10 classes from the official training set (N_TRAIN_PER_CLASS each) and from the
official test set (N_TEST_PER_CLASS each), keeps the original order of the chosen
images (so the file is a reproducible function of the seed and the source files), and
saves the uint8 arrays in a compressed ``.npz`` (zip deflate, about 4.4 MB):

    x_train (N_TRAIN, 1, 28, 28) uint8, y_train (N_TRAIN,) uint8,
    x_test (N_TEST, 1, 28, 28) uint8,   y_test (N_TEST,) uint8,
    train_index, test_index: the positions of the chosen images in the original files.

Fashion-MNIST is (c) 2017 Zalando SE, MIT licence: see LICENSE-fashion-mnist.txt
next to the subset.
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np

from .datasets import SUBSET_PATH, load_dataset

SEED = 20171201          # Fashion-MNIST's release year and month; any fixed number would do
N_TRAIN_PER_CLASS = 800  # 8,000 training images
N_TEST_PER_CLASS = 200   # 2,000 test images


def balanced_index(labels, per_class, rng):
    """Sorted positions of ``per_class`` images of each class, drawn without replacement."""
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
              for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def make_subset(out=SUBSET_PATH, data_dir=None, seed=SEED,
                train_per_class=N_TRAIN_PER_CLASS, test_per_class=N_TEST_PER_CLASS):
    ds = load_dataset("fashion-mnist", data_dir)
    rng = np.random.default_rng(seed)
    train_index = balanced_index(ds.y_train, train_per_class, rng)
    test_index = balanced_index(ds.y_test, test_per_class, rng)
    arrays = dict(x_train=ds.x_train[train_index], y_train=ds.y_train[train_index].astype(np.uint8),
                  x_test=ds.x_test[test_index], y_test=ds.y_test[test_index].astype(np.uint8),
                  train_index=train_index.astype(np.int32), test_index=test_index.astype(np.int32))
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:          # a file object: np.savez does not append ".npz"
        np.savez_compressed(f, **arrays)
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {len(train_index)} train and "
          f"{len(test_index)} test images from {ds.source}, seed {seed}")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(SUBSET_PATH))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    make_subset(args.out, args.data_dir, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
