"""The fused inference path: conv2d's epilogue (relu=, residual=), fuse_for_inference and
Module.predict, against the unfused ops and the unfused eval model."""
import numpy as np
import pytest
from helpers import assert_close, outputs_with_isa

import fastconv
import fastconv.functional as F
from fastconv import nn
from fastconv.models import get_model

# (N, C, H, K, R, stride, padding): each reaches another output write of the kernels:
# im2col's classic path (C*S < 16), its channels-last path, the 1x1 GEMM, and the direct
# kernel's row updates (K < 4) and register tiles, strided or not.
EPILOGUE_SHAPES = [
    (3, 1, 12, 6, 5, 1, 2),
    (2, 8, 9, 16, 3, 1, 1),
    (2, 16, 8, 32, 3, 2, 1),
    (2, 8, 7, 16, 1, 1, 0),
    (2, 3, 10, 2, 3, 1, 1),
    (2, 4, 11, 5, 3, 2, 0),
]


@pytest.mark.parametrize("shape", EPILOGUE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("algo", ["direct", "im2col"])
@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_conv2d_epilogue_equals_the_separate_ops_bit_for_bit(shape, algo, backend, dtype, rng):
    N, C, H, K, R, stride, pad = shape
    x = rng.standard_normal((N, C, H, H)).astype(dtype)
    w = rng.standard_normal((K, C, R, R)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    kw = dict(algo=algo, backend=backend)
    y = F.conv2d(x, w, b, stride, pad, **kw)
    res = rng.standard_normal(y.shape).astype(dtype)
    both = F.conv2d(x, w, b, stride, pad, relu=True, residual=res, **kw)
    np.testing.assert_array_equal(both, F.relu(y + res, backend=backend))
    np.testing.assert_array_equal(F.conv2d(x, w, b, stride, pad, residual=res, **kw), y + res)
    relu_only = F.conv2d(x, w, None, stride, pad, relu=True, **kw)
    np.testing.assert_array_equal(relu_only, F.relu(F.conv2d(x, w, None, stride, pad, **kw)))
    assert (both >= 0).all() and both.dtype == dtype
    # the fast kernels agree with the reference's epilogue
    ref = F.conv2d(x, w, b, stride, pad, relu=True, residual=res, algo=algo, backend="reference")
    assert_close(both, ref, reduction=C * R * R)


@pytest.mark.parametrize("algo", ["direct", "im2col"])
def test_conv2d_epilogue_is_thread_invariant_and_keeps_nan(algo, rng):
    x = rng.standard_normal((5, 8, 10, 10)).astype(np.float32)
    w = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
    res = rng.standard_normal((5, 12, 10, 10)).astype(np.float32)
    res[1, 2, 3, 4] = np.nan
    res[2, 0, 0, 0] = -np.inf
    outs = []
    for threads in (1, 2):
        with fastconv.num_threads(threads):
            outs.append(F.conv2d(x, w, None, 1, 1, algo=algo, relu=True, residual=res))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.isnan(outs[0][1, 2, 3, 4])                  # relu keeps NaN, as F.relu
    assert outs[0][2, 0, 0, 0] == 0                      # relu(-inf) = 0
    assert np.isnan(outs[0]).sum() == 1


_RELU_RUN = """
import sys
import numpy as np
import fastconv.functional as F
rng = np.random.default_rng(0)
out = {}
for C, K, H, R, stride, pad in [(1, 6, 28, 5, 1, 2), (3, 13, 11, 3, 2, 1), (2, 17, 9, 3, 1, 0)]:
    x = rng.standard_normal((2, C, H, H)).astype(np.float32)
    x[1, 0, 3, 4] = np.nan
    x[0, -1, 1, 2] = -np.inf
    w = rng.standard_normal((K, C, R, R)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    key = f"{C}_{K}_{H}_{R}_{stride}_{pad}"
    out[key] = F.conv2d(x, w, b, stride, pad, algo="direct", relu=True)
    out[key + "_want"] = F.relu(F.conv2d(x, w, b, stride, pad, algo="direct"))
np.savez(sys.argv[1], **out)
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_direct_relu_in_the_tiles_equals_relu_after_bit_for_bit(isa, tmp_path):
    """A first layer's direct forward applies ReLU as its register tiles are stored (AVX2
    and AVX-512 copies), the other paths in a pass after: each, in a fresh process with
    FASTCONV_ISA, equals F.relu of the plain output bit for bit, NaN and -inf included."""
    out = outputs_with_isa(_RELU_RUN, isa, tmp_path)
    for key in (k for k in out.files if not k.endswith("_want")):
        np.testing.assert_array_equal(out[key], out[key + "_want"])
        assert np.isnan(out[key]).any() and (out[key] == 0).any()


# ------------------------------------------------------------------ conv + 2x2 max pool

def _specials(dtype):
    """(1, 1, 6, 7) planes whose 2x2 windows hold NaN in each cell, +-inf and equal
    maxima; an odd last column (in no window)."""
    x = np.array([[0.0, 2.0, 2.0, 0.0, 1.0, 1.0, 5.0],
                  [2.0, -0.0, 0.0, 2.0, 1.0, 1.0, 5.0],
                  [np.nan, 1.0, 2.0, np.nan, -np.inf, -np.inf, 5.0],
                  [3.0, 4.0, -1.0, 9.0, -np.inf, np.inf, 5.0],
                  [-1.0, -2.0, 7.0, 7.0, 3.0, 2.0, 5.0],
                  [-3.0, np.nan, 7.0, 7.0, 2.0, np.nan, 5.0]], dtype=dtype)
    return x[None, None]


@pytest.mark.parametrize("backend", ["fast", "reference"])
def test_conv2d_max_pool_keeps_max_pool2d_rule_on_nan_and_infinity(backend, dtype):
    """With a 1x1 identity kernel the pooling sees the input's values: NaN wins wherever it
    is in the window, -inf loses to everything, +inf wins; the bits of max_pool2d's answer,
    on the direct and the im2col kernels."""
    x = _specials(dtype)
    w = np.ones((1, 1, 1, 1), dtype)
    for algo in ("direct", "im2col"):
        y, pooled = F.conv2d_max_pool(x, w, algo=algo, backend=backend)
        want = F.max_pool2d(y, 2, backend=backend)
        np.testing.assert_array_equal(pooled.view(f"u{pooled.itemsize}"),
                                      want.view(f"u{want.itemsize}"))
        assert np.isnan(pooled[0, 0, 1, :2]).all() and np.isnan(pooled[0, 0, 2, ::2]).all()
        assert pooled[0, 0, 1, 2] == np.inf and pooled[0, 0, 2, 1] == 7


def test_conv2d_max_pool_shapes_and_groups(rng):
    """Unbatched input, an empty batch, grouped and depthwise convolutions (pooled after
    the call) and a single-row output (nothing to pool)."""
    x = rng.standard_normal((2, 4, 10, 10)).astype(np.float32)
    for w_shape, groups in [((4, 1, 3, 3), 4), ((6, 2, 3, 3), 2)]:
        w = rng.standard_normal(w_shape).astype(np.float32)
        y, pooled = F.conv2d_max_pool(x, w, None, 1, 1, groups=groups, relu=True)
        np.testing.assert_array_equal(y, F.conv2d(x, w, None, 1, 1, groups=groups, relu=True))
        np.testing.assert_array_equal(pooled, F.max_pool2d(y, 2))
    y, pooled = F.conv2d_max_pool(x[0], w, None, 1, 1, groups=2)
    assert y.shape == (6, 10, 10) and pooled.shape == (6, 5, 5)
    np.testing.assert_array_equal(pooled, F.max_pool2d(y, 2))
    y, pooled = F.conv2d_max_pool(x[:0], w, None, 1, 1, groups=2)
    assert y.shape == (0, 6, 10, 10) and pooled.shape == (0, 6, 5, 5)
    y, pooled = F.conv2d_max_pool(x, rng.standard_normal((3, 4, 10, 3)).astype(np.float32))
    assert y.shape == (2, 3, 1, 8) and pooled.shape == (2, 3, 0, 4)


_POOL_RUN = """
import sys
import numpy as np
import fastconv.functional as F
rng = np.random.default_rng(0)
out = {}
for C, K, H, R, pad, algo in [(1, 6, 28, 5, 2, "direct"), (6, 16, 14, 5, 0, "im2col"),
                              (3, 5, 13, 3, 1, "direct"), (16, 16, 9, 3, 1, "winograd"),
                              (4, 7, 35, 3, 0, "im2col")]:
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((2, C, H, H)).astype(dtype)
        x[1, 0, 3, 4] = np.nan
        w = rng.standard_normal((K, C, R, R)).astype(dtype)
        key = f"{C}_{K}_{H}_{R}_{pad}_{algo}_{np.dtype(dtype).name}"
        y, out[key] = F.conv2d_max_pool(x, w, None, 1, pad, algo=algo, relu=True)
        out[key + "_want"] = F.max_pool2d(y, 2)
np.savez(sys.argv[1], **out)
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_conv2d_max_pool_on_every_instruction_set(isa, tmp_path):
    """The pooling's AVX-512 loop (16 windows at a time, a NaN-free fast path) and its plain
    loop, each in a fresh process with FASTCONV_ISA, equal max_pool2d bit for bit."""
    out = outputs_with_isa(_POOL_RUN, isa, tmp_path)
    for key in (k for k in out.files if not k.endswith("_want")):
        np.testing.assert_array_equal(out[key], out[key + "_want"])
        assert np.isnan(out[key]).any()


def test_conv2d_max_pool_bad_arguments(rng):
    from fastconv._backend import load_kernels
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"conv2d_max_pool: b must have shape \(4,\)"):
        F.conv2d_max_pool(x, w, np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="conv2d_max_pool"):
        F.conv2d_max_pool(x, w.astype(np.float64))
    for name in ("conv_direct", "conv_im2col"):
        with pytest.raises(ValueError, match=r"pool_out must have shape \(2, 4, 3, 3\)"):
            load_kernels(name).conv2d_forward(x, w, None, (1, 1), (0, 0), 1,
                                              pool_out=np.empty((2, 4, 3, 2), np.float32))


