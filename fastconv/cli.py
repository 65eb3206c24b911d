"""The ``fastconv`` command: train, summary, info, viz, bench.

    fastconv train                                  # LeNet-5 on Fashion-MNIST (or the embedded subset)
    fastconv train --model resnet20 --epochs 30 --augment crop,flip
    fastconv train --resume                         # continue from OUT/checkpoint.npz
    fastconv summary resnet20 --input-shape 3 32 32
    fastconv info
    fastconv viz runs/lenet5-fashion-mnist/checkpoint.npz   # PNGs + index.html
    fastconv bench ...

``python -m fastconv`` is the same command.
"""
import argparse
import contextlib
import json
import os
import sys
import time

__all__ = ["main", "build_parser"]

# Defaults of ``fastconv train``: chosen so that LeNet-5 on Fashion-MNIST reaches >= 91% test
# accuracy in 10 epochs (see the README's training section for the measured runs).
DEFAULTS = dict(model="lenet5", dataset="auto", epochs=10, batch_size=64, optimizer="sgd",
                momentum=0.9, weight_decay=5e-4, schedule="onecycle", augment="auto", seed=0)
DEFAULT_LR = {"sgd": 0.05, "adam": 3e-3, "adamw": 3e-3}


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonneg_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


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
               "`fastconv train --resume` after Ctrl-C. The same --seed gives the same result "
               "(for any --threads).")
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
                        "translate (random shift up to 10%%), flip (horizontal), or none; "
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
    g.add_argument("--lr", type=_nonneg_float, default=None,
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
    g.add_argument("--pct-start", type=float, default=0.3,
                   help="onecycle: fraction of the run spent raising the LR")
    g.add_argument("--lr-find", action="store_true",
                   help="run the LR range test instead of training: print and save loss vs LR "
                        "(OUT/lr_find.csv, .npz, .png) with a suggested LR, then exit")

    g = p.add_argument_group("run")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for the kernels and BLAS (default: $OMP_NUM_THREADS or all cores); "
                        "results are identical for any count. On a busy machine 1 can be faster")
    g.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seeds the weights, the shuffling, augmentation and dropout")
    g.add_argument("--backend", default=None, choices=("fast", "reference"),
                   help="kernels: fast (Cython/OpenMP) or reference (NumPy); default: fastconv's")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output folder for checkpoint.npz, history.csv/json and lr_find.* "
                        "(default: runs/MODEL-DATASET)")
    g.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="checkpoint file, rewritten atomically after each epoch "
                        "(default: OUT/checkpoint.npz)")
    g.add_argument("--no-checkpoint", action="store_true", help="do not write checkpoints")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="continue from a checkpoint (no PATH: the --checkpoint file); the same "
                        "model, optimiser and seed must be given")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    g.add_argument("--eval-batch-size", type=_positive_int, default=1000,
                   help="batch size for evaluating on the test set")
    g.add_argument("--sync-batchnorm", action="store_true",
                   help="under mpirun: BatchNorm statistics of the global batch, not of each "
                        "process's shard (then P processes compute what one process computes)")
    p.set_defaults(func=cmd_train)
    return p


def _resolve_dataset(args, say):
    from .data import DatasetNotFoundError, load_dataset, search_path
    name = args.dataset
    if name == "auto":
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


