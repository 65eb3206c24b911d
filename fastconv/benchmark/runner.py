"""Run the benchmark suite and return every figure as one JSON-ready document.

Order of work, chosen for a noisy machine: the memory probes first (in their own process,
so they never overlap a timing), then the sgemm yardstick for each thread count, then one
suite layer at a time: its inputs are made once, and every thread count and every
implementation is timed back to back on them, so that the ratios of a row (fast vs
reference, vs PyTorch, n threads vs 1) come from measurements seconds apart; fastconv's
default implementation and PyTorch, whose ratio is a target, take turns (``time_pair``).
Whole-model training steps come last, the two engines also taking turns.
``doc["targets"]`` holds the performance targets, evaluated from the document's own medians
by :func:`targets.evaluate`.

Ratios are speed-ups (> 1 means faster): ``speedup_vs_reference = t_reference / t``,
``speedup_vs_torch = t_torch / t``, ``speedup_vs_1thread = t(1 thread) / t(n threads)``,
all from medians of the same run.
"""
import math
import sys
from dataclasses import dataclass, field, replace

import numpy as np

from .. import num_threads
from .._malloc import keep_freed_memory
from . import cases as cases_mod
from . import environment, memory, models, targets, torch_impl
from .timing import DEFAULT_BUDGET, QUICK_BUDGET, Budget, measure, measure_interleaved, sgemm_rate

SCHEMA = "fastconv-bench/1"
QUICK_BATCH = 2          # --quick caps every batch at this size
DEFAULT_IMPL = {"conv2d_fwd": "fast:auto", "conv2d_bwd": "fast:auto"}   # else "fast"


@dataclass
class Settings:
    """What to run; ``Settings.from_options`` fills the defaults of a normal or quick run."""

    threads: list
    budget: Budget = DEFAULT_BUDGET
    quick: bool = False
    filters: list = field(default_factory=list)
    with_torch: bool = True
    with_models: bool = True
    with_memory: bool = True
    keep_freed_memory: bool = True      # glibc keeps freed memory for reuse (see run_benchmarks)
    batch_cap: int = None
    sgemm_n: int = 2048
    progress: bool = True
    command: str = ""

    @classmethod
    def from_options(cls, threads=None, quick=False, budget_s=None, **kwargs):
        budget = QUICK_BUDGET if quick else DEFAULT_BUDGET
        if budget_s is not None:
            budget = replace(budget, seconds=budget_s, warmup_s=min(budget.warmup_s, budget_s))
        if not threads:
            threads = sorted({1, environment.usable_cores()})
        extra = {"batch_cap": QUICK_BATCH, "sgemm_n": 512} if quick else {}
        return cls(threads=list(threads), budget=budget, quick=quick, **{**extra, **kwargs})

    def as_dict(self):
        return {"threads": self.threads, "quick": self.quick, "filters": self.filters,
                "budget": vars(self.budget), "with_torch": self.with_torch,
                "with_models": self.with_models, "with_memory": self.with_memory,
                "keep_freed_memory": self.keep_freed_memory,
                "batch_cap": self.batch_cap, "sgemm_n": self.sgemm_n, "dtype": "float32"}


def default_impl(op):
    return DEFAULT_IMPL.get(op, "fast")


# --------------------------------------------------------------------------- one case

def _time(build, threads, budget):
    """(status fields, Timing or None): build the callable, make the first call, time it."""
    torch_impl.set_threads(threads)
    try:
        with num_threads(threads):
            return {"status": "ok"}, measure(build(), budget)   # raises if unavailable
    except Exception as exc:                        # noqa: BLE001  reported, never fatal
        status, reason = cases_mod.classify_exception(exc)
        return {"status": status, "reason": reason}, None


def _case_record(case, threads):
    return {"id": case.id, "op": case.op, "case": case.name, "impl": case.impl,
            "backend": case.backend, "algo": case.algo, "threads": threads,
            "layer": dict(case.layer), "work": case.work, "unit": case.unit}


