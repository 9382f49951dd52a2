"""Result plots for GFSS experiments: base / novel scores per method, and scores against the number of shots."""
from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

SCORES = ("base", "novel", "mean", "harmonic")
PALETTE = {"base": "#4c72b0", "novel": "#dd8452", "mean": "#55a868", "harmonic": "#8172b3"}


def _long(frame: pd.DataFrame, keys: list[str], scores) -> pd.DataFrame:
    missing = [c for c in (*keys, *scores) if c not in frame.columns]
    if missing:
        raise ValueError(f"result frame lacks columns {missing}; it has {list(frame.columns)}")
    return frame.melt(id_vars=keys, value_vars=list(scores), var_name="score", value_name="mIoU")


def plot_gfss_scores(frame: pd.DataFrame, by: str = "method", scores=("base", "novel", "mean"),
                     title: str | None = None) -> Figure:
    """Grouped bars of GFSS scores (fractions in [0, 1]) for each value of ``by`` (e.g. method or prior).

    Args:
        frame: tidy results with a ``by`` column and score columns (from ``GFSSExperiment.evaluate``).

    Raises:
        ValueError: a missing column (names it); scores above 1 (pass fractions, not percent).
    """
    long = _long(frame, [by], scores)
    if (long["mIoU"] > 1.0 + 1e-9).any():
        raise ValueError("scores must be fractions in [0, 1], not percent")
    fig = Figure(figsize=(max(5.5, 1.3 * frame[by].nunique() + 2.5), 3.8), layout="constrained")
    ax = fig.subplots()
    sns.barplot(long, x=by, y="mIoU", hue="score", palette=PALETTE, ax=ax, errorbar=None)
    ax.set_ylim(0, 1)
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=20)
    ax.legend(frameon=False, ncol=len(scores), loc="upper center", bbox_to_anchor=(0.5, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title, fontweight="bold")
    return fig


def plot_shots_curve(frame: pd.DataFrame, scores=("base", "novel"), title: str | None = None) -> Figure:
    """Base and novel mIoU against the number of shots, one line per method (the saturation plot of seed 000).

    Args:
        frame: tidy results with ``method``, ``shots`` and the score columns.
    """
    long = _long(frame, ["method", "shots"], scores)
    fig = Figure(figsize=(4.2 * len(scores), 3.6), layout="constrained")
    axes = fig.subplots(1, len(scores), sharey=True, squeeze=False)[0]
    for ax, score in zip(axes, scores):
        sns.lineplot(long[long["score"] == score], x="shots", y="mIoU", hue="method", marker="o", ax=ax)
        ax.set_title(f"{score} mIoU")
        ax.set_xticks(sorted(frame["shots"].unique()))
        ax.set_ylim(0, 1)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontweight="bold")
    return fig
