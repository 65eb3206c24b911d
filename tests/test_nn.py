"""fastconv.nn: every layer's backward against finite differences (gradcheck, float64),
train/eval behaviour, state_dict, initialisation, losses, fold_batchnorm and repr."""
import copy

import numpy as np
import pytest

from fastconv import functional as F, nn, no_grad
from fastconv.gradcheck import GradcheckError, gradcheck


pytestmark = pytest.mark.usefixtures("layer_test_backend")


# --------------------------------------------------------------------------- gradcheck per layer

def _layers():
    """(id, layer factory, input shape) for every layer type, in train and eval mode."""
    return [
        ("conv", lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 5, 5)),
        ("conv-stride2-nobias", lambda: nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 0),
                                                   bias=False), (2, 3, 7, 6)),
        ("conv-direct", lambda: nn.Conv2d(2, 3, 3, algo="direct"), (2, 2, 5, 5)),
        ("conv-im2col", lambda: nn.Conv2d(2, 3, 3, algo="im2col"), (2, 2, 5, 5)),
        ("conv1x1", lambda: nn.Conv2d(3, 2, 1), (2, 3, 4, 4)),
        ("maxpool", lambda: nn.MaxPool2d(2), (2, 3, 6, 6)),
        ("maxpool-overlap-pad", lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 2, 7, 7)),
        ("avgpool", lambda: nn.AvgPool2d(2), (2, 3, 6, 6)),
        ("avgpool-pad", lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 2, 7, 7)),
        ("avgpool-pad-exclude", lambda: nn.AvgPool2d(3, stride=2, padding=1,
                                                     count_include_pad=False), (2, 2, 7, 7)),
        ("globalavgpool", lambda: nn.GlobalAvgPool2d(), (2, 3, 5, 4)),
        ("bn2d", lambda: nn.BatchNorm2d(3), (4, 3, 3, 3)),
        ("bn2d-noaffine", lambda: nn.BatchNorm2d(3, affine=False), (4, 3, 3, 3)),
        ("bn1d", lambda: nn.BatchNorm1d(5), (6, 5)),
        ("linear", lambda: nn.Linear(5, 4), (3, 5)),
        ("linear-nobias", lambda: nn.Linear(5, 4, bias=False), (3, 5)),
        ("relu", lambda: nn.ReLU(), (3, 7)),
        ("relu-inplace", lambda: nn.ReLU(inplace=True), (2, 3, 4, 4)),
        ("sigmoid", lambda: nn.Sigmoid(), (3, 7)),
        ("tanh", lambda: nn.Tanh(), (3, 7)),
        ("softmax", lambda: nn.Softmax(), (3, 7)),
        ("dropout", lambda: nn.Dropout(0.4), (4, 6)),
        ("flatten", lambda: nn.Flatten(), (2, 3, 2, 2)),
        ("zeropad", lambda: nn.ZeroPad2d((1, 2, 0, 3)), (2, 2, 3, 3)),
        ("identity", lambda: nn.Identity(), (2, 3)),
        ("sequential", lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(),
                                             nn.Linear(27, 4)), (2, 2, 5, 5)),
        ("residual-identity", lambda: nn.Residual(
            nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)),
            activation=nn.ReLU()), (2, 3, 4, 4)),
        ("residual-projection", lambda: nn.Residual(
            nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Tanh()),
            nn.Conv2d(2, 4, 1, stride=2)), (2, 2, 5, 5)),
        ("residual-identity-body", lambda: nn.Residual(nn.Identity(), nn.Linear(3, 3)), (2, 3)),
        ("concat", lambda: nn.Concat(nn.Conv2d(3, 2, 1), nn.Identity(),
                                     nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(3, 1, 3, padding=1))),
         (2, 3, 4, 4)),
    ]


