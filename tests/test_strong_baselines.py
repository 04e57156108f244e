"""random-stratified (§11.5) and clasp (§11.6) through the real score and select stages, against values
computed independently here: per-pixel loops for the class counts and class scores, the library samplers
fed with those hand values, and the oracle's refusals."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from alseg.errors import InputError
from alseg.files.hdf5 import PoolReader, ScoresReader
from alseg.files.idlist import read_ids, write_ids
from alseg.samplers import beta_schedule, clasp, stratified_random
from alseg.stages.score import score
from alseg.stages.select import excluded_classes, parse_round, select
from alseg.strategies import class_counts, clasp_scores
from conftest import make_pool


def brute_counts_and_clasp(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel by pixel in float64: argmax counts, s_c = mean h p_c, s = mean h (h normalised by log K)."""
    n, k, hh, ww = logits.shape
    counts = np.zeros((n, k), dtype=np.int64)
    s_c = np.zeros((n, k))
    s = np.zeros(n)
    for i in range(n):
        for y in range(hh):
            for x in range(ww):
                z = logits[i, :, y, x].astype(np.float64)
                p = np.exp(z - z.max())
                p /= p.sum()
                counts[i, int(np.argmax(p))] += 1
                h = -sum(v * math.log(v) for v in p if v > 0) / math.log(k)
                s_c[i] += h * p
                s[i] += h
    return counts, s_c / (hh * ww), s / (hh * ww)


def test_class_counts_hand_worked_and_ignore_skipped():
    labels = np.array([[[0, 0, 2], [255, 1, 2]], [[3, 3, 3], [3, 3, 255]]])
    assert class_counts(labels, 4).tolist() == [[2, 1, 2, 0], [0, 0, 0, 5]]


def test_clasp_class_scores_sum_to_the_image_score():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (3, 5, 4, 6)).astype(np.float32)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    s_c, s = clasp_scores(p)
    _, want_c, want = brute_counts_and_clasp(z)
    np.testing.assert_allclose(s_c, want_c, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s, want, rtol=1e-5)
    np.testing.assert_allclose(s_c.sum(1), s, rtol=1e-6)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("strat")
    ids = [f"img_{i:03d}" for i in range(30)]
    make_pool(d / "pool.h5", ids, with_labels=True)
    make_pool(d / "nolabels.h5", ids)
    score(d / "pool.h5", strategies=["random-stratified", "clasp"], out_path=d / "scores.h5")
    write_ids(d / "lab.txt", ids[:4])
    with PoolReader(d / "pool.h5") as pool:
        logits = np.concatenate([b[1] for b in pool.iter_batches(64, ids=ids)])
        labels = np.concatenate([b[2] for b in pool.iter_batches(64, ids=ids, with_labels=True)])
    return d, ids, logits, labels


