"""fastconv's performance targets, evaluated from a ``fastconv bench --json`` document.

A developer tool, kept out of the installed package: ``fastconv bench`` measures and
reports fastconv against PyTorch; this script says whether a run meets the targets the
project set itself::

    fastconv bench --json bench.json
    python bench/targets.py bench.json [--markdown targets.md]

Everything is computed from the medians in the document (``doc["results"]``,
``doc["models"]``, ``doc["inference"]``, ``doc["sgemm"]``), never from the derived
``speedup_*`` fields, so a saved ``--json`` file (also one written before this module existed) gives the same figures
when it is reported again. The definitions live in ONE place, :data:`TARGETS`; the report,
the terminal table and the Markdown both read the list that :func:`evaluate` returns.

All ratios are speed-ups, ``PyTorch median / fastconv median`` (> 1: fastconv is faster),
taken at the same thread count in the same run. fastconv's side is the default
implementation of each op (``fast:auto`` for convolution, ``fast`` for the others,
:func:`fastconv.benchmark.runner.default_impl`); the training step's is ``fastconv``.

One record per target and thread count (a scaling target has one record in all)::

    {"id": "conv_fwd", "description": "...", "threads": 2,
     "value": {"geomean": 1.09, "min": 0.86}, "threshold": {"geomean": 1.0, "min": 0.5},
     "status": "met", "detail": "worst: resnet20_s2 0.86x"}

``value`` and ``threshold`` are dicts keyed by the target's measures (``value[m]`` is
None when measure ``m`` could not be computed). ``status`` is

* ``"met"``: every measure computed and ``value[m] >= threshold[m]`` for all of them;
* ``"NOT met"``: every measure computed, at least one below its threshold;
* ``"not measured"``: some figure the target needs is absent from the run (PyTorch not
  installed or ``--no-torch``, a case excluded by ``--filter``, unavailable, or failed;
  a scaling target without the thread counts it needs). A target over a set of suite
  layers needs ALL of them: a mean over part of the suite is not the target's figure, so
  then every value is None and ``detail`` gives the partial figure and what is missing.
"""
import argparse
import math
import sys
from dataclasses import dataclass

from fastconv.benchmark import jsonfile, shapes
from fastconv.benchmark.report import _table as table   # the report's column layout
from fastconv.benchmark.runner import default_impl
from fastconv.functional import choose_conv_algo

MET, NOT_MET, NOT_MEASURED = "met", "NOT met", "not measured"
SCALING_THREADS = 16          # the thread count the scaling targets are defined at

CONV_CASES = tuple(row[0] for row in shapes.CONV)
# the 3x3 stride-1 layers (ResNet-20's stages, VGG): where the time of those networks goes
CONV_3X3_S1 = tuple(row[0] for row in shapes.CONV if row[6:9] == (3, 3, 1))
POOL_CASES = tuple((row[0], row[1]) for row in shapes.POOL)       # (layer, "max" | "avg")
BN_CASES = tuple(row[0] for row in shapes.BN)


def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


# --------------------------------------------------------------------------- the document

