"""Shared test helpers: tolerances, comparisons and finite differences (imported as `helpers`)."""
import numpy as np

# float64 agrees to ~1e-10; float32 to a relative 1e-4, with atol growing like sqrt(n)
# for a reduction of n terms (rounding errors of a sum grow like a random walk).
RTOL = {np.float32: 1e-4, np.float64: 1e-10}
ATOL = {np.float32: 1e-5, np.float64: 1e-12}


def assert_close(got, want, dtype=None, reduction=1, err_msg=""):
    """Assert got == want to the dtype's tolerance; ``reduction`` is the length of the sums."""
    got, want = np.asarray(got), np.asarray(want)
    dtype = np.dtype(dtype or want.dtype).type
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape} {err_msg}"
    assert got.dtype == want.dtype, f"dtype {got.dtype} != {want.dtype} {err_msg}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    atol = ATOL[dtype] * np.sqrt(reduction) * scale
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=atol, err_msg=err_msg)


def numerical_grad(f, x, h=1e-6):
    """Central differences d f / d x of a scalar function f() of the float64 array x (changed
    in place and restored); returns an array like x."""
    assert x.dtype == np.float64
    grad = np.empty_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        f_plus = f()
        flat[i] = old - h
        f_minus = f()
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2 * h)
    return grad


def assert_grad_matches(analytic, f, x, h=1e-6, rtol=1e-5, atol=1e-7, err_msg=""):
    """Check an analytic gradient of scalar f() w.r.t. float64 x against central differences."""
    numeric = numerical_grad(f, x, h)
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol, err_msg=err_msg)


def run_python(args, timeout=120, **kwargs):
    """Run ``python ARGS`` in a child process from a neutral folder, capturing text output.

    Not from the repository root: there ``python -c``/``-m`` would import the source folder
    ``fastconv/`` (which holds no compiled kernels after a plain ``pip install .``) instead of
    the installed package.
    """
    import subprocess
    import sys
    import tempfile
    kwargs.setdefault("cwd", tempfile.gettempdir())
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def outputs_with_isa(script, isa, tmp_path):
    """The arrays that ``python -c script OUT.npz`` saves, run in a fresh process with
    FASTCONV_ISA=isa (which copies of the SIMD loops the kernels pick, decided at import),
    from tmp_path, so that the process imports the installed fastconv under test."""
    import os
    import subprocess
    import sys
    path = tmp_path / f"{isa}.npz"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=tmp_path,
                   env=dict(os.environ, FASTCONV_ISA=isa))
    return np.load(path)


def assert_close_nonfinite(got, want, dtype=None, reduction=1, err_msg="", same_kind=True):
    """assert_close for arrays that may hold NaN and Inf: NaN exactly where want has NaN,
    the same infinities, and the finite values close (scaled by the finite ones only).
    same_kind=False only asks for non-finite values in the same places (where Inf meets
    Inf of the other sign, which of NaN and Inf comes out depends on the order of the sums)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, err_msg
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=f"finite {err_msg}")
    if same_kind:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaN {err_msg}")
        inf = np.isinf(want)
        np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"Inf {err_msg}")
    assert_close(got[finite], want[finite], dtype, reduction, err_msg)
