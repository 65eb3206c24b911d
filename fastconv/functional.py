"""The public op API: validate, pick backend and algorithm, call the kernel.

Every op exists twice with the same internal signature: ``fastconv.reference.<family>``
(NumPy, the oracle) and ``fastconv._ext.<family>`` (Cython + OpenMP). This module is the
only place that normalises arguments (``int`` -> ``(h, w)``), converts arrays
(C-contiguous, one float dtype), checks shapes and resolves ``backend``, ``algo`` and the
thread count; the kernels trust what they are given, so no input, however odd, reaches
them unchecked.

Arrays are NCHW. Weights are ``(K, C, R, S)``: K output channels, C input channels,
an R x S window. Output size (conv.out): ``P = floor((H + 2*pad - R) / stride) + 1``.
Semantics match PyTorch (``torch.nn.functional``).
"""
import functools

import numpy as np
from scipy.special import expit

from . import _threads
from ._backend import implementation, load_kernels, resolve_backend
from .reference.pool import pool_output_size
from .reference.conv_direct import conv_epilogue, per_group_backward, per_group_forward

__all__ = [
    "conv2d", "conv2d_max_pool", "conv2d_backward",
    "conv_transpose2d", "conv_transpose2d_backward",
    "conv_transpose_output_size", "pad", "pad_backward",
    "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward",
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
    "adaptive_max_pool2d", "adaptive_max_pool2d_backward",
    "max_unpool2d", "max_unpool2d_backward", "pool_output_size",
    "batch_norm", "batch_norm_backward",
    "linear", "linear_backward",
    "relu", "relu_backward", "add",
    "conv_output_size", "choose_conv_algo",
    "batch_norm_affine", "batch_norm_eval_backward",
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "softmax", "softmax_backward",
]

ALGOS = ("direct", "im2col", "winograd", "auto")
_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)
_FLOAT_DTYPES = (_FLOAT32, _FLOAT64)
_INT_MAX = 2**31 - 1   # BLAS and OpenMP loop bounds are C ints


# --------------------------------------------------------------------------- helpers

def _is_float_dtype(dtype):
    """float32 or float64. ``is`` first: comparing dtypes with == (as ``in`` does) costs
    ~0.1 us each, and this runs for every array of every op call."""
    return dtype is _FLOAT32 or dtype is _FLOAT64 or dtype in _FLOAT_DTYPES


def _as_float_array(op, name, a, dtype=None):
    """``a`` as a float32/float64 ndarray, not copied (see ``_contiguous``).

    Raises TypeError for integer, bool, complex or float16 data, or a dtype other than ``dtype``.
    """
    if a is None:
        raise TypeError(f"{op}: {name} must be an array, got None")
    if type(a) is np.ndarray:
        arr = a
    else:
        try:
            arr = np.asarray(a)
        except (ValueError, TypeError) as exc:   # e.g. a ragged list [[1, 2], [3]]
            raise ValueError(f"{op}: {name} is not a rectangular array of numbers "
                             f"({exc})") from None
    found = arr.dtype
    if found is dtype:                  # the usual case: every array of the call alike
        return arr
    if not (found is _FLOAT32 or found is _FLOAT64 or found in _FLOAT_DTYPES):
        raise TypeError(f"{op}: {name} must be float32 or float64, got dtype {arr.dtype}"
                        " (convert with .astype(np.float32))")
    if dtype is not None and found != dtype:
        raise TypeError(f"{op}: {name} has dtype {arr.dtype} but x has dtype {dtype}; "
                        "all arrays of one call must share a dtype")
    return arr


def _kernel_ready(a):
    """``a`` itself when it is None, or C-contiguous and aligned for its dtype, else an
    aligned C-contiguous copy: the kernels read whole floats through typed pointers, which a
    view at an odd byte offset (``np.frombuffer(buf, np.float32, offset=2)``) would misalign."""
    if a is None:
        return a
    flags = a.flags
    if flags.carray or (flags.c_contiguous and flags.aligned):   # carray: + writeable, one read
        return a
    return np.require(a, requirements=("C", "A"))


def _contiguous(*arrays):
    """Kernel-ready versions (see ``_kernel_ready``: one copy of strided, Fortran-order,
    negative-stride or misaligned input; None passes through). Called after validation, so
    an impossible shape never costs a copy."""
    return tuple(map(_kernel_ready, arrays))      # map: cheaper than a comprehension here


def _check_ndim(op, name, a, ndims, meaning):
    if a.ndim not in ndims:
        raise ValueError(f"{op}: {name} must be {meaning}, got shape {a.shape}")


def _plain_pair(value):
    """``value`` as (h, w) when it is a plain int or a tuple of two plain ints, else None.

    Exact type tests, so bool and NumPy integers (whose checks are ``_pair``'s) never pass:
    a cheap first test for the forms nearly every call uses, with no range check."""
    if type(value) is int:
        return (value, value)
    if (type(value) is tuple and len(value) == 2 and type(value[0]) is int
            and type(value[1]) is int):
        return value
    return None


def _pair(op, name, value, minimum):
    """An int or an (h, w) pair of ints -> (h, w), each >= minimum."""
    if type(value) is int and minimum <= value <= _INT_MAX:     # the common cases, at once
        return (value, value)
    pair = _plain_pair(value)
    if pair is not None and minimum <= min(pair) and max(pair) <= _INT_MAX:
        return pair
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    if max(pair) > _INT_MAX:
        raise ValueError(f"{op}: {name}={value!r} is too large (limit {_INT_MAX})")
    return pair


