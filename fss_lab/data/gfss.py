"""Generalized FSS protocol: seeded support sets and fully labelled queries (DIaM, with the GFS-Seg variant).

DIaM protocol (Hajimiri et al., CVPR 2023; fss-methods.md section 3.1), ``protocol="diam"``:

1. One support set per run. For each novel class (sorted), K images from the **val** list that hold the class with
   at least ``16 * 32 * 32`` pixels at label resolution and **no other novel class** (any pixel of another novel
   class disqualifies an image; ``only_one_novel``). With fewer than K candidates the found ones are repeated
   (drawn with replacement, as DIaM does) and a ``UserWarning`` is issued; with none, :class:`DatasetError`.
2. Queries: every remaining val image with at least one labelled (base or novel) class, labelled with all classes
   at once (:meth:`GFSSClassMap.gfss_label`); supports are removed from the queries.
3. Several runs (5, seed 2023), each with a new support set. Run ``r`` draws from
   ``numpy.random.default_rng([seed, r])``, so run ``r`` is the same whatever ``n_runs`` is.

The area threshold: 16 * 32 * 32 = 16,384 px was set for PASCAL images (about 500 x 375, resized to 417 x 417).
For images smaller than 417 x 417 the same rule would exclude almost everything, so by default it is scaled by the
image's area relative to 417 x 417 (never up): ``16384 * min(1, H * W / 417**2)``, i.e. the object must cover about
9.4% of the image. A 192 x 192 image needs 3,473 px; PASCAL and CamVid (480 x 360) images keep (about) 16,384 px.
Pass ``min_area=<pixels>`` for an absolute threshold without scaling, or ``min_area="dataset"`` for the dataset's
own small-object rule (``default_min_area``; needed on the generated data, where objects cover 2.5-15% of the image).

GFS-Seg variant (Tian et al., CVPR 2022; section 3.2), ``protocol="gfs-seg"``: supports come from the **training**
split (``support_dataset``); queries are **all** val images; its base mIoU counts the background
(``GFSSMeter``'s ``base_miou_with_bg``, used by :func:`fss_lab.engine.evaluate_gfss.evaluate_gfss`).

Fine-tuning (Myers-Dean et al. 2021, seed 000) trains on "few shots of both novel and base classes":
``base_shots=K`` also draws K images per base class (holding that class above the threshold and no novel class at
all, so the novel shot count stays exact). Images stay distinct across classes while candidates last, then are
repeated. Under ``protocol="diam"`` the base supports come from the val split and leave the queries (K * B fewer);
``protocol="gfs-seg"`` (supports from the training split, as GFS-Seg and the fine-tuning paper's comparison) keeps
every val image a query. Support labels come in two forms (:func:`gfss_support_labels`):
``base_pixels="background"`` (DIaM: base pixels -> 0) or ``"keep"`` (full GFSS labels).
"""
from __future__ import annotations

import dataclasses

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .base import DatasetError, SegmentationDataset, read_format_json, save_json_atomic
from .class_maps import GFSSClassMap
from .sampler import require_groups

FORMAT = "fss_lab.gfss_runs/1"
PROTOCOLS = ("diam", "gfs-seg")
DIAM_MIN_AREA = 16 * 32 * 32
REFERENCE_SIZE = (417, 417)
BASE_PIXELS = ("background", "keep")
#: Third entry of the seed of the query-subset generator (``max_queries``), apart from the support draw's.
QUERY_SUBSET_STREAM = 1


def scaled_min_area(height: int, width: int, min_area: int = DIAM_MIN_AREA,
                    reference_size: tuple[int, int] = REFERENCE_SIZE) -> int:
    """``min_area * min(1, H * W / (H_ref * W_ref))`` rounded, at least 1: the area rule for an ``H x W`` image.

    Args:
        height, width: image size in pixels (label resolution).
        min_area: threshold defined at ``reference_size`` (DIaM: 16 * 32 * 32 at 417 x 417).

    Returns:
        The threshold in pixels for this image (never larger than ``min_area``).
    """
    ratio = min(1.0, (height * width) / float(reference_size[0] * reference_size[1]))
    return max(1, int(round(min_area * ratio)))


