"""InfoMax terms of DIaM (Hajimiri et al., CVPR 2023) and RePRI (Boudiaf et al., CVPR 2021), as pure functions.

Both methods maximise the mutual information between query pixels X and their predicted labels Y,
``I(X; Y) = H(Y) - H(Y|X)``, with the marginal entropy ``H(Y)`` replaced by a KL divergence to a class prior
``pi`` (``KL(p_hat || pi) = -H(Y) + cross-entropy to pi``), plus a supervised cross-entropy on the support set
(and, in DIaM, a distillation term that keeps base-class predictions close to the trained model's).

Layout shared by every function (the official code's): a leading **task** dimension ``T`` (DIaM: one task per
query image; RePRI: one task per episode / query), then ``M`` images per task (the ``S`` support images, or the
single query image), ``C`` classes, and the feature grid ``h x w``:

* ``probs``: float ``[T, M, C, h, w]`` probabilities (softmax / sigmoid already applied);
* ``valid``: ``[T, M, h, w]`` or ``[1, M, h, w]`` (shared by all tasks), bool or 0/1 float; ignore pixels are 0;
* ``labels``: int64 ``[T or 1, M, h, w]`` at feature resolution, ``255`` = ignore;
* every term returns ``[T]`` (one value per task); the methods sum over tasks.

The epsilons and reductions are the official ones (fss-methods.md section 7). DIaM: every mean over pixels is
``sum(valid * x) / (sum(valid) + 1e-10)`` and every KL is ``p * log(1e-10 + p / (q + 1e-10))``. RePRI: means
divide by ``sum(valid)`` exactly, and its KL to the prior is ``p * log(p / (pi + 1e-10))`` (no epsilon on the
numerator). The ``binary_*`` wrappers apply RePRI's choices.
"""
from __future__ import annotations

import torch

from ..labels import IGNORE_INDEX

__all__ = [
    "EPS", "valid_mean", "one_hot", "support_background_weight", "fold_base_into_background",
    "fold_novel_into_background", "weighted_cross_entropy", "support_cross_entropy", "conditional_entropy",
    "class_marginal", "kl_to_prior", "distillation_kl", "binary_cross_entropy", "binary_conditional_entropy",
    "binary_marginal", "binary_kl_to_prior", "support_fold_mask", "support_cross_entropy_fused",
    "query_infomax_fused",
]

EPS = 1e-10  # the official epsilon (DIaM and RePRI)


def _check_probs(probs: torch.Tensor, name: str = "probs") -> None:
    if probs.dim() != 5:
        raise ValueError(f"{name} must be [T, M, C, h, w] probabilities, got shape {tuple(probs.shape)}")


def valid_mean(values: torch.Tensor, valid: torch.Tensor, dims: tuple[int, ...], eps: float = EPS) -> torch.Tensor:
    """Mean of ``values`` over ``dims`` counting only valid pixels: ``sum(valid * x) / (sum(valid) + eps)``.

    Args:
        values: float tensor; valid: tensor broadcastable to ``values`` (bool or 0/1).
        dims: dimensions reduced (in ``values``' numbering; ``valid`` must have the same number of dims).
        eps: added to the count (DIaM: 1e-10; RePRI: 0, i.e. an exact mean; a task without a valid pixel then
            gives NaN).

    Returns:
        ``values`` reduced over ``dims``.

    Raises:
        ValueError: ``eps == 0`` and a task has no valid pixel (RePRI's exact mean would be NaN = 0 / 0).
    """
    valid = valid.to(values.dtype)
    count = valid.sum(dim=dims)
    if eps:
        return (valid * values).sum(dim=dims) / (count + eps)
    if bool((count == 0).any()):
        empty = torch.nonzero(count.reshape(-1) == 0).flatten().tolist()
        raise ValueError(f"valid_mean with eps=0 (RePRI's exact mean): task(s) {empty[:8]} have no valid pixel, so "
                         "the mean is 0 / 0 = NaN; drop those tasks, or give them at least one non-ignored pixel")
    return (valid * values).sum(dim=dims) / count


