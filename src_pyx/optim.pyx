# cython: language_level=3
"""The SGD update: Cython + OpenMP twin of ``fastconv.reference.optim``.

With g = grad + weight_decay * p, as ``torch.optim.SGD``::

    (sgd.buf)   buf <- g                                        (the first step)
                buf <- momentum * buf + (1 - dampening) * g     (later steps)
    (sgd.step)  p <- p - lr * (g + momentum * buf)              (nesterov)
                p <- p - lr * buf                               (otherwise)
                p <- p - lr * g                                 (momentum = 0: plain SGD)

Runs by default: sgd_update_many below, every parameter of a step in one call, one pass
over each p, grad and buf where NumPy makes three to five (one per operation, with
temporaries) and pays a call for each. It cuts the arrays into blocks of BLOCK values,
the blocks of all parameters shared among the threads; the inner loop is in
src_pyx/include/fc_optim.h (fc_sgd_float, fc_sgd_double), compiled for the instruction set
fc_isa_level() picks. Each value is computed alone, rounding after every operation as the
reference does (setup.py compiles this module without fused multiply-adds), so the bits
equal the reference's on any CPU and for any thread count.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

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

cnp.import_array()


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


cdef int _float_type(a, int typenum, bint writeable) except -1:
    """1 when ``a`` is a C-contiguous, aligned (and, if asked, writeable) ndarray of
    ``typenum``, else 0."""
    if not cnp.PyArray_Check(a):
        return 0
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_IS_C_CONTIGUOUS(arr)
            and cnp.PyArray_ISALIGNED(arr) and (cnp.PyArray_ISWRITEABLE(arr) or not writeable))


cdef Py_ssize_t[:, ::1] _blocks(const Py_ssize_t[:, ::1] where, Py_ssize_t size_column):
    """The work units of a list of arrays, array i holding where[i, size_column] values:
    blocks of up to BLOCK values of one array each, as rows (i, first value), in order.
    sgd_update_many and zero_many cut a model's parameters alike, so that with the same
    static schedule each thread zeroes the gradients it read in the last step."""
    cdef Py_ssize_t n_tasks = 0, i, first, t = 0
    for i in range(where.shape[0]):
        n_tasks += (where[i, size_column] + BLOCK - 1) // BLOCK
    cdef Py_ssize_t[:, ::1] task = np.empty((n_tasks, 2), dtype=np.intp)
    for i in range(where.shape[0]):
        for first in range(0, where[i, size_column], BLOCK):
            task[t, 0] = i
            task[t, 1] = first
            t += 1
    return task


def sgd_update_many(list params, list grads, list bufs, list lrs, list weight_decays,
                    double momentum, double dampening, bint nesterov, bint first_step,
                    int n_threads):
    """One SGD step of every parameter of a list, notes eqs. (sgd.buf), (sgd.step), in place,
    in one call: one parallel loop over the blocks of all of them (a model's small
    parameters would each be too small to share out), no Python between them. Every array
    is checked before anything is written.

    Parameters
    ----------
    params, grads, bufs : lists of ndarrays, one triple per parameter (any shape, each
        C-contiguous; all float32 or all float64; p and buf writeable, of grad's size)
    lrs, weight_decays : lists of floats, one per parameter (its group's), each rounded to
        the parameters' dtype (as NumPy does with a Python float in an operation on float32
        arrays), as are momentum and 1 - dampening
    momentum, dampening : float
    nesterov : bool (needs momentum > 0)
    first_step : bool, the optimizer's first step: buf starts at g, not at 0
    n_threads : int
        OpenMP threads; the result does not depend on it.

    Returns
    -------
    None: every p and buf is written.
    """
    cdef Py_ssize_t n = len(params), i, n_tasks
    if not (len(grads) == len(bufs) == len(lrs) == len(weight_decays) == n):
        raise ValueError("sgd_update_many: params, grads, bufs, lrs and weight_decays must "
                         "have one entry per parameter")
    if n == 0:
        return
    cdef int typenum = cnp.NPY_FLOAT32 if (cnp.PyArray_Check(params[0]) and cnp.PyArray_TYPE(
        <cnp.ndarray>params[0]) == cnp.NPY_FLOAT32) else cnp.NPY_FLOAT64
    cdef Py_ssize_t size, total = 0
    cdef double[:, ::1] coef = np.empty((n, 2), dtype=np.float64)      # lr, weight decay
    cdef Py_ssize_t[:, ::1] where = np.empty((n, 4), dtype=np.intp)    # 3 pointers, size
    for i in range(n):          # every array checked before anything is written
        if not (_float_type(params[i], typenum, True) and _float_type(grads[i], typenum, False)
                and _float_type(bufs[i], typenum, True)):
            raise ValueError(f"sgd_update_many: parameter {i}: p, grad and buf must be "
                             f"C-contiguous arrays of one float dtype (p and buf writeable)")
        size = cnp.PyArray_SIZE(<cnp.ndarray>params[i])
        if (cnp.PyArray_SIZE(<cnp.ndarray>grads[i]) != size
                or cnp.PyArray_SIZE(<cnp.ndarray>bufs[i]) != size):
            raise ValueError(f"sgd_update_many: parameter {i}: p, grad and buf sizes differ")
        where[i, 0] = <Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>params[i])
        where[i, 1] = <Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>grads[i])
        where[i, 2] = <Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>bufs[i])
        where[i, 3] = size
        coef[i, 0] = lrs[i]
        coef[i, 1] = weight_decays[i]
        total += size
    cdef Py_ssize_t[:, ::1] task = _blocks(where, 3)
    n_tasks = task.shape[0]
    if typenum == cnp.NPY_FLOAT32:
        _sgd_tasks(<float>0, task, where, coef, n_tasks, momentum, dampening, nesterov,
                   first_step, threads_for_values(total, n_threads))
    else:
        _sgd_tasks(<double>0, task, where, coef, n_tasks, momentum, dampening, nesterov,
                   first_step, threads_for_values(total, n_threads))


cdef void _sgd_tasks(floating kind, const Py_ssize_t[:, ::1] task,
                     const Py_ssize_t[:, ::1] where, const double[:, ::1] coef,
                     Py_ssize_t n_tasks, double momentum, double dampening, bint nesterov,
                     bint first_step, int n_threads):
    """The blocks of sgd_update_many, shared among the threads (``kind``: the dtype)."""
    cdef Py_ssize_t t, i, i0
    cdef floating* p
    cdef const floating* g
    cdef floating* b
    cdef floating mom = <floating>momentum, keep = <floating>(1 - dampening)
    if n_tasks == 0:                                 # only empty parameters
        return
    cdef const Py_ssize_t* tk = &task[0, 0]          # raw pointers: no checks in the loop
    cdef const Py_ssize_t* wh = &where[0, 0]
    cdef const double* cf = &coef[0, 0]
    with nogil:
        for t in prange(n_tasks, schedule="static", num_threads=n_threads):
            i = tk[2 * t]
            i0 = tk[2 * t + 1]
            p = <floating*>wh[4 * i]
            g = <const floating*>wh[4 * i + 1]
            b = <floating*>wh[4 * i + 2]
            _sgd_block(p + i0, g + i0, b + i0, min(BLOCK, wh[4 * i + 3] - i0),
                       <floating>cf[2 * i], mom, keep, <floating>cf[2 * i + 1], nesterov,
                       first_step)


def zero_many(list arrays, int n_threads):
    """Set every array of a list to zero (a model's gradients before a backward pass), in
    one call; each must be a C-contiguous, writeable float32 or float64 ndarray.

    Cut into sgd_update_many's blocks (_blocks) and shared the same way: each thread
    zeroes the gradients it read in the last step, still in its own cache (one thread
    writing them all waited for the other core's copies)."""
    cdef Py_ssize_t n = len(arrays), i, t, i0, total = 0
    cdef Py_ssize_t[:, ::1] where = np.empty((n, 3), dtype=np.intp)    # pointer, size, itemsize
    for i in range(n):
        if not (_float_type(arrays[i], cnp.NPY_FLOAT32, True)
                or _float_type(arrays[i], cnp.NPY_FLOAT64, True)):
            raise ValueError(f"zero_many: array {i} must be a C-contiguous, writeable float32 "
                             f"or float64 ndarray")
        where[i, 0] = <Py_ssize_t>cnp.PyArray_DATA(<cnp.ndarray>arrays[i])
        where[i, 1] = cnp.PyArray_SIZE(<cnp.ndarray>arrays[i])
        where[i, 2] = cnp.PyArray_ITEMSIZE(<cnp.ndarray>arrays[i])
        total += where[i, 1]
    cdef Py_ssize_t[:, ::1] task = _blocks(where, 1)
    with nogil:
        for t in prange(task.shape[0], schedule="static",
                        num_threads=threads_for_values(total, n_threads)):
            i = task[t, 0]
            i0 = task[t, 1]
            memset(<char*>where[i, 0] + i0 * where[i, 2], 0,
                   min(BLOCK, where[i, 1] - i0) * where[i, 2])