LAYERS = _layers()


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("make,shape", [(m, s) for _, m, s in LAYERS], ids=[i for i, _, _ in LAYERS])
def test_gradcheck_every_layer(make, shape, mode, rng):
    with nn.init.seeded(0):
        layer = make()
    layer.train(mode == "train")
    if mode == "eval":         # non-trivial running statistics for eval-mode BN
        for m in layer.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean[...] = rng.standard_normal(m.num_features)
                m.running_var[...] = rng.uniform(0.5, 2.0, m.num_features)
    report = gradcheck(layer, rng.standard_normal(shape))
    assert report.ok and bool(report), str(report)
    assert all(r["checked"] > 0 for r in report.rows)
    names = [r["name"] for r in report.rows]
    assert names == ["input"] + [n for n, _ in layer.named_parameters()]


def test_gradcheck_detects_a_wrong_backward(rng):
    class BadTanh(nn.Tanh):
        def backward(self, dy):
            return dy * (1 - self._y)          # should be 1 - y**2

    with pytest.raises(GradcheckError, match="BadTanh"):
        gradcheck(BadTanh(), rng.standard_normal((2, 3)))
    report = gradcheck(BadTanh(), rng.standard_normal((2, 3)), raise_on_failure=False)
    assert not report.ok and not report
    assert "FAILED" in str(report)

    class ForgetsBiasGrad(nn.Linear):
        def backward(self, dy):
            self.weight.grad += dy.T @ self._x
            return dy @ self.weight.data

    report = gradcheck(ForgetsBiasGrad(3, 2), rng.standard_normal((2, 3)), raise_on_failure=False)
    assert [r["ok"] for r in report.rows] == [True, True, False]
    assert report.max_rel_error["bias"] == pytest.approx(1.0)


def test_gradcheck_leaves_the_module_alone(rng):
    layer = nn.Conv2d(2, 2, 3)
    before = copy.deepcopy(layer.state_dict())
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    x0 = x.copy()
    gradcheck(layer, x)
    assert layer.weight.data.dtype == np.float32
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert not layer.weight.grad.any()
    np.testing.assert_array_equal(x, x0)


# --------------------------------------------------------------------------- layer behaviour

def test_backward_accumulates_parameter_gradients(rng):
    layer = nn.Linear(4, 3)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    dy = rng.standard_normal((2, 3)).astype(np.float32)
    layer(x)
    layer.backward(dy)
    once = layer.weight.grad.copy()
    layer(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once, rtol=1e-6)
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_backward_params_fills_the_same_gradients(rng):
    """backward_params(dy): the parameter gradients of backward(dy), bitwise, and no dx; a
    Sequential skips the parameter-free layers in front of its first trainable one."""
    x = rng.standard_normal((3, 2, 9, 9)).astype(np.float32)
    for make in (lambda: nn.Sequential(nn.MaxPool2d(1), nn.Conv2d(2, 4, 3, padding=1),
                                       nn.BatchNorm2d(4), nn.ReLU(True), nn.Flatten(),
                                       nn.Linear(4 * 81, 5)),
                 lambda: nn.Sequential(nn.Flatten(), nn.Linear(162, 7), nn.ReLU(),
                                       nn.Linear(7, 5))):
        nets = [make(), make()]
        nets[1].load_state_dict(nets[0].state_dict())
        dy = rng.standard_normal((3, 5)).astype(np.float32)
        for net in nets:
            net(x.copy())
        assert nets[0].backward(dy) is not None
        assert nets[1].backward_params(dy) is None
        for (name, p0), (_, p1) in zip(nets[0].named_parameters(), nets[1].named_parameters()):
            np.testing.assert_array_equal(p1.grad, p0.grad, err_msg=name)
            assert p0.grad.any(), name


def test_layers_keep_float32(rng):
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(True), nn.MaxPool2d(2),
                        nn.AvgPool2d(1), nn.Dropout(0.2), nn.Sigmoid(), nn.Tanh(),
                        nn.ZeroPad2d(1), nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(4, 5),
                        nn.BatchNorm1d(5), nn.Softmax())
    y = net(x)
    assert y.dtype == np.float32
    assert net.backward(np.ones_like(y)).dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in net.parameters())


