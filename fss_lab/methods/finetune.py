"""GFSS by fine-tuning (Myers-Dean, Zhao, Farrell, Dai, Wang: "Generalized Few-Shot Semantic Segmentation: All You
Need is Fine-Tuning", arXiv 2112.10982; seed 000).

Two stages: (1) base training of the segmentation model on the base classes (:mod:`fss_lab.engine`, given here);
(2) freeze the backbone and fine-tune on the support set, which holds few shots of **both novel and base classes**
(:func:`fss_lab.data.gfss.gfss_runs` with ``base_shots=K``; labels with base pixels kept), with cross-entropy and,
optionally, the triplet regulariser on pixel embeddings (:mod:`fss_lab.losses.triplet`). The classifier is extended
from ``1 + B`` to ``1 + B + N`` outputs: base rows copied, novel rows imprinted from support prototypes
(:func:`~fss_lab.methods.gfss_prototype.imprint_weights`) or drawn small at random.

Strategies (the paper compares them; it finds "all layers after the backbone" better for segmentation, unlike
few-shot detection where the last layer alone is best):

* :class:`FineTuneLastLayer` (``"last_layer"``): only the 1x1 classifier, on cached bottleneck features.
* :class:`FineTuneAfterBackbone` (``"all_after_backbone"``): PPM + bottleneck + classifier, on cached backbone
  features; the head is deep-copied, so the base model is never modified.

Not public in the paper (fss-methods.md 4b), chosen here: SGD (momentum 0.9, lr 0.01 for the classifier and 0.001
for the head, weight decay 1e-4) for 100 full-batch steps, class-balanced CE weights, BatchNorm statistics frozen
(a few support images give poor batch statistics), CE at image resolution with 255 ignored, triplet weight 0
unless set. CPU settings that run in seconds per support set at 192 x 192: ``steps=50, batch_size=16,
loss_at="feature"`` (the head's 3x3 bottleneck on ~100 supports per step is the cost).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import IGNORE_INDEX
from ..losses.triplet import pixel_triplet_loss
from ..ops import base_classifier, resize_labels
from .base import Method, NotFittedError
from .gfss_prototype import class_prototypes, imprint_weights
from .registry import register_method
from .task import Task

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3}


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency CE weights ``[num_classes]`` from labels (255 ignored), mean 1 over the classes present.

    ``w_c = n / (k * n_c)`` for the ``k`` classes present (``n`` labelled pixels, ``n_c`` of class c); absent
    classes get 1 (they have no pixel, so their weight never acts).
    """
    lab = labels[labels != IGNORE_INDEX].long()
    counts = torch.bincount(lab, minlength=num_classes).float()
    present = counts > 0
    w = torch.ones(num_classes, device=labels.device)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def check_head(model) -> None:
    """Raise ``TypeError`` unless ``model.head`` is callable (an ``nn.Module``, or PSPNet's ``head`` method)."""
    if not callable(getattr(model, "head", None)):
        raise TypeError(f"{type(model).__name__} has no .head (PPM + bottleneck: backbone features -> the features "
                        "the classifier reads); fine-tuning all layers after the backbone needs it")


def copy_head(model) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[nn.Module]]:
    """A trainable copy of the layers between the backbone and the classifier; ``model`` is left untouched.

    ``model.head`` may be an ``nn.Module`` (deep-copied) or a method of the model (PSPNet: ``ppm`` + ``bottleneck``):
    then the model is deep-copied **sharing** its backbone (not copied, never trained, its mode never changed)
    and the copy's children other than ``backbone``, ``classifier`` and ``aux`` are the trainable modules.

    Returns:
        ``(head, modules)``: ``head(backbone_features [B, C, h, w]) -> [B, D, h, w]`` and the modules it trains.

    Raises:
        TypeError: no callable ``.head``.
    """
    check_head(model)
    if isinstance(model.head, nn.Module):
        head = copy.deepcopy(model.head)
        return head, [head]
    backbone = getattr(model, "backbone", None)
    clone = copy.deepcopy(model, {id(backbone): backbone} if backbone is not None else {})
    skip = {id(backbone), id(getattr(clone, "classifier", None)), id(getattr(clone, "aux", None))}
    modules = [m for m in clone.children() if id(m) not in skip] if isinstance(clone, nn.Module) else []
    if not modules:
        raise TypeError(f"{type(model).__name__}.head is a method but the model has no child module besides "
                        "backbone / classifier / aux to train; make .head an nn.Module")
    return clone.head, modules


