""""Does active learning pay?": AULC, paired differences with Student-t CIs, labels saved, % of the pool,
the template's tables, SVG beside PNG and print-sized fonts, on the fixed tree of tests/test_report.py.

Hand-worked numbers (x = labeled images 4, 6, 8, 10; range 6). AULC per seed = trapezoid / 6:
  random  [30,39,40,49] (69+79+89)/6 = 39.5    [32,40,40,50] 242/6 = 40.333   [31,38,41,48] 237/6 = 39.5
  margin  [30,40,44,48] 246/6 = 41.0           [32,42,45,50] 256/6 = 42.667   [31,41,47,49] 256/6 = 42.667
  crc     [30,42,45,52] 256/6 = 42.667         [32,45,46,55] 269/6 = 44.833   [31,45,48,55] 272/6 = 45.333
AULC differences to random (same seed):
  margin [1.5, 2.333, 3.167]: mean 7/3, s = 5/6;   crc [3.167, 4.5, 5.833]: mean 4.5, s = 4/3.
95% CI: mean ± t * s / sqrt(3); with 2 degrees of freedom the t quantile has the closed form
t_p = (2p - 1) / sqrt(2 p (1 - p)), p = 0.975 -> 4.3027 (scipy.stats.t agrees): margin [0.2632, 4.4034],
crc [1.1878, 7.8122].
Labels saved: random's final mean mIoU is 49 at 10 images; crc's mean curve (31, 44, 46.333, 54) crosses
49 between 8 and 10 images at 8 + (49 - 139/3) / (54 - 139/3) * 2 = 8 + 16/23 = 8.696 -> 86.96%.
"""

from __future__ import annotations

from html import unescape
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

from alseg import stats
from test_report import IDS, STRATEGIES, build_tree

