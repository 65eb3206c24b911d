"""Weight initialisation (PyTorch's defaults) and the seed that makes it reproducible.

Every layer that draws random numbers (weights at construction, Dropout masks at run
time) takes an optional ``rng`` (a ``numpy.random.Generator``). Without one it uses this
module's generator, which :func:`seed` resets::

    import fastconv.nn as nn
    nn.init.seed(0)                  # every layer built from now on is reproducible
    conv = nn.Conv2d(1, 6, 5)
    with nn.init.seeded(0):          # or only inside a block (the models' ``seed=`` uses it)
        fc = nn.Linear(120, 84)

Like PyTorch, the generator starts unseeded (fresh OS entropy per process).

PyTorch's default for ``Conv2d`` and ``Linear`` is ``kaiming_uniform_(w, a=sqrt(5))``:
``w ~ U(-bound, bound)`` with ``bound = gain * sqrt(3 / fan_in)`` and
``gain = sqrt(2 / (1 + a**2))``, which for ``a = sqrt(5)`` is ``bound = 1 / sqrt(fan_in)``;
the bias is ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. ``fan_in`` is the number of inputs of one
output unit: ``C * R * S`` for a conv, ``in_features`` for a linear layer.
"""
import contextlib
import math

import numpy as np

__all__ = ["seed", "get_rng", "seeded", "kaiming_uniform", "uniform_bias", "child_rng"]

_rng = np.random.default_rng()


def seed(value):
    """Reset the module-level generator: layers built afterwards are reproducible."""
    global _rng
    _rng = np.random.default_rng(value)


def get_rng(rng=None):
    """``rng`` if given, else the module-level generator."""
    return _rng if rng is None else rng


@contextlib.contextmanager
def seeded(value):
    """Use a generator seeded with ``value`` inside the block (``None``: change nothing)."""
    global _rng
    if value is None:
        yield _rng
        return
    previous = _rng
    _rng = np.random.default_rng(value)
    try:
        yield _rng
    finally:
        _rng = previous


def child_rng(rng=None):
    """An independent generator drawn from ``rng`` (for layers that sample at run time, such
    as Dropout: seeding the model seeds its masks too)."""
    return np.random.default_rng(get_rng(rng).integers(2**63))


def kaiming_uniform(shape, fan_in, a=math.sqrt(5), rng=None, dtype=np.float32):
    """``U(-bound, bound)`` with ``bound = sqrt(2 / (1 + a**2)) * sqrt(3 / fan_in)`` (PyTorch's
    ``kaiming_uniform_``; the default ``a = sqrt(5)`` gives ``bound = 1 / sqrt(fan_in)``)."""
    gain = math.sqrt(2.0 / (1.0 + a * a))
    bound = gain * math.sqrt(3.0 / fan_in)
    return get_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)


def uniform_bias(shape, fan_in, rng=None, dtype=np.float32):
    """PyTorch's default bias: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return get_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)