def test_backward_does_not_modify_dy(rng):
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(True),
                        nn.Residual(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(True)),
                                    activation=nn.ReLU(True)),
                        nn.Concat(nn.Identity(), nn.ReLU()))
    y = net(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dy0 = dy.copy()
    net.backward(dy)
    np.testing.assert_array_equal(dy, dy0)


def test_relu_inplace_overwrites_only_when_asked(rng):
    x = rng.standard_normal((2, 5)).astype(np.float32)
    x0 = x.copy()
    y = nn.ReLU()(x)
    np.testing.assert_array_equal(x, x0)
    y2 = nn.ReLU(inplace=True)(x)
    assert y2 is x
    np.testing.assert_array_equal(y, y2)


def test_dropout_train_eval_and_seed(rng):
    x = np.ones((200, 50), np.float32)
    d = nn.Dropout(0.3, rng=np.random.default_rng(5))
    y = d(x)
    kept = y != 0
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)      # inverted: scaled in training
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), y)  # same mask backward
    d.eval()
    assert d(x) is x and d.backward(x) is x                       # identity in eval mode
    a, b = nn.Dropout(0.5, rng=np.random.default_rng(1)), nn.Dropout(0.5, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a(x), b(x))
    nn.init.seed(7)
    c = nn.Dropout(0.5)
    nn.init.seed(7)
    e = nn.Dropout(0.5)
    np.testing.assert_array_equal(c(x), e(x))
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


def test_batchnorm_train_eval(rng):
    bn = nn.BatchNorm2d(3, momentum=0.1)
    x = (rng.standard_normal((8, 3, 4, 4)) * 2 + 5).astype(np.float32)
    y = bn(x)
    # Training: batch statistics -> per channel mean 0, variance 1 (biased).
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)
    # Running statistics: PyTorch's momentum and the unbiased variance.
    M = 8 * 4 * 4
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * x.var(axis=(0, 2, 3)) * M / (M - 1),
                               rtol=1e-5)
    bn.eval()
    y_eval = bn(x)
    want = (x - bn.running_mean[None, :, None, None]) / np.sqrt(bn.running_var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y_eval, want, rtol=1e-5, atol=1e-5)
    running = bn.running_mean.copy()
    bn(x)
    np.testing.assert_array_equal(bn.running_mean, running)      # eval does not update
    with pytest.raises(ValueError, match="BatchNorm2d"):
        bn(np.zeros((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        nn.BatchNorm1d(3)(np.zeros((2, 3, 1, 1), np.float32))


def test_batchnorm_without_running_stats_uses_batch_stats_in_eval(rng):
    bn = nn.BatchNorm1d(4, track_running_stats=False).eval()
    x = rng.standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_allclose(bn(x).mean(axis=0), 0, atol=1e-5)
    assert dict(bn.named_buffers()) == {}


def test_train_eval_propagates():
    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2)),
                        nn.Residual(nn.Identity()), nn.Concat(nn.Identity()))
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_sequential_indexing_and_names():
    net = nn.Sequential({"fc1": nn.Linear(2, 3), "act": nn.ReLU(), "fc2": nn.Linear(3, 1)})
    assert net.fc1 is net[0] is net["fc1"] and net[-1] is net.fc2 and len(net) == 3
    assert [n for n, _ in net.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    plain = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    assert [n for n, _ in plain.named_parameters()] == ["0.weight", "0.bias"]
    with pytest.raises(AttributeError):
        net.fc3
    with pytest.raises(TypeError):
        nn.Sequential(nn.ReLU(), "relu")


def test_residual_shape_mismatch_is_a_clear_error(rng):
    block = nn.Residual(nn.Conv2d(2, 3, 1))
    with pytest.raises(ValueError, match="projection"):
        block(rng.standard_normal((1, 2, 3, 3)).astype(np.float32))


def test_linear_rejects_4d_input():
    with pytest.raises(ValueError, match="Flatten"):
        nn.Linear(4, 2)(np.zeros((1, 1, 2, 2), np.float32))


# --------------------------------------------------------------------------- initialisation

def test_default_init_matches_pytorch_bounds():
    nn.init.seed(0)
    conv = nn.Conv2d(16, 32, 3)
    fan_in = 16 * 9
    bound = 1 / np.sqrt(fan_in)
    w = conv.weight.data
    assert w.dtype == np.float32 and np.abs(w).max() <= bound
    # Uniform on [-bound, bound]: variance bound**2 / 3.
    assert abs(w.var() - bound**2 / 3) < 0.05 * bound**2
    assert np.abs(conv.bias.data).max() <= bound and conv.bias.data.std() > 0
    lin = nn.Linear(100, 10)
    assert np.abs(lin.weight.data).max() <= 0.1 and np.abs(lin.bias.data).max() <= 0.1
    bn = nn.BatchNorm2d(4)
    np.testing.assert_array_equal(bn.weight.data, 1)
    np.testing.assert_array_equal(bn.bias.data, 0)


def test_init_is_seedable():
    nn.init.seed(11)
    a = nn.Conv2d(3, 4, 3).weight.data
    nn.init.seed(11)
    b = nn.Conv2d(3, 4, 3).weight.data
    np.testing.assert_array_equal(a, b)
    with nn.init.seeded(11):
        c = nn.Conv2d(3, 4, 3).weight.data
    np.testing.assert_array_equal(a, c)
    d = nn.Conv2d(3, 4, 3, rng=np.random.default_rng(11)).weight.data
    np.testing.assert_array_equal(a, d)


# --------------------------------------------------------------------------- state_dict

def _small_net():
    with nn.init.seeded(0):
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8, 3))


