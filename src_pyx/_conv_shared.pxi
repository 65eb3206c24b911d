# Included (textually) by conv_direct.pyx and conv_im2col.pyx: one source for what both
# convolution kernels share: the O(1) guard and the geometry they work out before touching
# memory, and the bias gradient.


def _conv_geometry(x_shape, w_shape, stride, padding, int n_threads, dy_shape=None,
                   dilation=(1, 1)):
    """Check the shapes and return (sh, sw, ph, pw, P, Q, n_threads to use).

    O(1) checks, so that a direct call with inconsistent arguments raises instead of reading
    out of bounds (fastconv.functional does the user-facing validation). P, Q by (conv.out),
    with the kernel's extent dh*(R - 1) + 1 under dilation (dh, dw); small convolutions run
    on one thread (threads_for_macs).
    """
    sh, sw = (int(v) for v in stride)
    ph, pw = (int(v) for v in padding)
    dh, dw = int(dilation[0]), int(dilation[1])
    N, C, H, W = x_shape
    K, R, S = w_shape[0], w_shape[2], w_shape[3]
    Re, Se = dh * (R - 1) + 1, dw * (S - 1) + 1       # the dilated kernel's extent
    if w_shape[1] != C:
        raise ValueError(f"conv: w has {w_shape[1]} input channels but x has {C}")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0 or dh < 1 or dw < 1:
        raise ValueError(f"conv: need stride >= 1, padding >= 0 and dilation >= 1, got "
                         f"{stride}, {padding}, {dilation}")
    if Re > H + 2 * ph or Se > W + 2 * pw:
        raise ValueError(f"conv: kernel {Re}x{Se} (dilated) larger than the padded input "
                         f"{H + 2 * ph}x{W + 2 * pw}")
    if min(x_shape) == 0 or min(w_shape) == 0:
        raise ValueError("conv: empty arrays are not supported")
    P = out_size(H, Re, sh, ph)
    Q = out_size(W, Se, sw, pw)
    if dy_shape is not None and tuple(dy_shape) != (N, K, P, Q):
        raise ValueError(f"conv2d_backward: dy must have shape {(N, K, P, Q)}, got {tuple(dy_shape)}")
    return sh, sw, ph, pw, P, Q, threads_for_macs(N * K * P * Q * C * R * S, n_threads)


cdef void _db_one(const floating[:, :, :, ::1] dy, floating[::1] db, Py_ssize_t k) noexcept nogil:
    """db[k] = sum_{n,p,q} dy[n, k, p, q], (conv.bwd), accumulated in double.

    Eight partial sums (lane j takes the values i with i % 8 == j of each (p, q) plane, in
    order), added in a fixed tree at the end: vectorisable, the same bits on any thread
    count. One running sum was a chain of dependent adds, 4 cycles per value: 16% of
    lenet_c1's backward (64 x 6 x 28 x 28 values).
    """
    cdef Py_ssize_t N = dy.shape[0], PQ = dy.shape[2] * dy.shape[3], n, i, j
    cdef Py_ssize_t full = PQ - PQ % 8
    cdef double acc[8]
    cdef const floating* dy_plane
    for j in range(8):
        acc[j] = 0
    for n in range(N):
        dy_plane = &dy[n, k, 0, 0]
        for i in range(0, full, 8):
            for j in range(8):
                acc[j] += dy_plane[i + j]
        for i in range(full, PQ):
            acc[i - full] += dy_plane[i]
    db[k] = <floating>(((acc[0] + acc[1]) + (acc[2] + acc[3]))
                       + ((acc[4] + acc[5]) + (acc[6] + acc[7])))


cdef void _add_to(floating* total, const floating* part, Py_ssize_t size) noexcept nogil:
    """total += part, elementwise (size values)."""
    cdef Py_ssize_t i
    for i in range(size):
        total[i] = total[i] + part[i]


cdef bint _all_finite(const floating* a, Py_ssize_t size) noexcept nogil:
    """Whether a[0:size] holds no NaN and no Inf: v - v is 0 for a finite v, NaN otherwise.

    The kernels that skip taps in the zero padding (a product with a zero adds nothing,
    unless the other factor is NaN or Inf) check their weights or dy with this first, one
    pass over them, and take a path that multiplies the zeros where it fails: so NaN and
    Inf propagate as in the formula, 0 * NaN = NaN (see the module docstrings)."""
    cdef Py_ssize_t i, j, full = size - size % 8
    cdef floating acc[8]
    for j in range(8):
        acc[j] = 0
    for i in range(0, full, 8):                  # eight lanes: vectorised, no early exit
        for j in range(8):
            acc[j] += a[i + j] - a[i + j]
    for i in range(full, size):
        acc[0] += a[i] - a[i]
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) == 0


