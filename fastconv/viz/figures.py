"""The figures of fastconv.viz: filters, feature maps, receptive fields, curves, confusion.

Every ``plot_*`` function returns a ``matplotlib.figure.Figure`` (Agg canvas, never shown)
and, given ``path``, also writes it there as a PNG of exactly ``figsize * dpi`` pixels,
atomically. Layers are named as in ``model.named_modules()`` ("conv1", "layer1.0.body.conv1")
or given by their index in :func:`layer_names` (the leaf layers in forward order;
negative indices count from the end).
"""
import math

import numpy as np

from ..nn import Module
from . import _mpl

__all__ = ["plot_filters", "plot_feature_maps", "plot_history", "plot_receptive_field",
           "plot_lr_find", "plot_confusion_matrix", "confusion_matrix", "layer_names",
           "resolve_layer", "activation"]


# --------------------------------------------------------------------------- layers

def layer_names(model):
    """Dotted names of the leaf layers (modules without children), in definition order,
    which is forward order for the containers of fastconv.nn."""
    return [name for name, m in model.named_modules() if name and not list(m.children())]


def resolve_layer(model, layer):
    """(name, module) for ``layer``: a dotted name from ``model.named_modules()``, an int
    index into :func:`layer_names`, or the module object itself."""
    if isinstance(layer, Module):
        for name, m in model.named_modules():
            if m is layer and name:
                return name, m
        raise ValueError(f"the layer {type(layer).__name__} is not part of this model")
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        names = layer_names(model)
        if not -len(names) <= layer < len(names):
            raise ValueError(f"layer index {layer} is out of range: the model has {len(names)} "
                             f"leaf layers ({', '.join(names)})")
        layer = names[layer]
    modules = dict(model.named_modules())
    if not isinstance(layer, str) or not layer or layer not in modules:
        raise ValueError(f"unknown layer {layer!r}; layers: {', '.join(layer_names(model))}")
    return layer, modules[layer]


class _Captured(Exception):
    """Raised by the spy once the chosen layer has produced its output: stops the forward."""


def activation(model, x, layer):
    """The output of ``layer`` when ``model`` (in eval mode) runs on ``x``.

    x : (C, H, W) or (N, C, H, W), already normalised as the model expects.
    Returns a copy, (N, K, P, Q) for a spatial layer or (N, features). The forward pass
    stops at the layer; every module's train/eval mode is restored afterwards.
    """
    name, module = resolve_layer(model, layer)
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    x = np.ascontiguousarray(x, dtype=model.dtype or np.float32)
    captured = {}
    bound = module.forward
    had_own = "forward" in vars(module)

    def spy(inp):
        # A copy: an in-place ReLU after this layer would otherwise overwrite it.
        captured["y"] = np.array(bound(inp), copy=True)
        raise _Captured

    modes = [(m, m.training) for m in model.modules()]
    module.forward = spy
    model.eval()
    try:
        model(x)
    except _Captured:
        pass
    finally:
        if had_own:
            module.forward = bound
        else:
            del module.forward
        for m, mode in modes:
            m.training = mode
    if "y" not in captured:
        raise ValueError(f"layer {name!r} did not run in the model's forward pass")
    return captured["y"]


# --------------------------------------------------------------------------- helpers

