"""Benchmark: DIaM and RePRI transductive inference against official-style baselines, at the CPU's matmul roof.

Measured in one run, on the same random post-ReLU features (B = 15 base + N = 5 novel classes for DIaM, 1-way
episodes for RePRI), interleaved (every repeat runs every variant once, in a rotated order) and repeated; the
numbers are **CPU-time medians** (``time.process_time``):

* ``official loop`` / ``official batched``: ``bench/official_style.py`` (written from fss-methods.md section 7:
  autograd, class-major einsum logits, per-task copies of the supports), one query task per call, or all of them
  in one call as the official test loops do with ``batch_size_val: 200``;
* ``fss_lab loop`` / ``fss_lab batched``: ``fit(task, batched=False)`` / ``fit(task)`` (DIaM) and
  ``fit_predict(tasks, batched=...)`` (RePRI);
* ``peak``: a 2048^3 fp32 matmul in the same run, same thread count; ``fraction of peak`` = the method's matmul
  FLOPs (forward logits and weight gradients, support and query) / its CPU time / peak.

Every variant's predictions are compared with the official loop's (max |dp|, goal <= 1e-5). With ``--scaling`` it
also prints the scaling table (time per query per step and peak memory for Q = 1, 4, 16, 64 and K = 1, 5, 10; each
cell in its own process so that its peak RSS is its own). Ratios, not absolute times, are the result; nothing is
asserted on time anywhere (tests check the predictions).

Threads: ``--threads`` (default 1: on a shared machine more threads than free cores spin and stall). The chosen
count is set before any work and printed; ``OMP_WAIT_POLICY=PASSIVE`` is set for child processes.

Usage: ``python bench/transductive.py [--dim 512] [--grid 53] [--queries 8] [--shots 1,5] [--iterations 100]
[--repeats 3] [--threads 1] [--scaling | --only-scaling] [--scaling-iterations 5] [--skip-official-loop]``
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fss_lab, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

import official_style as official  # noqa: E402
from fss_lab.methods.diam import DIaM  # noqa: E402
from fss_lab.methods.repri import RePRI  # noqa: E402
from fss_lab.methods.task import Task  # noqa: E402

B, N = 15, 5


def cpu_time(fn):
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def matmul_peak(n: int = 2048, repeats: int = 3) -> float:
    """fp32 GFLOP/s of an ``n x n x n`` matmul (median CPU time of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    return 2 * n ** 3 / 1e9 / median(cpu_time(lambda: torch.mm(a, b))[1] for _ in range(repeats))


def diam_inputs(dim, grid, shots, queries, seed=0):
    """Random post-ReLU features and rectangle labels: fs ``[N*K, D, h, w]``, ls ``[N*K, H, W]``, fq, valid, w, b."""
    g = torch.Generator().manual_seed(seed)
    size = 8 * (grid - 1) + 1
    fs = torch.relu(torch.randn(N * shots, dim, grid, grid, generator=g))
    fq = torch.relu(torch.randn(queries, dim, grid, grid, generator=g))
    ls = torch.randint(0, 1 + B, (N * shots, size, size), generator=g)
    for i in range(N * shots):
        y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
        ls[i, y:y + size // 3, x:x + size // 3] = 1 + B + i // shots
        ls[i, :4] = 255
    valid = torch.ones(queries, size, size, dtype=torch.bool)
    valid[:, -5:] = False
    base_w = 0.05 * torch.randn(1 + B, dim, generator=g)
    base_b = 0.1 * torch.randn(1 + B, generator=g)
    return fs, ls, fq, valid, base_w, base_b, (size, size)


def repri_inputs(dim, grid, shots, episodes, seed=1):
    """fs ``[E, K, D, h, w]``, ms ``[E, K, H, W]`` (0/1/255), fq ``[E, 1, D, h, w]``, valid ``[E, 1, H, W]``."""
    g = torch.Generator().manual_seed(seed)
    size = 8 * (grid - 1) + 1
    fs = torch.relu(torch.randn(episodes, shots, dim, grid, grid, generator=g))
    fq = torch.relu(torch.randn(episodes, 1, dim, grid, grid, generator=g))
    ms = torch.zeros(episodes, shots, size, size, dtype=torch.long)
    for e in range(episodes):
        for k in range(shots):
            y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
            ms[e, k, y:y + size // 3, x:x + size // 3] = 1
    ms[..., :3] = 255
    valid = torch.ones(episodes, 1, size, size, dtype=torch.bool)
    valid[..., -4:] = False
    return fs, ms, fq, valid, (size, size)


def diam_flops(dim, grid, shots, queries, iterations):
    """Matmul FLOPs: per step, support + query logits (forward) and weight gradients, 2 multiply-adds each."""
    c, hw = 1 + B + N, grid * grid
    return 2 * 2 * queries * c * dim * hw * (N * shots + 1) * iterations


def repri_flops(dim, grid, shots, episodes, steps):
    return 2 * 2 * episodes * dim * grid * grid * (shots + 1) * steps


def diam_variants(inputs, shots, iterations, skip_loop):
    fs, ls, fq, valid, bw, bb, size = inputs
    task = Task.gfss(fs, ls, fq, num_base=B, num_novel=N, shots=shots, size=size, level="bottleneck",
                     query_valid=valid)
    args = (bw, bb, fs, ls, fq, valid, N, shots, size)
    out = {}
    if not skip_loop:
        out["official loop"] = lambda: official.diam_loop(*args, iterations=iterations)
    out["official batched"] = lambda: official.diam_official(*args, iterations=iterations)
    out["fss_lab loop"] = lambda: DIaM.from_weights(bw, bb, iterations=iterations).fit(
        task, batched=False).predict_proba(task)
    out["fss_lab batched"] = lambda: DIaM.from_weights(bw, bb, iterations=iterations).fit(task).predict_proba(task)
    return out


def repri_variants(inputs, adapt_iter):
    fs, ms, fq, valid, size = inputs
    tasks = [Task.fss(fs[i], ms[i], fq[i], size, query_valid=valid[i]) for i in range(fs.shape[0])]

    def fss_lab(batched):
        return torch.stack(RePRI(adapt_iter=adapt_iter).fit_predict(tasks, batched=batched))[:, :, 1].exp()

    return {"official loop": lambda: official.repri_loop(fs, ms, fq, valid, size, adapt_iter=adapt_iter),
            "official batched": lambda: official.repri_official(fs, ms, fq, valid, size, adapt_iter=adapt_iter),
            "fss_lab loop": lambda: fss_lab(False), "fss_lab batched": lambda: fss_lab(True)}


def interleaved(variants: dict, repeats: int):
    """``{name: (median CPU s, output)}``, every repeat running every variant once (order rotated), plus the
    peak GFLOP/s measured between them."""
    names, times, outs, peaks = list(variants), {k: [] for k in variants}, {}, []
    for r in range(repeats):
        peaks.append(matmul_peak(repeats=1))
        for name in names[r % len(names):] + names[:r % len(names)]:
            outs[name], t = cpu_time(variants[name])
            times[name].append(t)
    return {k: (median(v), outs[k]) for k, v in times.items()}, median(peaks)


def report(title, res, flops, peak, reference="official loop"):
    ref_name = reference if reference in res else "official batched"
    ref = res[ref_name][1]
    print(f"\n{title}")
    print(f"| variant | CPU s (median) | vs official loop | vs official batched | max abs dp | fraction of peak |")
    print("|---|---|---|---|---|---|")
    for name, (t, out) in res.items():
        vs_loop = f"{res['official loop'][0] / t:.1f}x" if "official loop" in res else "-"
        vs_b = f"{res['official batched'][0] / t:.1f}x"
        dp = float((out - ref).abs().max())
        print(f"| {name} | {t:.2f} | {vs_loop} | {vs_b} | {dp:.1e} | {flops / t / 1e9 / peak:.2f} |")
    return {k: v[0] for k, v in res.items()}, {k: float((v[1] - ref).abs().max()) for k, v in res.items()}


# ---- scaling table (each cell in a child process: its own peak RSS) --------------------------------------------

def child(method, dim, grid, queries, shots, iterations):
    """One scaling cell: prints JSON {ms per query per step, peak RSS increase in MiB}."""
    if method == "diam":
        inputs = diam_inputs(dim, grid, shots, queries)
        run = diam_variants(inputs, shots, iterations, True)["fss_lab batched"]
        steps = iterations
    else:
        inputs = repri_inputs(dim, grid, shots, queries)
        run = repri_variants(inputs, iterations + 1)["fss_lab batched"]
        steps = iterations
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _, t = cpu_time(run)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    flops = (diam_flops if method == "diam" else repri_flops)(dim, grid, shots, queries, steps)
    print(json.dumps({"ms_per_query_step": 1e3 * t / queries / steps, "peak_mib": peak, "gflops": flops / t / 1e9}))


def scaling(args, peak):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE")
    rows = {}
    for method in ("diam", "repri"):
        for shots in (1, 5, 10):
            for q in (1, 4, 16, 64):
                cmd = [sys.executable, __file__, "--child", method, "--dim", str(args.dim), "--grid", str(args.grid),
                       "--queries", str(q), "--shots", str(shots), "--scaling-iterations", str(args.scaling_iterations),
                       "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
                rows[method, shots, q] = json.loads(out.strip().splitlines()[-1])
    print(f"\nScaling (fss_lab batched; D={args.dim}, {args.grid}x{args.grid}; {args.scaling_iterations} steps; "
          f"RePRI: Q = episodes of one query; ms per query per step / peak RSS increase MiB / fraction of peak)")
    print("| method | K | Q=1 | Q=4 | Q=16 | Q=64 |")
    print("|---|---|---|---|---|---|")
    for (method, shots) in dict.fromkeys((m, k) for m, k, _ in rows):
        cells = [rows[method, shots, q] for q in (1, 4, 16, 64)]
        print(f"| {method} | {shots} | " + " | ".join(
            f"{c['ms_per_query_step']:.2f} ms / {c['peak_mib']:.0f} MiB / {c['gflops'] / peak:.2f}" for c in cells)
            + " |")
    for method in ("diam", "repri"):
        t = {k: rows[method, k, 16]["ms_per_query_step"] for k in (1, 5, 10)}
        fl = {k: (diam_flops if method == "diam" else repri_flops)(args.dim, args.grid, k, 16, 1) for k in (1, 5, 10)}
        ratio, fratio = t[10] / t[1], fl[10] / fl[1]
        print(f"{method} shots scaling at Q=16: time K=10 / K=1 = {ratio:.2f}, FLOPs {fratio:.2f} -> "
              f"{ratio / fratio:.2f} x the FLOP ratio (goal <= 1.1: {'met' if ratio <= 1.1 * fratio else 'not met'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=512, help="feature channels D")
    ap.add_argument("--grid", type=int, default=53, help="feature grid h = w (labels are 8 (h - 1) + 1)")
    ap.add_argument("--queries", type=int, default=8, help="DIaM query tasks Q; RePRI episodes (one query each)")
    ap.add_argument("--shots", default="1,5", help="comma-separated K")
    ap.add_argument("--iterations", type=int, default=100, help="DIaM SGD steps (official 100)")
    ap.add_argument("--adapt-iter", type=int, default=50, help="RePRI adapt_iter (official 50 = 49 steps)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1 on a shared machine)")
    ap.add_argument("--skip-official-loop", action="store_true", help="DIaM: leave the slowest baseline out")
    ap.add_argument("--scaling", action="store_true", help="also print the scaling table")
    ap.add_argument("--scaling-iterations", type=int, default=5)
    ap.add_argument("--only-scaling", action="store_true", help="print only the scaling table")
    ap.add_argument("--methods", default="diam,repri", help="comma-separated: which blocks to run (diam, repri)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shots = [int(k) for k in args.shots.split(",")]
    if args.child:
        child(args.child, args.dim, args.grid, args.queries, shots[0], args.scaling_iterations)
        return
    print(f"command: python bench/transductive.py {' '.join(sys.argv[1:])}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s) (--threads), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} cores visible")
    peak = matmul_peak()
    print(f"fp32 matmul peak (2048^3, this thread count): {peak:.0f} GFLOP/s")
    if args.only_scaling:
        scaling(args, peak)
        return
    summary = []
    methods = set(args.methods.split(","))
    for k in (shots if "diam" in methods else []):
        inputs = diam_inputs(args.dim, args.grid, k, args.queries)
        variants = diam_variants(inputs, k, args.iterations, args.skip_official_loop)
        diam_variants(diam_inputs(args.dim, 4, k, 2), k, 2, True)["fss_lab batched"]()  # warm-up
        res, pk = interleaved(variants, args.repeats)
        t, dp = report(f"DIaM D={args.dim} {args.grid}x{args.grid}, B={B}, N={N}, K={k}, Q={args.queries}, "
                       f"{args.iterations} steps (peak in this block {pk:.0f} GFLOP/s)", res,
                       diam_flops(args.dim, args.grid, k, args.queries, args.iterations), pk)
        frac = diam_flops(args.dim, args.grid, k, args.queries, args.iterations) / t["fss_lab batched"] / 1e9 / pk
        summary.append((f"DIaM K={k} batched fraction of peak >= 0.75", frac, frac >= 0.75))
        if "official loop" in t:
            r = t["official loop"] / t["fss_lab batched"]
            summary.append((f"DIaM K={k} batched vs official loop >= 10x", r, r >= 10))
        r = t["official batched"] / t["fss_lab batched"]
        summary.append((f"DIaM K={k} batched vs official batched >= 3x", r, r >= 3))
        summary.append((f"DIaM K={k} max |dp| <= 1e-5", max(dp.values()), max(dp.values()) <= 1e-5))
    for k in (shots if "repri" in methods else []):
        inputs = repri_inputs(args.dim, args.grid, k, args.queries)
        res, pk = interleaved(repri_variants(inputs, args.adapt_iter), args.repeats)
        t, dp = report(f"RePRI D={args.dim} {args.grid}x{args.grid}, K={k}, {args.queries} episodes x 1 query, "
                       f"{args.adapt_iter - 1} steps (peak {pk:.0f} GFLOP/s)", res,
                       repri_flops(args.dim, args.grid, k, args.queries, args.adapt_iter - 1), pk)
        r = t["fss_lab loop"] / t["fss_lab batched"]
        summary.append((f"RePRI K={k} batched not slower than its loop (loop / batched >= 1)", r, r >= 1))
        r = t["official loop"] / t["fss_lab batched"]
        summary.append((f"RePRI K={k} batched vs official loop >= 4x", r, r >= 4))
        summary.append((f"RePRI K={k} max |dp| <= 1e-5", max(dp.values()), max(dp.values()) <= 1e-5))
    print("\n| target | measured | met |")
    print("|---|---|---|")
    for name, value, ok in summary:
        print(f"| {name} | {value:.3g} | {'yes' if ok else 'no'} |")
    if args.scaling:
        scaling(args, peak)


if __name__ == "__main__":
    main()
