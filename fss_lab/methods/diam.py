"""DIaM: Distilled Information Maximization, the transductive GFSS inference of Hajimiri et al. (CVPR 2023,
"A Strong Baseline for Generalized Few-Shot Semantic Segmentation"; official code sinahmr/DIaM, src/classifier.py).

The trained base model's 1x1 classifier is extended with one prototype per novel class, then every query image
gets its own copy of the whole classifier (a *task*) and that copy is tuned on the frozen features by minimising

    L = 100 * CE_s + 1 * KL(p_hat || pi) + 1 * H(Y|X) + 100 * KD          (terms in fss_lab.losses.infomax)

with plain SGD. Here all tasks are optimised at once as one vectorised problem (parameters with a leading task
dimension); ``fit(..., batched=False)`` runs the same algorithm one query at a time (the reference loop).
"""
from __future__ import annotations

import warnings
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX
from ..losses import infomax as im
from ..ops import classifier_rows, masked_average_pooling, resize_labels
from .base import Method, NotFittedError
from .registry import register_method
from .task import Task

PRIORS = ("self", "uniform", "imglvl", "oracle")
TERMS = ("ce", "kl", "entropy", "kd", "loss")


def novel_prototypes(features: torch.Tensor, labels: torch.Tensor, class_ids: Sequence[int]) -> torch.Tensor:
    """DIaM's novel weights: the mean support feature of each class, each then L2-normalised.

    Args:
        features: float ``[S, D, h, w]``; labels: int64 ``[S, h, w]`` at feature resolution; class_ids: N labels.

    Returns:
        float ``[N, D]``: ``w_c = m_c / (||m_c|| + 1e-10)``, ``m_c = sum_x [y=c] f(x) / (sum_x [y=c] + 1e-10)``
        (zero for a class without a pixel).
    """
    masks = torch.stack([labels == c for c in class_ids], 1).to(features.dtype)  # [S, N, h, w]
    w = masked_average_pooling(features, masks, im.EPS, pool_shots=True)
    return w / (w.norm(dim=1, keepdim=True) + im.EPS)