def one_hot(labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """One-hot labels with ignore pixels mapped to class 0 (the losses mask them out with ``valid``).

    Args:
        labels: int64 ``[T, M, h, w]`` in ``0..num_classes-1`` or ``ignore_index``.

    Returns:
        float32 ``[T, M, C, h, w]``.

    Raises:
        ValueError: a label outside ``0..num_classes-1`` that is not ``ignore_index``.
    """
    lab = labels.long().masked_fill(labels == ignore_index, 0)
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
        bad = sorted(set(lab[(lab < 0) | (lab >= num_classes)].tolist()))
        raise ValueError(f"labels {bad} are outside 0..{num_classes - 1} (and not {ignore_index}); remap them")
    out = torch.zeros(*lab.shape[:2], num_classes, *lab.shape[2:], device=labels.device)
    return out.scatter_(2, lab.unsqueeze(2), 1.0)


def support_background_weight(shots: int) -> float:
    """DIaM's background weight in the support cross-entropy: 0.01 at 1 shot, 0.15 otherwise (DIaM
    ``src/util.py`` ``compute_wce``; novel classes weigh 1)."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    return 0.01 if shots == 1 else 0.15


def fold_base_into_background(probs: torch.Tensor, num_base_and_bg: int) -> torch.Tensor:
    """DIaM's support-side map: base probabilities are added to the background and zeroed.

    ``p'_0 = p_0 + sum_{b=1..B} p_b``, ``p'_b = 0``, ``p'_n = p_n`` (support labels carry base pixels as
    background, so the classifier is not asked to tell base classes apart on the support).

    Args:
        probs: ``[T, M, 1+B+N, h, w]``; num_base_and_bg: ``1 + B``.

    Returns:
        ``[T, M, 1+B+N, h, w]`` (a new tensor; gradients flow through it).
    """
    _check_probs(probs)
    b1 = num_base_and_bg
    bg = probs[:, :, :1] + probs[:, :, 1:b1].sum(dim=2, keepdim=True)
    return torch.cat([bg, torch.zeros_like(probs[:, :, 1:b1]), probs[:, :, b1:]], dim=2)


def fold_novel_into_background(probs: torch.Tensor, num_base_and_bg: int) -> torch.Tensor:
    """DIaM's new->old map (paper Eq. 11): novel probabilities are added to the background and dropped.

    ``pi_new2old(p) = [p_0 + sum_n p_{B+n}, p_1, ..., p_B]``.

    Args:
        probs: ``[T, M, 1+B+N, h, w]``; num_base_and_bg: ``1 + B``.

    Returns:
        ``[T, M, 1+B, h, w]``.
    """
    _check_probs(probs)
    b1 = num_base_and_bg
    bg = probs[:, :, :1] + probs[:, :, b1:].sum(dim=2, keepdim=True)
    return torch.cat([bg, probs[:, :, 1:b1]], dim=2)


def _label_probability(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p_y, y)``: the probability of each pixel's label ``[T, M, h, w]`` (ignore pixels read class 0)."""
    lab = labels.long().masked_fill(labels == IGNORE_INDEX, 0)
    index = lab.unsqueeze(2).expand(probs.shape[0], -1, 1, -1, -1)
    return probs.gather(2, index).squeeze(2), lab


def weighted_cross_entropy(
    probs: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None, *, mean_eps: float = EPS
) -> torch.Tensor:
    """Per-task cross-entropy ``-sum_c w_c y_c log(p_c + 1e-10)``, averaged over valid pixels.

    The average divides by the number of valid pixels (``labels != 255``), not by the sum of the weights. Only
    the label's class has ``y_c = 1``, so the sum is computed as ``-w_y log(p_y + 1e-10)`` (a gather; the same
    float value as the one-hot sum, without its ``C``-fold work).

    Args:
        probs: ``[T, M, C, h, w]`` probabilities; labels: int64 ``[T or 1, M, h, w]`` in ``0..C-1`` or 255.
        class_weights: float ``[C]`` or None (all 1).
        mean_eps: added to the valid-pixel count (DIaM 1e-10, RePRI 0).

    Returns:
        ``[T]``.

    Raises:
        RuntimeError: a label outside ``0..C-1`` that is not 255 (from ``torch.gather``).
    """
    _check_probs(probs)
    p_y, lab = _label_probability(probs, labels)
    ce = -torch.log(p_y + EPS)
    if class_weights is not None:
        ce = ce * class_weights.to(probs)[lab]
    return valid_mean(ce, labels != IGNORE_INDEX, (1, 2, 3), eps=mean_eps)


