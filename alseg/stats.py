"""Statistics over an experiment's results: learning curves, the area under them, paired differences
against a baseline with confidence intervals, labels saved, and the pairwise penalty matrix.

Pure functions, no I/O. The input is a tidy list of records, one per (seed, strategy, round): a
:class:`Record` or any mapping / object with the fields ``seed, strategy, round, n_labeled, miou``.

Learning curves can be read against another x than the labeled-set size (``learning_curves(..., x="clicks")``:
any numeric field of the records, e.g. the annotation costs ``labelled_percent`` and ``clicks``), and two
curves compared at equal x (:func:`value_at`, :func:`cost_levels`, :func:`at_equal_cost`).

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
    "Curve", "EqualCost", "Interval", "PairedDiff", "PenaltyMatrix", "Record", "at_equal_cost", "aulc", "aulc_by_seed",
    "cost_levels", "labels_to_reach", "learning_curves", "paired_differences", "paired_p_value", "paired_vs_baseline",
    "penalty_matrix", "t_interval", "value_at",
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
    x: np.ndarray | None = None  # (R,) float: mean over seeds of the x asked for (learning_curves(x=...)); else n_labeled

    def __post_init__(self) -> None:
        if self.x is None:
            object.__setattr__(self, "x", self.n_labeled)


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


def _field(r: Any, name: str) -> Any:
    return r.get(name) if isinstance(r, Mapping) else getattr(r, name, None)


def learning_curves(results: Iterable[Any], x: str | None = None) -> dict[str, Curve]:
    """Per strategy (in order of first appearance): mean and std of mIoU over seeds per round.

    ``std`` is the sample standard deviation (``ddof=1``) when a round has >= 2 seeds, else 0 (one seed
    has no spread to show). ``n_labeled`` is the mean labeled count over the seeds of that round.

    ``x``: another field of each result to read the curve against (``"labelled_percent"``, ``"clicks"``); a
    result whose ``x`` is None (not recorded) is left out, so a round or a strategy may have no point, and
    ``Curve.x`` is the mean over seeds of that field per round. Without ``x``, ``Curve.x`` is ``n_labeled``.
    """
    items = list(results)
    if x is not None:
        items = [r for r in items if _field(r, x) is not None]
    xs = [float(_field(r, x)) for r in items] if x is not None else None
    records = [_as_record(r) for r in items]
    curves: dict[str, Curve] = {}
    for strategy in _ordered_strategies(records):
        by_round: dict[int, list[int]] = {}
        for k, r in enumerate(records):
            if r.strategy == strategy:
                by_round.setdefault(r.round, []).append(k)
        rounds = sorted(by_round)
        mean, std, n_lab, n_seeds, x_mean = [], [], [], [], []
        for rd in rounds:
            values = np.array([records[k].miou for k in by_round[rd]], dtype=np.float64)
            mean.append(values.mean())
            std.append(values.std(ddof=1) if len(values) >= 2 else 0.0)
            n_lab.append(np.mean([records[k].n_labeled for k in by_round[rd]]))
            n_seeds.append(len(values))
            if xs is not None:
                x_mean.append(np.mean([xs[k] for k in by_round[rd]]))
        curves[strategy] = Curve(
            rounds=np.array(rounds, dtype=np.int64),
            n_labeled=np.array(n_lab, dtype=np.float64),
            mean=np.array(mean, dtype=np.float64),
            std=np.array(std, dtype=np.float64),
            n_seeds=np.array(n_seeds, dtype=np.int64),
            x=np.array(x_mean, dtype=np.float64) if xs is not None else None,
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


# ------------------------------------------------------------------------------------ equal annotation cost


@dataclass(frozen=True)
class EqualCost:
    """One strategy at one cost level: its mean curve read there, and its paired difference to a baseline."""

    strategy: str
    x: str  # the cost the level is in ("clicks", "labelled_percent")
    level: float
    miou: float | None  # the mean curve (mean x, mean mIoU per round) at ``level``, linear between rounds; None: not reached
    baseline: str | None = None
    diff: Interval | None = None  # per seed: own curve at level minus the baseline's, over the seeds where both reach it
    p_value: float = float("nan")


def value_at(x: Any, y: Any, level: float) -> float | None:
    """The piecewise-linear curve through ``(x, y)`` (x non-decreasing) at ``level``: linear between the two
    points around it, the point itself on a point (the first one where x repeats). None outside
    ``[x[0], x[-1]]``: the curve starts above the level or never reaches it."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if len(xa) == 0 or level < xa[0] or level > xa[-1]:
        return None
    for i in range(len(xa)):
        if xa[i] == level:
            return float(ya[i])
        if i + 1 < len(xa) and xa[i] < level < xa[i + 1]:
            return float(ya[i] + (level - xa[i]) / (xa[i + 1] - xa[i]) * (ya[i + 1] - ya[i]))
    return None


