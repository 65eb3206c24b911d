"""Checks for the tutorials' "implement it yourself" exercises.

Each ``check_<name>(your_function)`` runs your function on fixed and random inputs, compares
the result with fastconv's own answer (the NumPy reference ops, ``fastconv.summary``, the
layers and the optimiser), prints one line per case with the relative error, and a verdict::

    >>> from fastconv.exercises import check_conv_output_size
    >>> def conv_output_size(size, kernel, stride, padding):
    ...     return (size + 2 * padding - kernel) // stride + 1
    >>> result = check_conv_output_size(conv_output_size)   # doctest: +ELLIPSIS
    check_conv_output_size: conv_output_size against fastconv's answer on 9 cases
      size 28, kernel 5, stride 1, padding 2    ok    rel. error 0.0e+00
    ...
    PASS: all 9 cases exact.
    >>> bool(result)
    True

The relative error of two arrays is CS231n's ``max |a - b| / max(1e-8, |a| + |b|)``; a case
passes when it is below ``tol`` (1e-6: your float64 loops should reach about 1e-15). A
function that still raises ``NotImplementedError`` is reported as "not implemented yet"
(nothing fails, so a notebook with empty exercises runs top to bottom); any other exception
is a failed case, with its message. Your function gets copies of the inputs; a case also
fails if your function changed them (a layer must not overwrite its input).

Every check returns a :class:`CheckResult`, true when every case passed.
"""
import numpy as np

__all__ = ["CheckResult", "rel_error",
           "check_conv_output_size", "check_conv2d_forward",
           "check_max_pool2d_backward", "check_receptive_field",
           "check_batch_norm_forward", "check_batch_norm_backward", "check_fold_batchnorm",
           "check_cross_entropy_backward", "check_sgd_momentum_step",
           "check_conv_params_macs", "check_im2col",
           "check_layer_lrs", "check_box_iou"]

TOL = 1e-6


