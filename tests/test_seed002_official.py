"""Seed 002's official behaviour (issue 8), one hand computation per point; each fails on the old package variant.

Official code: hmdliu/GFSS-Capstone ``src/model/meta/mib.py`` (fss-methods.md sections 4c and 7).

(a) logits are up-sampled bilinearly with ``align_corners=True``;
(b) the (B + 2)-way head has no bias (``bias=False``): zero bias, not trained; ``bias=True`` copies the base biases;
    the distillation teacher keeps the base classifier's bias either way;
(c) the binary prediction of a 1-way task is ``[max over non-novel classes, novel logit]`` (``binary_rule="max"``),
    not the log-sum-exp fold;
(d) the pixel contrastive loss has background anchors on by default: tested in
    ``tests/test_contrastive.py::test_pixel_contrastive_loss_constant_class_embeddings_by_hand``.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fss_lab.losses.contrastive import ContrastiveTerm, pixel_contrastive_loss
from fss_lab.losses.unbiased import background_shift_distillation, reformulated_ce
from fss_lab.methods.binary_finetune import BackgroundAwareFineTuning, BinaryFineTuning
from tests.tasks import fss_task, gfss_task

D, B = 3, 1  # feature channels; base classes: labels bg 0, base 1, novel 2


def base_classifier(bias=(0.5, -0.25)):
    """``nn.Conv2d(D, 1 + B, 1)`` with rows e0, e1 and non-zero biases (so a copied bias is visible)."""
    c = nn.Conv2d(D, 1 + B, 1)
    with torch.no_grad():
        c.weight.zero_()
        c.weight[0, 0, 0, 0] = c.weight[1, 1, 0, 0] = 1.0
        c.bias.copy_(torch.tensor(bias))
    return c


def support(h=2, w=2, size=(4, 4)):
    """Two supports on an ``h x w`` grid, masks at ``size`` with a foreground block (left half) in each."""
    g = torch.Generator().manual_seed(0)
    sf = torch.randn(2, D, h, w, generator=g)
    sm = torch.zeros(2, *size, dtype=torch.long)
    sm[:, : max(1, size[0] // 2), : size[1] // 2] = 1
    return sf, sm


def tasks(sf, sm, qf, size):
    """The 1-way task and the same episode in the (B + 2)-way label space (novel class B + 1)."""
    return (fss_task(sf, sm, qf, size, level="bottleneck"),
            gfss_task(sf, sm.masked_fill(sm == 1, B + 1), qf, B, 1, len(sf), size))


# ---- (a) align_corners=True --------------------------------------------------------------------------------------

def test_a_predict_upsamples_with_align_corners_true_by_hand():
    sf, sm = support(1, 2, (1, 4))
    qf = torch.tensor([[[[1.0, -2.0]], [[0.5, 3.0]], [[-1.0, 0.25]]]])  # [Q=1, D, 1, 2]: a 1 x 2 feature grid
    t1, tg = tasks(sf, sm, qf, (1, 4))
    for method, task in ((BinaryFineTuning(steps=3), t1), (BackgroundAwareFineTuning(base_classifier(), steps=3), tg)):
        method.fit(task)
        z = torch.einsum("qdhw,cd->qchw", qf, method.weight)  # the head's logits (no bias), [1, C, 1, 2]
        z0, z1 = z[..., 0], z[..., 1]
        # align_corners=True maps the 2 cells onto the 4 pixels' corners: [z0, z0 + (z1 - z0) / 3, ..., z1]
        by_hand = torch.stack([z0, (2 * z0 + z1) / 3, (z0 + 2 * z1) / 3, z1], -1)
        # align_corners=False: pixel x samples source (x + 0.5) / 2 - 0.5, clamped: [z0, 3/4 z0 + 1/4 z1, ..., z1]
        old = torch.stack([z0, 0.75 * z0 + 0.25 * z1, 0.25 * z0 + 0.75 * z1, z1], -1)
        out = method.predict(task)
        assert out.shape == (1, z.shape[1], 1, 4)
        torch.testing.assert_close(out, by_hand, atol=1e-5, rtol=0)
        torch.testing.assert_close(by_hand, F.interpolate(z, size=(1, 4), mode="bilinear", align_corners=True),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(old, F.interpolate(z, size=(1, 4), mode="bilinear", align_corners=False),
                                   atol=1e-6, rtol=0)
        assert not torch.allclose(out, old, atol=1e-3), "the old align_corners=False output differs"
        again = type(method)(*([base_classifier()] if isinstance(method, BackgroundAwareFineTuning) else []),
                             steps=3, align_corners=False).fit(task)
        torch.testing.assert_close(again.predict(task), old, atol=1e-5, rtol=0)


def test_a_image_resolution_loss_upsamples_with_align_corners_true():
    # loss_resolution="image" (the official loss): CE on logits up-sampled with align_corners=True
    sf, sm = support(size=(6, 6))
    t1, _ = tasks(sf, sm, sf, (6, 6))
    m = BinaryFineTuning(steps=1, loss_resolution="image").fit(t1)
    init = BinaryFineTuning(steps=0).fit(t1)
    logits = F.conv2d(sf, init.weight[:, :, None, None])
    n_bg, n_fg = float((sm == 0).sum()), float((sm == 1).sum())
    weight = torch.tensor([1.0, n_bg / n_fg])
    for ac, same in ((True, True), (False, False)):
        up = F.interpolate(logits, size=(6, 6), mode="bilinear", align_corners=ac)
        expected = F.cross_entropy(up, sm, weight=weight).item()
        assert (m.support_losses[0] == pytest.approx(expected, rel=1e-5)) is same, ac


# ---- (b) no bias in the (B + 2)-way head -------------------------------------------------------------------------

def test_b_default_head_has_no_bias_and_logits_are_w_f():
    sf, sm = support()
    _, tg = tasks(sf, sm, sf, (2, 2))  # predict at the feature size: no up-sampling, the raw head output
    cls = base_classifier()
    m = BackgroundAwareFineTuning(cls, steps=5).fit(tg)
    assert torch.equal(m.bias, torch.zeros(B + 2)), "not copied, not trained"
    assert not torch.equal(m.weight[: B + 1], cls.weight[:, :, 0, 0]), "the weights are trained"
    w_f = torch.einsum("sdhw,cd->schw", sf, m.weight)
    torch.testing.assert_close(m.predict(tg), w_f, atol=1e-5, rtol=0)
    # bias=True (the old package variant): the base biases are copied, the novel bias starts at 0, all trained
    copied = BackgroundAwareFineTuning(cls, steps=0, bias=True).fit(tg)
    assert copied.bias.tolist() == [0.5, -0.25, 0.0]
    trained = BackgroundAwareFineTuning(cls, steps=5, bias=True).fit(tg)
    assert not torch.equal(trained.bias, copied.bias)
    torch.testing.assert_close(trained.predict(tg), torch.einsum("sdhw,cd->schw", sf, trained.weight)
                               + trained.bias[None, :, None, None], atol=1e-5, rtol=0)


def test_b_the_teacher_keeps_the_base_bias():
    # first-step loss by hand: L_ce'(W f) + gamma * L_distil(W f, W_base f + b_base), the student without bias
    sf, sm = support()
    _, tg = tasks(sf, sm, sf, (4, 4))
    cls = base_classifier()
    m = BackgroundAwareFineTuning(cls, gamma=3.0, steps=1).fit(tg)
    init = BackgroundAwareFineTuning(cls, steps=0).fit(tg)
    student = F.conv2d(sf, init.weight[:, :, None, None])  # no bias
    labels = F.interpolate(sm[:, None].float(), size=(2, 2), mode="nearest")[:, 0].long()
    teacher = cls(sf).detach()
    expected = reformulated_ce(student, labels, B + 1) + 3.0 * background_shift_distillation(student, teacher)
    assert m.support_losses[0] == pytest.approx(expected.item(), rel=1e-5)
    no_bias_teacher = F.conv2d(sf, cls.weight)
    other = reformulated_ce(student, labels, B + 1) + 3.0 * background_shift_distillation(student, no_bias_teacher)
    assert m.support_losses[0] != pytest.approx(other.item(), rel=1e-4), "the teacher's bias matters here"


# ---- (c) the max rule ----------------------------------------------------------------------------------------------

def test_c_binary_prediction_follows_the_max_rule():
    # hand-made logits z = (bg, base, novel) per pixel, given as features through an identity head:
    #   pixel 0: (1, 1, 1.5): max rule fg (1.5 > 1); log-sum-exp fold bg (log(e + e) = 1 + log 2 = 1.69 > 1.5)
    #   pixel 1: (0, -5, 1): both fg;  pixel 2: (2, 0, 1): both bg
    z = torch.tensor([[1.0, 0.0, 2.0], [1.0, -5.0, 0.0], [1.5, 1.0, 1.0]])[None, :, None, :]  # [1, 3, 1, 3]
    sf, sm = support(1, 3, (1, 3))
    t1, _ = tasks(sf, sm, z, (1, 3))  # predict at the feature size: no up-sampling
    out = {}
    for rule in ("max", "logsumexp"):
        kw = {} if rule == "max" else {"binary_rule": rule}
        m = BackgroundAwareFineTuning(base_classifier(), steps=0, **kw).fit(t1)
        m.weight, m.bias = torch.eye(3), torch.zeros(3)  # logits = the features
        out[rule] = m.predict(t1)
    by_hand = torch.tensor([[1.0, 0.0, 2.0], [1.5, 1.0, 1.0]])[None, :, None, :]  # [max(z_bg, z_base), z_novel]
    torch.testing.assert_close(out["max"], by_hand, atol=1e-6, rtol=0)
    assert out["max"].argmax(1).flatten().tolist() == [1, 1, 0]
    lse = torch.logsumexp(z[:, :2], 1)
    log_z = torch.logsumexp(z, 1)
    torch.testing.assert_close(out["logsumexp"], torch.stack([lse - log_z, z[:, 2] - log_z], 1), atol=1e-6, rtol=0)
    assert out["logsumexp"].argmax(1).flatten().tolist() == [0, 1, 0]
    assert lse[0, 0, 0].item() == pytest.approx(1 + math.log(2))


def test_c_max_rule_upsamples_before_the_max():
    # official order: up-sample the B + 2 logits, then take the max (the max of up-sampled maps, not the reverse)
    z = torch.tensor([[3.0, 0.0], [0.0, 3.0], [2.0, 2.0]])[None, :, None, :]  # [1, 3, 1, 2]
    sf, sm = support(1, 2, (1, 4))
    t1, _ = tasks(sf, sm, z, (1, 4))
    m = BackgroundAwareFineTuning(base_classifier(), steps=0).fit(t1)
    m.weight, m.bias = torch.eye(3), torch.zeros(3)
    up = F.interpolate(z, size=(1, 4), mode="bilinear", align_corners=True)
    by_hand = torch.stack([up[:, :2].max(1).values, up[:, 2]], 1)
    torch.testing.assert_close(m.predict(t1), by_hand, atol=1e-6, rtol=0)
    folded_first = F.interpolate(z[:, :2].max(1, keepdim=True).values, size=(1, 4), mode="bilinear",
                                 align_corners=True)
    assert not torch.allclose(by_hand[:, :1], folded_first, atol=1e-3)  # at the middle pixels max(3 - x, x) != 3


# ---- (d) background anchors ----------------------------------------------------------------------------------------

def test_d_contrastive_background_anchors_default_on():
    # the hand computation is tests/test_contrastive.py::test_pixel_contrastive_loss_constant_class_embeddings_by_hand
    import inspect

    assert inspect.signature(pixel_contrastive_loss).parameters["background_anchors"].default is True
    assert inspect.signature(ContrastiveTerm).parameters["background_anchors"].default is True
