# cython: language_level=3
# cython: warn.unreachable=False
#   (each inner loop returns early for float32 after its SIMD copy: by design)
"""Batch normalisation: Cython + OpenMP twin of ``fastconv.reference.batchnorm``.

To study first, the teaching path: ``_plain_stats``, ``_plain_affine`` and
``_plain_backward`` below, the loop nest of (bn.fwd) and (bn.bwd) for one channel, plain
loops, sums in double. By default every call runs the tuned path, ``_run`` -> ``_group_*``
(4-D input) or ``_rows_*`` (BatchNorm1d's (N, C)), whose inner loops are the functions under
"inner loops": batch_norm_backward's are ``_group_moments`` (the sums) and ``_group_dx``
(dx), which for float32 call their SIMD copies ``fc_group_moments_*`` / ``fc_group_dx_*`` in
src_pyx/include/fc_batchnorm.h.

Same functions and signatures as the reference; read its docstring for (bn.fwd), (bn.bwd)
and (bn.run) (docs/formulas.md). x is always 4-D (N, C, H, W) (BatchNorm1d input arrives as
(N, C, 1, 1) or (N, C, 1, L)), channel c holds M = N*H*W values, and statistics are
accumulated in double even for float32 (the backward first sums short blocks in x's dtype:
see _group_backward, _rows_sums). Every function is written once for both dtypes
(``floating``); only the float32 inner loops have a second, SIMD copy. Timings behind these
choices: docs/performance.md.

How the kernels work
--------------------
Two memory layouts, one per common case, chosen by HW = H*W:

* HW > 1 ("channel path"): channel c is N runs of HW contiguous values, C*HW apart. The
  channels are cut into groups of at most CGROUP neighbours, the same number of groups for
  every thread (``prange`` over groups, see _n_groups). Each pass walks its group in memory
  order, n outer and the group's channels inner, so it streams through memory in address
  order and the hardware prefetchers keep up (walking one channel at a time jumps C*HW
  values after every run, and every run starts cold). Each channel keeps its own running
  sums, taken over its runs in order of n, so the grouping may depend on the thread count
  without changing a bit. Sums use LANES = 8 independent accumulators per channel (lane k
  takes the values i with i % 8 == k of each run), which lets the compiler vectorise the
  reduction without -ffast-math; the lanes are added in a fixed tree at the end.
* HW == 1 ("row path", BatchNorm1d): channel c is strided by C. Every pass takes 8
  neighbouring channels at a time (32 contiguous bytes of each row) down all N rows, their
  sums or coefficients in registers. ``prange`` runs over blocks of CBLOCK = 64 channels.

Either way every channel's sums run in an order fixed by the shape alone, so the results
are bitwise identical for any number of threads.

Training forward, channel path: pass 1 the mean, pass 2 the centred variance (two passes:
E[x^2] - E[x]^2 cancels when |mean| >> std), pass 3 y = (x - mean) * (gamma * invstd) + beta.
Row path: one pass of shifted sums (_shifted_moments), then y.
Backward (bn.bwd): dx = ca * dy + cb * (x - mean) + cc with per-channel coefficients ca, cb,
cc (_dx_coefficients) from sum dy and sum dy * (x - mean). It takes the statistics the
forward saved, as PyTorch's backward does, or recomputes them from x. Channel path: pass 1
the mean (skipped with saved statistics), pass 2 the sums of x - shift, shift = the mean
rounded to x's dtype, pass 3 dx. Row path: pass 1 the shifted sums (shift = x[0, c], or the
saved mean), pass 2 dx. Names: ``shift`` is always that per-channel value; ``ca``, ``cb``,
``cc`` always dx's per-channel coefficients; ``nc`` / ``nch`` the channels of a group / block.

The float32 SIMD copies exist in a baseline (SSE2) and an AVX2 version with the same
operations in the same order (no FMA), so the same bits; fc_isa_level() (fc_isa.h) picks one
at import, ``_kernel_isa`` lets the tests switch. NaN and Inf propagate as in PyTorch: the
variance is never clamped across NaN, a row-path channel whose statistics are not finite is
recomputed by _plain_stats, and a float32 channel whose values would overflow float32
arithmetic (values near its largest) is redone by the plain double loops.
"""
import numpy as np

cimport numpy as cnp

from cython cimport floating
from cython.parallel cimport prange
from libc.float cimport FLT_MAX
from libc.math cimport isfinite, sqrt

from _common cimport threads_for_values
from _isa cimport FC_ISA_AVX2, FC_ISA_BASELINE, fc_isa_level

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
    # The channel path's constants; the SIMD copies in fc_batchnorm.h use the same (FC_*).
    CGROUP = 64     # channels per group at most
    CHUNK = 256     # about this many values summed in x's dtype before the double sums
    RUN_PIECE = 128  # runs are taken in pieces of at most this many values


cdef inline double _lanes_total(const double* acc) noexcept nogil:
    """The LANES partial sums added in a fixed tree order."""
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef inline void _shifted_moments(double shift, double s1, double s2, Py_ssize_t M,
                                  double* mean, double* var) noexcept nogil:
    """mean and biased var from the shifted sums s1 = sum (x - shift), s2 = sum (x - shift)^2.

    mean = shift + s1/M and var = s2/M - (s1/M)^2. Why this is accurate: the textbook one-pass
    E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std (both terms ~ mean^2, their
    difference ~ var), but here the terms are s2/M = var + (mean - shift)^2 and
    (mean - shift)^2, so
    the relative error of var is about 1e-16 * (1 + (mean - shift)^2 / var). shift is one of the
    channel's own values, and for any value (shift - mean)^2 <= M * var (it is one term of the
    sum M * var = sum (x - mean)^2), so the error is at most ~1e-16 * (M + 1) even for an
    outlier, and ~1e-16 * (a few) for a typical shift within a few std of the mean. The shift
    costs nothing and merges the mean and variance passes into one (one fewer read of x).
    """
    cdef double m1 = s1 / M, v = s2 / M - m1 * m1
    mean[0] = shift + m1
    var[0] = 0.0 if v < 0 else v    # rounding can leave a constant channel at -1e-30; NaN stays


