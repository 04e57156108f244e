#!/usr/bin/env python
"""Benchmark (not a test): streaming k-center / k-means++ selection vs a plain N x N implementation.

Cases, each measured in a fresh subprocess so the peak RSS (``ru_maxrss``) belongs to that case alone:

- ``kcenter``       alseg.selectors.kcenter, N unlabeled + L labeled, d = 512 (Core-Set sized)
- ``kmeans_pp``     alseg.selectors.kmeans_pp, d = 400 (BADGE ``logit`` embedding sized)
- ``*-NxN``         the straightforward version: ``torch.cdist`` of the whole matrix, then the same greedy
                    loop on its columns. Run at ``--baseline-n`` (the memory cap: that matrix is
                    N x (N + L) float32), where the streaming version is also run and both must pick the
                    same ids.

Embeddings are synthetic Gaussian float32 rounded to a 1/4 grid: then every squared distance is exact in
float32 in both the difference kernel and cdist's matmul expansion, so the two implementations see
identical distances and the id comparison is exact (timings do not depend on the values).

Usage: ``python scripts/bench_select.py [--n 100000] [--quick] [--device cpu]``; ``--n 1000000`` streams
(O(N*d) memory: 2 GB of embeddings at d = 512) but takes minutes per case on a small CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_embeddings(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) float32 Gaussian rounded to multiples of 1/4, generated in blocks (no float64 copy)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    block = 65536
    for start in range(0, n, block):
        part = rng.standard_normal((min(block, n - start), d), dtype=np.float32)
        np.round(part * 4.0, out=part)
        part *= 0.25
        x[start : start + part.shape[0]] = part
    return x


def rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def kcenter_nxn(u, lab, budget, device):
    import torch

    x = torch.from_numpy(u).to(device)
    allc = torch.cat([torch.from_numpy(lab).to(device), x]) if len(lab) else x
    dist = torch.cdist(x, allc)  # the whole N x (L + N) matrix
    n, n_lab = x.shape[0], len(lab)
    if n_lab:
        mind = dist[:, :n_lab].min(dim=1).values
        picks = []
    else:
        mind = torch.full((n,), math.inf, device=device)
        first = int(torch.argmax(torch.linalg.vector_norm(x, dim=1)))
        picks = [first]
        mind = torch.minimum(mind, dist[:, n_lab + first])
        mind[first] = -math.inf
    while len(picks) < min(budget, n):
        j = int(torch.argmax(mind))
        picks.append(j)
        mind = torch.minimum(mind, dist[:, n_lab + j])
        mind[j] = -math.inf
    return np.asarray(picks)


def kmeans_pp_nxn(x_np, budget, seed, device):
    import torch

    rng = np.random.default_rng(seed)
    x = torch.from_numpy(x_np).to(device)
    dist = torch.cdist(x, x)  # the whole N x N matrix
    n = x.shape[0]
    chosen = np.zeros(n, dtype=bool)
    last = int(torch.argmax(torch.linalg.vector_norm(x, dim=1)))
    picks = [last]
    chosen[last] = True
    mind = torch.full((n,), math.inf, device=device)
    while len(picks) < min(budget, n):
        mind = torch.minimum(mind, dist[:, last])
        w = mind.double().cpu().numpy() ** 2
        w[chosen] = 0.0
        cum = np.cumsum(w)
        if not cum[-1] > 0:
            rest = np.flatnonzero(~chosen)
            picks.extend(rng.choice(rest, size=min(budget, n) - len(picks), replace=False).tolist())
            break
        last = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), n - 1)
        picks.append(last)
        chosen[last] = True
    return np.asarray(picks)


def run_case(args) -> None:
    """Child process: build data, time one selection, write a JSON line and the picked rows."""
    import torch

    from alseg import selectors

    d = args.d
    x = make_embeddings(args.n, d, seed=1)
    lab = make_embeddings(args.labeled, d, seed=2) if args.case.startswith("kcenter") else np.zeros((0, d), np.float32)
    ids = np.array([f"id{i:08d}" for i in range(args.n)])  # already in id order: row i = ids[i]
    base_mb = rss_mb()
    t0 = time.perf_counter()
    if args.case == "kcenter":
        picked = selectors.kcenter(x, lab, ids, args.budget, device=args.device)
        rows = np.array([int(s[2:]) for s in picked])
    elif args.case == "kmeans_pp":
        picked = selectors.kmeans_pp(x, ids, args.budget, rng=np.random.default_rng(0), device=args.device)
        rows = np.array([int(s[2:]) for s in picked])
    elif args.case == "kcenter-NxN":
        rows = kcenter_nxn(x, lab, args.budget, args.device)
    elif args.case == "kmeans_pp-NxN":
        rows = kmeans_pp_nxn(x, args.budget, 0, args.device)
    else:
        raise SystemExit(f"unknown case {args.case}")
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    np.save(args.rows_out, rows)
    print(json.dumps({"seconds": seconds, "peak_mb": rss_mb(), "data_mb": base_mb, "gpu_mb": gpu_mb}))


def spawn(case, n, d, budget, labeled, device, tmp) -> dict:
    rows_out = os.path.join(tmp, f"{case}-{n}.npy")
    cmd = [sys.executable, __file__, "--case", case, "--n", str(n), "--d", str(d), "--budget", str(budget),
           "--labeled", str(labeled), "--device", device, "--rows-out", rows_out]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(case=case, n=n, d=d, budget=budget, labeled=labeled if case.startswith("kcenter") else 0)
    res["rows"] = np.load(rows_out)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="pool size of the streaming cases")
    p.add_argument("--baseline-n", type=int, default=20_000, help="largest N for the N x N baseline (memory cap)")
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--labeled", type=int, default=1000, help="labeled rows (initial centers) for k-center")
    p.add_argument("--d-kcenter", type=int, default=512)
    p.add_argument("--d-badge", type=int, default=400)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    # internal: run one case in this process
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, default=512, help=argparse.SUPPRESS)
    p.add_argument("--rows-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        run_case(args)
        return
    if args.quick:
        args.n, args.baseline_n, args.budget, args.labeled = 5000, 2000, 50, 50

    nb = min(args.baseline_n, args.n)
    plan = [
        ("kcenter", args.n, args.d_kcenter),
        ("kmeans_pp", args.n, args.d_badge),
    ]
    if nb != args.n:
        plan += [("kcenter", nb, args.d_kcenter), ("kmeans_pp", nb, args.d_badge)]
    plan += [("kcenter-NxN", nb, args.d_kcenter), ("kmeans_pp-NxN", nb, args.d_badge)]

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, n, d in plan:
            print(f"running {case} N={n} d={d} ...", file=sys.stderr, flush=True)
            results.append(spawn(case, n, d, args.budget, args.labeled, args.device, tmp))

    by = {(r["case"], r["n"]): r for r in results}
    header = f"{'method':<15}{'N':>9}{'d':>6}{'budget':>8}{'labeled':>9}{'seconds':>10}{'peak RSS MB':>13}{'sel. MB':>9}{'ratio t':>9}{'ratio mem':>10}"
    print(f"device: {args.device}, torch threads: {__import__('torch').get_num_threads()}")
    print(header)
    print("-" * len(header))
    for r in results:
        extra = r["peak_mb"] - r["data_mb"]
        ratio_t = ratio_m = ""
        if r["case"].endswith("NxN"):
            s = by[(r["case"][:-4], r["n"])]
            ratio_t = f"{r['seconds'] / s['seconds']:.2f}x"
            s_extra = max(s["peak_mb"] - s["data_mb"], 1.0)
            ratio_m = f"{max(extra, 1.0) / s_extra:.1f}x"
        gpu = f" (GPU {r['gpu_mb']:.0f} MB)" if r.get("gpu_mb") else ""
        print(f"{r['case']:<15}{r['n']:>9}{r['d']:>6}{r['budget']:>8}{r['labeled']:>9}{r['seconds']:>10.2f}"
              f"{r['peak_mb']:>13.0f}{extra:>9.0f}{ratio_t:>9}{ratio_m:>10}{gpu}")
    print("sel. MB = peak RSS minus RSS after building the embeddings; ratios are N x N / streaming at the same N")
    ok = True
    for method in ("kcenter", "kmeans_pp"):
        a, b = by[(method, nb)]["rows"], by[(method + "-NxN", nb)]["rows"]
        same = np.array_equal(a, b)
        ok &= same
        print(f"{method}: streaming and N x N pick the same ids at N={nb}: {same}")
    assert ok, "streaming and N x N selections differ"


if __name__ == "__main__":
    main()
