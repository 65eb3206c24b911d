"""The public op API as a user meets it: bad input, odd memory layouts, backends, threads.

The numerical agreement of fast and reference kernels is tested per op family in
test_conv.py, test_pool.py and test_batchnorm.py; this file tests the layer that guards them.
"""
import os
import sys
import textwrap

import numpy as np
import pytest

import fastconv
import fastconv.functional as F
from helpers import run_python

BACKENDS = ["fast", "reference"]


def conv_args(rng, dtype=np.float64, N=2, C=3, H=7, W=6, K=4, R=3, S=2):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


def every_op(rng, dtype=np.float64):
    """(name, callable) for each public op on small valid inputs, to run under any layout."""
    x, w, b = conv_args(rng, dtype)
    y = F.conv2d(x, w, b, padding=1, backend="reference")
    xp = rng.standard_normal((2, 3, 6, 5)).astype(dtype)
    dyp = rng.standard_normal((2, 3, 3, 2)).astype(dtype)
    g = rng.standard_normal(3).astype(dtype)
    bt = rng.standard_normal(3).astype(dtype)
    return {
        "conv2d": (F.conv2d, (x, w, b), dict(padding=1)),
        "conv2d_backward": (F.conv2d_backward, (rng.standard_normal(y.shape).astype(dtype), x, w),
                            dict(padding=1)),
        "max_pool2d": (F.max_pool2d, (xp, 2), {}),
        "max_pool2d_backward": (F.max_pool2d_backward, (dyp, xp, 2), {}),
        "avg_pool2d": (F.avg_pool2d, (xp, 2), {}),
        "avg_pool2d_backward": (F.avg_pool2d_backward, (dyp, xp, 2), {}),
        "batch_norm": (F.batch_norm, (xp, g, bt, np.zeros(3), np.ones(3), False), {}),
        "batch_norm_backward": (F.batch_norm_backward, (xp, xp * 2, g), {}),
        # w (C_in=3, C_out=4, 3, 2) as a transposed conv's weight, from x's 3 channels
        "conv_transpose2d": (F.conv_transpose2d, (x, w.transpose(1, 0, 2, 3), bt[:2].repeat(2)),
                             dict(stride=2, output_padding=1)),
        "conv_transpose2d_backward": (F.conv_transpose2d_backward,
                                      (rng.standard_normal((2, 4, 16, 13)).astype(dtype), x,
                                       w.transpose(1, 0, 2, 3)), dict(stride=2, output_padding=1)),
    }


OPS = ["conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "avg_pool2d",
       "avg_pool2d_backward", "batch_norm", "batch_norm_backward", "conv_transpose2d",
       "conv_transpose2d_backward"]


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


# --------------------------------------------------------------------------- layouts

LAYOUTS = {
    "fortran": np.asfortranarray,
    "strided": lambda a: np.repeat(a, 2, axis=-1)[..., ::2] if a.ndim > 1 else np.repeat(a, 2)[::2],
    "negative_stride": lambda a: a[..., ::-1].copy()[..., ::-1],
    "read_only": lambda a: _read_only(a),
}


def _read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_any_memory_layout_gives_the_same_result(op, layout, backend, rng):
    fn, args, kwargs = every_op(rng)[op]
    want = _as_tuple(fn(*args, backend=backend, **kwargs))
    odd = tuple(LAYOUTS[layout](a) if isinstance(a, np.ndarray) and a.ndim > 1 else a
                for a in args)
    got = _as_tuple(fn(*odd, backend=backend, **kwargs))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_are_never_modified(op, backend, rng):
    fn, args, kwargs = every_op(rng)[op]
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    fn(*args, backend=backend, **kwargs)
    for a, b in zip(args, before):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_keep_the_input_dtype(op, backend, dtype, rng):
    fn, args, kwargs = every_op(rng, dtype)[op]
    for out in _as_tuple(fn(*args, backend=backend, **kwargs)):
        assert out.dtype == dtype


# --------------------------------------------------------------------------- bad input

