"""A folder of figures and an offline ``index.html`` that explains them: what ``fastconv viz``
writes for a trained model (a small CNN-Explainer-like page).

The page uses relative image links, inline CSS and nothing else: copy the folder anywhere
and open ``index.html`` in a browser, no network needed. Each caption says in a sentence
or two what the picture means and where the course notes (``notes/``) discuss it.
"""
import html
import os

import numpy as np

from ..nn import BatchNorm2d, Conv2d, ReLU, Sigmoid, Tanh, no_grad
from . import _mpl
from .figures import (confusion_matrix, layer_names, plot_boxes, plot_confusion_matrix,
                      plot_feature_maps, plot_filters, plot_history, plot_lr_find,
                      plot_receptive_field, resolve_layer)

__all__ = ["write_report", "write_box_report", "write_index", "save_training_figures", "Item"]


class Item:
    """One picture of the page: its file name (relative to the page), heading and caption."""

    def __init__(self, filename, heading, caption):
        self.filename, self.heading, self.caption = filename, heading, caption

    def __repr__(self):
        return f"Item({self.filename!r}, {self.heading!r})"


_CSS = """
body { font-family: sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
figure { margin: 1em 0 2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.95em; color: #333; margin-top: 0.4em; }
table.info td { padding: 0.1em 1em 0.1em 0; vertical-align: top; }
pre { font-size: 0.78em; background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
nav a { margin-right: 1em; } .note { color: #666; font-size: 0.9em; }
"""