def support_cross_entropy(probs: torch.Tensor, labels: torch.Tensor, num_base_and_bg: int, shots: int) -> torch.Tensor:
    """DIaM's support term ``CE_s``: weighted cross-entropy on base-folded probabilities.

    ``CE_s = (1/|valid|) sum_x sum_c w_c y_c(x) (-log(p'_c(x) + 1e-10))`` with ``p'`` from
    :func:`fold_base_into_background`, ``w_0 = 0.01`` (1 shot) or ``0.15`` (more shots), ``w_c = 1`` otherwise.
    (Computed on the label's class only, ``p'_y = sum_c A[y, c] p_c`` with the 0/1 map ``A``: ``p'_0 = p_0 +
    sum_b p_b`` for background pixels, ``p_n`` for novel ones, and ``p'_b = 0`` for a pixel labelled with a base
    class, which the DIaM protocol never does; a masked sum, cheaper to differentiate than a gather.)

    Args:
        probs: ``[T, S, 1+B+N, h, w]`` support probabilities under each task's classifier.
        labels: int64 ``[T or 1, S, h, w]``: 0 background (base pixels included), novel ``B+1..B+N``, 255.
        num_base_and_bg: ``1 + B``; shots: K (picks the background weight).

    Returns:
        ``[T]``.

    Raises:
        IndexError: a label outside ``0..C-1`` that is not 255.
    """
    _check_probs(probs)
    c, b1 = probs.shape[2], num_base_and_bg
    fold = torch.eye(c, device=probs.device, dtype=probs.dtype)  # A[y, c]: which probabilities make p'_y
    fold[0, :b1] = 1.0
    fold[1:b1] = 0.0
    lab = labels.long().masked_fill(labels == IGNORE_INDEX, 0)
    p_y = (fold[lab].movedim(-1, 2) * probs).sum(dim=2)  # [T, S, h, w]
    weights = torch.ones(c, device=probs.device, dtype=probs.dtype)
    weights[0] = support_background_weight(shots)
    ce = -torch.log(p_y + EPS) * weights[lab]
    return valid_mean(ce, labels != IGNORE_INDEX, (1, 2, 3))


def conditional_entropy(probs: torch.Tensor, valid: torch.Tensor, *, mean_eps: float = EPS) -> torch.Tensor:
    """``H(Y|X) = mean over valid pixels of -sum_c p_c log(p_c + 1e-10)`` (InfoMax's conditional entropy).

    Args:
        probs: ``[T, M, C, h, w]``; valid: ``[T or 1, M, h, w]``; mean_eps: DIaM 1e-10, RePRI 0.

    Returns:
        ``[T]`` in nats.
    """
    _check_probs(probs)
    ent = -(probs * torch.log(probs + EPS)).sum(dim=2)
    return valid_mean(ent, valid, (1, 2, 3), eps=mean_eps)


def class_marginal(probs: torch.Tensor, valid: torch.Tensor, *, mean_eps: float = EPS) -> torch.Tensor:
    """``p_hat_c = mean over valid pixels of p_c``: the predicted class proportions of each task.

    Args:
        probs: ``[T, M, C, h, w]``; valid: ``[T or 1, M, h, w]``.

    Returns:
        ``[T, C]`` (rows sum to 1 when every task has a valid pixel).
    """
    _check_probs(probs)
    return valid_mean(probs, valid.unsqueeze(2), (1, 3, 4), eps=mean_eps)


def kl_to_prior(marginal: torch.Tensor, prior: torch.Tensor, *, numerator_eps: float = EPS) -> torch.Tensor:
    """``KL(p_hat || pi) = sum_c p_hat_c log(eps + p_hat_c / (pi_c + 1e-10))``: InfoMax's marginal term with the
    marginal entropy ``H(Y)`` replaced by a divergence to the prior ``pi`` (DIaM ``get_entropies``).

    With ``pi`` equal to the current marginal (DIaM's "self" prior at the start) the value is 0 up to float
    rounding (about 1e-10).

    Args:
        marginal: ``[T, C]``; prior: ``[T, C]`` (no gradient needed).
        numerator_eps: DIaM 1e-10; RePRI 0 (``log(p_hat / (pi + 1e-10))``; terms with ``p_hat_c = 0`` count as 0,
            the limit of ``x log x``, instead of NaN).

    Returns:
        ``[T]``.
    """
    ratio = marginal / (prior + EPS)
    if numerator_eps:
        return (marginal * torch.log(ratio + numerator_eps)).sum(dim=1)
    # RePRI's form has no epsilon: a saturated marginal (p_hat_c = 0, e.g. sigmoid of logits at scale 50+) gives
    # 0 * log(0) = NaN, with a NaN gradient. Use the limit 0 (and a 0 gradient) there; elsewhere the same values.
    positive = ratio > 0
    safe = torch.where(positive, ratio, torch.ones_like(ratio))
    return torch.where(positive, marginal * torch.log(safe), torch.zeros_like(ratio)).sum(dim=1)