# --------------------------------------------------------------------------- teaching path
# One channel c at a time, every loop plain, every sum in double: the loop nest of (bn.fwd)
# and (bn.bwd) to study. Value i of sample n in channel c is x[(n*C + c)*HW + i]. The tuned
# path below gives the same results to rounding; it calls these for a float32 channel whose
# float32 arithmetic would overflow (values near float32's largest) and for a row-path
# channel whose statistics are not finite, so that Inf and NaN come out as in the reference.

cdef void _plain_stats(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW,
                       Py_ssize_t c,
                       double* mean, double* var) noexcept nogil:    # IN: x; OUT: mean, var
    """(bn.fwd) mean and biased variance of channel c, two passes in double."""
    cdef Py_ssize_t n, i, M = N * HW
    cdef double s = 0, d
    for n in range(N):
        for i in range(HW):
            s += x[(n * C + c) * HW + i]
    mean[0] = s / M
    s = 0
    for n in range(N):
        for i in range(HW):
            d = x[(n * C + c) * HW + i] - mean[0]
            s += d * d
    var[0] = s / M


cdef void _plain_affine(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C,
                        Py_ssize_t HW, Py_ssize_t c, double mean, double scale,
                        double offset) noexcept nogil:               # IN: x; OUT: y
    """(bn.fwd) y = (x - mean) * scale + offset on channel c, scale = gamma / sqrt(var + eps),
    offset = beta, in double."""
    cdef Py_ssize_t n, i, k
    for n in range(N):
        for i in range(HW):
            k = (n * C + c) * HW + i
            y[k] = <floating>((x[k] - mean) * scale + offset)


cdef void _plain_backward(const floating* dy, const floating* x, floating* dx, double gamma,
                          double eps, double mean, double var, Py_ssize_t N, Py_ssize_t C,
                          Py_ssize_t HW, Py_ssize_t c, floating* dgamma,
                          floating* dbeta) noexcept nogil:   # IN: dy, x; OUT: dx, dgamma, dbeta
    """(bn.bwd) on channel c, in double: dbeta = sum dy, dgamma = sum dy * xhat,
    dx = gamma * invstd * (dy - dbeta / M - xhat * dgamma / M)."""
    cdef Py_ssize_t n, i, k, M = N * HW
    cdef double invstd = 1.0 / sqrt(var + eps), sum_dy = 0, sum_dy_xhat = 0, xhat
    for n in range(N):
        for i in range(HW):
            k = (n * C + c) * HW + i
            sum_dy += dy[k]
            sum_dy_xhat += dy[k] * ((x[k] - mean) * invstd)
    dbeta[c] = <floating>sum_dy
    dgamma[c] = <floating>sum_dy_xhat
    for n in range(N):
        for i in range(HW):
            k = (n * C + c) * HW + i
            xhat = (x[k] - mean) * invstd
            dx[k] = <floating>(gamma * invstd * (dy[k] - sum_dy / M - xhat * sum_dy_xhat / M))


cdef inline bint _float_overflows(double var, Py_ssize_t M) noexcept nogil:
    """True when x - mean may overflow float32 on a channel of M values with variance var
    (|x - mean| <= sqrt(M * var)): the tuned float32 loops then leave it to the plain ones."""
    return M * var >= 0.25 * FLT_MAX * FLT_MAX


# --------------------------------------------------------------------------- inner loops
# Each pass over a block of channels is one function below, written once for both dtypes
# (``floating``); as written it is the loop that float64 runs. For float32, the passes where
# the SIMD copy was measured to matter (docs/performance.md) call instead the copy of the same
# loop in src_pyx/include/fc_batchnorm.h: the same operations in the same order, so the same
# bits (_group_moments, whose float32 copy rounds differently, says how).
#
# Channel path (HW > 1): a group of nc <= CGROUP neighbouring channels, walked in memory
# order. x0 (and g0 = dy, y0, dx0) point at channel 0 of the group, x[0, c0, 0, 0]; the run
# of channel j for sample n is the HW values at x0 + n*sn + j*HW, sn = C*HW.
# Row path (HW == 1): w <= 8 neighbouring channels of an (N, C) array, x (and dy, y, dx)
# pointing at the first one's column, rows C apart; the drivers pass w as the literal 8 for
# all but the last few channels, so that the inlined loop over the w channels vectorises.

cdef extern from "fc_batchnorm.h":
    int FC_AVX2
    void fc_group_sum_f32(int isa, const float* x0, Py_ssize_t N, Py_ssize_t sn,
                          Py_ssize_t HW, Py_ssize_t nc, const double* m,
                          double* acc) noexcept nogil
    void fc_group_affine_f32(int isa, const float* x0, float* y0, Py_ssize_t N,
                             Py_ssize_t sn, Py_ssize_t HW, Py_ssize_t nc, const float* fm,
                             const float* fa, const float* fb) noexcept nogil
    void fc_group_moments_f32(int isa, const float* x0, const float* g0, Py_ssize_t N,
                              Py_ssize_t sn, Py_ssize_t HW, Py_ssize_t nc,
                              const float* shift, int with_dd, double* acc) noexcept nogil
    void fc_group_dx_f32(int isa, const float* x0, const float* g0, float* dx0, Py_ssize_t N,
                         Py_ssize_t sn, Py_ssize_t HW, Py_ssize_t nc, const float* ca,
                         const float* cb, const float* cc, const float* fm) noexcept nogil
    void fc_rows_moments_f32(int isa, const float* x, Py_ssize_t N, Py_ssize_t C,
                             const double* shift, double* s1, double* s2) noexcept nogil
    void fc_rows_affine_f32(int isa, const float* x, float* y, Py_ssize_t N, Py_ssize_t C,
                            const float* fm, const float* fa, const float* fb) noexcept nogil
    void fc_rows_sums_f32(int isa, const float* x, const float* g, Py_ssize_t N,
                          Py_ssize_t C, const float* shift, int with_x, double* sx,
                          double* sxx, double* s1, double* sdx) noexcept nogil
    void fc_rows_dx_f32(int isa, const float* x, const float* g, float* dx, Py_ssize_t N,
                        Py_ssize_t C, const float* fm, const float* ca, const float* cb,
                        const float* cc) noexcept nogil


