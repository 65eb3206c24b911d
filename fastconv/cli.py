"""The ``fastconv`` command: train, predict, summary, info, viz, bench.

    fastconv train                                  # LeNet-5 on Fashion-MNIST (or the embedded subset)
    fastconv train --model resnet20 --epochs 30 --augment crop,flip
    fastconv train --resume                         # continue the latest run, same options
    fastconv summary resnet20 --input-shape 3 32 32
    fastconv info
    fastconv viz runs/lenet5-fashion-mnist/latest/checkpoint.npz   # PNGs + index.html
    fastconv predict runs/lenet5-fashion-mnist/latest shoe.png      # top-3 classes
    fastconv bench ...

``python -m fastconv`` is the same command. Errors are one line on stderr: exit status 2 for
a wrong command line, 1 for a failure while running (``--debug`` shows the traceback).
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time

__all__ = ["main", "build_parser"]

# Defaults of ``fastconv train``: chosen so that LeNet-5 on Fashion-MNIST reaches >= 91% test
# accuracy in 10 epochs (see the README's training section for the measured runs).
DEFAULTS = dict(model="lenet5", dataset="auto", epochs=10, batch_size=64, optimizer="sgd",
                momentum=0.9, weight_decay=5e-4, schedule="onecycle", augment="auto", seed=0)
DEFAULT_LR = {"sgd": 0.05, "adam": 3e-3, "adamw": 3e-3}


# Options that may differ when a run is resumed (how it runs, not what it computes), and
# those that describe this invocation only and are never taken from the checkpoint.
RESUME_MAY_CHANGE = {"epochs", "threads", "no_progress", "backend", "eval_batch_size", "data_dir",
                     "resume", "out", "checkpoint", "no_checkpoint", "overwrite", "debug", "lr_find"}
NOT_RESUMED = {"resume", "out", "checkpoint", "no_checkpoint", "overwrite", "debug", "lr_find"}
# What a run folder holds (--overwrite removes these before a new run).
RUN_FILES = ("checkpoint.npz", "history.csv", "history_steps.csv", "history.json", "history.png",
             "filters.png", "lr_find.csv", "lr_find.npz", "lr_find.png")


class UsageError(Exception):
    """A command line that cannot work: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: 'fastconv train: error: ... (see fastconv train --help)'."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _number(text, kind, test, wanted):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not test(value):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
    return value


