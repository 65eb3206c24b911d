# cython: language_level=3
"""Batch normalisation: Cython + OpenMP twin of ``fastconv.reference.batchnorm``.

Same functions and signatures as the reference; read its docstring for (bn.fwd), (bn.bwd)
and (bn.run). x is always 4-D (N, C, H, W) (BatchNorm1d input arrives as (N, C, 1, 1)),
channel c holds M = N*H*W values, and statistics are accumulated in double even for float32
(the backward first sums short blocks in x's dtype: see _channel_backward, _rows_backward).

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
  value by value. Instead every pass takes 8 neighbouring channels at a time (32
  contiguous bytes of each row) down all N rows, with their running sums or coefficients
  in registers, so the loop over the 8 channels vectorises. ``prange`` runs over fixed
  blocks of CBLOCK = 64 channels.

Either way every channel's sums are taken in an order fixed by the shape alone, so the
results are bitwise identical for any number of threads. Small calls run on one thread
(``threads_for_values`` in _common.pxd).

Training forward, channel path: pass 1 the mean, pass 2 the centred variance
sum((x - mean)^2) / M (two passes are numerically better than E[x^2] - E[x]^2, which cancels
catastrophically when |mean| >> std), pass 3 y = (x - mean) * (gamma * invstd) + beta, one
read and one write. (Fusing passes 1 and 2 with shifted sums, as below, measured no faster
here: a channel's data are still in L2 for pass 2, and the fused loop is compute-bound.)
Row path: one pass of shifted sums (_shifted_moments), then y.
Backward (bn.bwd): the sums sum dy and sum dy * (x - mean), then dx = a * dy + b * (x - mean)
+ c0 with per-channel a, b, c0 (derived in _channel_backward). It takes the batch statistics
the forward saved (mean, var), as PyTorch's backward does, or recomputes them from x.
Channel path: pass 1 the mean (skipped with saved statistics), pass 2 the sums shifted by
K = the mean rounded to x's dtype, pass 3 dx. Row path: pass 1 the shifted sums with
K = x[0, c] (_shifted_moments says why that is accurate), pass 2 dx.
"""
import numpy as np

cimport numpy as cnp

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from _common cimport threads_for_values

cnp.import_array()


cdef inline cnp.ndarray _empty(int ndim, const cnp.npy_intp* shape, bint single):
    """np.empty(shape[:ndim], float32 if single else float64), without np.empty's ~0.2 us of
    argument parsing (noticeable on BatchNorm1d calls of ~10 us)."""
    return cnp.PyArray_EMPTY(ndim, <cnp.npy_intp*>shape,
                             cnp.NPY_FLOAT32 if single else cnp.NPY_FLOAT64, 0)


cdef enum:
    LANES = 8       # independent partial sums per channel (vectorisable, fixed order)
    CBLOCK = 64     # channels per work unit on the row path (HW == 1)
    RBLOCK = 8      # rows summed in x's dtype before being added to the double sums (row path)
    CHUNK = 256     # about this many values summed in x's dtype before the double sums
    RUN_PIECE = 128  # (channel path) runs are taken in pieces of at most this many values



cdef inline double _lanes_total(const double* acc) noexcept nogil:
    """The LANES partial sums added in a fixed tree order."""
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef inline void _shifted_moments(double K, double s1, double s2, Py_ssize_t M,
                                  double* mean, double* var) noexcept nogil:
    """mean and biased var from the shifted sums s1 = sum (x - K), s2 = sum (x - K)^2.

    mean = K + s1/M and var = s2/M - (s1/M)^2. Why this is accurate: the textbook one-pass
    E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std (both terms ~ mean^2, their
    difference ~ var), but here the terms are s2/M = var + (mean - K)^2 and (mean - K)^2, so
    the relative error of var is about 1e-16 * (1 + (mean - K)^2 / var). K is one of the
    channel's own values, and for any value (K - mean)^2 <= M * var (it is one term of the
    sum M * var = sum (x - mean)^2), so the error is at most ~1e-16 * (M + 1) even for an
    outlier, and ~1e-16 * (a few) for a typical K within a few std of the mean. The shift
    costs nothing and merges the mean and variance passes into one (one fewer read of x).
    """
    cdef double m1 = s1 / M, v = s2 / M - m1 * m1
    mean[0] = K + m1
    var[0] = v if v > 0 else 0.0        # rounding could leave a constant channel at -1e-30


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


