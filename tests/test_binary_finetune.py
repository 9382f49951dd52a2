"""Episode fine-tuning with binary support labels (capstone report Sec. 3.4-3.5, Tables 2-3) on a toy problem."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fss_lab.losses.unbiased import background_shift_distillation, reformulated_ce
from fss_lab.methods import NotFittedError
from fss_lab.methods.binary_finetune import BackgroundAwareFineTuning, BinaryFineTuning
from tests.tasks import episode_tasks, fss_task, gfss_task, stacked

D, B = 6, 3  # feature channels; base classes (bg 0, base 1..3, novel class 4 in the toy labels)
#: The package's pre-issue-8 variant of seed 002 (official defaults: align_corners=True, no bias, max rule).
OLD = dict(align_corners=False, bias=True, binary_rule="logsumexp")
VARIANTS = {"official": {}, "old": OLD}


def ep(sf, sm, qf, size):
    """The 1-way task (binary masks ``sm``) on the "bottleneck" level (what BackgroundAwareFineTuning reads)."""
    return fss_task(sf, sm, qf, size, level="bottleneck")


def gep(sf, sm, qf, size):
    """The same episode in the (B + 2)-way label space (novel class B + 1): predict gives all B + 2 logits."""
    return gfss_task(sf, sm.masked_fill(sm == 1, B + 1), qf, B, 1, len(sf), size)


def toy(seed, n=2, h=8):
    """Features ``[n, D, h, h]`` = 3 * one-hot(class) + noise, and their labels (0 bg, 1..3 base, 4 novel)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, h, h, dtype=torch.long)
    for i in range(n):
        r = int(torch.randint(0, h - 4, (1,), generator=g))
        labels[i, r:r + 3, 1:4] = 4
        labels[i, :, 5] = 1
        labels[i, h - 2:, :] = 2
        labels[i, 0, 4:] = 3
    feats = 3 * torch.eye(D)[labels].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, D, h, h, generator=g)
    return feats, labels


def base_classifier():
    """A base classifier that is right on bg and the base classes: logit_k = feature_k."""
    c = nn.Conv2d(D, 1 + B, 1)
    with torch.no_grad():
        c.weight.zero_()
        c.bias.zero_()
        for k in range(1 + B):
            c.weight[k, k] = 1.0
    return c


def upsample_mask(m, factor=2):
    return m.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


@pytest.fixture(scope="module")
def episode():
    sf, sl = toy(0)
    qf, ql = toy(1, n=3)
    return sf, upsample_mask((sl == 4).long()), qf, ql


def iou(pred, gt):
    return float(((pred == 1) & (gt == 1)).sum() / ((pred == 1) | (gt == 1)).sum())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("init", ["fresh", "prototype"])
def test_background_aware_learns_the_novel_class_and_keeps_base(episode, init, variant):
    sf, sm, qf, ql = episode
    kw = VARIANTS[variant]
    method = BackgroundAwareFineTuning(base_classifier(), gamma=10.0, novel_init=init, **kw).fit(ep(sf, sm, qf, (8, 8)))
    assert method.novel_index == B + 1 and method.weight.shape == (B + 2, D)
    assert method.predict(ep(sf, sm, qf, (16, 16))).shape == (3, 2, 16, 16)
    assert iou(method.predict(ep(sf, sm, qf, (8, 8))).argmax(1), (ql == 4).long()) > 0.9
    full = method.predict(gep(sf, sm, qf, (8, 8)))  # a GFSS task with N = 1: the B + 2 logits
    assert full.shape == (3, B + 2, 8, 8)
    base = (ql >= 1) & (ql <= B)
    assert (full.argmax(1) == ql)[base].float().mean() > 0.95  # base classes still segmented
    assert method.support_losses[-1] < method.support_losses[0]


def test_predict_folds_non_novel_classes_into_background(episode):
    sf, sm, qf, _ = episode
    method = BackgroundAwareFineTuning(base_classifier(), steps=5, **OLD).fit(ep(sf, sm, qf, (8, 8)))
    full = method.predict(gep(sf, sm, qf, (8, 8)))
    binary = method.predict(ep(sf, sm, qf, (8, 8)))  # binary_rule="logsumexp": the softmax folds exactly
    prob = full.softmax(1)
    folded = torch.stack([prob[:, :-1].sum(1), prob[:, -1]], 1)
    assert torch.allclose(binary.softmax(1), folded, atol=1e-5)


