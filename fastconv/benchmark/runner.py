"""Run the benchmark suite and return every figure as one JSON-ready document.

Every timing runs in a worker process of its engine (:mod:`fastconv.benchmark.worker`):
one for fastconv, one for PyTorch, so that the two OpenMP runtimes never share a process
and each engine has the cores to itself while it is timed; this process only coordinates.

Order of work, chosen for a noisy machine: the memory probes first (in their own process,
so they never overlap a timing), then the sgemm yardstick for each thread count, then one
suite layer at a time: every thread count and every implementation is timed on the same
inputs (each worker makes them from the same seed), so that the ratios of a row (fast vs
reference, vs PyTorch, n threads vs 1) come from measurements seconds apart. Each case is
timed in ``rounds`` rounds (default 3), every implementation of the layer once per round,
fastconv's and PyTorch's in turn, and keeps its best round (smallest median); the spread
between the rounds' medians is reported per case. Whole models come last (training
steps, then inference), the engines alternating likewise, then the per-call overhead of
the op API on tiny inputs (:mod:`fastconv.benchmark.overhead`).

Ratios are speed-ups (> 1 means faster): ``speedup_vs_reference = t_reference / t``,
``speedup_vs_torch = t_torch / t``, ``speedup_vs_1thread = t(1 thread) / t(n threads)``,
all from medians of the same run.
"""
import math
import sys
from dataclasses import dataclass, field, replace

from . import cases as cases_mod
from . import environment, memory, models, overhead
from .timing import DEFAULT_BUDGET, QUICK_BUDGET, Budget
from .worker import UNSET_IN_WORKERS, Worker, WorkerDied

SCHEMA = "fastconv-bench/1"
QUICK_BATCH = 2          # --quick caps every batch at this size
DEFAULT_IMPL = {"conv2d_fwd": "fast:auto", "conv2d_bwd": "fast:auto"}   # else "fast"
DEFAULT_ROUNDS, QUICK_ROUNDS = 3, 2


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
    rounds: int = DEFAULT_ROUNDS        # rounds per case, the engines alternating

    @classmethod
    def from_options(cls, threads=None, quick=False, budget_s=None, rounds=None, **kwargs):
        budget = QUICK_BUDGET if quick else DEFAULT_BUDGET
        if budget_s is not None:
            budget = replace(budget, seconds=budget_s, warmup_s=min(budget.warmup_s, budget_s))
        if not threads:
            threads = sorted({1, environment.usable_cores()})
        if rounds is None:
            rounds = QUICK_ROUNDS if quick else DEFAULT_ROUNDS
        extra = {"batch_cap": QUICK_BATCH, "sgemm_n": 512} if quick else {}
        return cls(threads=list(threads), budget=budget, quick=quick, rounds=rounds,
                   **{**extra, **kwargs})

    def as_dict(self):
        return {"threads": self.threads, "quick": self.quick, "filters": self.filters,
                "budget": vars(self.budget), "with_torch": self.with_torch,
                "with_models": self.with_models, "with_memory": self.with_memory,
                "keep_freed_memory": self.keep_freed_memory,
                "batch_cap": self.batch_cap, "sgemm_n": self.sgemm_n, "dtype": "float32",
                "rounds": self.rounds, "engines_in_own_processes": True,
                "unset_in_workers": list(UNSET_IN_WORKERS)}


def default_impl(op):
    return DEFAULT_IMPL.get(op, "fast")


# --------------------------------------------------------------------------- timing in the workers

class Engines:
    """The worker processes of one run, one per engine, started on first use; a worker that
    died is started again for the next request."""

    def __init__(self, settings):
        self.settings = settings
        self.workers = {}
        self.info = {}          # engine -> what its (first) worker reported at start

    def request(self, engine, message):
        worker = self.workers.get(engine)
        if worker is None or not worker.alive():
            if worker is not None:
                worker.close()
            worker = self.workers[engine] = Worker(engine, self.settings.keep_freed_memory)
            self.info.setdefault(engine, worker.info)
        try:
            return worker.request(message)
        except WorkerDied as exc:
            del self.workers[engine]
            return {"status": "error", "reason": str(exc)}

    def forget(self):
        """Let every worker free the inputs and callables it built."""
        for worker in list(self.workers.values()):
            if worker.alive():
                try:
                    worker.request({"cmd": "forget"})
                except WorkerDied:
                    pass

    def close(self):
        for worker in self.workers.values():
            worker.close()
        self.workers = {}


