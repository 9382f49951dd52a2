"""Checkpoints: atomic writes, clear errors, and exact resumption after a SIGKILL (in a subprocess)."""
from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fss_lab.engine.checkpoint as ckpt
from fss_lab.engine.checkpoint import (CheckpointError, atomic_save, load_checkpoint, load_pspnet, read_checkpoint,
                                       save_checkpoint, stale_temp_files)
from fss_lab.models.pspnet import PSPNet

REPO = Path(__file__).resolve().parents[1]


def _model(num_classes=3, frozen=False):
    torch.manual_seed(0)
    return PSPNet("efficientnet_lite0", num_classes, weights=None, bottleneck_dim=8, freeze_backbone=frozen)


def test_atomic_save_round_trip_leaves_no_temp_file(tmp_path):
    path = atomic_save({"a": torch.arange(3)}, tmp_path / "sub" / "x.pt")
    assert torch.equal(torch.load(path)["a"], torch.arange(3))
    assert stale_temp_files(path) == [] and sorted(p.name for p in path.parent.iterdir()) == ["x.pt"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_never_replaces_a_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    atomic_save({"good": 1}, path)
    real_save = torch.save

    def crash_midway(obj, fh):
        fh.write(b"PK\x03\x04 half of a zip")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"good": 2}, path)
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert torch.load(path) == {"good": 1} and stale_temp_files(path) == []


def test_corrupt_foreign_and_missing_files_raise_naming_the_file(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", model=_model(), iteration=3)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="torn.pt.*corrupt or truncated"):
        read_checkpoint(torn)
    atomic_save([1, 2, 3], tmp_path / "list.pt", checksum=True)
    with pytest.raises(CheckpointError, match="list.pt is not an fss_lab training checkpoint"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"format": 1, "model": {}}, tmp_path / "plain.pt")  # an older fss_lab's, or anyone's, torch.save
    with pytest.raises(CheckpointError, match="plain.pt has no fss_lab checksum header.*Delete the file"):
        read_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_checkpoint(tmp_path / "nope.pt")
    assert read_checkpoint(good)["iteration"] == 3


def test_incompatible_model_or_optimizer_is_a_clear_error(tmp_path):
    model = _model(3)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32))[0].sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, iteration=1)
    with pytest.raises(CheckpointError, match=r"c\.pt does not fit this PSPNet.*classifier"):
        load_checkpoint(path, _model(4))
    other = _model(3)
    with pytest.raises(CheckpointError, match=r"c\.pt: optimizer"):
        load_checkpoint(path, other, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    # a frozen-backbone model has no auxiliary head: aux.* keys are tolerated
    frozen = _model(3, frozen=True)
    load_checkpoint(path, frozen)
    assert torch.equal(frozen.classifier.weight, model.classifier.weight)
    rebuilt = load_pspnet(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


def test_rng_states_are_restored(tmp_path):
    path = save_checkpoint(tmp_path / "r.pt", model=_model())
    expected = (random.random(), torch.rand(3))
    random.random(), torch.rand(5)
    load_checkpoint(path, restore_rng=True)
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])


SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[4])
    import fss_lab.engine.checkpoint as ckpt
    from fss_lab.data.base_training import BaseTrainingSet
    from fss_lab.data.class_maps import GFSSClassMap
    from fss_lab.data.transforms import PairTransform
    from fss_lab.engine.train import TrainConfig, train_base
    from fss_lab.models.pspnet import PSPNet
    from tests.conftest import ToyDataset

    mode, path, out = sys.argv[1:4]
    if mode == "kill":  # die (SIGKILL) in the middle of writing the iteration-6 checkpoint
        real_save = torch.save
        def torn_save(obj, fh):
            if obj["iteration"] == 6:
                fh.write(b"PK\\x03\\x04 half of a checkpoint")
                fh.flush()
                os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, fh)
        ckpt.torch.save = torn_save
    layout = [[(3 + i % 2, 4, 4, 20, 20)] + ([(1, 22, 22, 30, 30)] if i % 2 else []) for i in range(12)]
    ds = ToyDataset(layout)
    cm = GFSSClassMap.from_fold(ds, 0)
    train = BaseTrainingSet(ds, cm, transform=PairTransform((32, 32), mean=(0.5,) * 3, std=(0.5,) * 3), seed=0)
    torch.manual_seed(0)
    model = PSPNet("efficientnet_lite0", 3, weights=None, bottleneck_dim=8)
    cfg = TrainConfig(iterations=8, batch_size=4, lr=0.05, checkpoint_every=2, seed=1)
    history = train_base(model, train, None, cfg, checkpoint_path=None if mode == "full" else path, progress=False)
    torch.save(model.state_dict(), out)
    print(json.dumps([s["loss"] for s in history.steps]))
