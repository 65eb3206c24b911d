"""The public op API: validate, pick backend and algorithm, call the kernel.

Every op exists twice with the same internal signature: ``fastconv.reference.<family>``
(NumPy, the oracle) and ``fastconv._ext.<family>`` (Cython + OpenMP). This module is the
only place that normalises arguments (``int`` -> ``(h, w)``), converts arrays
(C-contiguous, one float dtype), checks shapes and resolves ``backend``, ``algo`` and the
thread count; the kernels trust what they are given, so no input, however odd, reaches
them unchecked.

Arrays are NCHW. Weights are ``(K, C, R, S)``: K output channels, C input channels,
an R x S window (``(K, C/groups, R, S)`` for a grouped convolution). Output size (conv.out): ``P = floor((H + 2*pad - R) / stride) + 1``.
Semantics match PyTorch (``torch.nn.functional``).
"""
import numpy as np
from scipy.special import expit

from . import _threads
from ._backend import implementation, resolve_backend

__all__ = [
    "conv2d", "conv2d_backward",
    "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward",
    "batch_norm", "batch_norm_backward",
    "linear", "linear_backward",
    "relu", "relu_backward",
    "conv_output_size", "choose_conv_algo",
    "batch_norm_affine", "batch_norm_eval_backward",
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "softmax", "softmax_backward",
]

ALGOS = ("direct", "im2col", "auto")
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
    if not _is_float_dtype(arr.dtype):
        raise TypeError(f"{op}: {name} must be float32 or float64, got dtype {arr.dtype}"
                        " (convert with .astype(np.float32))")
    if dtype is not None and arr.dtype is not dtype and arr.dtype != dtype:
        raise TypeError(f"{op}: {name} has dtype {arr.dtype} but x has dtype {dtype}; "
                        "all arrays of one call must share a dtype")
    return arr


def _kernel_ready(a):
    """``a`` itself when it is C-contiguous and aligned for its dtype, else an aligned
    C-contiguous copy: the kernels read whole floats through typed pointers, which a view
    at an odd byte offset (``np.frombuffer(buf, np.float32, offset=2)``) would misalign."""
    flags = a.flags
    if flags.carray or (flags.c_contiguous and flags.aligned):   # carray: + writeable, one read
        return a
    return np.require(a, requirements=("C", "A"))


def _contiguous(*arrays):
    """Kernel-ready versions (see ``_kernel_ready``: one copy of strided, Fortran-order,
    negative-stride or misaligned input; None passes through). Called after validation, so
    an impossible shape never costs a copy."""
    return tuple(None if a is None else _kernel_ready(a) for a in arrays)


def _check_ndim(op, name, a, ndims, meaning):
    if a.ndim not in ndims:
        raise ValueError(f"{op}: {name} must be {meaning}, got shape {a.shape}")


def _pair(op, name, value, minimum):
    """An int or an (h, w) pair of ints -> (h, w), each >= minimum."""
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


def conv_output_size(size, kernel, stride, padding):
    """(conv.out) floor((size + 2*padding - kernel) / stride) + 1, for conv and pooling."""
    return (size + 2 * padding - kernel) // stride + 1


def _output_shape(op, x_shape, window, stride, padding, window_name):
    """(P, Q) of a window sliding over x's last two axes; the window must fit the padded input."""
    H, W = x_shape[-2:]
    (R, S), (sh, sw), (ph, pw) = window, stride, padding
    if R > H + 2 * ph or S > W + 2 * pw:
        raise ValueError(f"{op}: {window_name} {R}x{S} is larger than the padded input "
                         f"{H + 2 * ph}x{W + 2 * pw} (x shape {tuple(x_shape)}, padding {padding})")
    return conv_output_size(H, R, sh, ph), conv_output_size(W, S, sw, pw)


def _check_int_sizes(op, **sizes):
    for name, value in sizes.items():
        if value > _INT_MAX:
            raise ValueError(f"{op}: {name} = {value} overflows the kernels' 32-bit sizes "
                             f"(limit {_INT_MAX}); split the batch or the layer")