def rel_error(a, b):
    """CS231n's relative error: ``max |a - b| / max(1e-8, |a| + |b|)`` (0 for empty arrays)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


class CheckResult:
    """The outcome of one ``check_*``: ``status`` is "pass", "fail" or "not implemented";
    ``cases`` holds ``(description, relative error or None, passed, note)``; true only when
    every case passed."""

    def __init__(self, name, status, cases=()):
        self.name, self.status, self.cases = name, status, list(cases)

    def __bool__(self):
        return self.status == "pass"

    @property
    def max_error(self):
        errors = [e for _, e, _, _ in self.cases if e is not None]
        return max(errors) if errors else None

    def _ipython_display_(self):
        """In a notebook the report is already printed: show nothing more (no ``Out[n]``)."""

    def __repr__(self):
        if self.status == "not implemented":
            return f"<{self.name}: not implemented yet>"
        passed = sum(ok for _, _, ok, _ in self.cases)
        return f"<{self.name}: {self.status}, {passed}/{len(self.cases)} cases passed>"


class _Case:
    """One comparison: ``args`` go to the student's function (as copies), ``expected`` is the
    right answer (an array, a number or a tuple of them); ``call(fn, *args)``, when given,
    runs the function instead (e.g. several optimiser steps)."""

    def __init__(self, description, args, expected, call=None):
        self.description, self.args, self.expected = description, args, expected
        self.call = call


def _copy(v):
    return v.copy() if isinstance(v, np.ndarray) else v


def _compare(got, expected):
    """(relative error or None, note); note is "" when the answer has the right structure."""
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return None, f"expected a tuple of {len(expected)} values, got {type(got).__name__}"
        errors = []
        for i, (g, e) in enumerate(zip(got, expected)):
            err, note = _compare(g, e)
            if note:
                return None, f"value {i}: {note}"
            errors.append(err)
        return max(errors), ""
    if got is None:
        return None, "got None: did you forget to return the result?"
    try:
        got_arr = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        return None, f"expected numbers, got {type(got).__name__}"
    exp_arr = np.asarray(expected, dtype=np.float64)
    if got_arr.shape != exp_arr.shape:
        return None, f"shape {got_arr.shape}, expected {exp_arr.shape}"
    return rel_error(got_arr, exp_arr), ""


def _run(name, fn, cases, tol=TOL, verbose=True):
    say = print if verbose else (lambda *a, **k: None)
    fn_name = getattr(fn, "__name__", "your function")
    say(f"{name}: {fn_name} against fastconv's answer on {len(cases)} cases")
    results = []
    width = max(len(c.description) for c in cases)
    for case in cases:
        args = [_copy(a) for a in case.args]
        try:
            got = case.call(fn, *args) if case.call else fn(*args)
        except NotImplementedError:
            say(f"not implemented yet: {fn_name} raises NotImplementedError. "
                "Write its body, then run this cell again.")
            return CheckResult(name, "not implemented")
        except Exception as exc:                    # the student's bug, shown, not raised
            results.append((case.description, None, False, f"raised {type(exc).__name__}: {exc}"))
            say(f"  {case.description:<{width}}  FAIL  raised {type(exc).__name__}: {exc}")
            continue
        err, note = _compare(got, case.expected)
        if not note and any(isinstance(a, np.ndarray) and not np.array_equal(a, b, equal_nan=True)
                            for a, b in zip(case.args, args)):
            note = "changed its input arrays (work on copies)"
        ok = not note and err <= tol
        results.append((case.description, err, ok, note))
        shown = note if note else f"rel. error {err:.1e}"
        say(f"  {case.description:<{width}}  {'ok  ' if ok else 'FAIL'}  {shown}")
    failed = [r for r in results if not r[2]]
    status = "fail" if failed else "pass"
    rule = "only when exact" if tol == 0 else f"below {tol:.0e}"
    if failed:
        say(f"FAIL: {len(failed)} of {len(results)} cases wrong (a case passes {rule}).")
    else:
        say(f"PASS: all {len(results)} cases " + ("exact." if tol == 0 else f"within {tol:.0e}."))
    return CheckResult(name, status, results)


def _rng(seed):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- convolution

def check_conv_output_size(fn, verbose=True):
    """``fn(size, kernel, stride, padding) -> int``: the output size of a convolution,
    ``floor((size + 2*padding - kernel) / stride) + 1``, checked against ``fastconv.functional``
    on cases where rounding up (the ceil some notes write) gives a different answer."""
    from .functional import conv_output_size
    params = [(28, 5, 1, 2), (28, 5, 1, 0), (32, 3, 2, 1), (7, 3, 2, 0), (8, 3, 2, 0),
              (227, 11, 4, 0), (224, 7, 2, 3), (5, 5, 1, 0), (10, 4, 3, 1)]
    cases = [_Case(f"size {s}, kernel {k}, stride {st}, padding {p}", (s, k, st, p),
                   float(conv_output_size(s, k, st, p))) for s, k, st, p in params]
    return _run("check_conv_output_size", fn, cases, tol=0.0, verbose=verbose)


def _conv_case(rng, N, C, H, W, K, R, S, stride, padding):
    from . import functional as F
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C, R, S))
    b = rng.standard_normal(K)
    y = F.conv2d(x, w, b, stride=stride, padding=padding, backend="reference")
    return (x, w, b, stride, padding), y


def check_conv2d_forward(fn, verbose=True):
    """``fn(x, w, b, stride, padding) -> y``: a convolution layer's forward pass (PyTorch's
    cross-correlation, zero padding, the same stride and padding on both axes).

    x (N, C, H, W), w (K, C, R, S), b (K,), stride and padding ints -> y (N, K, P, Q).
    Checked against ``fastconv.functional.conv2d(..., backend="reference")``.
    """
    from . import functional as F
    rng = _rng(0)
    cases = []
    edge = np.zeros((1, 1, 6, 6))
    edge[..., 3:] = 1.0
    kernel = np.array([[[[1.0, 0.0, -1.0]] * 3]])
    cases.append(_Case("vertical edge kernel, 1x1x6x6, no padding", (edge, kernel, np.zeros(1), 1, 0),
                       F.conv2d(edge, kernel, np.zeros(1), backend="reference")))
    shapes = [((2, 3, 7, 7, 4, 3, 3), 1, 1, "padding 1"),
              ((2, 3, 8, 8, 4, 3, 3), 2, 1, "stride 2, padding 1"),
              ((1, 2, 7, 9, 3, 3, 3), 2, 0, "odd sizes, stride 2"),
              ((2, 1, 6, 6, 2, 5, 5), 1, 2, "5x5 kernel, padding 2"),
              ((3, 4, 5, 6, 2, 2, 3), 1, 0, "2x3 kernel"),
              ((2, 3, 6, 6, 5, 1, 1), 1, 0, "1x1 kernel")]
    for (N, C, H, W, K, R, S), stride, padding, what in shapes:
        args, y = _conv_case(rng, N, C, H, W, K, R, S, stride, padding)
        cases.append(_Case(f"{what}: x {(N, C, H, W)}, w {(K, C, R, S)}", args, y))
    for i in range(2):
        N, C, K = (int(v) for v in rng.integers(1, 4, size=3))
        R = int(rng.integers(1, 5))
        H, W = (int(v) for v in rng.integers(R, 10, size=2))
        stride, padding = int(rng.integers(1, 3)), int(rng.integers(0, R // 2 + 1))
        args, y = _conv_case(rng, N, C, H, W, K, R, R, stride, padding)
        cases.append(_Case(f"random {i + 1}: x {(N, C, H, W)}, {R}x{R}, s{stride} p{padding}", args, y))
    return _run("check_conv2d_forward", fn, cases, verbose=verbose)


def check_im2col(fn, verbose=True):
    """``fn(x, R, S, stride, padding) -> col``: the im2col matrix of each image,
    col (N, C*R*S, P*Q) with ``col[n, (c*R + r)*S + s, p*Q + q] = xpad[n, c, p*stride + r,
    q*stride + s]``, so that ``w.reshape(K, C*R*S) @ col[n]`` is image n's convolution.

    The expected matrix comes from a convolution with one-hot kernels (one per row of col):
    each kernel picks one tap (c, r, s), so its output map is that row of the matrix.
    """
    from . import functional as F
    rng = _rng(1)
    cases = []
    for N, C, H, W, R, S, stride, padding in [(1, 1, 4, 4, 2, 2, 1, 0), (2, 3, 5, 5, 3, 3, 1, 1),
                                              (1, 2, 7, 6, 3, 2, 2, 0), (2, 2, 6, 6, 3, 3, 2, 1)]:
        x = rng.standard_normal((N, C, H, W))
        eye = np.eye(C * R * S).reshape(C * R * S, C, R, S)
        y = F.conv2d(x, eye, stride=stride, padding=padding, backend="reference")
        cases.append(_Case(f"x {(N, C, H, W)}, {R}x{S}, stride {stride}, padding {padding}",
                           (x, R, S, stride, padding), y.reshape(N, C * R * S, -1)))
    return _run("check_im2col", fn, cases, verbose=verbose)


# --------------------------------------------------------------------------- pooling

def check_max_pool2d_backward(fn, verbose=True):
    """``fn(dy, x, kernel_size, stride) -> dx``: max pooling's backward pass, no padding.

    Each dy[n, c, p, q] goes to the maximum of its window; of tied maxima, to the first in
    row-major order (PyTorch's rule); where windows overlap (stride < kernel_size) an input
    can win several windows and collects the sum. Checked against
    ``fastconv.functional.max_pool2d_backward(..., backend="reference")``.
    """
    from . import functional as F
    rng = _rng(2)
    cases = []

    def add(what, x, k, s):
        out = F.max_pool2d(x, k, s, backend="reference")
        dy = rng.standard_normal(out.shape)
        dx = F.max_pool2d_backward(dy, x, k, s, backend="reference")
        cases.append(_Case(f"{what}: x {x.shape}, kernel {k}, stride {s}", (dy, x, k, s), dx))

    add("2x2 windows", rng.standard_normal((2, 3, 6, 6)), 2, 2)
    add("odd size, a row left over", rng.standard_normal((1, 2, 7, 7)), 2, 2)
    add("overlapping 3x3, stride 2", rng.standard_normal((2, 2, 7, 7)), 3, 2)
    add("overlapping 3x3, stride 1", rng.standard_normal((1, 1, 5, 5)), 3, 1)
    add("ties: an all-zero image", np.zeros((1, 1, 4, 4)), 2, 2)
    ties = rng.integers(0, 3, size=(2, 2, 6, 6)).astype(np.float64)   # many tied maxima
    add("ties: small integers", ties, 2, 2)
    add("ties with overlapping 3x3, stride 2", rng.integers(0, 2, size=(1, 2, 7, 7)).astype(float), 3, 2)
    return _run("check_max_pool2d_backward", fn, cases, verbose=verbose)


def check_receptive_field(fn, verbose=True):
    """``fn(layers) -> sizes``: the receptive field of each layer of a stack of convolutions
    and poolings, ``layers`` a list of ``(kernel_size, stride)``, ``sizes`` the field (in input
    pixels) of one unit after each layer: ``r_l = r_(l-1) + (k_l - 1) * j_(l-1)`` with the
    jump ``j_l = j_(l-1) * s_l``, ``r_0 = 1``, ``j_0 = 1``.

    Checked against ``fastconv.summary`` on a network built from those layers.
    """
    from . import nn
    from .summary import summary
    stacks = {"one 3x3 conv": [(3, 1)],
              "three 3x3 convs (VGG: a 7x7 field)": [(3, 1)] * 3,
              "LeNet-5: conv5, pool2, conv5, pool2": [(5, 1), (2, 2), (5, 1), (2, 2)],
              "VGG block pair": [(3, 1), (3, 1), (2, 2), (3, 1), (3, 1), (2, 2)],
              "AlexNet features": [(11, 4), (3, 2), (5, 1), (3, 2), (3, 1), (3, 1), (3, 1), (3, 2)],
              "ResNet stem and a stride-2 conv": [(7, 2), (3, 2), (3, 1), (3, 2), (3, 1)]}
    rng = _rng(3)
    for i in range(2):
        stacks[f"random {i + 1}"] = [(int(rng.integers(1, 6)), int(rng.integers(1, 3)))
                                     for _ in range(int(rng.integers(2, 6)))]
    cases = []
    for what, layers in stacks.items():
        size = 1
        for k, s in reversed(layers):                  # the smallest input every layer fits
            size = (size - 1) * s + k
        net = nn.Sequential(*[nn.Conv2d(1, 1, k, stride=s, dtype=np.float64) for k, s in layers])
        rows = summary(net, (1, size, size), print_fn=None).rows
        sizes = [r["rf"][0][0] for r in rows if r["rf"] is not None and r["depth"] == 0]
        cases.append(_Case(what, (list(layers),), np.array(sizes, dtype=np.float64)))
    return _run("check_receptive_field", fn, cases, tol=0.0, verbose=verbose)


# --------------------------------------------------------------------------- batch norm

def _bn_inputs(rng, shape, scale=1.0, shift=0.0):
    C = shape[1]
    x = shift + scale * rng.standard_normal(shape)
    return x, rng.standard_normal(C) + 1.0, rng.standard_normal(C)


_BN_SHAPES = [("(N, C, H, W) = (4, 3, 5, 5)", (4, 3, 5, 5), 1.0, 0.0),
              ("small batch (2, 2, 2, 2): biased variance matters", (2, 2, 2, 2), 1.0, 0.0),
              ("shifted, scaled inputs", (3, 4, 3, 3), 5.0, 3.0),
              ("one image (1, 3, 4, 4)", (1, 3, 4, 4), 1.0, 0.0),
              ("fully connected (N, C) = (8, 5)", (8, 5), 1.0, 0.0)]


def check_batch_norm_forward(fn, eps=1e-5, verbose=True):
    """``fn(x, gamma, beta, eps) -> y``: batch normalisation in training mode, per channel
    over N (and H, W): ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with the batch's
    mean and its *biased* variance (divided by M = N*H*W, not M - 1).

    x (N, C, H, W) or (N, C); gamma, beta (C,). Checked against
    ``fastconv.functional.batch_norm(..., training=True, backend="reference")``.
    """
    from . import functional as F
    rng = _rng(4)
    cases = []
    for what, shape, scale, shift in _BN_SHAPES:
        x, gamma, beta = _bn_inputs(rng, shape, scale, shift)
        y = F.batch_norm(x, gamma, beta, None, None, training=True, eps=eps, backend="reference")
        cases.append(_Case(what, (x, gamma, beta, eps), y))
    return _run("check_batch_norm_forward", fn, cases, verbose=verbose)


def check_batch_norm_backward(fn, eps=1e-5, verbose=True):
    """``fn(dy, x, gamma, eps) -> (dx, dgamma, dbeta)``: the backward pass of
    :func:`check_batch_norm_forward`'s function (training mode: the mean and variance depend on
    x, so dx has three terms). Checked against
    ``fastconv.functional.batch_norm_backward(..., backend="reference")``.
    """
    from . import functional as F
    rng = _rng(5)
    cases = []
    for what, shape, scale, shift in _BN_SHAPES:
        x, gamma, _ = _bn_inputs(rng, shape, scale, shift)
        dy = rng.standard_normal(shape)
        expected = F.batch_norm_backward(dy, x, gamma, eps=eps, backend="reference")
        cases.append(_Case(what, (dy, x, gamma, eps), tuple(expected)))
    return _run("check_batch_norm_backward", fn, cases, verbose=verbose)


def check_fold_batchnorm(fn, eps=1e-5, verbose=True):
    """``fn(w, b, gamma, beta, mean, var, eps) -> (w_folded, b_folded)``: fold an eval-mode
    BatchNorm (running ``mean``, ``var``) into the convolution before it, so that
    ``conv(x, w_folded, b_folded) == bn(conv(x, w, b))``.

    w (K, C, R, S), b and the BN vectors (K,). Checked against ``fastconv.nn.fold_batchnorm``
    on a Conv2d followed by a BatchNorm2d.
    """
    from . import nn
    rng = _rng(6)
    cases = []
    for what, (K, C, R) in [("3x3 conv, 4 channels", (4, 2, 3)), ("1x1 conv", (3, 3, 1)),
                            ("5x5 conv, 6 channels", (6, 1, 5))]:
        conv = nn.Conv2d(C, K, R, dtype=np.float64, rng=rng)
        conv.bias.data[...] = rng.standard_normal(K)
        bn = nn.BatchNorm2d(K, eps=eps, dtype=np.float64)
        bn.weight.data[...] = rng.standard_normal(K) + 1.0
        bn.bias.data[...] = rng.standard_normal(K)
        bn.running_mean[...] = rng.standard_normal(K)
        bn.running_var[...] = rng.uniform(0.2, 3.0, K)
        args = (conv.weight.data.copy(), conv.bias.data.copy(), bn.weight.data.copy(),
                bn.bias.data.copy(), bn.running_mean.copy(), bn.running_var.copy(), eps)
        folded = nn.fold_batchnorm(nn.Sequential(conv, bn))
        fconv = folded[0]
        cases.append(_Case(what, args, (fconv.weight.data.copy(), fconv.bias.data.copy())))
    return _run("check_fold_batchnorm", fn, cases, verbose=verbose)


# --------------------------------------------------------------------------- training

def check_cross_entropy_backward(fn, verbose=True):
    """``fn(logits, labels) -> dlogits``: the gradient of the mean softmax cross-entropy,
    ``(softmax(logits) - onehot(labels)) / N``; logits (N, classes), labels (N,) ints.
    Checked against ``fastconv.nn.CrossEntropyLoss``; one case has logits near 1000, where
    exp overflows unless you subtract each row's maximum first."""
    from .nn import CrossEntropyLoss
    rng = _rng(7)
    cases = []
    for what, N, K, scale, shift in [("4 images, 10 classes", 4, 10, 1.0, 0.0),
                                     ("1 image, 3 classes", 1, 3, 1.0, 0.0),
                                     ("64 images, confident logits", 64, 10, 10.0, 0.0),
                                     ("large logits (about 1000)", 8, 5, 1.0, 1000.0)]:
        logits = shift + scale * rng.standard_normal((N, K))
        labels = rng.integers(0, K, size=N)
        loss = CrossEntropyLoss()
        loss.forward(logits, labels)
        cases.append(_Case(what, (logits, labels), loss.backward()))
    return _run("check_cross_entropy_backward", fn, cases, verbose=verbose)


