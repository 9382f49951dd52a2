"""Base-model checkpoint names: the readable prefix plus a hash of everything that defines the model."""
from __future__ import annotations

import json
from pathlib import Path

from fss_lab.experiments.base_model import BaseModelConfig


def test_two_copies_of_a_dataset_get_two_checkpoints(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    pa = BaseModelConfig(dataset="camvid", data_root=str(a)).checkpoint_path()
    pb = BaseModelConfig(dataset="camvid", data_root=str(b)).checkpoint_path()
    assert pa != pb
    assert pa.name.startswith("camvid_fold0_efficientnet_lite0_ignore_quick_240x320_s0_")


def test_the_same_model_keeps_its_name_and_the_device_does_not_count(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    relative = BaseModelConfig(dataset="camvid", data_root="data", device="cpu").checkpoint_path()
    absolute = BaseModelConfig(dataset="camvid", data_root=str(tmp_path / "data"), device="cuda").checkpoint_path()
    assert relative == absolute  # the resolved data root, not its spelling
    assert BaseModelConfig().checkpoint_path() == BaseModelConfig(data_root="ignored").checkpoint_path()


def test_every_defining_field_changes_the_hash(tmp_path: Path) -> None:
    base = BaseModelConfig()
    others = [BaseModelConfig(fold=1), BaseModelConfig(seed=1), BaseModelConfig(novel_policy="background"),
              BaseModelConfig(quick=False), BaseModelConfig(image_size=(96, 96)),
              BaseModelConfig(overrides={"iterations": 50}), BaseModelConfig(contrastive_weight=0.1)]
    hashes = {base.model_hash(), *(o.model_hash() for o in others)}
    assert len(hashes) == 1 + len(others)


def test_a_folder_config_edit_changes_the_checkpoint(tmp_path: Path) -> None:
    cfg_file = tmp_path / "fss_lab.json"
    cfg_file.write_text(json.dumps({"class_names": ["cat", "dog"], "folds": {"0": ["dog"]}}))
    first = BaseModelConfig(dataset="folder", data_root=str(tmp_path)).checkpoint_path()
    cfg_file.write_text(json.dumps({"class_names": ["cat", "dog"], "folds": {"0": ["cat"]}}))
    assert BaseModelConfig(dataset="folder", data_root=str(tmp_path)).checkpoint_path() != first
