"""Sharded evaluation under ``torchrun``: the episodes (FSS) or queries (GFSS) of one evaluation split across
ranks, the meters summed exactly.

Each rank runs the same evaluator code (:func:`~fss_lab.engine.evaluate.fss_task_groups` /
:func:`~fss_lab.engine.evaluate.gfss_task_groups` and :func:`~fss_lab.engine.evaluate.evaluate_tasks`) on its
share; the meters hold integer pixel counts (intersections and unions per class), so summing them over ranks
(``all_reduce``) gives **exactly** the counts of the one-process run, and every score computed from them is
identical. The share is made of whole evaluator chunks: FSS chunks of ``batch_episodes`` episodes and GFSS query
batches of ``batch_size`` queries, chunk ``c`` on rank ``c mod W``. So every task (a transductive method's fit
unit, e.g. one GFSS query batch) is the same task it is in the one-process run, and vectorised ``fit_predict``
sees the same stacks. Every rank gets the merged :class:`~fss_lab.engine.evaluate.Result` (the per-episode IoUs
gathered back in list order).

Run it with::

    torchrun --nproc_per_node 8 -m fss_lab.cli evaluate eval.json --out results/eval   # or your own script:

    ctx = init_distributed()                          # fss_lab.engine.distributed
    res = evaluate_fss_sharded(method, episodes, q_items, s_items, q_cache, s_cache, context=ctx)

A method whose fit is random must be seeded identically on every rank (GFSS inductive methods are fit on each
rank's first query batch: the same support set, so the same classifier when the fit is deterministic).
"""
from __future__ import annotations

import dataclasses

import torch

from ..data.sampler import EpisodeList
from ..metrics import FSSMeter, GFSSMeter, gfss_summary
from ..methods.base import Method
from ..progress import progress_bar
from .distributed import SINGLE_PROCESS, DistributedContext
from .evaluate import (SCORE_KEYS, Result, TaskGroup, _require, evaluate_tasks, fss_inputs, fss_task_groups,
                       gfss_task_groups, level_caches)

__all__ = ["shard_chunks", "evaluate_fss_sharded", "evaluate_gfss_sharded", "reduce_meter"]


def shard_chunks(n: int, chunk: int, context: DistributedContext = SINGLE_PROCESS) -> list[range]:
    """This rank's chunks of ``range(n)``: chunk ``c`` (items ``c*chunk .. c*chunk+chunk-1``) goes to rank
    ``c mod world_size``. Every item is on exactly one rank; ranks differ by at most one chunk.

    Raises:
        ValueError: ``chunk < 1``.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    starts = range(0, n, chunk)
    return [range(s, min(s + chunk, n)) for c, s in enumerate(starts) if c % context.world_size == context.rank]


def reduce_meter(meter: FSSMeter | GFSSMeter, context: DistributedContext) -> FSSMeter | GFSSMeter:
    """Sum a meter's integer counts over ranks, in place (exact); returns it."""
    names = ("inter", "union", "episodes", "fb_inter", "fb_union") if isinstance(meter, FSSMeter) else \
        ("inter", "union")
    for name in names:
        getattr(meter, name).copy_(context.all_reduce_sum(getattr(meter, name).clone()))
    if isinstance(meter, GFSSMeter):
        meter.num_updates = int(context.all_reduce_sum(torch.tensor([meter.num_updates])).item())
    return meter


