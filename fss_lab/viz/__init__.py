"""Figures and widgets: mask overlays, episode grids, per-class IoU bars, an episode browser.

Figures are built without pyplot and returned (never shown): put the call last in a notebook cell, or
``fig.savefig(path)``. Widgets import ipywidgets lazily, so this package imports headless.
"""
from .figures import mask_iou, plot_episode, plot_label_legend, plot_per_class_iou, plot_predictions
from .overlays import denormalize, image_to_hwc, label_colors, overlay_mask
from .widgets import episode_browser, figure_to_png, show_episode

__all__ = [
    "denormalize",
    "episode_browser",
    "figure_to_png",
    "image_to_hwc",
    "label_colors",
    "mask_iou",
    "overlay_mask",
    "plot_episode",
    "plot_label_legend",
    "plot_per_class_iou",
    "plot_predictions",
    "show_episode",
]
