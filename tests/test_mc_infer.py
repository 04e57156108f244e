"""`infer --mc T` (docs/algorithms.md §11.7) end to end on the demo UNet: the pool's /mc statistics against
T probability maps computed here by hand, the deterministic logits unchanged, the head scope's backbone
run once, resume and merge equal to one pass, and `score`/`select` for bald & co. against /mc read by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from alseg.commands import app
from alseg.errors import InputError
from alseg.files.hdf5 import PoolReader, PoolWriter, ScoresReader, merge_pools, shard_path

from conftest import make_pool

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo_unet_tiny.py")
BATCH = 2
T = 4
DROPOUT = {"model.decode_head.dropout_ratio": 0.5}  # the demo config has none
runner = CliRunner()


def _datasets(path: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    with h5py.File(path, "r") as fh:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                out[name] = (str(obj.dtype), obj.shape, obj.chunks,
                             [x.decode() for x in data] if data.dtype == object else data.tobytes())
        fh.visititems(visit)
    return out


def _assert_same_datasets(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        assert da[name] == db[name], name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Demo data (10 pool images of 32x32), a random-init checkpoint of the demo UNet (no training: the
    numbers only have to be the model's), one CPU thread (the thread count changes float rounding)."""
    import torch

    from alseg import mm
    from alseg.demo_data import make_demo_data
    from alseg.files.checkpoint import write_checkpoint
    from alseg.stages.infer import infer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mc")
    data = make_demo_data(root / "data", n_images=14, size=32, seed=2, n_val=2, n_calib=2).out_dir
    ids = data / "splits" / "pool.txt"
    cfg = mm.load_config(CONFIG, data_root=data)
    from mmseg.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():  # mmseg's init (std 0.01) gives near-uniform softmaxes: make the classes differ
        model.decode_head.conv_seg.weight.normal_(0, 1.0)
    ckpt = write_checkpoint(root / "checkpoint.pth", model.state_dict(),
                            dataset_meta={"classes": list(mm.class_names(cfg))})
    common = dict(checkpoint_path=ckpt, ids_path=ids, data_root=data, device="cpu", batch_size=BATCH)
    ref = root / "ref.h5"  # dropout in the head, T passes: the single-pass reference
    res = infer(CONFIG, out_path=ref, cfg_options=DROPOUT, mc=T, mc_scope="head", with_labels=True, **common)
    yield dict(root=root, data=data, ids=ids, ckpt=ckpt, ref=ref, common=common, result=res,
               id_list=ids.read_text().split())
    torch.set_num_threads(threads)


def _entropy(p: np.ndarray, axis: int) -> np.ndarray:
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


def _by_hand(world, scope: str, n_passes: int) -> dict[str, np.ndarray]:
    """All T probability maps of every image, kept (T, b, K, h, w), from the model run here: the
    deterministic pass, then T passes with the decode head's dropout sampling, torch's generator seeded as
    `infer` documents it (mc_seed 0 and the batch's first row); the textbook formulas in float64 NumPy."""
    import torch

    from alseg import dataset as D
    from alseg import mm

    cfg = mm.load_config(CONFIG, data_root=world["data"], cfg_options=DROPOUT)
    model = mm.build_model(cfg, world["ckpt"], torch.device("cpu"))
    ids = world["id_list"]
    index = D.resolve(cfg, ids, str(world["ids"]), "auto")
    out: dict[str, list] = {"H": [], "MI": [], "maxV": [], "logits": []}
    row = 0
    with torch.inference_mode():
        for batch in D.test_loader(cfg, index, ids, with_labels=False, batch_size=BATCH):
            x = model.data_preprocessor(batch, False)["inputs"]
            feats = model.extract_feat(x)
            out["logits"].append(model.decode_head.forward(feats).float().numpy())
            seed = int(np.random.SeedSequence([0, row]).generate_state(1, np.uint64)[0] >> 1)
            torch.manual_seed(seed)
            model.decode_head.dropout.train()
            samples = []
            for _ in range(n_passes):
                f = feats if scope == "head" else model.extract_feat(x)
                samples.append(torch.softmax(model.decode_head.forward(f).float(), dim=1).double().numpy())
            model.decode_head.dropout.eval()
            s = np.stack(samples)  # (T, b, K, h, w): what streaming avoids keeping
            h = _entropy(s.mean(axis=0), axis=1)
            e = _entropy(s, axis=2).mean(axis=0)
            k = s.shape[2]
            votes = np.stack([(s.argmax(axis=2) == c).sum(axis=0) for c in range(k)], axis=1)
            out["H"].append(h)
            out["MI"].append(h - e)
            out["maxV"].append(votes.max(axis=1) / n_passes)
            row += len(batch["inputs"])
    return {key: np.concatenate(v) for key, v in out.items()}


