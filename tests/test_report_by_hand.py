"""`alseg report` on rounds made by hand (README's loop): no experiment.toml, round folders with a
training work dir each. Metrics files are written directly; no training needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alseg.errors import InputError
from alseg.files.idlist import write_ids
from alseg.stages.report import collect, report

NAMES = ["background", "road", "sign"]


def write_round(round_dir: Path, n_labeled: int, miou: float, work: str = "model") -> None:
    (round_dir / work).mkdir(parents=True)
    doc = {"format": "alseg.metrics", "format_version": 1, "n_labeled": n_labeled, "iterations": 7,
           "final": {"mIoU": miou, "per_class_iou": {n: miou for n in NAMES}}}
    (round_dir / work / "metrics.json").write_text(json.dumps(doc))
    write_ids(round_dir / "selected.txt", [f"img_{n_labeled + i}" for i in range(2)])


def test_rounds_by_hand_one_curve_per_folder(tmp_path):
    curves = {"margin": [(8, 50.0), (16, 60.0), (24, 80.0)], "random": [(8, 50.0), (16, 55.0), (24, 60.0)]}
    for name, points in curves.items():
        # folder names deliberately out of labeled order: r10 < r2 as strings
        for (n, miou), folder in zip(points, ["r1", "r2", "r10"]):
            write_round(tmp_path / "exp" / name / folder, n, miou)
    exp = collect(tmp_path / "exp")
    assert exp.strategies == ["margin", "random"] and exp.seeds == [0]
    got = {s: [(r.n_labeled, r.miou) for r in exp.runs if r.strategy == s] for s in exp.strategies}
    assert got == curves
    assert [r.round for r in exp.runs if r.strategy == "margin"] == [0, 1, 2]
    result = report(tmp_path / "exp", out_path=tmp_path / "r.html")
    # hand-worked AULC: margin (8*(50+60)/2 + 8*(60+80)/2)/16 = 62.5; random (8*52.5 + 8*57.5)/16 = 55
    aulc = {row.strategy: row.mean for row in result.aulc}
    assert aulc == pytest.approx({"margin": 62.5, "random": 55.0})
    html = (tmp_path / "r.html").read_text()
    assert "margin" in html and "random" in html


def test_rounds_directly_in_the_folder_take_the_strategy_from_the_selections(tmp_path):
    for folder, n, miou in (("r1", 4, 10.0), ("r2", 8, 20.0)):
        write_round(tmp_path / folder, n, miou, work="train")
        manifest = {"format": "alseg.manifest", "format_version": 1, "stage": "select", "args": {"strategy": "crc"},
                    "seconds": 0.5}
        (tmp_path / folder / "selected.txt.manifest.json").write_text(json.dumps(manifest))
    exp = collect(tmp_path)
    assert exp.strategies == ["crc"] and [r.n_labeled for r in exp.runs] == [4, 8]
    assert exp.runs[0].seconds == {"select": 0.5}


def test_a_folder_without_rounds_is_one_line(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="neither an `alseg run` experiment"):
        collect(tmp_path)