def check_sgd_momentum_step(fn, verbose=True):
    """``fn(w, dw, v, lr, momentum, weight_decay) -> (w_new, v_new)``: one step of SGD with
    momentum and weight decay, PyTorch's form::

        g = dw + weight_decay * w
        v_new = momentum * v + g
        w_new = w - lr * v_new

    Checked by running your step for several steps from ``v = 0`` (so that the first step is
    plain SGD) against ``fastconv.optim.SGD`` fed the same gradients.
    """
    from .nn import Parameter
    from .optim import SGD
    rng = _rng(8)
    cases = []
    for what, shape, lr, mom, wd, steps in [("1 step, no momentum", (5,), 0.1, 0.0, 0.0, 1),
                                            ("3 steps, momentum 0.9", (3, 4), 0.05, 0.9, 0.0, 3),
                                            ("4 steps, momentum 0.9, weight decay 5e-4",
                                             (2, 3, 3), 0.1, 0.9, 5e-4, 4),
                                            ("2 steps, momentum 0.5, weight decay 0.1",
                                             (6,), 0.5, 0.5, 0.1, 2)]:
        w0 = rng.standard_normal(shape)
        grads = [rng.standard_normal(shape) for _ in range(steps)]
        p = Parameter(w0.copy())
        opt = SGD([p], lr=lr, momentum=mom, weight_decay=wd)
        for g in grads:
            p.grad[...] = g
            opt.step()
        expected = p.data.copy()

        cases.append(_Case(what, (w0, grads, lr, mom, wd), expected, call=_sgd_steps))
    return _run("check_sgd_momentum_step", fn, cases, verbose=verbose)


