"""Seeded 1-way K-shot episode sampling (PFENet / BAM / RePRI protocol) and savable episode lists.

The protocol (fss-methods.md section 2):

1. Queries are images holding at least one novel class of the fold with area >= ``min_area`` pixels (Shaban's rule,
   2 * 32 * 32 at label resolution by default). The query order is a seeded permutation, cycled (with a fresh
   permutation each pass) until ``n_episodes`` episodes exist.
2. The episode class is drawn uniformly among the query's qualifying novel classes.
3. K distinct supports are drawn uniformly among the images holding that class (same area rule), never the query
   itself; with ``cross_group=True`` never an image of the query's group either (e.g. another frame of the same
   CamVid video). Supports may come from another split (``support_dataset``): CamVid's honest protocol takes queries
   from ``val`` and supports from ``train`` videos.

An :class:`EpisodeList` saves to JSON with the image ids, so a run can be repeated exactly and a list made on other
data is refused when loaded.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .base import DatasetError, SegmentationDataset, read_format_json, save_json_atomic

FORMAT = "fss_lab.episodes/1"


@dataclass(frozen=True)
class EpisodeSpec:
    """One sampled episode: indices (and ids) of its query and support items and its class.

    Attributes:
        class_id: the dataset class id of the episode (1-way).
        query: indices into the query dataset (one query in the PFENet protocol).
        support: indices into the support dataset, K of them, distinct.
        query_ids / support_ids: the matching image ids (checked when a saved list is loaded).
    """

    class_id: int
    query: tuple[int, ...]
    support: tuple[int, ...]
    query_ids: tuple[str, ...] = ()
    support_ids: tuple[str, ...] = ()

    @property
    def shots(self) -> int:
        return len(self.support)


@dataclass
class EpisodeList:
    """A list of :class:`EpisodeSpec` plus the settings that made it; saves to / loads from JSON."""

    episodes: list[EpisodeSpec]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self) -> Iterator[EpisodeSpec]:
        return iter(self.episodes)

    def __getitem__(self, i: int) -> EpisodeSpec:
        return self.episodes[i]

    @property
    def class_ids(self) -> list[int]:
        """Sorted distinct episode classes."""
        return sorted({e.class_id for e in self.episodes})

    def to_json(self) -> dict:
        return {"format": FORMAT, "meta": self.meta, "episodes": [asdict(e) for e in self.episodes]}

    def save(self, path: str | Path) -> Path:
        """Write the list as JSON atomically (temporary file + rename); returns the path."""
        return save_json_atomic(self.to_json(), path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        query_dataset: SegmentationDataset | None = None,
        support_dataset: SegmentationDataset | None = None,
    ) -> "EpisodeList":
        """Read a list saved by :meth:`save`; with datasets given, check every id still matches.

        Raises:
            DatasetError: unreadable file, unknown format, or an image id that differs from the dataset's
                (the list was made on other data: re-sample it).
        """
        data = read_format_json(path, FORMAT, "episode list")
        episodes = [
            EpisodeSpec(
                class_id=int(e["class_id"]),
                query=tuple(e["query"]),
                support=tuple(e["support"]),
                query_ids=tuple(e.get("query_ids", ())),
                support_ids=tuple(e.get("support_ids", ())),
            )
            for e in data["episodes"]
        ]
        out = cls(episodes, data.get("meta", {}))
        if query_dataset is not None:
            out.check_matches(query_dataset, support_dataset or query_dataset, source=str(path))
        return out

    def check_matches(self, query_dataset, support_dataset, source: str = "episode list") -> None:
        """Raise :class:`DatasetError` if an index no longer names the saved image id."""
        for n, e in enumerate(self.episodes):
            for ds, idx, ids in ((query_dataset, e.query, e.query_ids), (support_dataset, e.support, e.support_ids)):
                for i, saved in zip(idx, ids):
                    here = ds.image_id(i) if 0 <= i < len(ds) else "<out of range>"
                    if here != saved:
                        raise DatasetError(
                            f"{source}: episode {n} expects item {i} of {ds.name}/{ds.split} to be {saved!r} but it "
                            f"is {here!r}; the list was made on other data. Re-sample it on this dataset."
                        )


def require_groups(dataset: SegmentationDataset, role: str = "query") -> list:
    """Every item's ``dataset.group(i)``, for protocols that keep supports and queries in different groups.

    Raises:
        DatasetError: some items have no group (``None``), e.g. a folder dataset without ``group_pattern``: the
            message names the dataset, the count, an example image and the fix (instead of blaming the number of
            support images, which is what an all-``None`` grouping looks like downstream).
    """
    groups = [dataset.group(i) for i in range(len(dataset))]
    missing = [i for i, g in enumerate(groups) if g is None]
    if missing:
        raise DatasetError(
            f"the cross_group protocol needs the group (e.g. the video) of every image, but {len(missing)} of "
            f"{len(groups)} {role} images of {dataset.name}/{dataset.split} have none (e.g. "
            f"{dataset.image_id(missing[0])!r}). Set group_pattern in the dataset config (a regex whose first "
            "group is the video / scene id, e.g. \"^([A-Za-z0-9]+)_\"), or use a protocol without cross_group.")
    return groups


def sample_fss_episodes(
    query_dataset: SegmentationDataset,
    fold: int,
    shots: int,
    n_episodes: int,
    seed: int = 0,
    support_dataset: SegmentationDataset | None = None,
    min_area: int | None = None,
    cross_group: bool = False,
    classes: Sequence[int] | None = None,
) -> EpisodeList:
    """Sample ``n_episodes`` 1-way ``shots``-shot episodes of ``fold``'s novel classes (PFENet/BAM protocol).

    Args:
        query_dataset: where queries come from (the val split in the standard protocol).
        fold: the fold whose novel classes are tested.
        shots: K >= 1, supports per episode.
        n_episodes: number of episodes (1,000 in BAM/RePRI/HSNet; 5,000 in PFENet on PASCAL).
        seed: seeds a ``numpy.random.Generator``; the same seed and data give the same list.
        support_dataset: where supports come from (default: the query dataset).
        min_area: pixels a class must cover at label resolution to count (default ``dataset.default_min_area``).
        cross_group: draw supports only from other groups than the query's (``dataset.group(i)``).
        classes: restrict to these novel class ids (default: all of the fold's).

    Returns:
        An :class:`EpisodeList` whose ``meta`` records every argument and the classes dropped (if any).

    Raises:
        ValueError: ``shots < 1`` or ``n_episodes < 1``.
        DatasetError: ``cross_group`` with images that have no group (see :func:`require_groups`), unknown fold,
            or no novel class of the fold has a query and ``shots`` supports (the message
            names the counts and the fix). Classes that cannot be satisfied while others can are dropped with a
            ``UserWarning`` and listed in ``meta["dropped_classes"]``.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    support_dataset = support_dataset if support_dataset is not None else query_dataset
    novel = _novel_classes(query_dataset, fold, classes)
    min_area = query_dataset.default_min_area if min_area is None else int(min_area)
    query_holders = _holders(query_dataset, novel, min_area)
    support_holders = query_holders if support_dataset is query_dataset else _holders(support_dataset, novel, min_area)
    candidates = _support_candidates(query_dataset, support_dataset, support_holders, cross_group)
    usable, dropped = _usable_classes(query_dataset, fold, shots, novel, min_area, query_holders, support_holders,
                                      candidates)
    episodes = _draw_episodes(np.random.default_rng(seed), query_dataset, support_dataset, fold, shots, n_episodes,
                              usable, query_holders, candidates)
    meta = {
        "protocol": "pfenet_1way",
        "dataset": query_dataset.name,
        "query_split": query_dataset.split,
        "support_split": support_dataset.split,
        "fold": fold,
        "shots": shots,
        "n_episodes": n_episodes,
        "seed": seed,
        "min_area": min_area,
        "cross_group": cross_group,
        "classes": list(usable),
        "dropped_classes": {str(c): why for c, why in dropped.items()},
    }
    return EpisodeList(episodes, meta)


def _novel_classes(dataset: SegmentationDataset, fold: int, classes: Sequence[int] | None) -> tuple[int, ...]:
    """The fold's novel classes, or the requested subset of them (``DatasetError`` for a class that is not novel)."""
    novel = dataset.novel_classes(fold)
    if classes is None:
        return tuple(novel)
    unknown = sorted(set(classes) - set(novel))
    if unknown:
        raise DatasetError(f"classes {unknown} are not novel in fold {fold} of {dataset.name}: {novel}")
    return tuple(classes)


def _support_candidates(query_dataset, support_dataset, support_holders, cross_group: bool):
    """``candidates(c, q)``: the support items of class ``c`` allowed for query ``q`` (not the query itself; with
    ``cross_group``, only other groups than the query's)."""
    same = support_dataset is query_dataset
    if cross_group:
        q_groups = np.array(require_groups(query_dataset, "query"), dtype=object)
        s_groups = q_groups if same else np.array(require_groups(support_dataset, "support"), dtype=object)

    def candidates(c: int, q: int) -> np.ndarray:
        cand = support_holders[c]
        if same:
            cand = cand[cand != q]
        if cross_group:
            cand = cand[s_groups[cand] != q_groups[q]]
        return cand

    return candidates


def _usable_classes(query_dataset, fold, shots, novel, min_area, query_holders, support_holders, candidates):
    """``(usable classes, {dropped class: why})``; ``DatasetError`` when none is usable, a warning for the dropped."""
    usable, dropped = [], {}
    for c in novel:
        n_q, n_s = len(query_holders[c]), len(support_holders[c])
        if n_q == 0:
            dropped[c] = f"no query image holds it with >= {min_area} px"
        elif max(len(candidates(c, q)) for q in query_holders[c]) < shots:
            dropped[c] = f"only {n_s} support images hold it with >= {min_area} px (need {shots} besides the query)"
        else:
            usable.append(c)
    if not usable:
        detail = "; ".join(f"{query_dataset.class_name(c)} ({c}): {why}" for c, why in dropped.items())
        raise DatasetError(
            f"{query_dataset.name}/{query_dataset.split} fold {fold} cannot make {shots}-shot episodes: {detail}. "
            "Lower SHOTS, lower min_area, use a larger support split, or pick another fold."
        )
    if dropped:
        names = ", ".join(f"{query_dataset.class_name(c)} ({why})" for c, why in dropped.items())
        warnings.warn(f"fold {fold}: classes dropped from the episodes: {names}", UserWarning, stacklevel=3)
    return usable, dropped


def _draw_episodes(rng, query_dataset, support_dataset, fold, shots, n_episodes, usable, query_holders,
                   candidates) -> list[EpisodeSpec]:
    """The seeded draw: passes over a permutation of the query pool, one episode per query (a random usable class
    of it, then ``shots`` distinct supports), until ``n_episodes`` are made."""
    query_classes: dict[int, list[int]] = {}
    for c in usable:
        for q in query_holders[c]:
            query_classes.setdefault(int(q), []).append(c)
    query_pool = np.array(sorted(query_classes), dtype=np.int64)
    episodes: list[EpisodeSpec] = []
    while len(episodes) < n_episodes:
        made_any = False
        for q in rng.permutation(query_pool):
            q = int(q)
            options = [c for c in query_classes[q] if len(candidates(c, q)) >= shots]
            if not options:
                continue
            c = int(options[rng.integers(len(options))])
            support = rng.choice(candidates(c, q), size=shots, replace=False)
            episodes.append(EpisodeSpec(class_id=c, query=(q,), support=tuple(int(s) for s in support),
                                        query_ids=(query_dataset.image_id(q),),
                                        support_ids=tuple(support_dataset.image_id(int(s)) for s in support)))
            made_any = True
            if len(episodes) == n_episodes:
                break
        if not made_any:  # pragma: no cover - guarded by the usable-class check above
            raise DatasetError(f"no episode can be formed for fold {fold} with {shots} shots")
    return episodes


def _holders(dataset: SegmentationDataset, classes: Sequence[int], min_area: int) -> dict[int, np.ndarray]:
    """``{class id: sorted indices of items where the class covers >= min_area pixels}``."""
    counts = dataset.class_pixel_counts()
    return {
        c: np.array([i for i, cnt in enumerate(counts) if cnt.get(c, 0) >= min_area], dtype=np.int64) for c in classes
    }
