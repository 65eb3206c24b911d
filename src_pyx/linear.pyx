# cython: language_level=3
"""Fully connected layer: Cython + OpenMP twin of ``fastconv.reference.linear``.

(linear.fwd)  y[n, o] = b[o] + sum_i x[n, i] * w[o, i]          y = x @ w^T + b
(linear.bwd)  dx = dy @ w,   dw = dy^T @ x,   db[o] = sum_n dy[n, o]

Why a kernel for three matrix products that NumPy does in one line each: NumPy's BLAS runs
them on one thread (nn.Linear keeps it there for small products, as a multi-threaded BLAS
leaves its threads spinning on the cores the next layer's OpenMP threads need), so on
2 cores LeNet-5's fully connected layers were a quarter of a training step that did not
scale. Here the products are cut into fixed blocks that OpenMP threads share, each block
one single-threaded product: in float32 on AVX-512 fastconv's micro-kernel (fc_gemm_f32 in
include/fc_conv_microkernel.h, which reads both operands in place), else a GEMM of SciPy's
BLAS, as the convolutions (call under ``_threads.blas_single_thread()``, as
fastconv.functional does):

* forward: blocks of up to FWD_BLOCK rows of x (y's rows); on the micro-kernel, from
  MK_MIN_ROWS rows of x, blocks of up to FWD_BLOCK columns of y instead (_forward_columns:
  each transposes its rows of w, since the micro-kernel reads its B operand by rows);
* backward: blocks of up to BWD_BLOCK rows of dw (output features) with their db entries,
  and blocks of up to BWD_BLOCK rows of dx, all in ONE parallel region (one wake-up of the
  threads).

Every output value is computed by one product call whose shape depends only on the shapes
of the arrays, never on the thread count, so any thread count gives the same bits.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from _blas cimport gemm_rm
from _common cimport imin, threads_for
from _isa cimport FC_ISA_AVX512, fc_isa_level
from _relu cimport relu_backward_block, relu_block

cdef extern from "fc_conv_pack.h":
    void fc_unpack_yT_f32(const float* yT, const float* b, float* y, Py_ssize_t K,
                          Py_ssize_t PQ, Py_ssize_t ldy) noexcept nogil

cdef extern from "fc_conv_microkernel.h":
    void fc_gemm_f32(Py_ssize_t M, Py_ssize_t N, Py_ssize_t KR, const float* A,
                     Py_ssize_t a_rs, Py_ssize_t a_cs, const float* B, Py_ssize_t ldb,
                     int accumulate, float* C, Py_ssize_t ldc) noexcept nogil

# float32 products on fastconv's AVX-512 micro-kernel (include/fc_conv_microkernel.h),
# which reads its operands in place; elsewhere BLAS, which packs (copies) them per call
cdef bint _use_microkernel = fc_isa_level() >= FC_ISA_AVX512
cdef int _ISA = fc_isa_level()      # which copy of ReLU's loops runs


cdef enum:
    # Rows per work unit, at most (half the rows where that is fewer: _block_rows). Each
    # GEMM call packs (copies) its operands again, so fewer, larger blocks are cheaper;
    # the measurements are in docs/performance.md ("Fully connected layers").
    FWD_BLOCK = 64      # rows of y (forward)
    BWD_BLOCK = 64      # rows of dw and of dx (backward)
    # Products of fewer multiply-adds than this run on one thread. LeNet-5's fc2 (64 x
    # 120 -> 84, 645K forward) runs on two: an awake second thread saves it 5-10 us, and
    # one asleep after the Python between layers is woken there, its wake-up overlapping
    # fc2's work, instead of in the larger layer next (docs/performance.md, "Fully
    # connected layers").
    GRAIN = 524288
    # The forward on the micro-kernel transposes w first: with fewer rows of x than this,
    # the transpose costs more than BLAS's whole product (docs/performance.md)
    MK_MIN_ROWS = 16


def calls_blas(dtype, Py_ssize_t rows, bint forward):
    """Whether the products of a call with ``rows`` rows of x (the batch) and this dtype
    run on SciPy's BLAS, which the caller then keeps on one thread: not float32 on the
    AVX-512 micro-kernel (the forward from MK_MIN_ROWS rows, the backward always)."""
    return not (dtype == np.float32 and _use_microkernel
                and (rows >= MK_MIN_ROWS or not forward))


cdef inline Py_ssize_t _block_rows(Py_ssize_t rows, Py_ssize_t most) noexcept nogil:
    """Rows per block: at most ``most``, and half of them when that is fewer, so that a
    product gives two threads work; a function of the shapes only."""
    return imin(most, (rows + 1) // 2)


cdef int _check_sizes(str name, Py_ssize_t N, Py_ssize_t I, Py_ssize_t O) except -1:
    if N >= 2**31 or I >= 2**31 or O >= 2**31:
        raise ValueError(f"{name}: sizes overflow BLAS's 32-bit int")
    return 0


cdef inline void _relu_rows(floating* y, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t o0,
                            Py_ssize_t o1, Py_ssize_t O) noexcept nogil:
    """y[n, o] = max(y[n, o], 0) for n0 <= n < n1, o0 <= o < o1, in place (relu.fwd)."""
    cdef Py_ssize_t n
    for n in range(n0, n1):
        relu_block(_ISA, y + n * O + o0, y + n * O + o0, o1 - o0)


cdef void _forward_block(const floating* x, const floating* w, const floating* b,
                         bint has_bias, bint relu, floating* y, Py_ssize_t n0, Py_ssize_t n1,
                         Py_ssize_t I, Py_ssize_t O) noexcept nogil:
    """Rows n0 <= n < n1 of (linear.fwd): y = b, then y += x @ w^T (GEMM with beta = 1),
    then the ReLU if asked."""
    cdef Py_ssize_t n, o
    cdef floating beta = 0
    if has_bias:
        beta = 1
        for n in range(n0, n1):
            for o in range(O):
                y[n * O + o] = b[o]
    gemm_rm(False, True, <int>(n1 - n0), <int>O, <int>I, 1, x + n0 * I, <int>I, w, <int>I,
            beta, y + n0 * O, <int>O)
    if relu:
        _relu_rows(y, n0, n1, 0, O, O)


cdef void _forward_columns(const float* x, const float* w, const float* b, bint has_bias,
                           bint relu, float* wT, float* y, Py_ssize_t o0, Py_ssize_t o1,
                           Py_ssize_t N, Py_ssize_t I, Py_ssize_t O) noexcept nogil:
    """Columns o0 <= o < o1 of (linear.fwd) on the micro-kernel, whose B operand is read by
    rows: those rows of w transposed into wT (I, O), then y[:, o0:o1] = b + x @ wT, then
    the ReLU if asked."""
    cdef Py_ssize_t n, o
    fc_unpack_yT_f32(w + o0 * I, NULL, wT + o0, I, o1 - o0, O)
    if has_bias:
        for n in range(N):
            for o in range(o0, o1):
                y[n * O + o] = b[o]
    fc_gemm_f32(N, o1 - o0, I, x, I, 1, wT + o0, O, has_bias, y + o0, O)
    if relu:
        _relu_rows(y, 0, N, o0, o1, O)


def linear_forward(const floating[:, ::1] x, const floating[:, ::1] w, b, int n_threads,
                   bint relu=False):
    """Fully connected layer, notes eq. (linear.fwd): y = x @ w^T + b (relu(y) with relu).

    Parameters
    ----------
    x : ndarray (N, I), float32 or float64, C-contiguous (read-only is fine)
    w : ndarray (O, I), same dtype
    b : ndarray (O,) or None
    n_threads : int
        OpenMP threads (BLAS limited to one thread by the caller); the result does not
        depend on it.
    relu : bool
        Return relu(y), applied to each block as it is written (relu.fwd).

    Returns
    -------
    y : ndarray (N, O), x's dtype.
    """
    cdef Py_ssize_t N = x.shape[0], I = x.shape[1], O = w.shape[0], blk, nblk
    if w.shape[1] != I:
        raise ValueError(f"linear_forward: w has {w.shape[1]} inputs, x has {I}")
    dtype = np.float32 if floating is float else np.float64
    cdef bint has_bias = b is not None
    b_arr = np.zeros(1, dtype=dtype) if b is None else np.asarray(b)
    if has_bias and b_arr.shape != (O,):
        raise ValueError(f"linear_forward: b must have shape ({O},), got {b_arr.shape}")
    _check_sizes("linear_forward", N, I, O)
    cdef const floating[::1] bv = b_arr
    y_arr = np.empty((N, O), dtype=dtype)
    if N == 0 or O == 0:
        return y_arr
    if I == 0:                                   # an empty sum: y = b
        y_arr[...] = b_arr if has_bias else 0
        if relu:
            y_arr[y_arr <= 0] = 0
        return y_arr
    cdef floating[:, ::1] y = y_arr
    # Below GRAIN one thread, whatever n_threads is, runs one GEMM over all the rows: the
    # partition still depends on the shapes only (the same bits for any thread count).
    cdef Py_ssize_t rows = N if N * I * O < GRAIN else _block_rows(N, FWD_BLOCK)
    nblk = (N + rows - 1) // rows
    n_threads = threads_for(N * I * O, n_threads, GRAIN)
    cdef float[:, ::1] wT
    if floating is float and _use_microkernel and N >= MK_MIN_ROWS:  # column blocks
        wT = np.empty((I, O), dtype=np.float32)
        rows = O if N * I * O < GRAIN else _block_rows(O, FWD_BLOCK)
        with nogil:
            for blk in prange((O + rows - 1) // rows, schedule="static",
                              num_threads=n_threads):
                _forward_columns(&x[0, 0], &w[0, 0], &bv[0], has_bias, relu, &wT[0, 0],
                                 &y[0, 0], blk * rows, imin((blk + 1) * rows, O), N, I, O)
        return y_arr
    with nogil:
        for blk in prange(nblk, schedule="static", num_threads=n_threads):
            _forward_block(&x[0, 0], &w[0, 0], &bv[0], has_bias, relu, &y[0, 0], blk * rows,
                           imin((blk + 1) * rows, N), I, O)
    return y_arr


cdef void _dw_block(const floating* dy, const floating* x, floating* dw, floating* db,
                    Py_ssize_t o0, Py_ssize_t o1, Py_ssize_t N, Py_ssize_t I,
                    Py_ssize_t O) noexcept nogil:
    """Rows o0 <= o < o1 of dw = dy^T @ x (dy read transposed in place) and db[o0:o1], the
    sum over n in order, (linear.bwd)."""
    cdef Py_ssize_t n, o
    if floating is float and _use_microkernel:      # A = dy^T: rows 1 apart, columns O
        fc_gemm_f32(o1 - o0, I, N, dy + o0, 1, O, x, I, 0, dw + o0 * I, I)
    else:
        gemm_rm(True, False, <int>(o1 - o0), <int>I, <int>N, 1, dy + o0, <int>O, x, <int>I,
                0, dw + o0 * I, <int>I)
    for o in range(o0, o1):
        db[o] = 0
    for n in range(N):                           # contiguous runs of dy's row n
        for o in range(o0, o1):
            db[o] += dy[n * O + o]


cdef void _dx_block(const floating* dy, const floating* w, floating* dx, Py_ssize_t n0,
                    Py_ssize_t n1, Py_ssize_t I, Py_ssize_t O, const floating* x,
                    bint through_relu) noexcept nogil:
    """Rows n0 <= n < n1 of dx = dy @ w, (linear.bwd); with through_relu, then 0 where
    x <= 0 (x a ReLU's output: (relu.bwd) in the same pass)."""
    if floating is float and _use_microkernel:
        fc_gemm_f32(n1 - n0, I, O, dy + n0 * O, O, 1, w, I, 0, dx + n0 * I, I)
    else:
        gemm_rm(False, False, <int>(n1 - n0), <int>I, <int>O, 1, dy + n0 * O, <int>O, w,
                <int>I, 0, dx + n0 * I, <int>I)
    if through_relu:
        relu_backward_block(_ISA, dx + n0 * I, x + n0 * I, dx + n0 * I, (n1 - n0) * I)


def linear_backward(const floating[:, ::1] dy, const floating[:, ::1] x,
                    const floating[:, ::1] w, int n_threads, bint need_dx=True,
                    bint through_relu=False):
    """Gradients of :func:`linear_forward`, notes eq. (linear.bwd).

    Parameters
    ----------
    dy : ndarray (N, O);  x : ndarray (N, I);  w : ndarray (O, I); one dtype, C-contiguous
    n_threads : int (BLAS limited to one thread by the caller; the same bits for any value)
    need_dx : bool
        False skips dx (None is returned in its place): a network's first layer.
    through_relu : bool
        x is a ReLU's output: dx is the gradient of the ReLU's input, 0 where x <= 0
        (relu.bwd), applied to each block of dx as it is written.

    Returns
    -------
    dx : (N, I) or None, dw : (O, I), db : (O,), all of x's dtype.
    """
    cdef Py_ssize_t N = x.shape[0], I = x.shape[1], O = w.shape[0], task, n_dw, n_dx
    if w.shape[1] != I:
        raise ValueError(f"linear_backward: w has {w.shape[1]} inputs, x has {I}")
    if dy.shape[0] != N or dy.shape[1] != O:
        raise ValueError(f"linear_backward: dy must have shape ({N}, {O}), got "
                         f"({dy.shape[0]}, {dy.shape[1]})")
    _check_sizes("linear_backward", N, I, O)
    dtype = np.float32 if floating is float else np.float64
    # without need_dx, a one-element placeholder that is never read
    dx_arr = np.empty((N if need_dx else 1, I if need_dx else 1), dtype=dtype)
    dw_arr = np.empty((O, I), dtype=dtype)
    db_arr = np.empty(O, dtype=dtype)
    if N == 0 or I == 0 or O == 0:               # empty products: zeros
        dx_arr[...] = 0
        dw_arr[...] = 0
        db_arr[...] = 0
        return (dx_arr if need_dx else None), dw_arr, db_arr
    cdef floating[:, ::1] dx = dx_arr
    cdef floating[:, ::1] dw = dw_arr
    cdef floating[::1] db = db_arr
    cdef Py_ssize_t macs = N * I * O * (2 if need_dx else 1)
    # below GRAIN: one thread, one GEMM per product (see linear_forward)
    cdef Py_ssize_t dw_rows = O if macs < GRAIN else _block_rows(O, BWD_BLOCK)
    cdef Py_ssize_t dx_rows = N if macs < GRAIN else _block_rows(N, BWD_BLOCK)
    n_dw = (O + dw_rows - 1) // dw_rows
    n_dx = (N + dx_rows - 1) // dx_rows if need_dx else 0
    n_threads = threads_for(macs, n_threads, GRAIN)
    with nogil:
        # dw blocks first, then dx blocks; dynamic: the two kinds of tasks differ in cost
        for task in prange(n_dw + n_dx, schedule="dynamic", num_threads=n_threads):
            if task < n_dw:
                _dw_block(&dy[0, 0], &x[0, 0], &dw[0, 0], &db[0], task * dw_rows,
                          imin((task + 1) * dw_rows, O), N, I, O)
            else:
                _dx_block(&dy[0, 0], &w[0, 0], &dx[0, 0], (task - n_dw) * dx_rows,
                          imin((task - n_dw + 1) * dx_rows, N), I, O, &x[0, 0], through_relu)
    return (dx_arr if need_dx else None), dw_arr, db_arr
