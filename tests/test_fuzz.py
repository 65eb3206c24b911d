"""Fuzzing the public ops: random shapes, strides, paddings, dtypes and memory layouts.

Every call must either raise a clear ValueError/TypeError that names the op, or return what
the NumPy reference returns for the same arguments. Hypothesis draws the cases (and shrinks
a failure to a small one); ``python tests/test_fuzz.py --cases 3000`` runs a larger batch
with the calls in a child process, so that a crash is counted rather than fatal.
"""
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv.functional as F

try:
    from helpers import assert_close
except ImportError:                 # run as a script from the repository root
    sys.path.insert(0, "tests")
    from helpers import assert_close

DTYPES = [np.float32, np.float64] * 4 + [np.int32, np.float16]      # a few wrong ones
LAYOUTS = ["contiguous", "contiguous", "fortran", "strided", "reversed", "misaligned", "list"]


class HypothesisDraw:
    def __init__(self, data):
        self.data = data

    def int(self, lo, hi):
        return self.data.draw(st.integers(lo, hi))

    def pick(self, options):
        return self.data.draw(st.sampled_from(options))


class RandomDraw:
    def __init__(self, rng):
        self.rng = rng

    def int(self, lo, hi):
        return int(self.rng.integers(lo, hi + 1))

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]


def layout(a, how):
    """``a`` (values unchanged) in the memory layout ``how``."""
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "strided" and a.ndim:             # every other element of a wider array
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        wide[..., ::2] = a
        return wide[..., ::2]
    if how == "reversed":                       # negative strides on every axis
        return np.flip(np.flip(a).copy())
    if how == "misaligned":
        buf = np.zeros(a.nbytes + a.itemsize, np.uint8)
        out = buf[1:1 + a.nbytes].view(a.dtype).reshape(a.shape)
        out[...] = a
        return out
    if how == "list" and a.size <= 64:
        return a.tolist()
    return a


class Case:
    """One op call: its name, a function of the backend, and the sums' length (tolerance)."""

    def __init__(self, op, call, reduction):
        self.op, self.call, self.reduction = op, call, reduction


