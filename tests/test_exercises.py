"""The tutorials' exercise checks: a right answer passes, a subtly wrong one fails, an
unwritten one (NotImplementedError) is reported as not implemented, never as a crash."""
import numpy as np
import pytest

from fastconv import exercises as ex


# --------------------------------------------------------------------------- right answers
# (written here, not in the notebooks: the students write their own)

def conv_output_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def conv2d_forward(x, w, b, stride, padding, pad_extra=0, flip=False):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    if flip:
        w = w[:, :, ::-1, ::-1]
    p = padding + pad_extra
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    P = (H + 2 * padding - R) // stride + 1
    Q = (W + 2 * padding - S) // stride + 1
    y = np.zeros((N, K, P, Q))
    for n in range(N):
        for k in range(K):
            for i in range(P):
                for j in range(Q):
                    patch = xp[n, :, i * stride:i * stride + R, j * stride:j * stride + S]
                    y[n, k, i, j] = np.sum(patch * w[k]) + b[k]
    return y


def im2col(x, R, S, stride, padding):
    N, C, H, W = x.shape
    P = (H + 2 * padding - R) // stride + 1
    Q = (W + 2 * padding - S) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    col = np.zeros((N, C * R * S, P * Q))
    for c in range(C):
        for r in range(R):
            for s in range(S):
                col[:, (c * R + r) * S + s] = xp[:, c, r:r + stride * P:stride,
                                                 s:s + stride * Q:stride].reshape(N, -1)
    return col


def max_pool2d_backward(dy, x, kernel_size, stride, tie="first"):
    dx = np.zeros_like(x)
    N, C, P, Q = dy.shape
    k = kernel_size
    for n in range(N):
        for c in range(C):
            for i in range(P):
                for j in range(Q):
                    win = x[n, c, i * stride:i * stride + k, j * stride:j * stride + k]
                    if tie == "split":
                        mask = win == win.max()
                        dx[n, c, i * stride:i * stride + k, j * stride:j * stride + k] += \
                            dy[n, c, i, j] * mask / mask.sum()
                        continue
                    flat = win.ravel()
                    a = int(np.argmax(flat)) if tie == "first" else len(flat) - 1 - int(np.argmax(flat[::-1]))
                    r, s = divmod(a, k)
                    if tie == "overwrite":
                        dx[n, c, i * stride + r, j * stride + s] = dy[n, c, i, j]
                    else:
                        dx[n, c, i * stride + r, j * stride + s] += dy[n, c, i, j]
    return dx


def receptive_field(layers):
    r, j, out = 1, 1, []
    for k, s in layers:
        r += (k - 1) * j
        j *= s
        out.append(r)
    return out


def _axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _shape(x):
    return (1, -1) if x.ndim == 2 else (1, -1, 1, 1)


def batch_norm_forward(x, gamma, beta, eps, ddof=0):
    mean = x.mean(axis=_axes(x), keepdims=True)
    var = x.var(axis=_axes(x), keepdims=True, ddof=ddof)
    return gamma.reshape(_shape(x)) * (x - mean) / np.sqrt(var + eps) + beta.reshape(_shape(x))


def batch_norm_backward(dy, x, gamma, eps, through_stats=True):
    ax, sh = _axes(x), _shape(x)
    M = x.size // x.shape[1]
    mean = x.mean(axis=ax, keepdims=True)
    inv = 1.0 / np.sqrt(x.var(axis=ax, keepdims=True) + eps)
    xhat = (x - mean) * inv
    dbeta = dy.sum(axis=ax)
    dgamma = (dy * xhat).sum(axis=ax)
    dxhat = dy * gamma.reshape(sh)
    if not through_stats:                     # treats mean and var as constants: wrong
        return dxhat * inv, dgamma, dbeta
    dx = inv / M * (M * dxhat - dxhat.sum(axis=ax, keepdims=True)
                    - xhat * (dxhat * xhat).sum(axis=ax, keepdims=True))
    return dx, dgamma, dbeta


def fold_batchnorm(w, b, gamma, beta, mean, var, eps, eps_inside=True):
    a = gamma / np.sqrt(var + eps) if eps_inside else gamma / (np.sqrt(var) + eps)
    return w * a.reshape(-1, 1, 1, 1), a * (b - mean) + beta


def cross_entropy_backward(logits, labels, stable=True, mean=True):
    z = logits - logits.max(axis=1, keepdims=True) if stable else logits
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p / len(labels) if mean else p


def sgd_momentum_step(w, dw, v, lr, momentum, weight_decay, dampen=False):
    g = dw + weight_decay * w
    v = momentum * v + ((1 - momentum) * g if dampen else g)
    return w - lr * v, v