def _sgd_steps(fn, w0, grads, lr, momentum, weight_decay):
    """The student's step applied once per gradient, from v = 0; returns the last weights."""
    w, v = w0, np.zeros_like(w0)
    for g in grads:
        w, v = fn(w, g.copy(), v, lr, momentum, weight_decay)
    return w


# --------------------------------------------------------------------------- architectures

def check_conv_params_macs(fn, verbose=True):
    """``fn(in_channels, out_channels, kernel_size, out_size) -> (params, macs)``: the number
    of parameters of a square convolution with bias, ``K * (C * R * R + 1)``, and its
    multiply-adds for one image whose output is ``out_size x out_size``,
    ``K * C * R * R * P * P``. Checked against ``fastconv.summary``."""
    from . import nn
    from .summary import summary
    cases = []
    for what, (C, K, R, P) in [("LeNet-5 conv1", (1, 6, 5, 28)), ("LeNet-5 conv2", (6, 16, 5, 10)),
                               ("a VGG 3x3 conv", (64, 128, 3, 16)), ("a NiN 1x1 conv", (192, 96, 1, 8)),
                               ("AlexNet conv1 (227x227 input)", (3, 96, 11, 55))]:
        s = summary(nn.Conv2d(C, K, R), (C, P + R - 1, P + R - 1), print_fn=None)
        cases.append(_Case(what, (C, K, R, P), (float(s.total_params), float(s.total_macs))))
    return _run("check_conv_params_macs", fn, cases, tol=0.0, verbose=verbose)