def _check_dy(op, dy, expected_shape):
    if dy.shape != tuple(expected_shape):
        raise ValueError(f"{op}: dy must have the output's shape {tuple(expected_shape)}, "
                         f"got {dy.shape}")


def _n_threads():
    return _threads.get_num_threads()


# --------------------------------------------------------------------------- convolution

def choose_conv_algo(x_shape, w_shape, stride, padding, backend="fast", groups=1):
    """The algorithm ``algo="auto"`` runs for this shape: "direct", "im2col" or "depthwise".

    A depthwise convolution (``groups`` equal to the C input channels, C > 1) runs the
    depthwise kernel in either backend: one R x S window per channel plane, where im2col's
    GEMMs would have a single input channel to reduce over. Otherwise the reference backend
    always uses im2col (one big matrix product is NumPy's fast path). For the fast backend:
    im2col, except with one output channel per group (K / groups == 1), where direct is
    faster; the measurements are in docs/performance.md ("Convolution").
    """
    K, Cg, R, S = w_shape
    if groups > 1 and groups == x_shape[1]:
        return "depthwise"
    if backend == "reference":
        return "im2col"
    # im2col's GEMMs win every layer of the benchmark suite, even with few input channels;
    # with one output channel the GEMM is a matrix-vector product with nothing to reuse,
    # and building the columns is pure overhead (measurements: docs/performance.md).
    if K // groups == 1:
        return "direct"
    return "im2col"


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


def _conv_setup(op, x, w, stride, padding, groups, algo, backend):
    """Validate the shared part of conv2d and conv2d_backward; return arrays and resolved
    choices: (x, w, stride, padding, y shape, backend, algo)."""
    groups = _groups_arg(op, groups)
    x, w = _input_and_weight(op, x, w, 4, "4-D (N, C, H, W)", "4-D (K, C/groups, R, S)",
                             "input channels", groups)
    if min(x.shape) == 0 or min(w.shape) == 0:
        raise ValueError(f"{op}: empty arrays are not supported (x {x.shape}, w {w.shape})")
    stride = _pair(op, "stride", stride, minimum=1)
    padding = _pair(op, "padding", padding, minimum=0)
    P, Q = _output_shape(op, x.shape, w.shape[2:], stride, padding, "kernel")
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    _check_int_sizes(op, N=N, K=K, **{"C*R*S": C * R * S, "P*Q": P * Q,
                                      "(H+2p)*(W+2p)": (H + 2 * padding[0]) * (W + 2 * padding[1])})
    if algo not in ALGOS:
        raise ValueError(f"{op}: algo must be one of {ALGOS}, got {algo!r}")
    backend = resolve_backend(backend, op)
    if algo == "auto":
        algo = choose_conv_algo(x.shape, w.shape, stride, padding, backend, groups)
    return x, w, stride, padding, (N, K, P, Q), backend, algo


# Grouped convolution (conv.groups): the channels split into ``groups`` slices, input slice g
# convolved with output slice g of w only. The depthwise case (groups == C) has its own
# kernel (conv_depthwise); the reference twins compute any other grouping in one go, and the
# fast backend runs its dense kernels once per group on contiguous copies of the slices
# (docs/performance.md, "Grouped convolution", measures what that costs).

def _group_slices(groups, C, K):
    Cg, Kg = C // groups, K // groups
    return [(slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)) for g in range(groups)]


def _conv_forward(x, w, b, stride, padding, groups, backend, algo):
    n_threads = _n_threads()
    if algo == "depthwise":
        impl = implementation("conv_depthwise", backend)
        return impl.conv2d_forward(x, w, b, stride, padding, (1, 1), n_threads)
    impl = implementation(f"conv_{algo}", backend)
    if groups == 1:
        return impl.conv2d_forward(x, w, b, stride, padding, n_threads)
    if backend == "reference":
        return impl.conv2d_forward(x, w, b, stride, padding, n_threads, groups=groups)
    N, K, (P, Q) = x.shape[0], w.shape[0], _output_shape("conv2d", x.shape, w.shape[2:],
                                                          stride, padding, "kernel")
    y = np.empty((N, K, P, Q), dtype=x.dtype)
    for cs, ks in _group_slices(groups, x.shape[1], K):
        y[:, ks] = impl.conv2d_forward(np.ascontiguousarray(x[:, cs]), w[ks],
                                       None if b is None else b[ks], stride, padding, n_threads)
    return y


