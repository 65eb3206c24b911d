"""``fastconv viz CHECKPOINT``: the pictures of a trained model, as PNGs and an offline page.

    fastconv train --epochs 2 --out runs/lenet          # writes runs/lenet/checkpoint.npz
    fastconv viz runs/lenet/checkpoint.npz              # -> runs/lenet/viz/index.html
    python -m fastconv.multitask --out runs/boxes       # the class + box model
    fastconv viz runs/boxes                             # its predicted boxes and test IoU

The figures use the run's own test data (the dataset, folder and --limit-test stored in the
checkpoint by ``fastconv train``) unless --dataset names another; the page and the titles
say which data they show.

``configure_parser(parser)`` adds the options to a (sub)parser and ``run(args)`` does the
work and returns the exit status, so fastconv.cli only has to hook them in.
"""
import argparse
import contextlib
import os
import sys

__all__ = ["configure_parser", "run"]


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonneg_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def configure_parser(p):
    """Add the ``fastconv viz`` arguments to ``p`` and set ``func=run``."""
    p.description = ("Draw a trained model's first-layer filters, feature maps of a test image, "
                     "a receptive field, its confusion matrix and (from the checkpoint) its "
                     "training curves into a folder of PNGs, with an index.html that explains "
                     "each picture; for the class + box model of python -m fastconv.multitask, "
                     "its predicted boxes and test IoU. The page works offline. Needs matplotlib "
                     "(pip install 'fastconv[viz]').")
    p.add_argument("checkpoint", help="a checkpoint written by `fastconv train` (or by "
                                      "python -m fastconv.multitask), or its run folder "
                                      "(e.g. runs/lenet5-fashion-mnist/latest)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for the PNGs and index.html (default: viz/ next to the checkpoint)")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="the model's name (default: the one saved in the checkpoint by fastconv train)")
    p.add_argument("--dataset", default=None,
                   help="test images to draw and score: fashion-mnist-subset (embedded), "
                        "fashion-mnist, mnist or cifar10; it must match the model's input "
                        "(channels, size, classes). Default: the data the run was trained and "
                        "tested on (the embedded subset when that is not found here)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="folder holding the dataset files")
    p.add_argument("--image", type=_nonneg_int, default=0, metavar="INDEX",
                   help="index of the test image for the feature maps and the receptive field")
    p.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                   help="layers whose feature maps to draw, by name (see `fastconv summary`) or "
                        "index (default: the activations after the first and the last conv)")
    p.add_argument("--rf-layer", default=None, metavar="LAYER",
                   help="layer whose receptive field to draw (default: the last one with a "
                        "spatial output)")
    p.add_argument("--limit-test", type=_positive_int, default=None, metavar="N",
                   help="test images scored for the confusion matrix (default: those the run "
                        "was tested on)")
    p.add_argument("--lr-find", default=None, metavar="FILE.npz",
                   help="an LR range test saved by `fastconv train --lr-find` (default: "
                        "lr_find.npz next to the checkpoint, when present)")
    p.add_argument("--threads", type=_positive_int, default=None, help="threads for the kernels")
    p.add_argument("--dpi", type=_positive_int, default=100, help="resolution of the PNGs")
    p.set_defaults(func=run)
    return p


