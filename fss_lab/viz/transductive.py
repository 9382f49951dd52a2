"""Figures for transductive inference (DIaM, RePRI): per-pixel entropy, class proportions, and an iteration slider."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from .overlays import denormalize, image_to_hwc, label_colors, overlay_mask


def pixel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy per pixel, in nats.

    Args:
        probs: probabilities ``[C, H, W]`` (or ``[..., C, H, W]``), summing to 1 over ``C``.

    Returns:
        ``[H, W]`` (or ``[..., H, W]``) entropy ``-sum_c p_c log p_c`` (0 = certain, ``log C`` = uniform).
    """
    p = probs.clamp_min(1e-12)
    return -(p * p.log()).sum(-3)


def plot_entropy_maps(image: torch.Tensor, before: torch.Tensor, after: torch.Tensor, mean, std,
                      title: str = "per-pixel entropy") -> Figure:
    """Query image and its per-pixel prediction entropy before and after transductive inference.

    Args:
        image: normalised query ``[3, H, W]``; ``mean`` / ``std``: its normalisation.
        before / after: probabilities ``[C, h, w]`` (any resolution; shown as they are).

    Returns:
        A matplotlib ``Figure`` with three panels and a shared colour bar (nats).
    """
    e0, e1 = pixel_entropy(before).cpu().numpy(), pixel_entropy(after).cpu().numpy()
    vmax = float(max(e0.max(), e1.max(), 1e-6))
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].imshow(image_to_hwc(denormalize(image, mean, std)))
    axes[0].set_title("query")
    for ax, e, name in ((axes[1], e0, f"before (mean {e0.mean():.2f})"), (axes[2], e1, f"after (mean {e1.mean():.2f})")):
        im = ax.imshow(e, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(name)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(im, ax=axes[1:], shrink=0.8, label="entropy (nats)")
    fig.suptitle(title, fontweight="bold")
    return fig


def plot_class_proportions(proportions: dict[str, np.ndarray | torch.Tensor], class_names: Sequence[str],
                           title: str = "predicted class proportions", top: int = 12) -> Figure:
    """Grouped bars of class proportions (e.g. before / after inference / ground truth) for one query or a set.

    Classes at 0 in every series are left out (e.g. "background" on CamVid, which has no background pixels).

    Args:
        proportions: ``{series name: [C] proportions summing to 1}``.
        class_names: ``C`` names in label order.
        top: show only the ``top`` classes with the largest proportion in any series.

    Returns:
        A matplotlib ``Figure``.
    """
    names = list(proportions)
    values = np.stack([np.asarray(torch.as_tensor(v).float().cpu()) for v in proportions.values()])
    order = [i for i in np.argsort(-values.max(0))[:top] if values[:, i].max() > 0] or [int(np.argmax(values.max(0)))]
    fig = Figure(figsize=(max(6, 0.7 * len(order) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(names)
    colors = ["#8da0cb", "#fc8d62", "#66c2a5", "#e78ac3"]
    for k, name in enumerate(names):
        ax.bar(np.arange(len(order)) + (k - (len(names) - 1) / 2) * width, values[k, order], width,
               label=name, color=colors[k % len(colors)])
    ax.set_xticks(np.arange(len(order)), [class_names[i] for i in order], rotation=40, ha="right")
    ax.set_ylabel("fraction of pixels")
    ax.set_title(title, fontweight="bold")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def plot_prediction_steps(image: torch.Tensor, predictions: dict[int, torch.Tensor], target: torch.Tensor,
                          mean, std, num_classes: int, step: int, class_names: Sequence[str] | None = None,
                          ignore_index: int = 255) -> Figure:
    """Query, ground truth and the prediction stored at iteration ``step`` (the plain twin of
    :func:`iteration_slider`).

    Args:
        image: normalised ``[3, H, W]``; predictions: ``{step: labels [H, W]}``; target: labels ``[H, W]``.
        num_classes: ``C`` (for the colours).
        step: a key of ``predictions``.
        class_names: ``C`` names in label order: adds a legend of the labels in the ground truth or this step's
            prediction (background, label 0, is left untinted and out of the legend).

    Raises:
        KeyError: ``step`` was not stored (names the stored ones).
    """
    if step not in predictions:
        raise KeyError(f"no prediction stored at step {step}; stored: {sorted(predictions)}")
    rgb = image_to_hwc(denormalize(image, mean, std))
    colors = label_colors(num_classes)
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, img, name in ((axes[0], rgb, "query"),
                          (axes[1], overlay_mask(rgb, target, colors=colors), "ground truth"),
                          (axes[2], overlay_mask(rgb, predictions[step], colors=colors), f"prediction at step {step}")):
        ax.imshow(img)
        ax.set_title(name)
        ax.set_axis_off()
    if class_names is not None:
        from .figures import _legend_handles

        tgt, pred = np.asarray(torch.as_tensor(target).cpu()), np.asarray(torch.as_tensor(predictions[step]).cpu())
        labels = sorted({int(v) for v in np.unique(np.concatenate([tgt[tgt != ignore_index], pred.ravel()]))} - {0})
        names = {k: class_names[k] for k in labels if k < len(class_names)}
        if labels:
            fig.legend(handles=_legend_handles(labels, colors, names, bool((tgt == ignore_index).any())),
                       loc="outside lower center", ncol=min(len(labels) + 1, 6), frameon=False, fontsize=8)
    return fig


def iteration_slider(make_figure: Callable[[int], Figure], steps: Sequence[int], description: str = "step"):
    """An ipywidgets slider over ``steps`` that shows ``make_figure(step)`` (its plain twin), as a PNG.

    Returns:
        ``ipywidgets.VBox``. Raises ImportError when ipywidgets is missing (the library itself does not need it).
    """
    import ipywidgets as widgets

    from .widgets import figure_to_png

    steps = list(steps)
    slider = widgets.SelectionSlider(options=steps, value=steps[0], description=description, continuous_update=False)
    view = widgets.Image(format="png", value=figure_to_png(make_figure(steps[0])))

    def update(change) -> None:
        view.value = figure_to_png(make_figure(change["new"]))

    slider.observe(update, names="value")
    return widgets.VBox([slider, view])
