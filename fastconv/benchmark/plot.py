"""``--plot FILE.png``: conv GFLOP/s per layer and implementation, and the thread scaling.

matplotlib is an optional dependency (``pip install fastconv[bench]``): :func:`require`
tells the CLI before any timing starts whether the plot can be drawn.
"""
import os
import textwrap

from . import cases as cases_mod

MISSING = ("--plot needs matplotlib, which is not installed: "
           "pip install matplotlib (or pip install 'fastconv[bench]')")


def require():
    """None when matplotlib can be imported, else the message to show."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return MISSING
    return None


def _bars(ax, results, op, threads):
    """Grouped bars: one group per layer, one bar per implementation (GFLOP/s)."""
    recs = [r for r in results if r["op"] == op and r["threads"] == threads and r["status"] == "ok"]
    layers = list(dict.fromkeys(r["case"] for r in recs))
    impls = list(dict.fromkeys(r["impl"] for r in recs))
    width = 0.8 / max(len(impls), 1)
    for i, impl in enumerate(impls):
        rate = {r["case"]: r["gflops"] for r in recs if r["impl"] == impl}
        ax.bar([j + i * width for j in range(len(layers))], [rate.get(c, 0) for c in layers],
               width, label=impl)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))])
    ax.set_xticklabels(layers, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"{cases_mod.OP_TITLES[op]}, {threads} thread(s)")
    if impls:
        ax.legend(fontsize=7)


def _scaling(ax, results, threads):
    """Speed-up of n threads over 1, per layer, for the default implementations and torch."""
    labels, values = [], {}
    impls = ("fast:auto", "torch")
    for r in results:
        if (r["op"] == "conv2d_fwd" and r["impl"] in impls and r["threads"] == threads
                and "speedup_vs_1thread" in r):
            if r["case"] not in labels:
                labels.append(r["case"])
            values[(r["case"], r["impl"])] = r["speedup_vs_1thread"]
    width = 0.4
    for i, impl in enumerate(impls):
        ax.bar([j + i * width for j in range(len(labels))],
               [values.get((c, impl), 0) for c in labels], width, label=impl)
    ax.axhline(threads, color="gray", lw=0.8, ls="--", label=f"ideal ({threads}x)")
    ax.set_xticks([j + width / 2 for j in range(len(labels))])
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"speed-up, {threads} threads vs 1")
    ax.set_title("conv2d forward: thread scaling")
    ax.legend(fontsize=7)


def save(doc, path):
    """Draw the figure of run ``doc`` into ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .environment import summary_line

    results = doc["results"]
    threads = doc["settings"]["threads"]
    most = max(threads)
    panels = [("conv2d_fwd", 1), ("conv2d_bwd", 1)]
    if most != 1:
        panels += [("conv2d_fwd", most), ("scaling", most)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for ax, (op, n) in zip(axes[:, 0], panels):
        if op == "scaling":
            _scaling(ax, results, n)
        else:
            _bars(ax, results, op, n)
    title = textwrap.fill("fastconv bench: " + summary_line(doc["environment"]), 160)
    fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    tmp = f"{path}.tmp"                 # written then renamed, as every file fastconv writes
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
