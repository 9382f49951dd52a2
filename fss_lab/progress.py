"""Progress bars that respect ``TQDM_DISABLE``.

tqdm (>= 4.66) reads ``TQDM_*`` environment variables as defaults for its keyword arguments, but an explicit
``disable=False`` overrides that default, so code that writes ``tqdm(..., disable=not progress)`` shows bars even
under ``TQDM_DISABLE=1`` (executed notebooks then carry bars frozen at ``0%``). :func:`progress_bar` passes
``disable`` only when the caller turned the bar off, and also reads ``TQDM_DISABLE`` at call time, so setting it
in a running kernel (``os.environ["TQDM_DISABLE"] = "1"``) works too.
"""
from __future__ import annotations

import os
from typing import Iterable

__all__ = ["progress_bar", "progress_disabled_by_env"]

_TRUE = {"1", "true", "yes", "on"}


def progress_disabled_by_env() -> bool:
    """Whether the environment asks for no progress bars (``TQDM_DISABLE`` set to 1/true/yes/on)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in _TRUE


def progress_bar(iterable: Iterable | None = None, *, progress: bool = True, **kw):
    """A ``tqdm.auto`` bar over ``iterable`` (or a manual one with ``total=``).

    Args:
        iterable: what to iterate over; None for a manual bar (``bar.update(n)``).
        progress: False turns the bar off; True leaves the decision to ``TQDM_DISABLE`` (bar shown when unset).
        **kw: passed to tqdm (``desc``, ``total``, ``leave``, ``unit``, ...). An explicit ``disable`` wins.

    Returns:
        a tqdm instance (usable as an iterator and as a context manager, also when disabled).
    """
    from tqdm.auto import tqdm

    if "disable" not in kw and (not progress or progress_disabled_by_env()):
        kw["disable"] = True
    return tqdm(iterable, **kw)
