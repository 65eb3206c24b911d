"""The training loop: fit, evaluate, history, and resumable ``.npz`` checkpoints.

One training step is the whole of backpropagation, written out (no autograd)::

    optimizer.zero_grad()
    logits = model(xb)                     # forward, layers cache what backward needs
    loss = loss_fn.forward(logits, yb)     # mean softmax cross-entropy
    model.backward_params(loss_fn.backward())  # dlogits -> every layer adds into p.grad
                                           # (backward() would also return dL/dimages)
    optimizer.step()                       # p <- p - lr * (update from p.grad)

Reproducibility: the same seed and the same thread count give the same numbers. The
loader's order and augmentation depend only on (seed, epoch), the schedule only on the
step, and a checkpoint stores the model, the optimiser state, the epoch, the history and
the state of every random generator held by a layer (e.g. Dropout), so a run resumed from
epoch k ends exactly where the uninterrupted run ends.

Checkpoints are ``.npz`` files of plain arrays (metadata as a JSON string array), written
to a temporary file in the same folder and renamed over the old one (``os.replace`` is
atomic), and read with ``allow_pickle=False``. Ctrl-C during training therefore leaves the
checkpoint of the last finished epoch intact.
"""
import json
import math
import os
import sys
import time
import zipfile
import zlib

import numpy as np

from ._files import atomic_savez, atomic_write_text
from ._malloc import keep_freed_memory
from .nn.module import no_grad

__all__ = ["fit", "evaluate", "train_epoch", "save_checkpoint", "load_checkpoint", "read_checkpoint",
           "CheckpointError", "HISTORY_KEYS", "STEP_KEYS", "write_history", "new_run_folder",
           "latest_checkpoint", "load_pretrained",
           "precompute_features", "fit_multi", "evaluate_multi", "accuracy", "box_iou"]

CHECKPOINT_FORMAT = "fastconv-checkpoint"
CHECKPOINT_VERSION = 1
HISTORY_KEYS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds",
                "images_per_s")
# One entry per training step (a 1-epoch run still has a curve): the global step (1-based),
# the position in epochs at the end of that step (step 30 of 60 in epoch 2 is 1.5), its loss.
STEP_KEYS = ("step", "step_epoch", "step_loss")


# --------------------------------------------------------------------------- checkpoints

class CheckpointError(ValueError):
    """A checkpoint that cannot be used: truncated, not a fastconv checkpoint, or written
    for another model or optimiser (names or shapes differ)."""


def _generators(model):
    """(name, numpy Generator) for every random generator a layer holds (e.g. Dropout's)."""
    for mod_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, np.random.Generator):
                yield (f"{mod_name}.{attr}" if mod_name else attr), value


def save_checkpoint(path, model, optimizer=None, epoch=0, history=None, meta=None):
    """Write model parameters and buffers, optimiser state, the number of finished epochs,
    the history and the layers' random-generator states to ``path`` atomically.

    Keys: ``model/<param>``, ``optim/<state>``, ``history/<key>``, ``epoch`` and ``meta``
    (a JSON string: format, version, optimiser class, generator states, and ``meta``).
    """
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    for key, values in (history or {}).items():
        arrays[f"history/{key}"] = np.asarray(values, dtype=np.float64)
    info = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": int(epoch),
        "optimizer": type(optimizer).__name__ if optimizer is not None else None,
        "rng": {name: g.bit_generator.state for name, g in _generators(model)},
        "meta": meta or {},
    }
    arrays["epoch"] = np.array(epoch, np.int64)
    arrays["meta"] = np.array(json.dumps(info))
    return atomic_savez(path, **arrays)


# What a checkpoint may hold, checked from the zip directory and the .npy headers before
# any array is read: a damaged or hostile file can neither run code (no pickle) nor make
# fastconv allocate more than the file's own size (members are stored, as np.savez writes
# them: a compressed member could claim a thousand times its size).
_META_MAX_BYTES = 1 << 20      # the JSON metadata: a few kB in practice
_EPOCH_MAX = 2**31 - 1
_GROUPS = ("model", "optim", "history")