def test_conv2d_epilogue_bad_arguments(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"conv2d: residual must have the output's shape "
                                         r"\(2, 4, 6, 6\)"):
        F.conv2d(x, w, residual=np.zeros((2, 4, 8, 8)))
    with pytest.raises(TypeError, match="conv2d: residual has dtype float32 but x has dtype"):
        F.conv2d(x, w, residual=np.zeros((2, 4, 6, 6), np.float32))
    # a strided residual is copied, not misread
    big = rng.standard_normal((2, 4, 6, 12))
    np.testing.assert_array_equal(F.conv2d(x, w, residual=big[..., ::2]),
                                  F.conv2d(x, w) + big[..., ::2])


# --------------------------------------------------------------------------- whole models

def _trained_looking(model, rng):
    """Give every BatchNorm running statistics and an affine map far from the initial ones,
    so that folding them is not trivially exact."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            C = m.num_features
            m.running_mean[...] = rng.normal(0, 0.3, C)
            m.running_var[...] = rng.uniform(0.3, 3, C)
            m.weight.data[...] = rng.uniform(0.5, 1.5, C)
            m.bias.data[...] = rng.normal(0, 0.3, C)
    return model


# (name, kwargs, fused convs with ReLU, fused residual blocks)
# (name, kwargs, fused convs with ReLU, of them pooling too, fused residual blocks)
MODELS = [
    ("lenet5", {}, 2, 2, 0),
    ("lenet5", dict(batch_norm=True), 2, 2, 0),
    ("resnet20", {}, 19 - 9, 0, 9),              # conv + the first conv of each block
    ("vgg11", dict(batch_norm=True, input_size=32), 8, 5, 0),
]


@pytest.mark.parametrize("name,kwargs,n_relu,n_pool,n_res", MODELS,
                         ids=["lenet5", "lenet5_bn", "resnet20", "vgg11_bn"])
def test_fuse_for_inference_equals_the_eval_model(name, kwargs, n_relu, n_pool, n_res, dtype,
                                                  rng, layer_test_backend):
    model = _trained_looking(get_model(name, dtype=dtype, seed=0, **kwargs), rng)
    size = kwargs.get("input_size", 28)
    x = rng.standard_normal((3, 1, size, size)).astype(dtype)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    fused = nn.fuse_for_inference(model)
    assert model.training                                  # the original is untouched
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    layers = fused.modules()
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)) for m in layers)
    assert sum(isinstance(m, nn.FusedConv2d) and m.relu for m in layers) == n_relu
    assert sum(isinstance(m, nn.FusedConv2d) and m.pool for m in layers) == n_pool
    assert not any(isinstance(m, nn.MaxPool2d) and m.pools_2x2() for m in layers)
    assert sum(isinstance(m, nn.FusedResidual) for m in layers) == n_res
    assert fused.fused_for_inference and not fused.training
    want = model.eval()(x)
    got = fused(x)
    assert got.dtype == dtype
    assert_close(got, want, reduction=500)
    assert_close(model.predict(x, batch_size=2), want, reduction=500)


def test_fused_model_does_not_follow_later_training_of_the_original(rng, layer_test_backend):
    model = get_model("lenet5", seed=0)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    fused = nn.fuse_for_inference(model)
    y = fused(x)
    model.fc3.weight.data += 1                             # e.g. an optimiser step
    model.conv1.weight.data *= 2
    np.testing.assert_array_equal(fused(x), y)
    assert not np.allclose(model.predict(x), y)            # predict uses the new weights


def test_predict_batches_restores_the_mode_and_keeps_no_caches(rng, layer_test_backend):
    model = _trained_looking(get_model("resnet20", seed=0), rng)
    x = rng.standard_normal((7, 1, 28, 28)).astype(np.float32)
    want = model.eval()(x)
    model.train()
    whole = model.predict(x)
    np.testing.assert_array_equal(model.predict(x, batch_size=3),
                                  np.concatenate([model.predict(x[i:i + 3])
                                                  for i in (0, 3, 6)]))
    assert model.training
    assert_close(whole, want, reduction=500)
    fused = nn.fuse_for_inference(model)
    direct = fused(x)
    np.testing.assert_array_equal(fused.predict(x), direct)
    assert not any(isinstance(v, np.ndarray) for m in fused.modules()
                   for k, v in vars(m).items() if k.startswith("_"))


def test_predict_bad_arguments(layer_test_backend):
    model = get_model("lenet5", seed=0)
    x = np.zeros((2, 1, 28, 28), np.float32)
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="predict: batch_size must be a positive int"):
            model.predict(x, batch_size=bad)
    with pytest.raises(ValueError, match="predict: x must hold at least one input"):
        model.predict(x[:0])
    with pytest.raises(ValueError, match=r"conv2d(_max_pool)?: w has 1 input channels"):
        model.predict(np.zeros((2, 3, 28, 28), np.float32))


def test_fused_layers_are_inference_only(rng, layer_test_backend):
    fused = nn.fuse_for_inference(get_model("resnet20", seed=0))
    y = fused(rng.standard_normal((2, 1, 28, 28)).astype(np.float32))
    with pytest.raises(RuntimeError, match="FusedResidual is for inference only"):
        fused.backward(np.ones_like(y))
    with pytest.raises(TypeError, match="fuse_for_inference: model must be"):
        nn.fuse_for_inference(lambda x: x)
    assert "FusedConv2d(1, 16, kernel_size=(3, 3)" in repr(fused) and "relu=True" in repr(fused)


@pytest.mark.parametrize("name", ["resnet20", "lenet5"])
def test_summary_of_a_fused_model(name, layer_test_backend):
    """summary sees through the fused blocks (a conv that pools too included): same
    receptive field and output, the convs' multiply-adds."""
    from fastconv.summary import summary
    model = get_model(name, seed=0, **({"batch_norm": True} if name == "lenet5" else {}))
    fused = nn.fuse_for_inference(model)
    plain, folded = (summary(m, (1, 28, 28), print_fn=None) for m in (model, fused))
    assert folded.receptive_field == plain.receptive_field
    assert folded.rows[-1]["output_shape"] == plain.rows[-1]["output_shape"]
    bn_macs = sum(r["macs"] for r in plain.rows if "BatchNorm" in r["type"])
    assert folded.total_macs == plain.total_macs - bn_macs


def test_fuse_leaves_unknown_patterns_as_they_are(rng, layer_test_backend):
    """A conv followed by a Sigmoid, a Concat of branches and a ReLU that follows a Linear
    run unfused (correctly); a conv + ReLU inside a branch is fused."""
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.Sigmoid(),
        nn.Concat(nn.Sequential(nn.Conv2d(4, 3, 1), nn.ReLU()), nn.Conv2d(4, 2, 3, padding=1)),
        nn.Flatten(), nn.Linear(5 * 6 * 6, 3), nn.ReLU())
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    fused = nn.fuse_for_inference(net)
    assert sum(isinstance(m, nn.FusedConv2d) for m in fused.modules()) == 1
    assert_close(fused(x), net.eval()(x), reduction=50)
