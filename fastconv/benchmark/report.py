"""The terminal report of a benchmark run, and of its comparison with a saved run.

Everything here reads the JSON document that :func:`runner.run_benchmarks` returns (or a
saved one), so a saved ``--json`` file can be printed again and compared later.
"""
from . import cases as cases_mod
from .environment import summary_line
from .runner import default_impl, geomean


def _num(value, fmt, missing=""):
    return missing if value is None else format(value, fmt)


def _ratio(value):
    return "" if value is None else f"{value:.2f}x"


def _spread(r):
    """The spread between a case's rounds: max / min of the rounds' medians - 1."""
    value = r.get("round_spread")
    return "" if value is None else f"{100 * value:.0f}%"


def _table(header, rows, align):
    """Columns padded to their widest cell; ``align`` is "<" or ">" per column."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths))
    lines = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*(str(c) for c in row)) for row in rows]
    return lines


def _not_run_lines(records, indent="  "):
    """One line per distinct (impl, reason) that could not run, instead of one per row."""
    seen = {}
    for r in records:
        if r.get("status") != "ok":
            seen.setdefault((r.get("status", "no status"), r.get("impl"), r.get("reason", "")),
                            []).append(r)
    lines = []
    for (status, impl, reason), recs in seen.items():
        names = sorted({str(r.get("case") or r.get("model")) for r in recs})
        where = "all layers" if len(names) > 3 else ", ".join(names)
        lines.append(f"{indent}{status.upper()}: {impl} ({where}): {reason}")
    return lines


def op_table(results, op):
    recs = [r for r in results if r.get("op") == op]
    if not recs:
        return []
    unit = recs[0].get("unit") or ("flop" if op.startswith("conv") else "byte")
    rate_key, rate_name = ("gflops", "GFLOP/s") if unit == "flop" else ("gbps", "GB/s")
    header = ["layer", "impl", "thr", "median ms", "min ms", "max ms", rate_name]
    if unit == "flop":
        header.append("%sgemm")
    header += ["faults/call", "spread", "vs ref", "vs torch", "vs 1 thr"]
    rows = []
    for r in recs:
        if r.get("status") != "ok":
            continue
        row = [r["case"], r["impl"], r["threads"], _num(r.get("median_ms"), ".3f"),
               _num(r.get("min_ms"), ".3f"), _num(r.get("max_ms"), ".3f"),
               _num(r.get(rate_key), ".1f")]
        if unit == "flop":
            row.append(_num(100 * r["sgemm_share"], ".0f") + "%" if "sgemm_share" in r else "")
        row += [_num(r.get("minflt_per_call"), ".0f"), _spread(r),
                _ratio(r.get("speedup_vs_reference")),
                _ratio(r.get("speedup_vs_torch")), _ratio(r.get("speedup_vs_1thread"))]
        rows.append(row)
    title = cases_mod.OP_TITLES.get(op, op)
    lines = [f"== {title} =="]
    if rows:
        lines += _table(header, rows, "<<>" + ">" * (len(header) - 3))
    return lines + _not_run_lines(recs) + [""]


def model_table(model_results,
                title="training step: forward + loss + backward + SGD update"):
    if not model_results:
        return []
    jit = any("speedup_vs_torch_jit" in m for m in model_results)
    header = ["model", "impl", "batch", "thr", "median ms", "min ms", "images/s",
              "faults/call", "params", "spread", "vs torch"] + ["vs torch:jit"] * jit + [
              "vs 1 thr"]
    rows = [[m["model"], m["impl"], m.get("batch", ""), m["threads"],
             _num(m.get("median_ms"), ".2f"), _num(m.get("min_ms"), ".2f"),
             _num(m.get("images_per_s"), ".0f"), _num(m.get("minflt_per_call"), ".0f"),
             m.get("params", ""), _spread(m), _ratio(m.get("speedup_vs_torch"))]
            + [_ratio(m.get("speedup_vs_torch_jit"))] * jit
            + [_ratio(m.get("speedup_vs_1thread"))]
            for m in model_results if m.get("status") == "ok"]
    lines = [f"== {title} =="]
    if rows:
        lines += _table(header, rows, "<<" + ">" * (len(header) - 2))
    return lines + _not_run_lines(model_results) + [""]


def overhead_table(call_results):
    """Per-call times on tiny inputs: the public op, its kernel calls alone, PyTorch."""
    if not call_results:
        return []
    header = ["op", "impl", "thr", "median us", "min us", "python us", "spread", "vs torch"]
    rows = [[r["op"], r["impl"], r["threads"], _num(1e3 * r["median_ms"], ".2f"),
             _num(1e3 * r["min_ms"], ".2f"), _num(r.get("python_us"), ".2f"), _spread(r),
             _ratio(r.get("speedup_vs_torch"))]
            for r in call_results if r.get("status") == "ok"]
    lines = ["== per-call overhead on tiny inputs: fast = the op API, fast:kernel = only its "
             "compiled-kernel calls, python us = fast - fast:kernel =="]
    if rows:
        lines += _table(header, rows, "<<" + ">" * (len(header) - 2))
    return lines + _not_run_lines(call_results) + [""]


def memory_table(mem, error):
    if error:
        return ["== conv peak extra memory ==", f"  NOT MEASURED: {error}", ""]
    if not mem:
        return []
    header = ["layer", "pass", "impl", "thr", "peak MB", "outputs MB", "workspace MB",
              "columns model MB"]
    rows = [[m["case"], m["direction"], m["impl"], m["threads"], _num(m["peak_mb"], ".1f"),
             _num(m["outputs_mb"], ".1f"), _num(m["workspace_mb"], ".1f"),
             _num(m["columns_mb"], ".1f")]
            for m in mem if m["status"] == "ok"]
    lines = ["== conv peak extra memory: one call in a fresh process (peak = workspace + "
             "outputs); model = the column matrices of the design =="]
    if rows:
        lines += _table(header, rows, "<<<" + ">" * (len(header) - 3))
    return lines + _not_run_lines(mem) + [""]


def summary_table(summary):
    if not summary:
        return []
    header = ["op", "impl", "thr", "layers", "vs ref (geo)", "vs torch (geo)",
              "vs torch (min)", "vs 1 thr (geo)"]
    rows = [[s["op"], s["impl"], s["threads"], s["layers"],
             _ratio(s.get("geomean_speedup_vs_reference")),
             _ratio(s.get("geomean_speedup_vs_torch")), _ratio(s.get("min_speedup_vs_torch")),
             _ratio(s.get("geomean_speedup_vs_1thread"))]
            for s in summary]
    return (["== summary: speed-ups of the default fast implementation "
             "(geometric mean over layers; > 1 = faster) =="]
            + _table(header, rows, "<<" + ">" * (len(header) - 2)) + [""])


def _summary_line(env):
    """environment.summary_line, or what there is of it in an old or partial document."""
    try:
        return summary_line(env)
    except (KeyError, TypeError, AttributeError):
        return f"{env.get('date_utc', '?')}  {env.get('cpu', '?')} (environment incomplete)"


def format_report(doc):
    """The whole terminal report of a run, as one string.

    Reads only ``doc`` (a fresh run or a saved ``--json``); fields missing from an older
    or partial document leave their table out rather than fail.
    """
    env = doc.get("environment") or {}
    lines = [f"fastconv bench: {_summary_line(env)}"]
    if (doc.get("settings") or {}).get("quick"):
        lines.append("QUICK RUN (--quick): tiny batches and few repeats, a smoke test; "
                     "the figures are not meaningful")
    lines += [f"WARNING: {w}" for w in env.get("warnings") or []]
    lines.append("sgemm " + ", ".join(
        f"{s.get('n', '?')}^2 x{s.get('threads')} thread(s): {_num(s.get('gflops'), '.1f')} "
        "GFLOP/s" for s in doc.get("sgemm") or []))
    lines.append("times: median (min, max) of repeated calls after warm-up, the best of "
                 f"{(doc.get('settings') or {}).get('rounds', 1)} round(s), each engine in its "
                 "own process, alternating; spread = max / min of the rounds' medians - 1; "
                 "faults/call = minor page faults per call; vs X = X's median / this median")
    lines.append("")
    for op in cases_mod.OPS:
        lines += op_table(doc.get("results") or [], op)
    lines += model_table(doc.get("models") or [])
    lines += model_table(doc.get("inference") or [],
                         "inference: eval-mode forward (ResNet-20 throughput, LeNet-5 latency); "
                         "fastconv:fused = nn.fuse_for_inference, torch:jit = "
                         "torch.jit.optimize_for_inference")
    lines += overhead_table(doc.get("overhead") or [])
    lines += memory_table(doc.get("memory") or [], doc.get("memory_error"))
    lines += summary_table(doc.get("summary"))
    return "\n".join(lines)


# --------------------------------------------------------------------------- --compare

def _key(r):
    return (r["id"], r["threads"])


def compare(new, old):
    """Lines comparing two runs' medians: change = old / new (> 1: faster now)."""
    lines = [f"== change against {old['environment'].get('date_utc', '?')} "
             f"(old median / new median; > 1.00x = faster now) =="]
    if old.get("schema") != new.get("schema"):
        lines.append(f"  WARNING: different file formats ({old.get('schema')} then, "
                     f"{new.get('schema')} now)")
    for what in ("cpu", "cores_usable"):
        if old["environment"].get(what) != new["environment"].get(what):
            lines.append(f"  WARNING: {what} differs: {old['environment'].get(what)!r} then, "
                         f"{new['environment'].get(what)!r} now")
    if old["settings"].get("quick") != new["settings"].get("quick"):
        lines.append("  WARNING: one run is --quick, the other is not")
    kinds = ("results", "models", "inference", "overhead")
    old_recs = {_key(r): r for kind in kinds for r in old.get(kind) or []}
    rows, changes, missing = [], [], 0
    for r in (r for kind in kinds for r in new.get(kind) or []):
        o = old_recs.get(_key(r))
        if o is None or r["status"] != "ok" or o["status"] != "ok":
            missing += o is None
            continue
        if r.get("layer", r.get("batch")) != o.get("layer", o.get("batch")):
            rows.append([r["id"], r["threads"], "", "", "shape differs"])
            continue
        changes.append(o["median_ms"] / r["median_ms"])
        rows.append([r["id"], r["threads"], f"{o['median_ms']:.3f}", f"{r['median_ms']:.3f}",
                     f"{changes[-1]:.2f}x"])
    if rows:
        lines += _table(["case", "thr", "old ms", "new ms", "change"], rows, "<>>>>")
    else:
        lines.append("  no case measured in both runs")
    if missing:
        lines.append(f"  {missing} case(s) of this run are not in the old one")
    if changes:
        lines.append(f"  geometric mean change over {len(changes)} cases: {geomean(changes):.2f}x")
    return "\n".join(lines + [""])



