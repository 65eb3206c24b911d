"""Fine-tuning: freezing, parameter groups, starting from a checkpoint, precomputed features,
rotation and zoom, models with several inputs and outputs, and the recipe on a small subset."""
import numpy as np
import pytest
from helpers import assert_close

import fastconv
import fastconv.functional as F
import fastconv.nn as nn
from fastconv.data import (ArraysLoader, DataLoader, RandomRotation, RandomZoom, affine_batch,
                           load_dataset, make_augmentation)
from fastconv.models import lenet5
from fastconv.optim import SGD, Adam, param_groups
from fastconv.schedules import CosineWarmRestarts, lr_find
from fastconv.train import (CheckpointError, accuracy, box_iou, fit, fit_multi, load_pretrained,
                            precompute_features, save_checkpoint)

pytestmark = pytest.mark.usefixtures("layer_test_backend")


def _batch(rng, n=8):
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def _step(model, x, y):
    loss = nn.CrossEntropyLoss()
    model.zero_grad()
    loss.forward(model(x), y)
    model.backward_params(loss.backward())


# --------------------------------------------------------------------------- freezing

def test_freeze_by_name_prefix_and_until():
    m = lenet5(seed=0)
    m.freeze("conv1", "fc2.bias")
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1.weight", "conv1.bias", "fc2.bias"}
    m.unfreeze()
    m.freeze(until="fc1")
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert frozen == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                      "fc1.weight", "fc1.bias"]
    m.unfreeze("conv2")
    assert m.conv2.weight.requires_grad and not m.conv1.weight.requires_grad
    assert len(m.trainable_parameters()) == 6


def test_freeze_prefix_that_matches_nothing_is_a_clear_error():
    m = lenet5(seed=0)
    with pytest.raises(ValueError, match="'features' matches no parameter of LeNet5.*conv1"):
        m.freeze("features")
    with pytest.raises(ValueError, match="'conv' matches no parameter"):   # not a name prefix
        m.freeze(until="conv")
    assert all(p.requires_grad for p in m.parameters())


def test_freeze_bn_stats_keeps_frozen_batchnorm_in_eval_mode(rng):
    m = lenet5(batch_norm=True, seed=0)
    m.freeze(until="bn2", freeze_bn_stats=True)
    m.train()
    assert not m.bn1.training and not m.bn2.training and m.bn3.training
    stats = m.bn1.running_mean.copy()
    _step(m, *_batch(rng))
    np.testing.assert_array_equal(m.bn1.running_mean, stats)     # not updated
    assert not np.array_equal(m.bn3.running_mean, np.zeros(120, np.float32))
    m.unfreeze()
    m.train()
    assert m.bn1.training
    m.freeze("bn1")                                  # default: BN keeps training mode
    assert m.train().bn1.training


def test_frozen_parameters_get_no_gradient_and_no_update(rng):
    m = lenet5(seed=0)
    m.freeze("conv1", "fc1")
    before = m.state_dict()
    opt = SGD(m.parameters(), 0.1, momentum=0.9, weight_decay=1e-3)
    x, y = _batch(rng)
    _step(m, x, y)
    assert not np.any(m.conv1.weight.grad) and not np.any(m.fc1.bias.grad)
    assert np.any(m.conv2.weight.grad) and np.any(m.fc3.weight.grad)
    opt.step()
    after = m.state_dict()
    for name in ("conv1.weight", "conv1.bias", "fc1.weight", "fc1.bias"):
        np.testing.assert_array_equal(after[name], before[name])
    assert not np.array_equal(after["conv2.weight"], before["conv2.weight"])


def test_frozen_middle_layers_pass_the_same_gradient_back(rng):
    """A frozen conv or linear between trainable layers passes dx on (the linear computes dx
    only); the trainable layers' gradients are those of the unfrozen model."""
    x, y = _batch(rng)
    ref, m = lenet5(seed=0), lenet5(seed=0)
    m.freeze("conv2", "fc2")
    _step(ref, x, y)
    _step(m, x, y)
    for (name, p), (_, q) in zip(ref.named_parameters(), m.named_parameters()):
        if q.requires_grad:
            assert_close(q.grad, p.grad, np.float32, reduction=400, err_msg=name)


