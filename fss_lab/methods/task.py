"""What a few-shot method sees: one :class:`Task` (support set + queries + label space), for FSS and GFSS alike.

Label space (:class:`LabelSpace`): ``0`` background, ``1..B`` base classes, ``B+1..B+N`` novel classes, ``255``
ignore. A 1-way FSS episode is the special case ``B = 0, N = 1`` (labels 0 / 1 / 255); a GFSS run is ``B >= 1``.
Methods return logits ``[Q, 1 + B + N, H, W]`` for the task's queries.

Features come per named level (``task.support("bottleneck")``), so single-level methods (prototype, RePRI, DIaM)
and multi-level models (PFENet-style, MM-Former) read the same object. The default level is the one the evaluator
filled first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..labels import IGNORE_INDEX, LabelSpace


@dataclass
class Task:
    """One support set and the queries to segment with it.

    Attributes:
        support_features: ``{level: float [S, D_l, h_l, w_l]}`` features of the S support images.
        support_labels: integer (uint8 or int64) ``[S, H, W]`` labels at image resolution in ``label_space``
            (base pixels labelled only where the protocol gives them: see ``Method.support_base_pixels``).
        query_features: ``{level: float [Q, D_l, h_l, w_l]}``, the same levels.
        label_space: the classes of the logits.
        shots: K, support images per novel class (``S = N * K`` plus any base-class shots).
        size: ``(H, W)`` pixels of the returned logits (the label resolution).
        query_valid: bool ``[Q, H, W]`` pixels that count (official DIaM / RePRI: ``label != 255``, i.e. padding and
            void are left out of the query terms); ``None``: every pixel.
        query_labels: integer ``[Q, H, W]`` ground truth in ``label_space``, for the oracle priors and analyses
            only (a method that reads it declares ``reads_query_labels``); ``None`` when not given.
        meta: free ids for messages (episode / run number, image ids, class ids).

    Raises:
        ValueError: missing or mismatched levels, wrong ranks, or counts that do not match (names the tensor).
    """

    support_features: Mapping[str, torch.Tensor]
    support_labels: torch.Tensor
    query_features: Mapping[str, torch.Tensor]
    label_space: LabelSpace
    shots: int
    size: tuple[int, int]
    query_valid: torch.Tensor | None = None
    query_labels: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.support_features or set(self.support_features) != set(self.query_features):
            raise ValueError(f"support and query features must name the same levels, got "
                             f"{sorted(self.support_features)} and {sorted(self.query_features)}")
        s, q = self.num_support, self.num_queries
        for level in self.support_features:
            fs, fq = self.support_features[level], self.query_features[level]
            if fs.dim() != 4 or fq.dim() != 4 or fs.shape[1:] != fq.shape[1:] or fs.shape[0] != s \
                    or fq.shape[0] != q:
                raise ValueError(f"level {level!r}: support features {tuple(fs.shape)} and query features "
                                 f"{tuple(fq.shape)} must be [S={s}, D, h, w] (S from support_labels) and [Q, D, h, w] "
                                 "with the same D, h, w")
        if self.support_labels.dim() != 3 or self.support_labels.shape[0] != s:
            raise ValueError(f"support_labels must be [S={s}, H, W], got {tuple(self.support_labels.shape)}")
        if self.shots < 1:
            raise ValueError(f"shots must be >= 1, got {self.shots}")
        self.size = tuple(int(x) for x in self.size)
        for name in ("query_valid", "query_labels"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != (q, *self.size):
                raise ValueError(f"{name} must be [Q, H, W] = {[q, *self.size]}, got {tuple(t.shape)}")

    @classmethod
    def fss(cls, support_features: torch.Tensor, support_masks: torch.Tensor, query_features: torch.Tensor,
            size: tuple[int, int] | None = None, *, level: str = "features", **kwargs) -> "Task":
        """A 1-way K-shot FSS task from single-level tensors: features ``[K, D, h, w]`` / ``[Q, D, h, w]``, binary
        masks ``[K, H, W]`` (0 / 1 / 255); ``size`` defaults to the masks' ``(H, W)``; ``kwargs`` as the fields."""
        size = tuple(support_masks.shape[-2:]) if size is None else size
        return cls({level: support_features}, support_masks, {level: query_features}, LabelSpace.fss(),
                   shots=int(support_features.shape[0]), size=size, **kwargs)

    @classmethod
    def gfss(cls, support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor,
             num_base: int, num_novel: int, shots: int, size: tuple[int, int] | None = None, *,
             level: str = "features", **kwargs) -> "Task":
        """A GFSS task from single-level tensors (labels in ``0..B+N`` / 255); ``kwargs`` as the fields."""
        size = tuple(support_labels.shape[-2:]) if size is None else size
        return cls({level: support_features}, support_labels, {level: query_features},
                   LabelSpace(num_base, num_novel), shots=shots, size=size, **kwargs)

    @property
    def levels(self) -> tuple[str, ...]:
        """Feature level names, the default first."""
        return tuple(self.support_features)

    @property
    def num_support(self) -> int:
        """S, the support images."""
        return int(self.support_labels.shape[0])

    @property
    def num_queries(self) -> int:
        """Q, the query images."""
        return int(next(iter(self.query_features.values())).shape[0])

    def _level(self, level: str | None) -> str:
        level = self.levels[0] if level is None else level
        if level not in self.support_features:
            raise KeyError(f"this task has features {list(self.levels)}, not {level!r}; evaluate the method with an "
                           f"experiment that provides {level!r} features")
        return level

    def support(self, level: str | None = None) -> torch.Tensor:
        """Support features ``[S, D, h, w]`` of ``level`` (default: the first level)."""
        return self.support_features[self._level(level)]

    def query(self, level: str | None = None) -> torch.Tensor:
        """Query features ``[Q, D, h, w]`` of ``level`` (default: the first level)."""
        return self.query_features[self._level(level)]

    def valid(self) -> torch.Tensor:
        """``query_valid``, or every pixel: bool ``[Q, H, W]`` on the query features' device."""
        if self.query_valid is not None:
            return self.query_valid
        return torch.ones(self.num_queries, *self.size, dtype=torch.bool, device=self.query().device)

    def with_queries(self, query_features: Mapping[str, torch.Tensor], query_valid: torch.Tensor | None = None,
                     query_labels: torch.Tensor | None = None, **meta) -> "Task":
        """The same support set with other queries (an inductive method fits once and predicts many batches)."""
        return Task(self.support_features, self.support_labels, query_features, self.label_space, self.shots,
                    self.size, query_valid, query_labels, {**self.meta, **meta})

    def to(self, device: torch.device | str) -> "Task":
        """A copy with every tensor on ``device``."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Task({k: v.to(device) for k, v in self.support_features.items()}, self.support_labels.to(device),
                    {k: v.to(device) for k, v in self.query_features.items()}, self.label_space, self.shots,
                    self.size, mv(self.query_valid), mv(self.query_labels), dict(self.meta))

    def describe(self) -> str:
        """A short id for error messages: the meta fields (episode, run, image ids)."""
        return ", ".join(f"{k}={v}" for k, v in self.meta.items()) or "task"


def check_labels(labels: torch.Tensor, space: LabelSpace, what: str = "support labels") -> None:
    """Raise ``ValueError`` unless integer ``labels`` hold only ``0..1+B+N-1`` and 255 (names the bad values).

    One vectorised pass (uint8: the maximum of ``labels + 1``, in which 255 wraps to 0; other integer types: the
    minimum and maximum with 255 set to 0); the bad values are listed only when there are some."""
    if labels.dtype == torch.bool:
        labels = labels.to(torch.uint8)
    if labels.dtype == torch.uint8:
        ok = labels.numel() == 0 or int((labels + 1).amax()) <= space.num_classes
    else:
        lo, hi = labels.masked_fill(labels == IGNORE_INDEX, 0).aminmax() if labels.numel() else (0, 0)
        ok = int(lo) >= 0 and int(hi) < space.num_classes
    if ok:
        return
    lab = labels.long()
    bad = ((lab < 0) | (lab >= space.num_classes)) & (lab != IGNORE_INDEX)
    extra = sorted({int(v) for v in lab[bad].unique()})
    kind = "a 1-way episode must hold 0, 1 or 255" if space.is_fss else \
        f"labels must be in 0..{space.num_classes - 1} (1 + B + N) or 255"
    raise ValueError(f"{what}: {kind}, found {extra}")


def fss_shots_valid(masks: torch.Tensor) -> bool:
    """Whether binary masks ``[..., H, W]`` hold only 0 / 1 / 255 AND every mask has a foreground pixel, in one
    pass: for uint8, the per-mask maximum of ``masks + 1`` (255 wraps to 0) is 2 exactly when both hold. Other dtypes
    take two passes. ``False`` says only that a check fails: :func:`check_labels` and
    :func:`~fss_lab.methods.base.check_fss_support` then name the failure."""
    if masks.numel() == 0:
        return False
    flat = masks.flatten(0, -3).flatten(1) if masks.dim() >= 3 else masks.reshape(1, -1)
    if masks.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    if flat.dtype == torch.uint8:
        return bool(((flat + 1).amax(1) == 2).all())
    lo, hi = flat.masked_fill(flat == IGNORE_INDEX, 0).aminmax()
    return int(lo) >= 0 and int(hi) <= 1 and bool((flat == 1).any(1).all())