@dataclass(frozen=True)
class GFSSRun:
    """One run of the GFSS protocol: a support set and the queries it is tested on (self-contained).

    Attributes:
        run / seed: run number and the protocol seed (the run's generator is ``default_rng([seed, run])``).
        support: indices into the support dataset, grouped by class (novel classes first, sorted, then base
            classes if ``base_shots``), ``shots`` (or ``base_shots``) per class; repeats possible (see ``repeated``).
        support_classes: the dataset class id each support was drawn for, same length as ``support``.
        query: indices into the query dataset, sorted.
        support_ids / query_ids: the matching image ids (checked on load).
        base_classes / novel_classes / num_dataset_classes: the fold's split (dataset ids).
        fold / shots / base_shots / protocol: what was asked.
        repeated: dataset class ids whose supports had to be repeated (fewer than K candidates).
    """

    run: int
    seed: int
    support: tuple[int, ...]
    support_classes: tuple[int, ...]
    query: tuple[int, ...]
    support_ids: tuple[str, ...]
    query_ids: tuple[str, ...]
    base_classes: tuple[int, ...]
    novel_classes: tuple[int, ...]
    num_dataset_classes: int
    fold: int
    shots: int
    base_shots: int = 0
    protocol: str = "diam"
    repeated: tuple[int, ...] = ()

    @property
    def class_map(self) -> GFSSClassMap:
        """The :class:`GFSSClassMap` of the run's fold (GFSS ids: bg 0, base 1..B, novel B+1..B+N)."""
        return GFSSClassMap(self.base_classes, self.novel_classes, self.num_dataset_classes)

    def novel_only(self) -> "GFSSRun":
        """The run without its base-class shots (what DIaM and the prototype baseline see)."""
        n = len(self.novel_classes) * self.shots
        return dataclasses.replace(self, support=self.support[:n], support_classes=self.support_classes[:n],
                                   support_ids=self.support_ids[:n], base_shots=0)

    @classmethod
    def from_json(cls, d: dict) -> "GFSSRun":
        tuples = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}
        return cls(**{**d, **tuples})


@dataclass
class GFSSRuns:
    """The runs of one protocol call plus the settings that made them; saves to / loads from JSON."""

    runs: list[GFSSRun]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[GFSSRun]:
        return iter(self.runs)

    def __getitem__(self, i: int) -> GFSSRun:
        return self.runs[i]

    def to_json(self) -> dict:
        return {"format": FORMAT, "meta": self.meta, "runs": [asdict(r) for r in self.runs]}

    def save(self, path: str | Path) -> Path:
        """Write the runs as JSON atomically (temporary file + rename); returns the path."""
        return save_json_atomic(self.to_json(), path)

    @classmethod
    def load(cls, path: str | Path, query_dataset: SegmentationDataset | None = None,
             support_dataset: SegmentationDataset | None = None) -> "GFSSRuns":
        """Read runs saved by :meth:`save`; with datasets given, check every saved image id still matches.

        Raises:
            DatasetError: unreadable file, another format, or an id mismatch (the runs were made on other data).
        """
        data = read_format_json(path, FORMAT, "GFSS run file")
        out = cls([GFSSRun.from_json(r) for r in data["runs"]], data.get("meta", {}))
        if query_dataset is not None:
            out.check_matches(query_dataset, support_dataset or query_dataset, source=str(path))
        return out

    def check_matches(self, query_dataset: SegmentationDataset, support_dataset: SegmentationDataset,
                      source: str = "GFSS runs") -> None:
        """Raise :class:`DatasetError` if a saved index no longer names the saved image id."""
        for r in self.runs:
            for ds, idx, ids in ((query_dataset, r.query, r.query_ids), (support_dataset, r.support, r.support_ids)):
                for i, saved in zip(idx, ids):
                    here = ds.image_id(i) if 0 <= i < len(ds) else "<out of range>"
                    if here != saved:
                        raise DatasetError(
                            f"{source}: run {r.run} expects item {i} of {ds.name}/{ds.split} to be {saved!r} but it "
                            f"is {here!r}; the runs were made on other data. Re-sample them with gfss_runs()."
                        )


