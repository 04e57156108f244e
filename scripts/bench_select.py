#!/usr/bin/env python
"""Benchmark (not a test): selectors against the machine's limit, measured in the same process.

Each case runs in a fresh subprocess and prints one line: case, measured seconds, limit seconds,
ratio = measured / limit, and memory = (peak RSS during the selection - RSS before the embeddings were
built) / embedding bytes, i.e. the embeddings themselves plus everything selection adds (1.0 = nothing
beyond the input; the peak window is reset after the data are built, /proc/self/clear_refs). On CUDA the
peak is ``max_memory_allocated`` instead.

- ``top-diverse-k``  alseg.crc.top_diverse_k, N candidates, v of K^2 = 361 dims, ``budget`` picks, no
                     references. Limit: ``budget`` x one read-and-reduce pass over the (N, 361) float32
                     matrix, the fastest of ``v @ w`` (numpy and torch) and a blocked
                     ``((v - c)**2).sum(1)`` (torch), each the median of 5 runs before and after.
- ``kcenter``        alseg.selectors.kcenter, N = 10^5, d = 512, ``budget`` picks, no labeled rows. Limit:
                     ``budget`` x one matvec-and-min (``torch.minimum(mind, pass)``, fastest pass as above).
- ``kcenter+L``      the same with L labeled rows as initial centers. Limit: the picks' limit plus one
                     (N, d) @ (d, L) matmul (the initial min-distance needs every pool x labeled pair).
- ``kmeans_pp``      alseg.selectors.kmeans_pp, d = 400 (BADGE logit-embedding sized); limit as kcenter.
- ``top_k``          alseg.selectors.top_k over N = 10^6 float64 scores, budget 1000. Limit: a plain
                     ``np.argpartition(scores, N - budget)``. Medians of 15 runs.

Embeddings are synthetic float32 (timings do not depend on the values). Before the table, k-center and
k-means++ are checked against a plain N x N implementation at ``--check-n`` (same picked rows).

Usage: ``python scripts/bench_select.py [--quick] [--device cpu]``. The full run takes minutes on a
small CPU (the N = 10^6 Top-Diverse-K case alone about one minute per 1 000 picks).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_embeddings(n: int, d: int, seed: int, *, grid: bool = True) -> np.ndarray:
    """(n, d) float32, generated in small blocks in place (no float64 copy, no large temporaries).
    ``grid``: Gaussian rounded to multiples of 1/4, so every squared distance is exact in float32 whatever
    the kernel (the N x N check compares ids exactly); else uniform [0, 1) (CRC-like D patterns)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    block = 4096
    for start in range(0, n, block):
        part = x[start : start + block]
        if grid:
            rng.standard_normal(part.shape, dtype=np.float32, out=part)
            part *= 4.0
            np.round(part, out=part)
            part *= 0.25
        else:
            rng.random(part.shape, dtype=np.float32, out=part)
    return x