def draw_case(d, op):
    """A random call of ``op`` (ValueError/TypeError expected for some draws)."""
    dtype = d.pick(DTYPES)
    rng = np.random.default_rng(d.int(0, 2**16))

    def arr(*shape):
        a = rng.standard_normal(shape).astype(dtype)
        return layout(a, d.pick(LAYOUTS))

    empty_ok = d.pick([False] * 9 + [True])     # now and then an axis of length 0

    def size(lo=0, hi=6):
        return d.int(lo if empty_ok else max(lo, 1), hi)

    N, C, H, W = size(0, 3), size(0, 4), size(0, 9), size(0, 9)
    window = (size(1, 5), size(1, 5))
    stride = d.pick([1, 1, 1, 2, 2, 3, (1, 2), 0])
    padding = d.pick([0, 0, 0, 1, 1, 2, (1, 0), -1])
    if op.startswith("conv2d"):
        K = size(1, 4)
        Cw = d.pick([C] * 5 + [C + 1])
        x, w = arr(N, C, H, W), arr(K, Cw, *window)
        b = d.pick([None, arr(K), arr(K), arr(K + 1)])
        algo = d.pick(["auto", "direct", "im2col"])
        if op == "conv2d":
            return Case(op, lambda be: F.conv2d(x, w, b, stride, padding, algo=algo, backend=be),
                        C * window[0] * window[1])
        P = F.conv_output_size(H, window[0], max(_first(stride), 1), _first(padding))
        Q = F.conv_output_size(W, window[1], max(_second(stride), 1), _second(padding))
        dy = arr(N, K, max(P, 0), max(Q, 0) + d.pick([0, 0, 1]))
        need_dx = d.pick([True, False])
        return Case(op, lambda be: F.conv2d_backward(dy, x, w, stride, padding, algo=algo,
                                                     backend=be, need_dx=need_dx),
                    max(N * P * Q, K * window[0] * window[1], 1))
    if "pool" in op:
        window = d.pick([window, window[0], 2])
        stride = d.pick([None, stride])
        padding = d.pick([0, 0, 1, padding])
        x = arr(N, C, H, W)
        if op == "max_pool2d":
            ret = d.pick([False, True])
            return Case(op, lambda be: F.max_pool2d(x, window, stride, padding, backend=be,
                                                    return_indices=ret), 1)
        if op == "avg_pool2d":
            cip = d.pick([True, False])
            return Case(op, lambda be: F.avg_pool2d(x, window, stride, padding, cip,
                                                    backend=be), 25)
        kh, kw = (window, window) if isinstance(window, int) else window
        sh, sw = (kh, kw) if stride is None else (_first(stride), _second(stride))
        P = F.conv_output_size(H, kh, max(sh, 1), _first(padding))
        Q = F.conv_output_size(W, kw, max(sw, 1), _second(padding))
        dy = arr(N, C, max(P, 0), max(Q, 0))
        if op == "max_pool2d_backward":
            indices = None
            if d.pick([False, True]):
                try:
                    _, indices = F.max_pool2d(np.asarray(x), window, stride, padding,
                                              backend="reference", return_indices=True)
                    indices = indices + d.pick([0, 0, 0, 10**6])     # sometimes out of range
                except (ValueError, TypeError):
                    indices = np.zeros(np.shape(dy), np.int64)
            return Case(op, lambda be: F.max_pool2d_backward(dy, x, window, stride, padding,
                                                             backend=be, indices=indices), 25)
        cip = d.pick([True, False])
        return Case(op, lambda be: F.avg_pool2d_backward(dy, x, window, stride, padding, cip,
                                                         backend=be), 25)
    if op.startswith("batch_norm"):
        shape = d.pick([(N, C, H, W), (N, C)])
        x = arr(*shape)
        Cp = d.pick([C, C, C, C + 1])
        gamma, beta = d.pick([None, arr(Cp)]), d.pick([None, arr(Cp)])
        eps = d.pick([1e-5, 1e-3, 0.0])
        if op == "batch_norm":
            training = d.pick([True, False])
            momentum = d.pick([0.1, 0.5, 1.5])
            mean0 = np.asarray(rng.standard_normal(Cp))
            var0 = np.abs(np.asarray(rng.standard_normal(Cp))) + 0.5

            def call(be):
                rm, rv = mean0.copy(), var0.copy()    # updated in place: fresh per backend
                y = F.batch_norm(x, gamma, beta, rm, rv, training, momentum, eps, backend=be)
                return y, rm, rv
            return Case(op, call, max(N * H * W, 1))
        dy = arr(*shape)
        saved = d.pick([False, True])
        M = max(N * (H * W if len(shape) == 4 else 1), 1)
        xs = np.asarray(x, dtype=np.float64).reshape(N, C, -1) if N * C else None
        mean = xs.mean(axis=(0, 2)) if saved and xs is not None and xs.size else None
        var = xs.var(axis=(0, 2)) if mean is not None else None
        return Case(op, lambda be: F.batch_norm_backward(dy, x, gamma, eps, backend=be,
                                                         mean=mean, var=var), M)
    if op.startswith("linear"):
        O, Iw = size(0, 5), d.pick([C, C, C + 1])
        x, w = arr(N, C), arr(O, Iw)
        if op == "linear":
            b = d.pick([None, arr(O), arr(O + 1)])
            return Case(op, lambda be: F.linear(x, w, b, backend=be), max(C, 1))
        dy = arr(N, O + d.pick([0, 0, 1]))
        need_dx = d.pick([True, False])
        return Case(op, lambda be: F.linear_backward(dy, x, w, backend=be, need_dx=need_dx),
                    max(N, O, 1))
    shape = d.pick([(N, C, H, W), (H,), (N, C), ()])
    if op == "relu":
        x = arr(*shape)
        inplace = d.pick([False, True])

        def call(be):
            xi = np.array(x, copy=True) if inplace and isinstance(x, np.ndarray) else x
            return F.relu(xi, inplace=inplace, backend=be)
        return Case(op, call, 1)
    y = np.maximum(arr(*shape), 0) if d.pick([True, False]) else arr(*shape)
    dy = arr(*d.pick([shape, shape, (H + 1,)]))
    return Case(op, lambda be: F.relu_backward(dy, y, backend=be), 1)


