"""Segmentation cross-entropy (RePRI label smoothing) and the PSPNet auxiliary combination, by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fss_lab.losses.segmentation import cross_entropy, pspnet_loss


def _log_softmax(z):
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def test_smoothed_cross_entropy_by_hand():
    # two pixels, three classes; the third pixel is ignored
    logits = torch.tensor([[[[1.0, 0.0, 5.0]], [[2.0, -1.0, 5.0]], [[0.5, 3.0, 5.0]]]])  # [1, 3, 1, 3]
    target = torch.tensor([[[0, 1, 255]]])
    eps = 0.1
    lp0 = _log_softmax([1.0, 2.0, 0.5])
    lp1 = _log_softmax([0.0, -1.0, 3.0])
    l0 = -((1 - eps) * lp0[0] + eps / 2 * (lp0[1] + lp0[2]))
    l1 = -((1 - eps) * lp1[1] + eps / 2 * (lp1[0] + lp1[2]))
    got = cross_entropy(logits, target, label_smoothing=eps)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    plain = cross_entropy(logits, target)
    assert plain.item() == pytest.approx(-(lp0[0] + lp1[1]) / 2, rel=1e-6)


def test_matches_torch_without_smoothing_and_differs_from_torch_smoothing():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
    target[0, 0] = 255
    assert torch.allclose(cross_entropy(logits, target), F.cross_entropy(logits, target, ignore_index=255))
    ours = cross_entropy(logits, target, label_smoothing=0.1)
    theirs = F.cross_entropy(logits, target, ignore_index=255, label_smoothing=0.1)
    assert not torch.allclose(ours, theirs)  # RePRI: eps/(C-1) off-target, PyTorch: eps/C everywhere


def test_all_ignored_gives_zero_with_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = cross_entropy(logits, torch.full((1, 2, 2), 255), label_smoothing=0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_pspnet_loss_combines_aux_by_hand():
    torch.manual_seed(1)
    logits, aux, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    parts = pspnet_loss(logits, target, aux, aux_weight=0.4)
    main, a = F.cross_entropy(logits, target), F.cross_entropy(aux, target)
    assert torch.allclose(parts.main, main) and torch.allclose(parts.aux, a)
    assert parts.total.item() == pytest.approx(main.item() + 0.4 * a.item(), rel=1e-6)
    no_aux = pspnet_loss(logits, target, None)
    assert no_aux.aux.item() == 0.0 and torch.allclose(no_aux.total, main)


def test_bad_inputs():
    logits = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="class 3"):
        cross_entropy(logits, torch.full((1, 4, 4), 3))
    with pytest.raises(ValueError, match="Upsample"):
        cross_entropy(logits, torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        cross_entropy(logits, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(logits, torch.zeros(1, 4, 4, dtype=torch.long), label_smoothing=1.0)
    with pytest.raises(ValueError, match="at most"):
        cross_entropy(torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), label_smoothing=0.6)
    with pytest.raises(ValueError, match="aux_weight"):
        pspnet_loss(logits, torch.zeros(1, 4, 4, dtype=torch.long), logits, aux_weight=-1)