def conv_output_size(size, kernel, stride, padding, dilation=1):
    """(conv.out) floor((size + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1, for conv
    and pooling; with dilation 1, floor((size + 2*padding - kernel) / stride) + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _output_shape(op, x_shape, window, stride, padding, window_name, dilation=(1, 1)):
    """(P, Q) of a window sliding over x's last two axes; the window (its taps ``dilation``
    apart) must fit the padded input."""
    H, W = x_shape[-2:]
    (R, S), (sh, sw), (ph, pw), (dh, dw) = window, stride, padding, dilation
    Re, Se = dh * (R - 1) + 1, dw * (S - 1) + 1               # the window's extent
    if Re > H + 2 * ph or Se > W + 2 * pw:
        dilated = "" if (dh, dw) == (1, 1) else f" (dilation {dilation}: extent {Re}x{Se})"
        raise ValueError(f"{op}: {window_name} {R}x{S}{dilated} is larger than the padded input "
                         f"{H + 2 * ph}x{W + 2 * pw} (x shape {tuple(x_shape)}, padding {padding})")
    return conv_output_size(H, R, sh, ph, dh), conv_output_size(W, S, sw, pw, dw)


def _check_int_sizes(op, **sizes):
    if max(sizes.values()) <= _INT_MAX:
        return
    for name, value in sizes.items():
        if value > _INT_MAX:
            raise ValueError(f"{op}: {name} = {value} overflows the kernels' 32-bit sizes "
                             f"(limit {_INT_MAX}); split the batch or the layer")


def _check_dy(op, dy, expected_shape, name="dy"):
    if dy.shape != tuple(expected_shape):
        raise ValueError(f"{op}: {name} must have the output's shape {tuple(expected_shape)}, "
                         f"got {dy.shape}")


def _n_threads():
    return _threads.get_num_threads()


# --------------------------------------------------------------------------- convolution

def choose_conv_algo(x_shape, w_shape, stride, padding, backend="fast", *, backward=False,
                     dilation=(1, 1), groups=1, dtype=np.float32):
    """The algorithm ``algo="auto"`` runs for this shape (and dtype): "direct", "im2col",
    "winograd" or "depthwise".

    A depthwise convolution (``groups`` equal to the C input channels, C > 1) runs the
    depthwise kernel in either backend: one R x S window per channel plane, where im2col's
    GEMMs would have a single input channel to reduce over. Other groupings run the
    algorithm chosen below once per group (conv.groups).

    The reference backend always uses im2col (one big matrix product is NumPy's fast path).
    For the fast backend: direct with one output channel (K == 1), and for the forward of
    float32 layers with at most 3 input channels on AVX2 or AVX-512 (a first layer on
    image data: its register tiles read the image in place, where im2col's columns would
    be long and its GEMM narrow); for 3x3 stride-1 layers with at least 16 input and 16
    output channels, dilated or not, Winograd F(4x4, 3x3), forward and backward (dx and
    dw), faster than im2col on every such layer of the benchmark suite; im2col otherwise.
    One exception in ``conv2d_backward``: with at most 3 input channels (float32, stride 1,
    a kernel 3 or 5 wide, on AVX2 or AVX-512), dw and db come from the direct kernel's dW
    tiles, and dx from the algorithm returned here. The measurements are in
    docs/performance.md ("Convolution"). A call that picked Winograd runs im2col instead
    where NaN or Inf reach its outputs (see ``conv2d``).
    """
    stride = _pair("choose_conv_algo", "stride", stride, minimum=1)
    return _auto_algo(x_shape[1], w_shape, stride, dilation, groups, backend, backward,
                      np.dtype(dtype))


def _auto_algo(x_channels, w_shape, stride, dilation, groups, backend, backward, dtype):
    """choose_conv_algo, with stride and dilation already (h, w) pairs."""
    if groups > 1 and groups == x_channels:
        return "depthwise"
    if backend == "reference":
        return "im2col"
    K, C, R, S = w_shape
    K //= groups                                  # the output channels of one group
    # im2col's GEMMs win every other layer of the benchmark suite; with one output channel
    # the GEMM is a matrix-vector product with nothing to reuse, and building the columns
    # is pure overhead; a first layer's forward runs faster on the direct kernel's AVX2 or
    # AVX-512 tiles (measurements: docs/performance.md).
    if K == 1 or (not backward and _first_layer_tiles(C, dtype)):
        return "direct"
    if (_winograd_applies(w_shape, stride, groups)
            and min(C, K) >= _WINOGRAD_MIN_CHANNELS):
        return "winograd"
    return "im2col"


_WINOGRAD_MIN_CHANNELS = 16   # below, the transforms outweigh the GEMMs they save
_FIRST_LAYER_MAX_CHANNELS = 3   # a first layer: the direct kernel's forward and dw tiles


def _first_layer_tiles(channels, dtype):
    """Whether the direct kernel's SIMD tiles for a first layer run: float32, at most
    _FIRST_LAYER_MAX_CHANNELS input channels (image data: im2col's columns are long and
    its GEMM narrow there), on AVX2 or AVX-512."""
    return (channels <= _FIRST_LAYER_MAX_CHANNELS and dtype == _FLOAT32
            and _simd_isa() != "baseline")


def _direct_dw_pays(x, w, stride, dilation, groups, backend):
    """Whether auto computes dw (and db) with the direct kernel's AVX2 or AVX-512 dW
    tiles: a first layer (_first_layer_tiles), stride 1 and no dilation along the width, a
    kernel 3 or 5 wide; measured in docs/performance.md ("dW of the first layer")."""
    return (backend == "fast" and groups == 1 and stride[1] == 1 and dilation[1] == 1
            and w.shape[3] in (3, 5) and _first_layer_tiles(x.shape[1], x.dtype))


@functools.cache
def _simd_isa():
    """"baseline", "avx2" or "avx512": which copies of the SIMD inner loops the kernels run
    (src_pyx/include/fc_isa.h decides, for every kernel)."""
    return load_kernels("_openmp").simd_isa()[0]


def _winograd_applies(w_shape, stride, groups=1):
    """Whether Winograd F(m x m, 3x3) computes this convolution: 3x3, stride 1 (any
    dilation: a dilated one is several ordinary ones on interleaved sub-images)."""
    return tuple(w_shape[2:]) == (3, 3) and tuple(stride) == (1, 1) and groups == 1


def _input_and_weight(op, x, w, ndim, x_axes, w_axes, inputs, groups=1):
    """x and w as float arrays of one dtype, ``ndim`` axes each, with as many ``inputs``
    (input channels, input features) on axis 1 of both (of w: per group)."""
    x = _as_float_array(op, "x", x)
    w = _as_float_array(op, "w", w, dtype=x.dtype)
    _check_ndim(op, "x", x, (ndim,), x_axes)
    _check_ndim(op, "w", w, (ndim,), w_axes)
    if groups > 1:
        _check_groups(op, groups, x.shape[1], w.shape)
    elif w.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: w has {w.shape[1]} {inputs} (shape {w.shape}) but x has "
                         f"{x.shape[1]} (shape {x.shape})")
    return x, w


def _conv_padding(op, padding, stride, dilation, kernel):
    """padding (an int, a pair, "same" or "valid") -> ((ph, pw) on each side, (eh, ew) more
    at the bottom and right), PyTorch's rules: "valid" is no padding; "same" keeps the
    input's size (stride 1 only), the dilated kernel's d*(k - 1) pixels split as evenly as
    possible, the odd one at the bottom / right."""
    if not isinstance(padding, str):
        return _pair(op, "padding", padding, minimum=0), (0, 0)
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding != "same":
        raise ValueError(f"{op}: padding must be an int, a pair of ints, 'same' or 'valid', "
                         f"got {padding!r}")
    if stride != (1, 1):
        raise ValueError(f"{op}: padding='same' is not supported for strided convolutions "
                         f"(stride {stride}); give the padding as numbers")
    total = [d * (k - 1) for d, k in zip(dilation, kernel)]
    return (total[0] // 2, total[1] // 2), (total[0] % 2, total[1] % 2)


def _check_groups(op, groups, C, w_shape):
    """(conv.groups) C and K divisible by groups, and w holding C / groups input channels."""
    K = w_shape[0]
    if C % groups or K % groups:
        raise ValueError(f"{op}: groups={groups} must divide both the input channels "
                         f"(x has {C}) and the output channels (w has {K}, shape {w_shape})")
    if w_shape[1] != C // groups:
        raise ValueError(f"{op}: with groups={groups}, w must have C / groups = "
                         f"{C} / {groups} = {C // groups} input channels per group "
                         f"(shape ({K}, {C // groups}, R, S)), got shape {w_shape}")


def _groups_arg(op, groups):
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{op}: groups must be >= 1, got {groups!r}")
    return int(groups)


class _Depthwise:
    """The depthwise kernel (conv_depthwise, its own argument order) behind the conv
    kernels' interface; the fused epilogue applied to its output, a dW it computes and
    need_dw=False does not want dropped."""

    def __init__(self, impl):
        self.impl = impl

    def conv2d_forward(self, x, w, b, stride, padding, n_threads, dilation=(1, 1), *,
                       relu=False, residual=None):
        y = self.impl.conv2d_forward(x, w, b, stride, padding, dilation, n_threads)
        return conv_epilogue(y, relu, residual)

    def conv2d_backward(self, dy, x, w, stride, padding, n_threads, need_dx, need_dw,
                        dilation=(1, 1), *, need_db=True):
        dx, dw, db = self.impl.conv2d_backward(dy, x, w, stride, padding, dilation, n_threads,
                                               need_dx)
        return (dx, dw, db if need_db else None) if need_dw else (dx, None, None)


class _PerGroup:
    """A conv kernel run once per group on contiguous copies of the group's channels
    (conv.groups); docs/performance.md ("Grouped convolution") measures what that costs."""

    def __init__(self, impl, groups):
        self.impl, self.groups = impl, groups

    def conv2d_forward(self, x, w, b, stride, padding, n_threads, dilation=(1, 1), *,
                       relu=False, residual=None):
        y = per_group_forward(self.impl.conv2d_forward, x, w, b, self.groups, stride, padding,
                              n_threads, dilation)
        return conv_epilogue(y, relu, residual)

    def conv2d_backward(self, dy, x, w, stride, padding, n_threads, need_dx, need_dw,
                        dilation=(1, 1), *, need_db=True):
        return per_group_backward(self.impl.conv2d_backward, dy, x, w, self.groups, need_dx,
                                  need_dw, stride, padding, n_threads, need_dx, need_dw,
                                  dilation=dilation, need_db=need_db)


def _conv_common_case(x, w, stride, padding, dilation, groups):
    """The checks of the usual call, for which the general path's normalisation is most of
    the cost of a small layer: x and w 4-D ndarrays of one float dtype (the same dtype
    object), stride and padding plain ints or tuples of two, dilation 1 or (1, 1), groups
    the int 1, a non-empty batch, a kernel that fits the padded input. Returns (stride,
    padding, y_shape), or None for any other call (other forms, or an error), which the
    general path then normalises or rejects with its message."""
    if not (type(x) is np.ndarray and type(w) is np.ndarray and x.ndim == 4 and w.ndim == 4
            and type(groups) is int and groups == 1 and _plain_pair(dilation) == (1, 1)):
        return None
    dtype = x.dtype
    stride, padding = _plain_pair(stride), _plain_pair(padding)
    if (dtype is not _FLOAT32 and dtype is not _FLOAT64) or w.dtype is not dtype \
            or stride is None or padding is None:
        return None
    (N, C, H, W), (K, Cw, R, S) = x.shape, w.shape
    (sh, sw), (ph, pw) = stride, padding
    Hp, Wp = H + 2 * ph, W + 2 * pw
    # A size of 0 is an empty axis; the sizes bound N, K, C*R*S, and Hp*Wp bounds P*Q and
    # the padding, so one max() keeps every kernel size within a C int.
    x_size, w_size = x.size, w.size
    if not (Cw == C and x_size and w_size and sh >= 1 and sw >= 1 and ph >= 0 and pw >= 0
            and Hp >= R and Wp >= S and max(x_size, w_size, Hp * Wp, sh, sw) <= _INT_MAX):
        return None
    return stride, padding, (N, K, (Hp - R) // sh + 1, (Wp - S) // sw + 1)   # (conv.out)


def _conv_setup(op, x, w, stride, padding, algo, backend, dilation=1, backward=False,
                groups=1):
    """Validate the shared part of conv2d and conv2d_backward; return arrays and resolved
    choices. An unbatched x (C, H, W) comes back as (1, C, H, W); with padding="same" and an
    odd total, x comes back with its extra bottom row / right column of zeros (``extra``).
    ``fallback``: the im2col kernel where auto picked Winograd (for non-finite inputs);
    ``blas_limit``: the context to run the kernel in."""
    common = _conv_common_case(x, w, stride, padding, dilation, groups)
    if common is not None:
        stride, padding, y_shape = common
        dilation, unbatched, extra = (1, 1), False, (0, 0)
    else:
        x = _as_float_array(op, "x", x)
        unbatched = x.ndim == 3
        if unbatched:
            x = x[None]
        groups = _groups_arg(op, groups)
        x, w = _input_and_weight(op, x, w, 4, "3-D (C, H, W) or 4-D (N, C, H, W)",
                                 "4-D (K, C/groups, R, S)", "input channels", groups)
        if min(x.shape[1:]) == 0 or min(w.shape) == 0:      # N = 0 is an empty batch
            raise ValueError(f"{op}: empty arrays are not supported (x {x.shape}, "
                             f"w {w.shape})")
        stride = _pair(op, "stride", stride, minimum=1)
        dilation = ((1, 1) if type(dilation) is int and dilation == 1   # the default, fast
                    else _pair(op, "dilation", dilation, minimum=1))
        padding, extra = _conv_padding(op, padding, stride, dilation, w.shape[2:])
        if extra != (0, 0):
            x = pad(x, (0, extra[1], 0, extra[0]))
        P, Q = _output_shape(op, x.shape, w.shape[2:], stride, padding, "kernel", dilation)
        N, C, H, W = x.shape
        K, _, R, S = w.shape
        _check_int_sizes(op, N=N, K=K, **{"C*R*S": C * R * S, "P*Q": P * Q,
                                          "(H+2p)*(W+2p)": (H + 2 * padding[0])
                                          * (W + 2 * padding[1])})
        y_shape = (N, K, P, Q)
    if algo not in ALGOS:
        raise ValueError(f"{op}: algo must be one of {ALGOS}, got {algo!r}")
    if algo == "winograd" and not _winograd_applies(w.shape, stride, groups):
        raise ValueError(f"{op}: algo='winograd' needs a 3x3 kernel with stride 1 "
                         f"(groups 1), got a {w.shape[2]}x{w.shape[3]} kernel "
                         f"with stride {stride}, groups {groups}; "
                         "use algo='auto' or 'im2col'")
    backend = resolve_backend(backend, op)
    fallback = None
    if algo == "auto":
        algo = _auto_algo(x.shape[1], w.shape, stride, dilation, groups, backend, backward,
                          x.dtype)
        if algo == "winograd":   # NaN/Inf spread differently in Winograd: im2col then
            fallback = implementation("conv_im2col", backend)
    if algo == "depthwise":
        impl = _Depthwise(implementation("conv_depthwise", backend))
    elif groups > 1:
        impl = _PerGroup(implementation(f"conv_{algo}", backend), groups)
    else:
        impl = implementation(f"conv_{algo}", backend)
    blas_limit = (_threads.blas_single_thread() if algo in ("im2col", "winograd")
                  else _threads.NO_LIMIT)         # direct and depthwise call no BLAS
    return (x, w, stride, padding, dilation, y_shape, impl, (unbatched, extra), fallback,
            blas_limit)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, algo="auto", backend=None,
           *, relu=False, residual=None):
    """2-D convolution (cross-correlation, as in PyTorch's ``conv2d``), notes eq. (conv.fwd).

    ``y[n, k, p, q] = b[k] + sum_{c,r,s} w[k, c, r, s] * x[n, c, p*sh + r*dh - ph, q*sw + s*dw - pw]``
    with x = 0 outside the image; the dilation (dh, dw) sets the taps dh rows, dw columns
    apart. The kernel is not flipped; a true (mathematical) convolution is
    ``conv2d(x, w[:, :, ::-1, ::-1])``. NaN and Inf propagate as in the formula, the
    padding's zeros included (0 * NaN = NaN), with every algorithm but an explicit
    ``algo="winograd"``, whose transforms spread them over whole output tiles
    (``fastconv.reference.conv_winograd`` says how); ``algo="auto"`` never lets that happen.

    Parameters
    ----------
    x : ndarray (N, C, H, W) or, unbatched, (C, H, W); float32 or float64. N may be 0.
    w : ndarray (K, C/groups, R, S), same dtype
    b : ndarray (K,) or None
    stride : int or (h, w)
    padding : int, (h, w), "same" or "valid"
        Zeros added on each side. "valid": none. "same": the output keeps the input's size
        (stride 1 only, as PyTorch); the d*(k - 1) zeros split evenly, an odd one going to
        the bottom / right. (Other padding modes: pad with :func:`pad` first.)
    dilation : int or (h, w), >= 1
        The spacing of the kernel's taps (1: an ordinary convolution; 2 spreads a 3x3
        kernel over a 5x5 window).
    groups : int >= 1 dividing C and K, eq. (conv.groups)
        The C input and K output channels split into ``groups`` consecutive slices; output
        channel k sees only the C/groups input channels of its slice, and w is
        (K, C/groups, R, S). groups = C is a depthwise convolution (one window per channel,
        K = m*C), which ``algo="auto"`` runs on its own kernel.
    algo : "direct", "im2col", "winograd" or "auto" (the faster for the shape, see
        ``choose_conv_algo``). "winograd" (F(4x4, 3x3), 3x3 kernels with stride 1 only)
        trades accuracy for speed: in float32 its error is a few times im2col's (bounds in
        ``fastconv.reference.conv_winograd``); float64 stays within 1e-12.
    backend : "fast", "reference" or None (the default, see ``fastconv.set_backend``)
    relu : bool, keyword only
        Return ``relu(y)``: the ReLU applied in the kernel's epilogue, to each block of
        output as it is written, instead of in a second pass over memory (conv.fused).
    residual : ndarray (N, K, P, Q) or None, keyword only
        Added to y before the ReLU, in the same epilogue: a ResNet block's
        ``relu(conv(...) + shortcut)`` in one call. The result equals
        ``relu(conv2d(x, w, b) + residual)`` bit for bit.

    Returns
    -------
    y : ndarray (N, K, P, Q), P = floor((H + 2*ph - dh*(R - 1) - 1) / sh) + 1 (conv.out),
        likewise Q; (K, P, Q) for an unbatched x.
    """
    return _conv2d("conv2d", x, w, b, stride, padding, dilation, groups, algo, backend, relu,
                   residual, pool=False)


def conv2d_max_pool(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, algo="auto",
                    backend=None, *, relu=False, residual=None):
    """A convolution and the 2x2 stride-2 max pooling of its output, in one pass over it:
    ``y = conv2d(x, w, b, ..., relu=relu, residual=residual)`` and
    ``pooled = max_pool2d(y, 2)``, both returned, the same bits as the two calls, notes
    eq. (conv.pool).

    The kernels pool each image's output as soon as they have written it, while it is
    still in cache, instead of reading the whole of y again in a second call: how
    ``nn.Sequential`` runs the classic block Conv2d -> ReLU -> MaxPool2d(2) (LeNet-5, VGG).
    y is returned too, as training keeps it for the backward of the ReLU and the pooling.
    An odd last row or column of y is in no window (floor mode, as ``max_pool2d``).

    Parameters
    ----------
    x, w, b, stride, padding, dilation, groups, algo, backend, relu, residual :
        as in :func:`conv2d`

    Returns
    -------
    y : ndarray (N, K, P, Q), as :func:`conv2d` returns it
    pooled : ndarray (N, K, P // 2, Q // 2)
        (unbatched x: both without the N axis)
    """
    return _conv2d("conv2d_max_pool", x, w, b, stride, padding, dilation, groups, algo,
                   backend, relu, residual, pool=True)


def _conv2d(op, x, w, b, stride, padding, dilation, groups, algo, backend, relu, residual,
            pool):
    """conv2d's body; with ``pool``, (y, its 2x2 max pooling): in the kernel where it
    takes ``pool_out`` (direct, im2col, Winograd), else by max_pool2d after."""
    x, w, stride, padding, dilation, y_shape, impl, (unbatched, _), fallback, blas_limit = \
        _conv_setup(op, x, w, stride, padding, algo, backend, dilation, groups=groups)
    if b is not None:
        b = _as_float_array(op, "b", b, dtype=x.dtype)
        if b.shape != (w.shape[0],):
            raise ValueError(f"{op}: b must have shape ({w.shape[0]},) for w of shape {w.shape}, "
                             f"got {b.shape}")
    fused = {}
    if relu or residual is not None:
        if residual is not None:
            residual = _as_float_array(op, "residual", residual, dtype=x.dtype)
            _check_dy(op, residual, y_shape[1:] if unbatched else y_shape, "residual")
            residual = _kernel_ready(residual[None] if unbatched else residual)
        fused = {"relu": bool(relu), "residual": residual}
    pooled = None
    if pool:
        N, K, P, Q = y_shape
        pooled = np.empty((N, K, P // 2, Q // 2), dtype=x.dtype)
        if not isinstance(impl, (_Depthwise, _PerGroup)):
            fused["pool_out"] = pooled
    if y_shape[0] == 0:                      # an empty batch: an empty output, as PyTorch
        y = np.zeros(y_shape, dtype=x.dtype)
    else:
        args = (_kernel_ready(x), _kernel_ready(w), _kernel_ready(b), stride, padding,
                _n_threads(), dilation)
        with blas_limit:
            if fallback is None:
                y = impl.conv2d_forward(*args, **fused)
            else:
                y = impl.conv2d_forward(*args, check_finite=True, **fused)
                if y is None:
                    y = fallback.conv2d_forward(*args, **fused)
        if pool and "pool_out" not in fused:
            pooled[...] = max_pool2d(y, 2, backend=backend)
    if unbatched:
        y = y[0]
        pooled = None if pooled is None else pooled[0]
    return (y, pooled) if pool else y


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, groups=1, algo="auto",
                    backend=None, *, need_dx=True, need_dw=True, need_db=True,
                    through_relu=False):
    """Gradients of :func:`conv2d`, notes eq. (conv.bwd).

    ``db[k] = sum_{n,p,q} dy[n,k,p,q]``;
    ``dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p*sh + r*dh - ph, q*sw + s*dw - pw]``;
    ``dx`` is the transposed convolution of dy with w (each dy value scatters back
    through the window that produced it).

    Parameters
    ----------
    dy : ndarray (N, K, P, Q) ((K, P, Q) for an unbatched x), the gradient of the loss with
        respect to conv2d's output
    x, w, stride, padding, dilation, groups, algo, backend : as in :func:`conv2d`
    need_dx : bool, keyword only
        False skips dx, returned as None: a network's first layer (whose input is the data)
        needs only dw and db, and PyTorch skips it there too.
    need_dw : bool, keyword only
        False skips dw and db, both returned as None: a frozen layer between trainable
        ones must pass dx on but needs no weight gradient (no columns of x are built, no
        reduction over the batch). dx is bitwise the same as with need_dw=True.
    need_db : bool, keyword only
        False skips db, returned as None: a layer without a bias (a pass over dy saved).
    through_relu : bool, keyword only
        x is the output of a ReLU, and dx is returned as the gradient of that ReLU's input:
        0 where x <= 0, i.e. ``relu_backward(dx, x)`` bit for bit. The Winograd kernel
        applies it as it writes dx (how :class:`fastconv.nn.Sequential` runs a ReLU
        followed by a Conv2d); the other algorithms in a pass after.

    Returns
    -------
    dx : (N, C, H, W) (like x) or None, dw : (K, C, R, S) or None, db : (K,) or None, all
    of x's dtype. An empty batch (N = 0) gives an empty dx and zero dw, db.
    """
    op = "conv2d_backward"
    if not (need_dx or need_dw):
        raise ValueError(f"{op}: need_dx=False and need_dw=False leave nothing to compute")
    x, w, stride, padding, dilation, y_shape, impl, (unbatched, extra), fallback, blas_limit = \
        _conv_setup(op, x, w, stride, padding, algo, backend, dilation, backward=True,
                    groups=groups)
    # the Winograd kernel applies the ReLU's mask as it writes dx; any other, after
    in_kernel = bool(through_relu and need_dx) and impl is implementation(
        "conv_winograd", resolve_backend(backend, op))
    relu_arg = {"through_relu": True} if in_kernel else {}
    dy = _as_float_array(op, "dy", dy, dtype=x.dtype)
    if unbatched:
        _check_dy(op, dy, y_shape[1:])
        dy = dy[None]
    else:
        _check_dy(op, dy, y_shape)
    db_arg = {} if need_db else {"need_db": False}   # the usual call passes no keyword
    if y_shape[0] == 0:                      # an empty batch: no contributions to dw, db
        dx = np.zeros(x.shape, dtype=x.dtype) if need_dx else None
        dw = np.zeros(w.shape, dtype=x.dtype) if need_dw else None
        db = np.zeros(w.shape[0], dtype=x.dtype) if need_dw and need_db else None
    elif need_dw and algo == "auto" and _direct_dw_pays(x, w, stride, dilation, groups,
                                                        backend := resolve_backend(backend, op)):
        # dw and db by the direct kernel's dW tiles, dx (if asked) by the algorithm auto chose
        dy, x, w = _contiguous(dy, x, w)
        _, dw, db = implementation("conv_direct", backend).conv2d_backward(
            dy, x, w, stride, padding, _n_threads(), False, True, dilation, **db_arg)
        dx = None
        if need_dx:
            with blas_limit:
                dx = impl.conv2d_backward(dy, x, w, stride, padding, _n_threads(), True,
                                          False, dilation, **relu_arg)[0]
    else:
        args = (*_contiguous(dy, x, w), stride, padding, _n_threads(), bool(need_dx),
                bool(need_dw), dilation)
        with blas_limit:
            if fallback is None:
                dx, dw, db = impl.conv2d_backward(*args, **db_arg, **relu_arg)
            else:
                grads = impl.conv2d_backward(*args, check_finite=True, **db_arg, **relu_arg)
                if grads is None:    # non-finite values met in Winograd: im2col then
                    grads = fallback.conv2d_backward(*args, **db_arg)
                    in_kernel = False
                dx, dw, db = grads
    if dx is not None:
        if through_relu and not in_kernel:
            dx = relu_backward(dx, x, backend)
        if extra != (0, 0):                  # the gradient of the zeros "same" added: dropped
            H, W = x.shape[2] - extra[0], x.shape[3] - extra[1]
            dx = np.ascontiguousarray(dx[:, :, :H, :W])
        if unbatched:
            dx = dx[0]
    return dx, dw, db


# --------------------------------------------------------------------------- transposed convolution

def conv_transpose_output_size(size, kernel, stride, padding, output_padding=0, dilation=1):
    """(conv_t.out) (size - 1)*stride - 2*padding + dilation*(kernel - 1) + output_padding + 1:
    the input size of a conv (with these kernel, stride, padding) whose output has ``size``."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def _conv_transpose_setup(op, x, w, stride, padding, output_padding, groups, dilation):
    """Validate conv_transpose2d's arguments; return (x, w, stride, padding, output_padding,
    conv options, output shape)."""
    x = _as_float_array(op, "x", x)
    w = _as_float_array(op, "w", w, dtype=x.dtype)
    _check_ndim(op, "x", x, (4,), "4-D (N, C_in, H, W)")
    _check_ndim(op, "w", w, (4,), "4-D (C_in, C_out/groups, R, S)")
    if min(x.shape) == 0 or min(w.shape) == 0:
        raise ValueError(f"{op}: empty arrays are not supported (x {x.shape}, w {w.shape})")
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    if w.shape[0] != x.shape[1] or x.shape[1] % groups:
        raise ValueError(f"{op}: w must be (C_in, C_out/groups, R, S) with C_in = x's "
                         f"{x.shape[1]} channels, divisible by groups={groups}; got w {w.shape}")
    stride = _pair(op, "stride", stride, minimum=1)
    padding = _pair(op, "padding", padding, minimum=0)
    output_padding = _pair(op, "output_padding", output_padding, minimum=0)
    dilation = _pair(op, "dilation", dilation, minimum=1)
    if any(o >= max(s, d) for o, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(f"{op}: output_padding {output_padding} must be smaller than stride "
                         f"{stride} or dilation {dilation} (as in PyTorch)")
    options = {"dilation": dilation, "groups": int(groups)}   # passed on to the conv ops
    N, _, H, W = x.shape
    H_out, W_out = (conv_transpose_output_size(n, k, s, p, o, d) for n, k, s, p, o, d in
                    zip((H, W), w.shape[2:], stride, padding, output_padding, dilation))
    if H_out < 1 or W_out < 1:
        raise ValueError(f"{op}: the output would be {H_out}x{W_out} (x {x.shape}, kernel "
                         f"{w.shape[2:]}, stride {stride}, padding {padding}): padding too large")
    y_shape = (N, w.shape[1] * groups, H_out, W_out)
    _check_int_sizes(op, **{"C_out*H_out*W_out": y_shape[1] * H_out * W_out})
    return x, w, stride, padding, output_padding, options, y_shape


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     backend=None):
    """Transposed convolution (PyTorch's ``conv_transpose2d``): the gradient of a conv with
    respect to its input, used as a layer. Eq. (conv_t.fwd), the scatter form: each input
    pixel adds the kernel, scaled by its value, onto the output, ``stride`` pixels apart:

    ``y[n, o, i*sh + r - ph, j*sw + s - pw] += x[n, c, i, j] * w[c, o, r, s]``, then ``+ b[o]``

    (positions outside the output dropped). That is the conv2d's dx for w read as a conv
    weight (K = C_in, C = C_out, R, S): the fast backend computes it with
    ``conv2d_backward(x, <the conv's input shape>, w, stride, padding, need_dw=False)``;
    the reference backend scatters as written (``fastconv.reference.conv_transpose``).

    Parameters
    ----------
    x : ndarray (N, C_in, H, W), float32 or float64
    w : ndarray (C_in, C_out/groups, R, S), x's dtype (PyTorch's layout)
    b : ndarray (C_out,) or None
    stride, padding, output_padding, dilation : int or (h, w)
        padding crops the output (the padding of the conv it transposes); output_padding,
        smaller than stride or dilation, adds rows at the bottom and columns on the right
        (a strided conv maps several input sizes to one output size; it picks the larger).
    groups : int
        Dividing C_in and C_out: each group of C_in/groups input channels scatters into its
        own C_out/groups output channels (conv.groups).
    backend : "fast", "reference" or None

    Returns
    -------
    y : ndarray (N, C_out, H_out, W_out), (conv_t.out)
    ``H_out = (H - 1)*sh - 2*ph + dh*(R - 1) + oph + 1``, likewise W_out.

    Examples
    --------
    Upsampling by 2: a 2x2 kernel of ones, stride 2, copies each pixel into a 2x2 block.

    >>> x = np.array([[[[1., 2.], [3., 4.]]]])
    >>> conv_transpose2d(x, np.ones((1, 1, 2, 2)), stride=2)[0, 0]
    array([[1., 1., 2., 2.],
           [1., 1., 2., 2.],
           [3., 3., 4., 4.],
           [3., 3., 4., 4.]])
    """
    op = "conv_transpose2d"
    x, w, stride, padding, out_pad, options, y_shape = _conv_transpose_setup(
        op, x, w, stride, padding, output_padding, groups, dilation)
    if b is not None:
        b = _as_float_array(op, "b", b, dtype=x.dtype)
        if b.shape != (y_shape[1],):
            raise ValueError(f"{op}: b must have shape ({y_shape[1]},) (C_out), got {b.shape}")
    if resolve_backend(backend, op) == "reference":
        ref = implementation("conv_transpose", "reference")   # NumPy only: the scatter form
        return ref.conv_transpose2d_forward(*_contiguous(x, w, b), stride, padding, out_pad,
                                            int(groups), options["dilation"])
    # The conv whose input gradient this is: input y_shape, weight w, output x's shape. Its
    # input is never read with need_dw=False: np.empty only reserves the memory.
    y, _, _ = conv2d_backward(x, np.empty(y_shape, x.dtype), w, stride, padding,
                              backend="fast", need_dw=False, **options)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def conv_transpose2d_backward(dy, x, w, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1, backend=None, *, need_dx=True, need_dw=True):
    """Gradients of :func:`conv_transpose2d`, eq. (conv_t.bwd): the forward scattered, so
    its gradients gather through the same windows.

    ``dx = conv2d(dy, w, stride, padding)`` (the forward of the conv it transposes);
    ``dw`` is that conv's dw with the roles of its input and output gradient swapped:
    ``conv2d_backward(x, dy, w, stride, padding, need_dx=False)``'s dw
    (``dw[c, o, r, s] = sum_{n,i,j} x[n,c,i,j] * dy[n, o, i*sh + r - ph, j*sw + s - pw]``);
    ``db[o] = sum_{n,p,q} dy[n,o,p,q]``.

    dy : (N, C_out, H_out, W_out); x, w and the options as :func:`conv_transpose2d`.
    need_dx, need_dw : bool, keyword only (as :func:`conv2d_backward`).
    Returns dx (N, C_in, H, W) or None, dw (C_in, C_out/groups, R, S) or None, db (C_out,)
    or None, x's dtype.
    """
    op = "conv_transpose2d_backward"
    if not (need_dx or need_dw):
        raise ValueError(f"{op}: need_dx=False and need_dw=False leave nothing to compute")
    x, w, stride, padding, out_pad, options, y_shape = _conv_transpose_setup(
        op, x, w, stride, padding, output_padding, groups, dilation)
    dy = _as_float_array(op, "dy", dy, dtype=x.dtype)
    _check_dy(op, dy, y_shape)
    dy, x, w = _contiguous(dy, x, w)        # one layout: db's sum in one order
    if resolve_backend(backend, op) == "reference":
        ref = implementation("conv_transpose", "reference")
        return ref.conv_transpose2d_backward(dy, x, w, stride, padding, out_pad, int(groups),
                                             options["dilation"], need_dx=need_dx, need_dw=need_dw)
    dx = conv2d(dy, w, None, stride, padding, backend="fast", **options) if need_dx else None
    dw = db = None
    if need_dw:
        _, dw, _ = conv2d_backward(x, dy, w, stride, padding, backend="fast", need_dx=False,
                                   **options)
        db = dy.sum(axis=(0, 2, 3), dtype=np.float64).astype(x.dtype)
    return dx, dw, db


