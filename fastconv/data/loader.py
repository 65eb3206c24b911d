"""A batch loader over in-memory arrays: shuffle by seed, drop_last, transforms."""
import numpy as np

__all__ = ["DataLoader", "ArraysLoader"]


class DataLoader:
    """Iterate over (x, y) in mini-batches of float images and int64 labels.

    Parameters
    ----------
    x : ndarray (N, C, H, W), uint8 (pixels 0..255, scaled to [0, 1]) or float; or a
        float (N, ...) array without ``augment`` (e.g. precomputed features).
    y : ndarray (N,) of integer labels.
    batch_size : int
    shuffle : bool
        A new permutation every epoch, drawn from ``default_rng([seed, epoch])``: the
        order depends only on (seed, epoch), so a resumed run sees the same batches.
    seed : int
    drop_last : bool
        Drop the last, smaller batch (so every step sees ``batch_size`` images).
    augment : callable ``(x, rng) -> x`` or None
        Random augmentation, applied to the [0, 1] images before ``normalize``.
    normalize : callable or None
        e.g. ``transforms.Normalize(mean, std)``, applied last.
    dtype : float32 or float64, the dtype of the image batches.

    The epoch number advances after each full pass; ``set_epoch(e)`` sets it (the
    training loop does this so that resuming at epoch e reproduces its batches).

    Examples
    --------
    >>> x = np.zeros((10, 1, 28, 28), np.uint8); y = np.arange(10)
    >>> [xb.shape[0] for xb, yb in DataLoader(x, y, batch_size=4)]
    [4, 4, 2]
    """

    def __init__(self, x, y, batch_size=128, shuffle=False, seed=0, drop_last=False,
                 augment=None, normalize=None, dtype=np.float32):
        x, y = np.asarray(x), np.asarray(y)
        # images are 4-D; float arrays of other shapes (precomputed features) pass unaugmented
        if x.ndim != 4 and (augment is not None or x.ndim < 2 or x.dtype == np.uint8):
            raise ValueError(f"DataLoader: x must be 4-D (N, C, H, W) images, or float "
                             f"(N, features...) without augment; got {x.dtype} of shape {x.shape}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"DataLoader: y must have shape ({x.shape[0]},), got {y.shape}")
        if x.shape[0] == 0:
            raise ValueError("DataLoader: x holds no images (an epoch would train on nothing)")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.augment, self.normalize = augment, normalize
        self.dtype = np.dtype(dtype)
        self.epoch = 0

    def __len__(self):
        """Number of batches per epoch."""
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self):
        """Images seen per epoch (fewer than len(x) when drop_last cuts a batch)."""
        return len(self) * self.batch_size if self.drop_last else self.x.shape[0]

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _to_float(self, xb):
        if xb.dtype == np.uint8:
            return xb.astype(self.dtype) * self.dtype.type(1 / 255)
        return xb.astype(self.dtype)

    def __iter__(self):
        # One generator per (seed, epoch): order and augmentation never depend on history.
        rng = np.random.default_rng([self.seed, self.epoch])
        n = self.x.shape[0]
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            xb = self._to_float(self.x[idx])
            if self.augment is not None:
                xb = self.augment(xb, rng)
            if self.normalize is not None:
                xb = self.normalize(xb, rng)
            yield np.ascontiguousarray(xb, dtype=self.dtype), self.y[idx].astype(np.int64)
        self.epoch += 1


class ArraysLoader:
    """Mini-batches of several inputs and several targets, for models with more than one
    input or output (see :class:`fastconv.nn.Graph`): yields ``(inputs, targets)``, two
    tuples of arrays cut from the same rows.

    Parameters
    ----------
    inputs, targets : sequences of arrays with the same first dimension N (float inputs are
        converted to ``dtype``; targets are passed as they are)
    batch_size, shuffle, seed, drop_last : as :class:`DataLoader` (order from (seed, epoch))
    """

    def __init__(self, inputs, targets, batch_size=128, shuffle=False, seed=0, drop_last=False,
                 dtype=np.float32):
        self.inputs = [np.asarray(a) for a in inputs]
        self.targets = [np.asarray(a) for a in targets]
        sizes = {a.shape[0] for a in self.inputs + self.targets if a.ndim}
        if not self.inputs or len(sizes) != 1:
            raise ValueError(f"ArraysLoader: inputs and targets must have the same number of rows, "
                             f"got {[a.shape for a in self.inputs]} and "
                             f"{[a.shape for a in self.targets]}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"ArraysLoader: batch_size must be a positive int, got {batch_size!r}")
        self.n = sizes.pop()
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.dtype = np.dtype(dtype)
        self.epoch = 0

    def __len__(self):
        n = self.n
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield (tuple(np.ascontiguousarray(a[idx], dtype=self.dtype) for a in self.inputs),
                   tuple(a[idx] for a in self.targets))
        self.epoch += 1
