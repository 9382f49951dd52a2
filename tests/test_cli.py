"""The fss-lab command line, run as ``python -m fss_lab.cli`` on a tiny generated folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def fss_lab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "fss_lab.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def photos(folder: Path, n: int = 3) -> None:
    """n photos ``p<i>.png`` (grey noise, a red square) with masks ``label/p<i>.png`` (0 / 255)."""
    rng = np.random.default_rng(0)
    (folder / "label").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(90, 140, (60, 80, 3), dtype=np.uint8)
        y, x = 5 + 5 * i, 10 + 8 * i
        img[y:y + 30, x:x + 35] = (230, 30, 30)
        mask = np.zeros((60, 80), np.uint8)
        mask[y:y + 30, x:x + 35] = 255
        Image.fromarray(img).save(folder / f"p{i}.png")
        Image.fromarray(mask).save(folder / "label" / f"p{i}.png")


def test_help_lists_commands_and_examples(tmp_path: Path) -> None:
    top = fss_lab("--help", cwd=tmp_path)
    assert top.returncode == 0 and "segment" in top.stdout and "evaluate" in top.stdout and "train-base" in top.stdout
    seg = fss_lab("segment", "--help", cwd=tmp_path)
    assert seg.returncode == 0 and "fss-lab segment --support cat.jpg --mask cat_mask.png" in seg.stdout
    assert fss_lab("train-base", "--help", cwd=tmp_path).returncode == 0
    assert fss_lab(cwd=tmp_path).returncode == 2


def test_segment_writes_masks_and_overlays(tmp_path: Path) -> None:
    photos(tmp_path)
    r = fss_lab("segment", "--support", "p0.png", "--mask", "label/p0.png", "--query", "p1.png", "p2.png",
                "--out", "out", "--image-size", "96", "128", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["p1_mask.png", "p1_overlay.png", "p2_mask.png", "p2_overlay.png"]
    truth = np.asarray(Image.open(tmp_path / "label" / "p2.png")) > 0
    pred = np.asarray(Image.open(tmp_path / "out" / "p2_mask.png")) > 0
    assert pred.shape == truth.shape and (pred & truth).sum() / (pred | truth).sum() > 0.5
    assert "wrote 2 masks and overlays" in r.stdout


def test_bad_input_is_one_line_without_traceback_unless_debug(tmp_path: Path) -> None:
    photos(tmp_path, 1)
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(tmp_path / "empty.png")
    args = ("segment", "--support", "p0.png", "--mask", "empty.png", "--query", "p0.png", "--out", "o")
    r = fss_lab(*args, cwd=tmp_path)
    assert r.returncode == 2 and "no foreground pixel" in r.stderr and "Traceback" not in r.stderr
    assert "Traceback" in fss_lab("--debug", *args, cwd=tmp_path).stderr
    missing = fss_lab("segment", "--support", "nope.jpg", "--mask", "p0.png", "--query", "p0.png", "--out", "o",
                      cwd=tmp_path)
    assert missing.returncode == 2 and "support image not found: nope.jpg" in missing.stderr


def test_evaluate_a_one_class_folder_to_csv_and_json(tmp_path: Path) -> None:
    data = tmp_path / "dogs"
    photos(data, 4)
    (data / "fss_lab.json").write_text(json.dumps({"class_names": ["red square"], "min_area": 16}))
    (tmp_path / "eval.json").write_text(json.dumps({
        "dataset": "folder", "data_root": "dogs", "shots": [1], "n_episodes": 4, "image_size": [64, 64],
        "device": "cpu", "methods": ["prototype"]}))
    r = fss_lab("evaluate", "eval.json", "--out", "res", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "res" / "results.json").read_text())["summary"]
    assert len(summary) == 1 and summary[0]["episodes"] == 4 and summary[0]["mIoU"] > 0.3  # a fraction
    assert (tmp_path / "res" / "summary.csv").is_file() and (tmp_path / "res" / "per_class.csv").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "folder", "shotz": [1]}))
    r = fss_lab("evaluate", str(bad), "--out", "res", cwd=tmp_path)
    assert r.returncode == 2 and "unknown keys ['shotz']" in r.stderr


def test_segment_with_a_trained_base_model_checkpoint(tmp_path: Path) -> None:
    import torch

    from fss_lab.engine.checkpoint import save_checkpoint
    from fss_lab.models.pspnet import PSPNet

    photos(tmp_path, 2)
    args = ("segment", "--support", "p0.png", "--mask", "label/p0.png", "--query", "p1.png", "--out", "out",
            "--image-size", "64", "64", "--device", "cpu", "--method", "diam")
    missing = fss_lab(*args, cwd=tmp_path)
    assert missing.returncode == 2 and "trained base model; pass --model CHECKPOINT" in missing.stderr
    assert "Traceback" not in missing.stderr
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "base.pt", model=PSPNet("efficientnet_lite0", 3, weights=None, bottleneck_dim=8),
                    iteration=0)
    r = fss_lab(*args, "--model", "base.pt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p1_mask.png", "p1_overlay.png"]
    gone = fss_lab(*args, "--model", "nope.pt", cwd=tmp_path)
    assert gone.returncode == 2 and "model checkpoint not found: nope.pt" in gone.stderr