# --------------------------------------------------------------------------- padding

PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _pad_setup(op, a, pad, mode):
    """Check pad and mode; return ``[(before, after) per padded axis]`` (last axis last)."""
    if mode not in PAD_MODES:
        raise ValueError(f"{op}: mode must be one of {PAD_MODES}, got {mode!r}")
    if (not isinstance(pad, (tuple, list)) or len(pad) not in (2, 4) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pad)):
        raise TypeError(f"{op}: pad must be (left, right) or (left, right, top, bottom), "
                        f"ints, got {pad!r}")
    if min(pad) < 0:
        raise ValueError(f"{op}: pad must be >= 0, got {pad!r}")
    # PyTorch's order: the last axis first, (left, right), then (top, bottom)
    widths = [(int(pad[i]), int(pad[i + 1])) for i in range(0, len(pad), 2)][::-1]
    if a.ndim < len(widths) + (1 if mode != "constant" else 0):
        raise ValueError(f"{op}: x of shape {a.shape} has too few axes for pad {tuple(pad)}"
                         f" in mode {mode!r}")
    return widths


def _pad_source(n, before, after, mode, op):
    """For each of the before + n + after positions of a padded axis, the index of the
    input value it holds (reflect: mirrored about the edge, edge excluded; replicate: the
    edge; circular: wrapped around)."""
    i = np.arange(-before, n + after)
    if mode == "reflect":
        if before >= n or after >= n:
            raise ValueError(f"{op}: reflect padding ({before}, {after}) must be smaller than "
                             f"the axis it pads ({n})")
        i = np.abs(i)
        return np.where(i > n - 1, 2 * (n - 1) - i, i)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    if before > n or after > n:
        raise ValueError(f"{op}: circular padding ({before}, {after}) must not exceed the "
                         f"axis it pads ({n})")
    return i % n


