"""Run one FSS configuration end to end -> tidy results. This is what notebooks and papermill call.

An :class:`FSSExperiment` owns the datasets, the transform tied to the backbone's weights, the frozen feature
extractor and one feature cache per (dataset split, transform): every method and shot count it runs reuses the same
features, and every method sees the same seeded episodes.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch

from ..data import (PROTOCOLS, EpisodeList, PairTransform, TransformedItems, create_dataset, dataset_defaults,
                    sample_fss_episodes)
from ..data.episode import Episode
from ..data.episodic import EpisodeDataset
from ..engine.device import resolve_device
from ..engine.evaluate import Result, evaluate_fss
from ..methods.base import Method
from ..models.backbones import Backbone, create_backbone
from ..models.features import FeatureCache, FeatureExtractor
from ..models.proposal_features import PROPOSAL_LEVEL, ProposalExtractor

@dataclass
class FSSConfig:
    """One FSS experiment. ``None`` fields take the dataset's defaults (:data:`fss_lab.data.DATASET_DEFAULTS`).

    Attributes:
        dataset / data_root: see :func:`fss_lab.data.create_dataset`.
        fold: the fold whose novel classes are tested.
        shots: K values to run.
        n_episodes: episodes per shot count (1,000 in the BAM/RePRI protocol).
        image_size: ``(H, W)`` pixels of the network input and of the scored labels.
        transform_mode: ``"resize"`` or ``"long_side_pad"``.
        backbone / levels: registered backbone and its feature levels.
        seed: episode-sampling seed.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        protocol: ``"same_split"`` or ``"cross_group"``.
        min_area: PFENet small-object rule in label pixels (default: the dataset's).
        dataset_kwargs: extra arguments for the dataset class.
    """

    dataset: str = "synthetic"
    data_root: str | None = None
    fold: int = 0
    shots: tuple[int, ...] = (1, 5)
    n_episodes: int = 200
    image_size: tuple[int, int] | None = None
    transform_mode: str | None = None
    backbone: str = "efficientnet_lite0"
    levels: tuple[str, ...] = ("s16_expanded",)
    seed: int = 0
    device: str = "auto"
    protocol: str | None = None
    min_area: int | None = None
    dataset_kwargs: dict = field(default_factory=dict)

    def resolved(self) -> "FSSConfig":
        """A copy with the dataset defaults filled in; ``ValueError`` for an unknown protocol."""
        defaults = dataset_defaults(self.dataset)
        out = dataclasses.replace(
            self,
            image_size=tuple(self.image_size or defaults["image_size"]),
            transform_mode=self.transform_mode or defaults["transform_mode"],
            protocol=self.protocol or defaults["protocol"],
            shots=tuple(self.shots),
            levels=tuple(self.levels),
        )
        if out.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {out.protocol!r}")
        return out


class _LevelSharing:
    """One backbone pass for every level of one item set: the first level cache that meets a batch of images
    extracts all the set's registered levels at once and keeps the others until their caches ask for the same
    batch (caches of one set precompute the same indices in the same batches; a batch is recognised by a hash of
    its pixels). Features are identical to separate passes (the same modules on the same images); unclaimed
    features beyond ``max_bytes`` are dropped, oldest first (their cache then runs its own pass)."""

    def __init__(self, backbone: torch.nn.Module, device, max_bytes: int = 128 * 2**20):
        self.backbone, self.device, self.max_bytes = backbone, device, int(max_bytes)
        self.levels: list[str] = []
        self._pending: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def extractor(self, level: str) -> FeatureExtractor:
        if level not in self.levels:
            self.levels.append(level)
        return _SharedLevelExtractor(self, level)

    def features(self, level: str, images: torch.Tensor) -> torch.Tensor:
        key = hashlib.blake2b(images.detach().contiguous().cpu().numpy().tobytes(), digest_size=16).hexdigest()
        kept = self._pending.get(key)
        if kept is not None and level in kept:
            out = kept.pop(level)
            if not kept:
                del self._pending[key]
            return out
        levels = [lv for lv in self.levels if lv == level or kept is None or lv not in kept]
        with torch.no_grad():
            maps = self.backbone(images.to(self.device, torch.float32), levels=tuple(levels))
        others = {lv: maps[lv].float() for lv in levels if lv != level}
        if others:
            self._pending.setdefault(key, {}).update(others)
            size = lambda d: sum(t.numel() * t.element_size() for t in d.values())  # noqa: E731
            while self._pending and sum(size(d) for d in self._pending.values()) > self.max_bytes:
                self._pending.popitem(last=False)
        return maps[level].float()


class _SharedLevelExtractor(FeatureExtractor):
    """A one-level :class:`~fss_lab.models.features.FeatureExtractor` whose backbone passes are shared with the
    other levels of its :class:`_LevelSharing` (same output: float32 ``[B, C, h, w]`` of that level)."""

    def __init__(self, sharing: _LevelSharing, level: str):
        super().__init__(sharing.backbone, levels=(level,), device=sharing.device)
        self._sharing = sharing

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        Backbone.check_input(images, f"FeatureExtractor({self.backbone.name})")
        return self._sharing.features(self.levels[0], images)


class FSSExperiment:
    """Datasets + transform + frozen features + episodes for one :class:`FSSConfig`.

    Args:
        config: the configuration (dataset defaults are filled in).
        backbone: an already built backbone to share between experiments (default: built from the config).
    """

    def __init__(self, config: FSSConfig, backbone: torch.nn.Module | None = None):
        self.config = cfg = config.resolved()
        self.device = resolve_device(cfg.device)
        self.query_dataset = create_dataset(cfg.dataset, cfg.data_root, split="val", **cfg.dataset_kwargs)
        if cfg.protocol == "cross_group":
            self.support_dataset = create_dataset(cfg.dataset, cfg.data_root, split="train", **cfg.dataset_kwargs)
        else:
            self.support_dataset = self.query_dataset
        self.backbone = backbone if backbone is not None else create_backbone(cfg.backbone)
        pre = self.backbone.preprocessing
        self.transform = PairTransform(cfg.image_size, cfg.transform_mode, tuple(pre.mean), tuple(pre.std))
        self.extractor = FeatureExtractor(self.backbone, levels=cfg.levels, device=self.device)
        self.query_items = TransformedItems(self.query_dataset, self.transform)
        self.query_cache = FeatureCache(self.extractor, self.query_items.image, image_id=self.query_dataset.image_id)
        if self.support_dataset is self.query_dataset:
            self.support_items, self.support_cache = self.query_items, self.query_cache
        else:
            self.support_items = TransformedItems(self.support_dataset, self.transform)
            self.support_cache = FeatureCache(self.extractor, self.support_items.image,
                                              image_id=self.support_dataset.image_id)
        self._episodes: dict[int, EpisodeList] = {}
        self._level_caches: dict[tuple[str, str], FeatureCache] = {}
        self._sharing: dict[str, _LevelSharing] = {}  # one backbone pass for all levels of an item set
        self._train_items: TransformedItems | None = None
        #: ``{level name: images -> [B, N, h, w] proposals}`` for levels named ``"proposals..."`` (default: SLIC);
        #: any other name registered here is a feature source too (``images -> [B, C, h, w]``, e.g. a POS's
        #: context features, :class:`~fss_lab.models.mmformer.pos_training.POSContextExtractor`).
        self.proposal_sources: dict[str, torch.nn.Module] = {}

    def _cache(self, role: str, level: str, items: TransformedItems) -> FeatureCache:
        key = (role, level)
        if key not in self._level_caches:
            if level in self.proposal_sources and not level.startswith(PROPOSAL_LEVEL):
                extractor = self.proposal_sources[level]          # another registered feature source
            elif level.startswith(PROPOSAL_LEVEL):
                if level != PROPOSAL_LEVEL and level not in self.proposal_sources:
                    raise KeyError(f"no proposal source for the level {level!r}: register one first, e.g. "
                                   f"exp.proposal_sources[{level!r}] = ProposalExtractor(num_proposals=50) or a "
                                   f"POSProposalExtractor; registered: {sorted(self.proposal_sources)}")
                extractor = self.proposal_sources.get(level) or ProposalExtractor()
            else:
                sharing = self._sharing.setdefault(items.key, _LevelSharing(self.backbone, self.device))
                extractor = sharing.extractor(level)
            self._level_caches[key] = FeatureCache(extractor, items.image, image_id=items.dataset.image_id,
                                                   key=f"{items.key}/{self.config.backbone}:{level}")
        return self._level_caches[key]

    def level_caches(self, levels: Sequence[str]) -> tuple[dict[str, FeatureCache], dict[str, FeatureCache]]:
        """One cache per level (query split, support split) for multi-level methods (PFENet-style, MM-Former),
        sharing the backbone; a level whose name starts with ``"proposals"`` gives the proposals of
        ``self.proposal_sources[level]`` (register a source there before the first call, e.g. a trained POS's
        :class:`~fss_lab.models.mmformer.pos_training.POSProposalExtractor`), by default SLIC
        (:class:`~fss_lab.models.proposal_features.ProposalExtractor`). Built once per level, then reused; the
        backbone levels of one item set share their backbone passes (each image runs through the backbone once for
        all of them, with the same features as separate passes).

        Returns:
            ``({level: query cache}, {level: support cache})`` (the same dict twice for same-split protocols).

        Raises:
            KeyError: a level the backbone does not have (lists the valid ones).
        """
        q = {lv: self._cache("query", lv, self.query_items) for lv in levels}
        if self.support_dataset is self.query_dataset:
            return q, q
        return q, {lv: self._cache("support", lv, self.support_items) for lv in levels}

    def train_split(self, levels: Sequence[str]) -> tuple[TransformedItems, dict[str, FeatureCache]]:
        """The training split through the experiment's transform and one cache per level, for episodic
        meta-training on base classes (:func:`fss_lab.engine.episodic.train_episodic`). Where the supports already
        come from the training split (``cross_group``: CamVid), these are the support items and caches, so each
        training image's features are extracted once."""
        if self._train_items is None:
            if self.support_dataset.split == "train":  # cross-group supports: the same items and features
                self._train_items = self.support_items
            else:
                ds = create_dataset(self.config.dataset, self.config.data_root, split="train",
                                    **self.config.dataset_kwargs)
                self._train_items = TransformedItems(ds, self.transform)
        role = "support" if self._train_items is self.support_items else "train"
        return self._train_items, {lv: self._cache(role, lv, self._train_items) for lv in levels}

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.query_dataset.class_names

    def episodes(self, shots: int) -> EpisodeList:
        """The seeded episode list for ``shots`` (sampled once, then reused)."""
        if shots not in self._episodes:
            cfg = self.config
            self._episodes[shots] = sample_fss_episodes(
                self.query_dataset,
                cfg.fold,
                shots,
                cfg.n_episodes,
                seed=cfg.seed,
                support_dataset=self.support_dataset,
                min_area=cfg.min_area,
                cross_group=cfg.protocol == "cross_group",
            )
        return self._episodes[shots]

    def episode(self, n: int, shots: int) -> Episode:
        """Episode ``n`` of the ``shots``-shot list as tensors (for figures)."""
        return EpisodeDataset(self.episodes(shots), self.query_items, self.support_items)[n]

    def evaluate(self, method: Method | Callable[[], Method], shots: int, *, label: str | None = None,
                 keep_predictions: int = 0, progress: bool = True) -> Result:
        """Evaluate a method (or a zero-argument factory) on the ``shots``-shot episodes, features from the shared
        caches (the level is named after the extractor's first level; a method whose ``feature_levels`` name other
        levels gets one cache per level, :meth:`level_caches`).

        Args:
            method: a :class:`~fss_lab.methods.base.Method` handling 1-way tasks, or ``() -> Method``.
            shots: K. label: the ``method`` name in the result (default: the method's ``name``).
            keep_predictions / progress: as :func:`~fss_lab.engine.evaluate.evaluate_fss`.

        Returns:
            :class:`~fss_lab.engine.evaluate.Result` of kind ``"fss"``.
        """
        m = as_method(method)
        level = self.config.levels[0]
        wanted = tuple(m.feature_levels)
        if wanted and set(wanted) != {level}:  # a multi-level method: one cache per level
            q_caches, s_caches = self.level_caches(wanted)
        else:
            q_caches, s_caches = {level: self.query_cache}, {level: self.support_cache}
        res = evaluate_fss(m, self.episodes(shots), self.query_items, self.support_items, q_caches, s_caches,
                           device=self.device, keep_predictions=keep_predictions, progress=progress)
        if label:
            res.method = label
        return res


def as_method(method: Method | Callable[[], Method]) -> Method:
    """A method instance from an instance or a zero-argument factory.

    Raises:
        TypeError: neither (names what was given).
    """
    if isinstance(method, Method):
        return method
    if callable(method):
        out = method()
        if isinstance(out, Method):
            return out
        raise TypeError(f"the method factory returned {type(out).__name__}, not a fss_lab Method")
    raise TypeError(f"expected a Method or a factory () -> Method, got {type(method).__name__}")


def run_fss(
    config: FSSConfig,
    methods: Mapping[str, Callable[[], Method]],
    shots: Sequence[int] | None = None,
    backbone: torch.nn.Module | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, int], Result]]:
    """Run several methods and shot counts on one configuration.

    Args:
        config: the experiment.
        methods: ``{label: factory}``; a fresh method is built for each shot count.
        shots: K values (default ``config.shots``).

    Returns:
        ``(summary, per_class, results)``: a tidy summary (one row per method and K, with mIoU and FB-IoU), a tidy
        per-class table, and the :class:`~fss_lab.engine.evaluate.Result` objects keyed by ``(label, K)``.
    """
    exp = FSSExperiment(config, backbone=backbone)
    results = {}
    for k in shots or exp.config.shots:
        for label, make in methods.items():
            results[(label, k)] = exp.evaluate(make, k, label=label, progress=progress)
    summary = pd.DataFrame([r.summary() for r in results.values()])
    per_class = pd.concat([r.per_class_frame() for r in results.values()], ignore_index=True)
    return summary, per_class, results