def _npy_header(f):
    """(shape, dtype, header length) of the .npy stream ``f``, reading the header only."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    return shape, dtype, f.tell()


def _scan_members(path, zf):
    """{key: (ZipInfo, shape, dtype)} for every member, from the zip directory and each
    .npy header; each member's declared size must be exactly its header's shape x itemsize,
    and all of them together fit in the file."""
    members, total, file_size = {}, 0, os.path.getsize(path)
    for info in zf.infolist():
        name = info.filename
        if not name.endswith(".npy") or name[:-4] in members:
            raise CheckpointError(f"checkpoint {path}: unexpected member {name!r} (a fastconv "
                                  "checkpoint holds one .npy array per name)")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"checkpoint {path}: {name} is compressed; fastconv "
                                  "checkpoints are stored uncompressed (np.savez)")
        total += info.file_size
        if info.file_size != info.compress_size or total > file_size:
            raise CheckpointError(f"checkpoint {path}: {name} claims {info.file_size} bytes, "
                                  f"more than the file holds ({file_size} bytes; corrupt)")
        try:
            with zf.open(info) as f:
                shape, dtype, header = _npy_header(f)
        except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
            raise CheckpointError(f"checkpoint {path}: {name} is not a valid .npy array "
                                  f"({exc})") from None
        if dtype.hasobject:
            raise CheckpointError(f"checkpoint {path}: {name} holds Python objects ({dtype}); "
                                  "checkpoints hold numbers only")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != header + nbytes:
            raise CheckpointError(f"checkpoint {path}: {name}'s header says {shape} {dtype} "
                                  f"({nbytes} bytes) but it holds {info.file_size - header} bytes "
                                  "(truncated or corrupt)")
        members[name[:-4]] = (info, shape, dtype)
    return members


def _read_member(path, zf, members, key):
    info, shape, dtype = members[key]
    try:
        with zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as exc:
        raise CheckpointError(f"checkpoint {path}: {key} cannot be read: truncated or corrupt "
                              f"({type(exc).__name__}: {exc})") from None


def _read_info(path, zf, members):
    """The checked metadata (a dict) and epoch of a checkpoint, from its 'meta' and 'epoch'
    members; every other member must be model/, optim/ or history/ (1-D, one per epoch)."""
    def bad(what):
        return CheckpointError(f"checkpoint {path}: {what}")
    for key in ("meta", "epoch"):
        if key not in members:
            raise bad(f"no {key!r} entry: not a fastconv checkpoint, or damaged")
    info_zip, shape, dtype = members["meta"]
    if shape != () or dtype.kind != "U" or info_zip.file_size > _META_MAX_BYTES:
        raise bad(f"'meta' must be a JSON string of at most {_META_MAX_BYTES} bytes, got "
                  f"{dtype} of shape {shape} ({info_zip.file_size} bytes)")
    _, shape, dtype = members["epoch"]
    if shape != () or dtype.kind not in "iu":
        raise bad(f"'epoch' must be an integer, got {dtype} of shape {shape}")
    try:
        info = json.loads(str(_read_member(path, zf, members, "meta")))
    except ValueError as exc:
        raise bad(f"'meta' is not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise bad(f"'meta' must be a JSON object, got {info!r:.60}")
    if info.get("format") != CHECKPOINT_FORMAT:
        raise bad(f"not a fastconv checkpoint (format {info.get('format')!r:.60})")
    if info.get("version") != CHECKPOINT_VERSION:
        raise bad(f"version {info.get('version')!r:.20} is not supported (this fastconv reads "
                  f"version {CHECKPOINT_VERSION})")
    for key, kind in (("meta", dict), ("rng", dict)):
        if not isinstance(info.setdefault(key, {}), kind):
            raise bad(f"meta[{key!r}] must be a JSON object, got {info[key]!r:.60}")
    if not (info.get("optimizer") is None or isinstance(info["optimizer"], str)):
        raise bad(f"meta['optimizer'] must be a class name, got {info['optimizer']!r:.60}")
    epoch = int(_read_member(path, zf, members, "epoch"))
    if not 0 <= epoch <= _EPOCH_MAX or info.get("epoch", epoch) != epoch:
        raise bad(f"epoch {epoch} is not a finished-epoch count (0 to {_EPOCH_MAX}) or differs "
                  f"from the metadata's {info.get('epoch')!r:.20}")
    for key, (_, shape, dtype) in members.items():
        group, _, name = key.partition("/")
        if key in ("meta", "epoch"):
            continue
        if group not in _GROUPS or not name:
            raise bad(f"unexpected entry {key!r}")
        if dtype.kind not in "fiub":
            raise bad(f"{key} has dtype {dtype}; checkpoints hold numbers only")
        if group == "history" and name in STEP_KEYS:
            if len(shape) != 1:             # one value per training step
                raise bad(f"{key} has shape {shape}, but a step history is one-dimensional")
        elif group == "history" and not (len(shape) == 1 and shape[0] <= epoch):
            raise bad(f"{key} has shape {shape}, but a history has one value per finished "
                      f"epoch ({epoch})")
    return info, epoch


def _open_checkpoint(path):
    """The checkpoint at ``path`` as (zip file, scanned members, metadata, epoch); no array
    data is read beyond the metadata."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        raise CheckpointError(f"{path} is a single .npy array, not a fastconv checkpoint "
                              "(an .npz written by fastconv train or save_checkpoint)")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: it is truncated or not a "
                              f"fastconv .npz checkpoint ({type(exc).__name__}: {exc})") from None
    try:
        members = _scan_members(path, zf)
        info, epoch = _read_info(path, zf, members)
    except BaseException:
        zf.close()
        raise
    return zf, members, info, epoch