cdef extern from *:
    """
    #include <string.h>
    /* Sums over a float32 run for _channel_mean and _channel_backward, 8 lanes each (lane k
     * takes the values i with i % 8 == k, in order), written with GCC/Clang vector types,
     * 4-float vectors (one SSE register on baseline x86-64; wider ones made gcc keep the sums
     * in memory). C rather than Cython because gcc's loop vectoriser turned the same
     * lane loop written in Cython into shuffles: it ran 1.6x slower than the double version.
     * n is a multiple of 8; memcpy is the portable unaligned load. */
    typedef float fc_v4sf __attribute__((vector_size(16)));

    static inline fc_v4sf fc_load4(const float* p) { fc_v4sf v; memcpy(&v, p, sizeof v); return v; }
    static inline void fc_add4(float* p, fc_v4sf v) { v += fc_load4(p); memcpy(p, &v, sizeof v); }

    /* out[k] += sum of the run's lane k */
    static void fc_run_sum_f32(const float* a, Py_ssize_t n, float* out) {
        fc_v4sf s0 = {0}, s1 = {0};
        for (Py_ssize_t i = 0; i < n; i += 8) {
            s0 += fc_load4(a + i);
            s1 += fc_load4(a + i + 4);
        }
        fc_add4(out, s0);
        fc_add4(out + 4, s1);
    }

    /* with d = a - K: out[0:8] += sum d^2 (only if with_dd), out[8:16] += sum g,
     * out[16:24] += sum g * d */
    static void fc_run_moments_f32(const float* a, const float* g, Py_ssize_t n, float K,
                                   int with_dd, float* out) {
        fc_v4sf dd0 = {0}, dd1 = {0}, g0 = {0}, g1 = {0}, gd0 = {0}, gd1 = {0};
        if (!with_dd) {       /* the saved-statistics backward: one sum fewer */
            for (Py_ssize_t i = 0; i < n; i += 8) {
                fc_v4sf d0 = fc_load4(a + i) - K, d1 = fc_load4(a + i + 4) - K;
                fc_v4sf y0 = fc_load4(g + i), y1 = fc_load4(g + i + 4);
                g0 += y0;
                g1 += y1;
                gd0 += y0 * d0;
                gd1 += y1 * d1;
            }
        } else for (Py_ssize_t i = 0; i < n; i += 8) {
            fc_v4sf d0 = fc_load4(a + i) - K, d1 = fc_load4(a + i + 4) - K;
            fc_v4sf y0 = fc_load4(g + i), y1 = fc_load4(g + i + 4);
            dd0 += d0 * d0;
            dd1 += d1 * d1;
            g0 += y0;
            g1 += y1;
            gd0 += y0 * d0;
            gd1 += y1 * d1;
        }
        fc_add4(out, dd0);
        fc_add4(out + 4, dd1);
        fc_add4(out + 8, g0);
        fc_add4(out + 12, g1);
        fc_add4(out + 16, gd0);
        fc_add4(out + 20, gd1);
    }

    /* Pass 2 of _channel_backward for a float32 channel (runs of HW values, sn apart), the
     * same loop as its Cython version for double: acc[0:8] += sum d^2 (if with_dd),
     * acc[8:16] += sum g, acc[16:24] += sum g * d, d = a - K, lane k holding the values
     * i % 8 == k of each piece of at most 128 values of a run, in float sums moved to acc
     * every 256 values or so. In C so that short runs (bn2d_s3: 64 values) do not pay a call
     * and the bookkeeping in Python's calling convention per run. */
    static void fc_channel_sums_f32(const float* x0, const float* g0, Py_ssize_t N,
                                    Py_ssize_t sn, Py_ssize_t HW, float K, int with_dd,
                                    double* acc) {
        float part[24] = {0};
        Py_ssize_t pending = 0;
        for (Py_ssize_t n = 0; n < N; n++) {
            const float* a = x0 + n * sn;
            const float* g = g0 + n * sn;
            for (Py_ssize_t i0 = 0; i0 < HW; i0 += 128) {
                Py_ssize_t i1 = i0 + 128 < HW ? i0 + 128 : HW, full = i1 - (i1 - i0) % 8;
                fc_run_moments_f32(a + i0, g + i0, full - i0, K, with_dd, part);
                for (Py_ssize_t i = full; i < i1; i++) {
                    float d = a[i] - K;
                    part[i - full] += d * d;
                    part[8 + i - full] += g[i];
                    part[16 + i - full] += g[i] * d;
                }
                pending += i1 - i0;
                if (pending >= 256) {
                    for (int k = 0; k < 24; k++) { acc[k] += part[k]; part[k] = 0; }
                    pending = 0;
                }
            }
        }
        for (int k = 0; k < 24; k++) acc[k] += part[k];
    }

    /* Pass 3 of _channel_backward for a float32 channel: dx = ca*dy + cb*(x - fm) + cc. In
     * C with restrict pointers and explicit vectors: the Cython loop re-checked on every run
     * that dx does not overlap x and dy before its vector loop, a cost short runs felt. */
    static void fc_channel_dx_f32(const float* restrict x0, const float* restrict g0,
                                  float* restrict dx0, Py_ssize_t N, Py_ssize_t sn,
                                  Py_ssize_t HW, float ca, float cb, float cc, float fm) {
        Py_ssize_t full = HW - HW % 4;
        for (Py_ssize_t n = 0; n < N; n++) {
            const float* a = x0 + n * sn;
            const float* g = g0 + n * sn;
            float* o = dx0 + n * sn;
            for (Py_ssize_t i = 0; i < full; i += 4) {
                fc_v4sf v = ca * fc_load4(g + i) + cb * (fc_load4(a + i) - fm) + cc;
                memcpy(o + i, &v, sizeof v);
            }
            for (Py_ssize_t i = full; i < HW; i++)
                o[i] = ca * g[i] + cb * (a[i] - fm) + cc;
        }
    }
    /* Pass 1 of _rows_backward for 8 neighbouring float32 channels of an (N, C) input (x and
     * g point at the first one's column, K holds their 8 shifts): acc[0:8] += sum d,
     * acc[8:16] += sum d^2 (only if with_x), acc[16:24] += sum g, acc[24:32] += sum g * d,
     * d = x - K, each over blocks of 8 rows in float, then added to the double sums. The
     * same sums as _rows_group_sums, in C because gcc's vectoriser split that loop into
     * scalar and vector lanes. */
    static void fc_rows_sums_f32(const float* x, const float* g, Py_ssize_t N, Py_ssize_t C,
                                 const float* K, int with_x, double* acc) {
        const fc_v4sf k0 = fc_load4(K), k1 = fc_load4(K + 4);
        for (Py_ssize_t n0 = 0; n0 < N; n0 += 8) {
            Py_ssize_t n1 = n0 + 8 < N ? n0 + 8 : N;
            fc_v4sf s[8] = {{0}};     /* sum d, sum d^2, sum g, sum g * d; 2 vectors each */
            float part[32];
            if (with_x) {
                for (Py_ssize_t n = n0; n < n1; n++) {
                    fc_v4sf d0 = fc_load4(x + n * C) - k0, d1 = fc_load4(x + n * C + 4) - k1;
                    fc_v4sf y0 = fc_load4(g + n * C), y1 = fc_load4(g + n * C + 4);
                    s[0] += d0; s[1] += d1;
                    s[2] += d0 * d0; s[3] += d1 * d1;
                    s[4] += y0; s[5] += y1;
                    s[6] += y0 * d0; s[7] += y1 * d1;
                }
            } else {
                for (Py_ssize_t n = n0; n < n1; n++) {
                    fc_v4sf d0 = fc_load4(x + n * C) - k0, d1 = fc_load4(x + n * C + 4) - k1;
                    fc_v4sf y0 = fc_load4(g + n * C), y1 = fc_load4(g + n * C + 4);
                    s[4] += y0; s[5] += y1;
                    s[6] += y0 * d0; s[7] += y1 * d1;
                }
            }
            memcpy(part, s, sizeof part);
            for (int k = 0; k < 32; k++) acc[k] += part[k];
        }
    }
    """
    void fc_run_sum_f32(const float* a, Py_ssize_t n, float* out) noexcept nogil
    void fc_rows_sums_f32(const float* x, const float* g, Py_ssize_t N, Py_ssize_t C,
                          const float* K, int with_x, double* acc) noexcept nogil
    void fc_run_moments_f32(const float* a, const float* g, Py_ssize_t n, float K,
                            int with_dd, float* out) noexcept nogil
    void fc_channel_sums_f32(const float* x0, const float* g0, Py_ssize_t N, Py_ssize_t sn,
                             Py_ssize_t HW, float K, int with_dd, double* acc) noexcept nogil
    void fc_channel_dx_f32(const float* x0, const float* g0, float* dx0, Py_ssize_t N,
                           Py_ssize_t sn, Py_ssize_t HW, float ca, float cb, float cc,
                           float fm) noexcept nogil


