"""Runs sharing a results folder do not mix their files; results.json records how the run was made (issue 9,
finding 5)."""
from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

import fss_lab
from fss_lab.results import RUNS_FOLDER, start_run

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _fake_quickstart(results_dir: Path, params: dict) -> Path:
    """What the quickstart does with its outputs: episode lists per shot count, a summary, results.json."""
    run = start_run(results_dir, params, notebook="00_quickstart")
    for k in params["SHOTS"]:
        (run.dir / f"episodes_fold0_{k}shot.json").write_text("[]")
    (run.dir / "summary.csv").write_text("shots,mIoU\n" + "".join(f"{k},0.5\n" for k in params["SHOTS"]))
    run.write_results({"miou": {str(k): 0.5 for k in params["SHOTS"]}})
    return run.dir


def test_two_runs_in_one_results_dir_keep_their_files_apart_and_record_everything(tmp_path):
    first = _fake_quickstart(tmp_path, {"SEED": 0, "SHOTS": [1, 5]})
    second = _fake_quickstart(tmp_path, {"SEED": 1, "SHOTS": [5]})
    assert first != second and first.parent == second.parent == tmp_path / RUNS_FOLDER
    assert sorted(p.name for p in second.iterdir()) == ["episodes_fold0_5shot.json", "results.json", "summary.csv"]
    assert "episodes_fold0_1shot.json" not in {p.name for p in second.iterdir()}, "run 0's episode list leaked"
    rec0 = json.loads((first / "results.json").read_text())["run"]
    rec1 = json.loads((second / "results.json").read_text())["run"]
    assert rec0["parameters"] == {"SEED": 0, "SHOTS": [1, 5]} and rec1["parameters"] == {"SEED": 1, "SHOTS": [5]}
    assert rec1["fss_lab_version"] == fss_lab.__version__ and rec1["notebook"] == "00_quickstart"
    assert re.fullmatch(r"[0-9a-f]{40}", rec1["git_revision"]) and isinstance(rec1["git_dirty"], bool)
    assert rec1["started"] <= rec1["finished"] and rec1["dir"] == str(second)
    latest = json.loads((tmp_path / "results.json").read_text())
    assert latest["run"]["run_id"] == second.name and latest["miou"] == {"5": 0.5}
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644


def test_same_parameters_in_the_same_second_still_get_separate_folders(tmp_path):
    runs = [start_run(tmp_path, {"SEED": 0}, notebook="x") for _ in range(3)]
    assert len({r.dir for r in runs}) == 3 and all(r.dir.is_dir() and not any(r.dir.iterdir()) for r in runs)
    with pytest.raises(ValueError, match="'run' key"):
        runs[0].write_results({"run": 1})
    with pytest.raises(TypeError):
        runs[0].write_results({"bad": object()})
    assert not (runs[0].dir / "results.json").exists()


def test_the_quickstart_writes_into_its_run_folder_and_records_the_run():
    source = (NOTEBOOKS / "00_quickstart.py").read_text()
    assert 'RUN = start_run(RESULTS_DIR, PARAMS, notebook="00_quickstart")' in source
    assert "RUN.write_results(" in source and '(results_dir / "results.json").write_text' not in source
