"""Optimisers against hand-computed updates (PyTorch's formulas) and schedules' values."""

import numpy as np
import pytest

from fastconv.nn import Parameter
from fastconv.optim import SGD, Adam, AdamW, make_optimizer
from fastconv.schedules import (ConstantLR, CosineLR, CosineWarmRestarts, OneCycleLR, StepLR,
                                lr_find, make_schedule)


def _param(values, grads):
    p = Parameter(np.array(values, np.float64))
    p.grad[...] = grads
    return p


GRADS = [np.array([0.5, -1.0]), np.array([0.25, 2.0]), np.array([-1.0, 0.5])]


def _run(opt_factory, grads=GRADS):
    p = _param([1.0, -2.0], 0)
    opt = opt_factory([p])
    for g in grads:
        p.grad[...] = g
        opt.step()
    return p.data


def _sgd_by_hand(lr, momentum, dampening, wd, nesterov):
    """torch.optim.SGD's algorithm, written out for a list of gradients."""
    p, buf = np.array([1.0, -2.0]), None
    for g in GRADS:
        g = g + wd * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


@pytest.mark.parametrize("momentum,dampening,wd,nesterov", [
    (0.0, 0.0, 0.0, False), (0.9, 0.0, 0.0, False), (0.9, 0.0, 0.0, True),
    (0.9, 0.1, 0.0, False), (0.8, 0.0, 0.01, True), (0.0, 0.0, 0.1, False)])
def test_sgd_matches_formula(momentum, dampening, wd, nesterov):
    got = _run(lambda ps: SGD(ps, lr=0.1, momentum=momentum, dampening=dampening,
                              weight_decay=wd, nesterov=nesterov))
    np.testing.assert_allclose(got, _sgd_by_hand(0.1, momentum, dampening, wd, nesterov), rtol=1e-14)


