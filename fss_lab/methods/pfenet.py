"""PFENet-style methods: the training-free prior baseline and the meta-learner (prior + prototype + FEM).

* ``pfenet-prior`` (:class:`PFENetPriorBaseline`): the prior mask alone, thresholded at 0.5 (training-free).
* ``pfenet-meta`` (:class:`PFENetMetaLearner`): PFENet's learned head (:class:`~fss_lab.models.pfenet.PFENetFEM`)
  on frozen features, meta-trained on base-class episodes with :func:`fss_lab.engine.episodic.train_episodic`.

Feature levels. Both read a mid-level ("layer 3") and a high-level ("layer 4") level, ``("s16", "s32")`` on
EfficientNet-Lite0 (:data:`fss_lab.models.pfenet_prior.PRIOR_LEVELS`). The support's layer-4 features are computed
from its **mask-multiplied** layer-3 features through the backbone's layer-3 -> layer-4 path (PFENet), so the
methods hold that path (``backbone=``; default: EfficientNet-Lite0 with its ImageNet weights). The class attribute
``feature_levels`` is ``()`` (any level) and the instance attribute names the two levels, so the evaluator
supplies both; a task without them (a single-level task) is handled with its default level in both roles and the
support's own features in place of the masked layer-4 path (the prior then masks them, as PFENet masks again).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models.pfenet import PFENET_RATIO_BINS, PFENetFEM, pfenet_loss
from ..models.pfenet_prior import (PRIOR_EPS, foreground_weights, layer4_path, masked_layer4_features, prior_fss_logits,
                                   prior_mask)
from .base import Method, NotFittedError, check_fss_support
from .registry import register_method
from .task import Task

#: Default levels ("layer 3", "layer 4") on EfficientNet-Lite0.
DEFAULT_LEVELS = ("s16", "s32")
#: Most support layer-4 entries :meth:`PFENetMetaLearner.support_layer4` keeps in its meta-training memo.
LAYER4_MEMO_SIZE = 2048


@dataclass
class SupportInputs:
    """What a PFENet-style model derives from a support set, before it sees a query.

    Attributes:
        prototype: ``[reduce_dim]`` masked-average prototype of the reduced support features, averaged over shots
            (``None`` for the training-free prior).
        layer4: ``[K, C4, hs, ws]`` support layer-4 features from the mask-multiplied layer-3 features.
        masks: ``[K, H, W]`` float foreground weights (``label == 1``).

    EFTNet mixes real and pseudo supports with :meth:`blend` (0.8 / 0.2).
    """

    prototype: torch.Tensor | None
    layer4: torch.Tensor
    masks: torch.Tensor

    def blend(self, other: "SupportInputs", weight: float = 0.8) -> "BlendedSupport":
        """``weight * self + (1 - weight) * other`` for the prototype; the priors are blended the same way when a
        query is segmented (:meth:`PFENetMetaLearner.predict_from`)."""
        return BlendedSupport(self, other, float(weight))


@dataclass
class BlendedSupport:
    """Two support sets mixed with ``weight`` (EFTNet: real 0.8, pseudo 0.2) for the prototype and the prior."""

    first: SupportInputs
    second: SupportInputs
    weight: float


def _levels_of(task: Task, levels: Sequence[str]) -> tuple[str, str, bool]:
    """(mid level, high level, whether the layer-3 -> layer-4 path applies)."""
    if all(lv in task.support_features for lv in levels):
        return levels[0], levels[1], True
    first = task.levels[0]
    return first, first, False


def _query_prior(query_high: torch.Tensor, inputs: SupportInputs, size, eps: float) -> torch.Tensor:
    q = query_high.shape[0]
    s4 = inputs.layer4.to(query_high.dtype)[None].expand(q, *inputs.layer4.shape)
    m = inputs.masks[None].expand(q, *inputs.masks.shape)
    return prior_mask(query_high, s4, m, size=size, eps=eps)


class _PriorLevels:
    """Shared support path: the backbone's layer-3 -> layer-4 path, built on first use."""

    levels: tuple[str, str]

    def _init_path(self, backbone: nn.Module | None) -> None:
        self._backbone = backbone
        self._layer4: nn.Module | None = None

    def layer4_module(self) -> nn.Module:
        """The frozen layer-3 -> layer-4 path (eval mode, no gradients)."""
        if self._layer4 is None:
            if self._backbone is None:
                from ..models.backbones import create_backbone
                self._backbone = create_backbone("efficientnet_lite0")
            self._layer4 = layer4_path(self._backbone).eval().requires_grad_(False)
        return self._layer4

    @torch.no_grad()
    def support_layer4(self, task: Task, memo: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(layer4 [K, C4, hs, ws], masks float [K, H, W])`` of the task's supports.

        ``memo=True`` (meta-training, where the same support image and class recur thousands of times) reuses the
        layer-4 features of a support seen before: the key is the support's image id and class
        (``task.meta["support_ids"]``, ``["class_id"]``) plus a fingerprint of its layer-3 features and mask (shape
        and sums), so a changed feature or mask is never served from the memo; at most :data:`LAYER4_MEMO_SIZE`
        entries are kept (the oldest are dropped). Results are identical to ``memo=False``: the frozen path runs
        in eval mode, image by image.
        """
        mid, high, path = _levels_of(task, self.levels)
        masks = foreground_weights(task.support_labels.long())
        if not path:
            return task.support(high).float(), masks
        f3 = task.support(mid)
        module = self.layer4_module()
        if next(module.parameters()).device != f3.device:
            module.to(f3.device)
        ids = task.meta.get("support_ids")
        if not memo or ids is None or len(ids) != f3.shape[0]:
            return masked_layer4_features(f3, masks, module).float(), masks
        store = self.__dict__.setdefault("_layer4_memo", {})
        keys = [(ids[k], task.meta.get("class_id"), tuple(f3[k].shape), float(f3[k].sum()), float(masks[k].sum()),
                 str(f3.device)) for k in range(f3.shape[0])]
        missing = [k for k, key in enumerate(keys) if key not in store]
        if missing:
            fresh = masked_layer4_features(f3[missing], masks[missing], module).float()
            for j, k in enumerate(missing):
                store[keys[k]] = fresh[j]
            while len(store) > LAYER4_MEMO_SIZE:
                store.pop(next(iter(store)))
        return torch.stack([store[key] for key in keys]), masks


@register_method
class PFENetPriorBaseline(_PriorLevels, Method):
    """Training-free baseline: PFENet's prior mask (max cosine to the masked support layer-4 features, min-max
    normalised per shot, averaged over shots) thresholded at ``threshold`` (0.5).

    Args:
        levels: ("layer 3", "layer 4") level names (default ``("s16", "s32")``, EfficientNet-Lite0).
        threshold: the constant background score of :func:`~fss_lab.models.pfenet_prior.prior_fss_logits`.
        backbone: the backbone whose layer-3 -> layer-4 path computes the support's masked layer-4 features
            (default: EfficientNet-Lite0, ImageNet weights).

    Returns (``predict``): ``[Q, 2, H, W]`` scores ``[threshold, prior]`` (argmax = ``prior > threshold``).
    """

    name: ClassVar[str] = "pfenet-prior"
    label_spaces: ClassVar[tuple[str, ...]] = ("fss",)

    def __init__(self, levels: Sequence[str] = DEFAULT_LEVELS, threshold: float = 0.5,
                 backbone: nn.Module | None = None):
        self.levels = self.feature_levels = tuple(levels)
        self.threshold = float(threshold)
        self._init_path(backbone)
        self.inputs: SupportInputs | None = None

    def fit(self, task: Task) -> "PFENetPriorBaseline":
        """Store the support's masked layer-4 features and masks."""
        self.check_task(task)
        check_fss_support(task)
        layer4, masks = self.support_layer4(task)
        self.inputs = SupportInputs(None, layer4, masks)
        return self

    def prior(self, task: Task) -> torch.Tensor:
        """The prior ``[Q, 1, h3, w3]`` in ``[0, 1]`` of the task's queries (on the layer-3 grid)."""
        if self.inputs is None:
            raise NotFittedError("call fit(task) with a support set before predict()")
        mid, high, _ = _levels_of(task, self.levels)
        return _query_prior(task.query(high).float(), self.inputs, tuple(task.query(mid).shape[-2:]), PRIOR_EPS)

    def predict(self, task: Task) -> torch.Tensor:
        """Scores ``[Q, 2, H, W]``."""
        return prior_fss_logits(self.prior(task), self.threshold, size=task.size)