def _read_groups(path, zf, members, groups=_GROUPS):
    out = {group: {} for group in groups}
    for key in members:
        group, _, name = key.partition("/")
        if group in groups:
            out[group][name] = _read_member(path, zf, members, key)
    return out


def read_checkpoint(path):
    """Read a checkpoint into a dict: ``model``, ``optim``, ``history`` (dicts of arrays),
    ``epoch`` (int) and ``meta`` (dict). Raises CheckpointError, naming the file and what is
    wrong, when it is damaged or not a fastconv checkpoint (FileNotFoundError when missing).

    Names, dtypes and sizes are checked from the zip directory and the .npy headers before
    any array is read, and no pickle is ever loaded.
    """
    zf, members, info, epoch = _open_checkpoint(path)
    with zf:
        out = _read_groups(os.fspath(path), zf, members)
    out.update(epoch=epoch, meta=info)
    return out


def _check_state(path, what, saved, expected, optional=()):
    """Names, shapes and dtype kinds of ``saved`` ({name: (shape, dtype)}) must match
    ``expected``'s (a dict of arrays); names in ``optional`` may be missing."""
    missing = sorted(set(expected) - set(saved) - set(optional))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit this {what}: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{' ...' if len(unexpected) > 5 else ''} (another model or optimiser?)")
    for name, want in expected.items():
        if name not in saved:
            continue
        got, dtype = saved[name]
        if got != np.shape(want):
            raise CheckpointError(f"checkpoint {path} does not fit this {what}: {name} has shape {got} "
                                  f"in the checkpoint but {np.shape(want)} here")
        if (dtype.kind == "f") != (np.asarray(want).dtype.kind == "f"):
            raise CheckpointError(f"checkpoint {path} does not fit this {what}: {name} has dtype "
                                  f"{dtype} in the checkpoint but {np.asarray(want).dtype} here")


def _checked_rng_states(path, states, generators):
    """The saved generator states for this model's generators, each tried on a copy first."""
    checked = {}
    for name, state in states.items():
        if name not in generators:
            continue
        trial = type(generators[name].bit_generator)()
        try:
            trial.state = state
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise CheckpointError(f"checkpoint {path}: the random state of {name} is not "
                                  f"valid ({type(exc).__name__}: {exc})") from None
        checked[name] = state
    return checked