def _conv_backward(dy, x, w, stride, padding, groups, backend, algo, need_dx):
    n_threads = _n_threads()
    if algo == "depthwise":
        impl = implementation("conv_depthwise", backend)
        return impl.conv2d_backward(dy, x, w, stride, padding, (1, 1), n_threads, need_dx)
    impl = implementation(f"conv_{algo}", backend)
    if groups == 1:
        return impl.conv2d_backward(dy, x, w, stride, padding, n_threads, need_dx)
    if backend == "reference":
        return impl.conv2d_backward(dy, x, w, stride, padding, n_threads, need_dx,
                                    groups=groups)
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
    dw, db = np.empty(w.shape, dtype=x.dtype), np.empty(w.shape[0], dtype=x.dtype)
    for cs, ks in _group_slices(groups, x.shape[1], w.shape[0]):
        dx_g, dw[ks], db[ks] = impl.conv2d_backward(
            np.ascontiguousarray(dy[:, ks]), np.ascontiguousarray(x[:, cs]), w[ks],
            stride, padding, n_threads, need_dx)
        if need_dx:
            dx[:, cs] = dx_g
    return dx, dw, db


def conv2d(x, w, b=None, stride=1, padding=0, groups=1, algo="auto", backend=None):
    """2-D convolution (cross-correlation, as in PyTorch's ``conv2d``), notes eq. (conv.fwd).

    ``y[n, k, p, q] = b[k] + sum_{c, r, s} w[k, c, r, s] * x[n, c, p*sh + r - ph, q*sw + s - pw]``
    with x = 0 outside the image. The kernel is not flipped; a true (mathematical)
    convolution is ``conv2d(x, w[:, :, ::-1, ::-1])``. NaN and Inf propagate as in the
    formula, the padding's zeros included (0 * NaN = NaN), in every backend and algorithm.

    With ``groups`` = G (eq. (conv.groups), PyTorch's ``groups``), the C input and K output
    channels split into G consecutive slices and output channel k sees only the C/G input
    channels of its own slice g = k // (K/G): ``c`` above runs over ``g*C/G + c'``,
    c' < C/G, and w is (K, C/G, R, S). G = C is a depthwise convolution (one window per
    channel, K = m*C for m windows per channel), which ``algo="auto"`` runs on its own
    kernel.

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64
    w : ndarray (K, C/groups, R, S), same dtype
    b : ndarray (K,) or None
    stride, padding : int or (h, w)
    groups : int >= 1 dividing C and K
    algo : "direct", "im2col" or "auto" (the faster for the shape, see ``choose_conv_algo``)
    backend : "fast", "reference" or None (the default, see ``fastconv.set_backend``)

    Returns
    -------
    y : ndarray (N, K, P, Q), P = floor((H + 2*ph - R) / sh) + 1 (conv.out), likewise Q.
    """
    op = "conv2d"
    x, w, stride, padding, _, backend, algo = _conv_setup(op, x, w, stride, padding, groups,
                                                          algo, backend)
    if b is not None:
        b = _as_float_array(op, "b", b, dtype=x.dtype)
        if b.shape != (w.shape[0],):
            raise ValueError(f"{op}: b must have shape ({w.shape[0]},) for w of shape {w.shape}, "
                             f"got {b.shape}")
    with _threads.blas_single_thread():
        return _conv_forward(*_contiguous(x, w, b), stride, padding, groups, backend, algo)


