"""Keep the memory a training step frees in the process, for the next step (glibc).

A training step allocates and frees the same large arrays every time: layer outputs,
gradients, kernel scratch. glibc's malloc gives each block above its mmap threshold its own
mapping, unmapped on free, and trims the top of its heap back to the kernel, so every step
faults the same pages in again. A first touch costs about 1.6 us per 4 KiB page on the
machines this project is measured on: a LeNet-5 step (batch 64, 1 thread) took 643 page
faults and 4.9 ms, against none and 3.4 ms with the settings below (medians of 200 steps,
one process each). The settings (``mallopt``): blocks below 1 GiB come from the heap, and
the heap is never trimmed, so freed memory is reused by the next step and stays with the
process until it exits. That is what a training run wants, and not what every program
that imports fastconv may want, so it is not done on import: :func:`fastconv.train.fit`
(and so ``fastconv train``) and :func:`fastconv.schedules.lr_find` call it, and so can a
training loop of your own. Elsewhere than glibc it does nothing.
"""
import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3     # glibc's malloc.h
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)   # blocks below 1 GiB from the heap; glibc versions
                                         # that cap the setting take 32 MiB, their maximum
_TRIM_THRESHOLD = (1 << 31) - 1    # never give the heap's top back
_TOP_PAD = 64 << 20                # grow the heap 64 MiB at a time

_applied = None                    # None: not tried yet; then True or False


def keep_freed_memory():
    """Make glibc's malloc keep freed memory for reuse (see the module docstring).

    Idempotent; returns True when the settings are in force, False where they do not apply
    (not glibc, or mallopt refused).
    """
    global _applied
    if _applied is None:
        _applied = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mmap_set = any(libc.mallopt(_M_MMAP_THRESHOLD, value) == 1
                           for value in _MMAP_THRESHOLDS)
            _applied = (mmap_set and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
                        and libc.mallopt(_M_TOP_PAD, _TOP_PAD) == 1)
    return _applied
