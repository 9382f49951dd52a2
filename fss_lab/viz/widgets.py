"""ipywidgets tools; each has a plain-function twin (returning a Figure) that CI runs headless.

ipywidgets is imported inside the widget functions, so ``import fss_lab.viz`` works without a display or kernel.
"""
from __future__ import annotations

import html
import io
from typing import Callable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ..data.episode import Episode
from .figures import plot_episode

__all__ = ["show_episode", "episode_browser", "figure_to_png"]

EpisodeGetter = Callable[[int], "tuple[Episode, torch.Tensor | np.ndarray | None]"]


def figure_to_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes (works for figures made without pyplot, on any backend)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def show_episode(get_episode: EpisodeGetter, index: int, class_names: Sequence[str] | None = None) -> Figure:
    """The plain-function twin of :func:`episode_browser`: the figure for episode ``index``.

    Args:
        get_episode: ``index -> (episode, prediction)``; ``episode`` an unbatched
            :class:`~fss_lab.data.episode.Episode`, ``prediction`` labels ``[Q, H, W]`` or ``None``.
        index: episode number passed to ``get_episode``.
        class_names: dataset class names, ``class_names[k - 1]`` names class id ``k`` (fss_lab convention).

    Returns:
        The :func:`~fss_lab.viz.figures.plot_episode` figure, titled with the episode number.

    Raises:
        ValueError: ``get_episode`` did not return ``(Episode, prediction)``, or a class id has no name.
    """
    result = get_episode(index)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], Episode)):
        raise ValueError(
            f"get_episode({index}) must return (Episode, prediction or None); got {type(result).__name__}"
        )
    episode, prediction = result
    name = None
    if episode.class_ids:
        cid = int(episode.class_ids[0])
        if class_names is not None:
            if not 1 <= cid <= len(class_names):
                raise ValueError(
                    f"episode class id {cid} has no name: class_names has {len(class_names)} entries "
                    "(class_names[k - 1] names class id k)"
                )
            name = class_names[cid - 1]
        else:
            name = f"class {cid}"
    fig = plot_episode(episode, prediction, class_name=name)
    fig.suptitle(f"Episode {index} · {episode.shots}-shot · {name or 'episode class'}")
    return fig


def episode_browser(
    get_episode: EpisodeGetter,
    n_episodes: int,
    class_names: Sequence[str] | None = None,
    start: int = 0,
    dpi: int = 100,
):
    """A slider over episodes showing :func:`show_episode` for the selected one (use in a notebook cell).

    Args:
        get_episode: ``index -> (episode, prediction or None)`` for ``index`` in ``0..n_episodes-1``.
        n_episodes: number of episodes the slider covers.
        class_names: dataset class names (``class_names[k - 1]`` names class id ``k``).
        start: first episode shown.
        dpi: resolution of the rendered figure.

    Returns:
        ``ipywidgets.VBox([IntSlider, Image, HTML])``: the figure is rendered to PNG into the Image widget
        (no kernel-side Output capture needed); errors raised by ``get_episode`` are shown in the HTML line.

    Raises:
        ValueError: ``n_episodes < 1`` or ``start`` out of range.
        ImportError: ipywidgets is not installed (``pip install ipywidgets``).
    """
    import ipywidgets as widgets  # lazy: the library imports without a display / kernel

    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if not 0 <= start < n_episodes:
        raise ValueError(f"start must be in 0..{n_episodes - 1}, got {start}")
    slider = widgets.IntSlider(
        value=start, min=0, max=n_episodes - 1, description="episode", continuous_update=False
    )
    image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
    status = widgets.HTML()

    def render(index: int) -> None:
        try:
            image.value = figure_to_png(show_episode(get_episode, index, class_names), dpi=dpi)
            status.value = ""
        except Exception as exc:  # shown in the widget: callbacks otherwise swallow errors silently
            status.value = f"<span style='color:#c0392b'>episode {index}: {html.escape(repr(exc))}</span>"

    slider.observe(lambda change: render(change["new"]), names="value")
    render(start)
    return widgets.VBox([slider, image, status])
