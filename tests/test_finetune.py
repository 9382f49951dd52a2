"""GFSS fine-tuning (seed 000) and the imprinted-prototype baseline, on tiny stand-in models (CPU, seconds)."""
import copy

import pytest
import torch
from torch import nn

from fss_lab.methods.finetune import (FineTuneAfterBackbone, FineTuneLastLayer, balanced_class_weights,
                                      create_finetune)
from fss_lab.methods import NotFittedError, UnsupportedTaskError
from fss_lab.methods.gfss_prototype import PrototypeGFSS, class_prototypes, imprint_weights
from tests.tasks import fss_task, gfss_task

B, N = 2, 2  # base and novel classes -> 1 + B + N = 5 GFSS labels
C = 1 + B + N
D, C_IN = 8, 6  # bottleneck channels, backbone channels


class TinySegModel(nn.Module):
    """Stand-in for PSPNet: .head (conv + BN + ReLU + dropout) and a 1x1 .classifier over 1 + B classes."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.head = nn.Sequential(nn.Conv2d(C_IN, D, 1), nn.BatchNorm2d(D), nn.ReLU(), nn.Dropout2d(0.1))
        self.classifier = nn.Conv2d(D, 1 + B, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            self.head[1].running_mean.fill_(0.1)
        self.feature_dim = D
        self.eval()


def toy_support(channels, s=6, h=6, stride=4, seed=0):
    """Separable toy: features = 2 * one-hot(label at feature resolution) (+ noise); labels at image resolution."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.randint(0, C, (s, h, h), generator=gen)
    small[:, 0, :C] = torch.arange(C)  # every class present
    feats = torch.zeros(s, channels, h, h)
    feats[:, :C] = 2.0 * torch.nn.functional.one_hot(small, C).permute(0, 3, 1, 2).float()
    feats += 0.05 * torch.randn(feats.shape, generator=gen)
    labels = small.repeat_interleave(stride, 1).repeat_interleave(stride, 2)
    labels[0, 0, -1] = 255
    return feats, labels


def task(feats, labels, query=None, size=None, level=None, shots=3):
    """The GFSS task (B = 2, N = 2) of these supports; queries default to the supports. Features with C_IN
    channels are the "backbone" level, others the "bottleneck" level (unless ``level`` says)."""
    level = level or ("backbone" if feats.shape[1] == C_IN else "bottleneck")
    query = feats if query is None else query
    return gfss_task(feats, labels, query, B, N, shots, size=size or tuple(labels.shape[-2:]), level=level)


def accuracy(method, feats, labels):
    """Support pixel accuracy at feature resolution (bilinear up-sampling blurs the toy's random 4x4 cells)."""
    h, w = feats.shape[-2:]
    small = torch.nn.functional.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    valid = small != 255
    return (method.predict(task(feats, labels, size=(h, w))).argmax(1)[valid] == small[valid]).float().mean().item()


def test_last_layer_reduces_loss_reaches_high_accuracy_and_leaves_model_untouched():
    model = TinySegModel()
    before = copy.deepcopy(model.state_dict())
    feats, labels = toy_support(D)
    method = FineTuneLastLayer(model, steps=60, lr=0.5, loss_at="feature", class_weights=None)
    method.fit(task(feats, labels))
    losses = [h["loss"] for h in method.history]
    assert len(losses) == 60 and losses[-1] < 0.5 * losses[0]
    assert accuracy(method, feats, labels) > 0.95
    assert method.head is None  # the last layer only: no head is trained
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert method.classifier is not model.classifier and method.classifier.out_channels == C


def test_all_after_backbone_trains_a_copy_and_never_modifies_the_model():
    model = TinySegModel()
    before = copy.deepcopy(model.state_dict())
    feats, labels = toy_support(C_IN)
    method = FineTuneAfterBackbone(model, steps=80, lr=0.05, head_lr=0.05, triplet_weight=0.5, loss_at="image")
    method.fit(task(feats, labels))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} of the base model changed"
    assert model.head[0].weight.grad is None and model.classifier.weight.grad is None
    assert not torch.equal(method.head[0].weight, model.head[0].weight), "the head copy is trained"
    assert torch.equal(method.head[1].running_mean, model.head[1].running_mean), "BN statistics frozen"
    assert any(h["triplet"] > 0 for h in method.history)
    assert method.history[-1]["ce"] < 0.5 * method.history[0]["ce"]
    assert method.history[-1]["triplet"] < method.history[0]["triplet"]
    assert accuracy(method, feats, labels) > 0.95


