"""Statistics over an experiment's results: learning curves, the area under them, paired differences
against a baseline with confidence intervals, labels saved, and the pairwise penalty matrix.

Pure functions, no I/O. The input is a tidy list of records, one per (seed, strategy, round): a
:class:`Record` or any mapping / object with the fields ``seed, strategy, round, n_labeled, miou``.

AULC (area under the learning curve) is the trapezoid integral of mIoU over the labeled-set size,
divided by the x range, so it is a mean mIoU over the budget (in percent, like mIoU). Paired
differences pair two strategies by seed (same seed = same round-0 set and model); their confidence
interval is Student's t over seeds: ``mean ± t_{1-(1-c)/2, n-1} · s / sqrt(n)`` with ``s`` the sample std.

The penalty matrix follows Ash et al. 2020 (BADGE, arXiv 1906.03671, section 5): for every round a
paired two-sided t-test over seeds decides whether strategy i is significantly better than j;
``P[i, j]`` is the share of compared rounds where it is, and ``phi = P.mean(axis=0)`` (the column means,
diagonal included) says how often each strategy is beaten: lower is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

__all__ = [
    "Curve", "Interval", "PairedDiff", "PenaltyMatrix", "Record", "aulc", "aulc_by_seed", "labels_to_reach",
    "learning_curves", "paired_differences", "paired_p_value", "paired_vs_baseline", "penalty_matrix", "t_interval",
]

# Differences that are all equal up to this (mIoU is in percent) have zero variance: the t statistic is
# undefined (0/0) or infinite only through rounding, so such a round is compared but never significant.
ZERO_VARIANCE_ATOL = 1e-9


@dataclass(frozen=True)
class Record:
    seed: int
    strategy: str
    round: int
    n_labeled: int
    miou: float


@dataclass(frozen=True)
class Curve:
    """One strategy's learning curve; arrays are aligned, one entry per round (ascending)."""

    rounds: np.ndarray  # (R,) int
    n_labeled: np.ndarray  # (R,) float: mean over seeds of the labeled count (equal across seeds in a sane run)
    mean: np.ndarray  # (R,) mIoU mean over seeds
    std: np.ndarray  # (R,) sample std over seeds (ddof=1) when >= 2 seeds, else 0
    n_seeds: np.ndarray  # (R,) int, how many seeds have this round


@dataclass(frozen=True)
class PenaltyMatrix:
    """Unpacks as ``strategies, P, phi = penalty_matrix(...)``; ``n_compared[i, j]`` = rounds tested."""

    strategies: list[str]
    P: np.ndarray  # (S, S) float in [0, 1]; P[i, j] = share of compared rounds where i beats j
    phi: np.ndarray  # (S,) column means of P (how often a strategy is beaten; lower is better)
    n_compared: np.ndarray  # (S, S) int

    def __iter__(self) -> Iterator[Any]:
        return iter((self.strategies, self.P, self.phi))


def _as_record(r: Any) -> Record:
    if isinstance(r, Record):
        return r
    get = r.__getitem__ if isinstance(r, Mapping) else lambda k: getattr(r, k)
    return Record(int(get("seed")), str(get("strategy")), int(get("round")), int(get("n_labeled")), float(get("miou")))


