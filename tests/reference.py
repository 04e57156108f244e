"""Slow, obvious reference implementations (per-pixel / per-pair Python loops, float64).

The vectorised code in ``alseg.strategies`` and ``alseg.selectors`` must agree with these.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-8


def softmax_pixel(v):
    v = np.asarray(v, dtype=np.float64)
    e = np.exp(v - v.max())
    return e / e.sum()


def probs_loop(logits):
    n, k, h, w = logits.shape
    out = np.zeros((n, k, h, w))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                out[i, :, y, x] = softmax_pixel(logits[i, :, y, x])
    return out


def entropy_pixel(p):
    k = len(p)
    if k == 1:
        return 0.0
    total = 0.0
    for pk in p:
        if pk > 0:
            total -= pk * math.log(pk)
    return total / math.log(k)


def margin_pixel(p):
    s = sorted(p, reverse=True)
    second = s[1] if len(s) > 1 else 0.0
    return 1.0 - (s[0] - second)


def least_confidence_pixel(p):
    return 1.0 - max(p)


PIXEL = {"entropy": entropy_pixel, "margin": margin_pixel, "least-confidence": least_confidence_pixel}


def pixel_scores_loop(logits, scorer):
    probs = probs_loop(logits)
    n, k, h, w = probs.shape
    out = np.zeros((n, h, w))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                out[i, y, x] = PIXEL[scorer](list(probs[i, :, y, x]))
    return out


def argmax_first(p):
    best = 0
    for k in range(len(p)):
        if p[k] > p[best]:
            best = k
    return best


def contextual_diversity_loop(logits):
    probs = probs_loop(logits)
    n, k, h, w = probs.shape
    P = np.zeros((n, k, k))
    present = np.zeros((n, k), dtype=bool)
    for i in range(n):
        for c in range(k):
            num = np.zeros(k)
            den = 0.0
            plain = np.zeros(k)
            count = 0
            for y in range(h):
                for x in range(w):
                    p = probs[i, :, y, x]
                    if argmax_first(p) == c:
                        hh = entropy_pixel(list(p))
                        num += hh * p
                        den += hh
                        plain += p
                        count += 1
            if count:
                present[i, c] = True
                P[i, c] = num / den if den > 0 else plain / count
    return P, present


def badge_window_loop(k, h, w, target=400):
    best = None
    for s in range(1, min(h, w) + 1):
        gap = abs(k * (h // s) * (w // s) - target)
        if best is None or gap < best[0] or (gap == best[0] and s > best[1]):
            best = (gap, s)
    return best[1]


def badge_logit_loop(logits, s):
    probs = probs_loop(logits)
    n, k, h, w = probs.shape
    hs, ws = h // s, w // s
    out = np.zeros((n, k, hs, ws))
    for i in range(n):
        for a in range(hs):
            for b in range(ws):
                acc = np.zeros(k)
                for y in range(a * s, a * s + s):
                    for x in range(b * s, b * s + s):
                        p = probs[i, :, y, x]
                        g = p.copy()
                        g[argmax_first(p)] -= 1.0
                        acc += g
                out[i, :, a, b] = acc / (s * s)
    return out.reshape(n, -1)


def badge_last_layer_loop(logits, features):
    probs = probs_loop(logits)
    n, k, h, w = probs.shape
    d = features.shape[1]
    out = np.zeros((n, k, d))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                p = probs[i, :, y, x]
                g = p.copy()
                g[argmax_first(p)] -= 1.0
                out[i] += np.outer(g, features[i, :, y, x])
    return (out / (h * w)).reshape(n, -1)


def symkl_pair(pa, ma, pb, mb):
    """Spec section 7 distance between two images, by the definition, class by class."""
    total = 0.0
    for c in range(len(ma)):
        if ma[c] and mb[c]:
            kl_ab = sum(pa[c, j] * (math.log(max(pa[c, j], EPS)) - math.log(max(pb[c, j], EPS))) for j in range(len(ma)))
            kl_ba = sum(pb[c, j] * (math.log(max(pb[c, j], EPS)) - math.log(max(pa[c, j], EPS))) for j in range(len(ma)))
            total += 0.5 * (kl_ab + kl_ba)
        elif ma[c] != mb[c]:
            total += 0.5 * math.log(1.0 / EPS)
    return total


def full_distance_matrix(a, b, distance):
    """Brute-force len(a) x len(b) distance matrix."""
    if distance == "euclidean":
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        out = np.zeros((len(a), len(b)))
        for i in range(len(a)):
            for j in range(len(b)):
                out[i, j] = math.sqrt(((a[i] - b[j]) ** 2).sum())
        return out
    (pa, ma), (pb, mb) = a, b
    out = np.zeros((len(pa), len(pb)))
    for i in range(len(pa)):
        for j in range(len(pb)):
            out[i, j] = symkl_pair(np.asarray(pa[i], np.float64), ma[i], np.asarray(pb[j], np.float64), mb[j])
    return out


def kcenter_bruteforce(unlabeled, labeled, ids, budget, distance="euclidean"):
    """Greedy k-center on a full N x (N + L) matrix; ids sorted first, ties by id."""
    ids = np.asarray(ids).astype(str)
    order = np.argsort(ids, kind="stable")
    if distance == "euclidean":
        u = np.asarray(unlabeled)[order]
        norms = np.sqrt((u.astype(np.float64) ** 2).sum(axis=1))
        n_lab = 0 if labeled is None else len(labeled)
    else:
        u = (np.asarray(unlabeled[0])[order], np.asarray(unlabeled[1])[order])
        norms = np.sqrt((u[0].astype(np.float64) ** 2).sum(axis=(1, 2)))
        n_lab = 0 if labeled is None else len(labeled[0])
    sids = ids[order]
    n = len(sids)
    d_uu = full_distance_matrix(u, u, distance)
    mind = np.full(n, np.inf)
    if n_lab:
        mind = full_distance_matrix(u, labeled, distance).min(axis=1)
    picks = []
    for step in range(min(budget, n)):
        if step == 0 and not n_lab:
            j = int(np.argmax(norms))
        else:
            cand = np.where(np.isin(np.arange(n), picks), -np.inf, mind)
            j = int(np.argmax(cand))
        picks.append(j)
        mind = np.minimum(mind, d_uu[:, j])
    return sids[picks]
