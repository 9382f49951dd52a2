"""RePRI: Region Proportion Regularized Inference (Boudiaf et al., CVPR 2021, "Few-Shot Segmentation Without
Meta-Learning: A Good Transductive Inference Is All You Need?"; official code mboudiaf/RePRI-for-Few-Shot-
Segmentation, src/classifier.py and src/test.py).

A binary classifier (one foreground prototype ``w`` and a scalar bias ``b``) on L2-normalised frozen features,
``p_fg(x) = sigmoid(20 * cos(w, f(x)) - b)``, tuned per query by SGD on

    L = CE_support + (1/K) * KL(p_hat_query || pi) + (1/K) * H(Y|X)_query

where ``pi`` is the foreground/background proportion the initial model predicts on the query, re-estimated once
(after the 9th step, when the KL weight also grows by 1). Every (episode, query) pair is one task with its own
``(w, b)``; all tasks run at once as one vectorised problem, equal to the per-task loop (a test checks it).
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

from ..labels import IGNORE_INDEX
from ..losses import infomax as im
from ..ops import resize_labels
from .base import Method, NotFittedError, check_fss_support, stack_tasks
from .registry import register_method
from .task import Task


def _nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return resize_labels(labels, size, "nearest")  # the official F.interpolate(mode="nearest")

TERMS = ("ce", "kl", "entropy", "loss")


def cosine_scores(features: torch.Tensor, prototypes: torch.Tensor, temperature: float, paired: bool) -> torch.Tensor:
    """``temperature * f.w / (||w|| ||f|| + 1e-10)`` (the official ``get_logits``).

    Args:
        features: ``[E, M, D, h, w]``; prototypes: ``[E, Q, D]`` (Q tasks per episode).
        paired: True when ``M == Q`` and image q belongs to task q only (the queries); False when every task
            of an episode sees all M images (the supports).

    Returns:
        ``[E, Q, M, h, w]`` scaled cosines (``M = 1`` when paired).
    """
    fnorm = features.norm(dim=2)  # [E, M, h, w]
    pnorm = prototypes.norm(dim=2)  # [E, Q]
    if paired:  # e: episode, q: query = task, d: channel
        dot = torch.einsum("eqdhw,eqd->eqhw", features, prototypes).unsqueeze(2)
        denom = (pnorm[:, :, None, None] * fnorm).unsqueeze(2)
    else:  # m: support image seen by every task q of episode e
        dot = torch.einsum("emdhw,eqd->eqmhw", features, prototypes)
        denom = pnorm[:, :, None, None, None] * fnorm[:, None]
    return temperature * (dot / (denom + im.EPS))


def binary_probs(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``[p_bg, p_fg]`` with ``p_fg = sigmoid(scores - b)``: scores ``[E, Q, M, h, w]``, bias ``[E, Q]`` ->
    ``[E, Q, M, 2, h, w]``."""
    fg = torch.sigmoid(scores - bias[:, :, None, None, None]).unsqueeze(3)
    return torch.cat([1 - fg, fg], dim=3)