def test_steps_zero_copies_base_rows_and_imprints_novel_rows():
    model = TinySegModel()
    feats, labels = toy_support(D)
    method = create_finetune(model, strategy="last_layer", steps=0).fit(task(feats, labels))
    assert isinstance(method, FineTuneLastLayer) and method.num_novel == N  # N from the task
    w = method.classifier.weight[:, :, 0, 0]
    assert torch.equal(w[: 1 + B], model.classifier.weight[:, :, 0, 0])
    base_norm = model.classifier.weight[1:, :, 0, 0].norm(dim=1).mean()
    assert torch.allclose(w[1 + B:].norm(dim=1), base_norm.expand(N), atol=1e-5)
    assert torch.allclose(method.classifier.bias[1 + B:], model.classifier.bias[1:].mean().expand(N))


def test_seeded_and_global_rng_untouched():
    model = TinySegModel()
    feats, labels = toy_support(C_IN)
    kw = dict(steps=5, batch_size=3, triplet_weight=0.3, novel_init="random", seed=4)
    state = torch.random.get_rng_state()
    t = task(feats, labels)
    a = FineTuneAfterBackbone(model, **kw).fit(t).predict(t)
    assert torch.equal(state, torch.random.get_rng_state())
    b = FineTuneAfterBackbone(model, **kw).fit(t).predict(t)
    c = FineTuneAfterBackbone(model, **{**kw, "seed": 5}).fit(t).predict(t)
    assert a.shape == (6, C, 24, 24)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_adam_and_balanced_weights_run():
    model = TinySegModel()
    feats, labels = toy_support(D)
    m = FineTuneLastLayer(model, steps=30, optimizer="adam", lr=0.05, class_weights=torch.ones(C), loss_at="feature")
    m.fit(task(feats, labels))
    assert m.history[-1]["loss"] < m.history[0]["loss"]
    w = balanced_class_weights(torch.tensor([0, 0, 0, 1, 255, 3]), 5)
    # n = 5 labelled pixels, k = 3 classes present: w0 = 5 / (3 * 3), w1 = w3 = 5 / 3; absent class 2, 4 -> 1
    assert torch.allclose(w, torch.tensor([5 / 9, 5 / 3, 1.0, 5 / 3, 1.0]))


def test_bad_inputs():
    model = TinySegModel()
    with pytest.raises(ValueError, match="triplet"):
        FineTuneLastLayer(model, triplet_weight=0.1)
    with pytest.raises(ValueError, match="strategy"):
        create_finetune(model, strategy="everything")
    with pytest.raises(ValueError, match="optimizer"):
        FineTuneLastLayer(model, optimizer="lbfgs")
    headless = nn.Module()
    headless.classifier = model.classifier
    with pytest.raises(TypeError, match="head"):
        FineTuneAfterBackbone(headless)
    with pytest.raises(TypeError, match="classifier"):
        FineTuneLastLayer(nn.Linear(3, 3))
    feats, labels = toy_support(D)
    with pytest.raises(ValueError, match=r"0\.\.4 \(1 \+ B \+ N\) or 255, found \[5\]"):
        FineTuneLastLayer(model).fit(task(feats, labels.clamp(max=C)))  # label 5 with 1 + B + N = 5 classes
    with pytest.raises(ValueError, match="channels"):
        FineTuneLastLayer(model).fit(task(torch.randn(6, D + 1, 6, 6), labels))
    with pytest.raises(ValueError, match="backbone features"):
        FineTuneAfterBackbone(model).fit(task(torch.randn(6, C_IN + 1, 6, 6), labels, level="backbone"))
    with pytest.raises(KeyError, match="'backbone'"):  # the task lacks the level the method reads
        FineTuneAfterBackbone(model).fit(task(feats, labels, level="bottleneck"))
    with pytest.raises(NotFittedError, match="fit"):
        FineTuneLastLayer(model).predict(task(feats, labels))
    with pytest.raises(ValueError, match=r"expected \[5\]"):
        FineTuneLastLayer(model, class_weights=torch.ones(3)).fit(task(feats, labels))
    with pytest.raises(ValueError, match="class_weights"):
        FineTuneLastLayer(model, class_weights="inverse")
    with pytest.raises(FloatingPointError, match="lower lr"):
        FineTuneLastLayer(model, steps=20, lr=1e12, momentum=0.0).fit(task(feats, labels))
    with pytest.raises(ValueError, match="B=1 base classes but the classifier has 2"):
        FineTuneLastLayer(model).fit(gfss_task(feats, labels.clamp(max=3), feats, 1, 2, 3))
    fss = fss_task(feats, (labels == 3).long(), feats, level="bottleneck")
    for cls in (FineTuneLastLayer, PrototypeGFSS):
        with pytest.raises(UnsupportedTaskError, match="not 1-way FSS"):
            cls(model).fit(fss)


