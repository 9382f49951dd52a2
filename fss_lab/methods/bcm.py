"""BCM: the inductive GFSS method of Sakai et al., "A Surprisingly Simple Approach to Generalized Few-Shot Semantic
Segmentation" (NeurIPS 2024; official code IBM/BCM, ``src/bcm.py``). Nothing in the network is trained.

1. **Host mapping** (``Classifier.init_table``): the frozen base classifier's argmax on the support features (at
   feature resolution; masks down-sampled nearest) is counted on each novel class's support pixels; the ``top_k``
   most frequent bg/base classes become that novel class's *hosts* (background, index 0, is a legal host).
2. **One classifier per host** (``Classifier.train``): a multinomial logistic regression ``g_k`` (scikit-learn) on
   **every valid support pixel** (not only those the base model gives to ``k``), features ``x ** beta`` (post-ReLU
   bottleneck features; ``beta = 0.5`` released), labels ``0`` = "not one of k's novel classes", ``1..m`` = k's
   novel classes in ascending order. ``C`` is chosen by 5-fold stratified, unshuffled cross-validation on mean
   average precision over ``logspace(-5, 5, 10)``; the label-0 pixels of each training fold (and of the final refit)
   are sub-sampled to the second-largest class count (``sampling="bg"``).
3. **5-shot ensemble**: per host, one model per shot (trained on the i-th support image of every novel class) plus
   one on all shots; probabilities summed with weights 1 per shot and 5 for the all-shots model (official, K = 5),
   each class divided by the total weight of the models that saw it (not renormalised across classes).
4. **Prediction** (``Classifier.predict``): the base probabilities and each ``g_k``'s probabilities are up-sampled
   bilinearly (``align_corners=True``) to the label size; a pixel changes only where the up-sampled base argmax is a
   host ``k`` **and** ``g_k``'s argmax is a novel class. Base classes that host no novel class keep the base model's
   prediction bit for bit.

Inductive: ``g_k`` is fit once per support set; queries never affect it. Facts: ``../shared/reference/bcm.md``.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX
from ..ops import classifier_rows, resize_labels
from .base import Method, NotFittedError
from .registry import register_method
from .task import Task

#: The C grid of the official cross-validation: ``np.logspace(-5, 5, 10)``.
C_GRID = tuple(float(c) for c in np.logspace(-5, 5, 10))
#: Label-0 / class re-balancing schemes (official ``handle_imbalance``), plus ``"none"``.
SAMPLINGS = ("bg", "us", "os", "none")
#: The settings of the released run (``test.sh``), the defaults of :class:`BCM`.
RELEASED = {"beta": 0.5, "ensemble": True, "sampling": "bg", "top_k": 1}
#: The defaults of the official yaml configs (not what produced the README table): ``BCM(model, **YAML_DEFAULTS)``.
YAML_DEFAULTS = {"beta": 1.0, "ensemble": False, "sampling": "us", "top_k": 1}
#: C used when a support set is too small to cross-validate (fewer than 2 pixels of some class): sklearn's default.
FALLBACK_C = 1.0


def power_features(x: torch.Tensor, beta: float) -> torch.Tensor:
    """BCM's feature transform ``x ** beta`` (official ``preproc``), element-wise, no standardisation.

    Written as ``sign(x) |x| ** beta``: identical to ``x ** beta`` on the non-negative (post-ReLU) bottleneck features
    BCM reads, and finite on signed features, where the official square root gives NaN.
    """
    if beta == 1.0:
        return x
    return x.sign() * x.abs().pow(beta)


def host_mapping(base_pred: torch.Tensor, labels: torch.Tensor, novel_ids: Sequence[int], num_base_and_bg: int,
                 top_k: int = 1) -> tuple[torch.Tensor, dict[int, tuple[int, ...]], dict[int, tuple[int, ...]]]:
    """Map each novel class to its host base classes (official ``Classifier.init_table``).

    Args:
        base_pred: int64 ``[S, h, w]`` argmax of the frozen base classifier on the support features.
        labels: int64 ``[S, h, w]`` support labels at the same resolution (nearest; 255 ignore).
        novel_ids: the N novel labels, ascending.
        num_base_and_bg: ``1 + B`` (the base classifier's classes; 0 = background, a legal host).
        top_k: hosts kept per novel class (released: 1).

    Returns:
        ``(counts, hosts, table)``: counts int64 ``[N, 1 + B]`` (how often the base argmax lands on each class on the
        novel class's pixels), ``hosts = {novel id: host ids, most frequent first}`` (ties: lower id first; a novel
        class without a pixel gets no host) and ``table = {host id: its novel ids ascending}`` (hosts without a
        novel class dropped; several novel classes can share a host).

    Raises:
        ValueError: shapes that differ or ``top_k < 1``.
    """
    if base_pred.shape != labels.shape or top_k < 1:
        raise ValueError(f"base_pred {tuple(base_pred.shape)} and labels {tuple(labels.shape)} must match and top_k "
                         f">= 1 (got {top_k})")
    counts = torch.stack([torch.bincount(base_pred[labels == c].flatten().long(), minlength=num_base_and_bg)
                          for c in novel_ids]) if len(novel_ids) else torch.zeros(0, num_base_and_bg, dtype=torch.long)
    hosts: dict[int, tuple[int, ...]] = {}
    for row, c in zip(counts.tolist(), novel_ids):
        order = sorted(range(num_base_and_bg), key=lambda k: (-row[k], k))  # stable: count, then lower id
        hosts[int(c)] = tuple(k for k in order[:top_k] if row[k] > 0)
    table: dict[int, tuple[int, ...]] = {}
    for c, hs in hosts.items():
        for k in hs:
            table[k] = tuple(sorted(table.get(k, ()) + (c,)))
    return counts, hosts, dict(sorted(table.items()))


def rebalance(y: np.ndarray, sampling: str, rng: np.random.Generator) -> np.ndarray:
    """Indices of a re-balanced training set (official ``handle_imbalance``), in the original order.

    Args:
        y: int labels ``[P]`` (0 = not one of the host's novel classes).
        sampling: ``"bg"``: label-0 pixels sub-sampled without replacement to the second-largest class count
            (released); ``"us"``: every class sub-sampled to the smallest count among the non-zero labels (yaml
            default); ``"os"``: every class over- (with replacement) or sub-sampled to the largest non-zero-label
            count; ``"none"``: all pixels.
        rng: the random source.

    Returns:
        int64 ``[P']`` indices into ``y`` (sorted, so the pixel order is kept; ``"os"`` repeats indices).

    Raises:
        ValueError: an unknown ``sampling``.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    classes, counts = np.unique(y, return_counts=True)
    if sampling == "none" or len(classes) < 2:
        return np.arange(len(y))
    by = {int(c): np.flatnonzero(y == c) for c in classes}
    if sampling == "bg":
        target = int(np.sort(counts)[-2])
        idx = by.get(0, np.zeros(0, dtype=np.int64))
        if len(idx) > target:
            by[0] = rng.choice(idx, size=target, replace=False)
    else:
        nonzero = [int(n) for c, n in zip(classes, counts) if c != 0]
        if not nonzero:
            return np.arange(len(y))
        target = min(nonzero) if sampling == "us" else max(nonzero)
        for c, idx in by.items():
            if len(idx) != target:
                by[c] = rng.choice(idx, size=target, replace=len(idx) < target)
    return np.sort(np.concatenate(list(by.values()))).astype(np.int64)


def decision_probabilities(decision: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """BCM's "probabilities": ``softmax(decision_function)``. A binary model's ``[P]`` decisions ``d`` become
    ``softmax([-d, d])`` (= ``sigmoid(2 d)``, not sklearn's ``sigmoid(d)``; same argmax); ``[P, m]`` -> softmax."""
    if isinstance(decision, np.ndarray):
        d = decision if decision.ndim == 2 else np.stack([-decision, decision], 1)
        d = d - d.max(1, keepdims=True)
        e = np.exp(d)
        return e / e.sum(1, keepdims=True)
    d = decision if decision.dim() == 2 else torch.stack([-decision, decision], 1)
    return torch.softmax(d, dim=1)


def mean_average_precision(y: np.ndarray, proba: np.ndarray, classes: Sequence[int]) -> float:
    """Mean over the classes present in ``y`` of one-vs-rest average precision (official CV score).

    Args:
        y: int labels ``[P]``; proba: ``[P, len(classes)]`` scores, column j for label ``classes[j]``.
    """
    from sklearn.metrics import average_precision_score

    present = [j for j, c in enumerate(classes) if np.any(y == c)]
    if not present:
        return float("nan")
    return float(np.mean([average_precision_score(y == classes[j], proba[:, j]) for j in present]))


def _fit_lr(x: np.ndarray, y: np.ndarray, c: float, max_iter: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # official: silenced (large C rarely converges)
        return LogisticRegression(C=c, max_iter=max_iter).fit(x, y)


def _proba(model, x: np.ndarray) -> np.ndarray:
    return decision_probabilities(model.decision_function(x))


def select_c(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, *, grid: Sequence[float] = C_GRID,
             sampling: str = "bg", n_splits: int = 5, max_iter: int = 100) -> tuple[float, np.ndarray]:
    """Choose C by stratified, unshuffled K-fold cross-validation on mean average precision (official
    ``exLogisticRegressionCV.fit``): each training fold re-balanced (:func:`rebalance`), the validation fold not.

    Args:
        x: float ``[P, D]`` features (after the power); y: int labels ``[P]``.
        rng: the random source of the re-balancing.
        grid: the C values (official ``logspace(-5, 5, 10)``).
        n_splits: folds (official 5; reduced to the smallest class count when a class has fewer pixels).
        max_iter: lbfgs iterations (sklearn default 100).

    Returns:
        ``(C, scores)``: the C with the best mean score (first on ties), ``scores [len(grid)]`` (NaN where no fold
        could be scored). Fewer than 2 pixels in some class: ``(FALLBACK_C, all-NaN scores)``, no CV.
    """
    from sklearn.model_selection import StratifiedKFold

    classes, counts = np.unique(y, return_counts=True)
    splits = min(n_splits, int(counts.min()))
    scores = np.full(len(grid), np.nan)
    if len(classes) < 2 or splits < 2:
        return FALLBACK_C, scores
    folds = list(StratifiedKFold(n_splits=splits, shuffle=False).split(x, y))
    per_c = [[] for _ in grid]
    for train, val in folds:
        for i, c in enumerate(grid):
            keep = train[rebalance(y[train], sampling, rng)]
            if len(np.unique(y[keep])) < 2:
                continue
            model = _fit_lr(x[keep], y[keep], c, max_iter)
            per_c[i].append(mean_average_precision(y[val], _proba(model, x[val]), list(model.classes_)))
    for i, s in enumerate(per_c):
        s = [v for v in s if not np.isnan(v)]
        if s:
            scores[i] = float(np.mean(s))
    if np.all(np.isnan(scores)):
        return FALLBACK_C, scores
    return float(grid[int(np.nanargmax(scores))]), scores


@dataclass
class HostModel:
    """One fitted ``g_k`` (a member of a host's ensemble).

    Attributes:
        classes: the labels it saw (subset of ``0..m``), ascending; weight: float32 ``[len(classes), D]`` (binary:
            ``[1, D]``); bias: ``[len(classes)]`` (binary: ``[1]``); C: the chosen C; cv_scores: ``[len(grid)]``;
        shots: the shot it was fit on (``None``: all shots).
    """

    classes: tuple[int, ...]
    weight: torch.Tensor
    bias: torch.Tensor
    C: float
    cv_scores: np.ndarray
    shots: int | None

    def proba(self, x: torch.Tensor, num_labels: int) -> torch.Tensor:
        """``softmax(decision)`` of pixels ``x [P, D]`` -> ``[P, num_labels]``; labels it never saw get 0."""
        d = x @ self.weight.to(x).T + self.bias.to(x)
        p = decision_probabilities(d[:, 0] if len(self.classes) == 2 else d)
        out = x.new_zeros(x.shape[0], num_labels)
        out[:, list(self.classes)] = p
        return out


def ensemble_probabilities(probas: Sequence[torch.Tensor], seen: Sequence[Sequence[int]],
                           weights: Sequence[float]) -> torch.Tensor:
    """The official ensemble: ``sum_j w_j p_j(c) / sum_{j: c seen by model j} w_j`` per class ``c`` (no
    renormalisation across classes afterwards).

    Args:
        probas: each ``[P, L]`` (0 for labels the model never saw); seen: the labels each model saw; weights: ``w_j``.

    Returns:
        ``[P, L]``; a label no model saw stays 0.
    """
    total = torch.zeros_like(probas[0])
    norm = torch.zeros(probas[0].shape[1], dtype=probas[0].dtype, device=probas[0].device)
    for p, s, w in zip(probas, seen, weights):
        total = total + w * p
        norm[list(s)] += w
    return total / norm.clamp_min(torch.finfo(norm.dtype).tiny)


def override(base_pred: torch.Tensor, host_preds: dict[int, torch.Tensor], table: dict[int, Sequence[int]]
             ) -> torch.Tensor:
    """BCM's prediction rule: where the base argmax is host ``k`` and ``g_k``'s argmax ``j`` is not 0, the pixel
    becomes ``table[k][j - 1]``; every other pixel keeps the base prediction.

    Args:
        base_pred: int64 ``[Q, H, W]`` up-sampled base argmax; host_preds: ``{k: int64 [Q, H, W]}`` argmax of the
            up-sampled ``g_k`` probabilities (``0..m``); table: ``{k: k's novel ids ascending}``.

    Returns:
        int64 ``[Q, H, W]``.
    """
    out = base_pred.clone()
    for k, g in host_preds.items():
        novel = torch.tensor([-1, *table[k]], dtype=out.dtype, device=out.device)
        change = (base_pred == k) & (g != 0)
        out[change] = novel[g[change]]
    return out


@register_method
class BCM(Method):
    """BCM (Sakai et al., NeurIPS 2024): per-host logistic regressions on the frozen base model's features.

    Args:
        model: the trained base model (``.classifier``: ``nn.Conv2d(D, 1 + B, 1)``) or that classifier (frozen).
        beta: the feature power ``x ** beta`` (released 0.5; yaml 1.0).
        ensemble: at K > 1, the per-shot + all-shots ensemble (released True; yaml False).
        sampling: re-balancing of the training pixels, one of :data:`SAMPLINGS` (released ``"bg"``; yaml ``"us"``).
        top_k: hosts per novel class (released 1).
        C_grid / cv_folds / max_iter: the cross-validation grid, folds and lbfgs iterations (official values).
        ensemble_weights: ``(per-shot weight, all-shots weight)``; default ``(1, K)``: the official
            ``[1, 1, 1, 1, 1, 5]`` at K = 5 (hard-coded there; other K generalised so that the all-shots model weighs
            as much as the per-shot models together).
        align_corners: of the bilinear up-sampling (official True).
        seed: numpy seed of the re-balancing, drawn afresh at each :meth:`fit` (official: numpy's global RNG seeded
            2023 once, its state carried across runs), so a fit does not depend on earlier ones.

    ``BCM(model, **YAML_DEFAULTS)`` gives the yaml defaults. After :meth:`fit`: ``counts [N, 1 + B]``, ``hosts``,
    ``table`` (:func:`host_mapping`), ``models = {host: [HostModel, ...]}`` (per-shot models first, all-shots last),
    ``fit_seconds``.

    The supports must be ordered class-major (the K shots of the first novel class, then the next class's: what
    :func:`fss_lab.data.gfss.gfss_runs` and the DIaM protocol produce) for the ensemble's i-th shot of each class.

    Raises:
        TypeError: no 1x1 classifier. ValueError: no base class, an unknown ``sampling``, ``top_k < 1``,
            ``beta <= 0``.
    """

    name: ClassVar[str] = "bcm"
    transductive: ClassVar[bool] = False
    feature_levels: ClassVar[tuple[str, ...]] = ("bottleneck",)
    label_spaces: ClassVar[tuple[str, ...]] = ("gfss",)
    support_base_pixels: ClassVar[str] = "background"

    def __init__(self, model, *, beta: float = 0.5, ensemble: bool = True, sampling: str = "bg", top_k: int = 1,
                 C_grid: Sequence[float] = C_GRID, cv_folds: int = 5, max_iter: int = 100,
                 ensemble_weights: tuple[float, float] | None = None, align_corners: bool = True, seed: int = 2023):
        w, b = classifier_rows(model)
        if w.shape[0] < 2:
            raise ValueError(f"BCM needs a base classifier with >= 1 base class, got 1+B={w.shape[0]}")
        if sampling not in SAMPLINGS or top_k < 1 or beta <= 0:
            raise ValueError(f"sampling must be one of {SAMPLINGS} (got {sampling!r}), top_k >= 1 (got {top_k}), "
                             f"beta > 0 (got {beta})")
        self.base_weight, self.base_bias = w, torch.zeros(w.shape[0]) if b is None else b
        self.beta, self.ensemble, self.sampling, self.top_k = float(beta), bool(ensemble), sampling, int(top_k)
        self.C_grid, self.cv_folds, self.max_iter = tuple(float(c) for c in C_grid), int(cv_folds), int(max_iter)
        self.ensemble_weights, self.align_corners, self.seed = ensemble_weights, align_corners, int(seed)
        self.models: dict[int, list[HostModel]] | None = None
        self.counts = None
        self.hosts: dict[int, tuple[int, ...]] = {}
        self.table: dict[int, tuple[int, ...]] = {}
        self.fit_seconds = 0.0

    @property
    def num_base_and_bg(self) -> int:
        """``1 + B``."""
        return self.base_weight.shape[0]

    def base_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax of the frozen base classifier: features ``[S, D, h, w]`` -> ``[S, 1 + B, h, w]``."""
        w, b = self.base_weight.to(features), self.base_bias.to(features)
        return torch.softmax(torch.einsum("cd,sdhw->schw", w, features) + b[None, :, None, None], dim=1)

    # ---- fitting ---------------------------------------------------------------------------------------------

    def fit(self, task: Task) -> "BCM":
        """Map the novel classes to hosts and fit each host's classifier(s) on the task's support set.

        Support base pixels ``1..B`` count as label 0 (the DIaM protocol); 255 is left out.

        Raises:
            UnsupportedTaskError: a 1-way FSS task. ValueError: a B other than the classifier's, features of another
                width, or (with the ensemble at K > 1) ``S != N * K`` supports.
        """
        start = time.perf_counter()
        self.check_task(task)
        nb1, space = self.num_base_and_bg, task.label_space
        if space.num_base != nb1 - 1:
            raise ValueError(f"the task has B={space.num_base} base classes but the classifier has {nb1 - 1}; use the "
                             "base model of this fold")
        fs = task.support(self.features_of(task)).float()
        if fs.shape[1] != self.base_weight.shape[1]:
            raise ValueError(f"support features have D={fs.shape[1]}, the classifier {self.base_weight.shape[1]}")
        s, k_shots, n = fs.shape[0], task.shots, space.num_novel
        per_shot = self.ensemble and k_shots > 1
        if per_shot and s != n * k_shots:
            raise ValueError(f"the ensemble needs S = N * K = {n * k_shots} class-major supports, got {s}; pass "
                             "ensemble=False")
        lab = task.support_labels.to(fs.device).long()
        lab = lab.masked_fill((lab >= 1) & (lab < nb1), 0)  # base pixels -> "not novel"
        lab = resize_labels(lab, tuple(fs.shape[-2:]))  # nearest, official
        novel_ids = space.novel_ids
        for c in novel_ids:
            if not bool((lab == c).any()):
                warnings.warn(f"novel class {c} has no support pixel at the feature size {tuple(fs.shape[-2:])}; "
                              "BCM maps it to no host and never predicts it", stacklevel=2)
        base_pred = self.base_probabilities(fs).argmax(1)
        self.counts, self.hosts, self.table = host_mapping(base_pred.cpu(), lab.cpu(), novel_ids, nb1, self.top_k)
        x_all = power_features(fs, self.beta).permute(0, 2, 3, 1).reshape(-1, fs.shape[1]).double().cpu().numpy()
        lab_flat = lab.reshape(s, -1).cpu().numpy()
        rng = np.random.default_rng(self.seed)
        self.models = {}
        groups: list[tuple[int | None, np.ndarray]] = []
        if per_shot:
            groups += [(i, np.array([c * k_shots + i for c in range(n)])) for i in range(k_shots)]
        groups.append((None, np.arange(s)))
        hw = lab_flat.shape[1]
        for host, novel in self.table.items():
            relabel = np.zeros(256, dtype=np.int64)
            relabel[IGNORE_INDEX] = -1
            for j, c in enumerate(novel, 1):
                relabel[c] = j
            members = []
            for shot, images in groups:
                y = relabel[lab_flat[images].reshape(-1)]
                rows = (images[:, None] * hw + np.arange(hw)[None]).reshape(-1)  # novel class, shot, raster
                valid = y >= 0
                x, y = x_all[rows[valid]], y[valid]
                if len(np.unique(y)) < 2:
                    continue  # this shot shows none of the host's novel classes at feature resolution
                c, scores = select_c(x, y, rng, grid=self.C_grid, sampling=self.sampling, n_splits=self.cv_folds,
                                     max_iter=self.max_iter)
                keep = rebalance(y, self.sampling, rng)
                lr = _fit_lr(x[keep], y[keep], c, self.max_iter)
                members.append(HostModel(tuple(int(v) for v in lr.classes_),
                                         torch.from_numpy(lr.coef_).float(), torch.from_numpy(lr.intercept_).float(),
                                         c, scores, shot))
            self.models[host] = members
        self.shots = k_shots
        self.fit_seconds = time.perf_counter() - start
        return self

    # ---- prediction ------------------------------------------------------------------------------------------

    def _weights(self, members: Sequence[HostModel]) -> list[float]:
        per, full = self.ensemble_weights or (1.0, float(self.shots))
        return [full if m.shots is None else per for m in members]

    def host_probabilities(self, host: int, features: torch.Tensor) -> torch.Tensor:
        """``g_host``'s (ensemble) probabilities at feature resolution: features ``[Q, D, h, w]`` ->
        ``[Q, 1 + m, h, w]`` (label 0 = not one of the host's m novel classes).

        Raises:
            NotFittedError: called before :meth:`fit`; KeyError: not a host of the fitted task.
        """
        if self.models is None:
            raise NotFittedError("call fit(task) with the support set before predict()")
        q, d, h, w = features.shape
        x = power_features(features.float(), self.beta).permute(0, 2, 3, 1).reshape(-1, d)
        members, labels = self.models[host], 1 + len(self.table[host])
        if not members:
            p = x.new_zeros(x.shape[0], labels)
            p[:, 0] = 1
        else:
            p = ensemble_probabilities([m.proba(x, labels) for m in members], [m.classes for m in members],
                                       self._weights(members))
        return p.view(q, h, w, labels).permute(0, 3, 1, 2)

    def _up(self, p: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(p, size=size, mode="bilinear", align_corners=self.align_corners)

    def _predict_parts(self, task: Task):
        if self.models is None:
            raise NotFittedError("call fit(task) with the support set before predict()")
        fq = task.query(self.features_of(task)).float()
        base_p = self._up(self.base_probabilities(fq), task.size)
        base_pred = base_p.argmax(1)
        present = set(base_pred.unique().tolist())
        host_p = {k: self._up(self.host_probabilities(k, fq), task.size) for k in self.table if k in present}
        return base_p, base_pred, host_p

    def predict_labels(self, task: Task) -> torch.Tensor:
        """The official hard prediction, int64 ``[Q, H, W]`` (:func:`override` of the up-sampled argmaxes).

        Raises:
            NotFittedError: called before :meth:`fit`.
        """
        _, base_pred, host_p = self._predict_parts(task)
        return override(base_pred, {k: p.argmax(1) for k, p in host_p.items()}, self.table)

    def predict(self, task: Task) -> torch.Tensor:
        """Log-probabilities ``[Q, 1 + B + N, H, W]`` whose argmax is :meth:`predict_labels`' rule.

        Outside host regions (and in regions of hosts without a classifier) the up-sampled base probabilities;
        inside the region where the up-sampled base argmax is host ``k``, ``g_k``'s up-sampled probabilities over
        ``{k} U k's novel classes`` (the host channel holds label 0's) and 0 for every other class. Log clamped at
        the smallest normal float.

        Raises:
            NotFittedError: called before :meth:`fit`.
        """
        base_p, base_pred, host_p = self._predict_parts(task)
        q, _, hh, ww = base_p.shape
        out = torch.cat([base_p, base_p.new_zeros(q, task.label_space.num_novel, hh, ww)], 1)
        for k, g in host_p.items():
            region = (base_pred == k)[:, None]
            local = out.new_zeros(out.shape)
            local[:, k] = g[:, 0]
            local[:, list(self.table[k])] = g[:, 1:]
            out = torch.where(region, local, out)
        return torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))
