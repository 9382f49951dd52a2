"""EFTNet's rounds, one figure per round (the plain twin) and a round slider (the widget).

:func:`plot_eftnet_round` shows, for one query of one :class:`~fss_lab.methods.eftnet.EFTNetTrace`, the query, its
ground truth, the pseudo label round ``r`` trained on, the Q2S pseudo mask, the round's prediction, and the mean
support IoU (S2Q) and query IoU of every round with the round the discrimination picks and round ``r`` marked.
:func:`eftnet_round_browser` puts a slider over the rounds (ipywidgets, imported lazily).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ..methods.eftnet import EFTNetTrace, query_iou, select_round
from .overlays import denormalize, image_to_hwc, overlay_mask


def round_curves(trace: EFTNetTrace, query_label: torch.Tensor | None = None, q: int = 0) -> dict[str, list[float]]:
    """Per round ``0..R``: ``"support_iou"`` (S2Q mean support IoU; round 0 NaN) and, with the query's label
    ``[H, W]``, ``"query_iou"`` (foreground IoU of each round's prediction), as fractions in [0, 1]."""
    out = {"support_iou": [float(v) for v in trace.support_iou[:, q]]}
    if query_label is not None:
        out["query_iou"] = query_iou(trace.predictions[:, q].long(), query_label.cpu().long()[None]).tolist()
    return out


def plot_eftnet_round(trace: EFTNetTrace, image: torch.Tensor, query_label: torch.Tensor | None, round_: int,
                      mean: Sequence[float], std: Sequence[float], q: int = 0, title: str | None = None) -> Figure:
    """One EFTNet round of one query (the plain twin of :func:`eftnet_round_browser`).

    Args:
        trace: the task's :class:`~fss_lab.methods.eftnet.EFTNetTrace` (``EFTNet(..., keep_traces=n).traces``).
        image: the normalised query image ``[3, H, W]``; ``mean`` / ``std``: its normalisation.
        query_label: ``[H, W]`` 0 / 1 / 255 ground truth (``None``: not shown, no query IoU).
        round_: ``0..R``. q: which query of the task.
        title: the figure title (default: episode and round).

    Returns:
        A matplotlib ``Figure``: 5 image panels (query, ground truth, pseudo label trained on in this round,
        Q2S pseudo mask, prediction) and the per-round IoU curves.

    Raises:
        ValueError: a round outside ``0..R``.
    """
    r_max = trace.rounds
    if not 0 <= round_ <= r_max:
        raise ValueError(f"round must be in 0..{r_max}, got {round_}")
    rgb = image_to_hwc(denormalize(image.cpu().float(), mean, std))
    colors = np.array([[0, 0, 0], [0.95, 0.2, 0.2]])
    fig = Figure(figsize=(15, 3.3), layout="constrained")
    axes = fig.subplots(1, 6, width_ratios=[1, 1, 1, 1, 1, 1.4])
    panels = [(rgb, "query"),
              (overlay_mask(rgb, query_label.cpu(), colors=colors) if query_label is not None else rgb,
               "ground truth" if query_label is not None else "(no label)")]
    if round_ == 0:
        panels += [(rgb, "pseudo label: none (round 0)"), (rgb, "Q2S mask: none (round 0)")]
    else:
        pl = trace.pseudo_labels[round_ - 1, q]
        panels += [(overlay_mask(rgb, pl, colors=colors), f"pseudo label (argmax of round {round_ - 1})"),
                   (overlay_mask(rgb, trace.pseudo_masks[round_ - 1, q], colors=colors),
                    f"Q2S mask ({int(trace.pseudo_masks[round_ - 1, q].sum())} px)")]
    curves = round_curves(trace, query_label, q)
    pred_title = f"prediction, round {round_}"
    if "query_iou" in curves:
        pred_title += f" (IoU {100 * curves['query_iou'][round_]:.1f})"
    panels.append((overlay_mask(rgb, trace.predictions[round_, q], colors=colors), pred_title))
    for ax, (img, name) in zip(axes[:5], panels):
        ax.imshow(img)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    ax = axes[5]
    rounds = list(range(r_max + 1))
    ax.plot(rounds, [100 * v for v in curves["support_iou"]], "o-", label="mean support IoU (S2Q)")
    if "query_iou" in curves:
        ax.plot(rounds, [100 * v for v in curves["query_iou"]], "s--", label="query IoU (ground truth)")
    chosen = select_round(curves["support_iou"])
    ax.axvline(chosen, color="tab:green", alpha=0.6, label=f"discrimination picks {chosen}")
    ax.axvline(round_, color="grey", ls=":", label=f"shown: {round_}")
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title or f"EFTNet, episode {trace.meta.get('episode', '?')}, round {round_}", fontsize=10)
    return fig


def eftnet_round_browser(trace: EFTNetTrace, image: torch.Tensor, query_label: torch.Tensor | None,
                         mean: Sequence[float], std: Sequence[float], q: int = 0):
    """A slider over rounds ``0..R`` showing :func:`plot_eftnet_round` as a PNG.

    Returns:
        ``ipywidgets.VBox``. Raises ImportError when ipywidgets is missing.
    """
    from .transductive import iteration_slider
    return iteration_slider(lambda r: plot_eftnet_round(trace, image, query_label, r, mean, std, q),
                            list(range(trace.rounds + 1)), description="round")


__all__ = ["plot_eftnet_round", "eftnet_round_browser", "round_curves"]