def _positive_int(text):
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def _nonneg_float(text):
    return _number(text, float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")


def _positive_float(text):
    return _number(text, float, lambda v: v > 0 and math.isfinite(v), "a number > 0")


def _fraction(text):
    return _number(text, float, lambda v: 0 < v < 1, "a number between 0 and 1")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: X)" only where there is a default worth showing."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_train_parser(sub):
    from .data import DATASETS
    from .models import MODELS
    from .optim import OPTIMIZERS
    from .schedules import SCHEDULES
    p = sub.add_parser(
        "train", help="train a model (default: LeNet-5 on Fashion-MNIST)",
        formatter_class=_HelpFormatter,
        description="Train a model from fastconv.models with SGD or Adam, print one line per "
                    "epoch (with a progress bar showing loss, accuracy and images/s), and write "
                    "the history and a resumable checkpoint into the output folder after every "
                    "epoch. Without Fashion-MNIST installed, the default dataset is the small "
                    "subset of Fashion-MNIST embedded in the package.",
        epilog="Examples: `fastconv train` (LeNet-5, 10 epochs, >= 91% on the full Fashion-MNIST); "
               "`fastconv train --model resnet20 --epochs 30 --augment crop,flip`; "
               "`fastconv train --lr-find` (LR range test, then exit); "
               "`fastconv train --resume` after Ctrl-C (the latest run, with its own options). "
               "Each run writes into a new folder runs/MODEL-DATASET/001, 002, ... (latest points "
               "to the newest). The same --seed gives the same result (for any --threads).")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=DEFAULTS["model"], choices=MODELS, metavar="MODEL",
                   help=f"network to train, one of: {', '.join(MODELS)}")
    g.add_argument("--dataset", default=DEFAULTS["dataset"], choices=("auto",) + DATASETS,
                   help="'auto' = full Fashion-MNIST when found, else the embedded subset "
                        "(8,000 train / 2,000 test images shipped with fastconv)")
    g.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder holding the dataset files, searched before $FASTCONV_DATA and "
                        "/usr/share/datasets/<dataset>/ (apt-get install dataset-fashion-mnist)")
    g.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="use only the first N training images (quick trials)")
    g.add_argument("--limit-test", type=_positive_int, default=None, metavar="N",
                   help="use only the first N test images")
    g.add_argument("--augment", default=DEFAULTS["augment"], metavar="LIST",
                   help="comma list of crop (random crop after zero padding by size/8), "
                        "translate (random shift up to 10%%), flip (horizontal), rotate (up to 10 "
                        "degrees), zoom (0.9 to 1.1), or none; "
                        "'auto' = none for 28x28 grey images, crop,flip for 32x32 colour")
    g.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="dtype of weights and activations")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, default=DEFAULTS["epochs"],
                   help="total number of epochs (a resumed run continues up to this)")
    g.add_argument("--batch-size", type=_positive_int, default=DEFAULTS["batch_size"],
                   help="images per training step (the last, smaller batch is dropped)")
    g.add_argument("--optimizer", default=DEFAULTS["optimizer"], choices=sorted(OPTIMIZERS),
                   help="sgd (with --momentum, --nesterov), adam, or adamw (decoupled weight decay)")
    g.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate; the peak LR for onecycle, the start LR for the others "
                        f"(default: {DEFAULT_LR['sgd']} for sgd, {DEFAULT_LR['adam']} for adam/adamw)")
    g.add_argument("--momentum", type=_nonneg_float, default=DEFAULTS["momentum"],
                   help="SGD momentum")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                   help="Nesterov momentum for SGD")
    g.add_argument("--weight-decay", type=_nonneg_float, default=DEFAULTS["weight_decay"],
                   help="L2 penalty (sgd, adam) or decoupled decay (adamw)")
    g.add_argument("--schedule", default=DEFAULTS["schedule"], choices=SCHEDULES,
                   help="LR schedule, stepped every batch: constant; step (x gamma every "
                        "--step-size epochs); cosine (to --min-lr, after --warmup-epochs); "
                        "restarts (SGDR: cosine restarted every --cycle-len epochs, cycles "
                        "--cycle-mult times longer each time); onecycle (up to --lr for "
                        "--pct-start of the run, then down)")
    g.add_argument("--step-size", type=_positive_int, default=None, metavar="EPOCHS",
                   help="step schedule: epochs between LR drops (default: epochs // 3)")
    g.add_argument("--gamma", type=_nonneg_float, default=0.1, help="step schedule: LR factor")
    g.add_argument("--min-lr", type=_nonneg_float, default=0.0,
                   help="cosine and restarts: the lowest LR")
    g.add_argument("--warmup-epochs", type=_nonneg_float, default=0.0,
                   help="cosine: linear warm-up length")
    g.add_argument("--cycle-len", type=_nonneg_float, default=1.0, metavar="EPOCHS",
                   help="restarts: length of the first cycle")
    g.add_argument("--cycle-mult", type=_positive_int, default=1,
                   help="restarts: each cycle is this many times longer than the previous")
    g.add_argument("--pct-start", type=_fraction, default=0.3,
                   help="onecycle: fraction of the run spent raising the LR")
    g.add_argument("--lr-find", action="store_true",
                   help="run the LR range test instead of training: print and save loss vs LR "
                        "(OUT/lr_find.csv, .npz, .png) with two suggested LRs, then exit")

    g = p.add_argument_group("run")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for the kernels and BLAS (default: $OMP_NUM_THREADS or all cores); "
                        "results are identical for any count. On a busy machine fewer can be "
                        "faster: compare the img/s of --threads 1 and 2")
    g.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seeds the weights, the shuffling, augmentation and dropout")
    g.add_argument("--backend", default=None, choices=("fast", "reference"),
                   help="kernels: fast (Cython/OpenMP) or reference (NumPy); default: fastconv's")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output folder for checkpoint.npz, history.csv/json and lr_find.* "
                        "(default: a new folder runs/MODEL-DATASET/NNN for every run, "
                        "runs/MODEL-DATASET/latest pointing to the newest)")
    g.add_argument("--overwrite", action="store_true",
                   help="allow --out or --checkpoint to name a folder or file of an earlier run "
                        "(its files are replaced); without it such a run is refused")
    g.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="checkpoint file, rewritten atomically after each epoch "
                        "(default: OUT/checkpoint.npz)")
    g.add_argument("--no-checkpoint", action="store_true", help="do not write checkpoints")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="continue a run with the options it was started with (PATH: its "
                        "checkpoint or folder; no PATH: --checkpoint or OUT/checkpoint.npz when "
                        "given, else the newest run under runs/, of --model when given). Only "
                        "--epochs and how it runs (--threads, --backend, ...) may change")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    g.add_argument("--eval-batch-size", type=_positive_int, default=1000,
                   help="batch size for evaluating on the test set")
    g.add_argument("--sync-batchnorm", action="store_true",
                   help="under mpirun: BatchNorm statistics of the global batch, not of each "
                        "process's shard (then P processes compute what one process computes)")
    _add_finetune_args(p)
    _add_debug(g)
    p.set_defaults(func=cmd_train, parser=p)
    return p


