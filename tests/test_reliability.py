"""What the op layer guarantees beyond the arithmetic: misaligned or ragged input never
reaches a kernel, and thread and backend settings belong to the thread that made them.

A recorder wraps the kernel modules the ops call (``functional.implementation``), so the
tests see exactly what each kernel received: its arrays and its ``n_threads``.
"""
import inspect
import threading

import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from fastconv import _threads
from helpers import assert_close


# --------------------------------------------------------------------------- kernel recorder

class KernelRecorder:
    """Records every kernel call made through ``functional.implementation``: the calling
    thread, the backend, ``n_threads`` and the ndarray arguments."""

    def __init__(self, monkeypatch):
        self.calls = []
        self._lock = threading.Lock()
        real = F.implementation
        monkeypatch.setattr(F, "implementation",
                            lambda name, backend: _RecordingModule(self, name, backend,
                                                                   real(name, backend)))

    def record(self, **call):
        with self._lock:
            self.calls.append(dict(call, thread=threading.get_ident()))


class _RecordingModule:
    def __init__(self, recorder, name, backend, module):
        self._recorder, self._name, self._backend, self._module = recorder, name, backend, module

    def __getattr__(self, fn_name):
        fn = getattr(self._module, fn_name)
        # the reference twin has the same signature, readable by inspect
        ref = getattr(fastconv._backend.implementation(self._name, "reference"), fn_name)
        signature = inspect.signature(ref)

        def call(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            self._recorder.record(
                op=f"{self._name}.{fn_name}", backend=self._backend,
                n_threads=bound.arguments.get("n_threads"),
                arrays=[a for a in bound.arguments.values() if isinstance(a, np.ndarray)])
            return fn(*args, **kwargs)
        return call


@pytest.fixture
def kernels(monkeypatch):
    return KernelRecorder(monkeypatch)


# --------------------------------------------------------------------------- misaligned input

def misaligned(a):
    """A C-contiguous copy of ``a`` that starts one byte past an aligned address."""
    a = np.asarray(a)
    buf = np.zeros(a.nbytes + a.itemsize, np.uint8)
    out = buf[1:1 + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert out.flags.c_contiguous and not out.flags.aligned
    return out


def op_cases(rng, dtype):
    """(name, function, positional args, keyword args) of every op on small valid inputs."""
    def arr(*shape):
        return rng.standard_normal(shape).astype(dtype)
    x, w, b = arr(2, 3, 7, 6), arr(4, 3, 3, 2), arr(4)
    dyc = arr(2, 4, 7, 7)                      # conv2d(x, w, padding=1) output shape
    xp, dyp = arr(2, 3, 6, 5), arr(2, 3, 3, 2)
    g, bt = arr(3), arr(3)
    xl, wl, bl, dyl = arr(5, 7), arr(4, 7), arr(4), arr(5, 4)
    _, idx = F.max_pool2d(xp, 2, backend="reference", return_indices=True)
    mean, var = (xp.astype(np.float64).mean(axis=(0, 2, 3)),
                 xp.astype(np.float64).var(axis=(0, 2, 3)))
    return [
        ("conv2d direct", F.conv2d, (x, w, b), dict(padding=1, algo="direct")),
        ("conv2d im2col", F.conv2d, (x, w, b), dict(padding=1, algo="im2col")),
        ("conv2d_backward direct", F.conv2d_backward, (dyc, x, w), dict(padding=1, algo="direct")),
        ("conv2d_backward im2col", F.conv2d_backward, (dyc, x, w), dict(padding=1, algo="im2col")),
        ("max_pool2d", F.max_pool2d, (xp, 2), dict(return_indices=True)),
        ("max_pool2d_backward", F.max_pool2d_backward, (dyp, xp, 2), {}),
        ("max_pool2d_backward indices", F.max_pool2d_backward, (dyp, xp, 2), dict(indices=idx)),
        ("avg_pool2d", F.avg_pool2d, (xp, 2), {}),
        ("avg_pool2d_backward", F.avg_pool2d_backward, (dyp, xp, 2), {}),
        ("batch_norm train", F.batch_norm,
         (xp, g, bt, np.zeros(3, dtype), np.ones(3, dtype), True), {}),
        ("batch_norm eval", F.batch_norm, (xp, g, bt, np.abs(g), np.abs(bt) + 1, False), {}),
        ("batch_norm_backward", F.batch_norm_backward, (arr(*xp.shape), xp, g), {}),
        ("batch_norm_backward saved", F.batch_norm_backward, (arr(*xp.shape), xp, g),
         dict(mean=mean, var=var)),
        ("linear", F.linear, (xl, wl, bl), {}),
        ("linear_backward", F.linear_backward, (dyl, xl, wl), {}),
        ("relu", F.relu, (x,), {}),
        ("relu inplace", F.relu, (x.copy(),), dict(inplace=True)),
        ("relu_backward", F.relu_backward, (dyc, dyc), {}),
    ]


def _results(result):
    return [r for r in (result if isinstance(result, tuple) else (result,)) if r is not None]


def _misaligned_args(args, kwargs):
    args = [misaligned(a) if isinstance(a, np.ndarray) else a for a in args]
    kwargs = {k: misaligned(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    return args, kwargs


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_misaligned_arrays_are_copied_before_any_kernel(kernels, dtype, rng):
    """Every op, every array argument one byte off its alignment: the kernels only ever see
    aligned arrays, and the fast result equals the reference's on the aligned originals."""
    for name, op, args, kwargs in op_cases(rng, dtype):
        want_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        want = _results(op(*want_args, **kwargs, backend="reference"))
        kernels.calls.clear()
        bad_args, bad_kwargs = _misaligned_args(args, kwargs)
        got = _results(op(*bad_args, **bad_kwargs, backend="fast"))
        assert kernels.calls, name
        for call in kernels.calls:
            for a in call["arrays"]:
                assert a.flags.aligned, f"{name}: {call['op']} got a misaligned array"
        assert len(got) == len(want), name
        for g, wnt in zip(got, want):
            if wnt.dtype.kind == "f":
                assert_close(g, wnt, reduction=64, err_msg=name)
            else:                           # max_pool2d's indices
                np.testing.assert_array_equal(g, wnt, err_msg=name)
        if name == "relu inplace":          # written into the caller's misaligned array
            assert_close(bad_args[0], want[0], err_msg=name)
        if name == "batch_norm train":      # running statistics updated in place, as aligned
            for got_stat, want_stat in zip(bad_args[3:5], want_args[3:5]):
                assert_close(got_stat, want_stat, err_msg=name)


# --------------------------------------------------------------------------- ragged input

RAGGED = [[[[1.0, 2.0], [3.0]]]]


@pytest.mark.parametrize("name, call", [
    ("conv2d", lambda: F.conv2d([[1, 2], [3]], np.ones((1, 1, 1, 1)))),
    ("conv2d", lambda: F.conv2d(np.ones((1, 1, 2, 2)), RAGGED)),
    ("max_pool2d", lambda: F.max_pool2d(RAGGED, 1)),
    ("avg_pool2d_backward", lambda: F.avg_pool2d_backward(RAGGED, np.ones((1, 1, 2, 2)), 1)),
    ("batch_norm", lambda: F.batch_norm(RAGGED, None, None, None, None, True)),
    ("linear", lambda: F.linear([[1.0, 2.0], [3.0]], np.ones((2, 2)))),
    ("relu", lambda: F.relu([[1.0], [2.0, 3.0]])),
    ("relu_backward", lambda: F.relu_backward([1.0, 2.0], [[1.0], [2.0, 3.0]])),
])
def test_ragged_lists_name_the_op_and_argument(name, call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert str(info.value).startswith(f"{name}: "), info.value
    assert "rectangular" in str(info.value)


# --------------------------------------------------------------------------- threads

def _run_threads(worker, params):
    """Run worker(p) for each p in its own thread, all starting together; re-raise the first
    error of any thread."""
    errors = []
    barrier = threading.Barrier(len(params))

    def run(p):
        try:
            barrier.wait(timeout=60)
            worker(p)
        except BaseException as exc:   # noqa: BLE001  re-raised in the main thread
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(p,)) for p in params]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def _blas_counts():
    kernel_side, numpy_side = _threads._blas_controllers()
    return {lc.get_num_threads() for lc in kernel_side + numpy_side}


def test_num_threads_blocks_in_threads_do_not_mix(kernels, rng):
    """8 threads, each in its own num_threads(k) block, run ops at the same time: each sees
    its own k, every kernel call it makes gets k, the results are right, and afterwards the
    process default (OpenMP and BLAS) is what it was."""
    default = fastconv.get_num_threads()
    x = rng.standard_normal((4, 4, 12, 12)).astype(np.float32)     # 4 channels: one kernel
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)        # call per op (3 below)
    want_y = F.conv2d(x, w, padding=1, backend="reference")
    want_p = F.max_pool2d(want_y, 2, backend="reference")
    thread_k = {}

    def worker(k):
        thread_k[threading.get_ident()] = k
        with fastconv.num_threads(k):
            for _ in range(10):
                assert fastconv.get_num_threads() == k
                y = F.conv2d(x, w, padding=1)
                p = F.max_pool2d(y, 2)
                dx, dw, db = F.conv2d_backward(np.ones_like(y), x, w, padding=1)
                assert fastconv.get_num_threads() == k
                assert_close(y, want_y, reduction=36)
                assert_close(p, want_p, reduction=36)
        assert fastconv.get_num_threads() == default

    kernels.calls.clear()
    _run_threads(worker, [1, 2, 3, 4, 1, 2, 3, 4])
    assert len(kernels.calls) == 8 * 10 * 3
    for call in kernels.calls:
        assert call["n_threads"] == thread_k[call["thread"]], call["op"]
    assert fastconv.get_num_threads() == default
    assert _blas_counts() == {default}


def test_num_threads_is_restored_after_errors_in_threads():
    default = fastconv.get_num_threads()

    def worker(k):
        for _ in range(50):
            try:
                with fastconv.num_threads(k):
                    with fastconv.num_threads(k + 1):
                        assert fastconv.get_num_threads() == k + 1
                        raise KeyError
            except KeyError:
                pass
            assert fastconv.get_num_threads() == default

    _run_threads(worker, [1, 2, 3, 4])
    assert fastconv.get_num_threads() == default
    assert _blas_counts() == {default}


def test_set_num_threads_is_the_default_of_threads_without_a_block():
    default = fastconv.get_num_threads()
    seen = []
    try:
        fastconv.set_num_threads(3)
        with fastconv.num_threads(1):
            t = threading.Thread(target=lambda: seen.append(fastconv.get_num_threads()))
            t.start()
            t.join()
            assert fastconv.get_num_threads() == 1
        assert fastconv.get_num_threads() == 3 and _blas_counts() == {3}
    finally:
        fastconv.set_num_threads(default)
    assert seen == [3]          # another thread is not inside this thread's block
    assert _blas_counts() == {default}


def test_use_backend_blocks_in_threads_do_not_mix(kernels, rng):
    x = rng.standard_normal((2, 3, 8, 8))
    want = F.avg_pool2d(x, 2, backend="reference")
    thread_backend = {}

    def worker(backend):
        thread_backend[threading.get_ident()] = backend
        with fastconv.use_backend(backend):
            for _ in range(20):
                assert fastconv.get_backend() == backend
                assert_close(F.avg_pool2d(x, 2), want)
        assert fastconv.get_backend() == "fast"

    kernels.calls.clear()
    _run_threads(worker, ["reference", "fast"] * 4)
    assert len(kernels.calls) == 8 * 20
    for call in kernels.calls:
        assert call["backend"] == thread_backend[call["thread"]]
    assert fastconv.get_backend() == "fast"


def test_kernel_blas_stays_single_threaded_while_any_kernel_runs():
    """Kernel calls overlapping in two threads: the kernels' BLAS stays on one thread until
    the last of them ends, whichever ends first."""
    kernel_side, _ = _threads._blas_controllers()
    before = [lc.get_num_threads() for lc in kernel_side]
    inside, leave = threading.Event(), threading.Event()
    seen = []

    def other_kernel():
        with _threads.blas_single_thread():
            inside.set()
            leave.wait(timeout=30)
            seen.append({lc.get_num_threads() for lc in kernel_side})

    t = threading.Thread(target=other_kernel)
    try:
        with _threads.blas_single_thread():     # this thread's kernel starts first ...
            t.start()
            assert inside.wait(timeout=30)
        seen.append({lc.get_num_threads() for lc in kernel_side})   # ... and ends first
        leave.set()
        t.join(timeout=30)
        assert seen == [{1}, {1}]
        assert _threads._kernels_running == 0
    finally:
        leave.set()
        # OpenBLAS ignores a thread count set from another thread once the main thread has
        # set one, so the other thread's restore may not have taken: restore it here
        for lc, n in zip(kernel_side, before):
            lc.set_num_threads(n)
