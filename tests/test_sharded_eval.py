"""Sharded evaluation (fss_lab.engine.sharded): two gloo ranks under torchrun give exactly the one-process scores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fss_lab.engine.distributed import DistributedContext
from fss_lab.engine.evaluate import evaluate_fss, evaluate_gfss
from fss_lab.engine.sharded import shard_chunks
from fss_lab.methods.prototype import PrototypeBaseline
from tests.sharded_eval_setup import BATCH_EPISODES, BATCH_QUERIES, NoisyOracle, build, run_all

REPO = Path(__file__).resolve().parents[1]


def test_shard_chunks_cover_every_item_once():
    ranks = [shard_chunks(10, 3, DistributedContext(rank=r, world_size=3)) for r in range(3)]
    assert [[list(c) for c in r] for r in ranks] == [[[0, 1, 2], [9]], [[3, 4, 5]], [[6, 7, 8]]]
    assert sorted(i for r in ranks for c in r for i in c) == list(range(10))
    assert shard_chunks(2, 4, DistributedContext(rank=1, world_size=2)) == []
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        shard_chunks(3, 0)


def test_one_process_sharded_equals_the_evaluators():
    (episodes, qi, si, fc), (run, gc, items) = build()
    f = evaluate_fss(PrototypeBaseline(), episodes, qi, si, fc, batch_episodes=BATCH_EPISODES, progress=False)
    g = evaluate_gfss(NoisyOracle(), run, gc, items, batch_size=BATCH_QUERIES)
    out = run_all()
    assert 0.05 < f.miou < 0.95 and 0.05 < g.scores["novel"] < 0.95, "the toy must not be trivially 0 or 1"
    assert out["fss"]["mIoU"] == f.miou and out["fss"]["FB-IoU"] == f.fb_iou
    assert out["fss"]["episode_iou"] == f.episode_iou and out["fss"]["per_class"] == f.per_class
    assert {k: out["gfss"][k] for k in g.scores} == g.scores and out["gfss"]["per_class"] == g.per_class


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_equal_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.sharded_eval_setup", str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    sharded = json.loads((tmp_path / "out.json").read_text())
    single = run_all()
    assert sharded["world_size"] == 2
    assert sharded["fss"] == json.loads(json.dumps(single["fss"]))
    assert sharded["gfss"] == json.loads(json.dumps(single["gfss"]))