T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # 4.302652...
AULC = {
    "random": [237 / 6, 242 / 6, 237 / 6],
    "margin": [246 / 6, 256 / 6, 256 / 6],
    "crc": [256 / 6, 269 / 6, 272 / 6],
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return build_tree(tmp_path_factory.mktemp("pays"))


@pytest.fixture(scope="module")
def rendered(tree, tmp_path_factory):
    from alseg.stages.report import report

    out = tmp_path_factory.mktemp("pays_out") / "report.html"
    return out, report(tree, out_path=out)


def _ci(values: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    half = T975_DF2 * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


# ----------------------------------------------------------------------------------------------- stats


def test_t_quantile_closed_form_matches_scipy():
    from scipy.stats import t

    assert T975_DF2 == pytest.approx(t.ppf(0.975, 2), rel=1e-12)
    assert T975_DF2 == pytest.approx(4.302653, abs=1e-6)


def test_aulc_of_one_curve_by_hand():
    # trapezoids (2 * 35 + 2 * 42 + 2 * 46) / 6 = 41: the mean mIoU over the budget
    assert stats.aulc([4, 6, 8, 10], [30, 40, 44, 48]) == pytest.approx(41.0)
    # uneven steps: (10 * (10 + 20) / 2 + 30 * (20 + 20) / 2) / 40 = (150 + 600) / 40
    assert stats.aulc([0, 10, 40], [10, 20, 20]) == pytest.approx(750 / 40)
    assert stats.aulc([5], [33.0]) == 33.0
    with pytest.raises(ValueError):
        stats.aulc([4, 4], [1, 2])


def test_aulc_by_seed_and_paired_ci_equal_hand_numbers(tree):
    from alseg.stages.report import collect

    records = collect(tree).records()
    areas = stats.aulc_by_seed(records)
    for s in STRATEGIES:
        np.testing.assert_allclose([areas[s][seed] for seed in (0, 1, 2)], AULC[s], rtol=1e-12)
    paired = {(d.strategy, d.round): d for d in stats.paired_vs_baseline(records, "random")}
    assert {k for k in paired} == {(s, r) for s in ("margin", "crc") for r in (1, 2, 3, None)}
    margin = paired["margin", None].diff
    assert (margin.mean, margin.low, margin.high, margin.n) == pytest.approx(
        (7 / 3, 7 / 3 - T975_DF2 * (5 / 6) / math.sqrt(3), 7 / 3 + T975_DF2 * (5 / 6) / math.sqrt(3), 3))
    assert (margin.low, margin.high) == pytest.approx((0.263219, 4.403448), abs=1e-6)
    crc = paired["crc", None].diff
    assert (crc.mean, crc.low, crc.high) == pytest.approx((4.5, 1.187816, 7.812184), abs=1e-6)
    # per round: margin - random in round 1 is [1, 2, 3]: mean 2, s 1
    r1 = paired["margin", 1]
    assert r1.n_labeled == 6 and (r1.diff.mean, r1.diff.low, r1.diff.high) == pytest.approx(
        (2, 2 - T975_DF2 / math.sqrt(3), 2 + T975_DF2 / math.sqrt(3)))
    # crc - margin in round 2 is [1, 1, 1]: zero variance gives a zero-width interval, not NaN
    assert stats.t_interval([1.0, 1.0, 1.0]) == stats.Interval(1.0, 1.0, 1.0, 3)


def test_one_seed_has_no_interval():
    iv = stats.t_interval([2.5])
    assert iv.mean == 2.5 and iv.n == 1 and math.isnan(iv.low) and math.isnan(iv.high)
    recs = [stats.Record(0, s, r, 4 + 2 * r, v) for s, vals in {"random": [30, 35], "a": [30, 38]}.items()
            for r, v in enumerate(vals)]
    (round1, area) = stats.paired_vs_baseline(recs, "random")
    assert round1.round == 1 and round1.diff.mean == 3 and math.isnan(round1.diff.low)
    assert area.round is None and area.diff.mean == pytest.approx(1.5)  # (30+38)/2 - (30+35)/2


def test_aulc_leaves_out_an_unfinished_seed():
    recs = [stats.Record(seed, "a", r, 4 + 2 * r, 30.0 + r) for seed in (0, 1) for r in range(3)]
    recs = [r for r in recs if not (r.seed == 1 and r.round == 2)]
    assert stats.aulc_by_seed(recs) == {"a": {0: pytest.approx(31.0)}}


def test_labels_to_reach_by_hand():
    x, y = [10, 20, 40], [20, 30, 50]
    assert stats.labels_to_reach(x, y, 40) == pytest.approx(30)  # 20 + (40 - 30) / (50 - 30) * 20
    assert stats.labels_to_reach(x, y, 30) == 20  # reached exactly at a round
    assert stats.labels_to_reach(x, y, 15) == 10  # already at the first point
    assert stats.labels_to_reach(x, y, 60) is None
    # the first crossing counts, even when the curve dips afterwards: 10 + (40 - 20) / (45 - 20) * 10
    assert stats.labels_to_reach([10, 20, 30, 40], [20, 45, 35, 50], 40) == pytest.approx(18)


def test_labels_saved_in_the_result(rendered):
    _, result = rendered
    saved = {x.strategy: x for x in result.labels_saved}
    assert saved["crc"].target_miou == pytest.approx(49) and saved["crc"].random_n_labeled == 10
    assert saved["crc"].n_labeled == pytest.approx(8 + 16 / 23)
    assert saved["crc"].percent == pytest.approx(100 * (8 + 16 / 23) / 10)
    assert saved["crc"].text == "reaches random's final 49.0 mIoU at 8.7 images = 87% of random's 10"
    assert saved["margin"].n_labeled == pytest.approx(10) and saved["margin"].percent == pytest.approx(100)


def test_labels_saved_not_reached(tmp_path):
    from alseg.stages.report import _labels_saved

    curves = stats.learning_curves([stats.Record(0, s, r, 10 * (r + 1), v) for s, vals in
                                    {"random": [20, 40], "bad": [20, 30]}.items() for r, v in enumerate(vals)])
    bad = {x.strategy: x for x in _labels_saved(curves)}["bad"]
    assert bad.n_labeled is None and bad.percent is None and "not reached" in bad.text


# ----------------------------------------------------------------------------------------- pool axis


def test_pool_percent_conversion(tree):
    from alseg.stages.report import collect, pool_images, pool_percent

    assert collect(tree).pool_size == len(IDS) == 16
    assert pool_percent(10, 16) == 62.5 and pool_percent(4, 16) == 25.0
    np.testing.assert_allclose(pool_percent(np.array([4, 8, 16]), 16), [25, 50, 100])
    assert pool_images(62.5, 16) == 10.0
    np.testing.assert_allclose(pool_images(pool_percent(np.array([3.0, 7.0]), 80), 80), [3, 7])


def test_learning_curve_figure_has_the_pool_axis(tree):
    from alseg.stages.report import _fig_curves, _Style, collect

    exp = collect(tree)
    curves = stats.learning_curves(exp.records())
    fig = _fig_curves(exp, curves, _Style(exp.strategies, [], np.zeros((1, 3), np.uint8)))
    (ax,) = fig.axes[:1]
    (top,) = ax.child_axes
    assert top.get_xlabel() == "% of the pool (16 images)"
    fig.canvas.draw()
    # the top axis is the bottom one scaled: an x in images sits where 100 * x / 16 % does
    lo, hi = ax.get_xlim()
    np.testing.assert_allclose(top.get_xlim(), (100 * lo / 16, 100 * hi / 16))
    full = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(full) == 1 and full[0].get_ydata()[0] == 60.0  # the full-supervision reference


# ----------------------------------------------------------------------------------------- the page


def _table(html: str, css_class: str) -> list[list[str]]:
    """Cells of the <table class="css_class">, tags stripped."""
    body = html.split(f'<table class="{css_class}">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)
    cells = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, flags=re.S) for r in rows]
    return [[unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in row] for row in cells]


def test_html_aulc_table_has_the_hand_numbers(rendered):
    out, _ = rendered
    rows = {r[0]: r for r in _table(out.read_text(encoding="utf-8"), "aulc")[1:]}
    for s in STRATEGIES:
        mean, std = statistics.fmean(AULC[s]), statistics.stdev(AULC[s])
        assert rows[s][1] == "3" and rows[s][2] == f"{mean:.2f} ± {std:.2f}"
    assert rows["random"][3:5] == ["—", "—"]
    for s in ("margin", "crc"):
        diff = [a - b for a, b in zip(AULC[s], AULC["random"])]
        mean, low, high = _ci(diff)
        assert rows[s][3] == f"{mean:+.2f}" and rows[s][4] == f"[{low:+.2f}, {high:+.2f}]"
        assert rows[s][5] == "better than random"  # both intervals exclude 0
    assert rows["margin"][3:5] == ["+2.33", "[+0.26, +4.40]"]
    assert rows["crc"][3:5] == ["+4.50", "[+1.19, +7.81]"]
    assert rows["crc"][6] == "reaches random's final 49.0 mIoU at 8.7 images = 87% of random's 10"


def _p_text(d: list[float]) -> str:
    """The two-sided p-value of a one-sample t-test on the differences, from the t distribution's tail."""
    from scipy.stats import t as t_dist

    n = len(d)
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    if sd == 0:
        return "p —"
    p = 2 * t_dist.sf(abs(mean / (sd / math.sqrt(n))), n - 1)
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def test_html_paired_table_per_round(rendered):
    out, _ = rendered
    table = _table(out.read_text(encoding="utf-8"), "paired")
    assert table[0] == ["strategy − random", "round 1 (6 images)", "round 2 (8 images)", "round 3 (10 images)",
                        "AULC"]
    rows = {r[0]: r[1:] for r in table[1:]}
    diffs = {  # per-seed differences to random, from MIOU in tests/test_report.py
        "margin": [[1, 2, 3], [4, 5, 6], [-1, 0, 1]],
        "crc": [[3, 5, 7], [5, 6, 7], [3, 5, 7]],
    }
    for s, per_round in diffs.items():
        for cell, d in zip(rows[s], per_round):
            mean, low, high = _ci(d)
            assert cell == f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]" + _p_text(d)
    # margin round 1: differences 1, 2, 3: t = 2 / (1 / sqrt 3) = 3.464 on 2 degrees of freedom, p = 0.0742
    assert rows["margin"][0] == "+2.00 [-0.48, +4.48]p = 0.074"
    assert rows["crc"][1] == "+6.00 [+3.52, +8.48]p = 0.009"  # 5, 6, 7