@torch.no_grad()
def evaluate_fss_sharded(method: Method, episodes: EpisodeList, query_items, support_items, query_features,
                         support_features=None, *, context: DistributedContext = SINGLE_PROCESS,
                         device: torch.device | str | None = None, batch_episodes: int = 32,
                         progress: bool = True) -> Result:
    """:func:`~fss_lab.engine.evaluate.evaluate_fss` with the episode chunks split across ranks
    (:func:`shard_chunks`); the same :class:`~fss_lab.engine.evaluate.Result` on every rank, equal to the
    one-process one (scores, per-class IoU, per-episode IoU in list order). Arguments as ``evaluate_fss``;
    ``context`` from :func:`~fss_lab.engine.distributed.init_distributed`; ``device`` defaults to the context's.

    Raises:
        ValueError: episodes with different shot or query counts, ``batch_episodes < 1``.
        UnsupportedTaskError: a method that does not handle 1-way tasks.
    """
    q_caches, s_caches = fss_inputs(method, episodes, query_features, support_features, batch_episodes)
    device = context.device if device is None else device
    chunks = shard_chunks(len(episodes), batch_episodes, context)
    mine = [episodes[i] for r in chunks for i in r]
    for c in q_caches.values():
        c.precompute(sorted({i for e in mine for i in e.query}))
    for c in s_caches.values():
        c.precompute(sorted({i for e in mine for i in e.support}))
    meter = FSSMeter(episodes.meta.get("classes") or episodes.class_ids)
    local: dict[int, float] = {}

    def score(group: TaskGroup, preds):
        ids = [t.meta["class_id"] for t in group.tasks]
        ious = meter.update_batch(torch.stack(preds), torch.stack(group.labels), ids).tolist()
        local.update({t.meta["episode"]: v for t, v in zip(group.tasks, ious)})

    bar = progress_bar(total=len(mine), desc=f"{method.name} {episodes[0].shots}-shot rank {context.rank}",
                       progress=progress and context.is_main)

    def groups():
        for r in chunks:
            sub = EpisodeList(episodes.episodes[r.start:r.stop], episodes.meta)
            yield from fss_task_groups(method, sub, query_items, support_items, q_caches, s_caches, device=device,
                                       batch_episodes=batch_episodes, start_index=r.start)

    evaluate_tasks(method, groups(), score, bar=bar)
    reduce_meter(meter, context)
    merged: dict[int, float] = {}
    for part in context.all_gather_object(local):
        merged.update(part)
    dataset = query_items.dataset
    return Result(method=method.name, kind="fss", shots=episodes[0].shots, fold=int(episodes.meta.get("fold", -1)),
                  scores={"mIoU": meter.miou(), "FB-IoU": meter.fb_iou()},
                  per_class={dataset.class_name(c): v for c, v in meter.per_class_iou().items()},
                  count=len(episodes), episode_iou=[merged[i] for i in range(len(episodes))])


@torch.no_grad()
def evaluate_gfss_sharded(method: Method, run, features, items, *, support_features=None, support_items=None,
                          batch_size: int = 16, context: DistributedContext = SINGLE_PROCESS,
                          device: torch.device | str | None = None, class_names: list[str] | None = None) -> Result:
    """:func:`~fss_lab.engine.evaluate.evaluate_gfss` with the run's query batches (``batch_size`` queries each)
    split across ranks; the same :class:`~fss_lab.engine.evaluate.Result` on every rank, equal to the one-process
    one (a rank without a batch contributes zero counts). Arguments as ``evaluate_gfss``.

    Raises:
        ValueError: ``batch_size < 1``; logits of the wrong shape (from the evaluator).
        UnsupportedTaskError: a method that does not handle GFSS tasks.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cmap = run.class_map
    _require(method, cmap.label_space)
    device = context.device if device is None else device
    caches = level_caches(features, method)
    s_caches = caches if support_features is None else level_caches(support_features, method)
    support_items = items if support_items is None else support_items
    pos = [p for r in shard_chunks(len(run.query), batch_size, context) for p in r]
    meter = GFSSMeter(cmap.num_classes, cmap.base_ids, cmap.novel_ids)
    if pos:
        sub = dataclasses.replace(run, query=tuple(run.query[p] for p in pos),
                                  query_ids=tuple(run.query_ids[p] for p in pos))
        for c in caches.values():
            if hasattr(c, "precompute"):
                c.precompute(list(sub.query))

        def score(group: TaskGroup, preds):
            for p, y in zip(preds, group.labels):
                meter.update(p, y)

        evaluate_tasks(method, gfss_task_groups(method, sub, items, support_items, caches, s_caches, device=device,
                                                batch_size=batch_size), score)
    reduce_meter(meter, context)
    names = class_names or cmap.class_names(items.dataset)
    raw = meter.scores()
    base = raw["base_miou_with_bg"] if run.protocol == "gfs-seg" else raw["base_miou"]
    scores = {**gfss_summary(base, raw["novel_miou"]), **{k: raw[k] for k in SCORE_KEYS[4:]}}
    return Result(method=method.name, kind="gfss", fold=run.fold, shots=run.shots, run=run.run, seed=run.seed,
                  protocol=run.protocol, scores=scores,
                  per_class={names[c]: v for c, v in meter.per_class_iou().items()}, count=len(run.query))