def test_frozen_middle_conv_computes_no_weight_gradient(rng, monkeypatch):
    """A frozen conv between trainable layers asks the kernel for dx alone (need_dw=False);
    the first layer for dw alone; with its weight frozen and its bias trainable, db still
    comes (summed from dy), equal to the unfrozen model's."""
    calls, real = {}, F.conv2d_backward

    def recorder(dy, x, w, *args, **kwargs):
        calls[w.shape] = (kwargs.get("need_dx", True), kwargs.get("need_dw", True))
        return real(dy, x, w, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d_backward", recorder)
    x, y = _batch(rng)
    ref, m = lenet5(seed=0), lenet5(seed=0)
    m.freeze("conv2")
    _step(m, x, y)
    assert calls == {(6, 1, 5, 5): (False, True), (16, 6, 5, 5): (True, False)}
    assert not np.any(m.conv2.weight.grad) and not np.any(m.conv2.bias.grad)
    m.unfreeze()
    m.freeze("conv2.weight")
    _step(ref, x, y)
    _step(m, x, y)
    assert calls[(16, 6, 5, 5)] == (True, False) and not np.any(m.conv2.weight.grad)
    for name in ("conv1.weight", "conv2.bias"):
        p, q = dict(ref.named_parameters())[name], dict(m.named_parameters())[name]
        assert_close(q.grad, p.grad, np.float32, reduction=8 * 10 * 10, err_msg=name)


def test_frozen_body_skips_backward_entirely(rng, monkeypatch):
    m = lenet5(seed=0)
    m.freeze(until="fc2")
    calls = []
    monkeypatch.setattr(F, "conv2d_backward", lambda *a, **k: calls.append(1))
    _step(m, *_batch(rng))
    assert calls == [] and np.any(m.fc3.weight.grad)


# --------------------------------------------------------------------------- parameter groups

def test_layer_groups_and_param_groups():
    m = lenet5(seed=0)
    assert m.layer_groups(3) == [["conv1", "conv2"], ["fc1", "fc2"], ["fc3"]]
    groups = param_groups(m, [1e-3, 1e-2, 1e-1])
    assert [len(g["params"]) for g in groups] == [4, 4, 2]
    with pytest.raises(ValueError, match="too few for 6 groups"):
        param_groups(m, [1e-3] * 6)
    with pytest.raises(ValueError, match="3 learning rates .* for 2 layer groups"):
        param_groups(m, [1e-3, 1e-2, 1e-1], groups=[["conv1", "conv2", "fc1"], ["fc2", "fc3"]])
    with pytest.raises(ValueError, match="in no layer group"):
        param_groups(m, [1e-3, 1e-1], groups=[["conv1"], ["fc3"]])


def test_group_lrs_follow_the_schedule_and_give_the_per_group_update(rng):
    m = lenet5(seed=0)
    opt = SGD(param_groups(m, [1e-3, 1e-2, 1e-1]), lr=0.1)
    sched = CosineWarmRestarts(0.1, cycle_len=4, cycle_mult=2)
    opt.lr = sched(2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([sched(2) / 100, sched(2) / 10, sched(2)])
    # plain SGD: each parameter moves by its group's lr times its gradient
    before = m.state_dict()
    _step(m, *_batch(rng))
    grads = {n: p.grad.copy() for n, p in m.named_parameters()}
    opt.step()
    for n, p in m.named_parameters():
        lr = {"conv": sched(2) / 100, "fc1": sched(2) / 10, "fc2": sched(2) / 10}.get(n[:4] if n.startswith("conv") else n[:3], sched(2))
        assert_close(p.data, (before[n] - np.float32(lr) * grads[n]).astype(np.float32), np.float32, err_msg=n)


def test_groups_weight_decay_state_dict_and_errors():
    m = lenet5(seed=0)
    groups = [{"params": m.conv1.parameters(), "lr": 0.01, "weight_decay": 0.0},
              {"params": [p for n, p in m.named_parameters() if not n.startswith("conv1")]}]
    opt = Adam(groups, lr=0.1, weight_decay=1e-2)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-2]
    opt.lr = 0.05
    state = opt.state_dict()
    assert float(state["group_lr.0"]) == pytest.approx(0.005)
    opt2 = Adam(groups, lr=0.1)
    opt2.load_state_dict(state)
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([0.005, 0.05])
    with pytest.raises(ValueError, match="more than one group"):
        SGD([{"params": m.conv1.parameters()}, {"params": m.conv1.parameters()}], 0.1)
    with pytest.raises(ValueError, match="unknown keys \\['momentum'\\]"):
        SGD([{"params": m.conv1.parameters(), "momentum": 0.5}], 0.1)


def test_lr_find_with_groups_restores_everything():
    ds = load_dataset("fashion-mnist-subset").limit(256)
    m = lenet5(seed=0)
    opt = SGD(param_groups(m, [1e-3, 1e-2, 1e-1]), lr=0.1, momentum=0.9)
    before = m.state_dict()
    res = lr_find(m, DataLoader(ds.x_train, ds.y_train, 32, shuffle=True), opt, num_steps=12,
                  verbose=False)
    assert len(res.lrs) >= 3 and res.tenth_of_lowest > 0
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-2, 1e-1])
    for n, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[n])


