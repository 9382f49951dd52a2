"""PASCAL-5i, COCO-20i (with the real pycocotools mask preparation) and FSS-1000 on tiny trees in their real layouts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from fss_lab.data import prepare_coco
from fss_lab.data.base import DatasetError
from fss_lab.data.coco import COCO_CLASS_NAMES, Coco20i, coco_folds
from fss_lab.data.fss1000 import FSS1000, seeded_class_split
from fss_lab.data.pascal import PASCAL_CLASS_NAMES, Pascal5i

H, W = 30, 40


def write_jpg(path: Path, seed: int = 0, size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=90)


def write_png(path: Path, label: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label)
    if palette:  # VOC SegmentationClass style: palette indices are the class ids
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


# ---------------------------------------------------------------- PASCAL-5i
VOC_IDS = {"train": ["2007_000032", "2007_000039"], "val": ["2008_000008", "2008_000009", "2008_000015"]}


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    for split, ids in VOC_IDS.items():
        for i, voc_id in enumerate(ids):
            write_jpg(tmp_path / "JPEGImages" / f"{voc_id}.jpg", seed=i)
            label = np.zeros((H, W), np.uint8)
            label[5:20, 5:25], label[4, :] = 15 if i else 1, 255  # person / aeroplane, a 255 boundary row
            write_png(tmp_path / "SegmentationClassAug" / f"{voc_id}.png", label, palette=i == 1)
        lines = [f"JPEGImages/{v}.jpg SegmentationClassAug/{v}.png" for v in ids]
        (tmp_path / "lists" / "pascal").mkdir(parents=True, exist_ok=True)
        (tmp_path / "lists" / "pascal" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_pascal_loads_lists_folds_and_names(voc: Path) -> None:
    ds = Pascal5i(voc, "val")
    assert (len(ds), ds.name, ds.num_classes, ds.num_folds) == (3, "pascal5i", 20, 4)
    image, label = ds.load(1)  # the palette PNG: indices are read, not colours
    assert image.shape == (H, W, 3) and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 15, 255} and ds.image_id(1) == "2008_000009"
    assert [ds.class_name(c) for c in ds.novel_classes(0)] == ["aeroplane", "bicycle", "bird", "boat", "bottle"]
    assert ds.novel_classes(3) == (16, 17, 18, 19, 20) and ds.base_classes(1) == (1, 2, 3, 4, 5, *range(11, 21))
    assert len(Pascal5i(voc, "train")) == 2 and PASCAL_CLASS_NAMES[14] == "person"
    assert ds.class_pixel_counts()[0] == {1: 300}


def test_pascal10i_folds_and_custom_list(voc: Path) -> None:
    custom = voc / "mine.txt"
    custom.write_text("JPEGImages/2008_000008.jpg SegmentationClassAug/2008_000008.png\n")
    ds = Pascal5i(voc, "val", list_file=custom, fold_scheme="10i")
    assert len(ds) == 1 and ds.name == "pascal10i"
    assert ds.novel_classes(10) == tuple(range(1, 11)) and ds.novel_classes(11) == tuple(range(11, 21))
    with pytest.raises(DatasetError, match=r"no fold 0; valid folds: \[10, 11\]"):
        ds.novel_classes(0)


def test_pascal_bad_inputs(voc: Path) -> None:
    ds = Pascal5i(voc, "val")
    with pytest.raises(DatasetError, match=r"no fold 4; valid folds: \[0, 1, 2, 3\]"):
        ds.novel_classes(4)
    (voc / "JPEGImages" / "2008_000008.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(DatasetError, match=r"does not decode: .*2008_000008\.jpg"):
        ds.load(0)
    bad = np.full((H, W), 21, np.uint8)
    write_png(voc / "SegmentationClassAug" / "2008_000009.png", bad)
    with pytest.raises(DatasetError, match=r"2008_000009\.png: mask values \[21\]"):
        ds.load_label(1)
    write_png(voc / "SegmentationClassAug" / "2008_000015.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DatasetError, match=r"2008_000015\.jpg is 40x30 .*2008_000015\.png is 40x31"):
        ds.load(2)
    (voc / "SegmentationClassAug" / "2007_000039.png").unlink()
    with pytest.raises(DatasetError, match=r"pascal[/\\]train\.txt names .*2007_000039\.png"):
        Pascal5i(voc, "train")
    with pytest.raises(DatasetError, match=r"unknown PASCAL split 'test'"):
        Pascal5i(voc, "test")
    with pytest.raises(DatasetError, match=r"fold_scheme '20i'"):
        Pascal5i(voc, "val", fold_scheme="20i")
    with pytest.raises(DatasetError, match=r"list file not found: .*lists[/\\]pascal[/\\]val\.txt"):
        Pascal5i(voc / "elsewhere", "val")


# ---------------------------------------------------------------- COCO-20i
def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def crowd_rle() -> dict:
    binary = np.zeros((H, W), np.uint8)
    binary[0:10, 32:40] = 1
    rle = mask_utils.encode(np.asfortranarray(binary))
    return {"counts": rle["counts"].decode("ascii"), "size": rle["size"]}


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """Categories 1, 3, 90 (-> indices 1, 2, 3); image 1: cat 1 then cat 90 overlapping + a crowd region;
    image 2: the same rectangles in the reverse order + a two-polygon annotation; image 3: no annotations."""
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "height": H, "width": W} for i in (1, 2, 3)]
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [rect(2, 2, 20, 20)]},
        {"id": 11, "image_id": 1, "category_id": 90, "iscrowd": 0, "segmentation": [rect(12, 8, 30, 25)]},
        {"id": 12, "image_id": 1, "category_id": 3, "iscrowd": 1, "segmentation": crowd_rle()},
        {"id": 20, "image_id": 2, "category_id": 90, "iscrowd": 0, "segmentation": [rect(12, 8, 30, 25)]},
        {"id": 21, "image_id": 2, "category_id": 1, "iscrowd": 0, "segmentation": [rect(2, 2, 20, 20)]},
        {"id": 22, "image_id": 2, "category_id": 3, "iscrowd": 0,
         "segmentation": [rect(32, 2, 38, 10), rect(32, 18, 38, 27)]},
    ]
    cats = [{"id": c, "name": n, "supercategory": "x"} for c, n in ((1, "person"), (3, "car"), (90, "toothbrush"))]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    for entry in images:
        write_jpg(tmp_path / "val2014" / entry["file_name"], seed=entry["id"])
    return tmp_path


def prepare(root: Path, *extra: str) -> None:
    args = ["--annotations", str(root / "annotations" / "instances_val2014.json"), "--out", str(root / "val"),
            "--list", str(root / "lists" / "coco" / "val.txt"), "--quiet", *extra]
    assert prepare_coco.main(args) == 0


def test_prepare_coco_masks_follow_annotation_order(coco_root: Path) -> None:
    prepare(coco_root)
    lines = (coco_root / "lists" / "coco" / "val.txt").read_text().split("\n")
    assert lines[:2] == [f"val2014/COCO_val2014_00000000000{i}.jpg val/COCO_val2014_00000000000{i}.png" for i in (1, 2)]
    assert not (coco_root / "val" / "COCO_val2014_000000000003.png").exists()  # no annotations: not listed
    first = np.asarray(Image.open(coco_root / "val" / "COCO_val2014_000000000001.png"))
    second = np.asarray(Image.open(coco_root / "val" / "COCO_val2014_000000000002.png"))
    assert first.dtype == np.uint8 and first.shape == (H, W)
    assert (first[5, 5], first[15, 15], first[22, 25], first[28, 1]) == (1, 3, 3, 0)  # later overwrites earlier
    assert first[5, 35] == 0  # crowd skipped
    assert set(np.unique(first)) == {0, 1, 3}
    assert (second[5, 5], second[15, 15], second[22, 25]) == (1, 1, 3)  # reversed order, reversed winner
    assert second[5, 35] == 2 and second[22, 35] == 2  # both polygons of one annotation


def test_prepare_coco_first_polygon_only(coco_root: Path) -> None:
    prepare(coco_root, "--polygons", "first")
    second = np.asarray(Image.open(coco_root / "val" / "COCO_val2014_000000000002.png"))
    assert second[5, 35] == 2 and second[22, 35] == 0


def test_coco20i_reads_prepared_masks(coco_root: Path) -> None:
    prepare(coco_root)
    ds = Coco20i(coco_root, "val")
    assert (len(ds), ds.name, ds.num_classes) == (2, "coco20i", 80)
    image, label = ds.load(0)
    assert image.shape == (H, W, 3) and label[15, 15] == 3 and ds.image_id(1) == "COCO_val2014_000000000002"
    assert ds.novel_classes(0) == tuple(range(1, 81, 4))
    assert [ds.class_name(c) for c in ds.novel_classes(0)[:3]] == ["person", "airplane", "boat"]
    assert ds.novel_classes(3)[-1] == 80 and ds.base_classes(0)[:2] == (2, 3)
    contiguous = Coco20i(coco_root, "val", fold_convention="contiguous")
    assert contiguous.novel_classes(1) == tuple(range(21, 41)) and contiguous.name == "coco20i_contiguous"
    assert COCO_CLASS_NAMES[79] == "toothbrush" and len(COCO_CLASS_NAMES) == 80


def test_coco_folds_partition_the_classes() -> None:
    for convention in ("interleaved", "contiguous"):
        folds = coco_folds(convention)
        assert sorted(c for f in folds.values() for c in f) == list(range(1, 81))
    with pytest.raises(DatasetError, match=r"fold_convention 'fwb'; valid: \['interleaved', 'contiguous'\]"):
        coco_folds("fwb")


def test_coco_bad_inputs(coco_root: Path) -> None:
    prepare(coco_root)
    (coco_root / "val2014" / "COCO_val2014_000000000002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"val\.txt names .*COCO_val2014_000000000002\.jpg"):
        Coco20i(coco_root, "val")
    with pytest.raises(DatasetError, match=r"unknown COCO-20i split 'test'"):
        Coco20i(coco_root, "test")
    ann = json.loads((coco_root / "annotations" / "instances_val2014.json").read_text())
    ann["annotations"][0]["category_id"] = 7
    (coco_root / "bad.json").write_text(json.dumps(ann))
    with pytest.raises(DatasetError, match="category_id 7"):
        prepare_coco.write_masks(prepare_coco.load_coco(coco_root / "bad.json"), coco_root / "x", progress=False)
    with pytest.raises(DatasetError, match="annotation file not found"):
        prepare_coco.load_coco(coco_root / "missing.json")
    with pytest.raises(SystemExit) as exit_info:  # CLI: a clear message, not a traceback
        prepare_coco.main(["--annotations", str(coco_root / "bad.json"), "--out", str(coco_root / "val"),
                           "--list", "l.txt", "--root", str(coco_root / "elsewhere"), "--quiet"])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------- FSS-1000
FSS_CLASSES = ["abacus", "bee", "cat", "duck", "eel", "fox"]


@pytest.fixture
def fss(tmp_path: Path) -> Path:
    """6 classes x 2 images; masks stored as 0/255 grey, 0/1 grey, or RGB black/white (all seen in the wild)."""
    for c, name in enumerate(FSS_CLASSES):
        for n in (1, 2):
            write_jpg(tmp_path / name / f"{n}.jpg", seed=c * 10 + n)
            fg = np.zeros((H, W), bool)
            fg[10:20, 5:15] = True
            if n == 1:
                write_png(tmp_path / name / f"{n}.png", fg.astype(np.uint8) * 255)
            elif c % 2:
                write_png(tmp_path / name / f"{n}.png", fg.astype(np.uint8))
            else:
                rgb = np.repeat((fg.astype(np.uint8) * 255)[..., None], 3, axis=2)
                write_png(tmp_path / name / f"{n}.png", rgb)
    return tmp_path


def test_fss1000_with_split_files(fss: Path) -> None:
    (fss / "splits").mkdir()
    (fss / "splits" / "test.txt").write_text("fox\ncat\n")
    (fss / "splits" / "trn.txt").write_text("abacus\nbee\n")
    ds = FSS1000(fss, "test")
    assert ds.class_names == ("cat", "fox") and ds.folds == {0: (1, 2)} and len(ds) == 4
    assert ds.default_min_area == 1 and ds.class_pixel_counts()[2] == {2: 100}
    assert [ds.image_id(i) for i in range(4)] == ["cat/1", "cat/2", "fox/1", "fox/2"]
    for i in range(4):
        image, label = ds.load(i)
        assert image.shape == (H, W, 3) and label.dtype == np.uint8
        # binary labels (issue 9): 1 = the item's own class, whatever its id; label_value maps class -> value
        assert set(np.unique(label)) == {0, 1} and label[15, 10] == 1 and ds.class_of(i) == 1 + i // 2
        assert ds.label_value(i, ds.class_of(i)) == 1 and ds.label_value(i, 3 - ds.class_of(i)) is None
    assert FSS1000(fss, "trn").class_names == ("abacus", "bee")
    explicit = FSS1000(fss, "val", split_files={"val": fss / "splits" / "trn.txt"})
    assert explicit.class_names == ("abacus", "bee")


def test_fss1000_seeded_fallback_warns_and_is_deterministic(fss: Path) -> None:
    with pytest.warns(UserWarning, match="NOT comparable"):
        a = FSS1000(fss, "test", seed=3)
    with pytest.warns(UserWarning):
        b = FSS1000(fss, "test", seed=3)
    assert a.class_names == b.class_names and len(a.class_names) == 1
    split = seeded_class_split(FSS_CLASSES, seed=3)
    assert sorted(split["train"] + split["val"] + split["test"]) == FSS_CLASSES
    assert split["test"] == a.class_names
    sizes = {k: len(v) for k, v in seeded_class_split([f"c{i}" for i in range(1000)]).items()}
    assert sizes == {"train": 520, "val": 240, "test": 240}


def test_fss1000_bad_inputs(fss: Path) -> None:
    (fss / "list.txt").write_text("cat\nwolf\n")
    with pytest.raises(DatasetError, match=r"class folder not found: .*wolf"):
        FSS1000(fss, "test", split_files=fss / "list.txt")
    (fss / "cat" / "2.png").unlink()
    (fss / "one.txt").write_text("cat\n")
    with pytest.raises(DatasetError, match=r"cat[/\\]2\.jpg has no mask 2\.png"):
        FSS1000(fss, "test", split_files=fss / "one.txt")
    with pytest.raises(DatasetError, match=r"unknown FSS-1000 split 'tst'"):
        FSS1000(fss, "tst")
    (fss / "bee" / "1.png").write_bytes(b"not a png")
    write_jpg(fss / "bee" / "2.jpg", size=(W + 3, H))
    (fss / "bee.txt").write_text("bee\n")
    ds = FSS1000(fss, "test", split_files=fss / "bee.txt")
    with pytest.raises(DatasetError, match=r"does not decode: .*bee[/\\]1\.png"):
        ds.load_label(0)
    with pytest.raises(DatasetError, match=r"2\.jpg is 43x30"):
        ds.load(1)


# ---------------------------------------------------------------- datasets/build_voc_aug.py
def test_build_voc_aug_merges_sbd_and_voc_masks(tmp_path: Path) -> None:
    import runpy

    from scipy.io import savemat

    sbd, voc = tmp_path / "SBD", tmp_path / "VOC2012"
    (sbd / "cls").mkdir(parents=True)
    seg = np.zeros((H, W), np.uint8)
    seg[5:10] = 7
    for stem in ("2008_000002", "2008_000003"):
        savemat(sbd / "cls" / f"{stem}.mat", {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1)}})
    voc_label = np.zeros((H, W), np.uint8)
    voc_label[0], voc_label[10:20] = 255, 15
    write_png(voc / "SegmentationClass" / "2008_000003.png", voc_label, palette=True)
    script = Path(__file__).resolve().parents[1] / "datasets" / "build_voc_aug.py"
    assert runpy.run_path(str(script))["build"](voc, sbd) == 2
    out = voc / "SegmentationClassAug"
    np.testing.assert_array_equal(np.asarray(Image.open(out / "2008_000002.png")), seg)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "2008_000003.png")), voc_label)  # VOC wins
    assert Image.open(out / "2008_000003.png").mode == "L"
