"""Showing library figures inside notebooks.

The library builds :class:`matplotlib.figure.Figure` objects without pyplot, so IPython's inline backend (which
pyplot installs) never engages and ``display(fig)`` would print ``<Figure size ... with N Axes>``. Two remedies:

* :func:`show` saves a figure (optionally) and displays it as a PNG output; it returns None, so it leaves no stray
  text in the cell;
* :func:`enable_notebook_figures` registers a PNG formatter for ``Figure`` in the running IPython kernel, so a
  figure left last in a cell or passed to ``display`` renders as an image. ``import fss_lab.viz`` calls it when
  it runs inside IPython.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["show", "enable_notebook_figures", "SHOW_DPI"]

SHOW_DPI = 100  # resolution of inline PNGs (saved files use the ``dpi`` passed to :func:`show`)


def _png(fig: Figure, dpi: int = SHOW_DPI) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def enable_notebook_figures(dpi: int = SHOW_DPI) -> bool:
    """Register a PNG formatter for matplotlib Figures in the running IPython shell.

    Returns:
        True when a shell was found and the formatter registered, False outside IPython (nothing changes).
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with the notebooks extra
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "display_formatter"):
        return False
    shell.display_formatter.formatters["image/png"].for_type(Figure, lambda fig: _png(fig, dpi))
    return True


def show(fig: Figure, path: str | Path | None = None, dpi: int = 120, inline_dpi: int = SHOW_DPI) -> None:
    """Save ``fig`` to ``path`` (when given, at ``dpi``) and display it as an ``image/png`` output.

    Works in Jupyter, papermill runs and static HTML builds (the PNG is stored in the notebook); outside IPython
    it only saves. A figure made with pyplot (``plt.subplots``) is closed in pyplot afterwards, so the inline
    backend does not show it a second time at the end of the cell (the ``Figure`` object stays usable). Returns
    None, so nothing else is printed.
    """
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    import sys

    if "matplotlib.pyplot" in sys.modules:  # never import pyplot here (it picks a backend)
        sys.modules["matplotlib.pyplot"].close(fig)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # pragma: no cover
        return None
    if get_ipython() is None:
        return None
    display(Image(data=_png(fig, inline_dpi), format="png"))
    return None
