"""`alseg report` and `alseg.stats` on a FIXED fake experiment tree with hand-computed answers.

The tree (docs/experiment.md): 3 seeds x 3 strategies (random, margin, crc), round-00 + 3 rounds,
metrics.json, manifests with seconds, selected.txt / labeled.txt, an 8x8 data_root with classes.json,
pool.h5 files (seed 0, round 3: margin and crc), a scores.h5 with one risk map and a crc.json (crc), and
a pool id list of the 16 ids (``pool_ids``, relative to the experiment folder).

mIoU values are chosen through their paired differences (seeds 0, 1, 2), so the t statistics are simple:
  crc - margin    R1 [2,3,4]  R2 [1,1,1] (zero variance)  R3 [4,5,6]
  margin - random R1 [1,2,3]  R2 [4,5,6]                  R3 [-1,0,1]
  crc - random    R1 [3,5,7]  R2 [5,6,7]                  R3 [3,5,7]
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alseg import stats
from alseg.files.calibration import write_calibration
from alseg.files.hdf5 import PoolWriter, write_scores
from alseg.files.idlist import write_ids
from alseg.files.manifest import write_manifest

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [0, 1, 2]
STRATEGIES = ["random", "margin", "crc"]
ROUND0 = [30.0, 32.0, 31.0]  # per seed
MIOU = {  # strategy -> round -> per-seed mIoU
    "margin": {1: [40, 42, 41], 2: [44, 45, 47], 3: [48, 50, 49]},
    "crc": {1: [42, 45, 45], 2: [45, 46, 48], 3: [52, 55, 55]},
    "random": {1: [39, 40, 38], 2: [40, 40, 41], 3: [49, 50, 48]},
}
N_LABELED = {0: 4, 1: 6, 2: 8, 3: 10}
IDS = [f"img{i:02d}" for i in range(16)]
INITIAL = IDS[:4]
SELECTED = {
    "random": {1: ["img04", "img05"], 2: ["img06", "img07"], 3: ["img08", "img09"]},
    "margin": {1: ["img10", "img11"], 2: ["img12", "img13"], 3: ["img14", "img15"]},
    "crc": {1: ["img15", "img14"], 2: ["img13", "img12"], 3: ["img11", "img10"]},
}
CLASSES = ["background", "road", "car"]
PALETTE = [[20, 20, 20], [128, 64, 128], [0, 0, 200]]
SECONDS = {"infer": 2.0, "score": 1.5, "calibrate": 0.25, "select": 0.5}
HEADINGS = ["Summary", "Does active learning pay?", "Learning curves", "Per-class IoU", "Paired differences to the baselines",
            "Penalty matrix", "Per-round table", "Gallery", "Class histogram", "CRC-AL calibration"]
FIGURES = ["learning_curves", "class_iou", "paired_diff", "penalty", "gallery_random", "gallery_margin", "gallery_crc",
           "class_hist", "crc_thresholds", "crc_risk"]


def _mask(i: int) -> np.ndarray:
    """Left half class i % 3, right half class 0, top row ignore (255): 28 + 28 valid pixels."""
    m = np.zeros((8, 8), np.uint8)
    m[:, :4] = i % 3
    m[0] = 255
    return m


def _metrics(path: Path, miou: float, n_labeled: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    doc = {"format": "alseg.metrics", "format_version": 1,
           "final": {"mIoU": miou, "aAcc": 90.0, "per_class_iou": {c: miou for c in CLASSES}},
           "best": {"mIoU": miou}, "n_labeled": n_labeled, "iterations": 10}
    (path / "metrics.json").write_text(json.dumps(doc), encoding="utf-8")


def _pool(path: Path) -> None:
    rng = np.random.default_rng(0)
    with PoolWriter(path, class_names=CLASSES, logits_shape=(4, 4)) as w:  # half the image size
        w.append(IDS, rng.normal(0, 2, (len(IDS), 3, 4, 4)).astype(np.float32))


def build_tree(root: Path, seeds=SEEDS, *, full: bool = True) -> Path:
    data = root / "data"
    (data / "img_dir").mkdir(parents=True)
    (data / "ann_dir").mkdir(parents=True)
    for i, image_id in enumerate(IDS):
        img = np.zeros((8, 8, 3), np.uint8)
        img[..., 0] = 30 * (i % 8)
        img[:, :, 1] = np.arange(8)[None, :] * 30
        img[:, :, 2] = np.arange(8)[:, None] * 30
        Image.fromarray(img).save(data / "img_dir" / f"{image_id}.png")
        Image.fromarray(_mask(i)).save(data / "ann_dir" / f"{image_id}.png")
    (data / "classes.json").write_text(json.dumps(
        {"format": "alseg.classes", "format_version": 1, "classes": CLASSES, "palette": PALETTE,
         "ignore_index": 255}), encoding="utf-8")

    exp = root / "exp"
    exp.mkdir()
    write_ids(exp / "pool.txt", IDS)
    (exp / "experiment.toml").write_text(
        f'name = "fake"\ndata_root = "{data}"\npool_ids = "pool.txt"\nseeds = {list(seeds)}\n'
        f'strategies = {json.dumps(STRATEGIES)}\n', encoding="utf-8")
    for k, seed in enumerate(seeds):
        r0 = exp / f"seed-{seed}" / "round-00"
        _metrics(r0 / "train", ROUND0[k], N_LABELED[0])
        write_ids(r0 / "labeled.txt", INITIAL)
        write_manifest(r0 / "train", stage="train", args={}, seconds=10.0 + seed)
        for strategy in STRATEGIES:
            labeled = list(INITIAL)
            for rd in (1, 2, 3):
                rdir = exp / f"seed-{seed}" / strategy / f"round-{rd:02d}"
                rdir.mkdir(parents=True)
                sel = SELECTED[strategy][rd]
                labeled += sel
                write_ids(rdir / "selected.txt", sel)
                write_ids(rdir / "labeled.txt", labeled)
                _metrics(rdir / "train", float(MIOU[strategy][rd][k]), N_LABELED[rd])
                write_manifest(rdir / "train", stage="train", args={}, seconds=10.0 + seed)
                write_manifest(rdir / "selected.txt", stage="select", args={}, seconds=SECONDS["select"])
                if strategy == "random":
                    continue
                write_manifest(rdir / "pool.h5", stage="infer", args={}, seconds=SECONDS["infer"])
                write_manifest(rdir / "scores.h5", stage="score", args={}, seconds=SECONDS["score"])
                if strategy == "crc":
                    write_manifest(rdir / "calib.h5", stage="infer", args={}, seconds=1.0)
                    write_manifest(rdir / "crc.json", stage="calibrate", args={}, seconds=SECONDS["calibrate"])
                if seed == seeds[0] and rd == 3:
                    _pool(rdir / "pool.h5")
                    if strategy == "crc":
                        _crc_files(rdir)
    if full:
        _metrics(exp / "full" / "train", 60.0, 16)
    return exp


def _crc_files(rdir: Path) -> None:
    import h5py

    write_scores(rdir / "scores.h5", IDS, scores={"crc": np.linspace(0, 1, len(IDS))})
    with h5py.File(rdir / "scores.h5", "a") as fh:  # `score --save-risk-maps 1`: the map of img11 only
        g = fh.create_group("risk_maps")
        g.create_dataset("ids", data=np.array(["img11"], dtype=object), dtype=h5py.string_dtype("utf-8"))
        g.create_dataset("maps", data=np.tile(np.linspace(0, 1, 4, dtype=np.float16), (1, 4, 1)))
    grid = np.linspace(0, 1, 11)
    risk = np.stack([grid ** p for p in (1.0, 2.0, 0.5)])
    write_calibration(rdir / "crc.json", {
        "alpha": 0.1, "bins": 10, "t_min": 0.001, "class_names": CLASSES, "thresholds": [0.3, 0.31, 0.0],
        "n_images": [40, 30, 3], "uncalibrated": [False, False, True], "grid": grid, "risk": risk,
        "calibrated": [True, True, False], "query_thresholds": [0.3, 0.31, 0.001],
        "pool_path": "calib.h5", "pool_sha256": "0" * 64,
        "evaluation": {"fnr": [0.08, 0.09, None], "n_images": [20, 15, 0], "coverage": 0.93,
                       "set_size_counts": [1, 50, 10, 0], "mean_set_size": 1.1},
    })


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return build_tree(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def rendered(tree, tmp_path_factory) -> tuple[Path, object]:
    from alseg.stages.report import report

    out = tmp_path_factory.mktemp("out") / "report.html"
    return out, report(tree, out_path=out)


# ------------------------------------------------------------------------------------ independent t-test


def t_test_df2(diff: list[float]) -> tuple[float, float]:
    """Paired t-test of 3 differences from the formula: t = mean / (s / sqrt(n)), s with ddof=1.

    With n - 1 = 2 degrees of freedom the Student t CDF is F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so the
    two-sided p-value is 1 - |t| / sqrt(2 + t^2). Returns (t, p); zero variance -> (nan, nan).
    """
    n = len(diff)
    assert n == 3
    mean = sum(diff) / n
    s = math.sqrt(sum((d - mean) ** 2 for d in diff) / (n - 1))
    if s == 0:
        return math.nan, math.nan
    t = mean / (s / math.sqrt(n))
    return t, 1 - abs(t) / math.sqrt(2 + t * t)


def test_hand_t_statistics_are_what_the_docstring_says():
    # [2,3,4]: mean 3, s 1, t = 3*sqrt(3) = 5.196, p = 1 - 5.196/sqrt(29) = 0.0351 -> significant
    assert t_test_df2([2, 3, 4]) == pytest.approx((5.196152, 0.035098), abs=1e-5)
    # [1,2,3]: t = 2*sqrt(3) = 3.464, p = 1 - 3.464/sqrt(14) = 0.0742 -> not (one-sided it would be)
    assert t_test_df2([1, 2, 3])[1] == pytest.approx(0.074180, abs=1e-5)
    # [3,5,7]: mean 5, s 2, t = 5*sqrt(3)/2 = 4.330 (> 4.303, the 0.975 quantile), p = 0.0494 -> significant
    assert t_test_df2([3, 5, 7])[1] == pytest.approx(0.049414, abs=1e-5)
    # the t-test of scipy agrees (a cross-check only; the expected matrix below does not use it)
    from scipy.stats import ttest_rel

    assert ttest_rel([5, 8, 11], [2, 3, 4]).pvalue == pytest.approx(t_test_df2([3, 5, 7])[1], rel=1e-9)


# ------------------------------------------------------------------------------------------------ stats


def test_learning_curve_bands_equal_hand_computed(tree):
    from alseg.stages.report import collect

    curves = stats.learning_curves(collect(tree).records())
    assert list(curves) == STRATEGIES
    # round 0 [30, 32, 31]: mean 31, deviations -1, 1, 0 -> var 2/2 = 1 -> std 1 (first point of every curve)
    expected = {
        # margin R1 [40,42,41] 41 ± 1; R2 [44,45,47] 136/3 = 45.333, dev -4/3,-1/3,5/3 -> 42/9/2 = 7/3;
        # R3 [48,50,49] 49 ± 1
        "margin": ([31, 41, 45.333333, 49], [1, 1, math.sqrt(7 / 3), 1]),
        # crc R1 [42,45,45] 44, dev -2,1,1 -> 6/2 = 3; R2 [45,46,48] 139/3 = 46.333 ± sqrt(7/3); R3 [52,55,55] 54 ± sqrt(3)
        "crc": ([31, 44, 46.333333, 54], [1, math.sqrt(3), math.sqrt(7 / 3), math.sqrt(3)]),
        # random R1 [39,40,38] 39 ± 1; R2 [40,40,41] 121/3 = 40.333, dev -1/3,-1/3,2/3 -> 6/9/2 = 1/3; R3 49 ± 1
        "random": ([31, 39, 40.333333, 49], [1, 1, math.sqrt(1 / 3), 1]),
    }
    for s, (mean, std) in expected.items():
        c = curves[s]
        np.testing.assert_array_equal(c.rounds, [0, 1, 2, 3])
        np.testing.assert_array_equal(c.n_labeled, [4, 6, 8, 10])
        np.testing.assert_allclose(c.mean, mean, atol=1e-6)
        np.testing.assert_allclose(c.std, std, atol=1e-9)
        np.testing.assert_array_equal(c.n_seeds, [3, 3, 3, 3])


def test_std_is_zero_with_one_seed():
    recs = [stats.Record(0, "a", 0, 4, 30.0), stats.Record(0, "a", 1, 6, 35.0)]
    c = stats.learning_curves(recs)["a"]
    np.testing.assert_array_equal(c.std, [0, 0])
    np.testing.assert_array_equal(c.mean, [30, 35])


def test_penalty_matrix_equals_hand_computed(tree):
    from alseg.stages.report import collect

    records = collect(tree).records()
    strategies, P, phi = stats.penalty_matrix(records)
    assert strategies == STRATEGIES  # random, margin, crc
    expected = np.array([
        [0, 0, 0],  # random never beats: vs margin diffs R1 [-1,-2,-3], R2 [-4,-5,-6], R3 [1,0,-1] (t = 0)
        [1 / 3, 0, 0],  # margin > random: R1 p = 0.074 no, R2 [4,5,6] t = 8.66 yes, R3 no
        [1, 2 / 3, 0],  # crc > random every round; crc > margin R1 and R3, not R2 (zero variance)
    ])
    np.testing.assert_allclose(P, expected, atol=1e-12)
    # phi = column means over all 3 rows: random (0 + 1/3 + 1)/3 = 4/9, margin (2/3)/3 = 2/9, crc 0
    np.testing.assert_allclose(phi, [4 / 9, 2 / 9, 0], atol=1e-12)

    # the same matrix from the formula-based t-test above, round by round
    by = {(r.strategy, r.round, r.seed): r.miou for r in records}
    hand = np.zeros((3, 3))
    for i, a in enumerate(STRATEGIES):
        for j, b in enumerate(STRATEGIES):
            if i == j:
                continue
            wins = 0
            for rd in (1, 2, 3):
                diff = [by[a, rd, s] - by[b, rd, s] for s in SEEDS]
                t, p = t_test_df2(diff)
                wins += bool(p < 0.05 and sum(diff) > 0) if not math.isnan(p) else 0
            hand[i, j] = wins / 3
    np.testing.assert_allclose(P, hand, atol=1e-12)


def test_penalty_zero_variance_is_never_significant():
    recs = [stats.Record(s, name, 1, 6, base + s + (1.0 if name == "a" else 0.0))
            for s, base in enumerate([40.0, 41.0, 45.0]) for name in ("a", "b")]
    pm = stats.penalty_matrix(recs)
    np.testing.assert_array_equal(pm.P, np.zeros((2, 2)))
    np.testing.assert_array_equal(pm.n_compared, [[0, 1], [1, 0]])


def test_round0_once_per_seed_and_first_point(tree):
    from alseg.stages.report import collect

    exp = collect(tree)
    assert exp.seeds == SEEDS and exp.strategies == STRATEGIES and exp.full_miou == 60.0
    for strategy in STRATEGIES:
        runs = [r for r in exp.runs if r.strategy == strategy]
        for k, seed in enumerate(SEEDS):
            mine = [r for r in runs if r.seed == seed]
            assert [r.round for r in mine] == [0, 1, 2, 3]  # round 0 once, first
            assert mine[0].miou == ROUND0[k] and mine[0].round_dir == tree / f"seed-{seed}" / "round-00"


def test_time_per_stage_from_manifests(rendered):
    _, result = rendered
    rows = {(r.strategy, r.round): r for r in result.table}
    # train: 10 + seed -> mean over seeds 0, 1, 2 = 11; crc infers twice (pool 2.0 + calib 1.0)
    assert rows["crc", 2].seconds == {"train": 11.0, "select": 0.5, "infer": 3.0, "score": 1.5, "calibrate": 0.25}
    assert rows["random", 1].seconds == {"train": 11.0, "select": 0.5}
    assert rows["margin", 0].seconds == {"train": 11.0}
    assert rows["crc", 3].miou_mean == pytest.approx(54.0) and rows["crc", 3].n_labeled == 10


def test_class_shares_exclude_ignore(rendered):
    _, result = rendered
    # each strategy selects ids with i % 3 = 1,2,0,1,2,0 (x 3 seeds); per image 28 px of class i % 3 and
    # 28 px of class 0 (top row ignored): class 0 = 4*28 + 2*56 = 224, class 1 = class 2 = 2*28 = 56 of 336
    for s in STRATEGIES:
        np.testing.assert_allclose(result.class_shares[s], [2 / 3, 1 / 6, 1 / 6])
    assert result.class_names == CLASSES


def test_report_files(rendered):
    out, result = rendered
    files = out.parent / "report_files"
    names = sorted(p.name for p in files.iterdir())
    assert names == sorted([f"{f}.{ext}" for f in FIGURES for ext in ("png", "svg")])  # every figure twice
    assert sorted(Path(p).name for p in result.png_paths + result.svg_paths) == names
    assert result.gallery_round == 3
    assert "60.00" in out.read_text(encoding="utf-8")  # full supervision


def test_gallery_prediction_and_uncertainty(tree):
    from alseg.files.hdf5 import PoolReader
    from alseg.stages.report import _fill_predictions, collect

    run = collect(tree).run(0, "crc", 3)
    rows = [{"id": i, "image": np.zeros((8, 8, 3), np.uint8)} for i in ("img11", "img10")]
    _fill_predictions(run, rows)
    with PoolReader(run.pool_path) as pool:
        _, logits, _ = next(pool.iter_batches(2, ids=["img11", "img10"]))
    for b, row in enumerate(rows):
        # nearest upsampling 4x4 -> 8x8 repeats every logit pixel into a 2x2 block
        np.testing.assert_array_equal(row["pred"], np.kron(logits[b].argmax(0), np.ones((2, 2), int)))
    # img11 has a stored risk map (columns 0, 1/3, 2/3, 1 as float16), img10 falls back to entropy
    assert rows[0]["unc_kind"] == "CRC risk map" and rows[1]["unc_kind"] == "entropy"
    np.testing.assert_allclose(rows[0]["unc"][0], np.repeat(np.linspace(0, 1, 4), 2), atol=1e-3)
    p = np.exp(logits[1] - logits[1].max(0)) / np.exp(logits[1] - logits[1].max(0)).sum(0)
    h = -(p * np.log(p)).sum(0) / np.log(3)
    np.testing.assert_allclose(rows[1]["unc"], np.kron(h, np.ones((2, 2))), atol=1e-5)


# -------------------------------------------------------------------------------------------------- CLI


def _invoke(args):
    from typer.testing import CliRunner

    from alseg.commands import app

    return CliRunner().invoke(app, args)


def test_cli_writes_self_contained_html(tree, tmp_path):
    out = tmp_path / "r" / "report.html"
    res = _invoke(["report", str(tree), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    assert "Φ" in res.stderr and "54.00 ± 1.73" in res.stderr  # the terminal summary, on stderr
    assert "AULC" in res.stderr and "+4.50" in res.stderr  # crc's AULC difference to random (test_report_pays.py)
    text = out.read_text(encoding="utf-8")
    for heading in HEADINGS:
        assert f">{heading}</h2>" in text
    srcs = [s.split('"', 1)[0] for s in text.split('src="')[1:]]
    assert len(srcs) == len(FIGURES) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http" not in text and "<script" not in text and "<link" not in text
    for name in ("learning_curves.png", "penalty.png", "gallery_crc.png", "class_hist.png"):
        data = (tmp_path / "r" / "report_files" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"

    again = _invoke(["report", str(tree), "--out", str(out), "--quiet"])
    assert again.exit_code == 1 and again.stderr.startswith(f"error: {out}: output exists")

    js = _invoke(["report", str(tree), "--out", str(out), "--quiet", "--overwrite", "--json", "--round", "2",
                  "--gallery-size", "1"])
    assert js.exit_code == 0, js.output
    doc = json.loads(js.stdout)
    assert doc["gallery_round"] == 2 and doc["strategies"] == STRATEGIES
    np.testing.assert_allclose(doc["phi"], [4 / 9, 2 / 9, 0])


def test_cli_missing_experiment_dir(tmp_path):
    missing = tmp_path / "nope"
    res = _invoke(["report", str(missing)])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [f"error: {missing}: experiment directory not found"]


def test_malformed_metrics_names_the_file(tmp_path):
    exp = build_tree(tmp_path)
    bad = exp / "seed-1" / "margin" / "round-02" / "train" / "metrics.json"
    bad.write_text("{not json", encoding="utf-8")
    res = _invoke(["report", str(exp), "--quiet"])
    assert res.exit_code == 1
    assert res.stderr.startswith(f"error: {bad}: not valid JSON")


def test_one_seed_penalty_zero_and_html_says_so(tmp_path):
    from alseg.stages.report import report

    exp = build_tree(tmp_path, seeds=[0], full=False)
    result = report(exp, out_path=tmp_path / "one.html")
    np.testing.assert_array_equal(result.penalty, np.zeros((3, 3)))
    np.testing.assert_array_equal(result.phi, np.zeros(3))
    assert all(r.miou_std == 0 for r in result.table)
    text = (tmp_path / "one.html").read_text(encoding="utf-8")
    assert "Significance needs ≥ 2 seeds" in text
    assert (tmp_path / "one_files" / "penalty.png").is_file()


# ------------------------------------------------------------------------------------------- rendering


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(rendered, tmp_path):
    out, _ = rendered
    png = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_report.py"), str(out), str(png)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert png.stat().st_size > 50_000
    with Image.open(png) as im:
        a = np.asarray(im.convert("RGB"))
    assert a.shape[1] == 1400
    colours = np.unique(a.reshape(-1, 3)[:: 97], axis=0)
    assert len(colours) > 50  # figures and text, not a blank page
