# cython: language_level=3
"""The SGD update: Cython + OpenMP twin of ``fastconv.reference.optim``.

With g = grad + weight_decay * p, as ``torch.optim.SGD``::

    (sgd.buf)   buf <- g                                        (the first step)
                buf <- momentum * buf + (1 - dampening) * g     (later steps)
    (sgd.step)  p <- p - lr * (g + momentum * buf)              (nesterov)
                p <- p - lr * buf                               (otherwise)
                p <- p - lr * g                                 (momentum = 0: plain SGD)

Runs by default: sgd_update below, one pass over p, grad and buf where NumPy makes three to
five (one per operation, with temporaries) and pays a call for each. It cuts the flat
arrays into blocks of BLOCK values shared among the threads; the inner loop is in
src_pyx/include/fc_optim.h (fc_sgd_float, fc_sgd_double), compiled for the instruction set
fc_isa_level() picks. Each value is computed alone, rounding after every operation as the
reference does (setup.py compiles this module without fused multiply-adds), so the bits
equal the reference's on any CPU and for any thread count.
"""
from cython cimport floating
from cython.parallel cimport prange

from _common cimport threads_for_values
from _isa cimport fc_isa_level


cdef extern from "fc_optim.h":
    void fc_sgd_float(int isa, float* p, const float* grad, float* buf, Py_ssize_t n,
                      float lr, float momentum, float damp_keep, float weight_decay,
                      int nesterov, int first_step) noexcept nogil
    void fc_sgd_double(int isa, double* p, const double* grad, double* buf, Py_ssize_t n,
                       double lr, double momentum, double damp_keep, double weight_decay,
                       int nesterov, int first_step) noexcept nogil


cdef int _ISA = fc_isa_level()      # which copy of the loop runs: fc_isa.h decides


cdef enum:
    BLOCK = 16384       # values per work unit (64 KiB of float32)


cdef inline void _sgd_block(floating* p, const floating* grad, floating* buf, Py_ssize_t n,
                            floating lr, floating momentum, floating damp_keep,
                            floating weight_decay, bint nesterov,
                            bint first_step) noexcept nogil:
    """Eqs. (sgd.buf), (sgd.step) for the n values of one block; damp_keep = 1 - dampening."""
    if floating is float:
        fc_sgd_float(_ISA, p, grad, buf, n, lr, momentum, damp_keep, weight_decay, nesterov,
                     first_step)
    else:
        fc_sgd_double(_ISA, p, grad, buf, n, lr, momentum, damp_keep, weight_decay, nesterov,
                      first_step)


def sgd_update(floating[::1] p, const floating[::1] grad, floating[::1] buf, double lr,
               double momentum, double dampening, double weight_decay, bint nesterov,
               bint first_step, int n_threads):
    """One SGD step of one parameter, notes eqs. (sgd.buf), (sgd.step), in place.

    Parameters
    ----------
    p : ndarray (n,), float32 or float64, C-contiguous (the caller flattens): updated
    grad : ndarray (n,), p's dtype: its gradient
    buf : ndarray (n,), p's dtype: the momentum buffer, updated (not read when momentum is 0)
    lr, momentum, dampening, weight_decay : float, each rounded to p's dtype (as NumPy
        does with a Python float in an operation on float32 arrays)
    nesterov : bool (needs momentum > 0)
    first_step : bool, the optimizer's first step: buf starts at g, not at 0
    n_threads : int
        OpenMP threads; the result does not depend on it.

    Returns
    -------
    None: p and buf are written.
    """
    cdef Py_ssize_t n = p.shape[0], nblk = (n + BLOCK - 1) // BLOCK, blk, i0
    if grad.shape[0] != n or buf.shape[0] != n:
        raise ValueError(f"sgd_update: p, grad and buf have {n}, {grad.shape[0]} and "
                         f"{buf.shape[0]} values")
    if n == 0:
        return
    cdef floating lr_t = <floating>lr, mom = <floating>momentum
    cdef floating keep = <floating>(1 - dampening), wd = <floating>weight_decay
    n_threads = threads_for_values(n, n_threads)
    with nogil:
        for blk in prange(nblk, schedule="static", num_threads=n_threads):
            i0 = blk * BLOCK
            _sgd_block(&p[i0], &grad[i0], &buf[i0], min(BLOCK, n - i0), lr_t, mom, keep, wd,
                       nesterov, first_step)
