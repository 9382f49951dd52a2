"""GFSS evaluation: fit a method on a run's support set, segment every query into all classes, score base/novel mIoU.

The protocol is in :mod:`fss_lab.data.gfss`; the scores in :class:`fss_lab.metrics.GFSSMeter` (per-class I and U
summed over all queries of a run, then divided; fss-methods.md section 3).
"""
from __future__ import annotations

import inspect

import math
from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..checks import check_finite
from ..data.base import IGNORE_INDEX

from ..data.gfss import GFSSRun, GFSSRuns, gfss_query_labels, gfss_support_labels
from ..metrics import GFSSMeter

SCORE_KEYS = ("base", "novel", "mean", "harmonic", "base_miou", "base_miou_with_bg", "novel_miou", "all_miou",
              "all_miou_with_bg")


@dataclass
class GFSSResult:
    """Scores of one method on one GFSS run (fractions in [0, 1]).

    Attributes:
        method / fold / shots / run / seed / protocol: what was run.
        scores: ``base`` (DIaM: mean IoU of the base classes, background excluded; GFS-Seg: background included),
            ``novel``, ``mean = (base + novel) / 2``, ``harmonic = 2 base novel / (base + novel)``, and the raw
            :class:`GFSSMeter` scores ``base_miou``, ``base_miou_with_bg``, ``novel_miou``, ``all_miou``,
            ``all_miou_with_bg``.
        per_class: ``{class name: IoU}`` in GFSS order (background, base..., novel...).
        n_queries: queries scored.
        predictions: ``{query dataset index: prediction [H, W] uint8 GFSS labels}`` for the first
            ``keep_predictions`` queries.
    """

    method: str
    fold: int
    shots: int
    run: int
    seed: int
    protocol: str
    scores: dict[str, float]
    per_class: dict[str, float]
    n_queries: int
    predictions: dict[int, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> dict:
        """One tidy row: method, fold, shots, run, seed, protocol, queries and every score in :data:`SCORE_KEYS`."""
        return {"method": self.method, "fold": self.fold, "shots": self.shots, "run": self.run, "seed": self.seed,
                "protocol": self.protocol, "queries": self.n_queries, **{k: self.scores[k] for k in SCORE_KEYS}}

    def per_class_frame(self) -> pd.DataFrame:
        """Tidy per-class table: class, IoU, method, fold, shots, run."""
        return pd.DataFrame([{"class": c, "IoU": v, "method": self.method, "fold": self.fold, "shots": self.shots,
                              "run": self.run} for c, v in self.per_class.items()])


def _scores(meter: GFSSMeter, protocol: str) -> dict[str, float]:
    raw = meter.scores()
    base = raw["base_miou_with_bg"] if protocol == "gfs-seg" else raw["base_miou"]
    novel = raw["novel_miou"]
    if math.isnan(base + novel):
        harmonic = math.nan
    else:
        harmonic = 2 * base * novel / (base + novel) if base + novel > 0 else 0.0
    return {"base": base, "novel": novel, "mean": (base + novel) / 2, "harmonic": harmonic,
            **{k: raw[k] for k in SCORE_KEYS[4:]}}


def evaluate_gfss(
    method,
    run: GFSSRun,
    features,
    items,
    *,
    support_features=None,
    support_items=None,
    base_pixels: str | None = None,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    keep_predictions: int = 0,
    class_names: list[str] | None = None,
    progress: bool = False,
) -> GFSSResult:
    """Fit ``method`` on ``run``'s support set and score its predictions on every query of the run.

    Inductive methods are fit once, then predict the queries in batches. Transductive ones
    (``method.transductive``, e.g. DIaM) are fit again for every query batch with ``query_features=`` that batch
    (DIaM adapts per query: with ``batch_size=1`` each query gets its own fit), then predict the same batch.
    ``fit`` runs with gradients enabled (fine-tuning and DIaM optimise); ``predict`` runs under ``no_grad``.

    Args:
        method: a :class:`~fss_lab.methods.base.GFSSMethod`: ``fit(support_features [S, D, h, w],
            support_labels [S, H, W], query_features=None)``, ``predict(query_features [Q, D, h, w], (H, W))`` ->
            logits ``[Q, 1 + B + N, H, W]``.
        run: one run of :func:`fss_lab.data.gfss.gfss_runs`.
        features: query features: a :class:`~fss_lab.models.features.FeatureCache` or anything with
            ``get(indices) -> [N, D, h, w]`` (``precompute(indices)`` is used when present). Its features must be
            those the method reads (``method.feature_source``: bottleneck or backbone).
        items: the query dataset through the transform (:class:`~fss_lab.data.episodic.TransformedItems`).
        support_features / support_items: the same for the support dataset (default: the query ones; the GFS-Seg
            protocol draws supports from the training split).
        base_pixels: support labels' base pixels, ``"background"`` (DIaM) or ``"keep"`` (fine-tuning); ``None``
            takes ``method.support_base_pixels`` (default ``"background"``).
        batch_size: queries per ``predict`` (and per transductive ``fit``).
        device: where the method runs.
        keep_predictions: keep the predictions of the first this-many queries (uint8, for figures and widgets).
        class_names: names in GFSS order for ``per_class`` (default: ``run.class_map.class_names(dataset)``).
        progress: show a ``tqdm.auto`` bar (``TQDM_DISABLE=1`` silences it).

    Returns:
        :class:`GFSSResult`; the base score counts the background only under ``protocol="gfs-seg"``.

    Raises:
        ValueError: ``batch_size < 1``, logits of the wrong shape (names the expected one), or labels out of range
            (from :class:`GFSSMeter`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    support_features = features if support_features is None else support_features
    support_items = items if support_items is None else support_items
    base_pixels = base_pixels or getattr(method, "support_base_pixels", "background")
    cmap = run.class_map
    names = class_names or cmap.class_names(items.dataset)
    meter = GFSSMeter(cmap.num_classes, cmap.base_ids, cmap.novel_ids)
    s_labels = gfss_support_labels(support_items, run, base_pixels=base_pixels).to(device)
    s_feats = support_features.get(list(run.support)).to(device)
    if hasattr(features, "precompute"):
        features.precompute(list(run.query))
    transductive = bool(getattr(method, "transductive", False))
    if not transductive:
        method.fit(s_feats, s_labels)
    kept: dict[int, torch.Tensor] = {}
    bar = tqdm(total=len(run.query), desc=f"{getattr(method, 'name', 'method')} run {run.run}", disable=not progress)
    for start in range(0, len(run.query), batch_size):
        idx = list(run.query[start : start + batch_size])
        q_feats = features.get(idx).to(device)
        q_labels = gfss_query_labels(items, idx, cmap)
        if transductive:
            method.fit(s_feats, s_labels, query_features=q_feats, **_query_extras(method, q_labels))
        with torch.no_grad():
            logits = method.predict(q_feats, tuple(q_labels.shape[-2:]))
        want = (len(idx), cmap.num_classes, *q_labels.shape[-2:])
        if tuple(logits.shape) != want:
            raise ValueError(f"{type(method).__name__}.predict returned logits {tuple(logits.shape)}; expected "
                             f"[Q, 1 + B + N, H, W] = {list(want)}")
        check_finite(logits, "logits", method=getattr(method, "name", type(method).__name__), run=run.run,
                     where=lambda k: f"query image {items.dataset.image_id(idx[k])}")
        pred = logits.max(1).indices.cpu()  # much faster than argmax on CPU
        meter.update(pred, q_labels)
        for j, i in enumerate(idx):
            if len(kept) < keep_predictions:
                kept[i] = pred[j].to(torch.uint8)
        bar.update(len(idx))
    bar.close()
    return GFSSResult(method=getattr(method, "name", type(method).__name__), fold=run.fold, shots=run.shots,
                      run=run.run, seed=run.seed, protocol=run.protocol, scores=_scores(meter, run.protocol),
                      per_class={names[c]: v for c, v in meter.per_class_iou().items()}, n_queries=len(run.query),
                      predictions=kept)


def _query_extras(method, q_labels: torch.Tensor) -> dict:
    """What a transductive method's ``fit`` accepts beyond the features: ``query_valid`` (official DIaM / RePRI
    leave ignore pixels, i.e. padding and void, out of the query terms) and ``query_labels`` (used only by
    oracle-style priors, which are upper bounds by design)."""
    params = inspect.signature(method.fit).parameters
    extras = {}
    if "query_valid" in params:
        extras["query_valid"] = q_labels != IGNORE_INDEX
    if "query_labels" in params and getattr(method, "prior_name", None) in ("imglvl", "oracle"):
        extras["query_labels"] = q_labels
    return extras


def evaluate_gfss_runs(method, runs: GFSSRuns, features, items, *, average: bool = True, **kwargs) -> pd.DataFrame:
    """:func:`evaluate_gfss` on every run; a tidy DataFrame of the scores.

    Args:
        method / features / items / kwargs: as for :func:`evaluate_gfss` (the method is re-fit on each run).
        runs: from :func:`fss_lab.data.gfss.gfss_runs`.
        average: ``True`` -> one row per (method, fold, shots, protocol) with each score averaged over the runs
            (DIaM reports the mean of 5 runs), its standard deviation in ``<score>_std`` and ``runs``;
            ``False`` -> one row per run (:meth:`GFSSResult.summary`).

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
