"""Readers for the two raw dataset formats fastconv knows: IDX (MNIST, Fashion-MNIST)
and the binary version of CIFAR-10. Both are plain bytes: no pickle is ever loaded.

IDX layout (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number
``0x00 0x00 <type code> <number of dimensions>``, then one big-endian uint32 per
dimension, then the values in C order, big-endian.

CIFAR-10 binary layout (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version"):
records of 1 + 3072 bytes, a label byte (0-9) then a 32x32 image stored as 1024 red,
1024 green and 1024 blue bytes, rows in order: exactly the (C, H, W) layout of NCHW.
"""
import gzip
import math
import os
import zlib

import numpy as np

__all__ = ["read_idx", "write_idx", "read_cifar10_bin", "IDX_DTYPES"]

# IDX type code -> NumPy dtype (big-endian, as stored in the file).
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


_CHUNK = 1 << 20     # a payload is read in pieces: a header cannot make us allocate more


def _read_up_to(f, n):
    """Up to ``n`` bytes of ``f``, fewer at its end; memory grows with what is really there."""
    parts, left = [], n
    while left > 0:
        part = f.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _read_checked(path, f, compressed):
    """(shape, dtype, payload bytes) of the IDX stream ``f``, the header checked against the
    file's size (raw files) or the decompressed length (gzip) before the payload is kept."""
    magic = _read_up_to(f, 4)
    if len(magic) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(magic)} bytes)")
    zero1, zero2, code, ndim = magic
    if zero1 != 0 or zero2 != 0 or code not in IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file: bad magic number 0x{magic.hex()} "
                         "(expected 0x0000 then a type code in "
                         f"{sorted(hex(c) for c in IDX_DTYPES)} and the number of dimensions)")
    dims = _read_up_to(f, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({4 + len(dims)} bytes, {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
    dtype = IDX_DTYPES[code]
    header = 4 + 4 * ndim
    expected = header + math.prod(shape) * dtype.itemsize

    def mismatch(actual):
        return ValueError(f"{path}: IDX header says shape {shape} of {dtype} ({expected} bytes) "
                          f"but the {'decompressed ' if compressed else ''}file has {actual} "
                          "bytes (truncated or corrupt)")
    if not compressed and os.path.getsize(path) != expected:
        raise mismatch(os.path.getsize(path))
    payload = _read_up_to(f, expected - header)
    if len(payload) < expected - header:
        raise mismatch(header + len(payload))
    if f.read(1):
        raise ValueError(f"{path}: IDX header says shape {shape} of {dtype} ({expected} bytes) "
                         "but the file holds more data (corrupt header?)")
    return shape, dtype, payload


def read_idx(path):
    """Read an IDX file (raw or gzip-compressed) into an array.

    Parameters
    ----------
    path : str or os.PathLike
        e.g. ``train-images-idx3-ubyte.gz``; gzip is detected from the first bytes.

    Returns
    -------
    ndarray of the file's shape, e.g. (60000, 28, 28) uint8 for MNIST images,
    (60000,) uint8 for labels; multi-byte types are converted to native byte order.

    Raises
    ------
    ValueError, naming the file,
        on a bad magic number, an unknown type code, or a size that does not match the
        header (a truncated file, or one with more data than the header says). The header
        is checked against the file's size before the payload is read.
    """
    with open(path, "rb") as f:
        compressed = f.read(2) == _GZIP_MAGIC      # by content, not by name
    try:
        with (gzip.open if compressed else open)(path, "rb") as f:
            shape, dtype, payload = _read_checked(path, f, compressed)
    except (OSError, EOFError, zlib.error) as exc:   # a truncated or corrupt .gz
        raise ValueError(f"{path}: cannot decompress ({exc})") from exc
    arr = np.frombuffer(payload, dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))   # native order, and a writable copy


def write_idx(path, array, compress=None):
    """Write ``array`` as an IDX file (gzip when ``compress`` or the name ends in .gz).

    The inverse of :func:`read_idx`; used by the tests and handy for making small datasets.
    """
    array = np.asarray(array)
    for code, dtype in IDX_DTYPES.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            break
    else:
        raise TypeError(f"write_idx: dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype).tobytes()
    if compress is None:
        compress = str(path).endswith(".gz")
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(payload)


CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar10_bin(path):
    """Read one CIFAR-10 binary batch file (``data_batch_1.bin``, ``test_batch.bin``).

    Returns
    -------
    images : ndarray (N, 3, 32, 32) uint8, NCHW (the file already stores C, H, W per image).
    labels : ndarray (N,) uint8 in 0..9.

    Raises
    ------
    ValueError
        when the size is not a multiple of the 3073-byte record or a label is > 9.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise ValueError(f"{path}: not a CIFAR-10 binary batch: {raw.size} bytes is not a "
                         f"positive multiple of the {CIFAR_RECORD}-byte record (label + 3x32x32)")
    records = raw.reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].copy()
    if labels.max() > 9:
        raise ValueError(f"{path}: label {labels.max()} > 9; is this the CIFAR-100 binary version?")
    images = records[:, 1:].reshape(-1, 3, 32, 32).copy()
    return images, labels
