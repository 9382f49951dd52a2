"""Tests of the generated default dataset (fss_lab.data.synthetic): contract, determinism, splits, fold design."""
from __future__ import annotations

import hashlib
import pickle
import socket

import numpy as np
import pytest

from fss_lab.data import DatasetError, create_dataset
from fss_lab.data.synthetic import CLASS_NAMES, CONFUSABLE_PAIRS, SyntheticShapes
from fss_lab.data.synthetic_layout import SHAPES
from fss_lab.data.synthetic_textures import MATERIALS, _skimage_image, load_texture_bank


@pytest.fixture(scope="module")
def full_splits() -> dict[str, SyntheticShapes]:
    """Default-sized train and val splits (only their labels are rendered by the tests that use them)."""
    return {split: SyntheticShapes(split) for split in ("train", "val")}


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(a.tobytes()).hexdigest()


# ---- contract ---------------------------------------------------------------------------------------------
def test_shapes_dtypes_and_ids():
    ds = SyntheticShapes("val", n_images=3)
    image, label = ds.load(1)
    assert image.shape == (192, 192, 3) and image.dtype == np.uint8
    assert label.shape == (192, 192) and label.dtype == np.uint8
    assert ds.image_id(12 % len(ds)) == "synthetic_val_000000"
    assert SyntheticShapes("train", n_images=13).image_id(12) == "synthetic_train_000012"
    assert SyntheticShapes("val", n_images=2, seed=3).image_id(1) == "synthetic_val_000001_s3"
    assert len(ds) == 3 and ds.num_classes == 20 and ds.num_folds == 4 and ds.name == "synthetic"
    small = SyntheticShapes("val", n_images=1, image_size=(96, 128))
    assert small.load_image(0).shape == (96, 128, 3) and small.load_label(0).shape == (96, 128)
    assert SyntheticShapes("val", n_images=1, image_size=80).load_label(0).shape == (80, 80)
    assert small.default_min_area == round(0.02 * 96 * 128)


def test_default_sizes_and_factory():
    assert len(SyntheticShapes("train")) == 600 and len(SyntheticShapes("val")) == 200
    ds = create_dataset("synthetic", split="train", n_images=2)
    assert isinstance(ds, SyntheticShapes) and ds.split == "train" and len(ds) == 2


def test_labels_every_pixel_and_value_range():
    ds = SyntheticShapes("val", n_images=12)
    for i in range(len(ds)):
        label = ds.load_label(i)
        values = set(np.unique(label).tolist())
        assert 255 not in values and values <= set(range(21)), values
        assert 0 in values, "background (0) is a labelled region in every image"
        assert len(values - {0}) >= 1


def test_objects_are_mostly_above_two_percent(full_splits):
    ds = full_splits["val"]
    areas = [n for counts in ds.class_pixel_counts() for n in counts.values()]
    assert len(areas) > 2 * len(ds)  # 2 to 5 objects per image
    assert np.mean(np.array(areas) >= ds.default_min_area) > 0.9


# ---- determinism --------------------------------------------------------------------------------------------
def test_same_seed_same_arrays_different_seed_differs():
    a, b = SyntheticShapes("val", n_images=3, seed=7), SyntheticShapes("val", n_images=3, seed=7)
    c = SyntheticShapes("val", n_images=3, seed=8)
    for i in range(3):
        np.testing.assert_array_equal(a.load_image(i), b.load_image(i))
        np.testing.assert_array_equal(a.load_label(i), b.load_label(i))
    assert not np.array_equal(a.load_image(0), c.load_image(0))
    assert not np.array_equal(a.load_label(0), c.load_label(0))


def test_item_depends_only_on_seed_split_index():
    long, short = SyntheticShapes("val", n_images=50), SyntheticShapes("val", n_images=5, cache_size=0)
    _ = long.load(40)  # generation order must not matter
    np.testing.assert_array_equal(long.load_image(4), short.load_image(4))
    np.testing.assert_array_equal(long.load_label(4), short.load_label(4))


def test_label_only_rendering_matches_full_rendering():
    ds = SyntheticShapes("val", n_images=6)
    fast = ds._compute_class_pixel_counts()  # labels rendered without images
    for i in range(len(ds)):
        values, n = np.unique(ds.load_label(i), return_counts=True)
        assert fast[i] == {int(v): int(c) for v, c in zip(values, n) if v != 0}


def test_cache_returns_copies_and_lru_evicts():
    ds = SyntheticShapes("val", n_images=4, cache_size=2)
    first = ds.load_label(0)
    first[:] = 99  # mutating a returned array must not corrupt the cache
    assert ds.load_label(0).max() <= 20
    for i in range(4):
        ds.load_image(i)
    assert len(ds._cache) == 2 and set(ds._cache) == {2, 3}
    np.testing.assert_array_equal(ds.load_image(0), SyntheticShapes("val", n_images=1).load_image(0))


