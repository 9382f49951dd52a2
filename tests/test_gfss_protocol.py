"""The GFSS protocol (DIaM, GFS-Seg variant): support rules, queries, seeds, JSON, labels."""
import json
import warnings

import pytest
import torch

from fss_lab.data import DatasetError, PairTransform, TransformedItems
from fss_lab.data.gfss import GFSSRuns, gfss_query_labels, gfss_runs, gfss_support_labels, scaled_min_area
from tests.conftest import ToyDataset

# fold 0: novel 1, 2; base 3, 4 (ToyDataset default folds). 32x32 images -> default threshold
# 16384 * 1024 / 417**2 = 96 px.
BIG, TINY = (2, 2, 14, 14), (20, 20, 22, 22)  # 144 px and 4 px
LAYOUT = (
    [[(1, *BIG), (3, 16, 16, 30, 30)] for _ in range(4)]  # 0-3: novel 1 candidates (with a base class)
    + [[(2, *BIG), (4, 16, 16, 30, 30)] for _ in range(4)]  # 4-7: novel 2 candidates
    + [[(1, *BIG), (2, 16, 16, 30, 30)] for _ in range(2)]  # 8-9: two novel classes -> never supports
    + [[(1, *TINY)]]  # 10: class 1 too small
    + [[]]  # 11: background only -> not a DIaM query
    + [[(3, *BIG)] for _ in range(2)]  # 12-13: base 3 alone -> base-support candidates
    + [[(4, *BIG), (1, *TINY)]]  # 14: base 4 with a novel pixel -> not a base-support candidate
    + [[(4, *BIG)]]  # 15: base 4 alone
)


@pytest.fixture
def ds():
    return ToyDataset(LAYOUT)


def items(dataset):
    return TransformedItems(dataset, PairTransform(size=(32, 32)))


def test_scaled_min_area():
    assert scaled_min_area(417, 417) == 16 * 32 * 32
    assert scaled_min_area(600, 500) == 16 * 32 * 32  # never scaled up
    assert scaled_min_area(192, 192) == round(16384 * 192 * 192 / 417**2) == 3473
    assert scaled_min_area(32, 32) == 96
    assert scaled_min_area(32, 32, min_area=2048, reference_size=(64, 64)) == 512


def test_diam_rules(ds):
    runs = gfss_runs(ds, fold=0, shots=2, n_runs=4, seed=0)
    assert len(runs) == 4 and runs.meta["candidates"] == {"1": 4, "2": 4}
    for run in runs:
        assert run.support_classes == (1, 1, 2, 2)
        assert set(run.support[:2]) <= {0, 1, 2, 3} and set(run.support[2:]) <= {4, 5, 6, 7}
        assert len(set(run.support)) == 4
        assert not set(run.support) & set(run.query), "supports are removed from the queries"
        assert set(run.query) == set(range(16)) - {11} - set(run.support)
        assert run.query_ids == tuple(ds.image_id(i) for i in run.query)
        assert run.class_map.novel_ids == (3, 4) and run.repeated == ()


def test_runs_are_seeded_and_independent_of_n_runs(ds):
    a, b = gfss_runs(ds, 0, 2, n_runs=3, seed=5), gfss_runs(ds, 0, 2, n_runs=5, seed=5)
    assert a.runs == b.runs[:3]
    assert len({r.support for r in b}) > 1, "each run draws a new support set"
    c = gfss_runs(ds, 0, 2, n_runs=3, seed=6)
    assert [r.support for r in a] != [r.support for r in c]


def test_json_round_trip_and_id_check(ds, tmp_path):
    runs = gfss_runs(ds, 0, 1, n_runs=2, base_shots=1)
    path = runs.save(tmp_path / "runs.json")
    back = GFSSRuns.load(path, ds)
    assert back.runs == runs.runs and back.meta == json.loads(json.dumps(runs.meta))
    other = ToyDataset(LAYOUT, name="other")
    with pytest.raises(DatasetError, match="other data"):
        GFSSRuns.load(path, other)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "nope"}))
    with pytest.raises(DatasetError, match="not an fss_lab GFSS"):
        GFSSRuns.load(tmp_path / "bad.json")


