"""The strategy conformance suite: every registered strategy, through the real `select` stage."""

from __future__ import annotations

import numpy as np
import pytest

from alseg.errors import EmptyPoolError
from alseg.files.idlist import read_ids, write_ids
from alseg.registry import STRATEGIES
from alseg.stages.score import score
from alseg.stages.select import select
from conftest import make_calibration, make_pool

# (strategy, extra options, has a random part)
CASES = [
    ("random", {}, True),
    ("entropy", {}, False),
    ("margin", {}, False),
    ("least-confidence", {}, False),
    ("entropy", {"stochastic": True}, True),
    ("margin", {"stochastic": True, "groups": 5}, True),
    ("stochastic-batches", {"base_score": "least-confidence"}, True),
    ("coreset", {}, False),
    ("coreset", {"embedding": "penultimate"}, False),
    ("contextual-diversity", {}, False),
    ("badge", {}, True),
    ("badge", {"badge_embedding": "last-layer"}, True),
    ("crc", {}, False),
    ("crc", {"selector": "kcenter", "tau": 1.0}, False),
    ("crc", {"tau": 0.0}, False),
    ("crc", {"stochastic": True}, True),
    ("random-stratified", {}, True),
    ("random-stratified", {"oracle": True}, True),
    ("random-stratified", {"exclude_classes": "none", "min_count": 20}, True),
    ("clasp", {"round": "1/3"}, True),
    ("clasp", {"round": "2/3", "exclude_classes": "c0"}, True),
    ("bald", {}, False),
    ("mc-entropy", {"sampler": "power"}, True),
    ("variation-ratio", {"stochastic": True}, True),
]
IDS = [f"case{i}" for i in range(len(CASES))]


def test_every_registered_strategy_is_covered():
    assert {c[0] for c in CASES} == set(STRATEGIES)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("conf")
    ids = [f"img_{i:03d}" for i in range(40)]
    perm = np.random.default_rng(5).permutation(40)
    # labels: for random-stratified --oracle; MC maps: for bald, mc-entropy, variation-ratio
    make_pool(d / "pool.h5", ids, with_labels=True, mc=True)
    make_pool(d / "pool_shuffled.h5", ids, order=perm, with_labels=True, mc=True)
    make_calibration(d / "crc.json")
    for name in ("pool", "pool_shuffled"):
        score(d / f"{name}.h5", strategies=["entropy", "margin", "least-confidence", "contextual-diversity", "badge",
                                          "crc", "random-stratified", "clasp", "bald", "mc-entropy",
                                          "variation-ratio"], calibration_path=d / "crc.json", out_path=d / f"{name}_scores.h5")
    write_ids(d / "all.txt", ids)
    write_ids(d / "all_shuffled.txt", [ids[j] for j in perm])
    labeled = [ids[j] for j in (3, 17, 29, 8)]
    write_ids(d / "labeled.txt", labeled)
    write_ids(d / "empty.txt", [])
    return d, ids, labeled


def run(d, strategy, opts, *, out, budget=6, seed=0, labeled="labeled.txt", pool="pool", use_scores=False):
    kwargs = dict(opts)
    if strategy == "random":
        kwargs["pool_ids_path"] = d / ("all.txt" if pool == "pool" else "all_shuffled.txt")
    else:
        kwargs["pool_path"] = d / f"{pool}.h5"
        if use_scores:
            kwargs["scores_path"] = d / f"{pool}_scores.h5"
        if strategy == "crc" and not use_scores:
            kwargs["calibration_path"] = d / "crc.json"
    result = select(strategy, budget=budget, labeled_path=d / labeled, out_path=d / out, seed=seed,
                    overwrite=True, device="cpu", **kwargs)
    assert read_ids(d / out) == result.selected
    return result.selected


@pytest.mark.parametrize("strategy,opts,has_random", CASES, ids=IDS)
def test_budget_unique_never_labeled(files, strategy, opts, has_random):
    d, ids, labeled = files
    got = run(d, strategy, opts, out="a.txt")
    assert len(got) == 6 and len(set(got)) == 6
    assert not set(got) & set(labeled) and set(got) <= set(ids)


@pytest.mark.parametrize("strategy,opts,has_random", CASES, ids=IDS)
def test_seed_determinism(files, strategy, opts, has_random):
    d, _, _ = files
    a = run(d, strategy, opts, out="a.txt", seed=1)
    b = run(d, strategy, opts, out="b.txt", seed=1)
    assert a == b
    others = [run(d, strategy, opts, out="c.txt", seed=s) for s in (2, 3, 4)]
    if has_random:
        assert any(o != a for o in others), "a different seed never changed the random part"
    else:
        assert all(o == a for o in others), "a deterministic strategy depends on the seed"


@pytest.mark.parametrize("strategy,opts,has_random", CASES, ids=IDS)
@pytest.mark.parametrize("use_scores", [False, True], ids=["pool", "scores"])
def test_row_order_does_not_matter(files, strategy, opts, has_random, use_scores):
    d, _, _ = files
    a = run(d, strategy, opts, out="a.txt", seed=7, use_scores=use_scores)
    b = run(d, strategy, opts, out="b.txt", seed=7, pool="pool_shuffled", use_scores=use_scores)
    assert a == b


@pytest.mark.parametrize("strategy,opts,has_random", CASES, ids=IDS)
def test_budget_at_least_pool_returns_all(files, strategy, opts, has_random):
    d, ids, labeled = files
    unlabeled = set(ids) - set(labeled)
    got = run(d, strategy, opts, out="a.txt", budget=100)
    assert sorted(got) == sorted(unlabeled)


@pytest.mark.parametrize("strategy,opts,has_random", CASES, ids=IDS)
def test_empty_labeled_set(files, strategy, opts, has_random):
    d, ids, _ = files
    got = run(d, strategy, opts, out="a.txt", labeled="empty.txt")
    assert len(set(got)) == 6 and set(got) <= set(ids)


@pytest.mark.parametrize("strategy,opts,has_random", CASES, ids=IDS)
def test_empty_pool_is_a_clear_error(files, strategy, opts, has_random):
    d, _, _ = files
    with pytest.raises(EmptyPoolError, match="no unlabeled ids"):
        run(d, strategy, opts, out="a.txt", labeled="all.txt")


def test_uncertainty_ranking_matches_scores(files):
    """top-k on margin equals sorting the stored margin scores of the unlabeled ids."""
    from alseg.files.hdf5 import ScoresReader

    d, ids, labeled = files
    got = run(d, "margin", {}, out="a.txt", budget=10)
    with ScoresReader(d / "pool_scores.h5") as s:
        unl = [i for i in ids if i not in labeled]
        sc = s.score("margin", unl)
    expected = [unl[j] for j in sorted(range(len(unl)), key=lambda j: (-sc[j], unl[j]))[:10]]
    assert got == expected


def test_update_appends_atomically(files, tmp_path):
    d, ids, labeled = files
    write_ids(tmp_path / "lab.txt", labeled)
    r = select("entropy", budget=5, labeled_path=tmp_path / "lab.txt", out_path=tmp_path / "sel.txt",
               pool_path=d / "pool.h5", update=True)
    assert read_ids(tmp_path / "lab.txt") == labeled + r.selected
