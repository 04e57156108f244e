"""The HDF5 contract, id lists and atomic writes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from alseg.errors import InputError, OutputExistsError
from alseg.files.atomic import atomic_path
from alseg.files.hdf5 import PoolReader, PoolWriter, ScoresReader, write_scores
from alseg.files.idlist import append_ids, read_ids, write_ids
from conftest import EMBEDDING_DIMS, N_CLASSES, SHAPE, make_pool


def test_pool_round_trip(tmp_path, ids40):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, N_CLASSES, *SHAPE)).astype(np.float32)
    labels = rng.integers(0, N_CLASSES, (40, *SHAPE)).astype(np.uint8)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    with PoolWriter(tmp_path / "p.h5", class_names=list("abcd"), logits_shape=SHAPE, with_labels=True,
                    embedding_dims={"bottleneck": 8}, embedding_attrs={"bottleneck": {"layer": "backbone"}},
                    attrs={"checkpoint_sha256": "x" * 64}) as w:
        for s in range(0, 40, 16):
            w.append(ids40[s:s + 16], logits[s:s + 16], labels[s:s + 16], {"bottleneck": emb[s:s + 16]})
    with PoolReader(tmp_path / "p.h5", require_labels=True, require_embeddings=["bottleneck"]) as r:
        assert r.ids == ids40 and r.class_names == list("abcd") and r.shape == SHAPE
        assert r.attrs["checkpoint_sha256"] == "x" * 64
        assert r.embedding_attrs("bottleneck")["layer"] == "backbone"
        want = [ids40[i] for i in (33, 2, 17, 5)]
        got_ids, got_logits, got_labels = next(r.iter_batches(10, ids=want, with_labels=True))
        assert got_ids == want
        rows = [33, 2, 17, 5]
        np.testing.assert_array_equal(got_logits, logits[rows].astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(got_labels, labels[rows])
        np.testing.assert_array_equal(r.embedding("bottleneck", want), emb[rows])
        assert r.fh["logits"].chunks == (1, N_CLASSES, *SHAPE) and r.fh["logits"].dtype == np.float16
        streamed = np.concatenate([b[1] for b in r.iter_batches(7)])
        np.testing.assert_array_equal(streamed, logits.astype(np.float16).astype(np.float32))


def test_scores_round_trip_and_join(tmp_path):
    write_scores(tmp_path / "s.h5", ["b", "a", "c"], scores={"margin": [0.2, 0.1, 0.3]},
                 embeddings={"crc": np.eye(3, dtype=np.float32)}, params={"margin": {"aggregation": "mean"}})
    with ScoresReader(tmp_path / "s.h5") as s:
        np.testing.assert_array_equal(s.score("margin", ["a", "b", "c"]), [0.1, 0.2, 0.3])
        np.testing.assert_array_equal(s.embedding("crc", ["c"]), [[0, 0, 1]])
        assert s.params("margin") == {"aggregation": "mean"}
        with pytest.raises(InputError, match=r"s\.h5: id 'zz' is not in this file"):
            s.score("margin", ["zz"])
        with pytest.raises(InputError, match=r"no /scores/entropy"):
            s.score("entropy")


def test_newer_version_and_missing_datasets_are_one_line_errors(tmp_path, ids40):
    path = make_pool(tmp_path / "p.h5", ids40[:3])
    with h5py.File(path, "a") as fh:
        fh.attrs["format_version"] = 4
    with pytest.raises(InputError, match=r"p\.h5: written by a newer alseg \(format_version 4 > 3\)"):
        PoolReader(path)
    with h5py.File(path, "a") as fh:
        fh.attrs["format_version"] = 0
    with pytest.raises(InputError, match=r"p\.h5: unsupported format_version 0 \(this alseg reads 1, 2, 3\)"):
        PoolReader(path)
    with h5py.File(path, "a") as fh:
        fh.attrs["format_version"] = 2
        del fh["logits"]
    with pytest.raises(InputError, match=r"p\.h5: missing dataset\(s\) /logits"):
        PoolReader(path)
    with pytest.raises(InputError, match="has no /labels|missing dataset"):
        PoolReader(make_pool(tmp_path / "q.h5", ids40[:3]), require_labels=True)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="not an HDF5 file"):
        PoolReader(tmp_path / "junk.h5")
    with pytest.raises(InputError, match="not an alseg.scores file"):
        ScoresReader(path)


def test_duplicate_ids_rejected_and_nothing_half_written(tmp_path):
    with pytest.raises(InputError, match="appears more than once"):
        with PoolWriter(tmp_path / "p.h5", class_names=["a"], logits_shape=(2, 2)) as w:
            w.append(["x", "x"], np.zeros((2, 1, 2, 2)))
    assert not (tmp_path / "p.h5").exists()
    with pytest.raises(RuntimeError):
        with PoolWriter(tmp_path / "p.h5", class_names=["a"], logits_shape=(2, 2)) as w:
            w.append(["x"], np.zeros((1, 1, 2, 2)))
            raise RuntimeError("crash")
    assert not (tmp_path / "p.h5").exists() and (tmp_path / "p.h5.partial").exists()
    # resume continues from the partial file
    with PoolWriter(tmp_path / "p.h5", class_names=["a"], logits_shape=(2, 2), resume=True) as w:
        assert w.written_ids == ["x"]
        w.append(["y"], np.ones((1, 1, 2, 2)))
    with PoolReader(tmp_path / "p.h5") as r:
        assert r.ids == ["x", "y"]


def test_outputs_are_never_overwritten_silently(tmp_path, ids40):
    path = make_pool(tmp_path / "p.h5", ids40[:2])
    with pytest.raises(OutputExistsError, match="--overwrite"):
        make_pool(path, ids40[:2])
    with pytest.raises(OutputExistsError):
        write_scores(path, ["a"], scores={})


def test_atomic_path_removes_partial_on_error(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "x.txt") as tmp:
            tmp.write_text("half")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_id_lists(tmp_path):
    write_ids(tmp_path / "a.txt", ["b", "a"])
    assert read_ids(tmp_path / "a.txt") == ["b", "a"]
    assert append_ids(tmp_path / "a.txt", ["c"]) == ["b", "a", "c"]
    with pytest.raises(InputError, match="already in the labeled list"):
        append_ids(tmp_path / "a.txt", ["a"])
    (tmp_path / "d.txt").write_text("x\ny\nx\n")
    with pytest.raises(InputError, match=r"d\.txt: id 'x' appears more than once"):
        read_ids(tmp_path / "d.txt")
    with pytest.raises(InputError, match="not found"):
        read_ids(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="invalid id"):
        write_ids(tmp_path / "e.txt", [" padded"])
