"""The prototype baseline: masked average pooling, cosine logits, K-shot averaging, input checks."""
import math

import pytest
import torch

from fss_lab.methods import NotFittedError
from fss_lab.methods.prototype import MAP_EPS, PrototypeBaseline, cosine_logits
from fss_lab.ops import masked_average_pooling, resize_labels
from tests.tasks import episode_tasks, fss_task, stacked


def test_masked_average_pooling_by_hand():
    # one shot, D=2, 1x2 feature map: f(0) = (1, 0), f(1) = (3, 4); weights fg = (1, 0), bg = (0.5, 0.5)
    feats = torch.tensor([[[[1.0, 3.0]], [[0.0, 4.0]]]])  # [1, 2, 1, 2]
    w = torch.tensor([[[[0.5, 0.5]], [[1.0, 0.0]]]])  # [1, C=2, 1, 2]: bg, fg
    protos = masked_average_pooling(feats, w, eps=0.0)
    assert torch.allclose(protos[0, 0], torch.tensor([2.0, 2.0]))  # bg: mean of both
    assert torch.allclose(protos[0, 1], torch.tensor([1.0, 0.0]))  # fg: first pixel


def test_downsample_masks_area_fractions_and_ignore():
    m = torch.tensor([[[1, 1, 0, 0], [1, 255, 0, 0]]])  # [1, 2, 4]
    w = resize_labels(m, (1, 2), "area", num_classes=2)
    # left 2x2 cell: 3 fg, 1 ignore -> fg 0.75, bg 0; right cell: all bg
    assert torch.allclose(w[0, :, 0, 0], torch.tensor([0.0, 0.75]))
    assert torch.allclose(w[0, :, 0, 1], torch.tensor([1.0, 0.0]))


def test_cosine_logits_by_hand():
    f = torch.tensor([[[[1.0]], [[1.0]]]])  # one pixel, direction (1, 1)
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out = cosine_logits(f, p, temperature=10.0)
    assert torch.allclose(out.flatten(), torch.tensor([10 / math.sqrt(2)] * 2))


def test_prototype_segments_a_separable_query():
    # features: foreground pixels point along e0, background along e1
    def feats(mask):
        f = torch.zeros(1, 4, 8, 8)
        f[0, 0][mask == 1] = 1.0
        f[0, 1][mask == 0] = 1.0
        return f + 0.05

    sm = torch.zeros(8, 8, dtype=torch.long)
    sm[2:6, 2:6] = 1
    qm = torch.zeros(8, 8, dtype=torch.long)
    qm[0:3, 4:8] = 1
    task = fss_task(feats(sm), sm[None], feats(qm), (8, 8))
    logits = PrototypeBaseline().fit(task).predict(task)
    assert logits.shape == (1, 2, 8, 8)
    assert torch.equal(logits.argmax(1)[0], qm)


def test_k_shot_averages_per_shot_prototypes():
    f = torch.randn(3, 5, 4, 4)
    m = torch.zeros(3, 4, 4, dtype=torch.long)
    m[:, :2] = 1
    m[2, :, :] = 1
    m[2, 3, 3] = 0
    q = torch.randn(1, 5, 4, 4)
    k3 = PrototypeBaseline().fit(fss_task(f, m, q)).prototypes
    singles = torch.stack([PrototypeBaseline().fit(fss_task(f[i : i + 1], m[i : i + 1], q)).prototypes
                           for i in range(3)])
    assert torch.allclose(k3, singles.mean(0), atol=1e-6)


def test_support_checks():
    f = torch.randn(2, 4, 4, 4)
    with pytest.raises(ValueError, match="no support pixel"):  # no shot shows the class
        PrototypeBaseline().fit(fss_task(f, torch.zeros(2, 8, 8, dtype=torch.long), f))
    one_empty = torch.zeros(2, 8, 8, dtype=torch.long)
    one_empty[0, :2] = 1
    with pytest.raises(ValueError, match=r"support masks \[1\] have no foreground"):
        PrototypeBaseline().fit(fss_task(f, one_empty, f))
    with pytest.raises(ValueError, match=r"must be \[S=1, D, h, w\]"):  # 2 feature maps, 1 mask: the Task refuses
        fss_task(f, torch.ones(1, 8, 8, dtype=torch.long), f)
    with pytest.raises(ValueError, match=r"found \[3\]"):
        bad = torch.full((2, 8, 8), 3, dtype=torch.long).index_fill_(1, torch.tensor([0]), 1)
        PrototypeBaseline().fit(fss_task(f, bad, f))
    with pytest.raises(NotFittedError, match="fit"):
        PrototypeBaseline().predict(fss_task(f, torch.ones(2, 8, 8, dtype=torch.long), f))
    assert issubclass(NotFittedError, RuntimeError)


def test_vectorised_episodes_equal_the_per_episode_loop():
    from fss_lab.methods.base import Method

    g = torch.Generator().manual_seed(0)
    sf, qf = torch.randn(4, 3, 6, 5, 5, generator=g), torch.randn(4, 2, 6, 5, 5, generator=g)
    sm = (torch.rand(4, 3, 10, 10, generator=g) > 0.5).long()
    sm[..., 0, 0] = 1
    sm[:, 0, 1:3] = 255
    method = PrototypeBaseline(temperature=7.0)
    tasks = episode_tasks(sf, sm, qf, (10, 10))
    fast = stacked(method.fit_predict(tasks))
    loop = stacked(Method.fit_predict(method, tasks))
    assert fast.shape == (4, 2, 2, 10, 10)
    assert torch.allclose(fast, loop, atol=1e-5)


def test_map_eps_is_the_baselines_and_shots_are_not_pooled():
    # the baseline averages per-shot prototypes (PFENet), eps 1e-6 on each shot's mask area
    f = torch.tensor([[[[2.0, 4.0]]], [[[6.0, 0.0]]]])  # [K=2, D=1, 1, 2]
    w = torch.tensor([[[[1.0, 1.0]]], [[[1.0, 0.0]]]])  # [K, C=1, 1, 2]
    per_shot = masked_average_pooling(f, w, MAP_EPS)
    assert MAP_EPS == 1e-6 and per_shot.shape == (2, 1, 1)
    assert per_shot[:, 0, 0].tolist() == pytest.approx([3.0, 6.0], rel=1e-5)
    pooled = masked_average_pooling(f, w, MAP_EPS, pool_shots=True)  # DIaM / RePRI: all pixels pooled
    assert pooled.shape == (1, 1) and pooled.item() == pytest.approx(12 / 3, rel=1e-5)
