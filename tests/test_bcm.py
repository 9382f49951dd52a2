"""BCM (NeurIPS 2024, methods/bcm.py): host mapping, the override rule, the ensemble's per-class normalisation, the CV
choice of C, re-balancing, and the method end to end on a hand-made task."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fss_lab.methods import create_method
from fss_lab.methods.bcm import (BCM, C_GRID, RELEASED, YAML_DEFAULTS, decision_probabilities,
                                 ensemble_probabilities, host_mapping, override, power_features, rebalance, select_c)
from tests.tasks import gfss_task


def test_host_mapping_on_a_hand_made_example_with_background_as_host():
    # 1 + B = 3 (bg, base 1, base 2); novel 3 lands mostly on bg, novel 4 mostly on base 2, novel 5 on base 2 too
    base_pred = torch.tensor([[[0, 0, 0, 1], [2, 2, 2, 1], [2, 2, 1, 1]]])
    labels = torch.tensor([[[3, 3, 3, 3], [4, 4, 4, 255], [5, 5, 5, 0]]])
    counts, hosts, table = host_mapping(base_pred, labels, (3, 4, 5), 3, top_k=1)
    assert counts.tolist() == [[3, 1, 0], [0, 0, 3], [0, 1, 2]]  # the 255 pixel counts for nobody
    assert hosts == {3: (0,), 4: (2,), 5: (2,)}
    assert table == {0: (3,), 2: (4, 5)}  # base 1 hosts nothing; two novel classes share base 2
    _, hosts2, table2 = host_mapping(base_pred, labels, (3, 4, 5), 3, top_k=2)
    assert hosts2 == {3: (0, 1), 4: (2,), 5: (2, 1)}  # a class seen on one host only keeps one
    assert table2 == {0: (3,), 1: (3, 5), 2: (4, 5)}


def test_override_keeps_non_host_pixels_and_maps_host_labels_to_novel_ids():
    base = torch.tensor([[[0, 1, 2, 2], [0, 1, 2, 0]]])
    g0 = torch.tensor([[[1, 1, 0, 0], [0, 1, 0, 0]]])  # host 0's classifier: label 1 = novel 3 (ignored off-host)
    g2 = torch.tensor([[[0, 2, 1, 2], [2, 2, 0, 1]]])  # host 2: labels 1, 2 = novels 4, 5
    out = override(base, {0: g0, 2: g2}, {0: (3,), 2: (4, 5)})
    assert out.tolist() == [[[3, 1, 4, 5], [0, 1, 2, 0]]]


def test_ensemble_divides_each_class_by_the_weight_of_the_models_that_saw_it():
    p_shot = torch.tensor([[0.6, 0.4, 0.0]])  # a per-shot model that never saw label 2
    p_all = torch.tensor([[0.2, 0.3, 0.5]])
    out = ensemble_probabilities([p_shot, p_shot, p_all], [(0, 1), (0, 1), (0, 1, 2)], [1, 1, 5])
    torch.testing.assert_close(out, torch.tensor([[(1.2 + 1.0) / 7, (0.8 + 1.5) / 7, 2.5 / 5]]))
    assert abs(float(out.sum()) - 1) > 0.05  # not renormalised across classes (official)


def test_binary_probabilities_are_softmax_of_minus_d_and_d():
    d = np.array([-1.0, 0.0, 2.0])
    p = decision_probabilities(d)
    np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-2 * d)))  # sigmoid(2d), not sklearn's sigmoid(d)
    torch.testing.assert_close(decision_probabilities(torch.from_numpy(d)), torch.from_numpy(p))


def test_cv_picks_the_first_c_that_separates_a_toy_problem():
    # separable only along x1; x2 has a large spread in class 0, so the (small-C) mean-difference direction misranks
    rng = np.random.default_rng(0)
    n = 60
    x0 = np.stack([rng.normal(0, 0.05, n), np.where(np.arange(n) % 2 == 0, -5.0, 8.0)], 1)
    x1 = np.stack([rng.normal(1, 0.05, n), 5.0 + rng.normal(0, 0.05, n)], 1)
    x, y = np.concatenate([x0, x1]), np.r_[np.zeros(n, int), np.ones(n, int)]
    c, scores = select_c(x, y, np.random.default_rng(0), sampling="none")
    assert len(scores) == 10 and C_GRID == tuple(np.logspace(-5, 5, 10))
    assert scores[0] < 0.9 and np.nanmax(scores) == 1.0
    assert c == C_GRID[int(np.argmax(scores == 1.0))] and 1e-3 < c < 1e3


def test_rebalance_bg_sub_samples_label_zero_to_the_second_largest_class():
    y = np.array([0] * 50 + [1] * 7 + [2] * 3)
    keep = rebalance(y, "bg", np.random.default_rng(0))
    assert np.bincount(y[keep]).tolist() == [7, 7, 3] and np.all(np.diff(keep) > 0)
    assert np.bincount(y[rebalance(y, "us", np.random.default_rng(0))]).tolist() == [3, 3, 3]
    assert np.bincount(y[rebalance(y, "os", np.random.default_rng(0))]).tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="sampling must be one of"):
        rebalance(y, "smote", np.random.default_rng(0))


def test_power_is_the_square_root_on_post_relu_features_and_finite_elsewhere():
    x = torch.tensor([0.0, 0.25, 4.0, -4.0])
    assert power_features(x, 0.5).tolist() == [0.0, 0.5, 2.0, -2.0]


# ---- the method end to end -------------------------------------------------------------------------------------

D, B, H = 4, 3, 16  # features on an 8 x 8 grid, labels 16 x 16


class Base(nn.Module):
    """A base classifier over D = 4 one-hot-ish features: channel c votes for class c (bg, base 1..3)."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Conv2d(D, 1 + B, 1)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.eye(D)[:, :, None, None] * 4)
            self.classifier.bias.zero_()


