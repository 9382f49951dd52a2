"""train_base on tiny data: configs, schedules, history, cached-feature mode, the extra-loss hook, evaluation."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from fss_lab.data.base_training import BaseTrainingSet
from fss_lab.data.class_maps import GFSSClassMap
from fss_lab.data.transforms import PairTransform
from fss_lab.engine.distributed import DistributedContext
from fss_lab.engine.train import TrainConfig, TrainHistory, _Schedule, evaluate_base, quick_cpu_config, train_base
from fss_lab.models.pspnet import PSPNet
from tests.conftest import ToyDataset

T = PairTransform(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _toy(n=12):
    # fold 0 novel (1, 2); base (3, 4): every item holds a base object, half of them a novel one
    layout = [[(3 + i % 2, 4, 4, 20, 20)] + ([(1, 22, 22, 30, 30)] if i % 2 else []) for i in range(n)]
    ds = ToyDataset(layout)
    return ds, GFSSClassMap.from_fold(ds, 0)


def _model(frozen=False):
    torch.manual_seed(0)
    return PSPNet("efficientnet_lite0", 3, weights=None, bottleneck_dim=8, freeze_backbone=frozen)


def test_config_validation():
    with pytest.raises(ValueError, match="exactly one"):
        TrainConfig()
    with pytest.raises(ValueError, match="exactly one"):
        TrainConfig(iterations=3, epochs=1)
    with pytest.raises(ValueError, match="freeze_backbone"):
        TrainConfig(iterations=3, cache_backbone_features=True)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(iterations=3, schedule="step")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(iterations=3, batch_size=0)
    q = quick_cpu_config(eval_every=75)
    assert q.cache_backbone_features and q.freeze_backbone and q.iterations == 300 and q.eval_every == 75
    assert quick_cpu_config(epochs=2).iterations is None
    d = TrainConfig(iterations=3, extra_loss=lambda f, y, z: 0).to_dict()
    assert d["extra_loss"] == "<lambda>" and d["momentum"] == 0.9 and d["weight_decay"] == 1e-4


def test_schedules_by_hand():
    poly, cos = _Schedule("poly", 10, 0.9), _Schedule("cosine", 10, 0.9)
    assert poly(0) == 1.0 and poly(5) == pytest.approx(0.5 ** 0.9) and poly(10) == 0.0
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    assert _Schedule("constant", 10, 0.9)(7) == 1.0


def test_full_model_training_records_a_tidy_history():
    ds, cm = _toy()
    train, val = BaseTrainingSet(ds, cm, transform=T, seed=0), BaseTrainingSet(ds, cm, transform=T, augment=False)
    model = _model()
    cfg = TrainConfig(iterations=4, batch_size=4, lr=0.01, eval_every=2, schedule="poly")
    h = train_base(model, train, val, cfg, progress=False)
    steps = h.steps_frame()
    assert list(steps.iteration) == [1, 2, 3, 4] and list(steps.epoch) == [0, 0, 0, 1]  # 3 batches per epoch
    assert steps.lr.tolist() == pytest.approx([0.01 * (1 - t / 4) ** 0.9 for t in range(4)])
    assert (steps.loss_aux > 0).all() and steps.loss.apply(math.isfinite).all()
    assert steps.loss.tolist() == pytest.approx((steps.loss_main + 0.4 * steps.loss_aux).tolist(), rel=1e-5)
    evals = h.evals_frame()
    assert list(evals.iteration) == [2, 4] and evals.base_miou.between(0, 1).all()
    assert set(h.per_class_frame().label) == {0, 1, 2}
    assert not model.training
    assert model.classifier.weight.is_contiguous() and model.features(torch.randn(1, 3, 32, 32)).is_contiguous()
    assert TrainHistory.from_dict(h.to_dict()).evals == h.evals


def test_cached_mode_trains_the_head_only_and_extracts_features_once():
    ds, cm = _toy()
    train, val = BaseTrainingSet(ds, cm, transform=T), BaseTrainingSet(ds, cm, transform=T, augment=False)
    model = _model(frozen=True)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.classifier.weight.detach().clone()
    calls = []
    original = model.backbone_features
    model.backbone_features = lambda x: calls.append(len(x)) or original(x)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.2, freeze_backbone=True, cache_backbone_features=True,
                      eval_batch_size=6, eval_every=3)
    h = train_base(model, train, val, cfg, progress=False)
    assert len(h.steps) == 9 and sum(calls) == 2 * len(train) + len(val)  # flips + val, once each
    assert all(torch.equal(v, backbone_before[k]) for k, v in model.backbone.state_dict().items())
    assert not torch.equal(model.classifier.weight, head_before)
    losses = h.steps_frame().loss
    assert losses.iloc[-3:].mean() < losses.iloc[:3].mean()
    assert (h.steps_frame().loss_aux == 0).all()


def test_extra_loss_hook_sees_features_labels_logits_on_the_loss_grid():
    ds, cm = _toy(8)
    train = BaseTrainingSet(ds, cm, transform=T)
    seen = []

    def extra(features, labels, logits):
        seen.append((tuple(features.shape), tuple(labels.shape), tuple(logits.shape), labels.dtype))
        return 0.5 * features.pow(2).mean()

    cfg = TrainConfig(iterations=2, batch_size=4, extra_loss=extra, loss_stride=4)
    h = train_base(_model(), train, None, cfg, progress=False)
    assert seen == [((4, 8, 2, 2), (4, 8, 8), (4, 3, 8, 8), torch.int64)] * 2
    steps = h.steps_frame()
    assert (steps.loss_extra > 0).all()
    assert steps.loss.tolist() == pytest.approx((steps.loss_main + 0.4 * steps.loss_aux + steps.loss_extra).tolist(),
                                                rel=1e-5)


def test_evaluate_base_scores_a_perfect_and_a_constant_model():
    labels = torch.tensor([[[0, 1], [2, 255]]]).repeat(3, 1, 1)

    class Oracle(torch.nn.Module):
        def __init__(self, constant=None):
            super().__init__()
            self.constant = constant

        def forward(self, x):
            y = labels[: len(x)].clamp(max=2) if self.constant is None else torch.full((len(x), 2, 2), self.constant)
            return torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float()

    val = [(torch.zeros(3, 2, 2), labels[i]) for i in range(3)]
    perfect = evaluate_base(Oracle(), val, 3, batch_size=2)
    assert perfect["base_miou"] == 1.0 and perfect["base_miou_with_bg"] == 1.0
    const = evaluate_base(Oracle(constant=1), val, 3)
    # class 1: I=3, U=9 -> 1/3; class 2: I=0, U=3 -> 0; background: 0
    assert const["per_class"] == {0: 0.0, 1: pytest.approx(1 / 3), 2: 0.0}
    assert const["base_miou"] == pytest.approx(1 / 6) and const["base_miou_with_bg"] == pytest.approx(1 / 9)


def test_too_few_images_and_indivisible_batches_fail_clearly():
    ds, cm = _toy(2)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        train_base(_model(), BaseTrainingSet(ds, cm, transform=T), None, TrainConfig(iterations=1, batch_size=4),
                   progress=False)
    with pytest.raises(ValueError, match="TrainConfig"):
        train_base(_model(), BaseTrainingSet(ds, cm, transform=T), None, None)
    with pytest.raises(ValueError, match="num_classes=train_set.num_classes"):
        model = PSPNet("efficientnet_lite0", 5, weights=None, bottleneck_dim=8)
        train_base(model, BaseTrainingSet(ds, cm, transform=T), None, TrainConfig(iterations=1, batch_size=2),
                   progress=False)
    with pytest.raises(ValueError, match="not divisible by the 2 processes"):
        train_base(_model(), BaseTrainingSet(ds, cm, transform=T), None, TrainConfig(iterations=1, batch_size=3),
                   progress=False, ctx=DistributedContext(world_size=2))
    assert isinstance(TrainHistory().steps_frame(), pd.DataFrame)