def gfss_runs(
    dataset: SegmentationDataset,
    fold: int,
    shots: int,
    n_runs: int = 5,
    seed: int = 2023,
    *,
    protocol: str = "diam",
    support_dataset: SegmentationDataset | None = None,
    min_area: int | str | None = None,
    reference_size: tuple[int, int] = REFERENCE_SIZE,
    only_one_novel: bool = True,
    base_shots: int = 0,
    cross_group: bool = False,
    max_queries: int | None = None,
) -> GFSSRuns:
    """Sample ``n_runs`` GFSS runs of ``fold`` (see the module docstring for the rules).

    Args:
        dataset: the query dataset (the val split).
        fold: whose classes are novel.
        shots: K >= 1 support images per novel class.
        n_runs / seed: number of runs; run ``r`` uses ``numpy.random.default_rng([seed, r])`` (DIaM: 5, 2023).
        protocol: ``"diam"`` (supports from ``dataset`` unless ``support_dataset`` is given; queries need a labelled
            class) or ``"gfs-seg"`` (supports from ``support_dataset``, the training split; all val images queried).
        support_dataset: where supports come from (default ``dataset``; required for ``"gfs-seg"``).
        min_area: ``None`` scales DIaM's 16,384 px per image (:func:`scaled_min_area`); an int is an absolute
            threshold in label pixels; ``"dataset"`` takes ``dataset.default_min_area`` (the support dataset's own
            small-object rule, e.g. 2% of the image for the generated data, whose objects rarely reach DIaM's 9.4%).
        reference_size: the image size the default threshold is defined at.
        only_one_novel: a support may hold no other novel class (DIaM's ``support_only_one_novel``).
        base_shots: also draw this many supports per base class (no novel pixel in them); 0 = DIaM.
        cross_group: keep supports and queries in different groups (``dataset.group``, e.g. CamVid videos): with
            one dataset, queries sharing a group with a support are dropped; with two, support candidates from
            groups present among the queries are excluded.
        max_queries: keep a seeded random subset of this many queries (DIaM's COCO setting: 10,000), drawn with
            ``default_rng([seed, r, QUERY_SUBSET_STREAM])`` apart from the supports, so runs that differ only in
            ``shots`` score the same queries (where the supports come from another split).

    Returns:
        :class:`GFSSRuns`; ``meta`` records the arguments, candidate counts per class and repeated classes.

    Raises:
        ValueError: ``shots < 1``, ``n_runs < 1``, ``base_shots < 0``, ``max_queries < 1`` or an unknown protocol.
        DatasetError: unknown fold; ``"gfs-seg"`` without a support dataset; a support dataset with other classes;
            a class with no support candidate
            (the message gives the counts per rule and the fix); no query left.
    """
    _check_run_args(dataset, support_dataset, shots, n_runs, base_shots, max_queries, protocol)
    cmap = GFSSClassMap.from_fold(dataset, fold)
    sup = dataset if support_dataset is None else support_dataset
    same = sup is dataset
    if not same and (sup.num_classes != dataset.num_classes or sup.novel_classes(fold) != cmap.novel):
        raise DatasetError(f"support dataset {sup.name}/{sup.split} has other classes or folds than {dataset.name}/"
                           f"{dataset.split}; pass the other split of the same dataset")
    pool = _query_pool(dataset, cmap, protocol)
    s_counts = sup.class_pixel_counts()
    thresholds = _thresholds(sup, s_counts, min_area, reference_size)
    wanted = [(c, shots, False) for c in cmap.novel] + [(c, base_shots, True) for c in cmap.base if base_shots]
    cands = _support_candidates(dataset, sup, cmap, fold, pool, s_counts, thresholds, wanted, only_one_novel,
                                cross_group)
    runs = [_one_run(dataset, sup, cmap, fold, shots, base_shots, protocol, seed, r, wanted, cands, pool, same,
                     cross_group, max_queries) for r in range(n_runs)]
    repeated = sorted({c for r in runs for c in r.repeated})
    if repeated:
        listing = ", ".join(f"{sup.class_name(c)} ({c}: {len(cands[c])} candidates, "
                            f"{sum(c in r.repeated for r in runs)}/{n_runs} runs)" for c in repeated)
        warnings.warn(f"fold {fold}: fewer support images than shots for {listing}; candidates repeated as DIaM "
                      "does (lower min_area or use more images for distinct shots)", UserWarning, stacklevel=2)
    meta = {"protocol": protocol, "dataset": dataset.name, "query_split": dataset.split, "support_split": sup.split,
            "fold": fold, "shots": shots, "base_shots": base_shots, "n_runs": n_runs, "seed": seed,
            "min_area": min_area, "reference_size": list(reference_size), "only_one_novel": only_one_novel,
            "cross_group": cross_group, "max_queries": max_queries, "base_classes": list(cmap.base),
            "novel_classes": list(cmap.novel), "candidates": {str(c): len(v) for c, v in cands.items()},
            "repeated": repeated}
    return GFSSRuns(runs, meta)


