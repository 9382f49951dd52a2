"""Tests for fss_lab.metrics against hand-computed intersections and unions."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fss_lab.metrics import FSSMeter, GFSSMeter, intersection_and_union, iou_from_stats, to_percent

T = torch.tensor


# ----------------------------------------------------------------------------------------------- statistics
def test_intersection_and_union_by_hand():
    pred = T([[0, 1, 1], [2, 2, 0]])
    target = T([[0, 1, 2], [2, 255, 0]])
    # valid pairs (pred, target): (0,0) (1,1) (1,2) (2,2) [ignored] (0,0)
    # class 0: |pred|=2 |target|=2 I=2 -> U=2; class 1: |pred|=2 |target|=1 I=1 -> U=2;
    # class 2: |pred|=1 (the ignored 2 is not counted) |target|=2 I=1 -> U=2
    inter, union = intersection_and_union(pred, target, num_classes=3)
    assert inter.tolist() == [2, 1, 1]
    assert union.tolist() == [2, 2, 2]
    assert inter.dtype == union.dtype == torch.int64


def test_intersection_and_union_accepts_numpy_and_bool():
    inter, union = intersection_and_union(np.array([True, False]), np.array([1, 1]), num_classes=2)
    assert inter.tolist() == [0, 1] and union.tolist() == [1, 2]


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        intersection_and_union(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2)


def test_float_prediction_rejected_with_hint():
    with pytest.raises(ValueError, match="argmax"):
        intersection_and_union(torch.rand(2, 2), torch.zeros(2, 2, dtype=torch.long), 2)


@pytest.mark.parametrize("pred,target,bad", [([0, 5], [0, 1], 5), ([0, 1], [0, 7], 7), ([-1, 0], [0, 0], -1)])
def test_label_out_of_range_rejected(pred, target, bad):
    with pytest.raises(ValueError, match=f"label {bad} outside 0..2"):
        intersection_and_union(T(pred), T(target), num_classes=3)


def test_prediction_under_ignore_is_not_checked_or_counted():
    inter, union = intersection_and_union(T([9, 1]), T([255, 1]), num_classes=2)
    assert inter.tolist() == [0, 1] and union.tolist() == [0, 1]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([0, 1, 2, 255])), min_size=1, max_size=30))
def test_matches_brute_force(pairs):
    pred = T([p for p, _ in pairs])
    target = T([t for _, t in pairs])
    inter, union = intersection_and_union(pred, target, 3)
    for c in range(3):
        i = sum(1 for p, t in pairs if t != 255 and p == c and t == c)
        u = sum(1 for p, t in pairs if t != 255 and (p == c or t == c))
        assert (inter[c], union[c]) == (i, u)


def test_iou_from_stats_nan_when_union_zero():
    iou = iou_from_stats(T([1, 0]), T([4, 0]))
    assert iou[0] == 0.25 and math.isnan(iou[1])


# ----------------------------------------------------------------------------------------------- FSSMeter
def _two_episodes_of_class_1(meter: FSSMeter) -> None:
    # episode A: fg 4 px predicted perfectly -> I=4, U=4 (IoU 1); bg I=0, U=0
    meter.update(T([[1, 1, 1, 1]]), T([[1, 1, 1, 1]]), class_id=1)
    # episode B: one fg px missed -> fg I=0, U=1 (IoU 0); bg: |pred|=4 |target|=3 I=3 U=4
    meter.update(T([[0, 0, 0, 0]]), T([[1, 0, 0, 0]]), class_id=1)


def test_fss_accumulates_over_episodes_then_divides():
    meter = FSSMeter(class_ids=[1])
    _two_episodes_of_class_1(meter)
    # sum I / sum U = 4 / 5 = 0.8, whereas the mean of per-episode IoUs would be (1 + 0) / 2 = 0.5
    assert meter.per_class_iou() == {1: pytest.approx(0.8)}
    assert meter.miou() == pytest.approx(0.8)
    assert meter.miou() != pytest.approx(0.5)


def test_fb_iou_by_hand():
    meter = FSSMeter(class_ids=[1])
    _two_episodes_of_class_1(meter)
    # bg IoU = 3 / 4, fg IoU = 4 / 5 -> FB-IoU = (0.75 + 0.8) / 2
    assert meter.fb_iou() == pytest.approx(0.775)


def test_fss_miou_is_mean_over_classes_and_warns_for_unseen():
    meter = FSSMeter(class_ids=[1, 2, 3])
    _two_episodes_of_class_1(meter)  # IoU_1 = 0.8
    # class 2, batch of Q=1 queries with one ignore px: pairs (p1,t0) (p1,t1) (p0,t1): fg I=1, U=3
    meter.update(T([[[1, 1], [0, 0]]]), T([[[0, 1], [1, 255]]]), class_id=2)
    assert meter.per_class_iou() == {1: pytest.approx(0.8), 2: pytest.approx(1 / 3)}
    with pytest.warns(UserWarning, match=r"\[3\]"):
        assert meter.miou() == pytest.approx((0.8 + 1 / 3) / 2)
    import warnings

    with warnings.catch_warnings():  # said once per process: the same undefined class does not warn again
        warnings.simplefilter("error")
        summary = meter.summary()
    assert summary["episodes"] == 3
    assert summary["episodes_per_class"] == {1: 2, 2: 1, 3: 0}
    assert set(summary) == {"miou", "fb_iou", "per_class", "episodes", "episodes_per_class"}


def test_fss_ignore_pixels_excluded():
    meter = FSSMeter(class_ids=[4])
    # the predicted fg pixel under ignore does not count: fg I=1, U=1
    meter.update(T([[1, 1], [0, 0]]), T([[1, 255], [0, 0]]), class_id=4)
    assert meter.miou() == 1.0
    assert meter.fb_iou() == 1.0


def test_fss_no_warning_when_all_classes_seen():
    meter = FSSMeter(class_ids=[1])
    _two_episodes_of_class_1(meter)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meter.summary()


def test_fss_unknown_class_and_non_binary_rejected():
    meter = FSSMeter(class_ids=[1, 2])
    with pytest.raises(ValueError, match="class_id 7 is not one of"):
        meter.update(T([1]), T([1]), class_id=7)
    with pytest.raises(ValueError, match="binary"):
        meter.update(T([2]), T([1]), class_id=1)
    assert meter.num_episodes == 0  # failed updates leave no trace


def test_fss_empty_meter_and_bad_class_ids():
    with pytest.raises(ValueError, match="no recorded episode"):
        FSSMeter([1]).miou()
    with pytest.raises(ValueError, match="distinct"):
        FSSMeter([1, 1])
    with pytest.raises(ValueError, match="distinct"):
        FSSMeter([])


def test_fss_merge_equals_single_meter():
    a, b, both = FSSMeter([1, 2]), FSSMeter([1, 2]), FSSMeter([1, 2])
    a.update(T([1, 1, 0]), T([1, 0, 0]), 1)
    b.update(T([0, 1, 1]), T([0, 1, 0]), 2)
    both.update(T([1, 1, 0]), T([1, 0, 0]), 1)
    both.update(T([0, 1, 1]), T([0, 1, 0]), 2)
    merged = a.merge(b)
    assert merged.summary() == both.summary()
    with pytest.raises(ValueError, match="merge"):
        a.merge(FSSMeter([3]))


# ----------------------------------------------------------------------------------------------- GFSSMeter
def _gfss_example() -> GFSSMeter:
    meter = GFSSMeter(num_classes=4, base_ids=[1, 2], novel_ids=[3])
    pred = T([[0, 1, 1, 2], [2, 3, 3, 0]])
    target = T([[0, 1, 2, 2], [2, 3, 0, 255]])
    # pairs (p, t): (0,0) (1,1) (1,2) (2,2) (2,2) (3,3) (3,0) [ignored]
    # class 0: |p|=1 |t|=2 I=1 U=2 -> 1/2     class 1: |p|=2 |t|=1 I=1 U=2 -> 1/2
    # class 2: |p|=2 |t|=3 I=2 U=3 -> 2/3     class 3: |p|=2 |t|=1 I=1 U=2 -> 1/2
    meter.update(pred, target)
    return meter


def test_gfss_scores_by_hand():
    s = _gfss_example().scores()
    assert s["per_class"] == pytest.approx({0: 0.5, 1: 0.5, 2: 2 / 3, 3: 0.5})
    assert s["base_miou"] == pytest.approx(7 / 12)  # (1/2 + 2/3) / 2, background excluded (DIaM)
    assert s["base_miou_with_bg"] == pytest.approx(5 / 9)  # (1/2 + 1/2 + 2/3) / 3 (GFS-Seg)
    assert s["novel_miou"] == pytest.approx(0.5)
    assert s["mean"] == pytest.approx(13 / 24)
    assert s["harmonic"] == pytest.approx(7 / 13)  # 2 * 7/12 * 1/2 / (7/12 + 1/2)
    assert s["all_miou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert s["all_miou_with_bg"] == pytest.approx((0.5 + 0.5 + 2 / 3 + 0.5) / 4)


def test_gfss_accumulates_across_updates():
    meter = GFSSMeter(num_classes=3, base_ids=[1], novel_ids=[2])
    meter.update(T([2, 2, 2, 2]), T([2, 2, 2, 2]))  # class 2: I=4 U=4
    meter.update(T([0, 0]), T([2, 0]))  # class 2: I=0 U=1
    assert meter.per_class_iou()[2] == pytest.approx(0.8)  # not (1 + 0) / 2


def test_gfss_harmonic_zero_when_both_zero():
    meter = GFSSMeter(num_classes=3, base_ids=[1], novel_ids=[2])
    meter.update(T([0, 0, 2, 1]), T([1, 2, 0, 0]))  # every base / novel pixel wrong
    s = meter.scores()
    assert s["base_miou"] == 0 and s["novel_miou"] == 0 and s["harmonic"] == 0.0


def test_gfss_absent_class_warns_and_is_excluded():
    meter = GFSSMeter(num_classes=4, base_ids=[1, 2], novel_ids=[3])
    meter.update(T([0, 1, 3]), T([0, 1, 3]))  # class 2 never appears: union 0
    with pytest.warns(UserWarning, match=r"\[2\]"):
        s = meter.scores()
    assert math.isnan(s["per_class"][2])
    assert s["base_miou"] == 1.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_classes=4, base_ids=[1, 2], novel_ids=[2, 3]), "overlap"),
        (dict(num_classes=3, base_ids=[1], novel_ids=[3]), "outside"),
        (dict(num_classes=3, base_ids=[0, 1], novel_ids=[2]), "outside"),
        (dict(num_classes=3, base_ids=[], novel_ids=[2]), "non-empty"),
    ],
)
def test_gfss_bad_ids(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GFSSMeter(**kwargs)


def test_gfss_empty_and_merge():
    with pytest.raises(ValueError, match="no recorded query"):
        GFSSMeter(3, [1], [2]).scores()
    merged = _gfss_example().merge(_gfss_example())
    assert merged.inter.tolist() == [2, 2, 4, 2]
    assert merged.scores()["base_miou"] == pytest.approx(7 / 12)  # doubling every count keeps the IoUs


def test_to_percent_scales_floats_only():
    assert to_percent({"miou": 0.5, "episodes": 3, "per_class": {1: 0.25}}) == {
        "miou": 50.0,
        "episodes": 3,
        "per_class": {1: 25.0},
    }


def test_fss_update_batch_equals_per_episode_updates():
    g = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 2, (6, 2, 7, 9), generator=g)
    target = torch.randint(0, 2, (6, 2, 7, 9), generator=g)
    target[:, :, 0] = 255
    classes = [3, 5, 3, 4, 5, 5]
    a, b = FSSMeter([3, 4, 5]), FSSMeter([3, 4, 5])
    per_episode = a.update_batch(pred, target, classes)
    for p, t, c in zip(pred, target, classes):
        b.update(p, t, c)
    assert torch.equal(a.inter, b.inter) and torch.equal(a.union, b.union) and torch.equal(a.fb_union, b.fb_union)
    valid = target[0] != 255
    fg_p, fg_t = (pred[0] == 1) & valid, (target[0] == 1) & valid
    assert per_episode[0].item() == pytest.approx((fg_p & fg_t).sum().item() / (fg_p | fg_t).sum().item())
    with pytest.raises(ValueError, match="not among"):
        a.update_batch(pred, target, [9] * 6)
    with pytest.raises(ValueError, match="binary"):
        a.update_batch(pred + 1, target, classes)
