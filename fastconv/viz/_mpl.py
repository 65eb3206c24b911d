"""matplotlib, imported only when a figure is drawn, and atomic PNG writing.

matplotlib is an optional dependency (``pip install 'fastconv[viz]'``). Figures are built
with ``matplotlib.figure.Figure`` on an explicit Agg canvas, never through ``pyplot``: no
window opens, no global backend is switched (a notebook's backend is left alone) and no
figure is kept alive in pyplot's registry.
"""

from .._files import atomic_write

MISSING = ("fastconv.viz needs matplotlib, which is not installed. Install it with "
           "`pip install 'fastconv[viz]'` (or `pip install matplotlib`).")


def require():
    """Return the ``matplotlib.figure.Figure`` class, or raise ImportError with :data:`MISSING`.

    Imported on every call (cheap once loaded) rather than cached, so that the message is
    right whether or not matplotlib appears or disappears (the tests simulate its absence).
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    return Figure


def available():
    """True when matplotlib can be imported."""
    try:
        require()
    except ImportError:
        return False
    return True


def new_figure(width, height, dpi=100):
    """A Figure of ``width`` x ``height`` inches on an Agg canvas (so savefig never needs a GUI)."""
    Figure = require()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path):
    """Write ``fig`` as PNG to ``path`` atomically (temporary file in the same folder, then
    ``os.replace``), creating the folder. The size is exactly figsize x dpi pixels (no
    ``bbox_inches="tight"``, which would change it). Returns ``path``."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=fig.dpi))


def finish(fig, path):
    """Save ``fig`` to ``path`` when one is given; return the figure either way."""
    if path is not None:
        save_png(fig, path)
    return fig