def engine_of(impl):
    return "torch" if impl.startswith("torch") else "fastconv"


def _round_budget(settings):
    """Each round gets its share of the case's time budget (still min_repeats calls)."""
    budget = settings.budget
    return {**vars(budget), "seconds": budget.seconds / settings.rounds}


TIMING_FIELDS = ("median_ms", "min_ms", "max_ms", "repeats", "warmup_calls", "samples_ms",
                 "minflt_per_call")


def time_in_rounds(engines, entries, threads, settings):
    """Time ``entries`` (record, request kind, spec) in their engines' workers, in
    ``settings.rounds`` rounds: in each round every entry once, in order (so fastconv's and
    PyTorch's alternate). Every record gets the timing of its best round (smallest median),
    ``round_medians_ms`` (all rounds, in order) and ``round_spread`` = max / min of them
    - 1; a record whose first round fails gets its status and reason and no further round."""
    budget = _round_budget(settings)
    rounds = {id(rec): [] for rec, _, _ in entries}
    for _ in range(settings.rounds):
        for rec, kind, spec in entries:
            if rec.get("status") not in (None, "ok"):
                continue
            answer = engines.request(engine_of(rec["impl"]), {
                "cmd": "time", "key": rec["id"], "kind": kind, "spec": spec,
                "threads": threads, "budget": budget})
            if answer["status"] != "ok":
                rec.update(status=answer["status"], reason=answer["reason"])
                continue
            rec["status"] = "ok"
            rounds[id(rec)].append(answer)
    for rec, _, _ in entries:
        done = rounds[id(rec)]
        if rec.get("status") != "ok" or not done:
            continue
        best = min(done, key=lambda a: a["median_ms"])
        rec.update({k: best[k] for k in TIMING_FIELDS})
        if "params" in best:
            rec["params"] = best["params"]
        medians = [a["median_ms"] for a in done]
        rec["round_medians_ms"] = medians
        rec["round_spread"] = max(medians) / min(medians) - 1
        rec["worker_pid"] = best["pid"]


def _case_record(case, threads):
    return {"id": case.id, "op": case.op, "case": case.name, "impl": case.impl,
            "backend": case.backend, "algo": case.algo, "threads": threads,
            "layer": dict(case.layer), "work": case.work, "unit": case.unit}


def _add_rate(rec):
    if rec.get("status") == "ok":
        rate = rec["work"] / (rec["median_ms"] * 1e-3) / 1e9
        rec["gflops" if rec["unit"] == "flop" else "gbps"] = rate


def time_layer(engines, lay, threads, settings):
    """The records of every case of suite layer ``lay`` at ``threads`` threads."""
    recs = [_case_record(case, threads) for case in lay.cases]
    spec = {"op": lay.op, "name": lay.name, "layer": lay.layer}
    time_in_rounds(engines, [(rec, "layer", {**spec, "impl": rec["impl"]}) for rec in recs],
                   threads, settings)
    for rec in recs:
        _add_rate(rec)
    return recs


def time_models(engines, mcases, threads, settings):
    """The records of one model's training steps or inference (``mcases``: one per engine)
    at ``threads`` threads, the engines alternating."""
    recs = [{"id": m.id, "model": m.model, "impl": m.impl, "threads": threads,
             "batch": m.batch, "image_shape": list(m.image_shape)} for m in mcases]
    time_in_rounds(engines, [(rec, m.kind, {"model": m.model, "batch": m.batch,
                                            "image_shape": list(m.image_shape),
                                            "impl": m.impl})
                             for rec, m in zip(recs, mcases)], threads, settings)
    for rec in recs:
        if rec.get("status") == "ok":
            rec["images_per_s"] = rec["batch"] / (rec["median_ms"] * 1e-3)
    return recs


def time_overhead(engines, op, impls, threads, settings):
    recs = [{"id": f"overhead:{op}:{impl}", "op": op, "impl": impl, "threads": threads}
            for impl in impls]
    time_in_rounds(engines, [(rec, "overhead", {"op": op, "impl": rec["impl"]})
                             for rec in recs], threads, settings)
    return recs


