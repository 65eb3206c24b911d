# cython: language_level=3
"""Batch normalisation: Cython + OpenMP twin of ``fastconv.reference.batchnorm``.

Same functions and signatures as the reference; read its docstring for (bn.fwd), (bn.bwd)
and (bn.run). x is always 4-D (N, C, H, W) (BatchNorm1d input arrives as (N, C, 1, 1)),
channel c holds M = N*H*W values, and statistics are accumulated in double even for float32.

How the kernels work
--------------------
Two memory layouts, one per common case, chosen by HW = H*W:

* HW > 1 ("channel path"): ``prange`` over channels. Channel c is N contiguous runs of HW
  values, C*HW apart; one thread does all of a channel's passes back to back, so for the
  usual layer sizes the channel's data stays in L2 between passes. Sums use LANES = 8
  independent double accumulators (lane k takes the elements i with i % 8 == k of each
  run, in order), which lets gcc vectorise the reduction without -ffast-math; the lanes
  are added in a fixed tree at the end.
* HW == 1 ("row path", BatchNorm1d): channel c is strided by C, which is slow to walk
  channel by channel. Instead loop n outer and c inner with one double accumulator per
  channel: rows are contiguous and the loop over c vectorises. ``prange`` runs over fixed
  blocks of CBLOCK = 64 channels.

Either way every channel's sums are taken in an order fixed by the shape alone, so the
results are bitwise identical for any number of threads. Small calls run on one thread
(``threads_for_values`` in _common.pxd).

Training forward: pass 1 the mean, pass 2 the centred variance sum((x - mean)^2) / M
(two passes are numerically better than E[x^2] - E[x]^2, which cancels catastrophically
when |mean| >> std), pass 3 y = (x - mean) * (gamma * invstd) + beta, one read and one write.
Backward (bn.bwd): pass 1 sum x and sum dy; pass 2 sum (x - mean)^2 and sum dy * (x - mean);
pass 3 dx = a * dy + b * (x - mean) + c0 with per-channel a, b, c0 (derived below).
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from _common cimport threads_for_values


cdef enum:
    LANES = 8       # independent partial sums per channel (vectorisable, fixed order)
    CBLOCK = 64     # channels per work unit on the row path (HW == 1)



cdef inline double _lanes_total(const double* acc) noexcept nogil:
    """The LANES partial sums added in a fixed tree order."""
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


# --------------------------------------------------------------------------- channel path (HW > 1)

cdef void _channel_stats(const floating* x0, Py_ssize_t N, Py_ssize_t sn, Py_ssize_t HW,
                         double* mean, double* var) noexcept nogil:
    """(bn.fwd) mean and biased var of one channel, two passes, double lanes.

    x0 points at x[0, c, 0, 0]; run n starts at x0 + n*sn and has HW values.
    """
    cdef double acc[LANES]
    cdef Py_ssize_t n, i, k, nfull = HW - HW % LANES
    cdef const floating* a
    cdef double m, d
    for k in range(LANES):
        acc[k] = 0
    for n in range(N):                                       # pass 1: sum x
        a = x0 + n * sn
        for i in range(0, nfull, 8):       # LANES (a literal, so Cython emits a C loop)
            for k in range(LANES):
                acc[k] += a[i + k]
        for i in range(nfull, HW):
            acc[i - nfull] += a[i]
    m = _lanes_total(acc) / (N * HW)
    for k in range(LANES):
        acc[k] = 0
    for n in range(N):                                       # pass 2: sum (x - mean)^2
        a = x0 + n * sn
        for i in range(0, nfull, 8):       # LANES (a literal, so Cython emits a C loop)
            for k in range(LANES):
                d = a[i + k] - m
                acc[k] += d * d
        for i in range(nfull, HW):
            d = a[i] - m
            acc[i - nfull] += d * d
    mean[0] = m
    var[0] = _lanes_total(acc) / (N * HW)


cdef void _channel_affine(const floating* x0, floating* y0, Py_ssize_t N, Py_ssize_t sn,
                          Py_ssize_t HW, floating m, floating a, floating b) noexcept nogil:
    """y = (x - m) * a + b over one channel (a = gamma * invstd, b = beta): (bn.fwd)."""
    cdef Py_ssize_t n, i
    cdef const floating* xr
    cdef floating* yr
    for n in range(N):
        xr = x0 + n * sn
        yr = y0 + n * sn
        for i in range(HW):
            yr[i] = (xr[i] - m) * a + b


cdef void _channel_train(const floating* x0, floating* y0, Py_ssize_t N, Py_ssize_t sn,
                         Py_ssize_t HW, floating gamma, floating beta, double eps,
                         double* mean, double* var) noexcept nogil:
    """Training forward of one channel: statistics, then the normalisation."""
    _channel_stats(x0, N, sn, HW, mean, var)
    cdef double invstd = 1.0 / sqrt(var[0] + eps)
    _channel_affine(x0, y0, N, sn, HW, <floating>mean[0], <floating>(gamma * invstd), beta)


cdef void _channel_backward(const floating* dy0, const floating* x0, floating* dx0,
                            Py_ssize_t N, Py_ssize_t sn, Py_ssize_t HW, floating gamma,
                            double eps, floating* dgamma, floating* dbeta) noexcept nogil:
    """(bn.bwd) for one channel, statistics recomputed from x.

    With xc = x - mean, S1 = sum dy and S2 = sum dy * xc (so dgamma = S2 * invstd):
    dx = gamma*invstd/M * (M*dy - S1 - xhat*dgamma)
       = (gamma*invstd) * dy  -  (gamma*invstd^3*S2/M) * xc  -  gamma*invstd*S1/M.
    """
    cdef double accx[LANES]
    cdef double accdy[LANES]
    cdef Py_ssize_t n, i, k, nfull = HW - HW % LANES
    cdef Py_ssize_t M = N * HW
    cdef const floating* a
    cdef const floating* g
    cdef floating* o
    cdef double m, d, var, invstd, s1, s2
    cdef floating ca, cb, cc, fm
    for k in range(LANES):
        accx[k] = 0
        accdy[k] = 0
    for n in range(N):                                       # pass 1: sum x, sum dy
        a = x0 + n * sn
        g = dy0 + n * sn
        for i in range(0, nfull, 8):       # LANES (a literal, so Cython emits a C loop)
            for k in range(LANES):
                accx[k] += a[i + k]
                accdy[k] += g[i + k]
        for i in range(nfull, HW):
            accx[i - nfull] += a[i]
            accdy[i - nfull] += g[i]
    m = _lanes_total(accx) / M
    s1 = _lanes_total(accdy)
    for k in range(LANES):
        accx[k] = 0
        accdy[k] = 0
    for n in range(N):                                       # pass 2: sum xc^2, sum dy*xc
        a = x0 + n * sn
        g = dy0 + n * sn
        for i in range(0, nfull, 8):       # LANES (a literal, so Cython emits a C loop)
            for k in range(LANES):
                d = a[i + k] - m
                accx[k] += d * d
                accdy[k] += g[i + k] * d
        for i in range(nfull, HW):
            d = a[i] - m
            accx[i - nfull] += d * d
            accdy[i - nfull] += g[i] * d
    var = _lanes_total(accx) / M
    s2 = _lanes_total(accdy)
    invstd = 1.0 / sqrt(var + eps)
    dgamma[0] = <floating>(s2 * invstd)
    dbeta[0] = <floating>s1
    ca = <floating>(gamma * invstd)
    cb = <floating>(-gamma * invstd * invstd * invstd * s2 / M)
    cc = <floating>(-gamma * invstd * s1 / M)
    fm = <floating>m
    for n in range(N):                                       # pass 3: dx
        a = x0 + n * sn
        g = dy0 + n * sn
        o = dx0 + n * sn
        for i in range(HW):
            o[i] = ca * g[i] + cb * (a[i] - fm) + cc


# --------------------------------------------------------------------------- row path (HW == 1)

cdef void _rows_train(const floating* x, floating* y, const floating* gamma,
                      const floating* beta, double eps, double* mean, double* var,
                      Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """Training forward of channels [c0, c1) (at most CBLOCK) of an (N, C) input, n outer."""
    cdef double acc[CBLOCK]
    cdef double m[CBLOCK]
    cdef floating fm[CBLOCK]
    cdef floating fa[CBLOCK]
    cdef floating fb[CBLOCK]
    cdef Py_ssize_t n, j, cb = c1 - c0
    cdef const floating* row
    cdef floating* out
    cdef double d
    for j in range(cb):
        acc[j] = 0
    for n in range(N):                                       # pass 1: sum x
        row = x + n * C + c0
        for j in range(cb):
            acc[j] += row[j]
    for j in range(cb):
        m[j] = acc[j] / N
        acc[j] = 0
    for n in range(N):                                       # pass 2: sum (x - mean)^2
        row = x + n * C + c0
        for j in range(cb):
            d = row[j] - m[j]
            acc[j] += d * d
    for j in range(cb):
        mean[c0 + j] = m[j]
        var[c0 + j] = acc[j] / N
        fm[j] = <floating>m[j]
        fa[j] = <floating>(gamma[c0 + j] / sqrt(var[c0 + j] + eps))
        fb[j] = beta[c0 + j]
    for n in range(N):                                       # pass 3: y
        row = x + n * C + c0
        out = y + n * C + c0
        for j in range(cb):
            out[j] = (row[j] - fm[j]) * fa[j] + fb[j]


cdef void _rows_eval(const floating* x, floating* y, const floating* gamma,
                     const floating* beta, const double* mean, const double* var, double eps,
                     Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """Eval forward of channels [c0, c1) of an (N, C) input with the given statistics."""
    cdef floating fm[CBLOCK]
    cdef floating fa[CBLOCK]
    cdef floating fb[CBLOCK]
    cdef Py_ssize_t n, j, cb = c1 - c0
    cdef const floating* row
    cdef floating* out
    for j in range(cb):
        fm[j] = <floating>mean[c0 + j]
        fa[j] = <floating>(gamma[c0 + j] / sqrt(var[c0 + j] + eps))
        fb[j] = beta[c0 + j]
    for n in range(N):
        row = x + n * C + c0
        out = y + n * C + c0
        for j in range(cb):
            out[j] = (row[j] - fm[j]) * fa[j] + fb[j]


cdef void _rows_backward(const floating* dy, const floating* x, floating* dx,
                         const floating* gamma, double eps, floating* dgamma, floating* dbeta,
                         Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """(bn.bwd) for channels [c0, c1) of an (N, C) input; formulas as in _channel_backward."""
    cdef double acc[CBLOCK]           # sum x, then sum xc^2
    cdef double s1[CBLOCK]            # sum dy
    cdef double s2[CBLOCK]            # sum dy * xc
    cdef double m[CBLOCK]
    cdef floating fm[CBLOCK]
    cdef floating ca[CBLOCK]
    cdef floating cb_[CBLOCK]
    cdef floating cc[CBLOCK]
    cdef Py_ssize_t n, j, cb = c1 - c0
    cdef const floating* row
    cdef const floating* grow
    cdef floating* out
    cdef double d, invstd, gi
    for j in range(cb):
        acc[j] = 0
        s1[j] = 0
        s2[j] = 0
    for n in range(N):                                       # pass 1: sum x, sum dy
        row = x + n * C + c0
        grow = dy + n * C + c0
        for j in range(cb):
            acc[j] += row[j]
            s1[j] += grow[j]
    for j in range(cb):
        m[j] = acc[j] / N
        acc[j] = 0
    for n in range(N):                                       # pass 2: sum xc^2, sum dy*xc
        row = x + n * C + c0
        grow = dy + n * C + c0
        for j in range(cb):
            d = row[j] - m[j]
            acc[j] += d * d
            s2[j] += grow[j] * d
    for j in range(cb):
        invstd = 1.0 / sqrt(acc[j] / N + eps)
        gi = gamma[c0 + j] * invstd
        dgamma[c0 + j] = <floating>(s2[j] * invstd)
        dbeta[c0 + j] = <floating>s1[j]
        fm[j] = <floating>m[j]
        ca[j] = <floating>gi
        cb_[j] = <floating>(-gi * invstd * invstd * s2[j] / N)
        cc[j] = <floating>(-gi * s1[j] / N)
    for n in range(N):                                       # pass 3: dx
        row = x + n * C + c0
        grow = dy + n * C + c0
        out = dx + n * C + c0
        for j in range(cb):
            out[j] = ca[j] * grow[j] + cb_[j] * (row[j] - fm[j]) + cc[j]


# --------------------------------------------------------------------------- the twins' API

def _check(op, x_shape, C_arrays, dy_shape=None):
    """O(1) guard for direct calls (functional.py validates for users): reject shapes that
    would read or write out of bounds. C_arrays: name -> shape of each (C,) argument."""
    if min(x_shape[:4]) <= 0:
        raise ValueError(f"{op}: empty arrays are not supported, got x of shape {tuple(x_shape[:4])}")
    C = x_shape[1]
    for name, shape in C_arrays.items():
        if tuple(shape[:1]) != (C,):
            raise ValueError(f"{op}: {name} must have shape ({C},), got {tuple(shape[:1])}")
    if dy_shape is not None and tuple(dy_shape[:4]) != tuple(x_shape[:4]):
        raise ValueError(f"{op}: dy must have x's shape {tuple(x_shape[:4])}, "
                         f"got {tuple(dy_shape[:4])}")



def batch_norm_train_forward(const floating[:, :, :, ::1] x, const floating[::1] gamma,
                             const floating[::1] beta, double eps, int n_threads):
    """Training-mode batch norm with the batch statistics, notes eq. (bn.fwd).

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64, C-contiguous (may be read-only)
    gamma, beta : ndarray (C,), x's dtype
    eps : float
    n_threads : int
        OpenMP threads; the results do not depend on it.

    Returns
    -------
    y : ndarray (N, C, H, W), x's dtype
    mean, var : ndarray (C,) float64; var is the biased batch variance (divided by M).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], HW = x.shape[2] * x.shape[3], c, blk
    cdef Py_ssize_t nblk = (C + CBLOCK - 1) // CBLOCK
    _check("batch_norm_train_forward", x.shape, {"gamma": gamma.shape, "beta": beta.shape})
    y_arr = np.empty((x.shape[0], x.shape[1], x.shape[2], x.shape[3]),
                     dtype=np.float32 if floating is float else np.float64)
    mean_arr = np.empty(C, dtype=np.float64)
    var_arr = np.empty(C, dtype=np.float64)
    cdef floating[:, :, :, ::1] y = y_arr
    cdef double[::1] mean = mean_arr
    cdef double[::1] var = var_arr
    n_threads = threads_for_values(N * C * HW, n_threads)
    with nogil:
        if HW == 1:
            for blk in prange(nblk, schedule="static", num_threads=n_threads):
                _rows_train(&x[0, 0, 0, 0], &y[0, 0, 0, 0], &gamma[0], &beta[0], eps,
                            &mean[0], &var[0], N, C, blk * CBLOCK, min(C, (blk + 1) * CBLOCK))
        else:
            for c in prange(C, schedule="static", num_threads=n_threads):
                _channel_train(&x[0, c, 0, 0], &y[0, c, 0, 0], N, C * HW, HW, gamma[c], beta[c],
                               eps, &mean[c], &var[c])
    return y_arr, mean_arr, var_arr


