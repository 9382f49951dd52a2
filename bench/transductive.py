"""Benchmark: batched vs per-query transductive inference (DIaM and RePRI) on the same cached features.

Features are synthetic but of realistic size (default D=128 on a 24x24 grid, labels 185x185 as the stride-8
grid of a PSPNet; ``--dim 512 --grid 53`` gives the paper's 417 setting): every class has a feature direction,
each image holds random rectangles of a few classes, features = direction of the pixel's class + noise (novel
directions share the background's, as novel objects look like background to a base-trained model). The base
classifier is 0.25 x the background and base directions (a "trained" one), so DIaM has base knowledge to keep.

Measured in one run, on the same tensors:

* DIaM (B base + N novel classes, N*K supports, Q queries, official defaults: 100 SGD steps): all Q query tasks
  optimised at once (``fit``) vs one query at a time (``fit(batched=False)``);
* RePRI (E 1-shot episodes with one query each, official defaults: 49 steps): ``fit_predict_episodes`` on all E
  at once vs the per-task loop (``batched=False``).

It prints the speed-up (goal: at least 5x), the largest difference in the predicted probabilities, the fraction
of pixels whose predicted label differs, and the difference in mIoU (DIaM: base / novel / mean; RePRI: mIoU).
Ratios, not absolute times, are the result; no timing is asserted anywhere.

Reading the ratio: batching removes the per-step overhead of the loop (Python, autograd, kernel launches), not
arithmetic. DIaM's work per task (support logits for every task: S*h*w x D x (1+B+N) multiply-adds per step) is
the same either way, so on a CPU at realistic sizes DIaM is compute-bound and gains little (about 3x at D=128,
24x24; about 1.2x at D=512, 53x53 on one core); RePRI (2 classes) gains more. On a GPU the loop is launch-bound
and the batched form is where the time goes. On a shared machine, ``--threads 1`` gives stabler ratios (thread
over-subscription slows the multi-threaded batched run most).

Usage: ``python bench/transductive.py [--dim 128] [--grid 24] [--queries 20] [--episodes 50] [--device cpu|cuda]
[--threads N]``
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fss_lab, not an installed one
import torch.nn.functional as F

from fss_lab.methods.diam import DIaM
from fss_lab.methods.repri import RePRI
from fss_lab.methods.task import Task
from fss_lab.metrics import FSSMeter, GFSSMeter


def synthetic_images(n, classes_per_image, num_classes, dirs, grid, size, g, noise=1.0):
    """n label maps [n, H, W] (rectangles of the given classes on background 0) and features [n, D, h, w]."""
    labels = torch.zeros(n, grid, grid, dtype=torch.long)
    for i in range(n):
        for c in classes_per_image(i):
            y, x = torch.randint(0, grid // 2, (2,), generator=g).tolist()
            hh, ww = torch.randint(grid // 6, grid // 2, (2,), generator=g).tolist()
            labels[i, y:y + hh, x:x + ww] = c
    feats = dirs[labels].permute(0, 3, 1, 2) + noise * torch.randn(n, dirs.shape[1], grid, grid, generator=g)
    up = F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    return feats, up


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def compare(p_a, p_b):
    """(max |prob difference|, fraction of pixels with a different argmax) for probabilities [..., C, H, W]."""
    return float((p_a - p_b).abs().max()), float((p_a.argmax(-3) != p_b.argmax(-3)).float().mean())


def bench_diam(args, device, g):
    b, n, k, q = args.base, args.novel, args.shots, args.queries
    c = 1 + b + n
    dirs = torch.randn(c, args.dim, generator=g) * 8 / args.dim ** 0.5
    dirs[1 + b:] += dirs[0]  # novel objects look partly like background to the base model (as after base training)
    size = 8 * (args.grid - 1) + 1
    fs, ls = synthetic_images(n * k, lambda i: [1 + i % b, 1 + b + i // k], c, dirs, args.grid, size, g)
    fq, lq = synthetic_images(q, lambda i: [1 + (i + j) % b for j in range(2)] + [1 + b + i % n], c, dirs,
                              args.grid, size, g)
    fs, ls, fq, lq = fs.to(device), ls.to(device), fq.to(device), lq.to(device)
    base_w, base_b = 0.25 * dirs[:1 + b].to(device), torch.zeros(1 + b, device=device)  # the "trained" classifier
    def task(f):
        return Task.gfss(fs, ls, f, num_base=b, num_novel=n, shots=k, size=(size, size), level="bottleneck")

    task_all = task(fq)
    DIaM.from_weights(base_w, base_b, iterations=2).fit(task(fq[:2]))  # warm-up
    m_b, t_b = timed(lambda: DIaM.from_weights(base_w, base_b, snapshot_at=(0,)).fit(task_all), device)
    p_b = m_b.predict_proba(task_all)
    m_l, t_l = timed(lambda: DIaM.from_weights(base_w, base_b).fit(task_all, batched=False), device)
    p_l = m_l.predict_proba(task_all)
    scores = []
    for pred in (p_b.argmax(1), p_l.argmax(1), m_b.snapshot_predictions((size, size))[0]):
        meter = GFSSMeter(c, range(1, 1 + b), range(1 + b, c))
        meter.update(pred.cpu(), lq.cpu())
        scores.append(meter.scores())
    dprob, dpix = compare(p_b, p_l)
    dmiou = max(abs(scores[0][key] - scores[1][key]) for key in ("base_miou", "novel_miou", "mean"))
    print(f"DIaM  ({b} base + {n} novel, {k}-shot, Q={q}, D={args.dim}, {args.grid}x{args.grid} -> {size}x{size}, "
          f"100 steps)")
    print(f"  batched {t_b:7.2f} s | per-query loop {t_l:7.2f} s | speed-up {t_l / t_b:5.1f}x")
    print(f"  max |prob diff| {dprob:.2e} | differing pixels {dpix:.2e} | max mIoU diff {dmiou:.2e} "
          f"(base {scores[0]['base_miou']:.3f}, novel {scores[0]['novel_miou']:.3f}, mean {scores[0]['mean']:.3f}; "
          f"before inference: base {scores[2]['base_miou']:.3f}, novel {scores[2]['novel_miou']:.3f})")
    return t_l / t_b


def bench_repri(args, device, g):
    e = args.episodes
    dirs = torch.randn(2, args.dim, generator=g) * 8 / args.dim ** 0.5
    size = 8 * (args.grid - 1) + 1
    # each episode: its own foreground direction (class), 1 support + 1 query
    fs_l, ms_l, fq_l, mq_l = [], [], [], []
    for _ in range(e):
        dirs[1] = torch.randn(args.dim, generator=g) * 8 / args.dim ** 0.5
        fs, ms = synthetic_images(1, lambda i: [1], 2, dirs, args.grid, size, g, noise=args.repri_noise)
        fq, mq = synthetic_images(1, lambda i: [1], 2, dirs, args.grid, size, g, noise=args.repri_noise)
        fs_l.append(fs), ms_l.append(ms), fq_l.append(fq), mq_l.append(mq)
    fs, ms = torch.stack(fs_l).to(device), torch.stack(ms_l).to(device)
    fq, mq = torch.stack(fq_l).to(device), torch.stack(mq_l).to(device)
    tasks = [Task.fss(fs[i], ms[i], fq[i], (size, size)) for i in range(e)]
    RePRI(adapt_iter=2).fit_predict(tasks[:2])  # warm-up
    lp_b, t_b = timed(lambda: torch.stack(RePRI().fit_predict(tasks)), device)
    lp_l, t_l = timed(lambda: torch.stack(RePRI().fit_predict(tasks, batched=False)), device)
    p_b, p_l = lp_b.exp(), lp_l.exp()
    mious = []
    for p in (p_b, p_l):
        meter = FSSMeter(list(range(1, e + 1)))
        meter.update_batch(p.argmax(2).cpu(), mq.cpu(), list(range(1, e + 1)))
        mious.append(meter.miou())
    dprob, dpix = compare(p_b, p_l)
    print(f"RePRI ({e} episodes, 1-shot, 1 query each, D={args.dim}, {args.grid}x{args.grid} -> {size}x{size}, "
          "49 steps)")
    print(f"  batched {t_b:7.2f} s | per-task loop  {t_l:7.2f} s | speed-up {t_l / t_b:5.1f}x")
    print(f"  max |prob diff| {dprob:.2e} | differing pixels {dpix:.2e} | mIoU diff {abs(mious[0] - mious[1]):.2e} "
          f"(mIoU {mious[0]:.3f})")
    return t_l / t_b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=128, help="feature channels D")
    ap.add_argument("--grid", type=int, default=24, help="feature grid h = w (labels are 8 (h - 1) + 1)")
    ap.add_argument("--base", type=int, default=15)
    ap.add_argument("--novel", type=int, default=5)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--repri-noise", type=float, default=2.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    g = torch.Generator().manual_seed(args.seed)
    r_d = bench_diam(args, device, g)
    r_r = bench_repri(args, device, g)
    print(f"speed-up batched / looped: DIaM {r_d:.1f}x, RePRI {r_r:.1f}x (goal >= 5x)")


if __name__ == "__main__":
    main()