def _add_timing(rec, case, timing):
    rec.update(timing.as_dict())
    rate = case.work / (timing.median_ms * 1e-3) / 1e9
    rec["gflops" if case.unit == "flop" else "gbps"] = rate


def time_case(case, inputs, threads, budget):
    """The result record of one (case, thread count)."""
    rec = _case_record(case, threads)
    status, timing = _time(lambda: case.build(inputs), threads, budget)
    rec.update(status)
    if timing is not None:
        _add_timing(rec, case, timing)
    return rec


def _time_taking_turns(entries, threads, budget):
    """Time callables that are compared with each other, taking turns
    (:func:`timing.measure_interleaved`), so that a neighbour loading the machine slows
    them alike. ``entries``: (record, build) pairs; ``build()`` returns the callable, whose
    first call here raises if it is unavailable (the record then gets its status and
    reason). Returns (record, Timing) for the callables that ran."""
    built = []
    torch_impl.set_threads(threads)
    with num_threads(threads):
        for rec, build in entries:
            try:
                fn = build()
                fn()                                # raises here if unavailable
                rec["status"] = "ok"
                built.append((rec, fn))
            except Exception as exc:                # noqa: BLE001  reported, never fatal
                status, reason = cases_mod.classify_exception(exc)
                rec.update(status=status, reason=reason)
        timings = measure_interleaved([fn for _, fn in built], budget) if built else []
    return [(rec, timing) for (rec, _), timing in zip(built, timings)]


def time_pair(cases, inputs, threads, budget):
    """The result records of the cases whose ratio is a target (fastconv's default
    implementation of a layer and PyTorch's), timed taking turns: timed one after the
    other, alexnet_c1's 2-thread forward measured 0.54 ms against PyTorch's 0.36 in one
    run, where taking turns gave 0.46 against 0.47."""
    recs = [_case_record(case, threads) for case in cases]
    timed = _time_taking_turns(
        [(rec, lambda case=case: case.build(inputs)) for rec, case in zip(recs, cases)],
        threads, budget)
    by_id = {case.id: case for case in cases}
    for rec, timing in timed:
        _add_timing(rec, by_id[rec["id"]], timing)
    return recs


def time_models(mcases, threads, budget):
    """The result records of the training steps of one model by every engine in ``mcases``
    (fastconv, PyTorch), timed taking turns: the ratio of the two is the target."""
    recs, entries = [], []
    for mcase in mcases:
        rec = {"id": mcase.id, "model": mcase.model, "impl": mcase.impl,
               "threads": threads, "batch": mcase.batch,
               "image_shape": list(mcase.image_shape)}

        def build(mcase=mcase, rec=rec):
            x, labels = models.model_inputs(mcase.batch, mcase.image_shape)
            step, rec["params"] = mcase.build(mcase.model, x, labels)
            return step

        recs.append(rec)
        entries.append((rec, build))
    for rec, timing in _time_taking_turns(entries, threads, budget):
        rec.update(timing.as_dict())
        rec["images_per_s"] = rec["batch"] / (timing.median_ms * 1e-3)
    return recs


# --------------------------------------------------------------------------- ratios

