"""The math of fastconv.nn lives in fastconv.functional: eval-mode batch norm (its affine
map and its backward) and the activations with no kernel (sigmoid, tanh, softmax). Each op
against its formula, its gradient against finite differences (float64), both backends the
same, bad input rejected, and the layers returning exactly what the ops return."""
import numpy as np
import pytest
from scipy.special import expit

import fastconv.functional as F
from fastconv import nn

BACKENDS = ("fast", "reference")


def _numeric_grad(f, x, g, h=1e-6):
    """d sum(g * f(x)) / dx by central differences, every coordinate (x float64, small)."""
    dx = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = np.sum(g * f(x))
        x[i] = old - h
        down = np.sum(g * f(x))
        x[i] = old
        dx[i] = (up - down) / (2 * h)
    return dx


def _bn_params(rng, C, dtype):
    gamma = rng.uniform(0.5, 2.0, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    mean = rng.standard_normal(C).astype(dtype)
    var = rng.uniform(0.5, 2.0, C).astype(dtype)
    return gamma, beta, mean, var


# --------------------------------------------------------------------------- batch norm, eval mode

@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
def test_batch_norm_affine_is_the_eval_forward(rng, dtype, affine):
    gamma, beta, mean, var = _bn_params(rng, 4, dtype)
    if not affine:
        gamma = beta = None
    scale, shift = F.batch_norm_affine(gamma, beta, mean, var, eps=1e-3)
    assert scale.dtype == shift.dtype == np.float64 and scale.shape == (4,)
    x = rng.standard_normal((3, 4, 2, 5)).astype(dtype)
    y = F.batch_norm(x, gamma, beta, mean, var, training=False, eps=1e-3)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(scale[:, None, None] * x + shift[:, None, None], y,
                               rtol=tol, atol=tol)


def test_batch_norm_affine_matches_its_formula_bit_for_bit(rng):
    gamma, beta, mean, var = _bn_params(rng, 6, np.float32)
    scale, shift = F.batch_norm_affine(gamma, beta, mean, var, 1e-5)
    invstd = 1.0 / np.sqrt(var.astype(np.float64) + 1e-5)
    g = gamma.astype(np.float64)
    np.testing.assert_array_equal(scale, g * invstd)
    np.testing.assert_array_equal(shift, g * (-invstd * mean.astype(np.float64))
                                  + beta.astype(np.float64))


@pytest.mark.parametrize("shape", [(3, 4, 2, 3), (5, 4)], ids=["4d", "2d"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
def test_batch_norm_eval_backward_against_finite_differences(rng, shape, affine):
    gamma, beta, mean, var = _bn_params(rng, 4, np.float64)
    if not affine:
        gamma = beta = None
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    dx, dgamma, dbeta = F.batch_norm_eval_backward(dy, x, gamma, mean, var, eps=1e-3)

    def y_of_x(x_):
        return F.batch_norm(x_, gamma, beta, mean, var, training=False, eps=1e-3)
    np.testing.assert_allclose(dx, _numeric_grad(y_of_x, x.copy(), dy), rtol=1e-6, atol=1e-8)
    g = np.ones(4) if gamma is None else gamma.copy()
    b = np.zeros(4) if beta is None else beta

    def y_of_gamma(g_):
        return F.batch_norm(x, g_, b, mean, var, training=False, eps=1e-3)

    def y_of_beta(b_):
        return F.batch_norm(x, g, b_, mean, var, training=False, eps=1e-3)
    np.testing.assert_allclose(dgamma, _numeric_grad(y_of_gamma, g, dy), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dbeta, _numeric_grad(y_of_beta, b.copy(), dy), rtol=1e-6, atol=1e-8)


def test_batch_norm_eval_backward_backends_agree_and_keep_the_dtype(rng):
    gamma, _, mean, var = _bn_params(rng, 3, np.float32)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    fast, ref = (F.batch_norm_eval_backward(dy, x, gamma, mean, var, backend=b)
                 for b in BACKENDS)
    assert fast[0].dtype == np.float32
    for a, b in zip(fast, ref):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_eval_ops_reject_bad_input(rng):
    gamma, beta, mean, var = _bn_params(rng, 3, np.float32)
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="batch_norm_eval_backward: dy must have"):
        F.batch_norm_eval_backward(np.zeros((2, 3, 4, 5), np.float32), x, gamma, mean, var)
    with pytest.raises(ValueError, match="running_var must have shape"):
        F.batch_norm_eval_backward(x, x, gamma, mean, var[:2])
    with pytest.raises(TypeError, match="running_mean"):
        F.batch_norm_eval_backward(x, x, gamma, None, var)
    with pytest.raises(ValueError, match="backend"):
        F.batch_norm_eval_backward(x, x, gamma, mean, var, backend="gpu")
    with pytest.raises(ValueError, match="batch_norm_affine: eps"):
        F.batch_norm_affine(gamma, beta, mean, var, eps=0)
    with pytest.raises(ValueError, match="gamma and beta"):
        F.batch_norm_affine(gamma, None, mean, var)
    with pytest.raises(ValueError, match="gamma must have shape"):
        F.batch_norm_affine(gamma[:2], beta, mean, var)


@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm2d, (4, 3, 2, 2)), (nn.BatchNorm1d, (6, 3))])
def test_bn_layer_in_eval_mode_is_the_functional_ops(rng, cls, shape):
    bn = cls(3)
    bn.weight.data[...] = rng.uniform(0.5, 2, 3)
    bn.bias.data[...] = rng.standard_normal(3)
    bn.running_mean[...] = rng.standard_normal(3)
    bn.running_var[...] = rng.uniform(0.5, 2, 3)
    bn.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y = bn(x)
    dx = bn.backward(dy)
    args = (bn.weight.data, bn.running_mean, bn.running_var)
    np.testing.assert_array_equal(y, F.batch_norm(x, bn.weight.data, bn.bias.data,
                                                  *args[1:], training=False))
    want_dx, want_dgamma, want_dbeta = F.batch_norm_eval_backward(dy, x, *args)
    # the formula, as float32 arithmetic on float64 statistics
    cshape, axes = (1, -1) + (1,) * (x.ndim - 2), (0,) + tuple(range(2, x.ndim))
    invstd = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    np.testing.assert_array_equal(want_dx, dy * (bn.weight.data * invstd).astype(np.float32)
                                  .reshape(cshape))
    x_hat = (x - bn.running_mean.reshape(cshape)) * invstd.astype(np.float32).reshape(cshape)
    np.testing.assert_array_equal(want_dgamma, np.sum(dy * x_hat, axis=axes))
    np.testing.assert_array_equal(want_dbeta, np.sum(dy, axis=axes))
    np.testing.assert_array_equal(dx, want_dx)
    np.testing.assert_array_equal(bn.weight.grad, want_dgamma)
    np.testing.assert_array_equal(bn.bias.grad, want_dbeta)
    scale, shift = bn.affine_params()
    np.testing.assert_array_equal(scale, F.batch_norm_affine(bn.weight.data, bn.bias.data,
                                                             bn.running_mean, bn.running_var)[0])
    np.testing.assert_array_equal(shift, F.batch_norm_affine(bn.weight.data, bn.bias.data,
                                                             bn.running_mean, bn.running_var)[1])


