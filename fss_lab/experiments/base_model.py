"""The base model of a fold: a PSPNet trained on the base classes, loaded from its checkpoint when one exists.

Every paper notebook needs one. :func:`get_base_model` names the checkpoint after the recipe (dataset, fold,
backbone, novel-pixel policy, scale, contrastive weight, seed) plus a short hash of everything that defines the model
(:meth:`BaseModelConfig.model_key`: the resolved data root and the folder's config file included), so the first
notebook that needs a model trains it, the others reuse it, and two copies of a dataset never share one; a killed run resumes from its last checkpoint (written atomically).

Two recipes:

* ``quick=True`` (CPU, minutes): frozen ImageNet backbone, its features cached once, only the PSPNet head trained;
  augmentation reduced to horizontal flips; loss on every 4th label pixel.
* ``quick=False`` (GPU): the whole network trained with random scale/crop/flip, RePRI/DIaM's optimiser
  (SGD Nesterov, cosine lr 2.5e-3, label smoothing 0.1, batch 12) and the auxiliary loss (0.4).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ..data import PairTransform, create_dataset, dataset_defaults
from ..data.base_training import BaseTrainingSet
from ..data.class_maps import GFSSClassMap
from ..engine.train import TrainConfig, TrainHistory, train_base
from ..models.pspnet import PSPNet

#: Training length and optimiser of the two recipes (keywords of :class:`~fss_lab.engine.train.TrainConfig`).
RECIPES: dict[str, dict] = {
    "quick": dict(iterations=300, batch_size=8, lr=0.1, schedule="poly", label_smoothing=0.1, eval_every=100,
                  checkpoint_every=100, freeze_backbone=True, cache_backbone_features=True, loss_stride=4),
    "full": dict(epochs=50, batch_size=12, lr=2.5e-3, schedule="cosine", label_smoothing=0.1, aux_weight=0.4,
                 eval_every=1000, checkpoint_every=500),
}


@dataclass
class BaseModelConfig:
    """How to obtain a fold's base model.

    Attributes:
        dataset / data_root / fold: the data (see :func:`fss_lab.data.create_dataset`).
        backbone: a registered backbone for the PSPNet.
        novel_policy: ``"ignore"`` (RePRI; DIaM's data code), ``"background"`` (BAM's base learners, which DIaM
            evaluated, and what DIaM's distillation assumes: notebook 04 (e)) or ``"drop"`` (GFS-Seg).
        image_size: ``(H, W)``; default: the dataset's (:data:`~fss_lab.data.defaults.DATASET_DEFAULTS`).
        quick: the CPU recipe (True) or the GPU recipe (False), see :data:`RECIPES`.
        overrides: :class:`TrainConfig` fields that replace the recipe's (e.g. ``{"iterations": 50}``).
        contrastive_weight: lambda of seed 002's pixel contrastive term (0 = plain CE).
        contrastive_max_views: pixels a class needs to be sampled by the contrastive term (official 100 at 473
            pixels; the generated data's 12x12 feature maps need about 4).
        seed / device / cache_dir: training seed, device, and where checkpoints live.
    """

    dataset: str = "synthetic"
    data_root: str | None = None
    fold: int = 0
    backbone: str = "efficientnet_lite0"
    novel_policy: str = "ignore"
    image_size: tuple[int, int] | None = None
    quick: bool = True
    overrides: dict = dataclasses.field(default_factory=dict)
    contrastive_weight: float = 0.0
    contrastive_max_views: int = 4
    seed: int = 0
    device: str = "auto"
    cache_dir: str = "results/base_models"

    def resolved_size(self) -> tuple[int, int]:
        """The image size in pixels, the dataset default filled in."""
        return tuple(self.image_size or dataset_defaults(self.dataset)["image_size"])

    def model_key(self) -> dict:
        """Everything that defines the trained model, JSON-able: dataset, resolved (absolute) data root and the
        contents of its ``fss_lab.json`` when there is one, fold, backbone, policy, recipe (with overrides), image
        size, contrastive term and seed. ``device`` and ``cache_dir`` are left out (they do not change the model)."""
        root = None
        folder_config = None
        if self.data_root is not None and self.dataset != "synthetic":
            resolved = Path(self.data_root).expanduser().resolve()
            root = str(resolved)
            cfg_file = resolved / "fss_lab.json"
            if cfg_file.is_file():
                folder_config = hashlib.sha256(cfg_file.read_bytes()).hexdigest()[:16]
        recipe = {**RECIPES["quick" if self.quick else "full"], **self.overrides}
        return dict(dataset=self.dataset, data_root=root, folder_config=folder_config, fold=self.fold,
                    backbone=self.backbone, novel_policy=self.novel_policy, image_size=list(self.resolved_size()),
                    recipe={k: recipe[k] for k in sorted(recipe)}, contrastive_weight=self.contrastive_weight,
                    contrastive_max_views=self.contrastive_max_views if self.contrastive_weight else None,
                    seed=self.seed)

    def model_hash(self) -> str:
        """8 hex digits of SHA-256 over :meth:`model_key` (sorted-key JSON)."""
        text = json.dumps(self.model_key(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def checkpoint_path(self) -> Path:
        """``<cache_dir>/<dataset>_fold<f>_<backbone>_<policy>_<quick|full>_<HxW>[_ctr<lambda>]_s<seed>_<hash>.pt``:
        the readable prefix, then :meth:`model_hash` (so two data roots of one dataset, or another recipe, never
        reuse each other's checkpoint)."""
        h, w = self.resolved_size()
        ctr = f"_ctr{self.contrastive_weight:g}" if self.contrastive_weight else ""
        extra = "".join(f"_{k}{v}" for k, v in sorted(self.overrides.items()))
        scale = "quick" if self.quick else "full"
        name = (f"{self.dataset}_fold{self.fold}_{self.backbone}_{self.novel_policy}_{scale}_{h}x{w}{ctr}{extra}"
                f"_s{self.seed}_{self.model_hash()}.pt")
        return Path(self.cache_dir) / name

    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` of this recipe (with the contrastive term when its weight is > 0)."""
        fields = {**RECIPES["quick" if self.quick else "full"], **self.overrides}
        extra_loss = None
        if self.contrastive_weight:
            from ..losses.contrastive import ContrastiveTerm

            extra_loss = ContrastiveTerm(weight=self.contrastive_weight, max_views=self.contrastive_max_views,
                                         seed=self.seed)
        return TrainConfig(**fields, seed=self.seed, device=self.device, extra_loss=extra_loss)


class BaseModel(NamedTuple):
    """A trained base model and what comes with it."""

    model: PSPNet
    class_map: GFSSClassMap
    history: TrainHistory
    checkpoint: Path
    transform: PairTransform
    config: BaseModelConfig


def get_base_model(config: BaseModelConfig, progress: bool = True) -> BaseModel:
    """Load the fold's base model from its checkpoint, or train it (resuming a partial checkpoint).

    Args:
        config: the recipe; its :meth:`~BaseModelConfig.checkpoint_path` names the checkpoint.
        progress: ``tqdm.auto`` bars while training (``TQDM_DISABLE=1`` silences them).

    Returns:
        :class:`BaseModel` with the model in eval mode, the fold's :class:`GFSSClassMap`, the training history
        (loss curve and base mIoU on the val split), the checkpoint path and the transform the model expects.

    Raises:
        DatasetError: unknown dataset/fold; CheckpointError: a checkpoint written with another recipe.
    """
    train_ds = create_dataset(config.dataset, config.data_root, split="train")
    val_ds = create_dataset(config.dataset, config.data_root, split="val")
    class_map = GFSSClassMap.from_fold(train_ds, config.fold)
    model = build_model(config, class_map.num_base)
    pre = model.backbone.preprocessing
    mode = dataset_defaults(config.dataset)["transform_mode"]
    transform = PairTransform(config.resolved_size(), mode, tuple(pre.mean), tuple(pre.std))
    train_set = BaseTrainingSet(train_ds, class_map, config.novel_policy, transform, augment=not config.quick,
                                seed=config.seed)
    val_set = BaseTrainingSet(val_ds, class_map, "ignore", transform, augment=False)
    path = config.checkpoint_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    history = train_base(model, train_set, val_set, config.train_config(), checkpoint_path=path, resume=True,
                         progress=progress)
    model.eval()
    return BaseModel(model, class_map, history, path, transform, config)


def build_model(config: BaseModelConfig, num_base: int) -> PSPNet:
    """The untrained PSPNet of ``config`` for ``num_base`` base classes (``1 + num_base`` outputs), its randomly
    initialised head seeded with ``config.seed``, so that the same config trains the same model in any process.

    Raises:
        UnknownBackboneError: an unregistered backbone; ValueError: ``num_base < 0`` (from :class:`PSPNet`).
    """
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        torch.manual_seed(config.seed)
        return PSPNet(config.backbone, num_classes=1 + num_base, freeze_backbone=config.quick)
