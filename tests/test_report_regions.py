"""`alseg report` with annotation costs and region units (issue 14 §5), on a FIXED fake tree with hand numbers.

The tree: 2 strategies (random, entropy) x 2 units (image; patch:4 as the variants random-patch and
entropy-patch, ``[params.NAME] unit = "patch:4"``) x 2 seeds, round-00 + 2 rounds, 8 images of 8 x 8
(pool: 512 pixels). Every round folder has a ``cost.json`` with the numbers below; the patch rounds write
``selected.jsonl`` / ``labeled.jsonl`` instead of ``selected.txt`` / ``labeled.txt``.

Per seed (mIoU, labelled %, clicks); round 0 is shared: seed 0 (30, 25, 40), seed 1 (32, 25, 44).
Each round's values differ by 2 mIoU / 4 clicks between the seeds (std sqrt(2)) except where said.
"""

from __future__ import annotations

import json
import math
import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alseg import stats
from alseg.files.idlist import write_ids
from alseg.files.labelled import Labelled, LabelledState, merge_labelled, write_labelled

SEEDS = [0, 1]
STRATEGIES = ["random", "entropy", "random-patch", "entropy-patch"]
UNIT = {"random": "image", "entropy": "image", "random-patch": "patch:4", "entropy-patch": "patch:4"}
IDS = [f"img{i:02d}" for i in range(8)]
POOL_PIXELS = 8 * 64
ROUND0 = {0: (30.0, 25.0, 40), 1: (32.0, 25.0, 44)}  # seed -> (mIoU, labelled %, clicks)
RUNS = {  # strategy -> round -> seed -> (mIoU, labelled %, clicks)
    "random": {1: {0: (36, 50.0, 80), 1: (38, 50.0, 84)}, 2: {0: (42, 75.0, 120), 1: (44, 75.0, 124)}},
    "entropy": {1: {0: (38, 50.0, 86), 1: (40, 50.0, 90)}, 2: {0: (46, 75.0, 130), 1: (46, 75.0, 134)}},
    "random-patch": {1: {0: (34, 31.25, 56), 1: (36, 31.25, 60)}, 2: {0: (38, 37.5, 72), 1: (40, 37.5, 76)}},
    "entropy-patch": {1: {0: (37, 31.25, 60), 1: (39, 31.25, 62)}, 2: {0: (41, 37.5, 80), 1: (43, 37.5, 82)}},
}
# image rounds select 2 whole images; patch rounds 2 patches of 4 x 4 (ids 0 1 / 2 3 in an 8 x 8 image)
IMAGE_SEL = {1: ["img02", "img03"], 2: ["img04", "img05"]}
PATCH_SEL = {1: [("img02", [1]), ("img04", [2])], 2: [("img02", [0]), ("img03", [3])]}
CLASSES = ["background", "thing"]
SQ2 = math.sqrt(2)


def _image(i: int) -> np.ndarray:
    """A gradient (no pixel is the overlay's orange), distinct per image."""
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0] = 10 + 20 * i
    img[..., 1] = np.arange(8)[None, :] * 25
    img[..., 2] = np.arange(8)[:, None] * 25 + 30
    return img


