"""Each engine in a process of its own: the benchmark's timing workers.

Two OpenMP runtimes in one process contend for the cores: fastconv's kernels and PyTorch
each bring their own (libgomp twice, or libgomp and libomp), and the threads of the one
that ran last still spin on the cores when the other starts. Timed in turns inside one
process, alexnet_c1's forward at 2 threads read 0.36x PyTorch, and 0.73-1.1x with each
engine alone. So ``fastconv bench`` starts one worker process per engine and times every
call inside the worker of its engine:

* the ``fastconv`` worker imports fastconv (its kernels load on the first call) and never
  torch; the ``torch`` worker imports torch and fastconv's pure-Python helpers (the input
  makers, the models' shapes), never fastconv's compiled kernels. Each reports what it
  loaded (``hello``), which the run records;
* both call :func:`fastconv.keep_freed_memory` when the run asks for it (the default), so
  glibc reuses freed memory in each;
* both run without ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` (see ``worker_env``); the
  torch worker also without the OpenMP waiting policy that the ``fastconv`` command sets
  for fastconv's own kernels, so PyTorch runs with its own defaults;
* the parent (:mod:`fastconv.benchmark.runner`) only coordinates: it sends one request at a
  time, so while one engine is timed the other's process waits on its pipe, idle.

Protocol: one JSON object per line on the worker's stdin, one JSON answer per line on the
file descriptor the worker got as ``--reply-fd`` (its stdout is pointed at stderr, so that
nothing a library prints can break the protocol).
"""
import json
import os
import signal
import subprocess
import sys
import time

ENGINES = ("fastconv", "torch")
UNSET_IN_WORKERS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


class WorkerDied(RuntimeError):
    """The worker process exited (or closed its pipe) before answering."""


def worker_env(engine, environ=None):
    """The environment of ``engine``'s worker: ``environ`` (default os.environ) without
    UNSET_IN_WORKERS, and for torch without the OpenMP waiting variables that
    ``fastconv.tune_openmp_waiting`` set in this process."""
    from .._omp_wait import applied_settings
    env = dict(os.environ if environ is None else environ)
    for key in UNSET_IN_WORKERS:
        env.pop(key, None)
    if engine == "torch":
        for key, value in applied_settings().items():
            if env.get(key) == value:
                env.pop(key)
    return env


class Worker:
    """The parent's handle on one engine's worker process (started on creation)."""

    def __init__(self, engine, keep_freed_memory=True):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}, expected one of {ENGINES}")
        import fastconv
        self.engine = engine
        # Run from the folder that holds *this* fastconv package, so that the worker imports
        # the same fastconv as the caller (``python -m`` puts the current folder first).
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fastconv.benchmark.worker", engine,
                 "--reply-fd", str(write_fd)]
                + (["--keep-freed-memory"] if keep_freed_memory else []),
                stdin=subprocess.PIPE, cwd=package_root, env=worker_env(engine),
                pass_fds=(write_fd,), text=True)
        finally:
            os.close(write_fd)
        self._replies = os.fdopen(read_fd, "r")
        self.info = self.request({"cmd": "hello"})

    def request(self, message):
        """Send one request and return the worker's answer (a dict); WorkerDied when the
        process is gone."""
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            line = self._replies.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.close()
            raise WorkerDied(f"the {self.engine} worker process died (exit status "
                             f"{self.proc.returncode})")
        return json.loads(line)

    def alive(self):
        return self.proc.poll() is None

    def close(self):
        """Ask the worker to exit and wait for it (killed after 10 s)."""
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):    # gone, or closed already
            pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._replies.close()


# --------------------------------------------------------------------------- the worker side

def _kernels_loaded():
    """fastconv's compiled modules in this process (imported, or mapped on Linux)."""
    loaded = {m for m in sys.modules if m.startswith("fastconv._ext.")}
    try:
        with open("/proc/self/maps") as f:
            loaded |= {line.split()[-1] for line in f if "/fastconv/_ext/" in line}
    except OSError:
        pass
    return sorted(loaded)


def _hello(engine, keep):
    from .._malloc import keep_freed_memory
    info = {"engine": engine, "pid": os.getpid(),
            "keeps_freed_memory": bool(keep and keep_freed_memory()),
            "unset": [k for k in UNSET_IN_WORKERS if k in os.environ],
            "env": {k: os.environ[k] for k in ("GOMP_SPINCOUNT", "KMP_BLOCKTIME",
                                               "OMP_WAIT_POLICY") if k in os.environ}}
    if engine == "torch":
        from .environment import torch_details
        info["torch"] = torch_details()        # None when torch cannot be imported
    else:
        from .._threads import blas_info
        info["blas"] = blas_info()             # as this process sees it (its environment)
    return info


