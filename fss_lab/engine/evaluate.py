"""The one evaluator: tasks built from feature caches for every protocol, one loop, one result type.

Three protocols feed the same loop (:func:`evaluate_tasks`):

* :func:`evaluate_fss`: 1-way K-shot FSS episodes (PFENet / BAM / RePRI protocol), scored with FSS mIoU and FB-IoU;
* :func:`evaluate_gfss`: a GFSS run (DIaM / GFS-Seg protocols, :mod:`fss_lab.data.gfss`), every query segmented into
  background, base and novel classes at once, scored with base / novel / mean / harmonic mIoU;
* :func:`evaluate_episode_gfss`: seed 002's scoring of 1-way episodes with a ``(B + 2)``-way label space (Tables
  2-3): each episode adds ONE novel class; base mIoU over all episodes, novel mIoU as FSS mIoU of the episode class.

The loop reads only the method's declared capabilities: an inductive method with one support set is fit once and
predicts every query batch; a transductive one is fit again for every batch (DIaM: each query its own classifier).
``fit`` runs with gradients enabled (fine-tuning and the transductive methods optimise), ``predict`` under
``no_grad``. Every query's valid pixels (``label != 255``) go into ``task.query_valid``; ``task.query_labels``
only to methods that declare ``reads_query_labels`` (oracle priors).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import pandas as pd
import torch

from ..checks import check_finite
from ..data.class_maps import GFSSClassMap
from ..data.episodic import TransformedItems, episode_masks, episode_masks_batch
from ..data.gfss import GFSSRun, GFSSRuns, gfss_query_labels, gfss_support_labels
from ..data.sampler import EpisodeList
from ..labels import IGNORE_INDEX
from ..methods.base import Method, UnsupportedTaskError
from ..methods.registry import list_methods
from ..methods.task import LabelSpace, Task
from ..metrics import FSSMeter, GFSSMeter, gfss_summary
from ..progress import progress_bar

#: GFSS score columns of :meth:`Result.summary` (fractions in [0, 1]).
SCORE_KEYS = ("base", "novel", "mean", "harmonic", "base_miou", "base_miou_with_bg", "novel_miou", "all_miou",
              "all_miou_with_bg")
#: The default name of a single feature level (a cache given without a level name).
DEFAULT_LEVEL = "features"


@dataclass
class Result:
    """Scores of one method on one episode list (FSS, episode-GFSS) or one GFSS run (fractions in [0, 1]).

    Attributes:
        method / kind / fold / shots: what was run; ``kind`` is ``"fss"``, ``"gfss"`` or ``"episode-gfss"``.
        scores: FSS: ``{"mIoU", "FB-IoU"}``; GFSS: every key of :data:`SCORE_KEYS` (``base`` is DIaM's base mIoU,
            background excluded, or GFS-Seg's with background under ``protocol="gfs-seg"``); episode-GFSS:
            ``{"base", "novel", "mean", "harmonic", "FB-IoU"}``.
        per_class: ``{class name: IoU}`` (FSS: the fold's novel classes; GFSS: background, base..., novel...).
        count: episodes (FSS, episode-GFSS) or queries (GFSS) scored.
        run / seed / protocol: the GFSS run (``None`` for episode lists).
        episode_iou: foreground IoU of each episode (FSS), in list order.
        predictions: ``{episode number or query dataset index: prediction uint8 [Q, H, W] or [H, W]}`` for the
            first ``keep_predictions``.
    """

    method: str
    kind: str
    fold: int
    shots: int
    scores: dict[str, float]
    per_class: dict[str, float]
    count: int
    run: int | None = None
    seed: int | None = None
    protocol: str | None = None
    episode_iou: list[float] = field(default_factory=list)
    predictions: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def miou(self) -> float:
        """FSS mIoU (``scores["mIoU"]``)."""
        return self.scores["mIoU"]

    @property
    def fb_iou(self) -> float:
        """FB-IoU (``scores["FB-IoU"]``)."""
        return self.scores["FB-IoU"]

    def summary(self) -> dict:
        """One tidy row: FSS ``method, shots, fold, mIoU, FB-IoU, episodes``; GFSS ``method, fold, shots, run, seed,
        protocol, queries`` and :data:`SCORE_KEYS`; episode-GFSS ``method, shots, fold, episodes`` and its scores."""
        if self.kind == "gfss":
            return {"method": self.method, "fold": self.fold, "shots": self.shots, "run": self.run,
                    "seed": self.seed, "protocol": self.protocol, "queries": self.count,
                    **{k: self.scores[k] for k in SCORE_KEYS}}
        return {"method": self.method, "shots": self.shots, "fold": self.fold, **self.scores, "episodes": self.count}

    def per_class_frame(self) -> pd.DataFrame:
        """Tidy per-class table: class, IoU, method, shots, fold (and run for GFSS)."""
        extra = {"run": self.run} if self.kind == "gfss" else {}
        return pd.DataFrame([{"class": c, "IoU": v, "method": self.method, "shots": self.shots, "fold": self.fold,
                              **extra} for c, v in self.per_class.items()])


# ---- the loop ---------------------------------------------------------------------------------------------------

@dataclass
class TaskGroup:
    """Tasks the loop runs together: ``shared_support`` tasks differ only in their queries (one GFSS run's query
    batches), so an inductive method is fit once on the first. ``labels``: the scored labels ``[Q_t, H, W]`` of each
    task; ``keys``: the prediction key of each task (an episode number), or with ``per_query`` one key per query
    (query dataset indices), for ``keep_predictions``."""

    tasks: list[Task]
    labels: list[torch.Tensor]
    keys: list
    shared_support: bool = False
    per_query: bool = False


def evaluate_tasks(method: Method, groups: Iterable[TaskGroup], score: Callable[[TaskGroup, list[torch.Tensor]], None],
                   *, keep_predictions: int = 0, bar=None) -> dict[int, torch.Tensor]:
    """Run ``method`` on every task of ``groups`` and pass each group's predictions to ``score``.

    Args:
        method: any :class:`~fss_lab.methods.base.Method`.
        groups: :class:`TaskGroup` objects (built by the protocol functions below).
        score: ``score(group, predictions)`` with predictions int64 ``[Q_t, H, W]`` (argmax of the logits).
        keep_predictions: keep the predictions of the first this-many keys (uint8).
        bar: a ``tqdm`` bar advanced by one per task.

    Returns:
        ``{key: prediction uint8}`` for the kept predictions.

    Raises:
        UnsupportedTaskError: a task the method declares it cannot handle. ValueError: logits of the wrong shape
            (names the expected one). NonFiniteError: NaN / Inf logits (names the method, the task's episode or run
            and its query image ids).
    """
    kept: dict[int, torch.Tensor] = {}
    for group in groups:
        if group.shared_support and not method.transductive:
            method.fit(group.tasks[0])
            with torch.no_grad():
                logits = [method.predict(t) for t in group.tasks]
        else:
            logits = method.fit_predict(group.tasks)
        preds = []
        for task, z in zip(group.tasks, logits):
            want = (task.num_queries, task.label_space.num_classes, *task.size)
            if tuple(z.shape) != want:
                raise ValueError(f"{type(method).__name__} returned logits {tuple(z.shape)} for {task.describe()}; "
                                 f"expected [Q, 1 + B + N, H, W] = {list(want)}")
            check_finite(z, "logits", method=method.name, where=lambda q, t=task: f"{t.describe()}, query {q}")
            preds.append(z.max(1).indices.cpu())  # max().indices: much faster than argmax over a short dim on CPU
        score(group, preds)
        for key, p in zip(group.keys, preds):
            for k, pk in (zip(key, p) if group.per_query else [(key, p)]):
                if len(kept) < keep_predictions:
                    kept[k] = pk.to(torch.uint8)
        if bar is not None:
            bar.update(len(group.tasks))
    if bar is not None:
        bar.close()
    return kept


def level_caches(features, method: Method) -> dict:
    """The caches of the levels ``method`` reads: ``features`` is one cache (it serves the method's level) or
    ``{level: cache}``.

    Raises:
        KeyError: the method needs a level the mapping lacks (names both).
    """
    levels = method.feature_levels
    if not isinstance(features, Mapping):
        return {levels[0] if levels else DEFAULT_LEVEL: features}
    if not levels:
        first = next(iter(features))
        return {first: features[first]}
    missing = [lv for lv in levels if lv not in features]
    if missing:
        raise KeyError(f"{method.name} reads feature levels {list(levels)}; this evaluation provides "
                       f"{list(features)}")
    return {lv: features[lv] for lv in levels}


def _get(caches: dict, indices: list[int], device) -> dict[str, torch.Tensor]:
    return {lv: c.get(indices).to(device) for lv, c in caches.items()}


def _split(feats: dict[str, torch.Tensor], n: int, i: int) -> dict[str, torch.Tensor]:
    return {lv: f[i * n:(i + 1) * n] for lv, f in feats.items()}


# ---- 1-way FSS episodes --------------------------------------------------------------------------------------------

def fss_task_groups(method: Method, episodes: EpisodeList, query_items: TransformedItems,
                    support_items: TransformedItems, query_caches: dict, support_caches: dict, *,
                    device, batch_episodes: int, start_index: int = 0) -> Iterator[TaskGroup]:
    """Chunks of ``batch_episodes`` 1-way tasks (one per episode; equal K and Q, so vectorised methods batch them).

    Masks stay uint8 on this path (far less memory traffic than int64 at full resolution)."""
    u8 = torch.uint8
    for start in range(0, len(episodes), batch_episodes):
        chunk = episodes.episodes[start:start + batch_episodes]
        ids = [e.class_id for e in chunk]
        s_masks = episode_masks_batch(support_items, [e.support for e in chunk], ids, "support", u8).to(device)
        q_masks = episode_masks_batch(query_items, [e.query for e in chunk], ids, "query", u8)
        s_feats = _get(support_caches, [i for e in chunk for i in e.support], device)
        q_feats = _get(query_caches, [i for e in chunk for i in e.query], device)
        k, q = len(chunk[0].support), len(chunk[0].query)
        q_dev = q_masks.to(device)
        q_valid = q_dev != IGNORE_INDEX  # one pass for the chunk; each task gets its slice (a view)
        tasks = [Task(_split(s_feats, k, j), s_masks[j], _split(q_feats, q, j), LabelSpace.fss(), shots=k,
                      size=tuple(q_masks.shape[-2:]), query_valid=q_valid[j],
                      query_labels=q_dev[j] if method.reads_query_labels else None,
                      meta={"episode": start_index + start + j, "class_id": e.class_id,
                            "query_ids": [query_items.dataset.image_id(i) for i in e.query],
                            "support_ids": [support_items.dataset.image_id(i) for i in e.support]})
                 for j, e in enumerate(chunk)]
        yield TaskGroup(tasks, list(q_masks), list(range(start_index + start, start_index + start + len(chunk))))


def fss_inputs(method: Method, episodes: EpisodeList, query_features, support_features,
               batch_episodes: int) -> tuple[dict, dict]:
    """Check an FSS evaluation's arguments and return its ``({level: query cache}, {level: support cache})``.

    Raises:
        ValueError: ``batch_episodes < 1``, or episodes with different shot or query counts.
        UnsupportedTaskError: a method that does not handle 1-way tasks.
    """
    if batch_episodes < 1:
        raise ValueError(f"batch_episodes must be >= 1, got {batch_episodes}")
    if len({(len(e.support), len(e.query)) for e in episodes}) > 1:
        raise ValueError("all episodes of one evaluation must have the same shot and query counts")
    _require(method, LabelSpace.fss())
    q_caches = level_caches(query_features, method)
    return q_caches, q_caches if support_features is None else level_caches(support_features, method)


@torch.no_grad()
def evaluate_fss(method: Method, episodes: EpisodeList, query_items: TransformedItems,
                 support_items: TransformedItems, query_features, support_features=None, *,
                 device: torch.device | str = "cpu", batch_episodes: int = 32, keep_predictions: int = 0,
                 progress: bool = True) -> Result:
    """Run ``method`` on every 1-way episode and score it with FSS mIoU and FB-IoU.

    Episodes run in chunks of ``batch_episodes`` through ``method.fit_predict`` (vectorised where the method
    supports it, a loop otherwise); each episode is still fit on its own support set only.

    Args:
        method: a method that handles ``"fss"`` tasks (logits ``[Q, 2, H, W]``).
        episodes: the sampled list (all episodes must have the same shot and query counts).
        query_items / support_items: the datasets seen through the transform (labels come from them).
        query_features / support_features: a :class:`~fss_lab.models.features.FeatureCache` (anything with
            ``get(indices) -> [N, D, h, w]`` and ``precompute(indices)``) or ``{level: cache}``; support defaults
            to the query caches.
        device: where the method runs.
        batch_episodes: episodes per vectorised chunk (memory grows with it: ``E x Q x 2 x H x W`` logits).
        keep_predictions: keep the predictions of the first this-many episodes (for figures).
        progress: show a ``tqdm.auto`` bar (``TQDM_DISABLE=1`` silences it).

    Returns:
        :class:`Result` of kind ``"fss"``.

    Raises:
        ValueError: episodes with different shot or query counts, or ``batch_episodes < 1``.
        UnsupportedTaskError: a method that does not handle 1-way tasks.
    """
    q_caches, s_caches = fss_inputs(method, episodes, query_features, support_features, batch_episodes)
    meter = FSSMeter(episodes.meta.get("classes") or episodes.class_ids)
    for c in q_caches.values():  # features of every image, computed once in full batches
        c.precompute(sorted({i for e in episodes for i in e.query}))
    for c in s_caches.values():
        c.precompute(sorted({i for e in episodes for i in e.support}))
    shots = episodes[0].shots
    episode_iou: list[float] = []

    def score(group: TaskGroup, preds):
        ids = [t.meta["class_id"] for t in group.tasks]
        episode_iou.extend(meter.update_batch(torch.stack(preds), torch.stack(group.labels), ids).tolist())

    bar = progress_bar(total=len(episodes), desc=f"{method.name} {shots}-shot", progress=progress)
    groups = fss_task_groups(method, episodes, query_items, support_items, q_caches, s_caches, device=device,
                             batch_episodes=batch_episodes)
    kept = evaluate_tasks(method, groups, score, keep_predictions=keep_predictions, bar=bar)
    dataset = query_items.dataset
    return Result(method=method.name, kind="fss", shots=shots, fold=int(episodes.meta.get("fold", -1)),
                  scores={"mIoU": meter.miou(), "FB-IoU": meter.fb_iou()},
                  per_class={dataset.class_name(c): v for c, v in meter.per_class_iou().items()},
                  count=len(episodes), episode_iou=episode_iou, predictions=kept)


# ---- GFSS runs -----------------------------------------------------------------------------------------------------

def gfss_task_groups(method: Method, run: GFSSRun, items: TransformedItems, support_items: TransformedItems,
                     caches: dict, support_caches: dict, *, device, batch_size: int) -> Iterator[TaskGroup]:
    """One group of query-batch tasks sharing the run's support set (each batch one :class:`Task`).

    The supports carry base pixels only for methods with ``support_base_pixels == "keep"`` (fine-tuning, seed 000),
    which also get the run's base-class shots; the others see the run without them (:meth:`GFSSRun.novel_only`)."""
    keep = method.support_base_pixels == "keep"
    run = run if keep else run.novel_only()
    cmap = run.class_map
    s_labels = gfss_support_labels(support_items, run, base_pixels="keep" if keep else "background").to(device)
    s_feats = _get(support_caches, list(run.support), device)
    space = cmap.label_space
    tasks, labels, keys = [], [], []
    for start in range(0, len(run.query), batch_size):
        idx = [int(i) for i in run.query[start:start + batch_size]]
        q_labels = gfss_query_labels(items, idx, cmap)
        q_dev = q_labels.to(device)
        tasks.append(Task(s_feats, s_labels, _get(caches, idx, device), space, shots=run.shots,
                          size=tuple(q_labels.shape[-2:]), query_valid=q_dev != IGNORE_INDEX,
                          query_labels=q_dev if method.reads_query_labels else None,
                          meta={"run": run.run, "query_ids": [items.dataset.image_id(i) for i in idx]}))
        labels.append(q_labels)
        keys.append(idx)
    yield TaskGroup(tasks, labels, keys, shared_support=True, per_query=True)  # inductive methods fit once


def evaluate_gfss(method: Method, run: GFSSRun, features, items: TransformedItems, *, support_features=None,
                  support_items: TransformedItems | None = None, batch_size: int = 16,
                  device: torch.device | str = "cpu", keep_predictions: int = 0,
                  class_names: list[str] | None = None, progress: bool = False) -> Result:
    """Fit ``method`` on ``run``'s support set and score its predictions on every query of the run.

    Args:
        method: a method that handles ``"gfss"`` tasks (logits ``[Q, 1 + B + N, H, W]``).
        run: one run of :func:`fss_lab.data.gfss.gfss_runs` (with base shots when the experiment drew them; they
            are dropped for methods that do not keep base pixels).
        features: query features: a :class:`~fss_lab.models.features.FeatureCache` or ``{level: cache}``
            (``"bottleneck"`` / ``"backbone"``: each method reads its declared level).
        items: the query dataset through the transform (:class:`~fss_lab.data.episodic.TransformedItems`).
        support_features / support_items: the same for the support dataset (default: the query ones; the GFS-Seg
            protocol draws supports from the training split).
        batch_size: queries per task (a transductive method is fit once per task; DIaM tunes one classifier per
            query within it).
        device: where the method runs.
        keep_predictions: keep the predictions of the first this-many queries (uint8, for figures and widgets).
        class_names: names in GFSS order for ``per_class`` (default: ``run.class_map.class_names(dataset)``).
        progress: show a ``tqdm.auto`` bar over query batches.

    Returns:
        :class:`Result` of kind ``"gfss"``; the base score counts the background only under ``protocol="gfs-seg"``.

    Raises:
        ValueError: ``batch_size < 1``, logits of the wrong shape, labels out of range (from :class:`GFSSMeter`).
        UnsupportedTaskError: a method that does not handle GFSS tasks.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cmap = run.class_map
    _require(method, cmap.label_space)
    caches = level_caches(features, method)
    s_caches = caches if support_features is None else level_caches(support_features, method)
    support_items = items if support_items is None else support_items
    for c in caches.values():
        if hasattr(c, "precompute"):
            c.precompute(list(run.query))
    meter = GFSSMeter(cmap.num_classes, cmap.base_ids, cmap.novel_ids)
    names = class_names or cmap.class_names(items.dataset)

    def score(group: TaskGroup, preds):
        for p, y in zip(preds, group.labels):
            meter.update(p, y)

    groups = gfss_task_groups(method, run, items, support_items, caches, s_caches, device=device,
                              batch_size=batch_size)
    bar = progress_bar(total=-(-len(run.query) // batch_size), desc=f"{method.name} run {run.run}", progress=progress)
    kept = evaluate_tasks(method, groups, score, keep_predictions=keep_predictions, bar=bar)
    raw = meter.scores()
    base = raw["base_miou_with_bg"] if run.protocol == "gfs-seg" else raw["base_miou"]
    scores = {**gfss_summary(base, raw["novel_miou"]), **{k: raw[k] for k in SCORE_KEYS[4:]}}
    return Result(method=method.name, kind="gfss", fold=run.fold, shots=run.shots, run=run.run, seed=run.seed,
                  protocol=run.protocol, scores=scores,
                  per_class={names[c]: v for c, v in meter.per_class_iou().items()}, count=len(run.query),
                  predictions=kept)


def evaluate_gfss_runs(method: Method, runs: GFSSRuns, features, items, *, average: bool = True,
                       **kwargs) -> pd.DataFrame:
    """:func:`evaluate_gfss` on every run; a tidy DataFrame of the scores.

    Args:
        method / features / items / kwargs: as for :func:`evaluate_gfss` (the method is re-fit on each run).
        runs: from :func:`fss_lab.data.gfss.gfss_runs`.
        average: ``True`` -> one row per (method, fold, shots, protocol) with each score averaged over the runs
            (DIaM reports the mean of 5 runs), its standard deviation in ``<score>_std`` and ``runs``;
            ``False`` -> one row per run (:meth:`Result.summary`).

    Returns:
        ``pandas.DataFrame`` (scores as fractions in [0, 1]).

    Raises:
        ValueError: no runs.
    """
    if len(runs) == 0:
        raise ValueError("evaluate_gfss_runs got no runs; sample them with gfss_runs(..., n_runs >= 1)")
    frame = pd.DataFrame([evaluate_gfss(method, run, features, items, **kwargs).summary() for run in runs])
    return average_runs(frame) if average else frame


def average_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Average per-run rows (from ``evaluate_gfss_runs(..., average=False)``) over runs: mean, ``_std`` and ``runs``."""
    keys = ["method", "fold", "shots", "protocol"]
    grouped = frame.groupby(keys, sort=False)
    mean = grouped[list(SCORE_KEYS)].mean()
    std = grouped[list(SCORE_KEYS)].std(ddof=0).add_suffix("_std")
    out = mean.join(std)
    out["runs"] = grouped.size()
    return out.reset_index()


# ---- 1-way episodes scored in a (B + 2)-way label space (seed 002) ----------------------------------------------------

def episode_gfss_label(label: torch.Tensor, class_map: GFSSClassMap, class_id: int) -> torch.Tensor:
    """Dataset label -> ``0`` bg, ``1..B`` base, ``B+1`` the episode's novel class, other novel classes -> 0 (as in
    BAM's generalized testing, fss-methods.md section 3.3).

    Args:
        label: integer ``[..., H, W]`` dataset label; class_id: the episode's (novel) dataset class id.

    Returns:
        int64 ``[..., H, W]``; 255 kept.
    """
    y = class_map.base_label(label, "background")
    return y.masked_fill(label.long() == class_id, class_map.num_base + 1)


def episode_gfss_task_groups(method: Method, episodes: EpisodeList, items: TransformedItems, caches: dict,
                             class_map: GFSSClassMap, support_items: TransformedItems, support_caches: dict, *,
                             device) -> Iterator[TaskGroup]:
    """One task per episode with label space ``(B, 1)``: binary supports (episode class -> ``B + 1``, all else 0)."""
    nb = class_map.num_base
    space = LabelSpace(nb, 1)
    for n, spec in enumerate(episodes):
        s_masks = episode_masks(support_items, spec.support, spec.class_id, "support").to(device)
        s_labels = s_masks.masked_fill(s_masks == 1, nb + 1)
        q_label = torch.stack([episode_gfss_label(items.label(i), class_map, spec.class_id) for i in spec.query])
        q_dev = q_label.to(device)
        task = Task(_get(support_caches, list(spec.support), device), s_labels, _get(caches, list(spec.query), device),
                    space, shots=len(spec.support), size=tuple(q_label.shape[-2:]), query_valid=q_dev != IGNORE_INDEX,
                    query_labels=q_dev if method.reads_query_labels else None,
                    meta={"episode": n, "class_id": spec.class_id})
        yield TaskGroup([task], [q_label], [n])


def evaluate_episode_gfss(method: Method, episodes: EpisodeList, items: TransformedItems, features,
                          class_map: GFSSClassMap, *, support_items: TransformedItems | None = None,
                          support_features=None, device: torch.device | str = "cpu", keep_predictions: int = 0,
                          progress: bool = False) -> Result:
    """Fit a method per 1-way episode in the ``(B + 2)``-way label space and score its base and novel classes.

    Args:
        method: a method that handles GFSS tasks with one novel class, e.g.
            :class:`~fss_lab.methods.binary_finetune.BackgroundAwareFineTuning` (logits ``[Q, B + 2, H, W]``,
            channel ``B + 1`` = the episode's class).
        episodes / items / features: the episodes, the dataset through the transform, a feature cache (or
            ``{level: cache}``).
        class_map: the fold's :class:`~fss_lab.data.class_maps.GFSSClassMap`.
        support_items / support_features: where the supports come from when they are another split than the
            queries (e.g. CamVid's cross-video protocol: supports from train); default ``items`` / ``features``.
        device: where the method runs; keep_predictions / progress: as :func:`evaluate_fss`.

    Returns:
        :class:`Result` of kind ``"episode-gfss"`` with scores ``{"base": base mIoU (background excluded),
        "novel": FSS mIoU of the novel classes, "mean", "harmonic", "FB-IoU"}``.
    """
    nb = class_map.num_base
    _require(method, LabelSpace(nb, 1))
    caches = level_caches(features, method)
    s_caches = caches if support_features is None else level_caches(support_features, method)
    support_items = items if support_items is None else support_items
    base_meter = GFSSMeter(nb + 2, tuple(range(1, nb + 1)), (nb + 1,))
    novel_meter = FSSMeter(episodes.meta.get("classes") or episodes.class_ids)

    def score(group: TaskGroup, preds):
        pred, q_label = preds[0], group.labels[0]
        base_meter.update(pred, q_label)
        fg_true = (q_label == nb + 1).long().masked_fill(q_label == IGNORE_INDEX, IGNORE_INDEX)
        novel_meter.update((pred == nb + 1).long(), fg_true, group.tasks[0].meta["class_id"])

    bar = progress_bar(total=len(episodes), desc=f"{method.name} episodes", progress=progress)
    groups = episode_gfss_task_groups(method, episodes, items, caches, class_map, support_items, s_caches,
                                      device=device)
    kept = evaluate_tasks(method, groups, score, keep_predictions=keep_predictions, bar=bar)
    scores = {**gfss_summary(base_meter.scores()["base_miou"], novel_meter.miou()), "FB-IoU": novel_meter.fb_iou()}
    per_class = {items.dataset.class_name(c): v for c, v in novel_meter.per_class_iou().items()}
    return Result(method=method.name, kind="episode-gfss", fold=int(episodes.meta.get("fold", -1)),
                  shots=episodes[0].shots, scores=scores, per_class=per_class, count=len(episodes), predictions=kept)


def _require(method: Method, space: LabelSpace) -> None:
    """Say clearly, before any work, that ``method`` does not handle tasks of ``space``."""
    if not method.supports(space):
        kind = "fss" if space.num_base == 0 else "gfss"
        most = "" if method.max_novel is None else f" and max_novel={method.max_novel}"
        raise UnsupportedTaskError(f"{method.name} declares label_spaces={method.label_spaces}{most}; it cannot be "
                                   f"evaluated on {kind} tasks with B={space.num_base}, N={space.num_novel}. "
                                   f"Methods that can: {list_methods(kind)}")