def test_repeats_with_a_warning_when_too_few_candidates(ds):
    with pytest.warns(UserWarning, match="candidates repeated"):
        runs = gfss_runs(ds, 0, shots=6, n_runs=1)
    run = runs[0]
    assert run.support_classes == (1,) * 6 + (2,) * 6
    assert set(run.support[:6]) == {0, 1, 2, 3}, "every candidate used, then repeats"
    assert run.repeated == (1, 2) and runs.meta["repeated"] == [1, 2]


def test_area_threshold_and_only_one_novel(ds):
    # an absolute min_area of 150 px excludes every candidate (144 px objects): a clear error names the rule
    with pytest.raises(DatasetError, match=r"c1 \(1\): 8 images hold it, 0 above the area threshold"):
        gfss_runs(ds, 0, 1, min_area=150)
    # min_area 1 lets item 10 (4 px) in; only_one_novel=False lets items 8-9 in
    runs = gfss_runs(ds, 0, 1, n_runs=1, min_area=1, only_one_novel=False)
    assert runs.meta["candidates"] == {"1": 8, "2": 6}
    assert gfss_runs(ds, 0, 1, n_runs=1, min_area="dataset").meta["candidates"] == {"1": 6, "2": 4}
    only_pairs = ToyDataset([[(1, *BIG), (2, 16, 16, 30, 30)]] * 3)
    with pytest.raises(DatasetError, match="only_one_novel=False"):
        gfss_runs(only_pairs, 0, 1)


def test_base_shots_draw_base_images_without_novel_pixels(ds):
    runs = gfss_runs(ds, 0, 2, n_runs=3, base_shots=1)
    for run in runs:
        assert run.support_classes == (1, 1, 2, 2, 3, 4)
        assert run.support[4] in {12, 13}, "base 3 alone (items 0-3 also hold novel 1)"
        assert run.support[5] == 15, "base 4 alone (4-7 hold novel 2, 14 a novel pixel)"
    full = gfss_support_labels(items(ds), runs[0], base_pixels="keep")
    assert set(full[5].unique().tolist()) == {0, 2}  # base 4 -> GFSS id 2, full labels


def test_support_and_query_labels(ds):
    run = gfss_runs(ds, 0, 1, n_runs=1, seed=0)[0]
    it = items(ds)
    diam = gfss_support_labels(it, run)  # base -> 0, novel -> B+1.. = 3, 4
    full = gfss_support_labels(it, run, base_pixels="keep")
    assert diam.shape == (2, 32, 32) and diam.dtype == torch.int64
    assert set(diam[0].unique().tolist()) == {0, 3} and set(diam[1].unique().tolist()) == {0, 4}
    assert set(full[0].unique().tolist()) == {0, 1, 3}  # novel 1 -> 3, base 3 -> 1
    assert set(full[1].unique().tolist()) == {0, 2, 4}  # novel 2 -> 4, base 4 -> 2
    q = gfss_query_labels(it, [8, 14], run.class_map, dtype=torch.uint8)
    assert q.dtype == torch.uint8 and set(q[0].unique().tolist()) == {0, 3, 4}
    assert set(q[1].unique().tolist()) == {0, 2, 3}
    with pytest.raises(ValueError, match="base_pixels"):
        gfss_support_labels(it, run, base_pixels="drop")
    # a 2x2 object between the sampling points of a 4x nearest-neighbour shrink disappears
    small = ToyDataset([[(1, 1, 1, 3, 3), (2, 20, 20, 30, 30)]] + [[(2, 0, 0, 12, 12)]] * 2)
    small_run = gfss_runs(small, 0, 1, n_runs=1, min_area=1, only_one_novel=False)[0]
    assert small_run.support[0] == 0
    with pytest.raises(DatasetError, match="after resizing"):
        gfss_support_labels(TransformedItems(small, PairTransform(size=(8, 8))), small_run)


