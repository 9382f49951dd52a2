"""Running notebooks in tests with papermill, and collecting what they measured for the end-of-run summary."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

NOTEBOOK_RESULTS: list[dict] = []  # filled by notebook tests, printed at the end of the run
RESULTS_ROOT = REPO / "results" / "tests"


def run_notebook(name: str, tag: str, parameters: dict) -> tuple[Path, dict]:
    """Execute ``notebooks/<name>.ipynb`` with papermill into ``results/tests/<tag>/`` and return
    ``(executed notebook path, the results.json the notebook wrote)``."""
    import time

    import papermill as pm

    out_dir = RESULTS_ROOT / tag
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / f"{name}.ipynb"
    t0 = time.time()
    pm.execute_notebook(
        str(REPO / "notebooks" / f"{name}.ipynb"),
        str(executed),
        parameters={**parameters, "RESULTS_DIR": str(out_dir)},
        kernel_name="python3",
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
    )
    results = {}
    if (out_dir / "results.json").is_file():
        import json

        results = json.loads((out_dir / "results.json").read_text())
    NOTEBOOK_RESULTS.append({"notebook": name, "run": tag, "wall_s": round(time.time() - t0, 1), **results})
    return executed, results


def write_summary(terminalreporter) -> None:
    """Write the notebook results of this run to the pytest terminal summary."""
    if not NOTEBOOK_RESULTS:
        return
    tr = terminalreporter
    tr.section("notebook results (measured in this run)")
    for r in NOTEBOOK_RESULTS:
        if r.get("summary_lines"):
            tr.write_line(f"{r['notebook']} [{r['run']}] dataset={r.get('dataset')} fold={r.get('fold')} ({r['wall_s']} s)")
            for line in r["summary_lines"]:
                tr.write_line(f"    {line}")
            continue
        miou = r.get("miou", {})
        fb = r.get("fb_iou", {})
        shots = "  ".join(
            f"{k}-shot mIoU {100 * v:.1f} (FB-IoU {100 * fb.get(k, float('nan')):.1f})" for k, v in miou.items()
        )
        tr.write_line(
            f"{r['notebook']} [{r['run']}] dataset={r.get('dataset')} fold={r.get('fold')} "
            f"protocol={r.get('protocol')} episodes={r.get('n_episodes')}: {shots}  ({r['wall_s']} s)"
        )