@register_method
class RePRI(Method):
    """RePRI transductive inference for 1-way K-shot FSS.

    Args:
        temperature: multiplies the cosine before the bias is subtracted (20).
        lr: SGD learning rate (0.025). adapt_iter: the official loop count; it performs ``adapt_iter - 1``
            steps (49 for 50).
        weights: ``(CE, KL, H)``; ``"auto"`` = 1/K.
        prior: ``"soft"`` (the initial model's FB proportion on the query, updated as below) or ``"oracle"``
            (the true proportion; needs ``task.query_labels``; the paper's Oracle-RePRI used ``adapt_iter=300``,
            ``weights=(1, 1, 0.1)``, scripts/oracle.sh).
        prior_update_at: official ``FB_param_update``: after step ``u - 1`` the soft prior is re-estimated and
            the KL weight increases by 1 (``(10,)``: after the 9th step).
        normalize_features: L2-normalise the features over channels first (official ``norm_feat``).
        align_corners: of the bilinear up-sampling of the scores in :meth:`predict` (official: True).
        chunk_bytes: the batched form optimises episodes in chunks whose support + query features take at most
            this many bytes (at least one episode; 0: all at once). Results do not depend on it; it keeps the
            working set in the CPU caches (one 5-shot episode at D=512, 53x53 is 34 MB).

    After fitting: ``prototypes [E, Q, D]``, ``bias [E, Q]``, ``prior [E, Q, 2]``, ``num_steps`` and ``history``
    (``{"ce", "kl", "entropy", "loss"}`` -> ``[num_steps, E*Q]``, values before each step).
    """

    name: ClassVar[str] = "repri"
    transductive: ClassVar[bool] = True
    label_spaces: ClassVar[tuple[str, ...]] = ("fss",)

    def __init__(self, *, temperature: float = 20.0, lr: float = 0.025, adapt_iter: int = 50,
                 weights: Sequence[float | str] = (1.0, "auto", "auto"), prior: str = "soft",
                 prior_update_at: Sequence[int] = (10,), normalize_features: bool = True, align_corners: bool = True,
                 chunk_bytes: int = 16 * 2 ** 20):
        if prior not in ("soft", "oracle"):
            raise ValueError(f"prior must be 'soft' or 'oracle', got {prior!r}")
        bad = len(weights) != 3 or isinstance(weights[0], str)
        if bad or any(isinstance(x, str) and x != "auto" for x in weights[1:]):
            raise ValueError(f"weights must be (CE, KL, H) with numbers or 'auto' for KL and H, got {weights}")
        if adapt_iter < 1:
            raise ValueError(f"adapt_iter must be >= 1, got {adapt_iter}")
        self.temperature, self.lr, self.adapt_iter, self.weights = temperature, lr, int(adapt_iter), tuple(weights)
        self.prior_name, self.prior_update_at = prior, tuple(prior_update_at)
        self.normalize_features, self.align_corners = normalize_features, align_corners
        self.chunk_bytes = int(chunk_bytes)
        self.prototypes = self.bias = self.prior = None
        self.history: dict[str, torch.Tensor] = {}

    @property
    def num_steps(self) -> int:
        """Optimisation steps performed: ``adapt_iter - 1`` (official loop ``range(1, adapt_iter)``)."""
        return self.adapt_iter - 1

    @property
    def reads_query_labels(self) -> bool:
        """The oracle prior reads the query's true foreground proportion."""
        return self.prior_name == "oracle"

    def fit(self, task: Task, *, batched: bool = True) -> "RePRI":
        """Fit one 1-way task; each of its Q queries is its own sub-task with its own ``(w, b)``.

        Reads ``task.query_valid`` (official: ``label != 255``; padding and void are left out of the query terms;
        default every pixel) and, for ``prior="oracle"`` only, ``task.query_labels``.

        Args:
            task: a 1-way FSS task (support masks 0 / 1 / 255).
            batched: False loops over the queries one at a time (the reference; same results).

        Raises:
            UnsupportedTaskError: a GFSS task. ValueError: shapes that do not match, a support mask without
                foreground or with labels other than 0/1/255, a query without a valid pixel, ``prior="oracle"``
                without ``query_labels``.
        """
        self.check_task(task)
        check_fss_support(task)
        level = self.features_of(task)
        add = (lambda x: None if x is None else x[None])  # noqa: E731  one episode
        self._run(add(task.support(level)), add(task.support_labels), add(task.query(level)),
                  add(task.query_labels if self.reads_query_labels else None), add(task.query_valid), batched)
        return self

    def predict(self, task: Task) -> torch.Tensor:
        """``log [p_bg, p_fg]`` ``[Q, 2, H, W]`` for the queries given to :meth:`fit` (scores are up-sampled
        bilinearly, then the bias and the sigmoid are applied, as in the official code; log-probabilities keep
        the argmax of the official probabilities).

        Raises:
            NotFittedError: not fitted on one task. ValueError: not the number of queries given to fit.
        """
        if self.prototypes is None or self.prototypes.shape[0] != 1:
            raise NotFittedError("call fit(task) with a support set and these queries before predict()")
        return self._predict(task.query(self.features_of(task))[None], task.size)[0]

    def fit_predict(self, tasks, *, batched: bool = True):
        """Vectorised over E equal-sized tasks x Q queries (every (task, query) pair is its own sub-task); equal
        to the loop. ``batched=False`` runs one sub-task at a time (the reference loop)."""
        level = self.features_of(tasks[0])
        try:
            fs, ms, fq, vq = stack_tasks(tasks, level)
        except ValueError:
            return [self.fit(t, batched=batched).predict(t) for t in tasks]
        for t in tasks:
            self.check_task(t)
            check_fss_support(t)
        mq = torch.stack([t.query_labels for t in tasks]) if self.reads_query_labels else None
        self._run(fs, ms, fq, mq, vq, batched)
        return list(self._predict(fq, tasks[0].size).unbind(0))

    # ---- internals -------------------------------------------------------------------------------------------

    def _pixel_major(self, f: torch.Tensor) -> torch.Tensor:
        """``[E, M, D, h, w]`` -> ``[E, M, h, w, D]`` contiguous, L2-normalised over D when ``normalize_features``:
        every later norm and product reduces over the contiguous dimension (a strided reduction over D costs
        several times more on CPU)."""
        f = f.permute(0, 1, 3, 4, 2).contiguous()
        return F.normalize(f, dim=-1) if self.normalize_features else f

    def _predict(self, fq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(fq.shape[:2]) != tuple(self.prototypes.shape[:2]):
            raise ValueError(f"RePRI tunes one classifier per query: predict needs the (episodes, queries) = "
                             f"{tuple(self.prototypes.shape[:2])} given to fit, got {tuple(fq.shape[:2])}")
        with torch.no_grad():  # cosine_scores(fq, prototypes, paired=True) on the pixel-major layout
            f = self._pixel_major(fq)  # [E, Q, h, w, D]
            e, q, h, w, d = f.shape
            proto = self.prototypes.reshape(e, q, d)
            dot = torch.matmul(f.view(e, q, h * w, d), proto.unsqueeze(-1)).squeeze(-1)  # [E, Q, h*w]
            denom = proto.norm(dim=2, keepdim=True) * f.norm(dim=-1).view(e, q, h * w)
            s = (self.temperature * (dot / (denom + im.EPS))).view(e, q, 1, h, w)
            s = F.interpolate(s.view(e * q, 1, *s.shape[-2:]), size=size, mode="bilinear",
                              align_corners=self.align_corners).view(e, q, 1, *size)
            p = binary_probs(s, self.bias)[:, :, 0]
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))

    def _run(self, fs, ms, fq, mq, vq, batched):
        e, k, d, h, w = fs.shape
        if fq.dim() != 5 or fq.shape[0] != e or fq.shape[2:] != (d, h, w) or ms.shape[:2] != (e, k):
            raise ValueError(f"support features {tuple(fs.shape)}, masks {tuple(ms.shape)} and query features "
                             f"{tuple(fq.shape)} do not form [E, K, D, h, w], [E, K, H, W], [E, Q, D, h, w]")
        if self.prior_name == "oracle" and mq is None:
            raise ValueError("prior='oracle' needs task.query_labels [Q, H, W] (the true foreground proportion)")
        q = fq.shape[1]
        if vq is None:
            vq = (mq != IGNORE_INDEX) if mq is not None else torch.ones(e, q, h, w, dtype=torch.bool, device=fq.device)
        valid = _nearest(vq.flatten(0, 1).long().to(fq.device), (h, w)).view(e, q, 1, h, w)
        if bool((valid.sum(dim=(2, 3, 4)) == 0).any()):
            raise ValueError("a query has no valid pixel at the feature size; check task.query_valid")
        ds_s = _nearest(ms.flatten(0, 1).long().to(fs.device), (h, w)).view(e, k, h, w)
        ds_q = None if mq is None else _nearest(mq.flatten(0, 1).long().to(fq.device), (h, w))
        ds_q = None if ds_q is None else ds_q.view(e, q, 1, h, w)
        fs, fq = self._pixel_major(fs), self._pixel_major(fq)  # [E, K|Q, h, w, D]
        if batched:  # chunks of episodes whose features fit the cache budget (larger batches run slower on CPU)
            per_episode = (k + q) * d * h * w * fs.element_size()
            n = max(1, min(e, int(self.chunk_bytes // per_episode))) if self.chunk_bytes else e
            out = [self._optimise(fs[i:i + n], ds_s[i:i + n], fq[i:i + n], valid[i:i + n],
                                  None if ds_q is None else ds_q[i:i + n]) for i in range(0, e, n)]
        else:
            out = [self._optimise(fs[i:i + 1], ds_s[i:i + 1], fq[i:i + 1, j:j + 1], valid[i:i + 1, j:j + 1],
                                  None if ds_q is None else ds_q[i:i + 1, j:j + 1]) for i in range(e) for j in range(q)]
        self.prototypes, self.bias, self.prior = (torch.cat([o[j] for o in out]).view(e, q, *out[0][j].shape[2:])
                                                  for j in range(3))
        self.history = {t: torch.cat([o[3][t] for o in out], dim=1) for t in TERMS}

    @torch.enable_grad()  # callers may hold no_grad (evaluation loops); the inference needs gradients
    def _optimise(self, fs, ds_s, fq, valid, ds_q):
        """Tasks = the E x Q (episode, query) pairs of the inputs (features pixel-major ``[E, K|Q, h, w, D]``);
        returns prototypes, bias, prior [E*Q, ...] and the loss history."""
        e, q = fq.shape[:2]
        k, hw = fs.shape[1], fs.shape[2] * fs.shape[3]
        # constant through the steps: the pixel-major features and their norms (cosine_scores' arithmetic, each a
        # reduction over the contiguous D)
        fs_pm = fs.view(e, k * hw, -1)  # [E, K*h*w, D]
        fq_pm = fq.view(e, q, hw, -1)  # [E, Q, h*w, D]
        fg = (ds_s == 1).to(fs.dtype).view(e, 1, k * hw)  # [E, 1, K*h*w]
        proto = torch.bmm(fg, fs_pm)[:, 0] / (fg.sum(2) + im.EPS)  # [E, D]: MAP, all shots pooled
        proto = proto[:, None].expand(e, q, -1).clone()
        fs_norm = fs_pm.norm(dim=2).view(e, 1, k * hw)  # [E, 1, K*h*w]
        fq_norm = fq_pm.norm(dim=3)  # [E, Q, h*w]
        shape_s, shape_q = (e, q, k, *fs.shape[2:4]), (e, q, 1, *fq.shape[2:4])

        def support_scores():  # cosine_scores(fs, proto, paired=False): [E, Q, K, h, w]
            dot = torch.bmm(proto, fs_pm.transpose(1, 2))  # [E, Q, K*h*w]
            denom = proto.norm(dim=2, keepdim=True) * fs_norm
            return (self.temperature * (dot / (denom + im.EPS))).view(shape_s)

        def query_scores():  # cosine_scores(fq, proto, paired=True): [E, Q, 1, h, w]
            dot = torch.matmul(fq_pm, proto.unsqueeze(-1)).squeeze(-1)  # [E, Q, h*w]
            denom = proto.norm(dim=2, keepdim=True) * fq_norm
            return (self.temperature * (dot / (denom + im.EPS))).view(shape_q)

        bias = query_scores().mean(dim=(2, 3, 4)).detach()  # all pixels
        vq = valid.flatten(0, 1)  # [T, 1, h, w] with T = E*Q tasks
        lab_s = ds_s[:, None].expand(-1, q, -1, -1, -1).flatten(0, 1)  # [T, K, h, w]

        def query_probs():
            return binary_probs(query_scores(), bias).flatten(0, 1)

        with torch.no_grad():
            if self.prior_name == "oracle":
                prior = im.binary_marginal(im.one_hot(ds_q.flatten(0, 1), 2), vq)
            else:
                prior = im.binary_marginal(query_probs(), vq)
        shots = torch.full((e * q,), float(fs.shape[1]), device=fq.device)
        l1 = self.weights[0]
        l2, l3 = (1 / shots if x == "auto" else float(x) * torch.ones_like(shots) for x in self.weights[1:])
        proto.requires_grad_(True)
        bias.requires_grad_(True)
        optimizer = torch.optim.SGD([proto, bias], lr=self.lr)
        hist = {t: [] for t in TERMS}  # on the device; moved once at the end
        for step in range(self.num_steps):
            p_s = binary_probs(support_scores(), bias).flatten(0, 1)
            p_q = query_probs()
            kl = im.binary_kl_to_prior(im.binary_marginal(p_q, vq), prior)
            ent = im.binary_conditional_entropy(p_q, vq)
            ce = im.binary_cross_entropy(p_s, lab_s)
            loss = l1 * ce + l2 * kl + l3 * ent
            for t, v in zip(TERMS, (ce, kl, ent, loss)):
                hist[t].append(v.detach())
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
            # official: loop index i = step + 1; update when i + 1 is listed, i.e. after step number u - 1
            if step + 2 in self.prior_update_at and self.prior_name != "oracle" and float(l2.sum()) != 0:
                with torch.no_grad():
                    prior = im.binary_marginal(query_probs(), vq)
                l2 = l2 + 1
        hist = {t: torch.stack(v).cpu() if v else torch.zeros(0, e * q) for t, v in hist.items()}
        return proto.detach().flatten(0, 1)[:, None], bias.detach().flatten()[:, None], prior[:, None], hist
