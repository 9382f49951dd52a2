"""Papermill sweeps: notebooks x parameter grids, one run folder per combination, resumable, one tidy table.

A spec (JSON, or YAML with PyYAML) lists notebooks and the grid of parameters to run each with::

    {"output": "results/sweeps/camvid",          # relative paths: relative to the spec file
     "parallel": 2,                               # notebooks executed at once on this machine
     "kernel": "python3",
     "env": {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"},
     "gpus": null,                                # or [0, 1, ...]: each running notebook gets one of them
                                                  # (CUDA_VISIBLE_DEVICES), so parallel = number of GPUs
     "parameters": {"QUICK": true},               # fixed parameters of every notebook
     "grid": {"SEED": [0, 1]},                    # every notebook x every combination of these
     "notebooks": [
        {"notebook": "../notebooks/00_quickstart.ipynb", "parameters": {"N_EPISODES": 20},
         "grid": {"FOLD": [0, 1], "SHOTS": [[1], [5]]}, "columns": {"method": "prototype"}}]}

Each combination runs ``papermill`` in its own folder ``output/<notebook>/<combination id>/`` (``params.json``,
``executed.ipynb``, ``log.txt``, ``status.json``, and the notebook's ``RESULTS_DIR`` = ``results/``), with the
notebook's own folder as the working directory (so ``BASE_MODEL_DIR = "results/base_models"`` shares the cached
base models). The combination id is a hash of the notebook name and its parameters: the same spec run again
finds the same folders.

Resuming: a combination whose ``status.json`` says ``done`` is skipped (``failed`` ones too, unless
``retry_failed``); a folder without ``status.json`` (the notebook that was running when the sweep was killed) is
emptied and run again, so a killed sweep loses at most the notebooks that were running. A failed notebook is
recorded with its first error (``ename: evalue`` of the first error output of the executed notebook, else the
last line of papermill's output) and the sweep goes on.

The table (:func:`collect_table`): one row per tidy row a notebook wrote (``results.json["rows"]``: a list of
dicts), or, for notebooks that write per-shot mappings (``{"miou": {"1": 0.31, "5": 0.42}}``), one row per shot
count; with the columns :data:`TABLE_COLUMNS` first (dataset, fold, shots, seed, method, backbone, protocol,
package version, git revision, ...) and every other measured value after them. Written as ``output/results.csv``
and ``output/results.parquet`` (Parquet only when ``pyarrow`` or ``fastparquet`` is installed; the report says so
otherwise).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .data.base import save_json_atomic
from .progress import progress_bar

__all__ = ["Combination", "SweepReport", "TABLE_COLUMNS", "SweepSpecError", "load_spec", "combinations",
           "run_sweep", "collect_table", "first_error"]

#: The first columns of the sweep table, in this order.
TABLE_COLUMNS = ("notebook", "combination", "status", "dataset", "fold", "shots", "seed", "method", "backbone",
                 "protocol", "quick", "package_version", "git_revision", "git_dirty", "wall_s", "error")
_SPEC_KEYS = {"output", "parallel", "kernel", "env", "parameters", "grid", "notebooks", "timeout_s", "gpus"}
_NB_KEYS = {"notebook", "parameters", "grid", "columns", "name"}
_STATUS = "status.json"


class SweepSpecError(ValueError):
    """A sweep spec that cannot run (the message names the key and the fix)."""


@dataclass(frozen=True)
class Combination:
    """One notebook with one set of parameters.

    Attributes:
        notebook: path of the ``.ipynb``; name: its stem (the folder name under the sweep output).
        parameters: every parameter passed to papermill (``RESULTS_DIR`` is added at run time).
        columns: constant columns of its rows in the table (e.g. ``{"method": "prototype"}``).
        cid: ``<name>-<8 hex>``, a hash of the name and parameters.
    """

    notebook: Path
    name: str
    parameters: dict
    columns: dict
    cid: str

    def folder(self, output: Path) -> Path:
        """``output/<name>/<cid>/``."""
        return Path(output) / self.name / self.cid


@dataclass
class SweepReport:
    """What :func:`run_sweep` did.

    Attributes:
        output: the sweep folder. ran / skipped / failed: combination ids run now, skipped (done before), failed
        (now or before). table: the tidy table; csv / parquet: where it was written (``parquet`` is ``None``
        without a Parquet engine, with the reason in ``notes``). wall_s: seconds.
    """

    output: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None
    csv: Path | None = None
    parquet: Path | None = None
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def load_spec(spec: str | Path | Mapping) -> dict:
    """Read and check a sweep spec: a mapping, or a ``.json`` / ``.yaml`` / ``.yml`` file; relative ``output`` and
    ``notebook`` paths are resolved against the file's folder (the current folder for a mapping).

    Returns:
        The spec with defaults (``parallel`` 1, ``kernel`` ``"python3"``, ``env`` {}, ``parameters`` {}, ``grid`` {}).

    Raises:
        SweepSpecError: unknown keys, no notebooks, a grid value that is not a non-empty list, a missing notebook,
            a YAML file without PyYAML.
    """
    if isinstance(spec, Mapping):
        raw, base = dict(spec), Path.cwd()
    else:
        path = Path(spec)
        if not path.is_file():
            raise SweepSpecError(f"sweep spec not found: {path}")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise SweepSpecError(f"{path} is YAML: install PyYAML (pip install pyyaml) or write it as JSON") \
                    from None
            raw = yaml.safe_load(text)
        else:
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SweepSpecError(f"{path} is not valid JSON ({exc})") from None
        base = path.resolve().parent
    if not isinstance(raw, dict):
        raise SweepSpecError("a sweep spec is an object with 'output' and 'notebooks'")
    unknown = sorted(set(raw) - _SPEC_KEYS)
    if unknown:
        raise SweepSpecError(f"unknown sweep spec keys {unknown}; valid: {sorted(_SPEC_KEYS)}")
    if not raw.get("notebooks"):
        raise SweepSpecError("the sweep spec lists no 'notebooks' (a list of {'notebook': PATH, 'grid': {...}})")
    if "output" not in raw:
        raise SweepSpecError("the sweep spec has no 'output' folder (e.g. \"output\": \"results/sweeps/mine\")")
    out = {"parallel": 1, "kernel": "python3", "env": {}, "parameters": {}, "grid": {}, "timeout_s": None,
           "gpus": None, **raw}
    out["output"] = (base / out["output"]).resolve()
    if int(out["parallel"]) < 1:
        raise SweepSpecError(f"parallel must be >= 1, got {out['parallel']}")
    _check_grid(out["grid"], "grid")
    notebooks = []
    for i, entry in enumerate(out["notebooks"]):
        entry = {"notebook": entry} if isinstance(entry, str) else dict(entry)
        bad = sorted(set(entry) - _NB_KEYS)
        if bad:
            raise SweepSpecError(f"notebooks[{i}]: unknown keys {bad}; valid: {sorted(_NB_KEYS)}")
        nb = (base / entry["notebook"]).resolve()
        if not nb.is_file():
            raise SweepSpecError(f"notebooks[{i}]: {nb} not found (paths are relative to the spec file)")
        _check_grid(entry.get("grid", {}), f"notebooks[{i}].grid")
        notebooks.append({"parameters": {}, "grid": {}, "columns": {}, "name": nb.stem, **entry, "notebook": nb})
    out["notebooks"] = notebooks
    return out


def _check_grid(grid: Any, where: str) -> None:
    if not isinstance(grid, dict):
        raise SweepSpecError(f"{where} must be an object {{NAME: [values]}}, got {type(grid).__name__}")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise SweepSpecError(f"{where}.{k} must be a non-empty list of values, got {v!r} "
                                 f"(a list-valued parameter is a list of lists: \"SHOTS\": [[1], [5]])")


def _cid(name: str, params: Mapping) -> str:
    digest = hashlib.sha256(json.dumps([name, params], sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{name}-{digest}"


def combinations(spec: Mapping) -> list[Combination]:
    """Every (notebook, parameters) of a checked spec (:func:`load_spec`), in spec order: the notebook's grid
    crossed with the top-level grid; notebook parameters override top-level ones, grid values override both."""
    out = []
    for entry in spec["notebooks"]:
        grid = {**spec["grid"], **entry["grid"]}
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            params = {**spec["parameters"], **entry["parameters"], **dict(zip(keys, values))}
            out.append(Combination(entry["notebook"], entry["name"], params, dict(entry["columns"]),
                                   _cid(entry["name"], params)))
    seen: set[str] = set()
    return [c for c in out if not (c.cid in seen or seen.add(c.cid))]


def first_error(executed: str | Path) -> str | None:
    """``"ename: evalue"`` of the first error output of an executed notebook (``None``: no error output or no file)."""
    try:
        nb = json.loads(Path(executed).read_text())
    except (OSError, ValueError):
        return None
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                return f"{o.get('ename')}: {o.get('evalue')}".strip()
    return None


def _status(folder: Path) -> dict | None:
    try:
        return json.loads((folder / _STATUS).read_text())
    except (OSError, ValueError):
        return None


def _run_one(c: Combination, spec: Mapping, stop: threading.Event, procs: dict, gpus=None) -> dict:
    """Execute one combination with papermill in a subprocess (on one GPU taken from the queue ``gpus``, when
    given); write and return its status."""
    if gpus is None:
        return _run_on(c, spec, stop, procs, None)
    gpu = gpus.get()
    try:
        return _run_on(c, spec, stop, procs, gpu)
    finally:
        gpus.put(gpu)


def _run_on(c: Combination, spec: Mapping, stop: threading.Event, procs: dict, gpu) -> dict:
    folder = c.folder(spec["output"])
    if folder.exists():  # a combination interrupted before it finished: start it clean
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    params = {**c.parameters, "RESULTS_DIR": str(folder / "results")}
    save_json_atomic(params, folder / "params.json", indent=1)
    cmd = [sys.executable, "-m", "papermill", str(c.notebook), str(folder / "executed.ipynb"), "-k", spec["kernel"],
           "-f", str(folder / "params.json"), "--cwd", str(c.notebook.parent), "--no-progress-bar"]
    env = {**os.environ, **{k: str(v) for k, v in spec["env"].items()}}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    t0 = time.time()
    with open(folder / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        procs[c.cid] = proc
        try:
            rc = proc.wait(timeout=spec.get("timeout_s"))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            stop_reason = f"timed out after {spec['timeout_s']} s"
        else:
            stop_reason = None
        finally:
            procs.pop(c.cid, None)
    if stop.is_set() and rc != 0:
        return {"state": "interrupted"}  # no status file: rerun on resume
    status = {"state": "done" if rc == 0 else "failed", "notebook": c.name, "parameters": c.parameters,
              "wall_s": round(time.time() - t0, 2), "returncode": rc}
    if rc != 0:
        tail = [ln for ln in (folder / "log.txt").read_text(errors="replace").splitlines() if ln.strip()]
        status["error"] = stop_reason or first_error(folder / "executed.ipynb") or (tail[-1] if tail else f"rc {rc}")
    save_json_atomic(status, folder / _STATUS, indent=1)
    return status


def run_sweep(spec: str | Path | Mapping, *, parallel: int | None = None, retry_failed: bool = False,
              progress: bool = True, dry_run: bool = False) -> SweepReport:
    """Run every combination of a sweep spec that is not done yet, then write the tidy table.

    Args:
        spec: a spec file or mapping (:func:`load_spec`; the module docstring shows one).
        parallel: notebooks at once (default: the spec's ``parallel``).
        retry_failed: run again the combinations recorded as failed.
        progress: a progress bar over combinations (``TQDM_DISABLE=1`` silences it).
        dry_run: list what would run (``report.ran``) without running it.

    Returns:
        :class:`SweepReport`. A failed notebook does not stop the sweep (its id is in ``failed``, its first error
        in the table's ``error`` column).

    Raises:
        SweepSpecError: a bad spec. KeyboardInterrupt: re-raised after the running notebooks are stopped (their
            folders have no ``status.json``, so they run again on resume).
    """
    t0 = time.time()
    spec = load_spec(spec)
    output = Path(spec["output"])
    output.mkdir(parents=True, exist_ok=True)
    report = SweepReport(output)
    todo = []
    for c in combinations(spec):
        st = _status(c.folder(output))
        if st and (st["state"] == "done" or (st["state"] == "failed" and not retry_failed)):
            report.skipped.append(c.cid)
            if st["state"] == "failed":
                report.failed.append(c.cid)
        else:
            todo.append(c)
    if dry_run:
        report.ran = [c.cid for c in todo]
        return report
    stop, procs = threading.Event(), {}
    workers = int(parallel or spec["parallel"])
    gpus = None
    if spec.get("gpus"):
        import queue

        gpus = queue.Queue()
        for g in spec["gpus"]:
            gpus.put(g)
        workers = min(workers, len(spec["gpus"])) if parallel or spec["parallel"] > 1 else len(spec["gpus"])
    bar = progress_bar(total=len(todo), desc=f"sweep ({len(report.skipped)} done before)", unit="notebook",
                       progress=progress)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_run_one, c, spec, stop, procs, gpus): c for c in todo}
            for fut in as_completed(futures):
                c, st = futures[fut], fut.result()
                report.ran.append(c.cid)
                if st["state"] == "failed":
                    report.failed.append(c.cid)
                bar.set_postfix(failed=len(report.failed))
                bar.update(1)
    except KeyboardInterrupt:
        stop.set()
        for proc in list(procs.values()):
            proc.kill()
        raise
    finally:
        bar.close()
    report.table = collect_table(spec)
    report.csv = output / "results.csv"
    report.table.to_csv(report.csv, index=False)
    try:
        report.table.astype({c: "string" for c in ("error", "git_revision") if c in report.table}).to_parquet(
            output / "results.parquet", index=False)
        report.parquet = output / "results.parquet"
    except ImportError as exc:
        report.notes.append(f"no Parquet file: {exc.args[0].splitlines()[0] if exc.args else exc} "
                            "(pip install pyarrow); the CSV has the same table")
    report.wall_s = round(time.time() - t0, 1)
    return report


def _rows(results: dict) -> list[dict]:
    """Tidy rows of one ``results.json``: its ``rows`` list, or one row per shot count of its per-shot mappings."""
    scalars = {k: v for k, v in results.items() if k not in ("run", "rows") and not isinstance(v, (dict, list))}
    if isinstance(results.get("rows"), list):
        return [{**scalars, **r} for r in results["rows"] if isinstance(r, dict)]
    per_shot = {k: v for k, v in results.items() if isinstance(v, dict) and k != "run" and v
                and all(str(s).isdigit() for s in v)}
    shots = sorted({int(s) for v in per_shot.values() for s in v})
    if not shots:
        return [scalars]
    return [{**scalars, "shots": k, **{name: v.get(str(k)) for name, v in per_shot.items()}} for k in shots]


def _lower(params: Mapping) -> dict:
    return {k.lower(): v for k, v in params.items()}


def collect_table(spec: str | Path | Mapping) -> pd.DataFrame:
    """The tidy table of every combination of a spec that has run (done or failed), columns :data:`TABLE_COLUMNS`
    first. Columns come from, later winning: the notebook's parameters (lower-cased: ``SHOTS`` -> ``shots``), the
    spec's ``columns``, the run record (package version, git revision) and the notebook's own rows."""
    spec = load_spec(spec) if not (isinstance(spec, Mapping) and isinstance(spec.get("output"), Path)) else spec
    rows = []
    for c in combinations(spec):
        folder = c.folder(spec["output"])
        st = _status(folder)
        if st is None:
            continue
        base = {"notebook": c.name, "combination": c.cid, "status": st["state"], "wall_s": st.get("wall_s"),
                "error": st.get("error")}
        params = _lower(c.parameters)
        params["shots"] = params.get("shots")
        results = {}
        try:
            results = json.loads((folder / "results" / "results.json").read_text())
        except (OSError, ValueError):
            pass
        record = results.get("run", {})
        rec = {"package_version": record.get("fss_lab_version"), "git_revision": record.get("git_revision"),
               "git_dirty": record.get("git_dirty"), **{k: v for k, v in _lower(record.get("parameters", {})).items()
                                                         if k not in params}}
        for r in (_rows(results) if results else [{}]):
            row = {**params, **c.columns, **rec, **base, **r}
            row = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()}
            rows.append(row)
    frame = pd.DataFrame(rows)
    for col in TABLE_COLUMNS:
        if col not in frame:
            frame[col] = None
    return frame[list(TABLE_COLUMNS) + [c for c in frame.columns if c not in TABLE_COLUMNS]]
