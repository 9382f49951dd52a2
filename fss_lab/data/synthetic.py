"""``SyntheticShapes``: the offline default dataset, procedurally generated and seeded ("synthetic").

What it is: 20 classes, each a *shape* (disc, hexagon, triangle, star, ring) made of a *material* (brick, gravel,
grass, tissue, print, starry: photo textures bundled with scikit-image; striped, wavy, dotted, checkered:
procedural), pasted 2 to 5 at a time (distinct classes) onto softened crops of other bundled photos (coffee,
astronaut, rocket, ...). Every pixel is labelled: ``0`` is the background, a real region, so GFSS queries are fully
labelled and no pixel is ``255``. The classes form 4 folds of 5 like PASCAL-5i (fold ``i`` novel = class ids
``5i+1 .. 5i+5``): each fold holds every shape once and each material belongs to exactly two classes of different
folds, so every novel class shares its shape with three base classes and its material with one; what is learnt on
base classes (shape cues, texture cues) transfers to novel ones. Objects vary in scale (about 2.5% to 15% of the
image), position, rotation, aspect, texture crop, zoom and colour. Photo materials have overlapping hue ranges
(a fifth of their objects take any hue) and procedural ones any hue, so raw colour does not give a class away;
ImageNet features do tell most materials apart (checked once: masked-average EfficientNet-Lite0 features of val
objects, nearest class mean of train objects, 20 classes: 67% right, chance 5%; most errors are between the two
classes of one material, which only the silhouette separates).

Deliberately confusable pairs (:data:`CONFUSABLE_PAIRS`): a novel class and a base class of the same material with
near-identical silhouettes (brick disc / brick hexagon), and same-shape classes of look-alike materials (striped /
wavy ring). They are the pairs where GFSS methods confuse novel with base classes.

What it is NOT: a benchmark. Numbers measured on it do not compare with any paper's PASCAL-5i / COCO-20i results;
it exists so that every notebook and test runs offline, on a CPU, in minutes. Image ``i`` of a split depends only
on ``(seed, split, i)``; train and val use different derived seeds, so they share no image.
"""
from __future__ import annotations

import operator
from collections import OrderedDict
from typing import Mapping, NamedTuple

import numpy as np

from .base import DatasetError, SegmentationDataset
from .synthetic_layout import SHAPES, render, sample_layout
from .synthetic_textures import load_texture_bank

SPLITS = {"train": (1, 600), "val": (2, 200)}  # split -> (seed stream, default number of images)


class ClassTraits(NamedTuple):
    """The two traits a synthetic class is made of."""

    shape: str
    material: str


#: Material of each (fold, shape): row ``i`` lists the materials of fold ``i``'s disc, hexagon, triangle, star and
#: ring, which are class ids ``5i+1 .. 5i+5``. Every material appears twice, in two folds, with two shapes.
FOLD_MATERIALS: tuple[tuple[str, ...], ...] = (
    ("brick", "gravel", "striped", "dotted", "grass"),
    ("grass", "brick", "print", "tissue", "wavy"),
    ("starry", "checkered", "gravel", "wavy", "striped"),
    ("dotted", "starry", "tissue", "checkered", "print"),
)
CLASS_TRAITS: Mapping[int, ClassTraits] = {
    i * len(SHAPES) + s + 1: ClassTraits(shape, FOLD_MATERIALS[i][s])
    for i in range(len(FOLD_MATERIALS)) for s, shape in enumerate(SHAPES)}
CLASS_NAMES: tuple[str, ...] = tuple(f"{t.material} {t.shape}" for _, t in sorted(CLASS_TRAITS.items()))
FOLDS: Mapping[int, tuple[int, ...]] = {
    i: tuple(range(i * len(SHAPES) + 1, (i + 1) * len(SHAPES) + 1)) for i in range(len(FOLD_MATERIALS))}
#: ``(class name, class name, why)``: pairs that are hard to tell apart on purpose.
CONFUSABLE_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("brick disc", "brick hexagon", "same material, near-identical silhouette"),
    ("starry disc", "starry hexagon", "same material, near-identical silhouette"),
    ("grass ring", "grass disc", "same material; only the hole differs"),
    ("wavy ring", "striped ring", "same shape; look-alike stripes"),
    ("dotted disc", "starry disc", "same shape; spots on a plain ground"),
)


