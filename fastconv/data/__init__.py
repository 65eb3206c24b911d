"""Datasets, the batch loader and transforms.

>>> from fastconv.data import load_dataset, DataLoader
>>> ds = load_dataset("fashion-mnist-subset")          # embedded: works with nothing installed
>>> xb, yb = next(iter(DataLoader(ds.x_train, ds.y_train, batch_size=32, shuffle=True, seed=0)))
>>> xb.shape, xb.dtype, yb.dtype
((32, 1, 28, 28), dtype('float32'), dtype('int64'))
"""
from .datasets import (CIFAR10_CLASSES, DATASETS, FASHION_MNIST_CLASSES, SUBSET_PATH, Dataset,
                       DatasetIncompleteError, DatasetNotFoundError, dataset_available, find_dataset_dir, load_dataset,
                       load_subset, search_path)
from .idx import read_cifar10_bin, read_idx, write_idx
from .loader import ArraysLoader, DataLoader
from .transforms import (Compose, Normalize, RandomCrop, RandomHorizontalFlip, RandomRotation,
                         RandomTranslate, RandomZoom, affine_batch, make_augmentation)

__all__ = ["CIFAR10_CLASSES", "DATASETS", "FASHION_MNIST_CLASSES", "SUBSET_PATH", "Dataset",
           "DatasetIncompleteError", "DatasetNotFoundError", "dataset_available", "find_dataset_dir", "load_dataset",
           "load_subset", "search_path", "read_cifar10_bin", "read_idx", "write_idx", "DataLoader",
           "ArraysLoader", "Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip",
           "RandomTranslate", "RandomRotation", "RandomZoom", "affine_batch", "make_augmentation"]
