"""MM-Former's training-free baselines (Zhang et al., "Mask Matching Transformer for Few-Shot Segmentation",
NeurIPS 2022, Sec. 3.3 and Tab. 3a): segment the query by picking ONE of its class-agnostic proposals.

* ``mmformer-heuristic`` (:class:`HeuristicMatching`): the proposal whose mask-pooled embedding has the highest
  cosine to the support prototype (Tab. 3a row 1; ``self_align=True`` adds the parameter-free self-alignment,
  row 2), features of several levels concatenated (:func:`~fss_lab.models.mmformer.mask_matching.heuristic_mask_matching`).
* :class:`OracleMatching` (named ``mmformer-oracle``; not in the registry, since the contract test's tasks carry no
  query labels; evaluate it with :func:`~fss_lab.engine.evaluate.evaluate_fss`, which passes them): the proposal with the highest IoU with the query ground truth
  (the paper's oracle analysis: the upper bound of picking one proposal; reads the query labels).

Proposals travel as the task level ``"proposals"`` (:class:`~fss_lab.models.proposal_features.ProposalExtractor`
in a feature cache: SLIC superpixels by default; a POS's sigmoid masks work the same way). A task without that
level is handled with one proposal per feature cell of its default level (a pixel-level fallback).
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from ..models.mmformer.mask_matching import blend_proposals, heuristic_mask_matching, oracle_matching
from ..models.proposal_features import PROPOSAL_LEVEL
from .base import Method, NotFittedError, check_fss_support
from .registry import register_method
from .task import Task

#: Floor of the proposal masks fed to the learned matching (keeps padded empty proposals finite).
EMPTY_FLOOR = 1e-6
#: Default backbone levels of the matching on EfficientNet-Lite0 (MM-Former: res5, res4, res3).
MATCHING_LEVELS = ("s32", "s16", "s8")
#: Starts of the matching MLP: PyTorch's default (official) or a training-free thresholding rule (a variant).
MLP_INITS = ("official", "threshold")


def _proposals(task: Task, level: str = PROPOSAL_LEVEL) -> torch.Tensor:
    """``[Q, N, h, w]`` proposals of the task's queries at ``level`` (the fallback: one-hot feature cells)."""
    if level in task.query_features:
        return task.query(level).float()
    f = task.query()
    q, _, h, w = f.shape
    return torch.eye(h * w, dtype=torch.float32, device=f.device).view(h * w, h, w)[None].expand(q, -1, -1, -1)


def _feature_levels(task: Task, levels: Sequence[str]) -> list[str]:
    have = [lv for lv in levels if lv in task.support_features]
    return have or [task.levels[0]]


class _ProposalMethod(Method):
    label_spaces: ClassVar[tuple[str, ...]] = ("fss",)

    def __init__(self, levels: Sequence[str] = MATCHING_LEVELS, proposal_level: str = PROPOSAL_LEVEL):
        self.levels = tuple(levels)
        self.proposal_level = proposal_level
        self.feature_levels = (*self.levels, proposal_level)
        self.task: Task | None = None

    def _joined(self, task: Task) -> Task:
        """The fitted support set with ``task``'s queries (one task for the network's stacked inputs)."""
        sup = self.task
        return Task(sup.support_features, sup.support_labels, task.query_features, sup.label_space, sup.shots,
                    task.size)

    def fit(self, task: Task) -> "_ProposalMethod":
        """Store the support set (the matching is computed per query in :meth:`predict`)."""
        self.check_task(task)
        check_fss_support(task)
        self.task = task
        return self


