"""Samplers over scalar scores and class-stratified selection (docs/algorithms.md §11.4-11.6).

Every function takes candidate ``ids`` with aligned arrays and returns the chosen ids in pick order.
Candidates are put in canonical (id-sorted) order first, and every random draw comes from the given
seeded generator in a documented order, so the same inputs and seed give the same ids byte for byte.

- :func:`sample` ``top|power|softmax|softrank`` (Kirsch et al. 2023): Gumbel-top-k keys. ``top`` is
  :func:`alseg.selectors.top_k` exactly; ``power`` samples without replacement with probability
  proportional to s_i^beta.
- :func:`stratified_random` (§11.5): the budget split evenly over classes the pool images show, then
  uniform draws inside each class's stratum.
- :func:`clasp` (§11.6, after ClaSP PE): a share of the budget per class by power sampling on the
  class's own entropy score, the rest by power sampling on the image's entropy; :func:`beta_schedule`
  gives the log-linear beta of round t of T.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from alseg.errors import InputError, UnknownName
from alseg.registry import SAMPLERS
from alseg.selectors import _canonical, _check_budget, _check_rng, _check_scores, top_k

BETA_FIRST, BETA_LAST = 1.0, 100.0  # nnActive's exponential_schedule defaults
FOREGROUND_SHARE = 0.66  # ClaSP PE's share of the budget that goes to the class strata


def _keys(s: np.ndarray, sampler: str, beta: float, gumbel: np.ndarray) -> np.ndarray:
    """Sort keys (larger first) of scores ``s`` in canonical order, with one Gumbel(0, 1) per candidate."""
    if sampler == "power":
        if (s < 0).any():
            raise InputError("the power sampler needs scores >= 0 (it samples proportionally to score^beta)")
        with np.errstate(divide="ignore"):
            return beta * np.log(s) + gumbel  # s = 0 -> -inf: picked last
    if sampler == "softmax":
        return beta * s + gumbel
    if sampler == "softrank":
        order = np.lexsort((np.arange(s.shape[0]), -s))  # rank 1 = highest score, ties by id
        rank = np.empty(s.shape[0], dtype=np.float64)
        rank[order] = np.arange(1, s.shape[0] + 1)
        return -beta * np.log(rank) + gumbel
    raise UnknownName(f"--sampler: unknown {sampler!r}; choose one of: {', '.join(SAMPLERS)}")


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not (beta > 0 and np.isfinite(beta)):
        raise InputError(f"--beta must be a positive number, got {beta}")
    return beta


def _pick(keys: np.ndarray, gumbel: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` rows of ``rows`` with the largest keys; equal keys (all -inf ones among them) in the order
    of their Gumbel draws, so zero scores come last in seeded random order."""
    rows = np.asarray(rows, dtype=np.int64)
    ranked = rows[np.lexsort((rows, -gumbel[rows], -keys[rows]))]
    return ranked[:k]


