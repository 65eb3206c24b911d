"""The op API's common-case checks (``_conv_common_case``, ``_pool_common_case``,
``_linear_common_case``): cheap exact-type tests that let the usual call skip the general
normalisation. Whatever they accept or turn away, a call must return the same array, or
raise the same error, as the general path alone; these tests run every argument form twice,
with the common case on and switched off, and compare."""
import numpy as np
import pytest

from fastconv import functional as F


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _outcome(call):
    """("ok", arrays) or ("error", type, message) of ``call()``."""
    try:
        result = call()
    except (ValueError, TypeError) as exc:
        return ("error", type(exc), str(exc))
    arrays = result if isinstance(result, tuple) else (result,)
    return ("ok", [None if a is None else (a.dtype, a.shape, a.tobytes()) for a in arrays])


class _Subclass(np.ndarray):
    pass


def _ones_like_output(forward, fallback):
    """A dy of the output's shape, or ``fallback`` where the forward call raises."""
    try:
        return np.ones_like(forward())
    except (ValueError, TypeError):
        return fallback


def _general_only(monkeypatch):
    monkeypatch.setattr(F, "_conv_common_case", lambda *args: None)
    monkeypatch.setattr(F, "_pool_common_case", lambda *args: None)
    monkeypatch.setattr(F, "_linear_common_case", lambda *args: False)