@register_method
class HeuristicMatching(_ProposalMethod):
    """Training-free MM-Former baseline: the proposal with the highest cosine to the support prototype.

    Args:
        levels: backbone levels whose (self-aligned) features are concatenated (default ``("s32", "s16", "s8")``).
        self_align: apply the parameter-free self-alignment first (Tab. 3a row 2) or not (row 1).
        proposal_level: the task level holding the proposals (default ``"proposals"``).

    Returns (``predict``): ``[Q, 2, H, W]`` ``[1 - M, M]`` of the chosen proposal (bilinear to the label size), a
    probability pair, not logits (its argmax is the prediction). After ``predict``, ``last_similarity`` holds the
    ``[Q, N]`` cosines (for the proposal browser).
    """

    name: ClassVar[str] = "mmformer-heuristic"

    def __init__(self, levels: Sequence[str] = MATCHING_LEVELS, self_align: bool = True,
                 proposal_level: str = PROPOSAL_LEVEL):
        super().__init__(levels, proposal_level)
        self.self_align = bool(self_align)
        self.last_similarity: torch.Tensor | None = None

    def predict(self, task: Task) -> torch.Tensor:
        if self.task is None:
            raise NotFittedError("call fit(task) with a support set before predict()")
        sup = self.task
        levels = _feature_levels(task, self.levels)
        props = _proposals(task, self.proposal_level)
        q = props.shape[0]
        qf = [task.query(lv).float() for lv in levels]
        sf = [[sup.support(lv).float()[k:k + 1].expand(q, -1, -1, -1) for lv in levels] for k in range(sup.shots)]
        masks = sup.support_labels.long()[None].expand(q, -1, -1, -1)
        out, sim = heuristic_mask_matching(qf, sf, masks, props, self_align=self.self_align, size=task.size)
        self.last_similarity = sim
        return out


class OracleMatching(_ProposalMethod):
    """The oracle of MM-Former's analysis: the proposal with the highest IoU with the query ground truth.

    An upper bound, not a few-shot method: it reads ``task.query_labels`` (``reads_query_labels``); ignore pixels
    count as background. Returns ``[Q, 2, H, W]`` ``[1 - M, M]``.
    """

    name: ClassVar[str] = "mmformer-oracle"
    reads_query_labels = True

    def predict(self, task: Task) -> torch.Tensor:
        if self.task is None:
            raise NotFittedError("call fit(task) with a support set before predict()")
        if task.query_labels is None:
            raise ValueError(f"{self.name} reads the query labels (an upper bound); this task has none "
                             f"({task.describe()}); evaluate it with fss_lab's evaluator, which passes them")
        props = _proposals(task, self.proposal_level)
        out = oracle_matching(props, task.query_labels.long())
        return out if tuple(out.shape[-2:]) == tuple(task.size) else \
            F.interpolate(out, size=task.size, mode="bilinear", align_corners=False)





def _stack_inputs(tasks: Sequence[Task], levels: Sequence[str], proposal_level: str | None = PROPOSAL_LEVEL) -> dict:
    """Network inputs of equal-shaped 1-way tasks, one row per query: ``query`` (per level ``[B, C, h, w]``),
    ``support`` (per shot, per level), ``masks [B, K, H, W]``, ``proposals [B, N, h, w]`` (``None`` when
    ``proposal_level`` is ``None``: a joint model computes them)."""
    rows: dict[str, list] = {"query": [], "support": [], "masks": [], "proposals": []}
    for t in tasks:
        lv = _feature_levels(t, levels)
        props = _proposals(t, proposal_level) if proposal_level is not None else None
        q = t.query(lv[0]).shape[0]
        rows["query"].append([t.query(x).float() for x in lv])
        rows["support"].append([[t.support(x).float()[k:k + 1].expand(q, -1, -1, -1) for x in lv]
                                for k in range(t.shots)])
        rows["masks"].append(t.support_labels.long()[None].expand(q, -1, -1, -1))
        # padded empty superpixel proposals would give 0/0 embeddings (the official pooling has no epsilon):
        # a floor of EMPTY_FLOOR keeps them finite and adds at most N * EMPTY_FLOOR * max|w| to the blend
        if props is not None:
            rows["proposals"].append(props.clamp(min=EMPTY_FLOOR))
    n_lv, n_k = len(rows["query"][0]), len(rows["support"][0])
    return {"query": [torch.cat([r[i] for r in rows["query"]]) for i in range(n_lv)],
            "support": [[torch.cat([r[k][i] for r in rows["support"]]) for i in range(n_lv)] for k in range(n_k)],
            "masks": torch.cat(rows["masks"]),
            "proposals": torch.cat(rows["proposals"]) if rows["proposals"] else None,
            "size": tuple(tasks[0].size)}