def test_state_dict_round_trip(rng):
    a, b = _small_net(), _small_net()
    x = rng.standard_normal((4, 1, 4, 4)).astype(np.float32)
    a(x)                                    # changes a's running statistics
    for p in b.parameters():
        p.data += 1
    state = a.state_dict()
    assert set(state) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                          "1.running_var", "1.num_batches_tracked", "4.weight", "4.bias"}
    b.load_state_dict(state)
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x), b(x))
    state["0.weight"][...] = 0              # state_dict holds copies
    assert a[0].weight.data.any()


def test_load_state_dict_errors():
    net = _small_net()
    state = net.state_dict()
    wrong_name = dict(state)
    wrong_name["0.weights"] = wrong_name.pop("0.weight")
    with pytest.raises(ValueError, match="0.weight"):
        net.load_state_dict(wrong_name)
    wrong_shape = dict(state, **{"4.weight": np.zeros((3, 9), np.float32)})
    with pytest.raises(ValueError, match=r"4.weight has shape \(3, 9\)"):
        net.load_state_dict(wrong_shape)
    missing = dict(state)
    del missing["1.running_var"]
    with pytest.raises(ValueError, match="missing"):
        net.load_state_dict(missing)


def test_to_float64_converts_everything():
    net = _small_net().to(np.float64)
    assert net.dtype == np.float64
    state = net.state_dict()
    # every float array; BN's step counter stays an integer, as in PyTorch
    assert all(v.dtype == np.float64 for k, v in state.items() if k != "1.num_batches_tracked")
    assert state["1.num_batches_tracked"].dtype == np.int64
    assert all(p.grad.dtype == np.float64 for p in net.parameters())


# --------------------------------------------------------------------------- losses