class Figures:
    """The medians of one document, looked up by key, remembering what was missing.

    ``layer(op, case, impl, threads)`` and ``model(model, impl, threads)`` return the
    median in ms of an ``ok`` record, or None; each None adds a line "what (why)" to
    ``self.missing`` (why: not run, i.e. filtered out or not part of the run, or the
    record's status), which the ``detail`` of a "not measured" target quotes.
    """

    def __init__(self, doc):
        self.results = {(r.get("op"), r.get("case"), r.get("impl"), r.get("threads")): r
                        for r in doc.get("results") or []}
        self.models = {(m.get("model"), m.get("impl"), m.get("threads")): m
                       for m in doc.get("models") or []}
        self.inference = {(m.get("model"), m.get("impl"), m.get("threads")): m
                          for m in doc.get("inference") or []}
        self.sgemm = {s.get("threads"): s.get("gflops") for s in doc.get("sgemm") or []}
        self.memory = {(m.get("case"), m.get("direction"), m.get("impl"), m.get("threads")): m
                       for m in doc.get("memory") or []}
        self.missing = []

    def memory_threads(self):
        """The thread counts of the memory probes (the run's largest, see runner.memory_jobs)."""
        return sorted({k[-1] for k in self.memory if isinstance(k[-1], int)})

    def memory_record(self, case, direction, impl, threads):
        rec = self.memory.get((case, direction, impl, threads))
        if rec is None or rec.get("status") != "ok" or rec.get("workspace_mb") is None:
            status = "not run" if rec is None else rec.get("status", "no figure")
            self.missing.append(f"memory:{direction}:{case}:{impl} ({status})")
            return None
        return rec

    def _median(self, rec, what):
        if rec is None:
            self.missing.append(f"{what} (not run)")
            return None
        if rec.get("status") != "ok" or not rec.get("median_ms"):
            self.missing.append(f"{what} ({rec.get('status', 'no median')})")
            return None
        return rec["median_ms"]

    def layer(self, op, case, impl, threads):
        return self._median(self.results.get((op, case, impl, threads)),
                            f"{op}:{case}:{impl}")

    def layer_record(self, op, case, impl, threads):
        rec = self.results.get((op, case, impl, threads))
        return rec if self.layer(op, case, impl, threads) is not None else None

    def model(self, model, impl, threads, kind="train"):
        """The median of a training step (``kind="train"``) or an inference (``"infer"``)."""
        if kind == "infer":
            return self._median(self.inference.get((model, impl, threads)),
                                f"inference:{model}:{impl}")
        return self._median(self.models.get((model, impl, threads)),
                            f"train_step:{model}:{impl}")

    def threads(self, doc):
        """The thread counts of the run: the settings', else those found in the records."""
        found = (doc.get("settings") or {}).get("threads")
        if not found:
            found = ({k[-1] for k in self.results} | {k[-1] for k in self.models}
                     | {k[-1] for k in self.inference})
        return sorted(t for t in found if isinstance(t, int))


def _missing_text(missing, limit=3):
    missing = list(dict.fromkeys(missing))
    if all(":torch" in m for m in missing) and len(missing) > 1:
        head = "no PyTorch figures (not installed, --no-torch or --filter)"
        return head if len(missing) > limit else f"{head}: " + ", ".join(missing)
    text = ", ".join(missing[:limit])
    return text + (f" and {len(missing) - limit} more" if len(missing) > limit else "")


# --------------------------------------------------------------------------- measures
# Each ``measure_*`` function returns (values: dict name -> float, detail: str) for one
# thread count, or (None, partial detail) when a figure is missing (Figures.missing says
# which).

def _torch_ratios(fig, pairs, threads):
    """{label: torch / fast} over ``pairs`` of (label, [(op, case), ...]): the sum of the
    torch medians over the sum of the default-impl medians of the (op, case) entries."""
    ratios = {}
    for label, entries in pairs:
        fast = [fig.layer(op, case, default_impl(op), threads) for op, case in entries]
        torch = [fig.layer(op, case, "torch", threads) for op, case in entries]
        if None not in fast and None not in torch:
            ratios[label] = sum(torch) / sum(fast)
    return ratios


def measure_conv(op, layers=CONV_CASES):
    """Convolution ``op`` ("conv2d_fwd" or "conv2d_bwd") against PyTorch.

    For every conv layer of ``layers`` (default: the whole suite, shapes.CONV),
    ``r = torch median / fast:auto median``. ``geomean`` = geometric mean of the r;
    ``min`` = the smallest r.
    """
    def measure(fig, threads):
        ratios = _torch_ratios(fig, [(c, [(op, c)]) for c in layers], threads)
        if not ratios:
            return None, ""
        worst = min(ratios, key=ratios.get)
        values = {"geomean": _geomean(list(ratios.values())), "min": ratios[worst]}
        detail = f"worst: {worst} {ratios[worst]:.2f}x"
        if len(ratios) < len(layers):
            return None, (f"partial, {len(ratios)} of {len(layers)} layers: geomean "
                          f"{values['geomean']:.2f}x, {detail}")
        return values, detail
    return measure


def measure_fwd_bwd(ops_of_case, cases):
    """Forward + backward against PyTorch, two ways (both must reach the threshold).

    ``ops_of_case(case)`` gives the (forward op, backward op) of a suite layer.

    * ``per_case_sum``: for every layer, ``(torch fwd + torch bwd) / (fast fwd + fast bwd)``
      medians, i.e. the speed-up of a forward followed by its backward; geometric mean
      over the layers.
    * ``all_entries``: ``torch / fast`` of every forward and every backward entry on its
      own; geometric mean over all of them (2 per layer).
    """
    def measure(fig, threads):
        summed = _torch_ratios(fig, [(c, [(op, c) for op in ops_of_case(c)]) for c in cases],
                               threads)
        fig.missing.clear()         # the same entries are looked up again just below
        single = _torch_ratios(fig, [((op, c), [(op, c)]) for c in cases
                                     for op in ops_of_case(c)], threads)
        if not summed:
            return None, ""
        worst = min(summed, key=summed.get)
        values = {"per_case_sum": _geomean(list(summed.values())),
                  "all_entries": _geomean(list(single.values()))}
        detail = f"worst fwd+bwd: {worst} {summed[worst]:.2f}x"
        if len(summed) < len(cases):
            return None, (f"partial, {len(summed)} of {len(cases)} layers: per-case "
                          f"fwd+bwd {values['per_case_sum']:.2f}x, all entries "
                          f"{values['all_entries']:.2f}x")
        return values, detail
    return measure


