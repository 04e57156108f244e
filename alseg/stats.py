"""Statistics over an experiment's results: learning curves and the pairwise penalty matrix.

Pure functions, no I/O. The input is a tidy list of records, one per (seed, strategy, round): a
:class:`Record` or any mapping / object with the fields ``seed, strategy, round, n_labeled, miou``.

The penalty matrix follows Ash et al. 2020 (BADGE, arXiv 1906.03671, section 5): for every round a
paired two-sided t-test over seeds decides whether strategy i is significantly better than j;
``P[i, j]`` is the share of compared rounds where it is, and ``phi = P.mean(axis=0)`` (the column means,
diagonal included) says how often each strategy is beaten: lower is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

__all__ = ["Curve", "PenaltyMatrix", "Record", "learning_curves", "paired_differences", "penalty_matrix"]

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


def _beats(diff: np.ndarray, alpha: float) -> bool:
    from scipy import stats as _st

    if np.allclose(diff, diff[0], rtol=0.0, atol=ZERO_VARIANCE_ATOL):
        return False  # zero variance: no test (see ZERO_VARIANCE_ATOL)
    res = _st.ttest_rel(diff, np.zeros_like(diff))
    p = float(res.pvalue)
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