def batch_norm_eval_forward(const floating[:, :, :, ::1] x, const floating[::1] gamma,
                            const floating[::1] beta, const double[::1] mean,
                            const double[::1] var, double eps, int n_threads):
    """Eval-mode batch norm: eq. (bn.fwd) with the given (running) statistics.

    Parameters
    ----------
    x : ndarray (N, C, H, W)
    gamma, beta : ndarray (C,), x's dtype
    mean, var : ndarray (C,) float64, the running statistics
    eps : float
    n_threads : int

    Returns
    -------
    y : ndarray (N, C, H, W), x's dtype.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], HW = x.shape[2] * x.shape[3], c, blk
    cdef Py_ssize_t nblk = (C + CBLOCK - 1) // CBLOCK
    _check("batch_norm_eval_forward", x.shape, {"gamma": gamma.shape, "beta": beta.shape,
                                                "mean": mean.shape, "var": var.shape})
    y_arr = np.empty((x.shape[0], x.shape[1], x.shape[2], x.shape[3]),
                     dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, :, :, ::1] y = y_arr
    n_threads = threads_for_values(N * C * HW, n_threads)
    with nogil:
        if HW == 1:
            for blk in prange(nblk, schedule="static", num_threads=n_threads):
                _rows_eval(&x[0, 0, 0, 0], &y[0, 0, 0, 0], &gamma[0], &beta[0], &mean[0],
                           &var[0], eps, N, C, blk * CBLOCK, min(C, (blk + 1) * CBLOCK))
        else:
            for c in prange(C, schedule="static", num_threads=n_threads):
                _channel_affine(&x[0, c, 0, 0], &y[0, c, 0, 0], N, C * HW, HW,
                                <floating>mean[c], <floating>(gamma[c] / sqrt(var[c] + eps)),
                                beta[c])
    return y_arr


def batch_norm_backward(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                        const floating[::1] gamma, double eps, int n_threads):
    """Training-mode gradients, notes eq. (bn.bwd); the batch statistics are recomputed from x.

    Parameters
    ----------
    dy, x : ndarray (N, C, H, W)
    gamma : ndarray (C,)
    eps : float
    n_threads : int

    Returns
    -------
    dx : ndarray (N, C, H, W), dgamma : ndarray (C,), dbeta : ndarray (C,), all x's dtype.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], HW = x.shape[2] * x.shape[3], c, blk
    cdef Py_ssize_t nblk = (C + CBLOCK - 1) // CBLOCK
    _check("batch_norm_backward", x.shape, {"gamma": gamma.shape}, dy.shape)
    dtype = np.float32 if floating is float else np.float64
    dx_arr = np.empty((N, C, x.shape[2], x.shape[3]), dtype=dtype)
    dgamma_arr = np.empty(C, dtype=dtype)
    dbeta_arr = np.empty(C, dtype=dtype)
    cdef floating[:, :, :, ::1] dx = dx_arr
    cdef floating[::1] dgamma = dgamma_arr
    cdef floating[::1] dbeta = dbeta_arr
    n_threads = threads_for_values(N * C * HW, n_threads)
    with nogil:
        if HW == 1:
            for blk in prange(nblk, schedule="static", num_threads=n_threads):
                _rows_backward(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &dx[0, 0, 0, 0], &gamma[0], eps,
                               &dgamma[0], &dbeta[0], N, C, blk * CBLOCK,
                               min(C, (blk + 1) * CBLOCK))
        else:
            for c in prange(C, schedule="static", num_threads=n_threads):
                _channel_backward(&dy[0, c, 0, 0], &x[0, c, 0, 0], &dx[0, c, 0, 0], N, C * HW, HW,
                                  gamma[c], eps, &dgamma[c], &dbeta[c])
    return dx_arr, dgamma_arr, dbeta_arr
