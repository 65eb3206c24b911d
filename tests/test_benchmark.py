"""Fast tests of the benchmark machinery (``fastconv bench``): never of the figures.

Every run here is ``--quick`` (batch 2, a few repeats) on a small ``--filter``, so the file
takes seconds. No test asserts a time.
"""
import json
import math
import os
import sys

import numpy as np
import pytest

from fastconv.benchmark import cases, cli, jsonfile, memory, models, plot, runner, shapes, timing
from helpers import run_python

TINY = "conv2d_fwd:lenet_c1,conv2d_bwd:lenet_c2,max_pool2d_bwd:lenet_max2,bn1d_fc"


def bench(capsys, *argv):
    """Run ``fastconv bench --quick --threads 1 --no-progress *argv``: (status, stdout)."""
    status = cli.main(["--quick", "--threads", "1", "--no-progress", *argv])
    return status, capsys.readouterr().out


@pytest.fixture
def tiny_json(tmp_path, capsys):
    path = tmp_path / "run.json"
    status, out = bench(capsys, "--filter", TINY, "--no-torch", "--no-models", "--no-memory",
                        "--json", str(path))
    return status, out, path


# --------------------------------------------------------------------------- the suite

def test_suite_lists_every_op_and_impl():
    layers = cases.suite_layers(with_torch=True)
    ids = {c.id for lay in layers for c in lay.cases}
    assert {lay.op for lay in layers} == set(cases.OPS)
    assert "conv2d_fwd:vgg_c3:fast:im2col" in ids
    assert "conv2d_bwd:lenet_c1:torch" in ids
    assert "avg_pool2d_fwd:global_avg8:reference" in ids
    assert "batch_norm_bwd:bn1d_fc:fast" in ids
    assert not any(c.impl == "torch" for lay in cases.suite_layers(with_torch=False)
                   for c in lay.cases)


def test_conv_cases_dy_has_the_output_shape_of_the_conv_they_time():
    # conv_out with dilation and groups: the dy a backward case is timed with must be the
    # gradient of that very conv's output (dilated and depthwise rows included)
    import fastconv.functional as F
    conv_layers = [lay for lay in cases.suite_layers(batch_cap=1, with_torch=False)
                   if lay.op == "conv2d_bwd"]
    names = {lay.name for lay in conv_layers}
    assert {"atrous_d2", "atrous_d4", "mobilenet_dw1"} <= names
    for lay in conv_layers:
        d = lay.make_inputs(lay.layer, np.random.default_rng(0))
        L = lay.layer
        y = F.conv2d(d["x"], d["w"], d["b"], L["stride"], L["pad"], L.get("dilation", 1),
                     L.get("groups", 1))
        assert y.shape == d["dy"].shape, lay.name


def test_work_models():
    layer = dict(N=2, C=3, H=8, W=8, K=4, R=3, S=3, stride=1, pad=1)
    fwd = cases.conv_work("conv2d_fwd", layer)
    assert fwd == 2 * 2 * 4 * 3 * 3 * 3 * 8 * 8
    assert cases.conv_work("conv2d_bwd", layer) == 2 * fwd
    pool = dict(N=1, C=1, H=4, W=4, k=2, stride=2, pad=0)
    assert cases.pool_work("max_pool2d_fwd", pool) == (16 + 4) * 4
    assert cases.pool_work("avg_pool2d_bwd", pool) == (4 + 16) * 4
    assert cases.bn_work("batch_norm_bwd", dict(N=8, C=3, H=0, W=0)) == 3 * 24 * 4


# --------------------------------------------------------------------------- timing

def test_measure_respects_repeats_and_counts_faults():
    calls = []
    budget = timing.Budget(seconds=1.0, min_repeats=2, max_repeats=3, warmup_s=0.0,
                           warmup_calls=2)
    t = timing.measure(lambda: calls.append(1), budget)
    assert len(t.samples) == 3 and t.warmup_calls == 2
    assert len(calls) == 1 + 2 + 3                     # first call, warm-up, timed
    assert t.min_ms <= t.median_ms <= t.max_ms
    assert t.minflt_per_call is None or t.minflt_per_call >= 0
    t = timing.measure(lambda: None, timing.Budget(seconds=10.0, min_repeats=1, max_repeats=4))
    assert len(t.samples) == 4                          # max_repeats caps a long budget


def test_slow_case_skips_warm_up():
    """A first call longer than the budget is warm-up enough: then only min_repeats calls."""
    calls = []
    budget = timing.Budget(seconds=0.0, min_repeats=2, max_repeats=9, warmup_calls=5)
    t = timing.measure(lambda: calls.append(1), budget)
    assert t.warmup_calls == 0 and len(t.samples) == 2 and len(calls) == 3


def test_first_call_error_propagates():
    def boom():
        raise ImportError("no kernel")
    with pytest.raises(ImportError):
        timing.measure(boom)


def test_page_faults_are_seen():
    """A fresh 64 MB mapping per call, every page written, faults in new pages on every
    call: 16384 of 4 KiB, or as few as 32 where the kernel gives transparent huge pages
    (2 MiB). The count must show it. (An mmap of its own, not a NumPy array: whether malloc
    maps a large array afresh depends on its settings, which keep_freed_memory changes.)"""
    import mmap
    if timing.resource is None:
        pytest.skip("no getrusage")

    def fresh_pages():
        with mmap.mmap(-1, 64 << 20) as m:
            m.write(b"\1" * len(m))

    budget = timing.Budget(seconds=0.0, min_repeats=2, max_repeats=2, warmup_s=0.0,
                           warmup_calls=0)
    t = timing.measure(fresh_pages, budget)
    assert t.minflt_per_call >= 16


# --------------------------------------------------------------------------- the command