def test_sgd_first_steps_by_hand():
    """Two momentum steps computed with pencil and paper: p=1, g=1, lr=0.1, m=0.9."""
    p = _param([1.0], [1.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.step()                       # v = g = 1,          p = 1 - 0.1 = 0.9
    assert p.data[0] == pytest.approx(0.9)
    opt.step()                       # v = 0.9 + 1 = 1.9,  p = 0.9 - 0.19 = 0.71
    assert p.data[0] == pytest.approx(0.71)
    q = _param([1.0], [1.0])
    opt = SGD([q], lr=0.1, momentum=0.9, nesterov=True)
    opt.step()                       # v = 1, step g + 0.9 v = 1.9, p = 0.81
    assert q.data[0] == pytest.approx(0.81)


def _adam_by_hand(lr, betas, eps, wd, decoupled):
    p, m, v = np.array([1.0, -2.0]), 0.0, 0.0
    for t, g in enumerate(GRADS, start=1):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        mhat, vhat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_matches_formula(wd):
    got = _run(lambda ps: Adam(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd))
    np.testing.assert_allclose(got, _adam_by_hand(0.01, (0.9, 0.99), 1e-8, wd, False), rtol=1e-13)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_matches_formula(wd):
    got = _run(lambda ps: AdamW(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd))
    np.testing.assert_allclose(got, _adam_by_hand(0.01, (0.9, 0.99), 1e-8, wd, True), rtol=1e-13)


def test_adam_first_step_is_lr_times_sign():
    """With bias correction the first Adam step is lr * g / (|g| + eps) ~ lr * sign(g)."""
    got = _run(lambda ps: Adam(ps, lr=0.01), grads=[np.array([3.0, -0.001])])
    np.testing.assert_allclose(got, [1.0 - 0.01, -2.0 + 0.01], rtol=1e-5)


def test_against_torch():
    torch = pytest.importorskip("torch")
    cases = [(SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
             (Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
             (AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1))]
    for ours, theirs, kw in cases:
        tp = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
        opt = theirs([tp], **kw)
        for g in GRADS:
            tp.grad = torch.tensor(g)
            opt.step()
        np.testing.assert_allclose(_run(lambda ps: ours(ps, **kw)), tp.detach().numpy(), rtol=1e-12)


def test_float32_params_stay_float32():
    for factory in (lambda ps: SGD(ps, 0.1, 0.9, weight_decay=1e-4), Adam, AdamW):
        p = Parameter(np.ones(3, np.float32))
        p.grad[...] = 0.5
        opt = factory([p])
        opt.step()
        assert p.data.dtype == np.float32 and all(a.dtype == np.float32 for s in opt.state.values() for a in s)


def test_state_dict_round_trip():
    p = _param([1.0, -2.0], [0.5, 0.5])
    opt = Adam([p], lr=0.01)
    opt.step()
    state = opt.state_dict()
    assert set(state) == {"step", "lr", "exp_avg.0", "exp_avg_sq.0"}
    q = _param([1.0, -2.0], [0.5, 0.5])
    q.data[...] = p.data
    opt2 = Adam([q], lr=0.5)
    opt2.load_state_dict(state)
    assert opt2.step_count == 1 and opt2.lr == 0.01
    opt.step(), opt2.step()
    np.testing.assert_array_equal(p.data, q.data)
    with pytest.raises(ValueError, match="missing keys"):
        SGD([q], 0.1, momentum=0.9).load_state_dict(state)
    bad = dict(state, **{"exp_avg.0": np.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        opt2.load_state_dict(bad)


def test_bad_arguments():
    p = _param([1.0], [1.0])
    with pytest.raises(ValueError, match="nesterov"):
        SGD([p], 0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty"):
        SGD([], 0.1)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop", [p], 0.1)
    assert isinstance(make_optimizer("adamw", [p], 0.1), AdamW)


# --------------------------------------------------------------------------- schedules

def test_step_and_constant():
    s = StepLR(0.1, step_size=3, gamma=0.5)
    np.testing.assert_allclose(s.values(7), [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])
    assert ConstantLR(0.3)(1000) == 0.3


def test_cosine_values():
    s = CosineLR(1.0, total_steps=10, min_lr=0.1)
    assert s(0) == 1.0
    assert s(5) == pytest.approx(0.55)                     # half way: the mean of the ends
    assert s(10) == pytest.approx(0.1) and s(20) == pytest.approx(0.1)
    w = CosineLR(1.0, total_steps=12, warmup_steps=2)
    assert [w(0), w(1), w(2)] == [0.5, 1.0, 1.0]
    assert w(7) == pytest.approx(0.5)


def test_warm_restarts_cycles():
    s = CosineWarmRestarts(1.0, cycle_len=2, cycle_mult=2)       # cycles of 2, 4, 8 steps
    assert [s.cycle(t)[0] for t in range(15)] == [0] * 2 + [1] * 4 + [2] * 8 + [3]
    assert s(0) == s(2) == s(6) == s(14) == 1.0                  # back to lr at each restart
    assert s(1) == pytest.approx(0.5) and s(4) == pytest.approx(0.5) and s(10) == pytest.approx(0.5)
    s1 = CosineWarmRestarts(1.0, cycle_len=4, min_lr=0.2)
    np.testing.assert_allclose(s1.values(8)[:4], s1.values(8)[4:])
    assert s1(2) == pytest.approx(0.6)


def test_onecycle_values():
    s = OneCycleLR(1.0, total_steps=100, pct_start=0.3, div_factor=25, final_div_factor=1e4)
    assert s(0) == pytest.approx(0.04)
    assert s(29) == pytest.approx(1.0)                            # the peak, PyTorch's phase end
    assert s(99) == pytest.approx(0.04 / 1e4)
    v = s.values(100)
    assert np.all(np.diff(v[:30]) > 0) and np.all(np.diff(v[29:]) < 0)


def test_schedules_against_torch():
    torch = pytest.importorskip("torch")
    p = torch.zeros(1, requires_grad=True)

    def torch_values(make, n):
        opt = torch.optim.SGD([p], lr=0.5)
        sched = make(opt)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return np.array(out)

    lrs = torch.optim.lr_scheduler
    np.testing.assert_allclose(OneCycleLR(0.5, 50).values(50),
                               torch_values(lambda o: lrs.OneCycleLR(o, 0.5, total_steps=50,
                                                                     cycle_momentum=False), 50), rtol=1e-9)
    np.testing.assert_allclose(CosineWarmRestarts(0.5, 3, 2, 0.01).values(40),
                               torch_values(lambda o: lrs.CosineAnnealingWarmRestarts(o, 3, 2, 0.01), 40),
                               rtol=1e-9)
    np.testing.assert_allclose(CosineLR(0.5, 30, 0.01).values(30),
                               torch_values(lambda o: lrs.CosineAnnealingLR(o, 30, 0.01), 30), rtol=1e-9)
    np.testing.assert_allclose(StepLR(0.5, 4, 0.3).values(20),
                               torch_values(lambda o: lrs.StepLR(o, 4, 0.3), 20), rtol=1e-12)


def test_make_schedule_in_epochs():
    s = make_schedule("restarts", 0.1, epochs=7, steps_per_epoch=10, cycle_len=1, cycle_mult=2)
    assert (s.cycle_len, s.cycle_mult) == (10, 2)
    assert make_schedule("step", 0.1, epochs=9, steps_per_epoch=10).step_size == 30
    assert make_schedule("onecycle", 0.1, 2, 10).total_steps == 20
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("linear", 0.1, 1, 1)


def test_lr_find(tmp_path):
    """On loss ||w - 3||^2 / 2, SGD diverges for lr > 2: the test must stop there and suggest less."""
    from fastconv.nn import Module

    class Model(Module):
        def __init__(self):
            super().__init__()
            self.w = Parameter(np.zeros(4))

        def forward(self, x):
            return x

        def backward(self, dy):
            return dy

    class Loss:
        def __init__(self, model):
            self.model = model

        def forward(self, logits, labels):
            return 0.5 * float(np.sum((self.model.w.data - 3) ** 2))

        def backward(self):
            self.model.w.grad += self.model.w.data - 3
            return None

    model = Model()
    opt = SGD(model.parameters(), lr=1.0)
    loader = [(np.zeros((1, 1)), np.zeros(1, np.int64))] * 10
    res = lr_find(model, loader, opt, Loss(model), start_lr=1e-4, end_lr=100, num_steps=60, smooth=0.5,
                  out=tmp_path / "lr", verbose=False)
    assert np.all(model.w.data == 0) and opt.lr == 1.0          # restored
    assert len(res.lrs) < 60                                    # stopped when the loss blew up (lr > 2)
    assert 1e-3 < res.suggestion < 2
    assert (tmp_path / "lr.csv").read_text().startswith("lr,loss,smoothed_loss")
    with np.load(tmp_path / "lr.npz", allow_pickle=False) as f:
        assert f["lrs"].shape == f["losses"].shape
    pytest.importorskip("matplotlib")
    assert (tmp_path / "lr.png").stat().st_size > 1000


# --------------------------------------------------------------------------- the SGD kernel

SGD_OPTIONS = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
               dict(momentum=0.9, dampening=0.3), dict(momentum=0.8, weight_decay=0.01),
               dict(momentum=0.9, nesterov=True, weight_decay=0.1),
               dict(momentum=0.0, weight_decay=0.1)]


def _sgd_trajectory(kw, dtype, backend, n=40000, steps=3):
    """p after ``steps`` SGD steps on fixed gradients (n values: more than one block of the
    kernel, a tail that is not whole vectors), with NaN, Inf and -0.0 among them."""
    import fastconv
    rng = np.random.default_rng(3)
    p = Parameter(rng.standard_normal(n).astype(dtype))
    p.data[:4] = [np.nan, np.inf, -0.0, 0.0]
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(steps)]
    grads[1][5:8] = [np.inf, -np.inf, np.nan]
    opt = SGD([p], lr=0.05, **kw)
    with fastconv.use_backend(backend):
        for g in grads:
            p.grad[...] = g
            opt.step()
    return p.data, opt.state["momentum_buffer"][0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", SGD_OPTIONS)
def test_sgd_kernel_equals_reference_bitwise(kw, dtype):
    """The compiled update rounds as NumPy does, operation by operation: the same bits."""
    with np.errstate(invalid="ignore", over="ignore"):
        want_p, want_buf = _sgd_trajectory(kw, dtype, "reference")
        got_p, got_buf = _sgd_trajectory(kw, dtype, "fast")
    assert got_p.dtype == dtype
    np.testing.assert_array_equal(got_p.view(np.uint8), want_p.view(np.uint8))
    np.testing.assert_array_equal(got_buf.view(np.uint8), want_buf.view(np.uint8))


def test_sgd_kernel_thread_invariant_and_shapes():
    import fastconv
    results = []
    for n in (1, 2):
        with fastconv.num_threads(n):
            results.append(_sgd_trajectory(dict(momentum=0.9), np.float32, "fast", n=100000))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    # a 4-D parameter, and one whose arrays the kernel cannot take (a strided view) update
    # like their reference
    for make in (lambda a: a, lambda a: a[:, ::2]):
        ps = {}
        for backend in ("fast", "reference"):
            data = make(np.arange(48.0, dtype=np.float32).reshape(6, 8))
            p = Parameter(np.zeros(1))
            p.data, p.grad = data, np.ones_like(data)
            opt = SGD([p], lr=0.5, momentum=0.5)
            with fastconv.use_backend(backend):
                opt.step()
                opt.step()
            ps[backend] = p.data
        np.testing.assert_array_equal(ps["fast"], ps["reference"])


def test_sgd_kernel_follows_replaced_arrays():
    """A new p.data or p.grad array (e.g. a loaded checkpoint) is the one updated next."""
    p = _param([1.0, 2.0], [1.0, 1.0])
    opt = SGD([p], lr=0.5)
    opt.step()
    p.data = np.array([10.0, 20.0])
    p.grad = np.array([2.0, 2.0])
    opt.step()
    np.testing.assert_array_equal(p.data, [9.0, 19.0])


def test_sgd_kernel_rejects_mismatched_sizes():
    from fastconv._backend import load_kernels
    p = np.ones(3)
    with pytest.raises(ValueError, match="sizes differ"):
        load_kernels("optim").sgd_update_many([p], [np.ones(4)], [np.ones(3)], [0.1], [0.0],
                                              0.9, 0.0, False, False, 1)
    np.testing.assert_array_equal(p, 1)          # nothing written


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_many_parameters_groups_and_zero_grad(dtype):
    """Several parameters of many sizes (one of 0 values, one spanning blocks) in two groups
    with their own lr and weight decay, updated in one kernel call: bitwise the reference's;
    zero_grad zeroes every gradient, a strided one included."""
    import fastconv
    results = {}
    for backend in ("fast", "reference"):
        rng = np.random.default_rng(7)
        ps = [Parameter(rng.standard_normal(s).astype(dtype))
              for s in [(3, 5), (0,), (40000,), (7,), (2, 3, 4, 5)]]
        opt = SGD([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.02, "weight_decay": 0.1}],
                  lr=0.1, momentum=0.9, nesterov=True)
        with fastconv.use_backend(backend):
            for _ in range(3):
                opt.zero_grad()
                for p in ps:
                    p.grad += rng.standard_normal(p.grad.shape).astype(dtype)
                opt.step()
        results[backend] = [p.data.copy() for p in ps]
        with fastconv.use_backend(backend):
            ps[3].grad = np.ones((14,), dtype)[::2]                  # strided
            opt.zero_grad()
        assert all((p.grad == 0).all() for p in ps)
    for a, b in zip(results["fast"], results["reference"]):
        np.testing.assert_array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))


@pytest.mark.parametrize("threads", [1, 2])
def test_zero_many_zeroes_every_block_and_nothing_else(threads):
    """zero_many cuts the arrays into blocks of 16384 values shared among the threads:
    arrays of several blocks and a partial one, both dtypes, an empty array, and views
    inside larger buffers (whose values around them must stay)."""
    from fastconv._backend import load_kernels
    k = load_kernels("optim")
    buf32 = np.full(50000, 7, np.float32)
    buf64 = np.full(40000, 7, np.float64)
    arrays = [buf32[3:40003], buf64[1:16386].reshape(5, 3277), np.full((2, 3), 5, np.float32),
              np.empty(0, np.float32), np.full(16384, 1, np.float64)]
    k.zero_many(arrays, threads)
    assert all((a == 0).all() for a in arrays)
    assert (buf32[:3] == 7).all() and (buf32[40003:] == 7).all()
    assert buf64[0] == 7 and (buf64[16386:] == 7).all()


def test_sgd_many_kernel_rejects_bad_arrays():
    from fastconv._backend import load_kernels
    k = load_kernels("optim")
    ok = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="one entry per parameter"):
        k.sgd_update_many([ok], [ok, ok], [ok], [0.1], [0.0], 0.9, 0.0, False, False, 1)
    with pytest.raises(ValueError, match="parameter 0"):
        k.sgd_update_many([ok], [np.ones(4)], [ok.copy()], [0.1], [0.0], 0.9, 0.0, False,
                          False, 1)
    with pytest.raises(ValueError, match="sizes differ"):
        k.sgd_update_many([ok], [np.ones(5, np.float32)], [ok.copy()], [0.1], [0.0], 0.9,
                          0.0, False, False, 1)
    with pytest.raises(ValueError, match="parameter 0"):
        k.sgd_update_many([ok[::2]], [ok[::2]], [ok[::2]], [0.1], [0.0], 0.9, 0.0, False,
                          False, 1)
    with pytest.raises(ValueError, match="array 1"):
        k.zero_many([ok, np.ones(3, np.int64)], 1)