# --- fine-tuning options of `fastconv train` (--init, --new-head, --freeze, --lr-groups) ----

def _add_finetune_args(p):
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--init", default=None, metavar="CKPT",
                   help="start from this checkpoint's weights (a fresh optimiser and epoch 0); "
                        "the head (last layer with parameters) is replaced when the number of "
                        "classes differs; the rest must fit the model")
    g.add_argument("--new-head", action="store_true",
                   help="with --init: start the head from scratch even when its shape fits "
                        "(new classes)")
    g.add_argument("--freeze", nargs="?", const="body", default=None, metavar="LAYERS",
                   help="train only part of the model: 'body' (no value) freezes everything but "
                        "the head; or a comma list of layer names (dotted, e.g. conv1,conv2) to "
                        "freeze. Frozen layers get no gradient and no update")
    g.add_argument("--lr-groups", default=None, metavar="LRS",
                   help="differential learning rates, earliest layers first, e.g. "
                        "0.001,0.01,0.1: the model's top-level layers are split into that many "
                        "groups; the schedule scales them all (replaces --lr)")


def _finetune(args, model, say):
    """Apply --init, --freeze and --lr-groups to ``model``; returns (params for the optimiser,
    reference lr or None). A checkpoint that does not fit raises CheckpointError (exit status 1);
    a --freeze or --lr-groups that does not fit the model raises UsageError (exit status 2)."""
    from .optim import param_groups
    from .train import CheckpointError, load_pretrained
    try:
        if args.init:
            load_pretrained(args.init, model, new_head=args.new_head, log=say)
        if args.freeze == "body":
            head = model.head_layer()
            model.freeze()
            model.unfreeze(head)
            say(f"  frozen: all but the head {head!r}")
        elif args.freeze:
            names = [n.strip() for n in args.freeze.split(",") if n.strip()]
            model.freeze(*names)
            say(f"  frozen: {', '.join(names)}")
    except CheckpointError as exc:
        raise CheckpointError(f"--init: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--freeze: {exc}") from exc
    if not model.trainable_parameters():
        raise UsageError(f"--freeze {args.freeze}: every layer is frozen; nothing would train")
    if not args.lr_groups:
        return model.parameters(), None
    try:
        lrs = [float(v) for v in args.lr_groups.split(",")]
        if not lrs or min(lrs) < 0 or max(lrs) <= 0:
            raise ValueError(f"need positive learning rates, got {args.lr_groups!r}")
        groups = param_groups(model, lrs)
    except ValueError as exc:
        raise UsageError(f"--lr-groups: {exc}") from exc
    say("  layer groups: " + "; ".join(f"{model.layer_groups(len(lrs))[i]} lr {lr:g}"
                                       for i, lr in enumerate(lrs)))
    return groups, max(lrs)


