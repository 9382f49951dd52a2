"""InfoMax terms (fss_lab.losses.infomax) against hand computations on tiny tensors.

Layout reminder: probs [T, M, C, h, w], valid / labels [T or 1, M, h, w]; every term returns [T].
"""
import math

import pytest
import torch

from fss_lab.losses import infomax as im


def pixels(*columns):
    """probs [1, 1, C, 1, P] from P per-pixel probability vectors."""
    return torch.tensor(columns, dtype=torch.float32).T.reshape(1, 1, len(columns[0]), 1, len(columns))


def test_valid_mean_counts_valid_pixels_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    v = torch.tensor([[1, 0, 1, 1]])
    # (1 + 3 + 4) / (3 + 1e-10) = 8 / 3
    assert im.valid_mean(x, v, (1,)).item() == pytest.approx(8 / 3, rel=1e-7)
    # RePRI's exact mean: no valid pixel is a clear error (it used to return NaN), DIaM's epsilon gives 0
    with pytest.raises(ValueError, match=r"task\(s\) \[0\] have no valid pixel"):
        im.valid_mean(x, torch.zeros_like(v), (1,), eps=0.0)
    assert im.valid_mean(x, torch.zeros_like(v), (1,)).item() == 0.0


def test_fold_maps():
    p = pixels([0.1, 0.2, 0.3, 0.4])  # bg, base 1, base 2, novel 3 (1 + B = 3)
    # support side: bg takes the base mass, base zeroed: [0.1 + 0.2 + 0.3, 0, 0, 0.4]
    assert torch.allclose(im.fold_base_into_background(p, 3).flatten(), torch.tensor([0.6, 0.0, 0.0, 0.4]))
    # new -> old (Eq. 11): bg takes the novel mass, novel dropped: [0.1 + 0.4, 0.2, 0.3]
    assert torch.allclose(im.fold_novel_into_background(p, 3).flatten(), torch.tensor([0.5, 0.2, 0.3]))


@pytest.mark.parametrize("shots, w0", [(1, 0.01), (5, 0.15)])
def test_support_cross_entropy_hand_value(shots, w0):
    # classes: bg 0, base 1, novel 2 (1 + B = 2); three pixels, the third ignored
    p = pixels([0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05])
    labels = torch.tensor([0, 2, 255]).view(1, 1, 1, 3)
    # pixel 1 (bg): folded p_bg = 0.2 + 0.3 = 0.5 -> w0 * -ln 0.5 = w0 * 0.693147
    # pixel 2 (novel): -ln 0.8 = 0.223144 ; pixel 3 ignored
    # mean over the 2 valid pixels (not over the weight sum w0 + 1)
    expected = (w0 * math.log(2) - math.log(0.8)) / 2
    got = im.support_cross_entropy(p, labels, num_base_and_bg=2, shots=shots)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.item() != pytest.approx((w0 * math.log(2) - math.log(0.8)) / (w0 + 1), rel=1e-3)


def test_support_cross_entropy_base_label_reads_the_zeroed_probability():
    # a base-labelled support pixel (never produced by the DIaM protocol): p'_base = 0 -> -ln(1e-10) = 23.02585
    p = pixels([0.2, 0.3, 0.5])
    got = im.support_cross_entropy(p, torch.tensor([1]).view(1, 1, 1, 1), num_base_and_bg=2, shots=1)
    assert got.item() == pytest.approx(-math.log(1e-10), rel=1e-6)


def test_support_background_weight():
    assert im.support_background_weight(1) == 0.01
    assert im.support_background_weight(2) == 0.15
    with pytest.raises(ValueError, match="shots"):
        im.support_background_weight(0)


def test_conditional_entropy_and_marginal_hand_values():
    p = pixels([0.5, 0.5], [1.0, 0.0], [0.5, 0.5])
    valid = torch.tensor([1, 1, 0]).view(1, 1, 1, 3)
    # H: pixel 1 = ln 2 = 0.693147, pixel 2 = 0, pixel 3 ignored -> 0.346574
    assert im.conditional_entropy(p, valid).item() == pytest.approx(math.log(2) / 2, rel=1e-6)
    assert im.binary_conditional_entropy(p, valid).item() == pytest.approx(math.log(2) / 2, rel=1e-6)
    # p_hat = ([0.5, 0.5] + [1, 0]) / 2 = [0.75, 0.25]
    assert torch.allclose(im.class_marginal(p, valid), torch.tensor([[0.75, 0.25]]))
    assert torch.allclose(im.binary_marginal(p, valid), torch.tensor([[0.75, 0.25]]))