def load_checkpoint(path, model, optimizer=None):
    """Restore ``model`` (and ``optimizer``) from ``path``; return (epoch, history, meta).

    All or nothing: names, shapes and dtypes are checked against the model and optimiser from
    the file's headers, then every array is read, and only then is anything assigned. A
    checkpoint of another architecture or a damaged file raises CheckpointError and leaves
    the model and optimiser as they were.
    """
    zf, members, info, epoch = _open_checkpoint(path)
    path = os.fspath(path)
    with zf:
        headers = {group: {} for group in _GROUPS}
        for key, (_, shape, dtype) in members.items():
            group, _, name = key.partition("/")
            if group in headers:
                headers[group][name] = (shape, dtype)
        _check_state(path, "model", headers["model"], model.state_dict(),
                     model.optional_state_names())
        if optimizer is not None:
            saved_class = info.get("optimizer")
            if saved_class != type(optimizer).__name__:
                raise CheckpointError(f"checkpoint {path} holds {saved_class} state, not "
                                      f"{type(optimizer).__name__}; resume with the same --optimizer")
            _check_state(path, "optimizer", headers["optim"], optimizer.state_dict())
        generators = dict(_generators(model))
        rng_states = _checked_rng_states(path, info["rng"], generators)
        groups = ("model", "history") + (("optim",) if optimizer is not None else ())
        ck = _read_groups(path, zf, members, groups)
    model.load_state_dict(ck["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ck["optim"])
    for name, state in rng_states.items():
        generators[name].bit_generator.state = state
    history = {k: [float(v) for v in ck["history"].get(k, [])] for k in HISTORY_KEYS + STEP_KEYS}
    for k in ("epoch", "step"):
        history[k] = [int(v) for v in history[k]]
    return epoch, history, info["meta"]


def _csv(history, keys):
    keys = [k for k in keys if k in history]
    n = len(history[keys[0]]) if keys else 0
    lines = [",".join(keys)] + [",".join(repr(history[k][i]) for k in keys) for i in range(n)]
    return "\n".join(lines) + "\n"


def write_history(history, folder):
    """Write ``history.csv`` (one row per epoch), ``history_steps.csv`` (one row per training
    step: step, step_epoch, step_loss) and ``history.json`` (both) into ``folder``, atomically.
    Returns the paths."""
    paths = [atomic_write_text(os.path.join(folder, "history.csv"), _csv(history, HISTORY_KEYS))]
    if history.get("step"):
        paths.append(atomic_write_text(os.path.join(folder, "history_steps.csv"),
                                       _csv(history, STEP_KEYS)))
    paths.append(atomic_write_text(os.path.join(folder, "history.json"), json.dumps(history, indent=1)))
    return paths


# --------------------------------------------------------------------------- run folders

def _numbered_runs(parent):
    """{number: path} of the run folders 001, 002, ... in ``parent``."""
    try:
        names = os.listdir(parent)
    except OSError:
        return {}
    return {int(n): os.path.join(parent, n) for n in names
            if n.isdigit() and os.path.isdir(os.path.join(parent, n))}


def new_run_folder(parent):
    """Create and return ``parent/NNN``, one more than the highest run number there, and point
    ``parent/latest`` at it (a symbolic link, where the file system allows one). A run never
    writes into another run's folder."""
    os.makedirs(parent, exist_ok=True)
    number = max(_numbered_runs(parent), default=0) + 1
    while True:
        path = os.path.join(parent, f"{number:03d}")
        try:
            os.mkdir(path)              # fails if a run started at the same time took it
            break
        except FileExistsError:
            number += 1
    link, tmp = os.path.join(parent, "latest"), os.path.join(parent, f".latest.tmp{os.getpid()}")
    try:
        os.symlink(os.path.basename(path), tmp)
        os.replace(tmp, link)
    except OSError:                     # no symlinks (e.g. Windows without developer mode)
        if os.path.lexists(tmp):
            os.remove(tmp)
    return path


def latest_checkpoint(root, prefix=""):
    """The newest ``checkpoint.npz`` (by modification time) in the run folders
    ``root/<prefix>*/NNN/``, or None."""
    found = []
    try:
        groups = [g for g in os.listdir(root) if g.startswith(prefix)]
    except OSError:
        return None
    for group in groups:
        for run in _numbered_runs(os.path.join(root, group)).values():
            path = os.path.join(run, "checkpoint.npz")
            if os.path.isfile(path):
                found.append((os.path.getmtime(path), path))
    return max(found)[1] if found else None


# --------------------------------------------------------------------------- loop

def _default_loss():
    from .nn import CrossEntropyLoss
    return CrossEntropyLoss()


def evaluate(model, loader, loss_fn=None):
    """Mean loss and accuracy of ``model`` (in eval mode, under :class:`fastconv.no_grad`)
    over every batch of ``loader``.

    The model's train/eval mode is restored afterwards.
    """
    loss_fn = loss_fn or _default_loss()
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        with no_grad():
            for xb, yb in loader:
                logits = model(xb)
                total_loss += float(loss_fn.forward(logits, yb)) * len(yb)
                correct += int(np.count_nonzero(np.argmax(logits, axis=1) == yb))
                count += len(yb)
    finally:
        model.train(was_training)
    total_loss, correct, count = _sum_over_ranks(loader, total_loss, correct, count)
    if count == 0:
        return math.nan, math.nan
    return total_loss / count, correct / count


def train_epoch(model, loader, optimizer, loss_fn=None, schedule=None, first_step=0,
                progress=True, desc="train", on_step=None):
    """One pass over ``loader``; returns (mean loss, accuracy, images per second).

    ``schedule(t)`` sets ``optimizer.lr`` before step t = first_step, first_step + 1, ...
    ``on_step(b, loss)`` is called after batch b (0-based, in this epoch) with its loss.
    The progress bar (tqdm, on stderr) shows the running loss, accuracy, images/s and LR.
    """
    loss_fn = loss_fn or _default_loss()
    model.train()
    total_loss, correct, count = 0.0, 0, 0
    bar = _progress_bar(loader, progress, desc)
    start = time.perf_counter()
    try:
        for b, (xb, yb) in enumerate(loader if bar is None else bar):
            if schedule is not None:
                optimizer.lr = schedule(first_step + b)
            optimizer.zero_grad()
            logits = model(xb)
            loss = float(loss_fn.forward(logits, yb))
            if not math.isfinite(loss):     # diverged: stop before the update spreads NaNs
                raise FloatingPointError(f"{desc}: the loss became {loss} at step {first_step + b} "
                                         f"(lr {optimizer.lr:.3g}); lower the learning rate")
            model.backward_params(loss_fn.backward())
            optimizer.step()
            if on_step is not None:
                on_step(b, loss)
            total_loss += loss * len(yb)
            correct += int(np.count_nonzero(np.argmax(logits, axis=1) == yb))
            count += len(yb)
            if bar is not None and (b % 10 == 0 or b == len(loader) - 1):
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{total_loss / count:.4f}", acc=f"{correct / count:.4f}",
                                img_s=f"{count / max(elapsed, 1e-9):.0f}", lr=f"{optimizer.lr:.3g}",
                                refresh=False)
    finally:
        if bar is not None:
            bar.close()
    total_loss, correct, count = _sum_over_ranks(loader, total_loss, correct, count)
    elapsed = time.perf_counter() - start
    return total_loss / max(count, 1), correct / max(count, 1), count / max(elapsed, 1e-9)


def _sum_over_ranks(loader, *totals):
    """The totals of every process for a loader sharded over processes (fastconv.distributed),
    so that loss, accuracy and images/s are the global batch's; unchanged otherwise."""
    reduce = getattr(loader, "sum_over_ranks", None)
    return totals if reduce is None else reduce(*totals)


def _progress_bar(loader, progress, desc):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(loader, total=len(loader), desc=desc, unit="batch", dynamic_ncols=True,
                leave=True, file=sys.stderr)


def fit(model, train_loader, optimizer, epochs, schedule=None, loss_fn=None, test_loader=None,
        checkpoint=None, resume=None, progress=True, log=print, meta=None, on_epoch_end=None):
    """Train ``model`` for ``epochs`` epochs and return the history.

    Parameters
    ----------
    model : fastconv.nn.Module
    train_loader, test_loader : fastconv.data.DataLoader (test_loader may be None)
    optimizer : fastconv.optim.Optimizer
    epochs : int, the total number of epochs (a resumed run continues up to it)
    schedule : callable step -> lr, or None for a constant ``optimizer.lr``
    loss_fn : default ``fastconv.nn.CrossEntropyLoss()``
    checkpoint : path or None; written atomically after every epoch
    resume : path or None; load this checkpoint first and continue after its epoch
    progress : show a tqdm bar per epoch
    log : callable for one line per epoch (None: silent)
    meta : dict saved in the checkpoint (e.g. the command-line arguments)
    on_epoch_end : callable(history) after each epoch (e.g. to write history files)

    The process's malloc then keeps the memory a step frees for the next one
    (:func:`fastconv.keep_freed_memory`): 30% faster LeNet-5 steps, where glibc would
    otherwise fault the same pages in again at every step.

    Returns
    -------
    history : dict of lists, keys HISTORY_KEYS, one value per epoch (epoch is 1-based;
    test_* are NaN without a test_loader), and STEP_KEYS, one value per training step
    (``step_loss`` is that batch's loss, before the update; ``step_epoch`` the step's end in
    epochs, to plot it under the per-epoch curves).
    """
    keep_freed_memory()     # every step reuses the memory the last one freed (no page faults)
    loss_fn = loss_fn or _default_loss()
    history = {k: [] for k in HISTORY_KEYS + STEP_KEYS}
    start_epoch = 0
    if resume is not None:
        start_epoch, history, _ = load_checkpoint(resume, model, optimizer)
        if start_epoch > epochs:
            raise CheckpointError(f"checkpoint {resume} is after epoch {start_epoch}, beyond the "
                                  f"{epochs} epochs asked for; ask for more epochs to continue it")
        if log:
            log(f"resumed from {resume} after epoch {start_epoch}"
                + (": all epochs are done" if start_epoch == epochs else ""))
    steps = len(train_loader)
    for epoch in range(start_epoch, epochs):
        train_loader.set_epoch(epoch)
        t0 = time.perf_counter()

        def record_step(b, loss, epoch=epoch):
            history["step"].append(epoch * steps + b + 1)
            history["step_epoch"].append(epoch + (b + 1) / steps)
            history["step_loss"].append(loss)
        train_loss, train_acc, ips = train_epoch(
            model, train_loader, optimizer, loss_fn, schedule, first_step=epoch * steps,
            progress=progress, desc=f"epoch {epoch + 1}/{epochs}", on_step=record_step)
        test_loss, test_acc = (evaluate(model, test_loader, loss_fn) if test_loader is not None
                               else (math.nan, math.nan))
        seconds = time.perf_counter() - t0
        row = dict(epoch=epoch + 1, lr=optimizer.lr, train_loss=train_loss, train_acc=train_acc,
                   test_loss=test_loss, test_acc=test_acc, seconds=seconds, images_per_s=ips)
        for k in HISTORY_KEYS:
            history[k].append(row[k])
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimizer, epoch + 1, history, meta)
        if log:
            log(f"epoch {epoch + 1:3d}/{epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                f"test loss {test_loss:.4f} acc {test_acc:.4f}  {seconds / 60:.2f} min  "
                f"{ips:.0f} img/s")
        if on_epoch_end is not None:
            on_epoch_end(history)
    return history


