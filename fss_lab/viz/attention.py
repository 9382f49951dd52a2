"""Widgets of the attention family (notebook 05), each with a plain-function twin returning a Figure (CI runs the
twins headless; ipywidgets is imported inside the widget functions only).

* attention explorer (:func:`attention_map`, :func:`plot_attention`, :func:`attention_explorer`): where a query
  pixel attends in each support image, per cross-alignment layer and head (and the reverse direction), from
  :attr:`fss_lab.models.mmformer.cross_alignment.CrossAlignment.last_attention`;
* proposal browser (:func:`plot_proposals`): a query's proposals sorted by matching coefficient, each with its IoU
  to the ground truth, and the heuristic pick, the learned blend and the oracle side by side;
* prior view (:func:`plot_prior`): the PFENet prior of a query next to its ground truth, per shot and averaged;
* self-alignment view (:func:`self_alignment_gates`, :func:`plot_self_alignment`; MM-Former Fig. 5): the averaged
  feature map, the softmax weights over positions, the most emphasised and most suppressed channels, before and
  after gating.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from .overlays import image_to_hwc

DIRECTIONS = ("query_to_support", "support_to_query")


def attention_map(attention: dict, pixel: tuple[int, int], layer: int = 0, head: int | None = None,
                  direction: str = "query_to_support") -> torch.Tensor:
    """Where one pixel of the attending image looks in the other image's memory, for one layer (and head).

    Args:
        attention: a ``CrossAlignment.last_attention`` dict (keys ``query_to_support`` / ``support_to_query``: per
            layer ``[B, heads, rows, cols]``; ``query_size``, ``support_size``, ``query_memory_size``,
            ``support_memory_size``).
        pixel: ``(y, x)`` in the attending image's feature grid (``query_size`` for ``query_to_support``,
            ``support_size`` for the reverse), 0-based.
        layer: cross-alignment layer (0-based). head: one head, or ``None`` for the mean over heads.
        direction: ``"query_to_support"`` (a query pixel over the support memory) or ``"support_to_query"``.

    Returns:
        float ``[B, h_mem, w_mem]`` attention weights (rows of a softmax: each map sums to 1 over its positions;
        the mean over heads too), on the other image's memory grid.

    Raises:
        ValueError: unknown direction, a layer / head / pixel out of range (names the valid range).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    maps = attention[direction]
    if not 0 <= layer < len(maps):
        raise ValueError(f"layer {layer} out of range: the attention has {len(maps)} layers (0..{len(maps) - 1})")
    a = maps[layer]
    src, mem = ("query_size", "support_memory_size") if direction == "query_to_support" else \
        ("support_size", "query_memory_size")
    (h, w), (hm, wm) = attention[src], attention[mem]
    y, x = int(pixel[0]), int(pixel[1])
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"pixel {(y, x)} is outside the attending image's {h} x {w} feature grid")
    if head is None:
        row = a[:, :, y * w + x].float().mean(1)
    else:
        if not 0 <= head < a.shape[1]:
            raise ValueError(f"head {head} out of range: {a.shape[1]} heads (0..{a.shape[1] - 1}) or None for the mean")
        row = a[:, head, y * w + x].float()
    return row.reshape(a.shape[0], hm, wm)


