"""The fused path: `infer --scores` computes on the device what `alseg score` computes from stored logits, and
`--logits topk:K|none` pool files are refused (one line) by every reader of full logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from alseg import crc as C
from alseg import fused
from alseg import strategies as S
from alseg.commands import app
from alseg.errors import InputError, UnknownName
from alseg.files.hdf5 import PoolReader, PoolWriter, ScoresReader

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo_unet_tiny.py")
ALL = ["entropy", "margin", "least-confidence", "contextual-diversity", "badge", "crc"]
runner = CliRunner()


# ------------------------------------------------------------------------------- torch twins vs numpy


def _logits(seed: int, shape=(3, 5, 12, 16)) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0, 2, shape).astype(np.float32)
    x[0, :, :2, :2] = 0.0  # uniform pixels: ties in argmax and top-2, entropy exactly 1
    x[1, 2] += 50.0  # certain pixels: p = 1 and 0 (0 log 0)
    return x


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_twins_equal_the_numpy_references(seed):
    x = _logits(seed)
    t = torch.from_numpy(x)
    probs_np, probs = S.softmax(x), fused.softmax(t)
    np.testing.assert_allclose(probs.numpy(), probs_np, rtol=1e-6, atol=1e-7)
    for name, fn in fused.PIXEL_SCORERS.items():
        for how in fused.AGGREGATIONS:
            np.testing.assert_allclose(fused.aggregate(fn(probs), how, 7.5).numpy(),
                                       S.aggregate(S.PIXEL_SCORERS[name](probs_np), how, 7.5), rtol=1e-6, atol=1e-7)
    P, present = fused.contextual_diversity(probs)
    P_np, present_np = S.contextual_diversity(x)
    np.testing.assert_allclose(P.numpy(), P_np, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(present.numpy(), present_np)
    window = S.badge_window(5, 12, 16)
    np.testing.assert_allclose(fused.badge_logit(probs, window).numpy(), S.badge_logit_embedding(x, window),
                               rtol=1e-5, atol=1e-7)
    thresholds = np.array([0.3, 0.15, 0.0, 0.22, 0.001])
    u, v = fused.crc(probs, torch.from_numpy(thresholds))
    u_np, v_np, _ = C.crc_image_scores(probs.numpy(), thresholds)  # the same probabilities: the same sets
    np.testing.assert_allclose(u.numpy(), u_np, rtol=1e-6)
    np.testing.assert_allclose(v.numpy(), v_np, rtol=1e-6, atol=1e-8)
    values, classes = fused.topk_probs(probs, 2)
    assert values.dtype == torch.float16 and classes.dtype == torch.uint8
    np.testing.assert_array_equal(values.float().numpy(), np.sort(probs_np, axis=1)[:, ::-1][:, :2].astype(np.float16))


def test_scorer_rows_and_refusals():
    scorer = fused.FusedScorer(["entropy", "badge"], n_classes=5, shape=(12, 16))
    out = scorer(["a", "b"], [torch.from_numpy(_logits(0)[i]) for i in range(2)])
    assert out["scores.entropy"].shape == (2,) and out["embeddings.badge-logit"].shape[0] == 2
    with pytest.raises(InputError, match="'b': its logits are 10x16.*one image size"):
        scorer(["a", "b"], [torch.zeros(5, 12, 16), torch.zeros(5, 10, 16)])
    bad = torch.zeros(5, 12, 16)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(Exception, match="NaN or inf for id\\(s\\) b"):
        scorer(["a", "b"], [torch.zeros(5, 12, 16), bad])
    with pytest.raises(InputError, match="crc needs a calibration"):
        fused.FusedScorer(["crc"], n_classes=5, shape=(12, 16))
    assert fused.parse_scores("entropy, crc:x/crc.json,entropy") == (["entropy", "crc"], "x/crc.json")
    with pytest.raises(UnknownName, match="unknown 'cd'"):
        fused.parse_scores("cd")


def test_fused_rows_survive_an_interrupted_writer(tmp_path):
    """The scores of finished batches live in the partial folder's segments: a resumed run keeps them."""
    kw = dict(class_names=["a", "b"], logits_shape=(2, 2), extras={"scores.entropy": ((), np.float64)})
    w = PoolWriter(tmp_path / "p.h5", **kw)
    w.append(["x"], np.zeros((1, 2, 2, 2)), extras={"scores.entropy": np.array([0.5])})
    w.close(commit=False)
    w = PoolWriter(tmp_path / "p.h5", resume=True, **kw)
    w.append(["y"], np.zeros((1, 2, 2, 2)), extras={"scores.entropy": np.array([0.25])})
    w.close(commit=True, keep_partial=True)
    np.testing.assert_array_equal(w.extra("scores.entropy"), [0.5, 0.25])
    w.discard_partial()
    w = PoolWriter(tmp_path / "q.h5", **kw)
    w.append(["x"], np.zeros((1, 2, 2, 2)), extras={"scores.entropy": np.array([0.5])})
    w.close(commit=False)
    with pytest.raises(InputError, match="cannot resume: extras differs"):  # a run without --scores
        PoolWriter(tmp_path / "q.h5", resume=True, class_names=["a", "b"], logits_shape=(2, 2))


