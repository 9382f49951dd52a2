"""MM-Former's training-free baselines (Zhang et al., "Mask Matching Transformer for Few-Shot Segmentation",
NeurIPS 2022, Sec. 3.3 and Tab. 3a): segment the query by picking ONE of its class-agnostic proposals.

* ``mmformer-heuristic`` (:class:`HeuristicMatching`): the proposal whose mask-pooled embedding has the highest
  cosine to the support prototype (Tab. 3a row 1; ``self_align=True`` adds the parameter-free self-alignment,
  row 2), features of several levels concatenated (:func:`~fss_lab.models.mmformer.mask_matching.heuristic_mask_matching`).
* :class:`OracleMatching` (named ``mmformer-oracle``; not in the registry, since the contract test's tasks carry no
  query labels; evaluate it with :func:`~fss_lab.engine.evaluate.evaluate_fss`, which passes them): the proposal with the highest IoU with the query ground truth
  (the paper's oracle analysis: the upper bound of picking one proposal; reads the query labels).

Proposals travel as the task level ``"proposals"`` (:class:`~fss_lab.models.proposal_features.ProposalExtractor`
in a feature cache: SLIC superpixels by default; a POS's sigmoid masks work the same way). A task without that
level is handled with one proposal per feature cell of its default level (a pixel-level fallback).
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from ..models.mmformer.mask_matching import blend_proposals, heuristic_mask_matching, oracle_matching
from ..models.proposal_features import PROPOSAL_LEVEL
from .base import Method, NotFittedError, check_fss_support
from .registry import register_method
from .task import Task

#: Default backbone levels of the matching on EfficientNet-Lite0 (MM-Former: res5, res4, res3).
MATCHING_LEVELS = ("s32", "s16", "s8")


def _proposals(task: Task, query: bool = True) -> torch.Tensor:
    """``[Q, N, h, w]`` proposals of the task's queries (the fallback: one-hot feature cells)."""
    if PROPOSAL_LEVEL in task.query_features:
        return task.query(PROPOSAL_LEVEL).float()
    f = task.query()
    q, _, h, w = f.shape
    return torch.eye(h * w, dtype=torch.float32, device=f.device).view(h * w, h, w)[None].expand(q, -1, -1, -1)


def _feature_levels(task: Task, levels: Sequence[str]) -> list[str]:
    have = [lv for lv in levels if lv in task.support_features]
    return have or [task.levels[0]]


class _ProposalMethod(Method):
    label_spaces: ClassVar[tuple[str, ...]] = ("fss",)

    def __init__(self, levels: Sequence[str] = MATCHING_LEVELS):
        self.levels = tuple(levels)
        self.feature_levels = (*self.levels, PROPOSAL_LEVEL)
        self.task: Task | None = None

    def fit(self, task: Task) -> "_ProposalMethod":
        """Store the support set (the matching is computed per query in :meth:`predict`)."""
        self.check_task(task)
        check_fss_support(task)
        self.task = task
        return self


@register_method
class HeuristicMatching(_ProposalMethod):
    """Training-free MM-Former baseline: the proposal with the highest cosine to the support prototype.

    Args:
        levels: backbone levels whose (self-aligned) features are concatenated (default ``("s32", "s16", "s8")``).
        self_align: apply the parameter-free self-alignment first (Tab. 3a row 2) or not (row 1).

    Returns (``predict``): ``[Q, 2, H, W]`` ``[1 - M, M]`` of the chosen proposal (bilinear to the label size), a
    probability pair, not logits (its argmax is the prediction). After ``predict``, ``last_similarity`` holds the
    ``[Q, N]`` cosines (for the proposal browser).
    """

    name: ClassVar[str] = "mmformer-heuristic"

    def __init__(self, levels: Sequence[str] = MATCHING_LEVELS, self_align: bool = True):
        super().__init__(levels)
        self.self_align = bool(self_align)
        self.last_similarity: torch.Tensor | None = None

    def predict(self, task: Task) -> torch.Tensor:
        if self.task is None:
            raise NotFittedError("call fit(task) with a support set before predict()")
        sup = self.task
        levels = _feature_levels(task, self.levels)
        props = _proposals(task)
        q = props.shape[0]
        qf = [task.query(lv).float() for lv in levels]
        sf = [[sup.support(lv).float()[k:k + 1].expand(q, -1, -1, -1) for lv in levels] for k in range(sup.shots)]
        masks = sup.support_labels.long()[None].expand(q, -1, -1, -1)
        out, sim = heuristic_mask_matching(qf, sf, masks, props, self_align=self.self_align, size=task.size)
        self.last_similarity = sim
        return out


class OracleMatching(_ProposalMethod):
    """The oracle of MM-Former's analysis: the proposal with the highest IoU with the query ground truth.

    An upper bound, not a few-shot method: it reads ``task.query_labels`` (``reads_query_labels``); ignore pixels
    count as background. Returns ``[Q, 2, H, W]`` ``[1 - M, M]``.
    """

    name: ClassVar[str] = "mmformer-oracle"
    reads_query_labels = True

    def predict(self, task: Task) -> torch.Tensor:
        if self.task is None:
            raise NotFittedError("call fit(task) with a support set before predict()")
        if task.query_labels is None:
            raise ValueError(f"{self.name} reads the query labels (an upper bound); this task has none "
                             f"({task.describe()}); evaluate it with fss_lab's evaluator, which passes them")
        props = _proposals(task)
        out = oracle_matching(props, task.query_labels.long())
        return out if tuple(out.shape[-2:]) == tuple(task.size) else \
            F.interpolate(out, size=task.size, mode="bilinear", align_corners=False)


__all__ = ["HeuristicMatching", "OracleMatching", "MATCHING_LEVELS", "blend_proposals"]
