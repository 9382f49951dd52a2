"""Episodic meta-training of a learned FSS model on base-class episodes (PFENet / BAM / MM-Former stage 2).

The recipe (fss-methods.md sections 1.3 and 4e):

* episodes are 1-way K-shot episodes of the fold's **base** classes drawn from the **training** split by the seeded
  PFENet sampler (:func:`base_class_episodes`): the fold's novel classes are never an episode class; their pixels
  are background in the episode masks (PFENet's convention; BAM drops such images instead);
* features come from a frozen backbone, cached once per image and level (``{level: FeatureCache}``), so on a CPU
  only the meta-learner trains (no augmentation: one view per image);
* SGD (PFENet: lr 0.0025, momentum 0.9, wd 1e-4, poly 0.9, batch 4) or AdamW (MM-Former: lr 1e-4, wd 0.05);
  AMP on CUDA; a progress bar; validation = FSS mIoU on novel-class episodes of the validation split;
* atomic, checksummed, resumable checkpoints with the base-training machinery
  (:func:`~fss_lab.engine.train.resume_run`, :func:`~fss_lab.engine.train.save_run_checkpoint`; a per-checkpoint
  lock) and data parallelism under ``torchrun`` (:class:`~torch.nn.parallel.DistributedDataParallel`; each rank
  takes its share of every step's episodes).

The learner is a :class:`~fss_lab.methods.base.Method` with ``episodic_training = True`` and the training hooks
``build_for(task)``, ``training_module()`` (the ``nn.Module`` trained and checkpointed), ``episode_inputs(tasks)``
(no-grad inputs of a batch of tasks), ``episode_forward(module, inputs)`` and ``episode_loss(outputs, labels)``
(a dict with ``"total"``): see :class:`~fss_lab.methods.pfenet.PFENetMetaLearner`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch.nn.parallel import DistributedDataParallel

from ..data.episodic import TransformedItems
from ..data.sampler import EpisodeList, sample_fss_episodes
from ..methods.base import Method
from ..progress import progress_bar
from .checkpoint import checkpoint_lock
from .device import resolve_device
from .distributed import SINGLE_PROCESS, DistributedContext
from .evaluate import evaluate_fss, fss_task_groups, level_caches
from .train import TrainHistory, _Schedule, resume_run, save_run_checkpoint

log = logging.getLogger("fss_lab.engine")
#: Settings that must match for an episodic checkpoint to be resumed (they fix the episodes and the schedule).
EPISODIC_RESUME_KEYS = ("iterations", "batch_episodes", "shots", "lr", "optimizer", "schedule", "seed", "min_area")


@dataclass
class EpisodicConfig:
    """Meta-training settings (defaults: PFENet's SGD recipe; ``lr`` suited to small CPU runs is set by callers).

    Attributes:
        iterations: optimiser steps.
        batch_episodes: episodes per step over all processes (PFENet batch 4; divided among DDP ranks).
        shots: K of the training episodes (PFENet trains 1-shot models and tests them K-shot too).
        optimizer: ``"sgd"`` (PFENet: momentum 0.9, wd 1e-4) or ``"adamw"`` (MM-Former: wd 0.05).
        lr, momentum, weight_decay, schedule (``"poly"`` / ``"cosine"`` / ``"constant"``), poly_power: as named.
        amp: float16 autocast + grad scaler on CUDA (ignored on the CPU).
        seed: episode sampling and initialisation seed (rank r seeds its global RNGs with ``seed + r``).
        eval_every / checkpoint_every: steps between validations / checkpoints (``None``: only at the end).
        min_area: PFENet's small-object rule for the training episodes (default: the dataset's).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        grad_clip: clip the gradient norm to this (``None``: no clipping, as PFENet).
    """

    iterations: int
    batch_episodes: int = 4
    shots: int = 1
    optimizer: str = "sgd"
    lr: float = 0.0025
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "poly"
    poly_power: float = 0.9
    amp: bool = True
    seed: int = 0
    eval_every: int | None = None
    checkpoint_every: int | None = None
    min_area: int | None = None
    device: str = "auto"
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_episodes", "shots", "eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise ValueError(f"EpisodicConfig.{name} must be >= 1 (or None), got {v}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"EpisodicConfig.optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("poly", "cosine", "constant"):
            raise ValueError(f"schedule must be 'poly', 'cosine' or 'constant', got {self.schedule!r}")

    def to_dict(self) -> dict:
        """JSON-able fields."""
        return dataclasses.asdict(self)


class EpisodicHistory(TrainHistory):
    """:class:`~fss_lab.engine.train.TrainHistory` of a meta-training run: ``steps`` rows carry ``iteration``,
    ``loss`` and the learner's loss parts (``loss_main``, ``loss_aux``...), ``lr``, ``seconds``; ``evals`` rows
    ``iteration``, ``miou`` and ``fb_iou`` (FSS scores on novel-class validation episodes, fractions) and
    ``per_class``."""

    @property
    def last_miou(self) -> float:
        """Novel-class FSS mIoU of the last validation (NaN if none)."""
        return self.evals[-1]["miou"] if self.evals else math.nan

    @classmethod
    def from_dict(cls, d: dict | None) -> "EpisodicHistory":
        d = d or {}
        return cls(list(d.get("steps", [])), list(d.get("evals", [])), dict(d.get("config", {})))


class _BaseClassView:
    """A dataset whose ``novel_classes(fold)`` are the fold's base classes (to sample base-class episodes)."""

    def __init__(self, dataset, fold: int):
        self._dataset, self._fold = dataset, fold

    def novel_classes(self, fold: int) -> tuple[int, ...]:
        return self._dataset.base_classes(fold)

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def __len__(self) -> int:
        return len(self._dataset)