def test_prototype_baseline_imprints_without_training():
    model = TinySegModel()
    before = copy.deepcopy(model.state_dict())
    feats, labels = toy_support(D)
    method = PrototypeGFSS(model).fit(task(feats, labels))
    assert torch.equal(method.weight[: 1 + B], model.classifier.weight[:, :, 0, 0])
    protos = class_prototypes(feats, labels, [3, 4])
    w, b = imprint_weights(protos, model.classifier.weight[:, :, 0, 0], model.classifier.bias)
    assert torch.allclose(method.weight[1 + B:], w) and torch.allclose(method.bias[1 + B:], b)
    logits = method.predict(task(feats, labels))
    assert logits.shape == (6, C, 24, 24)
    novel = labels >= 1 + B
    assert (logits.argmax(1)[novel] >= 1 + B).float().mean() > 0.9  # novel pixels go to novel classes
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_class_prototypes_hand_computation_and_missing_class():
    feats = torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]])  # [S=2, D=1, 1, 2]
    labels = torch.tensor([[[1, 2]], [[1, 255]]])  # same resolution
    p = class_prototypes(feats, labels, [1, 2])
    assert torch.allclose(p, torch.tensor([[3.0], [3.0]]))  # class 1: (1 + 5) / 2; class 2: 3
    with pytest.raises(ValueError, match=r"\[3\]"):
        class_prototypes(feats, labels, [3])


def test_real_pspnet_head_method_is_copied_with_the_backbone_shared():
    from fss_lab.models.pspnet import PSPNet

    torch.manual_seed(0)
    model = PSPNet("efficientnet_lite0", num_classes=1 + B, weights=None).eval()
    before = copy.deepcopy(model.state_dict())
    c_level = model.backbone.levels[model.level][0]
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(4, c_level, 4, 4, generator=gen)
    labels = torch.randint(0, C, (4, 16, 16), generator=gen)
    labels[0, 8:12, 8:12], labels[1, 8:12, 8:12] = 3, 4  # both novel ids (B+1, B+2) present
    t = task(feats, labels, level="backbone", shots=1)
    method = FineTuneAfterBackbone(model, steps=3, batch_size=2, triplet_weight=0.2).fit(t)
    assert method.predict(t).shape == (4, C, 16, 16)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} of the base model changed"
    assert not model.training and not model.backbone.training
    trained = {id(p) for m in method.head_modules for p in m.parameters()}
    assert trained and not trained & {id(p) for p in model.backbone.parameters()}, "the backbone is never trained"
    assert not trained & {id(p) for p in model.parameters()}, "the head is a copy"
    last = FineTuneLastLayer(model, steps=2).fit(task(torch.randn(4, model.feature_dim, 4, 4), labels, shots=1))
    query = task(torch.randn(4, model.feature_dim, 4, 4), labels, torch.randn(1, model.feature_dim, 4, 4), (8, 8))
    assert last.predict(query).shape == (1, C, 8, 8)


def test_prototype_norm_scale():
    model = TinySegModel()
    feats, labels = toy_support(D)
    full = PrototypeGFSS(model).fit(task(feats, labels))
    half = PrototypeGFSS(model, norm_scale=0.5).fit(task(feats, labels))
    assert torch.allclose(half.weight[1 + B:], 0.5 * full.weight[1 + B:])
    assert torch.equal(half.weight[: 1 + B], full.weight[: 1 + B])
    with pytest.raises(ValueError, match="norm_scale"):
        PrototypeGFSS(model, norm_scale=0)
