# cython: language_level=3
"""Header-only helpers shared by every kernel (cdef inline only: no runtime module)."""


cdef inline Py_ssize_t out_size(Py_ssize_t H, Py_ssize_t R, Py_ssize_t stride,
                                Py_ssize_t pad) noexcept nogil:
    """(conv.out) P = floor((H + 2*pad - R) / stride) + 1; the caller guarantees H + 2*pad >= R."""
    return (H + 2 * pad - R) // stride + 1


# Below this much work (values touched, or multiply-adds for convolution) a call runs on one
# thread: waking an OpenMP team costs more than it saves, and on a busy machine a second
# thread can arrive milliseconds late (docs/performance.md, "Small calls: one thread"). The
# partition of every reduction is fixed independently of the thread count, so results do
# not change.
DEF GRAIN_VALUES = 32768
DEF GRAIN_MACS = 1048576


cdef inline int threads_for(Py_ssize_t work, int n_threads, Py_ssize_t grain) noexcept nogil:
    """n_threads, or 1 when ``work`` is below ``grain`` (or n_threads < 1)."""
    return 1 if work < grain or n_threads < 1 else n_threads


cdef inline int threads_for_values(Py_ssize_t values, int n_threads) noexcept nogil:
    """Threads for a memory-bound kernel (pooling, batch norm) touching ``values`` elements."""
    return threads_for(values, n_threads, GRAIN_VALUES)


cdef inline int threads_for_macs(Py_ssize_t macs, int n_threads) noexcept nogil:
    """Threads for a convolution of ``macs`` multiply-adds."""
    return threads_for(macs, n_threads, GRAIN_MACS)


cdef inline Py_ssize_t imax(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline Py_ssize_t imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline Py_ssize_t first_inside(Py_ssize_t off, Py_ssize_t stride,
                                    Py_ssize_t n_out) noexcept nogil:
    """The first output index i whose input i*stride + off is >= 0 (clamped to n_out)."""
    cdef Py_ssize_t lo = 0
    if off < 0:
        lo = (-off + stride - 1) // stride      # ceil(-off / stride), both positive
    return lo if lo < n_out else n_out


cdef inline Py_ssize_t end_inside(Py_ssize_t size, Py_ssize_t off, Py_ssize_t stride,
                                  Py_ssize_t n_out, Py_ssize_t lo) noexcept nogil:
    """One past the last output index i whose input i*stride + off is < size; >= lo.

    Together with first_inside: outputs [lo, hi) read inputs inside [0, size), which lets a
    kernel handle padding by clamping loop bounds instead of testing every element.
    """
    cdef Py_ssize_t hi
    if off > size - 1:
        return lo
    hi = (size - 1 - off) // stride + 1         # floor((size - 1 - off) / stride) + 1
    if hi > n_out:
        hi = n_out
    return hi if hi > lo else lo


cdef inline Py_ssize_t chunk_for(Py_ssize_t tasks, int n_threads) noexcept nogil:
    """Tasks per grab of a dynamic schedule: about 8 grabs per thread. Each grab updates a
    counter shared by all the threads; with thousands of tiny tasks (a depthwise layer's
    8-channel blocks of 7x7 maps) one grab per task cost a quarter of the call at 2 threads
    (docs/performance.md, "Depthwise: tasks in chunks"). Which thread runs a task never
    changes its result."""
    return imax(1, tasks // (8 * imax(1, n_threads)))