def test_cross_entropy_value_gradient_and_stability(rng):
    loss = nn.CrossEntropyLoss()
    logits = rng.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    want = -np.mean(np.log(p[np.arange(5), labels]))
    assert loss(logits, labels) == pytest.approx(want, rel=1e-12)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(loss.backward(), (p - onehot) / 5, rtol=1e-12)
    np.testing.assert_allclose(loss.backward(), (p - onehot) / 5, rtol=1e-12)   # repeatable

    def f():
        return loss.forward(logits, labels)
    from helpers import numerical_grad
    loss(logits, labels)
    analytic = loss.backward()
    np.testing.assert_allclose(analytic, numerical_grad(f, logits), rtol=1e-6, atol=1e-9)
    # Huge logits: no overflow, no NaN (a naive softmax would give inf / inf).
    big = np.array([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]], np.float32)
    value = loss(big, np.array([0, 0]))
    assert np.isfinite(value) and value == pytest.approx(1e4, rel=1e-6)
    assert np.all(np.isfinite(loss.backward())) and loss.backward().dtype == np.float32


def test_cross_entropy_matches_torch(rng):
    torch = pytest.importorskip("torch")
    logits = rng.standard_normal((6, 10))
    labels = rng.integers(0, 10, 6)
    t = torch.from_numpy(logits).requires_grad_(True)
    want = torch.nn.functional.cross_entropy(t, torch.from_numpy(labels))
    want.backward()
    loss = nn.CrossEntropyLoss()
    assert loss(logits, labels) == pytest.approx(want.item(), rel=1e-12)
    np.testing.assert_allclose(loss.backward(), t.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_cross_entropy_rejects_bad_labels():
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="labels"):
        loss(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        loss(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="logits"):
        loss(np.zeros(3), np.array([0]))
    with pytest.raises(ValueError, match="at least one class"):
        loss(np.zeros((2, 0)), np.array([0, 0]))
    with pytest.raises(ValueError, match=r"got values in \[0, 18446744073709551615\]"):
        loss(np.zeros((2, 3)), np.array([0, 2**64 - 1], np.uint64))
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        loss(np.zeros((2, 3), np.float32), np.array([-1, 1]))
    with pytest.raises(TypeError, match="real numbers"):
        loss(np.zeros((2, 3), complex), np.array([0, 1]))


def test_mse_loss(rng):
    loss = nn.MSELoss()
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    assert loss(a, b) == pytest.approx(np.mean((a - b) ** 2))
    np.testing.assert_allclose(loss.backward(), 2 * (a - b) / a.size)
    with pytest.raises(ValueError):
        loss(a, b[:2])


# --------------------------------------------------------------------------- fold_batchnorm

@pytest.mark.parametrize("bias", [True, False])
def test_fold_batchnorm_conv_and_linear(bias, rng):
    """Eval-mode BN after a conv / linear folds into it: W' = a W, b' = a (b - mu) + beta with
    a = gamma / sqrt(var + eps); float64 outputs agree to 1e-10."""
    with nn.init.seeded(0):
        net = nn.Sequential(nn.Conv2d(2, 3, 3, bias=bias), nn.BatchNorm2d(3), nn.ReLU(),
                            nn.Flatten(), nn.Linear(27, 4, bias=bias), nn.BatchNorm1d(4),
                            nn.BatchNorm1d(4, affine=False)).to(np.float64)
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean[...] = rng.standard_normal(m.num_features)
            m.running_var[...] = rng.uniform(0.2, 3.0, m.num_features)
            if m.affine:
                m.weight.data[...] = rng.standard_normal(m.num_features)
                m.bias.data[...] = rng.standard_normal(m.num_features)
    net.eval()
    x = rng.standard_normal((5, 2, 5, 5))
    want = net(x)
    folded = nn.fold_batchnorm(net)
    kinds = [type(m).__name__ for m in folded]
    # The second BN1d follows a BN, not a linear layer: it stays.
    assert kinds == ["Conv2d", "Identity", "ReLU", "Flatten", "Linear", "Identity", "BatchNorm1d"]
    assert folded[0].bias is not None and folded[4].bias is not None
    np.testing.assert_allclose(folded(x), want, rtol=1e-10, atol=1e-12)
    assert isinstance(net[1], nn.BatchNorm2d)            # the original is untouched


def test_fold_batchnorm_float32_model_stays_float32(rng):
    with nn.init.seeded(1):
        net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)).eval()
    folded = nn.fold_batchnorm(net)
    assert folded[0].weight.data.dtype == np.float32 and folded[0].bias.data.dtype == np.float32
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(folded(x), net(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- repr

def test_repr_is_readable():
    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(1176, 10, bias=False), nn.Dropout(0.25),
                        nn.BatchNorm1d(10))
    text = repr(net)
    assert text.splitlines() == [
        "Sequential(",
        "  (0): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))",
        "  (1): ReLU(inplace=True)",
        "  (2): MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))",
        "  (3): Flatten()",
        "  (4): Linear(in_features=1176, out_features=10, bias=False)",
        "  (5): Dropout(p=0.25)",
        "  (6): BatchNorm1d(10, eps=1e-05, momentum=0.1)",
        ")",
    ]
    block = nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1)), activation=nn.ReLU())
    assert "(body): Sequential(" in repr(block) and "(activation): ReLU()" in repr(block)