def test_gfs_seg_variant_and_cross_group():
    val = ToyDataset(LAYOUT, split="val", groups=["v"] * len(LAYOUT))
    train = ToyDataset(LAYOUT[:8] + [[(1, *BIG)]], split="train", groups=["v"] * 4 + ["t"] * 4 + ["u"])
    with pytest.raises(DatasetError, match="training split"):
        gfss_runs(val, 0, 1, protocol="gfs-seg")
    run = gfss_runs(val, 0, 2, n_runs=1, protocol="gfs-seg", support_dataset=train)[0]
    assert run.query == tuple(range(len(LAYOUT))), "GFS-Seg queries every val image (11 has only background)"
    assert run.protocol == "gfs-seg"
    # cross_group with two datasets: train items of group "v" (seen among the queries) are never supports
    run = gfss_runs(val, 0, 1, n_runs=3, support_dataset=train, cross_group=True)
    assert all(train.group(i) != "v" for r in run for i in r.support)
    # cross_group within one dataset: queries sharing a video with a support are dropped
    same = ToyDataset(LAYOUT, groups=["a", "b", "c", "d"] * 4)
    r = gfss_runs(same, 0, 1, n_runs=1, cross_group=True)[0]
    groups = {same.group(i) for i in r.support}
    assert r.query and all(same.group(q) not in groups for q in r.query)


def test_max_queries_and_bad_arguments(ds):
    run = gfss_runs(ds, 0, 1, n_runs=1, max_queries=5)[0]
    assert len(run.query) == 5 and list(run.query) == sorted(run.query)
    for kw in (dict(shots=0), dict(shots=1, n_runs=0), dict(shots=1, base_shots=-1), dict(shots=1, max_queries=0)):
        with pytest.raises(ValueError):
            gfss_runs(ds, 0, **kw)
    with pytest.raises(ValueError, match="protocol"):
        gfss_runs(ds, 0, 1, protocol="bam")
    with pytest.raises(ValueError, match="min_area"):
        gfss_runs(ds, 0, 1, min_area="big")
    with pytest.raises(DatasetError, match="fold"):
        gfss_runs(ds, 7, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough candidates: no warning
        gfss_runs(ds, 0, 4, n_runs=2)


def test_support_dataset_must_share_the_classes(ds):
    other = ToyDataset(LAYOUT, num_classes=5, split="train")
    with pytest.raises(DatasetError, match="other classes"):
        gfss_runs(ds, 0, 1, support_dataset=other)


def test_base_supports_reuse_images_when_candidates_run_out(ds):
    with pytest.warns(UserWarning, match="candidates repeated"):
        run = gfss_runs(ds, 0, 1, n_runs=1, base_shots=3)[0]
    assert run.support_classes == (1, 2) + (3,) * 3 + (4,) * 3
    assert set(run.support[2:5]) == {12, 13} and run.support[5:] == (15, 15, 15)
    assert 3 in run.repeated and 4 in run.repeated


def test_novel_only_drops_the_base_shots(ds):
    # issue 8: GFSSExperiment.novel_only(run) is now run.novel_only() (what DIaM and the prototypes see)
    run = gfss_runs(ds, 0, 2, n_runs=1, base_shots=1)[0]
    novel = run.novel_only()
    assert run.support_classes == (1, 1, 2, 2, 3, 4) and run.base_shots == 1
    assert novel.support == run.support[:4] and novel.support_classes == (1, 1, 2, 2) and novel.base_shots == 0
    assert novel.support_ids == run.support_ids[:4] and novel.query == run.query and novel.shots == run.shots
    assert novel.novel_only() == novel


@pytest.mark.filterwarnings("ignore:fold 0. fewer support images")
def test_query_subset_does_not_depend_on_the_shots(ds):
    # supports from another split: the 1- and 5-shot runs of a seed score the same max_queries queries, so a
    # comparison across shots is not a comparison across query samples
    train = ToyDataset(LAYOUT, split="train")
    one = gfss_runs(ds, 0, 1, n_runs=2, support_dataset=train, max_queries=4)
    five = gfss_runs(ds, 0, 5, n_runs=2, support_dataset=train, max_queries=4)
    assert [r.query for r in one] == [r.query for r in five]
    assert all(len(r.query) == 4 for r in [*one, *five])
    # same split: the supports are left out, the rest of the subset stays in the shared order
    same1, same5 = gfss_runs(ds, 0, 1, n_runs=1, max_queries=3)[0], gfss_runs(ds, 0, 2, n_runs=1, max_queries=3)[0]
    assert not set(same1.support) & set(same1.query) and not set(same5.support) & set(same5.query)
