"""(B+2)-way episode scoring (seed 002)."""
import torch

from fss_lab.data import PairTransform, TransformedItems, sample_fss_episodes
from fss_lab.data.class_maps import GFSSClassMap
from fss_lab.engine.evaluate import episode_gfss_label, evaluate_episode_gfss
from fss_lab.methods.base import Method
from tests.conftest import ToyDataset


def test_episode_label_by_hand():
    ds = ToyDataset([[]], num_classes=4, folds={0: (3, 4)})
    cmap = GFSSClassMap.from_fold(ds, 0)  # base 1, 2 -> 1, 2; episode class 4 -> 3; other novel 3 -> 0
    label = torch.tensor([[0, 1, 2, 3, 4, 255]])
    assert episode_gfss_label(label, cmap, 4).tolist() == [[0, 1, 2, 0, 3, 255]]


class _Oracle(Method):
    """Predicts the query's own episode label (a perfect (B+2)-way method) from label-valued 'features'."""

    name = "episode-oracle"
    label_spaces = ("gfss",)

    def __init__(self, items, cmap):
        self.items, self.cmap = items, cmap

    def fit(self, task):
        self.class_id = None
        return self

    def predict(self, task):
        labels = task.query()[:, 0].long()
        nb = task.label_space.num_base
        return torch.nn.functional.one_hot(labels.clamp(max=nb + 1), nb + 2).permute(0, 3, 1, 2).float()


def test_perfect_method_scores_one(toy):
    cmap = GFSSClassMap.from_fold(toy, 0)
    items = TransformedItems(toy, PairTransform((32, 32)))
    eps = sample_fss_episodes(toy, fold=0, shots=1, n_episodes=8, seed=0)
    episode_of = {e.query[0]: e.class_id for e in eps}

    class Features:
        def get(self, indices):
            return torch.stack([episode_gfss_label(items.label(i), cmap, episode_of.get(i, 0)).float()[None]
                                for i in indices])

    res = evaluate_episode_gfss(_Oracle(items, cmap), eps, items, Features(), cmap)
    scores = res.scores
    assert set(scores) == {"base", "novel", "mean", "harmonic", "FB-IoU"} and res.kind == "episode-gfss"
    assert scores["novel"] == 1.0 and scores["base"] == 1.0 and scores["harmonic"] == 1.0
    assert scores["mean"] == 1.0 and scores["FB-IoU"] == 1.0 and res.count == 8


def test_supports_come_from_the_support_split(toy):
    """Cross-split episodes (e.g. CamVid: supports from train): fit sees the support split's features and masks."""
    cmap = GFSSClassMap.from_fold(toy, 0)
    items = TransformedItems(toy, PairTransform((32, 32)))
    eps = sample_fss_episodes(toy, fold=0, shots=1, n_episodes=4, seed=0)
    seen = []

    class Recorder(_Oracle):
        def fit(self, task):
            seen.append((task.support().unique().tolist(), tuple(task.support_labels.shape), task.label_space,
                         sorted(task.support_labels.unique().tolist()), task.query().unique().tolist()))
            return self

    class Const:
        def __init__(self, value):
            self.value = value

        def get(self, indices):
            return torch.full((len(indices), 1, 32, 32), self.value)

    evaluate_episode_gfss(Recorder(items, cmap), eps, items, Const(0.0), cmap, support_items=items,
                          support_features=Const(7.0))
    assert seen and all(values == [7.0] and shape == (1, 32, 32) for values, shape, *_ in seen)
    nb = cmap.num_base
    for *_, space, support_labels, query_values in seen:  # (B, 1) label space: the episode class is B + 1
        assert (space.num_base, space.num_novel) == (nb, 1) and set(support_labels) <= {0, nb + 1, 255}
        assert nb + 1 in support_labels and query_values == [0.0]