def conv2d_backward(dy, x, w, stride=1, padding=0, groups=1, algo="auto", backend=None, *,
                    need_dx=True):
    """Gradients of :func:`conv2d`, notes eq. (conv.bwd).

    ``db[k] = sum_{n,p,q} dy[n,k,p,q]``;
    ``dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p*sh + r - ph, q*sw + s - pw]``;
    ``dx`` is the transposed convolution of dy with w (each dy value scatters back
    through the window that produced it).

    Parameters
    ----------
    dy : ndarray (N, K, P, Q), the gradient of the loss with respect to conv2d's output
    x, w, stride, padding, groups, algo, backend : as in :func:`conv2d`
    need_dx : bool, keyword only
        False skips dx, returned as None: a network's first layer (whose input is the data)
        needs only dw and db, and PyTorch skips it there too.

    Returns
    -------
    dx : (N, C, H, W) or None, dw : (K, C/groups, R, S), db : (K,), all of x's dtype
    """
    op = "conv2d_backward"
    x, w, stride, padding, y_shape, backend, algo = _conv_setup(op, x, w, stride, padding,
                                                                groups, algo, backend)
    dy = _as_float_array(op, "dy", dy, dtype=x.dtype)
    _check_dy(op, dy, y_shape)
    with _threads.blas_single_thread():
        return _conv_backward(*_contiguous(dy, x, w), stride, padding, groups, backend, algo,
                              bool(need_dx))


# --------------------------------------------------------------------------- pooling

def _pool_setup(op, x, kernel_size, stride, padding, backend):
    x = _as_float_array(op, "x", x)
    _check_ndim(op, "x", x, (4,), "4-D (N, C, H, W)")
    if min(x.shape) == 0:
        raise ValueError(f"{op}: empty arrays are not supported (x {x.shape})")
    kernel_size = _pair(op, "kernel_size", kernel_size, minimum=1)
    stride = kernel_size if stride is None else _pair(op, "stride", stride, minimum=1)
    padding = _pair(op, "padding", padding, minimum=0)
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise ValueError(f"{op}: padding {padding} must be at most half the window "
                         f"{kernel_size} (as in PyTorch)")
    P, Q = _output_shape(op, x.shape, kernel_size, stride, padding, "window")
    N, C, H, W = x.shape
    _check_int_sizes(op, **{"N*C": N * C, "H*W": H * W})
    return x, kernel_size, stride, padding, (N, C, P, Q), implementation("pool", resolve_backend(backend, op))


def max_pool2d(x, kernel_size, stride=None, padding=0, backend=None, *, return_indices=False):
    """Max pooling, notes eq. (pool.max): ``y[n,c,p,q] = max over the window of x``.

    Padding acts as -inf (it never wins the max). Parameters as :func:`avg_pool2d`.

    x : (N, C, H, W)  ->  y : (N, C, P, Q), P = floor((H + 2*ph - kh) / sh) + 1.
    ``stride`` defaults to ``kernel_size``; ``padding`` is at most half the window.

    return_indices : bool, keyword only
        Also return ``indices`` (N, C, P, Q) int64: the flat index ``ih*W + iw`` in its
        (n, c) plane of each window's argmax (the first maximum in row-major window order),
        as PyTorch's ``return_indices``, for :func:`max_pool2d_backward` to scatter to
        instead of finding the argmax again (what a training step does).
    """
    x, k, s, p, _, impl = _pool_setup("max_pool2d", x, kernel_size, stride, padding, backend)
    return impl.max_pool2d_forward(*_contiguous(x), k, s, p, _n_threads(), bool(return_indices))


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, backend=None, *,
                        indices=None):
    """Gradient of :func:`max_pool2d`: each dy goes to the window's maximum.

    On ties the gradient goes to the first maximum in row-major window order (as PyTorch).
    dy : (N, C, P, Q), x : (N, C, H, W)  ->  dx : (N, C, H, W).
    indices : (N, C, P, Q) integers, keyword only: the argmaxes
    ``max_pool2d(..., return_indices=True)`` returned, used instead of recomputing them
    from x (PyTorch's backward uses the ones its forward saved). An index outside its
    plane raises ValueError.
    """
    op = "max_pool2d_backward"
    x, k, s, p, y_shape, impl = _pool_setup(op, x, kernel_size, stride, padding, backend)
    dy = _as_float_array(op, "dy", dy, dtype=x.dtype)
    _check_dy(op, dy, y_shape)
    if indices is not None:
        indices = np.asarray(indices)
        if indices.dtype.kind not in "iu":
            raise TypeError(f"{op}: indices must be integers (max_pool2d(..., "
                            f"return_indices=True)), got dtype {indices.dtype}")
        if indices.shape != dy.shape:
            raise ValueError(f"{op}: indices must have dy's shape {dy.shape}, got "
                             f"{indices.shape}")
        indices = _kernel_ready(indices.astype(np.int64, copy=False))
    return impl.max_pool2d_backward(*_contiguous(dy, x), k, s, p, _n_threads(), indices)


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True, backend=None):
    """Average pooling, notes eq. (pool.avg): the mean of each window.

    With ``count_include_pad=True`` (PyTorch's default) padded zeros count in the mean, so
    every window divides by kh*kw; otherwise only the input cells inside the window count.
    Global average pooling is ``avg_pool2d(x, x.shape[2:])``.

    x : (N, C, H, W)  ->  y : (N, C, P, Q), P = floor((H + 2*ph - kh) / sh) + 1.
    ``stride`` defaults to ``kernel_size``; ``padding`` is at most half the window.
    """
    x, k, s, p, _, impl = _pool_setup("avg_pool2d", x, kernel_size, stride, padding, backend)
    return impl.avg_pool2d_forward(*_contiguous(x), k, s, p, bool(count_include_pad), _n_threads())


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, count_include_pad=True,
                        backend=None):
    """Gradient of :func:`avg_pool2d`: each dy spreads evenly over its window.

    dy : (N, C, P, Q), x : (N, C, H, W) (only its shape and dtype are used)  ->  dx like x.
    """
    op = "avg_pool2d_backward"
    x, k, s, p, y_shape, impl = _pool_setup(op, x, kernel_size, stride, padding, backend)
    dy = _as_float_array(op, "dy", dy, dtype=x.dtype)
    _check_dy(op, dy, y_shape)
    return impl.avg_pool2d_backward(*_contiguous(dy, x), k, s, p, bool(count_include_pad),
                                    _n_threads())


