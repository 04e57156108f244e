"""`alseg calibrate` and `alseg score --strategy crc` through the real entry point."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from alseg.commands import app
from alseg.files.hdf5 import PoolReader, ScoresReader
from alseg.files.idlist import write_ids
from conftest import make_pool

runner = CliRunner()


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_calibrate_matches_brute_force_and_warns(tmp_path):
    ids = [f"img_{i:03d}" for i in range(60)]
    make_pool(tmp_path / "calib.h5", ids, with_labels=True)
    make_pool(tmp_path / "held.h5", [f"img_{i:03d}" for i in range(100, 130)], with_labels=True)
    write_ids(tmp_path / "train.txt", ids[:3] + ["other"])
    r = runner.invoke(app, ["calibrate", str(tmp_path / "calib.h5"), "--alpha", "0.1", "--out",
                            str(tmp_path / "crc.json"), "--train-ids", str(tmp_path / "train.txt"),
                            "--evaluate", str(tmp_path / "held.h5"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "warning: 3 calibration id(s) were used to train the model" in r.stderr
    doc = json.loads((tmp_path / "crc.json").read_text())
    assert doc["format"] == "alseg.calibration" and len(doc["grid"]) == 1001

    # brute force: per class, the largest grid t with mean_i FNR_i(t) <= alpha - (1 - alpha) / n
    with PoolReader(tmp_path / "calib.h5") as pool:
        batches = list(pool.iter_batches(100, with_labels=True))
    probs = _softmax(batches[0][1])
    labels = batches[0][2]
    grid = np.arange(1001) / 1000
    for k in range(probs.shape[1]):
        losses = []
        for i in range(len(probs)):
            mask = labels[i] == k
            if mask.any():
                pk = probs[i, k][mask]
                losses.append([(pk < t).mean() for t in grid])
        n = len(losses)
        risk = np.mean(losses, axis=0)
        ok = np.flatnonzero(risk <= 0.1 - 0.9 / n)
        expected = grid[ok[-1]] if n and 0.1 - 0.9 / n >= 0 and len(ok) else 0.0
        assert doc["thresholds"][k] == expected
        assert doc["n_images"][k] == n
    ev = doc["evaluation"]
    assert 0.0 <= ev["coverage"] <= 1.0 and sum(ev["set_size_counts"]) == 30 * 36 - 30  # one ignore pixel each

    r = runner.invoke(app, ["score", str(tmp_path / "calib.h5"), "--strategy", "crc", "--calibration",
                            str(tmp_path / "crc.json"), "--save-risk-maps", "3", "--out", str(tmp_path / "s.h5"),
                            "--quiet"])
    assert r.exit_code == 0, r.output
    with ScoresReader(tmp_path / "s.h5") as s:
        u = s.score("crc")
        risk_ids, maps = s.risk_maps()
        assert s.embedding("crc").shape == (60, 16)
    top = sorted(range(60), key=lambda i: (-u[i], ids[i]))[:3]
    assert risk_ids == [ids[i] for i in top]
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), u[top], atol=2e-3)  # u = mean of the risk map


def test_uncalibrated_classes_are_flagged(tmp_path):
    make_pool(tmp_path / "calib.h5", [f"img_{i:03d}" for i in range(10)], with_labels=True)
    r = runner.invoke(app, ["calibrate", str(tmp_path / "calib.h5"), "--alpha", "0.05", "--out",
                            str(tmp_path / "crc.json"), "--quiet"])
    assert r.exit_code == 0
    assert "uncalibrated (fewer than 19 calibration images contain them)" in r.stderr
    assert json.loads((tmp_path / "crc.json").read_text())["thresholds"] == [0.0] * 4


def test_calibrate_needs_labels(tmp_path):
    make_pool(tmp_path / "p.h5", ["img_001"])
    r = runner.invoke(app, ["calibrate", str(tmp_path / "p.h5"), "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 1 and "missing dataset(s) /labels" in r.stderr
    assert not (tmp_path / "c.json").exists()


def test_torch_softmax_path_gives_the_same_thresholds(tmp_path):
    """--device other than cpu runs the softmax in torch; the exact histograms then give the same t̂ as
    the NumPy path (checked here with torch on the CPU)."""
    import torch

    from alseg import crc as C
    from alseg.stages.calibrate import _stream

    pool_path = make_pool(tmp_path / "cal.h5", [f"img_{i:03d}" for i in range(40)], with_labels=True)
    results = []
    for device in (None, torch.device("cpu")):
        with PoolReader(pool_path) as pool:
            acc = C.CalibrationAccumulator(pool.n_classes, bins=1000, ignore_index=pool.ignore_index)
            _stream(pool, acc, 7, lambda *a, **k: None, device)
            results.append(acc.result(0.1))
    np.testing.assert_array_equal(results[0].thresholds, results[1].thresholds)
    np.testing.assert_array_equal(results[0].n_images, results[1].n_images)
