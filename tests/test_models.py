"""The classic models: output shapes on 28x28 grey and 32x32 colour input, parameter counts
(verified against the same architectures built with torch.nn), forward parity with PyTorch
when torch is installed, fold_batchnorm on whole models, and a whole-model gradcheck."""

import numpy as np
import pytest

import fastconv
from fastconv import nn
from fastconv.models import MODELS, get_model

from helpers import assert_close


pytestmark = pytest.mark.usefixtures("layer_test_backend")


# Counted with torch 2.13 on the equivalent torch.nn models (the mirrors below):
# (in_channels, num_classes) = (1, 10) and (3, 10).
PARAM_COUNTS = {
    "lenet5": (61_706, 62_006),
    "lenet5_bn": (62_158, 62_458),
    "alexnet": (23_271_114, 23_272_266),
    "vgg11": (9_749_770, 9_750_922),
    "vgg11_bn": (9_755_274, 9_756_426),
    "vgg16": (15_243_978, 15_245_130),
    "vgg16_bn": (15_252_426, 15_253_578),
    "nin": (957_386, 966_986),
    "googlenet": (6_162_794, 6_166_250),
    "resnet20": (272_186, 272_474),
    "resnet32": (466_618, 466_906),
    "resnet56": (855_482, 855_770),
    "mobilenet": (542_474, 543_050),
    "mobilenet_plain": (4_672_490, 4_673_066),
}


def test_registry_lists_every_model():
    assert set(MODELS) == set(PARAM_COUNTS)
    with pytest.raises(ValueError, match="unknown model"):
        get_model("lenet6")
    assert get_model("LeNet5").num_parameters() == 61_706


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "alexnet" else n
                                  for n in MODELS])
def test_parameter_counts(name):
    grey = get_model(name, in_channels=1, input_size=28)
    colour = get_model(name, in_channels=3, input_size=32)
    assert (grey.num_parameters(), colour.num_parameters()) == PARAM_COUNTS[name]
    assert grey.dtype == np.float32


def test_resnet_shortcut_options():
    # He et al. option A is parameter-free: the paper's 0.27M / 0.46M / 0.85M.
    assert get_model("resnet20", in_channels=3, shortcut="A").num_parameters() == 269_722
    assert get_model("resnet32", in_channels=3, shortcut="A").num_parameters() == 464_154
    assert get_model("resnet56", in_channels=3, shortcut="A").num_parameters() == 853_018
    # The course notes' 3x3 projection.
    assert get_model("resnet20", in_channels=3, shortcut="conv3x3").num_parameters() == 292_954


# The heavy models run once per input kind with batch 2; GoogLeNet and the VGG-16s only on
# the smaller input (the shape logic is the same).
SHAPE_CASES = [(n, 1, 28) for n in MODELS] + [
    (n, 3, 32) for n in MODELS if n not in ("googlenet", "vgg16", "vgg16_bn", "resnet56")]


@pytest.mark.parametrize("name,channels,size", SHAPE_CASES,
                         ids=[f"{n}-{c}x{s}" for n, c, s in SHAPE_CASES])
def test_output_shapes_train_and_eval(name, channels, size, rng):
    model = get_model(name, in_channels=channels, num_classes=7, input_size=size, seed=0)
    x = rng.standard_normal((2, channels, size, size)).astype(np.float32)
    y = model(x)
    assert y.shape == (2, 7) and y.dtype == np.float32 and np.all(np.isfinite(y))
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert all(np.all(np.isfinite(p.grad)) for p in model.parameters())
    model.eval()
    assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", ["lenet5", "lenet5_bn", "resnet20"])
def test_sgd_steps_lower_the_loss(name, rng):
    """Plain SGD (p -= lr * grad) on one fixed batch: the loss must go down."""
    model = get_model(name, seed=0)
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    criterion = nn.CrossEntropyLoss()
    losses = []
    for _ in range(5):
        losses.append(criterion(model(x), labels))
        model.zero_grad()
        model.backward(criterion.backward())
        for p in model.parameters():
            p.data -= 0.05 * p.grad
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.02, losses