def test_pool_mc_equals_t_stored_maps_by_hand(world):
    ref = _by_hand(world, "head", T)
    with PoolReader(world["ref"]) as pool:
        assert pool.format_version == 3 and pool.mc == {"T": T, "scope": "head"}
        assert pool.ids == world["id_list"]
        maps = np.concatenate([m for _, m in pool.iter_mc(3)])
        logits = np.concatenate([x for _, x, _ in pool.iter_batches(3)])
    np.testing.assert_allclose(maps[:, 0], ref["H"], atol=1e-5)
    np.testing.assert_allclose(maps[:, 1], np.maximum(ref["MI"], 0), atol=1e-5)
    np.testing.assert_allclose(maps[:, 2], ref["maxV"], atol=1e-7)
    assert (maps[:, 1] > 1e-3).any()  # dropout did sample: not a trivially zero BALD
    np.testing.assert_array_equal(logits, ref["logits"].astype(np.float16).astype(np.float32))


def test_mc_without_dropout_or_with_one_pass_is_the_deterministic_pool(world, tmp_path):
    from alseg.stages.infer import infer

    c = world["common"]
    plain = infer(CONFIG, out_path=tmp_path / "plain.h5", with_labels=True, **c)
    assert plain.mc == 0 and not plain.warnings
    off = infer(CONFIG, out_path=tmp_path / "off.h5", with_labels=True, mc=3, **c)  # demo head: dropout_ratio 0
    assert len(off.warnings) == 1 and "no dropout layer" in off.warnings[0] and "\n" not in off.warnings[0]
    one = infer(CONFIG, out_path=tmp_path / "one.h5", with_labels=True, mc=1, cfg_options=DROPOUT, **c)
    with h5py.File(tmp_path / "plain.h5", "r") as a, h5py.File(tmp_path / "off.h5", "r") as b, \
            h5py.File(tmp_path / "one.h5", "r") as d, h5py.File(world["ref"], "r") as r:
        assert a.attrs["format_version"] == 2 and "mc" not in a
        assert b.attrs["format_version"] == 3
        for name in ("ids", "sizes", "logits", "labels"):  # --mc leaves the deterministic output as it was
            np.testing.assert_array_equal(b[name][()], a[name][()])
            np.testing.assert_array_equal(r[name][()], a[name][()])  # dropout in the config: eval, the same
        logits = a["logits"][()].astype(np.float64)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(b["mc"][:, 0], _entropy(p, axis=1), atol=2e-3)  # float16 logits here
        assert np.abs(b["mc"][:, 1]).max() <= 1e-6 and (b["mc"][:, 2] == 1).all()  # BALD = 0, every vote agrees
        assert np.abs(d["mc"][:, 1]).max() <= 1e-6 and (d["mc"][:, 2] == 1).all()  # T = 1: BALD = 0 too
    r = runner.invoke(app, ["score", str(tmp_path / "off.h5"), "--strategy", "bald,variation-ratio",
                            "--out", str(tmp_path / "s.h5")])
    assert r.exit_code == 0, r.output
    with ScoresReader(tmp_path / "s.h5") as s:
        assert np.abs(s.score("bald")).max() <= 1e-6 and (s.score("variation-ratio") == 0).all()


