"""Episodic evaluation and the end-to-end experiment on the generated data."""
import pytest
import torch

from fss_lab.data import PairTransform, TransformedItems, sample_fss_episodes
from fss_lab.engine.evaluate import evaluate_fss, foreground_iou
from fss_lab.methods.base import FewShotMethod


class _OracleFeatures:
    """'Features' that are the one-hot query label at full resolution: a perfect extractor for the toy data."""

    def precompute(self, indices):
        pass

    def __init__(self, items, class_count=5):
        self.items, self.class_count = items, class_count
        self.calls = 0

    def get(self, indices):
        self.calls += 1
        labels = torch.stack([self.items.label(i) for i in indices]).long().clamp(max=self.class_count - 1)
        return torch.nn.functional.one_hot(labels, self.class_count).permute(0, 3, 1, 2).float()


class _Constant(FewShotMethod):
    name = "all-foreground"

    def fit(self, support_features, support_masks, query_features=None):
        return self

    def predict(self, query_features, size):
        q = query_features.shape[0]
        return torch.stack([torch.zeros(q, *size), torch.ones(q, *size)], 1)


def test_foreground_iou_by_hand():
    pred = torch.tensor([[1, 1, 0, 0]])
    target = torch.tensor([[1, 0, 1, 255]])
    assert foreground_iou(pred, target) == pytest.approx(1 / 3)
    assert foreground_iou(torch.zeros(2, 2), torch.zeros(2, 2)) == 1.0


def test_prototype_on_oracle_features_is_perfect(toy):
    from fss_lab.methods.prototype import PrototypeBaseline

    items = TransformedItems(toy, PairTransform((32, 32)))
    eps = sample_fss_episodes(toy, fold=0, shots=2, n_episodes=12, seed=0)
    feats = _OracleFeatures(items)
    res = evaluate_fss(PrototypeBaseline(), eps, items, items, feats, progress=False, keep_predictions=3)
    assert res.miou == pytest.approx(1.0) and res.fb_iou == pytest.approx(1.0)
    assert len(res.episode_iou) == 12 and sorted(res.predictions) == [0, 1, 2]
    assert set(res.per_class) <= {"c1", "c2"}


def test_all_foreground_scores_match_a_hand_count(toy):
    # toy images are 32x32; predicting all foreground gives IoU = |class pixels| / 1024 per episode
    items = TransformedItems(toy, PairTransform((32, 32)))
    eps = sample_fss_episodes(toy, fold=0, shots=1, n_episodes=6, seed=1)
    res = evaluate_fss(_Constant(), eps, items, items, _OracleFeatures(items), progress=False)
    expected = [float((items.label(e.query[0]) == e.class_id).sum()) / 1024 for e in eps]
    assert res.episode_iou == pytest.approx(expected)
    summary = res.summary()
    assert summary["method"] == "all-foreground" and summary["shots"] == 1 and summary["episodes"] == 6


@pytest.mark.slow
def test_experiment_on_generated_data_end_to_end():
    from fss_lab.experiments import FSSConfig, FSSExperiment
    from fss_lab.methods.prototype import PrototypeBaseline

    exp = FSSExperiment(FSSConfig(n_episodes=12, image_size=(96, 96), levels=("s16",), seed=3))
    res = exp.run(PrototypeBaseline(), 1, progress=False)
    # ImageNet features must beat an all-background guess (0) and be far from perfect on this data
    assert 0.05 < res.miou < 0.95
    assert exp.query_cache.misses <= len({i for e in exp.episodes(1) for i in e.query + e.support})
    again = exp.run(PrototypeBaseline(), 1, progress=False)
    assert again.episode_iou == res.episode_iou, "same episodes and cached features give the same scores"
    ep = exp.episode(0, 1)
    assert ep.support_images.shape[-2:] == (96, 96) and ep.norm_mean == (0.5, 0.5, 0.5)
