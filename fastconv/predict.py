"""Classify one's own images with a trained checkpoint (``fastconv predict``).

    fastconv predict runs/lenet5-fashion-mnist/latest shoe.png bag.jpg --top-k 3

Each image is prepared as the model's training images were: converted to grey or RGB
(the model's input channels), resized to its input size, scaled to [0, 1] and normalised
with the training set's per-channel mean and std. ``fastconv train`` stores those (with the
class names) in the checkpoint; for a checkpoint written before it did, they are recomputed
from the run's dataset.

>>> clf = load_classifier("runs/lenet5-fashion-mnist/latest/checkpoint.npz")   # doctest: +SKIP
>>> clf.top_k(clf.load_image("shoe.png"), k=2)                                  # doctest: +SKIP
[('Sneaker', 0.91), ('Sandal', 0.05)]
"""
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["Classifier", "load_classifier", "ImageError", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")


class ImageError(ValueError):
    """An image file that cannot be classified: missing, not an image, damaged, or with
    channels the model cannot take."""


def data_info(ds):
    """What ``fastconv train`` stores in a checkpoint so that ``predict`` prepares images as
    the training data was: image shape, class names, per-channel mean and std."""
    return {"image_shape": [int(v) for v in ds.image_shape], "classes": list(ds.classes),
            "mean": [float(v) for v in ds.mean], "std": [float(v) for v in ds.std]}


@dataclass
class Classifier:
    """A trained model with its input preparation and class names (see load_classifier)."""
    model: object                 # the fused, eval-only model
    name: str
    image_shape: tuple            # (C, H, W)
    classes: tuple
    mean: tuple
    std: tuple
    dtype: np.dtype

    def load_image(self, path, invert=False):
        """The image file ``path`` as one model input (C, H, W), prepared as in training.

        PNG/JPEG (and whatever else Pillow reads) are converted to grey ("L") or RGB and
        resized to H x W (bilinear, the aspect ratio is not kept). ``.npy`` holds (H, W),
        (C, H, W) or (H, W, C) pixels: uint8 0..255, or floats on the [0, 1] scale; it is
        resized likewise when its size differs. ``invert`` turns dark-on-light pictures into
        the light-on-dark of (Fashion-)MNIST. Raises ImageError naming the file.
        """
        C, H, W = self.image_shape
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ImageError(f"{path}: no such file")
        if path.lower().endswith(".npy"):
            planes = _npy_planes(path, C)
        else:
            planes = _picture_planes(path, C)
        # to [0, 1] as the training loader does (DataLoader._to_float): the same bits
        dt = self.dtype.type
        x = np.stack([p.astype(self.dtype) * dt(1 / 255) if p.dtype == np.uint8
                      else p.astype(self.dtype) for p in (_resized(p, H, W) for p in planes)])
        if invert:
            x = dt(1) - x
        from .data import Normalize
        return Normalize(self.mean, self.std)(x[None])[0]

    def probabilities(self, x, batch_size=256):
        """Class probabilities (N, classes) of prepared inputs x (N, C, H, W)."""
        from . import functional as F
        logits = self.model.predict(np.asarray(x, dtype=self.dtype), batch_size=batch_size)
        return F.softmax(logits.astype(np.float64), dim=1)

    def top_k(self, x, k=3):
        """[(class name, probability), ...] of the k most likely classes of one prepared
        input x (C, H, W), most likely first."""
        p = self.probabilities(x[None])[0]
        order = np.argsort(-p, kind="stable")[:k]
        return [(self.classes[i], float(p[i])) for i in order]


def _picture_planes(path, C):
    """A PNG/JPEG file as C uint8 planes (Pillow converts any mode to grey or RGB)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImageError(f"{path}: reading images needs Pillow (pip install pillow); "
                         ".npy files work without it") from None
    try:
        with Image.open(path) as img:
            img = img.convert("L" if C == 1 else "RGB")   # loads the pixels: damage shows here
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (PNG, JPEG, ...) nor a .npy "
                         "array") from None
    except (OSError, ValueError, SyntaxError) as exc:    # truncated or corrupt data
        raise ImageError(f"{path}: damaged image ({exc})") from None
    if C not in (1, 3):
        raise ImageError(f"{path}: the model takes {C}-channel images; pictures are grey (1) "
                         f"or RGB (3): give a .npy of shape ({C}, H, W)")
    a = np.asarray(img)
    return [a] if a.ndim == 2 else [a[..., c] for c in range(3)]


def _npy_planes(path, C):
    """A .npy file as C planes: uint8 (0..255), or float64 (the [0, 1] scale)."""
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageError(f"{path}: not a readable .npy array ({exc})") from None
    if a.dtype.kind not in "uif" or a.dtype.kind == "b":
        raise ImageError(f"{path}: holds {a.dtype} values; pixels are uint8 or floats")
    if a.ndim == 2 and C == 1:
        a = a[None]
    elif a.ndim == 3 and a.shape[0] == C:
        pass
    elif a.ndim == 3 and a.shape[-1] == C:
        a = np.moveaxis(a, -1, 0)
    else:
        raise ImageError(f"{path}: shape {a.shape} does not fit the model's {C}-channel input: "
                         f"give (C, H, W) or (H, W, C) with C = {C}"
                         + (", or (H, W)" if C == 1 else ""))
    if min(a.shape) == 0:
        raise ImageError(f"{path}: empty array of shape {a.shape}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ImageError(f"{path}: holds NaN or Inf")
    return list(a)


def _resized(plane, H, W):
    """A plane resized to H x W by Pillow (bilinear): uint8 stays uint8 (as a grey picture
    would), anything else becomes float32 (Pillow's mode "F")."""
    if plane.shape == (H, W):
        return plane
    from PIL import Image
    if plane.dtype != np.uint8:
        plane = plane.astype(np.float32)
    img = Image.fromarray(np.ascontiguousarray(plane))
    return np.asarray(img.resize((W, H), Image.Resampling.BILINEAR))


def load_classifier(path, data_dir=None):
    """The trained model of the checkpoint ``path`` (or run folder), fused for inference,
    with what its images need (see the module docstring).

    Raises CheckpointError for a damaged checkpoint or one that does not say which model it
    holds, FileNotFoundError when it is missing, and DatasetNotFoundError when an old
    checkpoint's dataset (needed for its statistics) is not found (``data_dir``).
    """
    from . import nn
    from .models import get_model
    from .train import CheckpointError, load_checkpoint, read_checkpoint
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.npz")
    ck = read_checkpoint(path)
    meta = ck["meta"].get("meta") or {}
    name = meta.get("model")
    if not isinstance(name, str):
        raise CheckpointError(f"checkpoint {path} does not say which model it holds (not "
                              "written by fastconv train)")
    info = meta.get("data_info") or _info_from_dataset(path, meta, data_dir)
    try:
        shape = tuple(int(v) for v in info["image_shape"])
        classes = tuple(str(c) for c in info["classes"])
        mean, std = tuple(info["mean"]), tuple(info["std"])
        dtype = np.dtype(meta.get("dtype") or "float32")
        if len(shape) != 3 or len(mean) != shape[0] or len(std) != shape[0] or not classes:
            raise ValueError("inconsistent sizes")
        model = get_model(name, in_channels=shape[0], num_classes=len(classes),
                          input_size=shape[1], dtype=dtype)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: its model or data description is not "
                              f"usable ({exc})") from None
    load_checkpoint(path, model)
    return Classifier(nn.fuse_for_inference(model), name, shape, classes, mean, std, dtype)


def _info_from_dataset(path, meta, data_dir):
    """data_info for a checkpoint written before fastconv train stored it: from its dataset."""
    from .data import load_dataset
    dataset = meta.get("dataset_resolved") or "fashion-mnist-subset"
    options = meta.get("options") or {}
    ds = load_dataset(dataset, data_dir or options.get("data_dir"))
    return data_info(ds)