def bad_conv_inputs():
    r = np.random.default_rng(0)
    x, w, b = conv_args(r)
    dy = np.zeros((2, 4, 5, 4))   # the output is (2, 4, 5, 5)
    f16 = x.astype(np.float16)
    return [
        # (description, callable, expected exception, words the message must contain)
        ("x 2-D", lambda: F.conv2d(x[0, 0], w), ValueError, ["conv2d", "x", "(7, 6)"]),
        ("w 3-D", lambda: F.conv2d(x, w[0]), ValueError, ["conv2d", "w"]),
        ("channel mismatch", lambda: F.conv2d(x, w[:, :2]), ValueError, ["channels", "(4, 2, 3, 2)"]),
        ("kernel too large", lambda: F.conv2d(x, np.zeros((1, 3, 9, 2))), ValueError,
         ["larger than the padded input"]),
        ("stride 0", lambda: F.conv2d(x, w, stride=0), ValueError, ["stride", ">= 1"]),
        ("stride -1", lambda: F.conv2d(x, w, stride=(1, -1)), ValueError, ["stride"]),
        ("negative padding", lambda: F.conv2d(x, w, padding=-1), ValueError, ["padding", ">= 0"]),
        ("float stride", lambda: F.conv2d(x, w, stride=1.5), TypeError, ["stride"]),
        ("3-tuple padding", lambda: F.conv2d(x, w, padding=(1, 1, 1)), TypeError, ["padding"]),
        ("int x", lambda: F.conv2d(x.astype(np.int32), w), TypeError, ["float32 or float64", "int32"]),
        ("float16 x", lambda: F.conv2d(f16, w), TypeError, ["float16"]),
        ("mixed dtypes", lambda: F.conv2d(x.astype(np.float32), w), TypeError, ["float64", "float32"]),
        ("bias shape", lambda: F.conv2d(x, w, b[:3]), ValueError, ["b", "(4,)", "(3,)"]),
        ("bias dtype", lambda: F.conv2d(x, w, b.astype(np.float32)), TypeError, ["b"]),
        ("dy shape", lambda: F.conv2d_backward(dy, x, w), ValueError, ["dy", "(2, 4, 5, 5)", "(2, 4, 5, 4)"]),
        ("unknown algo", lambda: F.conv2d(x, w, algo="fft"), ValueError, ["algo", "fft"]),
        ("unknown backend", lambda: F.conv2d(x, w, backend="gpu"), ValueError, ["backend", "gpu"]),
        ("None x", lambda: F.conv2d(None, w), TypeError, ["x"]),
        ("empty x", lambda: F.conv2d(x[:, :, :0], w), ValueError, ["empty"]),
        ("overflow", lambda: F.conv2d(np.broadcast_to(np.float32(0), (1, 1, 1, 2**31 + 8)),
                                      np.zeros((1, 1, 1, 1), np.float32)),
         ValueError, ["overflow", "P*Q"]),
    ]


def bad_pool_and_bn_inputs():
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 3, 6, 6))
    g = np.ones(3)
    return [
        ("pool x 2-D", lambda: F.max_pool2d(x[0, 0], 2), ValueError, ["max_pool2d", "x"]),
        ("pool padding > half", lambda: F.max_pool2d(x, 2, padding=2), ValueError,
         ["padding", "half"]),
        ("pool window too large", lambda: F.avg_pool2d(x, 7), ValueError, ["window"]),
        ("pool stride 0", lambda: F.avg_pool2d(x, 2, stride=0), ValueError, ["stride"]),
        ("pool kernel 0", lambda: F.max_pool2d(x, 0), ValueError, ["kernel_size"]),
        ("pool int", lambda: F.avg_pool2d(x.astype(np.int64), 2), TypeError, ["int64"]),
        ("pool dy shape", lambda: F.max_pool2d_backward(np.zeros((2, 3, 2, 2)), x, 2), ValueError,
         ["dy", "(2, 3, 3, 3)"]),
        ("pool dy dtype", lambda: F.avg_pool2d_backward(np.zeros((2, 3, 3, 3), np.float32), x, 2),
         TypeError, ["dy"]),
        ("bn x 3-D", lambda: F.batch_norm(x[0], g, g, None, None, True), ValueError, ["batch_norm"]),
        ("bn gamma shape", lambda: F.batch_norm(x, np.ones(4), g, None, None, True), ValueError,
         ["gamma", "(3,)", "(4,)"]),
        ("bn eval without stats", lambda: F.batch_norm(x, g, g, None, None, False), TypeError,
         ["running_mean"]),
        ("bn running shape", lambda: F.batch_norm(x, g, g, np.zeros(2), np.ones(3), True),
         ValueError, ["running_mean"]),
        ("bn running read-only", lambda: F.batch_norm(x, g, g, _read_only(np.zeros(3)), np.ones(3), True),
         ValueError, ["running_mean", "read-only"]),
        ("bn one value", lambda: F.batch_norm(x[:1, :, :1, :1], g, g, None, None, True),
         ValueError, ["more than one value"]),
        ("bn eps", lambda: F.batch_norm(x, g, g, None, None, True, eps=0), ValueError, ["eps"]),
        ("bn momentum", lambda: F.batch_norm(x, g, g, None, None, True, momentum=2), ValueError,
         ["momentum"]),
        ("bn dy shape", lambda: F.batch_norm_backward(x[:1], x, g), ValueError, ["dy"]),
        ("bn float16", lambda: F.batch_norm_backward(x, x.astype(np.float16), g), TypeError,
         ["float16"]),
    ]


