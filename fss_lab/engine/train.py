"""Base training of a segmentation model (PSPNet) on a fold's base classes: SGD, poly/cosine schedule, label-smoothed
cross-entropy + auxiliary loss, AMP on CUDA, validation mIoU, atomic resumable checkpoints, DDP under torchrun.

Recipes it reproduces (fss-methods.md sections 4c-4d): RePRI / DIaM base models (SGD Nesterov, momentum 0.9,
lr 2.5e-3 cosine, wd 1e-4, label smoothing 0.1, batch 12) and PSPNet's poly schedule with an auxiliary loss (0.4).

CPU mode for notebooks: ``freeze_backbone=True`` + ``cache_backbone_features=True`` computes the frozen backbone
features of every training image once, unflipped and flipped, and trains only the head (PPM + bottleneck +
classifier) on them. Augmentation is then **reduced to horizontal flips** (no random scale or crop): the cache
holds one un-augmented view per image and flip. Validation features are cached too.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..checks import check_finite
from ..labels import IGNORE_INDEX
from ..losses.segmentation import pspnet_loss
from ..metrics import intersection_and_union
from ..progress import progress_bar
from .checkpoint import (CheckpointError, checkpoint_lock, load_checkpoint, read_checkpoint, rng_states,
                         save_checkpoint, set_rng_states, stale_temp_files)
from .device import resolve_device
from .distributed import SINGLE_PROCESS, DistributedContext

log = logging.getLogger("fss_lab.engine")
#: Config fields that must match for a checkpoint to be resumed (they shape the data order and the schedule).
RESUME_KEYS = ("iterations", "epochs", "batch_size", "lr", "schedule", "seed", "cache_backbone_features",
               "loss_stride")


@dataclass
class TrainConfig:
    """Base-training settings (defaults: RePRI/DIaM's optimiser; ``lr`` suited to batch 8 at small scale).

    Attributes:
        iterations / epochs: length of training; give exactly one (an epoch = ``len(train_set) // batch_size``
            optimiser steps, the last incomplete batch dropped).
        batch_size: images per optimiser step over all processes (divided among DDP ranks).
        lr, momentum, nesterov, weight_decay: SGD; ``head_lr_mult`` scales the lr of everything but the backbone
            (PSPNet uses 10, RePRI 1).
        schedule: ``"poly"`` (``(1 - t/T) ** poly_power``), ``"cosine"`` or ``"constant"``, per iteration.
        label_smoothing: RePRI's epsilon (0.1 in RePRI / DIaM / the GFSS-Capstone report).
        aux_weight: weight of the auxiliary head's loss (PSPNet: 0.4; ignored with a frozen backbone).
        amp: mixed precision (float16 autocast + grad scaler); only on CUDA, ignored on the CPU.
        seed: data order, augmentation and dropout seed (rank r seeds its global RNGs with ``seed + r``).
        eval_every / checkpoint_every: iterations between validations / checkpoints (``None``: only at the end).
        num_workers: DataLoader workers (0 = in the main process).
        extra_loss: optional ``callable(features [B, D, h, w], labels [B, H', W'] int64 (0..B, 255),
            logits [B, 1+B, H', W']) -> scalar`` added to the loss, already weighted (e.g. pixel contrast, seed 002);
            ``features`` are the bottleneck features (with autograd), ``(H', W')`` the loss grid (the image size
            when ``loss_stride=1``), ``logits`` not probabilities.
        freeze_backbone: freeze the backbone (BN in eval mode); the model's own setting also counts.
        cache_backbone_features: train the head on cached frozen backbone features (see the module docstring).
            Items come from ``train_set.plain(i)`` when it exists (else ``train_set[i]``, which must then be
            un-augmented). Memory: ``2 * N * C * h * w`` float16 values, e.g. 230 MB for 588 images of 192x192
            with EfficientNet-Lite0 (672 x 12 x 12 each).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (under DDP each rank uses its context's device).
        eval_batch_size: images per validation / feature-cache batch.
        loss_stride: compare logits and labels on every ``loss_stride``-th pixel (labels subsampled nearest-style,
            logits bilinearly upsampled to that grid); 1 = every label pixel (the papers). 4 makes CPU runs at
            192x192 (12x12 features) much cheaper at little cost. Validation always scores every pixel.
        channels_last: convert the model (and batches) to channels-last memory format; ``None``: on the CPU only.
    """

    iterations: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    head_lr_mult: float = 1.0
    schedule: str = "poly"
    poly_power: float = 0.9
    label_smoothing: float = 0.0
    aux_weight: float = 0.4
    amp: bool = True
    seed: int = 0
    eval_every: int | None = None
    checkpoint_every: int | None = None
    num_workers: int = 0
    extra_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    freeze_backbone: bool = False
    cache_backbone_features: bool = False
    device: str = "auto"
    eval_batch_size: int = 16
    loss_stride: int = 1
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        if (self.iterations is None) == (self.epochs is None):
            raise ValueError(f"give exactly one of iterations / epochs, got {self.iterations} / {self.epochs}")
        if self.schedule not in ("poly", "cosine", "constant"):
            raise ValueError(f"schedule must be 'poly', 'cosine' or 'constant', got {self.schedule!r}")
        for name in ("iterations", "epochs", "batch_size", "eval_every", "checkpoint_every", "eval_batch_size",
                     "loss_stride"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1 (or None), got {v}")
        if self.cache_backbone_features and not self.freeze_backbone:
            raise ValueError("cache_backbone_features=True needs freeze_backbone=True (a trained backbone changes "
                             "its features)")

    def to_dict(self) -> dict:
        """JSON-able fields (``extra_loss`` as its name)."""
        d = dataclasses.asdict(self)
        hook = self.extra_loss
        d["extra_loss"] = None if hook is None else getattr(hook, "__name__", repr(hook))
        return d


@dataclass
class TrainHistory:
    """What a run recorded: one row per optimiser step and one per validation (tidy, DataFrame-able).

    Attributes:
        steps: dicts with ``iteration`` (1-based), ``epoch``, ``loss`` (total), ``loss_main``, ``loss_aux``,
            ``loss_extra``, ``lr``, ``seconds`` (wall time since this process started training).
        evals: dicts with ``iteration``, ``base_miou`` (mean IoU over base labels 1..B, background excluded),
            ``base_miou_with_bg`` (background included) and ``per_class`` (``{label: IoU}``), fractions in [0, 1].
        config: the :class:`TrainConfig` as a dict.
    """

    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def steps_frame(self) -> pd.DataFrame:
        """Per-iteration losses and learning rate."""
        return pd.DataFrame(self.steps)

    def evals_frame(self) -> pd.DataFrame:
        """Per-validation mIoU (per-class IoU in :meth:`per_class_frame`)."""
        return pd.DataFrame([{k: v for k, v in e.items() if k != "per_class"} for e in self.evals])

    def per_class_frame(self) -> pd.DataFrame:
        """Tidy per-class IoU: ``iteration``, ``label``, ``iou``."""
        return pd.DataFrame([{"iteration": e["iteration"], "label": c, "iou": v}
                             for e in self.evals for c, v in e["per_class"].items()])

    @property
    def last_miou(self) -> float:
        """Base mIoU of the last validation (NaN if none)."""
        return self.evals[-1]["base_miou"] if self.evals else math.nan

    def to_dict(self) -> dict:
        return {"steps": list(self.steps), "evals": list(self.evals), "config": dict(self.config)}

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainHistory":
        d = d or {}
        return cls(list(d.get("steps", [])), list(d.get("evals", [])), dict(d.get("config", {})))


def quick_cpu_config(**overrides) -> TrainConfig:
    """The QUICK recipe of the notebooks: a frozen EfficientNet-Lite0 + cached features, head-only training.

    300 iterations of batch 8, SGD Nesterov lr 0.1 poly, label smoothing 0.1, loss on a 4x subsampled grid.
    Measured once on the synthetic data, fold 0, 192x192, 588 training images (15 base classes): val base mIoU
    0.74 (0.65 / 0.70 / 0.73 after 75 / 150 / 225 iterations), ~85 s of one CPU core on a shared 2-core machine
    (~38 s caching features, incl. generating the images; ~45 s training and 4 validations).

    Args:
        overrides: any :class:`TrainConfig` field (e.g. ``iterations=150``, ``eval_every=75``).
    """
    fields = {"iterations": 300, "batch_size": 8, "lr": 0.1, "schedule": "poly", "label_smoothing": 0.1,
              "loss_stride": 4, "freeze_backbone": True, "cache_backbone_features": True}
    if "epochs" in overrides:
        fields.pop("iterations")
    return TrainConfig(**{**fields, **overrides})


class _Schedule:
    """LR factor per iteration (a picklable object, so ``LambdaLR.state_dict`` keeps it)."""

    def __init__(self, kind: str, total: int, power: float):
        self.kind, self.total, self.power = kind, max(1, total), power

    def __call__(self, it: int) -> float:
        t = min(it, self.total) / self.total
        if self.kind == "poly":
            return (1.0 - t) ** self.power
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0



def seed_process(seed: int, rank: int = 0) -> None:
    """Seed Python's, NumPy's and torch's global RNGs with ``seed + rank`` (each DDP rank its own stream)."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def resume_run(checkpoint_path: str | Path | None, resume: bool, config: dict, resume_keys: tuple[str, ...],
               model: nn.Module, optimizer, scheduler, scaler, ctx: DistributedContext, seed: int,
               total: int) -> tuple[int, dict | None]:
    """The start of a checkpointed run, shared by base and episodic training: rank 0 removes partial checkpoints of
    killed runs, every rank seeds its RNGs (:func:`seed_process`), then an existing checkpoint is loaded into the
    model / optimizer / scheduler / scaler and each rank's RNG states restored (exact resumption).

    Call it while rank 0 holds :func:`~fss_lab.engine.checkpoint.checkpoint_lock`, after a barrier.

    Args:
        config: this run's settings (a dict); ``resume_keys``: the keys that must equal the checkpoint's.

    Returns:
        ``(iterations already done, saved history dict or None)``.

    Raises:
        CheckpointError: an unreadable checkpoint, or one written with other ``resume_keys`` settings (names them).
    """
    if checkpoint_path is not None and ctx.is_main:
        for stale in stale_temp_files(checkpoint_path):  # left by a dead writer; a live run's file is not listed
            log.warning("removing %s, a partial checkpoint of a killed run", stale)
            stale.unlink(missing_ok=True)
    seed_process(seed, ctx.rank)
    if checkpoint_path is None or not resume or not Path(checkpoint_path).is_file():
        return 0, None
    saved = read_checkpoint(checkpoint_path)
    old = saved.get("config") or {}
    diff = {k: (old.get(k), config.get(k)) for k in resume_keys if old.get(k) != config.get(k)}
    if diff:
        raise CheckpointError(f"checkpoint {checkpoint_path} was written with other settings {diff} (saved, "
                              "now); pass resume=False, another checkpoint_path, or the saved settings")
    state = load_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler)
    per_rank = state["extra"].get("rng_per_rank")
    if per_rank and len(per_rank) == ctx.world_size:
        set_rng_states(per_rank[ctx.rank])
    if ctx.is_main:
        log.info("resumed from %s at iteration %d/%d", checkpoint_path, int(state["iteration"]), total)
    return int(state["iteration"]), state["history"]