@pytest.mark.parametrize("scope", ["head", "full"])
def test_head_scope_runs_the_backbone_once_per_batch(world, tmp_path, monkeypatch, scope):
    from alseg import mm
    from alseg.stages.infer import infer

    calls = {"backbone": 0, "decode_head": 0}
    build = mm.build_model

    def counted(*args, **kwargs):
        model = build(*args, **kwargs)
        for name in calls:  # infer calls decode_head.forward directly: wrap forward, not a hook
            module = getattr(model, name)

            def forward(*a, _name=name, _forward=module.forward, **kw):
                calls[_name] += 1
                return _forward(*a, **kw)

            module.forward = forward
        return model

    monkeypatch.setattr(mm, "build_model", counted)
    infer(CONFIG, out_path=tmp_path / "p.h5", cfg_options=DROPOUT, mc=3, mc_scope=scope, **world["common"])
    n_batches = -(-len(world["id_list"]) // BATCH)
    # the probe image (chunk tile) runs once without MC; each batch: one deterministic pass, then 3
    assert calls["decode_head"] == 1 + n_batches * (1 + 3)
    assert calls["backbone"] == 1 + n_batches * (1 if scope == "head" else 1 + 3)
    ref = _by_hand(world, scope, 3)  # the demo UNet's only dropout layer is its head's
    with h5py.File(tmp_path / "p.h5", "r") as fh:
        assert fh["mc"].attrs["scope"] == scope and fh["mc"].attrs["T"] == 3
        np.testing.assert_allclose(fh["mc"][:, 0], ref["H"], atol=1e-5)
        np.testing.assert_allclose(fh["mc"][:, 1], np.maximum(ref["MI"], 0), atol=1e-5)


def _one_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_version2_pool_reads_and_mc_strategies_refuse_it_in_one_line(tmp_path):
    ids = [f"img_{i:03d}" for i in range(8)]
    pool = make_pool(tmp_path / "v2.h5", ids)
    with PoolReader(pool) as p:
        assert p.format_version == 2 and not p.has_mc and p.mc is None
        assert sum(len(b) for b, _, _ in p.iter_batches(3)) == 8
    r = runner.invoke(app, ["score", str(pool), "--strategy", "bald", "--out", str(tmp_path / "s.h5")])
    line = _one_line(r)
    assert str(pool) in line and "alseg infer --mc T" in line and not (tmp_path / "s.h5").exists()
    (tmp_path / "lab.txt").write_text("img_000\n")
    r = runner.invoke(app, ["select", "--strategy", "variation-ratio", "--pool", str(pool), "--budget", "2",
                            "--labeled", str(tmp_path / "lab.txt"), "--out", str(tmp_path / "sel.txt")])
    line = _one_line(r)
    assert str(pool) in line and "alseg infer --mc T" in line


def test_score_and_select_equal_the_stored_maps_by_hand(world, tmp_path):
    pool, out = world["ref"], tmp_path / "scores.h5"
    r = runner.invoke(app, ["score", str(pool), "--strategy", "bald,mc-entropy,variation-ratio,entropy",
                            "--aggregation", "top-q", "--q", "25", "--out", str(out)])
    assert r.exit_code == 0, r.output
    with h5py.File(pool, "r") as fh:
        maps, k = fh["mc"][()].astype(np.float64), int(fh.attrs["n_classes"])
        sizes = fh["sizes"][()]
    assert (sizes == sizes[0]).all()  # the demo images share one size: no cropping to do

    def top25(x):
        flat = np.sort(x.reshape(len(x), -1), axis=1)[:, ::-1]
        return flat[:, : int(flat.shape[1] * 0.25)].mean(axis=1)

    want = {"bald": top25(np.maximum(maps[:, 1], 0) / math.log(k)), "mc-entropy": top25(maps[:, 0] / math.log(k)),
            "variation-ratio": top25(1 - maps[:, 2])}
    with ScoresReader(out) as s:
        for name, value in want.items():
            np.testing.assert_allclose(s.score(name), value, rtol=1e-6, atol=1e-9)
            assert s.params(name) == {"aggregation": "top-q", "q": 25.0, "T": T, "scope": "head"}
    lab = tmp_path / "lab.txt"
    lab.write_text(world["id_list"][0] + "\n")
    chosen = {}
    for source in (["--pool", str(pool)], ["--scores", str(out)]):
        for sampler in ("top", "power"):
            sel = tmp_path / f"sel-{source[0][2:]}-{sampler}.txt"
            r = runner.invoke(app, ["select", "--strategy", "bald", *source, "--budget", "3", "--labeled", str(lab),
                                    "--out", str(sel), "--sampler", sampler, "--seed", "1", "--aggregation", "top-q",
                                    "--q", "25"])
            assert r.exit_code == 0, r.output
            chosen[source[0], sampler] = sel.read_text().split()
    unlabeled = world["id_list"][1:]
    top = [unlabeled[i] for i in np.lexsort((np.arange(len(unlabeled)), -want["bald"][1:]))[:3]]
    assert chosen["--pool", "top"] == chosen["--scores", "top"] == top
    assert chosen["--pool", "power"] == chosen["--scores", "power"]  # the same scores, the same seeded draw
    assert len(set(chosen["--pool", "power"])) == 3 and world["id_list"][0] not in chosen["--pool", "power"]


def test_interrupted_mc_infer_resumes_to_the_single_pass(world, tmp_path, monkeypatch):
    from alseg.stages.infer import infer

    out = tmp_path / "pool.h5"
    append = PoolWriter.append
    seen = {"n": 0}

    def killed_after_two(self, *args, **kwargs):
        if seen["n"] == 2:
            raise KeyboardInterrupt  # as a kill between batches: two finished segments stay
        seen["n"] += 1
        return append(self, *args, **kwargs)

    monkeypatch.setattr(PoolWriter, "append", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        infer(CONFIG, out_path=out, cfg_options=DROPOUT, mc=T, with_labels=True, **world["common"])
    monkeypatch.setattr(PoolWriter, "append", append)
    partial = out.with_name(out.name + ".partial")
    assert len(list(partial.glob("seg-*.npz"))) == 2 and not out.exists()
    with pytest.raises(Exception, match="mc differs"):  # another T would mix two kinds of rows
        infer(CONFIG, out_path=out, cfg_options=DROPOUT, mc=T + 1, with_labels=True, resume=True, **world["common"])
    res = infer(CONFIG, out_path=out, cfg_options=DROPOUT, mc=T, with_labels=True, resume=True, **world["common"])
    assert res.n_resumed == 2 * BATCH and res.mc == T
    _assert_same_datasets(out, world["ref"])


def test_resume_auto_continues_matching_batches_and_restarts_otherwise(world, tmp_path, monkeypatch):
    """``resume="auto"`` (what ``alseg run`` passes): a killed run's batches under other options (T + 1)
    are dropped and the pool starts over; under the same options they are kept. Both give the single pass."""
    from alseg.stages.infer import infer

    out = tmp_path / "pool.h5"
    append = PoolWriter.append

    def interrupted(mc):
        seen = {"n": 0}

        def killed_after_two(self, *args, **kwargs):
            if seen["n"] == 2:
                raise KeyboardInterrupt
            seen["n"] += 1
            return append(self, *args, **kwargs)

        monkeypatch.setattr(PoolWriter, "append", killed_after_two)
        with pytest.raises(KeyboardInterrupt):
            infer(CONFIG, out_path=out, cfg_options=DROPOUT, mc=mc, with_labels=True, overwrite=True,
                  resume="auto", **world["common"])
        monkeypatch.setattr(PoolWriter, "append", append)

    interrupted(T + 1)
    res = infer(CONFIG, out_path=out, cfg_options=DROPOUT, mc=T, with_labels=True, overwrite=True, resume="auto",
                **world["common"])
    assert res.n_resumed == 0
    _assert_same_datasets(out, world["ref"])
    interrupted(T)
    res = infer(CONFIG, out_path=out, cfg_options=DROPOUT, mc=T, with_labels=True, overwrite=True, resume="auto",
                **world["common"])
    assert res.n_resumed == 2 * BATCH
    _assert_same_datasets(out, world["ref"])
    with pytest.raises(InputError, match="resume"):
        infer(CONFIG, out_path=out, mc=T, overwrite=True, resume="yes", **world["common"])


def test_merge_of_two_mc_shards_equals_the_single_pass(world, tmp_path):
    from alseg.stages.infer import infer

    out = tmp_path / "pool.h5"
    for i in range(2):
        infer(CONFIG, out_path=out, cfg_options=DROPOUT, mc=T, with_labels=True, shard=(i, 2), **world["common"])
    merged = tmp_path / "merged.h5"
    r = runner.invoke(app, ["merge", str(shard_path(out, 1, 2)), str(shard_path(out, 0, 2)), "--out", str(merged),
                            "--quiet"])
    assert r.exit_code == 0, r.output
    _assert_same_datasets(merged, world["ref"])
    with h5py.File(merged, "r") as fh:
        assert fh.attrs["format_version"] == 3 and fh["mc"].attrs["T"] == T


# ------------------------------------------------------------------------------------------ synthetic


def _write(path: Path, ids, sizes, *, mc=(5, "head"), shard=None, seed=0):
    more = {} if shard is None else dict(shard=shard, fingerprint=json.dumps({"ids_sha256": "x", "shard": shard}))
    with PoolWriter(path, class_names=["a", "b", "c"], logits_shape=(4, 4), attrs=more,
                    mc=None if mc is None else {"T": mc[0], "scope": mc[1]}) as w:
        for i, (h, ww) in zip(ids, sizes):
            r = np.random.default_rng([seed, int(i[1:])])
            w.append([i], [r.normal(0, 2, (3, h, ww)).astype(np.float32)],
                     mc_maps=None if mc is None else [r.random((3, h, ww)).astype(np.float32)])
    return path


def test_variable_size_mc_pools_crop_merge_and_refuse_mixed_shards(tmp_path):
    ids = [f"i{j}" for j in range(6)]
    sizes = [(4, 4), (6, 5), (3, 7), (4, 4), (9, 9), (2, 2)]
    whole = _write(tmp_path / "whole.h5", ids, sizes)
    with PoolReader(whole) as p:
        got = {i: m for b, maps in p.iter_mc(4, ids=ids[::-1]) for i, m in zip(b, maps)}
    for i, (h, w) in zip(ids, sizes):
        want = np.random.default_rng([0, int(i[1:])])
        want.normal(0, 2, (3, h, w))
        np.testing.assert_array_equal(got[i], want.random((3, h, w)).astype(np.float32))
    shards = [_write(tmp_path / f"p.shard-{s}-of-2.h5", ids[a:b], sizes[a:b], shard=f"{s}/2")
              for s, (a, b) in enumerate([(0, 3), (3, 6)])]
    merge_pools(shards, tmp_path / "merged.h5")
    _assert_same_datasets(tmp_path / "merged.h5", whole)
    other = _write(tmp_path / "q.shard-1-of-2.h5", ids[3:], sizes[3:], shard="1/2", mc=(7, "head"))
    with pytest.raises(Exception, match="MC statistics"):
        merge_pools([shards[0], other], tmp_path / "bad.h5")
    plain = _write(tmp_path / "r.shard-1-of-2.h5", ids[3:], sizes[3:], shard="1/2", mc=None)
    with pytest.raises(Exception, match="MC statistics"):
        merge_pools([shards[0], plain], tmp_path / "bad.h5")
