# cython: language_level=3
"""Header-only helpers shared by every kernel (cdef inline only: no runtime module)."""


cdef inline Py_ssize_t out_size(Py_ssize_t H, Py_ssize_t R, Py_ssize_t stride,
                                Py_ssize_t pad) noexcept nogil:
    """(conv.out) P = floor((H + 2*pad - R) / stride) + 1; the caller guarantees H + 2*pad >= R."""
    return (H + 2 * pad - R) // stride + 1