def pad(x, pad, mode="constant", value=0.0):
    """Pad the last one or two axes of x, as PyTorch's ``F.pad`` (what ``nn.Conv2d`` runs for
    its ``padding_mode``). In NumPy, for (left, right, top, bottom) and an x (..., H, W):

    * "constant": ``np.pad(x, ((0, 0),) * (x.ndim - 2) + ((top, bottom), (left, right)),
      constant_values=value)``
    * "reflect": ``np.pad(..., mode="reflect")``, mirrored about the edge, which is not
      repeated: [a b c d] padded by 2 -> [c b | a b c d | c b]; each pad < the axis length
    * "replicate": ``np.pad(..., mode="edge")``: [a a | a b c d | d d]
    * "circular": ``np.pad(..., mode="wrap")``: [c d | a b c d | a b]; each pad <= the length

    Parameters
    ----------
    x : ndarray, float32 or float64; (N, C, H, W) or (C, H, W) for 2-D padding
    pad : (left, right) or (left, right, top, bottom), ints >= 0
    mode : "constant", "reflect", "replicate" or "circular"
    value : the constant of "constant"

    Returns
    -------
    y : ndarray (..., H + top + bottom, W + left + right), x's dtype
    """
    op = "pad"
    x = _as_float_array(op, "x", x)
    widths = _pad_setup(op, x, pad, mode)
    full = [(0, 0)] * (x.ndim - len(widths)) + widths
    if mode == "constant":
        return np.pad(x, full, constant_values=value)
    index = tuple(_pad_source(x.shape[axis], *full[axis], mode, op)
                  for axis in range(x.ndim - len(widths), x.ndim))
    return x[(...,) + np.ix_(*index)]


