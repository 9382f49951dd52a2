"""Running notebooks in tests with papermill, and collecting what they measured for the end-of-run summary."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

NOTEBOOK_RESULTS: list[dict] = []  # filled by notebook tests, printed at the end of the run
RESULTS_ROOT = REPO / "results" / "tests"

# How many figures each notebook shows inline (one image/png output per viz.show call or displayed figure; the
# widgets' images live in widget state, not in outputs). A notebook that shows a figure as the text
# "<Figure size ...>" instead of an image fails `assert_shows_figures`.
EXPECTED_IMAGES = {
    "00_quickstart": 4,  # episode, per-class IoU, two predictions
    "01_base_training": 2,  # curves, predictions
    "02_gfss_finetuning_triplet": 3,  # shots curve, strategies, prediction
    "03_contrastive_distillation": 1,  # gamma
    "04_infomax_diam": 4,  # comparison, entropy, proportions, prediction steps
    "07_your_own_images": 2,  # support + mask, overlays of every query and method
    "04b_bcm": 2,  # host map, comparison
    "05_attention_mmformer": 4,  # attention, proposals, self-alignment, prior (the two widgets are not images)
    "06_eftnet_query_finetuning": 3,  # rounds curve, one episode at round 0 and at the chosen round
    "08_benchmark": 3,  # methods x shots, per-class heatmap, score vs time per query
}


def output_counts(executed: Path) -> dict:
    """Count, over the code cells of an executed notebook: ``image/png`` outputs, figures printed as text
    (``<Figure size ...>``), error outputs and stderr streams that show a frozen tqdm bar."""
    import json

    nb = json.loads(Path(executed).read_text())
    counts = {"image/png": 0, "figure_as_text": 0, "error": 0, "tqdm_bar": 0}
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            counts["image/png"] += "image/png" in data
            text = "".join(data.get("text/plain", "")) if isinstance(data.get("text/plain"), list) \
                else str(data.get("text/plain", ""))
            counts["figure_as_text"] += text.startswith("<Figure size")
            counts["error"] += out.get("output_type") == "error"
            stream = "".join(out.get("text", "")) if out.get("output_type") == "stream" else ""
            # tqdm draws "  0%|          | 0/200": in stderr (tqdm.std) or as a widget's text/plain (tqdm.notebook)
            counts["tqdm_bar"] += "%|" in stream or "%|" in text
    return counts


# Every progress bar goes through fss_lab.progress.progress_bar, which leaves TQDM_DISABLE in charge: executed
# notebooks (TQDM_DISABLE=1 in the tests) must hold no frozen bar.
CHECK_NO_BARS = True


def assert_shows_figures(executed: Path, name: str, check_bars: bool = CHECK_NO_BARS) -> dict:
    """Assert an executed notebook holds exactly its expected number of inline images, no figure printed as text
    and no error output (and, with ``check_bars``, no tqdm bar: tests run with TQDM_DISABLE=1); return the counts."""
    counts = output_counts(executed)
    expected = EXPECTED_IMAGES[name]
    assert counts["figure_as_text"] == 0, f"{name}: {counts['figure_as_text']} figures shown as '<Figure size ...>' text"
    assert counts["image/png"] == expected, f"{name}: {counts['image/png']} image/png outputs, expected {expected}"
    assert counts["error"] == 0, f"{name}: {counts['error']} error outputs"
    if check_bars:
        assert counts["tqdm_bar"] == 0, f"{name}: {counts['tqdm_bar']} progress bars although TQDM_DISABLE=1"
    return counts


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
    counts = output_counts(executed)
    # the test's tag is "run" here (results.json's own "run" record, the run folder's metadata, is not printed)
    record = {**results, "notebook": name, "run": tag, "wall_s": round(time.time() - t0, 1),
              "images": counts["image/png"], "bars": counts["tqdm_bar"]}
    NOTEBOOK_RESULTS.append(record)
    import json

    # under pytest-xdist the notebook ran in a worker: the controller reads this file for the summary
    (out_dir / SUMMARY_RECORD).write_text(json.dumps(record, default=str))
    return executed, results


SUMMARY_RECORD = "summary_record.json"


def collected_results(since: float) -> list[dict]:
    """This process's notebook records, or (the xdist controller, which runs no notebook) the records the workers
    wrote under :data:`RESULTS_ROOT` after ``since`` (seconds since the epoch), in the order they finished."""
    if NOTEBOOK_RESULTS:
        return NOTEBOOK_RESULTS
    import json

    files = [p for p in RESULTS_ROOT.glob(f"*/{SUMMARY_RECORD}") if p.stat().st_mtime >= since]
    return [json.loads(p.read_text()) for p in sorted(files, key=lambda p: p.stat().st_mtime)]


def write_summary(terminalreporter, since: float = 0.0) -> None:
    """Write the notebook results of this run (records newer than ``since``) to the pytest terminal summary."""
    records = collected_results(since)
    if not records:
        return
    tr = terminalreporter
    tr.section("notebook results (measured in this run)")
    for r in records:
        if r.get("summary_lines"):
            tr.write_line(f"{r['notebook']} [{r['run']}] dataset={r.get('dataset')} fold={r.get('fold')} "
                          f"images={r['images']} bars={r['bars']} ({r['wall_s']} s)")
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
            f"protocol={r.get('protocol')} episodes={r.get('n_episodes')}: {shots}  images={r['images']} bars={r['bars']} ({r['wall_s']} s)"
        )
