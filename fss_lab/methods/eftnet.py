"""EFTNet: test-time fine-tuning of a meta-trained FSS model on the query's own pseudo labels.

Jiaguang et al., "An Efficient Fine-tuning Method for Few-Shot Segmentation" (EFTNet, built on MSANet); official
code Jiaguang-NEU/EFTNet ``meta_test.py`` (``finetune``), ``model/EFTNet.py`` (``output_filter``,
``calculate_iou``, the ``q2s`` / ``s2q`` branches), ``utils/util.py`` (``ft_learning_rate``); fss-methods.md 4f.

Per query (one episode = one query in the official code) the wrapped model's meta parts are **copied** (the
backbone stays frozen; nothing leaks between episodes) and, with the model in eval mode (dropout off, as the
official loop):

* **round 0**: the model's normal prediction ``P_0``;
* **round r = 1..R** (official ``R = 5``), with the weights ``theta_{r-1}``:

  1. pseudo label ``y_{r-1} = argmax P_{r-1}``, padding (``task.query_valid`` False) set to 255;
  2. **query-to-support (Q2S)**: the query with the binary pseudo mask :func:`pseudo_mask` of ``softmax(P_{r-1})``
     (foreground probability > 0.5, then the 20 % most confident of those pixels) is an extra support; the
     support-derived inputs (prototype and prior for the PFENet-style model, the prototype for MM-Former) of the
     real supports and of the pseudo support are mixed ``0.8 * real + 0.2 * pseudo`` (:func:`mix`);
  3. **support-to-query (S2Q) discrimination** (:func:`support_iou`, no gradient): each real support image k is
     segmented by the model with shot k replaced by the pseudo support, mixed 0.8 / 0.2 with support k's own
     inputs (the official ``s2q`` branch), and scored against its true mask; ``s_r`` = mean over shots;
  4. the prediction ``P_r`` (real supports mixed with the pseudo support) and one SGD step (lr 0.005 with poly
     decay ``lr * (1 - (r-1)/(R+1))**0.9 + 1e-10``, momentum 0.9, weight decay 1e-4) on
     ``CE(P_r, y_{r-1}) + 0.9 * CE(aux_r, y_{r-1})`` (the PFENet-style model: the mean of its per-bin
     auxiliary CEs) gives ``theta_r``.

* **output** (``selection``): ``"discrimination"`` (official: the round ``r >= 1`` with the highest ``s_r``, later
  rounds winning ties, as ``iou >= best`` does; round 0 is kept only if every ``s_r`` is negative, i.e. never),
  ``"last"`` (round R), ``"first"`` (round 0, no fine-tuning) or ``"oracle"`` (the round with the best IoU against
  the query's ground truth: an upper bound that reads ``task.query_labels``).

**One deviation the official code has and this default does not**: its discrimination passes the query's
*ground-truth* label (``y_m=target`` in ``meta_test.py``) as the query's support mask in the S2Q branch, so the
official round selection reads the query label. ``s2q_query_mask="label"`` reproduces that (an upper bound that
declares ``reads_query_labels``); the default ``"pseudo"`` uses the round's Q2S pseudo mask, as the paper
describes.

The model-specific parts are a small **adapter** per wrapped learner (what is trainable, the frozen inputs, the
support-derived inputs and their mixing, the forward with given inputs, the loss); the round loop, the filter, the
selection and the per-round trace are shared:

* the PFENet-style meta-learner (:class:`~fss_lab.methods.pfenet.PFENetMetaLearner`): only its FEM network is
  tuned (the backbone's layer-3 -> layer-4 path stays frozen); prototype and prior are mixed; loss
  ``CE + 0.9 * mean aux CE``. :meth:`EFTNet.fit_predict` runs all queries of an evaluation chunk at once
  (``torch.func.vmap`` over stacked weight copies; SGD is elementwise, so one optimiser over the stack equals one
  per copy); it equals the per-query loop (a test checks it).
* MM-Former's Mask Matching module (:class:`~fss_lab.methods.mmformer.MMFormer`): the alignment block and the
  matching MLP are tuned (proposals and backbone frozen); the support prototype is mixed (the query's proposal
  embeddings are those aligned with the real supports); its output is the ``[1 - fg, fg]`` blend, so the loss is
  the CE of those probabilities (no auxiliary CE) and ``fg`` is the foreground probability of the Q2S filter.
  This path loops over queries (no ``vmap``: ``fit_predict`` is the loop).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import IGNORE_INDEX
from ..models.pfenet_prior import PRIOR_EPS, masked_layer4_features, prior_mask
from .base import Method, NotFittedError, check_fss_support
from .pfenet import PFENetMetaLearner, _levels_of
from .registry import register_method
from .task import Task

if TYPE_CHECKING:
    from .mmformer import MMFormer

#: Official hyper-parameters (EFTNet config/pascal/pascal_split0_resnet50.yaml, meta_test.py).
ROUNDS = 5
FT_LR = 0.005
FT_POWER = 0.9
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
Q2S_KEEP = 0.2
MIX_WEIGHT = 0.8
META_WEIGHT = 0.9
SELECTIONS = ("discrimination", "last", "first", "oracle")


# ---- the pieces (pure functions, unit-tested) ------------------------------------------------------------------

def pseudo_mask(fg_prob: torch.Tensor, keep: float = Q2S_KEEP, threshold: float = 0.5) -> torch.Tensor:
    """Q2S pseudo mask: pixels with foreground probability ``> threshold``, then the ``keep`` fraction most
    confident of them (official ``output_filter``).

    Official rule, reproduced exactly: ``n`` = pixels with ``p > 0.5``; ``idx = int(n * keep)`` (floor); the
    threshold is the ``idx``-th largest of those probabilities plus ``1e-10``; the mask is ``p >= threshold``. In
    float32 the ``+ 1e-10`` vanishes next to a probability above 0.5, so the ``idx`` most confident pixels are kept
    (more on ties). Quirk kept from the official code: when ``idx == 0`` (fewer than ``1 / keep`` foreground pixels,
    or none) the threshold is the smallest value plus 1e-10, so nearly the **whole image** becomes foreground.

    Args:
        fg_prob: float ``[..., H, W]`` foreground probabilities (softmax channel 1, not logits); each leading
            index is filtered on its own.
        keep: the fraction kept (official ``q2s_filt_para = 0.2``).
        threshold: the foreground probability threshold (0.5).

    Returns:
        float ``[..., H, W]`` of 0 / 1.
    """
    lead = fg_prob.shape[:-2]
    flat = fg_prob.reshape(-1, fg_prob.shape[-2] * fg_prob.shape[-1])
    out = torch.zeros_like(flat)
    for i, p in enumerate(flat):
        filt = torch.where(p > threshold, p, torch.zeros_like(p))
        ordered = torch.sort(filt).values
        idx = int(int((ordered != 0).sum()) * keep)
        stand = ordered[-idx] + 1e-10  # ordered[-0] is the smallest value (official quirk)
        out[i] = (p >= stand).to(out.dtype)
    return out.reshape(*lead, *fg_prob.shape[-2:])


def mix(real: torch.Tensor, pseudo: torch.Tensor, weight: float = MIX_WEIGHT) -> torch.Tensor:
    """``weight * real + (1 - weight) * pseudo`` (official ``change_weighting = [0.8, 0.2]``), for any support-derived
    input (prototype ``[B, C]``, prior ``[B, 1, h, w]``)."""
    return weight * real + (1 - weight) * pseudo


def poly_lr(base_lr: float, rounds: int, step: int, power: float = FT_POWER) -> float:
    """Official ``ft_learning_rate``: ``base_lr * (1 - step / (rounds + 1)) ** power + 1e-10`` for step ``0..R-1``."""
    return base_lr * (1 - step / (rounds + 1)) ** power + 1e-10


def select_round(support_ious: Sequence[float]) -> int:
    """Official discrimination: ``support_ious[r]`` for rounds ``r = 1..R`` (entry 0, round 0, is not scored);
    start from round 0 with best 0 and take every round with ``iou >= best`` (ties go to the later round).

    Returns:
        the chosen round in ``0..R`` (0 only when every scored IoU is negative, i.e. never for IoUs).
    """
    best, chosen = 0.0, 0
    for r in range(1, len(support_ious)):
        if support_ious[r] >= best:
            best, chosen = support_ious[r], r
    return chosen


def binary_iou(pred_fg: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Official ``calculate_iou``: ``|pred & (y == 1)| / (|pred | (y == 1)| + 1e-10)`` over ``[..., H, W]`` (ignore
    pixels count where the prediction is foreground). Returns float ``[...]``."""
    y = labels == 1
    p = pred_fg.bool()
    inter = (p & y).flatten(-2).sum(-1).float()
    union = (p | y).flatten(-2).sum(-1).float()
    return inter / (union + 1e-10)