""")


def _run(tmp_path, mode, path, out):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, str(script), mode, str(path), str(out), str(REPO)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_killed_run_resumes_exactly(tmp_path):
    path = tmp_path / "ck" / "base.pt"
    full = _run(tmp_path, "full", path, tmp_path / "full.pt")
    assert full.returncode == 0, full.stderr

    killed = _run(tmp_path, "kill", path, tmp_path / "never.pt")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert read_checkpoint(path)["iteration"] == 4  # the good checkpoint survived the torn write
    assert len(stale_temp_files(path)) == 1 and not (tmp_path / "never.pt").exists()

    resumed = _run(tmp_path, "resume", path, tmp_path / "resumed.pt")
    assert resumed.returncode == 0, resumed.stderr
    assert stale_temp_files(path) == [] and read_checkpoint(path)["iteration"] == 8
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == json.loads(full.stdout.strip().splitlines()[-1])
    a, b = torch.load(tmp_path / "full.pt"), torch.load(tmp_path / "resumed.pt")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# ---- issue 9, findings 1 (no code runs on load; checksum) and 2 (concurrent runs) ------------------------------

class _Evil:
    """A pickle that runs a shell command when unpickled (what a crafted checkpoint would hold)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _tiny_training(iterations=2):
    from fss_lab.data.base_training import BaseTrainingSet
    from fss_lab.data.class_maps import GFSSClassMap
    from fss_lab.data.transforms import PairTransform
    from fss_lab.engine.train import TrainConfig
    from tests.conftest import ToyDataset

    layout = [[(3 + i % 2, 4, 4, 20, 20)] + ([(1, 22, 22, 30, 30)] if i % 2 else []) for i in range(8)]
    ds = ToyDataset(layout)
    train = BaseTrainingSet(ds, GFSSClassMap.from_fold(ds, 0), augment=False,
                            transform=PairTransform((32, 32), mean=(0.5,) * 3, std=(0.5,) * 3))
    return _model(3), train, TrainConfig(iterations=iterations, batch_size=4, lr=0.05, seed=1, device="cpu")


def _load_with(route, path):
    from fss_lab.engine.train import train_base

    if route == "read_checkpoint":
        read_checkpoint(path)
    elif route == "load_checkpoint":
        load_checkpoint(path, _model(3), restore_rng=True)
    elif route == "load_pspnet":
        load_pspnet(path)
    else:  # resuming a cached base model
        model, train, cfg = _tiny_training()
        train_base(model, train, None, cfg, checkpoint_path=path, progress=False)


@pytest.mark.parametrize("route", ["read_checkpoint", "load_checkpoint", "load_pspnet", "train_base"])
@pytest.mark.parametrize("kind", ["plain_pickle", "checkpoint_with_evil_extra"])
def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, route, kind):
    marker, path = tmp_path / "PWNED", tmp_path / "base_models" / "base.pt"
    if kind == "plain_pickle":  # e.g. someone else's file dropped into the shared base-model cache
        path.parent.mkdir()
        torch.save({"format": 1, "model": _model(3).state_dict(), "iteration": 0, "evil": _Evil(marker)}, path)
        expected = "no fss_lab checksum header"
    else:  # a genuine checksummed checkpoint carrying a malicious object in `extra`
        save_checkpoint(path, model=_model(3), iteration=0, extra={"evil": _Evil(marker)})
        expected = "refuses to unpickle"
    with pytest.raises(CheckpointError, match=expected):
        _load_with(route, path)
    assert not marker.exists(), "unpickling the checkpoint ran the command hidden in it"


def test_every_checkpoint_loads_weights_only_and_restores_numpy_rng(tmp_path):
    import io
    import numpy as np

    path = save_checkpoint(tmp_path / "r.pt", model=_model(), iteration=2, extra={"note": [1, 2.0, "x"]})
    payload = path.read_bytes()[ckpt.HEADER_SIZE:]
    state = torch.load(io.BytesIO(payload), weights_only=True)  # raises if anything but plain data was pickled
    assert state["iteration"] == 2 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    expected = np.random.rand(4)
    np.random.rand(7)
    load_checkpoint(path, restore_rng=True)
    assert np.array_equal(np.random.rand(4), expected)


def test_a_flipped_byte_is_reported_not_loaded(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", model=_model(), iteration=1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"c\.pt is corrupt.*fails its checksum"):
        read_checkpoint(path)


def test_a_live_runs_temp_file_is_kept_and_a_dead_writers_is_removed(tmp_path):
    from fss_lab.engine.train import train_base

    path = tmp_path / "base.pt"
    live = ckpt._temp_path(path)  # tagged with this (live) process: another run's in-progress checkpoint
    live.write_bytes(b"PK half written")
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    dead = path.parent / f"{live.name.rsplit('.', 2)[0]}.{dead_pid}.beef"
    dead.write_bytes(b"PK torn")
    assert ckpt.temp_file_owner(dead) == (ckpt._host(), int(dead_pid))
    assert stale_temp_files(path) == [dead]
    model, train, cfg = _tiny_training()
    train_base(model, train, None, cfg, checkpoint_path=path, progress=False)
    assert live.exists(), "a second run deleted a live run's in-progress checkpoint"
    assert not dead.exists() and read_checkpoint(path)["iteration"] == 2


def test_a_second_run_waits_for_the_lock_then_reuses_the_first_runs_checkpoint(tmp_path):
    from fss_lab.engine.train import train_base

    path = tmp_path / "base.pt"
    holder = subprocess.Popen(  # another process (e.g. a second notebook) training the same checkpoint
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[2]); from fss_lab.engine.checkpoint import "
         "checkpoint_lock; lock = checkpoint_lock(sys.argv[1]); print('locked', flush=True); sys.stdin.read()",
         str(path), str(REPO)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        model, train, cfg = _tiny_training()
        with pytest.raises(CheckpointError, match=r"base\.pt is being trained by another run.*base\.pt\.lock"):
            train_base(model, train, None, cfg, checkpoint_path=path, progress=False, lock_timeout=0)
    finally:
        holder.communicate("")  # the holder exits; the OS releases its lock
    first = train_base(*_tiny_training()[:2], None, cfg, checkpoint_path=path, progress=False)
    model2 = _tiny_training()[0]
    second = train_base(model2, train, None, cfg, checkpoint_path=path, progress=False)  # waits, then reuses
    assert second.steps == first.steps and len(second.steps) == 2
    assert torch.equal(model2.classifier.weight, load_pspnet(path).classifier.weight)