def _add_debug(parser):
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")


def _resolve_dataset(args, say):
    from .data import DatasetNotFoundError, load_dataset, search_path
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data-dir {args.data_dir}: no such folder")
    name = args.dataset
    if name == "auto":
        if args.data_dir is not None:      # a folder was named: use it or fail, never the subset
            return load_dataset("fashion-mnist", args.data_dir)
        try:
            return load_dataset("fashion-mnist", args.data_dir)
        except DatasetNotFoundError:
            tried = ", ".join(str(d) for d in search_path("fashion-mnist", args.data_dir))
            say(f"Fashion-MNIST not found (searched {tried}).\n"
                "Training on the EMBEDDED SUBSET of Fashion-MNIST shipped with fastconv "
                "(8,000 train / 2,000 test images). For the full data: "
                "apt-get install dataset-fashion-mnist, or --data-dir DIR.")
            return load_dataset("fashion-mnist-subset")
    return load_dataset(name, args.data_dir)


def _given_options(args):
    """The destinations of the options written on this command line (not left at defaults)."""
    parser = args.parser
    argv = list(getattr(args, "argv", None) or [])
    argv = argv[argv.index(args.command) + 1:] if args.command in argv else argv
    actions = [a for a in parser._actions if a.dest != "help"]
    defaults = [a.default for a in actions]
    try:
        for a in actions:
            a.default = argparse.SUPPRESS
        given, _ = parser.parse_known_args(argv)
    finally:
        for a, d in zip(actions, defaults):
            a.default = d
    return set(vars(given)) - set(parser._defaults)


def _train_options(args):
    """The values of every ``fastconv train`` option, as stored in the checkpoint's meta."""
    return {a.dest: getattr(args, a.dest) for a in args.parser._actions
            if a.dest not in ("help", "debug") and hasattr(args, a.dest)}


def _find_resume(args, given):
    """The checkpoint that --resume continues."""
    from .train import latest_checkpoint
    if args.resume != "auto":
        path = args.resume
        if os.path.isdir(path):
            path = os.path.join(path, "checkpoint.npz")
    elif args.checkpoint:
        path = args.checkpoint
    elif args.out:
        path = os.path.join(args.out, "checkpoint.npz")
    else:
        prefix = f"{args.model}-" if "model" in given else ""
        path = latest_checkpoint("runs", prefix)
        if path is None:
            raise UsageError(f"--resume: no checkpoint in runs/{prefix or '*-'}*/NNN/ to resume; "
                             f"give the checkpoint: --resume PATH")
    if not os.path.isfile(path):
        raise UsageError(f"--resume: no checkpoint at {path}")
    return path