def sample(scores: np.ndarray, ids: Sequence[str], budget: int, *, sampler: str = "top", beta: float = 1.0,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """``budget`` ids by ``sampler`` (§11.4): ``top`` the highest scores (ties by id, no randomness);
    otherwise keys k_i from one ``rng.gumbel(size=n)`` draw over the canonical order, the largest first.
    """
    if sampler == "top":
        return top_k(scores, ids, budget)
    sorted_ids, order = _canonical(ids)
    s = _check_scores(scores, sorted_ids, order)
    b = _check_budget(budget)
    rng = _check_rng(rng)
    beta = _check_beta(beta)
    gumbel = rng.gumbel(size=s.shape[0])
    keys = _keys(s, sampler, beta, gumbel)
    return sorted_ids[_pick(keys, gumbel, np.arange(s.shape[0]), b)]


def _split_evenly(total: int, n_strata: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` split over ``n_strata`` as evenly as possible; the remainder goes to strata drawn by
    ``rng.choice(n_strata, size=remainder, replace=False)``."""
    quota = np.full(n_strata, total // n_strata, dtype=np.int64)
    remainder = total - int(quota.sum())
    if remainder:
        quota[rng.choice(n_strata, size=remainder, replace=False)] += 1
    return quota


def _class_matrix(values: np.ndarray, order: np.ndarray, n: int, what: str) -> np.ndarray:
    m = np.asarray(values, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != n:
        raise InputError(f"{what} must be (n_ids, n_classes), got shape {m.shape} for {n} ids")
    if not np.isfinite(m).all():
        raise InputError(f"{what} hold NaN or inf")
    return m[order]


def _kept_classes(n_classes: int, exclude: Sequence[int]) -> np.ndarray:
    bad = [c for c in exclude if not 0 <= int(c) < n_classes]
    if bad:
        raise InputError(f"--exclude-classes: class index {bad[0]} is not in 0..{n_classes - 1}")
    return np.asarray([c for c in range(n_classes) if c not in set(int(e) for e in exclude)], dtype=np.int64)


def stratified_random(class_counts: np.ndarray, ids: Sequence[str], budget: int, *, rng: np.random.Generator,
                      min_count: int = 1, exclude: Sequence[int] = ()) -> np.ndarray:
    """Class-stratified random (§11.5), ids in pick order.

    ``class_counts`` (n, K): logit cells predicted as each class (or, for the oracle, ground-truth pixels).
    Stratum c = ids with count >= ``min_count``, for classes not in ``exclude`` and with members. Draws, in
    this order: the remainder strata (:func:`_split_evenly`), the visiting order ``rng.permutation``, then
    per stratum ``rng.choice`` among its members not yet chosen; a stratum that runs out passes the rest
    of its quota to one final uniform draw over all candidates not yet chosen.
    """
    sorted_ids, order = _canonical(ids)
    n = sorted_ids.shape[0]
    counts = _class_matrix(class_counts, order, n, "class counts")
    b = min(_check_budget(budget), n)
    rng = _check_rng(rng)
    kept = _kept_classes(counts.shape[1], exclude)
    member = counts[:, kept] >= min_count  # (n, C)
    strata = kept[member.any(axis=0)]
    taken = np.zeros(n, dtype=bool)
    picks: list[int] = []
    leftover = b
    if strata.size:
        quota = _split_evenly(b, strata.size, rng)
        leftover = 0
        for j in rng.permutation(strata.size):
            free = np.flatnonzero((counts[:, strata[j]] >= min_count) & ~taken)
            k = min(int(quota[j]), free.size)
            chosen = rng.choice(free, size=k, replace=False) if k else free[:0]
            taken[chosen] = True
            picks += chosen.tolist()
            leftover += int(quota[j]) - k
    if leftover:
        free = np.flatnonzero(~taken)
        chosen = rng.choice(free, size=min(leftover, free.size), replace=False)
        picks += chosen.tolist()
    return sorted_ids[np.asarray(picks, dtype=np.int64)]


def beta_schedule(round_index: int, n_rounds: int, beta_first: float = BETA_FIRST,
                  beta_last: float = BETA_LAST) -> float:
    """beta_t = beta_first (beta_last / beta_first)^((t-1)/(T-1)) for query round t of T (1-based); T = 1
    gives beta_first (§11.6)."""
    t, total = int(round_index), int(n_rounds)
    if total < 1 or not 1 <= t <= total:
        raise InputError(f"--round must be t/T with 1 <= t <= T, got {round_index}/{n_rounds}")
    if total == 1:
        return float(beta_first)
    return float(beta_first * (beta_last / beta_first) ** ((t - 1) / (total - 1)))


def clasp(class_scores: np.ndarray, image_scores: np.ndarray, ids: Sequence[str], budget: int, *,
          beta: float, rng: np.random.Generator, share: float = FOREGROUND_SHARE,
          exclude: Sequence[int] = ()) -> np.ndarray:
    """Class-stratified scheduled power entropy (§11.6), ids in pick order.

    ``class_scores`` (n, K): s_c(x), the entropy weighted by the predicted probability of class c;
    ``image_scores`` (n,): s(x), the mean normalised entropy. b_fg = round(share · budget) split evenly over
    the classes not in ``exclude`` (remainder by :func:`_split_evenly`); classes are visited in index order,
    each taking its quota by power sampling (one ``rng.gumbel(size=n)`` per class) on its own score among
    ids not yet chosen; the rest of the budget (and any quota a class could not fill) by power sampling on
    s(x), one last Gumbel draw.
    """
    sorted_ids, order = _canonical(ids)
    n = sorted_ids.shape[0]
    s_c = _class_matrix(class_scores, order, n, "class scores")
    s = _check_scores(image_scores, sorted_ids, order)
    b = min(_check_budget(budget), n)
    rng = _check_rng(rng)
    beta = _check_beta(beta)
    if not 0.0 <= share <= 1.0:
        raise InputError(f"the class share must be in [0, 1], got {share}")
    kept = _kept_classes(s_c.shape[1], exclude)
    b_fg = int(round(share * b)) if kept.size else 0
    quota = _split_evenly(b_fg, kept.size, rng) if kept.size else np.zeros(0, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    picks: list[int] = []
    for c, q in zip(kept, quota):
        gumbel = rng.gumbel(size=n)
        keys = _keys(s_c[:, c], "power", beta, gumbel)
        chosen = _pick(keys, gumbel, np.flatnonzero(~taken), int(q))
        taken[chosen] = True
        picks += chosen.tolist()
    rest = b - len(picks)
    gumbel = rng.gumbel(size=n)
    keys = _keys(s, "power", beta, gumbel)
    picks += _pick(keys, gumbel, np.flatnonzero(~taken), rest).tolist()
    return sorted_ids[np.asarray(picks, dtype=np.int64)]
