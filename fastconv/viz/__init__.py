"""See inside a network: filters, feature maps, receptive fields and training curves.

    >>> from fastconv.viz import plot_filters
    >>> fig = plot_filters(model.conv1, path="filters.png")      # doctest: +SKIP

Every ``plot_*`` function returns a matplotlib ``Figure`` and, given ``path``, writes it as
a PNG (atomically). ``write_report`` draws them all for a trained model into a folder with
an offline ``index.html`` that explains each picture; ``fastconv viz CHECKPOINT`` does that
from the command line (``write_box_report`` for the class + box model of
``python -m fastconv.multitask``: its predicted boxes and test IoU).

matplotlib is optional: ``pip install 'fastconv[viz]'`` (or ``pip install matplotlib``).
This package imports without it; drawing raises ImportError saying what to install.
Figures use the Agg canvas directly: nothing is displayed and pyplot's global state (a
notebook's backend included) is not touched.
"""
from ._mpl import MISSING, available
from .figures import (activation, confusion_matrix, layer_names, plot_confusion_matrix,
                      plot_boxes, plot_feature_maps, plot_filters, plot_history, plot_lr_find,
                      plot_receptive_field, resolve_layer)
from .report import save_training_figures, write_box_report, write_index, write_report

__all__ = ["plot_filters", "plot_feature_maps", "plot_history", "plot_receptive_field",
           "plot_lr_find", "plot_confusion_matrix", "plot_boxes", "confusion_matrix", "activation",
           "layer_names", "resolve_layer", "write_report", "write_box_report", "write_index",
           "save_training_figures", "available", "MISSING"]
