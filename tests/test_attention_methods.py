"""PFENet-style and MM-Former training-free methods (issue 10): official pieces, consistency with the prior from
images, the EFTNet support blend, heuristic / oracle matching, per-level caches of FSSExperiment."""
from __future__ import annotations

import pytest
import torch

from fss_lab.experiments.fss import FSSConfig, FSSExperiment
from fss_lab.methods import Task
from fss_lab.methods.mmformer import HeuristicMatching, OracleMatching
from fss_lab.methods.pfenet import PFENetMetaLearner, PFENetPriorBaseline
from fss_lab.models.backbones import create_backbone
from fss_lab.models.pfenet import PFENetFEM, bin_size, pfenet_loss, weighted_gap
from fss_lab.models.pfenet_prior import prior_from_backbone
from fss_lab.models.proposal_features import ProposalExtractor


def test_weighted_gap_is_pfenets_formula_and_bins_follow_the_official_rule():
    f, m = torch.randn(2, 3, 4, 4), torch.rand(2, 1, 4, 4)
    want = (f * m).sum((2, 3)) / (m.sum((2, 3)) + 0.0005)
    assert torch.allclose(weighted_gap(f, m), want)
    assert [bin_size(b, 60) for b in (60, 30, 15, 8)] == [60, 30, 15, 8]
    assert [bin_size(b, 60) for b in (1.0, 0.5, 0.25, 0.125)] == [60, 30, 15, 7]  # int(), as the official code
    with pytest.raises(ValueError, match="masks"):
        weighted_gap(f, m[:, :, :2])


def test_fem_shapes_and_loss_parts():
    torch.manual_seed(0)
    net = PFENetFEM(6, 8, bins=(1.0, 0.5, 0.25)).eval()
    logits, aux = net(torch.randn(2, 6, 8, 8), torch.randn(2, 8), torch.rand(2, 1, 8, 8))
    assert logits.shape == (2, 2, 8, 8) and [a.shape[-1] for a in aux] == [8, 4, 2]
    y = torch.randint(0, 2, (2, 32, 32))
    y[:, 0] = 255
    parts = pfenet_loss(logits, aux, y, aux_weight=1.0)
    assert torch.allclose(parts["total"], parts["main"] + parts["aux"])


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("efficientnet_lite0", weights=None).eval()


def _image_task(backbone, k=2):
    gen = torch.Generator().manual_seed(1)
    sup, qry = torch.randn(k, 3, 64, 64, generator=gen), torch.randn(1, 3, 64, 64, generator=gen)
    masks = torch.zeros(k, 64, 64, dtype=torch.long)
    masks[:, 16:48, 8:40] = 1
    masks[:, 0] = 255
    with torch.no_grad():
        fs, fq = backbone(sup, levels=("s16", "s32")), backbone(qry, levels=("s16", "s32"))
    return Task(dict(fs), masks, dict(fq), Task.fss(fs["s16"], masks, fq["s16"]).label_space, shots=k,
                size=(64, 64)), sup, qry, masks


def test_prior_baseline_equals_the_prior_from_images(backbone):
    task, sup, qry, masks = _image_task(backbone)
    method = PFENetPriorBaseline(backbone=backbone).fit(task)
    want = prior_from_backbone(backbone, qry, sup[None], masks[None])
    assert torch.allclose(method.prior(task), want, atol=1e-6)
    out = method.predict(task)
    assert out.shape == (1, 2, 64, 64) and torch.allclose(out[:, 0], torch.full_like(out[:, 0], 0.5))


def test_meta_learner_support_inputs_and_the_eftnet_blend(backbone):
    task, *_ = _image_task(backbone)
    learner = PFENetMetaLearner(reduce_dim=8, bins=(1.0, 0.5), backbone=backbone).fit(task)
    assert learner.inputs.prototype.shape == (8,) and learner.inputs.layer4.shape[:2] == (2, 320)
    with torch.no_grad():
        plain = learner.predict(task)
        other = learner.support_inputs(Task(task.support_features, task.support_labels.flip(-1),
                                            task.query_features, task.label_space, 2, task.size))
        same = learner.predict_from(task, learner.inputs.blend(other, 1.0))
        mixed = learner.predict_from(task, learner.inputs.blend(other, 0.8))
    assert torch.allclose(plain, same, atol=1e-6) and not torch.allclose(plain, mixed)
    assert len(learner.meta_parameters()) == len(list(learner.network.parameters())) > 0