def add_ratios(results, model_results, sgemm):
    """Fill speedup_vs_reference / _torch / _1thread and sgemm_share from medians."""
    ok = {(r["op"], r["case"], r["impl"], r["threads"]): r["median_ms"]
          for r in results if r["status"] == "ok"}
    sgemm_gflops = {s["threads"]: s["gflops"] for s in sgemm}
    for r in results:
        if r["status"] != "ok":
            continue
        t = r["median_ms"]
        for other, key in (("reference", "speedup_vs_reference"), ("torch", "speedup_vs_torch")):
            base = ok.get((r["op"], r["case"], other, r["threads"]))
            if base is not None and r["impl"] != other:
                r[key] = base / t
        one = ok.get((r["op"], r["case"], r["impl"], 1))
        if one is not None and r["threads"] != 1:
            r["speedup_vs_1thread"] = one / t
        if "gflops" in r and r["threads"] in sgemm_gflops:
            r["sgemm_share"] = r["gflops"] / sgemm_gflops[r["threads"]]
    ok_models = {(m["model"], m["impl"], m["threads"]): m["median_ms"]
                 for m in model_results if m["status"] == "ok"}
    for m in model_results:
        if m["status"] != "ok":
            continue
        base = ok_models.get((m["model"], "torch", m["threads"]))
        if base is not None and m["impl"] != "torch":
            m["speedup_vs_torch"] = base / m["median_ms"]
        one = ok_models.get((m["model"], m["impl"], 1))
        if one is not None and m["threads"] != 1:
            m["speedup_vs_1thread"] = one / m["median_ms"]


def geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize(results, model_results):
    """Per op and thread count: geometric means (and minimum) of the default fast
    implementation's speed-ups over the layers measured, the figures the performance targets use."""
    rows = []
    for op in cases_mod.OPS:
        for threads in sorted({r["threads"] for r in results}):
            recs = [r for r in results if r["op"] == op and r["threads"] == threads
                    and r["impl"] == default_impl(op) and r["status"] == "ok"]
            if not recs:
                continue
            row = {"op": op, "impl": default_impl(op), "threads": threads, "layers": len(recs)}
            for key in ("speedup_vs_reference", "speedup_vs_torch", "speedup_vs_1thread"):
                vals = [r[key] for r in recs if key in r]
                if vals:
                    row[f"geomean_{key}"] = geomean(vals)
                    row[f"min_{key}"] = min(vals)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- the whole run

def _progress(settings, total):
    from tqdm import tqdm
    tqdm.monitor_interval = 0        # no monitor thread waking up during the timings
    return tqdm(total=total, desc="fastconv bench", unit="case", file=sys.stderr,
                disable=not settings.progress, leave=False, dynamic_ncols=True)


def memory_jobs(layers, settings):
    """The conv memory probes of the selected layers, at the largest thread count."""
    jobs = []
    for lay in layers:
        if not lay.op.startswith("conv2d"):
            continue
        direction = lay.op.split("_")[1]
        for impl in memory.PROBED_IMPLS:
            if cases_mod.matches(f"{lay.op}:{lay.name}:{impl}", settings.filters):
                jobs.append({"case": lay.name, "direction": direction, "impl": impl,
                             "threads": max(settings.threads), "layer": lay.layer})
    return jobs


