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

SHARED_SHAPES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench",
                             "shapes.py")
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

@pytest.mark.skipif(not os.path.exists(SHARED_SHAPES), reason="shared/bench/shapes.py absent")
def test_packaged_suite_is_the_shared_suite():
    namespace = {}
    with open(SHARED_SHAPES) as f:
        exec(f.read(), namespace)
    assert shapes.CONV == namespace["CONV"]
    assert shapes.POOL == namespace["POOL"]
    assert shapes.BN == namespace["BN"]
    for row in shapes.CONV:
        assert shapes.conv_flops(*row[1:]) == namespace["conv_flops"](*row[1:])


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
    """A fresh 64 MB array per call (above glibc's largest mmap threshold, so it is mapped
    and unmapped every time) faults in new pages on every call: 16384 of 4 KiB, or as few as
    32 where NumPy gets transparent huge pages (2 MiB). The count must show it."""
    if timing.resource is None:
        pytest.skip("no getrusage")
    budget = timing.Budget(seconds=0.0, min_repeats=2, max_repeats=2, warmup_s=0.0,
                           warmup_calls=0)
    t = timing.measure(lambda: np.ones(2**24, np.float32), budget)
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
                "memory", "summary", "unavailable"):
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


def test_unavailable_cases_are_reported_not_fatal(monkeypatch, capsys):
    real = cases.fastconv_call

    def missing_direct(op, impl, layer, d):
        if impl == "fast:direct":
            raise ImportError("fastconv._ext.conv_direct could not be imported (test)")
        return real(op, impl, layer, d)

    monkeypatch.setattr(cases, "fastconv_call", missing_direct)
    status, out = bench(capsys, "--filter", "conv2d_fwd:lenet_c1", "--no-torch",
                        "--no-models", "--no-memory")
    assert status == 0
    assert "UNAVAILABLE: fast:direct (lenet_c1): ImportError: fastconv._ext.conv_direct" in out
    assert "fast:im2col" in out


def test_an_error_is_reported_and_sets_the_exit_status(monkeypatch, capsys):
    def broken(op, impl, layer, d):
        raise ValueError("kernel exploded (test)")

    monkeypatch.setattr(cases, "fastconv_call", broken)
    status, out = bench(capsys, "--filter", "bn1d_fc", "--no-torch", "--no-models",
                        "--no-memory")
    assert status == 1
    assert "ERROR: reference" in out and "kernel exploded" in out


def test_missing_models_are_unavailable(monkeypatch):
    def no_models(name, x, labels):
        raise ImportError("No module named 'fastconv.models' (test)")

    monkeypatch.setattr(models, "fastconv_train_step", no_models)
    settings = runner.Settings.from_options(quick=True, threads=[1], filters=["lenet5"],
                                            with_torch=False, with_memory=False,
                                            progress=False)
    doc = runner.run_benchmarks(settings)
    (rec,) = doc["models"]
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
    if direct["status"] == "ok":
        assert direct["workspace_mb"] < 0.5 * columns


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