def test_heuristic_picks_the_most_similar_proposal_and_the_oracle_the_best_iou():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(1, 4, 4, 4, generator=gen)
    props = torch.zeros(1, 3, 16, 16)
    props[0, 0, :8], props[0, 1, 8:], props[0, 2, :, :8] = 1, 1, 1
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, 8:] = 1
    sup_labels = torch.zeros(1, 16, 16, dtype=torch.long)
    sup_labels[0, :8] = 1
    task = Task({"s16": f, "proposals": props}, sup_labels, {"s16": f, "proposals": props},
                Task.fss(f, sup_labels, f).label_space, 1, (16, 16), query_labels=labels)
    heur = HeuristicMatching(levels=("s16",), self_align=False).fit(task)
    out = heur.predict(task)
    best = int(heur.last_similarity.argmax())
    assert torch.allclose(out[0, 1], props[0, best])
    assert best == 0  # the query is its own support: the support's region is the proposal most like it
    oracle = OracleMatching(levels=("s16",)).fit(task).predict(task)
    assert torch.equal(oracle[0, 1], props[0, 1])  # the ground truth is the lower half


def test_experiment_level_caches_and_multi_level_evaluation(backbone):
    exp = FSSExperiment(FSSConfig(dataset="synthetic", dataset_kwargs={"image_size": 64, "n_images": 16},
                                  image_size=(64, 64), n_episodes=4, min_area=16, device="cpu"), backbone=backbone)
    q, s = exp.level_caches(("s16", "s32", "proposals"))
    assert q is s and set(q) == {"s16", "s32", "proposals"} and exp.level_caches(("s16",))[0]["s16"] is q["s16"]
    assert isinstance(q["proposals"].extractor, ProposalExtractor)
    res = exp.evaluate(PFENetPriorBaseline(backbone=backbone), 1, progress=False)
    assert res.count == 4 and 0 <= res.miou <= 1 and q["s32"].misses > 0
    heur = exp.evaluate(HeuristicMatching(levels=("s32", "s16")), 1, progress=False)
    oracle = exp.evaluate(OracleMatching(levels=("s32", "s16")), 1, progress=False)
    assert oracle.miou >= heur.miou and q["proposals"].get([0]).shape[1] == 100
    items, caches = exp.train_split(("s16",))
    assert items.dataset.split == "train" and set(caches) == {"s16"}


def test_mmformer_stage2_trains_the_matching_on_frozen_proposals(backbone):
    from fss_lab.engine.episodic import EpisodicConfig, train_episodic
    from fss_lab.methods.mmformer import MMFormer
    exp = FSSExperiment(FSSConfig(dataset="synthetic", dataset_kwargs={"image_size": 64, "n_images": 16},
                                  image_size=(64, 64), n_episodes=3, min_area=16, device="cpu"), backbone=backbone)
    levels = ("s32", "s16", "proposals")
    items, caches = exp.train_split(levels)
    learner = MMFormer(levels=("s32", "s16"), hidden_dim=16, nhead=2, dim_feedforward=32, num_layers=1, min_size=2)
    with pytest.warns(UserWarning):
        h = train_episodic(learner, EpisodicConfig(iterations=4, batch_episodes=2, optimizer="adamw", lr=1e-3,
                                                   weight_decay=0.05, min_area=16, device="cpu"),
                           fold=0, train_items=items, train_features=caches, progress=False)
    steps = h.steps_frame()
    assert len(steps) == 4 and steps["loss"].notna().all() and {"loss_fewshot_loss", "loss_co_loss"} <= set(steps)
    before = caches["proposals"].get([0]).clone()
    res = exp.evaluate(learner, 1, progress=False)
    assert 0 <= res.miou <= 1 and torch.equal(caches["proposals"].get([0]), before)
    assert learner.last_weights.shape == learner.last_similarity.shape == (1, 100)


def test_meta_learner_fem_level_is_read_beside_the_prior_levels(backbone):
    task, *_ = _image_task(backbone, k=1)
    gen = torch.Generator().manual_seed(3)
    extra = {"s16_expanded": torch.randn(1, 12, 4, 4, generator=gen)}
    task = Task({**task.support_features, **extra}, task.support_labels, {**task.query_features, **extra},
                task.label_space, 1, task.size)
    learner = PFENetMetaLearner(reduce_dim=8, bins=(1.0,), backbone=backbone, fem_level="s16_expanded")
    assert learner.feature_levels == ("s16", "s32", "s16_expanded")
    assert learner.fit(task).network.mid_channels == 12 and learner.predict(task).shape == (1, 2, 64, 64)
