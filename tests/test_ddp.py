"""Two-process DDP base training with torchrun and the gloo backend on the CPU; the CLI config reader."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fss_lab.data.base import DatasetError
from fss_lab.engine.checkpoint import read_checkpoint, stale_temp_files
from fss_lab.engine.distributed import SINGLE_PROCESS, DistributedContext, init_distributed
from fss_lab.engine.train_cli import build_run, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "dataset": "synthetic", "dataset_kwargs": {"image_size": 64},
    "train_dataset_kwargs": {"n_images": 16}, "val_dataset_kwargs": {"n_images": 6}, "image_size": [64, 64],
    "model": {"backbone": "efficientnet_lite0", "weights": None, "bottleneck_dim": 16},
    "train": {"iterations": 4, "batch_size": 4, "checkpoint_every": 2, "eval_every": 2, "device": "cpu"},
}


def test_torchrun_two_cpu_processes(tmp_path):
    cfg = {**CONFIG, "checkpoint": str(tmp_path / "ck" / "base.pt"), "history_json": str(tmp_path / "h.json")}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fss_lab.engine.train_cli", str(tmp_path / "cfg.json"), "--no-progress",
           "--save-rank-states", str(tmp_path / "states")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["iterations"] == 4 and summary["world_size"] == 2 and 0 <= summary["base_miou"] <= 1
    # both ranks end with identical weights and BatchNorm statistics
    a, b = (torch.load(tmp_path / "states" / f"rank{r}.pt") for r in (0, 1))
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    # rank 0 alone wrote the checkpoints (iterations 2 and 4), and they hold the final weights
    assert out.count("checkpoint saved at iteration") == 2 and "[rank 1]" not in out
    state = read_checkpoint(cfg["checkpoint"])
    assert state["iteration"] == 4 and state["extra"]["world_size"] == 2 and len(state["extra"]["rng_per_rank"]) == 2
    assert all(torch.equal(state["model"][k], a[k]) for k in a)
    assert stale_temp_files(cfg["checkpoint"]) == []
    history = json.loads(Path(cfg["history_json"]).read_text())
    assert [e["iteration"] for e in history["evals"]] == [2, 4] and len(history["steps"]) == 4


def test_config_reader_and_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(CONFIG))
    cfg = load_config(path, ["train.lr=0.02", "fold=1", "model.bins=[1,2]"])
    assert cfg["train"]["lr"] == 0.02 and cfg["fold"] == 1 and cfg["model"]["bins"] == [1, 2]
    assert cfg["novel_policy"] == "ignore" and cfg["train"]["iterations"] == 4
    model, train_set, val_set, config = build_run(cfg)
    assert model.num_classes == 16 and train_set.augment and not val_set.augment
    assert train_set.size == (64, 64) and config.lr == 0.02
    path.write_text(json.dumps({**CONFIG, "optimiser": "adam"}))
    with pytest.raises(DatasetError, match="unknown keys \\['optimiser'\\]"):
        load_config(path)
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="does not parse"):
        load_config(path)
    with pytest.raises(DatasetError, match="key=value"):
        load_config(_write(tmp_path, CONFIG), ["train.lr"])


def _write(tmp_path, cfg):
    p = tmp_path / "ok.json"
    p.write_text(json.dumps(cfg))
    return p


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(device="cpu")
    assert ctx == DistributedContext(device=torch.device("cpu")) and ctx.is_main and not ctx.is_distributed
    assert SINGLE_PROCESS.shard(5) == [0, 1, 2, 3, 4]
    assert DistributedContext(rank=1, world_size=2).shard(5) == [1, 3]
    t = torch.ones(2)
    assert ctx.all_reduce_sum(t) is t and ctx.all_gather_object(3) == [3]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_distributed(device="cpu")
