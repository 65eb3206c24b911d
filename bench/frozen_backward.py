"""Backward time of a partly frozen model: a frozen conv between trainable layers computing
dx alone (need_dw=False, what nn.Conv2d does) against computing dw and db too and dropping
them. Both in one process, alternating, so that a busy machine slows both alike.

    python bench/frozen_backward.py [--reps 15] [--threads 1]

LeNet-5 (batch 64) trains conv1 and fc3 (conv2, fc1, fc2 frozen); ResNet-20 (batch 128)
trains layer2.1 and fc (every other conv frozen: those after layer2.1 still pass dx on).
Prints the median backward time of each variant and their ratio, for the two models and
for three single layers (F.conv2d_backward, algo "auto").
"""
import argparse
import statistics
import time

import numpy as np

import fastconv
import fastconv.functional as F
import fastconv.nn as nn
from fastconv.models import lenet5, resnet20

_kernel_backward = F.conv2d_backward


def _with_dw(*args, need_dw=True, **kwargs):
    """conv2d_backward that always computes dw and db, and drops them where not asked for."""
    dx, dw, db = _kernel_backward(*args, need_dw=True, **kwargs)
    return (dx, dw, db) if need_dw else (dx, None, None)


def _backward_seconds(model, dy, variant):
    F.conv2d_backward = _with_dw if variant == "dw too" else _kernel_backward
    try:
        model.zero_grad()
        start = time.perf_counter()
        model.backward_params(dy)
        return time.perf_counter() - start
    finally:
        F.conv2d_backward = _kernel_backward


LAYERS = [("lenet_c2", (64, 6, 14, 14), (16, 6, 5, 5), 0),
          ("resnet20_s2", (128, 32, 16, 16), (32, 32, 3, 3), 1),
          ("resnet20_s3", (128, 64, 8, 8), (64, 64, 3, 3), 1)]


def _layers(rng, reps):
    for name, x_shape, w_shape, padding in LAYERS:
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        dy = rng.standard_normal(F.conv2d(x, w, padding=padding).shape).astype(np.float32)
        times = {False: [], True: []}
        for _ in range(reps):
            for need_dw in times:
                start = time.perf_counter()
                F.conv2d_backward(dy, x, w, padding=padding, need_dw=need_dw)
                times[need_dw].append(time.perf_counter() - start)
        a, b = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name}: conv2d_backward {a * 1e3:.1f} ms with need_dw=False, "
              f"{b * 1e3:.1f} ms with dw and db: ratio {a / b:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    args = parser.parse_args()
    if args.threads is not None:
        fastconv.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    setups = [("LeNet-5", lenet5(seed=0), (64, 1, 28, 28), ("conv1", "fc3")),
              ("ResNet-20", resnet20(in_channels=3, input_size=32, seed=0), (128, 3, 32, 32), ("layer2.1", "fc"))]
    for name, model, shape, trained in setups:
        model.freeze()
        model.unfreeze(*trained)
        x = rng.standard_normal(shape).astype(np.float32)
        loss = nn.CrossEntropyLoss()
        loss.forward(model(x), rng.integers(0, 10, shape[0]))
        dy = loss.backward()
        times = {"dx alone": [], "dw too": []}
        for _ in range(args.reps):
            for variant in times:
                times[variant].append(_backward_seconds(model, dy, variant))
        a, b = (statistics.median(times[v]) for v in ("dx alone", "dw too"))
        print(f"{name} (training {', '.join(trained)}): backward {a * 1e3:.1f} ms with "
              f"need_dw=False, {b * 1e3:.1f} ms computing dw too: ratio {a / b:.2f}")
    _layers(rng, args.reps)


if __name__ == "__main__":
    main()