def _resume_options(args, given, path, say):
    """Take the resumed run's options from its checkpoint; an option given again with another
    value is an error (only RESUME_MAY_CHANGE may change)."""
    from .train import read_checkpoint
    meta = read_checkpoint(path)["meta"].get("meta") or {}
    saved = meta.get("options")
    if saved is None:           # a checkpoint written before options were stored
        for key in ("model", "dataset_resolved", "optimizer", "seed", "dtype"):
            mine = getattr(args, key.replace("_resolved", ""))
            if key in meta and meta[key] != mine and not (key == "dataset_resolved" and mine == "auto"):
                raise UsageError(f"the checkpoint {path} was made with {key}={meta[key]!r}, this run "
                                 f"has {mine!r}; give the same options to resume")
        return args
    resolved = {"dataset": meta.get("dataset_resolved"), "lr": meta.get("lr_resolved"),
                "augment": meta.get("augment_resolved")}
    for dest in sorted(given - RESUME_MAY_CHANGE):
        mine = json.loads(json.dumps(getattr(args, dest)))
        if dest in saved and mine != saved[dest] and mine != resolved.get(dest):
            flag = "--" + dest.replace("_", "-")
            theirs = saved[dest] if saved[dest] is not None else resolved.get(dest)
            raise UsageError(f"{flag} {getattr(args, dest)} conflicts with the run being resumed "
                             f"({dest}={theirs!r} in {path}); leave it out to resume with the "
                             f"run's own options, or start a new run without --resume")
    for dest, value in saved.items():
        if dest not in given and dest not in NOT_RESUMED and hasattr(args, dest):
            setattr(args, dest, value)
    if "dataset" not in given and resolved["dataset"]:
        args.dataset = resolved["dataset"]      # 'auto' stays what it found then
    say(f"resuming {path} with the options it was started with")
    return args


def _prepare_output(args, ds_name):
    """(out folder, checkpoint path or None) of a new run; refuses to overwrite a run."""
    from .train import new_run_folder
    if args.out is None:
        out = new_run_folder(os.path.join("runs", f"{args.model}-{ds_name}"))
    else:
        out = args.out
    checkpoint = None if args.no_checkpoint else (args.checkpoint or os.path.join(out, "checkpoint.npz"))
    old = [os.path.join(out, f) for f in RUN_FILES if os.path.isfile(os.path.join(out, f))]
    if checkpoint and os.path.isfile(checkpoint) and checkpoint not in old:
        old.append(checkpoint)
    if old and not args.overwrite:
        raise UsageError(f"{out} already holds a run ({', '.join(os.path.basename(f) for f in old)}); "
                         f"give --resume to continue it, --overwrite to replace it, or leave out "
                         f"--out for a new folder")
    for path in old:
        os.remove(path)
    os.makedirs(out, exist_ok=True)
    return out, checkpoint


def _load_warning(threads, say):
    """One line when other programs keep the cores busy and --threads was not given."""
    from .benchmark.environment import busy_cores_warning
    text = busy_cores_warning()
    if text and threads > 1:
        say(f"note: {text}; {threads} threads may then run slower than fewer: compare the img/s "
            f"of --threads 1 and --threads {threads}")


