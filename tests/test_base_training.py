"""BaseTrainingSet: image selection and label remapping per novel policy, seeded augmentation."""
from __future__ import annotations

import pytest
import torch

from fss_lab.data.base import DatasetError
from fss_lab.data.base_training import BaseTrainingSet
from fss_lab.data.class_maps import GFSSClassMap
from fss_lab.data.transforms import PairTransform
from tests.conftest import ToyDataset

# fold 0: novel (1, 2), base (3, 4) -> base labels 1, 2
LAYOUT = [
    [(1, 0, 0, 16, 16), (3, 16, 16, 32, 32)],  # novel 1 + base 3
    [(4, 0, 0, 32, 8)],                        # base 4 only
    [(2, 0, 0, 8, 8)],                         # novel only: never kept
    [(3, 0, 0, 2, 2), (4, 8, 8, 10, 10)],      # tiny base objects (4 px each)
]
T = PairTransform(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture
def ds():
    return ToyDataset(LAYOUT)


@pytest.fixture
def cmap(ds):
    return GFSSClassMap.from_fold(ds, 0)


def test_ignore_policy_keeps_base_images_and_ignores_novel_pixels(ds, cmap):
    s = BaseTrainingSet(ds, cmap, "ignore", T, augment=False)
    assert s.indices == [0, 1, 3] and len(s) == 3 and s.num_classes == 3
    image, label = s[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert label.dtype == torch.int64 and label.shape == (32, 32)
    assert (label[:16, :16] == 255).all() and (label[16:, 16:] == 1).all() and (label[:16, 16:] == 0).all()
    assert set(s[1][1].unique().tolist()) == {0, 2}


def test_background_and_drop_policies(ds, cmap):
    _, label = BaseTrainingSet(ds, cmap, "background", T, augment=False)[0]
    assert (label[:16, :16] == 0).all() and (label[16:, 16:] == 1).all()
    drop = BaseTrainingSet(ds, cmap, "drop", T, augment=False)
    assert drop.indices == [1, 3]


def test_min_base_area_filters_small_objects(ds, cmap):
    assert BaseTrainingSet(ds, cmap, transform=T, min_base_area=5).indices == [0, 1]
    with pytest.raises(DatasetError, match="min_base_area"):
        BaseTrainingSet(ds, cmap, transform=T, min_base_area=10_000)


def test_augmentation_is_seeded_per_epoch_and_keeps_the_label_space(ds, cmap):
    s = BaseTrainingSet(ds, cmap, "ignore", T, seed=3)
    a = s[0]
    assert all(torch.equal(u, v) for u, v in zip(a, s[0]))  # same (seed, epoch, item): same draw
    other_seed = BaseTrainingSet(ds, cmap, "ignore", T, seed=4)[0]
    s.set_epoch(1)
    assert not torch.equal(a[0], s[0][0]) and not torch.equal(a[0], other_seed[0])
    for e in range(5):
        s.set_epoch(e)
        x, y = s[0]
        assert x.shape == (3, 32, 32) and y.shape == (32, 32)
        assert set(y.unique().tolist()) <= {0, 1, 2, 255}


def test_zoom_out_pads_with_mean_colour_and_ignore(ds, cmap):
    s = BaseTrainingSet(ds, cmap, "ignore", T, seed=0, scale_range=(0.5, 0.5), flip=False)
    x, y = s[1]
    pad = y == 255  # item 1 has no novel pixel: every 255 is padding
    assert pad.sum() == 32 * 32 - 16 * 16
    assert (x[:, pad] == 0).all()  # 0 after normalisation = the mean colour


def test_flipped_is_the_mirrored_plain_item(ds, cmap):
    s = BaseTrainingSet(ds, cmap, "ignore", T)
    (x, y), (xf, yf) = s.plain(0), s.flipped(0)
    assert torch.equal(xf, x.flip(-1)) and torch.equal(yf, y.flip(-1))


def test_bad_arguments(ds, cmap):
    with pytest.raises(DatasetError, match="novel_policy"):
        BaseTrainingSet(ds, cmap, "keep", T)
    with pytest.raises(DatasetError, match="from_fold"):
        BaseTrainingSet(ToyDataset(LAYOUT, num_classes=6), cmap, transform=T)
    with pytest.raises(DatasetError, match="scale_range"):
        BaseTrainingSet(ds, cmap, transform=T, scale_range=(2.0, 1.0))
    with pytest.raises(IndexError):
        BaseTrainingSet(ds, cmap, transform=T)[3]


def test_base_model_initialisation_is_seeded():
    """The same BaseModelConfig builds the same untrained PSPNet in any process (the head's random init is seeded),
    and building it leaves the caller's global RNG alone."""
    from fss_lab.experiments.base_model import BaseModelConfig, build_model

    torch.manual_seed(123)
    a = build_model(BaseModelConfig(seed=0), num_base=3).state_dict()
    after = torch.rand(1)
    torch.manual_seed(999)
    b = build_model(BaseModelConfig(seed=0), num_base=3).state_dict()
    c = build_model(BaseModelConfig(seed=1), num_base=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a), "another seed must give another head"
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(1)), "build_model must not consume the caller's random numbers"