def test_score_stores_the_brute_force_values(files):
    d, ids, logits, _ = files
    counts, s_c, s = brute_counts_and_clasp(logits)
    with ScoresReader(d / "scores.h5") as r:
        assert (r.embedding("class-counts", ids) == counts).all()
        np.testing.assert_allclose(r.embedding("clasp-class", ids), s_c, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(r.score("clasp", ids), s, rtol=1e-5)
        assert r.params("class-counts")["class_names"] == ["c0", "c1", "c2", "c3"]


@pytest.mark.parametrize("use_scores", [False, True], ids=["pool", "scores"])
def test_random_stratified_is_the_sampler_on_hand_counts(files, use_scores):
    d, ids, logits, _ = files
    counts, _, _ = brute_counts_and_clasp(logits)
    src = {"scores_path": d / "scores.h5"} if use_scores else {"pool_path": d / "pool.h5"}
    got = select("random-stratified", budget=7, labeled_path=d / "lab.txt", out_path=d / "rs.txt", seed=11,
                 overwrite=True, exclude_classes="c1", **src)
    want = stratified_random(counts[4:], ids[4:], 7, rng=np.random.default_rng(11), exclude=[1])
    assert got.selected == list(want) == read_ids(d / "rs.txt")
    assert got.details["excluded_classes"] == ["c1"] and not got.oracle


def test_oracle_uses_ground_truth_counts_and_says_so(files):
    d, ids, _, labels = files
    got = select("random-stratified", budget=7, labeled_path=d / "lab.txt", out_path=d / "or.txt", seed=2,
                 pool_path=d / "pool.h5", oracle=True, overwrite=True)
    want = stratified_random(class_counts(labels[4:], 4), ids[4:], 7, rng=np.random.default_rng(2))
    assert got.selected == list(want) and got.oracle
    assert got.details["counts"] == "ground truth (oracle)"
    with pytest.raises(InputError, match="holds no ground-truth labels"):
        select("random-stratified", budget=3, labeled_path=d / "lab.txt", out_path=d / "x.txt",
               pool_path=d / "nolabels.h5", oracle=True)
    with pytest.raises(InputError, match="needs --pool"):
        select("random-stratified", budget=3, labeled_path=d / "lab.txt", out_path=d / "x.txt",
               scores_path=d / "scores.h5", oracle=True)
    with pytest.raises(InputError, match="--oracle applies to random-stratified only"):
        select("entropy", budget=3, labeled_path=d / "lab.txt", out_path=d / "x.txt", pool_path=d / "pool.h5",
               oracle=True)


def test_oracle_refuses_unlabelled_pool_on_one_line(files):
    d, _, _, _ = files
    proc = subprocess.run([sys.executable, "-m", "alseg.commands", "select", "--strategy", "random-stratified",
                           "--oracle", "--budget", "3", "--labeled", str(d / "lab.txt"), "--pool",
                           str(d / "nolabels.h5"), "--out", str(d / "o.txt")], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nolabels.h5" in lines[0] and "ground-truth" in lines[0]
    assert not (d / "o.txt").exists()


@pytest.mark.parametrize("round_", ["1/4", "3/4", "4/4"])
def test_clasp_uses_the_scheduled_beta(files, round_):
    d, ids, logits, _ = files
    _, s_c, s = brute_counts_and_clasp(logits)
    got = select("clasp", budget=8, labeled_path=d / "lab.txt", out_path=d / "c.txt", seed=5,
                 scores_path=d / "scores.h5", round=round_, overwrite=True)
    t, total = parse_round(round_)
    beta = beta_schedule(t, total)
    # no class is named background here, so nothing is excluded by default
    want = clasp(s_c[4:], s[4:], ids[4:], 8, beta=beta, rng=np.random.default_rng(5))
    assert got.selected == list(want)
    assert got.details["beta"] == pytest.approx(beta) and got.details["excluded_classes"] == []


def test_clasp_needs_a_round_and_parse_errors(files):
    d, _, _, _ = files
    with pytest.raises(InputError, match="needs --round t/T"):
        select("clasp", budget=3, labeled_path=d / "lab.txt", out_path=d / "x.txt", pool_path=d / "pool.h5")
    for bad in ("2", "0/3", "4/3", "a/b"):
        with pytest.raises(InputError, match="--round must be t/T"):
            parse_round(bad)


def test_background_is_excluded_by_default_and_names_are_checked():
    names = ["Background", "road", "car"]
    assert excluded_classes(None, names) == [0]
    assert excluded_classes("none", names) == []
    assert excluded_classes("car,1", names) == [1, 2]
    with pytest.raises(InputError, match="neither a class name"):
        excluded_classes("truck", names)


# ---- the report: every strategy against random and against random-stratified, the oracle marked


def _baseline_tree(root):
    import json

    from test_report import _metrics

    miou = {  # strategy -> round -> per-seed mIoU (round 0: 30, 31, 32)
        "random": {1: [40, 41, 42], 2: [50, 50, 51]},
        "random-stratified": {1: [41, 43, 45], 2: [51, 52, 53]},
        "random-stratified-oracle": {1: [45, 45, 46], 2: [55, 56, 56]},
        "margin": {1: [44, 45, 47], 2: [53, 55, 56]},
    }
    exp = root / "exp"
    exp.mkdir()
    (exp / "experiment.toml").write_text(
        'name = "baselines"\nseeds = [0, 1, 2]\n'
        f'strategies = {json.dumps(list(miou))}\n'
        '[params.random-stratified-oracle]\nstrategy = "random-stratified"\noracle = true\n', encoding="utf-8")
    for k, seed in enumerate((0, 1, 2)):
        _metrics(exp / f"seed-{seed}" / "round-00" / "train", 30.0 + k, 4)
        for strategy, rounds in miou.items():
            for rd, values in rounds.items():
                _metrics(exp / f"seed-{seed}" / strategy / f"round-{rd:02d}" / "train", float(values[k]), 4 + 2 * rd)
    return exp, miou


def test_report_compares_with_both_baselines_and_marks_the_oracle(tmp_path):
    import re
    from html import unescape

    from scipy.stats import t as t_dist

    from alseg.stages.report import report

    exp, miou = _baseline_tree(tmp_path)
    res = report(exp, out_path=tmp_path / "r.html")
    assert res.strong_baseline == "random-stratified"
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    text = unescape(re.sub(r"<[^>]+>", " ", html))
    assert "random (the reference baseline) and random-stratified" in " ".join(text.split())
    assert "random-stratified-oracle: chosen with ground-truth class counts" in " ".join(text.split())
    tables = html.split('<table class="paired">')[1:]
    assert len(tables) == 2
    heads = [re.search(r"<th class=\"l\">(.*?)</th>", t).group(1) for t in tables]
    assert [unescape(h) for h in heads] == ["strategy − random", "strategy − random-stratified"]
    # margin - random-stratified at round 2: 2, 3, 3 -> mean 2.667, sd 0.577, t = 8.0 on 2 df
    d = np.array(miou["margin"][2]) - np.array(miou["random-stratified"][2])
    t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    p = 2 * t_dist.sf(abs(t), 2)
    got = next(x for x in res.paired_strong if x.strategy == "margin" and x.round == 2)
    assert got.baseline == "random-stratified"
    assert got.diff.mean == pytest.approx(d.mean()) and got.p_value == pytest.approx(p)
    assert f"p = {p:.3f}" in unescape(re.sub(r"<[^>]+>", "", tables[1]))
    # random-stratified itself is compared with random, not with itself
    assert {x.strategy for x in res.paired_strong} == {"random", "random-stratified-oracle", "margin"}
    assert "random-stratified" in {x.strategy for x in res.paired}


def test_an_oracle_must_say_so_in_its_name(tmp_path):
    from alseg.experiment import load_experiment

    cfg = tmp_path / "c.py"
    cfg.write_text("model = dict()\n")
    doc = ('config = "c.py"\ninitial = 2\nbudget = 2\nrounds = 1\nstrategies = ["strong"]\n'
           '[params.strong]\nstrategy = "random-stratified"\noracle = true\n')
    (tmp_path / "e.toml").write_text(doc)
    with pytest.raises(InputError, match="oracle = true: name it so it says so"):
        load_experiment(tmp_path / "e.toml")
    (tmp_path / "e.toml").write_text(doc.replace("strong", "strong-oracle"))
    exp = load_experiment(tmp_path / "e.toml")
    assert exp.base("strong-oracle") == "random-stratified" and exp.is_oracle("strong-oracle")
    (tmp_path / "e.toml").write_text(doc.replace('"random-stratified"', '"nonsense"'))
    with pytest.raises(InputError, match="'nonsense' is not a strategy"):
        load_experiment(tmp_path / "e.toml")