# --------------------------------------------------------------------------- fine-tuning

def check_layer_lrs(fn, verbose=True):
    """``fn(layers, lrs) -> list``: differential learning rates, one per layer. ``layers`` are
    a model's top-level layers with parameters, in order (input first); ``lrs`` one learning
    rate per layer group, earliest group first. Cut ``layers`` into ``len(lrs)`` contiguous
    groups of nearly equal length, the first groups one layer longer when the division is
    not even (numpy's ``array_split``), and return the LR of each layer's group.

    Checked against ``fastconv.optim.param_groups`` (with ``model.layer_groups``) on
    LeNet-5, ResNet-20 and GoogLeNet.
    """
    from . import models
    from .optim import param_groups
    cases = []
    for name, lrs in [("lenet5", [1e-3, 1e-2, 1e-1]), ("lenet5", [0.01, 0.1]),
                      ("lenet5", [1e-4, 1e-3, 1e-2, 1e-1, 1.0]), ("resnet20", [1e-3, 1e-2, 1e-1]),
                      ("resnet20", [0.001, 0.003, 0.01, 0.03]), ("googlenet", [1e-3, 1e-2, 1e-1]),
                      ("googlenet", [0.05, 0.1, 0.2, 0.4])]:
        model = models.get_model(name, seed=0)
        layers = [n for n, m in model.children() if m.parameters()]
        lr_of = {id(p): g["lr"] for g in param_groups(model, lrs) for p in g["params"]}
        expected = np.array([lr_of[id(getattr(model, n).parameters()[0])] for n in layers])
        cases.append(_Case(f"{name}, {len(layers)} layers, {len(lrs)} groups", (layers, lrs), expected))
    return _run("check_layer_lrs", fn, cases, tol=0.0, verbose=verbose)