# --------------------------------------------------------------------------- batch norm

def _bn_setup(op, x, eps, backend):
    """x as 4-D (N, C, H, W): an (N, C) input is viewed as (N, C, 1, 1)."""
    x = _as_float_array(op, "x", x)
    if x.ndim == 4:
        x4 = x
    else:
        _check_ndim(op, "x", x, (2,), "2-D (N, C) or 4-D (N, C, H, W)")
        x4 = x.reshape(x.shape[0], x.shape[1], 1, 1)
    N, C, H, W = x4.shape
    if not (N and C and H and W):
        raise ValueError(f"{op}: empty arrays are not supported (x {x.shape})")
    if not (isinstance(eps, (float, int, np.floating)) and eps > 0):
        raise ValueError(f"{op}: eps must be a positive number, got {eps!r}")
    if C > _INT_MAX or N * H * W > _INT_MAX:
        _check_int_sizes(op, C=C, **{"N*H*W": N * H * W})
    return x, x4, float(eps), implementation("batchnorm", resolve_backend(backend, op))


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
    x : (N, C, H, W) or (N, C)
    gamma, beta : (C,) or None (None means 1 and 0: no affine transform)
    running_mean, running_var : (C,) float ndarrays, or None in training mode (not tracked)
    training : bool
    momentum : float in [0, 1]; eps : float > 0
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
        if M < 2:
            raise ValueError(f"{op}: training needs more than one value per channel, got x of "
                             f"shape {x.shape}")
        y, mean, var = impl.batch_norm_train_forward(*_contiguous(x4, gamma, beta), eps,
                                                     _n_threads())
        _update_running(impl, running_mean, running_var, mean, var, momentum, M)
    else:
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
        y = impl.batch_norm_eval_forward(*_contiguous(x4, gamma, beta, mean, var), eps,
                                         _n_threads())
    if x.ndim == 2:
        y = y.reshape(x.shape)
    return (y, mean, var) if return_stats else y


