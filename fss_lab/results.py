"""One folder per run under a notebook's ``RESULTS_DIR``, and a complete record of how it was made (issue 9,
finding 5).

Two runs sharing a results folder used to mix their files (run 0's episode lists beside run 1's ``summary.csv``),
and ``results.json`` recorded neither the seed nor the shots. Now::

    RUN = start_run(RESULTS_DIR, PARAMS, notebook="00_quickstart")   # RESULTS_DIR/runs/<run id>/, new and empty
    ...                                                              # every output goes to RUN.dir
    RUN.write_results({...})          # RUN.dir/results.json, then RESULTS_DIR/results.json

``<run id>`` is ``<UTC time>-<hash of the parameters>`` (e.g. ``20261201-101502-3fa2c1d0``; a ``-2`` suffix
if two runs start in the same second with the same parameters). ``results.json`` holds the measured values plus
``run``: the run id, the notebook, **every** parameter, the fss_lab / torch / Python versions, the git revision
(and whether the checkout had uncommitted changes) and the start / end times. Both JSON files are written
atomically; the copy at ``RESULTS_DIR/results.json`` names the latest finished run (``run["dir"]``), and each run's
own folder is never written by another run.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .data.base import save_json_atomic

__all__ = ["Run", "start_run", "git_revision", "RUNS_FOLDER"]

RUNS_FOLDER = "runs"


#: Seconds one git call may take (generous: a loaded CI machine can be slow).
GIT_TIMEOUT_S = 120


def git_revision(path: str | Path | None = None) -> tuple[str | None, bool | None]:
    """``(commit hash, has uncommitted changes)`` of the git checkout holding ``path`` (default: this package), or
    ``(None, None)`` when it is not in a git checkout or git is not installed."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S)
        if rev.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
        return rev.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Run:
    """A run's own output folder and its record (see the module docstring).

    Attributes:
        dir: ``RESULTS_DIR/runs/<run id>/`` (created empty by :func:`start_run`).
        root: the ``RESULTS_DIR`` it belongs to.
        run_id: the folder name.
        record: ``run_id``, ``notebook``, ``parameters``, ``fss_lab_version``, ``torch_version``, ``python``,
            ``git_revision``, ``git_dirty``, ``started`` (and ``finished``, ``dir`` once results are written).
    """

    dir: Path
    root: Path
    run_id: str
    record: dict = field(default_factory=dict)

    def write_results(self, results: Mapping[str, Any]) -> Path:
        """Write ``{**results, "run": record}`` to ``dir/results.json`` and (the latest run) to
        ``root/results.json``, both atomically; returns the run's file.

        Raises:
            TypeError: ``results`` is not JSON-serialisable (names the offending type).
            ValueError: ``results`` has a ``"run"`` key (reserved for the record).
        """
        if "run" in results:
            raise ValueError("results must not have a 'run' key: write_results adds the run record under it")
        self.record["finished"] = _now()
        self.record["dir"] = str(self.dir)
        data = {**results, "run": self.record}
        json.dumps(data)  # a TypeError here, before any file is touched
        out = save_json_atomic(data, self.dir / "results.json", indent=2)
        save_json_atomic(data, self.root / "results.json", indent=2)
        return out


def start_run(results_dir: str | Path, parameters: Mapping[str, Any], *, notebook: str) -> Run:
    """Create this run's own, new folder ``results_dir/runs/<run id>/`` and its record.

    Args:
        results_dir: the notebook's ``RESULTS_DIR`` (created if needed).
        parameters: every parameter of the run (e.g. from :func:`~fss_lab.params.validate_parameters`);
            JSON-serialisable.
        notebook: the notebook's name, e.g. ``"00_quickstart"``.

    Returns:
        :class:`Run`.

    Raises:
        TypeError: ``parameters`` is not JSON-serialisable.
        OSError: ``results_dir`` cannot be created.
    """
    import torch

    from . import __version__

    root = Path(results_dir)
    params = dict(parameters)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    (root / RUNS_FOLDER).mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        run_id = f"{stamp}-{digest}" + (f"-{n}" if n > 1 else "")
        try:
            (root / RUNS_FOLDER / run_id).mkdir()  # atomic: two runs never get the same folder
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - a thousand runs in one second
        raise FileExistsError(f"could not create a new run folder in {root / RUNS_FOLDER}")
    revision, dirty = git_revision()
    record = {"run_id": run_id, "notebook": notebook, "parameters": params, "fss_lab_version": __version__,
              "torch_version": torch.__version__, "python": platform.python_version(), "git_revision": revision,
              "git_dirty": dirty, "started": _now()}
    return Run(root / RUNS_FOLDER / run_id, root, run_id, record)
