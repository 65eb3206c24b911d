"""Transposed convolution: the NumPy scatter (reference) against explicit loops and against
the gradient of a conv; the fast path (the conv kernels) against the reference; finite
differences; PyTorch where installed; the layer; bad input.
Formulas: (conv_t.out), (conv_t.fwd), (conv_t.bwd), see docs/formulas.md."""
import numpy as np
import pytest

import fastconv.functional as F
import fastconv.nn as nn
from fastconv.gradcheck import gradcheck
from fastconv.reference import conv_transpose as ref
from helpers import assert_close, assert_grad_matches

# (x shape (N, C_in, H, W), w shape (C_in, C_out, R, S), stride, padding, output_padding)
CASES = [
    ((2, 3, 5, 4), (3, 4, 3, 2), (1, 1), (0, 0), (0, 0)),
    ((2, 3, 5, 4), (3, 4, 3, 2), (2, 1), (1, 0), (1, 0)),      # output_padding < stride
    ((1, 2, 4, 5), (2, 3, 4, 3), (3, 2), (2, 1), (2, 1)),
    ((2, 1, 6, 6), (1, 5, 2, 2), (2, 2), (0, 0), (0, 0)),      # C_in = 1: the direct kernel
    ((2, 4, 3, 3), (4, 1, 3, 3), (2, 2), (1, 1), (1, 1)),      # C_out = 1
    ((2, 16, 5, 6), (16, 8, 3, 3), (1, 1), (1, 1), (0, 0)),    # channels-last im2col path
    ((3, 6, 4, 4), (6, 16, 1, 1), (1, 1), (0, 0), (0, 0)),     # 1x1
    ((1, 2, 1, 1), (2, 3, 3, 3), (1, 1), (0, 0), (0, 0)),      # one pixel: the kernel itself
    ((2, 3, 4, 4), (3, 2, 3, 3), (1, 1), (2, 2), (0, 0)),      # padding crops deep
]


def case_id(case):
    (N, C, H, W), (_, Co, R, S), s, p, o = case
    return f"N{N}C{C}H{H}W{W}-Co{Co}R{R}S{S}-s{s[0]}{s[1]}-p{p[0]}{p[1]}-o{o[0]}{o[1]}"


def make(rng, dtype, case):
    x_shape, w_shape, stride, padding, out_pad = case
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[1]).astype(dtype)
    H_out, W_out = (F.conv_transpose_output_size(n, k, s, p, o) for n, k, s, p, o in
                    zip(x_shape[2:], w_shape[2:], stride, padding, out_pad))
    dy = rng.standard_normal((x_shape[0], w_shape[1], H_out, W_out)).astype(dtype)
    return x, w, b, dy


def scatter_loops(x, w, b, stride, padding, out_pad, groups=1, dilation=(1, 1)):
    """(conv_t.fwd) as plain loops: every input pixel adds the kernel, scaled, onto y."""
    N, C_in, H, W = x.shape
    _, Cog, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    H_out = (H - 1) * sh - 2 * ph + dh * (R - 1) + out_pad[0] + 1
    W_out = (W - 1) * sw - 2 * pw + dw * (S - 1) + out_pad[1] + 1
    y = np.zeros((N, Cog * groups, H_out, W_out))
    for n in range(N):
        for c in range(C_in):
            g = c // (C_in // groups)
            for i in range(H):
                for j in range(W):
                    for o in range(Cog):
                        for r in range(R):
                            for s in range(S):
                                oi, oj = i * sh + r * dh - ph, j * sw + s * dw - pw
                                if 0 <= oi < H_out and 0 <= oj < W_out:
                                    y[n, g * Cog + o, oi, oj] += x[n, c, i, j] * w[c, o, r, s]
    return y if b is None else y + b[None, :, None, None]


