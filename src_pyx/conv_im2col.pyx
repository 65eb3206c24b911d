# cython: language_level=3
"""2-D convolution as matrix products: im2col + GEMM, one image per thread (Caffe's method).

Compiled twin of ``fastconv/reference/conv_im2col.py`` (same functions and signatures);
``fastconv.functional`` validates every argument and limits BLAS to one thread around
each call, so the GEMMs issued from inside ``prange`` do not oversubscribe the cores.

(im2col)    col_n[(c*R + r)*S + s, p*Q + q] = x[n, c, p*sh + r - ph, q*sw + s - pw]  (0 outside)
            Y_n = W @ col_n  (+ b)          W = w viewed as (K, C*R*S)           (conv.fwd)
            dcol_n = W^T @ dY_n, then col2im scatter-adds dcol_n into dx[n]
            dW = sum_n dY_n @ col_n^T,  db[k] = sum_{n,p,q} dy[n,k,p,q]          (conv.bwd)

Design notes
------------
* Memory is bounded: each thread owns ONE column buffer (C*R*S x P*Q) and reuses it for
  every image it handles; the batch's column matrix is never built.
* 1x1, stride 1, unpadded convolutions skip im2col: x[n] viewed as (C, H*W) already is
  col_n (as Caffe's ``is_1x1_``), and dx[n] is dcol_n.
* dW is a reduction over the batch. To get the same bits for any thread count, the batch is
  cut into a FIXED set of chunks that depends only on the shapes (``_n_chunks``); each chunk
  accumulates its own partial dW, and the partials are added in chunk order.
* No task's result depends on which thread runs it (a thread's column buffer is scratch,
  fully rewritten per image), so the per-image and per-chunk loops use
  ``schedule="dynamic"``: on a shared machine one thread often runs slower (another process
  on its core), and a static split would make the whole call wait for it.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange, threadid

from _blas cimport gemm_rm
from _common cimport end_inside, first_inside, out_size, threads_for_macs

_INT_MAX = 2**31 - 1                   # BLAS sizes are C ints
_MAX_CHUNKS = 16                       # batch chunks of the dW reduction (parallelism of it)
_PARTIALS_BYTES = 64 * 2**20           # ... and at most this much memory for their partial dWs


# --------------------------------------------------------------------------- index helpers



# --------------------------------------------------------------------------- im2col / col2im

cdef void _im2col_sample(const floating* x_n, floating* col, Py_ssize_t C, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t R, Py_ssize_t S, Py_ssize_t P, Py_ssize_t Q,
                         Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                         Py_ssize_t pw) noexcept nogil:
    """(im2col) x_n (C, H, W) -> col (C*R*S, P*Q), zeros where the window is in the padding.

    Row (c, r, s) of col is the image plane c shifted by the tap (r, s) and sampled every
    stride; each output row p of it is [zeros | a contiguous/strided copy | zeros].
    """
    cdef Py_ssize_t c, r, s, p, q, p_lo, p_hi, q_lo, q_hi, off
    cdef floating* col_row
    cdef floating* dst
    cdef const floating* x_row
    for c in range(C):
        for r in range(R):
            p_lo = first_inside(r - ph, sh, P)
            p_hi = end_inside(H, r - ph, sh, P, p_lo)
            for s in range(S):
                col_row = col + ((c * R + r) * S + s) * P * Q
                off = s - pw
                q_lo = first_inside(off, sw, Q)
                q_hi = end_inside(W, off, sw, Q, q_lo)
                for q in range(p_lo * Q):                  # rows above the image
                    col_row[q] = 0
                for p in range(p_lo, p_hi):
                    dst = col_row + p * Q
                    x_row = x_n + (c * H + p * sh + r - ph) * W
                    for q in range(q_lo):
                        dst[q] = 0
                    if sw == 1:
                        for q in range(q_lo, q_hi):
                            dst[q] = x_row[q + off]
                    else:
                        for q in range(q_lo, q_hi):
                            dst[q] = x_row[q * sw + off]
                    for q in range(q_hi, Q):
                        dst[q] = 0
                for q in range(p_hi * Q, P * Q):           # rows below the image
                    col_row[q] = 0


cdef void _col2im_sample(const floating* col, floating* dx_n, Py_ssize_t C, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t R, Py_ssize_t S, Py_ssize_t P, Py_ssize_t Q,
                         Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                         Py_ssize_t pw) noexcept nogil:
    """The adjoint of _im2col_sample: dx_n (C, H, W) = sum of col's entries onto the pixels
    they were copied from (entries that came from the padding are dropped)."""
    cdef Py_ssize_t c, r, s, p, q, i, p_lo, p_hi, q_lo, q_hi, off
    cdef const floating* src
    cdef floating* dx_row
    for i in range(C * H * W):
        dx_n[i] = 0
    for c in range(C):
        for r in range(R):
            p_lo = first_inside(r - ph, sh, P)
            p_hi = end_inside(H, r - ph, sh, P, p_lo)
            for s in range(S):
                off = s - pw
                q_lo = first_inside(off, sw, Q)
                q_hi = end_inside(W, off, sw, Q, q_lo)
                for p in range(p_lo, p_hi):
                    src = col + ((c * R + r) * S + s) * P * Q + p * Q
                    dx_row = dx_n + (c * H + p * sh + r - ph) * W
                    if sw == 1:
                        for q in range(q_lo, q_hi):
                            dx_row[q + off] += src[q]
                    else:
                        for q in range(q_lo, q_hi):
                            dx_row[q * sw + off] += src[q]


# --------------------------------------------------------------------------- forward

cdef void _forward_sample(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                          const floating[::1] b, floating[:, :, :, ::1] y, floating* col,
                          Py_ssize_t n, bint is_1x1, bint has_bias, Py_ssize_t sh,
                          Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """Y_n (K x PQ) = W (K x CRS) @ col_n (CRS x PQ) (+ b), eq. (im2col)."""
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3]
    cdef Py_ssize_t P = y.shape[2], Q = y.shape[3], k, i
    cdef int CRS = <int>(C * R * S), PQ = <int>(P * Q)
    cdef floating* y_n = &y[n, 0, 0, 0]
    cdef const floating* col_n
    cdef floating beta = 0
    if has_bias:                             # Y_n = b, then GEMM with beta = 1 adds W @ col_n
        beta = 1
        for k in range(K):
            for i in range(PQ):
                y_n[k * PQ + i] = b[k]
    if is_1x1:
        col_n = &x[n, 0, 0, 0]               # x[n] as (C, H*W) is col_n already
    else:
        _im2col_sample(&x[n, 0, 0, 0], col, C, H, W, R, S, P, Q, sh, sw, ph, pw)
        col_n = col
    gemm_rm(False, False, <int>K, PQ, CRS, 1, &w[0, 0, 0, 0], CRS, col_n, PQ, beta, y_n, PQ)


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w, b,
                   stride, padding, int n_threads):
    """Convolution (cross-correlation, as PyTorch) by im2col + GEMM, eqs. (im2col), (conv.fwd).

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64, C-contiguous (read-only is fine)
    w : ndarray (K, C, R, S), same dtype
    b : ndarray (K,) or None
    stride, padding : (int, int)
    n_threads : int
        OpenMP threads, one image each at a time; call with BLAS limited to one thread
        (fastconv.functional does). Bitwise the same result for any value.

    Returns
    -------
    y : ndarray (N, K, P, Q), x's dtype; P, Q by (conv.out).
    """
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3]
    cdef Py_ssize_t sh, sw, ph, pw, P, Q, n
    cdef int nt = 1
    sh, sw, ph, pw = _check_conv_args((N, C, H, W), (K, w.shape[1], R, S), stride, padding)
    P = out_size(H, R, sh, ph)                                       # (conv.out)
    Q = out_size(W, S, sw, pw)
    nt = threads_for_macs(N * K * P * Q * C * R * S, n_threads)
    _check_blas_sizes(K, C * R * S, P * Q)
    cdef bint is_1x1 = R == 1 and S == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    b_arr = np.zeros(K, dtype=dtype) if b is None else np.asarray(b)
    if b_arr.shape != (K,):
        raise ValueError(f"conv2d_forward: b must have shape ({K},), got {b_arr.shape}")
    cdef const floating[::1] bv = b_arr
    cdef bint has_bias = b is not None
    y_arr = np.empty((N, K, P, Q), dtype=dtype)
    # one column buffer per thread (a dummy row when im2col is skipped)
    col_arr = np.empty((nt, 1 if is_1x1 else C * R * S * P * Q), dtype=dtype)
    cdef floating[:, :, :, ::1] y = y_arr
    cdef floating[:, ::1] col = col_arr
    with nogil:
        for n in prange(N, schedule="dynamic", num_threads=nt):
            _forward_sample(x, w, bv, y, &col[threadid(), 0], n, is_1x1, has_bias,
                            sh, sw, ph, pw)
    return y_arr


# --------------------------------------------------------------------------- backward

cdef void _backward_chunk(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                          const floating[:, :, :, ::1] w, floating[:, :, :, ::1] dx,
                          floating* dw_part, floating* col, Py_ssize_t n_begin,
                          Py_ssize_t n_end, bint is_1x1, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """Images n_begin <= n < n_end: dx[n], and their partial dW = sum_n dY_n @ col_n^T.

    Per image: build col_n, accumulate dW_part += dY_n @ col_n^T, then reuse the same buffer
    for dcol_n = W^T @ dY_n and scatter it into dx[n] (col2im). eqs. (im2col), (conv.bwd).
    """
    cdef Py_ssize_t C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3]
    cdef Py_ssize_t P = dy.shape[2], Q = dy.shape[3], n
    cdef int CRS = <int>(C * R * S), PQ = <int>(P * Q), Ki = <int>K
    cdef const floating* dy_n
    cdef const floating* w_mat = &w[0, 0, 0, 0]
    cdef const floating* col_n
    cdef floating beta
    for n in range(n_begin, n_end):
        dy_n = &dy[n, 0, 0, 0]                               # dY_n: (K, PQ)
        if is_1x1:
            col_n = &x[n, 0, 0, 0]
        else:
            _im2col_sample(&x[n, 0, 0, 0], col, C, H, W, R, S, P, Q, sh, sw, ph, pw)
            col_n = col
        beta = 0 if n == n_begin else 1                      # the first image overwrites
        # dW_part (K, CRS) += dY_n (K, PQ) @ col_n^T (PQ, CRS)
        gemm_rm(False, True, Ki, CRS, PQ, 1, dy_n, PQ, col_n, PQ, beta, dw_part, CRS)
        if is_1x1:
            # dx[n] (C, HW) = W^T (C, K) @ dY_n (K, HW): no col2im needed
            gemm_rm(True, False, CRS, PQ, Ki, 1, w_mat, CRS, dy_n, PQ, 0, &dx[n, 0, 0, 0], PQ)
        else:
            # dcol_n (CRS, PQ) = W^T (CRS, K) @ dY_n (K, PQ), then scatter-add into dx[n]
            gemm_rm(True, False, CRS, PQ, Ki, 1, w_mat, CRS, dy_n, PQ, 0, col, PQ)
            _col2im_sample(col, &dx[n, 0, 0, 0], C, H, W, R, S, P, Q, sh, sw, ph, pw)


cdef void _sum_partials(const floating[:, ::1] parts, floating* dw, Py_ssize_t i) noexcept nogil:
    """dw[i] = parts[0, i] + parts[1, i] + ... in chunk order (the same bits on any threads)."""
    cdef Py_ssize_t j
    cdef floating total = parts[0, i]
    for j in range(1, parts.shape[0]):
        total = total + parts[j, i]
    dw[i] = total


cdef void _db_one(const floating[:, :, :, ::1] dy, floating[::1] db, Py_ssize_t k) noexcept nogil:
    """db[k] = sum_{n,p,q} dy[n, k, p, q], accumulated in double (cheap: N*P*Q adds)."""
    cdef Py_ssize_t N = dy.shape[0], PQ = dy.shape[2] * dy.shape[3], n, i
    cdef double total = 0
    cdef const floating* dy_plane
    for n in range(N):
        dy_plane = &dy[n, k, 0, 0]
        for i in range(PQ):
            total += dy_plane[i]
    db[k] = <floating>total


def _n_chunks(Py_ssize_t N, Py_ssize_t dw_bytes):
    """How many fixed batch chunks the dW reduction uses: a function of the shapes only
    (never of the thread count), so the summation order, hence the bits, never change.
    Up to _MAX_CHUNKS (the parallelism of the reduction), one partial dW each, with the
    partials capped at _PARTIALS_BYTES in total."""
    return int(max(1, min(N, _MAX_CHUNKS, _PARTIALS_BYTES // max(dw_bytes, 1))))


def conv2d_backward(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] w, stride, padding, int n_threads):
    """Gradients of :func:`conv2d_forward` by GEMM and col2im, eqs. (im2col), (conv.bwd).

    Parameters
    ----------
    dy : ndarray (N, K, P, Q), dLoss/dy
    x : ndarray (N, C, H, W);  w : ndarray (K, C, R, S); all of one dtype
    stride, padding : (int, int)
    n_threads : int (BLAS limited to one thread by the caller; bitwise the same for any value)

    Returns
    -------
    dx : (N, C, H, W), dw : (K, C, R, S), db : (K,), all of x's dtype.
    """
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = w.shape[0], R = w.shape[2], S = w.shape[3]
    cdef Py_ssize_t sh, sw, ph, pw, P, Q, i, k, ch, chunk, n_chunks, CRS = C * R * S
    cdef int nt = 1
    sh, sw, ph, pw = _check_conv_args((N, C, H, W), (K, w.shape[1], R, S), stride, padding)
    P = out_size(H, R, sh, ph)
    Q = out_size(W, S, sw, pw)
    nt = threads_for_macs(N * K * P * Q * C * R * S, n_threads)
    dy_shape = (dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3])
    if dy_shape != (N, K, P, Q):
        raise ValueError(f"conv2d_backward: dy must have shape {(N, K, P, Q)}, got {dy_shape}")
    _check_blas_sizes(K, CRS, P * Q)
    cdef bint is_1x1 = R == 1 and S == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    n_chunks = _n_chunks(N, K * CRS * np.dtype(dtype).itemsize)
    chunk = (N + n_chunks - 1) // n_chunks                  # images per chunk
    n_chunks = (N + chunk - 1) // chunk                     # drop chunks left empty
    dx_arr = np.empty((N, C, H, W), dtype=dtype)
    dw_arr = np.empty((K, C, R, S), dtype=dtype)
    db_arr = np.empty(K, dtype=dtype)
    parts_arr = np.empty((n_chunks, K * CRS), dtype=dtype)
    col_arr = np.empty((nt, 1 if is_1x1 else CRS * P * Q), dtype=dtype)
    cdef floating[:, :, :, ::1] dx = dx_arr
    cdef floating[:, :, :, ::1] dw = dw_arr
    cdef floating[::1] db = db_arr
    cdef floating[:, ::1] parts = parts_arr
    cdef floating[:, ::1] col = col_arr
    with nogil:
        for ch in prange(n_chunks, schedule="dynamic", num_threads=nt):
            _backward_chunk(dy, x, w, dx, &parts[ch, 0], &col[threadid(), 0], ch * chunk,
                            min((ch + 1) * chunk, N), is_1x1, sh, sw, ph, pw)
        for i in prange(K * CRS, schedule="static", num_threads=nt):
            _sum_partials(parts, &dw[0, 0, 0, 0], i)
        for k in prange(K, schedule="static", num_threads=nt):
            _db_one(dy, db, k)
    return dx_arr, dw_arr, db_arr


# --------------------------------------------------------------------------- guards

def _check_blas_sizes(*sizes):
    if max(sizes) > _INT_MAX:
        raise ValueError(f"conv: a GEMM dimension of {sizes} overflows BLAS's 32-bit int")


def _check_conv_args(x_shape, w_shape, stride, padding):
    """O(1) shape checks so that a direct call with inconsistent arguments raises instead of
    reading out of bounds (fastconv.functional does the user-facing validation).
    Returns (sh, sw, ph, pw)."""
    sh, sw = (int(v) for v in stride)
    ph, pw = (int(v) for v in padding)
    H, W = x_shape[2], x_shape[3]
    R, S = w_shape[2], w_shape[3]
    if w_shape[1] != x_shape[1]:
        raise ValueError(f"conv: w has {w_shape[1]} input channels but x has {x_shape[1]}")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"conv: need stride >= 1 and padding >= 0, got {stride}, {padding}")
    if R > H + 2 * ph or S > W + 2 * pw:
        raise ValueError(f"conv: kernel {R}x{S} larger than the padded input "
                         f"{H + 2 * ph}x{W + 2 * pw}")
    if min(x_shape) == 0 or min(w_shape) == 0:
        raise ValueError("conv: empty arrays are not supported")
    return sh, sw, ph, pw