def cmd_train(args):
    import numpy as np

    import fastconv
    from . import distributed
    from .data import DataLoader, Normalize, make_augmentation
    from .models import get_model
    from .optim import make_optimizer
    from .predict import data_info
    from .schedules import lr_find, make_schedule
    from .train import fit, write_history

    mpi = _mpi_world()     # under mpirun: one model, trained data-parallel by every process
    root = mpi is None or mpi.Get_rank() == 0

    def say(msg):
        if root:    # one log for the whole job
            print(msg, flush=True)

    given = _given_options(args)
    resume = None
    if args.resume is not None:
        if args.lr_find:
            raise UsageError("--lr-find starts a new run; it cannot be combined with --resume")
        resume = _find_resume(args, given)
        args = _resume_options(args, given, resume, say)
    ds = _resolve_dataset(args, say)
    if args.limit or args.limit_test:
        ds = ds.limit(args.limit, args.limit_test)
    C, H, W = ds.image_shape
    augment_spec = args.augment
    if augment_spec == "auto":
        augment_spec = "none" if (C == 1 and H <= 28) else "crop,flip"
    try:
        augment = make_augmentation(augment_spec, H)
    except ValueError as exc:
        raise UsageError(f"--augment: {exc}") from None
    if resume is not None:
        out = args.out or os.path.dirname(resume) or "."
        checkpoint = None if args.no_checkpoint else (args.checkpoint or resume)
    elif root:
        out, checkpoint = _prepare_output(args, ds.name)
    else:               # under mpirun only the first process writes the run's files
        out, checkpoint = None, None
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    dtype = np.dtype(args.dtype)
    meta = {k: v for k, v in vars(args).items() if k not in ("func", "parser", "argv")}
    meta.update(dataset_resolved=ds.name, lr_resolved=lr, augment_resolved=augment_spec,
                options=_train_options(args), data_info=data_info(ds))   # data_info: predict

    n_threads = args.threads or (mpi and distributed.threads_per_rank(mpi))
    threads = fastconv.num_threads(n_threads) if n_threads else contextlib.nullcontext()
    backend = fastconv.use_backend(args.backend) if args.backend else contextlib.nullcontext()
    with threads, backend:
        model = get_model(args.model, in_channels=C, num_classes=ds.num_classes, input_size=H,
                          dtype=dtype, seed=args.seed)
        train_loader = DataLoader(ds.x_train, ds.y_train, args.batch_size, shuffle=True,
                                  seed=args.seed, drop_last=len(ds.y_train) > args.batch_size,
                                  augment=augment, normalize=Normalize(ds.mean, ds.std), dtype=dtype)
        test_loader = DataLoader(ds.x_test, ds.y_test, args.eval_batch_size,
                                 normalize=Normalize(ds.mean, ds.std), dtype=dtype)
        tuned = _finetune(args, model, say)
        params, lr = tuned[0], (tuned[1] if tuned[1] is not None else lr)
        optimizer = make_optimizer(args.optimizer, params, lr, momentum=args.momentum,
                                   nesterov=args.nesterov and args.optimizer == "sgd" and args.momentum > 0,
                                   weight_decay=args.weight_decay)
        if mpi is not None:
            if args.lr_find:
                raise UsageError("--lr-find runs in one process, not under mpirun")
            dp = distributed.DataParallel(model, mpi, sync_batchnorm=args.sync_batchnorm)
            try:
                train_loader, test_loader = dp.shard(train_loader), dp.shard(test_loader)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            optimizer = dp.distribute(optimizer)
            say(f"data-parallel: {distributed.mpi_description(mpi)}; "
                f"BatchNorm statistics {'of the global batch' if args.sync_batchnorm else 'per process'}")
        say(f"fastconv train: {args.model} ({model.num_parameters():,} parameters) on {ds.name} "
            f"[{ds.source}]: {len(ds.y_train):,} train / {len(ds.y_test):,} test images {C}x{H}x{W}")
        say(f"  {optimizer!r}, schedule {args.schedule}, batch {args.batch_size}, "
            f"augment {augment_spec}, seed {args.seed}, threads {fastconv.get_num_threads()}, "
            f"backend {fastconv.get_backend()}, {args.epochs} epochs")
        say(f"  output folder {out}")
        if not args.threads:
            _load_warning(fastconv.get_num_threads(), say)
        if args.lr_find:
            lr_find(model, train_loader, optimizer, start_lr=1e-6,
                    num_steps=min(300, 4 * len(train_loader)), out=os.path.join(out, "lr_find"))
            return 0
        schedule = make_schedule(args.schedule, lr, args.epochs, len(train_loader),
                                 step_size=args.step_size, gamma=args.gamma, min_lr=args.min_lr,
                                 warmup_epochs=args.warmup_epochs, cycle_len=args.cycle_len,
                                 cycle_mult=args.cycle_mult, pct_start=args.pct_start)
        start = time.perf_counter()
        stop_all = distributed.stop_all_on_error(mpi) if mpi else contextlib.nullcontext()
        try:
            with stop_all:      # a failing process ends the whole job, with its message
                history = fit(model, train_loader, optimizer, args.epochs, schedule,
                              test_loader=test_loader, checkpoint=checkpoint if root else None,
                              resume=resume, progress=root and not args.no_progress, log=say,
                              meta=meta, on_epoch_end=lambda h: root and write_history(h, out))
        except KeyboardInterrupt:
            say("\ninterrupted." + (f" The checkpoint {checkpoint} holds the last finished epoch; "
                                    f"continue with: fastconv train --resume {out}"
                                    if checkpoint and os.path.isfile(checkpoint) else ""))
            return 130
    if not root:
        return 0
    from .viz import save_training_figures      # [] without matplotlib: never fails training
    for path in save_training_figures(model, history, out):
        say(f"wrote {path}")
    if history["test_acc"]:
        minutes = (time.perf_counter() - start) / 60
        say(f"done: test accuracy {history['test_acc'][-1]:.4f} after {history['epoch'][-1]} epochs "
            f"({minutes:.2f} min this run, {np.mean(history['seconds']) / 60:.2f} min/epoch); "
            f"history in {out}" + (f", checkpoint {checkpoint}" if checkpoint else ""))
        if checkpoint:
            say(f"next: fastconv viz {out}   (pictures of what the network learned)")
    return 0