def _features(cls_map: torch.Tensor, novel_map: torch.Tensor, gen) -> torch.Tensor:
    """Features ``[S, D + 1, 8, 8]``: one-hot of the base class plus an extra channel set on novel pixels. The base
    classifier ignores the extra channel; it tells BCM's host classifier where the novel object is."""
    f = torch.nn.functional.one_hot(cls_map, D).permute(0, 3, 1, 2).float()
    f = torch.cat([f, novel_map[:, None].float()], 1)
    return (f + 0.05 * torch.rand(f.shape, generator=gen)).clamp_min(0)


def _task(shots: int = 1):
    gen = torch.Generator().manual_seed(0)
    s = 2 * shots  # two novel classes (4 on background, 5 inside base class 2)
    cls_map = torch.zeros(s, 8, 8, dtype=torch.long)
    cls_map[:, 4:, :] = 2
    cls_map[:, :, 6:] = 1
    novel = torch.zeros(s, 8, 8, dtype=torch.long)
    labels8 = cls_map.clone()
    for i in range(s):
        c = 4 if i < shots else 5
        r0 = 0 if c == 4 else 4
        labels8[i, r0 + 1:r0 + 3, 1 + i % 2:4 + i % 2] = c
        novel[i][labels8[i] == c] = 1
    labels = labels8.repeat_interleave(2, 1).repeat_interleave(2, 2)
    labels = labels.masked_fill((labels >= 1) & (labels <= B), 0)  # DIaM protocol supports
    qmap = torch.zeros(2, 8, 8, dtype=torch.long)
    qmap[:, 4:, :] = 2
    qmap[:, :, 6:] = 1
    qmap[1, :4, :2] = 3  # base class 3 hosts nothing: its pixels must keep the base prediction
    qnovel = torch.zeros(2, 8, 8, dtype=torch.long)
    qnovel[0, 1:3, 1:4] = 1  # on background -> novel 4
    qnovel[1, 5:7, 2:5] = 1  # inside base 2 -> novel 5
    sf = torch.cat([_features(cls_map, novel, gen)[:, :D], _features(cls_map, novel, gen)[:, D:]], 1)
    qf = _features(qmap, qnovel, gen)
    base = Base()
    base.classifier = nn.Conv2d(D + 1, 1 + B, 1)
    with torch.no_grad():
        base.classifier.weight.zero_()
        base.classifier.weight[:, :D, 0, 0] = torch.eye(D) * 4
        base.classifier.bias.zero_()
    return base, gfss_task(sf, labels, qf, B, 2, shots, size=(H, H)), qmap


@pytest.mark.parametrize("shots", [1, 2])
def test_bcm_finds_hosts_and_keeps_non_host_base_classes_bit_for_bit(shots):
    base, task, qmap = _task(shots)
    bcm = create_method("bcm", model=base)
    assert isinstance(bcm, BCM) and bcm.fit(task) is bcm
    assert bcm.hosts == {4: (0,), 5: (2,)} and bcm.table == {0: (4,), 2: (5,)}
    assert len(bcm.models[0]) == (shots + 1 if shots > 1 else 1)  # ensemble: per-shot models + all shots
    labels = bcm.predict_labels(task)
    logits = bcm.predict(task)
    assert torch.equal(logits.argmax(1), labels)  # predict's argmax is the official rule
    base_pred = torch.nn.functional.interpolate(bcm.base_probabilities(task.query()), (H, H), mode="bilinear",
                                                align_corners=True).argmax(1)
    non_host = ~torch.isin(base_pred, torch.tensor(list(bcm.table)))
    assert bool(non_host.any()) and torch.equal(labels[non_host], base_pred[non_host])
    assert bool((labels == 3).any()) and torch.equal(labels == 3, base_pred == 3)  # base 3 hosts nothing
    assert bool((labels[0] == 4).any()) and bool((labels[1] == 5).any())  # both novel classes found


def test_yaml_defaults_are_a_named_option_and_released_are_the_defaults():
    base, task, _ = _task(2)
    default = BCM(base)
    assert {k: getattr(default, k) for k in RELEASED} == RELEASED
    yaml = BCM(base, **YAML_DEFAULTS).fit(task)
    assert yaml.beta == 1.0 and yaml.sampling == "us" and len(yaml.models[0]) == 1  # no ensemble
    with pytest.raises(ValueError, match="sampling must be one of"):
        BCM(base, sampling="smote")


def test_fit_refuses_a_base_classifier_of_another_fold():
    base, task, _ = _task(1)
    other = nn.Conv2d(D + 1, 3, 1)
    with pytest.raises(ValueError, match="B=3 base classes but the classifier has 2"):
        BCM(other).fit(task)


@pytest.mark.parametrize("shots", [1, 2])
def test_host_counts_are_taken_at_feature_resolution_on_nearest_downsampled_masks(shots):
    # each support object is 2 x 3 cells of the 8 x 8 feature grid (8 x 12 label pixels at 16 x 16): the counts must
    # be feature pixels (6 per shot), not label pixels (24), and all on the host (official init_table)
    base, task, _ = _task(shots)
    bcm = BCM(base).fit(task)
    assert bcm.counts.shape == (2, 1 + B)
    assert bcm.counts.sum(1).tolist() == [6 * shots, 6 * shots]
    assert bcm.counts[0, 0] == 6 * shots and bcm.counts[1, 2] == 6 * shots
