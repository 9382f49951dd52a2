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

from ..data import EpisodeList, TransformedItems, create_dataset, sample_fss_episodes
from ..data.gfss import GFSSRun, GFSSRuns, gfss_runs
from ..engine.device import resolve_device
from ..engine.evaluate_gfss import GFSSResult, average_runs, evaluate_gfss
from ..methods.base import GFSSMethod
from ..models.features import FeatureCache
from .base_model import BaseModel, BaseModelConfig, ModelFeatures, get_base_model


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
    """The :class:`GFSSConfig` a notebook wants for ``dataset``: the generated data use their own area rule; CamVid
    draws supports from the other videos' training frames (cross-video), allows several novel classes per
    support image, and draws no separate base shots: every street frame holds some novel class, so no image
    qualifies as a base-only shot, while the novel supports (fully labelled for fine-tuning) already show every
    base class. ``kwargs`` override any field."""
    if dataset == "synthetic":
        kwargs.setdefault("min_area", "dataset")
    if dataset == "camvid":
        kwargs = {"min_area": "dataset", "support_split": "train", "cross_group": True, "only_one_novel": False,
                  "base_shots": False, **kwargs}
    return GFSSConfig(dataset, data_root, fold, **kwargs)


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
        self.caches = {s: FeatureCache(ModelFeatures(self.model, s), self.items.image, progress=progress)
                       for s in ("bottleneck", "backbone")}
        self.support_caches = (self.caches if self.support_items is self.items else
                               {s: FeatureCache(ModelFeatures(self.model, s), self.support_items.image)
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

    @staticmethod
    def novel_only(run: GFSSRun) -> GFSSRun:
        """The run without its base-class shots (what DIaM and the prototype baseline see)."""
        n = len(run.novel_classes) * run.shots
        return dataclasses.replace(run, support=run.support[:n], support_classes=run.support_classes[:n],
                                   support_ids=run.support_ids[:n], base_shots=0)

    def evaluate_run(self, method: GFSSMethod, run: GFSSRun, **kwargs) -> GFSSResult:
        """Fit ``method`` on ``run``'s support set and score it on the run's queries."""
        source = getattr(method, "feature_source", "bottleneck")
        if getattr(method, "support_base_pixels", "background") != "keep":
            run = self.novel_only(run)
        return evaluate_gfss(method, run, self.caches[source], self.items,
                             support_features=self.support_caches[source], support_items=self.support_items,
                             device=self.device, class_names=self.class_names, **kwargs)

    def evaluate(self, make_method: Callable[[int], GFSSMethod], shots: int, label: str | None = None,
                 average: bool = True, **kwargs) -> pd.DataFrame:
        """Score a method on every run of ``shots``.

        Args:
            make_method: ``shots -> method`` (a fresh method per call; it is re-fit on each run).
            shots: K.
            label: the name in the ``method`` column (default: the method's ``name``).
            average: one row averaged over runs (mean, ``_std``, ``runs``) or one row per run.
            kwargs: passed to :func:`~fss_lab.engine.evaluate_gfss.evaluate_gfss` (e.g. ``batch_size``).

        Returns:
            Tidy ``pandas.DataFrame`` with base, novel, mean and harmonic scores (fractions in [0, 1]).
        """
        method = make_method(shots)
        rows = []
        for run in self.runs(shots):
            summary = self.evaluate_run(method, run, **kwargs).summary()
            if label:
                summary["method"] = label
            rows.append(summary)
        frame = pd.DataFrame(rows)
        return average_runs(frame) if average else frame