def _pool_ops(case):
    kind = dict(POOL_CASES)[case]
    return (f"{kind}_pool2d_fwd", f"{kind}_pool2d_bwd")


def measure_train(model, kind="train", impl="fastconv"):
    """Training step (forward, loss, backward, SGD update; ``doc["models"]``) or, with
    ``kind="infer"``, eval-mode forward (``doc["inference"]``) of ``model`` against PyTorch:
    ``speedup`` = torch median / median of fastconv's ``impl``; an inference through
    ``fastconv:fused`` also names PyTorch's own inference path (``torch:jit``) in the
    detail, when the run has it."""
    def measure(fig, threads):
        fast = fig.model(model, impl, threads, kind)
        torch = fig.model(model, "torch", threads, kind)
        if fast is None or torch is None:
            return None, ""
        detail = f"{impl} {fast:.2f} ms, PyTorch {torch:.2f} ms"
        jit = fig.inference.get((model, "torch:jit", threads)) if impl != "fastconv" else None
        if jit is not None and jit.get("status") == "ok" and jit.get("median_ms"):
            detail += (f" (torch.jit.optimize_for_inference {jit['median_ms']:.2f} ms: "
                       f"{jit['median_ms'] / fast:.2f}x)")
        return {"speedup": torch / fast}, detail
    return measure


def measure_sgemm_share(case):
    """conv forward of ``case`` (fast:auto) against this machine's sgemm:
    ``share`` = its GFLOP/s / the sgemm GFLOP/s measured in the same run at the same
    thread count (``doc["sgemm"]``), i.e. the record's ``sgemm_share``."""
    def measure(fig, threads):
        rec = fig.layer_record("conv2d_fwd", case, default_impl("conv2d_fwd"), threads)
        sgemm = fig.sgemm.get(threads)
        if rec is not None and rec.get("gflops") and sgemm:
            return ({"share": rec["gflops"] / sgemm},
                    f"{rec['gflops']:.1f} of {sgemm:.1f} GFLOP/s")
        if rec is not None and rec.get("sgemm_share") is not None:     # sgemm list lost
            return {"share": rec["sgemm_share"]}, "the record's sgemm_share"
        if rec is not None:
            fig.missing.append(f"sgemm at {threads} thread(s) (not run)")
        return None, ""
    return measure


_PAGE_MB = 4096 / 2**20       # a workspace this small is allocator noise, not scratch


def measure_memory(direction):
    """Conv ``direction`` ("fwd" or "bwd") scratch memory against its bound: "conv
    workspace never more than threads x one image's columns".

    From the fresh-process probes in ``doc["memory"]`` (``workspace_mb`` = peak extra
    memory of one call minus its outputs; see memory.py), which run at the run's largest
    thread count only. For every conv layer of the suite, with the algorithm
    ``algo="auto"`` picks for it: ``headroom = threads x one image's columns (C*R*S x P*Q
    values of the layer's dtype) / workspace``; ``min`` = the smallest headroom (>= 1:
    every layer within the bound).
    """
    def measure(fig, threads):
        found = {}                                  # case -> (headroom, workspace, bound)
        for name, N, C, H, W, K, R, S, stride, pad in shapes.CONV:
            algo = choose_conv_algo((N, C, H, W), (K, C, R, S), stride, pad,
                                    backward=direction == "bwd")
            rec = fig.memory_record(name, direction, f"fast:{algo}", threads)
            if rec is None:
                continue
            P, Q = shapes.conv_out(H, W, R, S, stride, pad)
            bound = threads * C * R * S * P * Q * 4 / 2**20
            found[name] = (bound / max(rec["workspace_mb"], _PAGE_MB), rec["workspace_mb"],
                           bound)
        if not found:
            return None, ""
        worst = min(found, key=lambda case: found[case][0])
        headroom, workspace, bound = found[worst]
        detail = f"worst: {worst} {workspace:.2f} MB for a bound of {bound:.2f} MB"
        if len(found) < len(CONV_CASES):
            return None, f"partial, {len(found)} of {len(CONV_CASES)} layers: {detail}"
        return {"headroom": headroom}, detail
    return measure


