"""fss_lab.experiments.meta: one checkpoint per meta-trained model, reused by the next notebook; the support
layer-4 memo of the PFENet-style learner gives the same inputs as computing them afresh."""
import dataclasses

import pytest
import torch

from fss_lab.engine.episodic import EpisodicConfig
from fss_lab.experiments.fss import FSSConfig, FSSExperiment
from fss_lab.experiments.meta import episodic_recipe, learner_settings, meta_checkpoint_path, meta_train
from fss_lab.methods.pfenet import PFENetMetaLearner
from fss_lab.models.backbones import create_backbone


@pytest.fixture(scope="module")
def exp():
    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", weights=None).eval()
    return FSSExperiment(FSSConfig(dataset="synthetic", dataset_kwargs={"image_size": 64, "n_images": 16},
                                   image_size=(64, 64), n_episodes=3, min_area=16, device="cpu"), backbone=backbone)


def _learner(exp, **kw):
    return PFENetMetaLearner(reduce_dim=8, bins=(1.0,), backbone=exp.backbone, **kw)


def test_second_call_loads_the_finished_checkpoint_instead_of_training(exp, tmp_path):
    cfg = EpisodicConfig(iterations=3, batch_episodes=2, optimizer="adamw", lr=1e-3, min_area=16, device="cpu")
    first = _learner(exp)
    h1 = meta_train(exp, first, cfg, cache_dir=tmp_path, progress=False)
    path = meta_checkpoint_path(exp, first, cfg, tmp_path)
    assert path.is_file() and len(h1.steps) == 3 and h1.evals
    second = _learner(exp)
    h2 = meta_train(exp, second, cfg, cache_dir=tmp_path, progress=False)
    assert h2.steps == h1.steps  # the saved history, no new steps
    for a, b in zip(first.network.state_dict().values(), second.network.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_name_changes_with_the_learner_and_the_recipe(exp, tmp_path):
    cfg = EpisodicConfig(iterations=3, device="cpu")
    base = meta_checkpoint_path(exp, _learner(exp), cfg, tmp_path)
    assert meta_checkpoint_path(exp, _learner(exp), EpisodicConfig(iterations=3, device="cuda"), tmp_path) == base
    assert meta_checkpoint_path(exp, _learner(exp, seed=1), cfg, tmp_path) != base
    assert meta_checkpoint_path(exp, _learner(exp), EpisodicConfig(iterations=3, lr=0.1), tmp_path) != base
    assert base.name.startswith("pfenet-meta_synthetic_fold0_efficientnet_lite0_3it_")
    settings = learner_settings(_learner(exp))
    assert settings["reduce_dim"] == 8 and settings["bins"] == [1.0] and "network" not in settings


def test_recipes_and_their_errors():
    assert episodic_recipe("pfenet-meta", iterations=5).iterations == 5
    assert episodic_recipe("pfenet-meta", quick=False).optimizer == "sgd"
    with pytest.raises(KeyError, match="recipes exist for"):
        episodic_recipe("prototype")


def test_layer4_memo_equals_fresh_features(exp):
    from fss_lab.engine.evaluate import fss_task_groups
    levels = ("s16", "s32")
    q, s = exp.level_caches(levels)
    learner = _learner(exp)
    group = next(fss_task_groups(learner, exp.episodes(1), exp.query_items, exp.support_items, q, s,
                                 device="cpu", batch_episodes=3))
    for task in group.tasks:
        assert task.meta["support_ids"]
        fresh, _ = learner.support_layer4(task)
        once, _ = learner.support_layer4(task, memo=True)
        twice, _ = learner.support_layer4(task, memo=True)
        assert torch.equal(fresh, once) and torch.equal(fresh, twice)
        other_mask = task.support_labels.clone()  # another mask of the same image: never served from the memo
        other_mask[..., :8] = 0
        from fss_lab.methods.task import Task
        edited = Task(task.support_features, other_mask, task.query_features, task.label_space, task.shots,
                      task.size, meta=dict(task.meta))
        assert torch.equal(learner.support_layer4(edited, memo=True)[0], learner.support_layer4(edited)[0])


def test_meta_learner_builds_trains_and_reloads_by_name(exp, tmp_path):
    from fss_lab.experiments.meta import meta_learner
    recipe = dict(iterations=2, batch_episodes=2, min_area=16)
    a, h1 = meta_learner("pfenet-meta", exp, recipe=recipe, cache_dir=tmp_path, progress=False, reduce_dim=8,
                         bins=(1.0,))
    b, h2 = meta_learner("pfenet-meta", exp, recipe=recipe, cache_dir=tmp_path, progress=False, reduce_dim=8,
                         bins=(1.0,))
    assert a._backbone is exp.backbone and len(list(tmp_path.glob("*.pt"))) == 1 and h2.steps == h1.steps
    with pytest.raises(TypeError, match="takes"):
        meta_learner("pfenet-meta", exp, recipe=recipe, cache_dir=tmp_path, progress=False, width=3)


def test_per_dataset_recipe_updates_the_learner_entry():
    # CamVid's QUICK PFENet-style recipe changes the step count only; other datasets get the learner's entry
    camvid = episodic_recipe("pfenet-meta", dataset="camvid")
    plain = episodic_recipe("pfenet-meta")
    assert camvid.iterations == 400 and plain.iterations == 800
    assert dataclasses.replace(camvid, iterations=800) == plain
    assert episodic_recipe("pfenet-meta", dataset="synthetic") == plain
    assert episodic_recipe("pfenet-meta", quick=False, dataset="camvid") == episodic_recipe("pfenet-meta", quick=False)
    from fss_lab.experiments.meta import QUICK_LEARNERS, _entry
    assert _entry(QUICK_LEARNERS, "pfenet-meta", "camvid") == {**QUICK_LEARNERS["pfenet-meta"],
                                                                "fem_level": "s16_expanded"}
    assert _entry(QUICK_LEARNERS, "pfenet-meta", "synthetic") == QUICK_LEARNERS["pfenet-meta"]


def test_level_caches_share_one_backbone_pass_and_equal_separate_extraction():
    from fss_lab.models.features import FeatureExtractor
    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", weights=None).eval()
    exp = FSSExperiment(FSSConfig(dataset="synthetic", dataset_kwargs={"image_size": 64, "n_images": 12},
                                  image_size=(64, 64), n_episodes=3, min_area=16, device="cpu"), backbone=backbone)
    calls = []
    hook = backbone.conv_stem.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        q, _ = exp.level_caches(("s16", "s32"))
        n = len(exp.query_items)
        for c in q.values():
            c.precompute(range(n))
    finally:
        hook.remove()
    assert sum(calls) == n  # one pass per image for both levels, not two
    images = torch.stack([exp.query_items.image(i) for i in range(n)])
    for lv, cache in q.items():
        alone = FeatureExtractor(backbone, levels=(lv,), device="cpu")(images)
        assert torch.equal(cache.get(list(range(n))), alone)