cdef int _ISA = fc_isa_level()      # the float32 kernels' copy: fc_isa.h decides


def _kernel_isa(isa=None):
    """The instruction set of the float32 SIMD kernels in use: "avx2" or "baseline" (they
    give the same bits). For tests and benchmarks, isa="baseline" or "avx2" switches (avx2
    only where the CPU, the build and FASTCONV_ISA allow it); not thread-safe, do not call it
    while a kernel runs."""
    global _ISA
    if isa is not None:
        if isa not in ("avx2", "baseline"):
            raise ValueError(f"isa must be 'avx2' or 'baseline', got {isa!r}")
        _ISA = min(fc_isa_level(), FC_ISA_AVX2 if isa == "avx2" and FC_AVX2 else FC_ISA_BASELINE)
    return "avx2" if _ISA >= FC_ISA_AVX2 else "baseline"


cdef void _group_sum(const floating* x0, Py_ssize_t N, Py_ssize_t sn, Py_ssize_t HW,
                     Py_ssize_t nc, const double* m,
                     double* acc) noexcept nogil:                   # IN: x0, m; OUT: acc
    """acc[LANES*j + k] = lane k of channel j's sum of x (m NULL) or of (x - m[j])^2 (m
    given), in double: passes 1 and 2 of the training forward. Lane k takes the values
    i % LANES == k of each run, the last HW % LANES values of a run lanes 0, 1, ..."""
    cdef double s[LANES]
    cdef Py_ssize_t n, j, i, k, full = HW - HW % LANES
    cdef const floating* a
    cdef double d
    if floating is float:
        fc_group_sum_f32(_ISA, x0, N, sn, HW, nc, m, acc)
        return
    for k in range(nc * LANES):
        acc[k] = 0
    for n in range(N):
        for j in range(nc):
            a = x0 + n * sn + j * HW
            for k in range(LANES):                  # into a local array: no aliasing
                s[k] = acc[LANES * j + k]
            if m == NULL:
                for i in range(0, full, 8):    # LANES (a literal, so Cython emits a C loop)
                    for k in range(LANES):
                        s[k] += a[i + k]
                for i in range(full, HW):
                    s[i - full] += a[i]
            else:
                for i in range(0, full, 8):    # LANES
                    for k in range(LANES):
                        d = a[i + k] - m[j]
                        s[k] += d * d
                for i in range(full, HW):
                    d = a[i] - m[j]
                    s[i - full] += d * d
            for k in range(LANES):
                acc[LANES * j + k] = s[k]


cdef void _group_affine(const floating* x0, floating* y0, Py_ssize_t N, Py_ssize_t sn,
                        Py_ssize_t HW, Py_ssize_t nc, const floating* fm, const floating* fa,
                        const floating* fb) noexcept nogil:   # IN: x0, fm, fa, fb; OUT: y0
    """y = (x - fm[j]) * fa[j] + fb[j] on channel j (fa = gamma * invstd, fb = beta): (bn.fwd)."""
    cdef Py_ssize_t n, j, i
    cdef const floating* a
    cdef floating* o
    cdef floating m, s, b
    if floating is float:
        fc_group_affine_f32(_ISA, x0, y0, N, sn, HW, nc, fm, fa, fb)
        return
    for n in range(N):
        for j in range(nc):
            a = x0 + n * sn + j * HW
            o = y0 + n * sn + j * HW
            m = fm[j]
            s = fa[j]
            b = fb[j]
            for i in range(HW):
                o[i] = (a[i] - m) * s + b


cdef inline void _flush(floating* part, double* acc, Py_ssize_t lanes) noexcept nogil:
    """acc[k] += part[k], then part[k] = 0, for k < lanes: a chunk's partial sums, moved into
    the double sums."""
    cdef Py_ssize_t k
    for k in range(lanes):
        acc[k] += part[k]
        part[k] = 0


cdef void _group_moments(const floating* x0, const floating* g0, Py_ssize_t N, Py_ssize_t sn,
                         Py_ssize_t HW, Py_ssize_t nc, const floating* shift, bint with_dd,
                         double* acc) noexcept nogil:       # IN: x0, g0, shift; OUT: acc
    """With d = x - shift[j] and g = dy: acc[3*LANES*j + k] = lane k of channel j's sum of d^2
    (only if with_dd), acc[3*LANES*j + LANES + k] of g, acc[3*LANES*j + 2*LANES + k] of g*d,
    each over chunks of about CHUNK values (pieces of at most RUN_PIECE values of a run, or
    several short runs) summed in x's dtype, then added to the double sums: pass 2 of the
    backward.

    float32 runs fc_group_moments_f32, whose chunks are the same but which sums each piece
    in registers from zero before adding it to the chunk's sums (here every value goes
    straight into them): a different rounding, within float32's tolerance, that keeps the
    three sums of a lane in registers.
    """
    cdef floating part[CGROUP * 3 * LANES]
    cdef floating* pt
    cdef Py_ssize_t n, j, i, i0, i1, full, k, pending = 0, p = 0
    cdef const floating* a
    cdef const floating* g
    cdef floating d
    if floating is float:
        fc_group_moments_f32(_ISA, x0, g0, N, sn, HW, nc, shift, with_dd, acc)
        return
    for k in range(nc * 3 * LANES):
        part[k] = 0
        acc[k] = 0
    for n in range(N):
        for j in range(nc):
            a = x0 + n * sn + j * HW
            g = g0 + n * sn + j * HW
            pt = part + 3 * LANES * j
            p = pending
            for i0 in range(0, HW, 128):   # RUN_PIECE (a literal, so Cython emits a C loop)
                i1 = i0 + RUN_PIECE if i0 + RUN_PIECE < HW else HW
                full = i1 - (i1 - i0) % LANES
                for i in range(i0, full, 8):   # LANES
                    for k in range(LANES):
                        d = a[i + k] - shift[j]
                        pt[k] += d * d
                        pt[LANES + k] += g[i + k]
                        pt[2 * LANES + k] += g[i + k] * d
                for i in range(full, i1):
                    d = a[i] - shift[j]
                    pt[i - full] += d * d
                    pt[LANES + i - full] += g[i]
                    pt[2 * LANES + i - full] += g[i] * d
                p += i1 - i0
                if p >= CHUNK:
                    _flush(pt, acc + 3 * LANES * j, 3 * LANES)
                    p = 0
        pending = p
    for j in range(nc):
        _flush(part + 3 * LANES * j, acc + 3 * LANES * j, 3 * LANES)


