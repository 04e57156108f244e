"""Selectors of alseg.selectors: brute-force references, hand values and invariance properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from alseg import selectors as Z
from alseg.errors import EmptyPoolError, InputError, UnknownName
from alseg.strategies import contextual_diversity


def make_ids(n, prefix="img"):
    return np.array([f"{prefix}{i:04d}" for i in range(n)])


def shuffled(rng, ids, *arrays):
    perm = rng.permutation(len(ids))
    out = [np.asarray(ids)[perm]]
    for a in arrays:
        if isinstance(a, tuple):
            out.append(tuple(np.asarray(x)[perm] for x in a))
        else:
            out.append(np.asarray(a)[perm])
    return out


def cd_embeddings(seed, n, k=4):
    logits = np.random.default_rng(seed).standard_normal((n, k, 3, 3)).astype(np.float32) * 2.0
    logits[::3, 0] -= 20.0  # class 0 absent in every third image
    return contextual_diversity(logits)


# ------------------------------------------------------------------ random


def test_random_select_properties():
    ids = make_ids(50)
    a = Z.random_select(ids, 10, rng=np.random.default_rng(1))
    assert len(a) == 10 and len(set(a)) == 10 and set(a) <= set(ids)
    (ids_s,) = shuffled(np.random.default_rng(0), ids)
    np.testing.assert_array_equal(Z.random_select(ids_s, 10, rng=np.random.default_rng(1)), a)
    np.testing.assert_array_equal(Z.random_select(ids, 10, rng=np.random.default_rng(1)), a)
    assert list(Z.random_select(ids, 10, rng=np.random.default_rng(2))) != list(a)
    everything = Z.random_select(ids, 80, rng=np.random.default_rng(1))
    assert sorted(everything) == sorted(ids)
    with pytest.raises(EmptyPoolError):
        Z.random_select([], 3, rng=np.random.default_rng(0))
    with pytest.raises(InputError, match="Generator"):
        Z.random_select(ids, 3, rng=None)
    with pytest.raises(InputError, match="unique"):
        Z.random_select(["a", "b", "a"], 1, rng=np.random.default_rng(0))


# ------------------------------------------------------------------ top-k


def test_top_k_ties_by_id_and_order_invariance():
    ids = np.array(["d", "b", "a", "c", "e"])
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1])
    np.testing.assert_array_equal(Z.top_k(scores, ids, 3), ["b", "c", "a"])
    np.testing.assert_array_equal(Z.top_k(scores, ids, 99), ["b", "c", "a", "d", "e"])
    assert Z.top_k(scores, ids, 0).tolist() == []
    ids_s, scores_s = shuffled(np.random.default_rng(3), ids, scores)
    np.testing.assert_array_equal(Z.top_k(scores_s, ids_s, 4), Z.top_k(scores, ids, 4))
    with pytest.raises(EmptyPoolError):
        Z.top_k([], [], 1)
    with pytest.raises(Exception, match="NaN"):
        Z.top_k([0.1, np.nan], ["a", "b"], 1)


@settings(max_examples=30, deadline=None)
@given(
    scores=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=1, max_size=30),
    budget=st.integers(0, 35),
    seed=st.integers(0, 1000),
)
def test_top_k_permutation_property(scores, budget, seed):
    ids = make_ids(len(scores))
    picked = Z.top_k(np.array(scores), ids, budget)
    assert len(picked) == min(budget, len(ids)) and len(set(picked)) == len(picked)
    ids_s, scores_s = shuffled(np.random.default_rng(seed), ids, np.array(scores))
    np.testing.assert_array_equal(Z.top_k(scores_s, ids_s, budget), picked)


# ------------------------------------------------------------------ stochastic batches


def expected_best_group(scores_sorted, ids_sorted, b, seed, groups=None):
    rng = np.random.default_rng(seed)
    n = len(ids_sorted)
    if groups is None:
        perm = rng.permutation(n)
        cut = [perm[i * b : (i + 1) * b] for i in range(n // b)]
    else:
        cut = [rng.choice(n, size=b, replace=False) for _ in range(groups)]
    means = [scores_sorted[g].mean() for g in cut]
    return set(ids_sorted[cut[int(np.argmax(means))]])


@pytest.mark.parametrize("groups", [None, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stochastic_batches_best_group(groups, seed):
    ids = make_ids(53)
    scores = np.random.default_rng(10 + seed).random(53)
    got = Z.stochastic_batches(scores, ids, 5, rng=np.random.default_rng(seed), groups=groups)
    assert len(got) == 5 and len(set(got)) == 5
    assert set(got) == expected_best_group(scores, ids, 5, seed, groups)
    # ranked inside the group by score desc
    pos = {i: k for k, i in enumerate(ids)}
    assert list(scores[[pos[i] for i in got]]) == sorted(scores[[pos[i] for i in got]], reverse=True)
    # row order does not matter, the seed does
    ids_s, scores_s = shuffled(np.random.default_rng(99), ids, scores)
    np.testing.assert_array_equal(
        Z.stochastic_batches(scores_s, ids_s, 5, rng=np.random.default_rng(seed), groups=groups), got
    )


def test_stochastic_batches_seed_and_small_pool():
    ids = make_ids(40)
    scores = np.random.default_rng(0).random(40)
    runs = {tuple(Z.stochastic_batches(scores, ids, 4, rng=np.random.default_rng(s))) for s in range(5)}
    assert len(runs) > 1
    small = Z.stochastic_batches(scores[:4], ids[:4], 4, rng=np.random.default_rng(0))
    assert sorted(small) == sorted(ids[:4])
    assert sorted(Z.stochastic_batches(scores[:3], ids[:3], 10, rng=np.random.default_rng(0))) == sorted(ids[:3])
    with pytest.raises(EmptyPoolError):
        Z.stochastic_batches([], [], 3, rng=np.random.default_rng(0))


# ------------------------------------------------------------------ symKL distance


def test_symkl_hand_worked_two_classes():
    # image a: class 0 -> (0.8, 0.2), class 1 -> (0.3, 0.7); image b: class 0 -> (0.6, 0.4), class 1 absent
    Pa = np.array([[[0.8, 0.2], [0.3, 0.7]]], dtype=np.float32)
    Pb = np.array([[[0.6, 0.4], [0.0, 0.0]]], dtype=np.float32)
    ma = np.array([[True, True]])
    mb = np.array([[True, False]])
    # class 0: 1/2 [(0.8-0.6)(ln 0.8 - ln 0.6) + (0.2-0.4)(ln 0.2 - ln 0.4)] = 1/2 (0.0575364 + 0.1386294)
    #        = 0.0980829; class 1 (only in a): 1/2 ln(1e8) = 9.2103404; total 9.3084233
    want = 9.3084233
    assert ref.symkl_pair(Pa[0], ma[0], Pb[0], mb[0]) == pytest.approx(want, abs=1e-6)
    got = Z.pairwise_min_distance((Pa, ma), (Pb, mb), distance="symkl")
    assert got[0] == pytest.approx(want, rel=1e-6)
    # clamping: class 0 only, (1, 0) vs (0.5, 0.5): 1/2 [0.5 ln 2 + 0.5 (ln 0.5 - ln 1e-8)] = 4.6051702
    Pc = np.array([[[1.0, 0.0], [0.0, 0.0]]], dtype=np.float32)
    Pd = np.array([[[0.5, 0.5], [0.0, 0.0]]], dtype=np.float32)
    m = np.array([[True, False]])
    assert Z.pairwise_min_distance((Pc, m), (Pd, m), distance="symkl")[0] == pytest.approx(4.6051702, rel=1e-6)
    # symmetric, zero to itself, zero for two images with no classes
    assert Z.pairwise_min_distance((Pd, m), (Pc, m), distance="symkl")[0] == pytest.approx(4.6051702, rel=1e-6)
    assert Z.pairwise_min_distance((Pa, ma), (Pa, ma), distance="symkl")[0] == 0.0


def test_pairwise_min_distance_matches_bruteforce():
    rng = np.random.default_rng(0)
    x, c = rng.standard_normal((23, 6)).astype(np.float32), rng.standard_normal((9, 6)).astype(np.float32)
    for chunk in (1, 5, 100):
        got = Z.pairwise_min_distance(x, c, chunk_size=chunk)
        np.testing.assert_allclose(got, ref.full_distance_matrix(x, c, "euclidean").min(axis=1), rtol=1e-5)
    P, m = cd_embeddings(1, 12)
    got = Z.pairwise_min_distance((P, m), (P[:4], m[:4]), distance="symkl", chunk_size=5)
    want = ref.full_distance_matrix((P, m), (P[:4], m[:4]), "symkl").min(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.isinf(Z.pairwise_min_distance(x, np.zeros((0, 6), np.float32))).all()


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_pairwise_min_distance_equals_exact_kernel_elementwise(offset):
    # many centers take the pruned path (matmul estimate, exact kernel on survivors): its result must
    # equal the plain difference-kernel minimum bit for bit, also when norms dwarf distances (offset)
    import torch

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((400, 16)) + offset).astype(np.float32)
    c = (rng.standard_normal((70, 16)) + offset).astype(np.float32)
    c[3] = x[5]  # a duplicate: distance exactly 0
    xt, ct = torch.from_numpy(x), torch.from_numpy(c)
    want = torch.linalg.vector_norm(xt[:, None, :] - ct[None, :, :], dim=2).amin(dim=1).numpy()
    # the one-center pass (every k-center pick) uses the same kernel: element for element equal
    one = torch.stack([Z.distances_to(xt, ct[j], chunk_size=7) for j in range(len(c))], dim=1)
    np.testing.assert_array_equal(one.amin(dim=1).numpy(), want)
    for chunk in (1, 7, 10000):
        got = Z.pairwise_min_distance(x, c, chunk_size=chunk)
        np.testing.assert_array_equal(got, want)
    assert got[5] == 0.0


# ------------------------------------------------------------------ k-center


@pytest.mark.parametrize("n_labeled", [0, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_kcenter_euclidean_matches_bruteforce(n_labeled, seed):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((30, 5)).astype(np.float32)
    lab = rng.standard_normal((n_labeled, 5)).astype(np.float32)
    ids = make_ids(30)
    want = ref.kcenter_bruteforce(u, lab if n_labeled else None, ids, 8)
    got = Z.kcenter(u, lab, ids, 8)
    np.testing.assert_array_equal(got, want)
    if not n_labeled:  # first pick: largest norm
        assert got[0] == ids[np.argmax(np.linalg.norm(u.astype(np.float64), axis=1))]
    ids_s, u_s = shuffled(rng, ids, u)
    np.testing.assert_array_equal(Z.kcenter(u_s, lab, ids_s, 8), got)


@pytest.mark.parametrize("n_labeled", [0, 4])
def test_kcenter_symkl_matches_bruteforce(n_labeled):
    P, m = cd_embeddings(2, 20 + n_labeled)
    u, lab = (P[:20], m[:20]), (P[20:], m[20:])
    ids = make_ids(20)
    want = ref.kcenter_bruteforce(u, lab if n_labeled else None, ids, 6, distance="symkl")
    got = Z.kcenter(u, lab, ids, 6, distance="symkl")
    np.testing.assert_array_equal(got, want)
    ids_s, u_s = shuffled(np.random.default_rng(5), ids, u)
    np.testing.assert_array_equal(Z.kcenter(u_s, lab, ids_s, 6, distance="symkl"), got)


def test_kcenter_independent_of_chunk_size():
    rng = np.random.default_rng(3)
    u = rng.standard_normal((200, 33)).astype(np.float32)
    lab = rng.standard_normal((13, 33)).astype(np.float32)
    ids = make_ids(200)
    runs = [Z.kcenter(u, lab, ids, 25, chunk_size=c) for c in (1, 7, 10000)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    runs = [Z.kcenter(u, None, ids, 25, chunk_size=c) for c in (1, 7, 10000)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    P, m = cd_embeddings(4, 60)
    runs = [Z.kcenter((P, m), None, make_ids(60), 10, distance="symkl", chunk_size=c) for c in (1, 7, 10000)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])


def test_kcenter_edge_cases():
    ids = np.array(["b", "a", "c"])
    u = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=np.float32)  # a and b tie on norm
    assert Z.kcenter(u, None, ids, 1).tolist() == ["a"]
    assert sorted(Z.kcenter(u, None, ids, 10)) == ["a", "b", "c"]
    same = np.ones((4, 3), dtype=np.float32)  # all distances 0: ties by id, never a repeat
    assert Z.kcenter(same, same[:1], ["d", "c", "b", "a"], 4).tolist() == ["a", "b", "c", "d"]
    assert Z.kcenter(u, None, ids, 0).tolist() == []
    with pytest.raises(EmptyPoolError):
        Z.kcenter(np.zeros((0, 2), np.float32), None, [], 2)
    with pytest.raises(UnknownName):
        Z.kcenter(u, None, ids, 1, distance="cosine")
    with pytest.raises(InputError, match="aligned"):
        Z.kcenter(u, None, ["a", "b"], 1)
    bad = u.copy()
    bad[2, 0] = np.nan
    with pytest.raises(Exception, match="'c'|c"):
        Z.kcenter(bad, None, ids, 1)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 25), budget=st.integers(0, 30))
def test_kcenter_permutation_property(seed, n, budget):
    rng = np.random.default_rng(seed)
    u = rng.integers(-2, 3, size=(n, 3)).astype(np.float32)  # many exact ties
    ids = make_ids(n)
    got = Z.kcenter(u, None, ids, budget)
    assert len(got) == min(budget, n) and len(set(got)) == len(got)
    ids_s, u_s = shuffled(rng, ids, u)
    np.testing.assert_array_equal(Z.kcenter(u_s, None, ids_s, budget), got)


# ------------------------------------------------------------------ k-means++


def test_kmeans_pp_basic_properties():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 7)).astype(np.float32)
    ids = make_ids(60)
    a = Z.kmeans_pp(x, ids, 12, rng=np.random.default_rng(4))
    assert len(a) == 12 and len(set(a)) == 12
    assert a[0] == ids[np.argmax(np.linalg.norm(x.astype(np.float64), axis=1))]
    np.testing.assert_array_equal(Z.kmeans_pp(x, ids, 12, rng=np.random.default_rng(4)), a)
    assert list(Z.kmeans_pp(x, ids, 12, rng=np.random.default_rng(5))) != list(a)
    ids_s, x_s = shuffled(rng, ids, x)
    np.testing.assert_array_equal(Z.kmeans_pp(x_s, ids_s, 12, rng=np.random.default_rng(4)), a)
    for c in (1, 7):
        np.testing.assert_array_equal(Z.kmeans_pp(x, ids, 12, rng=np.random.default_rng(4), chunk_size=c), a)
    assert sorted(Z.kmeans_pp(x[:5], ids[:5], 9, rng=np.random.default_rng(0))) == sorted(ids[:5])
    with pytest.raises(EmptyPoolError):
        Z.kmeans_pp(np.zeros((0, 3), np.float32), [], 2, rng=np.random.default_rng(0))
    with pytest.raises(InputError, match="Generator"):
        Z.kmeans_pp(x, ids, 2, rng=None)


def test_kmeans_pp_never_draws_zero_distance_points():
    # 4 distinct vectors, each repeated 6 times: after a vector is chosen its copies have D = 0
    base = np.array([[5, 0], [0, 1], [1, 1], [-2, 3]], dtype=np.float32)
    x = np.repeat(base, 6, axis=0)
    ids = make_ids(24)
    for seed in range(30):
        got = Z.kmeans_pp(x, ids, 4, rng=np.random.default_rng(seed))
        rows = [int(i[3:]) for i in got]
        assert len({r // 6 for r in rows}) == 4  # four distinct vectors
        assert rows[0] == 0  # max norm (5, 0), ties by id -> first copy


def test_kmeans_pp_sampling_proportional_to_d2():
    # first pick a = (10, 0) (largest norm); then D^2 = 2 for b = (9, 1) and 9 for c = (7, 0): P(c) = 9/11
    x = np.array([[10, 0], [9, 1], [7, 0]], dtype=np.float32)
    d2 = np.array([2.0, 9.0])
    ids = np.array(["a", "b", "c"])
    n_c = sum(Z.kmeans_pp(x, ids, 2, rng=np.random.default_rng(s))[1] == "c" for s in range(400))
    p = d2[1] / d2.sum()
    assert abs(n_c / 400 - p) < 0.05


def test_kmeans_pp_zero_distance_fill_is_uniform_and_seeded():
    x = np.ones((6, 3), dtype=np.float32)  # all identical: every D is 0 after the first pick
    ids = make_ids(6)
    counts = dict.fromkeys(ids[1:], 0)
    for seed in range(500):
        got = Z.kmeans_pp(x, ids, 3, rng=np.random.default_rng(seed))
        assert got[0] == ids[0] and len(set(got)) == 3
        for i in got[1:]:
            counts[i] += 1
    # 1000 fills over 5 ids: 200 each expected
    assert all(150 <= c <= 250 for c in counts.values()), counts
    a = Z.kmeans_pp(x, ids, 4, rng=np.random.default_rng(11))
    np.testing.assert_array_equal(Z.kmeans_pp(x, ids, 4, rng=np.random.default_rng(11)), a)
    ids_s, x_s = shuffled(np.random.default_rng(1), ids, x)
    np.testing.assert_array_equal(Z.kmeans_pp(x_s, ids_s, 4, rng=np.random.default_rng(11)), a)