def test_quick_run_prints_tables_and_writes_json(tiny_json):
    status, out, path = tiny_json
    assert status == 0
    assert "== conv2d forward ==" in out and "== conv2d backward" in out
    assert "GFLOP/s" in out and "GB/s" in out and "faults/call" in out
    assert "QUICK RUN" in out
    doc = json.loads(path.read_text())
    for key in ("schema", "command", "settings", "environment", "sgemm", "results", "models",
                "inference", "overhead", "memory", "summary", "unavailable"):
        assert key in doc, key
    env = doc["environment"]
    for key in ("cpu", "cores_usable", "threads_measured", "openmp", "blas", "versions",
                "env", "warnings", "date_utc", "load_average_start"):
        assert key in env, key
    assert doc["sgemm"][0]["threads"] == 1 and doc["sgemm"][0]["gflops"] > 0
    ids = {r["id"] for r in doc["results"]}
    assert ids == {c.id for lay in cases.suite_layers(2, with_torch=False) for c in lay.cases
                   if cases.matches(c.id, TINY.split(","))}
    for r in doc["results"]:
        assert r["threads"] == 1 and r["layer"]["N"] <= runner.QUICK_BATCH
        assert r["status"] in ("ok", "unavailable", "error")
        if r["status"] == "ok":
            assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
            assert len(r["samples_ms"]) == r["repeats"] >= 2
            # the best of the quick run's 2 rounds, and their spread
            assert len(r["round_medians_ms"]) == doc["settings"]["rounds"] == 2
            assert r["median_ms"] == min(r["round_medians_ms"])
            assert math.isclose(r["round_spread"], max(r["round_medians_ms"])
                                / min(r["round_medians_ms"]) - 1)
            assert ("gflops" in r) == (r["unit"] == "flop")
            assert ("gbps" in r) == (r["unit"] == "byte")
            if r["unit"] == "flop":
                assert 0 < r["sgemm_share"]
            if r["impl"] != "reference":
                assert "speedup_vs_reference" in r or not any(
                    o["status"] == "ok" and o["impl"] == "reference" and o["op"] == r["op"]
                    and o["case"] == r["case"] for o in doc["results"])
        else:
            assert r["reason"]
    # no temporary file left behind by the atomic write
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]


def test_markdown_table(tiny_json, tmp_path, capsys):
    from fastconv.benchmark import report
    _, _, path = tiny_json
    text = report.markdown(jsonfile.load(path))
    assert "| conv2d_fwd | lenet_c1 |" in text and "| batch_norm_bwd | bn1d_fc |" in text
    md = tmp_path / "t.md"
    status, _ = bench(capsys, "--filter", "conv2d_fwd:lenet_c1", "--no-torch", "--no-models",
                      "--no-memory", "--markdown", str(md))
    assert status == 0 and md.read_text().count("| conv2d_fwd | lenet_c1 |") == 1


def test_compare_against_saved_run(tiny_json, tmp_path, capsys):
    _, _, old = tiny_json
    status, out = bench(capsys, "--filter", TINY, "--no-torch", "--no-models", "--no-memory",
                        "--compare", str(old))
    assert status == 0
    assert "== change against" in out
    ran = [r for r in jsonfile.load(old)["results"] if r["status"] == "ok"]
    if ran:
        assert "geometric mean change" in out and f"{ran[0]['id']} " in out
    else:
        assert "no case measured in both runs" in out


def test_compare_rejects_a_foreign_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    status = cli.main(["--quick", "--compare", str(bad), "--no-progress"])
    assert status == 2
    assert "not a `fastconv bench --json` file" in capsys.readouterr().err


class InProcessWorker:
    """Stands in for runner.Worker: the same Server, in this process, so that a test can
    break a case with monkeypatch (a worker process would not see the patch)."""

    def __init__(self, engine, keep_freed_memory=True):
        from fastconv.benchmark import worker
        self.engine, self.server = engine, worker.Server(engine, keep_freed_memory=False)
        self.info = self.request({"cmd": "hello"})

    def request(self, message):
        return json.loads(json.dumps(self.server.handle(message)))

    def alive(self):
        return True

    def close(self):
        pass


def test_unavailable_cases_are_reported_not_fatal(monkeypatch, capsys):
    real = cases.fastconv_call

    def missing_direct(op, impl, layer, d):
        if impl == "fast:direct":
            raise ImportError("fastconv._ext.conv_direct could not be imported (test)")
        return real(op, impl, layer, d)

    monkeypatch.setattr(cases, "fastconv_call", missing_direct)
    monkeypatch.setattr(runner, "Worker", InProcessWorker)
    status, out = bench(capsys, "--filter", "conv2d_fwd:lenet_c1", "--no-torch",
                        "--no-models", "--no-memory")
    assert status == 0
    assert "UNAVAILABLE: fast:direct (lenet_c1): ImportError: fastconv._ext.conv_direct" in out
    assert "fast:im2col" in out


def test_each_engine_runs_in_its_own_process_alternating(monkeypatch, tmp_path, capsys):
    """Two worker processes, neither this one: fastconv's never imports torch, torch's never
    loads fastconv's kernels; the parent alternates them round by round."""
    pytest.importorskip("torch")
    from fastconv.benchmark import worker
    order, loaded = [], {}
    real_request, real_close = worker.Worker.request, runner.Engines.close

    def request(self, message):
        if message.get("cmd") == "time":
            order.append((self.engine, message["key"]))
        return real_request(self, message)

    def close(self):                     # what each worker loaded, asked before they exit
        for engine, w in self.workers.items():
            loaded[engine] = w.request({"cmd": "loaded"})
        real_close(self)

    monkeypatch.setattr(worker.Worker, "request", request)
    monkeypatch.setattr(runner.Engines, "close", close)
    path = tmp_path / "run.json"
    status, _ = bench(capsys, "--filter", "conv2d_fwd:lenet_c1:fast:auto,"
                      "conv2d_fwd:lenet_c1:torch", "--no-models", "--no-memory",
                      "--json", str(path))
    assert status == 0
    assert sorted(loaded) == ["fastconv", "torch"]
    pids = {e: info["pid"] for e, info in loaded.items()}
    assert len({os.getpid(), *pids.values()}) == 3
    assert loaded["fastconv"]["torch"] is False and loaded["fastconv"]["fastconv_kernels"]
    assert loaded["torch"]["torch"] is True and loaded["torch"]["fastconv_kernels"] == []
    layer = [(engine, key) for engine, key in order if not key.startswith("sgemm")]
    assert layer == [("fastconv", "conv2d_fwd:lenet_c1:fast:auto"),
                     ("torch", "conv2d_fwd:lenet_c1:torch")] * 2
    doc = json.loads(path.read_text())
    by_impl = {r["impl"]: r for r in doc["results"]}
    assert by_impl["fast:auto"]["worker_pid"] == pids["fastconv"]
    assert by_impl["torch"]["worker_pid"] == pids["torch"]
    assert by_impl["fast:auto"]["speedup_vs_torch"] > 0
    workers = doc["environment"]["workers"]
    assert workers["fastconv"]["unset"] == workers["torch"]["unset"] == []
    assert doc["environment"]["torch"]["version"]