def _metrics(path: Path, miou: float, n_labeled: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    doc = {"format": "alseg.metrics", "format_version": 1,
           "final": {"mIoU": miou, "aAcc": 90.0, "per_class_iou": {c: miou for c in CLASSES}},
           "best": {"mIoU": miou}, "n_labeled": n_labeled, "iterations": 10}
    (path / "metrics.json").write_text(json.dumps(doc), encoding="utf-8")


def _cost(rdir: Path, images: int, pct: float, clicks: int | None, unit: str) -> None:
    doc = {"format": "alseg.cost", "format_version": 1, "images_touched": images,
           "labelled_pixels": int(round(pct / 100 * POOL_PIXELS)), "pool_pixels": POOL_PIXELS,
           "labelled_percent": pct, "clicks": clicks, "unit": unit, "annotation": "precise"}
    (rdir / "cost.json").write_text(json.dumps(doc), encoding="utf-8")


def build_tree(root: Path, *, costs: bool = True) -> Path:
    data = root / "data"
    (data / "img_dir").mkdir(parents=True)
    (data / "ann_dir").mkdir(parents=True)
    for i, image_id in enumerate(IDS):
        Image.fromarray(_image(i)).save(data / "img_dir" / f"{image_id}.png")
        m = np.zeros((8, 8), np.uint8)
        m[:, :3] = 1
        Image.fromarray(m).save(data / "ann_dir" / f"{image_id}.png")
    (data / "classes.json").write_text(json.dumps({"classes": CLASSES, "palette": [[0, 0, 0], [200, 0, 0]]}))
    exp = root / "exp"
    exp.mkdir()
    write_ids(exp / "pool.txt", IDS)
    (exp / "experiment.toml").write_text(
        f'name = "units"\ndata_root = "{data}"\npool_ids = "pool.txt"\nseeds = {SEEDS}\nunit = "image"\n'
        f'strategies = {json.dumps(STRATEGIES)}\n'
        '[params.random-patch]\nstrategy = "random"\nunit = "patch:4"\n'
        '[params.entropy-patch]\nstrategy = "entropy"\nunit = "patch:4"\n', encoding="utf-8")
    for seed in SEEDS:
        r0 = exp / f"seed-{seed}" / "round-00"
        _metrics(r0 / "train", ROUND0[seed][0], 2)
        write_ids(r0 / "labeled.txt", IDS[:2])
        if costs:
            _cost(r0, 2, ROUND0[seed][1], ROUND0[seed][2], "image")
        for strategy in STRATEGIES:
            labeled = list(IDS[:2])
            state = merge_labelled(LabelledState(), [Labelled(i) for i in IDS[:2]])
            for rd in (1, 2):
                rdir = exp / f"seed-{seed}" / strategy / f"round-{rd:02d}"
                rdir.mkdir(parents=True)
                miou, pct, clicks = RUNS[strategy][rd][seed]
                if UNIT[strategy] == "image":
                    labeled += IMAGE_SEL[rd]
                    write_ids(rdir / "selected.txt", IMAGE_SEL[rd])
                    write_ids(rdir / "labeled.txt", labeled)
                    n = len(labeled)
                else:
                    new = [Labelled(i, "patch:4", r) for i, r in PATCH_SEL[rd]]
                    state = merge_labelled(state, new)
                    write_labelled(rdir / "selected.jsonl", merge_labelled(LabelledState(), new))
                    write_labelled(rdir / "labeled.jsonl", state)
                    n = len(state.ids)
                _metrics(rdir / "train", float(miou), n)
                if costs:
                    _cost(rdir, n, pct, clicks, UNIT[strategy])
    return exp


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return build_tree(tmp_path_factory.mktemp("regions"))


@pytest.fixture(scope="module")
def rendered(tree, tmp_path_factory):
    from alseg.stages.report import report

    out = tmp_path_factory.mktemp("out") / "report.html"
    return out, report(tree, out_path=out)


# ------------------------------------------------------------------------------------------- collect


def test_cost_json_is_read_into_the_runs(tree):
    from alseg.stages.report import collect, strategy_unit

    exp = collect(tree)
    assert exp.strategies == STRATEGIES
    r = exp.run(1, "entropy-patch", 2)
    assert (r.images_touched, r.labelled_pixels, r.pool_pixels, r.labelled_percent, r.clicks, r.unit, r.annotation) \
        == (5, 192, 512, 37.5, 82, "patch:4", "precise")
    assert r.selected == ["img02", "img03"] and r.selected_path.name == "selected.jsonl"
    assert r.n_labeled == 5 and r.has_cost
    r0 = exp.run(0, "random-patch", 0)
    assert (r0.labelled_percent, r0.clicks, r0.unit) == (25.0, 40, "image")
    assert {s: strategy_unit(exp, s) for s in STRATEGIES} == UNIT


# ------------------------------------------------------------------------------------------- curves


def test_curves_against_pixels_and_clicks_equal_hand_numbers(tree):
    from alseg.stages.report import collect

    runs = collect(tree).runs
    by_pixels = stats.learning_curves(runs, x="labelled_percent")
    by_clicks = stats.learning_curves(runs, x="clicks")
    # (x vs pixels, x vs clicks, mean mIoU, std): means of the two seeds' hand numbers above
    expected = {
        "random": ([25, 50, 75], [42, 82, 122], [31, 37, 43], [SQ2, SQ2, SQ2]),
        "entropy": ([25, 50, 75], [42, 88, 132], [31, 39, 46], [SQ2, SQ2, 0]),  # round 2: 46, 46
        "random-patch": ([25, 31.25, 37.5], [42, 58, 74], [31, 35, 39], [SQ2, SQ2, SQ2]),
        "entropy-patch": ([25, 31.25, 37.5], [42, 61, 81], [31, 38, 42], [SQ2, SQ2, SQ2]),
    }
    for s, (xp, xc, mean, std) in expected.items():
        for curves, x in ((by_pixels, xp), (by_clicks, xc)):
            c = curves[s]
            np.testing.assert_array_equal(c.rounds, [0, 1, 2])
            np.testing.assert_allclose(c.x, x, atol=1e-12)
            np.testing.assert_allclose(c.mean, mean, atol=1e-12)
            np.testing.assert_allclose(c.std, std, atol=1e-12)
    # the default x is still the labeled-set size
    plain = stats.learning_curves(runs)
    np.testing.assert_array_equal(plain["entropy-patch"].x, [2, 4, 5])
    np.testing.assert_array_equal(plain["entropy-patch"].x, plain["entropy-patch"].n_labeled)


def test_a_run_without_the_cost_is_left_out_of_that_curve():
    recs = [{"seed": 0, "strategy": "a", "round": 0, "n_labeled": 2, "miou": 30.0, "clicks": 10},
            {"seed": 1, "strategy": "a", "round": 0, "n_labeled": 2, "miou": 34.0, "clicks": None},
            {"seed": 0, "strategy": "a", "round": 1, "n_labeled": 4, "miou": 40.0, "clicks": 30},
            {"seed": 0, "strategy": "b", "round": 1, "n_labeled": 4, "miou": 40.0, "clicks": None}]
    c = stats.learning_curves(recs, x="clicks")
    assert list(c) == ["a"]
    np.testing.assert_array_equal(c["a"].x, [10, 30])
    np.testing.assert_array_equal(c["a"].mean, [30, 40])
    np.testing.assert_array_equal(c["a"].n_seeds, [1, 1])


def test_value_at_by_hand():
    x, y = [42, 82, 122], [31, 37, 43]
    assert stats.value_at(x, y, 58) == pytest.approx(31 + 16 / 40 * 6)  # 33.4
    assert stats.value_at(x, y, 82) == 37.0 and stats.value_at(x, y, 42) == 31.0
    assert stats.value_at(x, y, 41.9) is None and stats.value_at(x, y, 122.1) is None
    assert stats.value_at([1, 2, 2, 3], [0, 5, 7, 9], 2) == 5.0  # a repeated x: the first point


# ------------------------------------------------------------------------------------- equal cost


def _levels_hand():
    # clicks: every curve starts at 42 (round 0), the shortest ends at 74 (random-patch), the longest at 132
    # -> 42 + (74 - 42) * (1/4, 1/2, 1) = 50, 58, 74, then 132
    # pixels: start 25 %, shortest end 37.5 %, longest 75 % -> 28.125, 31.25, 37.5, 75
    return [50.0, 58.0, 74.0, 132.0], [28.125, 31.25, 37.5, 75.0]


def test_equal_clicks_table_equals_hand_interpolation(rendered):
    _, res = rendered
    clicks_levels, _ = _levels_hand()
    got = {(r.strategy, r.level): r for r in res.equal_clicks}
    assert sorted({lv for _, lv in got}) == clicks_levels
    hand = {  # the mean curve read linearly between its rounds; None: not reached (curve ends before)
        "random": [31 + 8 / 40 * 6, 31 + 16 / 40 * 6, 31 + 32 / 40 * 6, None],  # 32.2, 33.4, 35.8, ends at 122
        "entropy": [31 + 8 / 46 * 8, 31 + 16 / 46 * 8, 31 + 32 / 46 * 8, 46.0],
        "random-patch": [33.0, 35.0, 39.0, None],
        "entropy-patch": [31 + 8 / 19 * 7, 31 + 16 / 19 * 7, 38 + 13 / 20 * 4, None],
    }
    for s, values in hand.items():
        for level, v in zip(clicks_levels, values):
            row = got[s, level]
            assert (row.miou is None) if v is None else row.miou == pytest.approx(v, abs=1e-12), (s, level)
    # paired by seed against random at 58 clicks, each seed's own curve:
    # random seed 0 x [40, 80, 120] y [30, 36, 42] -> 30 + 18/40*6 = 32.7; seed 1 x [44, 84, 124] -> 32 + 14/40*6 = 34.1
    # random-patch seed 0 x [40, 56, 72] y [30, 34, 38] -> 34 + 2/16*4 = 34.5; seed 1 x [44, 60, 76] -> 32 + 14/16*4 = 35.5
    d = got["random-patch", 58.0]
    assert d.baseline == "random" and d.diff.n == 2
    diffs = [34.5 - 32.7, 35.5 - 34.1]
    half = 12.706204736174707 * np.std(diffs, ddof=1) / math.sqrt(2)  # t_{0.975, 1}
    assert d.diff.mean == pytest.approx(1.6) and d.diff.low == pytest.approx(1.6 - half)
    assert got["random", 58.0].diff is None  # the baseline itself
    assert got["entropy", 132.0].diff is None  # random's seeds do not reach 132 clicks: nothing to pair


def test_equal_pixels_table_equals_hand_interpolation(rendered):
    _, res = rendered
    _, pixel_levels = _levels_hand()
    got = {(r.strategy, r.level): r.miou for r in res.equal_pixels}
    assert sorted({lv for _, lv in got}) == pixel_levels
    assert got["random", 37.5] == pytest.approx(31 + 12.5 / 25 * 6)  # 34.0
    assert got["entropy", 37.5] == pytest.approx(31 + 12.5 / 25 * 8)  # 35.0
    assert got["random-patch", 31.25] == 35.0 and got["entropy-patch", 37.5] == 42.0
    assert got["entropy-patch", 28.125] == pytest.approx(31 + 3.125 / 6.25 * 7)  # 34.5
    assert got["random", 75.0] == 43.0 and got["entropy", 75.0] == 46.0
    assert got["random-patch", 75.0] is None and got["entropy-patch", 75.0] is None


def test_cost_levels_when_a_curve_starts_above_the_level():
    def curve(x):
        x = np.asarray(x, dtype=float)
        return stats.Curve(np.arange(len(x)), x, x, x * 0, np.ones(len(x), int), x)

    assert stats.cost_levels({"a": curve([10, 50]), "b": curve([20, 40])}) == [25.0, 30.0, 40.0, 50.0]
    assert stats.cost_levels({"a": curve([10, 15]), "b": curve([20, 40])}) == [15.0, 40.0]  # no overlap
    rows = stats.at_equal_cost([{"seed": 0, "strategy": "b", "round": 0, "n_labeled": 1, "miou": 1.0, "c": 20},
                                {"seed": 0, "strategy": "b", "round": 1, "n_labeled": 2, "miou": 3.0, "c": 40}],
                               "c", [15.0, 30.0])
    assert [r.miou for r in rows] == [None, 2.0]


# --------------------------------------------------------------------------------------------- HTML


def _text(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def _table(html: str, cls: str) -> list[list[str]]:
    body = html.split(f'<table class="{cls}">', 1)[1].split("</table>", 1)[0]
    return [[_text(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def test_html_has_the_cost_figures_tables_and_columns(rendered):
    out, res = rendered
    html = out.read_text(encoding="utf-8")
    files = out.parent / "report_files"
    for name in ("learning_curves_pixels", "learning_curves_clicks", "regions_random-patch", "regions_entropy-patch"):
        assert (files / f"{name}.png").is_file() and (files / f"{name}.svg").is_file()
    assert 'alt="mIoU vs labelled pixels"' in html and 'alt="mIoU vs clicks"' in html
    assert '<h2 id="cost">Equal annotation cost</h2>' in html and 'href="#cost"' in html
    assert html.count("data:image/png;base64,") == html.count("<img ")
    text = _text(html)
    assert "query unit random: image; entropy: image; random-patch: patch:4; entropy-patch: patch:4" in text
    assert "annotation precise (region units); whole images: full masks" in text
    rows = _table(html, "equal-clicks")
    assert rows[0][:6] == ["strategy", "unit", "50 clicks", "58 clicks", "74 clicks", "132 clicks"]
    by = {r[0]: r for r in rows[1:]}
    assert by["random"][1] == "image" and by["random"][2] == "32.20" and by["random"][5] == "— not reached"
    assert by["random-patch"][3].startswith("35.00 +1.60 [")
    assert by["entropy"][5].startswith("46.00") and by["entropy"][6] == "132"
    pix = _table(html, "equal-labelled_percent")
    assert pix[0][2:6] == ["28.1%", "31.2%", "37.5%", "75%"]
    assert {r[0]: r[5] for r in pix[1:]}["entropy-patch"] == "— not reached"
    # the per-round table: labelled pixels (%) and clicks, mean over seeds
    head = next(r for r in re.findall(r"<tr>(.*?)</tr>", html, re.S) if "mIoU (mean ± std)" in r)
    cols = [_text(c) for c in re.findall(r"<th[^>]*>(.*?)</th>", head)]
    assert cols[:7] == ["strategy", "round", "labeled", "labelled pixels (%)", "clicks", "mIoU (mean ± std)", "seeds"]
    row = {(r.strategy, r.round): r for r in res.table}["entropy-patch", 2]
    assert (row.labelled_percent, row.clicks, row.n_labeled) == (37.5, 81.0, 5)
    assert "<td>entropy-patch</td><td>2</td><td>5</td><td>37.500</td><td>81.0</td><td>42.00 ± 1.41</td>" in \
        html.replace(' class="l"', "")


def test_a_tree_without_cost_json_renders_as_before(tmp_path):
    from test_report import FIGURES
    from test_report import build_tree as old_tree

    from alseg.stages.report import report

    res = report(old_tree(tmp_path), out_path=tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert not res.costs_recorded and res.equal_clicks == [] and res.equal_pixels == []
    assert 'id="cost"' not in html and "query unit" not in html and html.count("clicks") == 1  # the note
    assert "Annotation costs (labelled pixels, clicks) were not recorded in this experiment" in html
    assert sorted(Path(p).stem for p in res.png_paths) == sorted(FIGURES)
    assert all(r.labelled_percent is None and r.clicks is None for r in res.table)


def test_region_tree_without_cost_json_still_draws_regions(tmp_path):
    from alseg.stages.report import report

    res = report(build_tree(tmp_path, costs=False), out_path=tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert not res.costs_recorded and 'id="cost"' not in html
    assert res.units == UNIT  # from [params.NAME] unit
    assert {Path(p).stem for p in res.png_paths} >= {"regions_random-patch", "regions_entropy-patch"}


# ------------------------------------------------------------------------------------------ gallery


def test_region_overlay_changes_only_the_selected_and_labelled_pixels():
    from alseg.regions import patch_map
    from alseg.stages.report import region_overlay

    image = _image(3)
    pm = patch_map(8, 8, 4)
    sel, before = pm == 0, pm == 1
    out = region_overlay(image, sel, before, pm)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.all(np.any(out[sel] != image[sel], axis=-1))  # every pixel of the selected patch is drawn on
    assert np.all(np.any(out[before] != image[before], axis=-1))
    assert np.array_equal(out[~(sel | before)], image[~(sel | before)])  # patches 2 and 3 untouched
    assert not np.array_equal(out[sel], out[before])  # two colours
    # the outline: the selected patch's border pixels are one solid colour, its inside is blended
    assert len({tuple(v) for v in out[0, :4]}) == 1 and tuple(out[1, 1]) != tuple(out[0, 0])


def test_region_gallery_of_a_patch_round(tree):
    from alseg.stages.report import _RegionMaps, _region_rows, _Style, collect

    exp = collect(tree)
    run = exp.run(0, "entropy-patch", 2)
    style = _Style(exp.strategies, CLASSES, np.array([[0, 0, 0], [200, 0, 0]], np.uint8))

    def mask(i):
        return np.asarray(Image.open(exp.data_root / "ann_dir" / f"{i}.png"))

    rows = _region_rows(run, exp, _RegionMaps(exp.exp_dir), style, 6, mask)
    assert [r["id"] for r in rows] == ["img02", "img03"]  # the two images of round 2
    # img02: patch 0 (rows 0-3, cols 0-3) selected now, patch 1 (rows 0-3, cols 4-7) in round 1
    img02, over = _image(2), rows[0]["overlay"]
    assert np.all(np.any(over[:4, :4] != img02[:4, :4], axis=-1))
    assert np.all(np.any(over[:4, 4:] != img02[:4, 4:], axis=-1))
    assert np.array_equal(over[4:], img02[4:])
    assert rows[0]["n_regions"] == 1 and rows[0]["pixels"] == 16
    # img03: patch 3 only (rows 4-7, cols 4-7); everything else as it was
    img03, over = _image(3), rows[1]["overlay"]
    inside = np.zeros((8, 8), bool)
    inside[4:, 4:] = True
    assert np.all(np.any(over[inside] != img03[inside], axis=-1)) and np.array_equal(over[~inside], img03[~inside])
    # the ground truth shown only where labelled (light grey elsewhere)
    assert np.all(rows[1]["labels"][~inside] == 230) and np.all(rows[1]["labels"][4:, 4:][:, 0] == 0)


def test_superpixel_regions_come_from_the_store_under_exp_regions(tmp_path):
    from alseg.files.regionmaps import write_region_maps
    from alseg.regions import region_map_params
    from alseg.stages.report import _RegionMaps, _region_rows, _Style, collect

    exp_dir = build_tree(tmp_path)
    rdir = exp_dir / "seed-0" / "entropy-patch" / "round-02"
    sp = np.zeros((8, 8), np.int32)
    sp[2:6, 2:6] = 1  # superpixel 1: the centre square
    new = merge_labelled(LabelledState(), [Labelled("img05", "superpixel:2", [1])])
    write_labelled(rdir / "selected.jsonl", new)
    (rdir / "labeled.jsonl").unlink()
    (exp_dir / "regions").mkdir()
    write_region_maps(exp_dir / "regions" / "pool.regions-superpixel-2.h5", "superpixel:2",
                      region_map_params("superpixel:2"), [("img05", sp)])
    exp = collect(exp_dir)
    style = _Style(exp.strategies, CLASSES, np.array([[0, 0, 0], [200, 0, 0]], np.uint8))
    rows = _region_rows(exp.run(0, "entropy-patch", 2), exp, _RegionMaps(exp.exp_dir), style, 6,
                        lambda i: np.zeros((8, 8), np.uint8))
    over, img = rows[0]["overlay"], _image(5)
    assert np.all(np.any(over[sp == 1] != img[sp == 1], axis=-1)) and np.array_equal(over[sp == 0], img[sp == 0])


def test_cli_prints_the_equal_clicks_table_and_json(tree, tmp_path):
    from typer.testing import CliRunner

    from alseg.commands import app

    res = CliRunner().invoke(app, ["report", str(tree), "--out", str(tmp_path / "r.html"), "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    assert "mIoU (%) at equal clicks" in res.stderr and "32.20" in res.stderr
    doc = json.loads(res.stdout)
    assert doc["costs_recorded"] and doc["units"] == UNIT
    row = next(r for r in doc["equal_clicks"] if r["strategy"] == "random-patch" and r["level"] == 58.0)
    assert row["miou"] == 35.0 and row["diff"]["mean"] == pytest.approx(1.6)


def test_progress_total_counts_the_new_figures(tree, tmp_path):
    from alseg.stages.report import report

    calls = []
    res = report(tree, out_path=tmp_path / "r.html",
                 progress=lambda advance=1, total=None, **info: calls.append((advance, total)))
    # every figure and the page: 2 cost curves and 2 region galleries more than an image-only tree
    assert calls[0][1] == sum(a for a, _ in calls) == len(res.png_paths) + 1