BAD = bad_conv_inputs() + bad_pool_and_bn_inputs()


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_gets_a_clear_error(case):
    _, call, exc, words = case
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_bad_input_never_crashes_the_interpreter():
    """Run every bad call with the fast backend in a child process: it must exit normally."""
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        import fastconv
        import test_functional as t
        fastconv.set_backend("fast")
        raised = 0
        for name, call, exc, words in t.BAD:
            try:
                call()
            except (ValueError, TypeError):
                raised += 1
        print(raised, len(t.BAD))
    """)
    here = os.path.dirname(__file__)
    out = run_python(["-c", code, here])
    assert out.returncode == 0, out.stderr
    raised, total = map(int, out.stdout.split())
    assert raised == total


def test_directly_called_kernel_rejects_inconsistent_shapes():
    """The compiled kernels trust functional.py, but still refuse shapes that would overrun memory."""
    from fastconv._ext import conv_direct, conv_im2col
    x = np.zeros((1, 2, 5, 5))
    w = np.zeros((3, 4, 3, 3))   # 4 input channels for a 2-channel x
    for kernels in (conv_direct, conv_im2col):
        with pytest.raises(ValueError):
            kernels.conv2d_forward(x, w, None, (1, 1), (0, 0), 1)


# --------------------------------------------------------------------------- backends

def test_missing_compiled_module_says_how_to_rebuild(monkeypatch, rng):
    monkeypatch.setitem(sys.modules, "fastconv._ext.pool", None)   # makes the import fail
    monkeypatch.setattr(fastconv._backend, "_implementations", {})  # forget loaded modules
    x = rng.standard_normal((1, 1, 4, 4))
    with pytest.raises(ImportError, match="pip install"):
        F.max_pool2d(x, 2, backend="fast")
    # the reference backend does not need the compiled module
    assert F.max_pool2d(x, 2, backend="reference").shape == (1, 1, 2, 2)
    assert "MISSING" in fastconv.info(file=open(os.devnull, "w"))["kernels"]["pool"]


def test_use_backend_sets_the_default_and_restores_it(rng):
    x, w, b = conv_args(rng)
    assert fastconv.get_backend() == "fast"
    with fastconv.use_backend("reference"):
        assert fastconv.get_backend() == "reference"
        y_ref = F.conv2d(x, w, b)
    assert fastconv.get_backend() == "fast"
    np.testing.assert_allclose(F.conv2d(x, w, b), y_ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="backend"):
        fastconv.set_backend("cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_algorithms_and_auto_agree(backend, rng):
    x, w, b = conv_args(rng)
    ys = [F.conv2d(x, w, b, padding=1, algo=a, backend=backend) for a in ("direct", "im2col", "auto")]
    for y in ys[1:]:
        np.testing.assert_allclose(y, ys[0], rtol=1e-10, atol=1e-12)


def test_auto_uses_gemm_for_pointwise_convolution():
    assert F.choose_conv_algo((8, 64, 16, 16), (32, 64, 1, 1), (1, 1), (0, 0)) == "im2col"
    assert F.choose_conv_algo((8, 64, 16, 16), (32, 64, 3, 3), (1, 1), (1, 1), "reference") == "im2col"


# --------------------------------------------------------------------------- threads

def test_set_num_threads_validates_and_restores():
    start = fastconv.get_num_threads()
    with fastconv.num_threads(1):
        assert fastconv.get_num_threads() == 1
    assert fastconv.get_num_threads() == start
    for bad, exc in ((0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError)):
        with pytest.raises(exc):
            fastconv.set_num_threads(bad)


def test_one_setting_governs_blas_too():
    from threadpoolctl import threadpool_info
    with fastconv.num_threads(1):
        assert all(lib["num_threads"] == 1 for lib in threadpool_info() if lib["user_api"] == "blas")


def test_single_thread_blas_context_limits_and_restores():
    """The kernels' BLAS (SciPy's) is on one thread inside the block, and every library is
    back to the setting of set_num_threads after it, even after an error."""
    from fastconv import _threads
    kernel_side, numpy_side = _threads._blas_controllers()
    with fastconv.num_threads(2):
        with pytest.raises(RuntimeError):
            with _threads.blas_single_thread():
                assert all(lc.get_num_threads() == 1 for lc in kernel_side)
                raise RuntimeError
        assert all(lc.get_num_threads() == 2 for lc in kernel_side + numpy_side)


def test_omp_num_threads_is_the_default():
    env = dict(os.environ, OMP_NUM_THREADS="3")
    out = run_python(["-c", "import fastconv; print(fastconv.get_num_threads())"], env=env)
    assert out.stdout.strip() == "3", out.stderr


def test_info_reports_the_build(capsys):
    report = fastconv.info()
    printed = capsys.readouterr().out
    assert report["version"] == fastconv.__version__
    assert all(status == "ok" for status in report["kernels"].values()), report["kernels"]
    from fastconv import _build_config   # CI builds with FASTCONV_REQUIRE_OPENMP=1
    assert report["openmp"] is _build_config.OPENMP
    assert report["threads"] == fastconv.get_num_threads()
    assert report["blas"] and ("OpenMP          : on" in printed) == report["openmp"]
    assert report["simd"]["batchnorm"] in ("avx2", "baseline")
    assert f"(float32: {report['simd']['batchnorm']})" in printed