def test_workers_are_separate_processes_with_their_own_engines(monkeypatch):
    """Without torch installed too: each engine's worker is a process of its own, the
    fastconv one loads the kernels and not torch, the torch one never loads the kernels
    (with torch missing its cases are unavailable), and neither sees OPENBLAS_CORETYPE."""
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    settings = runner.Settings.from_options(quick=True, threads=[1])
    engines = runner.Engines(settings)
    lay = next(lay for lay in cases.suite_layers(batch_cap=2)
               if lay.op == "conv2d_fwd" and lay.name == "lenet_c1")
    spec = {"op": lay.op, "name": lay.name, "layer": lay.layer}
    try:
        answers = {engine: engines.request(engine, {
            "cmd": "time", "key": f"{lay.op}:{lay.name}:{impl}", "kind": "layer",
            "spec": {**spec, "impl": impl}, "threads": 1, "budget": vars(timing.QUICK_BUDGET)})
            for engine, impl in (("fastconv", "fast:auto"), ("torch", "torch"))}
        loaded = {engine: engines.request(engine, {"cmd": "loaded"}) for engine in answers}
    finally:
        engines.close()
    assert answers["fastconv"]["status"] == "ok"
    assert answers["torch"]["status"] in ("ok", "unavailable")
    assert len({os.getpid(), loaded["fastconv"]["pid"], loaded["torch"]["pid"]}) == 3
    assert loaded["fastconv"]["torch"] is False and loaded["fastconv"]["fastconv_kernels"]
    assert loaded["torch"]["fastconv_kernels"] == []
    assert all(info["unset"] == [] for info in engines.info.values())


def test_worker_environment(monkeypatch):
    from fastconv import _omp_wait
    from fastconv.benchmark import worker
    environ = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1", "GOMP_SPINCOUNT": "2000",
               "KMP_BLOCKTIME": "5", "PATH": "/bin"}
    monkeypatch.setattr(_omp_wait, "_applied", {"GOMP_SPINCOUNT": "2000", "KMP_BLOCKTIME": "0"})
    fast, torch = (worker.worker_env(e, environ) for e in ("fastconv", "torch"))
    assert "OPENBLAS_CORETYPE" not in fast and "OPENBLAS_L2_SIZE" not in torch
    assert fast["GOMP_SPINCOUNT"] == "2000" and fast["PATH"] == "/bin"
    # torch's worker: without what tune_openmp_waiting set, with what the user set
    assert "GOMP_SPINCOUNT" not in torch and torch["KMP_BLOCKTIME"] == "5"