def pad_backward(dy, pad, mode="constant"):
    """Gradient of :func:`pad`: each padded value was a copy of one input value, so
    dx[i] = the sum of dy over the positions holding a copy of x[i] (constant mode: dy's
    inside). Axis by axis, the inside first, then the border positions in order.

    dy : (..., H + top + bottom, W + left + right)  ->  dx : (..., H, W), dy's dtype.
    """
    op = "pad_backward"
    dy = _as_float_array(op, "dy", dy)
    widths = _pad_setup(op, dy, pad, mode)
    dx = dy
    for axis, (before, after) in zip(range(dy.ndim - len(widths), dy.ndim), widths):
        n = dx.shape[axis] - before - after
        if n < 1:
            raise ValueError(f"{op}: dy of shape {dy.shape} is smaller than pad {tuple(pad)}")
        inside = np.take(dx, np.arange(before, before + n), axis=axis)   # a copy
        if mode != "constant":
            source = _pad_source(n, before, after, mode, op)
            for j in list(range(before)) + list(range(before + n, before + n + after)):
                target = [slice(None)] * dx.ndim
                target[axis] = source[j]
                inside[tuple(target)] += np.take(dx, j, axis=axis)
        dx = inside
    return np.ascontiguousarray(dx)


# --------------------------------------------------------------------------- pooling
# Every pooling op takes x as (N, C, H, W) or unbatched (C, H, W) (the result then has no
# batch axis either, as in PyTorch), and an empty batch N = 0 gives an empty result.

def _pool_input(op, x, name="x"):
    """x as a 4-D float array, and whether it came without its batch axis (C, H, W)."""
    x = _as_float_array(op, name, x)
    _check_ndim(op, name, x, (3, 4), "3-D (C, H, W) or 4-D (N, C, H, W)")
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    if min(x.shape[1:]) == 0:
        raise ValueError(f"{op}: {name} must have C, H, W >= 1 (only the batch may be "
                         f"empty), got shape {x.shape[unbatched:]}")
    return x, unbatched


def _pool_grad_input(op, name, a, dtype, unbatched):
    """dy (or indices, with dtype None) as 4-D, following x's batch axis."""
    a = _as_float_array(op, name, a, dtype=dtype) if dtype is not None else np.asarray(a)
    if a.ndim != 4 - unbatched:
        raise ValueError(f"{op}: {name} must be {4 - unbatched}-D like x's output, got "
                         f"shape {a.shape}")
    return a[None] if unbatched else a


def _unbatch(result, unbatched):
    """Drop the batch axis added by _pool_input (from each array of a tuple)."""
    if not unbatched:
        return result
    if isinstance(result, tuple):
        return tuple(r[0] for r in result)
    return result[0]


def _pool_common_case(x, kernel_size, stride, padding, dilation, ceil_mode):
    """The checks of the usual call (as ``_conv_common_case``): x a 4-D float ndarray with a
    non-empty batch, kernel_size, stride (or None) and padding plain ints or tuples of two,
    dilation 1 or (1, 1), ceil_mode False, padding at most half the window. Returns
    (kernel_size, stride, padding, y_shape), or None for any other call."""
    if not (type(x) is np.ndarray and x.ndim == 4 and ceil_mode is False
            and _plain_pair(dilation) == (1, 1)):
        return None
    dtype, k, p = x.dtype, _plain_pair(kernel_size), _plain_pair(padding)
    s = k if stride is None else _plain_pair(stride)
    if (dtype is not _FLOAT32 and dtype is not _FLOAT64) or k is None or s is None or p is None:
        return None
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    x_size = x.size                     # 0 for an empty axis; bounds N*C and H*W
    if not (x_size and min(kh, kw, sh, sw) >= 1 and 0 <= ph <= kh // 2 and 0 <= pw <= kw // 2
            and max(x_size, kh, kw, sh, sw) <= _INT_MAX):
        return None
    P, Q = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1   # (pool.out), dilation 1
    return (k, s, p, (N, C, P, Q)) if P >= 1 and Q >= 1 else None


def _pool_setup(op, x, kernel_size, stride, padding, backend, dilation=1, ceil_mode=False):
    common = _pool_common_case(x, kernel_size, stride, padding, dilation, ceil_mode)
    if common is not None:
        kernel_size, stride, padding, y_shape = common
        impl = implementation("pool", resolve_backend(backend, op))
        return x, kernel_size, stride, padding, (1, 1), y_shape, impl, False
    x, unbatched = _pool_input(op, x)
    kernel_size = _pair(op, "kernel_size", kernel_size, minimum=1)
    stride = kernel_size if stride is None else _pair(op, "stride", stride, minimum=1)
    padding = _pair(op, "padding", padding, minimum=0)
    dilation = _pair(op, "dilation", dilation, minimum=1)
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"{op}: padding {padding} must be at most half the window "
                         f"{kernel_size} (as in PyTorch)")
    N, C, H, W = x.shape
    P, Q = (pool_output_size(size, k, st, pad, d, bool(ceil_mode)) for size, k, st, pad, d
            in zip((H, W), kernel_size, stride, padding, dilation))
    if P < 1 or Q < 1:
        raise ValueError(f"{op}: window {kernel_size[0]}x{kernel_size[1]} (dilation "
                         f"{dilation}) is larger than the padded input {H + 2 * padding[0]}x"
                         f"{W + 2 * padding[1]} (x shape {x.shape[unbatched:]}, padding "
                         f"{padding})")
    _check_int_sizes(op, **{"N*C": N * C, "H*W": H * W})
    impl = implementation("pool", resolve_backend(backend, op))
    return x, kernel_size, stride, padding, dilation, (N, C, P, Q), impl, unbatched


def _check_indices(op, indices, shape):
    """indices as a kernel-ready int64 array of ``shape``."""
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be integers (return_indices=True's), got dtype "
                        f"{indices.dtype}")
    if indices.shape != tuple(shape):
        raise ValueError(f"{op}: indices must have shape {tuple(shape)}, got {indices.shape}")
    return _kernel_ready(indices.astype(np.int64, copy=False))


def max_pool2d(x, kernel_size, stride=None, padding=0, backend=None, *, dilation=1,
               ceil_mode=False, return_indices=False):
    """Max pooling, notes eq. (pool.max): ``y[n,c,p,q] = max over the window of x``.

    Padding acts as -inf (it never wins the max). Parameters as :func:`avg_pool2d`.

    x : (N, C, H, W) or (C, H, W)  ->  y : (N, C, P, Q) or (C, P, Q), P by eq. (pool.out)
    (:func:`pool_output_size`). ``stride`` defaults to ``kernel_size``; ``padding`` is at
    most half the window.

    Keyword only, as PyTorch's arguments of the same names:

    dilation : int or (h, w)
        The window reads rows p*sh - ph + r*dh, r < kh (columns likewise).
    ceil_mode : bool
        Round the output size up: a last, partial window (starting inside the input or its
        left padding) covers what remains.
    return_indices : bool
        Also return ``indices`` (N, C, P, Q) int64: the flat index ``ih*W + iw`` in its
        (n, c) plane of each window's argmax (the first maximum in row-major window order),
        for :func:`max_pool2d_backward` or :func:`max_unpool2d`.
    """
    op = "max_pool2d"
    x, k, s, p, d, y_shape, impl, unbatched = _pool_setup(op, x, kernel_size, stride, padding,
                                                          backend, dilation, ceil_mode)
    if y_shape[0] == 0:
        y = np.empty(y_shape, x.dtype)
        return _unbatch((y, np.empty(y_shape, np.int64)) if return_indices else y, unbatched)
    return _unbatch(impl.max_pool2d_forward(_kernel_ready(x), k, s, p, _n_threads(),
                                            bool(return_indices), d, bool(ceil_mode)),
                    unbatched)


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, backend=None, *,
                        dilation=1, ceil_mode=False, indices=None, through_relu=False):
    """Gradient of :func:`max_pool2d`: each dy goes to the window's maximum.

    On ties the gradient goes to the first maximum in row-major window order (as PyTorch).
    dy : (N, C, P, Q), x : (N, C, H, W)  ->  dx : (N, C, H, W) (or all without N).
    indices : (N, C, P, Q) integers, keyword only: the argmaxes
    ``max_pool2d(..., return_indices=True)`` returned, used instead of recomputing them
    from x (PyTorch's backward uses the ones its forward saved). An index outside its
    plane raises ValueError.
    through_relu : bool, keyword only
        x is the output of a ReLU (``x = relu(z)``): return dL/dz instead of dL/dx, i.e.
        ``relu_backward(max_pool2d_backward(dy, x), x)``, equal to it bit for bit. The 2x2
        stride-2 kernels apply the ReLU's mask in their one pass over dx (how
        ``nn.Sequential`` runs a ReLU followed by a max-pool).
    """
    op = "max_pool2d_backward"
    x, k, s, p, d, y_shape, impl, unbatched = _pool_setup(op, x, kernel_size, stride, padding,
                                                          backend, dilation, ceil_mode)
    dy = _pool_grad_input(op, "dy", dy, x.dtype, unbatched)
    _check_dy(op, dy, y_shape)
    if indices is not None:
        indices = _check_indices(op, _pool_grad_input(op, "indices", indices, None, unbatched),
                                 dy.shape)
    if y_shape[0] == 0:
        return _unbatch(np.empty(x.shape, x.dtype), unbatched)
    extra = {"through_relu": True} if through_relu else {}    # the usual call: no keyword
    return _unbatch(impl.max_pool2d_backward(*_contiguous(dy, x), k, s, p, _n_threads(),
                                             indices, d, bool(ceil_mode), **extra), unbatched)


def _divisor(op, divisor_override):
    if divisor_override is None:
        return None
    if (not isinstance(divisor_override, (int, np.integer)) or isinstance(divisor_override, bool)
            or divisor_override == 0):
        raise ValueError(f"{op}: divisor_override must be a non-zero int or None, got "
                         f"{divisor_override!r}")
    return int(divisor_override)


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True, backend=None,
               *, ceil_mode=False, divisor_override=None):
    """Average pooling, notes eq. (pool.avg): the mean of each window.

    With ``count_include_pad=True`` (PyTorch's default) padded zeros count in the mean, so
    every window divides by kh*kw; otherwise only the input cells inside the window count.
    Global average pooling is ``avg_pool2d(x, x.shape[2:])``.

    x : (N, C, H, W) or (C, H, W)  ->  y : (N, C, P, Q) or (C, P, Q), P by eq. (pool.out).
    ``stride`` defaults to ``kernel_size``; ``padding`` is at most half the window.

    Keyword only, as PyTorch's:

    ceil_mode : bool
        Round the output size up (see :func:`max_pool2d`); the last window's divisor counts
        only what lies inside the padded input.
    divisor_override : int or None
        Divide every window's sum by this number instead.
    """
    op = "avg_pool2d"
    x, k, s, p, _, y_shape, impl, unbatched = _pool_setup(op, x, kernel_size, stride, padding,
                                                          backend, 1, ceil_mode)
    div = _divisor(op, divisor_override)
    if y_shape[0] == 0:
        return _unbatch(np.empty(y_shape, x.dtype), unbatched)
    return _unbatch(impl.avg_pool2d_forward(*_contiguous(x), k, s, p, bool(count_include_pad),
                                            _n_threads(), bool(ceil_mode), div), unbatched)


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, count_include_pad=True,
                        backend=None, *, ceil_mode=False, divisor_override=None):
    """Gradient of :func:`avg_pool2d`: each dy spreads evenly over its window.

    dy : (N, C, P, Q), x : (N, C, H, W) (only its shape and dtype are used)  ->  dx like x
    (or all without N).
    """
    op = "avg_pool2d_backward"
    x, k, s, p, _, y_shape, impl, unbatched = _pool_setup(op, x, kernel_size, stride, padding,
                                                          backend, 1, ceil_mode)
    div = _divisor(op, divisor_override)
    dy = _pool_grad_input(op, "dy", dy, x.dtype, unbatched)
    _check_dy(op, dy, y_shape)
    if y_shape[0] == 0:
        return _unbatch(np.empty(x.shape, x.dtype), unbatched)
    return _unbatch(impl.avg_pool2d_backward(*_contiguous(dy, x), k, s, p,
                                             bool(count_include_pad), _n_threads(),
                                             bool(ceil_mode), div), unbatched)


