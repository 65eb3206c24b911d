"""Peak extra memory of each conv algorithm: measured in a fresh process, and modelled.

Why measured this way
---------------------
``tracemalloc`` sees only allocations made through Python's allocator (NumPy arrays are
among them) and misses what C code mallocs (BLAS buffers, a kernel's own scratch), and the
benchmark process itself is the wrong place: its heap keeps freed memory resident, so a
second algorithm would reuse the first one's pages and look free. So one fresh Python
process (``python -m fastconv.benchmark.memory``) measures every probe:

1. ``mallopt`` fixes glibc's mmap threshold at 64 KiB, so every large buffer is its own
   mapping, returned to the kernel when freed: resident memory then tracks live memory;
2. per probe: build the inputs, make one call (it imports the kernels and starts the
   threads), then reset the peak-RSS counter (``/proc/self/clear_refs`` ``5``, Linux >= 4.0),
   read ``VmRSS``, make the measured call, read the peak ``VmHWM``: ``peak_mb`` = VmHWM -
   VmRSS(before), everything the call touched, its outputs included;
3. a third call under ``tracemalloc``: ``traced_mb``, the peak of the NumPy arrays (and
   other Python allocations) alive during the call, outputs included. It misses C mallocs
   but is exact at any size, where the kernel's resident-set counters lag by up to 64
   pages per thread (they are synced in batches): alexnet_c1's forward scratch, 0.16 MB of
   NumPy arrays at 2 threads, once read as 0.02 MB from VmHWM.

``workspace_mb`` = the larger of the two peaks, less the outputs' size: the algorithm's own
scratch memory (``rss_workspace_mb`` and ``traced_workspace_mb``: each way).
``columns_mb`` is the model the design promises (see ``columns_model``): the fast im2col keeps
one image's column matrix per thread, the NumPy reference builds the whole batch's, the
direct kernel needs none. Linux only; elsewhere the probes report "unavailable".
"""
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np

PROBED_IMPLS = ("reference", "fast:direct", "fast:im2col")   # the algorithms compared


def probed_impls(layer, direction):
    """The algorithms probed on a conv ``layer`` (a suite layer dict): PROBED_IMPLS, and
    Winograd where ``algo="auto"`` runs it (the grouped layers, whose own kernel is not an
    ``algo`` one can name, get the three)."""
    from ..functional import choose_conv_algo
    if layer.get("groups", 1) > 1:
        return PROBED_IMPLS
    x_shape = tuple(layer[k] for k in ("N", "C", "H", "W"))
    w_shape = (layer["K"], layer["C"], layer["R"], layer["S"])
    auto = choose_conv_algo(x_shape, w_shape, layer["stride"], layer["pad"],
                            backward=direction == "bwd", dilation=layer.get("dilation", 1))
    return PROBED_IMPLS + (("fast:winograd",) if auto == "winograd" else ())
_MMAP_THRESHOLD = 64 * 1024


def columns_model(layer, impl, direction, n_threads, itemsize=4):
    """Bytes of column matrices the algorithm is designed to hold at once (the (im2col) model).

    fast im2col: one image's columns (C*R*S x P*Q) per thread, none for a 1x1 stride-1
    unpadded conv (x already is the column matrix); reference im2col: the whole batch's
    columns, and backward also the same-sized dcol; direct: none.
    """
    from .shapes import conv_out
    N, C, H, W, K, R, S, stride, pad = (layer[k] for k in ("N", "C", "H", "W", "K", "R", "S",
                                                           "stride", "pad"))
    P, Q = conv_out(H, W, R, S, stride, pad)
    one_image = C * R * S * P * Q * itemsize
    if impl == "fast:im2col":
        return 0 if (R == S == 1 and stride == 1 and pad == 0) else n_threads * one_image
    if impl == "reference":
        return (1 if direction == "fwd" else 2) * N * one_image
    return 0


def measure_all(jobs, timeout=600):
    """Run ``jobs`` (dicts: layer, name, direction, impl, threads) in one fresh process.

    Returns one result dict per job (``status`` "ok", "unavailable" or "error"), or raises
    RuntimeError when the probe process fails as a whole.
    """
    if not jobs:
        return []
    # Run from the folder that holds *this* fastconv package: ``python -m`` puts the working
    # directory first on sys.path, so the probe imports the same fastconv as the caller
    # (not, say, an unbuilt source tree in the current directory).
    import fastconv
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
    proc = subprocess.run([sys.executable, "-m", "fastconv.benchmark.memory"],
                          input=json.dumps(jobs), capture_output=True, text=True,
                          timeout=timeout, cwd=package_root)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe process failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------- the probe process

def _proc_status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _probe_ready():
    """None when this process can measure peaks, else the reason it cannot."""
    if not sys.platform.startswith("linux"):
        return "needs Linux (/proc/self/status and clear_refs)"
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        if not (libc.mallopt(M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
                and libc.mallopt(M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD)):
            return "mallopt refused to fix the mmap threshold (not glibc?)"
        _reset_peak()
        _proc_status_kb("VmHWM")
    except (OSError, AttributeError, RuntimeError) as exc:
        return f"cannot reset the peak-RSS counter: {exc}"
    return None


def _probe(job, reason_not_ready):
    from .. import num_threads
    from .cases import classify_exception, conv_inputs, fastconv_call

    layer, impl, direction, threads = job["layer"], job["impl"], job["direction"], job["threads"]
    result = {**job, "columns_mb": columns_model(layer, impl, direction, threads) / 2**20,
              "method": "fresh process, fixed mmap threshold, VmHWM - VmRSS around one call; "
                        "tracemalloc's peak around another"}
    if reason_not_ready:
        return {**result, "status": "unavailable", "reason": reason_not_ready}
    fn = fastconv_call(f"conv2d_{direction}", impl, layer,
                       conv_inputs(layer, np.random.default_rng(0)))
    try:
        with num_threads(threads):
            fn()                           # loads the kernels, starts the thread pool
            _reset_peak()
            before = _proc_status_kb("VmRSS")
            out = fn()
            peak = _proc_status_kb("VmHWM")
            tracemalloc.start()
            try:
                fn()
                traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
            finally:
                tracemalloc.stop()
    except Exception as exc:                # noqa: BLE001  reported, never fatal
        status, reason = classify_exception(exc)
        return {**result, "status": status, "reason": reason}
    outputs = out if isinstance(out, tuple) else (out,)
    out_mb = sum(a.nbytes for a in outputs) / 2**20
    peak_mb = max(peak - before, 0) / 1024
    rss_workspace, traced_workspace = max(peak_mb - out_mb, 0.0), max(traced_mb - out_mb, 0.0)
    return {**result, "status": "ok", "peak_mb": peak_mb, "outputs_mb": out_mb,
            "traced_mb": traced_mb, "rss_workspace_mb": rss_workspace,
            "traced_workspace_mb": traced_workspace,
            "workspace_mb": max(rss_workspace, traced_workspace)}


def _main():
    jobs = json.load(sys.stdin)
    reason = _probe_ready()
    results = [_probe(job, reason) for job in jobs]
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
