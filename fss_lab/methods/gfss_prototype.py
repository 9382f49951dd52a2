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
from torch import nn

from ..data.base import IGNORE_INDEX
from .base import GFSSMethod
from .prototype import downsample_masks


def base_classifier(model_or_classifier) -> nn.Conv2d:
    """The base model's 1x1 classifier: ``model.classifier`` or the ``nn.Conv2d`` itself.

    Raises:
        TypeError: not a 1x1 ``nn.Conv2d`` (names what was found).
    """
    clf = getattr(model_or_classifier, "classifier", model_or_classifier)
    if not isinstance(clf, nn.Conv2d) or clf.kernel_size != (1, 1):
        raise TypeError(f"expected a 1x1 nn.Conv2d classifier (or a model with .classifier), got {type(clf).__name__}"
                        + (f" with kernel {clf.kernel_size}" if isinstance(clf, nn.Conv2d) else ""))
    return clf


def check_gfss_support(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    """Validate ``features [S, D, h, w]`` and GFSS ``labels [S, H, W]`` in ``0..num_classes-1`` or 255.

    Raises:
        ValueError: wrong ranks, different S, a label out of range, or no labelled pixel at all.
    """
    if features.dim() != 4 or labels.dim() != 3 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"support features must be [S, D, h, w] and labels [S, H, W] with the same S; got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()):
        raise ValueError("support labels hold no labelled pixel (all 255)")
    lab = labels[valid]
    if int(lab.min()) < 0 or int(lab.max()) >= num_classes:
        bad = sorted({int(v) for v in lab[(lab < 0) | (lab >= num_classes)].unique()})
        raise ValueError(f"support labels hold {bad}, outside 0..{num_classes - 1} (1 + B + N GFSS classes) and 255; "
                         "build them with fss_lab.data.gfss.gfss_support_labels and pass the right num_novel")


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, class_ids: Sequence[int]) -> torch.Tensor:
    """Masked average pooling over all shots at once: one prototype per class.

    Shape:
        features float ``[S, D, h, w]``; labels integer ``[S, H, W]`` (255 ignored; area-averaged to ``h x w`` by
        :func:`~fss_lab.methods.prototype.downsample_masks`) -> float ``[len(class_ids), D]``:
        ``p_c = sum_{s,x} m_c(s, x) f(s, x) / sum_{s,x} m_c(s, x)`` (PANet Eq. 1 with shots pooled, as DIaM).

    Raises:
        ValueError: a class with no pixel in the labels (names it).
    """
    num = max(int(c) for c in class_ids) + 1
    masks = downsample_masks(labels.long(), tuple(features.shape[-2:]), num_classes=num)[:, list(class_ids)]
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


class PrototypeGFSS(GFSSMethod):
    """Novel prototypes appended to the frozen base classifier; no gradient step (module docstring).

    Args:
        model: the base segmentation model (``.classifier``: ``nn.Conv2d(D, 1 + B, 1)``) or that classifier.
        num_novel: N, the novel classes (GFSS ids ``B+1..B+N``).
        norm_scale: multiplies the imprinted norm (1 = the base weights' mean norm). Post-ReLU features all share a
            positive "mean" direction that learnt base weights cancel and a raw prototype does not, so at scale 1
            novel logits can win too many base pixels: on the generated data (fold 0, EfficientNet-Lite0 PSPNet,
            5-shot) base / novel mIoU were 0.19 / 0.23 at 1.0 and 0.62 / 0.41 at 0.7. Worth a sweep per model.

    Features: the bottleneck (``feature_source = "bottleneck"``: ``model.features``, what the classifier sees).
    After :meth:`fit`, ``weight [1+B+N, D]`` and ``bias [1+B+N]`` hold the extended classifier.

    Raises:
        TypeError: no 1x1 classifier; ValueError: ``num_novel < 1`` or ``norm_scale <= 0``.
    """

    name: ClassVar[str] = "gfss-prototype"
    feature_source: ClassVar[str] = "bottleneck"
    support_base_pixels: ClassVar[str] = "background"

    def __init__(self, model, num_novel: int, *, norm_scale: float = 1.0):
        if num_novel < 1 or norm_scale <= 0:
            raise ValueError(f"need num_novel >= 1 and norm_scale > 0, got {num_novel} and {norm_scale}")
        self.norm_scale = float(norm_scale)
        clf = base_classifier(model)
        self.base_weight = clf.weight.detach()[:, :, 0, 0].clone()
        self.base_bias = None if clf.bias is None else clf.bias.detach().clone()
        self.num_base = self.base_weight.shape[0] - 1
        self.num_novel = int(num_novel)
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return 1 + self.num_base + self.num_novel

    def fit(self, support_features, support_labels, query_features=None) -> "PrototypeGFSS":
        """Imprint the novel prototypes of ``support_features [S, D, h, w]`` / ``support_labels [S, H, W]``."""
        check_gfss_support(support_features, support_labels, self.num_classes)
        if support_features.shape[1] != self.base_weight.shape[1]:
            raise ValueError(f"support features have {support_features.shape[1]} channels but the classifier reads "
                             f"{self.base_weight.shape[1]}; pass the bottleneck features (model.features)")
        novel_ids = range(self.num_base + 1, self.num_classes)
        protos = class_prototypes(support_features.float(), support_labels, novel_ids)
        dev = support_features.device
        w_n, b_n = imprint_weights(protos, self.base_weight.to(dev), None if self.base_bias is None
                                   else self.base_bias.to(dev), self.norm_scale)
        base_bias = torch.zeros(self.num_base + 1, device=dev) if self.base_bias is None else self.base_bias.to(dev)
        self.weight = torch.cat([self.base_weight.to(dev), w_n])
        self.bias = torch.cat([base_bias, b_n])
        return self

    def predict(self, query_features, size):
        """Logits ``[Q, 1 + B + N, H, W]`` (bilinear up-sampling of ``W f + b``) of ``query_features [Q, D, h, w]``."""
        if self.weight is None:
            raise RuntimeError("call fit() with a support set before predict()")
        w = self.weight.to(query_features.device)
        logits = torch.einsum("qdhw,cd->qchw", query_features.float(), w)  # q: query, d: channel, c: class
        logits = logits + self.bias.to(query_features.device)[None, :, None, None]
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
