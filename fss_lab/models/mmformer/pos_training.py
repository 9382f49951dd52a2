"""MM-Former stage 1: train the Potential Objects Segmenter (POS) on base-class segments, then serve its proposals.

The paper (Jiao et al., NeurIPS 2022, Sec. 2.4 and 3.2): the POS is a class-agnostic Mask2Former trained on the
base classes of the training split with Hungarian matching and mask losses (no classifier), the backbone frozen,
AdamW (lr 1e-4, weight decay 0.05, poly 0.9), batch 8, 20,000 iterations on PASCAL. Here the backbone features
come from :class:`~fss_lab.models.feature_cache.FeatureCache` objects (frozen, computed once per image), the
targets are :func:`pos_targets` (one mask per base class present; the fold's novel classes, background and ignore
never form a target, so the novel classes are never seen), and checkpoints are the atomic, resumable ones of base
training (:func:`~fss_lab.engine.train.resume_run` / :func:`~fss_lab.engine.train.save_run_checkpoint`).

:class:`POSProposalExtractor` wraps a trained POS as a proposal source for a cache level named ``"proposals..."``
(``FSSExperiment.proposal_sources``), so MM-Former's matching reads the learned proposals like the SLIC ones.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...engine.checkpoint import checkpoint_lock
from ...engine.device import resolve_device
from ...engine.distributed import SINGLE_PROCESS
from ...engine.train import TrainHistory, _Schedule, resume_run, save_run_checkpoint
from ...labels import IGNORE_INDEX
from ...progress import progress_bar
from .potential_objects_segmenter import PotentialObjectsSegmenter, pos_set_loss

#: Backbone levels the POS reads on EfficientNet-Lite0: decoder levels coarse -> fine, then the stride-4 mask level.
POS_LEVELS = ("s32", "s16", "s8")
POS_MASK_LEVEL = "s4"
#: Settings that must match for a POS checkpoint to be resumed.
POS_RESUME_KEYS = ("iterations", "batch_size", "lr", "seed", "target_stride")


@dataclass
class POSConfig:
    """Stage-1 settings (defaults: the paper's, Sec. 3.2; QUICK callers shorten ``iterations``).

    Attributes:
        iterations: optimiser steps (paper: 20,000 on PASCAL, 60,000 on COCO).
        batch_size: training images per step (8).
        lr / weight_decay: AdamW (1e-4 / 0.05). poly_power: poly schedule (0.9).
        seed: image order and initialisation seed.
        target_stride: targets are nearest-resized to ``label size / target_stride`` (4: the POS's mask resolution;
            1 scores at full label resolution).
        checkpoint_every: steps between checkpoints (``None``: only at the end). device: ``"auto"``/``"cpu"``/``"cuda"``.
    """

    iterations: int = 20000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.05
    poly_power: float = 0.9
    seed: int = 0
    target_stride: int = 4
    checkpoint_every: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "target_stride"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"POSConfig.{name} must be >= 1, got {getattr(self, name)}")


def pos_targets(label: torch.Tensor, base_classes: Sequence[int], ignore_index: int = IGNORE_INDEX
                ) -> torch.Tensor:
    """Class-agnostic stage-1 targets of one training image: one 0/1 mask per **base** class present.

    Background (0), ignore and every class not in ``base_classes`` (the fold's novel classes) form no target, so
    the POS never learns to segment a novel class as an object.

    Args:
        label: int ``[H, W]`` dense label. base_classes: the fold's base class ids. ignore_index: 255.

    Returns:
        float32 ``[M, H, W]`` (``M`` = number of base classes present; may be 0).

    Raises:
        ValueError: ``label`` is not 2-D.
    """
    if not isinstance(label, torch.Tensor) or label.dim() != 2:
        raise ValueError(f"pos_targets: label must be an int tensor [H, W]; got "
                         f"{tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__}")
    present = [int(c) for c in torch.unique(label).tolist() if c in set(base_classes) and c != ignore_index]
    if not present:
        return torch.zeros(0, *label.shape, dtype=torch.float32)
    return torch.stack([(label == c) for c in present]).float()


def _features(caches: Mapping, indices: list[int], device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    feats = [caches[lv].get(indices, device=device).float() for lv in POS_LEVELS]
    return feats, caches[POS_MASK_LEVEL].get(indices, device=device).float()


def build_pos(caches: Mapping, num_queries: int = 100, **kwargs) -> PotentialObjectsSegmenter:
    """A :class:`PotentialObjectsSegmenter` for the channel counts of the caches' levels (:data:`POS_LEVELS` and
    :data:`POS_MASK_LEVEL`, read from item 0); ``kwargs`` go to the POS (hidden_dim, dec_layers, ...)."""
    feats, mask = _features(caches, [0], torch.device("cpu"))
    return PotentialObjectsSegmenter(tuple(f.shape[1] for f in feats), int(mask.shape[1]), num_queries=num_queries,
                                     **kwargs)


def train_pos(pos: PotentialObjectsSegmenter, config: POSConfig, *, items, caches: Mapping, fold: int,
              checkpoint_path: str | Path | None = None, resume: bool = True, progress: bool = True
              ) -> TrainHistory:
    """Stage 1: train ``pos`` (in place) on the base-class segments of the training split.

    Each step draws ``batch_size`` training images (a seeded permutation, cycled; images without a base class are
    skipped), runs the POS on their cached features and minimises :func:`~.potential_objects_segmenter.
    pos_set_loss` (Hungarian matching per image and layer, 5 * sigmoid-BCE + 5 * Dice, deep supervision).

    Args:
        pos: the segmenter (e.g. :func:`build_pos`). config: :class:`POSConfig`.
        items: the training split (``TransformedItems``: ``label(i)``, ``dataset.base_classes``).
        caches: ``{level: FeatureCache}`` of the training images for :data:`POS_LEVELS` and :data:`POS_MASK_LEVEL`.
        fold: whose novel classes are held out.
        checkpoint_path: atomic checkpoint; with ``resume=True`` an existing one is loaded and training continues
            (a finished one returns at once with its history).
        progress: a ``tqdm.auto`` bar.

    Returns:
        :class:`~fss_lab.engine.train.TrainHistory` (``steps`` rows: ``iteration``, ``loss``, ``loss_mask``,
        ``loss_dice``, ``lr``, ``seconds``). ``pos`` ends in eval mode on ``config.device``.

    Raises:
        ValueError: no training image has a base class. CheckpointError: as base training.
    """
    device = resolve_device(config.device)
    ctx = dataclasses.replace(SINGLE_PROCESS, device=device)
    base = tuple(items.dataset.base_classes(fold))
    gen = torch.Generator().manual_seed(config.seed)
    order = [int(i) for i in torch.randperm(len(items), generator=gen)]
    targets: dict[int, torch.Tensor] = {}

    def target(i: int) -> torch.Tensor:
        if i not in targets:
            lab = items.label(i).long()
            if config.target_stride > 1:
                size = (max(1, lab.shape[0] // config.target_stride), max(1, lab.shape[1] // config.target_stride))
                lab = F.interpolate(lab[None, None].float(), size=size, mode="nearest")[0, 0].long()
            targets[i] = pos_targets(lab, base)
        return targets[i]

    usable = [i for i in order if target(i).shape[0] > 0]
    if not usable:
        raise ValueError(f"train_pos: no training image of fold {fold} contains a base class {base}")
    pos = pos.to(device)
    optimizer = torch.optim.AdamW([p for p in pos.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _Schedule("poly", config.iterations, config.poly_power))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    history = TrainHistory(config={**dataclasses.asdict(config), "stage": "pos"})
    lock = checkpoint_lock(checkpoint_path, None) if checkpoint_path is not None else None
    try:
        start, saved = resume_run(checkpoint_path, resume, history.config, POS_RESUME_KEYS, pos, optimizer,
                                  scheduler, scaler, ctx, config.seed, config.iterations)
        if saved is not None:
            history = TrainHistory(list(saved.get("steps", [])), list(saved.get("evals", [])),
                                   dict(saved.get("config", {})))
        bar = progress_bar(total=config.iterations, initial=start, desc="stage 1: POS", progress=progress)
        t0 = time.perf_counter()
        for it in range(start, config.iterations):
            pos.train()
            batch = [usable[(it * config.batch_size + j) % len(usable)] for j in range(config.batch_size)]
            feats, mask = _features(caches, batch, device)
            parts = pos_set_loss(pos(feats, mask), [target(i).to(device) for i in batch])
            optimizer.zero_grad(set_to_none=True)
            parts["total"].backward()
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            history.steps.append({"iteration": it + 1, "loss": float(parts["total"].detach()),
                                  "loss_mask": float(parts["loss_mask"].detach()),
                                  "loss_dice": float(parts["loss_dice"].detach()), "lr": lr,
                                  "seconds": time.perf_counter() - t0})
            done = it + 1
            if checkpoint_path is not None and (done == config.iterations or
                                                (config.checkpoint_every and done % config.checkpoint_every == 0)):
                save_run_checkpoint(checkpoint_path, ctx, pos, optimizer, scheduler, scaler, done, history.to_dict(),
                                    history.config)
            bar.update(1)
        bar.close()
    finally:
        if lock is not None:
            lock.release()
    pos.eval()
    return history


class _FrozenPOSReader(nn.Module):
    """A trained POS and its backbone, frozen; :meth:`_pos_inputs` gives the backbone maps the POS reads."""

    def __init__(self, pos: PotentialObjectsSegmenter, backbone: nn.Module):
        super().__init__()
        self.pos = pos.eval().requires_grad_(False)
        self.backbone = backbone.eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.pos.parameters()).device

    def _pos_inputs(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The frozen backbone's float32 maps the POS reads: ([s32, s16, s8], mask-feature level)."""
        self.backbone.eval()
        feats = self.backbone(images.to(self.device, torch.float32), levels=(*POS_LEVELS, POS_MASK_LEVEL))
        return [feats[lv].float() for lv in POS_LEVELS], feats[POS_MASK_LEVEL].float()


class POSProposalExtractor(_FrozenPOSReader):
    """A trained POS as a proposal source: ``images [B, 3, H, W] -> proposals [B, N, H/4, W/4]`` in ``[0, 1]``
    (``pred_masks.sigmoid()``, MM-Former's proposals), for a cache level named ``"proposals..."``.

    Args:
        pos: the trained :class:`PotentialObjectsSegmenter` (frozen here).
        backbone: the frozen backbone whose levels :data:`POS_LEVELS` + :data:`POS_MASK_LEVEL` it was trained on.
    """

    def __init__(self, pos: PotentialObjectsSegmenter, backbone: nn.Module):
        super().__init__(pos, backbone)
        self.num_proposals = pos.num_queries

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Sigmoid proposals of every image."""
        return self.pos(*self._pos_inputs(images))["pred_masks"].sigmoid()


class POSContextExtractor(_FrozenPOSReader):
    """A trained POS's **context features** as a feature source (MM-Former Tab. 3b: matching on the features after
    the POS's context modelling instead of the backbone's): ``images [B, 3, H, W] -> [B, hidden_dim, h, w]``, the
    pixel decoder's output at one of the three decoder levels.

    The paper's POS has a multi-scale deformable-attention encoder there; this POS's pixel decoder is a small FPN
    (:class:`~fss_lab.models.mmformer.potential_objects_segmenter.SimplePixelDecoder`): top-down context, no
    attention. Register it under a level name that is not a backbone level and not ``"proposals..."``, e.g.
    ``exp.proposal_sources["pos_ctx_s32"] = POSContextExtractor(pos, exp.backbone, "s32")``.

    Args:
        pos: the trained :class:`PotentialObjectsSegmenter` (frozen here).
        backbone: its frozen backbone.
        level: which decoder level, one of :data:`POS_LEVELS` (``"s32"``, ``"s16"``, ``"s8"``).

    Raises:
        ValueError: ``level`` not in :data:`POS_LEVELS`.
    """

    def __init__(self, pos: PotentialObjectsSegmenter, backbone: nn.Module, level: str):
        if level not in POS_LEVELS:
            raise ValueError(f"POSContextExtractor: level must be one of {POS_LEVELS}, got {level!r}")
        super().__init__(pos, backbone)
        self.level = level

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, hidden_dim, h, w]`` pixel-decoder features at :attr:`level`."""
        multi, _ = self.pos.pixel_decoder(*self._pos_inputs(images))
        return multi[POS_LEVELS.index(self.level)]


__all__ = ["POSContextExtractor", "POSConfig", "POS_LEVELS", "POS_MASK_LEVEL", "POS_RESUME_KEYS", "pos_targets", "build_pos", "train_pos",
           "POSProposalExtractor"]