def query_iou(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Foreground IoU of ``pred`` (0/1) against query labels (255 ignored): float ``[...]`` (1 when both empty)."""
    valid = labels != IGNORE_INDEX
    p, y = (pred == 1) & valid, (labels == 1) & valid
    inter = (p & y).flatten(-2).sum(-1).float()
    union = (p | y).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def unit_loss(logits: torch.Tensor, aux: Sequence[torch.Tensor], labels: torch.Tensor,
              meta_weight: float = META_WEIGHT) -> torch.Tensor:
    """Per-query EFTNet loss ``CE(final) + meta_weight * mean_bins CE(aux)`` with mean reduction over each query's
    non-ignored pixels (every map resized bilinearly, ``align_corners=True``, to the label size).

    Args:
        logits: ``[U, 2, h, w]``; aux: per bin ``[U, 2, b, b]``; labels: int64 ``[U, H, W]`` (0 / 1 / 255).

    Returns:
        float ``[U]``: the loss of each query (their sum's gradient is each copy's own gradient).
    """
    size = tuple(labels.shape[-2:])
    valid = (labels != IGNORE_INDEX).flatten(1).sum(1).clamp_min(1).float()

    def ce(z):
        z = F.interpolate(z.float(), size=size, mode="bilinear", align_corners=True)
        return F.cross_entropy(z, labels, ignore_index=IGNORE_INDEX, reduction="none").flatten(1).sum(1) / valid

    main = ce(logits)
    if not aux:
        return main
    return main + meta_weight * torch.stack([ce(a) for a in aux]).mean(0)


# ---- the trace kept for widgets and tables ---------------------------------------------------------------------

@dataclass
class EFTNetTrace:
    """What EFTNet did on one task (Q queries, R rounds), for the round browser and the selection tables.

    Attributes:
        predictions: uint8 ``[R + 1, Q, H, W]`` argmax of each round (0 / 1).
        fg_prob: float16 ``[R + 1, Q, H, W]`` foreground probability of each round.
        pseudo_labels: uint8 ``[R, Q, H, W]``: the label round ``r`` (index ``r - 1``) was trained on (argmax of
            round ``r - 1``, 255 at padding).
        pseudo_masks: uint8 ``[R, Q, H, W]``: the Q2S pseudo mask used in round ``r``.
        support_iou: float ``[R + 1, Q]`` mean support IoU (S2Q) of each round (round 0: NaN, not scored).
        chosen: int ``[Q]`` the round returned.
        meta: the task's meta (episode, class id, image ids).
    """

    predictions: torch.Tensor
    fg_prob: torch.Tensor
    pseudo_labels: torch.Tensor
    pseudo_masks: torch.Tensor
    support_iou: torch.Tensor
    chosen: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        """R, the fine-tuning rounds."""
        return int(self.pseudo_labels.shape[0])

    def choose(self, rule: str, query_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The round each query takes under ``rule`` (:data:`SELECTIONS`): int ``[Q]``; ``"oracle"`` needs the
        query labels ``[Q, H, W]``.

        Raises:
            ValueError: an unknown rule, or ``"oracle"`` without labels.
        """
        if rule == "first":
            return torch.zeros(self.predictions.shape[1], dtype=torch.long)
        if rule == "last":
            return torch.full((self.predictions.shape[1],), self.rounds, dtype=torch.long)
        if rule == "discrimination":
            return torch.tensor([select_round(self.support_iou[:, q].tolist())
                                 for q in range(self.predictions.shape[1])], dtype=torch.long)
        if rule == "oracle":
            if query_labels is None:
                raise ValueError("the oracle round needs the query labels [Q, H, W]")
            ious = query_iou(self.predictions.long(), query_labels.cpu().long()[None])  # [R + 1, Q]
            return ious.argmax(0)
        raise ValueError(f"selection must be one of {SELECTIONS}, got {rule!r}")

    def prediction(self, rule: str, query_labels: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 ``[Q, H, W]`` predictions under ``rule``."""
        r = self.choose(rule, query_labels)
        return self.predictions[r, torch.arange(len(r))]


# ---- the method ------------------------------------------------------------------------------------------------

@dataclass
class _Units:
    """Stacked per-query inputs (U queries, each with its task's K supports); fixed (non-trainable) parts only."""

    fq: torch.Tensor        # [U, 1, C, h, w] FEM-level query features
    fs: torch.Tensor        # [U, K, C, h, w] FEM-level support features
    s_masks: torch.Tensor   # [U, K, H, W] float support foreground
    s_labels: torch.Tensor  # [U, K, H, W] int support labels
    q_mid: torch.Tensor     # [U, 1, C3, h3, w3] query layer-3 features (pseudo support layer-4 path)
    q_high: torch.Tensor    # [U, 1, C4, h4, w4] query layer-4 features
    s_high: torch.Tensor    # [U, K, C4', h4, w4] support layer-4 features (as queries, for S2Q)
    prior_real: torch.Tensor  # [U, 1, 1, h, w] query prior from the real supports
    prior_ss: torch.Tensor  # [U, K, K, h, w] support k (as query) vs support j
    valid: torch.Tensor     # [U, H, W] bool
    labels: torch.Tensor | None  # [U, H, W] query labels (oracle / official S2Q only)
    path: bool
    size: tuple[int, int]


class _Call(nn.Module):
    """``functional_call`` target: prototypes and FEM forwards of one query unit with given weights."""

    def __init__(self, fem: nn.Module):
        super().__init__()
        self.fem = fem

    def forward(self, kind: str, *args):
        if kind == "proto":  # per-image prototypes: support [S, C, h, w], masks [S, H, W] -> [S, c]
            support, masks = args
            return self.fem.prototype(support[:, None], masks[:, None])
        query, proto, prior = args
        return self.fem(query, proto, prior)


# ---- the model adapters ----------------------------------------------------------------------------------------

def _stack_tree(outs: list):
    """Stack per-unit outputs: tensors -> ``[U, ...]``; tuples / lists -> the same structure of stacks."""
    first = outs[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(outs)
    parts = [_stack_tree([o[j] for o in outs]) for j in range(len(first))]
    return tuple(parts) if isinstance(first, tuple) else parts


def pfenet_round_inputs(protos, pseudo, prior_real, prior_ss, prior_pq, prior_ps, use_pseudo: bool,
                        mix_weight: float = MIX_WEIGHT):
    """PFENet-style support-derived inputs of the query forward and of the S2Q forwards of one unit (no unit axis).

    Args:
        protos: ``[K, c]`` per-shot prototypes; pseudo: ``[1, c]`` the pseudo support's prototype;
        prior_real ``[1, 1, h, w]``; prior_ss ``[K, K, h, w]`` (support i as query vs shot j); prior_pq
        ``[1, 1, h, w]`` (query vs pseudo support); prior_ps ``[K, 1, h, w]`` (support i vs pseudo support).
        use_pseudo: mix the pseudo support into the query's inputs (Q2S on). mix_weight: the real weight (0.8).

    Returns:
        ``(query_proto [1, c], query_prior [1, 1, h, w], s2q_proto [K, c], s2q_prior [K, 1, h, w])``.
    """
    k = protos.shape[0]
    real = protos.mean(0, keepdim=True)
    if use_pseudo:
        qp, qprior = mix(real, pseudo, mix_weight), mix(prior_real, prior_pq, mix_weight)
    else:
        qp, qprior = real, prior_real
    # S2Q: support i is the query; shot i is replaced by the pseudo support; mixed with support i itself
    eye = torch.eye(k, dtype=protos.dtype, device=protos.device)
    swapped = (protos[None] * (1 - eye)[..., None] + eye[..., None] * pseudo[None]).mean(1)   # [K, c]
    s_proto = mix(swapped, protos, mix_weight)
    own = prior_ss.diagonal(dim1=0, dim2=1).permute(2, 0, 1)[:, None]                         # [K, 1, h, w]
    swapped_prior = (prior_ss * (1 - eye)[..., None, None]
                     + eye[..., None, None] * prior_ps[:, :1]).mean(1, keepdim=True)          # [K, 1, h, w]
    return qp, qprior, s_proto, mix(swapped_prior, own, mix_weight)


class _Adapter:
    """What EFTNet's round loop needs from one kind of wrapped learner (one subclass per learner).

    ``module(u)`` is the trainable part (deep-copied per query, or stacked for ``vmap`` when ``vmappable``);
    ``units(tasks)`` stacks the fixed (frozen) inputs, one unit per query; ``pseudo_state(u, mask)`` the frozen
    inputs derived from a pseudo support; ``round0`` / ``query_forward`` / ``s2q_forward`` run the model with the
    given weights (``run_all(kind, *args)`` calls every unit's copy); ``loss`` is the per-unit CE; ``fg_prob`` the
    foreground probability of an output.
    """

    vmappable: ClassVar[bool] = False

    def __init__(self, method: "EFTNet", learner):
        self.method, self.learner = method, learner

    @property
    def feature_levels(self) -> tuple[str, ...]:
        return tuple(self.learner.feature_levels)

    @staticmethod
    def fg_prob(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Foreground probability of ``[..., 2, H, W]`` logits (softmax channel 1 along ``dim``)."""
        return logits.softmax(dim).select(dim, 1)

    def loss(self, logits: torch.Tensor, aux: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Per-unit CE (:func:`unit_loss`), float ``[U]``."""
        return unit_loss(logits, aux, labels, self.method.meta_weight)


class _PFENetAdapter(_Adapter):
    """The PFENet-style meta-learner: FEM network trainable; prototype and prior mixed 0.8 / 0.2."""

    vmappable: ClassVar[bool] = True

    def build(self, task: Task) -> None:
        self.learner.build_for(task)

    def module(self, u: _Units) -> nn.Module:
        return _Call(self.learner.network)

    @torch.no_grad()
    def units(self, tasks: Sequence[Task]) -> _Units:
        """Stack the fixed inputs of every query of ``tasks`` (equal shapes)."""
        rows: dict[str, list] = {k: [] for k in ("fq", "fs", "s_masks", "s_labels", "q_mid", "q_high", "s_high",
                                                  "prior_real", "prior_ss", "valid", "labels")}
        learner = self.learner
        for t in tasks:
            mid, high, path = _levels_of(t, learner.levels)
            fem = learner._fem(t)
            layer4, masks = learner.support_layer4(t)
            fq, fs = t.query(fem).float(), t.support(fem).float()
            size = tuple(fq.shape[-2:])
            k = fs.shape[0]
            s_high = t.support(high).float()
            q_high = t.query(high).float()
            prior_real = prior_mask(q_high, layer4[None].expand(q_high.shape[0], *layer4.shape),
                                    masks[None].expand(q_high.shape[0], *masks.shape), size=size, eps=PRIOR_EPS)
            prior_ss = prior_mask(s_high, layer4[None].expand(k, *layer4.shape), masks[None].expand(k, *masks.shape),
                                  size=size, eps=PRIOR_EPS, per_shot=True)  # [K (as query), K (shot), h, w]
            for q in range(t.num_queries):
                rows["fq"].append(fq[q:q + 1])
                rows["fs"].append(fs)
                rows["s_masks"].append(masks)
                rows["s_labels"].append(t.support_labels.long())
                rows["q_mid"].append(t.query(mid).float()[q:q + 1])
                rows["q_high"].append(q_high[q:q + 1])
                rows["s_high"].append(s_high)
                rows["prior_real"].append(prior_real[q:q + 1])
                rows["prior_ss"].append(prior_ss)
                rows["valid"].append(t.valid()[q])
                rows["labels"].append(None if t.query_labels is None else t.query_labels[q].long())
        given = rows.pop("labels")
        labels = None if any(v is None for v in given) else torch.stack(given)
        return _Units(**{k: torch.stack(v) for k, v in rows.items()}, labels=labels, path=path, size=tasks[0].size)

    @torch.no_grad()
    def pseudo_state(self, u: _Units, q_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Priors from the pseudo support (the query with mask ``q_mask [U, H, W]``): of the query itself
        ``[U, 1, 1, h, w]`` and of each support image as query ``[U, K, 1, h, w]``."""
        n = q_mask.shape[0]
        size = tuple(u.fq.shape[-2:])
        if u.path:
            pl4 = masked_layer4_features(u.q_mid[:, 0], q_mask, self.learner.layer4_module()).float()
        else:
            pl4 = u.q_high[:, 0]
        s4 = pl4[:, None]  # [U, 1, C4, h4, w4]
        m = q_mask[:, None]
        prior_q = prior_mask(u.q_high[:, 0], s4, m, size=size, eps=PRIOR_EPS)  # [U, 1, h, w]
        k = u.s_high.shape[1]
        prior_s = prior_mask(u.s_high.flatten(0, 1), s4.repeat_interleave(k, 0), m.repeat_interleave(k, 0), size=size,
                             eps=PRIOR_EPS)  # [U K, 1, h, w]
        return prior_q[:, None], prior_s.view(n, k, 1, *size)

    def _inputs(self, run_all, u, q_mask, state, use_pseudo):
        prior_pq, prior_ps = state
        protos = run_all("proto", u.fs, u.s_masks)             # [U, K, c]
        pseudo = run_all("proto", u.fq, q_mask[:, None])       # [U, 1, c]
        parts = [pfenet_round_inputs(protos[i], pseudo[i], u.prior_real[i], u.prior_ss[i], prior_pq[i],
                                     prior_ps[i], use_pseudo, self.method.mix_weight) for i in range(protos.shape[0])]
        return [torch.stack([p[j] for p in parts]) for j in range(4)]

    def query_forward(self, run_all, u, q_mask, state, use_pseudo):
        """The query's logits [U, 2, h, w] and aux logits (with gradients when enabled)."""
        qp, qprior, _, _ = self._inputs(run_all, u, q_mask, state, use_pseudo)
        logits, aux = run_all("fem", u.fq, qp, qprior)
        return logits[:, 0], [a[:, 0] for a in aux]

    def round0(self, run_all, u):
        n, k = u.fq.shape[0], u.fs.shape[1]
        zeros_q = torch.zeros(n, *u.size, device=u.fq.device)
        no_prior = torch.zeros_like(u.prior_real)
        return self.query_forward(run_all, u, zeros_q, (no_prior, no_prior.expand(-1, k, -1, -1, -1)), False)[0]

    def s2q_forward(self, run_all, u, q_mask, state):
        """Each support image segmented with the pseudo support (logits [U, K, 2, h, w])."""
        _, _, sp, sprior = self._inputs(run_all, u, q_mask, state, True)
        return run_all("fem", u.fs, sp, sprior)[0]


@dataclass
class _MMUnits:
    """MM-Former's fixed per-query inputs (U units, lists indexed by unit; each unit has its task's K supports)."""

    qf: list        # per unit: per level [1, C, h, w] query features
    sf: list        # per unit: per shot: per level [1, C, h, w] support features
    s_masks: list   # per unit: [K, H, W] int support labels
    q_props: list   # per unit: [1, N, h, w] query proposals (floored at EMPTY_FLOOR)
    s_props: list   # per unit: [K, N, h, w] support images' proposals (S2Q)
    s_labels: torch.Tensor  # [U, K, H, W]
    valid: torch.Tensor     # [U, H, W] bool
    labels: torch.Tensor | None
    size: tuple[int, int]

    @property
    def k(self) -> int:
        return int(self.s_labels.shape[1])


class _MMCall(nn.Module):
    """``MaskMatching`` split at the support prototype: ``"pair"`` aligns one query with one support (the
    proposal embeddings ``[1, N, D]`` of the aligned query and the prototype ``[1, D]`` of the aligned support);
    ``"head"`` is cosine -> matching MLP -> blend (``[1, 2, H, W]``)."""

    def __init__(self, net: nn.Module, size: tuple[int, int]):
        super().__init__()
        self.net, self.size = net, tuple(size)

    def forward(self, kind: str, *args):
        from ..models.mmformer.mask_matching import (blend_proposals, heuristic_matching, proposal_embeddings,
                                                     proposal_similarity, support_prototype)
        if kind == "pair":
            qfeats, sfeats, mask, props = args
            aq, as_ = self.net.alignment(qfeats, sfeats, mask)
            emb = torch.cat([proposal_embeddings(f, props) for f in aq], dim=2)
            proto = torch.cat([support_prototype(f, mask) for f in as_], dim=1)
            return emb, proto
        emb, proto, props = args
        sim = proposal_similarity(emb, proto)
        if self.net.matching == "heuristic":
            return heuristic_matching(sim, props, self.size)
        return blend_proposals(self.net.matching_mlp(sim), props, self.size)


class _MMFormerAdapter(_Adapter):
    """MM-Former's Mask Matching module (alignment block + matching MLP trainable; proposals and backbone frozen).

    Support-derived input: the support prototype (pooled from the aligned support features under the support
    mask); the query's forward uses ``mix(mean_k proto_k, proto_pseudo)`` with the real supports' proposal
    embeddings; S2Q segments support j with shot j replaced by the pseudo support, its prototype mixed 0.8 / 0.2
    with support j's own. The output is MM-Former's ``[1 - fg, fg]`` blend, so the loss is the CE of those
    probabilities (``-log`` of the pseudo label's channel, clamped at 1e-6; no auxiliary CE: MM-Former has none)
    and the foreground probability is ``fg`` itself. Loops over queries (no ``vmap``).
    """

    def build(self, task: Task) -> None:
        self.learner.build_for(task)

    def module(self, u: _MMUnits) -> nn.Module:
        """A copy of the matching network without the tensors its last forward kept (``last_similarity``, ...:
        not graph leaves, so they cannot be deep-copied per query; the wrapped network keeps its own)."""
        net = self.learner.network
        memo = {id(v): None for m in net.modules() for v in vars(m).values()
                if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter) and not v.is_leaf}
        return _MMCall(copy.deepcopy(net, memo), u.size)

    @torch.no_grad()
    def units(self, tasks: Sequence[Task]) -> _MMUnits:
        from .mmformer import EMPTY_FLOOR, _feature_levels, _proposals
        rows: dict[str, list] = {k: [] for k in ("qf", "sf", "s_masks", "q_props", "s_props", "s_labels", "valid",
                                                  "labels")}
        for t in tasks:
            lv = _feature_levels(t, self.learner.levels)
            q_props = _proposals(t, self.learner.proposal_level).clamp(min=EMPTY_FLOOR)
            s_props = _support_proposals(t, self.learner.proposal_level).clamp(min=EMPTY_FLOOR)
            sfeats = [[t.support(x).float()[j:j + 1] for x in lv] for j in range(t.shots)]
            for q in range(t.num_queries):
                rows["qf"].append([t.query(x).float()[q:q + 1] for x in lv])
                rows["sf"].append(sfeats)
                rows["s_masks"].append(t.support_labels.long())
                rows["q_props"].append(q_props[q:q + 1])
                rows["s_props"].append(s_props)
                rows["s_labels"].append(t.support_labels.long())
                rows["valid"].append(t.valid()[q])
                rows["labels"].append(None if t.query_labels is None else t.query_labels[q].long())
        given = rows.pop("labels")
        labels = None if any(v is None for v in given) else torch.stack(given)
        return _MMUnits(**{k: rows[k] for k in ("qf", "sf", "s_masks", "q_props", "s_props")},
                        s_labels=torch.stack(rows["s_labels"]), valid=torch.stack(rows["valid"]), labels=labels,
                        size=tuple(tasks[0].size))

    def pseudo_state(self, u, q_mask):
        return None  # the pseudo support goes through the trainable alignment: nothing frozen to precompute

    @staticmethod
    def _shots(run_all, qf, shots, masks, props):
        """Mean over the given shots of ``"pair"`` (as ``MaskMatching``: sum, then / K): ``(emb, proto)``."""
        emb, proto = 0.0, 0.0
        for feats, mask in zip(shots, masks):
            e, p = run_all("pair", qf, feats, mask, props)
            emb, proto = emb + e, proto + p
        return emb / len(shots), proto / len(shots)

    def query_forward(self, run_all, u, q_mask, state, use_pseudo):
        """``([1 - fg, fg] [U, 2, H, W], [])``: the real supports' embeddings and (mixed) prototype."""
        n = len(u.qf)
        emb, proto = self._shots(run_all, u.qf, [[s[j] for s in u.sf] for j in range(u.k)],
                                 [[m[j:j + 1] for m in u.s_masks] for j in range(u.k)], u.q_props)
        if use_pseudo:
            _, pseudo = run_all("pair", u.qf, u.qf, [q_mask[i:i + 1] for i in range(n)], u.q_props)
            proto = mix(proto, pseudo, self.method.mix_weight)
        return run_all("head", emb, proto, u.q_props)[:, 0], []

    def round0(self, run_all, u):
        return self.query_forward(run_all, u, None, None, False)[0]

    def s2q_forward(self, run_all, u, q_mask, state):
        """Support j segmented with shot j replaced by the pseudo support, prototype mixed with its own:
        ``[U, K, 2, H, W]``."""
        n, k = len(u.qf), u.k
        pmask = [q_mask[i:i + 1] for i in range(n)]
        outs = []
        for j in range(k):
            sj, pj = [s[j] for s in u.sf], [p[j:j + 1] for p in u.s_props]
            shots = [u.qf if i == j else [s[i] for s in u.sf] for i in range(k)]
            masks = [pmask if i == j else [m[i:i + 1] for m in u.s_masks] for i in range(k)]
            emb, proto = self._shots(run_all, sj, shots, masks, pj)
            _, own = run_all("pair", sj, sj, [m[j:j + 1] for m in u.s_masks], pj)
            outs.append(run_all("head", emb, mix(proto, own, self.method.mix_weight), pj)[:, 0])
        return torch.stack(outs, 1)

    @staticmethod
    def fg_prob(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """MM-Former's output is ``[1 - fg, fg]``: its foreground probability is channel 1 itself."""
        return logits.select(dim, 1)

    def loss(self, logits, aux, labels):
        """CE of the ``[1 - fg, fg]`` probabilities with the pseudo label (mean over valid pixels), float ``[U]``."""
        valid = (labels != IGNORE_INDEX).flatten(1).sum(1).clamp_min(1).float()
        logp = logits.float().clamp_min(1e-6).log()
        return F.nll_loss(logp, labels, ignore_index=IGNORE_INDEX, reduction="none").flatten(1).sum(1) / valid


def _support_proposals(task: Task, level: str) -> torch.Tensor:
    """``[S, N, h, w]`` proposals of the support images (the fallback: one-hot cells of the default level)."""
    if level in task.support_features:
        return task.support(level).float()
    f = task.support()
    s, _, h, w = f.shape
    return torch.eye(h * w, dtype=torch.float32, device=f.device).view(h * w, h, w)[None].expand(s, -1, -1, -1)


def _adapter_for(method: "EFTNet", learner) -> _Adapter:
    """The adapter of ``learner``.

    Raises:
        TypeError: a learner EFTNet has no adapter for.
    """
    from .mmformer import JointMMFormer, MMFormer
    if isinstance(learner, PFENetMetaLearner):
        return _PFENetAdapter(method, learner)
    if isinstance(learner, MMFormer) and not isinstance(learner, JointMMFormer):
        return _MMFormerAdapter(method, learner)
    raise TypeError(f"EFTNet wraps a PFENetMetaLearner (pfenet-meta) or an MMFormer (mmformer), got "
                    f"{type(learner).__name__}; add an adapter in fss_lab/methods/eftnet.py for other learners")


@register_method
class EFTNet(Method):
    """EFTNet test-time fine-tuning around a meta-trained learner (module docstring).

    Args:
        learner: the trained :class:`~fss_lab.methods.pfenet.PFENetMetaLearner` or
            :class:`~fss_lab.methods.mmformer.MMFormer` (``None``: an untrained small PFENet-style one is built on
            the first task, for contract tests only).
        rounds: R fine-tuning rounds (official 5).
        lr / momentum / weight_decay / power: SGD settings (official 0.005, 0.9, 1e-4, poly 0.9 over rounds).
        q2s: use the query-to-support pseudo support (off: every round uses the real supports only).
        keep: the Q2S confident fraction (0.2). mix_weight: real-support weight of the mixing (0.8).
        meta_weight: weight of the auxiliary CE (0.9).
        selection: ``"discrimination"`` (official), ``"last"``, ``"first"`` or ``"oracle"`` (reads query labels).
        s2q_query_mask: ``"pseudo"`` (default) or ``"label"`` (the official code's query ground truth; reads query
            labels).
        batched: :meth:`fit_predict` runs the chunk's queries together (``torch.func.vmap``; PFENet-style learner
            only); False: the loop.

    Raises:
        TypeError: a learner without an adapter. ValueError: an unknown ``selection`` / ``s2q_query_mask``.
        keep_traces: keep the :class:`EFTNetTrace` of the first this-many tasks in ``traces`` (``None``: all).

    Attributes:
        traces: list of :class:`EFTNetTrace`, one per task run (up to ``keep_traces``).
    """

    name: ClassVar[str] = "eftnet"
    transductive: ClassVar[bool] = True
    label_spaces: ClassVar[tuple[str, ...]] = ("fss",)
    episodic_training: ClassVar[bool] = True

    def __init__(self, learner: PFENetMetaLearner | MMFormer | None = None, rounds: int = ROUNDS, lr: float = FT_LR,
                 momentum: float = MOMENTUM, weight_decay: float = WEIGHT_DECAY, power: float = FT_POWER,
                 q2s: bool = True, keep: float = Q2S_KEEP, mix_weight: float = MIX_WEIGHT,
                 meta_weight: float = META_WEIGHT, selection: str = "discrimination", s2q_query_mask: str = "pseudo",
                 batched: bool = True, keep_traces: int | None = 0):
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if s2q_query_mask not in ("pseudo", "label"):
            raise ValueError(f"s2q_query_mask must be 'pseudo' or 'label' (official code), got {s2q_query_mask!r}")
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        self.learner = learner
        self._adapter = None if learner is None else _adapter_for(self, learner)
        self.rounds, self.lr, self.momentum, self.weight_decay, self.power = int(rounds), lr, momentum, \
            weight_decay, power
        self.q2s, self.keep, self.mix_weight, self.meta_weight = bool(q2s), keep, mix_weight, meta_weight
        self.selection, self.s2q_query_mask, self.batched = selection, s2q_query_mask, bool(batched)
        self.keep_traces = keep_traces
        self.reads_query_labels = selection == "oracle" or s2q_query_mask == "label"
        self.feature_levels = () if learner is None else tuple(learner.feature_levels)
        self.traces: list[EFTNetTrace] = []
        self._fitted: tuple[int, torch.Tensor] | None = None

    # ---- inputs --------------------------------------------------------------------------------------------------

    def _learner_for(self, task: Task):
        if self.learner is None:  # contract tests: an untrained small learner on the task's own levels
            self.learner = PFENetMetaLearner(reduce_dim=8, bins=(1.0,))  # single-level tasks: the fallback path
            self._adapter = _adapter_for(self, self.learner)
        self._adapter.build(task)
        return self.learner

    @torch.no_grad()
    def _units(self, tasks: Sequence[Task]):
        """Stack the fixed inputs of every query of ``tasks`` (equal shapes), by the learner's adapter."""
        u = self._adapter.units(tasks)
        if self.reads_query_labels and u.labels is None:
            raise ValueError(f"EFTNet(selection={self.selection!r}, s2q_query_mask={self.s2q_query_mask!r}) reads "
                             "the query labels; evaluate it with an evaluator that passes task.query_labels")
        return u

    def _round_inputs(self, protos, pseudo, prior_real, prior_ss, prior_pq, prior_ps, use_pseudo: bool):
        """:func:`pfenet_round_inputs` with this method's ``mix_weight``."""
        return pfenet_round_inputs(protos, pseudo, prior_real, prior_ss, prior_pq, prior_ps, use_pseudo,
                                   self.mix_weight)

    # ---- the two paths ---------------------------------------------------------------------------------------------

    def _run(self, u, batched: bool):
        """All rounds for the stacked units (the model-specific parts are the adapter's). Returns (logits
        [R+1, U, 2, H, W], pseudo labels [R, U, H, W], pseudo masks [R, U, H, W], support IoUs [R+1, U])."""
        ad = self._adapter
        n, size, k = u.valid.shape[0], u.size, u.s_labels.shape[1]
        call = ad.module(u).eval()
        base = {name: v.detach() for name, v in call.named_parameters()}
        if batched:
            from torch.func import functional_call, vmap
            params = {name: v.clone()[None].repeat(n, *([1] * v.dim())).requires_grad_(True)
                      for name, v in base.items()}

            def run_all(kind_q, *args):  # vmapped over units
                return vmap(lambda p, *a: functional_call(call, p, (kind_q, *a)))(params, *args)
            copies = [params]
        else:
            nets = [copy.deepcopy(call).requires_grad_(True) for _ in range(n)]  # a deep copy per query
            copies = [dict(m.named_parameters()) for m in nets]

            def run_all(kind_q, *args):
                return _stack_tree([m(kind_q, *(a[i] for a in args)) for i, m in enumerate(nets)])
        opts = [torch.optim.SGD(list(c.values()), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
                for c in copies]

        up = lambda z: F.interpolate(z, size=size, mode="bilinear", align_corners=True)  # noqa: E731

        with torch.no_grad():
            logits0 = ad.round0(run_all, u)
        all_logits = [up(logits0.detach())]
        pseudo_labels, pseudo_masks = [], []
        s_ious = [torch.full((n,), float("nan"))]
        for step in range(self.rounds):
            prev = all_logits[-1]
            label = prev.max(1).indices.masked_fill(~u.valid, IGNORE_INDEX)
            q_mask = pseudo_mask(ad.fg_prob(prev), self.keep)
            s2q_mask = u.labels.eq(1).float() if self.s2q_query_mask == "label" else q_mask
            state = ad.pseudo_state(u, q_mask)
            state_s2q = state if s2q_mask is q_mask else ad.pseudo_state(u, s2q_mask)
            for opt in opts:
                for g in opt.param_groups:
                    g["lr"] = poly_lr(self.lr, self.rounds, step, self.power)
            logits, aux = ad.query_forward(run_all, u, q_mask, state, self.q2s)
            with torch.no_grad():
                s_logits = ad.s2q_forward(run_all, u, s2q_mask, state_s2q)
                s_pred = up(s_logits.flatten(0, 1)).max(1).indices.view(n, k, *size)
                s_ious.append(binary_iou(s_pred, u.s_labels).mean(1).cpu())
            loss = ad.loss(logits, aux, label).sum()
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            for opt in opts:
                opt.step()
            all_logits.append(up(logits.detach()))
            pseudo_labels.append(label)
            pseudo_masks.append(q_mask)
        return torch.stack(all_logits), pseudo_labels, pseudo_masks, torch.stack(s_ious)

    def _solve(self, tasks: Sequence[Task], batched: bool) -> list[torch.Tensor]:
        for t in tasks:
            self.check_task(t)
            check_fss_support(t)
        self._learner_for(tasks[0])
        u = self._units(tasks)
        with torch.enable_grad():
            logits, labels, masks, s_ious = self._run(u, batched)
        n = logits.shape[1]
        if self.selection == "oracle":
            preds = logits.max(2).indices
            chosen = query_iou(preds, u.labels[None]).argmax(0)
        else:
            chosen = torch.tensor([0 if self.selection == "first" else self.rounds if self.selection == "last" else
                                   select_round(s_ious[:, i].tolist()) for i in range(n)], dtype=torch.long)
        out = logits[chosen.to(logits.device), torch.arange(n, device=logits.device)]
        results, start = [], 0
        for t in tasks:
            q = t.num_queries
            results.append(out[start:start + q].float())
            if self.keep_traces is None or len(self.traces) < self.keep_traces:
                sl = slice(start, start + q)
                stack = lambda xs: torch.stack([x[sl] for x in xs]).to(torch.uint8).cpu() if xs else \
                    torch.zeros(0, q, *t.size, dtype=torch.uint8)  # noqa: E731
                self.traces.append(EFTNetTrace(
                    predictions=logits[:, sl].max(2).indices.to(torch.uint8).cpu(),
                    fg_prob=self._adapter.fg_prob(logits[:, sl], 2).to(torch.float16).cpu(),
                    pseudo_labels=stack(labels), pseudo_masks=stack(masks), support_iou=s_ious[:, sl].clone(),
                    chosen=chosen[sl].clone(), meta=dict(t.meta)))
            start += q
        return results

    # ---- the method contract -----------------------------------------------------------------------------------------

    def fit(self, task: Task) -> "EFTNet":
        """Fine-tune copies of the wrapped model on ``task``'s queries (every round) and keep the chosen logits."""
        self._fitted = (id(task.query()), self._solve([task], batched=False)[0])
        return self

    def predict(self, task: Task) -> torch.Tensor:
        """Logits ``[Q, 2, H, W]`` of the chosen round (the queries :meth:`fit` saw).

        Raises:
            NotFittedError: before :meth:`fit`. ValueError: other queries than the fitted ones.
        """
        if self._fitted is None:
            raise NotFittedError("EFTNet is transductive: call fit(task) with the task's queries before predict()")
        key, out = self._fitted
        if key != id(task.query()) or out.shape[0] != task.num_queries:
            raise ValueError("EFTNet.predict: these are not the queries fit(task) fine-tuned on; call fit(task) first")
        return out

    def fit_predict(self, tasks: Sequence[Task]) -> list[torch.Tensor]:
        """Every task at once (``batched=True`` and equal shapes), else the loop; equal to the loop."""
        if not tasks:
            return []
        if self.batched and (self._adapter is None or self._adapter.vmappable):
            shapes = {(tuple(t.support().shape), tuple(t.query().shape), t.size) for t in tasks}
            if len(shapes) == 1:
                return self._solve(tasks, batched=True)
        return [self.fit(t).predict(t) for t in tasks]


__all__ = ["EFTNet", "EFTNetTrace", "pseudo_mask", "mix", "poly_lr", "select_round", "binary_iou", "query_iou",
           "unit_loss", "ROUNDS", "FT_LR", "SELECTIONS"]
