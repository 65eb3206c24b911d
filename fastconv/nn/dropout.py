"""Dropout (inverted): zero a random fraction p of the values in training, identity in eval."""
import numpy as np

from . import init
from .module import Module


class Dropout(Module):
    r"""Inverted dropout, as PyTorch's ``nn.Dropout``.

    In training mode each value is kept with probability ``1 - p`` and scaled by
    ``1 / (1 - p)`` (so the expected value is unchanged and eval mode needs no rescaling);
    in eval mode, or with ``p = 0``, it is the identity. Backward multiplies dy by the same mask.

    Parameters
    ----------
    p : float in [0, 1)
        Probability of zeroing a value.
    rng : numpy Generator, optional
        Draws the masks. By default a generator derived from :mod:`fastconv.nn.init`'s at
        construction, so seeding the model (``fastconv.nn.init.seed``) also fixes the masks.
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = init.child_rng(rng)
        self._mask = None

    def forward(self, x):
        if not self.training or self.p == 0:
            self._mask = None
            return x
        keep = 1.0 - self.p
        u = self.rng.random(x.shape, dtype=x.dtype if x.dtype == np.float32 else np.float64)
        # The mask holds 0 or 1/keep in x's dtype: y = x * mask, dx = dy * mask.
        mask = np.less(u, keep).astype(x.dtype)
        mask *= 1.0 / keep
        self._mask = mask
        return x * mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask

    def extra_repr(self):
        return f"p={self.p:g}"
