"""The papermill sweep runner (fss_lab.sweep, ``fss-lab sweep``): grids, resume after a kill, failures recorded,
and a real 2x2 sweep of the quickstart."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from fss_lab.sweep import SweepSpecError, TABLE_COLUMNS, combinations, first_error, load_spec, run_sweep

REPO = Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO)}


def tiny_notebook(path: Path) -> Path:
    """A notebook that waits while HOLD exists, fails for X == 3, and writes two tidy rows via fss_lab.results."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("X = 1\nHOLD = ''\nRESULTS_DIR = 'results'")
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import os, time\n"
        "from fss_lab.results import start_run\n"
        "while HOLD and os.path.exists(HOLD):\n"
        "    time.sleep(0.2)\n"
        "if X == 3:\n"
        "    raise ValueError(f'X = {X} is not allowed')\n"
        "RUN = start_run(RESULTS_DIR, {'X': X, 'DATASET': 'synthetic', 'SEED': 7}, notebook='tiny')\n"
        "_ = RUN.write_results({'rows': [{'method': 'a', 'shots': 1, 'mIoU': X / 10},"
        " {'method': 'b', 'shots': 5, 'mIoU': X / 5}]})")
    nb.cells = [params, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def spec_for(tmp_path: Path, nb_grid: dict, **extra) -> Path:
    nb = tiny_notebook(tmp_path / "tiny.ipynb")
    spec = {"output": "out", "env": ENV, "parameters": {"HOLD": str(tmp_path / "hold")},
            "notebooks": [{"notebook": nb.name, "grid": nb_grid, "columns": {"backbone": "none"}}], **extra}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_spec_checks_and_grid(tmp_path):
    path = spec_for(tmp_path, {"X": [1, 2], "Y": [[1], [5]]}, grid={"SEED": [0]})
    spec = load_spec(path)
    combos = combinations(spec)
    assert len(combos) == 4 and len({c.cid for c in combos}) == 4
    assert combos[0].parameters == {"HOLD": str(tmp_path / "hold"), "SEED": 0, "X": 1, "Y": [1]}
    assert [c.cid for c in combinations(load_spec(path))] == [c.cid for c in combos]  # stable ids -> resumable
    with pytest.raises(SweepSpecError, match="non-empty list"):
        load_spec({**json.loads(path.read_text()), "grid": {"SEED": 0}, "output": str(tmp_path / "o"),
                   "notebooks": [str(tmp_path / "tiny.ipynb")]})
    with pytest.raises(SweepSpecError, match="unknown sweep spec keys"):
        load_spec({"output": "o", "notebooks": [str(tmp_path / "tiny.ipynb")], "paralel": 2})
    with pytest.raises(SweepSpecError, match="not found"):
        load_spec({"output": "o", "notebooks": ["missing.ipynb"]})


@pytest.mark.slow
def test_failure_recorded_and_sweep_goes_on(tmp_path):
    path = spec_for(tmp_path, {"X": [2, 3]})
    rep = run_sweep(path, parallel=2, progress=False)
    assert len(rep.ran) == 2 and len(rep.failed) == 1
    t = rep.table
    assert list(t.columns[:len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    ok, bad = t[t["x"] == 2], t[t["x"] == 3]
    assert list(ok["status"]) == ["done", "done"] and list(ok["method"]) == ["a", "b"]
    assert list(ok["mIoU"]) == [0.2, 0.4] and list(ok["shots"]) == [1, 5]
    assert set(ok["dataset"]) == {"synthetic"} and set(ok["seed"]) == {7} and set(ok["backbone"]) == {"none"}
    assert ok["package_version"].notna().all()
    assert list(bad["status"]) == ["failed"] and bad["error"].iloc[0] == "ValueError: X = 3 is not allowed"
    assert (rep.output / "results.csv").is_file()
    assert (rep.parquet is not None) or any("Parquet" in n for n in rep.notes)
    # a second call skips both (the failure is kept unless retry_failed)
    again = run_sweep(path, progress=False)
    assert again.ran == [] and sorted(again.skipped) == sorted(rep.ran) and again.failed == rep.failed
    assert again.table.equals(rep.table)
    assert len(run_sweep(path, progress=False, retry_failed=True, dry_run=True).ran) == 1


@pytest.mark.slow
def test_resume_after_kill_loses_only_the_running_notebook(tmp_path):
    path = spec_for(tmp_path, {"X": [1, 2, 4]})
    combos = combinations(load_spec(path))
    out = load_spec(path)["output"]
    hold = tmp_path / "hold"
    # the first combination runs free; the second one holds (the hold file appears once the first is done)
    proc = subprocess.Popen([sys.executable, "-m", "fss_lab.cli", "sweep", str(path), "--no-progress"],
                            cwd=REPO, env={**os.environ, **ENV}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first, second = (c.folder(out) for c in combos[:2])
    deadline = time.time() + 120
    while not (first / "status.json").is_file():
        assert time.time() < deadline and proc.poll() is None, proc.stdout.read().decode()[-2000:]
        time.sleep(0.1)
    hold.write_text("wait")
    while not (second / "params.json").is_file():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running notebook, as a killed job would be
    proc.wait()
    hold.unlink()
    assert json.loads((first / "status.json").read_text())["state"] == "done"
    assert not (second / "status.json").exists()
    rep = run_sweep(path, progress=False)
    assert rep.skipped == [combos[0].cid] and sorted(rep.ran) == sorted(c.cid for c in combos[1:])
    assert rep.failed == [] and set(rep.table["status"]) == {"done"} and sorted(set(rep.table["x"])) == [1, 2, 4]


def test_first_error_reads_the_first_error_output(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1"), nbformat.v4.new_code_cell("2")]
    nb.cells[0].outputs = [nbformat.v4.new_output("error", ename="KeyError", evalue="'x'", traceback=[])]
    nb.cells[1].outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="later", traceback=[])]
    nbformat.write(nb, tmp_path / "e.ipynb")
    assert first_error(tmp_path / "e.ipynb") == "KeyError: 'x'"
    assert first_error(tmp_path / "missing.ipynb") is None


@pytest.mark.notebook
def test_real_two_by_two_sweep_of_the_quickstart(tmp_path):
    spec = {"output": str(tmp_path / "sweep"), "parallel": 2, "env": ENV,
            "parameters": {"QUICK": True, "N_EPISODES": 4, "IMAGE_SIZE": [96, 96]},
            "notebooks": [{"notebook": str(REPO / "notebooks" / "00_quickstart.ipynb"),
                           "grid": {"SEED": [0, 1], "SHOTS": [[1], [5]]}, "columns": {"method": "prototype"}}]}
    rep = run_sweep(spec, progress=False)
    t = rep.table
    assert rep.failed == [] and len(rep.ran) == 4 and len(t) == 4, t.get("error")
    assert sorted(zip(t["seed"], t["shots"])) == [(0, 1), (0, 5), (1, 1), (1, 5)]
    assert set(t["method"]) == {"prototype"} and set(t["dataset"]) == {"synthetic"}
    assert set(t["backbone"]) == {"efficientnet_lite0"} and set(t["protocol"]) == {"same_split"}
    assert t["miou"].between(0, 1).all() and t["git_revision"].notna().all()
    assert run_sweep(spec, progress=False).ran == []


def test_committed_sweep_specs_list_their_combinations(tmp_path):
    # bench/SWEEPS.md's commands: the CamVid CPU sweep is 2 folds x 5 seeds, the PASCAL GPU sweep 4 folds x 5 seeds
    for name, n in (("camvid_cpu", 10), ("pascal_gpu", 20)):
        spec = load_spec(REPO / "bench" / "sweeps" / f"{name}.yaml")
        combos = combinations({**spec, "output": str(tmp_path / name)})
        assert len(combos) == n and {c.parameters["QUICK"] for c in combos} == {False}
        assert all(Path(c.notebook).name == "08_benchmark.ipynb" for c in combos)


def test_sweep_cost_estimate_splits_fit_and_predict():
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("sweep_costs", REPO / "bench" / "sweep_costs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    t = pd.DataFrame([{"space": "fss", "method": "a", "shots": 1, "ms_per_query": 100.0},
                      {"space": "gfss", "method": "b", "shots": 1, "ms_per_query": 1100.0, "fit_s_per_run": 6.0,
                       "predict_ms_per_query": 100.0},
                      {"space": "gfss", "method": "c", "shots": 1, "ms_per_query": 50.0}])
    h = mod.estimate(t, episodes=1000, seeds=1, folds=2, gfss_queries=100, gfss_runs=5)["hours"] * 3600
    # FSS: 0.1 s x 1000 episodes x 2 folds; inductive GFSS: (6 s + 100 x 0.1 s) x 5 runs x 2 folds; else per query
    assert list(h.round(6)) == [200.0, 160.0, 50.0]