def test_conv_without_a_trainable_bias_asks_for_no_db(rng, monkeypatch):
    """A Conv2d without a bias (or with its bias frozen) asks the op for no db (need_db=False,
    one pass over dy fewer); with a bias it does, and the gradients are the same either way."""
    asked, real = [], F.conv2d_backward

    def recorder(*args, **kwargs):
        asked.append(kwargs.get("need_db", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "conv2d_backward", recorder)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    with_bias = nn.Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(0))
    no_bias = nn.Conv2d(3, 4, 3, padding=1, bias=False, rng=np.random.default_rng(0))
    no_bias.weight.data[...] = with_bias.weight.data
    dy = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    grads = []
    for layer in (with_bias, no_bias):
        layer(x)
        grads.append((layer.backward(dy), layer.weight.grad.copy()))
    with_bias.bias.requires_grad = False
    with_bias.zero_grad()
    with_bias(x)
    with_bias.backward(dy)
    assert asked == [True, False, False]
    assert not np.any(with_bias.bias.grad)
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    np.testing.assert_array_equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_conv_backward_through_relu_is_relu_backward(mode, rng):
    """Conv2d.backward_through_relu is relu_backward of backward, against the layer's input
    (not its padded copy, which a padding mode other than zeros keeps), and the same
    parameter gradients."""
    x = np.maximum(rng.standard_normal((2, 16, 6, 7)), 0).astype(np.float32)
    dy = rng.standard_normal((2, 16, 6, 7)).astype(np.float32)
    convs = [nn.Conv2d(16, 16, 3, padding=1, padding_mode=mode, bias=True,
                       rng=np.random.default_rng(0)) for _ in range(2)]
    for conv in convs:
        conv(x)
    want = F.relu_backward(convs[0].backward(dy), x)
    got = convs[1].backward_through_relu(dy)
    np.testing.assert_array_equal(got, want)
    for p, q in zip(convs[0].parameters(), convs[1].parameters()):
        np.testing.assert_array_equal(p.grad, q.grad)


def _layer_by_layer(layers, x, g):
    """(output, dx): x through each layer's own forward, g back through each backward."""
    for layer in layers:
        x = layer.forward(x)
    for layer in reversed(layers):
        g = layer.backward(g)
    return x, g