cdef void _group_dx(const floating* x0, const floating* g0, floating* dx0, Py_ssize_t N,
                    Py_ssize_t sn, Py_ssize_t HW, Py_ssize_t nc, const floating* ca,
                    const floating* cb, const floating* cc,
                    const floating* fm) noexcept nogil:    # IN: x0, g0, ca, cb, cc, fm; OUT: dx0
    """dx = ca[j] * dy + cb[j] * (x - fm[j]) + cc[j] on channel j: pass 3 of the backward."""
    cdef Py_ssize_t n, j, i
    cdef const floating* a
    cdef const floating* g
    cdef floating* o
    if floating is float:
        fc_group_dx_f32(_ISA, x0, g0, dx0, N, sn, HW, nc, ca, cb, cc, fm)
        return
    for n in range(N):
        for j in range(nc):
            a = x0 + n * sn + j * HW
            g = g0 + n * sn + j * HW
            o = dx0 + n * sn + j * HW
            for i in range(HW):
                o[i] = ca[j] * g[i] + cb[j] * (a[i] - fm[j]) + cc[j]


cdef inline void _rows_moments(const floating* x, Py_ssize_t N, Py_ssize_t C,
                               const double* shift, Py_ssize_t w, double* s1,
                               double* s2) noexcept nogil:    # IN: x, shift; OUT: s1, s2
    """s1[k] = sum d, s2[k] = sum d^2 over all N rows, d = x - shift[k] in double, for the
    w <= 8 channels: pass 1 of _rows_train. The sums stay in registers for the whole loop
    (a loop over the block's channels for each row would load and store them every row)."""
    cdef double a1[8]
    cdef double a2[8]
    cdef double d
    cdef Py_ssize_t n, k
    cdef const floating* row
    if floating is float and w == 8:
        fc_rows_moments_f32(_ISA, x, N, C, shift, s1, s2)
        return
    for k in range(w):
        a1[k] = 0
        a2[k] = 0
    for n in range(N):
        row = x + n * C
        for k in range(w):
            d = row[k] - shift[k]
            a1[k] += d
            a2[k] += d * d
    for k in range(w):
        s1[k] = a1[k]
        s2[k] = a2[k]


cdef inline void _rows_affine(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C,
                              const floating* fm, const floating* fa, const floating* fb,
                              Py_ssize_t w) noexcept nogil:   # IN: x, fm, fa, fb; OUT: y
    """y = (x - fm[k]) * fa[k] + fb[k] for the w <= 8 channels, their coefficients in
    registers: (bn.fwd) on rows."""
    cdef floating m[8]
    cdef floating a[8]
    cdef floating b[8]
    cdef Py_ssize_t n, k
    cdef const floating* row
    cdef floating* out
    if floating is float and w == 8:
        fc_rows_affine_f32(_ISA, x, y, N, C, fm, fa, fb)
        return
    for k in range(w):
        m[k] = fm[k]
        a[k] = fa[k]
        b[k] = fb[k]
    for n in range(N):
        row = x + n * C
        out = y + n * C
        for k in range(w):
            out[k] = (row[k] - m[k]) * a[k] + b[k]


cdef inline void _rows_sums(const floating* x, const floating* dy, Py_ssize_t N,
                            Py_ssize_t C, const floating* shift, bint with_x, Py_ssize_t w,
                            double* sx, double* sxx, double* s1,
                            double* sdx) noexcept nogil:  # IN: x, dy, shift; OUT: sx, sxx, s1, sdx
    """Pass 1 of _rows_backward for the w <= 8 channels: with d = x - shift[k], s1 = sum dy,
    sdx = sum dy * d, and if with_x also sx = sum d, sxx = sum d^2, over all N rows.

    Each block of RBLOCK rows is summed in x's dtype first, then added to the double sums:
    for float32 that runs 4 values per SSE instruction instead of 2 doubles, at the price of
    at most RBLOCK - 1 float roundings per block, well inside float32's tolerance for dgamma
    and dbeta. (The forward cannot do this: its mean and var are float64 outputs.)
    """
    cdef floating px[8]
    cdef floating pxx[8]
    cdef floating p1[8]
    cdef floating pdx[8]
    cdef floating sh[8]
    cdef floating d
    cdef Py_ssize_t n, n0, n1, k
    cdef const floating* row
    cdef const floating* grow
    if floating is float and w == 8:
        fc_rows_sums_f32(_ISA, x, dy, N, C, shift, with_x, sx, sxx, s1, sdx)
        return
    for k in range(w):
        sh[k] = shift[k]
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
                    d = row[k] - sh[k]
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
                    pdx[k] += grow[k] * (row[k] - sh[k])
        for k in range(w):
            sx[k] += px[k]
            sxx[k] += pxx[k]
            s1[k] += p1[k]
            sdx[k] += pdx[k]


cdef inline void _rows_dx(const floating* x, const floating* dy, floating* dx, Py_ssize_t N,
                          Py_ssize_t C, const floating* fm, const floating* ca,
                          const floating* cb, const floating* cc,
                          Py_ssize_t w) noexcept nogil:   # IN: x, dy, fm, ca, cb, cc; OUT: dx
    """Pass 2 of _rows_backward for the w <= 8 channels, coefficients in registers:
    dx = ca * dy + cb * (x - fm) + cc."""
    cdef floating m[8]
    cdef floating a[8]
    cdef floating b[8]
    cdef floating c[8]
    cdef Py_ssize_t n, k
    cdef const floating* row
    cdef const floating* grow
    cdef floating* out
    if floating is float and w == 8:
        fc_rows_dx_f32(_ISA, x, dy, dx, N, C, fm, ca, cb, cc)
        return
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


# --------------------------------------------------------------------------- the passes
# One function per op and path, for a block of channels [c0, c1); each computes the
# per-channel numbers between the passes in double and calls the inner loops above.