def save_run_checkpoint(checkpoint_path: str | Path, ctx: DistributedContext, model: nn.Module, optimizer, scheduler,
                        scaler, iteration: int, history: dict, config: dict) -> None:
    """Average BatchNorm buffers over ranks, gather every rank's RNG states and let rank 0 write the checkpoint
    atomically (:func:`~fss_lab.engine.checkpoint.save_checkpoint`); every rank must call it."""
    ctx.average_buffers(model)
    rngs = ctx.all_gather_object(rng_states())  # every rank's RNGs: exact resumption under DDP too
    if ctx.is_main:
        save_checkpoint(checkpoint_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                        iteration=iteration, history=history, config=config,
                        extra={"rng_per_rank": rngs, "world_size": ctx.world_size})
        log.info("checkpoint saved at iteration %d to %s", iteration, checkpoint_path)


class _HeadRunner(nn.Module):
    """Runs the head + classifier of a PSPNet on cached backbone features (a module so DDP can wrap it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, backbone_feats: torch.Tensor, size: tuple[int, int]):
        feats = self.model.head(backbone_feats)
        return self.model.classify(feats, size), None, feats


@torch.no_grad()
def _feature_bank(model: nn.Module, dataset, flips: bool, device: torch.device, batch: int, amp: bool,
                  desc: str, show: bool, fmt: torch.memory_format = torch.contiguous_format
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features float16 ``[V, N, C, h, w]`` (V = 2 with flips: unflipped, flipped) and labels uint8
    ``[V, N, H, W]``, on the CPU, of the un-augmented items (``dataset.plain(i)`` when it exists)."""
    plain = getattr(dataset, "plain", None) or dataset.__getitem__
    feats: list[list[torch.Tensor]] = [[] for _ in range(1 + flips)]
    labels: list[list[torch.Tensor]] = [[] for _ in range(1 + flips)]
    model.eval()
    for start in progress_bar(range(0, len(dataset), batch), progress=show, desc=desc, leave=False):
        xs, ys = zip(*(plain(i) for i in range(start, min(start + batch, len(dataset)))))
        x, y = torch.stack(xs), torch.stack(ys).to(torch.uint8)
        for v, (xv, yv) in enumerate([(x, y), (x.flip(-1), y.flip(-1))][:1 + flips]):
            with torch.autocast("cuda", torch.float16, enabled=amp):
                f = model.backbone_features(xv.to(device).contiguous(memory_format=fmt))
            f = f.to("cpu", torch.float16)  # a NaN here would train the head on garbage: name the image instead
            check_finite(f, f"backbone features ({desc})", where=lambda k: f"image {_image_id(dataset, start + k)}")
            feats[v].append(f)
            labels[v].append(yv)
    return torch.stack([torch.cat(f) for f in feats]), torch.stack([torch.cat(y) for y in labels])