def _mpi_world():
    """COMM_WORLD when launched by mpirun/mpiexec (None otherwise); exits with a clear
    message when launched as several processes without mpi4py (each would train alone)."""
    from . import distributed
    if not distributed.launched_by_mpi():
        return None
    if not distributed.available():
        n = next((os.environ[v] for v in distributed._SIZE_VARS if os.environ.get(v)), "1")
        if n != "1":
            sys.exit(f"error: launched as {n} MPI processes, but mpi4py is not installed: "
                     f"pip install \"fastconv[mpi]\" (or run without mpirun)")
        return None
    return distributed.world()


def cmd_predict(args):
    """Classify image files with a trained checkpoint: the top-k classes of each, with their
    probabilities. Files that fail are reported one line each (the others are still
    classified) and make the exit status 1."""
    import fastconv
    from .predict import ImageError, load_classifier
    threads = fastconv.num_threads(args.threads) if args.threads else contextlib.nullcontext()
    with threads:
        clf = load_classifier(args.checkpoint, data_dir=args.data_dir)
        results, failed = [], 0
        for path in args.images:
            try:
                x = clf.load_image(path, invert=args.invert)
            except ImageError as exc:
                print(f"fastconv predict: error: {exc}", file=sys.stderr)
                results.append({"file": path, "error": str(exc)})
                failed += 1
                continue
            top = clf.top_k(x, args.top_k)
            results.append({"file": path, "top": [{"class": c, "probability": p} for c, p in top]})
            if not args.json:
                print(f"{path}: " + ", ".join(f"{c} {p:.3f}" for c, p in top), flush=True)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "model": clf.name,
                          "classes": list(clf.classes), "results": results}, indent=1))
    return 1 if failed else 0


def _add_predict_parser(sub):
    p = sub.add_parser(
        "predict", help="classify your own images (PNG, JPEG, .npy) with a trained checkpoint",
        formatter_class=_HelpFormatter,
        description="Print the most likely classes of each image, with their probabilities. "
                    "Each image is converted to the model's channels (grey or RGB), resized to "
                    "its input size and normalised as its training data was (the checkpoint "
                    "says how), then run through the fused inference path.",
        epilog="Example: `fastconv predict runs/lenet5-fashion-mnist/latest shoe.png --top-k 3`. "
               "Fashion-MNIST and MNIST images are light objects on black: give --invert for "
               "photos of dark objects on a light background.")
    p.add_argument("checkpoint", help="a checkpoint written by `fastconv train`, or its run folder")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files: PNG, JPEG (anything Pillow reads) or .npy arrays "
                        "((H, W), (C, H, W) or (H, W, C); uint8, or floats on [0, 1])")
    p.add_argument("--top-k", type=_positive_int, default=3, metavar="K",
                   help="how many classes to print per image (all when K exceeds them)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead")
    p.add_argument("--invert", action="store_true",
                   help="invert the pixels (v -> 1 - v) before normalising")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where the run's dataset is, for a checkpoint that does not store its "
                        "normalisation (written by an older fastconv)")
    p.add_argument("--threads", type=_positive_int, default=None, help="threads for the kernels")
    _add_debug(p)
    p.set_defaults(func=cmd_predict)