def test_distillation_keeps_base_predictions_closer_to_the_base_classifier(episode):
    sf, sm, qf, _ = episode
    cls = base_classifier()
    teacher = cls(qf).detach().softmax(1)

    def drift(gamma):
        p = BackgroundAwareFineTuning(cls, gamma=gamma).fit(ep(sf, sm, qf, (8, 8))).predict(
            gep(sf, sm, qf, (8, 8))).softmax(1)
        folded = torch.cat([p[:, :1] + p[:, -1:], p[:, 1:-1]], 1)  # Eq. 7 mapping
        return float((teacher * (teacher.log() - folded.log())).sum(1).mean())  # KL(teacher || student)

    d0, d20 = drift(0.0), drift(20.0)
    assert d20 < 0.5 * d0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_first_step_loss_is_eq8(episode, variant):
    sf, sm, qf, _ = episode
    cls = base_classifier()
    kw = VARIANTS[variant]
    method = BackgroundAwareFineTuning(cls, gamma=3.0, steps=1, **kw).fit(ep(sf, sm, qf, (8, 8)))
    init = BackgroundAwareFineTuning(cls, steps=0, **kw).fit(ep(sf, sm, qf, (8, 8)))
    logits = F.conv2d(sf, init.weight[:, :, None, None], init.bias)
    labels = F.interpolate(sm[:, None].float(), size=(8, 8), mode="nearest")[:, 0].long()
    expected = reformulated_ce(logits, labels, B + 1) + 3.0 * background_shift_distillation(logits, cls(sf).detach())
    assert method.support_losses[0] == pytest.approx(expected.item(), rel=1e-5)


def test_initialisation(episode):
    sf, sm, qf, _ = episode
    cls = base_classifier()
    with torch.no_grad():
        cls.bias.copy_(torch.tensor([0.5, -0.25, 0.125, 1.0]))  # non-zero base biases: bias=True copies them
    t = ep(sf, sm, qf, (8, 8))
    fresh = BackgroundAwareFineTuning(cls, steps=0, seed=3, **OLD).fit(t)
    assert torch.equal(fresh.weight[: B + 1], cls.weight[:, :, 0, 0]) and torch.equal(fresh.bias[: B + 1], cls.bias)
    assert fresh.bias[-1] == 0 and fresh.weight[-1].abs().max() <= D ** -0.5
    again = BackgroundAwareFineTuning(cls, steps=0, seed=3, **OLD).fit(t)
    assert torch.equal(fresh.weight, again.weight)  # seeded
    official = BackgroundAwareFineTuning(cls, steps=0, seed=3).fit(t)  # official: no bias, same weights
    assert torch.equal(official.weight, fresh.weight) and torch.equal(official.bias, torch.zeros(B + 2))
    proto = BackgroundAwareFineTuning(cls, steps=0, novel_init="prototype").fit(t)
    small = F.interpolate(sm[:, None].float(), size=(8, 8), mode="nearest")[:, 0].bool()
    per_shot = torch.stack([sf[k][:, small[k]].mean(1) for k in range(len(sf))]).mean(0)
    assert torch.allclose(proto.weight[-1], F.normalize(per_shot, dim=0), atol=1e-5)


def test_binary_baseline_learns_a_separable_toy_problem(episode):
    sf, sm, qf, ql = episode
    method = BinaryFineTuning().fit(fss_task(sf, sm, qf, (8, 8)))
    assert method.weight.shape == (2, D) and torch.equal(method.bias, torch.zeros(2))  # no bias (official)
    logits = method.predict(fss_task(sf, sm, qf, (8, 8)))
    assert logits.shape == (3, 2, 8, 8)
    assert iou(logits.argmax(1), (ql == 4).long()) > 0.9
    assert method.support_losses[-1] < 0.5 * method.support_losses[0]
    first = BinaryFineTuning(steps=1).fit(fss_task(sf, sm, qf))
    init = BinaryFineTuning(steps=0).fit(fss_task(sf, sm, qf))
    labels = F.interpolate(sm[:, None].float(), size=(8, 8), mode="nearest")[:, 0].long()
    weight = torch.tensor([1.0, float((labels == 0).sum() / (labels == 1).sum())])
    expected = F.cross_entropy(F.conv2d(sf, init.weight[:, :, None, None]), labels, weight=weight)
    assert first.support_losses[0] == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("make", [lambda: BackgroundAwareFineTuning(base_classifier(), steps=20),
                                  lambda: BackgroundAwareFineTuning(base_classifier(), steps=20, **OLD),
                                  lambda: BinaryFineTuning(steps=20, bias=True),
                                  lambda: BinaryFineTuning(steps=20, align_corners=False)])