def _adaptive_size(op, output_size, H, W):
    """PyTorch's output_size: an int, or a pair whose None entries keep the input's size."""
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        output_size = tuple(H if o is None and i == 0 else W if o is None else o
                            for i, o in enumerate(output_size))
    return _pair(op, "output_size", output_size, minimum=1)


def _adaptive_setup(op, x, output_size, backend):
    x, unbatched = _pool_input(op, x)
    N, C, H, W = x.shape
    P, Q = _adaptive_size(op, output_size, H, W)
    _check_int_sizes(op, **{"N*C": N * C, "H*W": H * W})
    return x, (P, Q), implementation("pool", resolve_backend(backend, op)), unbatched


def adaptive_avg_pool2d(x, output_size, backend=None):
    """Adaptive average pooling, notes eq. (pool.adapt): the mean over window (p, q), rows
    floor(p*H/P) .. ceil((p+1)*H/P) - 1 and columns likewise, for any input size.

    x : (N, C, H, W) or (C, H, W); output_size : int or (P, Q) (None keeps that axis's size)
    ->  y : (N, C, P, Q) or (C, P, Q). ``adaptive_avg_pool2d(x, 1)`` is global average pooling.
    """
    op = "adaptive_avg_pool2d"
    x, out, impl, unbatched = _adaptive_setup(op, x, output_size, backend)
    if x.shape[0] == 0:
        return _unbatch(np.empty(x.shape[:2] + out, x.dtype), unbatched)
    return _unbatch(impl.adaptive_avg_pool2d_forward(*_contiguous(x), out, _n_threads()),
                    unbatched)


def adaptive_avg_pool2d_backward(dy, x, output_size, backend=None):
    """Gradient of :func:`adaptive_avg_pool2d`: dy[p, q] / (window area) to each cell of
    window (p, q), overlapping windows adding up.  dy : (N, C, P, Q), x  ->  dx like x."""
    op = "adaptive_avg_pool2d_backward"
    x, out, impl, unbatched = _adaptive_setup(op, x, output_size, backend)
    dy = _pool_grad_input(op, "dy", dy, x.dtype, unbatched)
    _check_dy(op, dy, x.shape[:2] + out)
    if x.shape[0] == 0:
        return _unbatch(np.empty(x.shape, x.dtype), unbatched)
    return _unbatch(impl.adaptive_avg_pool2d_backward(*_contiguous(dy, x), out,
                                                      _n_threads()), unbatched)


def adaptive_max_pool2d(x, output_size, backend=None, *, return_indices=False):
    """Adaptive max pooling, notes eq. (pool.adapt): the maximum of each window of
    :func:`adaptive_avg_pool2d`, PyTorch's argmax and NaN rule (as :func:`max_pool2d`).

    x : (N, C, H, W) or (C, H, W); output_size : int or (P, Q)  ->  y (N, C, P, Q), and
    with return_indices the int64 flat argmaxes ``ih*W + iw``.
    """
    op = "adaptive_max_pool2d"
    x, out, impl, unbatched = _adaptive_setup(op, x, output_size, backend)
    if x.shape[0] == 0:
        y = np.empty(x.shape[:2] + out, x.dtype)
        return _unbatch((y, np.empty(y.shape, np.int64)) if return_indices else y, unbatched)
    return _unbatch(impl.adaptive_max_pool2d_forward(*_contiguous(x), out, _n_threads(),
                                                     bool(return_indices)), unbatched)


def adaptive_max_pool2d_backward(dy, x, output_size, backend=None, *, indices=None):
    """Gradient of :func:`adaptive_max_pool2d`: each dy to its window's argmax (found
    again, or ``indices`` from return_indices=True).  dy : (N, C, P, Q), x  ->  dx like x."""
    op = "adaptive_max_pool2d_backward"
    x, out, impl, unbatched = _adaptive_setup(op, x, output_size, backend)
    dy = _pool_grad_input(op, "dy", dy, x.dtype, unbatched)
    _check_dy(op, dy, x.shape[:2] + out)
    if indices is not None:
        indices = _check_indices(op, _pool_grad_input(op, "indices", indices, None, unbatched),
                                 dy.shape)
    if x.shape[0] == 0:
        return _unbatch(np.empty(x.shape, x.dtype), unbatched)
    return _unbatch(impl.adaptive_max_pool2d_backward(*_contiguous(dy, x), out, _n_threads(),
                                                      indices), unbatched)


def _unpool_size(op, P, Q, kernel_size, stride, padding, output_size):
    """(Ho, Wo): PyTorch's default (P - 1)*s - 2*p + k, or output_size ((Ho, Wo), or with
    leading axes, as PyTorch), which must lie within one stride of the default."""
    k = _pair(op, "kernel_size", kernel_size, minimum=1)
    s = k if stride is None else _pair(op, "stride", stride, minimum=1)
    p = _pair(op, "padding", padding, minimum=0)
    default = tuple((n - 1) * st - 2 * pad + kk for n, st, pad, kk in zip((P, Q), s, p, k))
    if output_size is None:
        size = default
    else:
        size = tuple(int(v) for v in tuple(output_size)[-2:])
        if len(size) != 2 or any(not (dv - st < v < dv + st)
                                 for v, dv, st in zip(size, default, s)):
            raise ValueError(f"{op}: output_size {tuple(output_size)} must be within one "
                             f"stride {s} of the default {default}")
    if min(size) < 1:
        raise ValueError(f"{op}: output size {size} is empty")
    return size


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None,
                 backend=None):
    """Max unpooling, notes eq. (pool.unpool), the inverse of :func:`max_pool2d`'s
    ``return_indices``: y = 0, then ``y[n, c].flat[indices[n, c, p, q]] = x[n, c, p, q]``.

    x, indices : (N, C, P, Q) (or (C, P, Q)); y : (N, C, Ho, Wo), by default
    Ho = (P - 1)*stride - 2*padding + kernel_size (Wo likewise), or ``output_size``.
    An index outside the output plane raises ValueError; of two equal indices the later
    one (row-major) wins.
    """
    op = "max_unpool2d"
    x, unbatched = _pool_input(op, x)
    indices = _check_indices(op, _pool_grad_input(op, "indices", indices, None, unbatched),
                             x.shape)
    out = _unpool_size(op, x.shape[2], x.shape[3], kernel_size, stride, padding, output_size)
    impl = implementation("pool", resolve_backend(backend, op))
    if x.shape[0] == 0:
        return _unbatch(np.empty(x.shape[:2] + out, x.dtype), unbatched)
    return _unbatch(impl.max_unpool2d_forward(*_contiguous(x), indices, out, _n_threads()),
                    unbatched)


def max_unpool2d_backward(dy, indices, backend=None):
    """Gradient of :func:`max_unpool2d` w.r.t. x: ``dx[n,c,p,q] = dy[n, c].flat[indices[
    n,c,p,q]]``.  dy : (N, C, Ho, Wo), indices : (N, C, P, Q)  ->  dx : (N, C, P, Q)
    (or all without N)."""
    op = "max_unpool2d_backward"
    dy, unbatched = _pool_input(op, dy, "dy")
    indices = _pool_grad_input(op, "indices", indices, None, unbatched)
    if indices.shape[:2] != dy.shape[:2]:
        raise ValueError(f"{op}: indices must have dy's (N, C) {dy.shape[:2]}, got shape "
                         f"{indices.shape}")
    indices = _check_indices(op, indices, indices.shape)
    impl = implementation("pool", resolve_backend(backend, op))
    if dy.shape[0] == 0:
        return _unbatch(np.empty(indices.shape, dy.dtype), unbatched)
    return _unbatch(impl.max_unpool2d_backward(*_contiguous(dy), indices, _n_threads()),
                    unbatched)


# --------------------------------------------------------------------------- batch norm

def _bn_setup(op, x, eps, backend):
    """x as 4-D (N, C, H, W): an (N, C) input is viewed as (N, C, 1, 1), an (N, C, L) one as
    (N, C, 1, L). Empty inputs (N = 0, say) pass: the callers answer them without a kernel."""
    x = _as_float_array(op, "x", x)
    if x.ndim == 4:
        x4 = x
    else:
        _check_ndim(op, "x", x, (2, 3), "2-D (N, C), 3-D (N, C, L) or 4-D (N, C, H, W)")
        x4 = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2] if x.ndim == 3 else 1)
    N, C, H, W = x4.shape
    if not (isinstance(eps, (float, int, np.floating)) and eps > 0):
        raise ValueError(f"{op}: eps must be a positive number, got {eps!r}")
    if C > _INT_MAX or N * H * W > _INT_MAX:
        _check_int_sizes(op, C=C, **{"N*H*W": N * H * W})
    return x, x4, float(eps), implementation("batchnorm", resolve_backend(backend, op))


def _one_value_per_channel(op, x):
    """PyTorch's rule: training needs more than one value per channel (M = 0 passes: an
    empty batch gives an empty result)."""
    return ValueError(f"{op}: training needs more than one value per channel, got x of "
                      f"shape {x.shape}")


def _bn_param(op, name, a, C, dtype, default):
    if a is None:
        return np.full(C, default, dtype=dtype)
    a = _as_float_array(op, name, a, dtype=dtype)
    if a.shape != (C,):
        raise ValueError(f"{op}: {name} must have shape ({C},), got {a.shape}")
    return a


def _saved_stat(op, name, a, C):
    """A saved batch statistic for batch_norm_backward: (C,) float64, C-contiguous."""
    a = _as_float_array(op, name, a)
    if a.shape != (C,):
        raise ValueError(f"{op}: {name} must have shape ({C},), got {a.shape}")
    return _kernel_ready(a.astype(np.float64, copy=False))