@register_method
class MMFormer(_ProposalMethod):
    """MM-Former's stage 2: the Mask Matching module (Feature Alignment Block + learnable matching MLP) trained on
    base-class episodes with the proposal source frozen (the paper's two-stage strategy), by
    :func:`fss_lab.engine.episodic.train_episodic`.

    Proposals come from the task level ``"proposals"`` (a frozen source: SLIC superpixels in the QUICK run, or a
    stage-1 POS's masks). Loss: MM-Former's ``10 * Dice + 6 * co_loss`` (:func:`~fss_lab.losses.mmformer.mmformer_loss`;
    ``co_weight=0`` drops the ranking loss, Tab. 3a's last row).

    Args:
        levels: backbone levels (default ``("s32", "s16", "s8")``, MM-Former's res5/res4/res3).
        hidden_dim / nhead / dim_feedforward / num_layers / min_size: :class:`~fss_lab.models.mmformer.
            feature_alignment.FeatureAlignmentBlock` (official 256 / 4 / 512 / 2 / 15).
        co_weight: weight of ``co_loss`` (official 6). dice_weight: weight of the Dice loss (official 10).
        seed: initialisation seed.
        mixing: the matching MLP (:class:`~fss_lab.models.mmformer.mask_matching.MatchingMLP`): ``"across"``
            (official, one MLP over the N-vector of similarities: slot n must mean the same proposal in every
            image, as a POS's queries do) or ``"per_proposal"`` (a shared, permutation-equivariant MLP; a variant
            for unordered proposals such as superpixels).
        matching: ``"learned"`` (MLP blend) or ``"heuristic"`` (argmax of the aligned cosines; Tab. 3a rows
            without the learnable matching, trained by ``co_loss`` alone).
        self_align / cross: the Feature Alignment Block's parts (Tab. 3a: ``cross`` in ``"learned"``, ``"none"``,
            ``"nonparametric"``).
        proposal_level: the task level holding the proposals (``"proposals"``; another name lets one experiment
            hold several proposal sources, e.g. ``"proposals_pos"``).
        dice: the Dice term: ``"official"`` (through a second sigmoid) or ``"plain"`` (a variant, no second
            sigmoid; :data:`~fss_lab.losses.mmformer.DICE_VARIANTS`).
        init: the matching MLP's start: ``"official"`` (PyTorch's default initialisation) or ``"threshold"`` (a
            variant: it starts as a training-free rule, :meth:`~fss_lab.models.mmformer.mask_matching.MatchingMLP.
            init_threshold`, keep the proposals whose cosine is ``init_offset`` above the mean (``"across"``) or
            within ``init_offset`` of the best (``"per_proposal"``); ``init_offset=None``: 0.25 / 0.05).
        init_scale: slope of that rule (10).

    Returns (``predict``): ``[Q, 2, H, W]`` ``[1 - fg, fg]`` with ``fg = sum_n w_n M_n`` (a blend, not logits; its
    argmax is the prediction). ``last_similarity`` / ``last_weights`` hold the ``[Q, N]`` cosines and matching
    coefficients of the last ``predict`` (the proposal browser reads them).
    """

    name: ClassVar[str] = "mmformer"
    episodic_training: ClassVar[bool] = True

    def __init__(self, levels: Sequence[str] = MATCHING_LEVELS, hidden_dim: int = 256, nhead: int = 4,
                 dim_feedforward: int = 512, num_layers: int = 2, min_size: int = 15, co_weight: float = 6.0,
                 seed: int = 0, mixing: str = "across", matching: str = "learned", self_align: bool = True,
                 cross: str = "learned", dice_weight: float = 10.0, proposal_level: str = PROPOSAL_LEVEL,
                 dice: str = "official", init: str = "official", init_offset: float | None = None,
                 init_scale: float = 10.0):
        super().__init__(levels, proposal_level)
        from ..losses.mmformer import DICE_VARIANTS
        if dice not in DICE_VARIANTS:
            raise ValueError(f"{self.name}: dice must be one of {DICE_VARIANTS}, got {dice!r}")
        if init not in MLP_INITS:
            raise ValueError(f"{self.name}: init must be one of {MLP_INITS}, got {init!r}")
        self.dice, self.init, self.init_scale = dice, init, float(init_scale)
        self.init_offset = None if init_offset is None else float(init_offset)
        self.alignment = dict(hidden_dim=hidden_dim, nhead=nhead, dim_feedforward=dim_feedforward,
                              num_layers=num_layers, min_size=min_size, self_align=bool(self_align), cross=cross)
        self.mixing, self.matching, self.dice_weight = mixing, matching, float(dice_weight)
        self.proposal_level = proposal_level
        self.feature_levels = (*self.levels, proposal_level)
        self.co_weight, self.seed = float(co_weight), seed
        self.network = None
        self.last_similarity: torch.Tensor | None = None
        self.last_weights: torch.Tensor | None = None
        self._proposals: torch.Tensor | None = None

    def build_for(self, task: Task):
        """Create the :class:`~fss_lab.models.mmformer.mask_matching.MaskMatching` network for the task's channel
        counts and number of proposals (seeded; no-op when it exists)."""
        from ..models.mmformer.mask_matching import MaskMatching
        channels = tuple(int(task.support(lv).shape[1]) for lv in _feature_levels(task, self.levels))
        n = int(_proposals(task, self.proposal_level).shape[1])
        if self.network is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.network = MaskMatching(channels, n, mixing=self.mixing, matching=self.matching,
                                            **self.alignment)
            self._init_mlp()
            self.network.eval()
        elif self.network.matching_mlp.num_proposals != n:
            raise ValueError(f"{self.name}: the matching MLP was built for {self.network.matching_mlp.num_proposals} "
                             f"proposals, this task has {n}; use the same proposal source and N")
        return self.network

    def _init_mlp(self) -> None:
        if self.init == "threshold":
            offset = self.init_offset if self.init_offset is not None else \
                (0.25 if self.mixing == "across" else 0.05)
            self.network.matching_mlp.init_threshold(offset, self.init_scale, seed=self.seed)

    def meta_parameters(self) -> list:
        """The trainable parts (alignment block and matching MLP)."""
        if self.network is None:
            raise NotFittedError(f"{self.name}: build the network first (a task)")
        return list(self.network.parameters())

    def training_module(self):
        """The network the episodic engine trains and checkpoints."""
        if self.network is None:
            raise NotFittedError(f"{self.name}: build the network first (a task)")
        return self.network

    def fit(self, task: Task) -> "MMFormer":
        super().fit(task)
        self.build_for(task).eval()
        return self

    def predict(self, task: Task) -> torch.Tensor:
        if self.task is None:
            raise NotFittedError("call fit(task) with a support set before predict()")
        inputs = _stack_inputs([self._joined(task)], self.levels, self.proposal_level)
        net = self.build_for(task)
        out, sim = net(inputs["query"], inputs["support"], inputs["masks"], inputs["proposals"], size=task.size)
        self.last_similarity = sim
        self.last_weights = net.matching_mlp(sim)
        return out

    @torch.no_grad()
    def episode_inputs(self, tasks: Sequence[Task]) -> dict:
        """See :func:`_stack_inputs`."""
        inputs = _stack_inputs(tasks, self.levels, self.proposal_level)
        self._proposals = inputs["proposals"]
        return inputs

    def episode_forward(self, network, inputs: dict):
        """``(out [B, 2, H, W], similarity [B, N])``."""
        return network(inputs["query"], inputs["support"], inputs["masks"], inputs["proposals"], size=inputs["size"])

    def episode_loss(self, outputs, labels: torch.Tensor) -> dict:
        """``{"total", "fewshot_loss", "co_loss"}`` (official weights 10 and ``co_weight``)."""
        from ..losses.mmformer import mmformer_loss
        out, sim = outputs
        return mmformer_loss(out.float(), sim.float(), self._proposals, labels, dice_weight=self.dice_weight,
                             co_weight=self.co_weight, dice=self.dice)