cdef inline void _flush(floating* part, double* acc, Py_ssize_t lanes) noexcept nogil:
    """acc[k] += part[k], then part[k] = 0, for k < lanes: a chunk's partial sums, moved into
    the double sums."""
    cdef Py_ssize_t k
    for k in range(lanes):
        acc[k] += part[k]
        part[k] = 0


cdef double _channel_mean(const floating* x0, Py_ssize_t N, Py_ssize_t sn,
                          Py_ssize_t HW) noexcept nogil:
    """mean of one channel (x0 = &x[0, c, 0, 0], runs of HW values sn apart), summed in
    chunks of about CHUNK values in x's dtype (pieces of runs, or several short runs), each
    chunk's LANES partial sums then added to double sums."""
    cdef floating part[LANES]
    cdef double acc[LANES]
    cdef Py_ssize_t n, i, i0, i1, full, k, pending = 0
    cdef const floating* a
    for k in range(LANES):
        part[k] = 0
        acc[k] = 0
    for n in range(N):
        a = x0 + n * sn
        for i0 in range(0, HW, 128):     # RUN_PIECE (a literal, so Cython emits a C loop)
            i1 = i0 + RUN_PIECE if i0 + RUN_PIECE < HW else HW
            full = i1 - (i1 - i0) % LANES
            if floating is float:
                fc_run_sum_f32(a + i0, full - i0, part)
            else:
                for i in range(i0, full, 8):   # LANES
                    for k in range(LANES):
                        part[k] += a[i + k]
            for i in range(full, i1):
                part[i - full] += a[i]
            pending += i1 - i0
            if pending >= CHUNK:
                _flush(part, acc, LANES)
                pending = 0
    _flush(part, acc, LANES)
    return _lanes_total(acc) / (N * HW)


cdef void _channel_backward(const floating* dy0, const floating* x0, floating* dx0,
                            Py_ssize_t N, Py_ssize_t sn, Py_ssize_t HW, floating gamma,
                            double eps, const double* saved_mean, const double* saved_var,
                            floating* dgamma, floating* dbeta) noexcept nogil:
    """(bn.bwd) for one channel: three passes over the channel, or two with saved statistics.

    With xc = x - mean, S1 = sum dy and S2 = sum dy * xc (so dgamma = S2 * invstd):
    dx = gamma*invstd/M * (M*dy - S1 - xhat*dgamma)
       = (gamma*invstd) * dy  -  (gamma*invstd^3*S2/M) * xc  -  gamma*invstd*S1/M.
    Pass 1: the mean m (double), and K = m rounded to x's dtype. Pass 2: with d = x - K,
    sum d^2, S1 and E = sum dy * d; then (shifted sums, as in _shifted_moments)
    var = sum d^2 / M - (m - K)^2 and S2 = E - (m - K) * S1. Pass 3 writes dx.
    saved_mean and saved_var are NULL, or point at this channel's batch statistics from the
    forward pass: then pass 1 is skipped and they are used, as PyTorch's backward uses the
    statistics saved by its forward.

    Why three passes, and sums in x's dtype: pass 2 is the compute-bound loop (the channel's
    data are still in L2 after pass 1). Summing chunks of CHUNK values in x's dtype before
    adding them to the double sums runs it on 4 floats per SSE instruction instead of 2
    doubles converted from floats, in half the registers (the double loop spilled to the
    stack). A float partial sum of d^2 keeps about 1e-6 of its value, which is only accurate
    for var with a shift near the mean: the error grows by 1 + (m - K)^2 / var, and an
    outlier K = x[0, c] 5000 std away would lose every digit. With K = m the factor is 1, for
    the price of pass 1 (one add per value), which saved statistics skip. 1 thread, float32,
    interleaved medians (machine shared) against the former two-pass version in double,
    which always recomputed the statistics: bn2d_s1 3.32 -> 2.92 ms (2.26 ms with saved
    statistics), bn2d_s3 0.585 -> 0.318 (0.251), bn2d_vgg 6.05 -> 5.98 (4.71); PyTorch's
    backward with its saved statistics took 2.37, 0.241 and 4.68 ms in the same run.
    """
    cdef floating part[3 * LANES]         # a chunk's sums of d^2, dy, dy * d (LANES each)
    cdef double acc[3 * LANES]
    cdef Py_ssize_t n, i, i0, i1, full, k, pending = 0
    cdef Py_ssize_t M = N * HW
    cdef const floating* a
    cdef const floating* g
    cdef floating* o
    cdef double m = saved_mean[0] if saved_mean != NULL else _channel_mean(x0, N, sn, HW)
    cdef double var, invstd, s1, s2, shift
    cdef floating K = <floating>m, d
    cdef floating ca, cb, cc, fm
    for k in range(3 * LANES):
        part[k] = 0
        acc[k] = 0
    if floating is float:                                    # pass 2: three sums
        fc_channel_sums_f32(x0, dy0, N, sn, HW, K, saved_var == NULL, acc)
    else:
        for n in range(N):
            a = x0 + n * sn
            g = dy0 + n * sn
            for i0 in range(0, HW, 128):     # RUN_PIECE (a literal, so Cython emits a C loop)
                i1 = i0 + RUN_PIECE if i0 + RUN_PIECE < HW else HW
                full = i1 - (i1 - i0) % LANES
                for i in range(i0, full, 8):   # LANES
                    for k in range(LANES):
                        d = a[i + k] - K
                        part[k] += d * d
                        part[LANES + k] += g[i + k]
                        part[2 * LANES + k] += g[i + k] * d
                for i in range(full, i1):
                    d = a[i] - K
                    part[i - full] += d * d
                    part[LANES + i - full] += g[i]
                    part[2 * LANES + i - full] += g[i] * d
                pending += i1 - i0
                if pending >= CHUNK:
                    _flush(part, acc, 3 * LANES)
                    pending = 0
        _flush(part, acc, 3 * LANES)
    shift = m - K
    if saved_var != NULL:
        var = saved_var[0]
    else:
        var = _lanes_total(acc) / M - shift * shift
        var = var if var > 0 else 0.0    # rounding could leave a constant channel at -1e-30
    s1 = _lanes_total(acc + LANES)
    s2 = _lanes_total(acc + 2 * LANES) - shift * s1
    invstd = 1.0 / sqrt(var + eps)
    dgamma[0] = <floating>(s2 * invstd)
    dbeta[0] = <floating>s1
    ca = <floating>(gamma * invstd)
    cb = <floating>(-gamma * invstd * invstd * invstd * s2 / M)
    cc = <floating>(-gamma * invstd * s1 / M)
    fm = <floating>m
    if floating is float:                                    # pass 3: dx
        fc_channel_dx_f32(x0, dy0, dx0, N, sn, HW, ca, cb, cc, fm)
    else:
        for n in range(N):
            a = x0 + n * sn
            g = dy0 + n * sn
            o = dx0 + n * sn
            for i in range(HW):
                o[i] = ca * g[i] + cb * (a[i] - fm) + cc