# ------------------------------------------------------------------------------------- through infer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from alseg.demo_data import make_demo_data
    from alseg.files.idlist import read_ids, write_ids
    from alseg.stages.calibrate import calibrate
    from alseg.stages.infer import infer
    from alseg.stages.train import train

    root = tmp_path_factory.mktemp("fused")
    data = make_demo_data(root / "data", n_images=40, size=32, seed=5, n_val=6, n_calib=10).out_dir
    ids = data / "splits" / "pool.txt"
    labeled = write_ids(root / "labeled.txt", read_ids(ids)[:6])
    common = dict(data_root=data, device="cpu")
    train(CONFIG, labeled_path=labeled, work_dir=root / "train", val_ids_path=data / "splits" / "val.txt",
          seed=0, max_iters=2, batch_size=4, **common)
    ckpt = root / "train" / "checkpoint.pth"
    infer(CONFIG, checkpoint_path=ckpt, ids_path=data / "splits" / "calib.txt", out_path=root / "calib.h5",
          with_labels=True, **common)
    calibrate(root / "calib.h5", out_path=root / "crc.json", alpha=0.2)
    return dict(root=root, data=data, ids=ids, ckpt=ckpt, crc=root / "crc.json", labeled=labeled)


def _infer(w, out: Path, *extra: str) -> list[str]:
    return ["infer", CONFIG, "--checkpoint", str(w["ckpt"]), "--ids", str(w["ids"]), "--out", str(out),
            "--data-root", str(w["data"]), "--device", "cpu", "--batch-size", "5", "--quiet", *extra]


