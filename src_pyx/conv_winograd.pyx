# cython: language_level=3
"""3x3 stride-1 convolution by Winograd's minimal filtering, F(2x2, 3x3) and F(4x4, 3x3):
forward, dx and dW, any dilation.

Compiled twin of ``fastconv/reference/conv_winograd.py`` (same functions and signatures),
whose docstring derives the transform matrices B, G, A; ``algo="winograd"`` runs this
module, and ``algo="auto"`` runs it for the 3x3 stride-1 layers where it was measured
faster than im2col (``fastconv.functional.choose_conv_algo``). Its inner loop is the
GEMM of step 3, called from ``_winograd_block`` through ``_gemm``: in float32 fastconv's
own register tile, which reads V where the input transform wrote it (``fc_gemm8_f32`` in
src_pyx/include/fc_gemm_avx2.h on AVX2, ``fc_gemm_f32`` in fc_conv_microkernel.h on
AVX-512 for up to 64 output rows), elsewhere BLAS's.

The pipeline, for an m x m tile of outputs (m = 2 or 4, alpha = m + 2 input rows and
columns per tile, T tiles over the whole batch):

(wino.gemm)  1. filter transform   U[e] (K, C)  = (G g_{k,c} G^T)[e]   once per call
             2. input transform    V[e] (C, T)  = (B^T d_{c,t} B)[e]   per tile and channel
             3. alpha^2 GEMMs      M[e] (K, T)  = U[e] @ V[e]          16 (F2) or 36 (F4)
             4. inverse transform  y tile (k, t) = A^T M_{k,t} A        m x m outputs

e = (i, j) runs over the alpha x alpha positions of a transformed tile. A tile's taps
that fall outside the input (the padding, and the overhang of the last tiles) are read as
zeros where the tiles are gathered, so the input is never copied. Steps 2-4 run
on blocks of ``block`` consecutive tiles (``_winograd_block``), one block per task: a
block's V and M stay in the cache between the transform and the GEMMs. Each 2-D transform
is two passes of a 1-D transform (columns, then rows) over all the tiles of the block at
once (src_pyx/include/fc_winograd.h): the block's tiles are first gathered into
D[a][b][t] = d_t[a, b], so that every pass reads and writes contiguous runs of ``block``
values, and the output tiles are scattered back at the end (in float32 both by 8 x 8
blocks transposed in AVX2 registers, 8 tiles at a time).

Read it in this order: ``_winograd_block`` (the steps of one block: ``_tile_offsets``
finds its tiles, ``_gather_tiles`` takes them out of the image,
``_input_transform``, the GEMMs, the inverse transform, ``_scatter_tiles`` puts the
output tiles in place), then ``conv2d_forward`` and ``conv2d_backward``. dx of a 3x3
stride-1 convolution with padding p is the same computation on dy, with the flipped,
transposed kernel and padding 2 - p. dW is the same pipeline run backwards (the
reference's "(wino.dw)"), block by block in ``_dw_block``:

(wino.dw)    2. input transform    V[e] (C, T)  = (B^T d_{c,t} B)[e]   as in the forward pass
             2'. dy transform      Z[e] (T, K)  = (A dY_{k,t} A^T)[e]  per tile of dy
             3. alpha^2 GEMMs      Mw[e] (C, K) = sum over the tiles of V[e] @ Z[e]
             4. filter gradient    dW[k, c]     = G^T Mw_{c,k} G        3 x 3, once per call

A dilated kernel (taps d apart) is d x d ordinary ones on interleaved sub-images of the
input (the reference's "(wino.dilated)"): ``_tile_offsets`` lays the tiles of each
sub-image out, and a tile's taps and outputs lie d apart; nothing else changes.

Threads and determinism: the blocks depend on the shapes only, each output value is
computed by exactly one block, so results are bitwise the same on any thread count. dW's
sum over the tiles runs in a fixed number of runs of consecutive blocks (``_groups``),
each into its own partial sum, added in order at the end.
Memory (scratch beyond the outputs): U (alpha^2 x K x C) once, and per thread
alpha^2 x block x (C + K + 2) values (V, M and the gathered tiles); dW's partial sums,
alpha^2 x C x K values each, 16 MiB at most.

Accuracy (float32, largest error over largest output, float64 truth): at most 2e-6 with
F(2x2, 3x3) and 3e-5 with F(4x4, 3x3), the default (measured on the layer suite, y, dx and
dW: 7.7e-7 and 1.0e-5; im2col 8.9e-7); float64 within 1e-12. Details in the reference's
docstring.

NaN and Inf: the transforms mix all values of a tile, so non-finite values in x (or dy)
spread further than in the formula (see the reference's docstring). With
``check_finite=True`` the kernel returns None instead where w or an output (y, dx or dW) is
not finite (no exact answer is promised then), and ``algo="auto"`` recomputes that call
with im2col. The outputs suffice: a non-finite value never vanishes in a sum or product
(NaN stays NaN; Inf - Inf and 0 * Inf are NaN), and every transformed value reaches some
output, so a NaN or Inf in x or dy, or a transform that overflowed, shows in the outputs
of its tile (computed whole, the overhang past the plane's edge included).
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange, threadid

from _blas cimport gemm_rm
from _isa cimport FC_ISA_AVX2, FC_ISA_AVX512, fc_isa_level
from _common cimport imax, imin, out_size, threads_for_macs


cdef extern from "fc_gemm_avx2.h":
    void fc_gemm8_f32(Py_ssize_t M, Py_ssize_t N, Py_ssize_t KR, const float* A,
                      Py_ssize_t a_rs, Py_ssize_t a_cs, const float* B, Py_ssize_t ldb,
                      bint accumulate, float* C, Py_ssize_t ldc) noexcept nogil

cdef extern from "fc_conv_microkernel.h":
    void fc_gemm_f32(Py_ssize_t M, Py_ssize_t N, Py_ssize_t KR, const float* A,
                     Py_ssize_t a_rs, Py_ssize_t a_cs, const float* B, Py_ssize_t ldb,
                     int accumulate, float* C, Py_ssize_t ldc) noexcept nogil

cdef extern from "fc_winograd.h":
    enum: FC_WINO_INPUT, FC_WINO_OUTPUT, FC_WINO_DY
    void fc_wino_1d_f32(int isa, int m, int kind, const float* inp, Py_ssize_t in_step,
                        float* out, Py_ssize_t out_step, Py_ssize_t n) noexcept nogil
    void fc_wino_1d_f64(int isa, int m, int kind, const double* inp, Py_ssize_t in_step,
                        double* out, Py_ssize_t out_step, Py_ssize_t n) noexcept nogil
    void fc_wino_filter_transform_f32(int isa, int m, const float* g, Py_ssize_t l_step,
                                      Py_ssize_t r_step, Py_ssize_t s_step, Py_ssize_t n,
                                      float* u, Py_ssize_t e_step) noexcept nogil
    void fc_wino_filter_transform_f64(int isa, int m, const double* g, Py_ssize_t l_step,
                                      Py_ssize_t r_step, Py_ssize_t s_step, Py_ssize_t n,
                                      double* u, Py_ssize_t e_step) noexcept nogil
    void fc_wino_filter_gradient_f32(int isa, int m, const float* mw, Py_ssize_t e_step,
                                     Py_ssize_t n, float* g, Py_ssize_t l_step) noexcept nogil
    void fc_wino_filter_gradient_f64(int isa, int m, const double* mw, Py_ssize_t e_step,
                                     Py_ssize_t n, double* g, Py_ssize_t l_step) noexcept nogil
    void fc_wino_gather_f32(int isa, const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t dh,
                            const Py_ssize_t* in_off, const Py_ssize_t* in_row,
                            const Py_ssize_t* in_col, Py_ssize_t tb, int alpha, float* D,
                            Py_ssize_t ld) noexcept nogil
    Py_ssize_t fc_wino_dy_tile_f32(int isa, const float* dy, Py_ssize_t K, Py_ssize_t PQ,
                                   Py_ssize_t row_step, float* Dy) noexcept nogil
    bint fc_wino_scatter_f32(int isa, const float* O, Py_ssize_t ld, float* y,
                             Py_ssize_t row_step, const Py_ssize_t* out_off,
                             const Py_ssize_t* rows, const Py_ssize_t* cols, Py_ssize_t tb,
                             int m, float bias, const float* mask) noexcept nogil

cdef int _ISA = fc_isa_level()      # which copy of the transforms runs: fc_isa.h decides
cdef enum:
    MK_MAX_ROWS = 64    # AVX-512: the micro-kernel for products of up to 64 rows, BLAS above

TILES = (2, 4)                  # output tile sizes m of F(m x m, 3x3)
DEFAULT_TILE = 4
_INT_MAX = 2**31 - 1            # BLAS sizes are C ints
_BLOCK_BYTES = 2**20            # a block's V and M (alpha^2 x block x (C + K) values) ...
_MIN_BLOCK, _MAX_BLOCK = 16, 512  # ... within these many tiles
_DW_GROUPS = 32                 # dW: runs of blocks with their own partial sums, at most ...
_DW_BYTES = 2**24               # ... and within these many bytes of partials
_DW_SLICE = 16384               # dW: values per task when the partials are added


# --------------------------------------------------------------------------- 1-D transforms

cdef inline void _transform_1d(int kind, int m, const floating* inp, Py_ssize_t in_step,
                               floating* out, Py_ssize_t out_step, Py_ssize_t n) noexcept nogil:
    """out[j*out_step + i] = sum_a X[j, a] inp[a*in_step + i] for i < n, X = B^T (kind
    FC_WINO_INPUT, the input transform), A^T (FC_WINO_OUTPUT, the output transform) or A
    (FC_WINO_DY, dy's transform for dW): src_pyx/include/fc_winograd.h."""
    if floating is float:
        fc_wino_1d_f32(_ISA, m, kind, inp, in_step, out, out_step, n)
    else:
        fc_wino_1d_f64(_ISA, m, kind, inp, in_step, out, out_step, n)


cdef inline void _gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                       const floating* B, floating* C, Py_ssize_t ld) noexcept nogil:
    """C (M, N) = A (M, K) @ B (K, N), row-major, B and C with ``ld`` values per row: float32
    by fastconv's register tiles, AVX-512's (src_pyx/include/fc_conv_microkernel.h) or
    AVX2's (src_pyx/include/fc_gemm_avx2.h; N rounded up to whole vectors, within ld), else
    BLAS; on AVX-512 only up to MK_MAX_ROWS rows."""
    if floating is float and _ISA >= FC_ISA_AVX512 and M <= MK_MAX_ROWS:
        fc_gemm_f32(M, N, K, A, K, 1, B, ld, False, C, ld)
    elif floating is float and _ISA == FC_ISA_AVX2:
        fc_gemm8_f32(M, (N + 7) // 8 * 8, K, A, K, 1, B, ld, False, C, ld)
    else:
        gemm_rm(False, False, <int>M, <int>N, <int>K, 1, A, <int>K, B, <int>ld, 0, C, <int>ld)


# --------------------------------------------------------------------------- filter transform

cdef inline void _filter_transform(int m, const floating* g, Py_ssize_t l_step,
                                   Py_ssize_t r_step, Py_ssize_t s_step, Py_ssize_t n,
                                   floating* u, Py_ssize_t e_step) noexcept nogil:
    """u[e*e_step + l] = (G g_l G^T)[e] for the n filters g_l[r, s] = g[l*l_step + r*r_step +
    s*s_step] (step 1 of wino.gemm)."""
    if floating is float:
        fc_wino_filter_transform_f32(_ISA, m, g, l_step, r_step, s_step, n, u, e_step)
    else:
        fc_wino_filter_transform_f64(_ISA, m, g, l_step, r_step, s_step, n, u, e_step)


cdef inline void _filter_gradient(int m, const floating* mw, Py_ssize_t e_step, Py_ssize_t n,
                                  floating* g, Py_ssize_t l_step) noexcept nogil:
    """g[l*l_step + r*3 + s] = (G^T Mw_l G)[r, s] for the n transformed gradients Mw_l[e] =
    mw[e*e_step + l] (step 4 of wino.dw): the transpose of _filter_transform."""
    if floating is float:
        fc_wino_filter_gradient_f32(_ISA, m, mw, e_step, n, g, l_step)
    else:
        fc_wino_filter_gradient_f64(_ISA, m, mw, e_step, n, g, l_step)


def _transformed_filters(const floating[:, :, :, ::1] w, int m, bint for_dx, int nt):
    """U (alpha^2, K, C) of w (K, C, 3, 3) for the forward pass; for dx (``for_dx``),
    U (alpha^2, C, K) of the flipped, transposed kernel w[k, c, 2 - r, 2 - s]. Each row of
    U (one k, or one c) is one call of fc_wino_filter_transform_* (src_pyx/include/
    fc_winograd.h: G g G^T, 8 filters at a time)."""
    cdef Py_ssize_t K = w.shape[0], C = w.shape[1], k, c
    cdef Py_ssize_t alpha2 = (m + 2) * (m + 2)
    u_arr = np.empty((alpha2, C if for_dx else K, K if for_dx else C),
                     dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, :, ::1] u = u_arr
    with nogil:
        if for_dx:          # row c: the filters w[k, c, ::-1, ::-1] of every k, C * 9 apart
            for c in prange(C, schedule="static", num_threads=nt):
                _filter_transform(m, &w[0, c, 2, 2], C * 9, -3, -1, K, &u[0, c, 0], C * K)
        else:               # row k: the filters w[k, c] of every c, 9 apart
            for k in prange(K, schedule="static", num_threads=nt):
                _filter_transform(m, &w[k, 0, 0, 0], 9, 3, 1, C, &u[0, k, 0], K * C)
    return u_arr


# --------------------------------------------------------------------------- tiles in and out

DEF _WHERE_ROWS = 6     # the rows of ``where`` (_tile_offsets): in_off, in_row, in_col,
                        # out_off, rows, cols


cdef void _tile_offsets(Py_ssize_t t0, Py_ssize_t tb, int m, Py_ssize_t th, Py_ssize_t tw,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t in_image, Py_ssize_t W,
                        Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t out_image, Py_ssize_t P,
                        Py_ssize_t Q, Py_ssize_t ld, Py_ssize_t* where) noexcept nogil:
    """Where tiles t0 .. t0 + tb - 1 of the batch are. Each image's outputs split into
    dh x dw phases (a, b), the outputs (a + dh*i, b + dw*j) (one phase when the dilation
    is 1), each phase into th x tw tiles: tile g is in image g // (dh*dw*th*tw), then phase,
    tile row and tile column, row-major. Its m x m outputs, like its taps, lie dh rows and
    dw columns apart; output (p, q) reads the input from (p + oh, q + ow) on.

    ``where`` holds _WHERE_ROWS rows of ld: in_off[t], the offset of its top-left tap in the
    input (channel 0), at (in_row[t], in_col[t]) of the input plane (W columns; outside it
    where the tile reaches into the padding); out_off[t], its first output in the output
    (channel 0); rows[t] x cols[t], how many of its outputs lie inside the P x Q plane (the
    last tiles overhang, some wholly: 0)."""
    cdef Py_ssize_t* in_off = where
    cdef Py_ssize_t* in_row = where + ld
    cdef Py_ssize_t* in_col = where + 2 * ld
    cdef Py_ssize_t* out_off = where + 3 * ld
    cdef Py_ssize_t* rows = where + 4 * ld
    cdef Py_ssize_t* cols = where + 5 * ld
    cdef Py_ssize_t t, g, n, phase, i, j
    for t in range(tb):
        g = t0 + t
        n = g // (dh * dw * th * tw)
        phase = g // (th * tw) % (dh * dw)
        i = phase // dw + dh * ((g // tw) % th * m)             # the tile's first output row
        j = phase % dw + dw * (g % tw * m)                      # and column
        in_row[t] = i + oh
        in_col[t] = j + ow
        in_off[t] = n * in_image + in_row[t] * W + in_col[t]
        out_off[t] = n * out_image + i * Q + j
        rows[t] = imin(m, imax(0, (P - i + dh - 1) // dh))
        cols[t] = imin(m, imax(0, (Q - j + dw - 1) // dw))


cdef void _gather_tiles(const floating* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t dh,
                        Py_ssize_t dw, const Py_ssize_t* where, Py_ssize_t ld, Py_ssize_t tb,
                        int m, floating* D) noexcept nogil:
    """D[(a*alpha + b)*ld + t] = the tap (in_row[t] + dh*a, in_col[t] + dw*b) of the H x W
    plane x, 0 outside it (the padding): the alpha x alpha input tiles of one plane side by
    side (tile t in column t), for the vector transforms; ``where`` as ``_tile_offsets``
    writes it. float32 with adjacent taps: fc_wino_gather_f32 (include/fc_winograd.h),
    which moves 8 tiles at a time with AVX2."""
    cdef const Py_ssize_t* in_off = where
    cdef const Py_ssize_t* in_row = where + ld
    cdef const Py_ssize_t* in_col = where + 2 * ld
    cdef Py_ssize_t t, a, b, r, c, alpha = m + 2, row_step = dh * W
    cdef const floating* src
    if floating is float and dw == 1:
        fc_wino_gather_f32(_ISA, x, H, W, dh, in_off, in_row, in_col, tb, m + 2, D, ld)
        return
    for t in range(tb):
        src = x + in_off[t]
        if (in_row[t] >= 0 and in_row[t] + dh * (alpha - 1) < H and in_col[t] >= 0
                and in_col[t] + dw * (alpha - 1) < W):           # inside the plane
            if m == 4:                                          # constant bounds: unrolled
                for a in range(6):
                    for b in range(6):
                        D[(a * 6 + b) * ld + t] = src[a * row_step + b * dw]
            else:
                for a in range(4):
                    for b in range(4):
                        D[(a * 4 + b) * ld + t] = src[a * row_step + b * dw]
            continue
        for a in range(alpha):                                  # reaches into the padding
            r = in_row[t] + dh * a
            for b in range(alpha):
                c = in_col[t] + dw * b
                D[(a * alpha + b) * ld + t] = (src[a * row_step + b * dw]
                                               if 0 <= r < H and 0 <= c < W else 0)


cdef inline floating _masked(floating v, const floating* mask, Py_ssize_t at) noexcept nogil:
    """v, or 0 where a mask is given and mask[at] is not > 0 (relu.bwd)."""
    return v if mask == NULL or mask[at] > 0 else 0


cdef bint _scatter_tiles(const floating* O, Py_ssize_t ld, floating* y, Py_ssize_t row_step,
                         Py_ssize_t col_step, const Py_ssize_t* out_off, const Py_ssize_t* rows,
                         const Py_ssize_t* cols, Py_ssize_t tb, int m, floating bias,
                         const floating* mask, bint check_finite) noexcept nogil:
    """y[out_off[t] + i*row_step + j*col_step] = O[(i*m + j)*ld + t] + bias for the
    i < rows[t], j < cols[t] outputs of each tile t (the overhang of the last tiles is
    dropped); with a ``mask`` (laid out as y, or NULL), 0 where it is not > 0: a ReLU's
    backward (relu.bwd) applied as dx is written, the mask being the ReLU's output.
    Returns False where ``check_finite`` finds a value of the tiles (the overhang's too)
    not finite. float32 with adjacent outputs: fc_wino_scatter_f32
    (include/fc_winograd.h), 8 tiles at a time with AVX2, checking as it goes."""
    cdef Py_ssize_t t, i, j, at
    if floating is float and col_step == 1:
        return (fc_wino_scatter_f32(_ISA, O, ld, y, row_step, out_off, rows, cols, tb, m, bias,
                                    mask) or not check_finite)
    if check_finite and not _columns_finite(O, m * m, ld, tb):
        return False
    for t in range(tb):
        if m == 4 and rows[t] == 4 and cols[t] == 4:           # constant bounds: unrolled
            for i in range(4):
                for j in range(4):
                    at = out_off[t] + i * row_step + j * col_step
                    y[at] = _masked(O[(i * 4 + j) * ld + t] + bias, mask, at)
        else:
            for i in range(rows[t]):
                for j in range(cols[t]):
                    at = out_off[t] + i * row_step + j * col_step
                    y[at] = _masked(O[(i * m + j) * ld + t] + bias, mask, at)
    return True


cdef void _input_transform(const floating* D, floating* T1, int m, Py_ssize_t ld,
                           floating* V, Py_ssize_t v_step) noexcept nogil:
    """V[e*v_step + t] = (B^T d_t B)[e] for the gathered tiles D (alpha^2 rows of ld):
    columns first (T1[i][b] = sum_a B^T[i, a] D[a][b], all alpha columns b in one pass),
    then the rows of T1 (V[i][j] = sum_b B^T[j, b] T1[i][b])."""
    cdef int alpha = m + 2, i
    _transform_1d(FC_WINO_INPUT, m, D, alpha * ld, T1, alpha * ld, alpha * ld)
    for i in range(alpha):
        _transform_1d(FC_WINO_INPUT, m, T1 + i * alpha * ld, ld, V + i * alpha * v_step, v_step,
                      ld)


cdef void _transform_inputs(const floating* x, Py_ssize_t Cin, Py_ssize_t H, Py_ssize_t W,
                            Py_ssize_t dh, Py_ssize_t dw, const Py_ssize_t* where,
                            Py_ssize_t tb, int m, Py_ssize_t ld, floating* D, floating* T1,
                            floating* V) noexcept nogil:
    """Step 2 of (wino.gemm) for tb tiles: V[e][c][t] (alpha^2 x Cin rows of ld) = B^T d B
    of input tile t (``where``: ``_tile_offsets``; taps dh rows, dw columns apart, 0 in the
    padding) of each channel c; D and T1 (alpha^2 x ld each) are scratch."""
    cdef Py_ssize_t c
    for c in range(Cin):
        _gather_tiles(x + c * H * W, H, W, dh, dw, where, ld, tb, m, D)
        _input_transform(D, T1, m, ld, V + c * ld, Cin * ld)


cdef bint _winograd_block(const floating* x,                # IN (N, Cin, H, W)
                          Py_ssize_t Cin, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t oh, Py_ssize_t ow,     # output (p, q) reads from (p+oh, q+ow)
                          const floating* U,                # IN (alpha^2, Kout, Cin)
                          const floating* bias,             # IN (Kout,) or NULL
                          floating* out,                    # OUT (N, Kout, P, Q)
                          const floating* mask,             # IN (N, Kout, P, Q) or NULL
                          Py_ssize_t Kout, Py_ssize_t P, Py_ssize_t Q, int m,
                          Py_ssize_t dh, Py_ssize_t dw,         # the dilation
                          Py_ssize_t t0, Py_ssize_t tb, Py_ssize_t ld,
                          floating* work, Py_ssize_t* where, bint check_finite) noexcept nogil:
    """Tiles t0 .. t0 + tb - 1 of the whole batch (their order: ``_tile_offsets``), eq.
    (wino.gemm), steps 2-4: out[n, k, p, q] = sum_{c, r, s} U-transformed filter (k, c) *
    x[n, c, p + oh + dh*r, q + ow + dw*s] (0 outside x) for the outputs of these tiles,
    0 where a ``mask`` is given and not > 0 (_scatter_tiles). Returns False where ``check_finite`` found a non-finite output (the block's outputs are
    then unreliable)."""
    cdef int alpha = m + 2, alpha2 = alpha * alpha
    cdef Py_ssize_t th = ((P + dh - 1) // dh + m - 1) // m    # tiles down and across a phase
    cdef Py_ssize_t tw = ((Q + dw - 1) // dw + m - 1) // m
    cdef Py_ssize_t c, k, e, i
    cdef floating* D = work                                  # gathered tiles (alpha^2, ld)
    cdef floating* T1 = D + alpha2 * ld                      # half-transformed (alpha^2, ld)
    cdef floating* V = T1 + alpha2 * ld                      # (alpha^2, Cin, ld)
    cdef floating* M = V + alpha2 * Cin * ld                 # (alpha^2, Kout, ld)
    cdef Py_ssize_t* out_off = where + 3 * ld                # where each tile is (_tile_offsets)
    cdef Py_ssize_t* rows = where + 4 * ld
    cdef Py_ssize_t* cols = where + 5 * ld
    cdef floating b = 0
    cdef const floating* mask_k = NULL
    cdef bint ok = True
    _tile_offsets(t0, tb, m, th, tw, dh, dw, Cin * H * W, W, oh, ow, Kout * P * Q, P, Q, ld,
                  where)
    # 2. input transform, channel by channel: V[e][c][t]
    _transform_inputs(x, Cin, H, W, dh, dw, where, tb, m, ld, D, T1, V)
    # 3. the alpha^2 GEMMs: M[e] (Kout, tb) = U[e] (Kout, Cin) @ V[e] (Cin, tb)
    for e in range(alpha2):
        _gemm(Kout, tb, Cin, U + e * Kout * Cin, V + e * Cin * ld, M + e * Kout * ld, ld)
    # 4. inverse transform, output channel by output channel: A^T M_{k,t} A, into y
    for k in range(Kout):
        # rows of the transformed tile first: S[a][j] = sum_b A^T[j, b] M[a][b] (into D),
        # then its columns: O[i][j] = sum_a A^T[i, a] S[a][j] (into T1)
        for i in range(alpha):
            _transform_1d(FC_WINO_OUTPUT, m, M + (i * alpha * Kout + k) * ld, Kout * ld,
                          D + i * m * ld, ld, tb)
        _transform_1d(FC_WINO_OUTPUT, m, D, m * ld, T1, m * ld, m * ld)
        if bias != NULL:
            b = bias[k]
        if mask != NULL:
            mask_k = mask + k * P * Q
        if not _scatter_tiles(T1, ld, out + k * P * Q, dh * Q, dw, out_off, rows, cols, tb, m,
                              b, mask_k, check_finite):
            ok = False
    return ok


cdef bint _columns_finite(const floating* a, Py_ssize_t rows, Py_ssize_t ld,
                          Py_ssize_t tb) noexcept nogil:
    """Whether a[r*ld + t] is finite for every r < rows, t < tb (the block's own tiles: the
    columns beyond tb are left over from an earlier block)."""
    cdef Py_ssize_t r
    for r in range(rows):
        if not _all_finite(a + r * ld, tb):
            return False
    return True


# --------------------------------------------------------------------------- the driver

def _block_size(Py_ssize_t n_tiles, Py_ssize_t Cin, Py_ssize_t Kout, int m, Py_ssize_t itemsize):
    """Tiles per block: V and M of a block (alpha^2 x block x (Cin + Kout) values) within
    _BLOCK_BYTES, between _MIN_BLOCK and _MAX_BLOCK tiles, a multiple of 8 (whole vectors);
    a function of the shapes only (never of the thread count)."""
    cdef Py_ssize_t alpha2 = (m + 2) * (m + 2)
    cdef Py_ssize_t block = _BLOCK_BYTES // (alpha2 * (Cin + Kout) * itemsize)
    block = max(_MIN_BLOCK, min(_MAX_BLOCK, block)) // 8 * 8
    return int(min(block, (n_tiles + 7) // 8 * 8))


def _correlate(const floating[:, :, :, ::1] inp,   # IN (N, Cin, H, W)
               const floating[:, :, ::1] u,         # IN (alpha^2, Kout, Cin): U
               bias,                                # IN (Kout,) or None
               Py_ssize_t P, Py_ssize_t Q, Py_ssize_t oh, Py_ssize_t ow, dilation, int m,
               int nt, bint check_finite,
               mask=None):                          # IN (N, Kout, P, Q) or None
    """y[n, k, p, q] = sum_{c,r,s} g_{k,c}[r, s] * inp[n, c, p + dh*r + oh, q + dw*s + ow]
    (inp = 0 outside), g the filters whose transforms are u and (dh, dw) the dilation:
    steps 2-4 of (wino.gemm), block by block; 0 where a ``mask`` is given and not > 0."""
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t N = inp.shape[0], Cin = inp.shape[1], H = inp.shape[2], W = inp.shape[3]
    cdef Py_ssize_t Kout = u.shape[1], alpha2 = (m + 2) * (m + 2)
    cdef Py_ssize_t dh = dilation[0], dw = dilation[1]
    # A dilated convolution is dh*dw undilated ones, one per phase: the outputs (a + dh*i,
    # b + dw*j) read only the inputs (a + dh*i', b + dw*j'). th x tw tiles cover a phase.
    cdef Py_ssize_t th = ((P + dh - 1) // dh + m - 1) // m
    cdef Py_ssize_t tw = ((Q + dw - 1) // dw + m - 1) // m
    cdef Py_ssize_t n_tiles = N * dh * dw * th * tw
    cdef Py_ssize_t ld = _block_size(n_tiles, Cin, Kout, m, np.dtype(dtype).itemsize)
    cdef Py_ssize_t n_blocks = (n_tiles + ld - 1) // ld, blk, tid
    if max(Kout, Cin, ld) > _INT_MAX:
        raise ValueError(f"conv_winograd: a GEMM dimension overflows BLAS's 32-bit int")
    y_arr = np.empty((N, Kout, P, Q), dtype=dtype)
    cdef floating[:, :, :, ::1] y = y_arr
    cdef const floating[::1] b_view
    cdef const floating* b_ptr = NULL
    if bias is not None:
        b_view = bias
        b_ptr = &b_view[0]
    cdef const floating[:, :, :, ::1] mask_view
    cdef const floating* mask_ptr = NULL
    if mask is not None:
        mask_view = mask
        mask_ptr = &mask_view[0, 0, 0, 0]
    work_arr = np.empty((nt, alpha2 * ld * (2 + Cin + Kout)), dtype=dtype)
    # Each thread's scratch: D, T1, V, M (see _winograd_block), uninitialised but for D: a
    # short last block fills only its first tb columns, the transforms run over all ld,
    # and zeros keep the unused ones finite (they never reach an output)
    work_arr[:, :alpha2 * ld] = 0
    cdef floating[:, ::1] work = work_arr
    cdef Py_ssize_t[:, ::1] where = np.empty((nt, _WHERE_ROWS * ld), dtype=np.intp)
    cdef unsigned char[::1] ok = np.ones(n_blocks, dtype=np.uint8)
    with nogil:
        for blk in prange(n_blocks, schedule="dynamic", num_threads=nt):
            tid = threadid()
            ok[blk] = _winograd_block(&inp[0, 0, 0, 0], Cin, H, W, oh, ow, &u[0, 0, 0], b_ptr,
                                      &y[0, 0, 0, 0], mask_ptr, Kout, P, Q, m, dh, dw, blk * ld,
                                      imin(ld, n_tiles - blk * ld), ld, &work[tid, 0],
                                      &where[tid, 0], check_finite)
    if check_finite and not np.all(ok):
        return None
    return y_arr


# --------------------------------------------------------------------------- the weight gradient

cdef inline void _gemm_acc(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                           Py_ssize_t lda, const floating* B, bint accumulate,
                           floating* C) noexcept nogil:
    """C (M, N) += A (M, K; ``lda`` values per row) @ B (K, N) (``accumulate``; else C =),
    row-major, B and C dense: fastconv's register tiles in float32 (AVX-512's up to
    MK_MAX_ROWS rows, or AVX2's), else BLAS."""
    if floating is float and _ISA >= FC_ISA_AVX512 and M <= MK_MAX_ROWS:
        fc_gemm_f32(M, N, K, A, lda, 1, B, N, accumulate, C, N)
    elif floating is float and _ISA == FC_ISA_AVX2:
        fc_gemm8_f32(M, N, K, A, lda, 1, B, N, accumulate, C, N)
    else:
        gemm_rm(False, False, <int>M, <int>N, <int>K, 1, A, <int>lda, B, <int>N,
                1 if accumulate else 0, C, <int>N)


cdef void _transform_dy(const floating* dy, Py_ssize_t Kout, Py_ssize_t PQ, Py_ssize_t row_step,
                        Py_ssize_t col_step, Py_ssize_t rows, Py_ssize_t cols, int m,
                        floating* Dy, floating* T2, floating* Z, Py_ssize_t z_step) noexcept nogil:
    """Z[e*z_step + k] = (A dY_k A^T)[e] for one tile of dy, every output channel k: dY_k[a, b]
    = dy[k*PQ + a*row_step + b*col_step] for a < rows, b < cols, 0 past the plane's edge.
    Vectors run over k: Dy (m*m x Kout) and T2 (alpha*m x Kout) are scratch."""
    cdef int alpha = m + 2
    cdef Py_ssize_t a, b, k = 0, i
    cdef const floating* src
    if m == 4 and rows == 4 and cols == 4:                     # constant bounds: unrolled
        if floating is float and col_step == 1:                # 8 channels at a time (AVX2)
            k = fc_wino_dy_tile_f32(_ISA, dy, Kout, PQ, row_step, Dy)
        for k in range(k, Kout):
            src = dy + k * PQ
            for a in range(4):
                for b in range(4):
                    Dy[(a * 4 + b) * Kout + k] = src[a * row_step + b * col_step]
    else:
        for k in range(Kout):
            src = dy + k * PQ
            for a in range(m):
                for b in range(m):
                    Dy[(a * m + b) * Kout + k] = (src[a * row_step + b * col_step]
                                                  if a < rows and b < cols else 0)
    # columns: T2[i][b][k] = sum_a A[i, a] dY[a][b][k];
    # rows:    Z[i*alpha + j][k] = sum_b A[j, b] T2[i][b][k]
    _transform_1d(FC_WINO_DY, m, Dy, m * Kout, T2, m * Kout, m * Kout)
    for i in range(alpha):
        _transform_1d(FC_WINO_DY, m, T2 + i * m * Kout, Kout, Z + i * alpha * z_step, z_step,
                      Kout)


cdef void _dw_block(const floating* x,                 # IN (N, Cin, H, W)
                    Py_ssize_t Cin, Py_ssize_t H, Py_ssize_t W,
                    Py_ssize_t oh, Py_ssize_t ow,      # output (p, q) reads from (p+oh, q+ow)
                    const floating* dy,                # IN (N, Kout, P, Q)
                    Py_ssize_t Kout, Py_ssize_t P, Py_ssize_t Q, int m,
                    Py_ssize_t dh, Py_ssize_t dw,      # the dilation
                    Py_ssize_t t0, Py_ssize_t tb, Py_ssize_t ld,
                    floating* work, Py_ssize_t* where, bint accumulate,
                    floating* mw) noexcept nogil:      # IN/OUT (alpha^2, Cin, Kout)
    """The terms of tiles t0 .. t0 + tb - 1 (ordered as in ``_tile_offsets``) in eq. (wino.dw):
    mw[e] (Cin, Kout) += V[e] (Cin, tb) @ Z[e] (tb, Kout) (``accumulate``; else mw[e] =)."""
    cdef int alpha = m + 2, alpha2 = alpha * alpha
    cdef Py_ssize_t th = ((P + dh - 1) // dh + m - 1) // m    # tiles down and across a phase
    cdef Py_ssize_t tw = ((Q + dw - 1) // dw + m - 1) // m
    cdef Py_ssize_t t, e
    cdef floating* D = work                                  # gathered tiles (alpha^2, ld)
    cdef floating* T1 = D + alpha2 * ld                      # half-transformed (alpha^2, ld)
    cdef floating* V = T1 + alpha2 * ld                      # (alpha^2, Cin, ld)
    cdef floating* Z = V + alpha2 * Cin * ld                 # (alpha^2, ld, Kout)
    cdef floating* Dy = Z + alpha2 * ld * Kout               # one tile of dy (m*m, Kout)
    cdef floating* T2 = Dy + m * m * Kout                    # half-transformed (alpha*m, Kout)
    cdef Py_ssize_t* out_off = where + 3 * ld                # where each tile is (_tile_offsets)
    cdef Py_ssize_t* rows = where + 4 * ld
    cdef Py_ssize_t* cols = where + 5 * ld
    _tile_offsets(t0, tb, m, th, tw, dh, dw, Cin * H * W, W, oh, ow, Kout * P * Q, P, Q, ld,
                  where)
    # the input tiles as in the forward pass: V[e][c][t]
    _transform_inputs(x, Cin, H, W, dh, dw, where, tb, m, ld, D, T1, V)
    # dy's tiles, A dY A^T: Z[e][t][k]
    for t in range(tb):
        _transform_dy(dy + out_off[t], Kout, P * Q, dh * Q, dw, rows[t], cols[t], m, Dy, T2,
                      Z + t * Kout, ld * Kout)
    # the alpha^2 GEMMs, summed over the tiles: Mw[e] += V[e] @ Z[e]
    for e in range(alpha2):
        _gemm_acc(Cin, Kout, tb, V + e * Cin * ld, ld, Z + e * ld * Kout, accumulate,
                  mw + e * Cin * Kout)


def _groups(Py_ssize_t n_blocks, Py_ssize_t partial_bytes):
    """How many runs of consecutive blocks dW's tiles are split into, each summed into its own
    partial Mw: up to _DW_GROUPS (the threads' tasks), the partials within _DW_BYTES; a
    function of the shapes only, so that the sums are the same on any thread count."""
    return int(max(1, min(n_blocks, _DW_GROUPS, _DW_BYTES // partial_bytes)))


def _weight_gradient(const floating[:, :, :, ::1] x,    # IN (N, Cin, H, W)
                     const floating[:, :, :, ::1] dy,   # IN (N, Kout, P, Q)
                     Py_ssize_t ph, Py_ssize_t pw, dilation, int m, int nt,
                     bint check_finite):                # returns dw (Kout, Cin, 3, 3) or None
    """dw[k, c, r, s] = sum_{n,p,q} dy[n, k, p, q] * x[n, c, p + dh*r - ph, q + dw*s - pw]
    (x = 0 outside) by eq. (wino.dw): the tiles in blocks as in the forward pass, each run of
    blocks summing into its own partial Mw (alpha^2, Cin, Kout); the partials added in order,
    then G^T Mw G for each (k, c)."""
    dtype = np.float32 if floating is float else np.float64
    cdef Py_ssize_t N = x.shape[0], Cin = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Kout = dy.shape[1]
    cdef Py_ssize_t P = dy.shape[2], Q = dy.shape[3], alpha2 = (m + 2) * (m + 2)
    cdef Py_ssize_t dh = dilation[0], dw = dilation[1]
    cdef Py_ssize_t th = ((P + dh - 1) // dh + m - 1) // m, tw = ((Q + dw - 1) // dw + m - 1) // m
    cdef Py_ssize_t n_tiles = N * dh * dw * th * tw
    cdef Py_ssize_t itemsize = np.dtype(dtype).itemsize
    cdef Py_ssize_t ld = _block_size(n_tiles, Cin, Kout, m, itemsize)
    cdef Py_ssize_t n_blocks = (n_tiles + ld - 1) // ld
    cdef Py_ssize_t n_groups = _groups(n_blocks, alpha2 * Cin * Kout * itemsize)
    cdef Py_ssize_t grp, blk, first, tid, c
    if max(Kout, Cin, ld) > _INT_MAX:
        raise ValueError(f"conv_winograd: a GEMM dimension overflows BLAS's 32-bit int")
    work_arr = np.empty(
        (nt, alpha2 * ld * (2 + Cin + Kout) + (m * m + (m + 2) * m) * Kout), dtype=dtype)
    work_arr[:, :alpha2 * ld] = 0       # D, as in _correlate
    cdef floating[:, ::1] work = work_arr
    cdef Py_ssize_t[:, ::1] where = np.empty((nt, _WHERE_ROWS * ld), dtype=np.intp)
    cdef Py_ssize_t size = alpha2 * Cin * Kout, per_slice = _DW_SLICE
    cdef Py_ssize_t n_slices = (size + per_slice - 1) // per_slice, g, lo, hi
    cdef floating[:, ::1] partial = np.empty((n_groups, size), dtype=dtype)
    with nogil:
        for grp in prange(n_groups, schedule="dynamic", num_threads=nt):
            tid = threadid()
            first = grp * n_blocks // n_groups       # the group's first block sets its sum
            for blk in range(first, (grp + 1) * n_blocks // n_groups):
                _dw_block(&x[0, 0, 0, 0], Cin, H, W, -ph, -pw, &dy[0, 0, 0, 0], Kout, P, Q, m,
                          dh, dw, blk * ld, imin(ld, n_tiles - blk * ld), ld, &work[tid, 0],
                          &where[tid, 0], blk > first, &partial[grp, 0])
        # Mw (alpha^2, Cin, Kout) = the partials added in group order, into the first; each
        # thread adds a slice of the values
        for g in prange(n_slices, schedule="static", num_threads=nt):
            lo = g * per_slice
            hi = imin(size, lo + per_slice)
            for grp in range(1, n_groups):
                _add_to(&partial[0, lo], &partial[grp, lo], hi - lo)
    dw_arr = np.empty((Kout, Cin, 3, 3), dtype=dtype)
    cdef floating[:, :, :, ::1] dW = dw_arr
    with nogil:             # row c of Mw: dW[k, c] of every k, Cin * 9 apart
        for c in prange(Cin, schedule="static", num_threads=nt):
            _filter_gradient(m, &partial[0, c * Kout], Cin * Kout, Kout, &dW[0, c, 0, 0],
                             Cin * 9)
    if check_finite and not _all_finite(&dW[0, 0, 0, 0], Kout * Cin * 9):
        return None
    return dw_arr


cdef tuple _shape(const floating[:, :, :, ::1] a):
    return (a.shape[0], a.shape[1], a.shape[2], a.shape[3])


def _geometry(x_shape, w_shape, stride, padding, tile, int n_threads, dy_shape, dilation):
    """_conv_geometry's (sh, sw, ph, pw, P, Q, threads), for a 3x3 kernel, stride 1, and a
    tile size of TILES only."""
    if (w_shape[2], w_shape[3]) != (3, 3) or tuple(int(s) for s in stride) != (1, 1):
        raise ValueError(f"conv_winograd: needs a 3x3 kernel with stride 1, got kernel "
                         f"{(w_shape[2], w_shape[3])} and stride {tuple(stride)}")
    if tile not in TILES:
        raise ValueError(f"conv_winograd: tile must be one of {TILES}, got {tile!r}")
    return _conv_geometry(x_shape, w_shape, stride, padding, n_threads, dy_shape, dilation)


def conv2d_forward(const floating[:, :, :, ::1] x,     # IN (N, C, H, W)
                   const floating[:, :, :, ::1] w,     # IN (K, C, 3, 3)
                   const floating[::1] b,              # IN (K,) or None
                   stride, padding, int n_threads, dilation=(1, 1), *,
                   bint relu=False, residual=None,     # IN (N, K, P, Q) or None
                   int tile=DEFAULT_TILE, bint check_finite=False,   # returns y (OUT)
                   pool_out=None):                     # OUT (N, K, P//2, Q//2) or None
    """(conv.fwd) for a 3x3 kernel, stride 1, any dilation, by F(tile x tile, 3x3), eq.
    (wino.gemm).

    Parameters
    ----------
    x : ndarray (N, C, H, W);  w : ndarray (K, C, 3, 3);  b : ndarray (K,) or None
    stride : (1, 1);  padding : (ph, pw)
    n_threads : int (BLAS limited to one thread by the caller; bitwise the same for any value)
    tile : 2 or 4, the output tile of F(tile x tile, 3x3)
    dilation : (dh, dw): a tile's taps, and its outputs, dh rows and dw columns apart
    relu, residual : keyword only, the fused epilogue (conv.fused) ``y = relu(y + residual)``,
        applied to the whole output once it is computed
    pool_out : ndarray (N, K, P // 2, Q // 2) or None, keyword only: gets the 2x2 stride-2
        max pooling of y (conv.pool), image by image, after the epilogue
    check_finite : bool
        True: return None where w or an output is NaN or Inf (see the module docstring), so
        that the caller can compute the formula's answer another way.

    Returns
    -------
    y : ndarray (N, K, H + 2ph - 2dh, W + 2pw - 2dw), x's dtype, or None (``check_finite``).
    """
    cdef Py_ssize_t sh, sw, ph, pw, P, Q
    cdef int nt
    sh, sw, ph, pw, P, Q, nt = _geometry(_shape(x), _shape(w), stride, padding, tile, n_threads,
                                         None, dilation)
    if b is not None and b.shape[0] != w.shape[0]:
        raise ValueError(f"conv: b has {b.shape[0]} values for {w.shape[0]} output channels")
    if check_finite and not _all_finite(&w[0, 0, 0, 0], w.shape[0] * w.shape[1] * 9):
        return None
    u = _transformed_filters(w, tile, False, nt)
    y = _correlate(x, u, None if b is None else np.asarray(b), P, Q, -ph, -pw, dilation, tile,
                   nt, check_finite)
    if y is not None and (relu or residual is not None):
        _fused_epilogue(y, residual, relu)
    cdef floating[:, :, :, ::1] y_view, pooled
    if y is not None and _pool_view(pool_out, y.shape) is not None:
        y_view, pooled = y, pool_out
        _pool_images(y_view, pooled, nt)
    return y


def _fused_epilogue(floating[:, :, :, ::1] y,             # IN/OUT (N, K, P, Q)
                     residual,                             # IN (N, K, P, Q) or None
                     bint relu):
    """y = relu(y + residual) over the whole output, by the kernels' shared _epilogue."""
    cdef const floating[:, :, :, ::1] res
    cdef const floating* res_ptr = NULL
    if residual is not None:
        res = residual
        res_ptr = &res[0, 0, 0, 0]
    with nogil:
        _epilogue(&y[0, 0, 0, 0], res_ptr, 0, y.shape[0] * y.shape[1], y.shape[2] * y.shape[3],
                  y.shape[2] * y.shape[3], relu)


def conv2d_backward(const floating[:, :, :, ::1] dy,    # IN (N, K, P, Q): dLoss/dy
                    const floating[:, :, :, ::1] x,     # IN (N, C, H, W)
                    const floating[:, :, :, ::1] w,     # IN (K, C, 3, 3)
                    stride, padding, int n_threads, bint need_dx=True,
                    bint need_dw=True, dilation=(1, 1), *,
                    int tile=DEFAULT_TILE, bint check_finite=False,
                    bint need_db=True, bint through_relu=False):   # returns dx, dw, db (OUT)
    """Gradients of :func:`conv2d_forward`, (conv.bwd), by Winograd: dx as the 3x3 stride-1
    correlation of dy with the flipped, transposed kernel (the same dilation d) and padding
    2d - p; dw by (wino.dw) (module docstring); db as dy's sum.

    Parameters as :func:`conv2d_forward`; need_dx False skips dx (None in its place),
    need_dw False skips dw and db (None for both), need_db False db alone (a layer without a
    bias); ``through_relu``: dx is 0 where x is not > 0, the backward of the ReLU whose
    output x is (relu.bwd), applied as dx is written.
    ``check_finite``: None instead of the three arrays where w or a dx or dw value is not
    finite (module docstring).

    Returns
    -------
    dx : (N, C, H, W) or None, dw : (K, C, 3, 3), db : (K,), all of x's dtype; or None.
    """
    cdef Py_ssize_t sh, sw, ph, pw, P, Q
    cdef int nt
    if not (need_dx or need_dw):
        raise ValueError("conv2d_backward: need_dx and need_dw are both False (nothing to do)")
    sh, sw, ph, pw, P, Q, nt = _geometry(_shape(x), _shape(w), stride, padding, tile, n_threads,
                                         _shape(dy), dilation)
    dh, dw = dilation
    dx = None
    if need_dx:
        if check_finite and not _all_finite(&w[0, 0, 0, 0], w.shape[0] * w.shape[1] * 9):
            return None
        u = _transformed_filters(w, tile, True, nt)
        dx = _correlate(dy, u, None, x.shape[2], x.shape[3], ph - 2 * dh, pw - 2 * dw, dilation,
                        tile, nt, check_finite, x if through_relu else None)
        if dx is None:
            return None
    if not need_dw:
        return dx, None, None
    dW = _weight_gradient(x, dy, ph, pw, dilation, tile, nt, check_finite)
    if dW is None:
        return None
    if not need_db:
        return dx, dW, None
    db = np.empty(w.shape[0], dtype=dW.dtype)
    _bias_gradient(dy, db, nt)
    return dx, dW, db


def _bias_gradient(const floating[:, :, :, ::1] dy, floating[::1] db, int nt):
    """db[k] = sum_{n,p,q} dy[n, k, p, q] (conv.bwd), by the kernels' shared _db_one."""
    cdef Py_ssize_t k
    with nogil:
        for k in prange(dy.shape[1], schedule="static", num_threads=nt):
            _db_one(dy, db, k)


include "_conv_shared.pxi"