# --------------------------------------------------------------------------- activations

ACTIVATIONS = {
    # name: (forward, backward, the formula of y, the formula of dx from (dy, y))
    "sigmoid": (F.sigmoid, F.sigmoid_backward, expit, lambda dy, y: dy * y * (1 - y)),
    "tanh": (F.tanh, F.tanh_backward, np.tanh, lambda dy, y: dy * (1 - y * y)),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_matches_its_formula_bit_for_bit(rng, dtype, name):
    fwd, bwd, formula, dformula = ACTIVATIONS[name]
    x = (3 * rng.standard_normal((2, 3, 4, 5))).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    for backend in BACKENDS:
        y = fwd(x, backend=backend)
        assert y.dtype == dtype and y.shape == x.shape
        np.testing.assert_array_equal(y, formula(x))
        np.testing.assert_array_equal(bwd(dy, y, backend=backend), dformula(dy, y))


@pytest.mark.parametrize("name", list(ACTIVATIONS) + ["softmax"])
def test_activation_backward_against_finite_differences(rng, name):
    if name == "softmax":
        fwd, bwd = (lambda x: F.softmax(x, dim=1)), (lambda dy, y: F.softmax_backward(dy, y, 1))
    else:
        fwd, bwd = ACTIVATIONS[name][:2]
    x = rng.standard_normal((3, 5))
    dy = rng.standard_normal(x.shape)
    np.testing.assert_allclose(bwd(dy, fwd(x)), _numeric_grad(fwd, x.copy(), dy),
                               rtol=1e-6, atol=1e-9)


def test_sigmoid_never_overflows():
    x = np.array([-1000.0, -100.0, 0.0, 100.0, 1000.0], np.float32)
    with np.errstate(all="raise"):
        y = F.sigmoid(x)
    np.testing.assert_array_equal(y, [0.0, expit(np.float32(-100.0)), 0.5, 1.0, 1.0])


@pytest.mark.parametrize("dim", [1, 0, -1, 2])
def test_softmax_matches_its_formula_bit_for_bit(rng, dtype, dim):
    x = (5 * rng.standard_normal((3, 4, 5))).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    z = x - x.max(axis=dim, keepdims=True)
    e = np.exp(z)
    want = e / e.sum(axis=dim, keepdims=True)
    for backend in BACKENDS:
        y = F.softmax(x, dim=dim, backend=backend)
        assert y.dtype == dtype
        np.testing.assert_array_equal(y, want)
        np.testing.assert_array_equal(F.softmax_backward(dy, y, dim, backend=backend),
                                      y * (dy - np.sum(dy * y, axis=dim, keepdims=True)))


def test_softmax_of_huge_logits_is_finite():
    y = F.softmax(np.array([[1e30, 0.0, -1e30]], np.float32))
    np.testing.assert_array_equal(y, [[1.0, 0.0, 0.0]])


@pytest.mark.parametrize("op", ["sigmoid", "tanh", "softmax"])
def test_activations_reject_bad_input(op):
    fwd, bwd = getattr(F, op), getattr(F, f"{op}_backward")
    with pytest.raises(TypeError, match=f"{op}: x must be float32 or float64"):
        fwd(np.arange(4))
    with pytest.raises(ValueError, match="backend"):
        fwd(np.zeros(4, np.float32), backend="gpu")
    y = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=f"{op}_backward: dy must have"):
        bwd(np.zeros((3, 2), np.float32), y)
    with pytest.raises(TypeError, match=f"{op}_backward: dy has dtype float64"):
        bwd(np.zeros((2, 3)), y)


def test_softmax_rejects_a_bad_dim():
    with pytest.raises(ValueError, match="softmax: dim must be an int in"):
        F.softmax(np.zeros((2, 3)), dim=2)
    with pytest.raises(ValueError, match="softmax_backward: dim"):
        F.softmax_backward(np.zeros((2, 3)), np.zeros((2, 3)), dim=1.0)


@pytest.mark.parametrize("layer,op", [(nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"),
                                      (lambda: nn.Softmax(dim=0), "softmax")])
def test_activation_layers_return_what_the_ops_return(rng, layer, op):
    m = layer()
    x = rng.standard_normal((4, 6)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    extra = (0,) if op == "softmax" else ()
    y = getattr(F, op)(x, *extra)
    np.testing.assert_array_equal(m(x), y)
    np.testing.assert_array_equal(m.backward(dy), getattr(F, f"{op}_backward")(dy, y, *extra))