# --------------------------------------------------------------------------- fine-tuning

def load_pretrained(path, model, new_head=False, log=None):
    """Start ``model`` from a trained checkpoint's weights (fine-tuning; the optimiser,
    epoch and history of the checkpoint are not used).

    Every parameter and buffer outside the head (``model.head_names()``: the last top-level
    layer with parameters) must be in the checkpoint with the same shape, else
    CheckpointError names what does not fit and the model is left unchanged. The head is
    loaded too, unless its shapes differ (another number of classes) or ``new_head`` is
    True: then it keeps the model's fresh initialisation.

    Returns the names of the entries left at their initial values (the new head, or []).
    """
    ck = read_checkpoint(path)
    saved, own = ck["model"], model.state_dict()
    head = model.head_layer()
    in_head = model.head_names()
    body = {n: v for n, v in own.items() if n not in in_head}
    missing = sorted(set(body) - set(saved) - model.optional_state_names())
    body = {n: v for n, v in body.items() if n in saved}
    unexpected = sorted(n for n in set(saved) - set(own)
                        if head and not n.startswith(head + "."))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path}: its body does not fit {type(model).__name__}: "
                              f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                              f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
                              f"(a checkpoint of another model?)")
    bad = [f"{n} {np.shape(saved[n])} in the checkpoint, {np.shape(v)} here"
           for n, v in body.items() if np.shape(saved[n]) != np.shape(v)]
    if bad:
        raise CheckpointError(f"checkpoint {path}: its body does not fit {type(model).__name__}: "
                              + "; ".join(bad[:4]) + (" ..." if len(bad) > 4 else ""))
    optional = model.optional_state_names()
    keep_head = not new_head and all(np.shape(saved[n]) == np.shape(own[n]) if n in saved
                                     else n in optional for n in in_head)
    state = dict(own)
    state.update({n: saved[n] for n in body})
    if keep_head:
        state.update({n: saved[n] for n in in_head if n in saved})
    model.load_state_dict(state)
    fresh = [] if keep_head else in_head
    if log and fresh:
        log(f"loaded {path}; new head {head!r} "
            + ("(as asked)" if new_head else "(its shape differs: another number of classes)"))
    elif log:
        log(f"loaded {path} (all {len(state)} entries)")
    return fresh


