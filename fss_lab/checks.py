"""Run-time checks of values that would otherwise be scored silently (issue 9, finding 3).

A NaN or Inf in features or logits does not crash anything: ``argmax`` maps it to class 0, i.e. "background", and
mIoU just drops (one NaN in a cached feature moved a prototype baseline from 0.0657 to 0.0597 mIoU, without a
message). :func:`check_finite` turns that into an error that says what, where and how to fix it.

Used by :class:`~fss_lab.models.feature_cache.FeatureCache` (features as they enter the cache) and by the
evaluators (logits of every episode / query batch).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["NonFiniteError", "check_finite"]


class NonFiniteError(ValueError):
    """A tensor that must be finite holds NaN or +-Inf; the message names what it is, where it came from (method,
    episode / run, image ids) and the first bad element."""


def check_finite(tensor: torch.Tensor, what: str, *, where: Callable[[int], str] | None = None,
                 **context: Any) -> torch.Tensor:
    """Return ``tensor`` unchanged if every element is finite; raise :class:`NonFiniteError` otherwise.

    Args:
        tensor: any shape, floating point (integer / bool tensors are always finite and are returned at once).
        what: what the tensor is, e.g. ``"logits"`` or ``"features of item 12"``.
        where: optional ``row -> description`` of index ``row`` along dim 0 (e.g. ``lambda k: f"episode {k},
            query images [...]"``); called only when a non-finite value is found, for the first bad row.
        context: ``name=value`` pairs printed in the message in the order given, e.g. ``method="DIaM", run=3``.

    Returns:
        ``tensor`` (so a call can wrap an expression).

    Raises:
        NonFiniteError: with the counts of NaN and Inf values, the index of the first bad element, the
            description of its row, the context and the usual causes.

    """
    if not tensor.is_floating_point() and not tensor.is_complex():
        return tensor
    if tensor.numel() == 0 or bool(torch.isfinite(tensor.sum())):  # one pass, no mask: the sum is finite only when
        return tensor  # every value is (a NaN / Inf propagates); an overflowing sum just takes the exact check below
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return tensor
    bad = (~finite).nonzero()[0].tolist()
    n_nan = int(torch.isnan(tensor).sum())
    n_inf = int(torch.isinf(tensor).sum())
    parts = [f"{k}={v}" for k, v in context.items()]
    if where is not None and tensor.dim() > 0:
        parts.append(where(int(bad[0])))
    ctx = f" [{', '.join(parts)}]" if parts else ""
    raise NonFiniteError(
        f"{what} hold {n_nan} NaN and {n_inf} Inf of {tensor.numel()} values (first at index {tuple(bad)}){ctx}. "
        "They would be scored as background and lower mIoU silently. Fix the source: a NaN/Inf in the input image "
        "or cached features (recompute them), a diverging fine-tuning (lower the learning rate or the number of "
        "iterations), or a division by zero in the method (an empty support mask).")
