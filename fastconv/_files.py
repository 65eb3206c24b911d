"""Atomic file writes: every file fastconv writes (checkpoints, histories, figures, benchmark
results) goes through here, so an interrupted program never leaves a half-written file where
a good one was."""
import os

import numpy as np


def atomic_write(path, write):
    """Call ``write(f)`` on a binary temporary file next to ``path``, then rename it onto ``path``.

    The data is flushed to disk before the rename makes it visible; on any error (Ctrl-C
    included) the temporary file is removed and ``path`` is left as it was. Creates the
    folder. Returns ``path``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_savez(path, **arrays):
    """``np.savez`` to ``path`` atomically (through a file object, so no ".npz" is appended)."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