class SyntheticShapes(SegmentationDataset):
    """Seeded, generated FSS/GFSS dataset that needs no download (see the module docstring for what it is not).

    Args:
        split: ``"train"`` (600 images by default) or ``"val"`` (200).
        n_images: number of images; ``None`` takes the split's default.
        image_size: ``(H, W)`` pixels (an int means square); at least 64.
        seed: non-negative int; image ``i`` depends only on ``(seed, split, i)``.
        cache_size: generated items kept in memory (LRU); ``None`` keeps all (about 150 kB per 192x192 item).

    Attributes:
        class_names: ``"<material> <shape>"``, e.g. ``"striped disc"`` for ids 1..20.
        folds: ``{i: (5i+1, ..., 5i+5)}`` novel class ids, like PASCAL-5i.
        class_traits: ``{class id: ClassTraits(shape, material)}``.
        default_min_area: 2% of the image area (the episode sampler's small-object rule for this dataset).

    Raises:
        DatasetError: unknown split, or a bad ``n_images`` / ``image_size`` / ``seed`` (the message says the fix),
            or a bundled scikit-image photo that does not load.
    """

    name = "synthetic"
    class_names = CLASS_NAMES
    folds = FOLDS
    class_traits = CLASS_TRAITS

    def __init__(self, split: str = "val", n_images: int | None = None,
                 image_size: int | tuple[int, int] = (192, 192), seed: int = 0, cache_size: int | None = None):
        if split not in SPLITS:
            raise DatasetError(f"synthetic: unknown split {split!r}; valid: {sorted(SPLITS)}.")
        stream, default_n = SPLITS[split]
        n_images = default_n if n_images is None else n_images
        if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 1:
            raise DatasetError(f"synthetic: n_images={n_images!r}; pass a positive int (or None for {default_n}).")
        size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
        if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 64 for v in size):
            raise DatasetError(f"synthetic: image_size={image_size!r}; pass (H, W) ints >= 64, e.g. (192, 192).")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DatasetError(f"synthetic: seed={seed!r}; pass a non-negative int.")
        if cache_size is not None and (isinstance(cache_size, bool) or not isinstance(cache_size, (int, np.integer))
                                       or cache_size < 0):
            raise DatasetError(f"synthetic: cache_size={cache_size!r}; pass a non-negative int or None (keep all).")
        self.split, self.seed, self._stream = split, int(seed), stream
        self.n_images, self.image_size = int(n_images), (int(size[0]), int(size[1]))
        self.default_min_area = int(round(0.02 * size[0] * size[1]))
        self.folds = {f: tuple(ids) for f, ids in FOLDS.items()}  # per-instance copies of the module tables
        self.class_traits = dict(CLASS_TRAITS)
        self._bank = load_texture_bank()
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = cache_size

    # ---- SegmentationDataset ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_images

    def image_id(self, index: int) -> str:
        """``"synthetic_<split>_<index:06d>"``; seeds other than 0 add ``"_s<seed>"`` so lists never mix them up."""
        self._check_index(index)
        suffix = "" if self.seed == 0 else f"_s{self.seed}"
        return f"synthetic_{self.split}_{index:06d}{suffix}"

    def load_image(self, index: int) -> np.ndarray:
        """Item ``index`` as uint8 RGB ``[H, W, 3]`` (a fresh copy; generated once, then cached)."""
        return self._item(index)[0].copy()

    def load_label(self, index: int) -> np.ndarray:
        """Item ``index``'s label as uint8 ``[H, W]`` in ``{0..20}`` (never 255: every pixel is labelled)."""
        return self._item(index)[1].copy()

    def describe(self) -> str:
        """One line: name, split, size, classes, folds, image size and seed."""
        return super().describe() + f", {self.image_size[0]}x{self.image_size[1]} px, seed {self.seed} (generated)"

    def _compute_class_pixel_counts(self) -> list[dict[int, int]]:
        """Per item ``{class id: pixels}``, from labels rendered without their images (a fraction of the cost)."""
        counts = []
        for i in range(len(self)):
            label = self._cache[i][1] if i in self._cache else self._render(i, with_image=False)[1]
            n = np.bincount(label.ravel(), minlength=self.num_classes + 1)
            counts.append({int(c): int(n[c]) for c in np.flatnonzero(n) if c != 0})
        return counts

    # ---- extras -------------------------------------------------------------------------------------------
    def describe_classes(self):
        """The class table as a pandas DataFrame.

        Columns: ``class_id, name, shape, material, novel_in_fold, confusable_with`` (one row per class, 20 rows).
        """
        import pandas as pd

        confusable: dict[str, list[str]] = {}
        for a, b, _ in CONFUSABLE_PAIRS:
            confusable.setdefault(a, []).append(b)
            confusable.setdefault(b, []).append(a)
        fold_of = {c: f for f, ids in self.folds.items() for c in ids}
        rows = [{"class_id": c, "name": self.class_name(c), "shape": t.shape, "material": t.material,
                 "novel_in_fold": fold_of[c], "confusable_with": ", ".join(confusable.get(self.class_name(c), []))}
                for c, t in sorted(self.class_traits.items())]
        return pd.DataFrame(rows)

    # ---- generation ---------------------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        """Pickle (e.g. for DataLoader workers) without the texture bank and the cache; both are rebuilt."""
        state = self.__dict__.copy()
        state.update(_bank=None, _cache=OrderedDict())
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._bank = load_texture_bank()

    def _item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = operator.index(index)  # TypeError for 1.5, "3", ...
        self._check_index(index)
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        item = self._render(index, with_image=True)
        if self._cache_size is None or self._cache_size > 0:
            self._cache[index] = item
            if self._cache_size is not None and len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return item

    def _render(self, index: int, with_image: bool) -> tuple[np.ndarray | None, np.ndarray]:
        """Generate item ``index``: layout from stream ``(seed, split, index, 0)``, appearance from ``(..., 1)``."""
        key = [self.seed, self._stream, int(index)]
        h, w = self.image_size
        traits = {c: (t.shape, t.material) for c, t in self.class_traits.items()}
        layout = sample_layout(np.random.default_rng(key + [0]), h, w, traits)
        if not with_image:
            return render(layout, h, w)
        return render(layout, h, w, self._bank, np.random.default_rng(key + [1]))
