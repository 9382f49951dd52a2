"""The fast data / check paths of issue 13 (feature-cache evaluation, the per-step cost of episodic training) give
the reference values: cached per-(item, class) masks equal the per-image binary labels, the one-pass label checks
accept and refuse what the element-wise ones do, the row-then-column area resize equals one sum, the three-count
FSS meter equals the four set operations. (Speed is measured in bench/feature_cache.py, never asserted here.)"""
from __future__ import annotations

import pytest
import torch

from fss_lab.checks import NonFiniteError, check_finite
from fss_lab.data import PairTransform, TransformedItems
from fss_lab.data.base import DatasetError
from fss_lab.data.episodic import episode_masks, episode_masks_batch
from fss_lab.data.transforms import binary_episode_label
from fss_lab.labels import LabelSpace
from fss_lab.methods.base import check_fss_support
from fss_lab.methods.task import Task, check_labels, fss_shots_valid
from fss_lab.metrics import FSSMeter
from fss_lab.ops import resize_labels
from tests.conftest import ToyDataset
from tests.test_gfss_protocol import LAYOUT


def _items():
    ds = ToyDataset(LAYOUT)
    items = TransformedItems(ds, PairTransform((32, 32)), mask_cache=4)  # a small cache: evictions happen
    items.label(0)[0, :3] = 255  # an ignore strip (labels are cached: the masks must keep it)
    return ds, items


def test_episode_masks_batch_equals_the_per_image_binary_labels():
    ds, items = _items()
    episodes = [(0, 1, 2), (4, 5, 6), (0, 3, 1), (0, 1, 2)]  # repeats: cache hits
    classes = [1, 2, 3, 1]
    for _ in range(2):  # second round: everything from the cache (or re-made after eviction)
        got = episode_masks_batch(items, episodes, classes, "query")
        assert got.dtype == torch.uint8 and got.shape == (4, 3, 32, 32)
        for e, (ix, c) in enumerate(zip(episodes, classes)):
            for k, i in enumerate(ix):
                torch.testing.assert_close(got[e, k], binary_episode_label(items.label(i), c), rtol=0, atol=0)
    assert bool((got[0, 0, 0, :3] == 255).all()) and int((got[0, 0] == 255).sum()) == 3  # the ignore strip kept
    one = episode_masks(items, (4, 5), 2, "support")
    assert one.dtype == torch.int64 and torch.equal(one, got[1, :2].long())


def test_episode_masks_batch_refuses_a_support_without_foreground_naming_it():
    ds, items = _items()
    with pytest.raises(DatasetError, match=r"support image toy_val_011 .* class c1 \(1\)"):
        episode_masks_batch(items, [(0, 1), (2, 11)], [1, 1], "support")
    assert int((episode_masks_batch(items, [(11,)], [1], "query") == 1).sum()) == 0  # queries may lack it
    with pytest.raises(ValueError, match="equal shot counts"):
        episode_masks_batch(items, [(0, 1), (2,)], [1, 1], "query")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_one_pass_label_checks_agree_with_the_elementwise_rule(dtype):
    g = torch.Generator().manual_seed(0)
    fss, gfss = LabelSpace.fss(), LabelSpace(3, 2)
    for trial in range(60):
        lab = torch.randint(0, 3, (3, 6, 6), generator=g)
        lab[lab == 2] = 255
        lab[:, 0, 0] = 1  # every shot has foreground
        if trial % 3 == 1:
            lab[trial % 3, 2, 3] = int(torch.randint(2, 255, (1,), generator=g))  # one bad value
        if trial % 3 == 2:
            lab[1] = 0  # shot 1 without foreground
        lab = lab.to(dtype)
        good_values = bool((((lab == 0) | (lab == 1) | (lab == 255))).all())
        fg = bool((lab == 1).flatten(1).any(1).all())
        assert fss_shots_valid(lab) == (good_values and fg)
        if good_values:
            check_labels(lab, fss)
        else:
            with pytest.raises(ValueError, match=r"1-way episode must hold 0, 1 or 255, found \[\d+\]"):
                check_labels(lab, fss)
        task = Task.fss(torch.zeros(3, 2, 3, 3), lab, torch.zeros(1, 2, 3, 3))
        if good_values and fg:
            check_fss_support(task)
        else:
            with pytest.raises(ValueError, match="found|no foreground pixel"):
                check_fss_support(task)
    check_labels(torch.tensor([[[0, 5, 255]]], dtype=dtype), gfss)
    with pytest.raises(ValueError, match=r"0\.\.5 \(1 \+ B \+ N\) or 255, found \[6\]"):
        check_labels(torch.tensor([[[0, 6, 255]]], dtype=dtype), gfss)
    if dtype == torch.int64:
        with pytest.raises(ValueError, match=r"found \[-1\]"):
            check_labels(torch.tensor([[[0, -1]]]), gfss)


def test_area_resize_equals_the_block_mean_of_the_one_hot():
    g = torch.Generator().manual_seed(1)
    for (hh, ww), (h, w), dtype in (((48, 64), (3, 4), torch.uint8), ((12, 12), (12, 12), torch.int64),
                                    ((20, 30), (4, 5), torch.int64)):
        lab = torch.randint(0, 4, (2, hh, ww), generator=g).to(dtype)
        lab[lab == 3] = 255
        got = resize_labels(lab, (h, w), "area", num_classes=3)
        onehot = torch.stack([(lab == c).double() for c in range(3)], 1)
        ref = onehot.view(2, 3, h, hh // h, w, ww // w).mean((3, 5)).float()
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_fss_meter_batch_counts_equal_the_four_set_operations():
    g = torch.Generator().manual_seed(2)
    pred = torch.randint(0, 2, (5, 2, 9, 7), generator=g)
    target = torch.randint(0, 3, (5, 2, 9, 7), generator=g)
    target[target == 2] = 255
    ids = [1, 2, 1, 3, 2]
    meter, ref = FSSMeter([1, 2, 3]), FSSMeter([1, 2, 3])
    iou = meter.update_batch(pred, target.to(torch.uint8), ids)
    for e, c in enumerate(ids):
        ref.update(pred[e], target[e], c)
    for name in ("inter", "union", "episodes", "fb_inter", "fb_union"):
        assert torch.equal(getattr(meter, name), getattr(ref, name)), name
    v = target != 255
    fg_i = ((pred == 1) & (target == 1) & v).flatten(1).sum(1).double()
    fg_u = (((pred == 1) | (target == 1)) & v).flatten(1).sum(1).double()
    torch.testing.assert_close(iou, torch.where(fg_u > 0, fg_i / fg_u.clamp(min=1), torch.ones_like(fg_u)))
    with pytest.raises(ValueError, match="binary labels"):
        meter.update_batch(pred * 2, target, ids)
    with pytest.raises(ValueError, match="binary labels"):
        meter.update_batch(pred, target.masked_fill(target == 0, 7), ids)


def test_check_finite_one_pass_still_names_nan_inf_and_passes_overflowing_finite_values():
    big = torch.full((4, 4), 3e38)  # finite, but the sum overflows: the exact check decides
    assert check_finite(big, "logits") is big
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(2, 3)
        x[1, 2] = bad
        with pytest.raises(NonFiniteError, match=r"first at index \(1, 2\)"):
            check_finite(x, "logits")