def write_index(folder, items, title="fastconv viz", info=None, summary_text=None):
    """Write ``folder/index.html`` showing ``items`` (a list of :class:`Item`) with captions.

    ``info`` is a list of (label, value) rows for the header table; ``summary_text`` is shown
    as preformatted text (the model's layer table). Every image is a relative link to a file
    in ``folder``; a missing file is an error (the page would show a broken image).
    Returns the path of the page (written atomically).
    """
    folder = os.fspath(folder)
    for item in items:
        if os.path.isabs(item.filename) or os.sep in item.filename or "/" in item.filename:
            raise ValueError(f"write_index: {item.filename!r} must be a plain file name in the folder")
        if not os.path.isfile(os.path.join(folder, item.filename)):
            raise FileNotFoundError(f"write_index: {item.filename} is not in {folder}")
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           f"<h1>{e(title)}</h1>"]
    if info:
        out.append('<table class="info">')
        out += [f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in info]
        out.append("</table>")
    if items:
        out.append("<nav>" + "".join(f'<a href="#fig{i}">{e(it.heading)}</a>'
                                     for i, it in enumerate(items)) + "</nav>")
    for i, it in enumerate(items):
        out += [f'<h2 id="fig{i}">{e(it.heading)}</h2>', "<figure>",
                f'<img src="{e(it.filename, quote=True)}" alt="{e(it.heading, quote=True)}">',
                f"<figcaption>{e(it.caption)}</figcaption>", "</figure>"]
    if summary_text:
        out += ["<h2>Layers</h2>", f"<pre>{e(summary_text)}</pre>"]
    out += ['<p class="note">Made by <code>fastconv viz</code>. The notes cited are the course '
            "notes fastconv follows (000: CNN basics, 001: convolution layers, 003: classic "
            "models, 004: training tips).</p>", "</body>", "</html>", ""]
    path = os.path.join(folder, "index.html")
    tmp = os.path.join(folder, f".index.html.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- choosing layers

def _leaves(model):
    modules = dict(model.named_modules())
    return [(name, modules[name]) for name in layer_names(model)]


def conv_layers(model):
    """Names of the Conv2d layers, in forward order."""
    return [name for name, m in _leaves(model) if isinstance(m, Conv2d)]


def activation_after(model, conv_name):
    """The layer whose output is the conv's "activation map": the activation right after
    ``conv_name`` (skipping a BatchNorm), or the conv itself when none follows."""
    leaves = _leaves(model)
    names = [n for n, _ in leaves]
    i = names.index(conv_name) + 1
    while i < len(leaves) and isinstance(leaves[i][1], BatchNorm2d):
        i += 1
    if i < len(leaves) and isinstance(leaves[i][1], (ReLU, Sigmoid, Tanh)):
        return names[i]
    return conv_name


def last_spatial_layer(model, input_shape):
    """The last layer with a spatial (N, K, P, Q) output larger than 1x1 and a known field:
    the deepest unit whose receptive field is still a region of the image."""
    from ..summary import summary
    rows = summary(model, input_shape, print_fn=None).rows
    leaves = set(layer_names(model))
    best = None
    for r in rows:
        shape = r["output_shape"]
        if r["name"] in leaves and r["rf"] is not None and len(shape) == 4 and shape[2] * shape[3] > 1:
            best = r["name"]
    return best


# --------------------------------------------------------------------------- the report

def _predict(model, x, normalize, batch_size=500):
    """Predicted classes of uint8 (N, C, H, W) images, in eval mode (mode restored)."""
    dtype = model.dtype or np.float32
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        preds = []
        with no_grad():
            for i in range(0, len(x), batch_size):
                xb = _to_input(x[i:i + batch_size], normalize, dtype)
                preds.append(np.argmax(model(xb), axis=1))
    finally:
        for m, mode in modes:
            m.training = mode
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


def _to_input(images, normalize, dtype):
    x = np.asarray(images)
    dtype = np.dtype(dtype)
    x = x.astype(dtype) * dtype.type(1 / 255) if x.dtype == np.uint8 else x.astype(dtype)
    return np.ascontiguousarray(normalize(x) if normalize is not None else x)


def _fmt(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_report(model, out, x_test, y_test, classes=None, normalize=None, history=None,
                 lr_find=None, image_index=0, feature_layers=None, rf_layer=None, limit=2000,
                 title=None, info=None, dpi=100, log=None, data_name=None):
    """Draw every figure for ``model`` into folder ``out`` and write ``out/index.html``.

    Parameters
    ----------
    model : a trained fastconv.nn.Module (an image classifier)
    x_test, y_test : test images (uint8 or float, (N, C, H, W)) and their labels
    classes : class names (default: "0", "1", ...)
    normalize : callable applied to [0, 1] float images before the model (the training
        normalisation, e.g. ``fastconv.data.Normalize(ds.mean, ds.std)``)
    history : dict from ``fit`` / a checkpoint (the curves are drawn when it has epochs)
    lr_find : (lrs, losses, smoothed, suggestion) or an LRFinderResult, or None
    image_index : which test image the feature maps and receptive field are drawn on
    feature_layers : layer names for feature maps (default: after the first and last conv)
    rf_layer : the layer whose receptive field is drawn (default: the last spatial layer)
    limit : at most this many test images for the confusion matrix (None: all)
    info : extra (label, value) rows for the page's header
    data_name : what the test images are (e.g. "fashion-mnist"), named in the figures' titles

    Returns the path of ``index.html``. Needs matplotlib (ImportError with the install
    command otherwise).
    """
    _mpl.require()
    from ..summary import summary
    say = log or (lambda msg: None)
    os.makedirs(out, exist_ok=True)
    x_test, y_test = np.asarray(x_test), np.asarray(y_test)
    if x_test.ndim != 4 or len(x_test) != len(y_test) or len(x_test) == 0:
        raise ValueError(f"write_report: need (N, C, H, W) test images with N labels, got "
                         f"{x_test.shape} and {y_test.shape}")
    if not 0 <= image_index < len(x_test):
        raise ValueError(f"write_report: image_index {image_index} is outside 0..{len(x_test) - 1}")
    C, H, W = x_test.shape[1:]
    classes = list(classes) if classes is not None else [str(i) for i in range(int(y_test.max()) + 1)]
    dtype = model.dtype or np.float32
    items, rows = [], list(info or [])
    convs = conv_layers(model)

    def fig(filename, heading, caption, draw):
        draw(os.path.join(out, filename))
        items.append(Item(filename, heading, caption))
        say(f"  wrote {os.path.join(out, filename)}")

    # 1. First-layer filters (and the second conv's, as rows of per-channel slices).
    for i, name in enumerate(convs[:2]):
        conv = dict(model.named_modules())[name]
        K, Cin, R, S = conv.weight.shape
        if i == 0:
            caption = (f"The {K} filters of {name}, each {Cin}x{R}x{S}: the local templates that "
                       "slide over the image (notes 001: first-layer conv filters are local image "
                       "templates that often learn oriented edges and opposing colours). Gray is 0, "
                       "light is a positive weight, dark a negative one: a light band beside a "
                       "dark band detects an edge of that orientation, a light or dark spot "
                       "detects a blob.")
        else:
            caption = (f"The filters of {name}, one row per filter and one {R}x{S} slice per input "
                       f"channel ({Cin}): a filter always spans the full depth of its input "
                       "(notes 001), so it combines the previous layer's activation maps rather "
                       "than looking at pixels, and is harder to read than the first layer.")
        fig(f"filters_{name.replace('.', '_')}.png", f"Filters of {name}", caption,
            lambda p, conv=conv, name=name: plot_filters(
                conv, path=p, dpi=dpi, title=f"{name}: {K} filters, each {Cin}x{R}x{S}"))

    # 2. Feature maps of one test image.
    x_img = x_test[image_index]
    x_in = _to_input(x_img[None], normalize, dtype)
    label = classes[int(y_test[image_index])] if int(y_test[image_index]) < len(classes) else "?"
    if feature_layers is None:
        picks = [convs[0], convs[-1]] if len(convs) > 1 else convs[:1]
        feature_layers = list(dict.fromkeys(activation_after(model, c) for c in picks))
    for k, layer in enumerate(feature_layers):
        name, module = resolve_layer(model, layer)
        first = k == 0
        caption = (f"The activation maps of test image #{image_index} (class: {label}) at {name} "
                   f"({type(module).__name__}), one per channel: each shows how strongly the "
                   "input matches one filter at every position (notes 001: activation maps). ")
        caption += ("Shallow maps still look like the image, with its edges or regions lit."
                    if first else
                    "Deeper maps are smaller and more abstract: each pixel summarises a larger "
                    "region (notes 000, LeNet: the deeper the layer, the more abstract the features).")
        fig(f"feature_maps_{name.replace('.', '_')}.png", f"Feature maps at {name}", caption,
            lambda p, layer=layer: plot_feature_maps(model, x_in, layer, path=p, image=x_img, dpi=dpi))

    # 3. Receptive field.
    rf_layer = rf_layer if rf_layer is not None else last_spatial_layer(model, (1, C, H, W))
    if rf_layer is not None:
        name, _ = resolve_layer(model, rf_layer)
        s = summary(model, (1, C, H, W), print_fn=None)
        rf = {r["name"]: r["rf"] for r in s.rows}.get(name)
        size = f"{rf[0][0]}x{rf[1][0]}" if rf else "?"
        caption = (f"The input pixels that one unit of {name} can see: its receptive field, "
                   f"{size} pixels (boxes: the field after each earlier layer; notes 000 and 001, "
                   "receptive field). Each k x k layer adds (k - 1) x jump pixels, "
                   "RF_{l+1} = RF_l + (k_{l+1} - 1) x jump_l, and every stride-2 pooling doubles "
                   "the jump, so the field grows faster after pooling. Parts of a box outside "
                   "the image cover zero padding.")
        fig(f"receptive_field_{name.replace('.', '_')}.png", f"Receptive field of {name}", caption,
            lambda p: plot_receptive_field(model, (C, H, W), rf_layer, image=x_img, path=p, dpi=dpi))

    # 4. Confusion matrix on (up to ``limit``) test images.
    n = len(x_test) if limit is None else min(limit, len(x_test))
    y_pred = _predict(model, x_test[:n], normalize)
    cm = confusion_matrix(y_test[:n], y_pred, len(classes))
    acc = float(np.trace(cm) / max(cm.sum(), 1))
    off = cm.copy()
    np.fill_diagonal(off, 0)
    i, j = np.unravel_index(int(np.argmax(off)), off.shape)
    worst = (f" The pair mixed up most often: {cm[i, j]} {classes[i]} images were called "
             f"{classes[j]}." if off[i, j] else "")
    caption = (f"Row = true class, column = the model's answer, on {n:,} test images"
               f"{' of ' + data_name if data_name else ''} "
               f"(accuracy {acc:.3f}; chance is 1/{len(classes)}, and notes 004 warn that an "
               f"accuracy near chance means the model learned nothing, e.g. a too-large LR). "
               f"The diagonal holds the correct answers; bright cells off it are classes the "
               f"model confuses.{worst}")
    data = f" {data_name}" if data_name else ""
    fig("confusion_matrix.png", "Confusion matrix", caption,
        lambda p: plot_confusion_matrix(
            y_test[:n], y_pred, classes, path=p, dpi=dpi,
            title=f"Confusion matrix: accuracy {acc:.3f} on {n:,}{data} test images"))
    rows.append((f"test accuracy on {n:,} images", f"{acc:.4f}"))

    # 5. Training history and LR range test, when known.
    if history and len(history.get("train_loss", [])) > 0:
        caption = ("Loss and accuracy after each epoch on the training images (during the "
                   "epoch) and the test images (after it). Both losses should fall; a test loss "
                   "that turns up while the training loss keeps falling is over-fitting, which "
                   "data augmentation (notes 003, AlexNet) and Dropout (notes 004) fight. A jump or plateau "
                   "often follows the learning-rate schedule (notes 004, LR annealing).")
        if history.get("step_loss"):
            caption += (" The grey line is the loss of every training step (each on one batch, "
                        "so it is noisy), the dark one its running mean.")
        fig("history.png", "Training history", caption, lambda p: plot_history(history, path=p, dpi=dpi))
    if lr_find is not None:
        args = (lr_find,) if hasattr(lr_find, "lrs") else tuple(lr_find)
        caption = ("The LR range test: a short run whose learning rate grows exponentially, with "
                   "the loss recorded at each step. Notes 004 (fastai's lr_find()): pick the LR "
                   "where the loss falls fastest (the dashed line), or one tenth of the LR where "
                   "it is lowest (the dotted line); past that the loss explodes. The first steps "
                   "are left out of the choice: there the loss is the initial loss plus noise.")
        fig("lr_find.png", "Learning-rate finder", caption,
            lambda p: plot_lr_find(*args, path=p, dpi=dpi))

    s = summary(model, (1, C, H, W), print_fn=None)
    rows.insert(0, ("parameters", f"{model.num_parameters():,}"))
    return write_index(out, items, title or f"fastconv viz: {type(model).__name__}", rows, str(s))


def write_box_report(model, out, inputs, images, labels, boxes, classes=None, history=None,
                     image_index=0, baseline_iou=None, title=None, info=None, dpi=100, log=None,
                     data_name=None, batch_size=500):
    """The page of a model with a class head and a box head (``python -m fastconv.multitask``):
    test images with their true and predicted boxes, the test accuracy and mean box IoU, and
    the training history. Writes ``out/boxes.png`` (and ``history.png``) and ``out/index.html``.

    Parameters
    ----------
    model : a Module whose forward takes ``inputs`` (a tuple of arrays, one row per test
        image) and returns (class logits (N, classes), boxes (N, 4))
    images : (N, C, H, W) the test images as drawn; labels : (N,); boxes : (N, 4) true boxes
        (x0, y0, x1, y1) in pixels
    image_index : the first test image drawn (16 are drawn)
    baseline_iou : the IoU of one box for every image (the mean training box), for scale
    history : a ``fit_multi`` history (keys train_loss, class_metric, ...), or None

    Returns the path of ``index.html``.
    """
    from ..train import box_iou
    _mpl.require()
    say = log or (lambda msg: None)
    os.makedirs(out, exist_ok=True)
    labels, boxes = np.asarray(labels), np.asarray(boxes)
    n = len(labels)
    if n == 0 or len(images) != n or len(boxes) != n or any(len(a) != n for a in inputs):
        raise ValueError(f"write_box_report: need one row per test image in images, labels, "
                         f"boxes and every input, got {len(images)}, {n}, {len(boxes)} and "
                         f"{[len(a) for a in inputs]}")
    if not 0 <= image_index < n:
        raise ValueError(f"write_box_report: image_index {image_index} is outside 0..{n - 1}")
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            outs = [model(tuple(a[i:i + batch_size] for a in inputs))
                    for i in range(0, n, batch_size)]
    finally:
        model.train(was_training)
    predicted = np.concatenate([np.argmax(logits, axis=1) for logits, _ in outs])
    predicted_boxes = np.concatenate([b for _, b in outs])
    acc, iou = float(np.mean(predicted == labels)), box_iou(predicted_boxes, boxes)
    data = f" {data_name}" if data_name else ""
    items, rows = [], [("parameters", f"{model.num_parameters():,}")] + list(info or [])
    rows += [(f"test accuracy on {n:,} images", f"{acc:.4f}"),
             (f"mean box IoU on {n:,} test images", f"{iou:.4f}")]
    if baseline_iou is not None:
        rows.append(("mean box IoU of one box for every image (the mean training box)",
                     f"{baseline_iou:.4f}"))
    shown = slice(image_index, image_index + 16)
    path = os.path.join(out, "boxes.png")
    plot_boxes(images[shown], boxes[shown], predicted_boxes[shown], labels=labels[shown],
               predicted=predicted[shown], classes=classes, path=path, dpi=dpi,
               title=f"Test images {image_index}..{min(n, image_index + 16) - 1}: true box "
                     f"(green), predicted (red, dashed); mean IoU {iou:.3f} on {n:,}{data} "
                     f"test images")
    say(f"  wrote {path}")
    items.append(Item("boxes.png", "Predicted boxes",
                      "The box head's output (red, dashed) against the garment's true bounding "
                      "box (green, from the image's non-zero pixels), with the class head's "
                      "prediction above each image. IoU is the area of the intersection over "
                      "that of the union: 1 for the same box, 0 for boxes that do not meet. "
                      "Both heads read the same features (notes 004, multiple outputs)."))
    if history and len(history.get("train_loss", [])) > 0:
        curves = {"epoch": history.get("epoch", []), "train_loss": history["train_loss"],
                  "test_acc": history.get("class_metric", [])}
        path = os.path.join(out, "history.png")
        plot_history(curves, path=path, dpi=dpi,
                     title="Training history: weighted sum of both losses; test accuracy")
        say(f"  wrote {path}")
        items.append(Item("history.png", "Training history",
                          "The training loss (cross-entropy plus the weighted box MSE) per "
                          "epoch, and the class head's test accuracy after each epoch."))
    return write_index(out, items, title or f"fastconv viz: {type(model).__name__}", rows)


def save_training_figures(model, history, out, dpi=100):
    """For ``fastconv train``: write ``history.png`` and the first conv layer's filters
    (``filters.png``) into ``out``. Returns the paths written; [] when matplotlib is missing
    (training never fails for want of a plot)."""
    if not _mpl.available():
        return []
    written = []
    if history and len(history.get("train_loss", [])) > 0:
        written.append(os.path.join(out, "history.png"))
        plot_history(history, path=written[-1], dpi=dpi)
    convs = conv_layers(model)
    if convs:
        written.append(os.path.join(out, "filters.png"))
        plot_filters(dict(model.named_modules())[convs[0]], path=written[-1], dpi=dpi,
                     title=f"{convs[0]} filters after training")
    return written