def _check_running(op, name, a, C, updated):
    if not (isinstance(a, np.ndarray) and _is_float_dtype(a.dtype)):
        raise TypeError(f"{op}: {name} must be a float32 or float64 ndarray (it is updated "
                        f"in place), got {type(a).__name__}")
    if a.shape != (C,):
        raise ValueError(f"{op}: {name} must have shape ({C},), got {a.shape}")
    if updated and not a.flags.writeable:
        raise ValueError(f"{op}: {name} is read-only, but training updates it in place")


def _update_running(impl, running_mean, running_var, mean, var, momentum, M):
    """impl.running_update in place; a misaligned running statistic is updated through an
    aligned copy, copied back (the kernel reads it through typed pointers)."""
    running = (running_mean, running_var)
    if all(a is None or a.flags.aligned for a in running):       # the usual case
        impl.running_update(running_mean, running_var, mean, var, momentum, M)
        return
    stats = [a if a is None or a.flags.aligned else np.require(a, requirements="A")
             for a in running]
    impl.running_update(*stats, mean, var, momentum, M)
    for a, stat in zip(running, stats):
        if stat is not a:
            a[...] = stat


def batch_norm(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5,
               backend=None, *, return_stats=False):
    """Batch normalisation over N (and H, W) per channel, notes eqs. (bn.fwd) and (bn.run).

    ``x_hat = (x - mean) / sqrt(var + eps)``, ``y = gamma * x_hat + beta``.

    In training mode mean and var are the batch statistics over the M = N*H*W values of each
    channel (var is the biased estimate, divided by M), and the running statistics are updated
    in place with PyTorch's convention
    ``running = (1 - momentum) * running + momentum * batch_stat``, where running_var takes the
    unbiased variance var * M / (M - 1). The course notes (and Keras) write the same update
    with ``momentum_keras = 0.9 = 1 - momentum``. In eval mode the running statistics are used.

    Parameters
    ----------
    x : (N, C, H, W), (N, C) or (N, C, L); the statistics are over every axis but C. An empty
        batch (N = 0) gives an empty y and leaves the running statistics as they are
        (PyTorch's rule; with ``return_stats`` its batch statistics are NaN).
    gamma, beta : (C,) or None (None means 1 and 0: no affine transform)
    running_mean, running_var : (C,) float ndarrays, or None in training mode (not tracked)
    training : bool
    momentum : float in [0, 1]; eps : float > 0
        (a cumulative average, as ``BatchNorm2d(momentum=None)``, passes 1 / batches seen)
    return_stats : bool, keyword only
        Also return the statistics x was normalised with (the batch's in training mode),
        for :func:`batch_norm_backward` to reuse instead of recomputing them.

    Returns
    -------
    y : like x
    mean, var : (C,) float64, only with ``return_stats`` (var biased, divided by M)
    """
    op = "batch_norm"
    x, x4, eps, impl = _bn_setup(op, x, eps, backend)
    C = x4.shape[1]
    gamma = _bn_param(op, "gamma", gamma, C, x.dtype, 1.0)
    beta = _bn_param(op, "beta", beta, C, x.dtype, 0.0)
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        if a is not None or not training:
            _check_running(op, name, a, C, updated=training)
    if training:
        if not (isinstance(momentum, (float, int, np.floating)) and 0 <= momentum <= 1):
            raise ValueError(f"{op}: momentum must be a number in [0, 1], got {momentum!r}")
        M = x4.shape[0] * x4.shape[2] * x4.shape[3]
        if M == 1:
            raise _one_value_per_channel(op, x)
        if x.size == 0:         # as PyTorch: empty output, running statistics unchanged
            y, mean, var = np.empty_like(x), np.full(C, np.nan), np.full(C, np.nan)
        else:
            y, mean, var = impl.batch_norm_train_forward(*_contiguous(x4, gamma, beta), eps,
                                                         _n_threads())
            _update_running(impl, running_mean, running_var, mean, var, momentum, M)
    else:
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
        y = np.empty_like(x) if x.size == 0 else impl.batch_norm_eval_forward(
            *_contiguous(x4, gamma, beta, mean, var), eps, _n_threads())
    if x.ndim != 4:
        y = y.reshape(x.shape)
    return (y, mean, var) if return_stats else y


def batch_norm_backward(dy, x, gamma, eps=1e-5, backend=None, *, mean=None, var=None):
    """Gradients of training-mode :func:`batch_norm`, notes eq. (bn.bwd).

    With M = N*H*W values per channel and x_hat, var the batch statistics:
    ``dbeta = sum dy``, ``dgamma = sum dy * x_hat``,
    ``dx = gamma / (M * sqrt(var + eps)) * (M * dy - sum dy - x_hat * sum(dy * x_hat))``.

    dy, x : (N, C, H, W), (N, C) or (N, C, L); gamma : (C,) or None  ->  dx like x, dgamma (C,),
    dbeta (C,) (zeros for an empty batch).
    mean, var : (C,), keyword only: the batch statistics of the forward pass
    (``batch_norm(..., return_stats=True)``), used instead of being recomputed from x, as
    PyTorch's backward uses the ones its forward saved. Give both or neither.
    """
    op = "batch_norm_backward"
    x, x4, eps, impl = _bn_setup(op, x, eps, backend)
    dy = _as_float_array(op, "dy", dy, dtype=x.dtype)
    _check_dy(op, dy, x.shape)
    gamma = _bn_param(op, "gamma", gamma, x4.shape[1], x.dtype, 1.0)
    if x4.shape[0] * x4.shape[2] * x4.shape[3] == 1:
        raise _one_value_per_channel(op, x)
    if (mean is None) != (var is None):
        raise ValueError(f"{op}: give both saved statistics mean and var, or neither")
    if mean is not None:
        mean = _saved_stat(op, "mean", mean, x4.shape[1])
        var = _saved_stat(op, "var", var, x4.shape[1])
    if x.size == 0:                 # an empty batch: sums over no values are 0
        return np.empty_like(x), np.zeros_like(gamma), np.zeros_like(gamma)
    dy4, x4, gamma = _contiguous(dy if x.ndim == 4 else dy.reshape(x4.shape), x4, gamma)
    dx, dgamma, dbeta = impl.batch_norm_backward(dy4, x4, gamma, eps, _n_threads(), mean, var)
    return (dx if x.ndim == 4 else dx.reshape(x.shape)), dgamma, dbeta


# --------------------------------------------------------------------------- fully connected

def _linear_common_case(x, w):
    """Whether x and w pass the checks of the usual call, tested cheaply (as
    ``_conv_common_case``): 2-D float ndarrays of one dtype, non-empty, matching features."""
    if not (type(x) is np.ndarray and type(w) is np.ndarray and x.ndim == 2 and w.ndim == 2
            and (x.dtype is _FLOAT32 or x.dtype is _FLOAT64) and w.dtype is x.dtype):
        return False
    (N, I), (O, w_inputs) = x.shape, w.shape
    return I == w_inputs and min(N, I, O) >= 1 and max(N, I, O) <= _INT_MAX


def _linear_setup(op, x, w):
    if _linear_common_case(x, w):
        return x, w
    x, w = _input_and_weight(op, x, w, 2, "2-D (N, in_features)",
                             "2-D (out_features, in_features)", "input features")
    if min(x.shape) == 0 or min(w.shape) == 0:
        raise ValueError(f"{op}: empty arrays are not supported (x {x.shape}, w {w.shape})")
    _check_int_sizes(op, N=x.shape[0], in_features=x.shape[1], out_features=w.shape[0])
    return x, w


def _linear_blas_limit(impl, dtype, rows, forward):
    """BLAS on one thread around the fast kernel's call where its products run on BLAS
    (the reference's NumPy products too); nothing to do where they run on fastconv's own
    micro-kernel."""
    calls_blas = getattr(impl, "calls_blas", None)
    if calls_blas is not None and not calls_blas(dtype, rows, forward):
        return _threads.NO_LIMIT
    return _threads.blas_single_thread()


def linear(x, w, b=None, backend=None, *, relu=False):
    """Fully connected layer, notes eq. (linear.fwd): ``y = x @ w.T + b``, as PyTorch's
    ``torch.nn.functional.linear``.

    The fast kernel shares the product among the OpenMP threads (blocks, each a
    single-threaded product), where NumPy's ``x @ w.T`` of a small layer runs on one thread.

    Parameters
    ----------
    x : ndarray (N, in_features), float32 or float64
    w : ndarray (out_features, in_features), same dtype
    b : ndarray (out_features,) or None
    backend : "fast", "reference" or None
    relu : bool, keyword only
        Return ``relu(y)``, the ReLU applied to each block as it is written (how
        ``nn.Sequential`` runs a Linear followed by a ReLU); the same bits as ``relu(y)``.

    Returns
    -------
    y : ndarray (N, out_features), x's dtype.
    """
    op = "linear"
    x, w = _linear_setup(op, x, w)
    if b is not None:
        b = _as_float_array(op, "b", b, dtype=x.dtype)
        if b.shape != (w.shape[0],):
            raise ValueError(f"{op}: b must have shape ({w.shape[0]},) for w of shape "
                             f"{w.shape}, got {b.shape}")
    impl = implementation("linear", resolve_backend(backend, op))
    extra = {"relu": True} if relu else {}          # the usual call passes no keyword
    with _linear_blas_limit(impl, x.dtype, x.shape[0], forward=True):
        return impl.linear_forward(_kernel_ready(x), _kernel_ready(w), _kernel_ready(b),
                                   _n_threads(), **extra)


def linear_backward(dy, x, w, backend=None, *, need_dx=True, through_relu=False):
    """Gradients of :func:`linear`, notes eq. (linear.bwd):
    ``dx = dy @ w``, ``dw = dy.T @ x``, ``db = dy.sum(axis=0)``.

    Parameters
    ----------
    dy : ndarray (N, out_features);  x, w, backend : as in :func:`linear`
    need_dx : bool, keyword only
        False skips dx, returned as None (a network's first layer).
    through_relu : bool, keyword only
        x is the output of a ReLU (``x = relu(z)``): dx is dL/dz instead, 0 where x <= 0,
        i.e. ``relu_backward(dx, x)`` bit for bit, applied as dx is written (how
        ``nn.Sequential`` runs a ReLU followed by a Linear).

    Returns
    -------
    dx : (N, in_features) or None, dw : (out_features, in_features), db : (out_features,)
    """
    op = "linear_backward"
    x, w = _linear_setup(op, x, w)
    dy = _as_float_array(op, "dy", dy, dtype=x.dtype)
    _check_dy(op, dy, (x.shape[0], w.shape[0]))
    impl = implementation("linear", resolve_backend(backend, op))
    extra = {"through_relu": True} if through_relu else {}
    with _linear_blas_limit(impl, x.dtype, x.shape[0], forward=False):
        return impl.linear_backward(*_contiguous(dy, x, w), _n_threads(), bool(need_dx),
                                    **extra)


# --------------------------------------------------------------------------- activation