def _ordered_strategies(records: list[Record]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        seen.setdefault(r.strategy, None)
    return list(seen)


def learning_curves(results: Iterable[Any]) -> dict[str, Curve]:
    """Per strategy (in order of first appearance): mean and std of mIoU over seeds per round.

    ``std`` is the sample standard deviation (``ddof=1``) when a round has >= 2 seeds, else 0 (one seed
    has no spread to show). The x value is the mean labeled count over the seeds of that round.
    """
    records = [_as_record(r) for r in results]
    curves: dict[str, Curve] = {}
    for strategy in _ordered_strategies(records):
        by_round: dict[int, list[Record]] = {}
        for r in records:
            if r.strategy == strategy:
                by_round.setdefault(r.round, []).append(r)
        rounds = sorted(by_round)
        mean, std, n_lab, n_seeds = [], [], [], []
        for rd in rounds:
            values = np.array([r.miou for r in by_round[rd]], dtype=np.float64)
            mean.append(values.mean())
            std.append(values.std(ddof=1) if len(values) >= 2 else 0.0)
            n_lab.append(np.mean([r.n_labeled for r in by_round[rd]]))
            n_seeds.append(len(values))
        curves[strategy] = Curve(
            rounds=np.array(rounds, dtype=np.int64),
            n_labeled=np.array(n_lab, dtype=np.float64),
            mean=np.array(mean, dtype=np.float64),
            std=np.array(std, dtype=np.float64),
            n_seeds=np.array(n_seeds, dtype=np.int64),
        )
    return curves


def paired_differences(records: list[Record], a: str, b: str, round_: int) -> np.ndarray:
    """``mIoU_a - mIoU_b`` per seed that has ``round_`` for both strategies, in seed order."""
    va = {r.seed: r.miou for r in records if r.strategy == a and r.round == round_}
    vb = {r.seed: r.miou for r in records if r.strategy == b and r.round == round_}
    seeds = sorted(set(va) & set(vb))
    return np.array([va[s] - vb[s] for s in seeds], dtype=np.float64)


def paired_p_value(diff: Any) -> float:
    """Two-sided p-value of the paired t-test that the mean of ``diff`` (per-seed differences) is 0.

    NaN when there is no test: fewer than 2 seeds, or differences equal up to ``ZERO_VARIANCE_ATOL``.
    """
    from scipy import stats as _st

    diff = np.asarray(diff, dtype=np.float64).ravel()
    if len(diff) < 2 or np.allclose(diff, diff[0], rtol=0.0, atol=ZERO_VARIANCE_ATOL):
        return float("nan")
    return float(_st.ttest_rel(diff, np.zeros_like(diff)).pvalue)


def _beats(diff: np.ndarray, alpha: float) -> bool:
    p = paired_p_value(diff)
    return bool(np.isfinite(p) and p < alpha and diff.mean() > 0)


def penalty_matrix(results: Iterable[Any], alpha: float = 0.05) -> PenaltyMatrix:
    """Pairwise penalty matrix over rounds R >= 1 (round 0 is shared by all strategies, so it is skipped).

    For each ordered pair (i, j) and each round where both strategies have >= 2 common seeds, a paired
    two-sided t-test (``scipy.stats.ttest_rel``) of mIoU_i vs mIoU_j over those seeds; i beats j when
    ``p < alpha`` and the mean difference is > 0. ``P[i, j]`` = rounds i beats j / rounds compared (0 when
    none could be compared, e.g. with a single seed). ``phi[j] = mean_i P[i, j]`` over all S rows, the
    zero diagonal included. Zero-variance differences are compared but never significant.
    """
    records = [_as_record(r) for r in results]
    strategies = _ordered_strategies(records)
    s = len(strategies)
    wins = np.zeros((s, s), dtype=np.int64)
    compared = np.zeros((s, s), dtype=np.int64)
    rounds = sorted({r.round for r in records if r.round >= 1})
    for i, a in enumerate(strategies):
        for j, b in enumerate(strategies):
            if i == j:
                continue
            for rd in rounds:
                diff = paired_differences(records, a, b, rd)
                if len(diff) < 2:
                    continue
                compared[i, j] += 1
                wins[i, j] += _beats(diff, alpha)
    P = np.divide(wins, compared, out=np.zeros((s, s), dtype=np.float64), where=compared > 0)
    phi = P.mean(axis=0) if s else np.zeros(0)
    return PenaltyMatrix(strategies, P, phi, compared)


# ------------------------------------------------------------------------------- AULC, CIs, labels saved


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with a two-sided Student-t confidence interval; ``low``/``high`` are NaN for n < 2."""

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedDiff:
    """``strategy - baseline`` paired by seed, at one round (``round``) or for the AULC (``round`` None)."""

    strategy: str
    baseline: str
    round: int | None
    n_labeled: float | None  # mean labeled count of that round (None for the AULC)
    diff: Interval
    p_value: float = float("nan")  # paired two-sided t-test over seeds (:func:`paired_p_value`); NaN: no test


def aulc(n_labeled: Any, miou: Any) -> float:
    """Area under one learning curve, normalised by its x range: a mean mIoU over the budget.

    ``n_labeled`` (R,) increasing, ``miou`` (R,): trapezoid rule ``sum((x[i+1]-x[i]) (y[i]+y[i+1]) / 2)
    / (x[-1] - x[0])``. One point: its own value.
    """
    x = np.asarray(n_labeled, dtype=np.float64)
    y = np.asarray(miou, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"aulc needs two aligned non-empty 1-d arrays, got shapes {x.shape} and {y.shape}")
    if len(x) == 1:
        return float(y[0])
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"aulc needs increasing labeled counts, got {x.tolist()}")
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def aulc_by_seed(results: Iterable[Any], rounds: Iterable[int] | None = None) -> dict[str, dict[int, float]]:
    """``{strategy: {seed: AULC}}`` over ``rounds`` (default: every round any record has).

    A (strategy, seed) lacking one of those rounds (an unfinished run) is left out: its curve would span
    a shorter budget, and its area would not compare with the others.
    """
    records = [_as_record(r) for r in results]
    wanted = sorted(set(rounds) if rounds is not None else {r.round for r in records})
    out: dict[str, dict[int, float]] = {}
    for strategy in _ordered_strategies(records):
        per_seed: dict[int, dict[int, Record]] = {}
        for r in records:
            if r.strategy == strategy:
                per_seed.setdefault(r.seed, {})[r.round] = r
        out[strategy] = {}
        for seed in sorted(per_seed):
            by_round = per_seed[seed]
            if not wanted or any(rd not in by_round for rd in wanted):
                continue
            pts = [by_round[rd] for rd in wanted]
            out[strategy][seed] = aulc([p.n_labeled for p in pts], [p.miou for p in pts])
    return out


def t_interval(values: Any, confidence: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval of ``values`` (n - 1 degrees of freedom); n < 2: NaN bounds."""
    from scipy import stats as _st

    v = np.asarray(values, dtype=np.float64).ravel()
    n = len(v)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(v.mean())
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n)
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def paired_vs_baseline(results: Iterable[Any], baseline: str = "random",
                       confidence: float = 0.95) -> list[PairedDiff]:
    """Every other strategy minus ``baseline``, paired by seed: per round R >= 1, then for the AULC.

    Round 0 is shared (difference 0 by construction) and skipped. Empty when ``baseline`` is absent.
    Rounds and AULCs use only seeds both strategies have; the AULC spans the rounds of :func:`aulc_by_seed`.
    """
    records = [_as_record(r) for r in results]
    strategies = _ordered_strategies(records)
    if baseline not in strategies:
        return []
    areas = aulc_by_seed(records)
    out: list[PairedDiff] = []
    for strategy in strategies:
        if strategy == baseline:
            continue
        rounds = sorted({r.round for r in records if r.strategy == strategy and r.round >= 1})
        for rd in rounds:
            diff = paired_differences(records, strategy, baseline, rd)
            if not len(diff):
                continue
            n_lab = np.mean([r.n_labeled for r in records if r.strategy == strategy and r.round == rd])
            out.append(PairedDiff(strategy, baseline, rd, float(n_lab), t_interval(diff, confidence),
                                  paired_p_value(diff)))
        seeds = sorted(set(areas[strategy]) & set(areas[baseline]))
        if seeds:
            diff = np.array([areas[strategy][s] - areas[baseline][s] for s in seeds])
            out.append(PairedDiff(strategy, baseline, None, None, t_interval(diff, confidence), paired_p_value(diff)))
    return out


def labels_to_reach(n_labeled: Any, miou: Any, target: float) -> float | None:
    """The smallest labeled count at which the piecewise-linear curve ``(n_labeled, miou)`` reaches
    ``target``; None if it never does. Between two rounds the curve is interpolated linearly."""
    x = np.asarray(n_labeled, dtype=np.float64)
    y = np.asarray(miou, dtype=np.float64)
    if len(x) == 0:
        return None
    if y[0] >= target:
        return float(x[0])
    for i in range(len(x) - 1):
        if y[i] < target <= y[i + 1]:
            return float(x[i] + (target - y[i]) / (y[i + 1] - y[i]) * (x[i + 1] - x[i]))
    return None
