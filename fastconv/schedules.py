"""Learning-rate schedules and the LR range test (``lr_find``).

A schedule is a function of the step: ``schedule(t)`` is the learning rate for
optimiser step t = 0, 1, 2, ... (one step per mini-batch). Schedules hold no state,
so a resumed run just asks for ``schedule(t)`` at its global step. The formulas are
those of ``torch.optim.lr_scheduler`` when that scheduler is stepped once per batch:

* step:     lr * gamma ** (t // step_size)                                   (StepLR)
* cosine:   min_lr + (lr - min_lr) * (1 + cos(pi * t / T)) / 2               (CosineAnnealingLR)
* restarts: the cosine above restarted every cycle, cycle i lasting
            cycle_len * cycle_mult**i steps — the notes' SGDR (fastai's ``cycle_len``
            and ``cycle_mult``; PyTorch's CosineAnnealingWarmRestarts(T_0, T_mult))
* onecycle: cosine warm-up from max_lr/div_factor to max_lr over pct_start of the run,
            then cosine down to max_lr/(div_factor*final_div_factor)          (OneCycleLR)

``lr_find`` is the LR range test of the notes (fastai's ``lr_find()``): train for a
few hundred steps while the LR grows exponentially, record the loss, and pick an LR
where the loss falls fastest (or one tenth of the LR where it is lowest).
"""
import math
import sys

import numpy as np

from ._malloc import keep_freed_memory

__all__ = ["Schedule", "ConstantLR", "StepLR", "CosineLR", "CosineWarmRestarts", "OneCycleLR",
           "make_schedule", "SCHEDULES", "lr_find", "LRFinderResult"]


class Schedule:
    """Base class: ``schedule(t) -> lr`` for step t >= 0; ``values(n)`` for plots and tests."""

    def __call__(self, t):
        raise NotImplementedError

    def values(self, n):
        return np.array([self(t) for t in range(n)])

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _cosine(start, end, pct):
    """From ``start`` (pct = 0) to ``end`` (pct = 1) along half a cosine."""
    return end + (start - end) * (1 + math.cos(math.pi * pct)) / 2


class ConstantLR(Schedule):
    """The same LR at every step."""

    def __init__(self, lr):
        self.lr = float(lr)

    def __call__(self, t):
        return self.lr