class Server:
    """What a worker does with each request: build the callables (cached until ``forget``),
    time them with :func:`timing.measure`, answer JSON-ready dicts."""

    def __init__(self, engine, keep_freed_memory=True):
        self.engine = engine
        self.keep = keep_freed_memory
        self.built = {}          # request key -> (callable, extra fields of its answer)
        self.inputs = {}         # (op family, layer name) -> the shared inputs of a layer

    def handle(self, msg):
        cmd = msg.get("cmd")
        if cmd == "hello":
            return _hello(self.engine, self.keep)
        if cmd == "forget":
            self.built.clear()
            self.inputs.clear()
            return {"ok": True}
        if cmd == "loaded":
            return {"torch": "torch" in sys.modules, "fastconv_kernels": _kernels_loaded(),
                    "pid": os.getpid()}
        if cmd == "time":
            return self.time(msg)
        return {"status": "error", "reason": f"unknown request {cmd!r}"}

    def time(self, msg):
        from .cases import classify_exception
        from .timing import Budget, measure
        threads = msg["threads"]
        try:
            self._set_threads(threads)
            if msg["key"] not in self.built:
                self.built[msg["key"]] = self._build(msg["kind"], msg["spec"])
            fn, extra = self.built[msg["key"]]
            start = time.monotonic()
            with self._thread_block(threads):
                timing = measure(fn, Budget(**msg["budget"]))
            return {"status": "ok", **timing.as_dict(), **extra, "pid": os.getpid(),
                    "started": start, "ended": time.monotonic()}
        except Exception as exc:                    # noqa: BLE001  reported, never fatal
            status, reason = classify_exception(exc)
            return {"status": status, "reason": reason, "pid": os.getpid()}

    def _set_threads(self, threads):
        if self.engine == "torch":
            from . import torch_impl
            torch_impl.load().set_num_threads(threads)

    def _thread_block(self, threads):
        if self.engine == "fastconv":
            from .. import num_threads
            return num_threads(threads)
        import contextlib
        return contextlib.nullcontext()

    def _build(self, kind, spec):
        """(zero-argument callable, extra answer fields) of one request."""
        from . import cases, models, overhead, torch_impl
        torch = self.engine == "torch"
        if kind == "layer":
            key = (spec["op"], spec["name"])
            if key not in self.inputs:
                self.inputs = {key: cases.make_inputs(spec["op"], spec["layer"])}
            d = self.inputs[key]
            if torch:
                return torch_impl.op_call(spec["op"], spec["layer"], d), {}
            return cases.fastconv_call(spec["op"], spec["impl"], spec["layer"], d), {}
        if kind in ("train", "infer"):
            x, labels = models.model_inputs(spec["batch"], spec["image_shape"])
            if kind == "train":
                build = torch_impl.train_step if torch else models.fastconv_train_step
                fn, params = build(spec["model"], x, labels)
            else:
                build = torch_impl.inference if torch else models.fastconv_inference
                fn, params = build(spec["model"], x,
                                   fused=spec.get("impl") in models.OWN_INFERENCE_PATH)
            return fn, {"params": params}
        if kind == "overhead":
            return overhead.call(spec["op"], spec["impl"]), {}
        if kind == "sgemm":
            from .timing import sgemm_call
            return sgemm_call(spec["n"]), {}
        raise ValueError(f"unknown kind of request {kind!r}")


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog="python -m fastconv.benchmark.worker")
    parser.add_argument("engine", choices=ENGINES)
    parser.add_argument("--reply-fd", type=int, required=True)
    parser.add_argument("--keep-freed-memory", action="store_true")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group: the parent stops the run and closes the
    # workers' pipes, which ends this loop; a traceback from each worker would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(args.reply_fd, "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())   # stray prints go to stderr
    if args.engine == "fastconv":
        from .. import tune_openmp_waiting
        tune_openmp_waiting(warn=False)     # as the fastconv command does, before any kernel
    server = Server(args.engine, args.keep_freed_memory)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("cmd") == "exit":
            break
        replies.write(json.dumps(server.handle(msg)) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