def _grid(n, max_cols=8):
    """(rows, cols) for n tiles: one row up to max_cols, then a near-square grid."""
    cols = n if n <= max_cols else max(max_cols, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def _display_image(img):
    """(H, W) gray or (H, W, 3) RGB in [0, 1] from (H, W), (C, H, W) or (N, C, H, W) data
    (any range: uint8 pixels are divided by 255, floats are min-max scaled)."""
    img = np.asarray(img)
    if img.ndim == 4:
        img = img[0]
    if img.ndim == 3:
        img = img.transpose(1, 2, 0) if img.shape[0] == 3 else img.mean(axis=0)
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255
    img = img.astype(np.float64)
    lo, hi = np.nanmin(img), np.nanmax(img)
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _show(ax, img, **kw):
    img = _display_image(img)
    if img.ndim == 2:
        kw.setdefault("cmap", "gray")
        kw.setdefault("vmin", 0)
        kw.setdefault("vmax", 1)
    ax.imshow(img, interpolation="nearest", **kw)


def _off(ax):
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- filters

def plot_filters(conv_layer, path=None, max_filters=64, max_channels=16, title=None, dpi=100):
    """A grid of the K filters of a convolution layer.

    Parameters
    ----------
    conv_layer : fastconv.nn.Conv2d, or a weight array (K, C, R, S)
    path : where to write the PNG (optional)
    max_filters, max_channels : at most this many filters (and input channels) are drawn
    title : figure title (default: the layer's shape)

    One tile per filter: RGB when C = 3 (as the notes' AlexNet picture), gray when C = 1;
    otherwise one row per filter with one tile per input channel (drawn as one mosaic image
    with blank pixels between tiles). Each filter is scaled for
    display by its own largest |w|, so 0 is mid-gray, positive weights are light and
    negative ones dark, and the channels of one filter keep their relative strength.
    """
    w = conv_layer.weight.data if hasattr(conv_layer, "weight") else conv_layer
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"plot_filters: expected a Conv2d or a (K, C, R, S) weight, got shape {w.shape}")
    K, C, R, S = w.shape
    k_shown = min(K, max_filters)
    scale = np.abs(w[:k_shown]).reshape(k_shown, -1).max(axis=1)
    scale[scale == 0] = 1
    u = w[:k_shown] / scale[:, None, None, None]           # each filter in [-1, 1]
    shown = f"{k_shown} of {K}" if k_shown < K else f"{K}"
    default_title = f"{shown} filters, each {C}x{R}x{S}"
    if C in (1, 3):
        rows, cols = _grid(k_shown)
        tile = 0.95 if k_shown <= 16 else 0.7
        fig = _mpl.new_figure(max(3.0, cols * tile + 0.2), rows * tile + 0.55, dpi)
        axes = fig.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            _off(ax)
            if i >= k_shown:
                ax.set_axis_off()
                continue
            if C == 3:
                ax.imshow(0.5 + 0.5 * u[i].transpose(1, 2, 0), interpolation="nearest")
            else:
                ax.imshow(u[i, 0], cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_title(str(i), fontsize=7, pad=2)
    else:
        # One mosaic image (row k = filter k, column c = its slice on input channel c), with
        # a blank pixel between tiles: one imshow instead of K*C axes keeps this fast.
        c_shown = min(C, max_channels)
        mosaic = np.full((k_shown * (R + 1) - 1, c_shown * (S + 1) - 1), np.nan)
        for k in range(k_shown):
            for c in range(c_shown):
                mosaic[k * (R + 1):k * (R + 1) + R, c * (S + 1):c * (S + 1) + S] = u[k, c]
        tile = min(0.4, 11.0 / k_shown, 9.0 / c_shown)
        fig = _mpl.new_figure(max(2.5, c_shown * tile + 0.8), k_shown * tile + 0.8, dpi)
        ax = fig.subplots()
        from matplotlib import colormaps
        ax.imshow(mosaic, cmap=colormaps["gray"].with_extremes(bad="white"), vmin=-1, vmax=1,
                  interpolation="nearest")
        ax.set_yticks(np.arange(k_shown) * (R + 1) + (R - 1) / 2)
        ax.set_yticklabels([str(k) for k in range(k_shown)], fontsize=6)
        ax.set_xticks(np.arange(c_shown) * (S + 1) + (S - 1) / 2)
        ax.set_xticklabels([f"c{c}" for c in range(c_shown)], fontsize=6)
        ax.tick_params(length=0)
        ax.xaxis.tick_top()
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel("filter", fontsize=7)
        if c_shown < C:
            default_title += f" (first {c_shown} channels)"
    fig.suptitle(title or default_title, fontsize=9)
    return _mpl.finish(fig, path)


# --------------------------------------------------------------------------- feature maps

def plot_feature_maps(model, x, layer, path=None, image=None, max_maps=32, dpi=100, title=None):
    """The activation maps of one input at ``layer``: what each channel responds to where.

    Parameters
    ----------
    model : fastconv.nn.Module
    x : (C, H, W) or (1, C, H, W), the input as the model sees it (normalised)
    layer : name from ``model.named_modules()``, index into :func:`layer_names`, or module
    image : what to show as the input tile (default: x); e.g. the raw uint8 image
    max_maps : at most this many channels are drawn

    All maps share one colour scale (the colour bar), so a channel that stays dark is one
    that this input hardly excites. A layer with (N, features) output (after Flatten) is
    drawn as a bar chart of its values.
    """
    name, module = resolve_layer(model, layer)
    a = activation(model, x, layer)[0]
    kind = type(module).__name__
    if a.ndim == 1:
        fig = _mpl.new_figure(7.0, 3.0, dpi)
        ax_img, ax = fig.subplots(1, 2, width_ratios=[1, 4])
        _show(ax_img, x if image is None else image)
        _off(ax_img)
        ax_img.set_title("input", fontsize=8)
        ax.bar(np.arange(a.size), a, width=1.0)
        ax.set(xlabel="feature", ylabel="value")
        fig.suptitle(title or f"{name} ({kind}): {a.size} values", fontsize=9)
        return _mpl.finish(fig, path)
    K, P, Q = a.shape
    shown = min(K, max_maps)
    rows, cols = _grid(shown + 1)
    tile = 1.0 if shown <= 16 else 0.8
    fig = _mpl.new_figure(cols * tile + 0.8, rows * tile + 0.5, dpi)
    axes = fig.subplots(rows, cols, squeeze=False)
    vmin, vmax = float(a[:shown].min()), float(a[:shown].max())
    if vmax <= vmin:
        vmax = vmin + 1
    im = None
    for i, ax in enumerate(axes.flat):
        _off(ax)
        if i == 0:
            _show(ax, x if image is None else image)
            ax.set_title("input", fontsize=7, pad=2)
        elif i <= shown:
            im = ax.imshow(a[i - 1], cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_title(str(i - 1), fontsize=7, pad=2)
        else:
            ax.set_axis_off()
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, pad=0.01)
    more = f", first {shown} shown" if shown < K else ""
    fig.suptitle(title or f"{name} ({kind}): {K} maps of {P}x{Q}{more}", fontsize=9)
    return _mpl.finish(fig, path)


# --------------------------------------------------------------------------- history

def plot_history(history, path=None, dpi=100, title=None):
    """Loss and accuracy per epoch, training vs test, side by side, with the loss of every
    training step drawn faintly under the epoch curves (so a 1-epoch run has a curve too).

    history : dict of lists as ``fastconv.train.fit`` returns (keys ``epoch``,
    ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``; NaN or missing test values
    are left out; optional ``step_epoch`` and ``step_loss``, one value per step).
    """
    train_loss = np.asarray(history.get("train_loss", []), dtype=np.float64)
    n = train_loss.size
    if n == 0:
        raise ValueError("plot_history: the history has no epochs (no 'train_loss' values)")
    epochs = np.asarray(history.get("epoch", []), dtype=np.float64)[:n]
    if epochs.size != n:
        epochs = np.arange(1, n + 1, dtype=np.float64)
    step_x = np.asarray(history.get("step_epoch", []), dtype=np.float64)
    step_loss = np.asarray(history.get("step_loss", []), dtype=np.float64)
    fig = _mpl.new_figure(8.0, 3.2, dpi)
    ax_loss, ax_acc = fig.subplots(1, 2)
    if step_x.size and step_x.size == step_loss.size:
        ax_loss.plot(step_x, step_loss, color="0.6", lw=0.5, alpha=0.6, label="train, each step")
        window = max(1, step_loss.size // 50)      # a running mean shows the trend in the noise
        if window > 1:
            smooth = np.convolve(step_loss, np.ones(window) / window, mode="valid")
            ax_loss.plot(step_x[window - 1:], smooth, color="0.3", lw=1.0,
                         label=f"train, mean of {window} steps")
        for ax in (ax_loss, ax_acc):
            ax.set_xlim(0, max(float(step_x.max()), float(epochs.max())) * 1.02)
    for ax, key, label in ((ax_loss, "loss", "loss (cross-entropy)"), (ax_acc, "acc", "accuracy")):
        for split, style in (("train", "o-"), ("test", "s--")):
            values = np.asarray(history.get(f"{split}_{key}", []), dtype=np.float64)[:n]
            if values.size == n and np.isfinite(values).any():
                steps_drawn = split == "train" and key == "loss" and ax_loss.lines
                ax.plot(epochs, values, style, ms=4, label="train, epoch mean" if steps_drawn else split)
        ax.set(xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        if n <= 20:
            ax.set_xticks(np.concatenate([[0], epochs]) if step_x.size else epochs)
    fig.suptitle(title or "Training history", fontsize=10)
    return _mpl.finish(fig, path)


# --------------------------------------------------------------------------- receptive field

def _field(rf_axis, index):
    """(first, last) input pixel of output ``index`` along one axis; rf_axis = (r, j, start)."""
    r, j, start = rf_axis
    centre = start + index * j
    return centre - (r - 1) / 2, centre + (r - 1) / 2


def plot_receptive_field(model, input_shape, layer, image=None, unit=None, path=None, dpi=100,
                         title=None, max_layers=8):
    """The input region that one output unit of ``layer`` sees, drawn on an example image,
    with the fields of the layers before it (nested boxes) and the field size per layer.

    Parameters
    ----------
    model : fastconv.nn.Module
    input_shape : (C, H, W) or (N, C, H, W)
    layer : name, index into :func:`layer_names`, or module
    image : (H, W), (C, H, W) or (1, C, H, W) to draw on (default: a blank canvas)
    unit : (p, q), the output position (default: the centre of the layer's output map)
    max_layers : at most this many layers get a box (spread evenly; the chosen one always)

    The numbers are those of :func:`fastconv.summary` (size r, jump j and start of the
    field, notes 000 "感受野": r_out = r_in + (k - 1) * j_in). A box that reaches past the
    image edge covers padding.
    """
    from ..summary import summary
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4:
        raise ValueError(f"plot_receptive_field: input_shape must be (C, H, W) or (N, C, H, W), "
                         f"got {input_shape!r}")
    H, W = shape[2:]
    name, module = resolve_layer(model, layer)
    rows = summary(model, shape, print_fn=None).rows
    by_name = {r["name"]: i for i, r in enumerate(rows)}
    if name not in by_name:
        raise ValueError(f"plot_receptive_field: no receptive field is known for {name!r}")
    target = rows[by_name[name]]
    if target["rf"] is None:
        raise ValueError(f"plot_receptive_field: the receptive field of {name!r} is unknown")
    out_shape = target["output_shape"]
    P, Q = (out_shape[2], out_shape[3]) if len(out_shape) == 4 else (1, 1)
    p, q = unit if unit is not None else (P // 2, Q // 2)
    if not (0 <= p < P and 0 <= q < Q):
        raise ValueError(f"plot_receptive_field: unit {(p, q)} is outside the {P}x{Q} output of {name!r}")
    (h0, h1), (w0, w1) = _field(target["rf"][0], p), _field(target["rf"][1], q)
    centre = ((h0 + h1) / 2, (w0 + w1) / 2)

    # The path: every layer up to the target whose field grows (a parallel branch with a
    # smaller field, e.g. an Inception 1x1 branch, is not on the way to the target).
    path_rows, last = [], None
    for r in rows[:by_name[name]]:
        if r["rf"] is None or len(r["output_shape"]) != 4 or (
                last is not None and (r["rf"][0][0], r["rf"][1][0]) <= (last[0][0], last[1][0])):
            continue
        if r["rf"][0][0] > target["rf"][0][0] or r["rf"][1][0] > target["rf"][1][0]:
            continue
        path_rows.append(r)
        last = r["rf"]
    if not path_rows or path_rows[-1] is not target:
        path_rows.append(target)
    if len(path_rows) > max_layers:     # a deep model: an evenly spread selection, target last
        keep = np.unique(np.linspace(0, len(path_rows) - 1, max_layers).round().astype(int))
        path_rows = [path_rows[i] for i in keep]

    fig = _mpl.new_figure(8.0, 3.8, dpi)
    ax, ax_size = fig.subplots(1, 2, width_ratios=[1.1, 1])
    if image is None:
        ax.imshow(np.full((H, W), 0.85), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        _show(ax, image)
    from matplotlib.patches import Rectangle
    colours = _colours(len(path_rows))
    lo_h, hi_h, lo_w, hi_w = -0.5, H - 0.5, -0.5, W - 0.5
    sizes = []
    for r, colour in zip(path_rows, colours):
        (rh, jh, sh), (rw, jw, sw) = r["rf"]
        if r is target:
            ph, pw = p, q
        else:          # the unit of this layer nearest to the target field's centre
            Pr, Qr = r["output_shape"][2:]
            ph = int(np.clip(round((centre[0] - sh) / jh), 0, Pr - 1))
            pw = int(np.clip(round((centre[1] - sw) / jw), 0, Qr - 1))
        (a0, a1), (b0, b1) = _field(r["rf"][0], ph), _field(r["rf"][1], pw)
        is_target = r is target
        ax.add_patch(Rectangle((b0 - 0.5, a0 - 0.5), b1 - b0 + 1, a1 - a0 + 1, fill=False,
                               lw=2.5 if is_target else 1.3, ec=colour,
                               label=f"{r['name']}: {rh}x{rw}"))
        lo_h, hi_h = min(lo_h, a0 - 0.5), max(hi_h, a1 + 0.5)
        lo_w, hi_w = min(lo_w, b0 - 0.5), max(hi_w, b1 + 0.5)
        sizes.append((r["name"], rh, jh))
    ax.add_patch(Rectangle((-0.5, -0.5), W, H, fill=False, lw=0.8, ls=":", ec="gray",
                           label="_image edge"))
    ax.set_xlim(lo_w - 0.5, hi_w + 0.5)
    ax.set_ylim(hi_h + 0.5, lo_h - 0.5)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(f"unit ({p}, {q}) of {name}", fontsize=9)
    ax.tick_params(labelsize=7)

    names = [s[0] for s in sizes]
    xs = np.arange(len(sizes))
    ax_size.bar(xs, [s[1] for s in sizes], color=colours)
    for x, (_, r_size, jump) in zip(xs, sizes):
        ax_size.text(x, r_size, f"{r_size}\n(jump {jump})", ha="center", va="bottom", fontsize=7)
    ax_size.axhline(H, color="gray", ls=":", lw=0.8)
    ax_size.text(len(sizes) - 0.5, H, f"image {H}", ha="right", va="bottom", fontsize=7, color="gray")
    ax_size.set_xticks(xs)
    ax_size.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    ax_size.set_ylabel("receptive field size (pixels)")
    ax_size.set_ylim(0, max(max(s[1] for s in sizes), H) * 1.25)
    fig.suptitle(title or f"Receptive field of {name}: {target['rf'][0][0]}x{target['rf'][1][0]} "
                          f"input pixels", fontsize=10)
    return _mpl.finish(fig, path)


def _colours(n):
    from matplotlib import colormaps
    cmap = colormaps["plasma"]
    return [cmap(0.15 + 0.7 * i / max(n - 1, 1)) for i in range(n)]


# --------------------------------------------------------------------------- LR finder

def plot_lr_find(lrs, losses=None, smoothed=None, suggestion=None, path=None, dpi=100, title=None,
                 min_div_10=None):
    """Training loss against learning rate (log scale) from the LR range test
    (``fastconv.schedules.lr_find``): the loss of each step (faint), its median over a few
    steps, and the two suggestions: the steepest fall (``suggestion``) and a tenth of the LR
    of the lowest loss (``min_div_10``). The y-axis shows the loss from its lowest value up to
    a little above the starting loss; the explosion at the end runs off the top.

    ``lrs`` may also be an ``LRFinderResult`` (then leave out ``losses``). When ``smoothed``
    is given, it is drawn instead of the centred average of ``losses``.
    """
    from ..schedules import _centred_median, _suggest
    if losses is None and hasattr(lrs, "losses"):
        result = lrs
        lrs, losses = result.lrs, result.losses
        suggestion = getattr(result, "steepest", getattr(result, "suggestion", None))
        min_div_10 = getattr(result, "min_div_10", None)
    lrs = np.asarray(lrs, dtype=np.float64)
    losses = np.asarray(losses if losses is not None else [], dtype=np.float64)
    if lrs.shape != losses.shape or lrs.ndim != 1 or lrs.size == 0:
        raise ValueError(f"plot_lr_find: lrs and losses must be 1-D of the same length, got "
                         f"{lrs.shape} and {losses.shape}")
    steepest, lowest_div_10, window = _suggest(lrs, losses)
    suggestion = steepest if suggestion is None else suggestion
    min_div_10 = lowest_div_10 if min_div_10 is None else min_div_10
    fig = _mpl.new_figure(6.0, 4.0, dpi)
    ax = fig.subplots()
    ax.plot(lrs, losses, color="0.6", lw=0.7, label="loss of each step")
    finite = np.isfinite(losses)
    if smoothed is not None:
        curve, label = np.asarray(smoothed, dtype=np.float64), "smoothed loss"
    else:
        stop = lrs.size if finite.all() else int(np.argmin(finite))
        curve = np.full(lrs.size, np.nan)
        curve[:stop] = _centred_median(losses[:stop], max(window, 1))
        label = f"median of {max(window, 1)} steps"
    ax.plot(lrs, curve, color="C0", lw=1.8, label=label)
    for value, style, text in ((suggestion, "--", "steepest fall"), (min_div_10, ":", "minimum / 10")):
        if value is not None and np.isfinite(value):
            ax.axvline(float(value), color="k" if style == "--" else "C3", ls=style,
                       label=f"{text}: lr {float(value):.2g}")
    ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="training loss")
    good = curve[np.isfinite(curve)]
    if good.size:       # from the lowest loss to a little above the start: the explosion runs off
        start = float(np.median(good[:max(1, good.size // 10)]))
        low = min(float(good.min()), start)
        raw = losses[finite]
        low = min(low, float(np.percentile(raw, 2))) if raw.size else low
        span = max(start - low, 0.05 * max(abs(start), 1e-3))
        ax.set_ylim(max(0.0, low - 0.1 * span) if low >= 0 else low - 0.1 * span, start + 0.6 * span)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or "LR range test: train at an LR where the loss falls fastest", fontsize=10)
    return _mpl.finish(fig, path)


# --------------------------------------------------------------------------- confusion matrix

def confusion_matrix(y_true, y_pred, num_classes=None):
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"confusion_matrix: {y_true.size} labels but {y_pred.size} predictions")
    if y_true.size and min(y_true.min(), y_pred.min()) < 0:
        raise ValueError("confusion_matrix: labels must be >= 0")
    n = num_classes or (int(max(y_true.max(), y_pred.max())) + 1 if y_true.size else 1)
    if y_true.size and max(y_true.max(), y_pred.max()) >= n:
        raise ValueError(f"confusion_matrix: labels must be < {n} (the number of classes)")
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def plot_confusion_matrix(y_true, y_pred, class_names=None, path=None, dpi=100, title=None):
    """The confusion matrix of a classifier: row = true class, column = prediction.

    Cells show counts; colours show each row's fraction (the recall of that class), so
    the diagonal is what the model gets right and bright off-diagonal cells are the pairs
    it mixes up.
    """
    n = len(class_names) if class_names is not None else None
    cm = confusion_matrix(y_true, y_pred, n)
    n = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    totals = cm.sum(axis=1, keepdims=True)
    frac = cm / np.maximum(totals, 1)
    side = max(4.5, 0.55 * n + 2.2)
    fig = _mpl.new_figure(side + 0.8, side, dpi)
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7 if n > 10 else 8,
                        color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(np.arange(n))
    ax.set_yticks(np.arange(n))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    total = int(cm.sum())
    acc = np.trace(cm) / total if total else float("nan")
    ax.set_title(title or f"Confusion matrix: accuracy {acc:.3f} on {total:,} images", fontsize=10)
    return _mpl.finish(fig, path)


# --------------------------------------------------------------------------- boxes

def plot_boxes(images, boxes, predicted_boxes=None, labels=None, predicted=None, classes=None,
               path=None, max_images=16, dpi=100, title=None):
    """Images with their bounding boxes: the true box in green, the predicted one in red
    (dashed), and the true / predicted class above each image (for a model with a class head
    and a box head, see ``python -m fastconv.multitask``).

    images : (N, C, H, W) or (N, H, W); boxes, predicted_boxes : (N, 4) rows (x0, y0, x1, y1)
    in pixels, x1 and y1 one past the last column and row; labels, predicted : (N,) ints.
    """
    from matplotlib.patches import Rectangle
    from ..train import box_iou
    n = min(len(images), max_images)
    rows, cols = _grid(n)
    fig = _mpl.new_figure(1.5 * cols, 1.7 * rows + 0.5, dpi)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes):
        _off(ax)
        if i >= n:
            ax.axis("off")
            continue
        _show(ax, images[i])
        for box, colour, style in ((boxes[i], "lime", "-"),
                                   (None if predicted_boxes is None else predicted_boxes[i], "red", "--")):
            if box is None:
                continue
            x0, y0, x1, y1 = (float(v) for v in box)
            # pixel j covers [j - 0.5, j + 0.5] in imshow's coordinates
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor=colour, linestyle=style, linewidth=1.2))
        name = (lambda c: classes[int(c)] if classes is not None else str(int(c)))  # noqa: E731
        text = []
        if labels is not None:
            text.append(name(labels[i]))
        if predicted is not None:
            text.append(f"pred {name(predicted[i])}")
        if predicted_boxes is not None:
            text.append(f"IoU {box_iou(np.asarray(predicted_boxes[i:i + 1]), np.asarray(boxes[i:i + 1])):.2f}")
        ax.set_title("\n".join(text), fontsize=7)
    fig.suptitle(title or "true box (green), predicted box (red, dashed)", fontsize=9)
    return _mpl.finish(fig, path)
