"""summary(model, input_shape): a Keras-style table of a model's layers.

For each layer: its dotted name and type, output shape, parameter count, multiply-adds and
receptive field; then the totals. The receptive field follows the notes (000, "感受野"):

    r_out = r_in + (k - 1) * j_in          (size: input pixels one output value sees)
    j_out = j_in * s                       (jump: input pixels between neighbouring outputs)
    start_out = start_in + ((k - 1) / 2 - p) * j_in
                                           (centre of the first output's field, in input
                                            pixel coordinates; negative = in the padding)

for a layer with window k, stride s and padding p (conv and pooling; a window of size k_0
with dilation d spans k = d*(k_0 - 1) + 1 pixels and counts as that: its field has gaps,
but its extent is what grows), starting from
r = j = 1, start = 0 at the input. Element-wise layers (activations, BN, Dropout) keep it;
global average pooling, and a Flatten of a map larger than 1x1, use the whole map (k = its
size); after that every output sees the same field. ZeroPad2d moves start by -pad * j.
A transposed conv (output size (H - 1)*s - 2p + k + output_padding, (conv_t.out)) steps
through its input s times slower: j_out = j_in / s, an output sees at most ceil(k / s) of
its input pixels, r_out = r_in + (ceil(k / s) - 1) * j_in, and
start_out = start_in + (p - (k - 1) / 2) / s * j_in.

Branches: a residual block's field is the larger of its body's and its shortcut's (the body's,
in ResNet), and an Inception (Concat) block's is the largest over its branches; the jump is
the same on every branch and start is taken from the branch with the largest field (with
"same" padding, as in these models, every branch is centred on the same pixel).

Output sizes (conv.out): P = floor((H + 2p - d(k_0 - 1) - 1) / s) + 1.

Multiply-adds per forward pass of the given batch: K*(C/groups)*R*S*P*Q per image for a conv,
C_in*C_out*R*S*H*W for a transposed conv (every input pixel times the kernel),
in*out for a linear layer, one per value for BatchNorm (an affine map at test time);
pooling, activations and adds are counted as 0.
"""
import copy

import numpy as np

from .functional import conv_output_size
from .nn import (AvgPool2d, BatchNorm1d, BatchNorm2d, Concat, Conv2d, ConvTranspose2d,
                 Flatten, GlobalAvgPool2d, Linear, MaxPool2d, Module, Residual, Sequential,
                 ZeroPad2d)

__all__ = ["summary", "Summary", "receptive_field"]


class _RF:
    """Receptive field along one axis: size r, jump j, start (centre of the first output)."""

    __slots__ = ("r", "j", "start")

    def __init__(self, r=1, j=1, start=0.0):
        self.r, self.j, self.start = r, j, start

    def window(self, k, s, p):
        """Eq. r_out = r_in + (k - 1) j_in, j_out = j_in s, start_out = start_in + ((k-1)/2 - p) j_in."""
        return _RF(self.r + (k - 1) * self.j, self.j * s, self.start + ((k - 1) / 2 - p) * self.j)

    def __repr__(self):
        return f"_RF({self.r}, {self.j}, {self.start})"