@pytest.mark.parametrize("case", CASES[:5] + CASES[7:], ids=case_id)
def test_reference_is_the_scatter_of_the_formula(case, rng):
    x, w, b, _ = make(rng, np.float64, case)
    want = scatter_loops(x, w, b, *case[2:])
    assert_close(ref.conv_transpose2d_forward(x, w, b, *case[2:]), want)
    assert_close(F.conv_transpose2d(x, w, b, *case[2:], backend="reference"), want)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_is_the_input_gradient_of_a_conv(case, rng):
    """conv_transpose2d(x, w) is conv2d_backward's dx for a conv with weight w (K = C_in)
    whose output gradient is x: the reference scatter against the conv's reference."""
    x, w, _, dy = make(rng, np.float64, case)
    y = F.conv_transpose2d(x, w, None, *case[2:], backend="reference")
    dx, _, _ = F.conv2d_backward(x, np.zeros(y.shape), w, case[2], case[3], backend="reference",
                                 need_dw=False)
    assert_close(y, dx, reduction=w.shape[0] * w.shape[2] * w.shape[3])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fast_matches_reference(case, dtype, rng):
    x, w, b, dy = make(rng, dtype, case)
    N, C_in, H, W = x.shape
    _, C_out, R, S = w.shape
    y = F.conv_transpose2d(x, w, b, *case[2:], backend="fast")
    assert_close(y, F.conv_transpose2d(x, w, b, *case[2:], backend="reference"), dtype,
                 reduction=C_in * R * S)
    got = F.conv_transpose2d_backward(dy, x, w, *case[2:], backend="fast")
    want = F.conv_transpose2d_backward(dy, x, w, *case[2:], backend="reference")
    for name, g, v, n in zip(("dx", "dw", "db"), got, want,
                             (C_out * R * S, N * H * W, dy[:, 0].size)):
        assert_close(g, v, dtype, reduction=n, err_msg=name)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dilation", [(1, 1), (2, 1), (2, 3)])
def test_groups_and_dilation_fast_match_the_scatter_loops(dilation, groups, dtype, rng):
    """Dilation and groups go through to the conv ops: taps dilation apart in the output,
    each group of input channels scattering into its own output channels (conv_t.fwd)."""
    case = ((2, 4, 5, 4), (4, 3, 3, 2), (2, 1), (1, 0), (1, 0))
    x, w, b, _ = make(rng, dtype, case)
    b = np.concatenate([b, b])
    if groups == 1:
        b = b[:w.shape[1]]
    y = F.conv_transpose2d(x, w, b, *case[2:], groups=groups, dilation=dilation, backend="fast")
    want = scatter_loops(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                         *case[2:], groups=groups, dilation=dilation).astype(dtype)
    assert_close(y, want, dtype, reduction=x.shape[1] * w.shape[2] * w.shape[3])
    assert_close(F.conv_transpose2d(x, w, b, *case[2:], groups=groups, dilation=dilation,
                                    backend="reference"),
                 want, dtype, reduction=x.shape[1] * w.shape[2] * w.shape[3])
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = F.conv_transpose2d_backward(dy, x, w, *case[2:], groups=groups, dilation=dilation,
                                      backend="fast")
    ref_ = F.conv_transpose2d_backward(dy, x, w, *case[2:], groups=groups, dilation=dilation,
                                       backend="reference")
    for g, v, n in zip(got, ref_, (w.shape[1] * 9, dy[:, 0].size, dy[:, 0].size)):
        assert_close(g, v, dtype, reduction=n)


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_backward_matches_finite_differences(backend, rng):
    """(conv_t.bwd) against central differences of L = sum(conv_transpose2d(x, w, b) * g)."""
    case = CASES[2]
    x, w, b, g = make(rng, np.float64, case)

    def loss():
        return float(np.sum(F.conv_transpose2d(x, w, b, *case[2:], backend=backend) * g))

    dx, dw, db = F.conv_transpose2d_backward(g, x, w, *case[2:], backend=backend)
    assert_grad_matches(dx, loss, x, err_msg="dx")
    assert_grad_matches(dw, loss, w, err_msg="dw")
    assert_grad_matches(db, loss, b, err_msg="db")


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_backward_skips_what_is_not_needed(backend, rng):
    case = CASES[1]
    x, w, _, dy = make(rng, np.float32, case)
    dx, dw, db = F.conv_transpose2d_backward(dy, x, w, *case[2:], backend=backend)
    only_dx = F.conv_transpose2d_backward(dy, x, w, *case[2:], backend=backend, need_dw=False)
    only_dw = F.conv_transpose2d_backward(dy, x, w, *case[2:], backend=backend, need_dx=False)
    assert only_dx[1] is None and only_dx[2] is None and only_dw[0] is None
    np.testing.assert_array_equal(only_dx[0], dx)
    np.testing.assert_array_equal(only_dw[1], dw)
    np.testing.assert_array_equal(only_dw[2], db)
    with pytest.raises(ValueError, match="need_dx=False and need_dw=False"):
        F.conv_transpose2d_backward(dy, x, w, *case[2:], need_dx=False, need_dw=False)