def base_class_episodes(train_dataset, fold: int, shots: int, n_episodes: int, seed: int = 0,
                        min_area: int | None = None) -> EpisodeList:
    """Seeded 1-way ``shots``-shot episodes of ``fold``'s **base** classes from ``train_dataset`` (the PFENet
    sampler: query order permuted and cycled, class uniform among the query's qualifying base classes, K distinct
    supports other than the query). ``meta["episode_classes"] = "base"``.

    Raises:
        DatasetError: no base class can form an episode (as :func:`~fss_lab.data.sampler.sample_fss_episodes`).
    """
    out = sample_fss_episodes(_BaseClassView(train_dataset, fold), fold, shots, n_episodes, seed=seed,
                              min_area=min_area)
    novel = set(train_dataset.novel_classes(fold))
    assert not novel & set(out.class_ids), "base-class episodes drew a novel class"
    out.meta["episode_classes"] = "base"
    return out


def _optimizer(params, config: EpisodicConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def train_episodic(learner: Method, config: EpisodicConfig, *, fold: int, train_items: TransformedItems,
                   train_features: Mapping, val_episodes: EpisodeList | None = None,
                   val_items: TransformedItems | None = None, val_features: Mapping | None = None,
                   val_support_items: TransformedItems | None = None, val_support_features: Mapping | None = None,
                   checkpoint_path: str | Path | None = None, resume: bool = True, progress: bool = True,
                   ctx: DistributedContext | None = None, lock_timeout: float | None = None) -> EpisodicHistory:
    """Meta-train ``learner`` on base-class episodes of ``fold`` (in place) and return what happened.

    Args:
        learner: an episodic method (module docstring), e.g.
            :class:`~fss_lab.methods.pfenet.PFENetMetaLearner`.
        config: :class:`EpisodicConfig`.
        fold: the fold whose novel classes are held out (never an episode class).
        train_items: the training split through the evaluation transform (labels and image ids).
        train_features: ``{level: FeatureCache}`` of the training images for every level the learner reads.
        val_episodes / val_items / val_features: novel-class episodes of the validation split, its items and
            caches (support items / caches default to the query ones); ``None``: no validation.
        checkpoint_path: where rank 0 writes checkpoints; with ``resume=True`` an existing one is loaded and training
            continues exactly (weights, optimiser, schedule, RNGs; the episodes are fixed by the seed).
        progress: a ``tqdm.auto`` bar on rank 0 (``TQDM_DISABLE=1`` silences it).
        ctx: the :class:`~fss_lab.engine.distributed.DistributedContext` (``None``: one process on
            ``config.device``); every rank calls this with the same arguments.
        lock_timeout: as :func:`~fss_lab.engine.train.train_base`.

    Returns:
        :class:`EpisodicHistory`. The learner's network is trained, on the training device, in eval mode.

    Raises:
        ValueError: ``batch_episodes`` not divisible by the processes, or a learner without the training hooks.
        CheckpointError: an unreadable checkpoint, one of another recipe (:data:`EPISODIC_RESUME_KEYS`), or a lock
            still held after ``lock_timeout``. DatasetError: no base-class episode can be formed.
    """
    for hook in ("build_for", "training_module", "episode_inputs", "episode_forward", "episode_loss"):
        if not callable(getattr(learner, hook, None)):
            raise ValueError(f"{type(learner).__name__} has no {hook}(); train_episodic needs an episodic learner "
                             "(episodic_training = True), e.g. fss_lab.methods.pfenet.PFENetMetaLearner")
    ctx = ctx or dataclasses.replace(SINGLE_PROCESS, device=resolve_device(config.device))
    device, main = ctx.device, ctx.is_main
    if config.batch_episodes % ctx.world_size:
        raise ValueError(f"batch_episodes {config.batch_episodes} is not divisible by the {ctx.world_size} processes")
    local = config.batch_episodes // ctx.world_size
    total = config.iterations
    use_amp = bool(config.amp and device.type == "cuda")
    caches = level_caches(train_features, learner)
    episodes = base_class_episodes(train_items.dataset, fold, config.shots, total * config.batch_episodes,
                                   seed=config.seed, min_area=config.min_area)

    def tasks_of(step: int):
        chunk = episodes.episodes[step * config.batch_episodes + ctx.rank * local:][:local]
        group = next(fss_task_groups(learner, EpisodeList(chunk, episodes.meta), train_items, train_items, caches,
                                     caches, device=device, batch_episodes=local, start_index=step))
        return group.tasks, torch.cat([y for y in group.labels]).to(device).long()

    first_tasks, _ = tasks_of(0)
    learner.build_for(first_tasks[0])
    module = learner.training_module().to(device)
    optimizer = _optimizer([p for p in module.parameters() if p.requires_grad], config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _Schedule(config.schedule, total, config.poly_power))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history = EpisodicHistory(config=config.to_dict())
    history.config["learner"] = learner.name

    lock = checkpoint_lock(checkpoint_path, lock_timeout) if checkpoint_path is not None and main else None
    try:
        ctx.barrier()
        start, saved = resume_run(checkpoint_path, resume, history.config, EPISODIC_RESUME_KEYS, module, optimizer,
                                  scheduler, scaler, ctx, config.seed, total)
        if saved is not None:
            history = EpisodicHistory.from_dict(saved)
        runner = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None) \
            if ctx.is_distributed else module
        if start < total:  # every image of the run's episodes, in full batches
            needed = sorted({i for e in episodes.episodes[start * config.batch_episodes:] for i in (*e.query,
                                                                                                    *e.support)})
            for c in caches.values():
                c.precompute(needed, progress=progress and main)

        def validate(it: int) -> None:
            ctx.average_buffers(module)
            module.eval()
            res = evaluate_fss(learner, val_episodes, val_items, val_support_items or val_items, val_features,
                               val_support_features, device=device, progress=False)
            history.evals.append({"iteration": it, "miou": res.miou, "fb_iou": res.fb_iou,
                                  "per_class": res.per_class})

        bar = progress_bar(total=total, initial=start, desc=f"meta-training {learner.name}",
                           progress=progress and main)
        running = history.steps[-1]["loss"] if history.steps else None
        t0 = time.perf_counter()
        for it in range(start, total):
            module.train()
            tasks, labels = tasks_of(it)
            inputs = learner.episode_inputs(tasks)
            with torch.autocast("cuda", torch.float16, enabled=use_amp):
                outputs = learner.episode_forward(runner, inputs)
            parts = learner.episode_loss(outputs, labels)
            loss = parts["total"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            done = it + 1
            value = float(loss.detach())
            running = value if running is None else 0.9 * running + 0.1 * value
            history.steps.append({"iteration": done, "loss": value, "lr": lr, "seconds": time.perf_counter() - t0,
                                  **{f"loss_{k}": float(v.detach()) for k, v in parts.items() if k != "total"}})
            if val_episodes is not None and (done == total or (config.eval_every and done % config.eval_every == 0)):
                validate(done)
            if checkpoint_path is not None and (done == total or (config.checkpoint_every
                                                                  and done % config.checkpoint_every == 0)):
                save_run_checkpoint(checkpoint_path, ctx, module, optimizer, scheduler, scaler, done,
                                    history.to_dict(), history.config)
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}", mIoU=f"{history.last_miou:.3f}" if history.evals else "-")
        bar.close()
        ctx.average_buffers(module)
        module.eval()
        return history
    finally:
        if lock is not None:
            lock.release()


__all__ = ["EpisodicConfig", "EpisodicHistory", "train_episodic", "base_class_episodes", "EPISODIC_RESUME_KEYS"]
