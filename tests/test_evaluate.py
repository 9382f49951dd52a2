"""Episodic evaluation and the end-to-end experiment on the generated data."""
import pytest
import torch

from fss_lab.data import PairTransform, TransformedItems, sample_fss_episodes
from fss_lab.engine.evaluate import evaluate_fss
from fss_lab.methods.base import Method
from fss_lab.metrics import foreground_iou


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


class _Constant(Method):
    name = "all-foreground"
    label_spaces = ("fss",)

    def fit(self, task):
        return self

    def predict(self, task):
        q = task.num_queries
        return torch.stack([torch.zeros(q, *task.size), torch.ones(q, *task.size)], 1)


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
    res = exp.evaluate(PrototypeBaseline(), 1, progress=False)
    # ImageNet features must beat an all-background guess (0) and be far from perfect on this data
    assert 0.05 < res.miou < 0.95
    assert exp.query_cache.misses <= len({i for e in exp.episodes(1) for i in e.query + e.support})
    again = exp.evaluate(PrototypeBaseline, 1, progress=False)  # a zero-argument factory works too
    assert again.episode_iou == res.episode_iou, "same episodes and cached features give the same scores"
    ep = exp.episode(0, 1)
    assert ep.support_images.shape[-2:] == (96, 96) and ep.norm_mean == (0.5, 0.5, 0.5)


class _Recorder(_Constant):
    """Remembers every task it is given (to check what the evaluator puts in them)."""

    name = "recorder"

    def __init__(self, reads_labels=False):
        self.tasks = []
        self.reads_query_labels = reads_labels

    def fit(self, task):
        self.tasks.append(task)
        return self


@pytest.mark.parametrize("reads_labels", [False, True])
def test_every_task_gets_query_valid_and_labels_only_on_request(toy, reads_labels):
    # issue 8: query_valid = query label != 255 for every method (official RePRI / DIaM); labels only for oracles
    items = TransformedItems(toy, PairTransform((48, 40), mode="long_side_pad"))  # padding pixels are 255
    assert bool((items.label(0) == 255).any())
    eps = sample_fss_episodes(toy, fold=0, shots=1, n_episodes=4, seed=2)
    method = _Recorder(reads_labels)
    evaluate_fss(method, eps, items, items, _OracleFeatures(items), progress=False, batch_episodes=3)
    assert len(method.tasks) == 4
    for task, e in zip(method.tasks, eps):
        label = items.label(e.query[0])
        assert task.label_space.is_fss and task.shots == 1 and task.size == tuple(label.shape)
        assert torch.equal(task.query_valid[0], label != 255)
        assert (task.query_labels is not None) == reads_labels
        if reads_labels:
            want = (label == e.class_id).long().masked_fill(label == 255, 255)
            assert torch.equal(task.query_labels[0].long(), want)


def test_a_gfss_only_method_is_refused_before_any_work(toy):
    from fss_lab.methods import UnsupportedTaskError, list_methods

    class GFSSOnly(_Constant):
        name = "gfss-only"
        label_spaces = ("gfss",)

    items = TransformedItems(toy, PairTransform((32, 32)))
    eps = sample_fss_episodes(toy, fold=0, shots=1, n_episodes=2, seed=1)
    feats = _OracleFeatures(items)
    with pytest.raises(UnsupportedTaskError, match="gfss-only declares label_spaces=\\('gfss',\\)") as info:
        evaluate_fss(GFSSOnly(), eps, items, items, feats, progress=False)
    assert str(list_methods("fss")) in str(info.value) and feats.calls == 0
