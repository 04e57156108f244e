"""Slow, obvious reference implementations of the CRC-AL math (docs/algorithms.md §9), for tests and benchmarks.

Loops over images, classes, thresholds and pixels; N x N matrices for selection. Not for production.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1.19e-7


def crc_threshold_loop(risk, n, alpha, grid):
    """Largest grid t with (n/(n+1)) R̂(t) + 1/(n+1) <= α, found by trying every grid t."""
    if n == 0 or alpha - (1 - alpha) / n < 0:
        return 0.0
    best = 0.0
    for j in range(len(grid)):
        if risk[j] <= alpha - (1 - alpha) / n:
            best = float(grid[j])
    return best


def calibrate_loop(probs, labels, n_classes, alpha, bins=1000, ignore_index=255):
    """Per-threshold loop: for every image, class present and grid threshold, FNR = mean(p_k < t).

    Returns (thresholds (K,), n_images (K,), risk (K, bins+1)).
    """
    grid = np.arange(bins + 1, dtype=np.float64) / bins
    risk_sum = np.zeros((n_classes, bins + 1))
    n_images = np.zeros(n_classes, dtype=np.int64)
    for i in range(probs.shape[0]):
        for k in range(n_classes):
            mask = labels[i] == k  # ignore pixels are never == k
            if not mask.any():
                continue
            pk = probs[i, k][mask].astype(np.float64)
            n_images[k] += 1
            for j, t in enumerate(grid):
                risk_sum[k, j] += np.count_nonzero(pk < t) / pk.size
    risk = risk_sum / np.maximum(n_images, 1)[:, None]
    thresholds = np.array([crc_threshold_loop(risk[k], n_images[k], alpha, grid) for k in range(n_classes)])
    return thresholds, n_images, risk


def image_scores_loop(probs, thresholds):
    """Per-pixel loops for C(u), M, D, w, R and u, at the query-time ``thresholds`` as given.
    Returns (u (n,), D (n, K, K), w (n, K), R (n, H, W))."""
    n, k, h, w_ = probs.shape
    thr = [float(t) for t in thresholds]
    us, ds, ws, rs = [], [], [], []
    for i in range(n):
        sets = [[[c for c in range(k) if float(probs[i, c, y, x]) >= thr[c]] for x in range(w_)] for y in range(h)]
        m = np.zeros((k, k))
        for y in range(h):
            for x in range(w_):
                for a in sets[y][x]:
                    for b in sets[y][x]:
                        m[a, b] += 1
        d = np.zeros((k, k))
        for a in range(k):
            s = sum(m[a, b] ** 2 for b in range(k))
            if s > 0:
                for b in range(k):
                    d[a, b] = m[a, b] ** 2 / s
        wt = np.zeros(k)
        for a in range(k):
            wt[a] = -sum(d[a, b] * math.log(d[a, b]) for b in range(k) if d[a, b] > 0) / math.log(k)
        total = wt.sum()
        r = np.zeros((h, w_))
        for y in range(h):
            for x in range(w_):
                r[y, x] = sum(wt[a] for a in sets[y][x]) / total if total > 0 else 0.0
        us.append(r.mean())
        ds.append(d)
        ws.append(wt)
        rs.append(r)
    return np.array(us), np.array(ds), np.array(ws), np.array(rs)


def barycenter_matrix(u_ref, v_ref, u_cand, v_cand, tau):
    """Full D' matrix (M, N) by direct per-pair difference, float64. 0^0 = 1."""
    vr = np.asarray(v_ref, dtype=np.float64)
    vc = np.asarray(v_cand, dtype=np.float64)
    d = np.sqrt(((vr[:, None, :] - vc[None, :, :]) ** 2).sum(axis=2))
    ur = np.asarray(u_ref, dtype=np.float64)[:, None]
    uc = np.asarray(u_cand, dtype=np.float64)[None, :]
    omega = uc / (ur + uc + EPS)
    return np.power(d + EPS, tau) * np.power(omega, 1.0 - tau)


def _greedy_bruteforce(u, v, ids, u_ref, v_ref, budget, tau, use_mean):
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v)
    ids = np.asarray(ids)
    order = np.argsort(ids, kind="stable")
    u, v, ids = u[order], v[order], ids[order]
    n = len(u)
    m = 0 if u_ref is None else len(u_ref)
    all_u = np.concatenate([np.zeros(0) if m == 0 else np.asarray(u_ref, dtype=np.float64), u])
    all_v = np.concatenate([np.zeros((0, v.shape[1])) if m == 0 else np.asarray(v_ref), v]).astype(np.float64)
    full = barycenter_matrix(all_u, all_v, u, v, tau)  # (M+N, N): rows references then candidates
    members = list(range(m))  # rows of `full` in T
    picks = []
    for _ in range(min(budget, n)):
        best, best_f = None, -np.inf
        for j in range(n):
            if j in picks:
                continue
            if not members:
                f = u[j]
            else:
                col = [full[i, j] for i in members]
                f = (sum(col) / len(col) + min(col)) if use_mean else min(col)
            if f > best_f:  # strict: first (smallest id) wins ties
                best, best_f = j, f
        picks.append(best)
        members.append(m + best)
    return ids[np.array(picks, dtype=np.int64)]


def top_diverse_k_bruteforce(u, v, ids, u_ref, v_ref, budget, tau=0.5):
    return _greedy_bruteforce(u, v, ids, u_ref, v_ref, budget, tau, use_mean=True)


def kcenter_bruteforce(u, v, ids, u_ref, v_ref, budget, tau=0.5):
    return _greedy_bruteforce(u, v, ids, u_ref, v_ref, budget, tau, use_mean=False)