def check_box_iou(fn, verbose=True):
    """``fn(pred, target) -> iou``: the intersection over union of each pair of boxes,
    pred and target (N, 4) rows (x0, y0, x1, y1) in pixels, x1 and y1 one past the last
    column and row (so a box is x1 - x0 wide); iou (N,). The intersection of two boxes that
    do not overlap is empty (0), whichever way they miss; a box with x1 < x0 is empty.

    Checked against ``fastconv.train.box_iou``, one pair at a time.
    """
    from .train import box_iou
    rng = _rng(9)
    pairs = {"the same box": ([4, 2, 24, 26], [4, 2, 24, 26]),
             "a box inside the other": ([8, 8, 16, 16], [4, 2, 24, 26]),
             "overlapping corners": ([0, 0, 10, 10], [5, 5, 15, 15]),
             "side by side, touching": ([0, 0, 10, 10], [10, 0, 20, 10]),
             "apart on both axes (diagonal)": ([0, 0, 5, 5], [10, 10, 20, 20]),
             "apart on one axis only": ([0, 0, 5, 20], [10, 5, 20, 15]),
             "predicted box turned inside out": ([20, 20, 5, 5], [0, 0, 28, 28])}
    cases = [_Case(what, (np.array([p], float), np.array([t], float)), np.array([box_iou([p], [t])]))
             for what, (p, t) in pairs.items()]
    for i in range(2):
        corner = rng.uniform(0, 12, size=(6, 2, 2))
        size = rng.uniform(2, 16, size=(6, 2, 2))
        boxes = np.concatenate([corner, corner + size], axis=2)        # (6, pred/target, 4)
        pred, target = boxes[:, 0], boxes[:, 1]
        expected = np.array([box_iou(p[None], t[None]) for p, t in zip(pred, target)])
        cases.append(_Case(f"random {i + 1}: 6 pairs of boxes", (pred, target), expected))
    return _run("check_box_iou", fn, cases, verbose=verbose)
