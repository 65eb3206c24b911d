# cython: language_level=3
"""ReLU, forward and backward, and the residual add: Cython + OpenMP twin of
``fastconv.reference.activation``.

(relu.fwd)  y = max(x, 0)   (NaN stays NaN, as PyTorch and np.maximum; -0 gives +0)
(relu.bwd)  dx = dy where y > 0, else 0,   y = max(x, 0)
            (the gradient at 0 is taken as 0, and dx is 0 there even where dy is NaN, as PyTorch)
(add.fwd)   y = a + b, or y = max(a + b, 0): a ResNet block's add and ReLU in one pass

Runs by default: relu_forward / relu_backward / add_forward below, which cut the flat array
into blocks of BLOCK values shared among the threads; the inner loop is in
src_pyx/include/fc_relu.h (fc_relu_fwd_f32 and friends), compiled for the instruction set
fc_isa_level() picks. Each value is computed alone, so any thread count gives the same
result. Why one pass beats NumPy, with timings: docs/performance.md, "ReLU".
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from _common cimport threads_for_values
from _isa cimport fc_isa_level
from _relu cimport relu_backward_block, relu_block


cdef enum:
    BLOCK = 16384       # values per work unit (64 KiB of float32)


cdef extern from "fc_relu.h":
    void fc_add_forward_float(int isa, const float* a, const float* b, float* y, Py_ssize_t n,
                              int relu) noexcept nogil
    void fc_add_forward_double(int isa, const double* a, const double* b, double* y,
                               Py_ssize_t n, int relu) noexcept nogil


cdef int _ISA = fc_isa_level()      # which copy of the loops runs: fc_isa.h decides


def relu_forward(const floating[::1] x, floating[::1] out, int n_threads):
    """ReLU, notes eq. (relu.fwd): out = max(x, 0), written into ``out`` (which may be x).

    Parameters
    ----------
    x : ndarray (n,), float32 or float64, C-contiguous (the caller flattens any shape)
    out : ndarray (n,), x's dtype, writeable; x itself for an in-place ReLU
    n_threads : int
        OpenMP threads; the result does not depend on it.

    Returns
    -------
    None: the result is in ``out``.
    """
    cdef Py_ssize_t n = x.shape[0], nblk = (n + BLOCK - 1) // BLOCK, blk, i0
    if out.shape[0] != n:
        raise ValueError(f"relu_forward: x has {n} values but out has {out.shape[0]}")
    if n == 0:
        return
    n_threads = threads_for_values(n, n_threads)
    with nogil:
        for blk in prange(nblk, schedule="static", num_threads=n_threads):
            i0 = blk * BLOCK
            relu_block(_ISA, &x[i0], &out[i0], min(BLOCK, n - i0))


def relu_backward(const floating[::1] dy, const floating[::1] y, int n_threads):
    """Gradient of y = max(x, 0), notes eq. (relu.bwd): dx = dy where y > 0, else 0.

    Parameters
    ----------
    dy, y : ndarray (n,), one float dtype, C-contiguous (the caller flattens any shape)
    n_threads : int
        OpenMP threads; the result does not depend on it.

    Returns
    -------
    dx : ndarray (n,), dy's dtype.
    """
    cdef Py_ssize_t n = dy.shape[0], nblk = (n + BLOCK - 1) // BLOCK, blk, i0
    if y.shape[0] != n:
        raise ValueError(f"relu_backward: dy has {n} values but y has {y.shape[0]}")
    dx_arr = np.empty(n, dtype=np.float32 if floating is float else np.float64)
    if n == 0:
        return dx_arr
    cdef floating[::1] dx = dx_arr
    n_threads = threads_for_values(n, n_threads)
    with nogil:
        for blk in prange(nblk, schedule="static", num_threads=n_threads):
            i0 = blk * BLOCK
            relu_backward_block(_ISA, &dy[i0], &y[i0], &dx[i0], min(BLOCK, n - i0))
    return dx_arr


cdef inline void _add_block(const floating* a, const floating* b, floating* y, Py_ssize_t n,
                            bint relu) noexcept nogil:
    """y[i] = a[i] + b[i], or max(a[i] + b[i], 0) with relu, for i < n (add.fwd)."""
    if floating is float:
        fc_add_forward_float(_ISA, a, b, y, n, relu)
    else:
        fc_add_forward_double(_ISA, a, b, y, n, relu)


def add_forward(const floating[::1] a, const floating[::1] b, floating[::1] out, bint relu,
                int n_threads):
    """The residual add, eq. (add.fwd): out = a + b, or max(a + b, 0) when ``relu``.

    Parameters
    ----------
    a, b : ndarray (n,), one float dtype, C-contiguous (the caller flattens any shape)
    out : ndarray (n,), their dtype, writeable; a itself for an in-place add (never b)
    relu : bool
        Apply ReLU to the sum in the same pass.
    n_threads : int
        OpenMP threads; the result does not depend on it.

    Returns
    -------
    None: the result is in ``out``.
    """
    cdef Py_ssize_t n = a.shape[0], nblk = (n + BLOCK - 1) // BLOCK, blk, i0
    if b.shape[0] != n or out.shape[0] != n:
        raise ValueError(f"add_forward: a, b and out have {n}, {b.shape[0]} and "
                         f"{out.shape[0]} values")
    if n == 0:
        return
    n_threads = threads_for_values(n, n_threads)
    with nogil:
        for blk in prange(nblk, schedule="static", num_threads=n_threads):
            i0 = blk * BLOCK
            _add_block(&a[i0], &b[i0], &out[i0], min(BLOCK, n - i0), relu)