def time_sgemm(engines, threads, settings):
    """The sgemm yardstick in fastconv's worker (one round: it is no comparison)."""
    n = settings.sgemm_n
    answer = engines.request("fastconv", {
        "cmd": "time", "key": f"sgemm:{n}", "kind": "sgemm", "spec": {"n": n},
        "threads": threads, "budget": vars(settings.budget)})
    rec = {"threads": threads, "n": n, "flops": 2 * n ** 3}
    if answer["status"] != "ok":
        return {**rec, "status": answer["status"], "reason": answer["reason"], "gflops": None}
    rec.update({k: answer[k] for k in TIMING_FIELDS})
    rec["gflops"] = rec["flops"] / (rec["median_ms"] * 1e-3) / 1e9
    return rec


# --------------------------------------------------------------------------- ratios

def add_ratios(results, model_results, sgemm, inference=()):
    """Fill speedup_vs_reference / _torch / _1thread and sgemm_share from medians (of the
    layers, the training steps and the inference)."""
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
    for group in (model_results, inference):
        ok_models = {(m["model"], m["impl"], m["threads"]): m["median_ms"]
                     for m in group if m["status"] == "ok"}
        for m in group:
            if m["status"] != "ok":
                continue
            for other, key in (("torch", "speedup_vs_torch"),
                               ("torch:jit", "speedup_vs_torch_jit")):
                base = ok_models.get((m["model"], other, m["threads"]))
                if base is not None and engine_of(m["impl"]) == "fastconv":
                    m[key] = base / m["median_ms"]
            one = ok_models.get((m["model"], m["impl"], 1))
            if one is not None and m["threads"] != 1:
                m["speedup_vs_1thread"] = one / m["median_ms"]


def geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize(results, model_results):
    """Per op and thread count: geometric means (and minimum) of the default fast
    implementation's speed-ups over the layers measured."""
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
        for impl in memory.probed_impls(lay.layer, direction):
            if cases_mod.matches(f"{lay.op}:{lay.name}:{impl}", settings.filters):
                jobs.append({"case": lay.name, "direction": direction, "impl": impl,
                             "threads": max(settings.threads), "layer": lay.layer})
    return jobs


def _selected(settings):
    """(layers, training-step cases, inference cases, overhead cases (op, [impls]))."""
    layers = []
    for lay in cases_mod.suite_layers(settings.batch_cap, settings.with_torch):
        lay.cases = [c for c in lay.cases if cases_mod.matches(c.id, settings.filters)]
        if lay.cases:
            layers.append(lay)
    model_sets = []
    for kind in ("train", "infer"):
        model_sets.append([m for m in models.model_cases(settings.batch_cap, settings.with_torch,
                                                         kind)
                           if cases_mod.matches(m.id, settings.filters)]
                          if settings.with_models else [])
    impls = [i for i in overhead.IMPLS if i != "torch" or settings.with_torch]
    calls = [(op, [i for i in impls if cases_mod.matches(f"overhead:{op}:{i}", settings.filters)])
             for op in overhead.OPS]
    return layers, model_sets[0], model_sets[1], [(op, i) for op, i in calls if i]


def list_case_ids(settings):
    """The ids of every case ``settings`` selects, in run order (``--list``)."""
    layers, train, infer, calls = _selected(settings)
    return ([c.id for lay in layers for c in lay.cases] + [m.id for m in train + infer]
            + [f"overhead:{op}:{i}" for op, impls in calls for i in impls])


def _by_model(mcases):
    return [[m for m in mcases if m.model == name]
            for name in dict.fromkeys(m.model for m in mcases)]