class FineTuneGFSS(Method):
    """Shared fine-tuning loop; use :class:`FineTuneLastLayer` or :class:`FineTuneAfterBackbone`.

    Args:
        model: the base-trained segmentation model: ``.classifier`` (``nn.Conv2d(D, 1 + B, 1)``) and, for
            ``all_after_backbone``, ``.head`` (backbone features ``[S, C, h, w]`` -> ``[S, D, h, w]``; an
            ``nn.Module`` or PSPNet's method, see :func:`copy_head`). Never modified.
        steps: optimisation steps. lr: learning rate of the classifier (default 0.01 for SGD, 1e-3 for Adam).
        head_lr: learning rate of the head's layers (``all_after_backbone``; default ``lr / 10``: with a few
            support images, head layers trained at the classifier's rate diverged or collapsed in our runs).
        optimizer: ``"sgd"`` (momentum ``momentum``) or ``"adam"``; weight_decay: L2 on the trained parameters.
        batch_size: supports per step (``None``: all, full-batch); mini-batches drawn with the seed.
        novel_init: ``"prototype"`` (imprinted prototypes) or ``"random"`` (normal, std 0.01; bias 0).
        class_weights: ``"balanced"`` (default: :func:`balanced_class_weights` on the support labels), ``None``
            (plain CE, the paper's literal loss) or a tensor ``[1 + B + N]``. Support pixels are dominated by
            background and base classes; with plain CE the novel rows barely move (measured on the generated data,
            fold 0, 5-shot, last layer: novel mIoU 0.11 with plain CE, 0.43 balanced).
        loss_at: ``"image"`` (logits up-sampled to the label size, as PSPNet trains) or ``"feature"`` (labels
            nearest-down-sampled to the feature size; much cheaper on a CPU).
        triplet_weight: weight of :func:`~fss_lab.losses.triplet.pixel_triplet_loss` on the embeddings the
            classifier reads (0 = off). triplet_margin / triplet_max_per_class / triplet_mining /
            triplet_distance: its parameters (see that module for the choices).
        freeze_bn: keep BatchNorm layers of the trained head in eval mode (statistics fixed, affine trained).
        seed: seeds initialisation, mini-batches, dropout and triplet sampling (``torch.random.fork_rng``: the
            global RNG state is left as it was).

    After :meth:`fit`: ``history`` (per step: ``loss``, ``ce``, ``triplet``), ``classifier`` (the extended
    ``nn.Conv2d``), ``head`` (the fine-tuned copy, a callable; ``None`` for the last layer) and ``head_modules``.

    Raises:
        TypeError: no 1x1 classifier / no head. ValueError: a bad keyword value (names it and the valid ones).
    """

    name: ClassVar[str] = "finetune"
    feature_levels: ClassVar[tuple[str, ...]] = ("bottleneck",)
    label_spaces: ClassVar[tuple[str, ...]] = ("gfss",)
    support_base_pixels: ClassVar[str] = "keep"
    trains_head: ClassVar[bool] = False

    def __init__(self, model, *, steps: int = 100, lr: float | None = None,
                 head_lr: float | None = None, optimizer: str = "sgd", momentum: float = 0.9,
                 weight_decay: float = 1e-4, batch_size: int | None = None,
                 novel_init: str = "prototype", class_weights: str | torch.Tensor | None = "balanced",
                 loss_at: str = "image", triplet_weight: float = 0.0, triplet_margin: float = 0.3,
                 triplet_max_per_class: int = 64, triplet_mining: str = "batch_hard",
                 triplet_distance: str = "cosine", freeze_bn: bool = True, seed: int = 0):
        checks = {"optimizer": (optimizer, OPTIMIZERS), "novel_init": (novel_init, ("prototype", "random")),
                  "loss_at": (loss_at, ("image", "feature"))}
        for key, (value, valid) in checks.items():
            if value not in valid:
                raise ValueError(f"{key}={value!r}; valid: {valid}")
        if isinstance(class_weights, str) and class_weights != "balanced":
            raise ValueError(f"class_weights={class_weights!r}; pass None, 'balanced' or a tensor [1 + B + N]")
        if steps < 0 or triplet_weight < 0 or (batch_size is not None and batch_size < 1):
            raise ValueError(f"need steps >= 0, triplet_weight >= 0, batch_size >= 1 or None; got "
                             f"{steps}, {triplet_weight}, {batch_size}")
        if triplet_weight > 0 and not self.trains_head:
            raise ValueError("the triplet loss acts on the embeddings the classifier reads; with the last layer only "
                             "they are fixed, so it would do nothing. Use FineTuneAfterBackbone "
                             "(strategy 'all_after_backbone') or triplet_weight=0")
        self.base_classifier = base_classifier(model)
        self.model = model if self.trains_head else None
        if self.trains_head:
            check_head(model)
        self.num_base = self.base_classifier.out_channels - 1
        self.num_novel = 0  # N of the task being fitted
        self.steps, self.lr = int(steps), DEFAULT_LR[optimizer] if lr is None else float(lr)
        self.head_lr = self.lr * 0.1 if head_lr is None else float(head_lr)
        self.optimizer, self.momentum, self.weight_decay = optimizer, momentum, weight_decay
        self.batch_size, self.novel_init, self.class_weights = batch_size, novel_init, class_weights
        self.loss_at = loss_at
        self.triplet = {"margin": triplet_margin, "max_per_class": triplet_max_per_class, "mining": triplet_mining,
                        "distance": triplet_distance}
        self.triplet_weight, self.freeze_bn, self.seed = float(triplet_weight), freeze_bn, int(seed)
        self.head = None  # the fine-tuned copy of the head (a callable), set by fit
        self.head_modules: list[nn.Module] = []
        self.classifier: nn.Conv2d | None = None
        self.history: list[dict[str, float]] = []

    @property
    def num_classes(self) -> int:
        return 1 + self.num_base + self.num_novel

    def _embed(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.head is None else self.head(features)

    def _extended_classifier(self, embeddings: torch.Tensor, labels: torch.Tensor) -> nn.Conv2d:
        """``nn.Conv2d(D, 1 + B + N, 1)`` on the embeddings' device: base rows copied, novel rows imprinted or
        random."""
        base = self.base_classifier
        d, dev = base.in_channels, embeddings.device
        clf = nn.Conv2d(d, self.num_classes, 1).to(dev)
        w_b = base.weight.detach()[:, :, 0, 0].to(dev)
        b_b = None if base.bias is None else base.bias.detach().to(dev)
        if self.novel_init == "prototype":
            protos = class_prototypes(embeddings, labels, range(self.num_base + 1, self.num_classes))
            w_n, b_n = imprint_weights(protos, w_b, b_b)
        else:
            w_n = torch.randn(self.num_novel, d, device=dev) * 0.01
            b_n = torch.zeros(self.num_novel, device=dev)
        with torch.no_grad():
            clf.weight.copy_(torch.cat([w_b, w_n])[:, :, None, None])
            clf.bias.copy_(torch.cat([torch.zeros(self.num_base + 1, device=dev) if b_b is None else b_b, b_n]))
        return clf

    def _set_mode(self, train: bool) -> None:
        for module in self.head_modules:
            module.train(train)
            if train and self.freeze_bn:
                for m in module.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()

    def fit(self, task: Task) -> "FineTuneGFSS":
        """Fine-tune on the task's support features ``[S, C, h, w]`` (bottleneck or backbone, per strategy) and
        GFSS labels ``[S, H, W]`` (base pixels kept for the paper's setting); the queries are not read.

        Raises:
            UnsupportedTaskError: a 1-way task. ValueError: bad labels, B that does not match the classifier,
                features the model cannot read.
            FloatingPointError: the loss became NaN or infinite (the message says which learning rate to lower).
        """
        self.check_task(task)
        if task.label_space.num_base != self.num_base:
            raise ValueError(f"the task has B={task.label_space.num_base} base classes but the classifier has "
                             f"{self.num_base}; use the base model of this fold")
        self.num_novel = task.label_space.num_novel
        support_features = task.support(self.features_of(task))
        feats, labels = support_features.float(), task.support_labels.to(support_features.device).long()
        dev = feats.device
        self.head, self.head_modules = copy_head(self.model) if self.trains_head else (None, [])
        for module in self.head_modules:
            module.to(dev)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            self._set_mode(False)
            with torch.no_grad():
                emb = self._check_embed(feats)
            self.classifier = self._extended_classifier(emb, labels)
            weight = self._ce_weights(labels, dev)
            head_params = [p for m in self.head_modules for p in m.parameters()]
            for p in [*self.classifier.parameters(), *head_params]:
                p.requires_grad_(True)
            groups = [{"params": list(self.classifier.parameters()), "lr": self.lr}]
            groups += [{"params": head_params, "lr": self.head_lr}] if head_params else []
            opt = (torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
                   if self.optimizer == "sgd" else torch.optim.Adam(groups, lr=self.lr, weight_decay=self.weight_decay))
            self.history = []
            self._set_mode(True)
            with torch.enable_grad():
                for step in range(self.steps):
                    idx = torch.randperm(len(feats), generator=gen)[: self.batch_size] if self.batch_size else None
                    x, y = (feats, labels) if idx is None else (feats[idx.to(dev)], labels[idx.to(dev)])
                    self.history.append(self._step(x, y, weight, opt, gen))
                    if not math.isfinite(self.history[-1]["loss"]):
                        raise FloatingPointError(f"{self.name}: the loss became {self.history[-1]['loss']} at step "
                                                 f"{step}; lower lr (now {self.lr}) / head_lr (now {self.head_lr})")
        self._set_mode(False)
        return self

    def _check_embed(self, feats: torch.Tensor) -> torch.Tensor:
        try:
            emb = self._embed(feats)
        except RuntimeError as exc:
            raise ValueError(f"{type(self).__name__} reads {self.feature_levels[0]} features; the head failed on "
                             f"features {tuple(feats.shape)}: {exc}") from exc
        if emb.dim() != 4 or emb.shape[1] != self.base_classifier.in_channels:
            raise ValueError(f"{type(self).__name__} reads {self.feature_levels[0]} features: expected "
                             f"{self.base_classifier.in_channels} channels for the classifier, got {tuple(emb.shape)}")
        return emb

    def _ce_weights(self, labels: torch.Tensor, dev: torch.device) -> torch.Tensor | None:
        if self.class_weights is None:
            return None
        if isinstance(self.class_weights, str):
            return balanced_class_weights(labels, self.num_classes)
        w = torch.as_tensor(self.class_weights, dtype=torch.float32, device=dev)
        if w.shape != (self.num_classes,):
            raise ValueError(f"class_weights has shape {tuple(w.shape)}; expected [{self.num_classes}] (1 + B + N)")
        return w

    def _step(self, x, y, weight, opt, gen) -> dict[str, float]:
        emb = self._embed(x)
        logits = self.classifier(emb)
        if self.loss_at == "image":
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
            target = y
        else:
            target = resize_labels(y, tuple(logits.shape[-2:]), "nearest")
        if not bool((target != IGNORE_INDEX).any()):  # a mini-batch with no labelled pixel: nothing to learn
            return {"loss": 0.0, "ce": 0.0, "triplet": 0.0}
        ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)
        trip = pixel_triplet_loss(emb, y, generator=gen, **self.triplet) if self.triplet_weight > 0 else ce * 0.0
        loss = ce + self.triplet_weight * trip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "ce": ce.item(), "triplet": trip.item()}

    def predict(self, task: Task) -> torch.Tensor:
        """Logits ``[Q, 1 + B + N, H, W]`` (bilinear up-sampling, ``align_corners=False``) of the task's queries."""
        if self.classifier is None:
            raise NotFittedError("call fit(task) with a support set before predict()")
        with torch.no_grad():
            logits = self.classifier(self._embed(task.query(self.features_of(task)).float()))
            return F.interpolate(logits, size=task.size, mode="bilinear", align_corners=False)