def _fingerprint(body, loader):
    """A hash of the body's weights and of the loader's images and preprocessing: a cache
    of features is reused only for the same body and data."""
    import hashlib
    h = hashlib.sha256()
    for name, value in sorted(body.state_dict().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(value).tobytes())
    h.update(np.ascontiguousarray(loader.x).tobytes())
    h.update(repr((loader.x.shape, loader.dtype, loader.normalize)).encode())
    return h.hexdigest()


def precompute_features(body, loader, path=None, log=None):
    """Run a (frozen) body once over every image of ``loader`` and keep its outputs, so a new
    head trains on them without the body's forward and backward at every step (the notes'
    ``precompute=True``).

    Parameters
    ----------
    body : Module, run in eval mode (BatchNorm uses running statistics, no dropout)
    loader : fastconv.data.DataLoader without augmentation (a cache of features holds one
        view of each image; augmenting needs the body in the loop). Its order is kept.
    path : .npz file or None. When it holds features of the same body weights and images
        they are loaded instead of computed; else they are computed and written atomically.

    Returns
    -------
    (features, labels) : arrays (N, ...) in the loader's dtype, and (N,) int64.
    """
    if loader.augment is not None:
        raise ValueError("precompute_features: the loader augments its images; precomputed "
                         "features would freeze one random view of each. Use a loader without "
                         "augmentation (augment the whole model's training instead)")
    if loader.shuffle:
        raise ValueError("precompute_features: the loader shuffles; give one with shuffle=False "
                         "(the features are stored in the images' order)")
    key = _fingerprint(body, loader)
    if path is not None and os.path.isfile(path):
        try:
            with np.load(path, allow_pickle=False) as f:
                if str(f["fingerprint"]) == key:
                    if log:
                        log(f"features from the cache {path}")
                    return f["features"], f["labels"]
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError):
            pass       # damaged or foreign file: compute again and replace it
    was_training = body.training
    body.eval()
    feats, labels = [], []
    try:
        with no_grad():
            for xb, yb in loader:
                feats.append(body(xb).copy())     # copy: a layer may reuse its output buffer
                labels.append(yb)
    finally:
        body.train(was_training)
    features, labels = np.concatenate(feats), np.concatenate(labels)
    if path is not None:
        atomic_savez(path, features=features, labels=labels, fingerprint=np.array(key))
        if log:
            log(f"wrote {path}: features {features.shape} {features.dtype}")
    return features, labels


