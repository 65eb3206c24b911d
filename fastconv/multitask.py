"""Several inputs and outputs: classify a garment AND draw its box, ``python -m fastconv.multitask``.

The notes' multi-input, multi-output model (the Fisheries example) on Fashion-MNIST:

* inputs: the image, and a side input of metadata — two statistics of the image (mean
  and standard deviation of its pixels), batch-normalised before they join the network;
* outputs: the class (10 logits, softmax cross-entropy) and the garment's bounding box
  (4 numbers, linear, mean squared error), from the image's non-zero pixels;
* the loss is ``1 * cross-entropy + w * MSE``; the notes weight the box loss by 0.001 for
  boxes of a 224-pixel image, whose squared errors are ~60 times those of our 28-pixel
  boxes, so the default here is ``w = 0.01``.

    image ─ conv body (LeNet-5 up to fc2) ─┐
                                           ├─ Concatenate ─┬─ Linear → class logits
    meta (2 stats) ─ BatchNorm1d ──────────┘               └─ Linear → box (x0, y0, x1, y1)

Data leakage (the notes' lesson): metadata can predict the label for reasons that will not
hold in use — in the Fisheries data the photo's size identified the boat, hence the fish.
Here the statistics come from the image itself, so they are also there at prediction time;
a column such as "which photographer" would lift the test score and fail on new data.
Metadata the network could compute from the image itself may also be redundant (the notes'
"redundant metadata").
"""
import argparse
import os
import sys
import time

import numpy as np

from . import nn
from .data import ArraysLoader, load_dataset
from .optim import SGD
from .schedules import OneCycleLR
from .train import accuracy, box_iou, evaluate_multi, fit_multi, save_checkpoint

__all__ = ["garment_boxes", "image_stats", "box_model", "box_arrays", "run_boxes_demo", "main",
           "BOX_MODEL"]

BOX_MODEL = "box_model"   # the model name in the demo's checkpoint (fastconv viz reads it)


def garment_boxes(images, threshold=0):
    """The bounding box of the pixels above ``threshold`` of each image, in pixels, as
    (x0, y0, x1, y1) with x1, y1 one past the last column and row (so the width is x1 - x0).

    images : (N, 1, H, W) or (N, H, W). Returns float32 (N, 4); an empty image gets (0,0,0,0).
    """
    x = np.asarray(images)
    x = x.reshape(x.shape[0], x.shape[-2], x.shape[-1]) > threshold
    rows, cols = x.any(axis=2), x.any(axis=1)                 # (N, H), (N, W)
    H, W = x.shape[1:]
    y0 = np.argmax(rows, axis=1)
    y1 = H - np.argmax(rows[:, ::-1], axis=1)
    x0 = np.argmax(cols, axis=1)
    x1 = W - np.argmax(cols[:, ::-1], axis=1)
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)
    boxes[~rows.any(axis=1)] = 0
    return boxes


def image_stats(images):
    """The metadata side input: mean and standard deviation of each image's pixels in [0, 1],
    (N, 2) float32."""
    x = np.asarray(images, np.float32).reshape(len(images), -1) / 255.0
    return np.stack([x.mean(axis=1), x.std(axis=1)], axis=1)


def box_model(num_classes=10, meta_features=2, input_size=28, seed=0, dtype=np.float32):
    """The two-input, two-output Graph drawn in the module docstring (outputs: "class", "box")."""
    from .models import lenet5
    lenet = lenet5(num_classes=num_classes, input_size=input_size, seed=seed, dtype=dtype)
    body, _ = lenet.split("fc3")          # conv1 ... fc2 + ReLU: 84 features
    rng = np.random.default_rng(seed)
    width = lenet.fc3.in_features + meta_features
    return nn.Graph(
        inputs=["image", "meta"],
        layers={
            "body": (body, "image"),
            "meta_bn": (nn.BatchNorm1d(meta_features, dtype=dtype), "meta"),
            "joined": (nn.Concatenate(), ["body", "meta_bn"]),
            "class": (nn.Linear(width, num_classes, dtype=dtype, rng=rng), "joined"),
            "box": (nn.Linear(width, 4, dtype=dtype, rng=rng), "joined"),
        },
        outputs=["class", "box"])


def box_arrays(ds, x, y):
    """The model's inputs [normalised images, image statistics] and targets [labels, boxes]
    for uint8 images ``x`` (N, 1, H, W) and labels ``y`` of dataset ``ds``."""
    images = ((x.astype(np.float32) / 255.0) - np.float32(ds.mean[0])) / np.float32(ds.std[0])
    return [images, image_stats(x)], [y, garment_boxes(x)]


