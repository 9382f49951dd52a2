"""MM-Former losses: weighted Dice (second sigmoid, ignore as background, reductions) and the ranking co_loss."""
import math

import pytest
import torch

from fss_lab.losses.mmformer import (
    co_loss,
    min_max_normalise,
    mmformer_dice_loss,
    mmformer_loss,
    weighted_dice_loss,
)

PRED = torch.tensor([[[[0.8, 0.3]], [[0.2, 0.7]]]])                  # [1, 2, 1, 2]: bg, fg
TARGET = torch.tensor([[[0, 1]]])


def _dice(p, t):
    inter = sum(a * b for a, b in zip(p, t))
    return 1 - 2 * inter / (sum(a * a for a in p) + sum(b * b for b in t))


def test_weighted_dice_by_hand_without_and_with_the_second_sigmoid():
    bg = 1 - 1.6 / 1.73                                                 # p = (0.8, 0.3), t = (1, 0)
    fg = 1 - 1.4 / 1.53                                                 # p = (0.2, 0.7), t = (0, 1)
    plain = weighted_dice_loss(PRED, TARGET, apply_sigmoid=False, reduction="none")
    assert torch.allclose(plain, torch.tensor([bg, fg]))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = _dice([sig(0.8), sig(0.3)], [1, 0]) + _dice([sig(0.2), sig(0.7)], [0, 1])
    assert math.isclose(weighted_dice_loss(PRED, TARGET).item(), expected, rel_tol=1e-6)   # official default


def test_weighted_dice_reductions():
    pred = torch.rand(2, 2, 3, 3)
    target = torch.randint(0, 2, (2, 3, 3))
    none = weighted_dice_loss(pred, target, reduction="none")
    assert none.shape == (4,)                                           # (img0 bg, img0 fg, img1 bg, img1 fg)
    assert torch.allclose(weighted_dice_loss(pred, target, reduction="sum"), none.sum() / 2)
    assert torch.allclose(weighted_dice_loss(pred, target, reduction="mean"), none.mean())
    assert torch.allclose(weighted_dice_loss(pred, target, weighted_val=3.0, reduction="none"), 3 * none)
    one = weighted_dice_loss(pred[1:], target[1:], reduction="none")
    assert torch.allclose(none[2:], one)
    with pytest.raises(ValueError, match="reduction"):
        weighted_dice_loss(pred, target, reduction="avg")
    with pytest.raises(ValueError, match="target"):
        weighted_dice_loss(pred, target[:, :2])
    with pytest.raises(ValueError, match="prediction"):
        weighted_dice_loss(pred[:, :1], target)


def test_ignore_counts_as_background_in_mmformer_dice():
    labels = torch.tensor([[[255, 1]]])
    as_bg = mmformer_dice_loss(PRED, labels)
    assert torch.allclose(as_bg, weighted_dice_loss(PRED, TARGET))
    # the stand-alone loss keeps 255 out of both channels, which is a different value
    assert not torch.allclose(weighted_dice_loss(PRED, labels), as_bg)
    assert torch.allclose(mmformer_dice_loss(PRED, labels, ignore_as_background=False),
                          weighted_dice_loss(PRED, labels))


def test_co_loss_by_hand_best_iou_to_one_worst_to_zero():
    labels = torch.tensor([[[1, 1]]])
    props = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]], [[0.5, 0.5]], [[0.0, 0.0]]]])   # IoU .5, 1, .5, 0
    sim = torch.tensor([[0.0, 0.6, 1.0, 0.2]])                          # min-max -> the same (range 1)
    assert torch.allclose(min_max_normalise(sim), sim / (1 + 1e-8))
    expected = -(math.log(0.6 / (1 + 1e-8)) + math.log(1 - 0.2 / (1 + 1e-8))) / 2
    assert math.isclose(co_loss(sim, props, labels).item(), expected, rel_tol=1e-6)


def test_co_loss_ignore_is_background_and_gradient_flows_to_similarity():
    labels = torch.tensor([[[1, 255]]])
    props = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])                # with 255 as bg: IoU 1 and 0
    sim = torch.tensor([[0.3, 0.9]], requires_grad=True)
    loss = co_loss(sim, props, labels)
    assert loss.item() > 10                                             # best proposal has the lowest similarity
    loss.backward()
    assert sim.grad is not None and torch.isfinite(sim.grad).all()


def test_mmformer_loss_weights_10_and_6():
    torch.manual_seed(0)
    out, sim, props = torch.rand(2, 2, 4, 4), torch.rand(2, 5), torch.rand(2, 5, 2, 2)
    labels = torch.randint(0, 2, (2, 4, 4))
    terms = mmformer_loss(out, sim, props, labels)
    assert torch.allclose(terms["fewshot_loss"], 10 * mmformer_dice_loss(out, labels))
    assert torch.allclose(terms["co_loss"], 6 * co_loss(sim, props, labels))
    assert torch.allclose(terms["total"], terms["fewshot_loss"] + terms["co_loss"])