def test_kl_to_prior_hand_value_and_self_prior_zero():
    m, pi = torch.tensor([[0.75, 0.25]]), torch.tensor([[0.5, 0.5]])
    # 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5) = 0.75 * 0.405465 - 0.25 * 0.693147 = 0.130812
    assert im.kl_to_prior(m, pi).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-5)
    assert im.binary_kl_to_prior(m, pi).item() == pytest.approx(0.130812, rel=1e-5)
    # "self" prior: pi = current marginal -> exactly 0 in float32
    m3 = torch.tensor([[0.2, 0.3, 0.5], [0.01, 0.09, 0.9]])
    assert torch.equal(im.kl_to_prior(m3, m3.clone()), torch.zeros(2))


def test_kl_numerator_epsilon_difference():
    # a class with marginal exactly 0: DIaM's log(1e-10 + 0) is finite so 0 * log(...) = 0 -> KL = ln 2;
    # RePRI's log(0 / ...) = -inf and 0 * -inf = NaN in the official code, with a NaN gradient that ruins the
    # episode (issue 9); here the term takes its limit 0 (x log x -> 0), value and gradient finite.
    m, pi = torch.tensor([[1.0, 0.0]], requires_grad=True), torch.tensor([[0.5, 0.5]])
    assert im.kl_to_prior(m, pi).item() == pytest.approx(math.log(2), rel=1e-6)
    kl = im.binary_kl_to_prior(m, pi)
    assert kl.item() == pytest.approx(math.log(2), rel=1e-6)
    kl.sum().backward()
    assert torch.isfinite(m.grad).all() and m.grad[0, 1] == 0


def test_distillation_kl_hand_value_and_argument_order():
    p = pixels([0.2, 0.3, 0.5])  # bg, base 1, novel 2 (1 + B = 2)
    q = pixels([0.5, 0.5])  # frozen base classifier
    valid = torch.ones(1, 1, 1, 1)
    # p~ = [0.2 + 0.5, 0.3] = [0.7, 0.3]; KL(p~ || q) = 0.7 ln 1.4 + 0.3 ln 0.6 = 0.235531 - 0.153248 = 0.082283
    got = im.distillation_kl(p, q, valid, num_base_and_bg=2).item()
    assert got == pytest.approx(0.7 * math.log(1.4) + 0.3 * math.log(0.6), rel=1e-5)
    # the reversed KL(q || p~) = 0.5 ln(0.5/0.7) + 0.5 ln(0.5/0.3) = 0.087177 is not what is computed
    assert got != pytest.approx(0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3), rel=1e-3)
    with pytest.raises(ValueError, match="classes"):
        im.distillation_kl(p, pixels([0.2, 0.3, 0.5]), valid, num_base_and_bg=2)


def test_binary_cross_entropy_hand_value():
    p = pixels([0.2, 0.8], [0.7, 0.3], [0.5, 0.5])  # [p_bg, p_fg] per pixel
    labels = torch.tensor([1, 0, 255]).view(1, 1, 1, 3)
    # -(ln 0.8 + ln 0.7) / 2 = (0.223144 + 0.356675) / 2 = 0.289909
    assert im.binary_cross_entropy(p, labels).item() == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2, rel=1e-6)


def test_terms_are_batched_over_tasks():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 2, 4, 5, 5, generator=g), dim=2)
    snap = torch.softmax(torch.randn(3, 2, 2, 5, 5, generator=g), dim=2)
    valid = torch.rand(1, 2, 5, 5, generator=g) > 0.3  # shared by the tasks
    labels = torch.randint(0, 4, (1, 2, 5, 5), generator=g).masked_fill(~valid, 255)
    prior = torch.softmax(torch.randn(3, 4, generator=g), dim=1)
    batched = [im.support_cross_entropy(probs, labels, 2, 1), im.conditional_entropy(probs, valid),
               im.kl_to_prior(im.class_marginal(probs, valid), prior), im.distillation_kl(probs, snap, valid, 2)]
    for t in range(3):
        one = [im.support_cross_entropy(probs[t:t + 1], labels, 2, 1), im.conditional_entropy(probs[t:t + 1], valid),
               im.kl_to_prior(im.class_marginal(probs[t:t + 1], valid), prior[t:t + 1]),
               im.distillation_kl(probs[t:t + 1], snap[t:t + 1], valid, 2)]
        for b, o in zip(batched, one):
            assert b.shape == (3,)
            assert torch.allclose(b[t:t + 1], o, atol=1e-6)


def test_gradients_flow_to_probabilities():
    logits = torch.randn(2, 1, 3, 4, 4, requires_grad=True)
    p = torch.softmax(logits, dim=2)
    valid = torch.ones(1, 1, 4, 4)
    loss = (im.conditional_entropy(p, valid) + im.kl_to_prior(im.class_marginal(p, valid), torch.full((2, 3), 1 / 3))
            + im.distillation_kl(p, torch.full((2, 1, 2, 4, 4), 0.5), valid, 2)).sum()
    loss.backward()
    assert logits.grad is not None and bool(logits.grad.abs().sum() > 0)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[T, M, C, h, w\]"):
        im.conditional_entropy(torch.rand(2, 3, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="outside"):
        im.one_hot(torch.tensor([[[[0, 7]]]]), 3)