class JointMMFormer(MMFormer):
    """MM-Former trained **jointly** (Tab. 3c's alternative to the two-stage strategy): the POS and the Mask Matching
    module in one loss, ``L = pos_weight * L_P + 10 * L_M + 6 * L_co``, proposals computed by the POS in every step.

    Not in the registry (it reads the POS's backbone levels besides the matching ones); train it with
    :func:`~fss_lab.engine.episodic.train_episodic` like :class:`MMFormer`, evaluate it with the evaluator.

    Simplification, said plainly: episodes carry binary labels, so ``L_P`` (:func:`~fss_lab.models.mmformer.
    potential_objects_segmenter.pos_set_loss`) has one target segment per query, the episode class's foreground
    (the paper's joint run has every base-class segment of the image). ``L_co`` sees the proposals detached.

    Args:
        pos: a :class:`~fss_lab.models.mmformer.potential_objects_segmenter.PotentialObjectsSegmenter` (e.g.
            :func:`~fss_lab.models.mmformer.pos_training.build_pos`), trained here together with the matching.
        pos_weight: weight of ``L_P`` (1).
        kwargs: :class:`MMFormer` settings.
    """

    name: ClassVar[str] = "mmformer-joint"

    def __init__(self, pos, pos_weight: float = 1.0, **kwargs):
        from ..models.mmformer.pos_training import POS_LEVELS, POS_MASK_LEVEL
        super().__init__(**kwargs)
        self.pos, self.pos_weight = pos, float(pos_weight)
        self.pos_levels = (*POS_LEVELS, POS_MASK_LEVEL)
        self.feature_levels = tuple(dict.fromkeys((*self.levels, *self.pos_levels)))
        self._pos_out = None

    def _pos_inputs(self, tasks: Sequence[Task]) -> tuple[list[torch.Tensor], torch.Tensor]:
        maps = [torch.cat([t.query(lv).float() for t in tasks]) for lv in self.pos_levels]
        return maps[:-1], maps[-1]

    def build_for(self, task: Task):
        """The matching network for the POS's N queries (proposals are the POS's, not a task level)."""
        from ..models.mmformer.mask_matching import MaskMatching
        if self.network is None:
            channels = tuple(int(task.support(lv).shape[1]) for lv in _feature_levels(task, self.levels))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.network = MaskMatching(channels, self.pos.num_queries, mixing=self.mixing,
                                            matching=self.matching, **self.alignment)
            self._init_mlp()
            self.network.eval()
        return self.network

    def training_module(self):
        """``ModuleDict(matching=..., pos=...)``: both are trained and checkpointed."""
        if self.network is None:
            raise NotFittedError(f"{self.name}: build the network first (a task)")
        if not hasattr(self, "_module"):
            self._module = torch.nn.ModuleDict({"matching": self.network, "pos": self.pos})
        return self._module

    @torch.no_grad()
    def episode_inputs(self, tasks: Sequence[Task]) -> dict:
        inputs = _stack_inputs(tasks, self.levels, None)
        inputs["pos"] = self._pos_inputs(tasks)
        return inputs

    def episode_forward(self, network, inputs: dict):
        """``(out, similarity, pos outputs, proposals)``."""
        pos_out = network["pos"](*inputs["pos"])
        props = pos_out["pred_masks"].sigmoid()
        out, sim = network["matching"](inputs["query"], inputs["support"], inputs["masks"], props,
                                       size=inputs["size"])
        return out, sim, pos_out, props

    def episode_loss(self, outputs, labels: torch.Tensor) -> dict:
        """``{"total", "fewshot_loss", "co_loss", "pos_loss"}``."""
        from ..losses.mmformer import mmformer_loss
        from ..models.mmformer.potential_objects_segmenter import pos_set_loss
        out, sim, pos_out, props = outputs
        parts = mmformer_loss(out.float(), sim.float(), props.detach(), labels, dice_weight=self.dice_weight,
                              co_weight=self.co_weight, dice=self.dice)
        h, w = props.shape[-2:]
        small = F.interpolate((labels == 1).float()[:, None], size=(h, w), mode="nearest")[:, 0]
        targets = [m[None] if m.any() else m.new_zeros(0, h, w) for m in small]
        parts["pos_loss"] = pos_set_loss(pos_out, targets)["total"] * self.pos_weight
        parts["total"] = parts["total"] + parts["pos_loss"]
        return parts

    def predict(self, task: Task) -> torch.Tensor:
        if self.task is None:
            raise NotFittedError("call fit(task) with a support set before predict()")
        inputs = _stack_inputs([self._joined(task)], self.levels, None)
        with torch.no_grad():
            props = self.pos.eval()(*self._pos_inputs([task]))["pred_masks"].sigmoid()
        net = self.build_for(task)
        out, sim = net(inputs["query"], inputs["support"], inputs["masks"], props, size=task.size)
        self.last_similarity, self.last_weights = sim, net.matching_mlp(sim)
        return out


__all__ = ["HeuristicMatching", "OracleMatching", "MMFormer", "JointMMFormer", "MATCHING_LEVELS", "blend_proposals"]