def test_fastconv_only_run_without_torch(tmp_path):
    """With torch not importable (a stand-in package that raises ImportError, on the workers'
    PYTHONPATH too), the fastconv cases run and PyTorch's are unavailable: exit status 0."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch blocked by the test')\n")
    path = tmp_path / "run.json"
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell", PYTHONPATH=os.pathsep.join(
        [str(tmp_path / "fake")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                    if p]))
    out = run_python(["-m", "fastconv.benchmark", "--quick", "--threads", "1", "--no-progress",
                      "--filter", "conv2d_fwd:lenet_c1:fast:auto,conv2d_fwd:lenet_c1:torch,"
                      "inference:lenet5", "--no-memory", "--json", str(path)], env=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(path.read_text())
    recs = doc["results"] + doc["inference"]
    fast = [r for r in recs if not r["impl"].startswith("torch")]
    torch = [r for r in recs if r["impl"].startswith("torch")]
    assert {r["impl"] for r in doc["inference"]} == {"fastconv", "fastconv:fused", "torch",
                                                     "torch:jit"}
    assert len(fast) == 3 and all(r["status"] == "ok" for r in fast)
    assert len(torch) == 3 and all(r["status"] == "unavailable" for r in torch)
    assert all("torch blocked by the test" in r["reason"] for r in torch)
    assert "UNAVAILABLE: torch" in out.stdout
    workers = doc["environment"]["workers"]
    assert workers["torch"]["torch"] is None and workers["fastconv"]["pid"] != workers[
        "torch"]["pid"]
    assert {r["worker_pid"] for r in fast} == {workers["fastconv"]["pid"]}
    assert doc["environment"]["unset_in_workers"] == {"OPENBLAS_CORETYPE": "Haswell"}
    if sys.platform.startswith("linux"):           # glibc: both workers reuse freed memory
        assert doc["environment"]["malloc"] == "keeps freed memory"
    assert not any("OPENBLAS_CORETYPE" in w for w in doc["environment"]["warnings"])


def test_no_torch_starts_no_torch_worker(monkeypatch, capsys):
    started = []

    def worker(engine, keep_freed_memory=True):
        started.append(engine)
        return InProcessWorker(engine)

    monkeypatch.setattr(runner, "Worker", worker)
    status, _ = bench(capsys, "--filter", "conv2d_fwd:lenet_c1:fast:auto", "--no-torch",
                      "--no-models", "--no-memory")
    assert status == 0 and started == ["fastconv"]


def test_a_worker_that_dies_is_an_error_and_is_replaced():
    """A crash in a kernel kills only its worker: the case it was timing is an error, the
    next request gets a fresh worker."""
    settings = runner.Settings.from_options(quick=True, threads=[1], with_torch=False)
    engines = runner.Engines(settings)
    sgemm = {"cmd": "time", "key": "k", "kind": "sgemm", "spec": {"n": 8}, "threads": 1,
             "budget": vars(timing.QUICK_BUDGET)}
    try:
        first = engines.request("fastconv", {"cmd": "loaded"})
        dying = engines.workers["fastconv"]
        dying.proc.kill()
        dying.proc.wait()
        dying.alive = lambda: True          # it dies while answering, not before
        answer = engines.request("fastconv", sgemm)
        assert answer["status"] == "error" and "worker process died" in answer["reason"]
        answer = engines.request("fastconv", sgemm)
        assert answer["status"] == "ok" and answer["pid"] != first["pid"]
    finally:
        engines.close()


def test_training_and_inference_compare_the_same_networks_and_batches():
    impls = {"train": ["fastconv", "torch"],
             "infer": ["fastconv", "fastconv:fused", "torch", "torch:jit"]}
    for kind in ("train", "infer"):
        mcases = models.model_cases(kind=kind)
        for name in models.MODELS:
            same = [m for m in mcases if m.model == name]
            assert [m.impl for m in same] == impls[kind]
            assert len({(m.batch, m.image_shape) for m in same}) == 1
    infer = {m.model: m.batch for m in models.model_cases(kind="infer")}
    assert infer == {"resnet20": 128, "lenet5": 1}
    assert {m.id for m in models.model_cases(kind="infer")} >= {"inference:resnet20:fastconv",
                                                                "inference:lenet5:torch"}
    warnings = runner.architecture_warnings([
        {"model": "m", "impl": "fastconv", "status": "ok", "params": 10},
        {"model": "m", "impl": "torch", "status": "ok", "params": 12}])
    assert len(warnings) == 1 and "not run the same architecture" in warnings[0]
    assert "fastconv 10, torch 12" in warnings[0]
    assert not runner.architecture_warnings([
        {"model": "m", "impl": impl, "status": "ok", "params": 10}
        for impl in ("fastconv", "fastconv:fused", "torch", "torch:jit")])


def test_torch_models_have_fastconvs_parameter_counts():
    pytest.importorskip("torch")
    from fastconv.benchmark import torch_impl
    for name, (_, shape) in models.MODELS.items():
        x, _ = models.model_inputs(2, shape)
        fused, n_fused = models.fastconv_inference(name, x, fused=True)
        plain, n_fast = models.fastconv_inference(name, x)
        jit, n_jit = torch_impl.inference(name, x, fused=True)
        _, n_torch = torch_impl.inference(name, x)
        assert n_fast == n_torch == n_fused == n_jit, name
        assert fused().shape == plain().shape == tuple(jit().shape) == (2, 10)


def test_overhead_cases(capsys, tmp_path):
    """The per-call overhead rows: the op API, its kernel calls alone (replayed with the
    arguments the op passed them), and python_us = the difference."""
    from fastconv.benchmark import overhead
    d = overhead.inputs()
    y = overhead.fastconv_call("relu", d)()
    replay = overhead.kernel_calls(overhead.fastconv_call("relu", d))
    assert replay() is None            # the kernel wrote into the output it was given ...
    path = tmp_path / "run.json"
    status, out = bench(capsys, "--filter", "overhead:relu,overhead:conv2d", "--no-torch",
                        "--no-models", "--no-memory", "--json", str(path))
    assert status == 0 and "== per-call overhead" in out
    doc = json.loads(path.read_text())
    recs = {(r["op"], r["impl"]): r for r in doc["overhead"]}
    assert set(recs) == {(op, impl) for op in ("relu", "conv2d")
                         for impl in ("fast", "fast:kernel")}
    assert all(r["status"] == "ok" for r in recs.values())
    fast, kernel = recs["relu", "fast"], recs["relu", "fast:kernel"]
    assert math.isclose(fast["python_us"], 1e3 * (fast["median_ms"] - kernel["median_ms"]))
    assert doc["results"] == [] and doc["models"] == []
    np.testing.assert_array_equal(y, np.maximum(d["x"], 0))


def test_an_error_is_reported_and_sets_the_exit_status(monkeypatch, capsys):
    def broken(op, impl, layer, d):
        raise ValueError("kernel exploded (test)")

    monkeypatch.setattr(cases, "fastconv_call", broken)
    monkeypatch.setattr(runner, "Worker", InProcessWorker)
    status, out = bench(capsys, "--filter", "bn1d_fc", "--no-torch", "--no-models",
                        "--no-memory")
    assert status == 1
    assert "ERROR: reference" in out and "kernel exploded" in out


def test_missing_models_are_unavailable(monkeypatch):
    def no_models(name, x, labels):
        raise ImportError("No module named 'fastconv.models' (test)")

    monkeypatch.setattr(models, "fastconv_train_step", no_models)
    monkeypatch.setattr(runner, "Worker", InProcessWorker)
    settings = runner.Settings.from_options(quick=True, threads=[1], filters=["lenet5"],
                                            with_torch=False, with_memory=False,
                                            progress=False)
    doc = runner.run_benchmarks(settings)
    (rec,) = doc["models"]
    assert [r["status"] for r in doc["inference"]] == ["ok", "ok"]   # plain and fused
    assert rec["status"] == "unavailable" and "fastconv.models" in rec["reason"]
    assert doc["unavailable"][0]["impl"] == "fastconv"


def test_classify_exception():
    assert cases.classify_exception(ImportError("x"))[0] == "unavailable"
    assert cases.classify_exception(NotImplementedError())[0] == "unavailable"
    assert cases.classify_exception(
        AttributeError("module 'fastconv._ext.pool' has no attribute 'f'"))[0] == "unavailable"
    assert cases.classify_exception(AttributeError("'NoneType' object has no attribute"))[0] \
        == "error"
    assert cases.classify_exception(ValueError("bad"))[0] == "error"


def test_filter_and_list(capsys):
    assert cli.main(["--list", "--filter", "nin_1x1", "--no-torch"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed and all("nin_1x1" in i for i in listed)
    assert cli.main(["--quick", "--filter", "no-such-case", "--no-progress"]) == 2


def test_bad_threads_option():
    with pytest.raises(SystemExit):
        cli.main(["--threads", "0"])
    with pytest.raises(SystemExit):
        cli.main(["--threads", "one"])


def test_json_is_atomic_and_strict(tmp_path):
    path = tmp_path / "x.json"
    jsonfile.save({"results": [], "environment": {}, "v": float("nan")}, str(path))
    assert json.loads(path.read_text())["v"] is None
    assert os.listdir(tmp_path) == ["x.json"]
    with pytest.raises(TypeError):                     # a failed write leaves nothing behind
        jsonfile.save({"bad": object()}, str(tmp_path / "y.json"))
    assert os.listdir(tmp_path) == ["x.json"]


# --------------------------------------------------------------------------- plot, memory, torch

def test_plot_without_matplotlib_is_a_clear_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(plot, "require", lambda: plot.MISSING)
    status = cli.main(["--quick", "--plot", str(tmp_path / "p.png"), "--no-progress"])
    assert status == 2
    assert "needs matplotlib" in capsys.readouterr().err


@pytest.mark.slow
def test_plot_is_written(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    status, _ = bench(capsys, "--filter", "conv2d_fwd:lenet_c1,conv2d_bwd:lenet_c1",
                      "--no-torch", "--no-models", "--no-memory", "--plot", str(png))
    assert status == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_columns_model():
    layer = dict(N=4, C=2, H=6, W=6, K=3, R=3, S=3, stride=1, pad=1)
    one_image = 2 * 9 * 36 * 4
    assert memory.columns_model(layer, "fast:im2col", "fwd", 2) == 2 * one_image
    assert memory.columns_model(layer, "reference", "fwd", 2) == 4 * one_image
    assert memory.columns_model(layer, "reference", "bwd", 2) == 8 * one_image
    assert memory.columns_model(layer, "fast:direct", "bwd", 2) == 0
    one_by_one = dict(layer, R=1, S=1, pad=0)
    assert memory.columns_model(one_by_one, "fast:im2col", "fwd", 2) == 0


def test_memory_probes_the_algorithm_auto_runs():
    """The memory targets read the probe of the algorithm algo="auto" picks: Winograd is
    probed too where auto runs it, and every probed algorithm is one conv2d accepts."""
    wino = dict(N=8, C=16, H=8, W=8, K=16, R=3, S=3, stride=1, pad=1)
    assert memory.probed_impls(wino, "fwd") == memory.PROBED_IMPLS + ("fast:winograd",)
    assert memory.probed_impls(wino, "bwd") == memory.PROBED_IMPLS + ("fast:winograd",)
    assert memory.probed_impls(dict(wino, groups=16), "fwd") == memory.PROBED_IMPLS
    assert memory.probed_impls(dict(wino, stride=2), "fwd") == memory.PROBED_IMPLS
    jobs = runner.memory_jobs(cases.suite_layers(1, False), runner.Settings(threads=[1]))
    assert {job["impl"] for job in jobs} == set(memory.PROBED_IMPLS) | {"fast:winograd"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS probe is Linux-only")
def test_memory_probe_sees_the_reference_column_matrix():
    """The reference im2col builds the batch's whole column matrix: 13.5 MB here."""
    layer = dict(N=16, C=16, H=32, W=32, K=4, R=3, S=3, stride=1, pad=1)
    jobs = [{"case": "probe", "direction": "fwd", "impl": impl, "threads": 1, "layer": layer}
            for impl in ("reference", "fast:direct")]
    ref, direct = memory.measure_all(jobs)
    if ref["status"] != "ok":
        pytest.skip(f"probe not possible here: {ref.get('reason')}")
    columns = memory.columns_model(layer, "reference", "fwd", 1) / 2**20
    assert ref["peak_mb"] >= 0.9 * columns
    assert ref["peak_mb"] >= ref["outputs_mb"]
    # tracemalloc sees the same NumPy column matrix, and workspace_mb is the larger reading
    assert ref["traced_workspace_mb"] >= 0.9 * columns
    assert ref["workspace_mb"] == max(ref["rss_workspace_mb"], ref["traced_workspace_mb"])
    if direct["status"] == "ok":
        assert direct["workspace_mb"] < 0.5 * columns