# --------------------------------------------------------------------------- fused epilogue

from _isa cimport fc_isa_level as _fc_isa_level
from _relu cimport add_block, relu_block

cdef int _EPILOGUE_ISA = _fc_isa_level()     # which copy of the epilogue's loops runs

cdef extern from "fc_pool.h":
    void fc_max_pool_2x2_float(int isa, const float* y, float* out, Py_ssize_t planes,
                               Py_ssize_t P, Py_ssize_t Q) noexcept nogil
    void fc_max_pool_2x2_double(int isa, const double* y, double* out, Py_ssize_t planes,
                                Py_ssize_t P, Py_ssize_t Q) noexcept nogil

def _residual_view(residual, y_shape):
    """``residual`` checked against the output's shape (O(1); fastconv.functional checks
    dtype and layout): None or an (N, K, P, Q) array."""
    if residual is not None and tuple(residual.shape) != tuple(y_shape):
        raise ValueError(f"conv2d_forward: residual must have the output's shape "
                         f"{tuple(y_shape)}, got {tuple(residual.shape)}")
    return residual


def _pool_view(pool_out, y_shape):
    """``pool_out`` checked against the pooled output's shape (O(1); fastconv.functional
    checks dtype and layout): an (N, K, P // 2, Q // 2) array, or None when there is
    nothing to pool into (none given, or an empty one: a single output row or column)."""
    N, K, P, Q = y_shape
    if pool_out is None:
        return None
    if tuple(pool_out.shape) != (N, K, P // 2, Q // 2):
        raise ValueError(f"conv2d_forward: pool_out must have shape {(N, K, P // 2, Q // 2)}, "
                         f"got {tuple(pool_out.shape)}")
    return pool_out if pool_out.size else None


cdef inline void _pool_image(const floating* y_n, floating* out_n, Py_ssize_t K, Py_ssize_t P,
                             Py_ssize_t Q) noexcept nogil:
    """The fused pooling (conv.pool): out_n (K, P/2, Q/2) = the 2x2 stride-2 max pooling
    of one image's output y_n (K, P, Q), which the task has just written (still in cache):
    fc_max_pool_2x2_float / _double in include/fc_pool.h, PyTorch's rule, the same bits as
    F.max_pool2d."""
    if floating is float:
        fc_max_pool_2x2_float(_EPILOGUE_ISA, y_n, out_n, K, P, Q)
    else:
        fc_max_pool_2x2_double(_EPILOGUE_ISA, y_n, out_n, K, P, Q)


cdef void _pool_images(floating[:, :, :, ::1] y, floating[:, :, :, ::1] out,
                       int nt) noexcept nogil:
    """_pool_image for every image, for the paths whose tasks are not whole images."""
    cdef Py_ssize_t n, K = y.shape[1], P = y.shape[2], Q = y.shape[3]
    for n in prange(y.shape[0], schedule="static", num_threads=nt):
        _pool_image(&y[n, 0, 0, 0], &out[n, 0, 0, 0], K, P, Q)


cdef void _epilogue(floating* y, const floating* res, Py_ssize_t start, Py_ssize_t rows,
                    Py_ssize_t cols, Py_ssize_t ld, bint relu) noexcept nogil:
    """The fused epilogue (conv.fused): ``y = relu(y + res)`` in place on a block of ``rows``
    x ``cols`` outputs starting at y + start, row stride ``ld``; ``res`` (the residual, laid
    out as y; NULL: nothing to add) and ``relu`` are optional.

    The kernels call it on the block of an image's output they have just written, while it
    is still in cache, instead of a separate pass over the whole output (or two: the add,
    then ReLU). The same operations as ``relu(conv2d(...) + residual)``, in the same order,
    so the same bits; ``v <= 0`` is false for NaN, which stays NaN, as in F.relu.
    """
    cdef Py_ssize_t r
    cdef floating* y_row
    for r in range(rows):
        y_row = y + start + r * ld
        if res != NULL:
            add_block(_EPILOGUE_ISA, y_row, res + start + r * ld, y_row, cols, relu)
        elif relu:
            relu_block(_EPILOGUE_ISA, y_row, y_row, cols)