# --------------------------------------------------------------------------- starting from a checkpoint

def test_load_pretrained_replaces_a_head_of_another_size(tmp_path):
    src = lenet5(num_classes=5, seed=1)
    save_checkpoint(tmp_path / "c.npz", src)
    m = lenet5(num_classes=10, seed=2)
    fresh_head = m.fc3.weight.data.copy()
    assert load_pretrained(tmp_path / "c.npz", m) == ["fc3.weight", "fc3.bias"]
    np.testing.assert_array_equal(m.conv1.weight.data, src.conv1.weight.data)
    np.testing.assert_array_equal(m.fc3.weight.data, fresh_head)
    same = lenet5(num_classes=5, seed=2)
    assert load_pretrained(tmp_path / "c.npz", same) == []
    np.testing.assert_array_equal(same.fc3.weight.data, src.fc3.weight.data)
    assert load_pretrained(tmp_path / "c.npz", same, new_head=True) == ["fc3.weight", "fc3.bias"]


def test_load_pretrained_rejects_a_body_that_does_not_fit(tmp_path):
    save_checkpoint(tmp_path / "c.npz", lenet5(in_channels=3, input_size=32, seed=0))
    m = lenet5(seed=0)
    before = m.state_dict()
    with pytest.raises(CheckpointError, match="body does not fit LeNet5: conv1.weight"):
        load_pretrained(tmp_path / "c.npz", m)
    save_checkpoint(tmp_path / "bn.npz", lenet5(batch_norm=True, seed=0))
    with pytest.raises(CheckpointError, match="unexpected \\['bn1"):
        load_pretrained(tmp_path / "bn.npz", m)
    for n, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[n])