def _support_probs(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities of the S support images under each task's classifier: features ``[D, S, h, w]``
    (channel first, shared by the tasks), weight ``[T, C, D]``, bias ``[T, C]`` -> ``[T, S, C, h, w]`` (a
    transposed view of a class-major tensor: one matmul for all tasks, softmax over a contiguous dim)."""
    (t, c, d), (_, s, h, w) = weight.shape, features.shape
    out = torch.addmm(bias.reshape(t * c, 1), weight.reshape(t * c, d), features.reshape(d, s * h * w))
    return torch.softmax(out.view(t, c, s, h, w), dim=1).transpose(1, 2)


def _query_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Logits of query image t under classifier copy t: features ``[T, D, h, w]`` -> ``[T, 1, C, h, w]``."""
    t, d, h, w = features.shape
    out = torch.einsum("tcd,tdp->tcp", weight, features.reshape(t, d, h * w)).view(t, 1, -1, h, w)  # p: pixel
    return out + bias[:, None, :, None, None]


@register_method
class DIaM(Method):
    """DIaM transductive inference for generalized FSS (background + B base + N novel classes).

    Args:
        model: the trained base model (``.classifier``: ``nn.Conv2d(D, 1 + B, 1)``) or that classifier; its weight
            and bias are copied (see :meth:`from_weights` for raw tensors).
        lr: SGD learning rate (no momentum). iterations: optimisation steps.
        weights: ``(CE_s, KL to prior, H(Y|X), KD)`` multipliers.
        prior: ``"self"`` (initial model's query marginal, re-estimated after each step listed in
            ``prior_update_at``), ``"uniform"`` (1/C), ``"imglvl"`` (self-estimate with the classes absent from the
            query's ground truth masked out; reads ``task.query_labels``) or ``"oracle"`` (true proportions at
            feature resolution; reads ``task.query_labels``; the official name is "upperbound").
        prior_update_at: step counts after which the "self" prior is re-estimated (official: after the 10th).
        fine_tune_base: tune the base weights and biases too (official); False keeps them fixed.
        snapshot_at: step counts (0 = before the first step) at which the query probabilities are stored in
            ``snapshots`` (feature resolution), for the notebook's slider.
        align_corners: of the bilinear up-sampling in :meth:`predict` (the official scoring uses True).
        task_chunk: optimise at most this many queries at once (memory bound; results do not depend on it). None:
            as many as keep the support logits of a chunk (``S*h*w x T x C`` floats, three such buffers live
            per step) under :attr:`LOGIT_BUDGET` bytes.

    The shot count K (the CE background weight: 0.01 at K = 1, 0.15 otherwise) and N come from the task.
    Defaults are the official ones (config/pascal.yaml). After :meth:`fit`: ``weight [T, C, D]``, ``bias [T, C]``,
    ``prior [T, C]`` (final), ``initial_prior``, ``history`` (``{"ce", "kl", "entropy", "kd", "loss"}`` ->
    ``[iterations, T]`` values before each step, and ``"marginal"`` -> ``[iterations, T, C]``), ``snapshots``
    (``{step: probabilities [T, C, h, w]}``, on the features' device).

    Raises:
        TypeError: no 1x1 classifier. ValueError: no base class, ``iterations < 0``, an unknown prior, or
            ``weights`` not of length 4.
    """

    name: ClassVar[str] = "diam"
    transductive: ClassVar[bool] = True
    feature_levels: ClassVar[tuple[str, ...]] = ("bottleneck",)
    label_spaces: ClassVar[tuple[str, ...]] = ("gfss",)
    LOGIT_BUDGET: ClassVar[int] = 256 * 2 ** 20  # bytes of support logits per chunk of tasks (task_chunk=None)

    def __init__(self, model, *, lr: float = 0.00125, iterations: int = 100,
                 weights: Sequence[float] = (100.0, 1.0, 1.0, 100.0), prior: str = "self",
                 prior_update_at: Sequence[int] = (10,), fine_tune_base: bool = True, snapshot_at: Sequence[int] = (),
                 align_corners: bool = True, task_chunk: int | None = None):
        w, b = classifier_rows(model)
        self._setup(w, torch.zeros(w.shape[0]) if b is None else b, lr=lr, iterations=iterations, weights=weights,
                    prior=prior, prior_update_at=prior_update_at, fine_tune_base=fine_tune_base,
                    snapshot_at=snapshot_at, align_corners=align_corners, task_chunk=task_chunk)

    @classmethod
    def from_weights(cls, base_weight: torch.Tensor, base_bias: torch.Tensor, **kwargs) -> "DIaM":
        """Build from raw classifier tensors: ``base_weight [1+B, D]`` (or ``[1+B, D, 1, 1]``), ``base_bias [1+B]``.

        Raises:
            ValueError: tensors of the wrong shape (names them).
        """
        obj = cls.__new__(cls)
        obj._setup(base_weight, base_bias, **kwargs)
        return obj

    def _setup(self, base_weight, base_bias, *, lr: float = 0.00125, iterations: int = 100,
               weights: Sequence[float] = (100.0, 1.0, 1.0, 100.0), prior: str = "self",
               prior_update_at: Sequence[int] = (10,), fine_tune_base: bool = True, snapshot_at: Sequence[int] = (),
               align_corners: bool = True, task_chunk: int | None = None) -> None:
        w = base_weight.detach()
        w = w.flatten(1) if w.dim() == 4 and w.shape[2:] == (1, 1) else w
        if w.dim() != 2 or base_bias.shape != (w.shape[0],):
            raise ValueError(f"base_weight must be [1+B, D] and base_bias [1+B], got {tuple(base_weight.shape)} "
                             f"and {tuple(base_bias.shape)}; pass classifier.weight and classifier.bias")
        if w.shape[0] < 2 or iterations < 0:
            raise ValueError(f"need >= 1 base class and iterations >= 0; got 1+B={w.shape[0]}, "
                             f"iterations={iterations}")
        if prior == "upperbound":
            prior = "oracle"
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if len(weights) != 4:
            raise ValueError(f"weights must be (CE, KL, H, KD), got {weights}")
        self.base_weight, self.base_bias = w.clone(), base_bias.detach().clone()
        self.num_novel, self.shots = 0, 0
        self.lr, self.iterations, self.weights = lr, int(iterations), tuple(float(x) for x in weights)
        self.prior_name, self.prior_update_at = prior, tuple(prior_update_at)
        self.fine_tune_base, self.snapshot_at = fine_tune_base, tuple(snapshot_at)
        self.align_corners, self.task_chunk = align_corners, task_chunk
        self.weight = self.bias = self.prior = self.initial_prior = None
        self._fitted_queries: torch.Size | None = None
        self.history: dict[str, torch.Tensor] = {}
        self.snapshots: dict[int, torch.Tensor] = {}

    @property
    def reads_query_labels(self) -> bool:
        """The "imglvl" and "oracle" priors read the query's ground truth (upper bounds by design)."""
        return self.prior_name in ("imglvl", "oracle")

    @property
    def num_base_and_bg(self) -> int:
        """``1 + B``."""
        return self.base_weight.shape[0]

    @property
    def num_classes(self) -> int:
        """``C = 1 + B + N`` (N of the last fitted task)."""
        return self.num_base_and_bg + self.num_novel

    # ---- fitting ---------------------------------------------------------------------------------------------

    def fit(self, task: Task, *, batched: bool = True) -> "DIaM":
        """Initialise the classifier from the task's support set and run the transductive inference on its queries.

        The support labels' base pixels ``1..B`` count as background (the DIaM protocol); novel ``B+1..B+N``;
        255 ignore. ``task.query_valid`` gives the pixels of the query terms (official: ``label != 255``);
        ``task.query_labels`` is read only by the "imglvl" and "oracle" priors.

        Args:
            task: a GFSS task whose B matches the classifier's ``1 + B`` rows; ``S = N * K`` supports.
            batched: False runs the reference loop, one query at a time (same results, slower).

        Raises:
            UnsupportedTaskError: a 1-way FSS task. ValueError: mismatched shapes or B, labels outside
                ``0..C-1``/255, S != N*K, or a prior that needs ``query_labels`` without them.
        """
        self.check_task(task)
        if task.label_space.num_base != self.num_base_and_bg - 1:
            raise ValueError(f"the task has B={task.label_space.num_base} base classes but the classifier has "
                             f"{self.num_base_and_bg - 1}; use the base model of this fold")
        self.num_novel, self.shots = task.label_space.num_novel, task.shots
        level = self.features_of(task)
        return self._fit_arrays(task.support(level), task.support_labels, task.query(level), task.query_valid,
                                task.query_labels if self.reads_query_labels else None, batched)

    def _fit_arrays(self, fs: torch.Tensor, support_labels: torch.Tensor, fq: torch.Tensor,
                    query_valid: torch.Tensor | None, query_labels: torch.Tensor | None, batched: bool) -> "DIaM":
        d = self.base_weight.shape[1]
        if fs.dim() != 4 or fq.dim() != 4 or fq.shape[0] == 0 or fs.shape[1:] != fq.shape[1:] or fs.shape[1] != d:
            raise ValueError(f"support_features {tuple(fs.shape)} and query_features {tuple(fq.shape)} must be "
                             f"[S|Q, {self.base_weight.shape[1]}, h, w] with the classifier's D and the same h, w")
        if fs.shape[0] != self.num_novel * self.shots:
            raise ValueError(f"{fs.shape[0]} support images for {self.num_novel} novel classes is not "
                             f"task.shots={self.shots} per class (DIaM supports carry no base-class shots)")
        lab = support_labels.to(fs.device).long()
        lab = lab.masked_fill((lab >= 1) & (lab < self.num_base_and_bg), 0)  # base pixels -> background
        size = tuple(fs.shape[-2:])
        ds_s = resize_labels(lab, size)
        novel_ids = range(self.num_base_and_bg, self.num_classes)
        for c in novel_ids:
            if not bool((ds_s == c).any()):
                warnings.warn(f"novel class {c} has no support pixel at the feature size {size} (masks are "
                              "down-sampled nearest); its prototype is 0", stacklevel=3)
        w_novel = novel_prototypes(fs, ds_s, novel_ids)
        if self.reads_query_labels and query_labels is None:
            raise ValueError(f"prior={self.prior_name!r} needs task.query_labels [Q, H, W]")
        if query_valid is None:
            query_valid = (query_labels != IGNORE_INDEX) if query_labels is not None else torch.ones(
                fq.shape[0], *size, dtype=torch.bool, device=fq.device)
        valid_q = resize_labels(query_valid.to(fq.device).long(), size).unsqueeze(1)  # [Q, 1, h, w]
        ds_q = None if query_labels is None else resize_labels(query_labels.to(fq.device).long(), size)
        per_task = fs.shape[0] * size[0] * size[1] * self.num_classes * fs.element_size()
        auto = max(1, int(self.LOGIT_BUDGET // per_task))
        chunk = 1 if not batched else (self.task_chunk or min(fq.shape[0], auto))
        fs_t = fs.transpose(0, 1).contiguous()  # [D, S, h, w]: the support as one matrix for all tasks
        parts = [self._optimise(fs_t, ds_s[None], w_novel, fq[i:i + chunk], valid_q[i:i + chunk],
                                None if ds_q is None else ds_q[i:i + chunk, None])
                 for i in range(0, fq.shape[0], chunk)]
        self.weight, self.bias, self.prior, self.initial_prior = (torch.cat([p[k] for p in parts]) for k in range(4))
        self.history = {k: torch.cat([p[4][k] for p in parts], dim=1) for k in parts[0][4]}
        self.snapshots = {s: torch.cat([p[5][s] for p in parts]) for s in parts[0][5]}
        self._fitted_queries = fq.shape
        return self

    @torch.no_grad()  # value and gradient in closed form (losses.infomax fused helpers): no autograd graph
    def _optimise(self, fs, ds_s, w_novel, fq, valid_q, ds_q):
        """Run the inference for T = len(fq) tasks at once; returns (weight, bias, prior, initial prior, history,
        snapshots).

        Each SGD step (no momentum: ``theta -= lr * grad``, as ``torch.optim.SGD``) computes the loss and its
        gradient explicitly: support logits pixel-major ``[S*h*w, T*C]`` as one GEMM against all tasks' stacked
        weights (the support features are shared), the fused support cross-entropy, the query logits ``[T, h*w,
        C]`` (a batched GEMM), the fused query terms, then the weight gradients as one GEMM (support) and one
        batched GEMM (queries). ``fs``: ``[D, S, h, w]``; the values equal autograd's up to float rounding.
        """
        t, dev = fq.shape[0], fq.device
        b1, c, d = self.num_base_and_bg, self.num_classes, fq.shape[1]
        weight = torch.cat([self.base_weight.to(dev).expand(t, -1, -1), w_novel.expand(t, -1, -1)], 1).contiguous()
        bias = torch.cat([self.base_bias.to(dev).expand(t, -1), torch.zeros(t, self.num_novel, device=dev)], 1)
        l1, l2, l3, l4 = self.weights
        fs_pm = fs.flatten(1).t().contiguous()  # [P_s, D] support pixels, shared by the tasks
        fq_pm = fq.flatten(2).transpose(1, 2).contiguous()  # [T, P, D] each task's query pixels
        lab = ds_s.reshape(-1)
        fold = im.support_fold_mask(lab, c, b1)
        class_w = torch.ones(c, device=dev)
        class_w[0] = im.support_background_weight(self.shots)
        valid_s = (lab != IGNORE_INDEX).float()
        pixel_w = class_w[lab.masked_fill(lab == IGNORE_INDEX, 0)] * valid_s / (valid_s.sum() + im.EPS)
        vq = valid_q.reshape(t, -1).float()  # [T, P]

        def query_logits_pm(w, b):  # [T, P, C]
            return torch.baddbmm(b[:, None, :], fq_pm, w.transpose(1, 2))

        snap = torch.softmax(query_logits_pm(self.base_weight.to(dev).expand(t, -1, -1),
                                             self.base_bias.to(dev).expand(t, -1)), dim=2)
        true_pi = None if ds_q is None else im.valid_mean(im.one_hot(ds_q, c), valid_q.unsqueeze(2), (1, 3, 4))
        scale_t = (vq / (vq.sum(1, keepdim=True) + im.EPS)).unsqueeze(1)  # [T, 1, P], as in query_infomax_fused

        def estimate_prior(kind):  # DIaM compute_pi, on the pixel-major logits (the marginal's exact arithmetic)
            if kind == "oracle":
                return true_pi
            if kind == "uniform":
                return torch.full((t, c), 1 / c, device=dev)
            z = query_logits_pm(weight, bias)
            if kind == "imglvl":  # classes absent from the query's labels cannot be predicted
                z = z.masked_fill((true_pi == 0)[:, None, :], float("-inf"))
            return torch.bmm(scale_t, im._softmax_rows(z))[:, 0]

        prior = estimate_prior(self.prior_name)
        initial_prior = prior.clone()
        hist = {k: [] for k in (*TERMS, "marginal")}  # kept on the device; moved once at the end (no sync per step)
        snaps = {}
        for it in range(self.iterations + 1):
            if it in self.snapshot_at:
                snaps[it] = torch.softmax(_query_logits(fq, weight, bias), dim=2)[:, 0]
            if it == self.iterations:
                break
            z_s = torch.addmm(bias.reshape(1, t * c), fs_pm, weight.view(t * c, d).t())  # [P_s, T*C]
            ce, g_s = im.support_cross_entropy_fused(z_s.view(-1, t, c), fold, pixel_w)
            del z_s
            kl, ent, kd, marginal, _, g_q = im.query_infomax_fused(query_logits_pm(weight, bias), snap, vq, prior,
                                                                   b1, (l2, l3, l4))
            loss = l1 * ce + l2 * kl + l3 * ent + l4 * kd
            for k, v in zip((*TERMS, "marginal"), (ce, kl, ent, kd, loss, marginal)):
                hist[k].append(v)
            g_s = g_s.view(-1, t * c)
            grad_w = torch.mm(g_s.t(), fs_pm).view(t, c, d).mul_(l1)
            grad_w.add_(torch.bmm(g_q.transpose(1, 2), fq_pm))
            grad_b = g_s.sum(0).view(t, c).mul_(l1).add_(g_q.sum(1))
            del g_s, g_q
            if not self.fine_tune_base:
                grad_w[:, :b1] = 0
                grad_b[:, :b1] = 0
            weight.add_(grad_w, alpha=-self.lr)
            bias.add_(grad_b, alpha=-self.lr)
            if it + 1 in self.prior_update_at and self.prior_name == "self" and l2 != 0:
                prior = estimate_prior("self")
        empty = {k: torch.zeros(0, t, *([c] if k == "marginal" else [])) for k in hist}
        hist = {k: torch.stack(v).cpu() if v else empty[k] for k, v in hist.items()}
        return weight, bias, prior, initial_prior, hist, snaps

    # ---- prediction ------------------------------------------------------------------------------------------

    def predict_proba(self, task: Task) -> torch.Tensor:
        """Probabilities ``[Q, C, H, W]``: softmax at feature resolution, then bilinear up-sampling (official).

        The task's queries must be those given to :meth:`fit` (query q uses classifier copy q).

        Raises:
            NotFittedError: called before :meth:`fit`. ValueError: a different number or shape of queries.
        """
        if self.weight is None:
            raise NotFittedError("call fit(task) with the support set and these queries before predict()")
        fq = task.query(self.features_of(task))
        if fq.shape != self._fitted_queries:
            raise ValueError(f"DIaM tunes one classifier per query: predict() needs the queries given to fit() "
                             f"{tuple(self._fitted_queries)}, got {tuple(fq.shape)}")
        with torch.no_grad():
            p = torch.softmax(_query_logits(fq, self.weight, self.bias), dim=2)[:, 0]
        return F.interpolate(p, size=task.size, mode="bilinear", align_corners=self.align_corners)

    def predict(self, task: Task) -> torch.Tensor:
        """``log`` of :meth:`predict_proba` (clamped at the smallest normal float), ``[Q, 1+B+N, H, W]``.

        These are log-probabilities, not raw logits: the official prediction is the argmax of up-sampled
        *probabilities*, and ``log`` keeps that argmax while up-sampling logits would not.
        """
        p = self.predict_proba(task)
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))

    def snapshot_predictions(self, size: tuple[int, int]) -> dict[int, torch.Tensor]:
        """Predicted labels at each stored snapshot: ``{step: int64 [Q, H, W]}`` (same rule as :meth:`predict`)."""
        return {s: F.interpolate(p, size=size, mode="bilinear", align_corners=self.align_corners).argmax(1)
                for s, p in self.snapshots.items()}