@register_method
class FineTuneLastLayer(FineTuneGFSS):
    """Fine-tune only the 1x1 classifier on bottleneck features (``model.features``); see :class:`FineTuneGFSS`."""

    name: ClassVar[str] = "finetune-last-layer"
    feature_levels: ClassVar[tuple[str, ...]] = ("bottleneck",)


@register_method
class FineTuneAfterBackbone(FineTuneGFSS):
    """Fine-tune every layer after the backbone (PPM + bottleneck + classifier) on backbone features
    (``model.backbone_features``); a deep copy of ``model.head`` is trained. See :class:`FineTuneGFSS`."""

    name: ClassVar[str] = "finetune-all-after-backbone"
    feature_levels: ClassVar[tuple[str, ...]] = ("backbone",)
    trains_head: ClassVar[bool] = True


STRATEGIES = {"last_layer": FineTuneLastLayer, "all_after_backbone": FineTuneAfterBackbone}


def create_finetune(model, strategy: str = "all_after_backbone", **kwargs) -> FineTuneGFSS:
    """The fine-tuning method of ``strategy`` (``"last_layer"`` or ``"all_after_backbone"``) with ``kwargs``.

    Raises:
        ValueError: an unknown strategy (lists the valid ones).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown fine-tuning strategy {strategy!r}; valid: {sorted(STRATEGIES)}")
    return STRATEGIES[strategy](model, **kwargs)