def cmd_summary(args):
    import fastconv
    from .models import get_model
    kwargs = {}
    if args.input_shape:
        C, H, W = args.input_shape
        kwargs = dict(in_channels=C, input_size=H)
        if H != W:
            raise UsageError(f"--input-shape: the models take square images, got {H}x{W}")
    else:
        C, H, W = 1, 28, 28
    model = get_model(args.model, num_classes=args.num_classes, seed=0, **kwargs)
    fastconv.summary(model, (args.batch, C, H, W))
    return 0


def cmd_info(args):
    import fastconv
    report = fastconv.info()
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    return 0


def _bench_module():
    """fastconv.benchmark.cli, imported only for `fastconv bench` (it may pull in heavy modules)."""
    import importlib
    return importlib.import_module("fastconv.benchmark.cli")


def build_parser(with_bench=False):
    """The argument parser; the bench options are added only when ``with_bench`` (lazy import)."""
    from . import __version__
    from .models import MODELS
    parser = _Parser(
        prog="fastconv", description="fastconv: an educational CNN engine (NumPy references side "
                                     "by side with fast Cython/OpenMP kernels).")
    parser.add_argument("--version", action="version", version=f"fastconv {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train_parser(sub)
    _add_predict_parser(sub)

    p = sub.add_parser("summary", help="print a model's layers, shapes, parameters, "
                                       "multiply-adds and receptive fields",
                       description="Keras-style table of a model (fastconv.summary).")
    p.add_argument("model", choices=MODELS, metavar="MODEL", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--input-shape", type=_positive_int, nargs=3, metavar=("C", "H", "W"),
                   default=None, help="input image shape (default 1 28 28)")
    p.add_argument("--num-classes", type=_positive_int, default=10, help="number of classes")
    p.add_argument("--batch", type=_positive_int, default=1,
                   help="batch size N the multiply-adds are counted for")
    _add_debug(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("info", help="version, kernels built, OpenMP, threads, BLAS, compiler flags",
                       description="Print fastconv.info(): what was built and how it will run.")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    _add_debug(p)
    p.set_defaults(func=cmd_info)

    from .viz.cli import configure_parser as configure_viz   # no matplotlib import until run
    _add_debug(configure_viz(sub.add_parser("viz", help="draw a trained model's filters, feature "
                                                        "maps, receptive field, confusion matrix "
                                                        "and curves into PNGs and an offline "
                                                        "index.html")))

    p = sub.add_parser("bench", help="benchmark the kernels and models (fastconv.benchmark)",
                       description="Benchmarks: see `fastconv bench --help`.")
    if with_bench:
        module = _bench_module()
        module.configure_parser(p)
        p.set_defaults(func=module.run)
        _add_debug(p)
    return parser


# Failures of a run (files, data, numerics, kernels that did not build) are reported in one
# line; anything else is a bug and keeps its traceback.
RUNTIME_ERRORS = (OSError, ValueError, FloatingPointError, ImportError, MemoryError, RuntimeError)


def main(argv=None):
    """Entry point of the ``fastconv`` console script; returns the exit status: 0, 1 when the
    command failed, 2 for a wrong command line, 130 after Ctrl-C."""
    from . import tune_openmp_waiting
    tune_openmp_waiting(warn=False)  # before any kernel loads: OpenMP reads it once, at start
    argv = list(sys.argv[1:] if argv is None else argv)
    with_bench = "bench" in argv[:2]
    try:
        parser = build_parser(with_bench)
    except ImportError as exc:
        if not with_bench:
            raise
        print(f"fastconv bench is not available: the benchmark module fastconv.benchmark.cli "
              f"could not be imported ({exc}).", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.argv = argv
    prog = f"fastconv {args.command}"
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        if args.debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`fastconv ... | head`): stop quietly, as other tools do, and
        # send what Python still flushes at exit nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except RUNTIME_ERRORS as exc:
        if args.debug:
            raise
        print(f"{prog}: error: {exc}" + ("" if "--debug" in str(exc) else
                                        " (--debug shows the traceback)"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