def cmd_train(args):
    import numpy as np

    import fastconv
    from . import distributed
    from .data import DataLoader, Normalize, make_augmentation
    from .models import get_model
    from .optim import make_optimizer
    from .schedules import lr_find, make_schedule
    from .train import CheckpointError, fit, read_checkpoint, write_history

    mpi = _mpi_world()     # under mpirun: one model, trained data-parallel by every process
    root = mpi is None or mpi.Get_rank() == 0

    def say(msg):
        if root:    # one log for the whole job
            print(msg, flush=True)

    ds = _resolve_dataset(args, say)
    if args.limit or args.limit_test:
        ds = ds.limit(args.limit, args.limit_test)
    out = args.out or os.path.join("runs", f"{args.model}-{ds.name}")
    checkpoint = None if args.no_checkpoint else (args.checkpoint or os.path.join(out, "checkpoint.npz"))
    resume = None
    if args.resume is not None:
        resume = (args.checkpoint or os.path.join(out, "checkpoint.npz")) if args.resume == "auto" \
            else args.resume
        if not os.path.isfile(resume):
            say(f"error: --resume: no checkpoint at {resume}")
            return 2
    C, H, W = ds.image_shape
    augment_spec = args.augment
    if augment_spec == "auto":
        augment_spec = "none" if (C == 1 and H <= 28) else "crop,flip"
    try:
        augment = make_augmentation(augment_spec, H)
    except ValueError as exc:
        say(f"error: --augment: {exc}")
        return 2
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    dtype = np.dtype(args.dtype)
    meta = {k: v for k, v in vars(args).items() if k != "func"}
    meta.update(dataset_resolved=ds.name, lr_resolved=lr, augment_resolved=augment_spec)

    if resume is not None:
        try:
            saved = read_checkpoint(resume)["meta"].get("meta", {})
        except (CheckpointError, OSError) as exc:
            say(f"error: {exc}")
            return 2
        for key in ("model", "dataset_resolved", "optimizer", "seed", "dtype"):
            if key in saved and saved[key] != meta[key]:
                say(f"error: the checkpoint {resume} was made with {key}={saved[key]!r}, this run "
                    f"has {meta[key]!r}; give the same options to resume")
                return 2

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
        optimizer = make_optimizer(args.optimizer, model.parameters(), lr, momentum=args.momentum,
                                   nesterov=args.nesterov and args.optimizer == "sgd" and args.momentum > 0,
                                   weight_decay=args.weight_decay)
        if mpi is not None:
            if args.lr_find:
                say("error: --lr-find runs in one process, not under mpirun")
                return 2
            dp = distributed.DataParallel(model, mpi, sync_batchnorm=args.sync_batchnorm)
            try:
                train_loader, test_loader = dp.shard(train_loader), dp.shard(test_loader)
            except ValueError as exc:
                say(f"error: {exc}")
                return 2
            optimizer = dp.distribute(optimizer)
            say(f"data-parallel: {distributed.mpi_description(mpi)}; "
                f"BatchNorm statistics {'of the global batch' if args.sync_batchnorm else 'per process'}")
        say(f"fastconv train: {args.model} ({model.num_parameters():,} parameters) on {ds.name} "
            f"[{ds.source}]: {len(ds.y_train):,} train / {len(ds.y_test):,} test images {C}x{H}x{W}")
        say(f"  {optimizer!r}, schedule {args.schedule}, batch {args.batch_size}, "
            f"augment {augment_spec}, seed {args.seed}, threads {fastconv.get_num_threads()}, "
            f"backend {fastconv.get_backend()}, {args.epochs} epochs")
        if args.lr_find:
            os.makedirs(out, exist_ok=True)
            lr_find(model, train_loader, optimizer, num_steps=min(200, 4 * len(train_loader)),
                    out=os.path.join(out, "lr_find"))
            return 0
        schedule = make_schedule(args.schedule, lr, args.epochs, len(train_loader),
                                 step_size=args.step_size, gamma=args.gamma, min_lr=args.min_lr,
                                 warmup_epochs=args.warmup_epochs, cycle_len=args.cycle_len,
                                 cycle_mult=args.cycle_mult, pct_start=args.pct_start)
        os.makedirs(out, exist_ok=True)
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
                                    f"continue with the same options and --resume."
                                    if checkpoint and os.path.isfile(checkpoint) else ""))
            return 130
        except CheckpointError as exc:
            say(f"error: {exc}")
            return 2
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


def cmd_summary(args):
    import fastconv
    from .models import get_model
    kwargs = {}
    if args.input_shape:
        C, H, W = args.input_shape
        kwargs = dict(in_channels=C, input_size=H)
        if H != W:
            print(f"error: --input-shape: the models take square images, got {H}x{W}")
            return 2
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
    parser = argparse.ArgumentParser(
        prog="fastconv", description="fastconv: an educational CNN engine (NumPy references side "
                                     "by side with fast Cython/OpenMP kernels).")
    parser.add_argument("--version", action="version", version=f"fastconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train_parser(sub)

    p = sub.add_parser("summary", help="print a model's layers, shapes, parameters, "
                                       "multiply-adds and receptive fields",
                       description="Keras-style table of a model (fastconv.summary).")
    p.add_argument("model", choices=MODELS, metavar="MODEL", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--input-shape", type=_positive_int, nargs=3, metavar=("C", "H", "W"),
                   default=None, help="input image shape (default 1 28 28)")
    p.add_argument("--num-classes", type=_positive_int, default=10, help="number of classes")
    p.add_argument("--batch", type=_positive_int, default=1,
                   help="batch size N the multiply-adds are counted for")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("info", help="version, kernels built, OpenMP, threads, BLAS, compiler flags",
                       description="Print fastconv.info(): what was built and how it will run.")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    p.set_defaults(func=cmd_info)

    from .viz.cli import configure_parser as configure_viz   # no matplotlib import until run
    configure_viz(sub.add_parser("viz", help="draw a trained model's filters, feature maps, "
                                             "receptive field, confusion matrix and curves "
                                             "into PNGs and an offline index.html"))

    p = sub.add_parser("bench", help="benchmark the kernels and models (fastconv.benchmark)",
                       description="Benchmarks: see `fastconv bench --help`.")
    if with_bench:
        module = _bench_module()
        module.configure_parser(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv=None):
    """Entry point of the ``fastconv`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with_bench = bool(argv) and argv[0] == "bench"
    try:
        parser = build_parser(with_bench)
    except ImportError as exc:
        if not with_bench:
            raise
        print(f"fastconv bench is not available: the benchmark module fastconv.benchmark.cli "
              f"could not be imported ({exc}).", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
