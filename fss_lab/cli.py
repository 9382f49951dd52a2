"""The ``fss-lab`` command line: segment your own photos, evaluate an FSS configuration, train a base model.

    fss-lab segment --support cat.jpg --mask cat_mask.png --query q1.jpg q2.jpg --out outdir/
    fss-lab evaluate eval.json --out results/
    fss-lab train-base train.json --set train.iterations=100
    fss-lab sweep sweep.yaml --parallel 2

(``python -m fss_lab.cli ...`` is the same without the installed script.) Exit codes: 0 success, 1 a run that
failed, 2 bad arguments or inputs (a missing file, a mask without foreground, a bad config); errors are one line
without a traceback unless ``--debug``.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser", "EVALUATE_KEYS"]

EXAMPLES = {
    "segment": """examples:
  fss-lab segment --support cat.jpg --mask cat_mask.png --query q1.jpg q2.jpg --out out/
  fss-lab segment --support a.jpg b.jpg --mask a.png b.png --query photos/*.jpg --method repri --out out/
  fss-lab segment --support a.jpg --mask a.png --query q.jpg --method diam --model base.pt --out out/
masks: black/white PNGs (nonzero = the object), the same size as their photo; --class-id N for class-id masks.
writes out/<query>_mask.png (0/255) and out/<query>_overlay.png, and prints one line per query.""",
    "evaluate": """examples:
  fss-lab evaluate eval.json --out results/eval
config (JSON, or YAML with PyYAML): FSSConfig fields plus "methods", e.g.
  {"dataset": "folder", "data_root": "my_dogs", "shots": [1, 5], "n_episodes": 100,
   "methods": {"prototype": {}, "repri": {"adapt_iter": 50}}}
writes summary.csv, per_class.csv and results.json (mIoU and FB-IoU per method and shot count).""",
    "train-base": """examples:
  fss-lab train-base train.json --set train.iterations=100
  python -m torch.distributed.run --nproc_per_node 2 -m fss_lab.engine.train_cli train.json
the config is fss_lab.engine.train_cli's (see its --help).""",
    "sweep": """examples:
  fss-lab sweep bench/sweeps/camvid_cpu.yaml --parallel 2
  fss-lab sweep sweep.json --retry-failed
spec (JSON, or YAML with PyYAML): notebooks x parameter grids, e.g.
  {"output": "results/sweeps/q", "parameters": {"QUICK": true},
   "notebooks": [{"notebook": "notebooks/00_quickstart.ipynb", "grid": {"SEED": [0, 1], "SHOTS": [[1], [5]]}}]}
each combination runs in output/<notebook>/<id>/; done ones are skipped (resumable); the tidy table goes to
output/results.csv (and results.parquet with pyarrow). See fss_lab.sweep and bench/SWEEPS.md.""",
}

#: keys of an ``fss-lab evaluate`` config besides the :class:`~fss_lab.experiments.FSSConfig` fields
EVALUATE_KEYS = ("methods",)


class CLIError(Exception):
    """A bad argument or input: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The ``fss-lab`` argument parser (subcommands ``segment``, ``evaluate``, ``train-base``, ``sweep``)."""
    p = argparse.ArgumentParser(prog="fss-lab", description=__doc__.split("\n")[0],
                                epilog="run 'fss-lab <command> --help' for examples",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="{segment,evaluate,train-base,sweep}")
    fmt = argparse.RawDescriptionHelpFormatter
    s = sub.add_parser("segment", help="segment new photos from support photos and their masks",
                       epilog=EXAMPLES["segment"], formatter_class=fmt)
    s.add_argument("--support", nargs="+", required=True, metavar="IMAGE", help="support photo(s)")
    s.add_argument("--mask", nargs="+", required=True, metavar="PNG", help="their masks, same order")
    s.add_argument("--query", nargs="+", required=True, metavar="IMAGE", help="photos to segment")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    s.add_argument("--method", default="prototype",
                   help="prototype (default), repri, binary-ft, pfenet-prior, mmformer-heuristic; with --model: diam, "
                        "gfss-prototype, bcm, finetune-last-layer")
    s.add_argument("--model", default=None, metavar="CHECKPOINT",
                   help="a trained base model (PSPNet checkpoint of 'fss-lab train-base') for methods that read it")
    s.add_argument("--backbone", default=None, help="backbone of training-free methods (default efficientnet_lite0)")
    s.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="network input in pixels (default: long side 320, aspect ratio of the photos)")
    s.add_argument("--class-id", type=int, default=None, help="the object's value in class-id masks")
    s.add_argument("--device", default="auto")
    s.add_argument("--no-overlays", action="store_true", help="write masks only")
    s.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    e = sub.add_parser("evaluate", help="an FSS evaluation to tidy CSV/JSON", epilog=EXAMPLES["evaluate"],
                       formatter_class=fmt)
    e.add_argument("config", help="JSON or YAML config")
    e.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    t = sub.add_parser("train-base", help="train a base model (fss_lab.engine.train_cli)", epilog=EXAMPLES["train-base"],
                       formatter_class=fmt, add_help=False)
    t.add_argument("args", nargs=argparse.REMAINDER, help="passed to fss_lab.engine.train_cli")
    w = sub.add_parser("sweep", help="papermill notebooks x parameter grids -> one tidy table (resumable)",
                       epilog=EXAMPLES["sweep"], formatter_class=fmt)
    w.add_argument("spec", help="JSON or YAML sweep spec (fss_lab.sweep)")
    w.add_argument("--parallel", type=int, default=None, help="notebooks at once (default: the spec's, else 1)")
    w.add_argument("--retry-failed", action="store_true", help="run the failed combinations again")
    w.add_argument("--dry-run", action="store_true", help="list the combinations still to run")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    w.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def _sweep(a: argparse.Namespace) -> int:
    from .sweep import SweepSpecError, run_sweep

    try:
        rep = run_sweep(a.spec, parallel=a.parallel, retry_failed=a.retry_failed, progress=not a.no_progress,
                        dry_run=a.dry_run)
    except SweepSpecError as exc:
        raise CLIError(str(exc)) from None
    if a.dry_run:
        print(f"{len(rep.ran)} to run, {len(rep.skipped)} done before:", *rep.ran, sep="\n  ")
        return 0
    print(f"ran {len(rep.ran)}, skipped {len(rep.skipped)} (done before), failed {len(rep.failed)} "
          f"in {rep.wall_s} s; table: {rep.csv}" + (f" and {rep.parquet}" if rep.parquet else ""))
    for note in rep.notes:
        print(note)
    if rep.failed and rep.table is not None:
        bad = rep.table[rep.table["status"] == "failed"].drop_duplicates("combination")
        for _, r in bad.iterrows():
            print(f"failed {r['combination']}: {r['error']}")
    return 1 if rep.failed else 0


def _segment(a: argparse.Namespace) -> int:
    from .own_images import _MODEL_HELP, SegmentInputError, save_segmentations, segment

    for kind, paths in (("support image", a.support), ("mask", a.mask), ("query", a.query)):
        for path in paths:
            if not Path(path).is_file():
                raise CLIError(f"{kind} not found: {path}")
    if a.model is not None and not Path(a.model).is_file():
        raise CLIError(f"model checkpoint not found: {a.model}")
    try:
        out = segment(a.support, a.mask, a.query, method=a.method, model=a.model, backbone=a.backbone,
                      image_size=tuple(a.image_size) if a.image_size else None, class_id=a.class_id,
                      device=a.device, overlays=not a.no_overlays)
    except SegmentInputError as exc:  # the API's advice in the command line's terms
        raise CLIError(str(exc).replace(_MODEL_HELP, "pass --model CHECKPOINT (a base model written by `fss-lab "
                                                     "train-base CONFIG` or cached in notebooks/results/base_models/)"))
    save_segmentations(out, a.out)
    for q, s in zip(a.query, out):
        print(f"{q}: {100 * s.mask.mean():.1f} % foreground -> {Path(a.out) / (s.name + '_mask.png')}")
    print(f"wrote {len(out)} mask{'s' if len(out) != 1 else ''}{'' if a.no_overlays else ' and overlay'}"
          f"{'s' if len(out) != 1 and not a.no_overlays else ''} to {a.out}")
    return 0


def _read_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"config not found: {path}")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CLIError("a YAML config needs PyYAML (pip install pyyaml), or write it as JSON") from None
        cfg = yaml.safe_load(text)
    else:
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CLIError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise CLIError(f"{path}: the config must be an object of FSSConfig fields and 'methods'")
    return cfg


def _evaluate(a: argparse.Namespace) -> int:
    import dataclasses

    from .experiments import FSSConfig, run_fss
    from .methods import create_method, list_methods

    cfg = _read_config(a.config)
    fields = {f.name for f in dataclasses.fields(FSSConfig)}
    unknown = sorted(set(cfg) - fields - set(EVALUATE_KEYS))
    if unknown:
        raise CLIError(f"{a.config}: unknown keys {unknown}; valid: {sorted(fields | set(EVALUATE_KEYS))}")
    methods = cfg.pop("methods", {"prototype": {}})
    if isinstance(methods, list):
        methods = {m: {} for m in methods}
    fss = list_methods("fss")
    for name in methods:
        if name not in fss:
            raise CLIError(f"{a.config}: method {name!r} is not a 1-way method; valid: {fss}")
    for key in ("shots", "image_size", "levels"):
        if key in cfg and cfg[key] is not None:
            cfg[key] = tuple(cfg[key])
    config = FSSConfig(**cfg)
    factories = {n: (lambda n=n, kw=kw: create_method(n, **(kw or {}))) for n, kw in methods.items()}
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: episodes split across ranks, exact merge
        summary, per_class, is_main = _evaluate_sharded(config, factories, progress=not a.no_progress)
        if not is_main:
            return 0
    else:
        summary, per_class, _ = run_fss(config, factories, progress=not a.no_progress)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "summary.csv", index=False)
    per_class.to_csv(out / "per_class.csv", index=False)
    (out / "results.json").write_text(json.dumps({"config": dataclasses.asdict(config.resolved()),
                                                  "summary": summary.to_dict("records")}, indent=1, default=str))
    print(summary.to_string(index=False))
    print(f"wrote summary.csv, per_class.csv, results.json to {out}")
    return 0


def _evaluate_sharded(config, factories, progress: bool):
    """``fss-lab evaluate`` under torchrun: every method and K through
    :func:`~fss_lab.engine.sharded.evaluate_fss_sharded`; returns ``(summary, per_class, is rank 0)``."""
    import pandas as pd

    from .engine.distributed import cleanup_distributed, init_distributed
    from .engine.sharded import evaluate_fss_sharded
    from .experiments import FSSExperiment

    ctx = init_distributed(device=config.device)
    try:
        exp = FSSExperiment(config)
        results = []
        for k in exp.config.shots:
            for label, make in factories.items():
                m = make()
                levels = tuple(m.feature_levels)
                if levels and set(levels) != {exp.config.levels[0]}:
                    q, s = exp.level_caches(levels)
                else:
                    q, s = exp.query_cache, exp.support_cache
                res = evaluate_fss_sharded(m, exp.episodes(k), exp.query_items, exp.support_items, q, s,
                                           context=ctx, device=ctx.device, progress=progress)
                res.method = label
                results.append(res)
        summary = pd.DataFrame([r.summary() for r in results]).assign(world_size=ctx.world_size)
        per_class = pd.concat([r.per_class_frame() for r in results], ignore_index=True)
        return summary, per_class, ctx.is_main
    finally:
        cleanup_distributed()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fss-lab`` (and ``python -m fss_lab.cli``); returns the exit code (0 / 1 / 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if [a for a in argv if a != "--debug"][:1] == ["train-base"]:
        rest = [a for a in argv[argv.index("train-base") + 1:] if a != "--debug"]
        if rest in ([], ["-h"], ["--help"]):
            print("usage: fss-lab train-base CONFIG [--set KEY=VALUE ...] [--no-progress] [--save-rank-states DIR]\n",
                  file=sys.stdout if rest else sys.stderr)
            print(EXAMPLES["train-base"], file=sys.stdout if rest else sys.stderr)
            return 0 if rest else 2
        from .engine.train_cli import main as train_main

        return _run(lambda: train_main(rest), debug)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    command = {"segment": _segment, "evaluate": _evaluate, "sweep": _sweep}[args.command]
    return _run(lambda: command(args), debug)


def _run(fn, debug: bool) -> int:
    from .data.base import DatasetError
    from .own_images import SegmentInputError

    try:
        return int(fn() or 0)
    except (CLIError, SegmentInputError, DatasetError, FileNotFoundError, KeyError, TypeError, ValueError) as exc:
        if debug:
            traceback.print_exc()
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"fss-lab: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fss-lab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's promise: one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"fss-lab: error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
