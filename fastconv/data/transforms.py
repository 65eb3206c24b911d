"""Batch transforms for NCHW image batches: normalise and data augmentation.

Every transform is called as ``t(x, rng)`` on a whole batch ``x`` of shape (N, C, H, W)
(float, pixel values in [0, 1] before normalisation) with a ``numpy.random.Generator``
``rng``, and returns a new array; random transforms draw one choice per image from
``rng``, so the same seed gives the same batch. The loader applies augmentation
before normalisation, so padding is black (pixel 0), as in torchvision's
``RandomCrop(padding=...)`` followed by ``Normalize``.
"""
import numpy as np

__all__ = ["Compose", "Normalize", "RandomCrop", "RandomHorizontalFlip", "RandomTranslate",
           "RandomRotation", "RandomZoom", "affine_batch", "make_augmentation", "AUGMENTATIONS"]


class Compose:
    """Apply transforms in order: ``Compose([RandomCrop(28, padding=2), RandomHorizontalFlip()])``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x, rng=None):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        return f"Compose({self.transforms!r})"


class Normalize:
    """Per-channel standardisation ``(x - mean[c]) / std[c]`` (torchvision's ``Normalize``).

    ``mean`` and ``std`` are sequences of C floats (or scalars), usually the training
    set's channel statistics; the result keeps x's dtype.
    """

    def __init__(self, mean, std):
        self.mean = np.atleast_1d(np.asarray(mean, np.float64))
        self.std = np.atleast_1d(np.asarray(std, np.float64))
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be > 0, got {self.std}")

    def __call__(self, x, rng=None):
        mean = self.mean.astype(x.dtype)[None, :, None, None]
        inv_std = (1.0 / self.std).astype(x.dtype)[None, :, None, None]
        return (x - mean) * inv_std

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def _crop_batch(x, rng, out_h, out_w, pad_h, pad_w):
    """Zero-pad every image by (pad_h, pad_w), then cut an out_h x out_w window at an
    offset drawn independently per image. Gathered with one fancy-indexing call (no loop)."""
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)))
    if H + 2 * pad_h < out_h or W + 2 * pad_w < out_w:
        raise ValueError(f"crop {out_h}x{out_w} is larger than the padded image "
                         f"{H + 2 * pad_h}x{W + 2 * pad_w}")
    top = rng.integers(0, H + 2 * pad_h - out_h + 1, size=N)
    left = rng.integers(0, W + 2 * pad_w - out_w + 1, size=N)
    rows = top[:, None] + np.arange(out_h)                 # (N, out_h)
    cols = left[:, None] + np.arange(out_w)                # (N, out_w)
    return xp[np.arange(N)[:, None, None, None], np.arange(C)[None, :, None, None],
              rows[:, None, :, None], cols[:, None, None, :]]


class RandomCrop:
    """Random ``size`` crop after zero padding by ``padding`` pixels on each side
    (torchvision's ``RandomCrop(size, padding)``; the CIFAR recipe is size 32, padding 4).

    ``size`` None keeps the input size, so the crop is a random shift of up to
    ``padding`` pixels in each direction.
    """

    def __init__(self, size=None, padding=4):
        if padding < 0:
            raise ValueError(f"RandomCrop: padding must be >= 0, got {padding}")
        self.size = None if size is None else ((size, size) if np.isscalar(size) else tuple(size))
        self.padding = int(padding)

    def __call__(self, x, rng):
        out_h, out_w = self.size or x.shape[2:]
        return _crop_batch(x, rng, out_h, out_w, self.padding, self.padding)

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p`` (torchvision's ``RandomHorizontalFlip``)."""

    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, x, rng):
        flip = rng.random(x.shape[0]) < self.p
        out = x.copy()
        out[flip] = x[flip][..., ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class RandomTranslate:
    """Shift each image by a whole number of pixels, up to ``max_shift`` in each direction,
    filling the uncovered border with 0 (Keras's ``width_shift_range``/``height_shift_range``).

    ``max_shift`` is pixels (int) or a fraction of the image size (float < 1), for
    height and width or as an ``(h, w)`` pair. The shape does not change.
    """

    def __init__(self, max_shift=0.1):
        self.max_shift = max_shift if isinstance(max_shift, (tuple, list)) else (max_shift, max_shift)

    def _pixels(self, value, size):
        return int(round(value * size)) if isinstance(value, float) and value < 1 else int(value)

    def __call__(self, x, rng):
        H, W = x.shape[2:]
        mh, mw = self._pixels(self.max_shift[0], H), self._pixels(self.max_shift[1], W)
        # A translation by (dy, dx) with zero fill is a same-size crop of the zero-padded image.
        return _crop_batch(x, rng, H, W, mh, mw)

    def __repr__(self):
        return f"RandomTranslate(max_shift={self.max_shift})"


def affine_batch(x, angles, scales):
    """Rotate image n by ``angles[n]`` degrees (counter-clockwise) and scale it by
    ``scales[n]`` (> 1 zooms in) about its centre, with bilinear interpolation and 0
    outside the image (Keras's ``rotation_range``/``zoom_range`` with ``fill_mode="constant"``).

    Each output pixel (i, j) reads the input at the inverse map of its position,
    ``src = R(-angle) (dst - centre) / scale + centre``, as a weighted mean of the four
    pixels around it. x : (N, C, H, W) float; angles, scales : (N,). Returns x's shape and dtype.
    """
    N, C, H, W = x.shape
    theta = np.deg2rad(np.asarray(angles, np.float64))[:, None, None]
    scale = np.asarray(scales, np.float64)[:, None, None]
    cy, cx = (H - 1) / 2, (W - 1) / 2
    yy, xx = np.meshgrid(np.arange(H) - cy, np.arange(W) - cx, indexing="ij")
    cos, sin = np.cos(theta), np.sin(theta)
    # inverse rotation of (row, col) = (y, x) coordinates, y pointing down
    src_y = (cos * yy + sin * xx) / scale + cy
    src_x = (-sin * yy + cos * xx) / scale + cx
    y0, x0 = np.floor(src_y).astype(np.int64), np.floor(src_x).astype(np.int64)
    wy, wx = (src_y - y0).astype(x.dtype), (src_x - x0).astype(x.dtype)
    n = np.arange(N)[:, None, None]
    out = np.zeros_like(x)
    for dy, dx, weight in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx),
                           (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        r, c = y0 + dy, x0 + dx
        inside = (r >= 0) & (r < H) & (c >= 0) & (c < W)
        values = x[n, :, np.clip(r, 0, H - 1), np.clip(c, 0, W - 1)]    # (N, H, W, C)
        out += np.moveaxis(values * (weight * inside)[..., None], -1, 1)
    return out


class RandomRotation:
    """Rotate each image by an angle drawn uniformly from [-degrees, degrees], about its
    centre, bilinear, filling with 0 (torchvision's ``RandomRotation(degrees)``)."""

    def __init__(self, degrees=15.0):
        if not degrees >= 0:
            raise ValueError(f"RandomRotation: degrees must be >= 0, got {degrees}")
        self.degrees = float(degrees)

    def __call__(self, x, rng):
        angles = rng.uniform(-self.degrees, self.degrees, size=x.shape[0])
        return affine_batch(x, angles, np.ones(x.shape[0]))

    def __repr__(self):
        return f"RandomRotation(degrees={self.degrees})"


class RandomZoom:
    """Scale each image about its centre by a factor drawn uniformly from ``scale`` =
    (low, high); > 1 zooms in (crops the border), < 1 zooms out (adds a black border)
    (Keras's ``zoom_range``)."""

    def __init__(self, scale=(0.9, 1.1)):
        low, high = (1 - scale, 1 + scale) if np.isscalar(scale) else scale
        if not 0 < low <= high:
            raise ValueError(f"RandomZoom: scale must be (low, high) with 0 < low <= high, got {scale}")
        self.scale = (float(low), float(high))

    def __call__(self, x, rng):
        scales = rng.uniform(*self.scale, size=x.shape[0])
        return affine_batch(x, np.zeros(x.shape[0]), scales)

    def __repr__(self):
        return f"RandomZoom(scale={self.scale})"


AUGMENTATIONS = ("none", "flip", "crop", "translate", "rotate", "zoom")


def make_augmentation(spec, image_size):
    """Build the augmentation named by a comma list such as ``"crop,flip"``, or None.

    ``crop`` pads by image_size // 8 (4 pixels for 32x32 as in the ResNet CIFAR recipe,
    3 for 28x28) and crops back; ``translate`` shifts by up to 10% of the size;
    ``flip`` mirrors half the images; ``rotate`` turns by up to 10 degrees either way;
    ``zoom`` scales by 0.9 to 1.1; ``none`` (or "") turns augmentation off. Augment the
    training data only (the loader of the test set gets none).
    """
    names = [s.strip() for s in (spec or "none").split(",") if s.strip()]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown}; choose from {', '.join(AUGMENTATIONS)}")
    transforms = []
    for name in names:
        if name == "crop":
            transforms.append(RandomCrop(padding=max(1, image_size // 8)))
        elif name == "translate":
            transforms.append(RandomTranslate(0.1))
        elif name == "flip":
            transforms.append(RandomHorizontalFlip())
        elif name == "rotate":
            transforms.append(RandomRotation(10.0))
        elif name == "zoom":
            transforms.append(RandomZoom((0.9, 1.1)))
    return Compose(transforms) if transforms else None
