"""Episodic meta-training (issue 10): base-class episodes only, exact resumption after a SIGKILL, two-process gloo
DDP, resume refused under another recipe; the PFENet-style learner's pieces."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fss_lab.engine.checkpoint import CheckpointError, read_checkpoint, stale_temp_files

REPO = Path(__file__).resolve().parents[1]

SETUP = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[4])
    import fss_lab.engine.checkpoint as ckpt
    from fss_lab.data import create_dataset, PairTransform, TransformedItems, sample_fss_episodes
    from fss_lab.models.backbones import create_backbone
    from fss_lab.models.features import FeatureExtractor, FeatureCache
    from fss_lab.engine.episodic import EpisodicConfig, train_episodic
    from fss_lab.methods.pfenet import PFENetMetaLearner

    def setup():
        torch.manual_seed(0)
        bb = create_backbone("efficientnet_lite0", weights=None)
        tr = create_dataset("synthetic", split="train", image_size=64, n_images=24)
        va = create_dataset("synthetic", split="val", image_size=64, n_images=12)
        pre = bb.preprocessing
        tf = PairTransform((64, 64), "resize", tuple(pre.mean), tuple(pre.std))
        ti, vi = TransformedItems(tr, tf), TransformedItems(va, tf)
        caches = lambda items: {lv: FeatureCache(FeatureExtractor(bb, (lv,), device="cpu"), items.image)
                                for lv in ("s16", "s32")}
        return bb, ti, caches(ti), vi, caches(vi), va
""")

SCRIPT = SETUP + textwrap.dedent("""
    mode, path, out = sys.argv[1:4]
    if mode == "kill":  # die (SIGKILL) in the middle of writing the iteration-4 checkpoint
        real_save = torch.save
        def torn_save(obj, fh):
            if obj["iteration"] == 4:
                fh.write(b"PK\\x03\\x04 half of a checkpoint")
                fh.flush()
                os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, fh)
        ckpt.torch.save = torn_save
    ctx = None
    if mode == "ddp":
        from fss_lab.engine.distributed import init_distributed
        ctx = init_distributed(device="cpu")
    bb, ti, tc, vi, vc, va = setup()
    ve = sample_fss_episodes(va, 0, 1, 4, seed=0, min_area=16)
    learner = PFENetMetaLearner(reduce_dim=8, bins=(1.0, 0.5), backbone=bb)
    cfg = EpisodicConfig(iterations=6, batch_episodes=2, lr=0.05, checkpoint_every=2, eval_every=3, min_area=16,
                         seed=1, device="cpu")
    history = train_episodic(learner, cfg, fold=0, train_items=ti, train_features=tc, val_episodes=ve, val_items=vi,
                             val_features=vc, checkpoint_path=None if mode == "full" else path, progress=False, ctx=ctx)
    rank = 0 if ctx is None else ctx.rank
    torch.save(learner.training_module().state_dict(), out.replace("RANK", str(rank)))
    if rank == 0:
        print(json.dumps({"losses": [s["loss"] for s in history.steps], "evals": [e["iteration"] for e in
                          history.evals], "miou": history.last_miou}))
""")