def _layer_arg(text):
    """'3' or '-1' -> an index; anything else is a layer name."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return text


def run(args):
    """Run ``fastconv viz``; returns 0, or 2 with a message on stderr."""
    import numpy as np

    import fastconv
    from ..data import DatasetNotFoundError, Normalize, load_dataset
    from ..models import MODELS, get_model
    from ..multitask import BOX_MODEL
    from ..schedules import LRFinderResult
    from ..train import CheckpointError, load_checkpoint, read_checkpoint
    from . import _mpl
    from .report import write_report

    def fail(msg, status=2):
        """One line on stderr; status 2 for a wrong command line, 1 for a file that fails."""
        print(f"fastconv viz: error: {msg}", file=sys.stderr)
        return status

    if not _mpl.available():
        return fail(_mpl.MISSING)
    if os.path.isdir(args.checkpoint):
        args.checkpoint = os.path.join(args.checkpoint, "checkpoint.npz")
    try:
        ck = read_checkpoint(args.checkpoint)
    except (CheckpointError, OSError) as exc:
        return fail(str(exc), status=1)
    meta = ck["meta"].get("meta") or {}
    model_name = args.model or meta.get("model")
    if not (model_name and isinstance(model_name, str)):
        return fail(f"the checkpoint {args.checkpoint} does not say which model it holds; "
                    f"give --model (one of {', '.join(MODELS)})")
    options = meta.get("options") or {}
    run_data = meta.get("dataset_resolved")
    limit_test = args.limit_test
    whose = "chosen with --dataset"
    try:
        if args.dataset is not None or not run_data:
            ds = load_dataset(args.dataset or "fashion-mnist-subset", args.data_dir)
            whose = "chosen with --dataset" if args.dataset else \
                "the embedded subset: the checkpoint does not say which data the run used"
        else:
            try:
                ds = load_dataset(run_data, args.data_dir or options.get("data_dir"))
                whose = "the run's own test data"
                limit_test = limit_test or options.get("limit_test")
            except DatasetNotFoundError:
                ds = load_dataset("fashion-mnist-subset")
                whose = (f"the embedded subset: the run's data ({run_data}) is not found here, "
                         f"give --data-dir")
                print(f"fastconv viz: note: the run was tested on {run_data}, which is not found "
                      f"here; showing the embedded subset instead (--data-dir DIR to use "
                      f"{run_data})", file=sys.stderr)
    except (DatasetNotFoundError, ValueError) as exc:
        return fail(str(exc))
    if limit_test:
        ds = ds.limit(None, limit_test)
    C, H, W = ds.image_shape
    first = next(iter(ck["model"].values()), None)
    try:
        dtype = np.dtype(meta.get("dtype") or (first.dtype if first is not None else np.float32))
    except TypeError:
        return fail(f"the checkpoint {args.checkpoint} names an unknown dtype {meta['dtype']!r}")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "viz")
    if model_name == BOX_MODEL:
        return _run_boxes(args, ds, meta, dtype, out, whose, fail)

    lr = None
    lr_path = args.lr_find or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                           "lr_find.npz")
    if os.path.isfile(lr_path):
        try:
            with np.load(lr_path, allow_pickle=False) as f:
                lr = LRFinderResult(f["lrs"], f["losses"],
                                    f["smoothed"] if "smoothed" in f.files else f["losses"])
        except (OSError, ValueError, KeyError) as exc:
            return fail(f"cannot read the LR range test {lr_path}: {exc}")
    elif args.lr_find:
        return fail(f"--lr-find: no file {args.lr_find}")

    threads = fastconv.num_threads(args.threads) if args.threads else contextlib.nullcontext()
    with threads:
        try:
            model = get_model(model_name, in_channels=C, num_classes=ds.num_classes,
                              input_size=H, dtype=dtype)
        except ValueError as exc:
            return fail(str(exc))
        try:
            epoch, history, _ = load_checkpoint(args.checkpoint, model)
        except CheckpointError as exc:
            return fail(f"{exc}. Is --dataset the one the model was trained on (images "
                        f"{C}x{H}x{W}, {ds.num_classes} classes)?")
        if args.image >= len(ds.y_test):
            return fail(f"--image {args.image}: the test set has {len(ds.y_test)} images")
        print(f"fastconv viz: {model_name} from {args.checkpoint} (epoch {epoch}) on "
              f"{ds.name} [{ds.source}] -> {out}", flush=True)
        info = [("model", model_name), ("checkpoint", f"{args.checkpoint} (after epoch {epoch})"),
                ("data shown", f"{ds.name}: {len(ds.y_test):,} test images {C}x{H}x{W} ({whose})")]
        if history.get("test_acc"):
            info.append(("test accuracy in training (last epoch)", f"{history['test_acc'][-1]:.4f}"))
        try:
            page = write_report(
                model, out, ds.x_test, ds.y_test, ds.classes, Normalize(ds.mean, ds.std),
                history=history, lr_find=lr, image_index=args.image,
                feature_layers=[_layer_arg(v) for v in args.layers] if args.layers else None,
                rf_layer=_layer_arg(args.rf_layer) if args.rf_layer is not None else None,
                limit=None, title=f"fastconv viz: {model_name} on {ds.name}", info=info,
                dpi=args.dpi, log=print, data_name=ds.name)
        except ValueError as exc:
            return fail(str(exc))
    print(f"open {page}")
    return 0


def _run_boxes(args, ds, meta, dtype, out, whose, fail):
    """The class + box model of ``python -m fastconv.multitask``: its predicted boxes on the
    test images and the test IoU (write_box_report)."""
    import numpy as np

    import fastconv
    from ..multitask import box_arrays, box_model, garment_boxes
    from ..train import CheckpointError, box_iou, load_checkpoint
    from .report import write_box_report

    C, H, W = ds.image_shape
    if args.image >= len(ds.y_test):
        return fail(f"--image {args.image}: the test set has {len(ds.y_test)} images")
    threads = fastconv.num_threads(args.threads) if args.threads else contextlib.nullcontext()
    with threads:
        model = box_model(ds.num_classes, input_size=H, dtype=dtype)
        try:
            epoch, history, _ = load_checkpoint(args.checkpoint, model)
        except CheckpointError as exc:
            return fail(f"{exc}. Is --dataset the one the model was trained on (images "
                        f"{C}x{H}x{W}, {ds.num_classes} classes)?")
        print(f"fastconv viz: the class + box model from {args.checkpoint} (epoch {epoch}) on "
              f"{ds.name} [{ds.source}] -> {out}", flush=True)
        inputs, targets = box_arrays(ds, ds.x_test, ds.y_test)
        mean_box = garment_boxes(ds.x_train).mean(axis=0)        # one box for every image
        info = [("model", "class + box (python -m fastconv.multitask)"),
                ("checkpoint", f"{args.checkpoint} (after epoch {epoch})"),
                ("data shown", f"{ds.name}: {len(ds.y_test):,} test images {C}x{H}x{W} ({whose})")]
        page = write_box_report(
            model, out, inputs, ds.x_test, ds.y_test, targets[1], ds.classes, history=history,
            image_index=args.image,
            baseline_iou=box_iou(np.broadcast_to(mean_box, targets[1].shape), targets[1]),
            title=f"fastconv viz: class + box model on {ds.name}", info=info, dpi=args.dpi,
            log=print, data_name=ds.name)
    print(f"open {page}")
    return 0


def main(argv=None):
    """``python -m fastconv.viz.cli``: the same command without the fastconv CLI around it."""
    parser = configure_parser(argparse.ArgumentParser(prog="fastconv viz"))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
