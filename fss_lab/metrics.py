"""IoU statistics and accumulators: FSS class-wise mIoU and FB-IoU, GFSS base / novel / mean / harmonic.

Habit taken from segmentation_models_pytorch: compute statistics first (integer intersection and union
counts), then scores. Every score is a fraction in ``[0, 1]``; :func:`to_percent` converts for tables.

The accumulate-then-divide rule matters: PFENet / BAM / RePRI / HSNet / DIaM sum the intersections and the
unions of a class over *all* its episodes (or queries) and divide once, ``IoU_c = sum I / sum U``; this is not
the mean of per-episode IoUs (a small object badly segmented weighs little). See
``fss-methods.md`` sections 2 (FSS protocol) and 3 (GFSS protocols).
"""
from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch

from .labels import BACKGROUND, IGNORE_INDEX

__all__ = ["intersection_and_union", "iou_from_stats", "FSSMeter", "GFSSMeter", "to_percent"]


def _as_label_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """``x`` as an integer tensor; floating-point input (logits, probabilities) is an error."""
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.is_complex():
        raise ValueError(
            f"{name} has dtype {t.dtype}; expected integer labels. Convert scores to labels first "
            "(logits.argmax(dim=1) for C-way logits, or (prob > 0.5).long() for a foreground probability)."
        )
    return t