# --------------------------------------------------------------------------- --markdown

def markdown(doc):
    """A compact Markdown table of a run (for a README): per op and layer, the medians of
    the reference, the default fast implementation and PyTorch at every thread count."""
    results, model_results = doc.get("results") or [], doc.get("models") or []
    threads = (doc.get("settings") or {}).get("threads") or sorted(
        {r["threads"] for r in results + model_results})
    ms = {(r["op"], r["case"], r["impl"], r["threads"]): r["median_ms"]
          for r in results if r["status"] == "ok"}

    def cell(op, name, impl):
        values = [ms.get((op, name, impl, t)) for t in threads]
        return " / ".join("-" if v is None else f"{v:.3g}" for v in values)

    def ratio(op, name):
        values = []
        for t in threads:
            fast = ms.get((op, name, default_impl(op), t))
            torch = ms.get((op, name, "torch", t))
            values.append("-" if fast is None or torch is None else f"{torch / fast:.2f}x")
        return " / ".join(values)

    per = " / ".join(str(t) for t in threads)
    lines = [f"Measured {_summary_line(doc.get('environment') or {})}.", "",
             f"Median ms with {per} thread(s); speed-up = PyTorch time / fastconv time.", "",
             "| op | layer | reference | fastconv | PyTorch | fastconv speed-up vs PyTorch |",
             "|---|---|---|---|---|---|"]
    seen = []
    for r in results:
        key = (r["op"], r["case"])
        if key in seen:
            continue
        seen.append(key)
        op, name = key
        lines.append(f"| {op} | {name} | {cell(op, name, 'reference')} | "
                     f"{cell(op, name, default_impl(op))} | {cell(op, name, 'torch')} | "
                     f"{ratio(op, name)} |")
    models = {(m["model"], m["impl"], m["threads"]): m for m in model_results
              if m["status"] == "ok" and m.get("images_per_s")}
    if models:
        lines += ["", f"Training step (forward, loss, backward, SGD), images/s with {per} "
                      "thread(s):", "", "| model | batch | fastconv | PyTorch |",
                  "|---|---|---|---|"]
        for name in dict.fromkeys(m["model"] for m in model_results):
            batch = next(m.get("batch", "") for m in model_results if m["model"] == name)
            cells = [" / ".join(f"{models[(name, impl, t)]['images_per_s']:.0f}"
                                if (name, impl, t) in models else "-" for t in threads)
                     for impl in ("fastconv", "torch")]
            lines.append(f"| {name} | {batch} | {cells[0]} | {cells[1]} |")
    inference = [m for m in doc.get("inference") or [] if m["status"] == "ok"]
    if inference:
        ms = {(m["model"], m["impl"], m["threads"]): m["median_ms"] for m in inference}
        lines += ["", f"Inference (eval-mode forward), median ms with {per} thread(s); fused = "
                      "`nn.fuse_for_inference`, PyTorch jit = "
                      "`torch.jit.optimize_for_inference`:", "",
                  "| model | batch | fastconv | fastconv fused | PyTorch | PyTorch jit "
                  "| speed-up, fastconv vs PyTorch | fused vs PyTorch | fused vs PyTorch jit |",
                  "|---|---|---|---|---|---|---|---|---|"]
        def times(name, impl):
            return " / ".join(f"{ms[(name, impl, t)]:.3g}" if (name, impl, t) in ms else "-"
                              for t in threads)

        def ratios(name, fast, torch):
            return " / ".join(f"{ms[(name, torch, t)] / ms[(name, fast, t)]:.2f}x"
                              if (name, torch, t) in ms and (name, fast, t) in ms else "-"
                              for t in threads)

        for name in dict.fromkeys(m["model"] for m in inference):
            batch = next(m.get("batch", "") for m in inference if m["model"] == name)
            cells = [times(name, impl) for impl in ("fastconv", "fastconv:fused", "torch",
                                                     "torch:jit")]
            cells += [ratios(name, "fastconv", "torch"), ratios(name, "fastconv:fused", "torch"),
                      ratios(name, "fastconv:fused", "torch:jit")]
            lines.append(f"| {name} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
