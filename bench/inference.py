"""Eval-mode forward, fused (``nn.fuse_for_inference``) against unfused (``model.eval()``).

Each measurement runs in its own process; the processes alternate (unfused, fused, at 1
then 2 threads, for every round). Each process reports the median and the fastest of its
timed calls; the report gives, per case, the best median and the best fastest call of each
side over the rounds, their ratios (unfused time / fused time), and the spread of the
medians over the rounds (on a machine shared with other work the fastest calls are the
steadier measure).

    python bench/inference.py                      # ResNet-20 batch 128, LeNet-5 batch 1
    python bench/inference.py --rounds 5 --json out.json
    python bench/inference.py --worker resnet20 128 fused 2    # one measurement (internal)

Run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, as the other benchmarks.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# (model, batch, image shape (C, H, W), timed calls per process)
CASES = [("resnet20", 128, (3, 32, 32), 10), ("lenet5", 1, (1, 28, 28), 1000)]
MODES = ("unfused", "fused")


def worker(model_name, batch, mode, threads, calls):
    """(median, fastest) seconds of one forward call, measured in this process."""
    import numpy as np

    import fastconv
    from fastconv import nn
    from fastconv.models import get_model
    shape = CASES_BY_NAME[model_name]["shape"]
    fastconv.keep_freed_memory()
    model = get_model(model_name, in_channels=shape[0], input_size=shape[1], seed=0)
    model.eval()
    net = nn.fuse_for_inference(model) if mode == "fused" else model
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    times = []
    with fastconv.num_threads(threads):
        for _ in range(max(3, calls // 10)):        # warm-up: page faults, OpenMP team
            net(x)
        for _ in range(calls):
            t0 = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


CASES_BY_NAME = {name: {"batch": b, "shape": s, "calls": c} for name, b, s, c in CASES}


def measure(model_name, batch, mode, threads, calls):
    out = subprocess.run([sys.executable, __file__, "--worker", model_name, str(batch), mode,
                          str(threads), str(calls)], check=True, capture_output=True, text=True)
    median, fastest = out.stdout.split()[-2:]
    return float(median), float(fastest)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", nargs=5, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        name, batch, mode, threads, calls = args.worker
        print(*worker(name, int(batch), mode, int(threads), int(calls)))
        return 0
    medians = {}
    for rnd in range(args.rounds):
        for name, batch, _, calls in CASES:
            for threads in args.threads:
                for mode in MODES:
                    t = measure(name, batch, mode, threads, calls)
                    medians.setdefault((name, batch, threads, mode), []).append(t)
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    rows = []
    print(f"{'case':<20}{'threads':>8}{'unfused ms':>18}{'fused ms':>18}{'ratio':>12}"
          f"{'spread u/f':>12}")
    print(f"{'':<28}{'median  fastest':>18}{'median  fastest':>18}{'med  fast':>12}")
    for name, batch, _, _ in CASES:
        for threads in args.threads:
            u, f = (medians[(name, batch, threads, m)] for m in MODES)
            um, uf = min(t[0] for t in u), min(t[1] for t in u)
            fm, ff = min(t[0] for t in f), min(t[1] for t in f)
            row = dict(model=name, batch=batch, threads=threads, unfused_median_s=um,
                       unfused_fastest_s=uf, fused_median_s=fm, fused_fastest_s=ff,
                       ratio_median=um / fm, ratio_fastest=uf / ff,
                       unfused_rounds=u, fused_rounds=f)
            rows.append(row)
            spread = "/".join(f"{(max(t[0] for t in v) - m) / m:.0%}" for v, m in ((u, um), (f, fm)))
            print(f"{name + ' batch ' + str(batch):<20}{threads:>8}{um * 1e3:>10.2f}{uf * 1e3:>8.2f}"
                  f"{fm * 1e3:>10.2f}{ff * 1e3:>8.2f}{um / fm:>6.2f}{uf / ff:>6.2f}{spread:>12}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rounds": args.rounds, "cases": rows,
                       "cpu_count": os.cpu_count()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
