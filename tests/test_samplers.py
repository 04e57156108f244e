"""Samplers (§11.4), class-stratified random (§11.5) and ClaSP-style stratified power entropy (§11.6),
each against an independent value: exact enumeration, hand-worked allocations, a brute-force top-k."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alseg.errors import InputError
from alseg.samplers import beta_schedule, clasp, sample, stratified_random
from alseg.selectors import top_k

IDS = [f"img_{i}" for i in range(5)]


def exact_inclusion(weights: np.ndarray, budget: int) -> np.ndarray:
    """P(i chosen) when drawing ``budget`` items one by one without replacement, each with probability
    proportional to its weight among those left: a sum over every ordered sequence."""
    n = len(weights)
    p = np.zeros(n)
    for seq in itertools.permutations(range(n), budget):
        prob, left = 1.0, weights.sum()
        for i in seq:
            if left <= 0:
                prob = 0.0
                break
            prob *= weights[i] / left
            left -= weights[i]
        for i in seq:
            p[i] += prob
    return p


def test_top_is_todays_top_k():
    s = np.array([0.3, 0.9, 0.9, 0.1, 0.5])
    assert list(sample(s, IDS, 3)) == list(top_k(s, IDS, 3)) == ["img_1", "img_2", "img_4"]


def test_power_inclusion_frequencies_match_enumeration():
    s = np.array([0.2, 0.5, 1.0, 2.0, 0.7])
    beta, draws = 1.5, 20000
    exact = exact_inclusion(s ** beta, 2)
    assert exact.sum() == pytest.approx(2.0)
    hits = np.zeros(5)
    rng = np.random.default_rng(7)
    for _ in range(draws):
        for image_id in sample(s, IDS, 2, sampler="power", beta=beta, rng=rng):
            hits[IDS.index(image_id)] += 1
    freq = hits / draws
    sigma = np.sqrt(exact * (1 - exact) / draws)
    assert np.all(np.abs(freq - exact) < 5 * sigma + 1e-9), (freq, exact)


def test_zero_scores_come_last_in_seeded_random_order():
    s = np.array([0.0, 0.0, 0.0, 1.0, 0.0])
    seen = set()
    for seed in range(30):
        picked = list(sample(s, IDS, 3, sampler="power", beta=2.0, rng=np.random.default_rng(seed)))
        assert picked[0] == "img_3"
        seen.add(tuple(picked[1:]))
        assert picked == list(sample(s, IDS, 3, sampler="power", beta=2.0, rng=np.random.default_rng(seed)))
    assert len(seen) > 5  # the zeros' order varies with the seed


@pytest.mark.parametrize("sampler", ["power", "softmax", "softrank"])
def test_huge_beta_recovers_top(sampler):
    s = np.array([0.3, 0.9, 0.8, 0.1, 0.5])
    picked = sample(s, IDS, 3, sampler=sampler, beta=1e6, rng=np.random.default_rng(0))
    assert list(picked) == ["img_1", "img_2", "img_4"]


def test_power_refuses_negative_scores_and_bad_beta():
    with pytest.raises(InputError, match="scores >= 0"):
        sample(np.array([-1.0, 1, 1, 1, 1]), IDS, 2, sampler="power", rng=np.random.default_rng(0))
    with pytest.raises(InputError, match="--beta must be a positive number"):
        sample(np.ones(5), IDS, 2, sampler="power", beta=0, rng=np.random.default_rng(0))


# ------------------------------------------------------------------------------- stratified random
# 8 ids, classes 0 (background, excluded), 1 and 2. Stratum 1 = {a, b}; stratum 2 = {c, d, e}; f, g, h
# show only background.
S_IDS = list("abcdefgh")
COUNTS = np.array([[5, 3, 0], [5, 1, 0], [5, 0, 2], [5, 0, 9], [5, 0, 1], [5, 0, 0], [5, 0, 0], [5, 0, 0]])


def test_even_split_takes_each_stratum_quota():
    for seed in range(20):
        got = list(stratified_random(COUNTS, S_IDS, 4, rng=np.random.default_rng(seed), exclude=[0]))
        assert len(got) == 4 and {"a", "b"} <= set(got) and len(set(got) & set("cde")) == 2


def test_remainder_goes_to_a_drawn_stratum_and_an_exhausted_stratum_hands_over():
    sizes = set()
    for seed in range(40):
        got = set(stratified_random(COUNTS, S_IDS, 5, rng=np.random.default_rng(seed), exclude=[0]))
        # quotas {3, 2} or {2, 3}: stratum 1 holds only 2, so with 3 it passes 1 to the uniform draw
        assert len(got) == 5 and {"a", "b"} <= got
        sizes.add(len(got & set("cde")))
    assert sizes == {2, 3}  # 3 when stratum 2 drew the remainder or the uniform draw hit it


def test_excluded_and_absent_classes_make_no_stratum():
    only_background = np.zeros((8, 3))
    only_background[:, 0] = 4
    for seed in range(5):  # no stratum at all: plain uniform random over the candidates
        got = stratified_random(only_background, S_IDS, 3, rng=np.random.default_rng(seed), exclude=[0])
        assert len(set(got)) == 3
    with pytest.raises(InputError, match="class index 7"):
        stratified_random(COUNTS, S_IDS, 2, rng=np.random.default_rng(0), exclude=[7])


def test_stratified_is_reproducible_and_order_free():
    a = stratified_random(COUNTS, S_IDS, 5, rng=np.random.default_rng(3), exclude=[0])
    perm = np.random.default_rng(1).permutation(8)
    b = stratified_random(COUNTS[perm], [S_IDS[i] for i in perm], 5, rng=np.random.default_rng(3), exclude=[0])
    assert list(a) == list(b)


# ------------------------------------------------------------------------------------------- clasp
def test_clasp_with_huge_beta_is_class_stratified_top_k():
    rng = np.random.default_rng(5)
    n, k = 12, 4
    ids = [f"x{i:02d}" for i in range(n)]
    s_c = rng.random((n, k))
    s = rng.random(n)
    # 3 kept classes (0 excluded), budget 8, share 0.375 -> b_fg = 3: one per class, no remainder; then 5 by s
    got = list(clasp(s_c, s, ids, 8, beta=1e9, rng=np.random.default_rng(0), share=0.375, exclude=[0]))
    want, taken = [], set()
    for c in (1, 2, 3):  # brute force: classes in index order, best free id by s_c
        best = max((i for i in range(n) if i not in taken), key=lambda i: (s_c[i, c], -i))
        taken.add(best)
        want.append(ids[best])
    rest = sorted((i for i in range(n) if i not in taken), key=lambda i: (-s[i], i))[:5]
    want += [ids[i] for i in rest]
    assert got == want


def test_clasp_fills_the_budget_when_classes_run_short():
    ids = ["a", "b", "c"]
    got = clasp(np.ones((3, 2)), np.array([0.1, 0.2, 0.3]), ids, 3, beta=1.0, rng=np.random.default_rng(0),
                share=1.0)
    assert sorted(got) == ids


def test_beta_schedule_hand_values():
    assert beta_schedule(1, 3) == pytest.approx(1.0)
    assert beta_schedule(2, 3) == pytest.approx(10.0)
    assert beta_schedule(3, 3) == pytest.approx(100.0)
    assert beta_schedule(1, 1) == pytest.approx(1.0)
    with pytest.raises(InputError, match="--round must be t/T"):
        beta_schedule(4, 3)


def test_select_samples_scalar_scores_through_the_sampler(tmp_path, ids40):
    """select --sampler power: the seeded sample of the image scores, the same on a rerun; top unchanged;
    a sampler on a strategy without a scalar score is one error."""
    from alseg.errors import InputError as _InputError
    from alseg.files.hdf5 import ScoresReader
    from alseg.files.idlist import read_ids, write_ids
    from alseg.stages.score import score
    from alseg.stages.select import select
    from conftest import make_pool

    pool = make_pool(tmp_path / "pool.h5", ids40)
    score(pool, strategies=["entropy"], out_path=tmp_path / "s.h5")
    labeled = write_ids(tmp_path / "lab.txt", ids40[:5])
    with ScoresReader(tmp_path / "s.h5") as s:
        ent = s.score("entropy", ids40[5:])
    runs = []
    for name in ("a", "b"):
        runs.append(select("entropy", budget=6, labeled_path=labeled, out_path=tmp_path / f"{name}.txt",
                           scores_path=tmp_path / "s.h5", seed=3, sampler="power", beta=2.0).selected)
    assert runs[0] == runs[1] == list(sample(ent, ids40[5:], 6, sampler="power", beta=2.0,
                                             rng=np.random.default_rng(3)))
    top = select("entropy", budget=6, labeled_path=labeled, out_path=tmp_path / "t.txt", scores_path=tmp_path / "s.h5")
    assert top.selected == list(top_k(ent, ids40[5:], 6)) == read_ids(tmp_path / "t.txt")
    with pytest.raises(_InputError, match="--sampler power samples by a scalar score"):
        select("coreset", budget=2, labeled_path=labeled, out_path=tmp_path / "c.txt", pool_path=pool, sampler="power")