def _pair_of(v):
    """An int or an (h, w) pair -> (h, w)."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _fmt_start(v):
    return f"{v:g}"


class Summary:
    """What :func:`summary` returns: ``rows`` (one dict per layer: name, type, output_shape,
    params, macs, rf = (size, jump, start) or None), totals as attributes and the table as
    ``str(summary)``."""

    def __init__(self, model_name, input_shape, rows, total_params, buffer_values, total_macs,
                 output_shape, rf):
        self.model_name, self.input_shape, self.rows = model_name, input_shape, rows
        self.total_params, self.buffer_values = total_params, buffer_values
        self.total_macs, self.output_shape = total_macs, output_shape
        self.receptive_field = rf

    def __str__(self):
        def rf_text(rf):
            if rf is None:        # "-": not an image input; "?": a layer of unknown geometry
                return "-" if len(self.input_shape) != 4 else "?"
            (rh, jh, sh), (rw, jw, sw) = rf
            if (rh, jh, sh) == (rw, jw, sw):
                return f"{rh} / {jh} / {_fmt_start(sh)}"
            return f"{rh}x{rw} / {jh}x{jw} / {_fmt_start(sh)},{_fmt_start(sw)}"

        header = ("Layer (type)", "Output Shape", "Param #", "Mult-Adds", "RF size / jump / start")
        body = [("  " * r["depth"] + f"{r['name']} ({r['type']})", str(r["output_shape"]),
                 f"{r['params']:,}", f"{r['macs']:,}", rf_text(r["rf"])) for r in self.rows]
        widths = [max(len(row[i]) for row in [header] + body) for i in range(5)]
        align = ["<", "<", ">", ">", "<"]

        def line(row):
            return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths)).rstrip()

        total = sum(widths) + 2 * 4
        out = [f'Model: "{self.model_name}", input {self.input_shape}', "=" * total,
               line(header), "=" * total]
        out += [line(row) for row in body]
        out += ["=" * total,
                f"Total params: {self.total_params:,}",
                f"Trainable params: {self.total_params:,}",
                f"Non-trainable values (buffers, e.g. BN running statistics): {self.buffer_values:,}",
                f"Mult-adds per forward pass: {self.total_macs:,} ({self.total_macs / 1e6:,.2f} M)",
                f"Output shape: {self.output_shape}",
                f"Receptive field of an output: {rf_text(self.receptive_field)}",
                "-" * total]
        return "\n".join(out)

    __repr__ = __str__


def _leaf_macs(module, x, y):
    if isinstance(module, Conv2d):
        K, C, R, S = module.weight.shape
        N, _, P, Q = y.shape
        if getattr(module, "pool", False):     # a FusedConv2d that pools: y is the pooling's
            P, Q = (conv_output_size(size, k, st, pad) for size, k, st, pad in
                    zip(x.shape[2:], (R, S), module.stride, module.padding))
        return N * K * C * R * S * P * Q
    if isinstance(module, ConvTranspose2d):
        C_in, C_out, R, S = module.weight.shape
        N, _, H, W = x.shape
        return N * C_in * C_out * R * S * H * W
    if isinstance(module, Linear):
        return x.shape[0] * module.in_features * module.out_features
    if isinstance(module, (BatchNorm1d, BatchNorm2d)):
        return int(y.size)
    return 0


def _leaf_rf(module, x, y, rf):
    """(rf_h, rf_w) after a leaf layer, or None when its effect on space is unknown."""
    if rf is None:
        return None
    h, w = rf
    if isinstance(module, MaxPool2d) and module.dilation != (1, 1):
        # a dilated window spans d*(k - 1) + 1 input pixels (pool.out)
        (kh, kw), (sh, sw), (ph, pw) = module.kernel_size, module.stride, module.padding
        (dh, dw) = module.dilation
        return h.window(dh * (kh - 1) + 1, sh, ph), w.window(dw * (kw - 1) + 1, sw, pw)
    if isinstance(module, (Conv2d, MaxPool2d, AvgPool2d)):
        (kh, kw), (sh, sw) = module.kernel_size, module.stride
        # the padding before the first window (Conv2d's "same" / "valid" as numbers)
        ph, pw = getattr(module, "padding_before", module.padding)
        dh, dw = _pair_of(getattr(module, "dilation", 1))
        # a dilated window's extent: d*(k - 1) + 1 input pixels (conv.out)
        h, w = h.window(dh * (kh - 1) + 1, sh, ph), w.window(dw * (kw - 1) + 1, sw, pw)
        if getattr(module, "pool", False):     # a FusedConv2d's 2x2 stride-2 pooling
            h, w = h.window(2, 2, 0), w.window(2, 2, 0)
        return h, w
    if isinstance(module, ConvTranspose2d):      # ceil(k / s) inputs, s outputs per input
        dil = _pair_of(getattr(module, "dilation", 1))
        return tuple(_RF(f.r + (-(-k // s) - 1) * f.j, f.j // s if f.j % s == 0 else f.j / s,
                         f.start + (p - (k - 1) / 2) / s * f.j)
                     for f, k, s, p in zip(rf, (d * (k - 1) + 1 for d, k in
                                                zip(dil, module.kernel_size)),
                                           module.stride, module.padding))
    if isinstance(module, (GlobalAvgPool2d, Flatten)) and x.ndim == 4:
        H, W = x.shape[2:]
        return h.window(H, H, 0), w.window(W, W, 0)
    if isinstance(module, ZeroPad2d):
        left, _, top, _ = module.padding
        return _RF(h.r, h.j, h.start - top * h.j), _RF(w.r, w.j, w.start - left * w.j)
    stride = getattr(module, "stride", None)          # e.g. ResNet's option-A shortcut
    if isinstance(stride, int) and x.ndim == 4 and y.ndim == 4 and y.shape[2:] != x.shape[2:]:
        return h.window(1, stride, 0), w.window(1, stride, 0)
    if x.ndim == 4 and y.ndim == 4 and y.shape[2:] != x.shape[2:]:
        return None
    return rf                                         # element-wise or (N, features) layers


def _merge_rf(rfs):
    """Largest field over branches; jump and start from that branch (see the module doc)."""
    if any(r is None for r in rfs):
        return None
    return tuple(max((r[axis] for r in rfs), key=lambda f: f.r) for axis in range(2))


def _walk(module, x, name, depth, rf, rows):
    """Run ``module`` on x like its forward, appending rows; returns (y, rf)."""
    if isinstance(module, Sequential):
        for child_name, child in module.children():
            x, rf = _walk(child, x, f"{name}.{child_name}" if name else child_name, depth, rf, rows)
        return x, rf
    if isinstance(module, Residual):
        prefix = f"{name}." if name else ""
        f, rf_f = _walk(module.body, x, prefix + "body", depth + 1, rf, rows)
        if module.shortcut is None:
            s, rf_s = x, rf
        else:
            s, rf_s = _walk(module.shortcut, x, prefix + "shortcut", depth + 1, rf, rows)
        y, rf = f + s, _merge_rf([rf_f, rf_s])
        rows.append(dict(name=name, type="add", output_shape=y.shape, params=0, macs=0,
                         rf=_rf_tuple(rf), depth=depth))
        if module.activation is not None:
            y, rf = _walk(module.activation, y, prefix + "activation", depth, rf, rows)
        return y, rf
    if isinstance(module, Concat):
        prefix = f"{name}." if name else ""
        outs, rfs = [], []
        for child_name, child in module.children():
            o, r = _walk(child, x, prefix + child_name, depth + 1, rf, rows)
            outs.append(o)
            rfs.append(r)
        y, rf = np.concatenate(outs, axis=1), _merge_rf(rfs)
        rows.append(dict(name=name, type=f"{type(module).__name__}: concat", output_shape=y.shape,
                         params=0, macs=0, rf=_rf_tuple(rf), depth=depth))
        return y, rf
    # A leaf (or a composite module this function does not know: treated as one layer).
    y = module(x)
    rf = _leaf_rf(module, x, y, rf) if not list(module.children()) else (
        rf if (x.ndim != 4 or y.ndim != 4 or y.shape[2:] == x.shape[2:]) else None)
    rows.append(dict(name=name or type(module).__name__, type=type(module).__name__,
                     output_shape=y.shape, params=module.num_parameters(),
                     macs=_leaf_macs(module, x, y), rf=_rf_tuple(rf), depth=depth))
    return y, rf


def _rf_tuple(rf):
    if rf is None:
        return None
    return tuple((f.r, f.j, f.start) for f in rf)


def receptive_field(model, input_shape):
    """(size, jump, start) of one output of ``model`` along (height, width); see :func:`summary`."""
    return summary(model, input_shape, print_fn=None).receptive_field


def summary(model, input_shape, print_fn=print):
    """Print and return a Keras-style summary of ``model`` for inputs of ``input_shape``.

    Parameters
    ----------
    model : fastconv.nn.Module
    input_shape : (C, H, W) or (N, C, H, W) (N = 1 if omitted; multiply-adds are for N images)
    print_fn : callable or None
        Where the table goes (``print`` by default; None: do not print).

    Returns
    -------
    Summary
        ``str()`` is the table; ``.rows``, ``.total_params``, ``.total_macs``,
        ``.receptive_field`` hold the numbers.

    The model runs once, in eval mode on a deep copy (its running statistics do not change),
    on zeros of its dtype, to find every output shape.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) not in (2, 4):
        raise ValueError(f"summary: input_shape must be (C, H, W) or (N, C, H, W), got {input_shape!r}")
    if not isinstance(model, Module):
        raise TypeError(f"summary: model must be a fastconv.nn.Module, got {type(model).__name__}")
    m = copy.deepcopy(model).eval()
    x = np.zeros(shape, dtype=m.dtype or np.float32)
    rf = (_RF(), _RF()) if len(shape) == 4 else None
    rows = []
    y, rf = _walk(m, x, "", 0, rf, rows)
    result = Summary(type(model).__name__, shape, rows, model.num_parameters(),
                     sum(int(np.size(b)) for _, b in model.named_buffers() if b.dtype.kind == "f"),
                     sum(r["macs"] for r in rows), y.shape, _rf_tuple(rf))
    if print_fn is not None:
        print_fn(str(result))
    return result