def distillation_kl(
    probs: torch.Tensor, snapshot_probs: torch.Tensor, valid: torch.Tensor, num_base_and_bg: int
) -> torch.Tensor:
    """DIaM's knowledge distillation (paper Eq. 12): ``KL(pi_new2old(p) || q)`` per valid query pixel, averaged.

    The **current** model comes first: ``sum_k p~_k log(1e-10 + p~_k / (q_k + 1e-10))`` over background + base,
    where ``p~`` = :func:`fold_novel_into_background` of the current probabilities and ``q`` the frozen base
    classifier's softmax.

    Args:
        probs: ``[T, M, 1+B+N, h, w]`` current query probabilities.
        snapshot_probs: ``[T, M, 1+B, h, w]`` probabilities of the trained base classifier (constant).
        valid: ``[T or 1, M, h, w]``; num_base_and_bg: ``1 + B``.

    Returns:
        ``[T]``.

    Raises:
        ValueError: ``snapshot_probs`` does not have ``1 + B`` classes.
    """
    _check_probs(snapshot_probs, "snapshot_probs")
    if snapshot_probs.shape[2] != num_base_and_bg:
        raise ValueError(
            f"snapshot_probs has {snapshot_probs.shape[2]} classes but num_base_and_bg is {num_base_and_bg}"
        )
    p = fold_novel_into_background(probs, num_base_and_bg)
    kl = (p * torch.log(EPS + p / (EPS + snapshot_probs))).sum(dim=2)
    return valid_mean(kl, valid, (1, 2, 3))


# ---- RePRI's binary terms (C = 2: background, foreground) ----------------------------------------------------