def test_pickle_roundtrip_drops_cache_keeps_content():
    ds = SyntheticShapes("val", n_images=2)
    image = ds.load_image(1)
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone._cache) == 0
    np.testing.assert_array_equal(clone.load_image(1), image)


# ---- splits -------------------------------------------------------------------------------------------------
def test_train_and_val_share_no_image():
    train, val = SyntheticShapes("train", n_images=25), SyntheticShapes("val", n_images=25)
    train_hashes = {_digest(train.load_image(i)) for i in range(len(train))}
    val_hashes = {_digest(val.load_image(i)) for i in range(len(val))}
    assert len(train_hashes) == len(val_hashes) == 25
    assert train_hashes.isdisjoint(val_hashes)
    assert set(map(train.image_id, range(25))).isdisjoint(map(val.image_id, range(25)))


def test_every_class_in_both_splits_with_enough_images(full_splits):
    for split, minimum in (("train", 60), ("val", 20)):
        ds = full_splits[split]
        holders = np.zeros(ds.num_classes + 1, dtype=int)
        for counts in ds.class_pixel_counts():
            for c, n in counts.items():
                holders[c] += n >= ds.default_min_area
        assert holders[1:].min() >= minimum, (split, holders[1:].tolist())


# ---- class design -------------------------------------------------------------------------------------------
def test_folds_like_pascal5i():
    ds = SyntheticShapes("val", n_images=1)
    assert ds.folds == {i: tuple(range(5 * i + 1, 5 * i + 6)) for i in range(4)}
    assert sorted(c for ids in ds.folds.values() for c in ids) == list(range(1, 21))
    assert len(set(ds.class_names)) == 20 and ds.class_names == CLASS_NAMES


def test_class_names_follow_traits():
    ds = SyntheticShapes("val", n_images=1)
    assert set(ds.class_traits) == set(range(1, 21))
    for c, traits in ds.class_traits.items():
        assert ds.class_name(c) == f"{traits.material} {traits.shape}"
        assert traits.shape in SHAPES and traits.material in MATERIALS
    assert {t.material for t in ds.class_traits.values()} == set(MATERIALS)


@pytest.mark.parametrize("fold", range(4))
def test_novel_classes_share_shape_and_material_with_base(fold):
    ds = SyntheticShapes("val", n_images=1)
    base = [ds.class_traits[c] for c in ds.base_classes(fold)]
    for c in ds.novel_classes(fold):
        novel = ds.class_traits[c]
        assert any(b.shape == novel.shape for b in base), ds.class_name(c)
        assert any(b.material == novel.material for b in base), ds.class_name(c)


def test_confusable_pairs_are_valid_novel_base_pairs():
    ds = SyntheticShapes("val", n_images=1)
    ids = {name: k for k, name in enumerate(ds.class_names, start=1)}
    for a, b, why in CONFUSABLE_PAIRS:
        ta, tb = ds.class_traits[ids[a]], ds.class_traits[ids[b]]
        assert ta.shape == tb.shape or ta.material == tb.material, (a, b)
        assert any(ids[a] in ds.novel_classes(f) and ids[b] in ds.base_classes(f) for f in ds.folds), (a, b)
        assert why


def test_describe_classes_table():
    table = SyntheticShapes("val", n_images=1).describe_classes()
    assert list(table.columns) == ["class_id", "name", "shape", "material", "novel_in_fold", "confusable_with"]
    assert len(table) == 20 and table["class_id"].tolist() == list(range(1, 21))
    assert table.set_index("class_id").loc[6, "novel_in_fold"] == 1
    assert "brick hexagon" in table.set_index("name").loc["brick disc", "confusable_with"]


# ---- offline sources and bad input --------------------------------------------------------------------------
def test_sources_load_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    load_texture_bank.cache_clear()
    bank = load_texture_bank()
    assert set(bank.materials) == {m for m, src in MATERIALS.items() if src is not None}
    assert all(t.dtype == np.float32 and 0 <= t.min() and t.max() <= 1 for t in bank.materials.values())
    assert len(bank.backgrounds) >= 5


def test_missing_bundled_image_raises_dataset_error():
    with pytest.raises(DatasetError, match="no_such_image"):
        _skimage_image("no_such_image")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "test"}, "valid: \\['train', 'val'\\]"),
        ({"n_images": 0}, "positive int"),
        ({"n_images": 2.5}, "positive int"),
        ({"image_size": (32, 32)}, ">= 64"),
        ({"image_size": (192, 192, 3)}, "\\(H, W\\)"),
        ({"seed": -1}, "non-negative"),
        ({"cache_size": -1}, "cache_size"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(DatasetError, match=match):
        SyntheticShapes(**kwargs)


def test_bad_index():
    ds = SyntheticShapes("val", n_images=2)
    with pytest.raises(IndexError, match="out of range"):
        ds.load_image(2)
    with pytest.raises(IndexError):
        ds.load_label(-1)
    with pytest.raises(TypeError):
        ds.load_image(1.5)
    with pytest.raises(DatasetError, match="class id 21"):
        ds.class_name(21)