@pytest.mark.parametrize("algo", ["direct", "im2col", "winograd"])
def test_sequential_conv_relu_pool_is_one_kernel_call(algo, dtype, rng, monkeypatch):
    """Conv2d -> ReLU -> MaxPool2d(2) runs as one F.conv2d_max_pool call (the kernel pools
    each image as it writes it), in training and under no_grad; output, dx and gradients
    are bitwise those of the layers one at a time. Pools that are not plain 2x2 stride 2
    (stride 1, padding, ceil_mode, returned indices) and a layer whose forward was replaced
    run as before."""
    calls = []
    conv2d_max_pool = F.conv2d_max_pool
    monkeypatch.setattr(F, "conv2d_max_pool",
                        lambda *a, **k: calls.append(1) or conv2d_max_pool(*a, **k))

    def make(pool):
        return [nn.Conv2d(3, 16, 3, padding=1, algo=algo, rng=np.random.default_rng(1),
                          dtype=dtype), nn.ReLU(), pool]
    x = rng.standard_normal((2, 3, 9, 9)).astype(dtype)
    x[1, 0, 4, 4] = np.nan
    for pool, fused in [(nn.MaxPool2d(2), 1), (nn.MaxPool2d(2, stride=1), 0),
                        (nn.MaxPool2d(2, padding=1), 0), (nn.MaxPool2d(2, ceil_mode=True), 0)]:
        calls.clear()
        seq = nn.Sequential(*make(pool))
        y = seq(x)
        g = rng.standard_normal(y.shape).astype(dtype)
        dx = seq.backward(g)
        assert len(calls) == fused
        layers = make(type(pool)(pool.kernel_size, pool.stride, pool.padding,
                                 ceil_mode=pool.ceil_mode))
        want_y, want_dx = _layer_by_layer(layers, x, g)
        for got, want in [(y, want_y), (dx, want_dx), (seq[0].weight.grad, layers[0].weight.grad),
                          (seq[0].bias.grad, layers[0].bias.grad)]:
            np.testing.assert_array_equal(got.view(f"u{got.itemsize}"),
                                          want.view(f"u{want.itemsize}"))
        with no_grad():
            np.testing.assert_array_equal(seq(x), want_y)
    seq = nn.Sequential(*make(nn.MaxPool2d(2)))
    seq[2].forward = lambda a: F.max_pool2d(a, 2)         # as fastconv.viz does
    calls.clear()
    np.testing.assert_array_equal(seq(x), F.max_pool2d(
        F.relu(F.conv2d(x, seq[0].weight.data, seq[0].bias.data, 1, 1, algo=algo)), 2))
    assert calls == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sequential_fused_neighbours_equal_layer_by_layer(dtype, rng):
    """Sequential runs Conv2d + ReLU + MaxPool2d(2), Conv2d + ReLU and Linear + ReLU
    forward, and ReLU + MaxPool2d, ReLU + Linear and ReLU + Conv2d backward, as one pass
    each: the output, dx and every gradient are bitwise those of the layers one at a time
    (a NaN in the input included)."""
    def make():
        layers = [nn.Conv2d(2, 4, 3, padding=1, rng=np.random.default_rng(1), dtype=dtype),
                  nn.ReLU(), nn.MaxPool2d(2),
                  nn.Conv2d(4, 6, 3, rng=np.random.default_rng(2), dtype=dtype),
                  nn.ReLU(inplace=True),
                  nn.Conv2d(6, 6, 3, padding=1, algo="winograd", rng=np.random.default_rng(5),
                            dtype=dtype),
                  nn.ReLU(), nn.MaxPool2d(2, stride=1), nn.Flatten(),
                  nn.Linear(6, 5, rng=np.random.default_rng(3), dtype=dtype), nn.ReLU(),
                  nn.Linear(5, 3, rng=np.random.default_rng(4), dtype=dtype)]
        return layers
    x = rng.standard_normal((3, 2, 8, 8)).astype(dtype)
    x[1, 0, 2, 2] = np.nan
    g = rng.standard_normal((3, 3)).astype(dtype)
    seq = nn.Sequential(*make())
    y = seq(x)
    dx = seq.backward(g)
    layers = make()
    want_y, want_dx = _layer_by_layer(layers, x, g)
    for got, want in [(y, want_y), (dx, want_dx)] + [
            (p.grad, q.grad) for p, q in zip(seq.parameters(),
                                             [p for m in layers for p in m.parameters()])]:
        np.testing.assert_array_equal(got.view(f"u{got.itemsize}"),
                                      want.view(f"u{want.itemsize}"))
    assert np.isnan(y[1]).any() and np.isfinite(y[0]).all()     # the NaN went through
