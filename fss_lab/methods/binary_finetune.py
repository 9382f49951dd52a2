"""Episode fine-tuning of a linear classifier on frozen support features, with binary support labels.

Source: Liu, Zhang & Lu, "Towards Generalized Few-shot Segmentation: On Contrastive Learning and Background
Information Modeling" (NYU capstone report, 2022), Sec. 3.4-3.5 and 4.2; official code hmdliu/GFSS-Capstone
``src/model/meta/mib.py``: per episode, SGD (lr 0.1, no momentum) for 100 steps on the support features only, of

* a (|C_base| + 2)-way classifier (bg + base + 1 novel), base rows copied from the base model's classifier, trained
  with the reformulated CE (Eq. 4-5) + gamma * background-shift distillation (Eq. 6-8) against the frozen base
  classifier: :class:`BackgroundAwareFineTuning` (Table 2 "|C_base|+2", Table 3/4 "DL" with gamma = 10);
* a plain 2-way classifier trained with weighted CE ``[1, n_bg / n_fg]``: :class:`BinaryFineTuning` (Table 2 "2").

Official behaviour (the defaults; checked against the official code, fss-methods.md sections 4c and 7):

* logits are up-sampled bilinearly with ``align_corners=True`` (``align_corners=False``: the package's variant);
* the (B + 2)-way head is a 1x1 conv **without bias** (``bias=True``: the package's variant, base biases copied);
* the binary prediction up-samples the (B + 2) logits and compares the novel logit with the **max over the other
  classes** (``binary_rule="max"``); ``binary_rule="logsumexp"`` (the package's variant) folds the other classes by
  log-sum-exp on the feature grid first, then up-samples the two maps.

Differences from the official code that remain, on purpose:

* it L2-normalises the query features but not the support features (``norm_q=True, norm_s=False``); here both are
  used as they come, so base logits match the base model's;
* it computes the support loss on logits up-sampled to the image (473 x 473); here the default is the feature grid
  with nearest-down-sampled labels (``loss_resolution="feature"``, as DIaM/RePRI do; ~40x faster on a CPU);
  ``loss_resolution="image"`` with the default ``align_corners=True`` is the official loss.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX
from ..losses.unbiased import background_shift_distillation, binary_class_weights, binary_log_probs
from ..ops import classifier_rows, masked_average_pooling, resize_labels
from .base import Method, NotFittedError, check_fss_support, stack_tasks
from .registry import register_method
from .task import Task

BINARY_RULES = ("max", "logsumexp")


def linear_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1x1-conv classifier per episode: ``[E, N, D, h, w]``, weight ``[E, C, D]``, bias ``[E, C]`` -> logits
    ``[E, N, C, h, w]``."""
    return torch.einsum("endhw,ecd->enchw", features, weight) + bias[:, None, :, None, None]  # n: image, c: class