def scaling_time(kind, name):
    """The function giving the median scaled by a scaling target: the fastconv training
    step of model ``name`` (kind "model") or the default impl of conv forward layer
    ``name`` (kind "conv2d_fwd")."""
    if kind == "model":
        return lambda fig, t: fig.model(name, "fastconv", t)
    return lambda fig, t: fig.layer(kind, name, default_impl(kind), t)


# --------------------------------------------------------------------------- the targets

@dataclass(frozen=True)
class Measure:
    name: str            # key in the record's value / threshold dicts
    label: str           # how the report names it
    threshold: float
    unit: str = "x"      # "x": a speed-up, "%": a share


@dataclass(frozen=True)
class Target:
    """One performance target.

    ``measure(fig, threads)`` computes the values at one thread count (see the
    ``measure_*`` functions); a scaling target (``scaling`` set: its ``time(fig, threads)``)
    instead compares the median at 1 thread with the one at SCALING_THREADS threads:
    ``speedup = t(1 thread) / t(16 threads)``.
    """

    id: str
    description: str
    measures: tuple
    measure: object = None
    scaling: object = None
    probed: bool = False     # evaluated only at the memory probes' thread count


def _x(name, label, threshold):
    return Measure(name, label, threshold)


TARGETS = (
    Target("conv_fwd", "conv forward vs PyTorch: geometric mean over the suite's conv "
           "layers >= 1.3x, no layer < 0.8x",
           (_x("geomean", "geomean", 1.3), _x("min", "min", 0.8)), measure_conv("conv2d_fwd")),
    Target("conv_bwd", "conv backward vs PyTorch: geometric mean over the suite's conv "
           "layers >= 1.5x, no layer < 0.8x",
           (_x("geomean", "geomean", 1.5), _x("min", "min", 0.8)), measure_conv("conv2d_bwd")),
    Target("conv_fwd_3x3s1", "conv forward vs PyTorch on every 3x3 stride-1 layer "
           f"({', '.join(CONV_3X3_S1)}) >= 1.5x",
           (_x("min", "min", 1.5),), measure_conv("conv2d_fwd", CONV_3X3_S1)),
    Target("pool_fwd_bwd", "pooling (max and avg) forward+backward vs PyTorch >= 3x: "
           "(a) geomean over layers of (torch fwd+bwd)/(fast fwd+bwd), (b) geomean over "
           "every fwd and bwd entry; both",
           (_x("per_case_sum", "(a) per-case fwd+bwd", 3.0),
            _x("all_entries", "(b) all entries", 3.0)),
           measure_fwd_bwd(_pool_ops, tuple(c for c, _ in POOL_CASES))),
    Target("bn_fwd_bwd", "batch norm forward+backward vs PyTorch >= 2x: (a) geomean over "
           "layers of (torch fwd+bwd)/(fast fwd+bwd), (b) geomean over every fwd and bwd "
           "entry; both",
           (_x("per_case_sum", "(a) per-case fwd+bwd", 2.0),
            _x("all_entries", "(b) all entries", 2.0)),
           measure_fwd_bwd(lambda c: ("batch_norm_fwd", "batch_norm_bwd"), BN_CASES)),
    Target("train_lenet5", "LeNet-5 training step (batch 64) vs PyTorch >= 2.5x",
           (_x("speedup", "speed-up", 2.5),), measure_train("lenet5")),
    Target("train_resnet20", "ResNet-20 training step (batch 128) vs PyTorch >= 1.5x",
           (_x("speedup", "speed-up", 1.5),), measure_train("resnet20")),
    Target("infer_resnet20", "ResNet-20 inference (eval forward, batch 128) vs PyTorch "
           ">= 1.5x", (_x("speedup", "speed-up", 1.5),), measure_train("resnet20", "infer")),
    Target("infer_lenet5", "LeNet-5 inference latency (eval forward, batch 1) vs PyTorch "
           ">= 2x", (_x("speedup", "speed-up", 2.0),), measure_train("lenet5", "infer")),
    Target("infer_resnet20_fused", "ResNet-20 inference through nn.fuse_for_inference "
           "(batch 128) vs PyTorch's eval forward >= 1.5x",
           (_x("speedup", "speed-up", 1.5),),
           measure_train("resnet20", "infer", "fastconv:fused")),
    Target("infer_lenet5_fused", "LeNet-5 inference latency through nn.fuse_for_inference "
           "(batch 1) vs PyTorch's eval forward >= 2x", (_x("speedup", "speed-up", 2.0),),
           measure_train("lenet5", "infer", "fastconv:fused")),
    Target("sgemm_vgg_c3", "vgg_c3 conv forward at >= 70% of the sgemm rate (same run, "
           "same threads)", (Measure("share", "of sgemm", 0.70, "%"),),
           measure_sgemm_share("vgg_c3")),
    Target("sgemm_nin_1x1", "nin_1x1 conv forward at >= 70% of the sgemm rate (same run, "
           "same threads)", (Measure("share", "of sgemm", 0.70, "%"),),
           measure_sgemm_share("nin_1x1")),
    Target("memory_conv_fwd", "conv forward scratch memory within threads x one image's "
           "columns (algo='auto', fresh-process probe): headroom = bound / workspace >= 1",
           (_x("headroom", "headroom", 1.0),), measure_memory("fwd"), probed=True),
    Target("memory_conv_bwd", "conv backward scratch memory within threads x one image's "
           "columns (algo='auto', fresh-process probe): headroom = bound / workspace >= 1",
           (_x("headroom", "headroom", 1.0),), measure_memory("bwd"), probed=True),
    Target("scale_resnet20_train", f"ResNet-20 training step: {SCALING_THREADS} threads "
           ">= 10x faster than 1 thread", (_x("speedup", "vs 1 thread", 10.0),),
           scaling=scaling_time("model", "resnet20")),
    Target("scale_vgg_c3_fwd", f"vgg_c3 conv forward: {SCALING_THREADS} threads >= 10x "
           "faster than 1 thread", (_x("speedup", "vs 1 thread", 10.0),),
           scaling=scaling_time("conv2d_fwd", "vgg_c3")),
)