class StepLR(Schedule):
    """Multiply the LR by ``gamma`` every ``step_size`` steps: lr * gamma ** (t // step_size)."""

    def __init__(self, lr, step_size, gamma=0.1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.lr, self.step_size, self.gamma = float(lr), int(step_size), float(gamma)

    def __call__(self, t):
        return self.lr * self.gamma ** (t // self.step_size)


class CosineLR(Schedule):
    """Cosine annealing from ``lr`` to ``min_lr`` over ``total_steps``, after an optional
    linear warm-up of ``warmup_steps`` (from lr/warmup_steps up to lr)."""

    def __init__(self, lr, total_steps, min_lr=0.0, warmup_steps=0):
        if total_steps < 1 or not 0 <= warmup_steps < total_steps:
            raise ValueError(f"CosineLR: need total_steps >= 1 and 0 <= warmup_steps < total_steps, "
                             f"got {total_steps}, {warmup_steps}")
        self.lr, self.total_steps = float(lr), int(total_steps)
        self.min_lr, self.warmup_steps = float(min_lr), int(warmup_steps)

    def __call__(self, t):
        if t < self.warmup_steps:
            return self.lr * (t + 1) / self.warmup_steps
        pct = min(1.0, (t - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return _cosine(self.lr, self.min_lr, pct)


class CosineWarmRestarts(Schedule):
    """SGDR: cosine annealing from ``lr`` to ``min_lr`` that restarts at ``lr`` after each
    cycle; the first cycle lasts ``cycle_len`` steps and each next one ``cycle_mult`` times
    longer (the notes: ``cycle_len=1`` epoch brings the LR back every epoch,
    ``cycle_mult=2`` doubles the cycles: 1, 2, 4, ... epochs).
    """

    def __init__(self, lr, cycle_len, cycle_mult=1, min_lr=0.0):
        if cycle_len < 1 or cycle_mult < 1:
            raise ValueError(f"CosineWarmRestarts: cycle_len and cycle_mult must be >= 1, got "
                             f"{cycle_len}, {cycle_mult}")
        self.lr, self.cycle_len, self.cycle_mult = float(lr), int(cycle_len), int(cycle_mult)
        self.min_lr = float(min_lr)

    def cycle(self, t):
        """(index of the cycle, step within it, length of the cycle) for step t."""
        i, start, length = 0, 0, self.cycle_len
        while t >= start + length:      # integer arithmetic: no log() rounding at boundaries
            start += length
            length *= self.cycle_mult
            i += 1
        return i, t - start, length

    def __call__(self, t):
        _, t_cur, length = self.cycle(t)
        return _cosine(self.lr, self.min_lr, t_cur / length)


class OneCycleLR(Schedule):
    """The one-cycle policy (Smith 2018; ``torch.optim.lr_scheduler.OneCycleLR`` with cosine
    annealing, two phases): from max_lr/div_factor up to ``max_lr`` over the first
    ``pct_start`` of ``total_steps``, then down to max_lr/(div_factor*final_div_factor)."""

    def __init__(self, max_lr, total_steps, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
        if total_steps < 2 or not 0 < pct_start < 1:
            raise ValueError(f"OneCycleLR: need total_steps >= 2 and 0 < pct_start < 1, got "
                             f"{total_steps}, {pct_start}")
        self.max_lr, self.total_steps, self.pct_start = float(max_lr), int(total_steps), float(pct_start)
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)

    def __call__(self, t):
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        up_end = self.pct_start * self.total_steps - 1      # PyTorch's phase boundaries
        down_end = self.total_steps - 1
        if t <= up_end:
            return _cosine(initial, self.max_lr, t / up_end if up_end > 0 else 1.0)
        return _cosine(self.max_lr, final, min(1.0, (t - up_end) / (down_end - up_end)))


SCHEDULES = ("constant", "step", "cosine", "restarts", "onecycle")


def make_schedule(name, lr, epochs, steps_per_epoch, step_size=None, gamma=0.1, min_lr=0.0,
                  warmup_epochs=0, cycle_len=1, cycle_mult=1, pct_start=0.3):
    """Build a schedule by name with its lengths given in EPOCHS (converted to steps).

    ``step``: multiply by gamma every ``step_size`` epochs (default: a third of the run);
    ``cosine``: anneal over the run after ``warmup_epochs``; ``restarts``: SGDR with
    ``cycle_len`` and ``cycle_mult`` epochs; ``onecycle``: peak ``lr`` at ``pct_start``.
    """
    total = max(1, int(epochs * steps_per_epoch))
    if name == "constant":
        return ConstantLR(lr)
    if name == "step":
        size = step_size if step_size else max(1, epochs // 3)
        return StepLR(lr, max(1, round(size * steps_per_epoch)), gamma)
    if name == "cosine":
        return CosineLR(lr, total, min_lr, warmup_steps=int(round(warmup_epochs * steps_per_epoch)))
    if name == "restarts":
        return CosineWarmRestarts(lr, max(1, round(cycle_len * steps_per_epoch)), cycle_mult, min_lr)
    if name == "onecycle":
        return OneCycleLR(lr, max(2, total), pct_start)
    raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")


# --------------------------------------------------------------------------- LR range test

def _centred_mean(values, window):
    """Mean of ``values`` over ``window`` points centred on each one (fewer at the ends).
    Unlike the running average it does not lag behind: a fall shows at the LR that caused it."""
    values = np.asarray(values, dtype=np.float64)
    half = window // 2
    padded = np.concatenate([[0.0], np.cumsum(values)])
    lo = np.clip(np.arange(len(values)) - half, 0, len(values))
    hi = np.clip(np.arange(len(values)) + half + 1, 0, len(values))
    return (padded[hi] - padded[lo]) / (hi - lo)


def _centred_median(values, window):
    """Median of ``values`` over ``window`` points centred on each one (the ends repeated):
    one lucky or unlucky batch cannot move it."""
    half = window // 2
    padded = np.pad(np.asarray(values, dtype=np.float64), half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)


def _suggest(lrs, losses):
    """(steepest, min_div_10, window) from an LR range test.

    steepest: the LR where the loss falls fastest. The raw losses are replaced by their median
    over a centred window of ``window`` steps (a twentieth of the test, at least 5; a median,
    so that a single batch cannot make a cliff), the slope against log(LR) is the
    least-squares slope over the same window, and only points after the first tenth of the
    test (where the loss is still the initial loss plus noise) and before the lowest loss of
    that curve are considered. min_div_10: a tenth of the LR of the lowest averaged
    loss (the other rule of thumb). Both are NaN when the loss never falls by more than twice
    the noise of the first steps.
    """
    n = len(lrs)
    finite = np.isfinite(losses)
    if n < 8 or not finite.any():
        return math.nan, math.nan, 0
    stop = n if finite.all() else int(np.argmin(finite))     # up to the first NaN / Inf
    window = max(5, n // 20) | 1
    curve = _centred_median(losses[:stop], window)
    log_lr = np.log10(lrs[:stop])
    # Least-squares slope over the window: cov(log_lr, curve) / var(log_lr).
    x_mean, y_mean = _centred_mean(log_lr, window), _centred_mean(curve, window)
    xy, xx = _centred_mean(log_lr * curve, window), _centred_mean(log_lr * log_lr, window)
    slope = (xy - x_mean * y_mean) / np.maximum(xx - x_mean ** 2, 1e-30)
    skip = max(window // 2, n // 10)
    if stop - skip < 3:
        return math.nan, math.nan, window
    lowest = skip + int(np.argmin(curve[skip:]))
    noise = float(np.std(losses[:skip])) if skip > 1 else 0.0
    if lowest <= skip or curve[skip] - curve[lowest] <= 2 * noise:     # it never really fell
        return math.nan, math.nan, window
    steepest = skip + int(np.argmin(slope[skip:lowest + 1]))
    if slope[steepest] >= 0:
        return math.nan, float(lrs[lowest]) / 10, window
    return float(lrs[steepest]), float(lrs[lowest]) / 10, window


class LRFinderResult:
    """What ``lr_find`` measured: ``lrs``, raw ``losses``, ``smoothed`` losses (the running
    average used to stop the test), and two suggestions: ``steepest`` (= ``suggestion``), the
    LR where the loss falls fastest, and ``min_div_10``, a tenth of the LR of the lowest loss
    (NaN when the loss never fell: then no LR in the range trained).
    """

    def __init__(self, lrs, losses, smoothed):
        self.lrs, self.losses, self.smoothed = np.asarray(lrs), np.asarray(losses), np.asarray(smoothed)
        self.steepest, self.min_div_10, self.window = _suggest(self.lrs, self.losses)
        self.suggestion = self.steepest

    def __repr__(self):
        return (f"LRFinderResult({len(self.lrs)} steps, lr {self.lrs[0]:.2g} to {self.lrs[-1]:.2g}: "
                f"steepest descent at {self.steepest:.3g}, minimum / 10 = {self.min_div_10:.3g})")

    @property
    def tenth_of_lowest(self):
        """A tenth of the LR where the smoothed loss is lowest (the notes' second rule): the
        steadier choice for a model that is already trained, whose loss barely moves at
        small LRs, so that the steepest-descent point is noise."""
        if not len(self.lrs):
            return float("nan")
        return float(self.lrs[int(np.nanargmin(self.smoothed))]) / 10

    def table(self, rows=15):
        idx = np.unique(np.linspace(0, len(self.lrs) - 1, min(rows, len(self.lrs))).astype(int))
        lines = [f"{'lr':>12} {'loss':>10} {'smoothed':>10}"]
        lines += [f"{self.lrs[i]:12.3e} {self.losses[i]:10.4f} {self.smoothed[i]:10.4f}" for i in idx]
        return "\n".join(lines)

    def save(self, prefix):
        """Write ``prefix.csv``, ``prefix.npz`` and, when matplotlib is installed, ``prefix.png``.
        Returns the list of paths written."""
        from ._files import atomic_savez, atomic_write_text
        written = []
        rows = ["lr,loss,smoothed_loss"] + [f"{a!r},{b!r},{c!r}" for a, b, c in
                                            zip(self.lrs.tolist(), self.losses.tolist(),
                                                self.smoothed.tolist())]
        written.append(atomic_write_text(f"{prefix}.csv", "\n".join(rows) + "\n"))
        written.append(atomic_savez(f"{prefix}.npz", lrs=self.lrs, losses=self.losses,
                                    smoothed=self.smoothed, suggestion=np.array(self.suggestion),
                                    min_div_10=np.array(self.min_div_10)))
        from .viz import available, plot_lr_find
        if available():                  # the PNG is optional: matplotlib may be missing
            plot_lr_find(self, path=f"{prefix}.png")
            written.append(f"{prefix}.png")
        return written


def lr_find(model, loader, optimizer, loss_fn=None, start_lr=1e-7, end_lr=10.0, num_steps=100,
            smooth=0.98, stop_factor=4.0, out=None, verbose=True):
    """LR range test: train ``num_steps`` batches with the LR growing exponentially from
    ``start_lr`` to ``end_lr``, stop early when the smoothed loss exceeds ``stop_factor``
    times its minimum, then put the model and the optimiser back as they were.

    Prints a loss-vs-LR table and the suggested LR; with ``out`` (a path prefix) also
    saves ``out.csv``, ``out.npz`` and ``out.png`` (when matplotlib is present);
    ``verbose=False`` prints nothing. With parameter groups (differential LRs) the LR
    tested is the optimiser's reference ``lr``: every group moves with it, keeping its ratio.
    Returns an :class:`LRFinderResult`.
    """
    if loss_fn is None:
        from .nn import CrossEntropyLoss
        loss_fn = CrossEntropyLoss()
    keep_freed_memory()     # as fit: each step reuses the memory the last one freed
    saved_model, saved_opt = model.state_dict(), optimizer.state_dict()
    ratio = (end_lr / start_lr) ** (1 / max(1, num_steps - 1))
    lrs, losses, smoothed = [], [], []
    avg, best = 0.0, math.inf
    model.train()
    try:
        step = 0
        while step < num_steps:
            for xb, yb in loader:
                lr = start_lr * ratio ** step
                optimizer.lr = lr
                optimizer.zero_grad()
                loss = float(loss_fn.forward(model(xb), yb))
                model.backward_params(loss_fn.backward())
                optimizer.step()
                # Exponential moving average with bias correction (fastai's smoothing).
                avg = smooth * avg + (1 - smooth) * loss
                value = avg / (1 - smooth ** (step + 1))
                lrs.append(lr), losses.append(loss), smoothed.append(value)
                best = min(best, value)
                step += 1
                if not math.isfinite(value) or value > stop_factor * best or step >= num_steps:
                    break
            if not lrs or not math.isfinite(smoothed[-1]) or smoothed[-1] > stop_factor * best:
                break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)
    result = LRFinderResult(lrs, losses, smoothed)
    file = sys.stdout if verbose else None
    if file is not None:
        print("LR range test (loss vs learning rate):", file=file)
        print(result.table(), file=file)
        print(f"suggested lr: {result.steepest:.3g} (where the loss falls fastest); "
              f"{result.min_div_10:.3g} by the other rule (a tenth of the LR of the lowest loss). "
              f"Train at either (--lr); the plot shows both." if math.isfinite(result.steepest) else
              "no suggested lr: the loss did not fall in this range (more steps, or another "
              "range: start_lr, end_lr)", file=file)
    if out is not None:
        paths = result.save(out)
        if file is not None:
            print(f"saved {', '.join(str(p) for p in paths)}", file=file)
    return result
