"""The seeded PFENet-protocol episode sampler and episode lists."""
import json

import numpy as np
import pytest

from fss_lab.data import DatasetError, EpisodeList, sample_fss_episodes
from tests.conftest import ToyDataset


def test_same_seed_same_episodes_and_other_seed_differs(toy):
    a = sample_fss_episodes(toy, fold=0, shots=2, n_episodes=25, seed=3)
    b = sample_fss_episodes(toy, fold=0, shots=2, n_episodes=25, seed=3)
    c = sample_fss_episodes(toy, fold=0, shots=2, n_episodes=25, seed=4)
    assert a.episodes == b.episodes
    assert a.episodes != c.episodes
    assert len(a) == 25


def test_protocol_rules(toy):
    counts = toy.class_pixel_counts()
    eps = sample_fss_episodes(toy, fold=0, shots=3, n_episodes=40, seed=0)
    for e in eps:
        assert e.class_id in toy.novel_classes(0)
        (q,) = e.query
        assert counts[q].get(e.class_id, 0) > 0, "the query must hold the episode class"
        assert q not in e.support, "supports never include the query"
        assert len(set(e.support)) == 3, "supports are distinct"
        assert all(counts[s].get(e.class_id, 0) > 0 for s in e.support)
        assert e.query_ids == (toy.image_id(q),)


def test_min_area_filters_small_objects():
    # class 1 is big in items 0-3 and tiny (1 pixel wide strip of 4 px) in items 4-7
    layout = [[(1, 0, 0, 16, 16)] for _ in range(4)] + [[(1, 0, 0, 1, 4)] for _ in range(4)]
    ds = ToyDataset(layout, folds={0: (1,)})
    eps = sample_fss_episodes(ds, fold=0, shots=1, n_episodes=30, seed=0, min_area=100)
    used = {i for e in eps for i in e.query + e.support}
    assert used <= {0, 1, 2, 3}


def test_cycles_queries_until_count():
    ds = ToyDataset([[(1, 0, 0, 8, 8)] for _ in range(3)], folds={0: (1,)})
    eps = sample_fss_episodes(ds, fold=0, shots=1, n_episodes=10, seed=0)
    assert len(eps) == 10
    assert {e.query[0] for e in eps} == {0, 1, 2}


def test_cross_group_supports_come_from_other_groups():
    layout = [[(1, 0, 0, 8, 8)] for _ in range(8)]
    groups = ["a", "a", "a", "a", "b", "b", "c", "c"]
    ds = ToyDataset(layout, folds={0: (1,)}, groups=groups)
    eps = sample_fss_episodes(ds, fold=0, shots=2, n_episodes=30, seed=1, cross_group=True)
    for e in eps:
        assert all(groups[s] != groups[e.query[0]] for s in e.support)


def test_supports_from_another_split():
    val = ToyDataset([[(1, 0, 0, 8, 8)] for _ in range(3)], folds={0: (1,)}, split="val")
    train = ToyDataset([[(1, 0, 0, 8, 8)] for _ in range(5)], folds={0: (1,)}, split="train")
    eps = sample_fss_episodes(val, fold=0, shots=5, n_episodes=6, seed=0, support_dataset=train)
    assert all(sorted(e.support) == [0, 1, 2, 3, 4] for e in eps)
    assert eps.meta["support_split"] == "train"


def test_shot_count_the_dataset_cannot_satisfy():
    ds = ToyDataset([[(1, 0, 0, 8, 8)] for _ in range(3)], folds={0: (1,)})
    with pytest.raises(DatasetError, match=r"cannot make 5-shot episodes.*Lower SHOTS"):
        sample_fss_episodes(ds, fold=0, shots=5, n_episodes=4)


def test_unsatisfiable_class_is_dropped_with_a_warning():
    layout = [[(1, 0, 0, 8, 8)] for _ in range(6)] + [[(2, 0, 0, 8, 8)]]
    ds = ToyDataset(layout, folds={0: (1, 2)})
    with pytest.warns(UserWarning, match="c2"):
        eps = sample_fss_episodes(ds, fold=0, shots=2, n_episodes=5)
    assert eps.class_ids == [1]
    assert "2" in eps.meta["dropped_classes"]


def test_unknown_fold_lists_valid_ones(toy):
    with pytest.raises(DatasetError, match=r"no fold 7.*valid folds: \[0, 1\]"):
        sample_fss_episodes(toy, fold=7, shots=1, n_episodes=2)


@pytest.mark.parametrize("shots,n", [(0, 5), (1, 0)])
def test_bad_counts(toy, shots, n):
    with pytest.raises(ValueError):
        sample_fss_episodes(toy, fold=0, shots=shots, n_episodes=n)


def test_saved_list_round_trips_and_is_checked(toy, tmp_path):
    eps = sample_fss_episodes(toy, fold=0, shots=2, n_episodes=12, seed=5)
    path = eps.save(tmp_path / "lists" / "fold0_2shot.json")
    loaded = EpisodeList.load(path, toy)
    assert loaded.episodes == eps.episodes
    assert loaded.meta == json.loads(json.dumps(eps.meta))
    other = ToyDataset(toy.layout, name="other")
    with pytest.raises(DatasetError, match="made on other data"):
        EpisodeList.load(path, other)


def test_load_rejects_foreign_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"format": "something/2"}))
    with pytest.raises(DatasetError, match="not an fss_lab episode list"):
        EpisodeList.load(p)