def episode_weighted_nll(
    log_probs: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Sum over episodes of each episode's class-weighted mean NLL with weights ``[1, n_bg / n_fg]``.

    Shape: log_probs float ``[E, N, 2, ...]``; target int ``[E, N, ...]`` (0, 1, ignore). Returns a scalar; for
    E = 1 it equals ``F.nll_loss(log_probs[0], target[0], weight=binary_class_weights(target[0]))``.
    """
    weights = torch.stack([binary_class_weights(t, ignore_index) for t in target]).to(log_probs)  # [E, 2]
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target)).long()
    nll = -log_probs.gather(2, t.unsqueeze(2)).squeeze(2)  # [E, N, ...]
    w = torch.gather(weights, 1, t.flatten(1)).view_as(nll) * valid
    return ((w * nll).flatten(1).sum(1) / w.flatten(1).sum(1).clamp(min=1e-12)).sum()


def feature_labels(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary masks ``[K, H, W]`` (0/1/255) -> int64 labels ``[K, h, w]`` by nearest down-sampling (DIaM, RePRI).

    A shot whose foreground disappears (an object smaller than a feature cell) instead marks every cell its
    foreground touches as 1, so each support still shows the class.
    """
    labels = resize_labels(masks, size, "nearest")
    lost = ~(labels == 1).flatten(1).any(1) & (masks == 1).flatten(1).any(1)
    if bool(lost.any()):
        touched = resize_labels(masks[lost], size, "area", num_classes=2)[:, 1] > 0
        labels[lost] = torch.where(touched, torch.ones_like(labels[lost]), labels[lost])
    return labels


def max_rule_binary(logits: torch.Tensor, novel_index: int) -> torch.Tensor:
    """The official binary prediction of a multi-class head: ``[bg, fg] = [max_{k != novel} z_k, z_novel]``.

    Shape: logits float ``[Q, C, H, W]`` (already up-sampled) -> ``[Q, 2, H, W]``; the argmax is "foreground where
    the novel logit beats every other class" (GFSS-Capstone ``mib.py``).
    """
    others = torch.cat([logits[:, :novel_index], logits[:, novel_index + 1:]], dim=1)
    return torch.stack([others.max(1).values, logits[:, novel_index]], dim=1)


class _EpisodeFineTuning(Method):
    """Shared loop: init a classifier per episode, plain SGD on the support loss, predict with the result."""

    train_bias: bool = True

    def __init__(self, steps: int, lr: float, loss_resolution: str, seed: int, align_corners: bool):
        if loss_resolution not in ("feature", "image"):
            raise ValueError(f"loss_resolution must be 'feature' or 'image', got {loss_resolution!r}")
        if steps < 0 or lr <= 0:
            raise ValueError(f"need steps >= 0 and lr > 0, got steps={steps}, lr={lr}")
        self.steps, self.lr, self.loss_resolution, self.seed = steps, lr, loss_resolution, seed
        self.align_corners = bool(align_corners)
        self.weight: torch.Tensor | None = None  # [C, D] after fit
        self.bias: torch.Tensor | None = None  # [C]
        self.support_losses: list[float] = []  # loss before each SGD step (summed over episodes)

    # subclasses: initial (weight [E, C, D], bias [E, C]) and the support loss of logits [E, K, C, h', w']
    def _init(self, features, masks):
        raise NotImplementedError

    def _loss(self, logits, labels, fixed):
        raise NotImplementedError

    def _prepare(self, features, labels) -> dict:
        return {}

    def _up(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

    def _fresh_rows(self, rows: int, dim: int, like: torch.Tensor) -> torch.Tensor:
        """``nn.Conv2d``'s default weight init, U(-1/sqrt(D), 1/sqrt(D)), drawn from ``seed`` (same every fit)."""
        g = torch.Generator().manual_seed(self.seed)
        bound = 1.0 / math.sqrt(dim)
        return (torch.rand(rows, dim, generator=g) * 2 - 1).mul_(bound).to(like)

    def _loss_logits(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.loss_resolution == "feature":
            return logits
        e, n = logits.shape[:2]
        up = self._up(logits.flatten(0, 1), size)
        return up.view(e, n, *up.shape[1:])

    def _fit_episodes(self, features: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features ``[E, K, D, h, w]``, masks ``[E, K, H, W]`` -> trained (weight ``[E, C, D]``, bias ``[E, C]``)."""
        e, k, d, h, w = features.shape
        features = features.detach()
        if self.loss_resolution == "feature":
            labels = feature_labels(masks.flatten(0, 1), (h, w)).view(e, k, h, w)
        else:
            labels = masks.long()
        weight, bias = self._init(features, masks)
        fixed = self._prepare(features, labels)
        losses = []
        with torch.enable_grad():
            weight, bias = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
            for _ in range(self.steps):
                logits = self._loss_logits(linear_logits(features, weight, bias), tuple(labels.shape[-2:]))
                loss = self._loss(logits, labels, fixed)
                params = (weight, bias) if self.train_bias else (weight,)
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        p -= self.lr * g
                losses.append(loss.detach())
        self.support_losses = torch.stack(losses).tolist() if losses else []
        return weight.detach(), bias.detach()

    def _binary_masks(self, task: Task) -> torch.Tensor:
        """The support labels as 0 / 1 / 255 (a GFSS task's novel class B+1 -> 1, every other class -> 0)."""
        self.check_task(task)
        if task.label_space.is_fss:
            check_fss_support(task)
            return task.support_labels
        novel = task.label_space.novel_ids[0]
        lab = task.support_labels
        return torch.where(lab == IGNORE_INDEX, lab, (lab == novel).to(lab.dtype))

    def fit(self, task: Task) -> "_EpisodeFineTuning":
        """Train a classifier on the task's support features and binary support labels (queries not read)."""
        masks = self._binary_masks(task)
        weight, bias = self._fit_episodes(task.support(self.features_of(task))[None], masks[None])
        self.weight, self.bias = weight[0], bias[0]
        return self

    def _query_logits(self, task: Task) -> torch.Tensor:
        if self.weight is None:
            raise NotFittedError("call fit(task) with a support set before predict()")
        fq = task.query(self.features_of(task))
        if fq.shape[1] != self.weight.shape[1]:
            raise ValueError(f"query features must be [Q, {self.weight.shape[1]}, h, w] like the supports, "
                             f"got {tuple(fq.shape)}")
        return linear_logits(fq[None], self.weight[None], self.bias[None])[0]

    def _output(self, logits: torch.Tensor, task: Task) -> torch.Tensor:
        """Feature-grid logits ``[Q, C, h, w]`` -> the task's output at ``task.size``."""
        return self._up(logits, task.size)  # 2-way classifiers already give (bg, fg)

    def predict(self, task: Task) -> torch.Tensor:
        """Logits at ``task.size``: ``[Q, 2, H, W]`` for a 1-way task (``[Q, B + 2, H, W]`` for a GFSS task of
        the (B + 2)-way head)."""
        return self._output(self._query_logits(task), task)

    def fit_predict(self, tasks):
        """Vectorised over E equal-sized tasks (each its own classifier; equal to looping fit / predict)."""
        level = self.features_of(tasks[0])
        try:
            fs, _, fq, _ = stack_tasks(tasks, level)
        except ValueError:
            return super().fit_predict(tasks)
        masks = torch.stack([self._binary_masks(t) for t in tasks])
        weight, bias = self._fit_episodes(fs, masks)
        self.weight, self.bias = weight[-1], bias[-1]
        logits = linear_logits(fq, weight, bias)  # [E, Q, C, h, w]
        return [self._output(z, t) for z, t in zip(logits.unbind(0), tasks)]


@register_method
class BackgroundAwareFineTuning(_EpisodeFineTuning):
    """The report's GFSS fine-tuning: a (|C_base| + 2)-way classifier (bg, base 1..B, novel B+1) on frozen features,
    trained on binary support labels with ``L_FT = L_ce' + gamma * L_distil`` (report Eq. 8; Eq. 4-5 and 6-7 in
    :mod:`fss_lab.losses.unbiased`). All rows (base and novel) are trained, as in the official code.

    Args:
        model: the base model (``.classifier``: ``nn.Conv2d(D, 1 + B, 1)``) or that classifier; its weight and bias
            are copied (it stays frozen and is the distillation teacher, with its bias).
        gamma: distillation weight (official ``kdl_weight`` = 10; report Table 3 sweeps 0, 5, 10, 20; 0 = Table 2's
            "|C_base| + 2" baseline).
        steps, lr: plain SGD (no momentum), 100 steps at lr 0.1 (official ``adapt_iter``, ``lr_cls``).
        novel_init: ``"fresh"`` (official: ``nn.Conv2d`` default init) or ``"prototype"`` (masked average of the
            support foreground features, L2-normalised like DIaM's novel prototypes).
        loss_resolution: ``"feature"`` (default, fast: labels nearest-down-sampled to the feature grid) or
            ``"image"`` (official: logits up-sampled to the label size; ~40x slower on a CPU).
        bias: ``False`` (official: the head is a 1x1 conv without bias, so base biases are not copied) or ``True``
            (the package's variant: base biases copied, a novel bias from 0, all trained).
        binary_rule: ``"max"`` (official) or ``"logsumexp"`` for 1-way tasks (module docstring).
        align_corners: of every bilinear up-sampling (official ``True``).
        seed: seeds the fresh novel row (the same init for every episode).

    On a 1-way FSS task ``predict`` gives ``[Q, 2, H, W]`` (bg, fg) by ``binary_rule``; on a GFSS task with one
    novel class (the seed 002 episode scoring, Tables 2-3) the full ``[Q, B + 2, H, W]`` logits. After ``fit``:
    ``weight [B + 2, D]``, ``bias [B + 2]`` (zeros without bias), ``support_losses`` (one per step).

    Raises:
        TypeError: no 1x1 classifier. ValueError: an unknown ``novel_init`` / ``binary_rule`` / resolution.
    """

    name: ClassVar[str] = "background-aware-ft"
    feature_levels: ClassVar[tuple[str, ...]] = ("bottleneck",)
    label_spaces: ClassVar[tuple[str, ...]] = ("fss", "gfss")
    max_novel: ClassVar[int | None] = 1

    def __init__(self, model, gamma: float = 10.0, steps: int = 100, lr: float = 0.1, novel_init: str = "fresh",
                 loss_resolution: str = "feature", bias: bool = False, binary_rule: str = "max",
                 align_corners: bool = True, seed: int = 0):
        super().__init__(steps, lr, loss_resolution, seed, align_corners)
        if novel_init not in ("fresh", "prototype"):
            raise ValueError(f"novel_init must be 'fresh' or 'prototype', got {novel_init!r}")
        if binary_rule not in BINARY_RULES:
            raise ValueError(f"binary_rule must be one of {BINARY_RULES}, got {binary_rule!r}")
        w, b = classifier_rows(model)
        self.base_weight = w  # [1 + B, D]
        self.base_bias = b if b is not None else torch.zeros(w.shape[0])
        self.gamma, self.novel_init, self.binary_rule = gamma, novel_init, binary_rule
        self.train_bias = bool(bias)

    @property
    def novel_index(self) -> int:
        """Channel of the novel class in the (B + 2)-way logits: ``B + 1``."""
        return self.base_weight.shape[0]

    def check_task(self, task: Task) -> None:
        """As :meth:`Method.check_task` (which refuses N > 1), and a GFSS task must have this head's B."""
        super().check_task(task)
        space = task.label_space
        if not space.is_fss and space.num_base != self.novel_index - 1:
            raise ValueError(f"{self.name} adds ONE novel class to the base classifier's B={self.novel_index - 1} "
                             f"classes; the task has B={space.num_base}")

    def _init(self, features, masks):
        e, _, d = features.shape[:3]
        base_w, base_b = self.base_weight.to(features), self.base_bias.to(features)
        if base_w.shape[1] != d:
            raise ValueError(f"support features have {d} channels but the base classifier expects {base_w.shape[1]}")
        if self.novel_init == "fresh":
            novel = self._fresh_rows(1, d, features).expand(e, 1, d)
        else:
            cells = resize_labels(masks.flatten(0, 1), tuple(features.shape[-2:]), "area", num_classes=2)
            protos = masked_average_pooling(features.flatten(0, 1), cells[:, 1:], 1e-6).view(e, -1, d).mean(1)
            novel = F.normalize(protos, dim=-1)[:, None]
        weight = torch.cat([base_w.expand(e, -1, -1), novel], dim=1)
        if self.train_bias:
            bias = torch.cat([base_b.expand(e, -1), base_b.new_zeros(e, 1)], dim=1)
        else:  # official: a 1x1 conv without bias
            bias = base_b.new_zeros(e, self.novel_index + 1)
        return weight, bias

    def _prepare(self, features, labels):
        e = features.shape[0]
        teacher = linear_logits(features, self.base_weight.to(features)[None].expand(e, -1, -1),
                                self.base_bias.to(features)[None].expand(e, -1))
        return {"teacher": self._loss_logits(teacher, tuple(labels.shape[-2:])).flatten(0, 1)}

    def _loss(self, logits, labels, fixed):
        e, n = logits.shape[:2]
        log_q = binary_log_probs(logits.flatten(0, 1), self.novel_index).view(e, n, 2, *logits.shape[3:])
        loss = episode_weighted_nll(log_q, labels)  # Eq. 4-5 per episode, summed over episodes
        if self.gamma:  # Eq. 6-7; the flattened mean is the mean of the equal-sized episodes, hence * e
            loss = loss + self.gamma * e * background_shift_distillation(logits.flatten(0, 1), fixed["teacher"])
        return loss

    def _output(self, logits, task):
        if not task.label_space.is_fss:
            return self._up(logits, task.size)  # bg, base 1..B, novel B+1
        if self.binary_rule == "max":
            return max_rule_binary(self._up(logits, task.size), self.novel_index)
        return self._up(binary_log_probs(logits, self.novel_index), task.size)  # (log p_bg, log p_fg)


@register_method
class BinaryFineTuning(_EpisodeFineTuning):
    """The plain 2-way (bg, novel) classifier of the report's Table 2, trained from scratch on the support features
    with weighted CE ``[1, n_bg / n_fg]`` (official ``cls1``: ``nn.Conv2d`` default init, no bias).

    Args:
        steps, lr: plain SGD, 100 steps at lr 0.1 (official).
        bias: learn a bias per class (official: no bias).
        loss_resolution, align_corners, seed: as :class:`BackgroundAwareFineTuning`.

    Reads any single feature level; 1-way tasks only.
    """

    name: ClassVar[str] = "binary-ft"
    label_spaces: ClassVar[tuple[str, ...]] = ("fss",)

    def __init__(self, steps: int = 100, lr: float = 0.1, bias: bool = False, loss_resolution: str = "feature",
                 align_corners: bool = True, seed: int = 0):
        super().__init__(steps, lr, loss_resolution, seed, align_corners)
        self.train_bias = bias

    def _init(self, features, masks):
        e, _, d = features.shape[:3]
        weight = self._fresh_rows(2, d, features).expand(e, 2, d)
        return weight, features.new_zeros(e, 2)

    def _loss(self, logits, labels, fixed):
        return episode_weighted_nll(torch.log_softmax(logits, dim=2), labels)