cdef inline void _redo_overflowing_affine(const floating* x, floating* y,
                                          const floating* gamma, const floating* beta,
                                          const double* mean, const double* var, double eps,
                                          Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW,
                                          Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """float32 only: the channels of [c0, c1) whose x - mean may overflow float32 get y again
    from the plain double loop."""
    cdef Py_ssize_t j
    if floating is float:
        for j in range(c0, c1):
            if _float_overflows(var[j], N * HW):
                _plain_affine(x, y, N, C, HW, j, mean[j], gamma[j] / sqrt(var[j] + eps),
                              beta[j])


cdef void _group_train(const floating* x, floating* y, const floating* gamma,
                       const floating* beta, double eps, double* mean, double* var,
                       Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW, Py_ssize_t c0,
                       Py_ssize_t c1) noexcept nogil:   # IN: x, gamma, beta; OUT: y, mean, var
    """Training forward (bn.fwd) of channels [c0, c1) (at most CGROUP): pass 1 the means,
    pass 2 the centred variances, both in double, pass 3 y."""
    cdef double acc[CGROUP * LANES]
    cdef floating fm[CGROUP]
    cdef floating fa[CGROUP]
    cdef floating fb[CGROUP]
    cdef Py_ssize_t j, nc = c1 - c0, sn = C * HW, M = N * HW
    cdef double invstd
    _group_sum(x + c0 * HW, N, sn, HW, nc, NULL, acc)                # pass 1: sum x
    for j in range(nc):
        mean[c0 + j] = _lanes_total(acc + LANES * j) / M
    _group_sum(x + c0 * HW, N, sn, HW, nc, mean + c0, acc)           # pass 2: sum (x - m)^2
    for j in range(nc):
        var[c0 + j] = _lanes_total(acc + LANES * j) / M
        invstd = 1.0 / sqrt(var[c0 + j] + eps)
        fm[j] = <floating>mean[c0 + j]
        fa[j] = <floating>(gamma[c0 + j] * invstd)
        fb[j] = beta[c0 + j]
    _group_affine(x + c0 * HW, y + c0 * HW, N, sn, HW, nc, fm, fa, fb)     # pass 3: y
    _redo_overflowing_affine(x, y, gamma, beta, mean, var, eps, N, C, HW, c0, c1)


cdef void _group_eval(const floating* x, floating* y, const floating* gamma,
                      const floating* beta, const double* mean, const double* var, double eps,
                      Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW, Py_ssize_t c0,
                      Py_ssize_t c1) noexcept nogil:   # IN: x, gamma, beta, mean, var; OUT: y
    """Eval forward of channels [c0, c1) (at most CGROUP) with the given statistics."""
    cdef floating fm[CGROUP]
    cdef floating fa[CGROUP]
    cdef floating fb[CGROUP]
    cdef Py_ssize_t j
    for j in range(c1 - c0):
        fm[j] = <floating>mean[c0 + j]
        fa[j] = <floating>(gamma[c0 + j] / sqrt(var[c0 + j] + eps))
        fb[j] = beta[c0 + j]
    _group_affine(x + c0 * HW, y + c0 * HW, N, C * HW, HW, c1 - c0, fm, fa, fb)
    _redo_overflowing_affine(x, y, gamma, beta, mean, var, eps, N, C, HW, c0, c1)


cdef inline void _dx_coefficients(double gamma, double eps, double mean, double var,
                                  double s1, double s2, Py_ssize_t M, floating* dgamma,
                                  floating* dbeta, floating* fm, floating* ca, floating* cb,
                                  floating* cc) noexcept nogil:   # OUT: all pointers
    """One channel's gradients and dx coefficients (bn.bwd) from s1 = sum dy and
    s2 = sum dy * (x - mean): dgamma = s2 * invstd, dbeta = s1, and
    dx = ca * dy + cb * (x - fm) + cc, rounded to x's dtype."""
    cdef double invstd = 1.0 / sqrt(var + eps)
    dgamma[0] = <floating>(s2 * invstd)
    dbeta[0] = <floating>s1
    ca[0] = <floating>(gamma * invstd)
    cb[0] = <floating>(-gamma * invstd * invstd * invstd * s2 / M)
    cc[0] = <floating>(-gamma * invstd * s1 / M)
    fm[0] = <floating>mean


cdef void _group_backward(const floating* dy, const floating* x, floating* dx,
                          const floating* gamma, double eps, const double* saved_mean,
                          const double* saved_var, floating* dgamma, floating* dbeta,
                          Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW, Py_ssize_t c0,
                          Py_ssize_t c1) noexcept nogil:   # IN: dy, x, gamma, saved_*
    #                                                      OUT: dx, dgamma, dbeta
    """(bn.bwd) for channels [c0, c1) (at most CGROUP): three passes, or two with saved
    statistics. saved_mean, saved_var: NULL, or the forward's statistics of all C channels,
    used as given (as PyTorch's backward uses the ones its forward saved); pass 1 is then
    skipped.

    With xc = x - mean, S1 = sum dy and S2 = sum dy * xc (so dgamma = S2 * invstd):
    dx = gamma*invstd/M * (M*dy - S1 - xhat*dgamma)
       = (gamma*invstd) * dy  -  (gamma*invstd^3*S2/M) * xc  -  gamma*invstd*S1/M.
    Pass 1: the mean m, summed in double exactly as the training forward's pass 1 (so it is
    the very mean the forward saved), and shift = m rounded to x's dtype. Pass 2: with
    d = x - shift, sum d^2, S1 and E = sum dy * d; then (shifted sums, as in
    _shifted_moments) var = sum d^2 / M - (m - shift)^2 and S2 = E - (m - shift) * S1.
    Pass 3 writes dx.

    Why sums in x's dtype, and shift = m: summing chunks of CHUNK values in x's dtype before
    adding them to the double sums runs pass 2 on 4 (SSE2) or 8 (AVX2) floats per
    instruction instead of half as many doubles converted from floats, in half the
    registers (a double loop spilled to the stack), which counts when the data come from
    L2 or L3 (bn2d_s3). A float partial sum of d^2 keeps about 1e-6 of its value, which is
    only accurate for var with a shift near the mean: the error grows by
    1 + (m - shift)^2 / var, and an outlier shift = x[0, c] 5000 std away would lose every
    digit. With shift = m the factor is 1, for the price of pass 1 (one add per value),
    which saved statistics skip.
    """
    cdef double acc[CGROUP * 3 * LANES]
    cdef double m[CGROUP]
    cdef floating shift[CGROUP]
    cdef floating ca[CGROUP]
    cdef floating cb[CGROUP]
    cdef floating cc[CGROUP]
    cdef floating fm[CGROUP]
    cdef double v[CGROUP]             # the variances, kept for the plain redo below
    cdef bint redo[CGROUP]
    cdef Py_ssize_t j, nc = c1 - c0, sn = C * HW, M = N * HW
    cdef double var, s1, s2, dm
    cdef const double* sums
    if saved_mean != NULL:
        for j in range(nc):
            m[j] = saved_mean[c0 + j]
    else:
        _group_sum(x + c0 * HW, N, sn, HW, nc, NULL, acc)                   # pass 1
        for j in range(nc):
            m[j] = _lanes_total(acc + LANES * j) / M
    for j in range(nc):
        shift[j] = <floating>m[j]
    _group_moments(x + c0 * HW, dy + c0 * HW, N, sn, HW, nc, shift, saved_var == NULL, acc)  # 2
    for j in range(nc):
        sums = acc + 3 * LANES * j
        dm = m[j] - shift[j]
        if saved_var != NULL:
            var = saved_var[c0 + j]
        else:
            var = _lanes_total(sums) / M - dm * dm
            var = 0.0 if var < 0 else var    # -1e-30 from rounding becomes 0; NaN stays
        s1 = _lanes_total(sums + LANES)
        s2 = _lanes_total(sums + 2 * LANES) - dm * s1
        v[j] = var
        # float32 partial sums or coefficients that overflowed or underflowed: redo in double
        redo[j] = floating is float and not (isfinite(s1) and isfinite(s2)
                                             and not _float_overflows(var, M))
        _dx_coefficients(gamma[c0 + j], eps, m[j], var, s1, s2, M, &dgamma[c0 + j],
                         &dbeta[c0 + j], &fm[j], &ca[j], &cb[j], &cc[j])
    _group_dx(x + c0 * HW, dy + c0 * HW, dx + c0 * HW, N, sn, HW, nc, ca, cb, cc, fm)  # pass 3
    for j in range(nc):
        if redo[j]:
            if saved_var == NULL:     # the float32 sums of d^2 may have overflowed too
                _plain_stats(x, N, C, HW, c0 + j, &m[j], &v[j])
            _plain_backward(dy, x, dx, gamma[c0 + j], eps, m[j], v[j], N, C, HW, c0 + j,
                            dgamma, dbeta)


cdef inline void _rows_affine_block(const floating* x, floating* y, const floating* fm,
                                    const floating* fa, const floating* fb, Py_ssize_t N,
                                    Py_ssize_t C, Py_ssize_t c0,
                                    Py_ssize_t nch) noexcept nogil:   # IN: x, fm, fa, fb; OUT: y
    """_rows_affine on channels [c0, c0 + nch), 8 at a time (fm, fa, fb indexed from c0)."""
    cdef Py_ssize_t j0, cfull = nch - nch % 8
    for j0 in range(0, cfull, 8):
        _rows_affine(x + c0 + j0, y + c0 + j0, N, C, &fm[j0], &fa[j0], &fb[j0], 8)
    if cfull < nch:
        _rows_affine(x + c0 + cfull, y + c0 + cfull, N, C, &fm[cfull], &fa[cfull], &fb[cfull],
                     nch - cfull)


cdef void _rows_train(const floating* x, floating* y, const floating* gamma,
                      const floating* beta, double eps, double* mean, double* var,
                      Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0,
                      Py_ssize_t c1) noexcept nogil:   # IN: x, gamma, beta; OUT: y, mean, var
    """Training forward of channels [c0, c1) (at most CBLOCK) of an (N, C) input.

    Pass 1: the shifted sums of _shifted_moments with shift = x[0, c], in double (mean and var
    are returned in float64 and must agree with the reference to float64 precision, so
    unlike _rows_backward no partial sums in x's dtype here). Pass 2: y.
    """
    cdef double s1[CBLOCK]
    cdef double s2[CBLOCK]
    cdef double shift[CBLOCK]
    cdef floating fm[CBLOCK]
    cdef floating fa[CBLOCK]
    cdef floating fb[CBLOCK]
    cdef Py_ssize_t j, j0, nch = c1 - c0, cfull = nch - nch % 8
    for j in range(nch):
        shift[j] = x[c0 + j]
    for j0 in range(0, cfull, 8):                               # pass 1: shifted sums
        _rows_moments(x + c0 + j0, N, C, &shift[j0], 8, &s1[j0], &s2[j0])
    if cfull < nch:
        _rows_moments(x + c0 + cfull, N, C, &shift[cfull], nch - cfull, &s1[cfull], &s2[cfull])
    for j in range(nch):
        _shifted_moments(shift[j], s1[j], s2[j], N, &mean[c0 + j], &var[c0 + j])
        if not (isfinite(mean[c0 + j]) and isfinite(var[c0 + j])):
            # Inf or NaN in the channel: the shift may itself be Inf, so take the plain
            # sums, whose Inf/NaN are those of the reference (an Inf mean stays Inf)
            _plain_stats(x, N, C, 1, c0 + j, &mean[c0 + j], &var[c0 + j])
        fm[j] = <floating>mean[c0 + j]
        fa[j] = <floating>(gamma[c0 + j] / sqrt(var[c0 + j] + eps))
        fb[j] = beta[c0 + j]
    _rows_affine_block(x, y, fm, fa, fb, N, C, c0, nch)           # pass 2: y
    _redo_overflowing_affine(x, y, gamma, beta, mean, var, eps, N, C, 1, c0, c1)


cdef void _rows_eval(const floating* x, floating* y, const floating* gamma,
                     const floating* beta, const double* mean, const double* var, double eps,
                     Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0,
                     Py_ssize_t c1) noexcept nogil:   # IN: x, gamma, beta, mean, var; OUT: y
    """Eval forward of channels [c0, c1) of an (N, C) input with the given statistics."""
    cdef floating fm[CBLOCK]
    cdef floating fa[CBLOCK]
    cdef floating fb[CBLOCK]
    cdef Py_ssize_t j, nch = c1 - c0
    for j in range(nch):
        fm[j] = <floating>mean[c0 + j]
        fa[j] = <floating>(gamma[c0 + j] / sqrt(var[c0 + j] + eps))
        fb[j] = beta[c0 + j]
    _rows_affine_block(x, y, fm, fa, fb, N, C, c0, nch)
    _redo_overflowing_affine(x, y, gamma, beta, mean, var, eps, N, C, 1, c0, c1)


cdef void _rows_backward(const floating* dy, const floating* x, floating* dx,
                         const floating* gamma, double eps, const double* saved_mean,
                         const double* saved_var, floating* dgamma, floating* dbeta,
                         Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0,
                         Py_ssize_t c1) noexcept nogil:   # IN: dy, x, gamma, saved_*
    #                                                       OUT: dx, dgamma, dbeta
    """(bn.bwd) for channels [c0, c1) of an (N, C) input; formulas as in _group_backward.
    saved_mean, saved_var: NULL, or the forward's statistics of all C channels.

    Pass 1 takes the four shifted sums of _group_backward (shift = x[0, c]), or with saved
    statistics only sum dy and sum dy * (x - shift) with shift = the saved mean in x's dtype
    (half the work); pass 2 writes dx. Both go 8 channels at a time down all N rows
    (_rows_sums, _rows_dx).
    """
    cdef double sx[CBLOCK]            # sum d, d = x - shift
    cdef double sxx[CBLOCK]           # sum d^2
    cdef double s1[CBLOCK]            # sum dy
    cdef double sdx[CBLOCK]           # sum dy * d
    cdef floating shift[CBLOCK]
    cdef floating fm[CBLOCK]
    cdef floating ca[CBLOCK]
    cdef floating cb[CBLOCK]
    cdef floating cc[CBLOCK]
    cdef double ms[CBLOCK]            # mean and variance, kept for the plain redo below
    cdef double vs[CBLOCK]
    cdef bint redo[CBLOCK]
    cdef Py_ssize_t j, j0, nch = c1 - c0, cfull = nch - nch % 8
    cdef bint with_x = saved_mean == NULL
    cdef double m, var, s2
    for j in range(nch):
        shift[j] = x[c0 + j] if with_x else <floating>saved_mean[c0 + j]
    for j0 in range(0, cfull, 8):                               # pass 1: shifted sums
        _rows_sums(x + c0 + j0, dy + c0 + j0, N, C, &shift[j0], with_x, 8,
                   &sx[j0], &sxx[j0], &s1[j0], &sdx[j0])
    if cfull < nch:
        _rows_sums(x + c0 + cfull, dy + c0 + cfull, N, C, &shift[cfull], with_x, nch - cfull,
                   &sx[cfull], &sxx[cfull], &s1[cfull], &sdx[cfull])
    for j in range(nch):
        if with_x:
            _shifted_moments(shift[j], sx[j], sxx[j], N, &m, &var)
        else:
            m = saved_mean[c0 + j]
            var = saved_var[c0 + j]
        s2 = sdx[j] - (m - shift[j]) * s1[j]                     # sum dy * (x - mean)
        ms[j] = m
        vs[j] = var
        # Inf/NaN sums (the shift may be Inf), or float32 coefficients that overflowed or
        # underflowed: redo the channel in double, statistics included unless saved
        redo[j] = not (isfinite(s2) and isfinite(var)) or (
            floating is float and _float_overflows(var, N))
        _dx_coefficients(gamma[c0 + j], eps, m, var, s1[j], s2, N, &dgamma[c0 + j],
                         &dbeta[c0 + j], &fm[j], &ca[j], &cb[j], &cc[j])
    for j0 in range(0, cfull, 8):                               # pass 2: dx
        _rows_dx(x + c0 + j0, dy + c0 + j0, dx + c0 + j0, N, C, &fm[j0], &ca[j0], &cb[j0],
                 &cc[j0], 8)
    if cfull < nch:
        _rows_dx(x + c0 + cfull, dy + c0 + cfull, dx + c0 + cfull, N, C, &fm[cfull],
                 &ca[cfull], &cb[cfull], &cc[cfull], nch - cfull)
    for j in range(nch):
        if redo[j]:
            if with_x:
                _plain_stats(x, N, C, 1, c0 + j, &ms[j], &vs[j])
            _plain_backward(dy, x, dx, gamma[c0 + j], eps, ms[j], vs[j], N, C, 1, c0 + j,
                            dgamma, dbeta)


# --------------------------------------------------------------------------- one call's work

# A call's work is split into items of neighbouring channels: blocks of CBLOCK channels on
# the row path, the _n_groups channel groups on the channel path. Each item is done whole by
# one thread, and each channel's sums run in an order that does not depend on the item it
# falls in, which makes the results the same for any number of threads. On one thread the
# loop is a plain one: a `prange`, even with num_threads=1, enters an OpenMP parallel region,
# which costs about 0.65 us here (measured), 5% of a BatchNorm1d(120) call at batch 128.

cdef inline Py_ssize_t _n_groups(Py_ssize_t C, int n_threads) noexcept nogil:
    """Number of channel groups: the same number for each of the n_threads threads, each
    group at most CGROUP channels (group g is channels [g*C // ng, (g+1)*C // ng))."""
    cdef Py_ssize_t per_thread = (C + n_threads - 1) // n_threads
    cdef Py_ssize_t ng = n_threads * ((per_thread + CGROUP - 1) // CGROUP)
    return ng if ng < C else C


cdef inline Py_ssize_t _n_items(Py_ssize_t C, Py_ssize_t HW, int n_threads) noexcept nogil:
    return (C + CBLOCK - 1) // CBLOCK if HW == 1 else _n_groups(C, n_threads)


cdef inline Py_ssize_t _item_start(Py_ssize_t i, Py_ssize_t n_items, Py_ssize_t C,
                                   Py_ssize_t HW) noexcept nogil:
    """The first channel of item i: item i is channels [start(i), start(i + 1))."""
    return min(C, i * CBLOCK) if HW == 1 else i * C // n_items


cdef enum:                  # what _run computes
    TRAIN = 0               # out = y; mean, var written
    EVAL = 1                # out = y; mean, var read
    BACKWARD = 2            # out = dx; dgamma, dbeta written; mean, var read, or NULL


cdef inline void _run_item(int op, const floating* x, const floating* dy, floating* out,
                           const floating* gamma, const floating* beta, double* mean,
                           double* var, floating* dgamma, floating* dbeta, double eps,
                           Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW, Py_ssize_t i,
                           Py_ssize_t n_items) noexcept nogil:   # IN/OUT: as _run
    """Item i of a call: the op on channels [c0, c1), by the row or the channel path."""
    cdef Py_ssize_t c0 = _item_start(i, n_items, C, HW), c1 = _item_start(i + 1, n_items, C, HW)
    if op == TRAIN:
        if HW == 1:
            _rows_train(x, out, gamma, beta, eps, mean, var, N, C, c0, c1)
        else:
            _group_train(x, out, gamma, beta, eps, mean, var, N, C, HW, c0, c1)
    elif op == EVAL:
        if HW == 1:
            _rows_eval(x, out, gamma, beta, mean, var, eps, N, C, c0, c1)
        else:
            _group_eval(x, out, gamma, beta, mean, var, eps, N, C, HW, c0, c1)
    elif HW == 1:
        _rows_backward(dy, x, out, gamma, eps, mean, var, dgamma, dbeta, N, C, c0, c1)
    else:
        _group_backward(dy, x, out, gamma, eps, mean, var, dgamma, dbeta, N, C, HW, c0, c1)


cdef void _run(int op, const floating* x, const floating* dy, floating* out,
               const floating* gamma, const floating* beta, double* mean, double* var,
               floating* dgamma, floating* dbeta, double eps, Py_ssize_t N, Py_ssize_t C,
               Py_ssize_t HW, int n_threads) noexcept nogil:   # IN/OUT: as op says (enum)
    """A whole call: its items on n_threads threads (the arrays as _run_item takes them)."""
    cdef Py_ssize_t i, n_items = _n_items(C, HW, n_threads)
    if n_threads == 1:
        for i in range(n_items):
            _run_item(op, x, dy, out, gamma, beta, mean, var, dgamma, dbeta, eps, N, C, HW,
                      i, n_items)
    else:
        for i in prange(n_items, schedule="static", num_threads=n_threads):
            _run_item(op, x, dy, out, gamma, beta, mean, var, dgamma, dbeta, eps, N, C, HW,
                      i, n_items)


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
            _run(TRAIN, <const float*>px, NULL, <float*>py, <const float*>pgamma,
                 <const float*>pbeta, mean, var, NULL, NULL, eps, N, C, HW, n_threads)
        else:
            _run(TRAIN, <const double*>px, NULL, <double*>py, <const double*>pgamma,
                 <const double*>pbeta, mean, var, NULL, NULL, eps, N, C, HW, n_threads)
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
    cdef double* pmean = <double*>_data(mean, False, 1, op, "mean")     # read only
    cdef double* pvar = <double*>_data(var, False, 1, op, "var")
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
            _run(EVAL, <const float*>px, NULL, <float*>py, <const float*>pgamma,
                 <const float*>pbeta, pmean, pvar, NULL, NULL, eps, N, C, HW, n_threads)
        else:
            _run(EVAL, <const double*>px, NULL, <double*>py, <const double*>pgamma,
                 <const double*>pbeta, pmean, pvar, NULL, NULL, eps, N, C, HW, n_threads)
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
    cdef double* pmean = NULL       # read only
    cdef double* pvar = NULL
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
            _run(BACKWARD, <const float*>px, <const float*>pdy, <float*>pdx,
                 <const float*>pgamma, NULL, pmean, pvar, <float*>pdgamma, <float*>pdbeta, eps,
                 N, C, HW, n_threads)
        else:
            _run(BACKWARD, <const double*>px, <const double*>pdy, <double*>pdx,
                 <const double*>pgamma, NULL, pmean, pvar, <double*>pdgamma, <double*>pdbeta,
                 eps, N, C, HW, n_threads)
    return dx_arr, dgamma_arr, dbeta_arr


def running_update(running_mean, running_var, mean, var, double momentum, Py_ssize_t M):
    """(bn.run) In place, for each running statistic that is not None:
    ``running = (1 - momentum) * running + momentum * stat``, where the running variance takes
    the unbiased batch variance ``var * M / (M - 1)`` (as PyTorch).

    running_mean, running_var : ndarray (C,), float32 or float64 (any stride), or None
    mean, var : ndarray (C,) float64, the batch statistics; M : values per channel (>= 2)
    momentum : float, the weight of the batch (1 / batches seen for a cumulative average)

    One C loop each in double, where the same update in NumPy is four ufunc calls: this alone
    took a quarter of a BatchNorm1d(120) training step at batch 128.
    """
    if running_mean is not None:
        _running_update(running_mean, mean, momentum, 1.0)
    if running_var is not None:
        _running_update(running_var, var, momentum, M / (M - 1.0))


cdef inline void _update_strided(floating* running, Py_ssize_t step, const double* stat,
                                 Py_ssize_t C, double keep,
                                 double add) noexcept nogil:   # IN: stat; IN/OUT: running
    """running[c] = keep * running[c] + add * stat[c] in double, running[c] at byte offset
    c * step."""
    cdef Py_ssize_t c
    cdef floating* r
    for c in range(C):
        r = <floating*>(<char*>running + c * step)
        r[0] = <floating>(keep * r[0] + add * stat[c])


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
    cdef Py_ssize_t C = _len(running), step = cnp.PyArray_STRIDES(<cnp.ndarray>running)[0]
    cdef void* p = cnp.PyArray_DATA(<cnp.ndarray>running)
    if _len(stat) != C:
        raise ValueError(f"{op}: running has {C} channels, stat {_len(stat)}")
    if _single(running):
        _update_strided(<float*>p, step, s, C, 1.0 - momentum, momentum * scale)
    else:
        _update_strided(<double*>p, step, s, C, 1.0 - momentum, momentum * scale)
