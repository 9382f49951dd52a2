"""COCO-20i (Nguyen & Todorovic, ICCV 2019): COCO 2014 with 80 classes in 4 folds of 20; masks made offline."""
from __future__ import annotations

from pathlib import Path

from .base import DatasetError, ListDataset
from .pascal import load_list

COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
#: Lines in the RePRI/DIaM COCO-20i lists (images of COCO 2014 with at least one annotation).
COCO_LIST_LENGTHS = {"train": 82081, "val": 40137}
FOLD_CONVENTIONS = ("interleaved", "contiguous")


def coco_folds(fold_convention: str = "interleaved") -> dict[int, tuple[int, ...]]:
    """Novel class ids of the 4 COCO-20i folds.

    ``"interleaved"`` (the FWB split; default in PFENet, BAM, RePRI, DIaM, HSNet): fold i = {i+1, i+5, ..., i+77}.
    ``"contiguous"`` (PANet convention): fold i = {20i+1, ..., 20i+20}.

    Raises:
        DatasetError: unknown convention (lists the valid ones).
    """
    if fold_convention == "interleaved":
        return {i: tuple(range(i + 1, 81, 4)) for i in range(4)}
    if fold_convention == "contiguous":
        return {i: tuple(range(20 * i + 1, 20 * i + 21)) for i in range(4)}
    raise DatasetError(f"unknown COCO-20i fold_convention {fold_convention!r}; valid: {list(FOLD_CONVENTIONS)}")


class Coco20i(ListDataset):
    """COCO-20i: COCO 2014 images + class-index mask PNGs written by :mod:`fss_lab.data.prepare_coco`.

    Layout (``root``; the list format of RePRI/DIaM)::

        root/train2014/COCO_train2014_000000000009.jpg     root/val2014/COCO_val2014_000000000042.jpg
        root/train/COCO_train2014_000000000009.png         root/val/COCO_val2014_000000000042.png
        root/lists/coco/train.txt   82,081 lines "train2014/<name>.jpg train/<name>.png"
        root/lists/coco/val.txt     40,137 lines "val2014/<name>.jpg val/<name>.png"

    Mask values: 0 background, 1..80 = position of the category in the COCO category list + 1 (crowd
    annotations skipped, later instances overwrite earlier ones); no 255.

    Args:
        root: COCO folder; list paths are relative to it.
        split: ``"train"`` or ``"val"``.
        fold_convention: ``"interleaved"`` (default, as published tables) or ``"contiguous"``; see :func:`coco_folds`.
        list_file: list to use instead of ``root/lists/coco/<split>.txt``.

    Items: ``(image uint8 [H, W, 3], label uint8 [H, W] in {0..80, 255})``; ``image_id`` is the file stem.

    Raises:
        DatasetError: unknown split/convention, missing list or listed file; corrupt or inconsistent files on load.
    """

    class_names = COCO_CLASS_NAMES

    def __init__(self, root: str | Path, split: str = "val", fold_convention: str = "interleaved",
                 list_file: str | Path | None = None):
        self.folds = coco_folds(fold_convention)
        if list_file is None and split not in COCO_LIST_LENGTHS:
            raise DatasetError(
                f"unknown COCO-20i split {split!r}; valid: {sorted(COCO_LIST_LENGTHS)} (or pass list_file=<path>)"
            )
        self.root = Path(root)
        self.split = split
        self.fold_convention = fold_convention
        self.name = "coco20i" if fold_convention == "interleaved" else "coco20i_contiguous"
        self.list_path, self._pairs = load_list(self.root, list_file, "coco", split)
