"""PASCAL-5i (Shaban et al., BMVC 2017): VOC2012 images + SBD-augmented masks, PFENet lists, 4 contiguous folds."""
from __future__ import annotations

from pathlib import Path

from .base import DatasetError, ListDataset, check_list_files, read_list_file

PASCAL_CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
#: PASCAL-5i: fold i novel = {5i+1, ..., 5i+5} (VOC order); used by every PFENet-lineage repository.
PASCAL5I_FOLDS = {i: tuple(range(5 * i + 1, 5 * i + 6)) for i in range(4)}
#: PASCAL-10i (DIaM, Hajimiri et al., CVPR 2023): split "10" novel = 1..10, split "11" novel = 11..20.
PASCAL10I_FOLDS = {10: tuple(range(1, 11)), 11: tuple(range(11, 21))}
#: Lines in the PFENet lists (train = voc_sbd_merge_noduplicate, val = VOC2012 val).
PASCAL_LIST_LENGTHS = {"train": 5953, "val": 1449}
FOLD_SCHEMES = {"5i": PASCAL5I_FOLDS, "10i": PASCAL10I_FOLDS}


def default_list_file(root: str | Path, benchmark: str, split: str) -> Path:
    """``root/lists/<benchmark>/<split>.txt``, where fss_lab looks for list files by default."""
    return Path(root) / "lists" / benchmark / f"{split}.txt"


def load_list(root: Path, list_file: str | Path | None, benchmark: str, split: str) -> tuple[Path, list]:
    """Read and check a PFENet-style list: ``(list path, [(image path, label path), ...])``.

    Raises:
        DatasetError: the list is missing (says where it was looked for and where to get it), malformed, or
        names a file that does not exist (names the list and the file).
    """
    list_path = Path(list_file) if list_file is not None else default_list_file(root, benchmark, split)
    if not list_path.is_file():
        raise DatasetError(
            f"{benchmark} list file not found: {list_path}. Put the {split} list there (see datasets/README.md) or "
            "pass list_file=<path>."
        )
    pairs = read_list_file(list_path, root)
    check_list_files(pairs, list_path)
    return list_path, pairs


class Pascal5i(ListDataset):
    """PASCAL-5i: VOC2012 ``JPEGImages`` + ``SegmentationClassAug`` masks listed by PFENet-style list files.

    Layout (``root`` = VOC2012 folder)::

        root/JPEGImages/2008_000008.jpg
        root/SegmentationClassAug/2008_000008.png   values 0 = background, 1..20 = VOC classes, 255 = boundary
        root/lists/pascal/train.txt                  5,953 lines (voc_sbd_merge_noduplicate)
        root/lists/pascal/val.txt                    1,449 lines (VOC2012 val)

    Args:
        root: the VOC2012 folder; list paths are relative to it.
        split: ``"train"`` or ``"val"``.
        list_file: list to use instead of ``root/lists/pascal/<split>.txt``; lines
            ``JPEGImages/<id>.jpg SegmentationClassAug/<id>.png``.
        fold_scheme: ``"5i"`` (folds 0..3, novel 5i+1..5i+5) or ``"10i"`` (DIaM's PASCAL-10i, folds 10 and 11).

    Items: ``(image uint8 [H, W, 3], label uint8 [H, W] in {0..20, 255})``; ``image_id`` is the VOC id.

    Raises:
        DatasetError: unknown split or fold scheme, missing list, a list entry whose file is missing; when
        loading, a corrupt file, a mask value outside ``{0..20, 255}`` or an image/mask size mismatch.
    """

    class_names = PASCAL_CLASS_NAMES

    def __init__(self, root: str | Path, split: str = "val", list_file: str | Path | None = None,
                 fold_scheme: str = "5i"):
        if fold_scheme not in FOLD_SCHEMES:
            raise DatasetError(f"unknown PASCAL fold_scheme {fold_scheme!r}; valid: {sorted(FOLD_SCHEMES)}")
        if list_file is None and split not in PASCAL_LIST_LENGTHS:
            raise DatasetError(
                f"unknown PASCAL split {split!r}; valid: {sorted(PASCAL_LIST_LENGTHS)} (or pass list_file=<path>)"
            )
        self.root = Path(root)
        self.split = split
        self.name = "pascal5i" if fold_scheme == "5i" else "pascal10i"
        self.fold_scheme = fold_scheme
        self.folds = dict(FOLD_SCHEMES[fold_scheme])
        self.list_path, self._pairs = load_list(self.root, list_file, "pascal", split)