def run_boxes_demo(ds, epochs=4, lr=0.05, box_weight=0.01, batch_size=64, seed=0, out=None,
                   log=print, data_dir=None):
    """Train :func:`box_model` on ``ds`` and return (model, results): test accuracy, mean
    box IoU, minutes; with ``out``, also a picture of predicted boxes (``out/boxes.png``) and
    the checkpoint ``out/checkpoint.npz``, which ``fastconv viz`` draws (the run's test data:
    ``ds``'s name, found in ``data_dir``)."""
    start = time.perf_counter()
    inputs, targets = box_arrays(ds, ds.x_train, ds.y_train)
    t_inputs, t_targets = box_arrays(ds, ds.x_test, ds.y_test)
    train = ArraysLoader(inputs, targets, batch_size, shuffle=True, seed=seed, drop_last=True)
    test = ArraysLoader(t_inputs, t_targets, 1000)
    model = box_model(ds.num_classes, seed=seed)
    # The box head starts at the mean training box (its bias), so the first steps refine a
    # sensible box instead of pulling the body about with squared errors of hundreds of pixels.
    model["box"].bias.data[...] = targets[1].mean(axis=0)
    opt = SGD(model.parameters(), lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    losses, metrics = [nn.CrossEntropyLoss(), nn.MSELoss()], [accuracy, box_iou]
    history = fit_multi(model, train, opt, epochs, losses, [1.0, box_weight], metrics,
                        OneCycleLR(lr, epochs * len(train)), test, log=log)
    report = evaluate_multi(model, test, losses, metrics)
    mean_box = np.broadcast_to(targets[1].mean(axis=0), t_targets[1].shape)
    results = {"test_accuracy": report["class"]["metric"], "test_box_iou": report["box"]["metric"],
               "baseline_box_iou": box_iou(mean_box, t_targets[1]),     # one box for every image
               "test_box_mse": report["box"]["loss"], "epochs": epochs, "box_weight": box_weight,
               "train_images": len(ds.y_train), "test_images": len(ds.y_test),
               "minutes": (time.perf_counter() - start) / 60}
    if out is not None:
        os.makedirs(out, exist_ok=True)
        results["checkpoint"] = save_checkpoint(
            os.path.join(out, "checkpoint.npz"), model, epoch=epochs, history=history,
            meta={"model": BOX_MODEL, "dataset_resolved": ds.name, "num_classes": ds.num_classes,
                  "input_size": int(ds.image_shape[1]), "dtype": "float32",
                  "options": {"data_dir": data_dir, "limit_test": len(ds.y_test)}})
        from .viz import available, plot_boxes
        model.eval()
        k = 16
        logits, boxes = model((t_inputs[0][:k], t_inputs[1][:k]))
        if available():
            path = os.path.join(out, "boxes.png")
            plot_boxes(ds.x_test[:k], t_targets[1][:k], boxes, labels=ds.y_test[:k],
                       predicted=np.argmax(logits, axis=1), classes=ds.classes, path=path)
            results["figure"] = path
    return model, results


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastconv.multitask",
                                description="Classify Fashion-MNIST garments and predict their "
                                            "bounding boxes, with image statistics as a side input.")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--box-weight", type=float, default=0.01, help="weight of the box MSE loss")
    p.add_argument("--limit", type=int, default=None, help="first N training images only")
    p.add_argument("--out", default="runs/multitask")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ds = load_dataset(args.dataset, args.data_dir)
    if args.limit:
        ds = ds.limit(args.limit)
    print(f"class + box model on {ds.name}: {len(ds.y_train):,} train / {len(ds.y_test):,} test",
          flush=True)
    _, results = run_boxes_demo(ds, args.epochs, box_weight=args.box_weight, seed=args.seed,
                                out=args.out, log=lambda m: print(m, flush=True),
                                data_dir=args.data_dir)
    print(f"test accuracy {results['test_accuracy']:.4f}, mean box IoU {results['test_box_iou']:.4f} "
          f"(the mean training box everywhere: {results['baseline_box_iou']:.4f}) "
          f"({results['minutes']:.2f} min)" + (f"; wrote {results['figure']}" if "figure" in results else ""))
    print(f"fastconv viz {results['checkpoint']} draws the test images' predicted boxes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
