"""Generalized FSS experiments: a base model, its cached features, seeded runs, and methods scored on the same runs.

All methods see the same queries and the same novel supports of each run. Methods that train on "few shots of both
novel and base classes" (fine-tuning, seed 000: ``support_base_pixels == "keep"``) also get the run's K base shots
per base class; the others (DIaM, the prototype baseline) get the run without them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from ..data import GFSS_DEFAULTS, EpisodeList, TransformedItems, create_dataset, sample_fss_episodes
from ..data.gfss import GFSSRun, GFSSRuns, gfss_runs
from ..engine.device import resolve_device
from ..engine.evaluate import (Result, average_runs, evaluate_episode_gfss, evaluate_fss, evaluate_gfss,
                               gfss_task_groups, level_caches)
from ..methods.task import Task
from ..methods.base import Method
from ..models.features import FeatureCache, ModelFeatures
from .base_model import BaseModel, BaseModelConfig, get_base_model
from .fss import as_method


@dataclass
class GFSSConfig:
    """One GFSS experiment (DIaM protocol by default).

    Attributes:
        dataset / data_root / fold: the data and the fold whose classes are novel.
        n_runs: seeded runs per shot count (DIaM: 5); ``seed``: the protocol seed (DIaM: 2023).
        protocol: ``"diam"`` (supports from val) or ``"gfs-seg"`` (supports from train, background in base mIoU).
        base_shots: draw K base-class shots too (for fine-tuning); the shot count of each run.
        max_queries: cap the queries per run (``None``: all; QUICK runs use fewer).
        min_area: the support area rule (see :func:`fss_lab.data.gfss.gfss_runs`; ``"dataset"`` on the generated
            data, whose objects are smaller than DIaM's 9.4%-of-the-image rule).
        support_split: ``None`` (the protocol's default) or ``"train"`` to draw supports from the training split
            (CamVid: its val frames are one clip, so supports must come from the other videos).
        cross_group / only_one_novel: see :func:`fss_lab.data.gfss.gfss_runs` (CamVid needs ``True`` / ``False``).
        base: how to obtain the base model (default: the quick recipe of this dataset and fold).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    dataset: str = "synthetic"
    data_root: str | None = None
    fold: int = 0
    n_runs: int = 2
    seed: int = 2023
    protocol: str = "diam"
    base_shots: bool = True
    max_queries: int | None = None
    min_area: int | str | None = None
    support_split: str | None = None
    cross_group: bool = False
    only_one_novel: bool = True
    base: BaseModelConfig | None = None
    device: str = "auto"

    def base_config(self) -> BaseModelConfig:
        """The base-model recipe (the given one, or the quick one of this dataset and fold)."""
        return self.base or BaseModelConfig(self.dataset, self.data_root, self.fold, device=self.device)


def gfss_config_for(dataset: str, data_root: str | None, fold: int, **kwargs) -> GFSSConfig:
    """The :class:`GFSSConfig` a notebook wants for ``dataset``: the dataset's GFSS settings
    (:data:`fss_lab.data.defaults.GFSS_DEFAULTS`, e.g. CamVid's cross-video supports) under ``kwargs``, which
    override any field."""
    return GFSSConfig(dataset, data_root, fold, **{**GFSS_DEFAULTS.get(dataset, {}), **kwargs})


class GFSSExperiment:
    """A fold's base model, its bottleneck and backbone feature caches, and seeded GFSS runs.

    Args:
        config: the experiment.
        base: an already loaded :class:`BaseModel` (default: :func:`get_base_model` of ``config.base_config()``).
        progress: progress bars while training / extracting.
    """

    def __init__(self, config: GFSSConfig, base: BaseModel | None = None, progress: bool = True):
        self.config = cfg = config
        self.device = resolve_device(cfg.device)
        self.base = base or get_base_model(cfg.base_config(), progress=progress)
        self.model, self.class_map = self.base.model.to(self.device), self.base.class_map
        self.query_dataset = create_dataset(cfg.dataset, cfg.data_root, split="val")
        self.support_dataset = (create_dataset(cfg.dataset, cfg.data_root, split="train")
                                if cfg.protocol == "gfs-seg" or cfg.support_split == "train" else self.query_dataset)
        self.items = TransformedItems(self.query_dataset, self.base.transform)
        self.support_items = (self.items if self.support_dataset is self.query_dataset
                              else TransformedItems(self.support_dataset, self.base.transform))
        self.caches = {s: FeatureCache(ModelFeatures(self.model, s), self.items.image, progress=progress,
                                       image_id=self.query_dataset.image_id) for s in ("bottleneck", "backbone")}
        self.support_caches = (self.caches if self.support_items is self.items else
                               {s: FeatureCache(ModelFeatures(self.model, s), self.support_items.image,
                                                image_id=self.support_dataset.image_id)
                                for s in ("bottleneck", "backbone")})
        self._runs: dict[int, GFSSRuns] = {}

    @property
    def class_names(self) -> list[str]:
        """Names in GFSS order: background, base classes, novel classes."""
        return self.class_map.class_names(self.query_dataset)

    def runs(self, shots: int) -> GFSSRuns:
        """The seeded runs for ``shots`` (sampled once, then reused by every method)."""
        if shots not in self._runs:
            cfg = self.config
            self._runs[shots] = gfss_runs(
                self.query_dataset, cfg.fold, shots, cfg.n_runs, cfg.seed, protocol=cfg.protocol,
                support_dataset=None if self.support_dataset is self.query_dataset else self.support_dataset,
                min_area=cfg.min_area, base_shots=shots if cfg.base_shots else 0, max_queries=cfg.max_queries,
                cross_group=cfg.cross_group, only_one_novel=cfg.only_one_novel)
        return self._runs[shots]

    def fss_episodes(self, shots: int, n_episodes: int, seed: int = 0) -> EpisodeList:
        """1-way FSS episodes of the fold's novel classes on this experiment's data (for FSS methods on the same
        base model). With ``cross_group`` (CamVid) the supports are the support split's frames of other groups
        (videos); otherwise supports and queries both come from the query split (PFENet protocol). Score them with
        the items and cache of :meth:`fss_support`.

        Raises:
            DatasetError: as :func:`~fss_lab.data.sample_fss_episodes` (no novel class has enough images)."""
        cross = self.config.cross_group
        return sample_fss_episodes(self.query_dataset, self.config.fold, shots, n_episodes, seed=seed,
                                   support_dataset=self.support_dataset if cross else None, cross_group=cross)

    def fss_support(self, source: str = "bottleneck") -> tuple[TransformedItems, FeatureCache]:
        """The items and feature cache (``"bottleneck"`` or ``"backbone"``) that :meth:`fss_episodes`' supports
        index into."""
        if self.config.cross_group:
            return self.support_items, self.support_caches[source]
        return self.items, self.caches[source]

    def evaluate_run(self, method: Method | Callable[[], Method], run: GFSSRun, **kwargs) -> Result:
        """Fit a method on ``run``'s support set and score it on the run's queries (each method reads the feature
        level it declares; base-class shots only for methods that keep base pixels).

        Args:
            method: a GFSS :class:`~fss_lab.methods.base.Method` or a zero-argument factory.
            run: one of :meth:`runs`.
            kwargs: passed to :func:`~fss_lab.engine.evaluate.evaluate_gfss` (``batch_size``, ``keep_predictions``).
        """
        return evaluate_gfss(as_method(method), run, self.caches, self.items, support_features=self.support_caches,
                             support_items=self.support_items, device=self.device, class_names=self.class_names,
                             **kwargs)

    def task(self, method: Method, run: GFSSRun, queries: list[int] | None = None, *, labels: bool = False) -> Task:
        """The :class:`~fss_lab.methods.task.Task` the evaluator builds for ``method`` on ``run`` (to look inside
        one fit, e.g. DIaM's snapshots), for the query dataset indices ``queries`` (default: all of the run's).

        Args:
            labels: attach ``query_labels`` even when the method does not read them (for figures).
        """
        if queries is not None:
            pos = [list(run.query).index(int(i)) for i in queries]
            run = dataclasses.replace(run, query=tuple(run.query[p] for p in pos),
                                      query_ids=tuple(run.query_ids[p] for p in pos))
        caches = level_caches(self.caches, method)
        s_caches = level_caches(self.support_caches, method)
        group = next(gfss_task_groups(method, run, self.items, self.support_items, caches, s_caches,
                                      device=self.device, batch_size=len(run.query)))
        task = group.tasks[0]
        if labels and task.query_labels is None:
            task.query_labels = group.labels[0].to(self.device)
        return task

    def evaluate(self, method: Method | Callable[[], Method], shots: int, label: str | None = None,
                 average: bool = True, **kwargs) -> pd.DataFrame:
        """Score a method on every GFSS run of ``shots`` (the same runs for every method).

        Args:
            method: a GFSS method (re-fit on each run) or a zero-argument factory (called once).
            shots: K.
            label: the name in the ``method`` column (default: the method's ``name``).
            average: one row averaged over runs (mean, ``_std``, ``runs``) or one row per run.
            kwargs: passed to :func:`~fss_lab.engine.evaluate.evaluate_gfss` (e.g. ``batch_size``).

        Returns:
            Tidy ``pandas.DataFrame`` with base, novel, mean and harmonic scores (fractions in [0, 1]).
        """
        m = as_method(method)
        rows = []
        for run in self.runs(shots):
            summary = self.evaluate_run(m, run, **kwargs).summary()
            if label:
                summary["method"] = label
            rows.append(summary)
        frame = pd.DataFrame(rows)
        return average_runs(frame) if average else frame

    def evaluate_episodes(self, method: Method | Callable[[], Method], episodes: EpisodeList, *,
                          scoring: str = "fss", label: str | None = None, keep_predictions: int = 0) -> Result:
        """Score a method on 1-way episodes of this experiment's data (:meth:`fss_episodes`), on the base model's
        features: ``scoring="fss"`` (FSS mIoU / FB-IoU, label space bg / fg) or ``"gfss"`` (seed 002's
        ``(B + 2)``-way scoring: base and novel mIoU, :func:`~fss_lab.engine.evaluate.evaluate_episode_gfss`).

        Raises:
            ValueError: an unknown ``scoring``.
        """
        m = as_method(method)
        s_items, s_caches = (self.support_items, self.support_caches) if self.config.cross_group else \
            (self.items, self.caches)
        if scoring == "fss":
            res = evaluate_fss(m, episodes, self.items, s_items, self.caches, s_caches, device=self.device,
                               keep_predictions=keep_predictions, progress=False)
        elif scoring == "gfss":
            res = evaluate_episode_gfss(m, episodes, self.items, self.caches, self.class_map, support_items=s_items,
                                        support_features=s_caches, device=self.device,
                                        keep_predictions=keep_predictions)
        else:
            raise ValueError(f"scoring must be 'fss' or 'gfss', got {scoring!r}")
        if label:
            res.method = label
        return res