def _image_id(dataset, index: int) -> str:
    base = getattr(dataset, "image_id", None)
    return base(index) if callable(base) else f"item {index}"


def _epoch_batches(n: int, local_batch: int, ctx: DistributedContext, seed: int, epoch: int) -> list[list[int]]:
    sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    return [idx[k:k + local_batch] for k in range(0, len(idx) - local_batch + 1, local_batch)]


def _flip_bits(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randint(0, 2, (n,), generator=g)


@torch.no_grad()
def evaluate_base(model: nn.Module, val_set, num_classes: int, *, ctx: DistributedContext = SINGLE_PROCESS,
                  batch_size: int = 16, bank: tuple[torch.Tensor, torch.Tensor] | None = None,
                  amp: bool = False, memory_format: torch.memory_format = torch.contiguous_format) -> dict:
    """Base-class segmentation scores of ``model`` on ``val_set`` (summed over ranks under DDP).

    Args:
        model: ``model(x)`` -> logits ``[B, num_classes, H, W]`` in eval mode (a PSPNet).
        val_set: items ``(image [3, H, W], label [H, W] in 0..num_classes-1 or 255)``; each rank scores its shard.
        bank: cached ``(features [1, N, C, h, w], labels [1, N, H, W])`` to use instead of images.

    Returns:
        ``{"base_miou", "base_miou_with_bg", "per_class": {label: IoU}}``: IoU = summed I / summed U over the
        images; labels whose union is 0 are NaN and left out of the means.
    """
    net = model.module if isinstance(model, DistributedDataParallel) else model
    net.eval()
    inter = torch.zeros(num_classes, dtype=torch.int64)
    union = torch.zeros(num_classes, dtype=torch.int64)
    shard = ctx.shard(len(val_set) if bank is None else bank[0].shape[1])
    for start in range(0, len(shard), batch_size):
        ids = shard[start:start + batch_size]
        if bank is None:
            xs, ys = zip(*(val_set[i] for i in ids))
            x, y = torch.stack(xs).to(ctx.device).contiguous(memory_format=memory_format), torch.stack(ys)
            with torch.autocast("cuda", torch.float16, enabled=amp):
                logits = net(x)
        else:
            f = bank[0][0, ids].to(ctx.device).float().contiguous(memory_format=memory_format)
            y = bank[1][0, ids].long()
            logits = net.classify(net.head(f), y.shape[-2:])
        i, u = intersection_and_union(logits.argmax(1).cpu(), y, num_classes, IGNORE_INDEX)
        inter += i
        union += u
    inter, union = ctx.all_reduce_sum(inter), ctx.all_reduce_sum(union)
    nan = torch.full(union.shape, math.nan, dtype=torch.float64)
    iou = torch.where(union > 0, inter.double() / union.clamp(min=1).double(), nan)
    per_class = {c: float(iou[c]) for c in range(num_classes)}
    base = [v for c, v in per_class.items() if c > 0 and not math.isnan(v)]
    with_bg = [v for v in per_class.values() if not math.isnan(v)]
    return {"base_miou": float(np.mean(base)) if base else math.nan,
            "base_miou_with_bg": float(np.mean(with_bg)) if with_bg else math.nan, "per_class": per_class}


def _prepare_model(model: nn.Module, train_set, config: TrainConfig, device: torch.device) -> int:
    """Check the output count against the training set, freeze the backbone (and aux head) when asked, move the
    model to ``device``; returns the number of classes (background + base)."""
    num_classes = getattr(model, "num_classes", None) or getattr(train_set, "num_classes")
    if getattr(train_set, "num_classes", num_classes) != num_classes:
        raise ValueError(f"the model has {num_classes} outputs but the training set has {train_set.num_classes} "
                         "labels (background + base classes); build PSPNet(num_classes=train_set.num_classes)")
    if config.freeze_backbone or getattr(model, "freeze_backbone", False):
        model.freeze_backbone = True
        for part in (model.backbone, getattr(model, "aux", None)):
            if part is not None:
                part.requires_grad_(False)
    model.to(device)
    return num_classes


def _optimiser(model: nn.Module, config: TrainConfig, total: int, use_amp: bool):
    """SGD with the head at ``lr * head_lr_mult`` and the (trainable) backbone at ``lr``, the poly / cosine
    schedule over ``total`` iterations, and the AMP gradient scaler: ``(optimizer, scheduler, scaler)``."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    ids = {id(p) for p in backbone}
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": head, "lr": config.lr * config.head_lr_mult}] + ([{"params": backbone}] if backbone else [])
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _Schedule(config.schedule, total, config.poly_power))
    return optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=use_amp)


def _epoch_loader(train_set, bank, n_train: int, local_batch: int, ctx: DistributedContext, config: TrainConfig,
                  epoch: int, skip: int, device: torch.device):
    """The batches of ``epoch`` from batch ``skip`` on (the seeded order every rank agrees on): from the cached
    feature bank with its seeded flips, or through a ``DataLoader`` with its own generator (the global RNG stays
    exact for resumption)."""
    batches = _epoch_batches(n_train, local_batch, ctx, config.seed, epoch)[skip:]
    if bank is not None:
        flips = _flip_bits(n_train, config.seed, epoch)
        return ((bank[0][flips[b], b], bank[1][flips[b], b]) for b in map(torch.tensor, batches))
    if hasattr(train_set, "set_epoch"):
        train_set.set_epoch(epoch)
    return DataLoader(train_set, batch_sampler=batches, num_workers=config.num_workers,
                      pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))


def _train_step(runner: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, cached: bool,
                use_amp: bool, optimizer, scheduler, scaler) -> dict[str, float]:
    """One optimisation step on a batch (``y`` already on the loss grid): label-smoothed CE + aux (+ the extra
    term), AMP-scaled backward, SGD and schedule steps; returns the step's losses and learning rate."""
    k = config.loss_stride
    with torch.autocast("cuda", torch.float16, enabled=use_amp):
        logits, aux_logits, feats = runner(x, tuple(y.shape[-2:])) if cached else runner(x, True)
    if not cached and k > 1:
        logits, aux_logits = (None if t is None else t[..., k // 2::k, k // 2::k] for t in (logits, aux_logits))
    parts = pspnet_loss(logits.float(), y, None if aux_logits is None else aux_logits.float(),
                        aux_weight=config.aux_weight, label_smoothing=config.label_smoothing)
    extra = config.extra_loss(feats, y, logits) if config.extra_loss is not None else parts.main * 0
    loss = parts.total + extra
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return {"loss": float(loss.detach()), "loss_main": float(parts.main.detach()),
            "loss_aux": float(parts.aux.detach()), "loss_extra": float(extra.detach()), "lr": lr}


def train_base(model: nn.Module, train_set, val_set=None, config: TrainConfig | None = None,
               checkpoint_path: str | Path | None = None, resume: bool = True, progress: bool = True,
               ctx: DistributedContext | None = None, lock_timeout: float | None = None) -> TrainHistory:
    """Train ``model`` on the base classes (in place) and return what happened.

    Args:
        model: a :class:`~fss_lab.models.pspnet.PSPNet` (``forward(x, return_features=...)`` as documented there;
            cached mode also uses ``backbone_features``, ``head`` and ``classify``).
        train_set: a :class:`~fss_lab.data.base_training.BaseTrainingSet` (or any dataset of
            ``(image [3, H, W] float32, label [H, W] int64)`` of one size; ``set_epoch`` is called when present).
        val_set: same item type without augmentation (``augment=False``), or ``None``.
        config: :class:`TrainConfig` (must be given: it holds the length of training).
        checkpoint_path: where to write checkpoints (rank 0 only); with ``resume=True`` an existing file there is
            loaded and training continues from it exactly (model, optimiser, schedule, RNGs, data order).
        progress: ``tqdm.auto`` bar with running loss and the last mIoU (rank 0; ``TQDM_DISABLE=1`` silences it).
        ctx: the :class:`~fss_lab.engine.distributed.DistributedContext` (``None``: one process on
            ``config.device``). Under DDP every rank must call this with the same arguments.
        lock_timeout: seconds to wait for another run training the same ``checkpoint_path`` (rank 0 holds
            :func:`~fss_lab.engine.checkpoint.checkpoint_lock` for the whole run); ``None`` waits until it is done and
            then resumes from / reuses its checkpoint, ``0`` raises at once.

    Returns:
        :class:`TrainHistory`. The model is changed in place: trained, moved to the training device, in eval
        mode; with a frozen backbone its ``freeze_backbone`` flag is set (channels-last layout, used during
        training on the CPU, is undone at the end).

    Raises:
        ValueError: bad config, or fewer training images than one batch. CheckpointError: an unreadable
            checkpoint, or one written with a different recipe (:data:`RESUME_KEYS`), or a checkpoint still locked
            by another run after ``lock_timeout`` seconds.
    """
    if config is None:
        raise ValueError("train_base needs a TrainConfig (at least iterations= or epochs=)")
    ctx = ctx or dataclasses.replace(SINGLE_PROCESS, device=resolve_device(config.device))
    device, main = ctx.device, ctx.is_main
    if config.batch_size % ctx.world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {ctx.world_size} processes")
    local_batch = config.batch_size // ctx.world_size
    n_train = len(train_set)
    steps_per_epoch = (n_train // ctx.world_size) // local_batch
    if steps_per_epoch < 1:
        raise ValueError(f"{n_train} training images cannot fill one batch of {config.batch_size}")
    total = config.iterations or config.epochs * steps_per_epoch
    use_amp = bool(config.amp and device.type == "cuda")
    cached = config.cache_backbone_features
    num_classes = _prepare_model(model, train_set, config, device)
    optimizer, scheduler, scaler = _optimiser(model, config, total, use_amp)
    history = TrainHistory(config=config.to_dict())

    lock = checkpoint_lock(checkpoint_path, lock_timeout) if checkpoint_path is not None and main else None
    try:
        ctx.barrier()  # the other ranks read the checkpoint only once rank 0 holds its lock
        start, saved = resume_run(checkpoint_path, resume, history.config, RESUME_KEYS, model, optimizer, scheduler,
                                  scaler, ctx, config.seed, total)
        if saved is not None:
            history = TrainHistory.from_dict(saved)

        channels_last = device.type == "cpu" if config.channels_last is None else config.channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:  # same values; oneDNN convolutions run about 2x faster on CPUs in this layout
            model.to(memory_format=torch.channels_last)
        runner: nn.Module = _HeadRunner(model) if cached else model
        if ctx.is_distributed:
            runner = DistributedDataParallel(runner, device_ids=[device.index] if device.type == "cuda" else None)
        bank = val_bank = None
        if cached and start < total:
            bank = _feature_bank(model, train_set, True, device, config.eval_batch_size, use_amp,
                                 "caching backbone features", progress and main, fmt)
            if val_set is not None:
                val_bank = _feature_bank(model, val_set, False, device, config.eval_batch_size, use_amp,
                                         "caching val features", progress and main, fmt)

        def validate(it: int) -> None:
            ctx.average_buffers(model)
            scores = evaluate_base(model, val_set, num_classes, ctx=ctx, batch_size=config.eval_batch_size,
                                   bank=val_bank, amp=use_amp, memory_format=fmt)
            history.evals.append({"iteration": it, **scores})

        def checkpoint(it: int) -> None:
            save_run_checkpoint(checkpoint_path, ctx, model, optimizer, scheduler, scaler, it, history.to_dict(),
                                history.config)

        bar = progress_bar(total=total, initial=start, desc="base training", progress=progress and main)
        running = history.steps[-1]["loss"] if history.steps else None
        t0, it, k = time.perf_counter(), start, config.loss_stride
        while it < total:
            epoch, skip = divmod(it, steps_per_epoch)
            loader = _epoch_loader(train_set, bank if cached else None, n_train, local_batch, ctx, config, epoch,
                                   skip, device)
            model.train()
            for x, y in loader:
                if it >= total:
                    break
                x = x.to(device, non_blocking=True).float().contiguous(memory_format=fmt)
                y = y.to(device, non_blocking=True).long()[:, k // 2::k, k // 2::k]  # the loss grid
                step = _train_step(runner, x, y, config, cached, use_amp, optimizer, scheduler, scaler)
                it += 1
                running = step["loss"] if running is None else 0.9 * running + 0.1 * step["loss"]
                history.steps.append({"iteration": it, "epoch": epoch, **step, "seconds": time.perf_counter() - t0})
                if val_set is not None and (it == total or (config.eval_every and it % config.eval_every == 0)):
                    validate(it)
                    model.train()
                if checkpoint_path is not None and (it == total or (config.checkpoint_every
                                                                    and it % config.checkpoint_every == 0)):
                    checkpoint(it)
                bar.update(1)
                bar.set_postfix(loss=f"{running:.3f}", mIoU=f"{history.last_miou:.3f}" if history.evals else "-")
        bar.close()
        ctx.average_buffers(model)
        if channels_last:  # hand back the usual layout: callers may .view() the features
            model.to(memory_format=torch.contiguous_format)
        model.eval()
        return history
    finally:
        if lock is not None:
            lock.release()

__all__ = ["TrainConfig", "TrainHistory", "train_base", "evaluate_base", "quick_cpu_config"]