def intersection_and_union(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-label pixel counts of intersection and union between a prediction and a target.

    Args:
        pred: predicted labels, integer tensor of any shape (e.g. ``[Q, H, W]``), values in ``0..num_classes-1``.
        target: ground-truth labels, same shape, values in ``0..num_classes-1`` or ``ignore_index``.
        num_classes: number of labels ``C`` (background included).
        ignore_index: target value whose pixels are excluded from both counts (the prediction there is
            not looked at).

    Returns:
        ``(inter, union)``: int64 tensors ``[C]`` on the input's device, in pixels.
        ``union[c] = |pred == c| + |target == c| - inter[c]`` over non-ignored pixels.

    Raises:
        ValueError: shapes differ (both are named), float input, ``num_classes < 1``, or a label outside
            ``0..num_classes-1`` at a non-ignored pixel.
    """
    pred = _as_label_tensor(pred, "pred")
    target = _as_label_tensor(target, "target").to(pred.device)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}; "
            "resize the prediction to the label size (e.g. F.interpolate the logits before argmax)"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    valid = target != ignore_index
    p, t = pred[valid].long(), target[valid].long()
    for name, v in (("pred", p), ("target", t)):
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= num_classes):
            bad = int(v.min()) if int(v.min()) < 0 else int(v.max())
            raise ValueError(
                f"{name} holds label {bad} outside 0..{num_classes - 1} (num_classes={num_classes}, "
                f"ignore_index={ignore_index}); check num_classes or remap the labels"
            )
    inter = torch.bincount(t[p == t], minlength=num_classes)
    area_pred = torch.bincount(p, minlength=num_classes)
    area_target = torch.bincount(t, minlength=num_classes)
    return inter, area_pred + area_target - inter


def iou_from_stats(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """``inter / union`` as float64, NaN where ``union == 0`` (IoU undefined: label absent from both).

    Args:
        inter, union: int64 tensors of equal shape (pixel counts, e.g. from :func:`intersection_and_union`).

    Returns:
        float64 tensor of IoUs in ``[0, 1]`` (NaN where undefined).
    """
    inter, union = inter.double(), union.double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, math.nan))


_WARNED: set[tuple[str, tuple[int, ...]]] = set()


def _mean_defined(values: Mapping[int, float], group: str) -> float:
    """Mean of the non-NaN values; NaN when none is defined. The excluded ids are named in a warning, once per
    process for each (group, ids) pair (a dataset without background, e.g. CamVid, would repeat it every run)."""
    undefined = sorted(k for k, v in values.items() if math.isnan(v))
    if undefined and (group, tuple(undefined)) not in _WARNED:
        _WARNED.add((group, tuple(undefined)))
        warnings.warn(
            f"{group}: IoU undefined for class ids {undefined} (never seen, or union 0); excluded from the mean "
            "(said once)",
            stacklevel=3,
        )
    defined = [v for v in values.values() if not math.isnan(v)]
    return float(sum(defined) / len(defined)) if defined else math.nan


def foreground_iou(pred: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> float:
    """Foreground IoU of one binary prediction; ``pred`` / ``target`` int ``[..., H, W]`` (1 = foreground,
    ``ignore_index`` excluded); 1.0 when both are empty."""
    valid = target != ignore_index
    p, t = (pred == 1) & valid, (target == 1) & valid
    union = (p | t).sum().item()
    return (p & t).sum().item() / union if union else 1.0


def gfss_summary(base: float, novel: float) -> dict[str, float]:
    """The headline GFSS scores from base and novel mIoU, with one NaN rule for the whole package.

    Returns ``{"base", "novel", "mean": (base + novel) / 2, "harmonic": 2 base novel / (base + novel)}``;
    ``harmonic`` is 0 when both are 0, and every derived score is NaN when either input is NaN (a group with no
    defined class). Source: DIaM's "Mean" and the harmonic mean of GFS-Seg / BCM (fss-methods.md section 3).
    """
    if math.isnan(base) or math.isnan(novel):
        return {"base": base, "novel": novel, "mean": math.nan, "harmonic": math.nan}
    harmonic = 2 * base * novel / (base + novel) if base + novel > 0 else 0.0
    return {"base": base, "novel": novel, "mean": (base + novel) / 2, "harmonic": harmonic}


def _binary(x: torch.Tensor) -> bool:
    """Whether integer / bool ``x`` holds only 0 and 1 (one min-max pass)."""
    if x.numel() == 0 or x.dtype == torch.bool:
        return True
    lo, hi = x.aminmax()
    return int(lo) >= 0 and int(hi) <= 1


class FSSMeter:
    """Classic FSS metrics over many 1-way episodes: class-wise mIoU and FB-IoU (PFENet / HSNet protocol).

    For each episode class ``c``, the foreground intersection and union are summed over all episodes of
    class ``c``; ``IoU_c = sum I / sum U``; ``mIoU`` = mean of ``IoU_c`` over the fold's classes. FB-IoU sums
    the background and foreground I / U over all episodes regardless of class and averages the two IoUs.
    Source: PFENet ``test.py`` (class-wise IoU), HSNet ``common/evaluation.py`` (FB-IoU); fss-methods.md s. 2.

    A fold class with no recorded episode (or a union of 0) has no IoU: it is left out of
    :meth:`per_class_iou` / excluded from :meth:`miou`, with a ``UserWarning`` naming it.

    Args:
        class_ids: the fold's (novel) class ids, e.g. ``[1, 2, 3, 4, 5]`` for PASCAL-5^0.
        ignore_index: target value excluded from every count.

    Raises:
        ValueError: empty or duplicated ``class_ids``.
    """

    def __init__(self, class_ids: Sequence[int], ignore_index: int = IGNORE_INDEX) -> None:
        ids = [int(c) for c in class_ids]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"class_ids must be a non-empty list of distinct ids, got {list(class_ids)}")
        self.class_ids = tuple(ids)
        self.ignore_index = ignore_index
        self._pos = {c: i for i, c in enumerate(ids)}
        self.reset()

    def reset(self) -> None:
        """Forget every recorded episode."""
        n = len(self.class_ids)
        self.inter = torch.zeros(n, dtype=torch.int64)  # foreground I per fold class, pixels
        self.union = torch.zeros(n, dtype=torch.int64)  # foreground U per fold class, pixels
        self.episodes = torch.zeros(n, dtype=torch.int64)  # number of update() calls per class
        self.fb_inter = torch.zeros(2, dtype=torch.int64)  # [bg, fg] over all episodes
        self.fb_union = torch.zeros(2, dtype=torch.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, class_id: int) -> None:
        """Record one episode.

        Args:
            pred: binary prediction ``[Q, H, W]`` or ``[H, W]``, integer/bool, values in ``{0, 1}``.
            target: binary query mask, same shape, values in ``{0, 1, ignore_index}``.
            class_id: the episode's dataset class id (one of ``class_ids``).

        Raises:
            ValueError: unknown ``class_id``, shape mismatch, float input, or a non-binary label.
        """
        if int(class_id) not in self._pos:
            raise ValueError(
                f"class_id {class_id} is not one of this meter's fold classes {list(self.class_ids)}; "
                "build the meter with the fold's class ids"
            )
        try:
            inter, union = intersection_and_union(pred, target, num_classes=2, ignore_index=self.ignore_index)
        except ValueError as exc:
            raise ValueError(
                f"FSSMeter.update expects binary labels (0 background, 1 episode class, {self.ignore_index} "
                f"ignore in the target): {exc}"
            ) from exc
        inter, union = inter.cpu(), union.cpu()
        i = self._pos[int(class_id)]
        self.inter[i] += inter[1]
        self.union[i] += union[1]
        self.episodes[i] += 1
        self.fb_inter += inter
        self.fb_union += union

    def update_batch(
        self, pred: torch.Tensor, target: torch.Tensor, class_ids: Sequence[int] | torch.Tensor
    ) -> torch.Tensor:
        """Record E episodes at once (the vectorised form of :meth:`update`, same counts).

        Args:
            pred: binary predictions ``[E, Q, H, W]`` (integer/bool, values in ``{0, 1}``).
            target: binary query masks ``[E, Q, H, W]`` in ``{0, 1, ignore_index}``.
            class_ids: the E episode classes (each one of ``class_ids``).

        Returns:
            float64 ``[E]``: each episode's foreground IoU (1.0 where its foreground union is empty).

        Raises:
            ValueError: shape mismatch, unknown class id, or a non-binary label.
        """
        if pred.shape != target.shape or pred.dim() != 4:
            raise ValueError(
                f"update_batch expects pred and target of one shape [E, Q, H, W], got {tuple(pred.shape)} and "
                f"{tuple(target.shape)}"
            )
        unknown = sorted({int(c) for c in class_ids} - set(self._pos))
        if unknown:
            raise ValueError(f"class ids {unknown} are not among this meter's fold classes {list(self.class_ids)}")
        if not (_binary(pred) and _binary(target.masked_fill(target == self.ignore_index, 0))):
            raise ValueError(
                f"FSSMeter.update_batch expects binary labels (0, 1, and {self.ignore_index} in the target)"
            )
        # three counts per episode give all four: within the valid pixels, the complement of the background union
        # is the foreground intersection and vice versa (integers: the same counts as the four set operations)
        dims = (1, 2, 3)
        p_fg = pred.bool() if pred.dtype != torch.bool else pred
        fg_i = (p_fg & (target == 1)).sum(dims)
        bg_i = (~p_fg & (target == 0)).sum(dims)
        n_valid = (target != self.ignore_index).sum(dims)
        fg_u, bg_u = n_valid - bg_i, n_valid - fg_i
        pos = torch.tensor([self._pos[int(c)] for c in class_ids], dtype=torch.int64)
        self.inter.index_add_(0, pos, fg_i.cpu())
        self.union.index_add_(0, pos, fg_u.cpu())
        self.episodes.index_add_(0, pos, torch.ones_like(pos))
        self.fb_inter += torch.stack([bg_i.sum(), fg_i.sum()]).cpu()
        self.fb_union += torch.stack([bg_u.sum(), fg_u.sum()]).cpu()
        fg_i, fg_u = fg_i.double().cpu(), fg_u.double().cpu()
        return torch.where(fg_u > 0, fg_i / fg_u.clamp(min=1), torch.ones_like(fg_u))

    def merge(self, other: "FSSMeter") -> "FSSMeter":
        """Add another meter's counts (e.g. from another rank or shard) into this one; returns ``self``.

        Raises:
            ValueError: the meters have different ``class_ids``.
        """
        if other.class_ids != self.class_ids:
            raise ValueError(f"cannot merge meters with class_ids {self.class_ids} and {other.class_ids}")
        for name in ("inter", "union", "episodes", "fb_inter", "fb_union"):
            getattr(self, name).add_(getattr(other, name))
        return self

    @property
    def num_episodes(self) -> int:
        """Total number of recorded episodes."""
        return int(self.episodes.sum())

    def _check_nonempty(self) -> None:
        if self.num_episodes == 0:
            raise ValueError("FSSMeter has no recorded episode; call update(pred, target, class_id) first")

    def per_class_iou(self) -> dict[int, float]:
        """``{class_id: sum I / sum U}`` for the fold classes with at least one episode (fractions in [0, 1]).

        A class whose accumulated union is 0 maps to NaN.
        """
        iou = iou_from_stats(self.inter, self.union)
        return {c: float(iou[i]) for c, i in self._pos.items() if self.episodes[i] > 0}

    def miou(self) -> float:
        """Class-wise mIoU: mean of :meth:`per_class_iou` over the fold classes; unseen ones excluded (warned).

        Raises:
            ValueError: no episode recorded.
        """
        self._check_nonempty()
        per_class = self.per_class_iou()
        values = {c: per_class.get(c, math.nan) for c in self.class_ids}
        return _mean_defined(values, "FSSMeter.miou")

    def fb_iou(self) -> float:
        """FB-IoU: mean of the background IoU and the foreground IoU, each accumulated over all episodes.

        Raises:
            ValueError: no episode recorded.
        """
        self._check_nonempty()
        iou = iou_from_stats(self.fb_inter, self.fb_union)
        return _mean_defined({0: float(iou[0]), 1: float(iou[1])}, "FSSMeter.fb_iou")

    def summary(self) -> dict:
        """``{"miou", "fb_iou", "per_class": {id: iou}, "episodes": n, "episodes_per_class": {id: n}}``."""
        return {
            "miou": self.miou(),
            "fb_iou": self.fb_iou(),
            "per_class": self.per_class_iou(),
            "episodes": self.num_episodes,
            "episodes_per_class": {c: int(self.episodes[i]) for c, i in self._pos.items()},
        }


class GFSSMeter:
    """GFSS metrics: per-class IoU over all query images with every class labelled at once.

    Labels: ``0`` background, ``base_ids`` (``1..B``), ``novel_ids`` (``B+1..B+N``), ``ignore_index``.
    Per-class I / U are summed over all queries of a run, then divided (DIaM ``src/test.py``).

    :meth:`scores` reports both published conventions (fss-methods.md s. 3):

    * ``base_miou``: mean over base classes, background excluded (DIaM, BCM);
    * ``base_miou_with_bg``: mean over background + base classes (GFS-Seg / CAPL);
    * ``novel_miou``: mean over novel classes;
    * ``mean``: ``(base_miou + novel_miou) / 2`` (DIaM's headline "Mean");
    * ``harmonic``: ``2 B N / (B + N)`` with ``B = base_miou``, ``N = novel_miou`` (0 when both are 0);
    * ``all_miou``: mean over base + novel classes (BAM's "total"); ``all_miou_with_bg``: all labels
      including background (GFS-Seg mIoU);
    * ``per_class``: ``{label: IoU}``.

    A class with union 0 (absent from every target and prediction) has IoU NaN and is excluded from the
    means with a ``UserWarning``.

    Args:
        num_classes: number of labels including background (``1 + B + N`` usually).
        base_ids, novel_ids: disjoint label ids in ``1..num_classes-1``.
        ignore_index: target value excluded from every count.

    Raises:
        ValueError: empty, overlapping or out-of-range ids.
    """

    def __init__(
        self, num_classes: int, base_ids: Sequence[int], novel_ids: Sequence[int], ignore_index: int = IGNORE_INDEX
    ) -> None:
        base, novel = [int(c) for c in base_ids], [int(c) for c in novel_ids]
        if not base or not novel:
            raise ValueError(f"base_ids and novel_ids must both be non-empty, got {base} and {novel}")
        if set(base) & set(novel):
            raise ValueError(f"base_ids and novel_ids overlap: {sorted(set(base) & set(novel))}")
        bad = [c for c in base + novel if not 1 <= c < num_classes]
        if bad:
            raise ValueError(
                f"class ids {bad} are outside 1..{num_classes - 1} (num_classes={num_classes} counts background 0)"
            )
        self.num_classes = int(num_classes)
        self.base_ids, self.novel_ids = tuple(base), tuple(novel)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every recorded query."""
        self.inter = torch.zeros(self.num_classes, dtype=torch.int64)
        self.union = torch.zeros(self.num_classes, dtype=torch.int64)
        self.num_updates = 0

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Record predictions for one or more queries.

        Args:
            pred: labels ``[Q, H, W]`` (any shape), values in ``0..num_classes-1``.
            target: labels, same shape, values in ``0..num_classes-1`` or ``ignore_index``.

        Raises:
            ValueError: see :func:`intersection_and_union`.
        """
        inter, union = intersection_and_union(pred, target, self.num_classes, self.ignore_index)
        self.inter += inter.cpu()
        self.union += union.cpu()
        self.num_updates += 1

    def merge(self, other: "GFSSMeter") -> "GFSSMeter":
        """Add another meter's counts into this one (same classes); returns ``self``."""
        if (other.num_classes, other.base_ids, other.novel_ids) != (self.num_classes, self.base_ids, self.novel_ids):
            raise ValueError("cannot merge GFSSMeters with different num_classes / base_ids / novel_ids")
        self.inter += other.inter
        self.union += other.union
        self.num_updates += other.num_updates
        return self

    def per_class_iou(self) -> dict[int, float]:
        """``{label: sum I / sum U}`` for every label ``0..num_classes-1`` (NaN where the union is 0)."""
        iou = iou_from_stats(self.inter, self.union)
        return {c: float(iou[c]) for c in range(self.num_classes)}

    def scores(self) -> dict:
        """The GFSS scores listed in the class docstring (fractions in [0, 1]).

        Raises:
            ValueError: nothing recorded yet.
        """
        if self.num_updates == 0:
            raise ValueError("GFSSMeter has no recorded query; call update(pred, target) first")
        pc = self.per_class_iou()

        def group(ids: Sequence[int], name: str) -> float:
            return _mean_defined({c: pc[c] for c in ids}, f"GFSSMeter.{name}")

        base = group(self.base_ids, "base_miou")
        novel = group(self.novel_ids, "novel_miou")
        head = gfss_summary(base, novel)
        return {
            "base_miou": base,
            "base_miou_with_bg": group((BACKGROUND, *self.base_ids), "base_miou_with_bg"),
            "novel_miou": novel,
            "mean": head["mean"],
            "harmonic": head["harmonic"],
            "all_miou": group(self.base_ids + self.novel_ids, "all_miou"),
            "all_miou_with_bg": group((BACKGROUND, *self.base_ids, *self.novel_ids), "all_miou_with_bg"),
            "per_class": pc,
        }


def to_percent(value):
    """Multiply a score, or every float in a (nested) dict / list of scores, by 100 (ints such as counts kept).

    Args:
        value: float in [0, 1], or a dict / list / tuple containing such floats.

    Returns:
        The same structure with floats scaled to percent.
    """
    if isinstance(value, Mapping):
        return {k: to_percent(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_percent(v) for v in value)
    if isinstance(value, float):
        return 100.0 * value
    return value
