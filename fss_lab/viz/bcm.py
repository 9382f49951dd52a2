"""BCM figures: the host map (which bg/base class each novel class lives in, by the base model's argmax)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def plot_host_map(counts: torch.Tensor | np.ndarray, novel_names: Sequence[str], host_names: Sequence[str],
                  hosts: dict[int, Sequence[int]] | None = None, novel_ids: Sequence[int] | None = None,
                  title: str | None = None) -> Figure:
    """Heat map of BCM's novel-to-host counts, each row normalised to the share of the novel class's support pixels.

    Args:
        counts: ``[N, 1 + B]`` from :func:`fss_lab.methods.bcm.host_mapping` (``BCM.counts``).
        novel_names: N row names; host_names: ``1 + B`` column names (background first).
        hosts: ``BCM.hosts`` (``{novel id: host ids}``) to outline the chosen hosts; novel_ids: the row ids.
        title: the figure title.

    Returns:
        A matplotlib ``Figure`` (shares in percent written in the cells above 5%).
    """
    c = np.asarray(counts, dtype=float)
    share = c / np.maximum(c.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(max(5.0, 0.45 * c.shape[1] + 2), 0.45 * c.shape[0] + 1.8))
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(c.shape[1]), list(host_names), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(c.shape[0]), list(novel_names), fontsize=8)
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            if share[i, j] > 0.05:
                ax.text(j, i, f"{100 * share[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black")
    if hosts is not None and novel_ids is not None:
        for i, n in enumerate(novel_ids):
            for j in hosts.get(int(n), ()):
                ax.add_patch(Rectangle(
                    (j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="crimson", linewidth=2))
    ax.set_xlabel("base model's argmax on the novel class's support pixels (bg + base classes)")
    ax.set_ylabel("novel class")
    fig.colorbar(im, ax=ax, fraction=0.03, label="share of support pixels")
    ax.set_title(title or "BCM host map (outlined: the host)", fontsize=10)
    return fig