def batch_norm_backward(dy, x, gamma, eps=1e-5, backend=None, *, mean=None, var=None):
    """Gradients of training-mode :func:`batch_norm`, notes eq. (bn.bwd).

    With M = N*H*W values per channel and x_hat, var the batch statistics:
    ``dbeta = sum dy``, ``dgamma = sum dy * x_hat``,
    ``dx = gamma / (M * sqrt(var + eps)) * (M * dy - sum dy - x_hat * sum(dy * x_hat))``.

    dy, x : (N, C, H, W) or (N, C); gamma : (C,) or None  ->  dx like x, dgamma (C,), dbeta (C,).
    mean, var : (C,), keyword only: the batch statistics of the forward pass
    (``batch_norm(..., return_stats=True)``), used instead of being recomputed from x, as
    PyTorch's backward uses the ones its forward saved. Give both or neither.
    """
    op = "batch_norm_backward"
    x, x4, eps, impl = _bn_setup(op, x, eps, backend)
    dy = _as_float_array(op, "dy", dy, dtype=x.dtype)
    _check_dy(op, dy, x.shape)
    gamma = _bn_param(op, "gamma", gamma, x4.shape[1], x.dtype, 1.0)
    if x4.shape[0] * x4.shape[2] * x4.shape[3] < 2:
        raise ValueError(f"{op}: training needs more than one value per channel, got x of "
                         f"shape {x.shape}")
    if (mean is None) != (var is None):
        raise ValueError(f"{op}: give both saved statistics mean and var, or neither")
    if mean is not None:
        mean = _saved_stat(op, "mean", mean, x4.shape[1])
        var = _saved_stat(op, "var", var, x4.shape[1])
    dy4, x4, gamma = _contiguous(dy.reshape(x4.shape) if dy.ndim == 2 else dy, x4, gamma)
    dx, dgamma, dbeta = impl.batch_norm_backward(dy4, x4, gamma, eps, _n_threads(), mean, var)
    return (dx.reshape(x.shape) if x.ndim == 2 else dx), dgamma, dbeta


# --------------------------------------------------------------------------- fully connected

def _linear_setup(op, x, w):
    x, w = _input_and_weight(op, x, w, 2, "2-D (N, in_features)",
                             "2-D (out_features, in_features)", "input features")
    if min(x.shape) == 0 or min(w.shape) == 0:
        raise ValueError(f"{op}: empty arrays are not supported (x {x.shape}, w {w.shape})")
    _check_int_sizes(op, N=x.shape[0], in_features=x.shape[1], out_features=w.shape[0])
    return x, w


def linear(x, w, b=None, backend=None):
    """Fully connected layer, notes eq. (linear.fwd): ``y = x @ w.T + b``, as PyTorch's
    ``torch.nn.functional.linear``.

    The fast kernel shares the product among the OpenMP threads (blocks of rows, each a
    single-threaded GEMM), where NumPy's ``x @ w.T`` of a small layer runs on one thread.

    Parameters
    ----------
    x : ndarray (N, in_features), float32 or float64
    w : ndarray (out_features, in_features), same dtype
    b : ndarray (out_features,) or None
    backend : "fast", "reference" or None

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
    with _threads.blas_single_thread():
        return impl.linear_forward(*_contiguous(x, w, b), _n_threads())


def linear_backward(dy, x, w, backend=None, *, need_dx=True):
    """Gradients of :func:`linear`, notes eq. (linear.bwd):
    ``dx = dy @ w``, ``dw = dy.T @ x``, ``db = dy.sum(axis=0)``.

    Parameters
    ----------
    dy : ndarray (N, out_features);  x, w, backend : as in :func:`linear`
    need_dx : bool, keyword only
        False skips dx, returned as None (a network's first layer).

    Returns
    -------
    dx : (N, in_features) or None, dw : (out_features, in_features), db : (out_features,)
    """
    op = "linear_backward"
    x, w = _linear_setup(op, x, w)
    dy = _as_float_array(op, "dy", dy, dtype=x.dtype)
    _check_dy(op, dy, (x.shape[0], w.shape[0]))
    impl = implementation("linear", resolve_backend(backend, op))
    with _threads.blas_single_thread():
        return impl.linear_backward(*_contiguous(dy, x, w), _n_threads(), bool(need_dx))


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
    impl.relu_forward(_contiguous(x)[0].reshape(-1), y.reshape(-1), _n_threads())
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

    dy, x : (N, C, H, W) or (N, C); gamma : (C,) or None; running_mean, running_var : (C,)
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