# --------------------------------------------------------------------------- evaluation

def _record(target, threads, values, detail):
    thresholds = {m.name: m.threshold for m in target.measures}
    if values is not None:
        values = {m.name: values[m.name] for m in target.measures}   # the target's measures
    if values is None:
        status, values = NOT_MEASURED, {m.name: None for m in target.measures}
    elif all(values[m.name] >= m.threshold for m in target.measures):
        status = MET
    else:
        status = NOT_MET
    return {"id": target.id, "description": target.description, "threads": threads,
            "value": values, "threshold": thresholds, "status": status, "detail": detail}


def _evaluate_scaling(target, fig, all_threads):
    """One record: at SCALING_THREADS when the run has 1 and SCALING_THREADS threads; else
    "not measured", with the speed-up of the largest thread count measured in ``detail``."""
    if not all_threads:
        return _record(target, None, None, "no thread count in this run")
    evaluable = 1 in all_threads and SCALING_THREADS in all_threads
    top = SCALING_THREADS if evaluable else max(all_threads)
    one, many = target.scaling(fig, 1), target.scaling(fig, top)
    speedup = one / many if one is not None and many is not None and top != 1 else None
    if evaluable:
        if speedup is None:
            return _record(target, top, None, "missing: " + _missing_text(fig.missing))
        return _record(target, top, {"speedup": speedup},
                       f"1 thread {one:.2f} ms, {top} threads {many:.2f} ms")
    largest = ", ".join(str(t) for t in all_threads)
    detail = (f"not evaluable (needs 1 and {SCALING_THREADS} threads; this run has "
              f"{largest})")
    if speedup is not None:
        detail += f"; {top} threads: {speedup:.2f}x vs 1 thread"
    return _record(target, top, None, detail)


def evaluate(doc):
    """The list of target records (see the module docstring) of a run's document.

    Never raises on a document with fields missing (an old file, a quick or filtered
    run, no PyTorch): what cannot be computed is "not measured".
    """
    out = []
    fig = Figures(doc)
    all_threads = fig.threads(doc)
    for target in TARGETS:
        if target.scaling is not None:
            fig.missing = []
            out.append(_evaluate_scaling(target, fig, all_threads))
            continue
        thread_counts = all_threads
        if target.probed:
            thread_counts = fig.memory_threads()
            if not thread_counts:
                out.append(_record(target, None, None, "no memory probes in this run "
                                   "(--no-memory, --filter, or not Linux)"))
                continue
        for threads in thread_counts:
            fig.missing = []
            try:
                values, detail = target.measure(fig, threads)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
                values, detail = None, f"cannot compute: {type(exc).__name__}: {exc}"
            if values is None and fig.missing:
                detail = "; ".join(d for d in (detail, "missing: " + _missing_text(
                    fig.missing)) if d)
            out.append(_record(target, threads, values, detail))
    return out