def test_html_one_seed_says_na(tmp_path):
    from alseg.stages.report import report

    exp = build_tree(tmp_path, seeds=[0], full=False)
    report(exp, out_path=tmp_path / "one.html")
    html = (tmp_path / "one.html").read_text(encoding="utf-8")
    rows = {r[0]: r for r in _table(html, "aulc")[1:]}
    # seed 0 only: margin AULC 41.0 - 39.5
    assert rows["margin"][3:6] == ["+1.50", "n/a", "n/a (1 seed: no interval)"]
    assert all(cell.endswith(" n/ap —") for cell in _table(html, "paired")[1][1:])


def test_html_is_self_contained_and_escaped(tmp_path):
    from alseg.stages.report import report

    exp = build_tree(tmp_path)
    toml = exp / "experiment.toml"
    toml.write_text(toml.read_text().replace('name = "fake"', 'name = "<script>alert(1)</script> & co"'))
    report(exp, out_path=tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    assert "http" not in html and "<link" not in html and "@import" not in html
    assert html.count("data:image/png;base64,") == html.count("<img ")


def test_svg_beside_every_png(rendered):
    _, result = rendered
    assert len(result.png_paths) == len(result.svg_paths) == 10
    for png in map(Path, result.png_paths):
        svg = png.with_suffix(".svg")
        assert str(svg) in result.svg_paths and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        text = svg.read_text(encoding="utf-8")
        assert text.startswith("<?xml") and "<svg" in text


def test_figures_use_print_sized_fonts(tree, tmp_path, monkeypatch):
    from matplotlib.text import Text

    import alseg.stages.report as rep

    sizes: list[float] = []  # the smallest font of each figure
    real = rep._fig_bytes

    def spy(fig, fmt):
        if fmt == "png":
            sizes.append(min(t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()))
        return real(fig, fmt)

    monkeypatch.setattr(rep, "_fig_bytes", spy)
    rep.report(tree, out_path=tmp_path / "r.html")
    assert len(sizes) == 10 and min(sizes) >= 11, sizes


def test_gallery_uncertainty_has_a_colorbar(tree, tmp_path, monkeypatch):
    import alseg.stages.report as rep

    labels = []
    real = rep._fig_gallery

    def spy(rows, has_pool, style, title):
        fig = real(rows, has_pool, style, title)
        labels.append((has_pool, [a.get_xlabel() for a in fig.axes] + [a.get_ylabel() for a in fig.axes]))
        return fig

    monkeypatch.setattr(rep, "_fig_gallery", spy)
    rep.report(tree, out_path=tmp_path / "r.html")
    assert [h for h, _ in labels] == [False, True, True]  # random has no pool.h5
    for has_pool, xlabels in labels:
        assert ("uncertainty (0 low, 1 high)" in xlabels) == has_pool


# ------------------------------------------------------------------------------- classes and the model


def test_rarest_class_and_class_curves(rendered):
    _, result = rendered
    # round-0 labeled set img00..img03 (every seed): class i % 3 in the left half, class 0 in the right half:
    # background 56 + 28 + 28 + 56 = 168 px, road 28, car 28 of 224: road and car tie, the first one wins
    assert result.rarest_class == "road"
    assert result.rarest_rule.startswith("smallest pixel share in the round-0 labeled images")
    assert "12.50%" in result.rarest_rule


def test_rarest_class_skips_a_class_without_iou(tmp_path):
    from alseg.stages.report import _class_curves, _rarest_class, collect

    exp = collect(build_tree(tmp_path))
    for r in exp.runs:
        if r.strategy == "margin" and r.round == 2:
            r.per_class_iou["road"] = None  # road absent from the val images of those trainings
    names = ["background", "road", "car"]
    name, rule = _rarest_class(exp, names, np.array([168, 20, 28]), _class_curves(exp, names))
    assert name == "car" and "(rarer, without: road)" in rule and "(12.96% of" in rule  # 28 / 216


def test_rarest_class_without_masks_falls_back_to_full_supervision_iou(tmp_path):
    from alseg.stages.report import _class_curves, _rarest_class, collect

    exp = build_tree(tmp_path)
    exp_data = collect(exp)
    exp_data.full_per_class_iou = {"background": 90.0, "road": 70.0, "car": 20.0}
    name, rule = _rarest_class(exp_data, ["background", "road", "car"], None, _class_curves(exp_data, []))
    assert name == "car" and rule.startswith("lowest full-supervision IoU (20.0)")


def test_header_names_the_model_from_the_config(tmp_path):
    from alseg import __version__
    from alseg.stages.report import report

    exp = build_tree(tmp_path)
    cfg = tmp_path / "my_model.py"
    cfg.write_text("model = dict(type='EncoderDecoder', backbone=dict(type='ResNetV1c', depth=18),\n"
                   "             decode_head=dict(type='ASPPHead', num_classes=3))\n"
                   "train_cfg = dict(type='IterBasedTrainLoop', max_iters=2000)\n")
    toml = exp / "experiment.toml"
    toml.write_text(toml.read_text() + f'config = "{cfg}"\nmax_iters = 300\n')
    result = report(exp, out_path=tmp_path / "r.html")
    m = result.model
    assert (m.config, m.model_type, m.backbone, m.decode_head, m.n_classes, m.iterations) == (
        "my_model", "EncoderDecoder", "ResNetV1c", "ASPPHead", 3, 300)  # the experiment's max_iters wins
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "my_model: EncoderDecoder, ResNetV1c backbone, ASPPHead decode head, 3 classes" in html
    assert f"{__version__} (this report)" in html and ">300</td>" in html


def test_header_survives_a_missing_config(tmp_path):
    from alseg.stages.report import report

    exp = build_tree(tmp_path)
    toml = exp / "experiment.toml"
    toml.write_text(toml.read_text() + f'config = "{tmp_path / "gone.py"}"\n')
    result = report(exp, out_path=tmp_path / "r.html")
    assert result.model.config == "gone" and result.model.model_type is None
    assert any("gone.py could not be read" in w for w in result.warnings)


def test_progress_total_matches_the_work(tree, tmp_path):
    from alseg.stages.report import report

    calls = []
    report(tree, out_path=tmp_path / "r.html",
           progress=lambda advance=1, total=None, **info: calls.append((advance, total)))
    # 10 figures and the page: the bar ends exactly full
    assert calls[0] == (0, 11) and sum(a for a, _ in calls) == 11