def test_vectorised_episodes_equal_the_loop(make):
    sfs, sms, qfs = [], [], []
    for s in range(3):
        sf, sl = toy(10 + s)
        sfs.append(sf)
        sms.append((sl == 4).long())
        qfs.append(toy(20 + s, n=2)[0])
    sf, sm, qf = torch.stack(sfs), torch.stack(sms), torch.stack(qfs)
    tasks = episode_tasks(sf, sm, qf, (16, 16), level="bottleneck")
    batched = stacked(make().fit_predict(tasks))
    loop = torch.stack([make().fit(t).predict(t) for t in tasks])
    assert batched.shape == (3, 2, 2, 16, 16)
    assert torch.allclose(batched, loop, atol=1e-4)
    gtasks = [gep(t.support(), t.support_labels, t.query(), (16, 16)) for t in tasks]
    if make().supports(gtasks[0].label_space):  # the (B + 2)-way episodes too
        g_batched, g_loop = stacked(make().fit_predict(gtasks)), torch.stack([make().fit(t).predict(t) for t in gtasks])
        assert g_batched.shape == (3, 2, B + 2, 16, 16) and torch.allclose(g_batched, g_loop, atol=1e-4)


def test_runs_under_no_grad_and_image_resolution(episode):
    sf, sm, qf, _ = episode
    with torch.no_grad():  # evaluate_fss wraps methods in no_grad
        t = ep(sf, sm, qf, (16, 16))
        method = BackgroundAwareFineTuning(base_classifier(), steps=3, loss_resolution="image").fit(t)
        assert method.predict(t).shape == (3, 2, 16, 16)
    assert method.support_losses[-1] < method.support_losses[0]


def test_bad_inputs(episode):
    sf, sm, qf, _ = episode
    with pytest.raises(NotFittedError, match="fit"):
        BinaryFineTuning().predict(fss_task(sf, sm, qf))
    with pytest.raises(TypeError, match="1x1 nn.Conv2d"):
        BackgroundAwareFineTuning(nn.Conv2d(D, 4, 3))
    with pytest.raises(ValueError, match="novel_init"):
        BackgroundAwareFineTuning(base_classifier(), novel_init="zeros")
    with pytest.raises(ValueError, match="loss_resolution"):
        BinaryFineTuning(loss_resolution="half")
    with pytest.raises(ValueError, match="binary_rule"):
        BackgroundAwareFineTuning(base_classifier(), binary_rule="mean")
    one_empty = sm.clone()
    one_empty[1] = 0
    with pytest.raises(ValueError, match=r"support masks \[1\] have no foreground"):
        BinaryFineTuning().fit(fss_task(sf, one_empty, qf))
    with pytest.raises(ValueError, match="no support pixel"):
        BinaryFineTuning().fit(fss_task(sf, torch.zeros_like(sm), qf))
    with pytest.raises(ValueError, match="channels"):
        BackgroundAwareFineTuning(base_classifier()).fit(ep(sf[:, :4], sm, qf[:, :4], None))
    with pytest.raises(ValueError, match="ONE novel class"):  # a GFSS task must be the head's B with N = 1
        BackgroundAwareFineTuning(base_classifier()).fit(gfss_task(sf, sm.masked_fill(sm == 1, B), qf, B - 1, 1, 2))
    method = BinaryFineTuning(steps=1).fit(fss_task(sf, sm, qf))
    with pytest.raises(ValueError, match="like the supports"):
        method.predict(fss_task(sf[:, :4], sm, qf[:, :4]))


def test_feature_labels_keep_tiny_foreground():
    from fss_lab.methods.binary_finetune import feature_labels

    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[0, 5, 6] = 1  # one pixel: nearest down-sampling to 2x2 misses it
    masks[1, :4, :4] = 1
    masks[1, 7, 7] = 255
    labels = feature_labels(masks, (2, 2))
    assert labels[0].tolist() == [[0, 0], [0, 1]]
    assert labels[1].tolist() == [[1, 0], [0, 0]]