def _run(tmp_path, mode, path, out, nproc=1):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if mode == "ddp" else [sys.executable]
    return subprocess.run([*head, str(script), mode, str(path), str(out), str(REPO)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)


def _last_json(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_killed_episodic_run_resumes_exactly(tmp_path):
    path = tmp_path / "ck" / "meta.pt"
    full = _run(tmp_path, "full", path, str(tmp_path / "full.pt"))
    assert full.returncode == 0, full.stderr[-3000:]

    killed = _run(tmp_path, "kill", path, str(tmp_path / "never.pt"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert read_checkpoint(path)["iteration"] == 2  # the good checkpoint survived the torn write
    assert len(stale_temp_files(path)) == 1 and not (tmp_path / "never.pt").exists()

    resumed = _run(tmp_path, "resume", path, str(tmp_path / "resumed.pt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert stale_temp_files(path) == [] and read_checkpoint(path)["iteration"] == 6
    a, b = _last_json(full), _last_json(resumed)
    assert a["losses"] == b["losses"] and len(a["losses"]) == 6 and a["evals"] == b["evals"] == [3, 6]
    assert a["miou"] == b["miou"]
    wa, wb = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "resumed.pt")
    assert wa.keys() == wb.keys() and [k for k in wa if not torch.equal(wa[k], wb[k])] == []


def test_torchrun_two_gloo_processes(tmp_path):
    path = tmp_path / "ck" / "ddp.pt"
    proc = _run(tmp_path, "ddp", path, str(tmp_path / "rankRANK.pt"), nproc=2)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    out = _last_json(proc)
    assert len(out["losses"]) == 6 and out["evals"] == [3, 6] and 0 <= out["miou"] <= 1
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []  # gradients all-reduced
    state = read_checkpoint(path)
    assert state["iteration"] == 6 and state["extra"]["world_size"] == 2 and len(state["extra"]["rng_per_rank"]) == 2
    assert all(torch.equal(state["model"][k], a[k]) for k in a) and stale_temp_files(path) == []


# ---- in-process ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy():
    ns: dict = {}
    sys_argv, path = sys.argv, list(sys.path)
    try:
        sys.argv = ["x", "", "", "", str(REPO)]
        exec(SETUP, ns)
        return ns["setup"]()
    finally:
        sys.argv, sys.path[:] = sys_argv, path


def test_base_class_episodes_never_draw_a_novel_class(toy):
    from fss_lab.engine.episodic import base_class_episodes
    _, ti, *_ = toy
    ds = ti.dataset
    with pytest.warns(UserWarning):
        eps = base_class_episodes(ds, 0, 1, 40, seed=3, min_area=16)
    assert set(eps.class_ids) <= set(ds.base_classes(0)) and not set(eps.class_ids) & set(ds.novel_classes(0))
    assert len(eps.class_ids) > 1 and eps.meta["episode_classes"] == "base"
    with pytest.warns(UserWarning):
        again = base_class_episodes(ds, 0, 1, 40, seed=3, min_area=16)
    assert again.episodes == eps.episodes


def test_resume_under_another_recipe_is_refused(toy, tmp_path):
    from fss_lab.engine.episodic import EpisodicConfig, train_episodic
    from fss_lab.methods.pfenet import PFENetMetaLearner
    bb, ti, tc, *_ = toy
    path = tmp_path / "m.pt"
    kw = dict(fold=0, train_items=ti, train_features=tc, checkpoint_path=path, progress=False)
    h = train_episodic(PFENetMetaLearner(reduce_dim=8, bins=(1.0,), backbone=bb),
                       EpisodicConfig(iterations=2, batch_episodes=2, min_area=16, device="cpu"), **kw)
    assert len(h.steps) == 2 and read_checkpoint(path)["config"]["learner"] == "pfenet-meta"
    with pytest.raises(CheckpointError, match="other settings"):
        train_episodic(PFENetMetaLearner(reduce_dim=8, bins=(1.0,), backbone=bb),
                       EpisodicConfig(iterations=2, batch_episodes=2, lr=0.5, min_area=16, device="cpu"), **kw)
    with pytest.raises(ValueError, match="divisible"):
        train_episodic(PFENetMetaLearner(reduce_dim=8, bins=(1.0,), backbone=bb),
                       EpisodicConfig(iterations=2, batch_episodes=3, min_area=16, device="cpu"),
                       ctx=_FakeCtx(), **kw)


class _FakeCtx:
    rank, world_size, is_main, device, is_distributed = 0, 2, True, torch.device("cpu"), False


def test_training_lowers_the_loss(toy):
    """Many steps at a high learning rate on the same few episodes: the last steps' loss is below the first's."""
    from fss_lab.engine.episodic import EpisodicConfig, train_episodic
    from fss_lab.methods.pfenet import PFENetMetaLearner
    bb, ti, tc, *_ = toy
    h = train_episodic(PFENetMetaLearner(reduce_dim=16, bins=(1.0, 0.5), backbone=bb),
                       EpisodicConfig(iterations=40, batch_episodes=4, optimizer="adamw", lr=3e-3, weight_decay=0.0,
                                      schedule="constant", min_area=16, device="cpu"),
                       fold=0, train_items=ti, train_features=tc, progress=False)
    losses = h.steps_frame()["loss"]
    assert losses.iloc[-10:].mean() < 0.8 * losses.iloc[:5].mean()
