"""gradcheck: compare a layer's or a model's ``backward`` with finite differences.

    >>> import numpy as np, fastconv, fastconv.nn as nn
    >>> layer = nn.Conv2d(2, 3, 3, padding=1)
    >>> report = fastconv.gradcheck(layer, np.random.default_rng(0).standard_normal((2, 2, 5, 5)))
    >>> report.ok
    True

How it works. The module is deep-copied and converted to float64 (the original is left
alone), and the scalar loss ``L(x, params) = sum(module(x) * g)`` with a fixed random ``g``
(a random projection of the output) is differentiated two ways:

* analytically: ``module.backward(g)`` gives dL/dx and fills every ``param.grad``;
* numerically, by central differences ``(L(v + h) - L(v - h)) / (2h)`` for a random
  sample of coordinates of x and of every parameter (all of them for small tensors).

Randomness is frozen: every ``numpy.random.Generator`` a layer owns (Dropout's masks) is
rewound before each forward, so every evaluation drops the same values. The module's
train/eval mode is kept: in training mode BatchNorm uses batch statistics, which are a
smooth function of x and are checked as such (its running statistics change between the
evaluations but do not affect the output).

Models with several inputs or outputs (:class:`fastconv.nn.Graph`): give ``x`` as a tuple
of arrays; the loss sums one random projection per output, and each input is checked
("input.0", "input.1", ...).

Kinks (ReLU at 0, ties in max pooling) are not differentiable; with random float64 inputs
a perturbation of h = 1e-6 crosses one with negligible probability.
"""
import copy

import numpy as np

__all__ = ["gradcheck", "GradcheckReport", "GradcheckError"]


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` when an analytic gradient disagrees with the numeric one."""


class GradcheckReport:
    """The result of :func:`gradcheck`: one row per checked tensor ("input", then each
    parameter by its dotted name) with the largest absolute and relative errors.

    ``report.ok`` (also ``bool(report)``) is True when every coordinate satisfies
    ``|analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|)``.
    ``report.max_rel_error`` maps names to their largest relative error.
    """

    def __init__(self, rows, rtol, atol):
        self.rows, self.rtol, self.atol = rows, rtol, atol

    @property
    def ok(self):
        return all(r["ok"] for r in self.rows)

    def __bool__(self):
        return self.ok

    @property
    def max_rel_error(self):
        return {r["name"]: r["max_rel"] for r in self.rows}

    def __str__(self):
        width = max([len("tensor")] + [len(r["name"]) for r in self.rows])
        lines = [f"{'tensor':<{width}}  {'shape':<18} {'checked':>7}  {'max abs err':>11}  "
                 f"{'max rel err':>11}  ok"]
        for r in self.rows:
            lines.append(f"{r['name']:<{width}}  {str(r['shape']):<18} {r['checked']:>7}  "
                         f"{r['max_abs']:>11.3e}  {r['max_rel']:>11.3e}  "
                         f"{'yes' if r['ok'] else 'NO'}")
        lines.append(f"{'passed' if self.ok else 'FAILED'} (rtol={self.rtol:g}, atol={self.atol:g})")
        return "\n".join(lines)

    __repr__ = __str__


def _generators(module):
    """Every (owner, attribute name, Generator) in the module tree: the run-time randomness."""
    found = []
    for m in module.modules():
        for name, value in vars(m).items():
            if isinstance(value, np.random.Generator):
                found.append((m, name, value))
    return found


def gradcheck(module, x, *, h=1e-6, rtol=1e-5, atol=1e-7, max_coords=12, seed=0,
              check_input=True, raise_on_failure=True):
    """Check ``module.backward`` against central finite differences in float64.

    Parameters
    ----------
    module : fastconv.nn.Module
        A layer or a whole model (deep-copied and converted to float64; not changed).
    x : array, or tuple of arrays for a model with several inputs
        An input batch (converted to float64).
    h : float
        The finite-difference step.
    rtol, atol : float
        A coordinate passes when ``|analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|)``.
    max_coords : int
        Coordinates checked per tensor, drawn at random without replacement (every coordinate
        of a tensor that has no more). Each costs two forward passes.
    seed : int
        Seeds the projection ``g`` and the choice of coordinates.
    check_input : bool
        Also check dL/dx (turn off for inputs that are not differentiable, e.g. labels).
    raise_on_failure : bool
        Raise :class:`GradcheckError` (with the report) on a mismatch; otherwise return the
        report, which is falsy.

    Returns
    -------
    GradcheckReport
    """
    m = copy.deepcopy(module).to(np.float64)
    multi = isinstance(x, (tuple, list))
    xs = [np.array(a, dtype=np.float64) for a in (x if multi else [x])]    # our own copies
    rng = np.random.default_rng(seed)
    generators = [(owner, name, gen.bit_generator.state) for owner, name, gen in _generators(m)]

    def run():
        for owner, name, state in generators:          # same Dropout masks every time
            getattr(owner, name).bit_generator.state = copy.deepcopy(state)
        # copies: in-place layers may write to their input
        y = m(tuple(a.copy() for a in xs) if multi else xs[0].copy())
        return y if isinstance(y, tuple) else (y,)

    ys = run()
    gs = [rng.standard_normal(y.shape) for y in ys]
    m.zero_grad()
    dx = m.backward(tuple(g.copy() for g in gs) if len(gs) > 1 else gs[0].copy())
    dxs = list(dx) if multi else [dx]

    def loss():
        return float(sum(np.sum(y * g) for y, g in zip(run(), gs)))

    targets = []
    if check_input:
        targets += [(f"input.{i}" if multi else "input", a, np.asarray(d))
                    for i, (a, d) in enumerate(zip(xs, dxs))]
    targets += [(name, p.data, p.grad.copy()) for name, p in m.named_parameters()]

    rows = []
    for name, value, analytic in targets:
        flat, aflat = value.reshape(-1), analytic.reshape(-1)
        if flat.size <= max_coords:
            coords = np.arange(flat.size)
        else:
            coords = np.sort(rng.choice(flat.size, size=max_coords, replace=False))
        max_abs = max_rel = 0.0
        ok = True
        for i in coords:
            old = flat[i]
            flat[i] = old + h
            f_plus = loss()
            flat[i] = old - h
            f_minus = loss()
            flat[i] = old
            numeric = (f_plus - f_minus) / (2 * h)
            a = float(aflat[i])
            err = abs(a - numeric)
            scale = max(abs(a), abs(numeric))
            max_abs = max(max_abs, err)
            max_rel = max(max_rel, err / scale if scale > 0 else 0.0)
            ok &= err <= atol + rtol * scale
        rows.append(dict(name=name, shape=tuple(value.shape), checked=len(coords),
                         max_abs=max_abs, max_rel=max_rel, ok=bool(ok)))
    report = GradcheckReport(rows, rtol, atol)
    if raise_on_failure and not report.ok:
        raise GradcheckError(f"gradcheck of {type(module).__name__} failed:\n{report}")
    return report