# --------------------------------------------------------------------------- row path (HW == 1)

cdef void _rows_affine(const floating* x, floating* y, const floating* fm, const floating* fa,
                       const floating* fb, Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0,
                       Py_ssize_t cb) noexcept nogil:
    """y[n, c0 + j] = (x[n, c0 + j] - fm[j]) * fa[j] + fb[j] for j < cb: (bn.fwd) on rows.

    8 channels at a time over all N rows, so that their fm, fa, fb stay in registers
    instead of being reloaded for every row.
    """
    cdef floating m[8]
    cdef floating a[8]
    cdef floating b[8]
    cdef Py_ssize_t n, j, j0, k, cfull = cb - cb % 8
    cdef const floating* row
    cdef floating* out
    for j0 in range(0, cfull, 8):
        for k in range(8):
            m[k] = fm[j0 + k]
            a[k] = fa[j0 + k]
            b[k] = fb[j0 + k]
        for n in range(N):
            row = x + n * C + c0 + j0
            out = y + n * C + c0 + j0
            for k in range(8):
                out[k] = (row[k] - m[k]) * a[k] + b[k]
    for j in range(cfull, cb):                               # the last cb % 8 channels
        for n in range(N):
            y[n * C + c0 + j] = (x[n * C + c0 + j] - fm[j]) * fa[j] + fb[j]