@register_method
class PFENetMetaLearner(_PriorLevels, Method):
    """PFENet-style meta-learner: prior + masked-average prototype + FEM (:class:`~fss_lab.models.pfenet.PFENetFEM`).

    Meta-train it with :func:`fss_lab.engine.episodic.train_episodic` (base-class episodes, frozen cached features);
    then ``fit(task)`` derives the support inputs (:class:`SupportInputs`: prototype, masked layer-4 features) and
    ``predict(task)`` computes the prior of each query and runs the FEM. Inductive; 1-way FSS.

    Args:
        levels: ("layer 3", "layer 4") level names (default ``("s16", "s32")``).
        reduce_dim: PFENet's 256 (the notebook's QUICK run uses 64).
        bins: pyramid bins (default PFENet's ratios ``(1.0, 0.5, 0.25, 0.125)``; QUICK ``(1.0, 0.5)``).
        aux_weight: weight of the per-bin auxiliary losses (PFENet 1.0).
        backbone: the frozen backbone giving the layer-3 -> layer-4 path.
        seed: initialisation seed of the network (built on the first task, from its channel count).
        fem_level: the level the FEM reads (query features and prototype); default ``levels[0]`` (PFENet: its
            mid-level features; e.g. ``"s16_expanded"``, 672 channels on the same grid, is a wider choice).

    Attributes:
        network: the :class:`PFENetFEM` (``None`` until :meth:`build` or the first task).
        inputs: the last :meth:`fit`'s :class:`SupportInputs`.
    """

    name: ClassVar[str] = "pfenet-meta"
    label_spaces: ClassVar[tuple[str, ...]] = ("fss",)
    episodic_training: ClassVar[bool] = True

    def __init__(self, levels: Sequence[str] = DEFAULT_LEVELS, reduce_dim: int = 256,
                 bins: Sequence[float] = PFENET_RATIO_BINS, aux_weight: float = 1.0,
                 backbone: nn.Module | None = None, seed: int = 0, fem_level: str | None = None):
        self.levels = tuple(levels)
        self.fem_level = fem_level
        self.feature_levels = self.levels + ((fem_level,) if fem_level and fem_level not in self.levels else ())
        if len(self.levels) != 2:
            raise ValueError(f"levels must name ('layer 3', 'layer 4') levels, e.g. {DEFAULT_LEVELS}; got {levels!r}")
        self.reduce_dim, self.bins, self.aux_weight, self.seed = int(reduce_dim), tuple(bins), float(aux_weight), seed
        self._init_path(backbone)
        self.network: PFENetFEM | None = None
        self.inputs: SupportInputs | None = None

    # ---- the network ------------------------------------------------------------------------------------------

    def build(self, mid_channels: int) -> PFENetFEM:
        """Create the network for ``mid_channels`` input channels (seeded; no-op when it exists)."""
        if self.network is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.network = PFENetFEM(mid_channels, self.reduce_dim, self.bins)
            self.network.eval()
        elif self.network.mid_channels != mid_channels:
            raise ValueError(f"{self.name}: the network was built for {self.network.mid_channels} mid-level channels, "
                             f"this task has {mid_channels}; use features of the level it was trained on")
        return self.network

    def _fem(self, task: Task) -> str:
        """The level the FEM reads in ``task``."""
        if self.fem_level and self.fem_level in task.support_features:
            return self.fem_level
        return _levels_of(task, self.levels)[0]

    def build_for(self, task: Task) -> PFENetFEM:
        """:meth:`build` with the task's mid-level channel count."""
        return self.build(int(task.support(self._fem(task)).shape[1]))

    def meta_parameters(self) -> list[nn.Parameter]:
        """The trainable meta parts (everything of the FEM network; the backbone stays frozen)."""
        if self.network is None:
            raise NotFittedError(f"{self.name}: build the network first (build(mid_channels) or a task)")
        return list(self.network.parameters())

    # ---- the method contract ----------------------------------------------------------------------------------

    def support_inputs(self, task: Task) -> SupportInputs:
        """The support-derived inputs of ``task`` (prototype ``[reduce_dim]``, layer-4 features, masks); with the
        network in its current mode (eval after training)."""
        net = self.build_for(task)
        layer4, masks = self.support_layer4(task)
        f = task.support(self._fem(task)).float()
        prototype = net.prototype(f[None], masks[None])[0]
        return SupportInputs(prototype, layer4, masks)

    def fit(self, task: Task) -> "PFENetMetaLearner":
        """Store :meth:`support_inputs` of the task's supports (the network is put in eval mode)."""
        self.check_task(task)
        check_fss_support(task)
        self.build_for(task).eval()
        with torch.no_grad():
            self.inputs = self.support_inputs(task)
        return self

    def predict_from(self, task: Task, inputs: SupportInputs | BlendedSupport) -> torch.Tensor:
        """Logits ``[Q, 2, H, W]`` of the task's queries given support inputs (or a blend of two, EFTNet)."""
        net = self.build_for(task)
        _, high, _ = _levels_of(task, self.levels)
        fq = task.query(self._fem(task)).float()
        size = tuple(fq.shape[-2:])
        if isinstance(inputs, BlendedSupport):
            a, b, wgt = inputs.first, inputs.second, inputs.weight
            prototype = wgt * a.prototype + (1 - wgt) * b.prototype
            prior = wgt * _query_prior(task.query(high).float(), a, size, PRIOR_EPS) \
                + (1 - wgt) * _query_prior(task.query(high).float(), b, size, PRIOR_EPS)
        else:
            prototype = inputs.prototype
            prior = _query_prior(task.query(high).float(), inputs, size, PRIOR_EPS)
        logits, _ = net(fq, prototype[None].expand(fq.shape[0], -1), prior)
        return F.interpolate(logits, size=task.size, mode="bilinear", align_corners=True)

    def predict(self, task: Task) -> torch.Tensor:
        """Logits ``[Q, 2, H, W]`` (FEM output, bilinear ``align_corners=True`` to the label size)."""
        if self.inputs is None:
            raise NotFittedError("call fit(task) with a support set before predict()")
        return self.predict_from(task, self.inputs)

    # ---- episodic training (fss_lab.engine.episodic) ------------------------------------------------------------

    @torch.no_grad()
    def episode_inputs(self, tasks: Sequence[Task]) -> dict[str, torch.Tensor]:
        """The network inputs of a batch of equal-shaped 1-way tasks (one row per query): ``query [B, C, h, w]``,
        ``support [B, K, C, h, w]``, ``masks [B, K, H, W]`` and the (training-free) ``prior [B, 1, h, w]``."""
        rows = {"query": [], "support": [], "masks": [], "prior": []}
        for t in tasks:
            _, high, _ = _levels_of(t, self.levels)
            mid = self._fem(t)
            layer4, masks = self.support_layer4(t, memo=True)
            fq = t.query(mid).float()
            q = fq.shape[0]
            rows["query"].append(fq)
            rows["support"].append(t.support(mid).float()[None].expand(q, -1, -1, -1, -1))
            rows["masks"].append(masks[None].expand(q, -1, -1, -1))
            rows["prior"].append(_query_prior(t.query(high).float(), SupportInputs(None, layer4, masks),
                                              tuple(fq.shape[-2:]), PRIOR_EPS))
        return {k: torch.cat(v) for k, v in rows.items()}

    def episode_forward(self, network: nn.Module, inputs: dict[str, torch.Tensor]):
        """``network`` (the FEM, possibly DDP-wrapped) on :meth:`episode_inputs`: ``(logits, aux)``."""
        return network(inputs["query"], inputs["support"], inputs["masks"], inputs["prior"])

    def episode_loss(self, outputs, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """PFENet's loss (:func:`~fss_lab.models.pfenet.pfenet_loss`) against the query masks ``[B, H, W]``."""
        logits, aux = outputs
        return pfenet_loss(logits, aux, labels, self.aux_weight)

    def training_module(self) -> nn.Module:
        """The module the engine trains and checkpoints (wraps the FEM so one forward computes the prototype
        and the FEM, as DDP needs)."""
        if self.network is None:
            raise NotFittedError(f"{self.name}: build the network first")
        if getattr(self, "_trainer", None) is None or self._trainer.fem is not self.network:
            self._trainer = _EpisodeNetwork(self.network)
        return self._trainer


class _EpisodeNetwork(nn.Module):
    """``(query, support, masks, prior) -> (logits, aux)``: prototype + FEM in one forward (for DDP)."""

    def __init__(self, fem: PFENetFEM):
        super().__init__()
        self.fem = fem

    def forward(self, query, support, masks, prior):
        return self.fem(query, self.fem.prototype(support, masks), prior)


__all__ = ["PFENetPriorBaseline", "PFENetMetaLearner", "SupportInputs", "BlendedSupport", "DEFAULT_LEVELS"]
