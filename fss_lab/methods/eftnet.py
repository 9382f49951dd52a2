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
     support-derived inputs (prototype and prior for the PFENet-style model) of the real supports and of the
     pseudo support are mixed ``0.8 * real + 0.2 * pseudo`` (:func:`mix`);
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

The wrapped model is the PFENet-style meta-learner (:class:`~fss_lab.methods.pfenet.PFENetMetaLearner`); only its
FEM network is tuned (the backbone's layer-3 -> layer-4 path stays frozen). :meth:`EFTNet.fit_predict` runs all
queries of an evaluation chunk at once (``torch.func.vmap`` over stacked weight copies; SGD is elementwise, so one
optimiser over the stack equals one per copy); it equals the per-query loop (a test checks it).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import IGNORE_INDEX
from ..models.pfenet_prior import PRIOR_EPS, masked_layer4_features, prior_mask
from .base import Method, NotFittedError, check_fss_support
from .pfenet import PFENetMetaLearner, _levels_of
from .registry import register_method
from .task import Task

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


@register_method
class EFTNet(Method):
    """EFTNet test-time fine-tuning around a meta-trained PFENet-style learner (module docstring).

    Args:
        learner: the trained :class:`~fss_lab.methods.pfenet.PFENetMetaLearner` (``None``: an untrained small one
            is built on the first task, for contract tests only).
        rounds: R fine-tuning rounds (official 5).
        lr / momentum / weight_decay / power: SGD settings (official 0.005, 0.9, 1e-4, poly 0.9 over rounds).
        q2s: use the query-to-support pseudo support (off: every round uses the real supports only).
        keep: the Q2S confident fraction (0.2). mix_weight: real-support weight of the mixing (0.8).
        meta_weight: weight of the auxiliary CE (0.9).
        selection: ``"discrimination"`` (official), ``"last"``, ``"first"`` or ``"oracle"`` (reads query labels).
        s2q_query_mask: ``"pseudo"`` (default) or ``"label"`` (the official code's query ground truth; reads query
            labels).
        batched: :meth:`fit_predict` runs the chunk's queries together (``torch.func.vmap``); False: the loop.
        keep_traces: keep the :class:`EFTNetTrace` of the first this-many tasks in ``traces`` (``None``: all).

    Attributes:
        traces: list of :class:`EFTNetTrace`, one per task run (up to ``keep_traces``).
    """

    name: ClassVar[str] = "eftnet"
    transductive: ClassVar[bool] = True
    label_spaces: ClassVar[tuple[str, ...]] = ("fss",)
    episodic_training: ClassVar[bool] = True

    def __init__(self, learner: PFENetMetaLearner | None = None, rounds: int = ROUNDS, lr: float = FT_LR,
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
        if learner is not None and not isinstance(learner, PFENetMetaLearner):
            raise TypeError(f"EFTNet wraps a PFENetMetaLearner (pfenet-meta), got {type(learner).__name__}")
        self.learner = learner
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

    def _learner_for(self, task: Task) -> PFENetMetaLearner:
        if self.learner is None:  # contract tests: an untrained small learner on the task's own levels
            self.learner = PFENetMetaLearner(reduce_dim=8, bins=(1.0,))  # single-level tasks: the fallback path
        self.learner.build_for(task)
        return self.learner

    @torch.no_grad()
    def _units(self, tasks: Sequence[Task]) -> _Units:
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
        if self.reads_query_labels and labels is None:
            raise ValueError(f"EFTNet(selection={self.selection!r}, s2q_query_mask={self.s2q_query_mask!r}) reads "
                             "the query labels; evaluate it with an evaluator that passes task.query_labels")
        return _Units(**{k: torch.stack(v) for k, v in rows.items()}, labels=labels, path=path, size=tasks[0].size)

    @torch.no_grad()
    def _pseudo_priors(self, u: _Units, q_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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

    # ---- one round, for one unit, given callables (shared by the loop and the vmapped path) ------------------------

    def _round_inputs(self, protos, pseudo, prior_real, prior_ss, prior_pq, prior_ps, use_pseudo: bool):
        """Prototype and prior of the query forward and of the S2Q forwards of one unit (no unit axis).

        Args:
            protos: ``[K, c]`` per-shot prototypes; pseudo: ``[1, c]`` the pseudo support's prototype;
            prior_real ``[1, 1, h, w]``; prior_ss ``[K, K, h, w]`` (support i as query vs shot j); prior_pq
            ``[1, 1, h, w]`` (query vs pseudo support); prior_ps ``[K, 1, h, w]`` (support i vs pseudo support).

        Returns:
            ``(query_proto [1, c], query_prior [1, 1, h, w], s2q_proto [K, c], s2q_prior [K, 1, h, w])``.
        """
        k = protos.shape[0]
        real = protos.mean(0, keepdim=True)
        if use_pseudo:
            qp, qprior = mix(real, pseudo, self.mix_weight), mix(prior_real, prior_pq, self.mix_weight)
        else:
            qp, qprior = real, prior_real
        # S2Q: support i is the query; shot i is replaced by the pseudo support; mixed with support i itself
        eye = torch.eye(k, dtype=protos.dtype, device=protos.device)
        swapped = (protos[None] * (1 - eye)[..., None] + eye[..., None] * pseudo[None]).mean(1)   # [K, c]
        s_proto = mix(swapped, protos, self.mix_weight)
        own = prior_ss.diagonal(dim1=0, dim2=1).permute(2, 0, 1)[:, None]                         # [K, 1, h, w]
        swapped_prior = (prior_ss * (1 - eye)[..., None, None]
                         + eye[..., None, None] * prior_ps[:, :1]).mean(1, keepdim=True)          # [K, 1, h, w]
        return qp, qprior, s_proto, mix(swapped_prior, own, self.mix_weight)

    # ---- the two paths ---------------------------------------------------------------------------------------------

    def _run(self, u: _Units, batched: bool):
        """All rounds for the stacked units. Returns (logits [R+1, U, 2, H, W], pseudo labels [R, U, H, W],
        pseudo masks [R, U, H, W], support IoUs [R+1, U])."""
        net = self.learner.network
        n, size = u.fq.shape[0], u.size
        call = _Call(net).eval()
        base = {k: v.detach() for k, v in call.named_parameters()}
        if batched:
            from torch.func import functional_call, vmap
            params = {k: v.clone()[None].repeat(n, *([1] * v.dim())).requires_grad_(True) for k, v in base.items()}

            def run_all(kind_q, *args):  # vmapped over units
                return vmap(lambda p, *a: functional_call(call, p, (kind_q, *a)))(params, *args)
            copies = [params]
        else:
            nets = [copy.deepcopy(call).requires_grad_(True) for _ in range(n)]  # a deep copy per query
            copies = [dict(m.named_parameters()) for m in nets]

            def run_all(kind_q, *args):
                outs = [m(kind_q, *(a[i] for a in args)) for i, m in enumerate(nets)]
                if isinstance(outs[0], tuple):
                    return (torch.stack([o[0] for o in outs]), [torch.stack([o[1][j] for o in outs])
                                                                for j in range(len(outs[0][1]))])
                return torch.stack(outs)
        opts = [torch.optim.SGD(list(c.values()), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
                for c in copies]

        up = lambda z: F.interpolate(z, size=size, mode="bilinear", align_corners=True)  # noqa: E731
        k = u.fs.shape[1]

        def inputs(q_mask, prior_pq, prior_ps, use_pseudo):
            protos = run_all("proto", u.fs, u.s_masks)             # [U, K, c]
            pseudo = run_all("proto", u.fq, q_mask[:, None])       # [U, 1, c]
            parts = [self._round_inputs(protos[i], pseudo[i], u.prior_real[i], u.prior_ss[i], prior_pq[i],
                                        prior_ps[i], use_pseudo) for i in range(n)]
            return [torch.stack([p[j] for p in parts]) for j in range(4)]

        def query_forward(q_mask, prior_pq, prior_ps, use_pseudo):
            """The query's logits [U, 2, h, w] and aux logits (with gradients when enabled)."""
            qp, qprior, _, _ = inputs(q_mask, prior_pq, prior_ps, use_pseudo)
            logits, aux = run_all("fem", u.fq, qp, qprior)
            return logits[:, 0], [a[:, 0] for a in aux]

        @torch.no_grad()
        def s2q_forward(q_mask, prior_pq, prior_ps):
            """Each support image segmented with the pseudo support (logits [U, K, 2, h, w])."""
            _, _, sp, sprior = inputs(q_mask, prior_pq, prior_ps, True)
            return run_all("fem", u.fs, sp, sprior)[0]

        zeros_q = torch.zeros(n, *size, device=u.fq.device)
        no_prior = torch.zeros_like(u.prior_real)
        with torch.no_grad():
            logits0, _ = query_forward(zeros_q, no_prior, no_prior.expand(-1, k, -1, -1, -1), False)
        all_logits = [up(logits0.detach())]
        pseudo_labels, pseudo_masks = [], []
        s_ious = [torch.full((n,), float("nan"))]
        for step in range(self.rounds):
            prev = all_logits[-1]
            label = prev.max(1).indices.masked_fill(~u.valid, IGNORE_INDEX)
            q_mask = pseudo_mask(prev.softmax(1)[:, 1], self.keep)
            s2q_mask = u.labels.eq(1).float() if self.s2q_query_mask == "label" else q_mask
            pq, ps = self._pseudo_priors(u, q_mask)
            if s2q_mask is not q_mask:
                _, ps_s2q = self._pseudo_priors(u, s2q_mask)
            else:
                ps_s2q = ps
            for opt in opts:
                for g in opt.param_groups:
                    g["lr"] = poly_lr(self.lr, self.rounds, step, self.power)
            logits, aux = query_forward(q_mask, pq, ps, self.q2s)
            with torch.no_grad():
                s_logits = s2q_forward(s2q_mask, pq, ps_s2q)
                s_pred = up(s_logits.flatten(0, 1)).max(1).indices.view(n, k, *size)
                s_ious.append(binary_iou(s_pred, u.s_labels).mean(1).cpu())
            loss = unit_loss(logits, aux, label, self.meta_weight).sum()
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
                    fg_prob=logits[:, sl].softmax(2)[:, :, 1].to(torch.float16).cpu(),
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
        if self.batched:
            shapes = {(tuple(t.support().shape), tuple(t.query().shape), t.size) for t in tasks}
            if len(shapes) == 1:
                return self._solve(tasks, batched=True)
        return [self.fit(t).predict(t) for t in tasks]


__all__ = ["EFTNet", "EFTNetTrace", "pseudo_mask", "mix", "poly_lr", "select_round", "binary_iou", "query_iou",
           "unit_loss", "ROUNDS", "FT_LR", "SELECTIONS"]