def _cases():
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 3, 7, 6)).astype(np.float32)
    w = r.standard_normal((4, 3, 3, 2)).astype(np.float32)
    b = r.standard_normal(4).astype(np.float32)
    dy = r.standard_normal((2, 4, 5, 5)).astype(np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    xl, wl, bl = x[:, :, 0, 0].copy(), w[:, :, 0, 0].copy(), b
    cases = {}
    # conv2d: argument forms the common case takes, and ones it must leave to the general path
    for name, kwargs in {
        "int": {}, "stride pair": {"stride": (2, 1)}, "stride list": {"stride": [2, 1]},
        "stride np.int64": {"stride": np.int64(2)}, "stride bool": {"stride": True},
        "stride float": {"stride": 1.0}, "stride 0": {"stride": 0},
        "stride (True, 1)": {"stride": (True, 1)}, "stride 3-tuple": {"stride": (1, 1, 1)},
        "stride huge": {"stride": 2**31}, "padding pair": {"padding": (1, 0)},
        "padding -1": {"padding": -1}, "padding same": {"padding": "same"},
        "padding valid": {"padding": "valid"}, "padding huge": {"padding": 2**31},
        "dilation pair": {"dilation": (1, 1)}, "dilation 2": {"dilation": 2},
        "dilation True": {"dilation": True}, "dilation 1.0": {"dilation": 1.0},
        "groups np.int64": {"groups": np.int64(1)}, "groups True": {"groups": True},
        "groups 0": {"groups": 0}, "algo direct": {"algo": "direct"},
        "algo bad": {"algo": "fft"}, "backend reference": {"backend": "reference"},
        "backend bad": {"backend": "gpu"}, "relu": {"relu": True},
    }.items():
        cases[f"conv2d {name}"] = lambda kw=kwargs: F.conv2d(x, w, b, **kw)
        if "relu" not in kwargs:
            cases[f"conv2d_backward {name}"] = lambda kw=kwargs: F.conv2d_backward(
                _ones_like_output(lambda: F.conv2d(x, w, **kw), dy), x, w, **kw)
    for name, (xa, wa, ba) in {
        "float64": (x64, w64, b.astype(np.float64)), "mixed dtypes": (x, w64, b),
        "float16": (x.astype(np.float16), w, b), "int": (x.astype(np.int64), w, b),
        "unbatched": (x[0], w, b), "empty batch": (x[:0], w, b), "2-D x": (x[0, 0], w, b),
        "channels differ": (x[:, :2], w, b), "kernel too tall": (x[:, :, :2], w, b),
        "kernel too wide": (x[:, :, :, :1], w, b),
        "list x": (x.tolist(), w, b), "strided x": (x[:, :, ::2], w, b),
        "Fortran x": (np.asfortranarray(x), w, b), "read-only x": (_read_only(x), w, b),
        "byte-swapped x": (x.astype(">f4"), w, b), "b float64": (x, w, b.astype(np.float64)),
        "b shape": (x, w, b[:2]), "b list": (x, w, b.tolist()), "w None": (x, None, b),
        "ndarray subclass": (x.view(_Subclass), w, b),
    }.items():
        cases[f"conv2d {name}"] = lambda xa=xa, wa=wa, ba=ba: F.conv2d(xa, wa, ba)
    # max_pool2d and its backward
    dyp = r.standard_normal((2, 3, 3, 3)).astype(np.float32)
    for name, kwargs in {
        "int": {}, "pairs": {"stride": (2, 2), "padding": (1, 0)}, "stride None": {"stride": None},
        "stride list": {"stride": [2, 2]}, "stride 0": {"stride": 0}, "stride bool": {"stride": True},
        "kernel 0": {"kernel_size": 0}, "kernel np.int64": {"kernel_size": np.int64(2)},
        "padding > half": {"padding": 2}, "padding -1": {"padding": -1},
        "dilation pair": {"dilation": (1, 1)}, "dilation 2": {"dilation": 2},
        "ceil_mode": {"ceil_mode": True}, "ceil_mode 0": {"ceil_mode": 0},
        "window too large": {"kernel_size": 8}, "indices": {"return_indices": True},
        "backend reference": {"backend": "reference"},
    }.items():
        kw = {"kernel_size": 2, **kwargs}
        cases[f"max_pool2d {name}"] = lambda kw=kw: F.max_pool2d(x[:, :, :6], **kw)
        kw = {k: v for k, v in kw.items() if k != "return_indices"}
        cases[f"max_pool2d_backward {name}"] = lambda kw=kw: F.max_pool2d_backward(
            dyp, x[:, :, :6], **kw)
    for name, xa in {"float64": x64, "float16": x.astype(np.float16), "unbatched": x[0],
                     "empty batch": x[:0], "2-D": x[0, 0], "list": x.tolist(),
                     "strided": x[:, :, ::2], "no channels": x[:, :0]}.items():
        cases[f"max_pool2d {name}"] = lambda xa=xa: F.max_pool2d(xa, 2)
    # linear
    for name, (xa, wa, ba) in {
        "float32": (xl, wl, bl), "float64": (xl.astype(np.float64), wl.astype(np.float64), None),
        "mixed dtypes": (xl, wl.astype(np.float64), bl), "1-D x": (xl[0], wl, bl),
        "features differ": (xl[:, :2], wl, bl), "empty batch": (xl[:0], wl, bl),
        "list x": (xl.tolist(), wl, bl), "Fortran w": (np.asfortranarray(wl), wl, bl),
        "int w": (xl, wl.astype(np.int32), bl), "b shape": (xl, wl, bl[:1]),
    }.items():
        cases[f"linear {name}"] = lambda xa=xa, wa=wa, ba=ba: F.linear(xa, wa, ba)
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_common_case_and_general_path_agree(name, monkeypatch):
    common = _outcome(CASES[name])
    _general_only(monkeypatch)
    assert _outcome(CASES[name]) == common


def test_common_case_takes_the_usual_calls_and_leaves_the_rest():
    """What the common case accepts (so the tests above compare two different paths), and
    the forms whose checks only the general path makes."""
    x = np.zeros((2, 3, 6, 6), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    assert F._conv_common_case(x, w, 1, 0, 1, 1) == ((1, 1), (0, 0), (2, 4, 4, 4))
    assert F._conv_common_case(x, w, (2, 1), (1, 1), (1, 1), 1) == ((2, 1), (1, 1),
                                                                     (2, 4, 3, 6))
    for stride in (True, np.int64(1), [1, 1], (1, True), 1.0, 0, 2**31):
        assert F._conv_common_case(x, w, stride, 0, 1, 1) is None, stride
    for args in ((x[:0], w, 1, 0, 1, 1), (x[0], w, 1, 0, 1, 1), (x, w, 1, "same", 1, 1),
                 (x, w, 1, 0, 2, 1), (x, w, 1, 0, True, 1), (x, w, 1, 0, 1, True),
                 (x, w.astype(np.float64), 1, 0, 1, 1), (x.astype(">f4"), w, 1, 0, 1, 1)):
        assert F._conv_common_case(*args) is None
    assert F._pool_common_case(x, 2, None, 0, 1, False) == ((2, 2), (2, 2), (0, 0),
                                                           (2, 3, 3, 3))
    for args in ((x, 2, 0, 0, 1, False), (x, 2, None, 0, 1, True), (x, True, None, 0, 1, False),
                 (x, 2, None, 2, 1, False), (x, 7, None, 0, 1, False), (x[0], 2, None, 0, 1, False)):
        assert F._pool_common_case(*args) is None
    assert F._linear_common_case(x[:, :, 0, 0], w[:, :, 0, 0])
    assert not F._linear_common_case(x[:, :, 0, 0], w[:, :2, 0, 0])
    assert not F._linear_common_case(x[:0, :, 0, 0], w[:, :, 0, 0])
