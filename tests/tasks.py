"""Small builders of :class:`~fss_lab.methods.task.Task` objects for the tests (single-level tensors)."""
from __future__ import annotations

import torch

from fss_lab.methods.task import Task


def fss_task(support_features: torch.Tensor, support_masks: torch.Tensor, query_features: torch.Tensor,
             size=None, **kwargs) -> Task:
    """A 1-way task: features ``[K, D, h, w]`` / ``[Q, D, h, w]``, masks ``[K, H, W]``; kwargs as :meth:`Task.fss`."""
    return Task.fss(support_features, support_masks, query_features, size, **kwargs)


def episode_tasks(support_features: torch.Tensor, support_masks: torch.Tensor, query_features: torch.Tensor,
                  size=None, query_valid: torch.Tensor | None = None, query_labels: torch.Tensor | None = None,
                  **kwargs) -> list[Task]:
    """One 1-way task per episode from stacked tensors ``[E, K, D, h, w]``, ``[E, K, H, W]``, ``[E, Q, D, h, w]``
    (optional ``query_valid`` / ``query_labels`` ``[E, Q, H, W]``)."""
    pick = (lambda t, e: None if t is None else t[e])  # noqa: E731
    return [Task.fss(support_features[e], support_masks[e], query_features[e], size, query_valid=pick(query_valid, e),
                     query_labels=pick(query_labels, e), meta={"episode": e}, **kwargs)
            for e in range(support_features.shape[0])]


def gfss_task(support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor,
              num_base: int, num_novel: int, shots: int, size=None, level: str = "bottleneck", **kwargs) -> Task:
    """A GFSS task on one feature level (default ``"bottleneck"``, what DIaM / fine-tuning read)."""
    return Task.gfss(support_features, support_labels, query_features, num_base, num_novel, shots, size,
                     level=level, **kwargs)


def stacked(logits: list[torch.Tensor]) -> torch.Tensor:
    """``fit_predict``'s list of per-task logits as one ``[E, Q, C, H, W]`` tensor."""
    return torch.stack(list(logits))