def run_benchmarks(settings):
    """Run everything ``settings`` selects; return the JSON document (see ``report``).

    Each engine runs in its own worker process, under the same allocator settings. By
    default that is glibc told to keep freed memory for reuse (fastconv.keep_freed_memory),
    as a training run has it (fit calls it) and as PyTorch is usually measured: with glibc's
    defaults a call that frees a large array faults its pages in again next time, which
    measures the allocator's mood more than the kernel. ``keep_freed_memory=False`` keeps
    the defaults (``fastconv bench --glibc-malloc``); the page faults per call are reported
    either way.
    """
    layers, train, infer, calls = _selected(settings)
    jobs = memory_jobs(layers, settings) if settings.with_memory else []

    doc = {"schema": SCHEMA, "command": settings.command, "settings": settings.as_dict(),
           "environment": environment.collect(settings.threads, with_torch=False)}
    env = doc["environment"]
    # The workers run without these variables: the figures are theirs, not this process's.
    env["unset_in_workers"] = {k: env["env"].pop(k) for k in UNSET_IN_WORKERS if k in env["env"]}
    env["warnings"] = [w for w in env["warnings"]
                       if not any(k in w for k in UNSET_IN_WORKERS)]
    n_threads = len(settings.threads)
    total = (n_threads * (1 + sum(len(lay.cases) for lay in layers) + len(train) + len(infer)
                          + sum(len(i) for _, i in calls)) + (1 if jobs else 0))
    bar = _progress(settings, total)
    engines = Engines(settings)
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
            doc["sgemm"].append(time_sgemm(engines, threads, settings))
            bar.update()

        results = []
        for lay in layers:
            for threads in settings.threads:
                bar.set_postfix_str(f"{lay.op}:{lay.name} x{threads}", refresh=False)
                results += time_layer(engines, lay, threads, settings)
                bar.update(len(lay.cases))
            engines.forget()
        model_results, inference = [], []
        for mcases, out, what in ((train, model_results, "train_step"),
                                  (infer, inference, "inference")):
            for group in _by_model(mcases):
                for threads in settings.threads:
                    bar.set_postfix_str(f"{what}:{group[0].model} x{threads}", refresh=False)
                    out += time_models(engines, group, threads, settings)
                    bar.update(len(group))
                engines.forget()
        call_results = []
        for op, impls in calls:
            for threads in settings.threads:
                bar.set_postfix_str(f"overhead:{op} x{threads}", refresh=False)
                call_results += time_overhead(engines, op, impls, threads, settings)
                bar.update(len(impls))
    finally:
        bar.close()
        engines.close()
    env["workers"] = engines.info
    if engines.info:
        keeps = all(info.get("keeps_freed_memory") for info in engines.info.values())
        env["malloc"] = "keeps freed memory" if keeps else "C library defaults"
    if "blas" in engines.info.get("fastconv", {}):
        env["blas"] = engines.info["fastconv"]["blas"]
    env["torch"] = (engines.info.get("torch") or {}).get("torch")
    env["load_average_end"] = environment.load_average()
    env["warnings"] += contention_warnings(doc["sgemm"])
    env["warnings"] += architecture_warnings(model_results + inference)
    add_ratios(results, model_results, doc["sgemm"], inference)
    add_overhead_ratios(call_results)
    doc["results"] = results
    doc["models"] = model_results
    doc["inference"] = inference
    doc["overhead"] = call_results
    doc["summary"] = summarize(results, model_results)
    doc["unavailable"] = unavailable_summary(results + model_results + inference
                                             + call_results + doc["memory"])
    return doc


def add_overhead_ratios(call_results):
    """``python_us`` (fast minus fast:kernel: the Python layer's time per call) and
    ``speedup_vs_torch`` of every public fastconv call."""
    ok = {(r["op"], r["impl"], r["threads"]): r["median_ms"] for r in call_results
          if r["status"] == "ok"}
    for r in call_results:
        if r["status"] != "ok" or r["impl"] != "fast":
            continue
        kernel = ok.get((r["op"], "fast:kernel", r["threads"]))
        torch = ok.get((r["op"], "torch", r["threads"]))
        if kernel is not None:
            r["python_us"] = 1e3 * (r["median_ms"] - kernel)
        if torch is not None:
            r["speedup_vs_torch"] = torch / r["median_ms"]


def architecture_warnings(records):
    """A warning for each model whose engines' parameter counts differ: their comparison
    would not be of the same network."""
    counts = {}
    for r in records:
        if r.get("status") == "ok" and r.get("params") is not None:
            counts.setdefault(r["model"], {})[r["impl"]] = r["params"]
    return [f"{model}: the parameter counts differ ("
            + ", ".join(f"{impl} {n}" for impl, n in c.items())
            + "): the engines do not run the same architecture, so their ratio is not a "
            "comparison"
            for model, c in counts.items() if len(set(c.values())) > 1]


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