cdef void _rows_train(const floating* x, floating* y, const floating* gamma,
                      const floating* beta, double eps, double* mean, double* var,
                      Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """Training forward of channels [c0, c1) (at most CBLOCK) of an (N, C) input.

    Pass 1: the shifted sums of _shifted_moments with K = x[0, c], in double (mean and var
    are returned in float64 and must agree with the reference to float64 precision, so
    unlike _rows_backward no partial sums in x's dtype here). Pass 2: y.
    """
    cdef double s1[CBLOCK]
    cdef double s2[CBLOCK]
    cdef double K[CBLOCK]
    cdef floating fm[CBLOCK]
    cdef floating fa[CBLOCK]
    cdef floating fb[CBLOCK]
    cdef double a1[8]
    cdef double a2[8]
    cdef Py_ssize_t n, j, j0, k, cb = c1 - c0, cfull = cb - cb % 8
    cdef const floating* row
    cdef double d
    for j in range(cb):
        K[j] = x[c0 + j]
    # Pass 1: shifted sums, 8 channels at a time over all N rows, so that the 16 running
    # sums stay in registers (a loop over all cb channels per row would load and store them
    # for every row: twice the instructions in this compute-bound loop). Each channel's sums
    # still run over n in order, so the grouping does not change a bit of the result.
    for j0 in range(0, cfull, 8):
        for k in range(8):
            a1[k] = 0
            a2[k] = 0
        for n in range(N):
            row = x + n * C + c0 + j0
            for k in range(8):
                d = row[k] - K[j0 + k]
                a1[k] += d
                a2[k] += d * d
        for k in range(8):
            s1[j0 + k] = a1[k]
            s2[j0 + k] = a2[k]
    for j in range(cfull, cb):                               # the last cb % 8 channels
        s1[j] = 0
        s2[j] = 0
        for n in range(N):
            d = x[n * C + c0 + j] - K[j]
            s1[j] += d
            s2[j] += d * d
    for j in range(cb):
        _shifted_moments(K[j], s1[j], s2[j], N, &mean[c0 + j], &var[c0 + j])
        fm[j] = <floating>mean[c0 + j]
        fa[j] = <floating>(gamma[c0 + j] / sqrt(var[c0 + j] + eps))
        fb[j] = beta[c0 + j]
    _rows_affine(x, y, fm, fa, fb, N, C, c0, cb)               # pass 2: y


cdef void _rows_eval(const floating* x, floating* y, const floating* gamma,
                     const floating* beta, const double* mean, const double* var, double eps,
                     Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """Eval forward of channels [c0, c1) of an (N, C) input with the given statistics."""
    cdef floating fm[CBLOCK]
    cdef floating fa[CBLOCK]
    cdef floating fb[CBLOCK]
    cdef Py_ssize_t j, cb = c1 - c0
    for j in range(cb):
        fm[j] = <floating>mean[c0 + j]
        fa[j] = <floating>(gamma[c0 + j] / sqrt(var[c0 + j] + eps))
        fb[j] = beta[c0 + j]
    _rows_affine(x, y, fm, fa, fb, N, C, c0, cb)


cdef inline void _rows_group_sums(const floating* dy, const floating* x, const floating* K,
                                  bint with_x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t w,
                                  double* sx, double* sxx, double* s1,
                                  double* sdx) noexcept nogil:
    """Pass 1 of _rows_backward for w <= 8 neighbouring channels (x, dy point at the first
    one's column, K holds their shifts): with d = x - K, s1 = sum dy, sdx = sum dy * d, and
    if with_x also sx = sum d, sxx = sum d^2, over all N rows.

    The w channels' partial sums live in registers for the whole loop (called with the
    literal w = 8 the inlined loop over k is fully vectorised), where a loop over every
    channel of the block for each row loads and stores them once per row. Each block of
    RBLOCK rows is summed in x's dtype first, then added to the double sums: for float32
    that runs 4 values per SSE instruction instead of 2 doubles, at the price of at most
    RBLOCK - 1 float roundings per block, well inside float32's tolerance for dgamma and
    dbeta. (The forward cannot do this: its mean and var are float64 outputs.)
    """
    cdef floating px[8]
    cdef floating pxx[8]
    cdef floating p1[8]
    cdef floating pdx[8]
    cdef floating k_[8]
    cdef floating d
    cdef Py_ssize_t n, n0, n1, k
    cdef const floating* row
    cdef const floating* grow
    for k in range(w):
        k_[k] = K[k]
        sx[k] = 0
        sxx[k] = 0
        s1[k] = 0
        sdx[k] = 0
    for n0 in range(0, N, 8):                # RBLOCK (a literal, so Cython emits a C loop)
        n1 = n0 + RBLOCK if n0 + RBLOCK < N else N
        for k in range(w):
            px[k] = 0
            pxx[k] = 0
            p1[k] = 0
            pdx[k] = 0
        if with_x:
            for n in range(n0, n1):
                row = x + n * C
                grow = dy + n * C
                for k in range(w):
                    d = row[k] - k_[k]
                    px[k] += d
                    pxx[k] += d * d
                    p1[k] += grow[k]
                    pdx[k] += grow[k] * d
        else:
            for n in range(n0, n1):
                row = x + n * C
                grow = dy + n * C
                for k in range(w):
                    p1[k] += grow[k]
                    pdx[k] += grow[k] * (row[k] - k_[k])
        for k in range(w):
            sx[k] += px[k]
            sxx[k] += pxx[k]
            s1[k] += p1[k]
            sdx[k] += pdx[k]


cdef inline void _rows_group_dx(const floating* dy, const floating* x, floating* dx,
                                const floating* fm, const floating* ca, const floating* cb,
                                const floating* cc, Py_ssize_t N, Py_ssize_t C,
                                Py_ssize_t w) noexcept nogil:
    """Pass 2 of _rows_backward for w <= 8 neighbouring channels, coefficients in registers:
    dx = ca * dy + cb * (x - fm) + cc."""
    cdef floating m[8]
    cdef floating a[8]
    cdef floating b[8]
    cdef floating c[8]
    cdef Py_ssize_t n, k
    cdef const floating* row
    cdef const floating* grow
    cdef floating* out
    for k in range(w):
        m[k] = fm[k]
        a[k] = ca[k]
        b[k] = cb[k]
        c[k] = cc[k]
    for n in range(N):
        row = x + n * C
        grow = dy + n * C
        out = dx + n * C
        for k in range(w):
            out[k] = a[k] * grow[k] + b[k] * (row[k] - m[k]) + c[k]


cdef void _rows_backward(const floating* dy, const floating* x, floating* dx,
                         const floating* gamma, double eps, const double* saved_mean,
                         const double* saved_var, floating* dgamma, floating* dbeta,
                         Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """(bn.bwd) for channels [c0, c1) of an (N, C) input; formulas as in _channel_backward.
    saved_mean, saved_var: NULL, or the forward's statistics of all C channels.

    Pass 1 takes the four shifted sums of _channel_backward (K = x[0, c]), or with saved
    statistics only sum dy and sum dy * (x - K) with K = the saved mean in x's dtype (half
    the work); pass 2 writes dx. Both go 8 channels at a time down all N rows
    (_rows_group_sums, _rows_group_dx): BatchNorm1d(120) at batch 128, float32, 1 thread,
    saved statistics, 8.6 -> 5.2 us, against one loop over all the block's channels per row.
    """
    cdef double sx[CBLOCK]            # sum d, d = x - K
    cdef double sxx[CBLOCK]           # sum d^2
    cdef double s1[CBLOCK]            # sum dy
    cdef double sdx[CBLOCK]           # sum dy * d
    cdef floating K[CBLOCK]
    cdef floating fm[CBLOCK]
    cdef floating ca[CBLOCK]
    cdef floating cb_[CBLOCK]
    cdef floating cc[CBLOCK]
    cdef double acc[32]               # fc_rows_sums_f32's sums of one group of 8 channels
    cdef Py_ssize_t j, j0, k, cb = c1 - c0
    cdef bint with_x = saved_mean == NULL
    for k in range(32):
        acc[k] = 0
    cdef double m, var, s2, invstd, gi
    for j in range(cb):
        K[j] = x[c0 + j] if with_x else <floating>saved_mean[c0 + j]
    for j0 in range(0, cb - cb % 8, 8):                      # pass 1: shifted sums
        if floating is float:
            fc_rows_sums_f32(x + c0 + j0, dy + c0 + j0, N, C, &K[j0], with_x, acc)
            for k in range(8):
                sx[j0 + k] = acc[k]
                sxx[j0 + k] = acc[8 + k]
                s1[j0 + k] = acc[16 + k]
                sdx[j0 + k] = acc[24 + k]
                acc[k] = acc[8 + k] = acc[16 + k] = acc[24 + k] = 0
        else:
            _rows_group_sums(dy + c0 + j0, x + c0 + j0, &K[j0], with_x, N, C, 8,
                             &sx[j0], &sxx[j0], &s1[j0], &sdx[j0])
    j0 = cb - cb % 8
    if j0 < cb:
        _rows_group_sums(dy + c0 + j0, x + c0 + j0, &K[j0], with_x, N, C, cb - j0,
                         &sx[j0], &sxx[j0], &s1[j0], &sdx[j0])
    for j in range(cb):
        if with_x:
            _shifted_moments(K[j], sx[j], sxx[j], N, &m, &var)
        else:
            m = saved_mean[c0 + j]
            var = saved_var[c0 + j]
        s2 = sdx[j] - (m - K[j]) * s1[j]                     # sum dy * (x - mean)
        invstd = 1.0 / sqrt(var + eps)
        gi = gamma[c0 + j] * invstd
        dgamma[c0 + j] = <floating>(s2 * invstd)
        dbeta[c0 + j] = <floating>s1[j]
        fm[j] = <floating>m
        ca[j] = <floating>gi
        cb_[j] = <floating>(-gi * invstd * invstd * s2 / N)
        cc[j] = <floating>(-gi * s1[j] / N)
    for j0 in range(0, cb - cb % 8, 8):                      # pass 2: dx
        _rows_group_dx(dy + c0 + j0, x + c0 + j0, dx + c0 + j0, &fm[j0], &ca[j0], &cb_[j0],
                       &cc[j0], N, C, 8)
    j0 = cb - cb % 8
    if j0 < cb:
        _rows_group_dx(dy + c0 + j0, x + c0 + j0, dx + c0 + j0, &fm[j0], &ca[j0], &cb_[j0],
                       &cc[j0], N, C, cb - j0)


# --------------------------------------------------------------------------- one call's work

# A call's work is split into items: channels on the channel path, blocks of CBLOCK channels
# on the row path. The items are independent and each is done whole by one thread, which is
# what makes the results the same for any number of threads. On one thread the loop is a
# plain one: a `prange`, even with num_threads=1, enters an OpenMP parallel region, which
# costs about 0.65 us here (measured), 5% of a BatchNorm1d(120) call at batch 128.

cdef inline Py_ssize_t _n_items(Py_ssize_t C, Py_ssize_t HW) noexcept nogil:
    return (C + CBLOCK - 1) // CBLOCK if HW == 1 else C


cdef inline void _train_item(const floating* x, floating* y, const floating* gamma,
                             const floating* beta, double eps, double* mean, double* var,
                             Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW,
                             Py_ssize_t i) noexcept nogil:
    if HW == 1:
        _rows_train(x, y, gamma, beta, eps, mean, var, N, C, i * CBLOCK,
                    min(C, (i + 1) * CBLOCK))
    else:
        _channel_train(x + i * HW, y + i * HW, N, C * HW, HW, gamma[i], beta[i], eps,
                       &mean[i], &var[i])


cdef void _train_forward(const floating* x, floating* y, const floating* gamma,
                         const floating* beta, double eps, double* mean, double* var,
                         Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW, int n_threads) noexcept nogil:
    cdef Py_ssize_t i, n_items = _n_items(C, HW)
    if n_threads == 1:
        for i in range(n_items):
            _train_item(x, y, gamma, beta, eps, mean, var, N, C, HW, i)
    else:
        for i in prange(n_items, schedule="static", num_threads=n_threads):
            _train_item(x, y, gamma, beta, eps, mean, var, N, C, HW, i)


cdef inline void _eval_item(const floating* x, floating* y, const floating* gamma,
                            const floating* beta, const double* mean, const double* var,
                            double eps, Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW,
                            Py_ssize_t i) noexcept nogil:
    if HW == 1:
        _rows_eval(x, y, gamma, beta, mean, var, eps, N, C, i * CBLOCK,
                   min(C, (i + 1) * CBLOCK))
    else:
        _channel_affine(x + i * HW, y + i * HW, N, C * HW, HW, <floating>mean[i],
                        <floating>(gamma[i] / sqrt(var[i] + eps)), beta[i])


cdef void _eval_forward(const floating* x, floating* y, const floating* gamma,
                        const floating* beta, const double* mean, const double* var, double eps,
                        Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW, int n_threads) noexcept nogil:
    cdef Py_ssize_t i, n_items = _n_items(C, HW)
    if n_threads == 1:
        for i in range(n_items):
            _eval_item(x, y, gamma, beta, mean, var, eps, N, C, HW, i)
    else:
        for i in prange(n_items, schedule="static", num_threads=n_threads):
            _eval_item(x, y, gamma, beta, mean, var, eps, N, C, HW, i)


cdef inline void _backward_item(const floating* dy, const floating* x, floating* dx,
                                const floating* gamma, double eps, const double* mean,
                                const double* var, floating* dgamma, floating* dbeta,
                                Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW,
                                Py_ssize_t i) noexcept nogil:
    if HW == 1:
        _rows_backward(dy, x, dx, gamma, eps, mean, var, dgamma, dbeta, N, C, i * CBLOCK,
                       min(C, (i + 1) * CBLOCK))
    else:
        _channel_backward(dy + i * HW, x + i * HW, dx + i * HW, N, C * HW, HW, gamma[i], eps,
                          NULL if mean == NULL else mean + i, NULL if var == NULL else var + i,
                          &dgamma[i], &dbeta[i])


cdef void _backward(const floating* dy, const floating* x, floating* dx, const floating* gamma,
                    double eps, const double* mean, const double* var, floating* dgamma,
                    floating* dbeta, Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW,
                    int n_threads) noexcept nogil:
    cdef Py_ssize_t i, n_items = _n_items(C, HW)
    if n_threads == 1:
        for i in range(n_items):
            _backward_item(dy, x, dx, gamma, eps, mean, var, dgamma, dbeta, N, C, HW, i)
    else:
        for i in prange(n_items, schedule="static", num_threads=n_threads):
            _backward_item(dy, x, dx, gamma, eps, mean, var, dgamma, dbeta, N, C, HW, i)


# --------------------------------------------------------------------------- the twins' API

# The wrappers take their arrays' data pointers after a few C tests (_data) rather than
# through typed memoryviews, which cost about 0.11 us each to acquire: a backward call has
# eight arrays, and a BatchNorm1d(120) call at batch 128 takes ~10 us in all.

cdef inline bint _single(x):
    """x is a float32 ndarray: run the float kernels (anything else must be float64)."""
    return cnp.PyArray_Check(x) and cnp.PyArray_TYPE(<cnp.ndarray>x) == cnp.NPY_FLOAT32


cdef char* _data(a, bint single, int ndim, str op, str name) except NULL:
    """The data of ``a``, which must be a C-contiguous ndarray with ``ndim`` axes, float32 if
    ``single`` else float64 (read-only arrays are fine for inputs)."""
    cdef int typenum = cnp.NPY_FLOAT32 if single else cnp.NPY_FLOAT64
    if (cnp.PyArray_Check(a) and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)):
        return <char*>cnp.PyArray_DATA(<cnp.ndarray>a)
    want = "float32" if single else "float64"
    if not isinstance(a, np.ndarray) or a.dtype != np.dtype(want):
        raise TypeError(f"{op}: {name} must be a {want} ndarray, got "
                        f"{getattr(a, 'dtype', type(a).__name__)}")
    raise ValueError(f"{op}: {name} must be C-contiguous with {ndim} axes, got shape {a.shape}"
                     f"{'' if a.flags.c_contiguous else ' (not C-contiguous)'}")


cdef inline Py_ssize_t _len(a) noexcept:
    """Length of the first axis of an ndarray that _data accepted."""
    return cnp.PyArray_DIMS(<cnp.ndarray>a)[0]


def _check(op, x_shape, C_arrays, dy_shape=None):
    """O(1) guard for direct calls (functional.py validates for users): reject shapes that
    would read or write out of bounds. C_arrays: name -> shape of each (C,) argument.

    The wrappers first test the same conditions in C (a few ns) and call this, which builds
    Python objects for the message (~1 us, a tenth of a small BatchNorm1d call), only when
    one fails."""
    if min(x_shape) <= 0:
        raise ValueError(f"{op}: empty arrays are not supported, got x of shape {x_shape}")
    C = x_shape[1]
    for name, shape in C_arrays.items():
        if shape != (C,):
            raise ValueError(f"{op}: {name} must have shape ({C},), got {shape}")
    if dy_shape is not None and dy_shape != x_shape:
        raise ValueError(f"{op}: dy must have x's shape {x_shape}, got {dy_shape}")


def batch_norm_train_forward(x, gamma, beta, double eps, int n_threads):
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
    op = "batch_norm_train_forward"
    cdef bint single = _single(x)
    cdef char* px = _data(x, single, 4, op, "x")
    cdef char* pgamma = _data(gamma, single, 1, op, "gamma")
    cdef char* pbeta = _data(beta, single, 1, op, "beta")
    cdef cnp.npy_intp* shape = cnp.PyArray_DIMS(<cnp.ndarray>x)
    cdef Py_ssize_t N = shape[0], C = shape[1], HW = shape[2] * shape[3]
    if not (N * C * HW > 0 and _len(gamma) == C and _len(beta) == C):
        _check(op, x.shape, {"gamma": gamma.shape, "beta": beta.shape})
    y_arr = _empty(4, shape, single)
    mean_arr = _empty(1, &shape[1], False)
    var_arr = _empty(1, &shape[1], False)
    cdef char* py = <char*>cnp.PyArray_DATA(<cnp.ndarray>y_arr)
    cdef double* mean = <double*>cnp.PyArray_DATA(<cnp.ndarray>mean_arr)
    cdef double* var = <double*>cnp.PyArray_DATA(<cnp.ndarray>var_arr)
    n_threads = threads_for_values(N * C * HW, n_threads)
    with nogil:
        if single:
            _train_forward(<const float*>px, <float*>py, <const float*>pgamma,
                           <const float*>pbeta, eps, mean, var, N, C, HW, n_threads)
        else:
            _train_forward(<const double*>px, <double*>py, <const double*>pgamma,
                           <const double*>pbeta, eps, mean, var, N, C, HW, n_threads)
    return y_arr, mean_arr, var_arr


def batch_norm_eval_forward(x, gamma, beta, mean, var, double eps, int n_threads):
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
    op = "batch_norm_eval_forward"
    cdef bint single = _single(x)
    cdef char* px = _data(x, single, 4, op, "x")
    cdef char* pgamma = _data(gamma, single, 1, op, "gamma")
    cdef char* pbeta = _data(beta, single, 1, op, "beta")
    cdef const double* pmean = <double*>_data(mean, False, 1, op, "mean")
    cdef const double* pvar = <double*>_data(var, False, 1, op, "var")
    cdef cnp.npy_intp* shape = cnp.PyArray_DIMS(<cnp.ndarray>x)
    cdef Py_ssize_t N = shape[0], C = shape[1], HW = shape[2] * shape[3]
    if not (N * C * HW > 0 and _len(gamma) == C and _len(beta) == C and _len(mean) == C
            and _len(var) == C):
        _check(op, x.shape, {"gamma": gamma.shape, "beta": beta.shape, "mean": mean.shape,
                             "var": var.shape})
    y_arr = _empty(4, shape, single)
    cdef char* py = <char*>cnp.PyArray_DATA(<cnp.ndarray>y_arr)
    n_threads = threads_for_values(N * C * HW, n_threads)
    with nogil:
        if single:
            _eval_forward(<const float*>px, <float*>py, <const float*>pgamma,
                          <const float*>pbeta, pmean, pvar, eps, N, C, HW, n_threads)
        else:
            _eval_forward(<const double*>px, <double*>py, <const double*>pgamma,
                          <const double*>pbeta, pmean, pvar, eps, N, C, HW, n_threads)
    return y_arr


def batch_norm_backward(dy, x, gamma, double eps, int n_threads, mean=None, var=None):
    """Training-mode gradients, notes eq. (bn.bwd), with the batch statistics mean and var
    saved by the forward pass, or recomputed from x when they are None.

    Parameters
    ----------
    dy, x : ndarray (N, C, H, W)
    gamma : ndarray (C,)
    eps : float
    n_threads : int
    mean, var : ndarray (C,) float64 (var biased), as batch_norm_train_forward returns
        them, or None (both or neither)

    Returns
    -------
    dx : ndarray (N, C, H, W), dgamma : ndarray (C,), dbeta : ndarray (C,), all x's dtype.
    """
    op = "batch_norm_backward"
    if (mean is None) != (var is None):
        raise ValueError(f"{op}: give both saved statistics mean and var, or neither")
    cdef bint single = _single(x)
    cdef char* px = _data(x, single, 4, op, "x")
    cdef char* pdy = _data(dy, single, 4, op, "dy")
    cdef char* pgamma = _data(gamma, single, 1, op, "gamma")
    cdef const double* pmean = NULL
    cdef const double* pvar = NULL
    cdef cnp.npy_intp* shape = cnp.PyArray_DIMS(<cnp.ndarray>x)
    cdef cnp.npy_intp* dy_shape = cnp.PyArray_DIMS(<cnp.ndarray>dy)
    cdef Py_ssize_t N = shape[0], C = shape[1], HW = shape[2] * shape[3]
    cdef bint ok = (N * C * HW > 0 and _len(gamma) == C and dy_shape[0] == N
                    and dy_shape[1] == C and dy_shape[2] == shape[2] and dy_shape[3] == shape[3])
    if mean is not None:
        pmean = <double*>_data(mean, False, 1, op, "mean")
        pvar = <double*>_data(var, False, 1, op, "var")
        ok = ok and _len(mean) == C and _len(var) == C
    if not ok:
        stats = {} if mean is None else {"mean": mean.shape, "var": var.shape}
        _check(op, x.shape, {"gamma": gamma.shape, **stats}, dy.shape)
    dx_arr = _empty(4, shape, single)
    dgamma_arr = _empty(1, &shape[1], single)
    dbeta_arr = _empty(1, &shape[1], single)
    cdef char* pdx = <char*>cnp.PyArray_DATA(<cnp.ndarray>dx_arr)
    cdef char* pdgamma = <char*>cnp.PyArray_DATA(<cnp.ndarray>dgamma_arr)
    cdef char* pdbeta = <char*>cnp.PyArray_DATA(<cnp.ndarray>dbeta_arr)
    n_threads = threads_for_values(N * C * HW, n_threads)
    with nogil:
        if single:
            _backward(<const float*>pdy, <const float*>px, <float*>pdx, <const float*>pgamma,
                      eps, pmean, pvar, <float*>pdgamma, <float*>pdbeta, N, C, HW, n_threads)
        else:
            _backward(<const double*>pdy, <const double*>px, <double*>pdx,
                      <const double*>pgamma, eps, pmean, pvar, <double*>pdgamma,
                      <double*>pdbeta, N, C, HW, n_threads)
    return dx_arr, dgamma_arr, dbeta_arr


def running_update(running_mean, running_var, mean, var, double momentum, Py_ssize_t M):
    """(bn.run) In place, for each running statistic that is not None:
    ``running = (1 - momentum) * running + momentum * stat``, where the running variance takes
    the unbiased batch variance ``var * M / (M - 1)`` (as PyTorch).

    running_mean, running_var : ndarray (C,), float32 or float64 (any stride), or None
    mean, var : ndarray (C,) float64, the batch statistics; M : values per channel (>= 2)

    One C loop each in double, where the same update in NumPy is four ufunc calls: this alone
    took a quarter of a BatchNorm1d(120) training step at batch 128.
    """
    if running_mean is not None:
        _running_update(running_mean, mean, momentum, 1.0)
    if running_var is not None:
        _running_update(running_var, var, momentum, M / (M - 1.0))


cdef _running_update(running, stat, double momentum, double scale):
    """running = (1 - momentum) * running + momentum * scale * stat, in double; running may
    have any stride (through raw pointers, as the wrappers above, for the same reason)."""
    op = "running_update"
    cdef const double* s = <double*>_data(stat, False, 1, op, "stat")
    if not (cnp.PyArray_Check(running) and cnp.PyArray_NDIM(<cnp.ndarray>running) == 1
            and (_single(running) or cnp.PyArray_TYPE(<cnp.ndarray>running) == cnp.NPY_FLOAT64)
            and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running)):
        raise TypeError(f"{op}: running statistics must be writeable 1-D float32 or float64 "
                        f"ndarrays, got {running!r:.80}")
    cdef Py_ssize_t c, C = _len(running), step = cnp.PyArray_STRIDES(<cnp.ndarray>running)[0]
    cdef char* p = <char*>cnp.PyArray_DATA(<cnp.ndarray>running)
    cdef double keep = 1.0 - momentum, add = momentum * scale
    if _len(stat) != C:
        raise ValueError(f"{op}: running has {C} channels, stat {_len(stat)}")
    if _single(running):
        for c in range(C):
            (<float*>(p + c * step))[0] = <float>(keep * (<float*>(p + c * step))[0] + add * s[c])
    else:
        for c in range(C):
            (<double*>(p + c * step))[0] = keep * (<double*>(p + c * step))[0] + add * s[c]
