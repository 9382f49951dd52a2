"""Command-line base training, one process or several under torchrun.

    python -m fss_lab.engine.train_cli config.json
    python -m torch.distributed.run --nproc_per_node 2 -m fss_lab.engine.train_cli config.yaml --set train.lr=0.02

The config (JSON, or YAML when PyYAML is installed) holds::

    dataset: synthetic            # fss_lab.data.create_dataset name
    data_root: null               # its root (not needed by "synthetic")
    dataset_kwargs: {}            # for both splits; train_dataset_kwargs / val_dataset_kwargs add per split
    train_split: train
    val_split: val                # null: no validation
    fold: 0
    novel_policy: ignore          # ignore | background | drop
    min_base_area: 1
    image_size: [192, 192]
    augment: true
    model: {backbone: efficientnet_lite0, weights: imagenet, bottleneck_dim: null, freeze_backbone: false}
    train: {iterations: 300, batch_size: 8, ...}   # TrainConfig fields
    checkpoint: runs/fold0.pt
    resume: true
    history_json: null            # also write the TrainHistory as JSON (rank 0)

Rank 0 writes checkpoints and shows progress; every rank prints nothing else except errors. The last line of
rank 0's output is a JSON summary (``{"iterations": ..., "base_miou": ...}``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data import create_dataset
from ..data.base import DatasetError
from ..data.base_training import BaseTrainingSet
from ..data.class_maps import GFSSClassMap
from ..data.transforms import PairTransform
from ..models.pspnet import PSPNet
from .distributed import cleanup_distributed, init_distributed
from .train import TrainConfig, train_base

DEFAULTS: dict[str, Any] = {
    "dataset": "synthetic", "data_root": None, "dataset_kwargs": {}, "train_dataset_kwargs": {},
    "val_dataset_kwargs": {}, "train_split": "train", "val_split": "val", "fold": 0, "novel_policy": "ignore",
    "min_base_area": 1, "image_size": [192, 192], "augment": True, "model": {}, "train": {}, "checkpoint": None,
    "resume": True, "history_json": None, "backend": None,
}


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Read a JSON/YAML config, fill :data:`DEFAULTS`, apply ``key.sub=value`` overrides (values parsed as JSON).

    Raises:
        DatasetError: missing or malformed file, unknown top-level key, or a bad override (names the problem).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml  # optional dependency

            cfg = yaml.safe_load(text) or {}
        else:
            cfg = json.loads(text)
    except Exception as exc:  # json / yaml errors
        raise DatasetError(f"config file {path} does not parse: {exc}") from exc
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise DatasetError(f"config {path}: unknown keys {unknown}; valid keys: {sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **cfg}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise DatasetError(f"--set {item!r}: expected key=value, e.g. train.lr=0.02")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        node = merged
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return merged


def build_run(cfg: dict) -> tuple[PSPNet, BaseTrainingSet, BaseTrainingSet | None, TrainConfig]:
    """The model, training set, validation set and :class:`TrainConfig` a config describes."""
    common = dict(cfg["dataset_kwargs"])
    train_ds = create_dataset(cfg["dataset"], cfg["data_root"], split=cfg["train_split"],
                              **common, **cfg["train_dataset_kwargs"])
    class_map = GFSSClassMap.from_fold(train_ds, int(cfg["fold"]))
    model = PSPNet(num_classes=1 + class_map.num_base, **cfg["model"])
    mean, std = model.preprocessing.mean, model.preprocessing.std
    transform = PairTransform(size=tuple(cfg["image_size"]), mean=mean, std=std)
    kw = {"class_map": class_map, "novel_policy": cfg["novel_policy"], "transform": transform,
          "min_base_area": int(cfg["min_base_area"])}
    seed = int(cfg["train"].get("seed", 0))
    train_set = BaseTrainingSet(train_ds, augment=bool(cfg["augment"]), seed=seed, **kw)
    val_set = None
    if cfg["val_split"]:
        val_ds = create_dataset(cfg["dataset"], cfg["data_root"], split=cfg["val_split"],
                                **common, **cfg["val_dataset_kwargs"])
        val_set = BaseTrainingSet(val_ds, augment=False, **{**kw, "novel_policy": "ignore"})
    return model, train_set, val_set, TrainConfig(**cfg["train"])


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (also under ``torchrun``): parse ``argv``, train, write the checkpoint; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m fss_lab.engine.train_cli", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="JSON or YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. train.iterations=100 (repeatable)")
    parser.add_argument("--save-rank-states", metavar="DIR", default=None,
                        help="each rank writes its final weights to DIR/rank<r>.pt (to check DDP consistency)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    ctx = init_distributed(cfg["backend"], cfg["train"].get("device", "auto"))
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                        format=f"[rank {ctx.rank}] %(message)s", stream=sys.stderr)
    try:
        torch.manual_seed(int(cfg["train"].get("seed", 0)))  # same initial weights on every rank
        model, train_set, val_set, config = build_run(cfg)
        if ctx.is_main:
            logging.getLogger("fss_lab.engine").info("%s; %d processes on %s", train_set.describe(),
                                                     ctx.world_size, ctx.device)
        history = train_base(model, train_set, val_set, config, checkpoint_path=cfg["checkpoint"],
                             resume=bool(cfg["resume"]), progress=not args.no_progress, ctx=ctx)
        if args.save_rank_states:
            out = Path(args.save_rank_states)
            out.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / f"rank{ctx.rank}.pt")
        if ctx.is_main:
            if cfg["history_json"]:
                Path(cfg["history_json"]).write_text(json.dumps(history.to_dict(), default=str))
            miou = history.last_miou
            print(json.dumps({"iterations": history.steps[-1]["iteration"] if history.steps else 0,
                              "world_size": ctx.world_size,
                              "base_miou": None if math.isnan(miou) else miou,
                              "final_loss": history.steps[-1]["loss"] if history.steps else None}), flush=True)
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