# --------------------------------------------------------------------------- several outputs

def accuracy(logits, labels):
    """The fraction of rows whose largest logit is at the label: (N, classes), (N,) -> float."""
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def box_iou(pred, target):
    """Mean intersection over union of boxes given as (N, 4) rows (x0, y0, x1, y1), x1 >= x0,
    y1 >= y0 (a predicted box with x1 < x0 is empty). Each IoU is in [0, 1]."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    ix = np.clip(np.minimum(pred[:, 2], target[:, 2]) - np.maximum(pred[:, 0], target[:, 0]), 0, None)
    iy = np.clip(np.minimum(pred[:, 3], target[:, 3]) - np.maximum(pred[:, 1], target[:, 1]), 0, None)
    inter = ix * iy
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    union = area(pred) + area(target) - inter
    return float(np.mean(np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)))


def _check_heads(losses, loss_weights, metrics):
    losses = list(losses)
    weights = [1.0] * len(losses) if loss_weights is None else [float(w) for w in loss_weights]
    if len(weights) != len(losses):
        raise ValueError(f"loss_weights has {len(weights)} values {weights} but there are "
                         f"{len(losses)} losses (one per output)")
    metrics = [None] * len(losses) if metrics is None else list(metrics)
    if len(metrics) != len(losses):
        raise ValueError(f"metrics has {len(metrics)} entries but there are {len(losses)} "
                         f"losses (one per output; None for no metric)")
    return losses, weights, metrics


def _as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


def evaluate_multi(model, loader, losses, metrics=None, names=None):
    """Per output: the mean loss and the mean metric over ``loader`` (an ArraysLoader),
    model in eval mode. Returns {name: {"loss": ..., "metric": ...}}."""
    losses, _, metrics = _check_heads(losses, None, metrics)
    names = list(names or getattr(model, "outputs", range(len(losses))))
    sums = np.zeros((len(losses), 2))
    count = 0
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for xs, ts in loader:
                outs = _as_tuple(model(xs))
                n = len(ts[0])
                for i, (o, t, lf, mf) in enumerate(zip(outs, ts, losses, metrics)):
                    sums[i, 0] += float(lf.forward(o, t)) * n
                    sums[i, 1] += (mf(o, t) if mf else math.nan) * n
                count += n
    finally:
        model.train(was_training)
    return {str(name): {"loss": s[0] / max(count, 1), "metric": s[1] / max(count, 1)}
            for name, s in zip(names, sums)}


def fit_multi(model, train_loader, optimizer, epochs, losses, loss_weights=None, metrics=None,
              schedule=None, test_loader=None, log=print):
    """Train a model with several outputs (e.g. a :class:`fastconv.nn.Graph`) on the
    weighted sum of one loss per output: ``L = sum_i loss_weights[i] * losses[i](out_i, t_i)``,
    so output i's gradient is ``loss_weights[i] * dloss_i`` (the notes' Keras
    ``loss_weights=[.001, 1.]``).

    Parameters
    ----------
    model : Module whose forward takes the loader's input tuple and returns one array per output
    train_loader, test_loader : fastconv.data.ArraysLoader yielding (inputs, targets) tuples
    losses : one loss module per output (e.g. CrossEntropyLoss(), MSELoss())
    loss_weights : one float per output (default all 1); a wrong length is a ValueError
    metrics : one callable (output, target) -> float per output, or None entries
        (e.g. [accuracy, box_iou]); reported per output on the test set
    schedule : callable step -> lr, or None

    Returns the history: {"epoch", "train_loss", "<output>_loss", "<output>_metric" (test)}.
    """
    keep_freed_memory()
    losses, weights, metrics = _check_heads(losses, loss_weights, metrics)
    names = [str(n) for n in getattr(model, "outputs", range(len(losses)))]
    if len(names) != len(losses):
        raise ValueError(f"fit_multi: {len(losses)} losses for a model with {len(names)} outputs "
                         f"{names}")
    history = {"epoch": [], "train_loss": [], "seconds": []}
    for n in names:
        history[f"{n}_loss"], history[f"{n}_metric"] = [], []
    steps = len(train_loader)
    for epoch in range(epochs):
        train_loader.set_epoch(epoch)
        model.train()
        t0, total, count = time.perf_counter(), 0.0, 0
        for b, (xs, ts) in enumerate(train_loader):
            if schedule is not None:
                optimizer.lr = schedule(epoch * steps + b)
            optimizer.zero_grad()
            outs = _as_tuple(model(xs))
            loss = sum(w * float(lf.forward(o, t)) for o, t, lf, w in zip(outs, ts, losses, weights))
            if not math.isfinite(loss):
                raise FloatingPointError(f"fit_multi: the loss became {loss} at epoch {epoch + 1} "
                                         f"step {b} (lr {optimizer.lr:.3g}); lower the learning rate")
            model.backward_params(tuple(lf.backward() * o.dtype.type(w)
                                        for o, lf, w in zip(outs, losses, weights)))
            optimizer.step()
            total += loss * len(ts[0])
            count += len(ts[0])
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(total / max(count, 1))
        history["seconds"].append(time.perf_counter() - t0)
        report = evaluate_multi(model, test_loader, losses, metrics, names) if test_loader else {}
        for n in names:
            history[f"{n}_loss"].append(report.get(n, {}).get("loss", math.nan))
            history[f"{n}_metric"].append(report.get(n, {}).get("metric", math.nan))
        if log:
            heads = "  ".join(f"{n}: loss {history[f'{n}_loss'][-1]:.4f} metric "
                              f"{history[f'{n}_metric'][-1]:.4f}" for n in names)
            log(f"epoch {epoch + 1:3d}/{epochs}  train loss {history['train_loss'][-1]:.4f}  "
                f"test {heads}  {history['seconds'][-1] / 60:.2f} min")
    return history
