"""Static figures: an episode (supports, query, ground truth, prediction), prediction grids, per-class IoU bars.

Every function builds a :class:`matplotlib.figure.Figure` directly (not through pyplot), never calls
``plt.show()`` and returns the figure: in a notebook put it last in a cell (or ``display(fig)``); elsewhere
``fig.savefig(path)``. Nothing here changes global matplotlib state.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..labels import IGNORE_INDEX
from ..data.episode import IMAGENET_MEAN, IMAGENET_STD, Episode
from ..metrics import intersection_and_union, iou_from_stats
from .overlays import IGNORE_COLOR, denormalize, label_colors, overlay_mask

__all__ = ["plot_episode", "plot_predictions", "plot_per_class_iou", "plot_label_legend", "mask_iou"]

PANEL = 2.3  # inches per image panel
BAR_COLOR = "#3d7dd8"
HUE_PALETTE = "deep"  # seaborn's default categorical palette, fixed here so figures do not depend on rcParams
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.titleweight": "normal",
    "figure.titlesize": 11,
    "figure.titleweight": "bold",
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.dpi": 120,
}


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _image_axis(ax: Axes, image: np.ndarray, title: str | None = None) -> None:
    """Show an image with no ticks or frame."""
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)


def _short(text: str, n: int = 22) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1) :]


def mask_iou(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, ignore_index: int = IGNORE_INDEX):
    """IoU shown in figure titles: foreground IoU for binary masks, else mIoU over labels ``>= 1`` present.

    Args:
        pred, target: integer labels ``[H, W]`` (or any matching shape); ``target`` may hold ``ignore_index``.

    Returns:
        float in ``[0, 1]``, or NaN when no foreground label occurs in either mask.
    """
    p, t = torch.as_tensor(_np(pred)).long(), torch.as_tensor(_np(target)).long()
    valid = t != ignore_index
    n = int(max(p[valid].max() if valid.any() else 0, t[valid].max() if valid.any() else 0, 1)) + 1
    inter, union = intersection_and_union(p, t, n, ignore_index)
    iou = iou_from_stats(inter, union)[1:]
    iou = iou[~torch.isnan(iou)]
    return float(iou.mean()) if iou.numel() else float("nan")


def _legend_handles(labels: Sequence[int], colors: np.ndarray, names: Mapping[int, str], ignore: bool) -> list:
    handles = [Patch(facecolor=colors[k], edgecolor="none", label=names.get(k, f"class {k}")) for k in labels]
    if ignore:
        handles.append(Patch(facecolor=IGNORE_COLOR, edgecolor="#888888", hatch="////", label="ignore"))
    return handles


def plot_episode(
    episode: Episode,
    prediction: torch.Tensor | np.ndarray | None = None,
    class_name: str | None = None,
    max_support: int = 5,
    max_query: int = 4,
    alpha: float = 0.5,
    label_names: Mapping[int, str] | None = None,
) -> Figure:
    """One episode: the support images with their masks, then per query the image, ground truth, prediction.

    Args:
        episode: an unbatched :class:`~fss_lab.data.episode.Episode` (images normalised with
            ``episode.norm_mean`` / ``norm_std``, undone here).
        prediction: predicted labels ``[Q, H, W]`` (or ``[H, W]`` when Q = 1), same labels as the query mask;
            the per-query IoU (:func:`mask_iou`) is shown in its title. ``None``: no prediction column.
        class_name: name of the episode class for the title (default ``"class <id>"`` from ``class_ids``).
        max_support / max_query: at most this many supports / queries are drawn.
        alpha: mask opacity.
        label_names: ``{label: name}`` for the legend of multi-class (GFSS) masks; default ``"class <label>"``.

    Returns:
        Figure with ``min(K, max_support)`` support axes and ``min(Q, max_query) * (2 or 3)`` query axes.

    Raises:
        ValueError: a batched episode (pass one of the episodes), or a prediction whose shape differs from
            ``episode.query_masks``.
    """
    if episode.is_batched:
        raise ValueError("plot_episode needs an unbatched Episode (support_images [K, 3, H, W]); plot one episode")
    qmasks = _np(episode.query_masks)
    if prediction is not None:
        prediction = _np(prediction)
        if prediction.ndim == 2 and qmasks.shape[0] == 1:
            prediction = prediction[None]
        if prediction.shape != qmasks.shape:
            raise ValueError(
                f"prediction has shape {prediction.shape}; expected {qmasks.shape} like episode.query_masks "
                "(labels, not logits: use logits.argmax(1))"
            )
    k_show, q_show = min(episode.shots, max_support), min(qmasks.shape[0], max_query)
    smasks = _np(episode.support_masks)
    every = [smasks[:k_show], qmasks[:q_show]] + ([prediction[:q_show]] if prediction is not None else [])
    values = np.unique(np.concatenate([m.ravel() for m in every]))
    labels = [int(v) for v in values if v not in (0, episode.ignore_index)]
    colors = label_colors(max(labels + [1]) + 1)
    cid = episode.class_ids[0] if episode.class_ids else None
    title = class_name or (f"class {cid}" if cid is not None else "episode class")
    names = {1: title} if labels == [1] or not labels else dict(label_names or {})

    def rgb(images: torch.Tensor) -> np.ndarray:  # [N, 3, H, W] normalised -> [N, H, W, 3] in [0, 1]
        return _np(denormalize(images, episode.norm_mean, episode.norm_std)).transpose(0, 2, 3, 1)

    def tint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return overlay_mask(image, mask, alpha, colors, episode.ignore_index)

    sup, qry = rgb(episode.support_images[:k_show]), rgb(episode.query_images[:q_show])
    iou_name = "IoU" if labels in ([1], []) else "mIoU"
    n_cols = 3 if prediction is not None else 2
    width = PANEL * max(k_show, n_cols)
    h, w = qmasks.shape[-2:]
    top_h, bottom_h = width / k_show * h / w, q_show * width / n_cols * h / w
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(width, top_h + bottom_h + 0.9), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[top_h + 0.35, bottom_h + 0.35], hspace=0.04)
        top.suptitle(f"Support set ({episode.shots}-shot)", fontsize=10, fontweight="normal", color="#444444")
        for i, ax in enumerate(np.atleast_1d(top.subplots(1, k_show))):
            sid = f"\n{_short(episode.support_ids[i])}" if i < len(episode.support_ids) else ""
            _image_axis(ax, tint(sup[i], smasks[i]), f"support {i + 1}{sid}")
        axes = np.asarray(bottom.subplots(q_show, n_cols)).reshape(q_show, n_cols)
        for q in range(q_show):
            qid = f"\n{_short(episode.query_ids[q])}" if q < len(episode.query_ids) else ""
            _image_axis(axes[q, 0], qry[q], f"query {q + 1}{qid}")
            _image_axis(axes[q, 1], tint(qry[q], qmasks[q]), "ground truth")
            if prediction is not None:
                iou = mask_iou(prediction[q], qmasks[q], episode.ignore_index)
                label = f"prediction ({iou_name} {iou:.2f})" if iou == iou else "prediction"
                _image_axis(axes[q, 2], tint(qry[q], prediction[q]), label)
        bottom.suptitle("Query", fontsize=10, fontweight="normal", color="#444444")
        ignore = any((m == episode.ignore_index).any() for m in (smasks[:k_show], qmasks[:q_show]))
        handles = _legend_handles(labels or [1], colors, names, ignore)
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False)
        fig.suptitle(f"{episode.shots}-shot episode: {title}")
    return fig


def plot_predictions(
    images: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    predictions: torch.Tensor | np.ndarray,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    titles: Sequence[str] | None = None,
    max_items: int = 8,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
    suptitle: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """A grid for several queries: one column per query, rows image / ground truth / prediction (with IoU).

    Args:
        images: float ``[N, 3, H, W]``, normalised with ``mean`` / ``std`` (pass ``None`` for both when the
            images are already in ``[0, 1]``).
        masks: ground-truth labels ``[N, H, W]`` (``ignore_index`` allowed).
        predictions: predicted labels ``[N, H, W]``.
        titles: optional column titles (e.g. image ids), length ``>= min(N, max_items)``.
        max_items: at most this many columns.
        class_names: names in label order (``class_names[k]`` names label ``k``; index 0 is background): adds a
            legend of the labels present in the ground truth or prediction (multi-class GFSS figures need it).

    Returns:
        Figure with ``3 * min(N, max_items)`` axes.

    Raises:
        ValueError: shapes disagree, or ``N == 0``.
    """
    imgs, gts, preds = _np(images), _np(masks), _np(predictions)
    ok = imgs.ndim == 4 and imgs.shape[1] == 3 and gts.shape == (imgs.shape[0], *imgs.shape[2:]) == preds.shape
    if not ok:
        raise ValueError(
            "expected images [N, 3, H, W], masks and predictions [N, H, W]; "
            f"got {imgs.shape}, {gts.shape}, {preds.shape}"
        )
    n = min(imgs.shape[0], max_items)
    if n == 0:
        raise ValueError("plot_predictions got no images (N = 0)")
    if mean is not None and std is not None:
        imgs = denormalize(imgs, mean, std)
    valid = gts != ignore_index
    labels = sorted({int(v) for v in np.unique(np.concatenate([gts[:n][valid[:n]], preds[:n].ravel()]))} - {0})
    colors = label_colors(max(labels + [1]) + 1)
    h, w = gts.shape[-2:]
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(PANEL * 0.85 * n + 0.6, 3 * PANEL * 0.85 * h / w + 0.8), layout="constrained")
        axes = np.asarray(fig.subplots(3, n)).reshape(3, n)
        for j in range(n):
            img = imgs[j].transpose(1, 2, 0)  # HWC
            _image_axis(axes[0, j], img, _short(titles[j]) if titles else None)
            _image_axis(axes[1, j], overlay_mask(img, gts[j], alpha, colors, ignore_index))
            iou = mask_iou(preds[j], gts[j], ignore_index)
            _image_axis(axes[2, j], overlay_mask(img, preds[j], alpha, colors, ignore_index))
            axes[2, j].set_xlabel(f"IoU {iou:.2f}" if iou == iou else "IoU n/a")
        for r, name in enumerate(("image", "ground truth", "prediction")):
            axes[r, 0].set_ylabel(name, fontsize=10)
        if class_names is not None and labels:
            names = {k: class_names[k] if k < len(class_names) else f"class {k}" for k in labels}
            fig.legend(handles=_legend_handles(labels, colors, names, bool((~valid[:n]).any())), loc="outside lower center",
                       ncol=min(len(labels) + 1, max(2, 2 * n)), frameon=False, fontsize=8)
        if suptitle:
            fig.suptitle(suptitle)
    return fig


def _iou_frame(per_class: Mapping | pd.DataFrame, hue: str | None) -> tuple[pd.DataFrame, str]:
    """A tidy frame with columns ``class``, the IoU column (returned) and ``hue``; validated."""
    if isinstance(per_class, pd.DataFrame):
        df = per_class.copy()
        iou_col = next((c for c in df.columns if str(c).lower() == "iou"), None)
        if "class" not in df.columns or iou_col is None:
            raise ValueError(f"per_class DataFrame needs columns 'class' and 'iou'; got {list(df.columns)}")
    elif isinstance(per_class, Mapping):
        df, iou_col = pd.DataFrame({"class": list(per_class.keys()), "iou": list(per_class.values())}), "iou"
    else:
        raise ValueError(f"per_class must be a dict {{class: iou}} or a DataFrame, got {type(per_class).__name__}")
    if hue is not None and hue not in df.columns:
        raise ValueError(f"hue column {hue!r} is not in the DataFrame columns {list(df.columns)}")
    if df.empty:
        raise ValueError("per_class is empty: nothing to plot")
    values = df[iou_col].astype(float)
    if (values.dropna() > 1.0 + 1e-9).any() or (values.dropna() < 0).any():
        raise ValueError(
            f"IoU values must be fractions in [0, 1] (got max {values.max():.3g}); divide percentages by 100"
        )
    df["class"] = df["class"].astype(str)
    if hue is not None:
        order = sorted(df[hue].unique(), key=lambda v: (isinstance(v, str), v))
        df[hue] = pd.Categorical(df[hue].astype(str), categories=[str(v) for v in order])
    return df, iou_col


def plot_per_class_iou(
    per_class: Mapping[str, float] | pd.DataFrame,
    title: str | None = None,
    hue: str | None = None,
) -> Figure:
    """Bar chart of per-class IoU (fractions) with the mIoU; several bars per class with ``hue``.

    Args:
        per_class: ``{class name or id: IoU}``, or a tidy DataFrame with columns ``class`` and ``iou`` (or
            ``IoU``), plus the ``hue`` column (e.g. ``shots`` or ``method``). Repeated (class, hue) rows (seeds,
            folds) are averaged and drawn with a standard-deviation error bar.
        title: figure title.
        hue: DataFrame column that splits the bars; its mIoU per level is written in the legend.

    Returns:
        Figure with one axes.

    Raises:
        ValueError: missing columns, an unknown ``hue``, empty input, or values outside ``[0, 1]``.
    """
    df, iou_col = _iou_frame(per_class, hue)
    classes = list(dict.fromkeys(df["class"]))
    n_levels = 1 if hue is None else len(df[hue].cat.categories)
    repeated = df.duplicated(subset=["class"] + ([hue] if hue else [])).any()
    axes_width = min(max(3.0, 0.5 * len(classes) * (0.6 + 0.4 * n_levels)), 14.0)  # inches; + legend on the right
    width = axes_width + 2.0
    long_names = max(len(c) for c in classes) * 0.075 > 0.9 * axes_width / len(classes)  # would collide: rotate
    with matplotlib.rc_context(_STYLE), sns.axes_style("whitegrid"):
        fig = Figure(figsize=(width, 3.6), layout="constrained")
        ax = fig.subplots()
        common = dict(data=df, x="class", y=iou_col, order=classes, ax=ax, errorbar="sd" if repeated else None)
        if hue is None:
            sns.barplot(**common, color=BAR_COLOR, saturation=0.9)
            miou = df.groupby("class")[iou_col].mean().mean()
            ax.axhline(miou, color="#333333", linestyle="--", linewidth=1, label=f"mIoU {miou:.2f}")
            ax.legend(frameon=False, fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        else:
            palette = sns.color_palette(HUE_PALETTE, n_levels)
            sns.barplot(**common, hue=hue, palette=palette, saturation=0.9)
            mious = df.groupby(hue, observed=True).apply(lambda g: g.groupby("class")[iou_col].mean().mean())
            handles, texts = ax.get_legend_handles_labels()
            labels = [f"{t} (mIoU {mious.get(t, float('nan')):.2f})" for t in texts]
            ax.legend(handles, labels, title=hue, frameon=False, fontsize=8, title_fontsize=9,
                      loc="upper left", bbox_to_anchor=(1.0, 1.0))
        if len(classes) * n_levels <= 40 and not repeated:
            for container in ax.containers:
                ax.bar_label(container, fmt="%.2f", fontsize=7, padding=1)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("IoU")
        ax.set_xlabel("")
        if long_names:
            ax.tick_params(axis="x", labelrotation=40)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
        sns.despine(ax=ax, left=True)
        ax.grid(axis="x", visible=False)
        if title:
            ax.set_title(title, fontsize=11, fontweight="bold")
    return fig


def plot_label_legend(
    class_names: Sequence[str] | Mapping[int, str],
    colors: np.ndarray | None = None,
    include_background: bool = True,
    ncol: int = 4,
) -> Figure:
    """A colour key for label overlays.

    Args:
        class_names: dataset order (``class_names[k - 1]`` names label ``k``, the fss_lab convention) or an
            explicit ``{label: name}``.
        colors: ``[n, 3]`` palette (default :func:`label_colors`), indexed by label.
        include_background: add label 0 as "background".
        ncol: legend columns.

    Returns:
        Figure with one (hidden) axes holding the legend.

    Raises:
        ValueError: a label has no colour in ``colors``.
    """
    names = dict(class_names) if isinstance(class_names, Mapping) else {k + 1: n for k, n in enumerate(class_names)}
    if include_background:
        names = {0: "background", **names}
    palette = label_colors(max(names) + 1) if colors is None else np.asarray(colors, dtype=float)
    if max(names) >= len(palette):
        raise ValueError(f"label {max(names)} has no colour: colors has {len(palette)} rows")
    handles = [
        Patch(facecolor=palette[k], edgecolor="#555555", linewidth=0.5, label=f"{k}: {v}") for k, v in names.items()
    ]
    rows = -(-len(handles) // ncol)
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(min(1.7 * ncol, 1.7 * len(handles)), 0.3 * rows + 0.3), layout="constrained")
        ax = fig.subplots()
        ax.set_axis_off()
        ax.legend(handles=handles, ncol=ncol, loc="center", frameon=False)
    return fig