def test_upsampling_example():
    x = np.array([[[[1., 2.], [3., 4.]]]])
    y = F.conv_transpose2d(x, np.ones((1, 1, 2, 2)), stride=2)
    np.testing.assert_array_equal(y[0, 0], np.kron(x[0, 0], np.ones((2, 2))))


def test_output_size_formula():
    # the input size of the conv it transposes: conv(H_out) gives H back
    for H, R, s, p, o in [(7, 3, 2, 1, 1), (5, 4, 3, 0, 2), (1, 1, 1, 0, 0), (9, 5, 1, 2, 0)]:
        H_out = F.conv_transpose_output_size(H, R, s, p, o)
        assert F.conv_output_size(H_out, R, s, p) == H
    assert F.conv_transpose_output_size(7, 3, 2, 1, 1, dilation=2) == 6 * 2 - 2 + 2 * 2 + 1 + 1


def test_bad_input_is_a_clear_error(rng):
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    for kwargs, pattern in [
            (dict(stride=2, output_padding=2), "output_padding .* must be smaller than stride"),
            (dict(output_padding=1), "output_padding"),
            (dict(groups=2), "divisible by groups=2"),
            (dict(padding=4), "the output would be -2x-2"),
            (dict(b=np.zeros(3, np.float32)), "b must have shape \\(2,\\)")]:
        with pytest.raises(ValueError, match=pattern):
            F.conv_transpose2d(x, w, **kwargs)
    with pytest.raises(ValueError, match="w must be \\(C_in, C_out/groups, R, S\\)"):
        F.conv_transpose2d(x, w[:2])
    with pytest.raises(TypeError, match="w has dtype float64"):
        F.conv_transpose2d(x, w.astype(np.float64))
    with pytest.raises(ValueError, match="dy must have the output's shape \\(1, 2, 6, 6\\)"):
        F.conv_transpose2d_backward(np.zeros((1, 2, 5, 6), np.float32), x, w)


# --------------------------------------------------------------------------- the layer

def test_layer_shapes_init_and_gradients(rng):
    nn.init.seed(0)
    up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
    assert up.weight.shape == (8, 4, 3, 3) and up.bias.shape == (4,)
    bound = 1 / np.sqrt(4 * 9)               # fan_in from axis 1, as PyTorch
    assert np.abs(up.weight.data).max() <= bound and np.abs(up.bias.data).max() <= bound
    assert up(np.zeros((2, 8, 7, 7), np.float32)).shape == (2, 4, 14, 14)
    assert "output_padding=(1, 1)" in repr(up)
    layer = nn.ConvTranspose2d(3, 2, (3, 2), stride=(2, 1), padding=(1, 0), output_padding=(1, 0))
    gradcheck(layer, rng.standard_normal((2, 3, 4, 3)))
    with pytest.raises(ValueError, match="output_padding"):
        nn.ConvTranspose2d(2, 2, 3, stride=1, output_padding=1)
    with pytest.raises(ValueError, match="groups must be a positive int dividing"):
        nn.ConvTranspose2d(2, 3, 3, groups=2)
    grouped = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, dilation=2, dtype=np.float64)
    assert grouped.weight.shape == (4, 3, 3, 3)
    gradcheck(grouped, rng.standard_normal((2, 4, 3, 3)))


