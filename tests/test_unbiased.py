"""Reformulated CE (capstone report Eq. 4-5) and background-shift distillation (Eq. 6-7): hand computations."""
import math

import pytest
import torch
import torch.nn.functional as F

from fss_lab.losses.unbiased import (
    background_shift_distillation,
    binary_class_weights,
    binary_log_probs,
    reformulated_ce,
)


def softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_reformulated_ce_by_hand():
    # 4 pixels, 3 classes (bg, base, novel = 2); targets bg, bg, novel, ignore -> weights [1, n_bg / n_fg = 2]
    pix = [[0.5, 1.0, -1.0], [2.0, 0.0, 0.3], [0.1, 0.2, 1.5], [9.0, -9.0, 0.0]]
    logits = torch.tensor(pix).t().reshape(1, 3, 1, 4)
    target = torch.tensor([[[0, 0, 1, 255]]])
    p = [softmax(z) for z in pix]
    l0, l1 = -math.log(p[0][0] + p[0][1]), -math.log(p[1][0] + p[1][1])
    l2 = -math.log(p[2][2])
    expected = (1 * l0 + 1 * l1 + 2 * l2) / (1 + 1 + 2)
    assert reformulated_ce(logits, target, novel_index=2).item() == pytest.approx(expected, rel=1e-6)
    assert reformulated_ce(logits, target, novel_index=-1).item() == pytest.approx(expected, rel=1e-6)
    # novel in the middle: bg = classes 0 and 2
    l2_mid = -math.log(p[2][1])
    mid = (-math.log(p[0][0] + p[0][2]) - math.log(p[1][0] + p[1][2]) + 2 * l2_mid) / 4
    assert reformulated_ce(logits, target, novel_index=1).item() == pytest.approx(mid, rel=1e-6)


def test_reformulated_ce_equals_the_official_expression():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, generator=g)
    target = torch.randint(0, 2, (2, 3, 4), generator=g)
    target[0, 0, 0] = 255
    prob = logits.softmax(1)
    folded = torch.cat([prob[:, :-1].sum(1, keepdim=True), prob[:, -1:]], 1)
    count = torch.bincount(target.flatten())
    weight = torch.tensor([1.0, float(count[0] / count[1])])
    official = F.nll_loss(torch.log(folded), target, weight=weight, ignore_index=255)
    assert reformulated_ce(logits, target, novel_index=-1).item() == pytest.approx(official.item(), rel=1e-5)


def test_reformulated_ce_is_finite_where_log_softmax_underflows():
    logits = torch.tensor([0.0, 0.0, 200.0]).view(1, 3, 1, 1)  # p_bg underflows to 0 in float32
    loss = reformulated_ce(logits, torch.zeros(1, 1, 1, dtype=torch.long), novel_index=2)
    assert loss.item() == pytest.approx(200.0 - math.log(2.0), rel=1e-6)
    log_q = binary_log_probs(logits, 2)
    assert torch.allclose(log_q.exp().sum(1), torch.ones(1, 1, 1))


def test_class_weights_and_bad_inputs():
    assert binary_class_weights(torch.tensor([0, 0, 0, 1, 255])).tolist() == [1.0, 3.0]
    assert binary_class_weights(torch.tensor([0, 0, 255])).tolist() == [1.0, 1.0]  # no foreground: no inf weight
    logits = torch.randn(1, 3, 2, 2)
    with pytest.raises(ValueError, match="binary targets"):
        reformulated_ce(logits, torch.full((1, 2, 2), 2), novel_index=2)
    with pytest.raises(ValueError, match="shape"):
        reformulated_ce(logits, torch.zeros(1, 3, 2, dtype=torch.long), novel_index=2)
    with pytest.raises(ValueError, match="novel_index"):
        reformulated_ce(logits, torch.zeros(1, 2, 2, dtype=torch.long), novel_index=3)


def test_distillation_by_hand():
    # 2 pixels; new classifier: bg, base1, base2, novel; old: bg, base1, base2
    new = [[0.2, 1.0, -0.5, 0.7], [1.5, -1.0, 0.3, 2.0]]
    old = [[0.0, 2.0, 1.0], [1.0, 0.5, -0.5]]
    new_t = torch.tensor(new).t().reshape(1, 4, 1, 2)
    old_t = torch.tensor(old).t().reshape(1, 3, 1, 2)
    total = 0.0
    for z, y in zip(new, old):
        p, q = softmax(z), softmax(y)
        log_pt = [math.log(p[0] + p[3]), math.log(p[1]), math.log(p[2])]  # Eq. 7: bg absorbs the novel class
        total += -sum(qk * lk for qk, lk in zip(q, log_pt)) / 3  # Eq. 6, divided by C_old (official)
    assert background_shift_distillation(new_t, old_t).item() == pytest.approx(total / 2, rel=1e-6)


def test_distillation_ignores_how_bg_and_novel_share_their_mass():
    old = torch.randn(1, 3, 2, 2)
    a = torch.tensor([math.log(0.5), 0.3, -0.2, math.log(0.5)]).view(1, 4, 1, 1).expand(1, 4, 2, 2)
    b = torch.tensor([math.log(0.9), 0.3, -0.2, math.log(0.1)]).view(1, 4, 1, 1).expand(1, 4, 2, 2)
    assert background_shift_distillation(a, old).item() == pytest.approx(
        background_shift_distillation(b, old).item(), rel=1e-6)
    # and it is minimal when the folded student equals the teacher
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    student = torch.cat([old[:, :1], old[:, 1:], torch.full((1, 1, 2, 2), -30.0)], 1)
    best = background_shift_distillation(student, old)
    assert best.item() < background_shift_distillation(torch.cat([z, old[:, :1]], 1), old).item()


def test_distillation_shapes():
    with pytest.raises(ValueError, match="extra"):
        background_shift_distillation(torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="extra"):
        background_shift_distillation(torch.randn(1, 4, 2, 3), torch.randn(1, 3, 2, 2))
