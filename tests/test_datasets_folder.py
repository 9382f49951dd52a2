"""FolderDataset: users' own images + label PNGs with a JSON config (generated 40x30 fixtures)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fss_lab.data.base import DatasetError
from fss_lab.data.folder import FolderDataset, builtin_configs, parse_config

H, W = 30, 40
NAMES = ["cat", "dog", "car"]


def write_jpg(path: Path, seed: int = 0, size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=90)


def write_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(path)


def stripes(values: list[int], dtype=np.uint8) -> np.ndarray:
    """A [30, 40] label whose rows cycle through ``values``."""
    label = np.zeros((H, W), dtype=dtype)
    for i, v in enumerate(values):
        label[i::len(values)] = v
    return label


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    """root/images/*.jpg + root/masks/*.png, identity values 0..3 and 255, config in root/fss_lab.json."""
    for i, stem in enumerate(["a_01", "a_02", "b_01"]):
        write_jpg(tmp_path / "images" / f"{stem}.jpg", seed=i)
        write_png(tmp_path / "masks" / f"{stem}.png", stripes([0, 1, 2, 3, 255]))
    config = {"name": "toy", "class_names": NAMES, "folds": {"0": ["car"], "1": [1, 2]}, "group_pattern": "^([a-z])_"}
    (tmp_path / "fss_lab.json").write_text(json.dumps(config))
    return tmp_path


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    """Split list files and stored values 10/20/30 (classes), 99 (void), like a real export."""
    lines = {"train": [], "val": []}
    for i, (split, stem) in enumerate([("train", "x_1"), ("train", "y_1"), ("val", "x_2")]):
        write_jpg(tmp_path / "img" / f"{stem}.jpg", seed=i)
        write_png(tmp_path / "lbl" / f"{stem}.png", stripes([10, 20, 30, 99]))
        lines[split].append(f"img/{stem}.jpg lbl/{stem}.png")
    for split, rows in lines.items():
        (tmp_path / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return tmp_path


LISTED_CONFIG = {
    "class_names": NAMES,
    "splits": {"train": "train.txt", "val": "val.txt"},
    "value_map": {"10": 1, "20": 2, "30": 3},
    "ignore_values": [99],
    "folds": {"0": ["dog"]},
    "has_background": False,
}


def test_flat_layout_reads_config_from_root(flat: Path) -> None:
    ds = FolderDataset(flat)
    assert (len(ds), ds.name, ds.class_names) == (3, "toy", tuple(NAMES))
    image, label = ds.load(0)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2, 3, 255}
    assert [ds.image_id(i) for i in range(3)] == ["a_01", "a_02", "b_01"]
    assert [ds.group(i) for i in range(3)] == ["a", "a", "b"]
    assert ds.novel_classes(0) == (3,) and ds.base_classes(0) == (1, 2)
    assert ds.novel_classes(1) == (1, 2) and ds.class_name(3) == "car"
    assert ds.class_pixel_counts()[0] == {1: 240, 2: 240, 3: 240}
    assert ds.default_min_area == 2048
    assert FolderDataset(flat, "val", {"class_names": NAMES, "min_area": 9}).default_min_area == 9


def test_split_subfolders_are_used_when_present(tmp_path: Path) -> None:
    for split, n in (("train", 2), ("val", 1)):
        for i in range(n):
            write_jpg(tmp_path / "images" / split / f"{split}{i}.png", seed=i)
            write_png(tmp_path / "masks" / split / f"{split}{i}.png", stripes([0, 1]))
    cfg = {"class_names": NAMES}
    assert len(FolderDataset(tmp_path, "train", cfg)) == 2
    assert FolderDataset(tmp_path, "val", cfg).image_id(0) == "val0"
    with pytest.raises(DatasetError, match=r"no split folder .*test; valid splits: \['train', 'val'\]"):
        FolderDataset(tmp_path, "test", cfg)


def test_lists_value_map_and_ignore(listed: Path) -> None:
    ds = FolderDataset(listed, "train", LISTED_CONFIG)
    assert ds.name == listed.name and len(ds) == 2 and ds.group(0) is None
    label = ds.load_label(1)
    expected = stripes([1, 2, 3, 255])
    np.testing.assert_array_equal(label, expected)
    assert len(FolderDataset(listed, "val", LISTED_CONFIG)) == 1


def test_config_from_json_path(listed: Path) -> None:
    path = listed / "my.json"
    path.write_text(json.dumps(LISTED_CONFIG))
    assert len(FolderDataset(listed, "train", path)) == 2
    assert len(FolderDataset(listed, "train", str(path))) == 2


def test_unmapped_stored_value_is_an_error_even_if_it_looks_valid(listed: Path) -> None:
    # 3 is a valid class id, but with a value_map every stored value must be mapped: never silently kept.
    write_png(listed / "lbl" / "x_1.png", stripes([10, 3]))
    ds = FolderDataset(listed, "train", LISTED_CONFIG)
    with pytest.raises(DatasetError, match=r"x_1\.png.*\[3\].*value_map"):
        ds.load_label(0)


def test_stored_255_is_ignore_with_a_value_map(listed: Path) -> None:
    write_png(listed / "lbl" / "x_1.png", stripes([10, 255]))
    assert set(np.unique(FolderDataset(listed, "train", LISTED_CONFIG).load_label(0))) == {1, 255}


def test_background_forbidden_when_has_background_false(listed: Path) -> None:
    cfg = dict(LISTED_CONFIG, value_map={"10": 1, "20": 0, "30": 3})
    with pytest.raises(DatasetError, match="has_background"):
        FolderDataset(listed, "train", cfg).load_label(0)


def test_identity_mask_value_outside_classes(flat: Path) -> None:
    write_png(flat / "masks" / "a_02.png", stripes([0, 7]))
    ds = FolderDataset(flat)
    with pytest.raises(DatasetError, match=r"a_02\.png.*\[7\]"):
        ds.load_label(1)


def test_sixteen_bit_masks_map_through_the_table(tmp_path: Path) -> None:
    write_jpg(tmp_path / "images" / "a.jpg")
    write_png(tmp_path / "masks" / "a.png", stripes([1000, 2000, 65535], dtype=np.uint16))
    cfg = {"class_names": ["p", "q"], "value_map": {"1000": 1, "2000": 2}, "ignore_values": [65535]}
    np.testing.assert_array_equal(FolderDataset(tmp_path, "val", cfg).load_label(0), stripes([1, 2, 255]))


def test_corrupt_image_and_size_mismatch(flat: Path) -> None:
    (flat / "images" / "a_01.jpg").write_bytes(b"this is not a jpeg")
    write_jpg(flat / "images" / "a_02.jpg", size=(W + 2, H))
    truncated = (flat / "images" / "b_01.jpg").read_bytes()[:200]
    (flat / "images" / "b_01.jpg").write_bytes(truncated)
    ds = FolderDataset(flat)
    with pytest.raises(DatasetError, match=r"does not decode: .*a_01\.jpg"):
        ds.load(0)
    with pytest.raises(DatasetError, match=r"does not decode: .*b_01\.jpg"):
        ds.load_image(2)
    with pytest.raises(DatasetError, match=r"a_02\.jpg is 42x30.*a_02\.png is 40x30"):
        ds.load(1)


def test_missing_partner_and_missing_list_entry(flat: Path, listed: Path) -> None:
    (flat / "masks" / "b_01.png").unlink()
    with pytest.raises(DatasetError, match=r"b_01"):
        FolderDataset(flat)
    (listed / "img" / "y_1.jpg").unlink()
    with pytest.raises(DatasetError, match=r"train\.txt names .*y_1\.jpg"):
        FolderDataset(listed, "train", LISTED_CONFIG)


def test_unknown_split_and_unknown_fold(listed: Path) -> None:
    with pytest.raises(DatasetError, match=r"no split 'test'.*\['train', 'val'\]"):
        FolderDataset(listed, "test", LISTED_CONFIG)
    with pytest.raises(DatasetError, match=r"no fold 3.*\[0\]"):
        FolderDataset(listed, "train", LISTED_CONFIG).novel_classes(3)


def test_group_pattern_that_does_not_match(flat: Path) -> None:
    cfg = {"class_names": NAMES, "group_pattern": r"^(\d+)_"}
    with pytest.raises(DatasetError, match=r"does not match image file name 'a_01\.jpg'"):
        FolderDataset(flat, "val", cfg)


def test_repeated_stems_get_path_ids(tmp_path: Path) -> None:
    rows = []
    for d in ("one", "two"):
        write_jpg(tmp_path / d / "frame.jpg")
        write_png(tmp_path / d / "frame.png", stripes([0, 1]))
        rows.append(f"{d}/frame.jpg {d}/frame.png")
    (tmp_path / "all.txt").write_text("\n".join(rows))
    ds = FolderDataset(tmp_path, "all", {"class_names": ["x"], "splits": {"all": "all.txt"}})
    assert [ds.image_id(i) for i in range(2)] == ["one/frame", "two/frame"]


BAD_CONFIGS = [
    ({"class_names": NAMES, "classes": 3}, r"unknown keys \['classes'\].*valid keys"),
    ({"name": "x"}, "'class_names' must be a non-empty list"),
    ({"class_names": ["a", "a"]}, "duplicates"),
    ({"class_names": NAMES, "folds": {"0": ["horse"]}},
     r"unknown class name 'horse'; valid names: \['cat', 'dog', 'car'\]"),
    ({"class_names": NAMES, "folds": {"0": [4]}}, r"class id 4 is not in 1\.\.3"),
    ({"class_names": NAMES, "binary": True}, "'binary': true needs exactly one class"),
    ({"class_names": NAMES, "folds": {"a": [1]}}, "'a' is not an integer fold number"),
    ({"class_names": NAMES, "ignore_values": [-1]}, "-1 is not an integer mask value"),
    ({"class_names": NAMES, "group_pattern": "(["}, "not a valid regex"),
    ({"class_names": NAMES, "group_pattern": "^x"}, "needs a \\(group\\)"),
    ({"class_names": NAMES, "value_map": {"0": 9}}, r"value_map\['0'\] = 9 is not a class id"),
    ({"class_names": NAMES, "value_map": {"0": 1}, "ignore_values": [0]}, "both in value_map and ignore_values"),
    ({"class_names": NAMES, "value_map": {"x": 1}}, "not an integer mask value"),
    ({"class_names": NAMES, "has_background": "no"}, "has_background"),
    ({"class_names": NAMES, "splits": ["train.txt"]}, "'splits' must map"),
    ({"class_names": NAMES, "min_area": 0}, "'min_area' must be a positive number"),
]


@pytest.mark.parametrize("config, message", BAD_CONFIGS)
def test_bad_config_is_explained(config: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_config(config)


def test_config_sources_that_do_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"fss_lab\.json does not exist.*camvid"):
        FolderDataset(tmp_path)
    with pytest.raises(DatasetError, match=r"neither a JSON file nor a built-in.*camvid"):
        FolderDataset(tmp_path, "val", "camvidd")
    (tmp_path / "fss_lab.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        FolderDataset(tmp_path)


def test_builtin_camvid_config_is_valid() -> None:
    assert "camvid" in builtin_configs()
    from fss_lab.data.folder import resolve_config

    cfg = parse_config(resolve_config("camvid", "."))
    assert cfg["class_names"][3] == "road" and cfg["value_map"][10] == 11 and cfg["ignore_values"] == (11,)
    assert cfg["folds"] == {0: (7, 8, 9, 10, 11), 1: (1, 2, 3, 5, 6)}
    assert cfg["has_background"] is False and cfg["min_area"] == 2048


def test_readme_config_example_is_valid() -> None:
    readme = Path(__file__).resolve().parents[1] / "datasets" / "README.md"
    block = readme.read_text().split("```json\n", 1)[1].split("```", 1)[0]
    cfg = parse_config(json.loads(block))
    assert cfg["folds"] == {0: (3,), 1: (1, 2)} and cfg["value_map"][150] == 3


def test_one_class_binary_folder_needs_no_folds_and_no_dummy_class(tmp_path: Path) -> None:
    """root/*.jpg beside label/*.png, masks stored 0/255, config only names the class: FSS works out of the box."""
    from fss_lab.data.class_maps import GFSSClassMap
    from fss_lab.data.sampler import sample_fss_episodes

    mask = np.zeros((H, W), np.uint8)
    mask[5:25, 8:30] = 255
    for i in range(4):
        write_jpg(tmp_path / f"dog_{i}.jpg", seed=i)
        write_png(tmp_path / "label" / f"dog_{i}.png", mask)
    (tmp_path / "fss_lab.json").write_text(json.dumps({"class_names": ["dog"]}))
    ds = FolderDataset(tmp_path, "val")
    assert len(ds) == 4 and ds.folds == {0: (1,)} and ds.binary
    assert set(np.unique(ds.load_label(0))) == {0, 1}
    assert ds.split == "val" and len(FolderDataset(tmp_path, "train")) == 4  # no split folders: every split
    episodes = sample_fss_episodes(ds, 0, 1, 5, seed=0, min_area=1)
    assert len(episodes) == 5
    with pytest.raises(DatasetError, match="every class novel.*FSS testing only"):
        GFSSClassMap.from_fold(ds, 0)


def test_binary_masks_keep_ignore_values_and_can_be_turned_off(tmp_path: Path) -> None:
    write_jpg(tmp_path / "images" / "a.jpg")
    write_png(tmp_path / "masks" / "a.png", stripes([0, 1, 7, 200]))
    ds = FolderDataset(tmp_path, "val", {"class_names": ["cat"], "ignore_values": [200]})
    np.testing.assert_array_equal(ds.load_label(0), stripes([0, 1, 1, 255]))
    plain = FolderDataset(tmp_path, "val", {"class_names": ["cat"], "binary": False})
    with pytest.raises(DatasetError, match="value"):
        plain.load_label(0)


def test_label_folder_inside_images_is_not_a_split(tmp_path: Path) -> None:
    for i in range(2):
        write_jpg(tmp_path / "images" / f"im{i}.jpg", seed=i)
        write_png(tmp_path / "images" / "label" / f"im{i}.png", stripes([0, 1]))
    ds = FolderDataset(tmp_path, "val", {"class_names": ["cat"]})
    assert len(ds) == 2 and ds.image_id(1) == "im1"


def test_cross_group_protocol_from_a_file_name_pattern(tmp_path: Path) -> None:
    from fss_lab.data.sampler import sample_fss_episodes

    for g in ("home", "park"):
        for i in range(3):
            write_jpg(tmp_path / f"{g}_{i}.jpg", seed=i)
            write_png(tmp_path / "masks" / f"{g}_{i}.png", stripes([0, 1]))
    ds = FolderDataset(tmp_path, "val", {"class_names": ["cat"], "group_pattern": "^([a-z]+)_"})
    episodes = sample_fss_episodes(ds, 0, 1, 8, seed=0, min_area=1, cross_group=True)
    assert len(episodes) == 8
    for ep in episodes:
        assert all(ds.group(s) != ds.group(ep.query[0]) for s in ep.support)
