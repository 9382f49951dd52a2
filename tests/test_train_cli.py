"""train_cli config checks (issue 9, finding 6): overrides are checked like the file, keys and types are named."""
from __future__ import annotations

import json

import pytest

from fss_lab.data.base import DatasetError
from fss_lab.engine.train_cli import load_config, main

CONFIG = {"dataset": "synthetic", "model": {"weights": None}, "train": {"iterations": 4, "batch_size": 4}}


def _write(tmp_path, cfg=CONFIG):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("overrides, expected", [
    (["foo=1"], r"unknown keys \['foo'\]; valid keys: \["),  # was silently ignored
    (["fold=1", "chekpoint=x.pt"], r"unknown keys \['chekpoint'\] \(chekpoint: did you mean 'checkpoint'\?\)"),
    (["train.iterations=abc"], r"train\.iterations must be int or None, got the string 'abc'"),  # was int() error
    (["train.lr=fast"], r"train\.lr must be float or int, got the string 'fast'"),
    (["train.amp=1"], r"train\.amp must be bool, got 1 \(int\)"),
    (["train.seed=true"], r"train\.seed must be int, got True \(bool\)"),
    (["train.lrr=0.1"], r"unknown train keys \['lrr'\] \(lrr: did you mean 'lr'\?\); valid train keys .*'lr'"),
    (["model.bottleneck_dimm=8"], r"unknown model keys \['bottleneck_dimm'\] \(bottleneck_dimm: did you mean "
                                  r"'bottleneck_dim'\?\)"),
    (["image_size=100"], r"image_size must be \[H, W\], two ints >= 8, got 100"),
    (["fold=one"], r"fold must be int, got the string 'one'"),
    (["fold.x=1"], r"fold is not a section"),
    (["=1"], r"expected key=value"),
])
def test_bad_overrides_name_the_key_and_the_fix(tmp_path, overrides, expected):
    with pytest.raises(DatasetError, match=expected) as err:
        load_config(_write(tmp_path), overrides)
    assert "cfg.json" in str(err.value)


def test_a_misspelt_keyword_in_the_file_lists_the_valid_keys(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown train keys \['lrr'\].*valid train keys \(TrainConfig fields\)"):
        load_config(_write(tmp_path, {**CONFIG, "train": {"iterations": 4, "lrr": 0.1}}))
    with pytest.raises(DatasetError, match="must hold a mapping"):
        load_config(_write(tmp_path, [1, 2]))


def test_good_overrides_still_apply_and_main_reports_bad_ones(tmp_path):
    cfg = load_config(_write(tmp_path), ["train.lr=0.02", "train.iterations=null", "train.epochs=2",
                                         "model.bins=[1,2]", "image_size=[64,64]", "resume=false"])
    assert cfg["train"]["lr"] == 0.02 and cfg["train"]["epochs"] == 2 and cfg["model"]["bins"] == [1, 2]
    assert cfg["image_size"] == [64, 64] and cfg["resume"] is False
    with pytest.raises(DatasetError, match="train.iterations must be int"):
        main([str(_write(tmp_path)), "--set", "train.iterations=abc"])


def test_an_override_does_not_leak_into_the_next_config(tmp_path):
    # --set model.x=... used to write into DEFAULTS["model"] itself (a shallow copy), so every later config
    # in the same process inherited it (found while tabulating the bad inputs of issue 9)
    with pytest.raises(DatasetError, match="unknown model keys"):
        load_config(_write(tmp_path, {"dataset": "synthetic"}), ["model.bottleneck_dimm=8"])
    assert load_config(_write(tmp_path, {"dataset": "synthetic"}))["model"] == {}
    load_config(_write(tmp_path, {"dataset": "synthetic"}), ["train.lr=0.5"])
    assert load_config(_write(tmp_path, {"dataset": "synthetic"}))["train"] == {}