def relu(x, inplace=False, backend=None):
    """ReLU, ``y = max(x, 0)`` element-wise, notes eq. (relu.fwd) (NaN stays NaN, as in PyTorch).

    One pass that reads x and writes y in the fast kernel (NumPy's ``np.maximum(x, 0)``
    was 5x slower on LeNet-5's first ReLU).

    Parameters
    ----------
    x : ndarray of any shape, float32 or float64
    inplace : bool
        Overwrite x with the result and return x (x must be writeable), as PyTorch's
        ``relu_``; otherwise x is left alone and a new array is returned.
    backend : "fast", "reference" or None

    Returns
    -------
    y : like x (x itself with ``inplace``).
    """
    op = "relu"
    x = _as_float_array(op, "x", x)
    impl = implementation("activation", resolve_backend(backend, op))
    if inplace:
        if not x.flags.writeable:
            raise ValueError(f"{op}: inplace=True needs a writeable x")
        if not (x.flags.c_contiguous and x.flags.aligned):   # on a copy, then copied back
            x[...] = relu(x, backend=backend)
            return x
        flat = x.reshape(-1)                  # a view: the kernel writes into x
        impl.relu_forward(flat, flat, _n_threads())
        return x
    y = np.empty(x.shape, dtype=x.dtype)
    impl.relu_forward(_kernel_ready(x).reshape(-1), y.reshape(-1), _n_threads())
    return y


def relu_backward(dy, y, backend=None):
    """Gradient of ReLU, ``y = max(x, 0)``: ``dx = dy`` where ``y > 0``, else 0 (the gradient
    at 0 is taken as 0, as in PyTorch). One pass in the fast kernel, where NumPy's
    ``dy * (y > 0)`` makes two and a temporary.

    dy, y : ndarrays of one shape and float dtype  ->  dx : like dy.
    """
    op = "relu_backward"
    y = _as_float_array(op, "y", y)
    dy = _as_float_array(op, "dy", dy, dtype=y.dtype)
    _check_dy(op, dy, y.shape)
    impl = implementation("activation", resolve_backend(backend, op))
    dy_flat, y_flat = (a.reshape(-1) for a in _contiguous(dy, y))
    return impl.relu_backward(dy_flat, y_flat, _n_threads()).reshape(y.shape)


def add(a, b, relu=False, out=None, backend=None):
    """``a + b``, or ``relu(a + b)``, element-wise in one pass: a ResNet block's residual
    add (notes eq. (add.fwd)), and the sum of the gradients that reach one input twice.

    The fast kernel shares the values among the threads, where NumPy's ``a + b`` runs on one
    core, and with ``relu`` it reads a and b and writes y once, where ``relu(a + b)`` makes
    two passes.

    Parameters
    ----------
    a, b : ndarrays of one shape and float dtype (no broadcasting)
    relu : bool
        Apply ReLU to the sum (NaN stays NaN, as :func:`relu`).
    out : ndarray or None
        Where to write the result: None for a new array, or ``a`` itself (C-contiguous and
        writeable) for an in-place add.
    backend : "fast", "reference" or None

    Returns
    -------
    y : like a (``out`` when given).
    """
    op = "add"
    a = _as_float_array(op, "a", a)
    b = _as_float_array(op, "b", b, dtype=a.dtype)
    if b.shape != a.shape:
        raise ValueError(f"{op}: a and b must have one shape, got {a.shape} and {b.shape}")
    impl = implementation("activation", resolve_backend(backend, op))
    if out is None:
        y = np.empty(a.shape, dtype=a.dtype)
        a = _kernel_ready(a)
    elif out is a:
        if not (a.flags.writeable and a.flags.c_contiguous and a.flags.aligned):
            raise ValueError(f"{op}: out=a needs a writeable, C-contiguous a")
        y = a
        if np.may_share_memory(b, a):       # the kernel reads b while it writes a
            b = b.copy()
    else:
        raise ValueError(f"{op}: out must be None or a itself")
    b = _kernel_ready(b)
    impl.add_forward(a.reshape(-1), b.reshape(-1), y.reshape(-1), bool(relu), _n_threads())
    return y


# --------------------------------------------------------------------------- NumPy-only ops
# The ops below have no compiled kernel: each is one or two NumPy expressions that already
# make a single pass over the data (or, for batch_norm_affine, works on C numbers), so one
# NumPy implementation serves both backends. ``backend`` is still validated, so that code
# written against the other ops runs unchanged.

def batch_norm_affine(gamma, beta, running_mean, running_var, eps=1e-5):
    """Eval-mode batch norm as a per-channel affine map, notes eq. (bn.fwd) with the running
    statistics: ``y = scale * x + shift``, where

    ``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - scale * running_mean``.

    This is what :func:`fastconv.nn.fold_batchnorm` folds into the preceding layer.

    Parameters
    ----------
    gamma, beta : (C,) or None (None means 1 and 0: no affine transform); give both or neither
    running_mean, running_var : (C,) float arrays
    eps : float > 0

    Returns
    -------
    scale, shift : (C,) float64 (computed in float64 whatever the parameters' dtype).
    """
    op = "batch_norm_affine"
    if not (isinstance(eps, (float, int, np.floating)) and eps > 0):
        raise ValueError(f"{op}: eps must be a positive number, got {eps!r}")
    if (gamma is None) != (beta is None):
        raise ValueError(f"{op}: give both gamma and beta, or neither")
    running_mean = _as_float_array(op, "running_mean", running_mean)
    running_var = _as_float_array(op, "running_var", running_var)
    _check_ndim(op, "running_mean", running_mean, (1,), "1-D (C,)")
    C = running_mean.shape[0]
    for name, a in (("running_var", running_var), ("gamma", gamma), ("beta", beta)):
        if a is not None and np.shape(a) != (C,):
            raise ValueError(f"{op}: {name} must have shape ({C},), got {np.shape(a)}")
    scale = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    shift = -scale * running_mean.astype(np.float64)
    if gamma is not None:
        gamma = _as_float_array(op, "gamma", gamma).astype(np.float64)
        beta = _as_float_array(op, "beta", beta).astype(np.float64)
        scale, shift = gamma * scale, gamma * shift + beta
    return scale, shift


def batch_norm_eval_backward(dy, x, gamma, running_mean, running_var, eps=1e-5, backend=None):
    """Gradients of eval-mode :func:`batch_norm` (``training=False``), where the statistics
    are the running ones, constants, so BN is the affine map of :func:`batch_norm_affine`:

    ``dx = dy * gamma / sqrt(running_var + eps)``, ``dgamma = sum dy * x_hat``,
    ``dbeta = sum dy``, with ``x_hat = (x - running_mean) / sqrt(running_var + eps)`` and the
    sums over every axis but the channels'. (Training mode: :func:`batch_norm_backward`.)

    One NumPy implementation for both backends (see the note above this section).

    dy, x : (N, C, H, W), (N, C) or (N, C, L); gamma : (C,) or None; running_mean, running_var : (C,)
    ->  dx like x, dgamma (C,), dbeta (C,).
    """
    op = "batch_norm_eval_backward"
    x, x4, eps, _ = _bn_setup(op, x, eps, backend)
    dy = _as_float_array(op, "dy", dy, dtype=x.dtype)
    _check_dy(op, dy, x.shape)
    C = x4.shape[1]
    if gamma is not None:
        gamma = _bn_param(op, "gamma", gamma, C, x.dtype, 1.0)
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        _check_running(op, name, a, C, updated=False)
    shape = (1, -1) + (1,) * (x.ndim - 2)      # broadcast a (C,) vector over x
    axes = (0,) + tuple(range(2, x.ndim))      # every axis but the channels'
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    scale = invstd if gamma is None else gamma * invstd
    dx = dy * scale.astype(dy.dtype).reshape(shape)
    x_hat = (x - running_mean.reshape(shape)) * invstd.astype(dy.dtype).reshape(shape)
    return dx, np.sum(dy * x_hat, axis=axes), np.sum(dy, axis=axes)


def _elementwise_setup(op, x, backend):
    x = _as_float_array(op, "x", x)
    resolve_backend(backend, op)
    return x


def _elementwise_backward_setup(op, dy, y, backend):
    y = _as_float_array(op, "y", y)
    dy = _as_float_array(op, "dy", dy, dtype=y.dtype)
    _check_dy(op, dy, y.shape)
    resolve_backend(backend, op)
    return dy, y


def sigmoid(x, backend=None):
    """Logistic sigmoid, ``y = 1 / (1 + exp(-x))`` element-wise, computed by SciPy's ``expit``,
    which never overflows (``exp(-x)`` alone would for x < -88 in float32).

    x : ndarray of any shape, float32 or float64  ->  y : like x.
    One NumPy/SciPy implementation for both backends.
    """
    return expit(_elementwise_setup("sigmoid", x, backend))


def sigmoid_backward(dy, y, backend=None):
    """Gradient of :func:`sigmoid` from its output: ``dx = dy * y * (1 - y)``.

    dy, y : ndarrays of one shape and float dtype  ->  dx : like dy.
    """
    dy, y = _elementwise_backward_setup("sigmoid_backward", dy, y, backend)
    return dy * y * (1 - y)


def tanh(x, backend=None):
    """Hyperbolic tangent element-wise, ``y = tanh(x)`` (NumPy's ``np.tanh``).

    x : ndarray of any shape, float32 or float64  ->  y : like x.
    One NumPy implementation for both backends.
    """
    return np.tanh(_elementwise_setup("tanh", x, backend))


def tanh_backward(dy, y, backend=None):
    """Gradient of :func:`tanh` from its output: ``dx = dy * (1 - y**2)``.

    dy, y : ndarrays of one shape and float dtype  ->  dx : like dy.
    """
    dy, y = _elementwise_backward_setup("tanh_backward", dy, y, backend)
    return dy * (1 - y * y)


def _check_dim(op, x, dim):
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"{op}: dim must be an int in [{-x.ndim}, {x.ndim}) for x of shape "
                         f"{x.shape}, got {dim!r}")
    return int(dim)


def softmax(x, dim=1, backend=None):
    """Softmax along ``dim``: ``y_i = exp(x_i) / sum_j exp(x_j)``, computed as
    ``exp(x - max x)`` so that no exp overflows (the shift cancels in the ratio).

    x : ndarray, float32 or float64; dim : int (default 1, the classes of (N, classes))
    ->  y : like x, each slice along ``dim`` summing to 1.
    One NumPy implementation for both backends. For training prefer
    :class:`fastconv.nn.CrossEntropyLoss` on the logits, which fuses softmax and the log.
    """
    op = "softmax"
    x = _elementwise_setup(op, x, backend)
    dim = _check_dim(op, x, dim)
    z = x - x.max(axis=dim, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=dim, keepdims=True)
    return z


def softmax_backward(dy, y, dim=1, backend=None):
    """Gradient of :func:`softmax` from its output: ``dx = y * (dy - sum_j dy_j y_j)``, the
    sum along ``dim``.

    dy, y : ndarrays of one shape and float dtype  ->  dx : like dy.
    """
    op = "softmax_backward"
    dy, y = _elementwise_backward_setup(op, dy, y, backend)
    dim = _check_dim(op, y, dim)
    return y * (dy - np.sum(dy * y, axis=dim, keepdims=True))
