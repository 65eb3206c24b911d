"""The fine-tuning recipe, end to end, on Fashion-MNIST: ``python -m fastconv.recipe``.

A LeNet-5 is pretrained on five Fashion-MNIST classes (T-shirt/top, Trouser, Pullover,
Dress, Coat). The other five (Sandal, Shirt, Sneaker, Bag, Ankle boot) are then learnt from
only n labelled images per class, n = 10, 100, 1000, three ways:

(a) from scratch: a fresh LeNet-5 with augmentation, trained as long as (b) + (c) together;
(b) the pretrained body frozen, its outputs precomputed once, a new head (fc3) trained on
    them (no augmentation: a cache holds one view of each image);
(c) then everything unfrozen: a new LR range test, learning rates spread over the three
    layer groups as lr * [0.01, 0.1, 1] (the notes' [0.001, 0.01, 0.1]), SGDR with
    cycle_len=1 and cycle_mult=2 (cycles of 1, 2 and 4 epochs), with augmentation.

Accuracy is on all 5,000 test images of the five new classes. With few images an "epoch"
is the training set repeated up to ``--epoch-images`` images, so every setting takes
steps of the same batch size (augmentation makes the repeats differ).

    python -m fastconv.recipe                       # the README's table (minutes, 2 cores)
    python -m fastconv.recipe --n 10 --epochs-scratch 4     # a smaller trial

The pretrained model is saved (``OUT/pretrain.npz``) and reused when it exists;
``--retrain`` trains it again. Results go to ``OUT/recipe.json`` and ``OUT/recipe.md``.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

from ._files import atomic_write_text
from .data import DataLoader, Normalize, load_dataset, make_augmentation
from .models import lenet5
from .optim import SGD, param_groups
from .schedules import CosineWarmRestarts, OneCycleLR, lr_find
from .train import (evaluate, fit, load_pretrained, precompute_features, save_checkpoint)

__all__ = ["split_classes", "few_shot", "run_recipe", "table", "main"]

PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
NEW_CLASSES = (5, 6, 7, 8, 9)
GROUP_RATIOS = (0.01, 0.1, 1.0)     # the notes' [0.001, 0.01, 0.1], relative to the head's LR


def split_classes(x, y, classes):
    """The images of ``classes`` only, relabelled 0..len(classes)-1 in that order."""
    keep = np.isin(y, classes)
    relabel = np.full(int(y.max()) + 1, -1, np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    return x[keep], relabel[y[keep]]


def few_shot(x, y, n, seed=0):
    """n images of every label, drawn without replacement by ``seed`` (sorted by index)."""
    rng = np.random.default_rng(seed)
    counts = {int(c): int(np.count_nonzero(y == c)) for c in np.unique(y)}
    if n > min(counts.values()):
        raise ValueError(f"few_shot: {n} images per class asked, but the classes have only "
                         f"{counts}")
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), size=n, replace=False)
                                  for c in np.unique(y)]))
    return x[idx], y[idx]


def _repeat(x, y, epoch_images):
    """Tile a small training set to at least ``epoch_images`` images per epoch."""
    reps = max(1, math.ceil(epoch_images / len(y)))
    return np.concatenate([x] * reps), np.concatenate([y] * reps)


def _sgd(params, lr, wd):
    return SGD(params, lr, momentum=0.9, nesterov=True, weight_decay=wd)


class _Clock:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def minutes(self):
        return (time.perf_counter() - self.start) / 60


def pretrain(ds, out, epochs, lr, batch_size, seed, retrain, log):
    """LeNet-5 on the pretraining classes, saved to OUT/pretrain.npz (reused when present)."""
    path = os.path.join(out, "pretrain.npz")
    x, y = split_classes(ds.x_train, ds.y_train, PRETRAIN_CLASSES)
    xt, yt = split_classes(ds.x_test, ds.y_test, PRETRAIN_CLASSES)
    model = lenet5(num_classes=len(PRETRAIN_CLASSES), seed=seed)
    norm = Normalize(ds.mean, ds.std)
    test = DataLoader(xt, yt, 1000, normalize=norm)
    if os.path.isfile(path) and not retrain:
        load_pretrained(path, model)
        _, acc = evaluate(model, test)
        log(f"pretrained model from {path}: test accuracy {acc:.4f} on the 5 pretraining classes")
        return path, acc, 0.0
    clock = _Clock()
    loader = DataLoader(x, y, batch_size, shuffle=True, seed=seed, drop_last=True, normalize=norm)
    opt = _sgd(model.parameters(), lr, 5e-4)
    history = fit(model, loader, opt, epochs, OneCycleLR(lr, epochs * len(loader)),
                  test_loader=test, progress=False, log=log)
    save_checkpoint(path, model, opt, epochs, history, {"classes": list(PRETRAIN_CLASSES)})
    log(f"pretrained on {len(y):,} images of classes {PRETRAIN_CLASSES}: test accuracy "
        f"{history['test_acc'][-1]:.4f}, {clock.minutes:.2f} min; saved {path}")
    return path, history["test_acc"][-1], clock.minutes


def run_recipe(ds, out="runs/finetune-recipe", ns=(10, 100, 1000), pretrain_epochs=4,
               epochs_head=3, cycles=3, epochs_scratch=None, epoch_images=3200, batch_size=32,
               lr=0.05, augment="translate,rotate,zoom,flip", seed=0, retrain=False, log=print):
    """Run the recipe (see the module docstring) and return its results as a dict.

    ``epochs_scratch`` defaults to epochs_head + the SGDR epochs (1 + 2 + ... cycles), so
    (a) trains as many steps as (b) and (c) together.
    """
    os.makedirs(out, exist_ok=True)
    sgdr_epochs = sum(2 ** i for i in range(cycles))
    epochs_scratch = epochs_scratch or epochs_head + sgdr_epochs
    ckpt, pre_acc, pre_min = pretrain(ds, out, pretrain_epochs, lr, 64, seed, retrain, log)
    norm = Normalize(ds.mean, ds.std)
    aug = make_augmentation(augment, ds.image_shape[1])
    x_new, y_new = split_classes(ds.x_train, ds.y_train, NEW_CLASSES)
    xt, yt = split_classes(ds.x_test, ds.y_test, NEW_CLASSES)
    test = DataLoader(xt, yt, 1000, normalize=norm)
    results = {"pretrain": {"test_acc": pre_acc, "minutes": pre_min, "epochs": pretrain_epochs},
               "settings": dict(ns=list(ns), epochs_head=epochs_head, sgdr_epochs=sgdr_epochs,
                                epochs_scratch=epochs_scratch, epoch_images=epoch_images,
                                batch_size=batch_size, lr=lr, augment=augment, seed=seed,
                                test_images=len(yt)),
               "rows": []}
    k = len(NEW_CLASSES)
    for n in ns:
        x, y = few_shot(x_new, y_new, n, seed)
        x, y = _repeat(x, y, epoch_images)
        train = DataLoader(x, y, batch_size, shuffle=True, seed=seed, drop_last=True,
                           augment=aug, normalize=norm)
        row = {"n": n, "train_images": n * k}
        log(f"--- n = {n} per class ({n * k} images, epochs of {len(train)} steps)")

        # (a) from scratch
        clock = _Clock()
        model = lenet5(num_classes=k, seed=seed + 1)
        opt = _sgd(model.parameters(), lr, 5e-4)
        h = fit(model, train, opt, epochs_scratch, OneCycleLR(lr, epochs_scratch * len(train)),
                test_loader=None, progress=False, log=None)
        row["scratch"] = {"acc": evaluate(model, test)[1], "minutes": clock.minutes,
                          "epochs": epochs_scratch, "train_acc": h["train_acc"][-1]}
        log(f"(a) from scratch: {row['scratch']['acc']:.4f} ({clock.minutes:.2f} min)")

        # (b) frozen pretrained body, precomputed features, new head
        clock = _Clock()
        model = lenet5(num_classes=k, seed=seed + 1)
        load_pretrained(ckpt, model, new_head=True)
        body, head = model.split(model.head_layer())     # conv1..act4 | fc3
        body.freeze()
        plain = DataLoader(x[:n * k], y[:n * k], 1000, normalize=norm)   # each image once
        f_train, l_train = precompute_features(body, plain, os.path.join(out, f"features_n{n}.npz"))
        f_test, l_test = precompute_features(body, test, os.path.join(out, "features_test.npz"))
        feats = DataLoader(*_repeat(f_train, l_train, epoch_images), batch_size, shuffle=True,
                           seed=seed, drop_last=True)
        opt = _sgd(head.parameters(), lr, 5e-4)
        fit(head, feats, opt, epochs_head, OneCycleLR(lr, epochs_head * len(feats)),
            progress=False, log=None)
        acc_b = evaluate(head, DataLoader(f_test, l_test, 1000))[1]
        row["head"] = {"acc": acc_b, "minutes": clock.minutes, "epochs": epochs_head}
        log(f"(b) frozen body, precomputed features, new head: {acc_b:.4f} ({clock.minutes:.2f} min)")

        # (c) unfreeze, LR range test, differential LRs, SGDR cycle_len=1 cycle_mult=2
        clock = _Clock()
        body.unfreeze()
        groups = param_groups(model, GROUP_RATIOS)
        opt = _sgd(groups, 1.0, 5e-4)          # reference LR 1: the groups carry the ratios
        found = lr_find(model, train, opt, start_lr=1e-5, num_steps=100, verbose=False)
        # a trained model's loss is flat at small LRs: a tenth of the LR of the lowest loss,
        # never above the LR that trains from scratch
        ref = float(min(found.tenth_of_lowest, lr))
        opt.lr = ref
        h = fit(model, train, opt, sgdr_epochs, CosineWarmRestarts(ref, len(train), 2),
                progress=False, log=None)
        row["unfrozen"] = {"acc": evaluate(model, test)[1], "minutes": clock.minutes,
                           "epochs": sgdr_epochs, "lr_found": float(found.tenth_of_lowest),
                           "lrs": [ref * r for r in GROUP_RATIOS]}
        log(f"(c) unfrozen, lr_find {found.tenth_of_lowest:.3g} -> LRs "
            f"{', '.join(f'{ref * r:.3g}' for r in GROUP_RATIOS)}, SGDR "
            f"{'+'.join(str(2 ** i) for i in range(cycles))} epochs: "
            f"{row['unfrozen']['acc']:.4f} ({clock.minutes:.2f} min)")

        # the time precomputing saves: (b) again with the frozen body in the loop
        clock = _Clock()
        model2 = lenet5(num_classes=k, seed=seed + 1)
        load_pretrained(ckpt, model2, new_head=True)
        model2.freeze()
        model2.unfreeze(model2.head_layer())
        plain_rep = DataLoader(x, y, batch_size, shuffle=True, seed=seed, drop_last=True,
                               normalize=norm)
        opt = _sgd(model2.parameters(), lr, 5e-4)
        fit(model2, plain_rep, opt, epochs_head, OneCycleLR(lr, epochs_head * len(plain_rep)),
            progress=False, log=None)
        row["head_no_precompute"] = {"acc": evaluate(model2, test)[1], "minutes": clock.minutes}
        log(f"    the same head without precomputing (frozen body in the loop): "
            f"{row['head_no_precompute']['acc']:.4f} ({clock.minutes:.2f} min)")
        results["rows"].append(row)
        _write(results, out)
    return results


def table(results):
    """The Markdown table of a :func:`run_recipe` result."""
    lines = ["| labelled images per class | (a) from scratch | (b) frozen body + new head "
             "(precomputed) | (c) then unfrozen, differential LRs, SGDR | (b) without "
             "precomputing |",
             "|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        cell = lambda d: f"{100 * d['acc']:.2f}% ({d['minutes']:.2f} min)"   # noqa: E731
        lines.append(f"| {r['n']} | {cell(r['scratch'])} | {cell(r['head'])} | "
                     f"{cell(r['unfrozen'])} | {cell(r['head_no_precompute'])} |")
    return "\n".join(lines)


def _write(results, out):
    atomic_write_text(os.path.join(out, "recipe.json"), json.dumps(results, indent=1))
    atomic_write_text(os.path.join(out, "recipe.md"), table(results) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastconv.recipe", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist (the full set) or fashion-mnist-subset (embedded, quick)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/finetune-recipe")
    p.add_argument("--n", default="10,100,1000", help="labelled images per class, comma list")
    p.add_argument("--pretrain-epochs", type=int, default=4)
    p.add_argument("--epochs-head", type=int, default=3)
    p.add_argument("--cycles", type=int, default=3, help="SGDR cycles (1, 2, 4, ... epochs)")
    p.add_argument("--epochs-scratch", type=int, default=None,
                   help="default: epochs-head + the SGDR epochs")
    p.add_argument("--epoch-images", type=int, default=3200,
                   help="small training sets are repeated up to this many images per epoch")
    p.add_argument("--augment", default="translate,rotate,zoom,flip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--retrain", action="store_true", help="pretrain again even if OUT/pretrain.npz exists")
    args = p.parse_args(argv)
    import contextlib

    import fastconv
    ns = [int(v) for v in args.n.split(",")]
    ds = load_dataset(args.dataset, args.data_dir)
    print(f"fine-tuning recipe on {ds.name} [{ds.source}], n = {ns}, threads "
          f"{args.threads or fastconv.get_num_threads()}", flush=True)
    threads = fastconv.num_threads(args.threads) if args.threads else contextlib.nullcontext()
    with threads:
        results = run_recipe(ds, args.out, ns, args.pretrain_epochs, args.epochs_head, args.cycles,
                             args.epochs_scratch, args.epoch_images, augment=args.augment,
                             seed=args.seed, retrain=args.retrain,
                             log=lambda m: print(m, flush=True))
    print(table(results))
    print(f"wrote {os.path.join(args.out, 'recipe.json')} and recipe.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