def binary_cross_entropy(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """RePRI's support CE: unweighted, ``-sum_c y_c log(p_c + 1e-10)`` summed over valid pixels / their count.

    Args:
        probs: ``[T, K, 2, h, w]``; labels: int64 ``[T or 1, K, h, w]`` in {0, 1, 255}.

    Returns:
        ``[T]``.
    """
    return weighted_cross_entropy(probs, labels, None, mean_eps=0.0)


def binary_conditional_entropy(probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """RePRI's ``H(Y|X)`` on the query: :func:`conditional_entropy` with an exact mean.

    ``[T, Q, 2, h, w]`` -> ``[T]``."""
    return conditional_entropy(probs, valid, mean_eps=0.0)


def binary_marginal(probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """RePRI's foreground/background proportions ``p_hat``: ``[T, Q, 2, h, w]`` -> ``[T, 2]`` (exact mean)."""
    return class_marginal(probs, valid, mean_eps=0.0)


def binary_kl_to_prior(marginal: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """RePRI's ``KL(p_hat || pi) = sum_c p_hat_c log(p_hat_c / (pi_c + 1e-10))`` (no epsilon on the numerator).

    ``[T, 2]``, ``[T, 2]`` -> ``[T]``.
    """
    return kl_to_prior(marginal, prior, numerator_eps=0.0)


# ---- fused value-and-gradient forms (DIaM's inner step without autograd) --------------------------------------
# The same values as the functions above (float rounding aside: sums run in another order), laid out pixel-major
# (``[..., P, C]``: the class dimension contiguous, so softmax and the class sums read contiguous memory), each
# returning the term and its gradient with respect to the *logits*. DIaM's step uses them to skip autograd's
# saved tensors and the class-major transposes (bench/README.md has the profile).


def _softmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last (contiguous) dimension, computed on the 2-D ``[rows, C]`` view (about 2x faster on
    CPU than the same softmax on a 3-D tensor with a small C)."""
    return torch.softmax(logits.reshape(-1, logits.shape[-1]), dim=-1).view(logits.shape)


def support_fold_mask(labels: torch.Tensor, num_classes: int, num_base_and_bg: int) -> torch.Tensor:
    """The 0/1 rows ``A[y]`` of :func:`support_cross_entropy`'s fold map for each pixel: ``p'_y = sum_c A[y, c] p_c``.

    Args:
        labels: int64 ``[P]`` (0 background, novel ``B+1..``, 255 ignore: read as background, masked later).

    Returns:
        float32 ``[P, C]``.
    """
    fold = torch.eye(num_classes, device=labels.device)
    fold[0, :num_base_and_bg] = 1.0
    fold[1:num_base_and_bg] = 0.0
    return fold[labels.long().masked_fill(labels == IGNORE_INDEX, 0)]


def support_cross_entropy_fused(logits: torch.Tensor, fold_mask: torch.Tensor, pixel_weight: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`support_cross_entropy` and its gradient from pixel-major logits, in one pass.

    Args:
        logits: float ``[P, T, C]`` support logits of the T tasks (P = S*h*w pixels shared by the tasks).
        fold_mask: ``[P, C]`` from :func:`support_fold_mask`.
        pixel_weight: ``[P]``: ``w_y * valid / (count(valid) + 1e-10)`` (background 0.01 / 0.15, novel 1).

    Returns:
        ``(CE_s [T], dCE_s / dlogits [P, T, C])`` with
        ``dCE/dz_j = -pixel_weight * p_j (A[y, j] - p'_y) / (p'_y + 1e-10)``.
    """
    p = _softmax_rows(logits)
    mask = fold_mask[:, None, :]
    p_y = torch.einsum("ptc,pc->pt", p, fold_mask)  # [P, T]
    ce = -(torch.log(p_y + EPS) * pixel_weight[:, None]).sum(0)
    coef = (-pixel_weight[:, None] / (p_y + EPS)).unsqueeze(-1)  # [P, T, 1]
    grad = p.mul_(mask - p_y.unsqueeze(-1)).mul_(coef)
    return ce, grad


def query_infomax_fused(logits: torch.Tensor, snapshot_probs: torch.Tensor, valid: torch.Tensor,
                        prior: torch.Tensor, num_base_and_bg: int, weights: tuple[float, float, float]):
    """DIaM's query terms :func:`kl_to_prior` (of :func:`class_marginal`), :func:`conditional_entropy` and
    :func:`distillation_kl` and the gradient of their weighted sum, from pixel-major logits.

    Args:
        logits: float ``[T, P, C]`` query logits (one query image of P = h*w pixels per task).
        snapshot_probs: ``[T, P, 1+B]`` the frozen base classifier's softmax.
        valid: float 0/1 ``[T, P]``. prior: ``[T, C]``. weights: ``(KL, H, KD)`` multipliers.

    Returns:
        ``(kl [T], entropy [T], kd [T], marginal [T, C], probabilities [T, P, C], d(weighted sum)/dlogits)``.
    """
    l2, l3, l4 = weights
    b1 = num_base_and_bg
    p = _softmax_rows(logits)
    scale = (valid / (valid.sum(1, keepdim=True) + EPS)).unsqueeze(-1)  # [T, P, 1]: v / (count + eps)
    marginal = torch.bmm(scale.transpose(1, 2), p)[:, 0]  # [T, C]
    ratio = marginal / (prior + EPS)
    kl = (marginal * torch.log(ratio + EPS)).sum(1)
    dkl = torch.log(ratio + EPS) + ratio / (ratio + EPS)  # dKL / dmarginal
    logp = torch.log(p + EPS)
    ent = -(torch.bmm(scale.transpose(1, 2), p * logp)).sum((1, 2))
    g = (logp + p / (p + EPS)).mul_(-l3)  # dH / dp * (count / v)
    g.add_(dkl.unsqueeze(1), alpha=l2)
    folded = torch.cat([p[..., :1] + p[..., b1:].sum(-1, keepdim=True), p[..., 1:b1]], -1)  # [T, P, 1+B]
    s = folded / (EPS + snapshot_probs)
    log_s = torch.log(EPS + s)
    kd = torch.bmm(scale.transpose(1, 2), folded * log_s).sum((1, 2))
    dkd = (log_s + s / (EPS + s)).mul_(l4)
    g[..., :b1] += dkd
    g[..., b1:] += dkd[..., :1]
    g.mul_(scale)
    grad = p * (g - (p * g).sum(-1, keepdim=True))  # softmax backward
    return kl, ent, kd, marginal, p, grad