def test_memory_probe_sees_small_numpy_scratch():
    """Below the resident-set counters' resolution (they are synced in batches of pages per
    thread), tracemalloc still sees a small layer's NumPy scratch: the fast im2col keeps a
    padded image per thread, so its workspace is never read as zero."""
    layer = dict(N=8, C=16, H=8, W=8, K=16, R=3, S=3, stride=1, pad=1)
    job = {"case": "probe", "direction": "fwd", "impl": "fast:im2col", "threads": 1,
           "layer": layer}
    (rec,) = memory.measure_all([job])
    if rec["status"] != "ok":
        pytest.skip(f"probe not possible here: {rec.get('reason')}")
    padded_mb = 10 * 10 * 16 * 4 / 2**20
    assert rec["traced_workspace_mb"] >= padded_mb
    assert rec["workspace_mb"] >= rec["traced_workspace_mb"]


def test_torch_rows_when_torch_is_installed(capsys, tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "t.json"
    status, out = bench(capsys, "--filter", "conv2d_bwd:lenet_c2,max_pool2d_bwd:lenet_max2,"
                        "batch_norm_bwd:bn1d_fc", "--no-models", "--no-memory",
                        "--json", str(path))
    assert status == 0
    doc = json.loads(path.read_text())
    torch_rows = [r for r in doc["results"] if r["impl"] == "torch"]
    assert len(torch_rows) == 3 and all(r["status"] == "ok" for r in torch_rows)
    assert any("speedup_vs_torch" in r for r in doc["results"])
    assert doc["environment"]["torch"]["version"]


def test_python_dash_m_entry_point():
    out = run_python(["-m", "fastconv.benchmark", "--help"])
    assert out.returncode == 0 and "--compare" in out.stdout


def test_geomean():
    assert math.isclose(runner.geomean([1.0, 4.0]), 2.0)
    assert runner.geomean([]) is None


def test_environment_warns_about_openblas_coretype(monkeypatch):
    from fastconv.benchmark import environment
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    env = environment.collect([1], with_torch=False)
    assert env["env"]["OPENBLAS_CORETYPE"] == "Haswell"
    assert any("OPENBLAS_CORETYPE=Haswell" in w for w in env["warnings"])
    assert "OPENBLAS_CORETYPE=Haswell" in environment.summary_line(env)
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert not any("OPENBLAS_CORETYPE" in w for w in environment.collect([1], False)["warnings"])


def test_contention_warning():
    busy = [{"threads": 1, "gflops": 100.0}, {"threads": 2, "gflops": 60.0}]
    free = [{"threads": 1, "gflops": 100.0}, {"threads": 2, "gflops": 190.0}]
    assert len(runner.contention_warnings(busy)) == 1
    assert runner.contention_warnings(free) == []
    assert runner.contention_warnings(busy[:1]) == []


# --------------------------------------------------------------------------- performance targets

BENCH_TARGETS = os.path.join(os.path.dirname(__file__), "..", "bench", "targets.py")


def _bench_targets():
    """bench/targets.py, the developer tool that evaluates the performance targets (it is
    not part of the installed package, so it is loaded from the checkout)."""
    import importlib.util
    module = sys.modules.get("bench_targets")
    if module is None:
        spec = importlib.util.spec_from_file_location("bench_targets", BENCH_TARGETS)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_targets"] = module         # dataclasses look their module up
        spec.loader.exec_module(module)
    return module

def _layer_rec(op, case, impl, threads, median_ms, status="ok", **extra):
    rec = {"id": f"{op}:{case}:{impl}", "op": op, "case": case, "impl": impl,
           "threads": threads, "status": status, **extra}
    if status == "ok":
        rec["median_ms"] = median_ms
    return rec


def synthetic_doc(threads=(1,), torch_over_fast=None, fast_ms=None, with_torch=True,
                  models=None, sgemm=None, conv_gflops=None):
    """A made-up run of the whole suite: the default fast impl of every (op, layer) takes
    ``fast_ms(op, case, threads)`` ms (1.0 by default), PyTorch ``torch_over_fast(op, case,
    threads)`` times that (1.0 by default); ``models``: {(model, impl, threads): ms}."""
    fast_ms = fast_ms or (lambda op, case, t: 1.0)
    torch_over_fast = torch_over_fast or (lambda op, case, t: 1.0)
    results = []
    for lay in cases.suite_layers(with_torch=False):
        for t in threads:
            ms = fast_ms(lay.op, lay.name, t)
            extra = {}
            if lay.op == "conv2d_fwd" and conv_gflops:
                extra["gflops"] = conv_gflops(lay.name, t)
            results.append(_layer_rec(lay.op, lay.name, runner.default_impl(lay.op), t, ms,
                                      **extra))
            results.append(_layer_rec(lay.op, lay.name, "reference", t, 10 * ms))
            if with_torch:
                results.append(_layer_rec(lay.op, lay.name, "torch", t,
                                          ms * torch_over_fast(lay.op, lay.name, t)))
    model_recs = [{"id": f"train_step:{m}:{impl}", "model": m, "impl": impl, "threads": t,
                   "status": "ok", "median_ms": ms, "batch": 8}
                  for (m, impl, t), ms in (models or {}).items()]
    return {"schema": runner.SCHEMA, "settings": {"threads": list(threads), "quick": False},
            "environment": {"warnings": []}, "results": results, "models": model_recs,
            "sgemm": sgemm or []}


def _target(recs, target_id, threads=None):
    found = [r for r in recs if r["id"] == target_id
             and (threads is None or r["threads"] == threads)]
    assert len(found) == 1, (target_id, threads, found)
    return found[0]


def test_targets_have_stable_keys_and_one_record_per_thread_count():
    targets = _bench_targets()
    recs = targets.evaluate(synthetic_doc(threads=(1, 2)))
    for r in recs:
        assert set(r) == {"id", "description", "threads", "value", "threshold", "status",
                          "detail"}
        assert r["status"] in (targets.MET, targets.NOT_MET, targets.NOT_MEASURED)
        assert set(r["value"]) == set(r["threshold"])
    per_thread = [t.id for t in targets.TARGETS if t.scaling is None and not t.probed]
    once = [t.id for t in targets.TARGETS if t.scaling is not None or t.probed]
    assert len(recs) == 2 * len(per_thread) + len(once)     # no memory probes: one record
    assert {r["threads"] for r in recs if r["id"] == "conv_fwd"} == {1, 2}
    json.dumps(recs, allow_nan=False)


def test_conv_targets_geomean_and_worst_layer():
    targets = _bench_targets()
    # conv_fwd: every layer 2x except vgg_c3 at 0.4x -> geomean fine, minimum not.
    # conv_bwd: every layer 0.9x -> minimum fine, geomean not.  threads 2: all 1.6x.
    def ratio(op, case, t):
        if t == 2:
            return 1.6
        if op == "conv2d_fwd":
            return 0.4 if case == "vgg_c3" else 2.0
        return 0.9

    recs = targets.evaluate(synthetic_doc(threads=(1, 2), torch_over_fast=ratio))
    fwd = _target(recs, "conv_fwd", 1)
    n = len(targets.CONV_CASES)
    assert math.isclose(fwd["value"]["geomean"],
                        math.exp(((n - 1) * math.log(2.0) + math.log(0.4)) / n))
    assert fwd["value"]["geomean"] >= 1.0
    assert math.isclose(fwd["value"]["min"], 0.4)
    assert fwd["threshold"] == {"geomean": 1.3, "min": 0.8}
    assert fwd["status"] == "NOT met" and "vgg_c3" in fwd["detail"]
    bwd = _target(recs, "conv_bwd", 1)
    assert math.isclose(bwd["value"]["geomean"], 0.9) and bwd["status"] == "NOT met"
    for op in ("conv_fwd", "conv_bwd"):
        rec = _target(recs, op, 2)
        assert math.isclose(rec["value"]["geomean"], 1.6) and rec["status"] == "met"
    # the 3x3 stride-1 layers on their own: vgg_c3 is one of them
    s1 = _target(recs, "conv_fwd_3x3s1", 1)
    assert s1["threshold"] == {"min": 1.5} and math.isclose(s1["value"]["min"], 0.4)
    assert s1["status"] == "NOT met" and "vgg_c3" in s1["detail"]
    assert _target(recs, "conv_fwd_3x3s1", 2)["status"] == "met"
    assert targets.CONV_3X3_S1 == ("resnet20_s1", "resnet20_s2", "resnet20_s3", "vgg_c3")


def _fwd_bwd_ms(fwd_fast, bwd_fast):
    return lambda op, case, t: fwd_fast if op.endswith("_fwd") else bwd_fast


def test_pool_and_bn_targets_two_ways():
    """(a) per layer (torch fwd + bwd) / (fast fwd + bwd); (b) every entry on its own."""
    targets = _bench_targets()
    # forward: fast 1 ms, torch 2 ms (2x); backward: fast 10 ms, torch 30 ms (3x)
    # -> (a) 32/11 = 2.91x on every layer, (b) sqrt(2 * 3) = 2.45x
    doc = synthetic_doc(fast_ms=_fwd_bwd_ms(1.0, 10.0),
                        torch_over_fast=lambda op, case, t: 2.0 if op.endswith("_fwd") else 3.0)
    recs = targets.evaluate(doc)
    for target_id, threshold in (("pool_fwd_bwd", 3.0), ("bn_fwd_bwd", 2.0)):
        rec = _target(recs, target_id, 1)
        assert math.isclose(rec["value"]["per_case_sum"], 32 / 11)
        assert math.isclose(rec["value"]["all_entries"], math.sqrt(6))
        assert rec["threshold"] == {"per_case_sum": threshold, "all_entries": threshold}
    assert _target(recs, "pool_fwd_bwd")["status"] == "NOT met"       # both < 3
    assert _target(recs, "bn_fwd_bwd")["status"] == "met"             # both >= 2
    # forward 5x, backward 1x, backward 10x longer: (a) 15/11 = 1.36x, (b) sqrt(5) = 2.24x
    doc = synthetic_doc(fast_ms=_fwd_bwd_ms(1.0, 10.0),
                        torch_over_fast=lambda op, case, t: 5.0 if op.endswith("_fwd") else 1.0)
    recs = targets.evaluate(doc)
    for target_id in ("pool_fwd_bwd", "bn_fwd_bwd"):
        rec = _target(recs, target_id)
        assert math.isclose(rec["value"]["per_case_sum"], 15 / 11)
        assert math.isclose(rec["value"]["all_entries"], math.sqrt(5))
        assert rec["status"] == "NOT met"                             # (a) below both
    # max pooling 16x, average pooling 1x, fwd and bwd alike: geomean over the 6 layers 4x
    doc = synthetic_doc(torch_over_fast=lambda op, case, t: 16.0 if op.startswith("max")
                        else 1.0)
    rec = _target(targets.evaluate(doc), "pool_fwd_bwd")
    assert math.isclose(rec["value"]["per_case_sum"], 4.0)
    assert math.isclose(rec["value"]["all_entries"], 4.0) and rec["status"] == "met"


def test_training_step_targets():
    targets = _bench_targets()
    models = {("lenet5", "fastconv", 1): 10.0, ("lenet5", "torch", 1): 26.0,
              ("resnet20", "fastconv", 1): 100.0, ("resnet20", "torch", 1): 90.0}
    recs = targets.evaluate(synthetic_doc(models=models))
    lenet, resnet = _target(recs, "train_lenet5"), _target(recs, "train_resnet20")
    assert math.isclose(lenet["value"]["speedup"], 2.6) and lenet["status"] == "met"
    assert lenet["threshold"] == {"speedup": 2.5}
    assert math.isclose(resnet["value"]["speedup"], 0.9) and resnet["status"] == "NOT met"
    del models[("resnet20", "torch", 1)]
    resnet = _target(targets.evaluate(synthetic_doc(models=models)), "train_resnet20")
    assert resnet["status"] == "not measured" and resnet["value"] == {"speedup": None}
    assert "train_step:resnet20:torch (not run)" in resnet["detail"]
    # inference: doc["inference"], not the training steps
    for model in ("resnet20", "lenet5"):
        assert _target(recs, f"infer_{model}")["status"] == "not measured"
    doc = synthetic_doc(models=models)
    doc["inference"] = [{"model": m, "impl": impl, "threads": 1, "status": "ok",
                         "median_ms": ms}
                        for (m, impl), ms in {("resnet20", "fastconv"): 10.0,
                                              ("resnet20", "torch"): 16.0,
                                              ("lenet5", "fastconv"): 0.1,
                                              ("lenet5", "torch"): 0.25}.items()]
    recs = targets.evaluate(doc)
    resnet, lenet = _target(recs, "infer_resnet20"), _target(recs, "infer_lenet5")
    assert math.isclose(resnet["value"]["speedup"], 1.6) and resnet["status"] == "met"
    assert resnet["threshold"] == {"speedup": 1.5}
    assert math.isclose(lenet["value"]["speedup"], 2.5) and lenet["threshold"] == {"speedup": 2.0}
    assert _target(recs, "train_lenet5")["value"]["speedup"] == pytest.approx(2.6)


def test_sgemm_share_targets():
    targets = _bench_targets()
    sgemm = [{"threads": 1, "gflops": 100.0}]
    gflops = {"vgg_c3": 80.0, "nin_1x1": 60.0}
    doc = synthetic_doc(sgemm=sgemm, conv_gflops=lambda case, t: gflops.get(case, 10.0))
    recs = targets.evaluate(doc)
    vgg, nin = _target(recs, "sgemm_vgg_c3"), _target(recs, "sgemm_nin_1x1")
    assert math.isclose(vgg["value"]["share"], 0.8) and vgg["status"] == "met"
    assert math.isclose(nin["value"]["share"], 0.6) and nin["status"] == "NOT met"
    assert vgg["threshold"] == {"share": 0.7}
    doc["sgemm"] = []                                  # e.g. an old file without it
    assert _target(targets.evaluate(doc), "sgemm_vgg_c3")["status"] == "not measured"
    for r in doc["results"]:                           # ... but with the records' shares
        if r["op"] == "conv2d_fwd" and r["impl"] == "fast:auto":
            r["sgemm_share"] = 0.75
    assert _target(targets.evaluate(doc), "sgemm_nin_1x1")["status"] == "met"


def test_scaling_targets():
    targets = _bench_targets()
    speed = {1: 1.0, 2: 1.9, 16: 12.0}                  # vgg_c3 speed-up with t threads
    fast_ms = lambda op, case, t: 100.0 / speed[t]     # noqa: E731
    models = {("resnet20", "fastconv", 1): 500.0, ("resnet20", "fastconv", 16): 62.5}
    recs = targets.evaluate(synthetic_doc(threads=(1, 16), fast_ms=fast_ms, models=models))
    vgg, resnet = _target(recs, "scale_vgg_c3_fwd"), _target(recs, "scale_resnet20_train")
    assert vgg["threads"] == 16 and math.isclose(vgg["value"]["speedup"], 12.0)
    assert vgg["status"] == "met" and vgg["threshold"] == {"speedup": 10.0}
    assert math.isclose(resnet["value"]["speedup"], 8.0) and resnet["status"] == "NOT met"
    # 1 and 2 threads only: not evaluable, the 2-thread speed-up in the detail
    recs = targets.evaluate(synthetic_doc(threads=(1, 2), fast_ms=fast_ms))
    vgg = _target(recs, "scale_vgg_c3_fwd")
    assert vgg["status"] == "not measured" and vgg["threads"] == 2
    assert vgg["value"] == {"speedup": None}
    assert "not evaluable (needs 1 and 16 threads; this run has 1, 2)" in vgg["detail"]
    assert "2 threads: 1.90x" in vgg["detail"]
    resnet = _target(recs, "scale_resnet20_train")     # no model in the run at all
    assert resnet["status"] == "not measured" and "not evaluable" in resnet["detail"]


def test_targets_without_torch():
    targets = _bench_targets()
    models = {("lenet5", "fastconv", 1): 10.0}
    doc = synthetic_doc(with_torch=False, models=models, sgemm=[{"threads": 1, "gflops": 50.0}],
                        conv_gflops=lambda case, t: 40.0)
    recs = targets.evaluate(doc)
    for target_id in ("conv_fwd", "conv_bwd", "conv_fwd_3x3s1", "pool_fwd_bwd", "bn_fwd_bwd",
                      "train_lenet5", "train_resnet20", "infer_resnet20", "infer_lenet5"):
        rec = _target(recs, target_id)
        assert rec["status"] == "not measured", rec
        assert all(v is None for v in rec["value"].values())
    assert "no PyTorch figures" in _target(recs, "conv_fwd")["detail"]
    assert _target(recs, "sgemm_vgg_c3")["status"] == "met"     # needs no PyTorch


def test_targets_with_a_layer_missing_or_failed():
    targets = _bench_targets()
    doc = synthetic_doc(torch_over_fast=lambda op, case, t: 3.5)
    doc["results"] = [r for r in doc["results"]                # as --filter would
                      if not (r["op"] == "conv2d_fwd" and r["case"] == "vgg_c3")]
    for r in doc["results"]:
        if r["op"] == "batch_norm_bwd" and r["case"] == "bn1d_fc" and r["impl"] == "torch":
            r["status"] = "error"
            del r["median_ms"]
    recs = targets.evaluate(doc)
    fwd = _target(recs, "conv_fwd")
    assert fwd["status"] == "not measured" and fwd["value"] == {"geomean": None, "min": None}
    assert "partial, 8 of 9 layers" in fwd["detail"]
    assert "conv2d_fwd:vgg_c3:fast:auto (not run)" in fwd["detail"]
    bn = _target(recs, "bn_fwd_bwd")
    assert bn["status"] == "not measured" and "batch_norm_bwd:bn1d_fc:torch (error)" in bn["detail"]
    assert _target(recs, "conv_bwd")["status"] == "met"
    assert _target(recs, "pool_fwd_bwd")["status"] == "met"


def test_targets_of_an_old_or_empty_document_do_not_crash():
    from fastconv.benchmark import report
    targets = _bench_targets()
    for doc in ({"results": [], "environment": {}},
                {"results": [{"op": "conv2d_fwd", "case": "vgg_c3", "impl": "fast:auto",
                              "threads": 1, "status": "ok", "median_ms": 1.0}],
                 "environment": {"cpu": "old"},
                 "models": [{"model": "lenet5", "impl": "fastconv", "threads": 1,
                             "status": "ok", "median_ms": 3.0}]}):
        recs = targets.evaluate(doc)
        assert all(r["status"] == "not measured" for r in recs)
        assert "== performance targets ==" in "\n".join(targets.table_lines(doc))
        report.format_report(doc)
        report.markdown(doc)


def test_report_and_markdown_show_the_targets_table():
    from fastconv.benchmark import report
    targets = _bench_targets()
    models = {("lenet5", "fastconv", 1): 10.0, ("lenet5", "torch", 1): 16.0}
    doc = synthetic_doc(torch_over_fast=lambda op, case, t: 2.5, models=models,
                        sgemm=[{"threads": 1, "n": 64, "gflops": 100.0}],
                        conv_gflops=lambda case, t: 75.0)
    doc["summary"] = runner.summarize(doc["results"], doc["models"])
    assert "targets" not in report.format_report(doc)          # the package has no targets
    table = "\n".join(targets.table_lines(doc))
    assert table.startswith("== performance targets ==")
    assert "conv_fwd" in table and "geomean 2.50x, min 2.50x" in table
    assert "(a) per-case fwd+bwd 2.50x, (b) all entries 2.50x" in table
    assert "of sgemm 75%" in table and ">= 70%" in table
    assert "train_lenet5" in table and "speed-up 1.60x" in table
    assert "not evaluable" in table
    md = "\n".join(targets.markdown_lines(doc))
    assert "| target | threads | value | threshold | status | detail |" in md
    assert "| conv_fwd | 1 | geomean 2.50x, min 2.50x | >= 1.30x, >= 0.80x | met |" in md
    assert "| train_resnet20 | 1 | speed-up - | >= 1.50x | not measured |" in md
    assert "target" not in report.markdown(doc)


def test_quick_run_and_report_option_and_the_targets_script(tiny_json, capsys, tmp_path):
    status, out, path = tiny_json
    assert status == 0 and "targets" not in out
    saved = jsonfile.load(path)
    assert "targets" not in saved
    targets = _bench_targets()
    assert targets.main([str(path), "--markdown", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr().out
    assert "== performance targets ==" in out and "QUICK RUN" in out
    assert "| conv_fwd |" in (tmp_path / "t.md").read_text()
    assert targets.main([str(tmp_path / "absent.json")]) == 2
    status = cli.main(["--report", str(path)])
    out = capsys.readouterr().out
    assert status == 0 and "== conv2d forward ==" in out and "QUICK RUN" in out
    assert cli.main(["--report", str(path.parent / "absent.json")]) == 2


def test_the_package_does_not_import_the_targets():
    code = ("import sys, fastconv.benchmark.cli, fastconv.benchmark.runner, "
            "fastconv.benchmark.report; "
            "print(sorted(m for m in sys.modules if 'target' in m))")
    out = run_python(["-c", code])
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def _memory_doc(workspace_mb, threads=2, skip=()):
    """synthetic_doc plus fresh-process memory probes of every conv layer's auto algorithm;
    ``workspace_mb(case, direction)`` gives the scratch memory measured."""
    from fastconv.benchmark import shapes
    from fastconv.functional import choose_conv_algo
    doc = synthetic_doc(threads=(1, threads))
    doc["memory"] = [
        {"case": name, "direction": d, "threads": threads, "status": "ok",
         "impl": "fast:" + choose_conv_algo((N, C, H, W), (K, C, R, S), stride, pad,
                                            backward=d == "bwd"),
         "workspace_mb": workspace_mb(name, d)}
        for name, N, C, H, W, K, R, S, stride, pad in shapes.CONV for d in ("fwd", "bwd")
        if name not in skip]
    return doc


def test_memory_targets_compare_the_workspace_with_threads_times_one_image_columns():
    targets = _bench_targets()
    # resnet20_s3 (64 channels, 3x3, 8x8 output): one image's columns are 64*9 x 64 floats
    # = 0.140625 MB, so the bound at 2 threads is 0.28125 MB.
    small = {"fwd": 0.28125 / 2, "bwd": 0.28125 * 4}
    recs = targets.evaluate(_memory_doc(
        lambda case, d: small[d] if case == "resnet20_s3" else 0.0))
    fwd, bwd = _target(recs, "memory_conv_fwd"), _target(recs, "memory_conv_bwd")
    assert fwd["threads"] == bwd["threads"] == 2            # only where the probes ran
    assert fwd["status"] == "met" and fwd["value"]["headroom"] == pytest.approx(2.0)
    assert "resnet20_s3" in fwd["detail"]
    assert bwd["status"] == "NOT met" and bwd["value"]["headroom"] == pytest.approx(0.25)
    # a layer without its probe: not measured (a bound over part of the suite is not it)
    recs = targets.evaluate(_memory_doc(lambda case, d: 0.0, skip=("vgg_c3",)))
    rec = _target(recs, "memory_conv_fwd")
    assert rec["status"] == "not measured" and "vgg_c3" in rec["detail"]