def test_models_are_seedable():
    a, b = get_model("lenet5", seed=3), get_model("lenet5", seed=3)
    c = get_model("lenet5", seed=4)
    for (_, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(),
                                         c.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
        assert not np.array_equal(pa.data, pc.data)


def test_models_float64():
    model = get_model("resnet20", dtype=np.float64, seed=0)
    assert all(p.data.dtype == np.float64 for p in model.parameters())
    # every float buffer; BN's num_batches_tracked stays int64, as in PyTorch
    assert all(b.dtype == (np.int64 if name.endswith("num_batches_tracked") else np.float64)
               for name, b in model.named_buffers())
    assert model(np.zeros((2, 1, 28, 28))).dtype == np.float64


def test_model_repr_is_readable():
    text = repr(get_model("lenet5_bn"))
    assert "(conv1): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))" in text
    assert "(bn3): BatchNorm1d(120" in text
    text = repr(get_model("resnet20"))
    assert "(layer2): Sequential(" in text and "(shortcut): Sequential(" in text


@pytest.mark.parametrize("name", ["lenet5_bn", "resnet20", "googlenet"])
def test_fold_batchnorm_whole_model(name, rng):
    """Folded outputs equal the unfolded eval model's (float64, 1e-10)."""
    model = get_model(name, dtype=np.float64, seed=1)
    x = rng.standard_normal((4, 1, 28, 28)) if name != "googlenet" else rng.standard_normal((2, 1, 12, 12))
    model.train()
    model(x)            # move the running statistics away from 0 and 1
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
            m.bias.data[...] = rng.standard_normal(m.bias.shape)
    model.eval()
    want = model(x)
    folded = nn.fold_batchnorm(model)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in folded.modules())
    assert model.training is False and any(
        isinstance(m, nn.BatchNorm2d) for m in model.modules())      # the original is unchanged
    got = folded(x)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())


def test_gradcheck_lenet5_whole_model(rng):
    report = fastconv.gradcheck(get_model("lenet5", seed=0), rng.standard_normal((1, 1, 28, 28)),
                                max_coords=4)
    assert report.ok, str(report)
    model = get_model("lenet5_bn", seed=0)          # BN1d needs a batch of at least 2
    report = fastconv.gradcheck(model, rng.standard_normal((2, 1, 28, 28)), max_coords=4)
    assert report.ok, str(report)


def test_gradcheck_small_resnet_stack(rng):
    """A tiny ResNet: stem + an identity block + a projection block (each shortcut kind)."""
    from fastconv.models.resnet import BasicBlock
    for shortcut in ("A", "B", "conv3x3"):
        with nn.init.seeded(0):
            model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                                  nn.ReLU(inplace=True), BasicBlock(4, 4),
                                  BasicBlock(4, 8, stride=2, shortcut=shortcut),
                                  nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(8, 3))
        report = fastconv.gradcheck(model, rng.standard_normal((3, 2, 6, 6)), max_coords=4)
        assert report.ok, str(report)


def test_gradcheck_small_inception(rng):
    from fastconv.models.googlenet import Inception
    with nn.init.seeded(0):
        block = Inception(3, 2, 2, 3, 2, 2, 2)
    report = fastconv.gradcheck(block, rng.standard_normal((2, 3, 5, 5)), max_coords=3)
    assert report.ok, str(report)
    assert block.out_channels == 2 + 3 + 2 + 2


def test_small_mobilenet_trains_a_step_and_gradchecks(rng):
    """A tiny MobileNet (width 1/8, 8x8 input): one SGD step lowers the loss on its batch, and
    the whole model's gradients (depthwise, pointwise, BN) pass a float64 gradcheck."""
    from fastconv.optim import SGD
    model = get_model("mobilenet", input_size=8, width_mult=0.125, dtype=np.float64, seed=0)
    assert model.block1.dw.groups == 4 and model.block1.dw.weight.shape == (4, 1, 3, 3)
    x, y = rng.standard_normal((4, 1, 8, 8)), np.arange(4) % 10
    loss = nn.CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(2):
        model.zero_grad()
        losses.append(loss.forward(model(x), y))
        model.backward_params(loss.backward())
        opt.step()
    assert losses[1] < losses[0]
    report = fastconv.gradcheck(model, rng.standard_normal((2, 1, 8, 8)), max_coords=3)
    assert report.ok, str(report)


