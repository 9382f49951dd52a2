"""Background-shift-aware ("unbiased") losses for episode fine-tuning with binary support labels.

Source: Liu, Zhang & Lu, "Towards Generalized Few-shot Segmentation: On Contrastive Learning and Background
Information Modeling" (NYU capstone report, 2022): the reformulated cross-entropy (Eq. 4-5) and the distillation
with the background-shift mapping (Eq. 6-7), combined as ``L_FT = L_ce' + gamma * L_distil`` (Eq. 8). Both follow
MiB (Cermelli et al., CVPR 2020). The official code (hmdliu/GFSS-Capstone, ``src/model/utils.py``) fixes what the
report leaves open: the CE mean is class-weighted with weights ``[1, n_bg / n_fg]``, there is no epsilon in the log,
and the distillation is divided by the number of old classes and averaged over all pixels (ignore pixels included).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX


def binary_class_weights(target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Official class weights ``[1, n_bg / n_fg]`` for a binary target (counts over the whole tensor).

    Shape:
        target: int ``[...]`` with 0 (background), 1 (foreground) and ``ignore_index``.
        Returns: float32 ``[2]`` on ``target``'s device. ``[1, 1]`` when either class is absent (the official code
        would give an infinite or zero weight, hence NaN losses).
    """
    n_bg = (target == 0).sum()
    n_fg = (target == 1).sum()
    if int(n_bg) == 0 or int(n_fg) == 0:
        return torch.ones(2, device=target.device)
    return torch.stack([torch.ones((), device=target.device), n_bg.float() / n_fg.float()])


def binary_log_probs(logits: torch.Tensor, novel_index: int) -> torch.Tensor:
    """Log-probabilities of (background, novel) after folding all non-novel classes into background (Eq. 4).

    ``log p_fg = z_novel - LSE(z)`` and ``log p_bg = LSE(z_k, k != novel) - LSE(z)``: the exact logs of ``p_novel``
    and ``sum_{k != novel} p_k`` computed with log-sum-exp (same value as ``log(sum softmax)``, no underflow).

    Shape:
        logits: float ``[B, C, ...]`` (not probabilities). Returns: float ``[B, 2, ...]`` (0 = bg, 1 = novel).

    Raises:
        ValueError: ``novel_index`` is not a channel of ``logits``.
    """
    c = logits.shape[1]
    if not -c <= novel_index < c:
        raise ValueError(f"novel_index {novel_index} is not a channel of logits with {c} classes")
    novel_index %= c
    den = torch.logsumexp(logits, dim=1, keepdim=True)
    others = torch.cat([logits[:, :novel_index], logits[:, novel_index + 1 :]], dim=1)
    log_bg = torch.logsumexp(others, dim=1, keepdim=True) - den
    log_fg = logits[:, novel_index : novel_index + 1] - den
    return torch.cat([log_bg, log_fg], dim=1)


def reformulated_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    novel_index: int,
    class_weights: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Reformulated ("unbiased") cross-entropy L_ce' for binary support labels (report Eq. 4-5).

    ``q~(i, novel) = p_i[novel]``, ``q~(i, bg) = sum_{k != novel} p_i[k]``, and the loss is the class-weighted mean of
    ``-log q~(i, y_i)`` over non-ignored pixels: ``sum_i w_{y_i} (-log q~(i, y_i)) / sum_i w_{y_i}`` (PyTorch's
    weighted ``nll_loss`` mean, as the official code), with ``w = [1, n_bg / n_fg]`` counted on ``target``.

    Shape:
        logits: float ``[B, C, H, W]`` over all classes of the classifier (e.g. bg + base + novel), not probabilities.
        target: int ``[B, H, W]`` with 0 (background = everything but the novel class), 1 (novel), ``ignore_index``.
        class_weights: float ``[2]`` (bg, novel); default :func:`binary_class_weights` of ``target``.
        Returns: float scalar.

        A target without a non-ignored pixel gives 0 (with a gradient path), not PyTorch's NaN (0 / 0).

    Raises:
        ValueError: shapes disagree, ``target`` holds other values, ``novel_index`` is out of range, or ``logits``
            has a single channel (C = 1 leaves no class to fold into background: ``-log q~(bg) = inf``).
    """
    if logits.dim() >= 2 and logits.shape[1] < 2:
        raise ValueError(f"reformulated_ce needs logits with at least 2 channels (the novel class and the ones "
                         f"folded into background), got shape {tuple(logits.shape)}; with one class use a plain "
                         "binary cross-entropy")
    if logits.dim() < 2 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target must be logits' shape without the class axis, got {tuple(target.shape)} for "
                         f"logits {tuple(logits.shape)}")
    bad = (target != 0) & (target != 1) & (target != ignore_index)
    if bool(bad.any()):
        raise ValueError(f"reformulated_ce takes binary targets (0, 1, {ignore_index}); found "
                         f"{sorted(set(target[bad].tolist()))[:5]}; map the novel class to 1 and the rest to 0")
    if class_weights is None:
        class_weights = binary_class_weights(target, ignore_index)
    log_q = binary_log_probs(logits, novel_index)
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0  # nothing to supervise: 0, not nll_loss's 0 / 0
    return F.nll_loss(log_q, target.long(), weight=class_weights.to(log_q), ignore_index=ignore_index)


def background_shift_distillation(new_logits: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """Distillation with the background-shift mapping L_distil (report Eq. 6-7; MiB's unbiased distillation).

    Teacher ``q = softmax(old_logits)`` over the C_old classes (bg + base) of the frozen base classifier. Student
    log-probabilities ``log p~`` over the same C_old classes, from the new classifier's C_new = C_old + N outputs
    (novel classes last): ``log p~_k = z_k - LSE(z)`` for base classes ``k = 1..C_old-1`` and
    ``log p~_0 = LSE(z_0, z_novel...) - LSE(z)`` (background absorbs the novel classes, Eq. 7). Loss (official)::

        L = - mean over all pixels of (1 / C_old) * sum_k q_k log p~_k

    Shape:
        new_logits: float ``[B, C_old + N, ...]`` (N >= 1 novel channels last); old_logits: float ``[B, C_old, ...]``
        (not probabilities; gradients are not stopped here: pass a detached teacher).
        Returns: float scalar. All pixels count, ignore pixels included (official).

    Raises:
        ValueError: shapes disagree or ``new_logits`` has no extra channel.
    """
    c_old, c_new = old_logits.shape[1], new_logits.shape[1]
    if c_new <= c_old or old_logits.shape[:1] + old_logits.shape[2:] != new_logits.shape[:1] + new_logits.shape[2:]:
        raise ValueError(f"new_logits {tuple(new_logits.shape)} must be old_logits {tuple(old_logits.shape)} with "
                         "extra (novel) channels appended")
    den = torch.logsumexp(new_logits, dim=1, keepdim=True)
    bg_set = torch.cat([new_logits[:, :1], new_logits[:, c_old:]], dim=1)
    log_p = torch.cat([torch.logsumexp(bg_set, dim=1, keepdim=True), new_logits[:, 1:c_old]], dim=1) - den
    q = torch.softmax(old_logits, dim=1)
    return -(q * log_p).sum(1).mean() / c_old