def test_cli_init_freeze_and_lr_groups(tmp_path, capsys):
    from fastconv.cli import main
    base = ["train", "--dataset", "fashion-mnist-subset", "--limit", "128", "--limit-test", "64",
            "--epochs", "1", "--batch-size", "32", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    ck = str(tmp_path / "a" / "checkpoint.npz")
    assert main(base + ["--out", str(tmp_path / "b"), "--init", ck, "--freeze",
                        "--lr-groups", "0.001,0.01,0.1", "--augment", "rotate,zoom"]) == 0
    out = capsys.readouterr().out
    assert "frozen: all but the head 'fc3'" in out and "lr 0.001" in out
    for extra, message in ((["--freeze", "features"], "--freeze: freeze: 'features' matches no"),
                           (["--lr-groups", "0.1,0.1,0.1,0.1,0.1,0.1"], "--lr-groups: layer_groups"),
                           (["--freeze", "conv1,conv2,fc1,fc2,fc3"], "every layer is frozen")):
        assert main(base + ["--out", str(tmp_path / "c")] + extra) == 2     # a usage error
        assert message in capsys.readouterr().err
    # a checkpoint that does not fit the model is a runtime failure: one line, status 1
    assert main(base + ["--out", str(tmp_path / "d"), "--model", "resnet20", "--init", ck]) == 1
    assert "--init: checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------------- precomputed features

def test_precompute_features_caches_and_checks(tmp_path):
    ds = load_dataset("fashion-mnist-subset").limit(96)
    m = lenet5(seed=0)
    body, head = m.split("fc3")
    with pytest.raises(ValueError, match="no layer 'fc9'"):
        m.split("fc9")
    loader = DataLoader(ds.x_train, ds.y_train, 40)
    path = tmp_path / "f.npz"
    f, labels = precompute_features(body, loader, path)
    assert f.shape == (96, 84) and np.array_equal(labels, ds.y_train)
    m.eval()
    np.testing.assert_array_equal(f[:40], body(next(iter(loader))[0]))
    f2, _ = precompute_features(body, loader, path)           # from the cache
    np.testing.assert_array_equal(f2, f)
    m.conv1.weight.data[...] += 1                              # another body: recomputed
    f3, _ = precompute_features(body, loader, path)
    assert not np.array_equal(f3, f)
    with pytest.raises(ValueError, match="augments"):
        precompute_features(body, DataLoader(ds.x_train, ds.y_train, 40,
                                             augment=make_augmentation("flip", 28)))
    # the head trains on (N, features) arrays
    assert head.fc3 is m.fc3
    fit(head, DataLoader(f3, labels, 32, shuffle=True), SGD(head.parameters(), 0.05), 1,
        progress=False, log=None)


# --------------------------------------------------------------------------- augmentation

def test_rotation_and_zoom(rng):
    x = rng.random((4, 2, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(affine_batch(x, np.zeros(4), np.ones(4)), x)
    r90 = affine_batch(x.astype(np.float64), np.full(4, 90.0), np.ones(4))
    np.testing.assert_allclose(r90, np.rot90(x, 1, axes=(2, 3)), atol=1e-12)
    zoom = affine_batch(x, np.zeros(4), np.full(4, 2.0))     # centre pixel stays
    assert_close(zoom[:, :, 4, 4], x[:, :, 4, 4], np.float32)
    out = affine_batch(x, np.zeros(4), np.full(4, 0.5))      # zoom out: black border
    assert np.all(out[:, :, 0, :] == 0)
    a = RandomRotation(15)(x, np.random.default_rng(3))
    b = RandomRotation(15)(x, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and not np.array_equal(a[0], a[1])
    assert "RandomZoom" in repr(make_augmentation("rotate,zoom,flip", 28))
    with pytest.raises(ValueError, match="RandomZoom"):
        RandomZoom((1.2, 0.8))
    with pytest.raises(ValueError, match="unknown augmentation"):
        make_augmentation("spin", 28)


# --------------------------------------------------------------------------- several inputs and outputs

def _graph(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Graph(
        inputs=["image", "meta"],
        layers={"body": (nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.ReLU(), nn.Flatten(),
                                       nn.Linear(8, 5, rng=rng), nn.ReLU()), "image"),
                "meta_bn": (nn.BatchNorm1d(2), "meta"),
                "joined": (nn.Concatenate(), ["body", "meta_bn"]),
                "class": (nn.Linear(7, 3, rng=rng), "joined"),
                "box": (nn.Linear(7, 4, rng=rng), "joined")},
        outputs=["class", "box"])


def test_gradcheck_concatenated_inputs_and_two_heads(rng):
    x = (rng.standard_normal((4, 1, 4, 4)), rng.standard_normal((4, 2)))
    report = fastconv.gradcheck(_graph(), x)
    assert {r["name"] for r in report.rows} >= {"input.0", "input.1", "meta_bn.weight",
                                                 "class.weight", "box.bias", "body.0.weight"}
    # an output without a loss sends nothing back through its head
    g = _graph()
    g(tuple(a.astype(np.float32) for a in x))
    g.zero_grad()
    g.backward((None, np.ones((4, 4), np.float32)))
    assert not np.any(g["class"].weight.grad) and np.any(g["box"].weight.grad)


def test_graph_errors():
    with pytest.raises(ValueError, match="reads \\['nope'\\]"):
        nn.Graph(["a"], {"fc": (nn.Linear(2, 2), "nope")}, ["fc"])
    with pytest.raises(ValueError, match="outputs \\['out'\\] are not layers"):
        nn.Graph(["a"], {"fc": (nn.Linear(2, 2), "a")}, ["out"])
    with pytest.raises(ValueError, match="expected 2 inputs"):
        _graph()((np.zeros((2, 1, 4, 4), np.float32),))


def test_fit_multi_weights_and_metrics(rng):
    x = [rng.standard_normal((64, 1, 4, 4)).astype(np.float32),
         rng.standard_normal((64, 2)).astype(np.float32)]
    t = [rng.integers(0, 3, 64), rng.random((64, 4)).astype(np.float32)]
    loader = ArraysLoader(x, t, 16, shuffle=True)
    losses = [nn.CrossEntropyLoss(), nn.MSELoss()]
    m = _graph()
    with pytest.raises(ValueError, match="loss_weights has 1 values .* 2 losses"):
        fit_multi(m, loader, SGD(m.parameters(), 0.1), 1, losses, [1.0], log=None)
    h = fit_multi(m, loader, SGD(m.parameters(), 0.05, momentum=0.9), 8, losses, [1.0, 0.5],
                  [accuracy, box_iou], test_loader=loader, log=None)
    assert set(h) >= {"class_loss", "class_metric", "box_loss", "box_metric"}
    assert h["train_loss"][-1] < h["train_loss"][0]
    # weight 0 on the box loss: its head gets no gradient and does not move
    m = _graph()
    w0 = m["box"].weight.data.copy()
    fit_multi(m, loader, SGD(m.parameters(), 0.1), 1, losses, [1.0, 0.0], log=None)
    np.testing.assert_array_equal(m["box"].weight.data, w0)


def test_box_iou_and_garment_boxes():
    a = np.array([[0, 0, 2, 2], [0, 0, 2, 2]], float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2]], float)
    assert box_iou(a, b) == pytest.approx((1 / 7 + 1) / 2)
    from fastconv.multitask import garment_boxes, image_stats
    img = np.zeros((2, 1, 6, 5), np.uint8)
    img[0, 0, 1:4, 2:4] = 9
    assert garment_boxes(img).tolist() == [[2, 1, 4, 4], [0, 0, 0, 0]]
    assert image_stats(img).shape == (2, 2)


def test_multitask_demo_and_boxes_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from fastconv.multitask import run_boxes_demo
    ds = load_dataset("fashion-mnist-subset").limit(1000, 200)
    _, res = run_boxes_demo(ds, epochs=2, out=str(tmp_path), log=None)
    # a short run: above chance (10 classes), and boxes closer than the mean training box
    assert 0.25 < res["test_accuracy"] <= 1
    assert res["baseline_box_iou"] < res["test_box_iou"] <= 1
    assert (tmp_path / "boxes.png").stat().st_size > 1000
    assert res["checkpoint"] == str(tmp_path / "checkpoint.npz")      # for fastconv viz


# --------------------------------------------------------------------------- the recipe

def test_recipe_runs_on_a_small_subset(tmp_path):
    from fastconv.recipe import few_shot, run_recipe, split_classes, table
    ds = load_dataset("fashion-mnist-subset").limit(2000, 500)
    res = run_recipe(ds, str(tmp_path), ns=(5,), pretrain_epochs=1, epochs_head=1, cycles=2,
                     epoch_images=128, log=lambda m: None)
    row = res["rows"][0]
    for key in ("scratch", "head", "unfrozen", "head_no_precompute"):
        assert 0 <= row[key]["acc"] <= 1 and row[key]["minutes"] >= 0
    # the same head, with or without the cache, gives the same accuracy
    assert row["head"]["acc"] == row["head_no_precompute"]["acc"]
    assert "| 5 |" in table(res) and (tmp_path / "recipe.md").is_file()
    x, y = split_classes(ds.x_train, ds.y_train, (5, 6))
    assert set(np.unique(y)) == {0, 1}
    with pytest.raises(ValueError, match="few_shot: 10000 images per class"):
        few_shot(x, y, 10000)