def test_mobilenet_is_cheaper_than_the_plain_net_of_its_depth():
    """What summary shows: the separable blocks cut parameters and multiply-adds about 8x."""
    sep = fastconv.summary(get_model("mobilenet"), (1, 28, 28), print_fn=None)
    plain = fastconv.summary(get_model("mobilenet_plain"), (1, 28, 28), print_fn=None)
    assert plain.total_params > 8 * sep.total_params
    assert plain.total_macs > 8 * sep.total_macs
    dw = [r for r in sep.rows if r["name"].endswith(".dw")]
    assert len(dw) == 7 and dw[0]["params"] == 32 * 9 and dw[0]["macs"] == 32 * 9 * 28 * 28


# --------------------------------------------------------------------------- PyTorch parity

def _torch_models(torch):
    """The same architectures written with torch.nn, following the course notes' code."""
    tnn = torch.nn

    def lenet5(c, bn=False):
        layers = [tnn.Conv2d(c, 6, 5, padding=2)] + ([tnn.BatchNorm2d(6)] if bn else []) + [
            tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(6, 16, 5)] + (
            [tnn.BatchNorm2d(16)] if bn else []) + [
            tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(400, 120)] + (
            [tnn.BatchNorm1d(120)] if bn else []) + [tnn.ReLU(), tnn.Linear(120, 84)] + (
            [tnn.BatchNorm1d(84)] if bn else []) + [tnn.ReLU(), tnn.Linear(84, 10)]
        return tnn.Sequential(*layers)

    def alexnet(c):
        return tnn.Sequential(
            tnn.ZeroPad2d(2),
            tnn.Conv2d(c, 64, 3, stride=2, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(64, 192, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(192, 384, 3, padding=1), tnn.ReLU(),
            tnn.Conv2d(384, 256, 3, padding=1), tnn.ReLU(),
            tnn.Conv2d(256, 256, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
            tnn.Dropout(), tnn.Linear(1024, 4096), tnn.ReLU(), tnn.Dropout(),
            tnn.Linear(4096, 4096), tnn.ReLU(), tnn.Linear(4096, 10))

    def nin(c):
        return tnn.Sequential(
            tnn.Conv2d(c, 192, 5, padding=2), tnn.ReLU(), tnn.Conv2d(192, 160, 1), tnn.ReLU(),
            tnn.Conv2d(160, 96, 1), tnn.ReLU(), tnn.MaxPool2d(3, 2, 1), tnn.Dropout(0.5),
            tnn.Conv2d(96, 192, 5, padding=2), tnn.ReLU(), tnn.Conv2d(192, 192, 1), tnn.ReLU(),
            tnn.Conv2d(192, 192, 1), tnn.ReLU(), tnn.AvgPool2d(3, 2, 1), tnn.Dropout(0.5),
            tnn.Conv2d(192, 192, 3, padding=1), tnn.ReLU(), tnn.Conv2d(192, 192, 1), tnn.ReLU(),
            tnn.Conv2d(192, 10, 1), tnn.ReLU(), tnn.AdaptiveAvgPool2d(1), tnn.Flatten())

    def vgg(cfg, c, bn):
        layers = []
        for v in cfg:
            if v == "M":
                layers.append(tnn.MaxPool2d(2))
                continue
            layers.append(tnn.Conv2d(c, v, 3, padding=1))
            layers += [tnn.BatchNorm2d(v)] if bn else []
            layers.append(tnn.ReLU())
            c = v
        return tnn.Sequential(*layers, tnn.Flatten(), tnn.Dropout(), tnn.Linear(512, 512),
                              tnn.ReLU(), tnn.Dropout(), tnn.Linear(512, 512), tnn.ReLU(),
                              tnn.Linear(512, 10))

    class Inception(tnn.Module):      # the notes' code
        def __init__(self, i, n1, n3r, n3, n5r, n5, pp):
            super().__init__()
            def cbr(a, b, k):
                return [tnn.Conv2d(a, b, k, padding=k // 2), tnn.BatchNorm2d(b), tnn.ReLU()]
            self.b1 = tnn.Sequential(*cbr(i, n1, 1))
            self.b2 = tnn.Sequential(*cbr(i, n3r, 1), *cbr(n3r, n3, 3))
            self.b3 = tnn.Sequential(*cbr(i, n5r, 1), *cbr(n5r, n5, 3), *cbr(n5, n5, 3))
            self.b4 = tnn.Sequential(tnn.MaxPool2d(3, 1, 1), *cbr(i, pp, 1))

        def forward(self, x):
            return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)

    def googlenet(c):
        return tnn.Sequential(
            tnn.Conv2d(c, 192, 3, padding=1), tnn.BatchNorm2d(192), tnn.ReLU(),
            Inception(192, 64, 96, 128, 16, 32, 32), Inception(256, 128, 128, 192, 32, 96, 64),
            tnn.MaxPool2d(3, 2, 1),
            Inception(480, 192, 96, 208, 16, 48, 64), Inception(512, 160, 112, 224, 24, 64, 64),
            Inception(512, 128, 128, 256, 24, 64, 64), Inception(512, 112, 144, 288, 32, 64, 64),
            Inception(528, 256, 160, 320, 32, 128, 128), tnn.MaxPool2d(3, 2, 1),
            Inception(832, 256, 160, 320, 32, 128, 128), Inception(832, 384, 192, 384, 48, 128, 128),
            tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(1024, 10))

    class Block(tnn.Module):          # the notes' ResidualBlock, shortcut by option
        def __init__(self, i, o, stride, shortcut):
            super().__init__()
            self.conv1 = tnn.Conv2d(i, o, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(o)
            self.relu = tnn.ReLU()
            self.conv2 = tnn.Conv2d(o, o, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(o)
            self.down, self.a = None, None
            if stride != 1 or i != o:
                if shortcut == "A":
                    self.a = (i, o, stride)
                else:
                    k = 1 if shortcut == "B" else 3
                    self.down = tnn.Sequential(tnn.Conv2d(i, o, k, stride, k // 2, bias=False),
                                               tnn.BatchNorm2d(o))

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            if self.down is not None:
                x = self.down(x)
            elif self.a is not None:
                i, o, s = self.a
                before = (o - i) // 2
                x = torch.nn.functional.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, before, o - i - before))
            return self.relu(out + x)

    def resnet(depth, c, shortcut="B"):
        n = (depth - 2) // 6
        layers = [tnn.Conv2d(c, 16, 3, padding=1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU()]
        ci = 16
        for stage, w in enumerate((16, 32, 64)):
            for i in range(n):
                layers.append(Block(ci, w, 2 if stage and not i else 1, shortcut))
                ci = w
        return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, 10))

    def mobilenet(c, separable=True):
        from fastconv.models.mobilenet import BLOCKS

        def cbr(a, b, k, stride=1, groups=1):
            return [tnn.Conv2d(a, b, k, stride, k // 2, groups=groups, bias=False),
                    tnn.BatchNorm2d(b), tnn.ReLU()]
        layers, ci = cbr(c, 32, 3), 32
        for out, stride in BLOCKS:
            layers += (cbr(ci, ci, 3, stride, ci) + cbr(ci, out, 1) if separable
                       else cbr(ci, out, 3, stride))
            ci = out
        return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
                              tnn.Linear(ci, 10))

    from fastconv.models.vgg import CONFIGS
    return {
        "mobilenet": mobilenet, "mobilenet_plain": lambda c: mobilenet(c, False),
        "lenet5": lambda c: lenet5(c), "lenet5_bn": lambda c: lenet5(c, True),
        "alexnet": alexnet, "nin": nin, "googlenet": googlenet,
        "vgg11": lambda c: vgg(CONFIGS["vgg11"], c, False),
        "vgg11_bn": lambda c: vgg(CONFIGS["vgg11"], c, True),
        "vgg16": lambda c: vgg(CONFIGS["vgg16"], c, False),
        "vgg16_bn": lambda c: vgg(CONFIGS["vgg16"], c, True),
        "resnet20": lambda c, s="B": resnet(20, c, s), "resnet32": lambda c: resnet(32, c),
        "resnet56": lambda c: resnet(56, c),
    }


@pytest.fixture(scope="module")
def torch_models():
    torch = pytest.importorskip("torch")
    return torch, _torch_models(torch)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_match_torch(name, torch_models):
    torch, builders = torch_models
    counts = tuple(sum(p.numel() for p in builders[name](c).parameters()) for c in (1, 3))
    if name == "alexnet":      # the torch mirror always pads; only the 1-channel count is comparable
        counts = (counts[0], PARAM_COUNTS[name][1])
    assert counts == PARAM_COUNTS[name]


def _copy_into_torch(ours, theirs, torch):
    """Copy parameters and BN buffers in definition order (the structures match)."""
    params = [p.data for p in ours.parameters()]
    tparams = list(theirs.parameters())
    assert len(params) == len(tparams)
    bufs = [b for _, b in ours.named_buffers()]
    tbufs = list(theirs.buffers())          # running statistics and num_batches_tracked
    assert len(bufs) == len(tbufs)
    with torch.no_grad():
        for a, t in zip(params + bufs, tparams + tbufs):
            assert tuple(t.shape) == a.shape
            t.copy_(torch.from_numpy(np.array(a, dtype=np.float64 if a.dtype.kind == "f" else a.dtype)))


@pytest.mark.parametrize("name,kwargs", [
    ("lenet5", {}), ("lenet5_bn", {}),
    pytest.param("nin", {}, marks=pytest.mark.slow),
    pytest.param("alexnet", {}, marks=pytest.mark.slow),
    pytest.param("resnet20", {"shortcut": "B"}, marks=pytest.mark.slow),
    pytest.param("resnet20", {"shortcut": "A"}, marks=pytest.mark.slow),
    pytest.param("resnet20", {"shortcut": "conv3x3"}, marks=pytest.mark.slow),
    pytest.param("mobilenet", {}, marks=pytest.mark.slow),
], ids=["lenet5", "lenet5_bn", "nin", "alexnet", "resnet20-B", "resnet20-A", "resnet20-conv3x3",
        "mobilenet"])
def test_forward_backward_match_torch(name, kwargs, torch_models, rng):
    """float64, weights copied over: training-mode logits, input gradient and BN running
    statistics, then eval-mode logits, agree with PyTorch."""
    torch, builders = torch_models
    ours = get_model(name, dtype=np.float64, seed=0, **kwargs)
    theirs = (builders[name](1, kwargs["shortcut"]) if name == "resnet20"
              else builders[name](1)).double()
    _copy_into_torch(ours, theirs, torch)
    for m in ours.modules():        # Dropout differs in its random masks: switch it off
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    for m in theirs.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x = rng.standard_normal((3, 1, 28, 28))
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = theirs(tx)
    y = ours(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-9, atol=1e-11)
    g = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(g))
    dx = ours.backward(g)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-8, atol=1e-12)
    for (pname, p), tp in zip(ours.named_parameters(), theirs.parameters()):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-8, atol=1e-11, err_msg=pname)
    for (bname, b), tb in zip(ours.named_buffers(), theirs.buffers()):
        np.testing.assert_allclose(b, tb.numpy(), rtol=1e-10, err_msg=bname)
    ours.eval()
    theirs.eval()
    assert_close(ours(x), theirs(torch.from_numpy(x)).detach().numpy())