def _one_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("aggregation", ["mean", "top-q"])
def test_fused_scores_equal_alseg_score_on_stored_logits(world, tmp_path, aggregation):
    pool, fused_scores, stored_scores = tmp_path / "pool.h5", tmp_path / "fused.h5", tmp_path / "scored.h5"
    scores = ",".join(n if n != "crc" else f"crc:{world['crc']}" for n in ALL)
    r = runner.invoke(app, _infer(world, pool, "--scores", scores, "--scores-out", str(fused_scores),
                                  "--aggregation", aggregation, "--embeddings", "bottleneck"))
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["score", str(pool), "--strategy", ",".join(ALL), "--out",
                            str(stored_scores), "--calibration", str(world["crc"]), "--aggregation", aggregation,
                            "--quiet"])
    assert r.exit_code == 0, r.output
    with ScoresReader(fused_scores) as a, ScoresReader(stored_scores) as b:
        assert a.ids == b.ids and a.score_names == b.score_names and a.embedding_names == b.embedding_names
        assert {k: a.attrs[k] for k in ("pool_path", "pool_sha256")} == {k: b.attrs[k] for k in ("pool_path", "pool_sha256")}
        for name in a.score_names:
            assert a.params(name) == b.params(name), name
            np.testing.assert_allclose(a.score(name), b.score(name), rtol=1e-6, atol=1e-9, err_msg=name)
        for name in a.embedding_names:
            assert a.params(name) == b.params(name) and a.embedding(name).dtype == b.embedding(name).dtype, name
            np.testing.assert_allclose(a.embedding(name), b.embedding(name), rtol=1e-5, atol=1e-7, err_msg=name)
    # select takes the fused scores file as it takes score's, with or without the pool file
    for strategy in ("entropy", "crc", "contextual-diversity"):
        picks = []
        for scores_path in (fused_scores, stored_scores):
            out = tmp_path / f"sel-{strategy}-{scores_path.stem}.txt"
            r = runner.invoke(app, ["select", "--strategy", strategy, "--budget", "4", "--labeled",
                                    str(world["labeled"]), "--scores", str(scores_path), "--pool", str(pool),
                                    "--out", str(out), "--quiet"])
            assert r.exit_code == 0, r.output
            picks.append(out.read_text())
        assert picks[0] == picks[1], strategy


def test_topk_and_none_pool_files(world, tmp_path):
    native, topk, none = tmp_path / "native.h5", tmp_path / "topk.h5", tmp_path / "none.h5"
    r = runner.invoke(app, _infer(world, native, "--scores", "margin", "--scores-out", str(tmp_path / "s0.h5")))
    assert r.exit_code == 0, r.output
    for out, mode, scores in ((topk, "topk:2", "s1.h5"), (none, "none", "s2.h5")):
        r = runner.invoke(app, _infer(world, out, "--logits", mode, "--embeddings", "bottleneck", "--with-labels",
                                      "--scores", "margin", "--scores-out", str(tmp_path / scores)))
        assert r.exit_code == 0, r.output
        with ScoresReader(tmp_path / "s0.h5") as a, ScoresReader(tmp_path / scores) as b:
            np.testing.assert_array_equal(a.score("margin"), b.score("margin"))  # what is stored changes no score
    with PoolReader(native) as n, PoolReader(topk) as t, PoolReader(none) as z:
        assert t.logits_storage == "topk:2" and z.logits_storage == "none" and not t.has_logits
        assert t.ids == n.ids == z.ids and (t.sizes == n.sizes).all() and (z.sizes == n.sizes).all()
        assert t.has_labels and z.has_labels and z.embedding("bottleneck").shape == (len(n), 64)
        (_, logits, _), (_, probs, classes, _) = next(n.iter_batches(24)), next(t.iter_topk(24))
        p = S.softmax(logits)
        np.testing.assert_array_equal(classes[:, 0], p.argmax(axis=1))
        np.testing.assert_allclose(probs, np.sort(p, axis=1)[:, ::-1][:, :2], atol=1e-3)
    for path, mode in ((topk, "topk:2"), (none, "none")):
        r = runner.invoke(app, ["score", str(path), "--strategy", "entropy", "--out", str(tmp_path / "x.h5"), "--quiet"])
        line = _one_line(r)
        assert f"{path}: stores no full logits (written with `alseg infer --logits {mode}`)" in line, line
    r = runner.invoke(app, _infer(world, tmp_path / "bad.h5", "--logits", "topk:9"))
    assert "the model has only 7 classes" in _one_line(r)
    r = runner.invoke(app, _infer(world, tmp_path / "bad.h5", "--logits", "none"))
    assert "--logits none keeps no model output" in _one_line(r)
    r = runner.invoke(app, _infer(world, tmp_path / "bad.h5", "--scores", "entropy"))
    assert "--scores and --scores-out go together" in _one_line(r)
    assert not (tmp_path / "bad.h5").exists()