# --------------------------------------------------------------------------- formatting

def _measures(target_id):
    return next((t.measures for t in TARGETS if t.id == target_id), ())


def _fmt(measure, value):
    if value is None:
        return "-"
    return f"{100 * value:.0f}%" if measure.unit == "%" else f"{value:.2f}x"


def format_value(rec):
    """"geomean 1.09x, min 0.86x" (or "-" for each measure not computed)."""
    measures = _measures(rec.get("id")) or tuple(
        Measure(k, k, v) for k, v in (rec.get("threshold") or {}).items())
    values = rec.get("value") or {}
    return ", ".join(f"{m.label} {_fmt(m, values.get(m.name))}" for m in measures)


def format_threshold(rec):
    """">= 1.00x, >= 0.50x" in the order of format_value's measures."""
    measures = _measures(rec.get("id")) or tuple(
        Measure(k, k, v) for k, v in (rec.get("threshold") or {}).items())
    thresholds = rec.get("threshold") or {}
    return ", ".join(f">= {_fmt(m, thresholds.get(m.name, m.threshold))}" for m in measures)


def table_lines(doc, recs=None):
    """The terminal table: one row per target and thread count."""
    recs = evaluate(doc) if recs is None else recs
    rows = [[t["id"], "" if t["threads"] is None else t["threads"], format_value(t),
             format_threshold(t), t["status"], t.get("detail") or ""] for t in recs]
    lines = ["== performance targets ==",
             "  from this run's medians: speed-up, geomean, min, (a), (b) = PyTorch median / "
             "fastconv median, same thread count;",
             "  of sgemm = conv GFLOP/s / sgemm GFLOP/s, same thread count; vs 1 thread = "
             f"t(1 thread) / t({SCALING_THREADS} threads)"]
    lines += [line.rstrip() for line in table(
        ["target", "thr", "value", "threshold", "status", "detail"], rows, "<><<<<")]
    met = sum(t["status"] == MET for t in recs)
    not_met = sum(t["status"] == NOT_MET for t in recs)
    lines.append(f"  {met} met, {not_met} NOT met, {len(recs) - met - not_met} not measured "
                 f"(of {len(recs)}); definitions: bench/targets.py")
    if (doc.get("settings") or {}).get("quick"):
        lines.append("  QUICK RUN: capped batches, so these targets are not meaningful either")
    return lines


def markdown_lines(doc, recs=None):
    """The same table in Markdown."""
    recs = evaluate(doc) if recs is None else recs
    lines = ["Performance targets (definitions in `bench/targets.py`):", "",
             "| target | threads | value | threshold | status | detail |",
             "|---|---|---|---|---|---|"]
    for t in recs:
        cells = [t["id"], "" if t["threads"] is None else str(t["threads"]),
                 format_value(t), format_threshold(t), t["status"], t.get("detail") or ""]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines


def main(argv=None):
    """``python bench/targets.py RUN.json [--markdown FILE.md]``; returns the exit status:
    0 when every target that was measured is met, 1 when one is not, 2 on a bad file."""
    parser = argparse.ArgumentParser(
        prog="python bench/targets.py",
        description="Evaluate fastconv's performance targets from a saved "
                    "`fastconv bench --json` run.")
    parser.add_argument("run", metavar="RUN.json", help="a `fastconv bench --json` file")
    parser.add_argument("--markdown", metavar="FILE.md", help="also write the table as Markdown")
    args = parser.parse_args(argv)
    try:
        doc = jsonfile.load(args.run)
    except (OSError, ValueError) as exc:
        print(f"bench/targets.py: cannot read {args.run}: {exc}", file=sys.stderr)
        return 2
    recs = evaluate(doc)
    print("\n".join(table_lines(doc, recs)))
    if args.markdown:
        jsonfile.write_text("\n".join(markdown_lines(doc, recs)) + "\n", args.markdown)
        print(f"bench/targets.py: wrote {args.markdown}", file=sys.stderr)
    return 1 if any(t["status"] == NOT_MET for t in recs) else 0


if __name__ == "__main__":
    sys.exit(main())
