# cython: language_level=3
"""ReLU, forward and backward: Cython + OpenMP twin of ``fastconv.reference.activation``.

(relu.fwd)  y = max(x, 0)   (NaN stays NaN, as PyTorch and np.maximum; -0 gives +0)
(relu.bwd)  dx = dy where y > 0, else 0,   y = max(x, 0)
            (the gradient at 0 is taken as 0, and dx is 0 there even where dy is NaN, as PyTorch)

Forward: one pass, a compare and select per value; NumPy's ``np.maximum(x, 0, out=x)``
took 112 us for LeNet-5's first ReLU (64 x 6 x 28 x 28, float32, 1 thread), this 22 us
(PyTorch's relu_: 19 us). Backward: NumPy spends two passes and a temporary on it
(``y > 0`` as a bool array, then a product); here one pass reads y and dy and writes dx.
The loops are C (see the block below) so that gcc can compile them for AVX-512/AVX2 too.
The arrays are flat (any shape, C-contiguous), cut into blocks of BLOCK values shared among
the threads; each value is computed alone, so any thread count gives the same result.
1 thread, float32, interleaved medians against NumPy's dy * (y > 0): LeNet-5's first ReLU
(64 x 6 x 28 x 28) 89 -> 47 us, ResNet-20's (128 x 16 x 32 x 32) 968 -> 553 us.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from _common cimport threads_for_values


cdef enum:
    BLOCK = 16384       # values per work unit (64 KiB of float32)


cdef extern from *:
    """
    /* The loops of (relu.fwd) and (relu.bwd) in C, compiled several times by gcc's
     * target_clones: the module is built for baseline x86-64 (16-byte SSE2 vectors), and
     * a loop this simple is limited by how many values one instruction handles, so the
     * AVX-512 (or AVX2) clone, picked once at load time for the CPU it runs on, is about
     * 2x faster (LeNet-5's first ReLU in place, 1 thread, float32: 45 -> 22 us). Every clone
     * computes the same selects, so the results are the same bits on any CPU.
     * v <= 0 is false for NaN: the forward keeps NaN, as np.maximum and PyTorch do. The
     * in-place forward has its own loop over one pointer: with two, gcc guards the vector
     * loop with a run-time overlap test, which x == y fails, and falls back to scalar code.
     * The backward reads dy[i] whatever y[i] is: read inside the condition (or as the
     * product dy[i] * (y[i] > 0)), gcc kept a branch per value, mispredicted on about half
     * of them; read first, the select vectorises. */
    /* target_clones needs ifunc, which glibc's loader provides (musl's does not). */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
    #define FC_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define FC_CLONES
    #endif
    #define FC_RELU_LOOPS(T)                                                             \
    FC_CLONES static void fc_relu_forward_##T(const T *x, T *y, Py_ssize_t n)           \
    {                                                                                    \
        if (x == y) {                                                                    \
            for (Py_ssize_t i = 0; i < n; i++) { T v = y[i]; y[i] = v <= 0 ? 0 : v; }    \
        } else {                                                                         \
            for (Py_ssize_t i = 0; i < n; i++) { T v = x[i]; y[i] = v <= 0 ? 0 : v; }    \
        }                                                                                \
    }                                                                                    \
    FC_CLONES static void fc_relu_backward_##T(const T *dy, const T *y, T *dx,          \
                                               Py_ssize_t n)                             \
    {                                                                                    \
        for (Py_ssize_t i = 0; i < n; i++) { T d = dy[i]; dx[i] = y[i] > 0 ? d : 0; }    \
    }
    FC_RELU_LOOPS(float)
    FC_RELU_LOOPS(double)
    """
    void fc_relu_forward_float(const float* x, float* y, Py_ssize_t n) noexcept nogil
    void fc_relu_forward_double(const double* x, double* y, Py_ssize_t n) noexcept nogil
    void fc_relu_backward_float(const float* dy, const float* y, float* dx,
                                Py_ssize_t n) noexcept nogil
    void fc_relu_backward_double(const double* dy, const double* y, double* dx,
                                 Py_ssize_t n) noexcept nogil


cdef inline void _relu_forward_block(const floating* x, floating* y,
                                     Py_ssize_t n) noexcept nogil:
    """y[i] = max(x[i], 0) for i < n (relu.fwd); y may be x (in place)."""
    if floating is float:
        fc_relu_forward_float(x, y, n)
    else:
        fc_relu_forward_double(x, y, n)


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
            _relu_forward_block(&x[i0], &out[i0], min(BLOCK, n - i0))


cdef inline void _relu_backward_block(const floating* dy, const floating* y, floating* dx,
                                      Py_ssize_t n) noexcept nogil:
    """dx[i] = dy[i] if y[i] > 0 else 0, for i < n (relu.bwd)."""
    if floating is float:
        fc_relu_backward_float(dy, y, dx, n)
    else:
        fc_relu_backward_double(dy, y, dx, n)


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
            _relu_backward_block(&dy[i0], &y[i0], &dx[i0], min(BLOCK, n - i0))
    return dx_arr
