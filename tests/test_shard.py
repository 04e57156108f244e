"""Sharded infer: torchrun ranks and `--shard i/n` job-array tasks each write a shard; merged, the shards are
the one-process pool file, dataset by dataset; a killed shard resumes alone; mismatched shards are refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from alseg.commands import app
from alseg.errors import InputError
from alseg.files.hdf5 import PoolReader, PoolWriter, ScoresReader, merge_pools, shard_path
from alseg.stages.infer import shard_rows

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo_unet_tiny.py")
BATCH = 2  # every shard boundary falls on a batch boundary: each image sees the batch of a one-process run
runner = CliRunner()


def _datasets(path: Path) -> dict[str, tuple]:
    """Every dataset: dtype, shape, bytes (ids as text)."""
    out: dict[str, tuple] = {}
    with h5py.File(path, "r") as fh:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                out[name] = (str(obj.dtype), obj.shape,
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
    """Demo data, a 2-iteration checkpoint and the one-process pool file (one CPU thread, as torchrun's
    workers: the thread count changes the float rounding of the convolutions)."""
    import torch

    from alseg.demo_data import make_demo_data
    from alseg.files.idlist import read_ids, write_ids
    from alseg.stages.infer import infer
    from alseg.stages.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("shard")
    data = make_demo_data(root / "data", n_images=40, size=32, seed=5, n_val=6, n_calib=10).out_dir
    ids = data / "splits" / "pool.txt"
    labeled = write_ids(root / "labeled.txt", read_ids(ids)[:6])
    train(CONFIG, labeled_path=labeled, work_dir=root / "train", val_ids_path=data / "splits" / "val.txt",
          seed=0, max_iters=2, batch_size=4, data_root=data, device="cpu")
    ckpt = root / "train" / "checkpoint.pth"
    ref = root / "ref" / "pool.h5"
    infer(CONFIG, checkpoint_path=ckpt, ids_path=ids, out_path=ref, data_root=data, device="cpu", batch_size=BATCH,
          with_labels=True, embeddings=["bottleneck", "penultimate", "badge"])
    yield dict(root=root, data=data, ids=ids, ckpt=ckpt, ref=ref, id_list=read_ids(ids))
    torch.set_num_threads(threads)


def _args(w, out: Path, *extra: str) -> list[str]:
    return ["infer", CONFIG, "--checkpoint", str(w["ckpt"]), "--ids", str(w["ids"]), "--out", str(out),
            "--data-root", str(w["data"]), "--device", "cpu", "--batch-size", str(BATCH), "--with-labels",
            "--embeddings", "bottleneck,penultimate,badge", "--quiet", *extra]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}


def _torchrun(w, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "alseg.commands", *_args(w, out, *extra)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env())


def test_shard_rows_are_contiguous_whole_batches():
    for n_ids, batch, n in [(24, 2, 2), (25, 4, 3), (7, 1, 7), (100, 8, 5)]:
        parts = [shard_rows(n_ids, batch, (i, n)) for i in range(n)]
        assert [r for s in parts for r in range(n_ids)[s]] == list(range(n_ids))
        assert all(s.start % batch == 0 for s in parts)
        sizes = [len(range(n_ids)[s]) for s in parts]
        assert max(sizes) - min(sizes) <= batch
    with pytest.raises(InputError, match="only 3 batch"):
        shard_rows(5, 2, (3, 4))


def test_torchrun_ranks_merge_into_the_one_process_pool(world, tmp_path):
    out = tmp_path / "pool.h5"
    r = _torchrun(world, out, "--scores", "entropy,margin", "--scores-out", str(tmp_path / "scores.h5"), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_datasets(out, world["ref"])
    result = json.loads(r.stdout)
    assert result["n_images"] == 24 and result["shards"] == [str(shard_path(out, i, 2)) for i in range(2)]
    # the shards were merged and removed; the merged file and its scores are all that remain
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pool.h5", "pool.h5.manifest.json", "scores.h5", "scores.h5.manifest.json"]
    with PoolReader(out) as pool:
        assert pool.ids == world["id_list"] and "shard" not in pool.attrs
    with ScoresReader(tmp_path / "scores.h5") as s:
        assert s.ids == world["id_list"] and s.score_names == ["entropy", "margin"]
        assert s.attrs["pool_path"] == str(out)
        from alseg.files.hdf5 import pool_digest

        assert s.attrs["pool_sha256"] == pool_digest(out)


def test_killed_shard_resumes_alone_then_merges(world, tmp_path):
    from alseg.stages.infer import infer

    out = tmp_path / "a" / "pool.h5"
    out.parent.mkdir()
    # job-array task 0 runs to the end
    r0 = infer(CONFIG, checkpoint_path=world["ckpt"], ids_path=world["ids"], out_path=out, data_root=world["data"],
               device="cpu", batch_size=BATCH, with_labels=True, embeddings=["bottleneck", "penultimate", "badge"],
               shard=(0, 2))
    assert r0.out_path == shard_path(out, 0, 2) and r0.n_images == 12 and r0.shard == "0/2"
    # task 1 is killed (SIGKILL) after two of its six batches
    s1 = shard_path(out, 1, 2)
    partial = s1.with_name(s1.name + ".partial")
    proc = subprocess.Popen([sys.executable, "-m", "alseg.commands", *_args(world, out, "--shard", "1/2")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    end = time.monotonic() + 120
    while not (partial.is_dir() and len(list(partial.glob("seg-*.npz"))) >= 2):
        assert proc.poll() is None and time.monotonic() < end, "shard 1 ended before it could be killed"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    done = len(list(partial.glob("seg-*.npz")))
    assert 2 <= done < 6 and not s1.exists()
    twin = tmp_path / "b"
    shutil.copytree(out.parent, twin)  # the same state, resumed under torchrun below

    # job arrays: rerun task 1 with --resume: only its missing batches are inferred; task 0's file is kept
    before = shard_path(out, 0, 2).stat().st_mtime_ns
    r = runner.invoke(app, _args(world, out, "--shard", "1/2", "--resume", "--json"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_resumed"] == done * BATCH
    r = runner.invoke(app, _args(world, out, "--shard", "0/2", "--resume", "--json"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_resumed"] == 12 and shard_path(out, 0, 2).stat().st_mtime_ns == before
    merged = tmp_path / "merged.h5"
    r = runner.invoke(app, ["merge", str(s1), str(shard_path(out, 0, 2)), "--out", str(merged), "--quiet"])
    assert r.exit_code == 0, r.output
    _assert_same_datasets(merged, world["ref"])

    # torchrun --resume: rank 0 keeps its finished shard, rank 1 continues after its finished batches
    r = _torchrun(world, twin / "pool.h5", "--resume", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["n_resumed"] == 12 + done * BATCH
    _assert_same_datasets(twin / "pool.h5", world["ref"])


# ------------------------------------------------------------------------------------ merge, synthetic


def _write(path: Path, ids, sizes, *, k=3, seed=0, tile=(4, 4), shard=None, attrs=None, names=None, labels=False):
    rng = np.random.default_rng(seed)
    more = dict(attrs or {})
    if shard is not None:
        more.update(shard=shard, fingerprint=json.dumps({"ids_sha256": "x", "shard": shard}))
    with PoolWriter(path, class_names=names or [f"c{i}" for i in range(k)], logits_shape=tile, with_labels=labels,
                    embedding_dims={"bottleneck": 5}, attrs=more) as w:
        for i, (h, ww) in zip(ids, sizes):
            r = np.random.default_rng([seed, int(i[1:])])
            w.append([i], [r.normal(0, 2, (k, h, ww)).astype(np.float32)],
                     [r.integers(0, k, (h, ww))] if labels else None,
                     {"bottleneck": r.normal(size=(1, 5)).astype(np.float32)})
    return path


def test_merge_of_variable_size_shards_equals_one_writer(tmp_path):
    ids = [f"i{j}" for j in range(9)]
    sizes = [(4, 4), (6, 5), (4, 4), (3, 7), (4, 4), (9, 9), (4, 4), (2, 2), (5, 4)]
    whole = _write(tmp_path / "whole.h5", ids, sizes, labels=True)
    blocks = [(0, 3), (3, 6), (6, 9)]  # shard 1 holds the largest image, shard 2 only small ones
    shards = [_write(tmp_path / f"p.shard-{i}-of-3.h5", ids[a:b], sizes[a:b], shard=f"{i}/3", labels=True)
              for i, (a, b) in enumerate(blocks)]
    merge_pools(shards[::-1], tmp_path / "merged.h5")
    _assert_same_datasets(tmp_path / "merged.h5", whole)
    # a shard whose first image set another chunk tile is copied by value, with the same result
    odd = _write(tmp_path / "q.shard-1-of-3.h5", ids[3:6], sizes[3:6], tile=(3, 7), shard="1/3", labels=True)
    merge_pools([shards[0], odd, shards[2]], tmp_path / "merged2.h5")
    _assert_same_datasets(tmp_path / "merged2.h5", whole)


def _one_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_merge_refuses_shards_that_do_not_belong_together(tmp_path):
    a = _write(tmp_path / "p.shard-0-of-2.h5", ["i0", "i1"], [(4, 4)] * 2, shard="0/2")
    b = _write(tmp_path / "p.shard-1-of-2.h5", ["i2"], [(4, 4)], shard="1/2")
    other_classes = _write(tmp_path / "x.shard-1-of-2.h5", ["i2"], [(4, 4)], shard="1/2", names=["a", "b", "c"])
    other_ckpt = _write(tmp_path / "y.shard-1-of-2.h5", ["i2"], [(4, 4)], shard="1/2",
                        attrs={"checkpoint_sha256": "feed"})
    overlap = _write(tmp_path / "z.shard-1-of-2.h5", ["i1"], [(4, 4)], shard="1/2")
    plain = _write(tmp_path / "plain.h5", ["i2"], [(4, 4)])
    three = _write(tmp_path / "w.shard-1-of-3.h5", ["i2"], [(4, 4)], shard="1/3")
    out = tmp_path / "m.h5"
    for shards, says in [
        ([a, other_classes], "class_names differs from"),
        ([a, other_ckpt], "checkpoint_sha256 differs from"),
        ([a, overlap], "id 'i1' is also in"),
        ([a, plain], "not a shard"),
        ([a], "shard 1 of 2 is missing"),
        ([a, b, b], "pass each shard once"),
        ([a, three], "merge the shards of one run"),
    ]:
        r = runner.invoke(app, ["merge", *map(str, shards), "--out", str(out), "--quiet"])
        assert says in _one_line(r), (says, r.stderr)
        assert not out.exists()
    r = runner.invoke(app, ["merge", str(a), str(b), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    with PoolReader(out) as pool:
        assert pool.ids == ["i0", "i1", "i2"] and json.loads(pool.attrs["merged_shards"]) == [a.name, b.name]
