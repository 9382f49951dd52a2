"""Official-style baselines for the transductive bench: DIaM and RePRI written the way the official codes run them.

Written for this bench from ``/work/shared/reference/fss-methods.md`` section 7 (the official math) and the
official codes' structure, not from fss_lab: plain autograd, class-major logits from ``einsum``, every task
holding its own (expanded) copy of the support features, feature norms recomputed every step, ``torch.optim.SGD``.
Both take *many query tasks per call* (the official test loops' ``batch_size_val: 200``): ``*_loop`` calls them one
task at a time, ``*_batched`` once for all.

* DIaM: base weights copied, novel weights = L2-normalised masked mean of all support pixels, novel bias 0;
  ``L = 100 CE_s + KL(p_hat || pi) + H(Y|X) + 100 KD`` summed over tasks; support CE folds the base
  probabilities into background (background weight 0.01 at 1 shot, 0.15 otherwise), mean over valid pixels;
  ``log(1e-10 + p / (q + 1e-10))`` in the KLs, the current model first in KD; "self" prior from the initial
  model, re-estimated after iteration 10; probabilities up-sampled bilinearly (``align_corners=True``).
* RePRI: features L2-normalised; ``p_fg = sigmoid(20 cos(w, f) - b)``; the bias starts as the mean query score
  over all pixels; ``adapt_iter - 1`` steps of ``CE + (1/K) KL + (1/K) H`` (no epsilon on the KL numerator,
  exact means); the prior re-estimated and the KL weight increased by 1 after the 9th step; scores up-sampled
  before the sigmoid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-10


def _nearest(labels: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


# ---- DIaM ---------------------------------------------------------------------------------------------------------

def diam_official(base_w, base_b, fs, ls, fq, valid_q, num_novel, shots, size, iterations=100, lr=0.00125):
    """Official-style DIaM on ``T = len(fq)`` query tasks at once.

    Args:
        base_w ``[1+B, D]``, base_b ``[1+B]``; fs ``[S, D, h, w]``; ls int64 ``[S, H, W]`` (base pixels count as
        background); fq ``[T, D, h, w]``; valid_q bool ``[T, H, W]``; size ``(H, W)``.

    Returns:
        probabilities ``[T, C, H, W]``.
    """
    t, d, h, w = fq.shape
    b1 = base_w.shape[0]
    c = b1 + num_novel
    lab = ls.clone()
    lab[(lab >= 1) & (lab < b1)] = 0
    ys = _nearest(lab, (h, w))  # [S, h, w]
    vq = _nearest(valid_q.long(), (h, w)).float()[:, None]  # [T, 1, h, w]
    protos = []
    for k in range(b1, c):
        m = (ys == k).float()[:, None]
        v = (fs * m).sum((0, 2, 3)) / (m.sum() + EPS)
        protos.append(v / (v.norm() + EPS))
    fs_t = fs[None].expand(t, -1, -1, -1, -1)  # every task its own view of the supports [T, S, D, h, w]
    fq_t = fq[:, None]  # [T, 1, D, h, w]
    ys_t = ys[None].expand(t, -1, -1, -1)
    weight = torch.cat([base_w, torch.stack(protos)])[None].repeat(t, 1, 1).requires_grad_(True)  # [T, C, D]
    bias = torch.cat([base_b, torch.zeros(num_novel)])[None].repeat(t, 1).requires_grad_(True)

    def logits(f, wt, bt):  # class-major [T, M, C, h, w]
        return torch.einsum("tmdhw,tcd->tmchw", f, wt) + bt[:, None, :, None, None]

    def vmean(x, valid, dims):
        return (valid * x).sum(dims) / (valid.sum(dims) + EPS)

    with torch.no_grad():
        snap = torch.softmax(logits(fq_t, weight[:, :b1], bias[:, :b1]), 2)
        prior = vmean(torch.softmax(logits(fq_t, weight, bias), 2), vq[:, :, None], (1, 3, 4))
    cw = torch.ones(c)
    cw[0] = 0.01 if shots == 1 else 0.15
    one_hot = F.one_hot(ys_t.clamp_max(c - 1).masked_fill(ys_t == 255, 0), c).permute(0, 1, 4, 2, 3).float()
    valid_s = (ys_t != 255).float()
    opt = torch.optim.SGD([weight, bias], lr=lr)
    for it in range(iterations):
        p_s = torch.softmax(logits(fs_t, weight, bias), 2)
        p_s = torch.cat([p_s[:, :, :1] + p_s[:, :, 1:b1].sum(2, keepdim=True), torch.zeros_like(p_s[:, :, 1:b1]),
                         p_s[:, :, b1:]], 2)
        ce = -(cw[None, None, :, None, None] * one_hot * torch.log(p_s + EPS)).sum(2)
        ce = (valid_s * ce).sum((1, 2, 3)) / (valid_s.sum((1, 2, 3)) + EPS)
        p_q = torch.softmax(logits(fq_t, weight, bias), 2)
        marg = vmean(p_q, vq[:, :, None], (1, 3, 4))
        kl = (marg * torch.log(EPS + marg / (prior + EPS))).sum(1)
        ent = vmean(-(p_q * torch.log(p_q + EPS)).sum(2), vq, (1, 2, 3))
        old = torch.cat([p_q[:, :, :1] + p_q[:, :, b1:].sum(2, keepdim=True), p_q[:, :, 1:b1]], 2)
        kd = vmean((old * torch.log(EPS + old / (EPS + snap))).sum(2), vq, (1, 2, 3))
        loss = 100 * ce + kl + ent + 100 * kd
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        if it + 1 == 10:
            with torch.no_grad():
                prior = vmean(torch.softmax(logits(fq_t, weight, bias), 2), vq[:, :, None], (1, 3, 4))
    with torch.no_grad():
        p = torch.softmax(logits(fq_t, weight, bias), 2)[:, 0]
        return F.interpolate(p, size=size, mode="bilinear", align_corners=True)


def diam_loop(*args, **kwargs):
    """One query task per call (the per-query loop)."""
    base_w, base_b, fs, ls, fq, valid_q = args[:6]
    return torch.cat([diam_official(base_w, base_b, fs, ls, fq[i:i + 1], valid_q[i:i + 1], *args[6:], **kwargs)
                      for i in range(fq.shape[0])])


# ---- RePRI --------------------------------------------------------------------------------------------------------

def repri_official(fs, ms, fq, valid_q, size, adapt_iter=50, lr=0.025, temperature=20.0, update_at=10):
    """Official-style RePRI on E one-query episodes at once: fs ``[E, K, D, h, w]``, ms ``[E, K, H, W]`` (0/1/255),
    fq ``[E, 1, D, h, w]``, valid_q bool ``[E, 1, H, W]`` -> foreground probabilities ``[E, 1, H, W]``."""
    e, k, d, h, w = fs.shape
    fs, fq = F.normalize(fs, dim=2), F.normalize(fq, dim=2)
    ys = _nearest(ms.flatten(0, 1), (h, w)).view(e, k, h, w)
    vq = _nearest(valid_q.flatten(0, 1).long(), (h, w)).view(e, 1, h, w).float()
    fg = (ys == 1).float()[:, :, None]
    proto = ((fs * fg).sum((1, 3, 4)) / (fg.sum((1, 3, 4)) + EPS))[:, None]  # [E, 1, D]

    def scores(f, wt):  # [E, M, h, w]
        dot = torch.einsum("emdhw,eqd->emhw", f, wt)
        return temperature * dot / (wt.norm(dim=2)[:, :, None, None] * f.norm(dim=2) + EPS)

    def probs(s, b):
        p = torch.sigmoid(s - b[:, :, None, None])
        return torch.stack([1 - p, p], 2)  # [E, M, 2, h, w]

    bias = scores(fq, proto).mean((1, 2, 3))[:, None].detach()
    with torch.no_grad():
        pq = probs(scores(fq, proto), bias)
        prior = (pq * vq[:, :, None]).sum((1, 3, 4)) / vq.sum((1, 2, 3))[:, None]
    proto.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.SGD([proto, bias], lr=lr)
    one_hot = F.one_hot(ys.masked_fill(ys == 255, 0), 2).permute(0, 1, 4, 2, 3).float()
    valid_s = (ys != 255).float()
    l_kl = l_h = 1 / k
    for i in range(1, adapt_iter):
        ps = probs(scores(fs, proto), bias)
        ce = -(one_hot * torch.log(ps + EPS)).sum(2)
        ce = (valid_s * ce).sum((1, 2, 3)) / valid_s.sum((1, 2, 3))
        pq = probs(scores(fq, proto), bias)
        marg = (pq * vq[:, :, None]).sum((1, 3, 4)) / vq.sum((1, 2, 3))[:, None]
        kl = (marg * torch.log(marg / (prior + EPS))).sum(1)
        ent = (-(pq * torch.log(pq + EPS)).sum(2) * vq).sum((1, 2, 3)) / vq.sum((1, 2, 3))
        loss = ce + l_kl * kl + l_h * ent
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        if i + 1 == update_at:
            with torch.no_grad():
                pq = probs(scores(fq, proto), bias)
                prior = (pq * vq[:, :, None]).sum((1, 3, 4)) / vq.sum((1, 2, 3))[:, None]
            l_kl += 1
    with torch.no_grad():
        s = F.interpolate(scores(fq, proto), size=size, mode="bilinear", align_corners=True)
        return torch.sigmoid(s - bias[:, :, None, None])


def repri_loop(fs, ms, fq, valid_q, size, **kwargs):
    """One episode per call."""
    return torch.cat([repri_official(fs[i:i + 1], ms[i:i + 1], fq[i:i + 1], valid_q[i:i + 1], size, **kwargs)
                      for i in range(fs.shape[0])])