def _check_run_args(dataset, support_dataset, shots, n_runs, base_shots, max_queries, protocol) -> None:
    """``ValueError`` / ``DatasetError`` for arguments no run can be drawn with (names the value and the fix)."""
    if shots < 1 or n_runs < 1 or base_shots < 0 or (max_queries is not None and max_queries < 1):
        raise ValueError(f"need shots >= 1, n_runs >= 1, base_shots >= 0, max_queries >= 1 or None; got "
                         f"shots={shots}, n_runs={n_runs}, base_shots={base_shots}, max_queries={max_queries}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown GFSS protocol {protocol!r}; valid: {PROTOCOLS}")
    if protocol == "gfs-seg" and (support_dataset is None or support_dataset is dataset):
        raise DatasetError("the GFS-Seg protocol draws supports from the training split: pass "
                           "support_dataset=<the train split of the same dataset> (or use protocol='diam')")


def _query_pool(dataset, cmap: GFSSClassMap, protocol: str) -> list[int]:
    """Query candidates: every image under GFS-Seg; under DIaM, the images holding a labelled (base or novel)
    class."""
    labelled = set(cmap.base) | set(cmap.novel)
    return [i for i, c in enumerate(dataset.class_pixel_counts())
            if protocol == "gfs-seg" or labelled & {k for k, v in c.items() if v}]


def _support_candidates(dataset, sup, cmap, fold, pool, s_counts, thresholds, wanted, only_one_novel,
                        cross_group) -> dict[int, list[int]]:
    """``{class: support candidates}``: the class covers the area threshold; a novel support holds no other novel
    class (``only_one_novel``), a base shot no novel class; with ``cross_group`` and two datasets, no group that
    the queries use. ``DatasetError`` for a class without a candidate (counts per rule and the fix)."""
    same = sup is dataset
    if cross_group:  # a missing group would make every image "the same group": name that, not the counts
        require_groups(dataset, "query")
        if not same:
            require_groups(sup, "support")
    banned_groups = {dataset.group(i) for i in pool} if cross_group and not same else set()
    novel = set(cmap.novel)

    def candidates(c: int, base: bool) -> list[int]:
        return [i for i, cnt in enumerate(s_counts) if cnt.get(c, 0) >= thresholds[i]
                and (not (base or only_one_novel) or not any(cnt.get(n, 0) for n in novel - {c}))
                and not (banned_groups and sup.group(i) in banned_groups)]

    cands = {c: candidates(c, base) for c, _, base in wanted}
    empty = [c for c, _, _ in wanted if not cands[c]]
    if empty:
        raise DatasetError(_no_candidate_message(sup, s_counts, thresholds, cmap, empty, fold, only_one_novel,
                                                 bool(banned_groups)))
    return cands


def _one_run(dataset, sup, cmap, fold, shots, base_shots, protocol, seed, r, wanted, cands, pool, same, cross_group,
             max_queries) -> GFSSRun:
    rng = np.random.default_rng([seed, r])
    support, classes, repeated = [], [], []
    for c, k, _ in wanted:
        free = [i for i in cands[c] if i not in support]  # distinct images across classes while possible
        found = [int(i) for i in rng.permutation(np.array(free, dtype=np.int64))[:k]]
        if len(found) < k:  # repeat (DIaM); if all were taken by other classes, reuse those images
            repeated.append(c)
            pool_c = np.array(found or cands[c], dtype=np.int64)
            found += [int(i) for i in rng.choice(pool_c, size=k - len(found), replace=True)]
        support += found
        classes += [c] * k
    taken = set(support) if same else set()
    if same and cross_group:
        groups = {dataset.group(i) for i in taken}
        taken |= {i for i in pool if dataset.group(i) in groups}
    query = [i for i in pool if i not in taken]
    if max_queries is not None and len(query) > max_queries:
        # the subset has its own generator, so it does not depend on the support draw: the 1- and 5-shot runs of a
        # seed score the same queries (all of them when the supports come from another split)
        order = np.random.default_rng([seed, r, QUERY_SUBSET_STREAM]).permutation(np.array(pool, dtype=np.int64))
        query = sorted([int(i) for i in order if int(i) not in taken][:max_queries])
    if not query:
        raise DatasetError(f"{dataset.name}/{dataset.split} fold {fold}: no query image left after removing the "
                           "supports; use more images, cross_group=False, or supports from another split")
    return GFSSRun(run=r, seed=seed, support=tuple(support), support_classes=tuple(classes), query=tuple(query),
                   support_ids=tuple(sup.image_id(i) for i in support),
                   query_ids=tuple(dataset.image_id(i) for i in query),
                   base_classes=cmap.base, novel_classes=cmap.novel, num_dataset_classes=cmap.num_dataset_classes,
                   fold=fold, shots=shots, base_shots=base_shots, protocol=protocol, repeated=tuple(repeated))


