"""Figures and widgets: mask overlays, episode grids, per-class IoU bars, an episode browser.

Figures are built without pyplot and returned: in a notebook ``show(fig, path)`` saves and displays one (a PNG
output); importing this package inside IPython also registers a PNG formatter for figures, so ``display(fig)`` or
a figure left last in a cell renders as an image too. Elsewhere ``fig.savefig(path)``. Widgets import ipywidgets
lazily, so this package imports headless.
"""
from .attention import (attention_explorer, attention_map, plot_attention, plot_prior, plot_proposals,
                        plot_self_alignment)
from .display import enable_notebook_figures, show
from .figures import mask_iou, plot_episode, plot_label_legend, plot_per_class_iou, plot_predictions
from .overlays import denormalize, image_to_hwc, label_colors, overlay_mask
from .widgets import episode_browser, figure_to_png, show_episode

__all__ = [
    "attention_explorer",
    "attention_map",
    "denormalize",
    "enable_notebook_figures",
    "episode_browser",
    "figure_to_png",
    "image_to_hwc",
    "label_colors",
    "mask_iou",
    "overlay_mask",
    "plot_episode",
    "plot_label_legend",
    "plot_per_class_iou",
    "plot_attention",
    "plot_predictions",
    "plot_prior",
    "plot_proposals",
    "plot_self_alignment",
    "show",
    "show_episode",
]

enable_notebook_figures()  # no-op outside IPython