def rss_bytes() -> int:
    """Peak RSS of this process since the last :func:`reset_peak` (VmHWM; ru_maxrss where unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak() -> None:
    """Start a new peak-RSS window (Linux >= 4.0: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return rss_bytes()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _median_time(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def one_pass_seconds(x_np: np.ndarray, device: str, *, with_min: bool) -> tuple[float, str]:
    """The fastest single read-and-reduce pass over x (N, d) float32, and its name.

    Candidates: ``x @ c`` (numpy on CPU, and torch) and a blocked ``((x - c)**2).sum(1)`` in torch
    (cache-sized blocks on CPU, as alseg's pass uses; one block elsewhere). ``with_min``: each followed by the
    running-min update ``torch.minimum(mind, pass, out=mind)`` (np.minimum for numpy).
    """
    import torch

    x = torch.from_numpy(x_np).to(device)
    n, d = x.shape
    c = x[n // 2].clone()
    mind = torch.full((n,), math.inf, device=device)
    out = torch.empty(n, device=device)
    cand = {}
    if device == "cpu":
        c_np = c.numpy()
        mind_np = mind.numpy()

        def np_mv():
            r = x_np @ c_np
            if with_min:
                np.minimum(mind_np, r, out=mind_np)

        cand["numpy x @ c"] = np_mv

    def torch_mv():
        torch.mv(x, c, out=out)
        if with_min:
            torch.minimum(mind, out, out=mind)

    cand["torch x @ c"] = torch_mv
    from alseg.selectors import _CPU_BLOCK_BYTES

    step = max(1, _CPU_BLOCK_BYTES // (4 * d)) if device == "cpu" else n
    buf = torch.empty((min(step, n), d), device=device)

    def torch_diff():
        for s in range(0, n, step):
            e = min(s + step, n)
            b = buf[: e - s]
            torch.sub(x[s:e], c, out=b)
            b.square_()
            torch.sum(b, dim=1, out=out[s:e])
        if with_min:
            torch.minimum(mind, out, out=mind)

    cand["torch ((x - c)**2).sum(1)"] = torch_diff
    for fn in cand.values():  # warm up (first touch of outputs, thread pools)
        fn()
    best = {name: _median_time(fn, 5, device) for name, fn in cand.items()}
    name = min(best, key=best.get)
    return best[name], name


def run_case(args) -> None:
    """Child process: build data, measure the limit and one selection, print one JSON line."""
    import torch

    from alseg import crc, selectors

    n, d, budget, dev = args.n, args.d, args.budget, args.device
    ids = np.array([f"id{i:08d}" for i in range(n)])  # already in id order: row i = ids[i]
    res = {"case": args.case, "n": n, "d": d, "budget": budget}
    if args.case == "top_k":
        s = np.random.default_rng(0).random(n)
        s[::7] = 0.5  # many ties, some at the boundary
        times: dict[str, list[float]] = {"limit": [], "measured": []}
        for _ in range(31):  # interleaved, so drifting load hits both alike
            for key, fn in (("limit", lambda: np.argpartition(s, n - budget)),
                            ("measured", lambda: selectors.top_k(s, ids, budget))):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        res.update(seconds=statistics.median(times["measured"]), limit=statistics.median(times["limit"]),
                   limit_name="np.argpartition (medians of 31, interleaved)", mem=None)
        print(json.dumps(res))
        return
    # warm up the libraries on a small matrix first: their one-time workspaces (BLAS buffers, thread
    # stacks) are not memory that grows with the embeddings
    small = make_embeddings(4096, d, seed=9)
    one_pass_seconds(small, dev, with_min=True)
    if args.case == "top-diverse-k":
        crc.top_diverse_k(np.ones(4096), small, ids[:4096], None, None, 3, device=dev)
    else:
        selectors.kcenter(small, small[:8], ids[:4096], 3, device=dev)
    del small
    base = current_rss_bytes()
    grid = args.case != "top-diverse-k"
    x = make_embeddings(n, d, seed=1, grid=grid)
    emb_bytes = x.nbytes
    lab = make_embeddings(args.labeled, d, seed=2) if args.case == "kcenter+L" else np.zeros((0, d), np.float32)
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    one, one_name = one_pass_seconds(x, dev, with_min=args.case != "top-diverse-k")
    extra = 0.0
    if args.case == "kcenter+L":
        xt, lt = torch.from_numpy(x).to(dev), torch.from_numpy(lab).to(dev)
        extra = _median_time(lambda: xt @ lt.T, 3, dev)
        del xt, lt
    _sync(dev)
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    reset_peak()  # the peak of the selection alone, on top of `base` (RSS before the embeddings)
    t0 = time.perf_counter()
    if args.case == "top-diverse-k":
        u = np.random.default_rng(3).random(n)
        picked = crc.top_diverse_k(u, x, ids, None, None, budget, device=dev)
    elif args.case in ("kcenter", "kcenter+L"):
        picked = selectors.kcenter(x, lab, ids, budget, device=dev)
    elif args.case == "kmeans_pp":
        picked = selectors.kmeans_pp(x, ids, budget, rng=np.random.default_rng(0), device=dev)
    else:
        raise SystemExit(f"unknown case {args.case}")
    _sync(dev)
    seconds = time.perf_counter() - t0
    peak = rss_bytes()
    # the limit again after the run (load on a shared machine drifts): the smaller of the two
    one2, name2 = one_pass_seconds(x, dev, with_min=args.case != "top-diverse-k")
    if one2 < one:
        one, one_name = one2, name2
    if dev.startswith("cuda"):
        mem = torch.cuda.max_memory_allocated() / emb_bytes
    else:
        mem = (peak - base) / emb_bytes
    assert len(picked) == budget
    res.update(seconds=seconds, limit=budget * one + extra, limit_name=f"{budget} x {one_name}"
               + (" + x @ labeled.T" if extra else ""), mem=mem, emb_mb=emb_bytes / 2**20)
    print(json.dumps(res))


# ----------------------------------------------------------------------------- N x N cross-check


def kcenter_nxn(u, budget):
    import torch

    x = torch.from_numpy(u)
    dist = torch.cdist(x, x)  # the whole N x N matrix
    n = x.shape[0]
    first = int(torch.argmax(torch.linalg.vector_norm(x, dim=1)))
    picks = [first]
    mind = dist[:, first].clone()
    mind[first] = -math.inf
    while len(picks) < min(budget, n):
        j = int(torch.argmax(mind))
        picks.append(j)
        mind = torch.minimum(mind, dist[:, j])
        mind[j] = -math.inf
    return np.asarray(picks)


def kmeans_pp_nxn(x_np, budget, seed):
    import torch

    rng = np.random.default_rng(seed)
    x = torch.from_numpy(x_np)
    dist = torch.cdist(x, x)
    n = x.shape[0]
    chosen = np.zeros(n, dtype=bool)
    last = int(torch.argmax(torch.linalg.vector_norm(x, dim=1)))
    picks = [last]
    chosen[last] = True
    mind = torch.full((n,), math.inf)
    while len(picks) < min(budget, n):
        mind = torch.minimum(mind, dist[:, last])
        w = mind.double().numpy() ** 2
        w[chosen] = 0.0
        cum = np.cumsum(w)
        last = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), n - 1)
        picks.append(last)
        chosen[last] = True
    return np.asarray(picks)


def check_nxn(n: int, budget: int) -> bool:
    from alseg import selectors

    ids = np.array([f"id{i:08d}" for i in range(n)])
    ok = True
    x = make_embeddings(n, 64, seed=5)
    got = np.array([int(s[2:]) for s in selectors.kcenter(x, None, ids, budget)])
    ok &= bool(np.array_equal(got, kcenter_nxn(x, budget)))
    got = np.array([int(s[2:]) for s in selectors.kmeans_pp(x, ids, budget, rng=np.random.default_rng(0))])
    ok &= bool(np.array_equal(got, kmeans_pp_nxn(x, budget, 0)))
    return ok


def spawn(case, n, d, budget, labeled, device) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--n", str(n), "--d", str(d), "--budget", str(budget),
           "--labeled", str(labeled), "--device", device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-crc", type=int, default=1_000_000, help="candidates of the Top-Diverse-K case")
    p.add_argument("--n", type=int, default=100_000, help="pool size of the k-center / k-means++ cases")
    p.add_argument("--n-topk", type=int, default=1_000_000, help="scores of the top_k case")
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--labeled", type=int, default=1000, help="labeled rows (initial centers) of kcenter+L")
    p.add_argument("--check-n", type=int, default=3000, help="N of the N x N cross-check")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cases", default="top-diverse-k,kcenter,kcenter+L,kmeans_pp,top_k")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    # internal: run one case in this process
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, default=512, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        run_case(args)
        return
    if args.quick:
        args.n_crc, args.n, args.n_topk, args.budget, args.labeled, args.check_n = 20_000, 5000, 100_000, 50, 50, 500

    import torch

    print(f"device: {args.device}, torch threads: {torch.get_num_threads()}", flush=True)
    ok = check_nxn(args.check_n, min(args.budget, args.check_n // 4))
    print(f"k-center and k-means++ pick the same rows as an N x N implementation at N={args.check_n}: {ok}",
          flush=True)
    sizes = {"top-diverse-k": (args.n_crc, 361), "kcenter": (args.n, 512), "kcenter+L": (args.n, 512),
             "kmeans_pp": (args.n, 400), "top_k": (args.n_topk, 0)}
    results = []
    for case in args.cases.split(","):
        n, d = sizes[case]
        print(f"running {case} N={n} d={d} ...", file=sys.stderr, flush=True)
        results.append(spawn(case, n, d, args.budget, args.labeled, args.device))
    header = f"{'case':<15}{'N':>9}{'d':>5}{'picks':>7}{'measured s':>12}{'limit s':>10}{'ratio':>7}{'mem/emb':>9}  limit"
    print(header)
    print("-" * (len(header) + 30))
    for r in results:
        mem = "" if r["mem"] is None else f"{r['mem']:.2f}"
        print(f"{r['case']:<15}{r['n']:>9}{r['d']:>5}{r['budget']:>7}{r['seconds']:>12.4g}{r['limit']:>10.4g}"
              f"{r['seconds'] / r['limit']:>7.2f}{mem:>9}  {r['limit_name']}")
    print("ratio = measured / limit; mem/emb = (peak RSS - RSS before the embeddings) / embedding bytes")
    assert ok, "streaming and N x N selections differ"


if __name__ == "__main__":
    main()