def _thresholds(ds: SegmentationDataset, counts: list[dict[int, int]], min_area: int | str | None,
                reference_size: tuple[int, int]) -> list[int]:
    """Area threshold per item: ``min_area`` as given, or the scaled DIaM rule (image sizes read only where needed)."""
    if min_area == "dataset":
        min_area = ds.default_min_area
    if isinstance(min_area, str):
        raise ValueError(f"min_area must be None, an int (pixels) or 'dataset', got {min_area!r}")
    if min_area is not None:
        return [int(min_area)] * len(counts)
    fixed = getattr(ds, "image_size", None)  # generated datasets know their size without decoding an image
    fixed = tuple(fixed) if isinstance(fixed, (tuple, list)) and len(fixed) == 2 else None
    out = []
    for i, cnt in enumerate(counts):
        if not cnt:  # holds no class: never a candidate, skip reading its size
            out.append(DIAM_MIN_AREA)
            continue
        out.append(scaled_min_area(*(fixed or ds.item_size(i)), reference_size=reference_size))
    return out


def _no_candidate_message(sup, counts, thresholds, cmap, empty, fold, only_one_novel, cross_group) -> str:
    parts = []
    for c in empty:
        holders = [i for i, cnt in enumerate(counts) if cnt.get(c, 0) > 0]
        large = [i for i in holders if counts[i][c] >= thresholds[i]]
        alone = [i for i in large if not any(counts[i].get(n, 0) for n in set(cmap.novel) - {c})]
        parts.append(f"{sup.class_name(c)} ({c}): {len(holders)} images hold it, {len(large)} above the area "
                     f"threshold, {len(alone)} of those without another novel class")
    fixes = ["pass a smaller min_area (pixels, or 'dataset' for the dataset's own small-object rule)"]
    if only_one_novel:
        fixes.append("only_one_novel=False")
    if cross_group:
        fixes.append("cross_group=False")
    fixes.append("draw supports from a larger split (support_dataset=train split)")
    return (f"{sup.name}/{sup.split} fold {fold}: no support candidate for " + "; ".join(parts) +
            ". Fixes: " + ", or ".join(fixes) + ".")


def gfss_support_labels(items, run: GFSSRun, *, base_pixels: str = "background",
                        dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """GFSS labels of a run's supports at the transform's resolution.

    Args:
        items: the support dataset seen through the transform (:class:`~fss_lab.data.episodic.TransformedItems`).
        run: the run.
        base_pixels: ``"background"`` (DIaM: base pixels -> 0, novel ids kept) or ``"keep"`` (full GFSS labels, what
            fine-tuning on "few shots of both novel and base classes" trains on). Applies to every support.
        dtype: output dtype (int64; uint8 is lighter).

    Returns:
        ``[S, H, W]`` with bg 0, base ``1..B`` (or 0), novel ``B+1..B+N``, 255 ignore; ``S = len(run.support)``.

    Raises:
        ValueError: unknown ``base_pixels``.
        DatasetError: a support lost its class after resizing (names the image and the fix).
    """
    if base_pixels not in BASE_PIXELS:
        raise ValueError(f"base_pixels must be one of {BASE_PIXELS}, got {base_pixels!r}")
    cmap = run.class_map
    gfss_id = {c: k for k, c in enumerate(cmap.base + cmap.novel, start=1)}
    out = []
    for i, c in zip(run.support, run.support_classes):
        y = cmap.gfss_label(items.label(i))
        if not (y == gfss_id[c]).any():
            ds = items.dataset
            raise DatasetError(f"support image {ds.image_id(i)} of {ds.name}/{ds.split} has no pixel of "
                               f"{ds.class_name(c)} ({c}) after resizing to {items.transform.size}; use a larger "
                               "image size or a larger min_area")
        if base_pixels == "background":
            y = y.masked_fill((y >= 1) & (y <= cmap.num_base), 0)
        out.append(y.to(dtype))
    return torch.stack(out)


def gfss_query_labels(items, indices, class_map: GFSSClassMap, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Query labels ``[Q, H, W]`` with every class at once (bg 0, base 1..B, novel B+1..B+N, 255 ignore)."""
    return torch.stack([class_map.gfss_label(items.label(int(i))).to(dtype) for i in indices])