def conv_params_macs(in_channels, out_channels, kernel_size, out_size, bias=True):
    C, K, R, P = in_channels, out_channels, kernel_size, out_size
    return K * (C * R * R + (1 if bias else 0)), K * C * R * R * P * P


def layer_lrs(layers, lrs, longer_last=False):
    n, k = len(layers), len(lrs)
    sizes = [n // k + (i < n % k) for i in range(k)]
    if longer_last:
        sizes = sizes[::-1]
    return [lr for lr, size in zip(lrs, sizes) for _ in range(size)]


def box_iou_pairs(pred, target, clip=True, inclusive=False, union_minus_inter=True):
    one = 1.0 if inclusive else 0.0
    ix = np.minimum(pred[:, 2], target[:, 2]) - np.maximum(pred[:, 0], target[:, 0]) + one
    iy = np.minimum(pred[:, 3], target[:, 3]) - np.maximum(pred[:, 1], target[:, 1]) + one
    if clip:
        ix, iy = np.maximum(ix, 0), np.maximum(iy, 0)
    inter = ix * iy

    def area(b):
        return np.maximum(b[:, 2] - b[:, 0] + one, 0) * np.maximum(b[:, 3] - b[:, 1] + one, 0)
    union = area(pred) + area(target) - (inter if union_minus_inter else 0)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# --------------------------------------------------------------------------- the table

def _not_implemented(*args):
    raise NotImplementedError


CASES = [
    # check, right answer, subtly wrong answers
    (ex.check_conv_output_size, conv_output_size,
     {"ceil instead of floor": lambda n, k, s, p: int(np.ceil((n + 2 * p - k) / s)) + 1,
      "padding counted once": lambda n, k, s, p: (n + p - k) // s + 1}),
    (ex.check_conv2d_forward, conv2d_forward,
     {"off-by-one padding": lambda x, w, b, s, p: conv2d_forward(x, w, b, s, p, pad_extra=1),
      "kernel flipped (true convolution)": lambda x, w, b, s, p: conv2d_forward(x, w, b, s, p, flip=True),
      "bias forgotten": lambda x, w, b, s, p: conv2d_forward(x, w, 0 * b, s, p)}),
    (ex.check_im2col, im2col,
     {"rows in (r, s, c) order": lambda x, R, S, st, p: im2col(x, R, S, st, p).reshape(
         x.shape[0], x.shape[1], R * S, -1).transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1] * R * S, -1),
      "padding ignored": lambda x, R, S, st, p: np.pad(im2col(x, R, S, st, 0), (
          (0, 0), (0, 0), (0, ((x.shape[2] + 2 * p - R) // st + 1) * ((x.shape[3] + 2 * p - S) // st + 1)
                                - ((x.shape[2] - R) // st + 1) * ((x.shape[3] - S) // st + 1))))}),
    (ex.check_max_pool2d_backward, max_pool2d_backward,
     {"ties go to the last maximum": lambda dy, x, k, s: max_pool2d_backward(dy, x, k, s, tie="last"),
      "ties share the gradient": lambda dy, x, k, s: max_pool2d_backward(dy, x, k, s, tie="split"),
      "overlapping windows overwrite": lambda dy, x, k, s: max_pool2d_backward(dy, x, k, s, tie="overwrite")}),
    (ex.check_receptive_field, receptive_field,
     {"jump not carried": lambda layers: list(np.cumsum([k - 1 for k, _ in layers]) + 1),
      "jump applied one layer early": lambda layers: _rf_early(layers)}),
    (ex.check_batch_norm_forward, batch_norm_forward,
     {"unbiased variance": lambda x, g, b, e: batch_norm_forward(x, g, b, e, ddof=1),
      "eps forgotten": lambda x, g, b, e: batch_norm_forward(x, g, b, 0.0)}),
    (ex.check_batch_norm_backward, batch_norm_backward,
     {"mean and variance treated as constants":
      lambda dy, x, g, e: batch_norm_backward(dy, x, g, e, through_stats=False)}),
    (ex.check_fold_batchnorm, fold_batchnorm,
     {"eps outside the square root":
      lambda w, b, g, be, m, v, e: fold_batchnorm(w, b, g, be, m, v, e, eps_inside=False),
      "conv bias not scaled": lambda w, b, g, be, m, v, e: (
          fold_batchnorm(w, b, g, be, m, v, e)[0], b + fold_batchnorm(w, 0 * b, g, be, m, v, e)[1])}),
    (ex.check_cross_entropy_backward, cross_entropy_backward,
     {"sum instead of mean": lambda z, y: cross_entropy_backward(z, y, mean=False),
      "no max subtracted (overflows)": lambda z, y: cross_entropy_backward(z, y, stable=False)}),
    (ex.check_sgd_momentum_step, sgd_momentum_step,
     {"dampened momentum": lambda w, dw, v, lr, m, wd: sgd_momentum_step(w, dw, v, lr, m, wd, dampen=True),
      "weight decay forgotten": lambda w, dw, v, lr, m, wd: sgd_momentum_step(w, dw, v, lr, m, 0.0)}),
    (ex.check_conv_params_macs, conv_params_macs,
     {"bias not counted": lambda C, K, R, P: conv_params_macs(C, K, R, P, bias=False),
      "macs of the input size": lambda C, K, R, P: (conv_params_macs(C, K, R, P)[0],
                                                    K * C * R * R * (P + R - 1) ** 2)}),
    (ex.check_layer_lrs, layer_lrs,
     {"the longer groups last": lambda layers, lrs: layer_lrs(layers, lrs, longer_last=True),
      "the largest LR first": lambda layers, lrs: layer_lrs(layers, lrs[::-1])}),
    (ex.check_box_iou, box_iou_pairs,
     {"intersection not clipped at 0": lambda p, t: box_iou_pairs(p, t, clip=False),
      "x1, y1 taken as the last pixel (+1)": lambda p, t: box_iou_pairs(p, t, inclusive=True),
      "union without subtracting the intersection":
      lambda p, t: box_iou_pairs(p, t, union_minus_inter=False)}),
]


def _rf_early(layers):
    r, j, out = 1, 1, []
    for k, s in layers:
        j *= s
        r += (k - 1) * j
        out.append(r)
    return out


IDS = [c[0].__name__ for c in CASES]


def test_every_check_is_tested():
    checks = {n for n in ex.__all__ if n.startswith("check_")}
    assert checks == set(IDS)


@pytest.mark.parametrize("check, right, wrong", CASES, ids=IDS)
def test_right_answer_passes(check, right, wrong, capsys):
    result = check(right)
    out = capsys.readouterr().out
    assert result and result.status == "pass", out
    assert "PASS" in out and "FAIL" not in out
    assert len(result.cases) >= 3
    assert result.max_error is not None and result.max_error <= ex.TOL


@pytest.mark.parametrize("check, right, wrong", CASES, ids=IDS)
def test_subtly_wrong_answers_fail(check, right, wrong, capsys):
    for what, fn in wrong.items():
        with np.errstate(all="ignore"):
            result = check(fn)
        out = capsys.readouterr().out
        assert not result and result.status == "fail", f"{what} passed:\n{out}"
        assert "FAIL" in out


@pytest.mark.parametrize("check", [c[0] for c in CASES], ids=IDS)
def test_not_implemented_says_so(check, capsys):
    result = check(_not_implemented)
    out = capsys.readouterr().out
    assert result.status == "not implemented" and not result
    assert "not implemented yet" in out and "FAIL" not in out


def test_exceptions_are_failed_cases_with_the_message(capsys):
    def broken(x, w, b, stride, padding):
        raise IndexError("index 7 is out of bounds")
    result = ex.check_conv2d_forward(broken)
    out = capsys.readouterr().out
    assert result.status == "fail"
    assert "raised IndexError: index 7 is out of bounds" in out


def test_wrong_shape_and_none_are_explained(capsys):
    result = ex.check_conv2d_forward(lambda x, w, b, s, p: np.zeros((1, 1, 1, 1)))
    assert result.status == "fail"
    assert "expected (1, 1, 4, 4)" in capsys.readouterr().out
    result = ex.check_conv2d_forward(lambda x, w, b, s, p: None)
    assert result.status == "fail"
    assert "forget to return" in capsys.readouterr().out


def test_changing_the_input_fails(capsys):
    def in_place(x, gamma, beta, eps):
        x -= x.mean(axis=(0, 2, 3), keepdims=True) if x.ndim == 4 else x.mean(axis=0)
        return batch_norm_forward(x, gamma, beta, eps)
    result = ex.check_batch_norm_forward(in_place)
    assert result.status == "fail"
    assert "changed its input" in capsys.readouterr().out


def test_quiet_mode_prints_nothing(capsys):
    assert ex.check_conv_output_size(conv_output_size, verbose=False)
    assert capsys.readouterr().out == ""


def test_rel_error():
    assert ex.rel_error(np.ones(3), np.ones(3)) == 0.0
    assert ex.rel_error([1.0, 2.0], [1.0, 2.2]) == pytest.approx(0.2 / 4.2)
    assert ex.rel_error(np.zeros(0), np.zeros(0)) == 0.0