def _heat(ax, image: np.ndarray, heat: torch.Tensor, title: str) -> None:
    h, w = image.shape[:2]
    up = F.interpolate(heat[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    ax.imshow(image)
    ax.imshow(up.numpy(), cmap="magma", alpha=0.55)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def plot_attention(query_image, support_images: Sequence, attention: dict, pixel: tuple[int, int], layer: int = 0,
                   head: int | None = None, direction: str = "query_to_support", shot_attention: Sequence[dict] | None
                   = None) -> Figure:
    """The attention explorer's twin: the attending image with the chosen pixel marked, and the other image(s)
    with the attention of that pixel as a heat map.

    Args:
        query_image: ``[3, H, W]`` / ``[H, W, 3]`` in ``[0, 1]`` (denormalise first).
        support_images: one image per shot (same format).
        attention: the attention dict of shot 0 (``last_attention``); ``shot_attention`` the dicts of every shot
            (default ``[attention]``); batch row 0 is shown.
        pixel / layer / head / direction: as :func:`attention_map` (``direction="support_to_query"`` marks the
            pixel in each support image and shows where it attends in the query).

    Returns:
        A Figure with ``1 + K`` panels.
    """
    shots = list(shot_attention or [attention])
    q = image_to_hwc(query_image)
    sup = [image_to_hwc(s) for s in support_images]
    fig = Figure(figsize=(3 * (1 + len(sup)), 3.2), layout="constrained")
    axes = fig.subplots(1, 1 + len(sup), squeeze=False)[0]
    y, x = pixel
    who = "head mean" if head is None else f"head {head}"
    if direction == "query_to_support":
        h, w = shots[0]["query_size"]
        axes[0].imshow(q)
        axes[0].scatter([(x + 0.5) * q.shape[1] / w], [(y + 0.5) * q.shape[0] / h], s=80, c="cyan", marker="x")
        axes[0].set_title(f"query pixel {(y, x)}", fontsize=9)
        axes[0].axis("off")
        for k, (img, att) in enumerate(zip(sup, shots)):
            _heat(axes[1 + k], img, attention_map(att, pixel, layer, head, direction)[0],
                  f"support {k}: layer {layer}, {who}")
    else:
        heat = torch.stack([attention_map(att, pixel, layer, head, direction)[0] for att in shots]).mean(0)
        _heat(axes[0], q, heat, f"query: attention of support pixel {(y, x)}\n(mean over shots, {who})")
        for k, (img, att) in enumerate(zip(sup, shots)):
            h, w = att["support_size"]
            axes[1 + k].imshow(img)
            axes[1 + k].scatter([(x + 0.5) * img.shape[1] / w], [(y + 0.5) * img.shape[0] / h], s=80, c="cyan",
                                marker="x")
            axes[1 + k].set_title(f"support {k} pixel {(y, x)}", fontsize=9)
            axes[1 + k].axis("off")
    fig.suptitle(f"cross-alignment attention ({direction.replace('_', ' ')})", fontsize=10)
    return fig


def attention_explorer(query_image, support_images: Sequence, shot_attention: Sequence[dict], dpi: int = 90):
    """Sliders for the query pixel (y, x), the layer and the head (-1 = mean), and a direction toggle, showing
    :func:`plot_attention`. Returns an ``ipywidgets.VBox``.

    Raises:
        ImportError: ipywidgets is not installed.
    """
    import ipywidgets as widgets

    from .widgets import figure_to_png

    att = shot_attention[0]
    h, w = att["query_size"]
    layers, heads = len(att["query_to_support"]), att["query_to_support"][0].shape[1]
    ys = widgets.IntSlider(value=h // 2, min=0, max=h - 1, description="y")
    xs = widgets.IntSlider(value=w // 2, min=0, max=w - 1, description="x")
    ls = widgets.IntSlider(value=0, min=0, max=layers - 1, description="layer")
    hs = widgets.IntSlider(value=-1, min=-1, max=heads - 1, description="head")
    dr = widgets.ToggleButtons(options=list(DIRECTIONS), value="query_to_support")
    image = widgets.Image(format="png")
    status = widgets.HTML()

    def render(_=None):
        try:
            fig = plot_attention(query_image, support_images, att, (ys.value, xs.value), ls.value,
                                 None if hs.value < 0 else hs.value, dr.value, shot_attention)
            image.value = figure_to_png(fig, dpi)
            status.value = ""
        except Exception as exc:  # shown in the widget
            status.value = f"<span style='color:#c0392b'>{exc!r}</span>"

    for wdg in (ys, xs, ls, hs, dr):
        wdg.observe(render, names="value")
    render()
    return widgets.VBox([widgets.HBox([ys, xs]), widgets.HBox([ls, hs]), dr, image, status])


EMPTY_PROPOSAL = 0.05
"""A proposal whose largest value is below this is empty (padding) and left out of :func:`plot_proposals`."""


def plot_proposals(query_image, proposals: torch.Tensor, coefficients: torch.Tensor, iou: torch.Tensor,
                   heuristic: torch.Tensor | None = None, learned: torch.Tensor | None = None,
                   oracle: torch.Tensor | None = None, max_shown: int = 12) -> Figure:
    """The proposal browser's twin: the ``max_shown`` proposals with the largest matching coefficient (sorted),
    each titled with its coefficient and IoU, then the heuristic pick, the learned blend and the oracle.

    Args:
        query_image: ``[3, H, W]`` / ``[H, W, 3]`` in ``[0, 1]``.
        proposals: ``[N, h, w]`` in ``[0, 1]``; coefficients: ``[N]`` (matching weights or cosines); iou: ``[N]``.
        heuristic / learned / oracle: foreground maps ``[H', W']`` in ``[0, 1]`` (any may be ``None``).

    Returns:
        A Figure (two rows of panels). Empty proposals (max below :data:`EMPTY_PROPOSAL`: the padding of a
        superpixel set with fewer than N segments) are not shown; the title counts them.
    """
    q = image_to_hwc(query_image)
    nonempty = proposals.detach().float().flatten(1).amax(1) > EMPTY_PROPOSAL
    coef = torch.where(nonempty, coefficients.detach().float(), torch.tensor(float("-inf")))
    order = torch.argsort(coef, descending=True)[:min(max_shown, int(nonempty.sum()))]
    finals = [(n, m) for n, m in (("heuristic pick", heuristic), ("learned blend", learned), ("oracle", oracle))
              if m is not None]
    cols = max(6, len(finals) + 1)
    rows = 1 + (len(order) + cols - 1) // cols
    fig = Figure(figsize=(2.1 * cols, 2.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j, n in enumerate(order.tolist()):
        ax = axes[j // cols, j % cols]
        m = F.interpolate(proposals[n][None, None].float(), size=q.shape[:2], mode="bilinear",
                          align_corners=False)[0, 0].numpy()
        ax.imshow(q * (0.35 + 0.65 * m[..., None]))
        ax.set_title(f"#{n} w={float(coefficients[n]):.2f}\nIoU={float(iou[n]):.2f}", fontsize=8)
    last = axes[-1]
    last[0].imshow(q)
    last[0].set_title("query", fontsize=9)
    for j, (name, m) in enumerate(finals, start=1):
        last[j].imshow(np.asarray(m.float().cpu()), cmap="gray", vmin=0, vmax=1)
        last[j].set_title(name, fontsize=9)
    empty = int((~nonempty).sum())
    fig.suptitle("proposals sorted by matching coefficient"
                 + (f" ({empty} empty padding proposals not shown)" if empty else ""), fontsize=10)
    return fig


def plot_prior(query_image, query_mask: torch.Tensor, priors: torch.Tensor) -> Figure:
    """The prior view's twin: the query with its ground truth, the prior of each shot and their average.

    Args:
        query_image: ``[3, H, W]`` / ``[H, W, 3]`` in ``[0, 1]``; query_mask: ``[H, W]`` (1 foreground, 255
            ignore); priors: per-shot priors ``[K, h, w]`` in ``[0, 1]`` (:func:`~fss_lab.models.pfenet_prior.
            prior_mask` with ``per_shot=True``).

    Returns:
        A Figure with ``2 + K`` panels (the average is the prior PFENet feeds its FEM).
    """
    q = image_to_hwc(query_image)
    k = priors.shape[0]
    fig = Figure(figsize=(2.8 * (2 + k + (k > 1)), 3), layout="constrained")
    axes = fig.subplots(1, 2 + k + (k > 1), squeeze=False)[0]
    axes[0].imshow(q)
    axes[0].set_title("query", fontsize=9)
    gt = np.asarray(query_mask.cpu(), dtype=float)
    axes[1].imshow(np.where(gt == 255, 0.5, gt == 1), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("ground truth", fontsize=9)
    maps = [(f"prior, shot {i}", priors[i]) for i in range(k)] + ([("prior, mean of shots", priors.mean(0))]
                                                                   if k > 1 else [])
    for ax, (title, p) in zip(axes[2:], maps):
        ax.imshow(p.float().cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    return fig


def self_alignment_gates(features: torch.Tensor) -> dict[str, torch.Tensor]:
    """What MM-Former's (official, channel) self-alignment does to one feature map.

    Args:
        features: float ``[C, h, w]`` backbone features of one image.

    Returns:
        ``{"mean_map" [h, w] (channel mean, the anchor), "weights" [h, w] (softmax over positions of the mean map,
        sums to 1), "gates" [C] (``sigmoid(sum_p x_c(p) w(p))``, in (0, 1)), "aligned" [C, h, w] (``x * gate``),
        "order" [C] (channels by decreasing gate)}``.
    """
    from ..models.mmformer.self_alignment import self_alignment, self_alignment_weights
    x = features.float()[None]
    w = self_alignment_weights(x)[0, 0]
    gates = torch.sigmoid((x[0] * w).sum((1, 2)))
    aligned = self_alignment(x)[0]
    return {"mean_map": x[0].mean(0), "weights": w, "gates": gates, "aligned": aligned,
            "order": torch.argsort(gates, descending=True)}


def plot_self_alignment(image, features: torch.Tensor, n_channels: int = 3) -> Figure:
    """The self-alignment view's twin (MM-Former Fig. 5): image, averaged feature map before / after gating, the
    softmax weights over positions, and the ``n_channels`` most emphasised and most suppressed channels (each
    titled with its gate), plus the sorted gates.

    Args:
        image: ``[3, H, W]`` / ``[H, W, 3]`` in ``[0, 1]``; features: ``[C, h, w]``.

    Returns:
        A Figure with two rows.
    """
    g = self_alignment_gates(features)
    cols = max(4, n_channels + 1)
    fig = Figure(figsize=(2.6 * cols, 5.4), layout="constrained")
    axes = fig.subplots(2, cols, squeeze=False)
    top = [(axes[0, 0], image_to_hwc(image), "image", None),
           (axes[0, 1], g["mean_map"], "channel mean, before", "viridis"),
           (axes[0, 2], g["aligned"].mean(0), "channel mean, after gating", "viridis"),
           (axes[0, 3], g["weights"], "softmax weights over positions", "magma")]
    for ax, data, title, cmap in top:
        ax.imshow(np.asarray(data.cpu()) if isinstance(data, torch.Tensor) else data, cmap=cmap)
        ax.set_title(title, fontsize=9)
    order = g["order"].tolist()
    picks = [("emphasised", c) for c in order[:n_channels // 2 + n_channels % 2]] + \
        [("suppressed", c) for c in order[::-1][:n_channels // 2]]
    for ax, (kind, c) in zip(axes[1, :len(picks)], picks):
        ax.imshow(np.asarray(features[c].float().cpu()), cmap="viridis")
        ax.set_title(f"{kind}: channel {c}\ngate {float(g['gates'][c]):.2f}", fontsize=9)
    ax = axes[1, -1]
    ax.plot(np.sort(np.asarray(g["gates"]))[::-1])
    ax.set_title("gates, sorted", fontsize=9)
    ax.set_ylim(0, 1)
    for a in list(axes.flat):
        if a is not ax:
            a.axis("off")
    return fig


__all__ = ["attention_map", "plot_attention", "attention_explorer", "plot_proposals", "plot_prior",
           "self_alignment_gates", "plot_self_alignment", "DIRECTIONS"]