def cost_levels(curves: Mapping[str, Curve], fractions: Iterable[float] = (0.25, 0.5, 1.0)) -> list[float]:
    """The levels to compare curves at. L = the largest x every curve reaches (the smallest last ``Curve.x``),
    S = the largest first x (every curve has a point at or below it; with a shared round 0, the common start):
    ``S + f · (L − S)`` for each of ``fractions`` (a quarter, half and all of the cost added after the start),
    then the largest x any curve reaches when that is beyond L (where the shorter curves show "not reached").
    Ascending, without repeats; empty without curves. When the curves do not overlap (S > L): L and the largest."""
    pts = [(float(c.x[0]), float(c.x[-1])) for c in curves.values() if len(c.x)]
    if not pts:
        return []
    start, common, longest = max(p[0] for p in pts), min(p[1] for p in pts), max(p[1] for p in pts)
    if start > common:
        levels = {common, longest}
    else:
        levels = {start + f * (common - start) for f in fractions} | ({longest} if longest > common else set())
    return [float(v) for v in sorted(levels)]


def at_equal_cost(results: Iterable[Any], x: str, levels: Iterable[float], baseline: str | None = None,
                  confidence: float = 0.95) -> list[EqualCost]:
    """Every strategy's mIoU at each of ``levels`` of the cost ``x`` (a field of the results, like
    ``learning_curves(x=...)``): the strategy's mean curve read at the level with :func:`value_at`.

    With ``baseline``: per seed, the strategy's own curve (its rounds' x and mIoU) at the level minus the
    baseline's curve of the same seed there, over the seeds where both reach it: mean, Student-t interval and
    paired p-value (:func:`t_interval`, :func:`paired_p_value`). Rows: strategy by strategy, levels ascending.
    """
    items = [r for r in results if _field(r, x) is not None]
    curves = learning_curves(items, x=x)
    per_seed: dict[tuple[str, int], list[tuple[int, float, float]]] = {}
    for r in items:
        rec = _as_record(r)
        per_seed.setdefault((rec.strategy, rec.seed), []).append((rec.round, float(_field(r, x)), rec.miou))
    seed_value: dict[tuple[str, int, float], float | None] = {}
    levels = list(levels)
    for (strategy, seed), pts in per_seed.items():
        pts.sort()
        for level in levels:
            seed_value[strategy, seed, level] = value_at([p[1] for p in pts], [p[2] for p in pts], level)
    if baseline is not None and baseline not in curves:
        baseline = None
    out = []
    for strategy, c in curves.items():
        for level in levels:
            row = EqualCost(strategy, x, float(level), value_at(c.x, c.mean, level))
            if baseline is not None and strategy != baseline:
                seeds = sorted(s for (st, s) in per_seed if st == strategy and (baseline, s) in per_seed)
                diff = np.array([seed_value[strategy, s, level] - seed_value[baseline, s, level] for s in seeds
                                 if seed_value[strategy, s, level] is not None
                                 and seed_value[baseline, s, level] is not None], dtype=np.float64)
                row = EqualCost(strategy, x, float(level), row.miou, baseline,
                                t_interval(diff, confidence) if len(diff) else None, paired_p_value(diff))
            out.append(row)
    return out
