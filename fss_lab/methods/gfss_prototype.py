"""The meta-learning-style GFSS baseline: novel prototypes imprinted into the frozen base classifier (no training).

Each novel class gets one weight vector: the masked average of the support bottleneck features over its pixels
(all shots pooled, as DIaM initialises its novel classifier; fss-methods.md section 4a), L2-normalised and scaled to
the mean norm of the base classes' weights, with the mean base-class bias ("weight imprinting", Qi et al., CVPR 2018;
the prototype branch of GFS-Seg, Tian et al., CVPR 2022). The scaling choice: a raw prototype's norm follows the
feature norm, which is unrelated to the learnt weights' scale, so raw prototypes either swamp or never win against
the base classes; matching the base weights' mean norm (background row excluded: it is a catch-all class whose
weight is shaped differently) puts novel logits on the base logits' scale.

Nothing is optimised, so extra shots only refine a mean: the baseline the fine-tuning paper (seed 000) expects to
saturate with more shots while fine-tuning keeps improving.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from ..ops import classifier_rows, extend_classifier, resize_labels
from .base import Method, NotFittedError
from .registry import register_method
from .task import Task


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, class_ids: Sequence[int]) -> torch.Tensor:
    """Masked average pooling over all shots at once: one prototype per class.

    Shape:
        features float ``[S, D, h, w]``; labels integer ``[S, H, W]`` (255 ignored; area-averaged to ``h x w`` by
        :func:`~fss_lab.ops.resize_labels`, mode ``"area"``) -> float ``[len(class_ids), D]``:
        ``p_c = sum_{s,x} m_c(s, x) f(s, x) / sum_{s,x} m_c(s, x)`` (PANet Eq. 1 with shots pooled, as DIaM).

    Raises:
        ValueError: a class with no pixel in the labels (names it).
    """
    num = max(int(c) for c in class_ids) + 1
    masks = resize_labels(labels.long(), tuple(features.shape[-2:]), "area", num_classes=num)[:, list(class_ids)]
    area = masks.sum((0, 2, 3))
    missing = [int(c) for c, a in zip(class_ids, area) if a <= 0]
    if missing:
        raise ValueError(f"no support pixel of class(es) {missing}; every novel class needs a support pixel")
    return torch.einsum("schw,sdhw->cd", masks.to(features.dtype), features) / area[:, None].to(features.dtype)


def imprint_weights(prototypes: torch.Tensor, base_weight: torch.Tensor, base_bias: torch.Tensor | None,
                    norm_scale: float = 1.0):
    """Novel classifier rows from prototypes, on the base classifier's scale (module docstring).

    Shape:
        prototypes ``[N, D]``; base_weight ``[1 + B, D]`` (row 0 background); base_bias ``[1 + B]`` or None ->
        ``(weight [N, D], bias [N])``: ``w_n = norm_scale * p_n / ||p_n|| * mean_{b>=1} ||w_b||``,
        ``b_n = mean_{b>=1} b_b`` (0 without a bias). With no base class (``B = 0``) the background row sets the scale.
    """
    rows = base_weight[1:] if base_weight.shape[0] > 1 else base_weight
    scale = rows.norm(dim=1).mean()
    weight = F.normalize(prototypes, dim=1) * scale * norm_scale
    if base_bias is None:
        bias = torch.zeros(len(prototypes), dtype=weight.dtype, device=weight.device)
    else:
        b = base_bias[1:] if base_bias.shape[0] > 1 else base_bias
        bias = b.mean().expand(len(prototypes)).clone()
    return weight, bias


@register_method
class PrototypeGFSS(Method):
    """Novel prototypes appended to the frozen base classifier; no gradient step (module docstring).

    Args:
        model: the base segmentation model (``.classifier``: ``nn.Conv2d(D, 1 + B, 1)``) or that classifier.
        norm_scale: multiplies the imprinted norm (1 = the base weights' mean norm). Post-ReLU features all share a
            positive "mean" direction that learnt base weights cancel and a raw prototype does not, so at scale 1
            novel logits can win too many base pixels: on the generated data (fold 0, EfficientNet-Lite0 PSPNet,
            5-shot) base / novel mIoU were 0.19 / 0.23 at 1.0 and 0.62 / 0.41 at 0.7. Worth a sweep per model.

    Features: the bottleneck (``model.features``, what the classifier sees). N comes from the task. After
    :meth:`fit`, ``weight [1+B+N, D]`` and ``bias [1+B+N]`` hold the extended classifier.

    Raises:
        TypeError: no 1x1 classifier; ValueError: ``norm_scale <= 0``.
    """

    name: ClassVar[str] = "gfss-prototype"
    feature_levels: ClassVar[tuple[str, ...]] = ("bottleneck",)
    label_spaces: ClassVar[tuple[str, ...]] = ("gfss",)

    def __init__(self, model, *, norm_scale: float = 1.0):
        if norm_scale <= 0:
            raise ValueError(f"need norm_scale > 0, got {norm_scale}")
        self.norm_scale = float(norm_scale)
        self.base_weight, self.base_bias = classifier_rows(model)
        self.num_base = self.base_weight.shape[0] - 1
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def fit(self, task: Task) -> "PrototypeGFSS":
        """Imprint the novel prototypes of the task's supports (features ``[S, D, h, w]``, labels ``[S, H, W]``).

        Raises:
            UnsupportedTaskError: a 1-way task; ValueError: B or D that do not match the classifier, a novel class
                without a support pixel.
        """
        self.check_task(task)
        space = task.label_space
        fs = task.support(self.features_of(task))
        if space.num_base != self.num_base:
            raise ValueError(f"the task has B={space.num_base} base classes but the classifier has {self.num_base}")
        if fs.shape[1] != self.base_weight.shape[1]:
            raise ValueError(f"support features have {fs.shape[1]} channels but the classifier reads "
                             f"{self.base_weight.shape[1]}; pass the bottleneck features (model.features)")
        protos = class_prototypes(fs.float(), task.support_labels, space.novel_ids)
        dev = fs.device
        base_bias = None if self.base_bias is None else self.base_bias.to(dev)
        w_n, b_n = imprint_weights(protos, self.base_weight.to(dev), base_bias, self.norm_scale)
        self.weight, self.bias = extend_classifier(self.base_weight, base_bias, w_n, b_n)
        return self

    def predict(self, task: Task) -> torch.Tensor:
        """Logits ``[Q, 1 + B + N, H, W]`` (bilinear up-sampling, ``align_corners=False``, of ``W f + b``)."""
        if self.weight is None:
            raise NotFittedError("call fit(task) with a support set before predict()")
        fq = task.query(self.features_of(task)).float()
        w = self.weight.to(fq.device)
        logits = torch.einsum("qdhw,cd->qchw", fq, w)  # q: query, d: channel, c: class
        logits = logits + self.bias.to(fq.device)[None, :, None, None]
        return F.interpolate(logits, size=task.size, mode="bilinear", align_corners=False)
