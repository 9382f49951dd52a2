"""The prototype baseline: masked average pooling + cosine similarity (PANet / PFENet / RePRI lineage)."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..ops import masked_average_pooling, resize_labels
from .base import Method, NotFittedError, check_fss_support, stack_tasks
from .registry import register_method
from .task import Task, fss_shots_valid

#: The baseline's epsilon on the mask area (PANet-style; no official code fixes it).
MAP_EPS = 1e-6


def cosine_logits(features: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """``temperature * cos(f(x), p_c)`` for every pixel and prototype.

    Args:
        features: ``[Q, D, h, w]``; prototypes: ``[C, D]``.

    Returns:
        logits ``[Q, C, h, w]`` (scaled cosine similarities; PANet Eq. 2 with alpha = temperature).
    """
    f = F.normalize(features, dim=1)
    p = F.normalize(prototypes, dim=1)
    return temperature * torch.einsum("qdhw,cd->qchw", f, p)


@register_method
class PrototypeBaseline(Method):
    """1-way K-shot prototype baseline: background and foreground prototypes by masked average pooling (soft masks
    by area at feature resolution, eps 1e-6), then cosine similarity with a temperature, bilinearly up-sampled
    (``align_corners=False``); K-shot by averaging the K per-shot prototypes (PFENet).

    Training-free and inductive: the query is not used to fit. Reads any single feature level.

    Args:
        temperature: scale of the cosine similarities (20 as in PANet/RePRI); it changes the logits' sharpness,
            not the argmax.

    After :meth:`fit`, ``prototypes`` holds ``[2, D]`` (background, foreground).
    """

    name: ClassVar[str] = "prototype"
    label_spaces: ClassVar[tuple[str, ...]] = ("fss",)

    def __init__(self, temperature: float = 20.0):
        self.temperature = temperature
        self.prototypes: torch.Tensor | None = None

    def fit(self, task: Task) -> "PrototypeBaseline":
        """Prototypes ``[2, D]`` of the task's K supports (per shot, then averaged)."""
        self.check_task(task)
        check_fss_support(task)
        f = task.support(self.features_of(task))
        weights = resize_labels(task.support_labels, tuple(f.shape[-2:]), "area", num_classes=2)
        self.prototypes = masked_average_pooling(f, weights, MAP_EPS).mean(0)  # [K, 2, D] -> [2, D]
        return self

    def predict(self, task: Task) -> torch.Tensor:
        """Logits ``[Q, 2, H, W]`` (scaled cosines, bilinear up-sampling)."""
        if self.prototypes is None:
            raise NotFittedError("call fit(task) with a support set before predict()")
        fq = task.query(self.features_of(task))
        if fq.shape[1] != self.prototypes.shape[1]:
            raise ValueError(f"query features must be [Q, {self.prototypes.shape[1]}, h, w] like the supports, "
                             f"got {tuple(fq.shape)}")
        logits = cosine_logits(fq, self.prototypes, self.temperature)
        return F.interpolate(logits, size=task.size, mode="bilinear", align_corners=False)

    def _valid_fss_batch(self, tasks, masks: torch.Tensor) -> bool:
        """The checks of :meth:`check_task` and ``check_fss_support`` on all stacked masks ``[E, K, H, W]`` in one
        pass: every task 1-way, masks only 0 / 1 / 255, every shot with a foreground pixel. False sends the tasks
        through the per-task checks (which name the offending task)."""
        if not all(t.label_space.is_fss and self.supports(t.label_space) for t in tasks):
            return False
        return fss_shots_valid(masks)

    def fit_predict(self, tasks):
        """Vectorised over E equal-sized tasks (one prototype pair each); equal to the loop (a test checks it)."""
        try:
            fs, ms, fq, _ = stack_tasks(tasks, self.features_of(tasks[0]))
        except ValueError:
            return super().fit_predict(tasks)
        if not self._valid_fss_batch(tasks, ms):  # the per-task checks raise the errors (names the task)
            for t in tasks:
                self.check_task(t)
                check_fss_support(t)
        e, k, d, h, w = fs.shape
        size = tasks[0].size
        weights = resize_labels(ms.flatten(0, 1), (h, w), "area", num_classes=2)
        prototypes = masked_average_pooling(fs.reshape(e * k, d, h, w), weights, MAP_EPS).view(e, k, 2, d).mean(1)
        f = F.normalize(fq, dim=2)
        p = F.normalize(prototypes, dim=2)
        logits = self.temperature * torch.einsum("eqdhw,ecd->eqchw", f, p)  # e: episode, q: query, c: bg/fg
        logits = F.interpolate(logits.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
        self.prototypes = prototypes[-1]
        return list(logits.view(e, fq.shape[1], 2, *size).unbind(0))