def test_frozen_layer_computes_dx_alone(rng, monkeypatch):
    calls, real = [], F.conv2d_backward

    def recorder(*args, **kwargs):
        calls.append((kwargs.get("need_dx", True), kwargs.get("need_dw", True)))
        return real(*args, **kwargs)

    layer = nn.ConvTranspose2d(3, 2, 2, stride=2)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    dy = rng.standard_normal(layer(x).shape).astype(np.float32)
    monkeypatch.setattr(F, "conv2d_backward", recorder)
    dx = layer.backward(dy)
    assert calls == [(False, True)]                 # dw; dx = conv2d(dy, w)
    layer.freeze()
    calls.clear()
    layer.zero_grad()
    np.testing.assert_array_equal(layer.backward(dy), dx)
    assert calls == [] and not np.any(layer.weight.grad)    # dx = conv2d(dy, w) alone


# --------------------------------------------------------------------------- PyTorch

def _torch_case(torch, x, w, b, stride, padding, out_pad, groups=1, dilation=(1, 1)):
    tx, tw, tb = (torch.from_numpy(a).requires_grad_(True) for a in (x, w, b))
    y = torch.nn.functional.conv_transpose2d(tx, tw, tb, stride, padding, out_pad, groups,
                                             dilation)
    return y, (tx, tw, tb)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_pytorch(case, rng):
    torch = pytest.importorskip("torch")
    x, w, b, dy = make(rng, np.float64, case)
    y_t, leaves = _torch_case(torch, x, w, b, *case[2:])
    y_t.backward(torch.from_numpy(dy))
    for backend in ("reference", "fast"):
        assert_close(F.conv_transpose2d(x, w, b, *case[2:], backend=backend),
                     y_t.detach().numpy(), reduction=x.shape[1] * w[0, 0].size)
        got = F.conv_transpose2d_backward(dy, x, w, *case[2:], backend=backend)
        for name, g, leaf in zip(("dx", "dw", "db"), got, leaves):
            assert_close(g, leaf.grad.numpy(), reduction=dy[:, 0].size, err_msg=name)


@pytest.mark.parametrize("groups,dilation", [(2, (1, 1)), (1, (2, 3)), (2, (2, 1))])
def test_reference_groups_and_dilation_match_pytorch(groups, dilation, rng):
    """The reference twin already takes groups and dilation (the public op refuses them
    until the convolutions take them): against PyTorch, and against the loops."""
    torch = pytest.importorskip("torch")
    stride, padding, out_pad = (2, 1), (1, 2), (1, 0)
    x = rng.standard_normal((2, 4, 4, 5))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(3 * groups)
    y_t, leaves = _torch_case(torch, x, w, b, stride, padding, out_pad, groups, dilation)
    dy = rng.standard_normal(tuple(y_t.shape))
    y_t.backward(torch.from_numpy(dy))
    y = ref.conv_transpose2d_forward(x, w, b, stride, padding, out_pad, groups, dilation)
    assert_close(y, y_t.detach().numpy(), reduction=24)
    assert_close(y, scatter_loops(x, w, b, stride, padding, out_pad, groups, dilation),
                 reduction=24)
    got = ref.conv_transpose2d_backward(dy, x, w, stride, padding, out_pad, groups, dilation)
    for name, g, leaf in zip(("dx", "dw", "db"), got, leaves):
        assert_close(g, leaf.grad.numpy(), reduction=dy[:, 0].size, err_msg=name)


def test_summary_counts_a_transposed_conv():
    from fastconv.summary import summary
    m = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                      nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1))
    s = summary(m, (1, 1, 8, 8), print_fn=None)
    row = s.rows[-1]
    assert row["output_shape"] == (1, 2, 8, 8) and row["params"] == 4 * 2 * 9 + 2
    assert row["macs"] == 4 * 2 * 9 * 4 * 4           # every input pixel times the kernel
    # output pixel 1 gathers conv outputs 0 and 1 (fields centred on 0 and 2, 3 wide): 5
    assert row["rf"] == ((5, 1, 0.0), (5, 1, 0.0))