def run_benchmarks(settings):
    """Run everything ``settings`` selects; return the JSON document (see ``report``).

    Both engines run in this process, so under the same allocator. By default that is
    glibc told to keep freed memory for reuse (fastconv.keep_freed_memory), as a training
    run has it (fit calls it) and as the performance targets measure PyTorch: with glibc's defaults a call
    that frees a large array faults its pages in again next time (1.6 us per 4 KiB here),
    which measures the allocator's mood more than the kernel (PyTorch's resnet20_s1
    forward: 6 ms tuned, 14-22 ms not). ``keep_freed_memory=False`` keeps the defaults
    (``fastconv bench --glibc-malloc``); the page faults per call are reported either way.
    """
    if settings.keep_freed_memory:
        settings.keep_freed_memory = keep_freed_memory()      # False where not glibc
    layers = []
    for lay in cases_mod.suite_layers(settings.batch_cap, settings.with_torch):
        lay.cases = [c for c in lay.cases if cases_mod.matches(c.id, settings.filters)]
        if lay.cases:
            layers.append(lay)
    mcases = ([m for m in models.model_cases(settings.batch_cap, settings.with_torch)
               if cases_mod.matches(m.id, settings.filters)] if settings.with_models else [])
    jobs = memory_jobs(layers, settings) if settings.with_memory else []

    doc = {"schema": SCHEMA, "command": settings.command, "settings": settings.as_dict(),
           "environment": environment.collect(settings.threads, settings.with_torch)}
    doc["environment"]["malloc"] = ("keeps freed memory" if settings.keep_freed_memory
                                    else "C library defaults")
    n_threads = len(settings.threads)
    total = (n_threads * (1 + sum(len(lay.cases) for lay in layers) + len(mcases))
             + (1 if jobs else 0))
    bar = _progress(settings, total)
    try:
        doc["memory"], doc["memory_error"] = [], None
        if jobs:
            bar.set_postfix_str("conv memory probes (fresh process)", refresh=False)
            try:
                doc["memory"] = memory.measure_all(jobs)
            except (RuntimeError, OSError, ValueError) as exc:
                doc["memory_error"] = str(exc)
            bar.update()

        doc["sgemm"] = []
        for threads in settings.threads:
            bar.set_postfix_str(f"sgemm {settings.sgemm_n}^2, {threads} thread(s)", refresh=False)
            with num_threads(threads):
                doc["sgemm"].append({"threads": threads,
                                     **sgemm_rate(settings.sgemm_n, settings.budget)})
            bar.update()

        results = []
        rng = np.random.default_rng(0)
        for lay in layers:
            inputs = lay.make_inputs(lay.layer, rng)
            for threads in settings.threads:
                pair = [c for c in lay.cases if c.impl in (default_impl(c.op), "torch")]
                by_id = {}
                for case in lay.cases:
                    if case not in pair:
                        bar.set_postfix_str(f"{case.id} x{threads}", refresh=False)
                        by_id[case.id] = time_case(case, inputs, threads, settings.budget)
                        bar.update()
                if pair:
                    bar.set_postfix_str(f"{pair[0].op}:{lay.name} fastconv/torch x{threads}",
                                        refresh=False)
                    for rec in time_pair(pair, inputs, threads, settings.budget):
                        by_id[rec["id"]] = rec
                    bar.update(len(pair))
                results += [by_id[case.id] for case in lay.cases]
            del inputs
        model_results = []
        for name in dict.fromkeys(m.model for m in mcases):
            group = [m for m in mcases if m.model == name]
            for threads in settings.threads:
                bar.set_postfix_str(f"train_step:{name} x{threads}", refresh=False)
                model_results += time_models(group, threads, settings.budget)
                bar.update(len(group))
    finally:
        bar.close()
        torch_impl.set_threads(environment.usable_cores())
    doc["environment"]["load_average_end"] = environment.load_average()
    doc["environment"]["warnings"] += contention_warnings(doc["sgemm"])
    add_ratios(results, model_results, doc["sgemm"])
    doc["results"] = results
    doc["models"] = model_results
    doc["summary"] = summarize(results, model_results)
    doc["unavailable"] = unavailable_summary(results + model_results + doc["memory"])
    doc["targets"] = targets.evaluate(doc)
    return doc


def contention_warnings(sgemm):
    """A warning when sgemm on n threads is not even 1.2x faster than on one: the cores are
    busy with something else, so every multi-thread figure of the run is suspect."""
    one = next((s["gflops"] for s in sgemm if s["threads"] == 1), None)
    return [f"sgemm on {s['threads']} threads ran at {s['gflops']:.1f} GFLOP/s vs {one:.1f} on "
            "1 thread: the cores are not free (other processes), so the multi-thread figures "
            "of this run are not meaningful."
            for s in sgemm if one and s["threads"] > 1 and s["gflops"] < 1.2 * one]


def unavailable_summary(records):
    """Distinct (impl, reason) pairs of the records that could not run, with counts."""
    seen = {}
    for r in records:
        if r.get("status") in ("unavailable", "error"):
            key = (r["status"], r["impl"], r.get("reason", ""))
            seen[key] = seen.get(key, 0) + 1
    return [{"status": s, "impl": i, "reason": why, "count": n}
            for (s, i, why), n in seen.items()]
