"""Benchmark of the CRC-AL math (not a test).

(a) One-pass histogram calibration (alseg.crc.CalibrationAccumulator) against the straightforward
    per-threshold loop of the reference implementation (K·1001 iterations per image), same data,
    asserting identical thresholds.
(b) Streaming Top-Diverse-K (alseg.crc.top_diverse_k, O(N) memory) at N = 100 000 candidates, K² = 361,
    budget 100, against an N x N version (full D' matrix, greedy on its rows) at the largest N that fits
    the memory cap, asserting the same selection at that N.

Each case runs in a fresh subprocess so its peak RSS (resource.getrusage) is its own.

    .venv/bin/python scripts/bench_calibrate.py [--quick] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

K = 19
N_REF = 20
NXN_MEMORY_CAP_GB = 1.0  # the N x N float64 D' matrix must fit in this


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------------------- synthetic data


def calibration_data(n_images: int, size: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    tiles = size // 8
    labels = np.empty((n_images, size, size), dtype=np.int64)
    for i in range(n_images):
        classes = rng.choice(K, size=rng.integers(3, 9), replace=False)
        tile_labels = rng.choice(classes, size=(tiles, tiles))
        labels[i] = np.kron(tile_labels, np.ones((8, 8), dtype=np.int64))
    logits = 2.0 * rng.standard_normal(size=(n_images, K, size, size), dtype=np.float32)
    logits += np.float32(3.0) * (labels[:, None] == np.arange(K)[:, None, None])
    labels[rng.random(labels.shape) < 0.05] = 255
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs, labels


def selection_data(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    v = (rng.random((n, K * K)) ** 4).astype(np.float32)
    ids = np.arange(n)
    u_ref = rng.random(N_REF)
    v_ref = (rng.random((N_REF, K * K)) ** 4).astype(np.float32)
    return u, v, ids, u_ref, v_ref


# ---------------------------------------------------------------------------------------------- methods


def calib_onepass(probs, labels, alpha):
    from alseg.crc import CalibrationAccumulator

    acc = CalibrationAccumulator(K)
    for s in range(0, len(probs), 50):  # streaming batches
        acc.update(probs[s : s + 50], labels[s : s + 50])
    return acc.result(alpha).thresholds


def calib_loop(probs, labels, alpha):
    """The straightforward version: per image and class, one vectorised FNR per grid threshold."""
    from alseg.crc import calibration_grid, crc_threshold

    grid = calibration_grid(1000)
    risk_sum = np.zeros((K, grid.size))
    n_images = np.zeros(K, dtype=np.int64)
    for i in range(len(probs)):
        for k in range(K):
            mask = labels[i] == k
            if not mask.any():
                continue
            pk = probs[i, k][mask].astype(np.float64)
            n_images[k] += 1
            for j, t in enumerate(grid):
                risk_sum[k, j] += np.count_nonzero(pk < t) / pk.size
    risk = risk_sum / np.maximum(n_images, 1)[:, None]
    return np.array([crc_threshold(risk[k], int(n_images[k]), alpha, grid) for k in range(K)])


def tdk_stream(u, v, ids, u_ref, v_ref, budget, device):
    from alseg.crc import top_diverse_k

    return top_diverse_k(u, v, ids, u_ref, v_ref, budget, device=device)


def tdk_nxn(u, v, ids, u_ref, v_ref, budget, device, tau=0.5, eps=1.19e-7):
    """The reference implementation's shape: the whole (M+N) x N D' matrix, then greedy on its rows."""
    import torch

    dev = torch.device(device)
    uc = torch.as_tensor(u, dtype=torch.float64, device=dev)
    vc = torch.as_tensor(v, dtype=torch.float64, device=dev)
    ua = torch.cat([torch.as_tensor(u_ref, dtype=torch.float64, device=dev), uc])
    va = torch.cat([torch.as_tensor(v_ref, dtype=torch.float64, device=dev), vc])
    d = torch.cdist(va, vc)  # (M+N, N)
    d.add_(eps).pow_(tau)
    omega = uc[None, :] / (ua[:, None] + uc[None, :] + eps)
    d.mul_(omega.pow_(1.0 - tau))
    del omega
    m = len(u_ref)
    members = list(range(m))
    picked = torch.zeros(len(u), dtype=torch.bool, device=dev)
    order = []
    for _ in range(budget):
        if members:
            rows = d[members]
            f = rows.mean(0) + rows.min(0).values
        else:
            f = uc.clone()
        f[picked] = -float("inf")
        j = int(torch.argmax(f))
        order.append(j)
        picked[j] = True
        members.append(m + j)
    return ids[np.array(order)]


# ------------------------------------------------------------------------------------------------ driver


def run_case(name: str, n: int, budget: int, device: str, threads: int) -> dict:
    import torch  # library overhead counts in the baseline, not in the method

    if threads > 0:
        torch.set_num_threads(threads)

    import alseg.crc  # noqa: F401

    alpha = 0.05
    if name.startswith("calib"):
        data = calibration_data(n)
    else:
        data = selection_data(n)
    base = _rss_mb()
    t0 = time.perf_counter()
    if name == "calib_onepass":
        out = calib_onepass(*data, alpha)
    elif name == "calib_loop":
        out = calib_loop(*data, alpha)
    elif name == "tdk_stream":
        out = tdk_stream(*data, budget, device)
    elif name == "tdk_nxn":
        out = tdk_nxn(*data, budget, device)
    else:
        raise SystemExit(f"unknown case {name}")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss_mb": _rss_mb(), "data_rss_mb": base, "result": np.asarray(out).tolist()}


def spawn(name: str, n: int, budget: int, device: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--case", name, "--n", str(n), "--budget", str(budget), "--device", device,
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"case {name} (N={n}) failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--device", default="cpu", help="torch device for the selection cases (default cpu)")
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads per case (default 1: on a shared machine OpenMP threads that wait for a "
        "busy core distort timings by 10x; 0 = torch default)",
    )
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=int, default=100, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.n, args.budget, args.device, args.threads)))
        return

    n_cal = 20 if args.quick else 200
    n_big = 10_000 if args.quick else 100_000
    # Largest N whose (N_REF + N) x N float64 D' matrix fits the cap (rounded down to a thousand).
    n_nxn = int((NXN_MEMORY_CAP_GB * 1e9 / 8) ** 0.5) // 1000 * 1000
    n_nxn = 2_000 if args.quick else min(n_nxn, 10_000)
    budget = 100

    rows = []
    a = spawn("calib_onepass", n_cal, 0, args.device, args.threads)
    b = spawn("calib_loop", n_cal, 0, args.device, args.threads)
    assert a["result"] == b["result"], "one-pass and per-threshold thresholds differ"
    rows += [("calibrate one-pass", f"{n_cal} img", a), ("calibrate per-threshold", f"{n_cal} img", b)]
    ratio_cal = b["seconds"] / a["seconds"]

    c = spawn("tdk_stream", n_nxn, budget, args.device, args.threads)
    d = spawn("tdk_nxn", n_nxn, budget, args.device, args.threads)
    assert c["result"] == d["result"], "streaming and N x N Top-Diverse-K selections differ"
    e = spawn("tdk_stream", n_big, budget, args.device, args.threads)
    rows += [("top-diverse-k stream", n_nxn, c), ("top-diverse-k N x N", n_nxn, d), ("top-diverse-k stream", n_big, e)]

    print(f"K = {K} classes (K^2 = {K * K}), {N_REF} references, budget {budget}, device {args.device}, "
          f"torch threads {args.threads or 'default'}")
    print("peak RSS: whole subprocess; base RSS: after importing torch/alseg and building the data")
    print(f"{'method':<26}{'N':>10}{'seconds':>10}{'peak RSS MB':>13}{'base RSS MB':>13}")
    for name, n, r in rows:
        print(f"{name:<26}{n!s:>10}{r['seconds']:>10.2f}{r['peak_rss_mb']:>13.0f}{r['data_rss_mb']:>13.0f}")
    print(f"calibration: identical thresholds; per-threshold / one-pass time = {ratio_cal:.0f}x")
    print(f"top-diverse-k at N = {n_nxn}: identical selections; N x N / stream time = "
          f"{d['seconds'] / c['seconds']:.1f}x, peak RSS {d['peak_rss_mb']:.0f} vs {c['peak_rss_mb']:.0f} MB")
    print(f"top-diverse-k at N = {n_big}: {e['seconds'] / budget * 1000:.0f} ms per pick "
          f"(incl. {N_REF} references); N x N there would need {(N_REF + n_big) * n_big * 8 / 1e9:.0f} GB")


if __name__ == "__main__":
    main()
