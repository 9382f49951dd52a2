"""Notebook parameter validation (issue 9, finding 6): types, ranges, unknown names, an unused or missing root."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fss_lab.params import NOTEBOOK_SPECS, ParameterError, validate_parameters

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _parameters_cell(name: str) -> tuple[str, str]:
    """(source of the parameters cell, source of the cell after it) of notebooks/<name>.py."""
    cells = re.split(r"^# %%", (NOTEBOOKS / f"{name}.py").read_text(), flags=re.M)
    k = next(i for i, c in enumerate(cells) if c.startswith(' tags=["parameters"]'))
    return cells[k].split("\n", 1)[1], cells[k + 1]


def _defaults(name: str) -> dict:
    ns: dict = {}
    exec(_parameters_cell(name)[0], ns)
    return {k: v for k, v in ns.items() if k != "__builtins__"}


@pytest.mark.parametrize("name", sorted(NOTEBOOK_SPECS))
def test_every_notebook_validates_its_defaults_right_after_its_parameters_cell(name):
    params = validate_parameters(_defaults(name), name)
    assert list(params) == list(NOTEBOOK_SPECS[name]), "the spec and the parameters cell list different names"
    after = _parameters_cell(name)[1]
    assert f'validate_parameters(globals(), "{name}")' in after


def _quickstart(**overrides):
    return {**_defaults("00_quickstart"), **overrides, "In": [], "get_ipython": print, "json": object()}


@pytest.mark.parametrize("overrides, expected", [
    ({"SHOTS": "[0]"}, r"^00_quickstart: SHOTS must be a non-empty list of ints >= 1, got the string '\[0\]'.*-y"),
    ({"SHOTS": [0]}, r"SHOTS values must be >= 1, got \[0\]"),
    ({"SHOTS": []}, r"SHOTS must be a non-empty list"),
    ({"IMAGE_SIZE": 100}, r"IMAGE_SIZE must be \[H, W\], two ints .* got 100 \(int\).*-y 'IMAGE_SIZE: \[192, 192\]'"),
    ({"IMAGE_SIZE": [4, 4]}, r"IMAGE_SIZE sides must be >= 8 pixels"),
    ({"DATA_ROOT": "/nonexistent"}, r"DATA_ROOT = '/nonexistent' is given but DATASET = 'synthetic' .* ignores it"),
    ({"DATASET": "camvid", "DATA_ROOT": "/nonexistent"}, r"DATA_ROOT = '/nonexistent' does not exist"),
    ({"DATASET": "camvid"}, r"DATASET = 'camvid' needs DATA_ROOT"),
    ({"DATASET": "camvd"}, r"DATASET must be one of .* Did you mean 'camvid'\?"),
    ({"SHOT": 5}, r"unknown parameter SHOT = 5: .* ignored\. Did you mean SHOTS\?"),
    ({"QUICK": "False"}, r"QUICK must be True or False, got the string 'False'"),
    ({"SEED": True}, r"SEED must be an int >= 0, got True \(bool\)"),
    ({"SEED": -1}, r"SEED must be >= 0, got -1"),
    ({"N_EPISODES": 0}, r"N_EPISODES must be >= 1, got 0"),
    ({"N_EPISODES": 2.5}, r"N_EPISODES must be an int"),
    ({"TEMPERATURE": "20"}, r"TEMPERATURE must be a number"),
    ({"DEVICE": "gpu"}, r"DEVICE must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ({"LEVELS": "s16"}, r"LEVELS must be a non-empty list of strings"),
    ({"RESULTS_DIR": None}, r"RESULTS_DIR = None is not allowed"),
])
def test_bad_quickstart_parameters_name_the_parameter_and_the_fix(overrides, expected):
    with pytest.raises(ParameterError, match=expected):
        validate_parameters(_quickstart(**overrides), "00_quickstart")


def test_all_problems_are_reported_at_once_and_valid_values_pass(tmp_path):
    with pytest.raises(ParameterError) as err:
        validate_parameters(_quickstart(SHOTS="[1, 5]", IMAGE_SIZE=100, SHOT=5), "00_quickstart")
    lines = str(err.value).splitlines()
    assert "(2 more below)" in lines[0] and len(lines) == 3
    ok = validate_parameters(_quickstart(SHOTS=(1, 5), IMAGE_SIZE=(96, 128), DATASET="folder",
                                         DATA_ROOT=str(tmp_path)), "00_quickstart")
    assert ok["SHOTS"] == [1, 5] and ok["IMAGE_SIZE"] == [96, 128] and ok["DATA_ROOT"] == str(tmp_path)
    assert validate_parameters({**_defaults("03_contrastive_distillation"), "SHOTS": 5},
                               "03_contrastive_distillation")["SHOTS"] == 5
    with pytest.raises(KeyError, match="known"):
        validate_parameters({}, "99_nope")


def test_bcm_backbones_may_be_empty_to_skip_the_backbone_section():
    ns = {"DEVICE": "auto", "SEED": 0, "QUICK": True, "DATASET": "synthetic", "DATA_ROOT": None, "FOLD": 0,
          "SHOTS": [1, 5], "N_RUNS": None, "MAX_QUERIES": None, "ITERATIONS": 100, "NOVEL_POLICY": "background",
          "BACKBONES": [], "BACKBONE_ITERATIONS": None, "RESULTS_DIR": "results/04b_bcm",
          "BASE_MODEL_DIR": "results/base_models"}
    assert validate_parameters(ns, "04b_bcm")["BACKBONES"] == []
    with pytest.raises(ParameterError, match="SHOTS must be a non-empty list"):  # empty_ok is per parameter
        validate_parameters({**ns, "SHOTS": []}, "04b_bcm")
    with pytest.raises(ParameterError, match="BACKBONES must be a list of strings"):
        validate_parameters({**ns, "BACKBONES": [1]}, "04b_bcm")