def _first(v):
    return v[0] if isinstance(v, tuple) else v


def _second(v):
    return v[1] if isinstance(v, tuple) else v


OPS = ["conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "avg_pool2d",
       "avg_pool2d_backward", "batch_norm", "batch_norm_backward", "linear", "linear_backward",
       "relu", "relu_backward"]


def _outputs(result):
    items = result if isinstance(result, tuple) else (result,)
    return [np.asarray(r) for r in items if r is not None]


def run_case(case):
    """'error' (a clear ValueError/TypeError, the same from both backends) or 'correct'
    (fast == reference); raises AssertionError otherwise."""
    outcomes = []
    for backend in ("fast", "reference"):
        try:
            outcomes.append(("ok", case.call(backend)))
        except (ValueError, TypeError) as exc:
            assert str(exc).startswith(f"{case.op}: "), f"unclear error: {exc!r}"
            outcomes.append(("error", type(exc)))
    (fast_kind, fast), (ref_kind, ref) = outcomes
    assert fast_kind == ref_kind, f"fast: {fast_kind} {fast}, reference: {ref_kind} {ref}"
    if fast_kind == "error":
        assert fast is ref, (fast, ref)
        return "error"
    got, want = _outputs(fast), _outputs(ref)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w.dtype.kind == "f":
            assert_close(g, w, reduction=case.reduction, err_msg=case.op)
        else:
            np.testing.assert_array_equal(g, w, err_msg=case.op)
    return "correct"


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzzed_op_is_a_clear_error_or_equals_the_reference(op, data):
    run_case(draw_case(HypothesisDraw(data), op))


# --------------------------------------------------------------------------- a larger run

def _worker(conn, seed):
    """Child process: run the cases it is sent, answer each with its outcome."""
    while True:
        index = conn.recv()
        if index is None:
            return
        rng = np.random.default_rng([seed, index])
        op = OPS[index % len(OPS)]
        try:
            outcome = run_case(draw_case(RandomDraw(rng), op))
        except AssertionError as exc:
            outcome = f"wrong: {op}: {str(exc)[:300]}"
        except Exception as exc:        # noqa: BLE001  counted and reported
            outcome = f"other exception: {op}: {type(exc).__name__}: {str(exc)[:300]}"
        conn.send(outcome)


def main(argv=None):
    import argparse
    import multiprocessing as mp
    from collections import Counter
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    counts, examples, child = Counter(), [], None
    for index in range(args.cases):
        if child is None:
            parent_conn, child_conn = ctx.Pipe()
            child = ctx.Process(target=_worker, args=(child_conn, args.seed), daemon=True)
            child.start()
        parent_conn.send(index)
        if parent_conn.poll(120):
            try:
                outcome = parent_conn.recv()
            except EOFError:
                outcome = None
        else:
            outcome = "hang"
        if outcome is None or outcome == "hang":
            child.kill()
            child.join()
            outcome = f"crash: {OPS[index % len(OPS)]} case {index} (exit {child.exitcode})"
            child = None
        kind = outcome.split(":")[0]
        counts[kind] += 1
        if kind not in ("error", "correct") and len(examples) < 20:
            examples.append(outcome)
    if child is not None:
        parent_conn.send(None)
        child.join()
    print(f"tried {args.cases}: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    for line in examples:
        print(" ", line)
    return 0 if set(counts) <= {"error", "correct"} else 1


if __name__ == "__main__":
    sys.exit(main())
