"""Pool files of images of different sizes (format version 2): the writer, the reader, and every stage that
reads a pool, each checked against an independent value (the same image stored alone, a hand-written
version-1 file, or a brute-force numpy reference)."""

from __future__ import annotations

import json
import math
import os

import h5py
import numpy as np
import pytest
import torch

from alseg import strategies as S
from alseg.errors import InputError
from alseg.files.hdf5 import PoolReader, PoolWriter, ScoresReader, chunk_tile, write_scores
from alseg.stages.calibrate import calibrate
from alseg.stages.score import score
from alseg.stages.select import _Sources
from conftest import N_CLASSES, make_calibration

K = N_CLASSES
CLASSES = [f"c{k}" for k in range(K)]
A, B, C = (12, 16), (9, 13), (20, 30)  # three image sizes; C is the largest, A the first written
# (sizes of the images, in the order they are written; each append is an ndarray or a list)
APPENDS = [("array", [A, A, A]), ("list", [B, C, B, A]), ("array", [C, C]), ("list", [C, A, B])]
SIZES = [s for _, sizes in APPENDS for s in sizes]
IDS = [f"img_{i:03d}" for i in range(len(SIZES))]
STRATEGIES = ["entropy", "margin", "least-confidence", "contextual-diversity", "badge", "crc"]


def _image(i: int, size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits (K,h,w) float32 exactly representable in float16, and labels (h,w) with a few ignore pixels."""
    rng = np.random.default_rng([seed, i])
    logits = rng.normal(0, 2.0, (K, *size)).astype(np.float16).astype(np.float32)
    labels = np.where(rng.random(size) < 0.7, logits.argmax(0), rng.integers(0, K, size))
    labels[rng.random(size) < 0.05] = 255
    return logits, labels.astype(np.int64)


def _data(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {i: _image(n, s, seed) for n, (i, s) in enumerate(zip(IDS, SIZES))}


def _write_variable(path, data, *, labels=True, appends=APPENDS) -> None:
    with PoolWriter(path, class_names=CLASSES, logits_shape=A, with_labels=labels,
                    embedding_dims={"bottleneck": 3}) as w:
        _append_all(w, data, appends)


def _append_all(w, data, appends, start=0):
    pos = start
    for kind, sizes in appends:
        ids = IDS[pos : pos + len(sizes)]
        pos += len(sizes)
        lg = [data[i][0] for i in ids]
        lb = [data[i][1] for i in ids]
        if kind == "array":
            lg, lb = np.stack(lg), np.stack(lb)
        emb = np.array([[float(IDS.index(i)), 1.0, 2.0] for i in ids], dtype=np.float32)
        w.append(ids, lg, lb if w.with_labels else None, {"bottleneck": emb})
    return pos


def _write_single(path, image_id, data) -> None:
    logits, labels = data[image_id]
    with PoolWriter(path, class_names=CLASSES, logits_shape=logits.shape[1:], with_labels=True) as w:
        w.append([image_id], logits[None], labels[None])


def _read_all(pool: PoolReader, ids=None, batch_size=4, with_labels=True):
    out = {}
    order = []
    for bids, logits, labels in pool.iter_batches(batch_size, ids=ids, with_labels=with_labels):
        assert logits.dtype == np.float32 and len(bids) == len(logits)
        for j, i in enumerate(bids):
            out[i] = (logits[j], None if labels is None else labels[j])
        order += bids
    return order, out


def _softmax(x, axis=0):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.fixture(scope="module")
def variable_pool(tmp_path_factory):
    d = tmp_path_factory.mktemp("v2")
    data = _data()
    _write_variable(d / "pool.h5", data)
    return d, data


# ---------------------------------------------------------------------------------------- writer / reader


def test_layout_and_round_trip(variable_pool):
    d, data = variable_pool
    with h5py.File(d / "pool.h5", "r") as fh:
        assert fh.attrs["format_version"] == 2
        ds = fh["logits"]
        assert ds.shape == (len(IDS), K, *C) and ds.maxshape == (None, K, None, None)
        assert ds.chunks == (1, K, *A) == (1, K, *chunk_tile(K, *A)) and ds.compression == "lzf"
        assert ds.fillvalue == 0 and fh["labels"].fillvalue == 255 and fh["labels"].chunks == (1, *A)
        np.testing.assert_array_equal(fh["sizes"][:], SIZES)
        assert fh["sizes"].dtype == np.int32 and fh["sizes"].attrs["axes"] == "id,hw"
        # what is not an image is the fill value
        for r, (h, w) in enumerate(SIZES):
            assert not ds[r, :, h:, :].any() and not ds[r, :, :, w:].any()
            assert (fh["labels"][r, h:, :] == 255).all() and (fh["labels"][r, :, w:] == 255).all()
    with PoolReader(d / "pool.h5", require_labels=True) as pool:
        assert pool.format_version == 2 and pool.variable_size and pool.shape == C
        np.testing.assert_array_equal(pool.sizes, SIZES)
        assert pool.size(IDS[3]) == B
        np.testing.assert_array_equal(pool.embedding("bottleneck")[:, 0], np.arange(len(IDS)))
        # a requested order that mixes sizes inside batches, with a duplicate
        want = [IDS[i] for i in (4, 0, 1, 3, 8, 5, 11, 2, 10, 6, 7, 9, 0)]
        for batch_size in (1, 3, 5, 64):
            order, got = _read_all(pool, ids=want, batch_size=batch_size)
            assert order == want  # the running row counter of every caller relies on this
            for i in want:
                np.testing.assert_array_equal(got[i][0], data[i][0])
                np.testing.assert_array_equal(got[i][1], data[i][1])
        # each yield is one size and never crosses the requested batch boundaries
        seen = 0
        for bids, logits, labels in pool.iter_batches(3, ids=want, with_labels=True):
            assert {pool.size(i) for i in bids} == {logits.shape[2:]} == {labels.shape[1:]}
            assert seen // 3 == (seen + len(bids) - 1) // 3
            seen += len(bids)


def test_fixed_size_pool_yields_whole_batches_and_v1_reads(tmp_path):
    data = {i: _image(n, A) for n, i in enumerate(IDS)}
    logits = np.stack([data[i][0] for i in IDS])
    labels = np.stack([data[i][1] for i in IDS])
    with PoolWriter(tmp_path / "v2.h5", class_names=CLASSES, logits_shape=A, with_labels=True) as w:
        w.append(IDS[:5], logits[:5], labels[:5])
        w.append(IDS[5:], list(logits[5:]), list(labels[5:]))  # a list of one size is the same thing
    # a version-1 file as alseg <= 0.x wrote it: no /sizes, one chunk per image, no compression
    with h5py.File(tmp_path / "v1.h5", "w") as fh:
        fh.attrs.update(format="alseg.pool", format_version=1, class_names=json.dumps(CLASSES), n_classes=K,
                        ignore_index=255, alseg_version="0.1", created="2024-01-01T00:00:00+00:00")
        fh.create_dataset("ids", data=np.array(IDS, dtype=object), dtype=h5py.string_dtype("utf-8"))
        fh.create_dataset("logits", data=logits.astype(np.float16), chunks=(1, K, *A))
        fh.create_dataset("labels", data=labels.astype(np.uint8), chunks=(1, *A))
    for name in ("v1.h5", "v2.h5"):
        with PoolReader(tmp_path / name, require_labels=True) as pool:
            assert pool.format_version == int(name[1]) and not pool.variable_size and pool.shape == A
            np.testing.assert_array_equal(pool.sizes, np.tile(A, (len(IDS), 1)))
            batches = list(pool.iter_batches(5, with_labels=True))
            assert [len(b[0]) for b in batches] == [5, 5, 2]  # exactly as before: whole batches
            np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), logits)
            np.testing.assert_array_equal(np.concatenate([b[2] for b in batches]), labels)
    # scoring a version-1 file gives what today's scorers give on the whole array, byte for byte
    for name in ("v1.h5", "v2.h5"):
        score(tmp_path / name, strategies=STRATEGIES, calibration_path=make_calibration(tmp_path / f"{name}.json"),
              out_path=tmp_path / f"s_{name}", save_risk_maps=2)
    s = S.badge_window(K, *A)
    with ScoresReader(tmp_path / "s_v1.h5") as s1, ScoresReader(tmp_path / "s_v2.h5") as s2:
        assert s1.attrs["format_version"] == 1  # fixed-size risk maps: readable by a version-1 reader
        for name in ("entropy", "margin", "least-confidence"):
            np.testing.assert_array_equal(s1.score(name), S.image_scores(logits, name))
            np.testing.assert_array_equal(s2.score(name), s1.score(name))
        np.testing.assert_array_equal(s1.embedding("badge-logit"), S.badge_logit_embedding(logits, s))
        assert s1.params("badge-logit") == {"window": s, "target_dim": 400}
        for name in ("badge-logit", "contextual-diversity", "crc"):
            np.testing.assert_array_equal(s2.embedding(name), s1.embedding(name))
        ids1, maps1 = s1.risk_maps()
        assert maps1.shape == (2, *A) and np.isfinite(maps1).all()
        np.testing.assert_array_equal(s1.risk_map_sizes(), [A, A])


def test_writer_rejects_mismatched_inputs(tmp_path):
    lg, lb = _image(0, A)
    with PoolWriter(tmp_path / "p.h5", class_names=CLASSES, logits_shape=A, with_labels=True) as w:
        with pytest.raises(ValueError, match=r"logits\[1\] has shape \(3, 12, 16\)"):
            w.append(["a", "b"], [lg, lg[:3]], [lb, lb])
        with pytest.raises(ValueError, match=r"labels\[0\] has shape \(12, 16\), expected \(9, 13\)"):
            w.append(["a"], [lg[:, :9, :13]], [lb])
        with pytest.raises(ValueError, match="needs them"):
            w.append(["a"], [lg])
        with pytest.raises(ValueError, match="2 logits arrays for 1 ids"):
            w.append(["a"], [lg, lg], [lb, lb])
        w.append(["a"], [lg], [lb])
    with PoolReader(tmp_path / "p.h5") as pool:
        assert pool.ids == ["a"]  # nothing of the refused appends was written


# ---------------------------------------------------------------------------------------- padding


def _poison(path) -> None:
    """Huge logits and real class labels in every padded pixel, written past the schema with raw h5py."""
    with h5py.File(path, "a") as fh:
        for r, (h, w) in enumerate(fh["sizes"][:]):
            fh["logits"][r, :, h:, :] = 6e4
            fh["logits"][r, :, :, w:] = -6e4
            fh["labels"][r, h:, :] = 1
            fh["labels"][r, :, w:] = 2


def test_padding_never_leaks(variable_pool, tmp_path):
    d, data = variable_pool
    _write_variable(tmp_path / "poisoned.h5", data)
    _poison(tmp_path / "poisoned.h5")
    with PoolReader(tmp_path / "poisoned.h5", require_labels=True) as pool:
        _, got = _read_all(pool)
    for i in IDS:
        np.testing.assert_array_equal(got[i][0], data[i][0])
        np.testing.assert_array_equal(got[i][1], data[i][1])
    cal = make_calibration(tmp_path / "crc.json")
    for name in ("pool.h5", "poisoned.h5"):
        src = d / name if name == "pool.h5" else tmp_path / name
        score(src, strategies=STRATEGIES, calibration_path=cal, out_path=tmp_path / f"s_{name}", save_risk_maps=4)
    with ScoresReader(tmp_path / "s_pool.h5") as clean, ScoresReader(tmp_path / "s_poisoned.h5") as bad:
        for name in clean.score_names:
            np.testing.assert_array_equal(bad.score(name), clean.score(name))
        for name in clean.embedding_names:
            np.testing.assert_array_equal(bad.embedding(name), clean.embedding(name))


# ------------------------------------------------------------------------------------ score, select


def _adaptive_reference(logits: np.ndarray, gh: int, gw: int) -> np.ndarray:
    """BADGE logit embedding of one image (K,h,w) on a gh x gw grid, one cell at a time."""
    k, h, w = logits.shape
    p = _softmax(logits.astype(np.float64))
    g = p - np.eye(k)[p.argmax(0)].transpose(2, 0, 1)
    out = np.empty((k, gh, gw))
    for i in range(gh):
        for j in range(gw):
            rows = slice(math.floor(i * h / gh), math.ceil((i + 1) * h / gh))
            cols = slice(math.floor(j * w / gw), math.ceil((j + 1) * w / gw))
            out[:, i, j] = g[:, rows, cols].mean(axis=(1, 2))
    return out.reshape(-1)


@pytest.mark.parametrize("aggregation", ["mean", "top-q"])
def test_each_image_scores_as_if_stored_alone(variable_pool, tmp_path, aggregation):
    d, data = variable_pool
    cal = make_calibration(tmp_path / "crc.json")
    res = score(d / "pool.h5", strategies=STRATEGIES, calibration_path=cal, out_path=tmp_path / "s.h5",
                aggregation=aggregation, q=20.0, save_risk_maps=5, batch_size=4)
    assert res.n_images == len(IDS)
    with ScoresReader(tmp_path / "s.h5") as s:
        assert s.attrs["format_version"] == 2  # padded risk maps: a version-1 reader must refuse
        scores = {n: s.score(n) for n in s.score_names}
        emb = {n: s.embedding(n) for n in s.embedding_names}
        badge = s.params("badge-logit")
        risk = s.risk_maps_by_id()
        risk_ids, padded = s.risk_maps()
        sizes = s.risk_map_sizes()
    assert len(risk) == 5 and risk_ids == sorted(risk, key=lambda i: (-scores["crc"][IDS.index(i)], i))
    for j, i in enumerate(risk_ids):  # the padded form is NaN outside each map, the map inside
        h, w = sizes[j]
        assert tuple(sizes[j]) == SIZES[IDS.index(i)]
        np.testing.assert_array_equal(padded[j, :h, :w], risk[i])
        assert np.isnan(padded[j, h:]).all() and np.isnan(padded[j, :, w:]).all()
    for n, i in enumerate(IDS):
        _write_single(tmp_path / f"{i}.h5", i, data)
        score(tmp_path / f"{i}.h5", strategies=STRATEGIES, calibration_path=cal, out_path=tmp_path / f"s_{i}.h5",
              aggregation=aggregation, q=20.0, save_risk_maps=1)
        with ScoresReader(tmp_path / f"s_{i}.h5") as alone:
            for name in ("entropy", "margin", "least-confidence", "crc"):
                np.testing.assert_allclose(scores[name][n], alone.score(name)[0], rtol=1e-6, atol=1e-9)
            for name in ("contextual-diversity", "contextual-diversity-present", "crc"):
                np.testing.assert_allclose(emb[name][n], alone.embedding(name)[0], rtol=1e-6, atol=1e-7)
            if i in risk:
                np.testing.assert_array_equal(risk[i], alone.risk_maps_by_id()[i])
                assert risk[i].shape == SIZES[n]
    # BADGE: one dimension for all sizes: every image pooled onto the grid of the largest size
    window = S.badge_window(K, *C)
    grid = [C[0] // window, C[1] // window]
    assert badge == {"window": window, "target_dim": 400, "pooling": "adaptive", "grid": grid}
    gh, gw = badge["grid"]
    assert emb["badge-logit"].shape == (len(IDS), K * gh * gw)
    for n, i in enumerate(IDS):
        np.testing.assert_allclose(emb["badge-logit"][n], _adaptive_reference(data[i][0], gh, gw), atol=1e-6)
        pooled = torch.nn.functional.adaptive_avg_pool2d(
            torch.from_numpy(S._onehot_gradient(S.softmax(data[i][0][None])).astype(np.float64)), (gh, gw))
        np.testing.assert_allclose(emb["badge-logit"][n], pooled.reshape(-1).numpy(), atol=1e-6)

    # select computes the same rows from the pool file as score stored, for any subset and order
    want = [IDS[j] for j in (9, 1, 4, 3, 11)]
    rows = [IDS.index(i) for i in want]
    src = _Sources(d / "pool.h5", None, cal, aggregation=aggregation, q=20.0, batch_size=3,
                   progress=lambda *a, **k: None)
    np.testing.assert_allclose(src.badge_logit(want), emb["badge-logit"][rows], atol=1e-7)
    np.testing.assert_allclose(src.scalar("margin", want), scores["margin"][rows], rtol=1e-12)
    u, v = src.crc(want)
    np.testing.assert_allclose(u, scores["crc"][rows], rtol=1e-12)
    P, present = src.contextual_diversity(want)
    np.testing.assert_allclose(P, emb["contextual-diversity"][rows], atol=1e-7)


def test_adaptive_badge_equals_window_pooling_on_a_multiple():
    """On an image of (s*gh, s*gw) the grid pooling is the old window pooling."""
    logits = np.random.default_rng(3).normal(size=(2, K, 12, 18)).astype(np.float32)
    np.testing.assert_allclose(S.badge_logit_embedding_adaptive(logits, (4, 6)), S.badge_logit_embedding(logits, 3),
                               atol=1e-7)


# ---------------------------------------------------------------------------------------- calibrate


def test_calibrate_over_variable_sizes_equals_brute_force(variable_pool, tmp_path):
    d, data = variable_pool
    _write_variable(tmp_path / "poisoned.h5", data)
    _poison(tmp_path / "poisoned.h5")
    alpha = 0.4  # 12 images: n_k >= 2 calibrates every class present in at least 2 of them
    res = calibrate(tmp_path / "poisoned.h5", out_path=tmp_path / "crc.json", alpha=alpha, batch_size=5)
    doc = json.loads((tmp_path / "crc.json").read_text())
    grid = np.arange(1001) / 1000
    for k in range(K):
        losses = []
        for i in IDS:  # each image alone, at its own size, in float64
            probs = _softmax(data[i][0].astype(np.float64))
            mask = data[i][1] == k
            if mask.any():
                pk = probs[k][mask].astype(np.float32).astype(np.float64)  # the stage's float32 softmax
                losses.append((pk[:, None] < grid[None, :]).mean(axis=0))
        n = len(losses)
        assert doc["n_images"][k] == n
        bound = alpha - (1 - alpha) / n if n else -1
        risk = np.mean(losses, axis=0) if n else np.zeros_like(grid)
        ok = np.flatnonzero(risk <= bound + 1e-12)
        expected = grid[ok[-1]] if n and bound >= 0 else 0.0
        assert doc["thresholds"][k] == pytest.approx(expected, abs=1e-3)  # one grid step: float32 vs float64 p
        np.testing.assert_allclose(doc["risk"][k], risk, atol=2e-3)
    assert res.n_calibration_images == len(IDS)


# ---------------------------------------------------------------------------------------- resume


def test_resume_of_a_partial_variable_size_file(tmp_path):
    data = _data(seed=5)
    with pytest.raises(KeyboardInterrupt):
        with PoolWriter(tmp_path / "p.h5", class_names=CLASSES, logits_shape=A, with_labels=True,
                        embedding_dims={"bottleneck": 3}) as w:
            pos = _append_all(w, data, APPENDS[:2])  # sizes A and B, C (the largest) once
            raise KeyboardInterrupt
    assert not (tmp_path / "p.h5").exists()
    # an append killed before its segment was renamed into place: resume ignores (and removes) it
    (tmp_path / "p.h5.partial" / ".seg-000002.npz.123.abcd.tmp").write_bytes(b"half a batch")
    import shutil

    shutil.copytree(tmp_path / "p.h5.partial", tmp_path / "r.h5.partial")
    with PoolWriter(tmp_path / "r.h5", class_names=CLASSES, logits_shape=A, with_labels=True,
                    embedding_dims={"bottleneck": 3}, resume=True) as w:
        pass  # nothing left to do: the file must hold exactly the committed rows
    with PoolReader(tmp_path / "r.h5", require_labels=True) as pool:
        assert pool.ids == IDS[:pos] and pool.fh["logits"].shape[0] == pool.fh["labels"].shape[0] == pos
        assert pool.embedding("bottleneck").shape == (pos, 3)
    with PoolWriter(tmp_path / "p.h5", class_names=CLASSES, logits_shape=A, with_labels=True,
                    embedding_dims={"bottleneck": 3}, resume=True) as w:
        assert w.written_ids == IDS[:pos] and w.shape == C
        _append_all(w, data, APPENDS[2:], start=pos)
    with PoolReader(tmp_path / "p.h5", require_labels=True) as pool:
        assert pool.ids == IDS and pool.shape == C
        np.testing.assert_array_equal(pool.sizes, SIZES)
        _, got = _read_all(pool)
        np.testing.assert_array_equal(pool.embedding("bottleneck")[:, 0], np.arange(len(IDS)))
    for i in IDS:
        np.testing.assert_array_equal(got[i][0], data[i][0])
        np.testing.assert_array_equal(got[i][1], data[i][1])
    # a version-1 partial file (an older alseg) is not continued
    with h5py.File(tmp_path / "q.h5.partial", "w") as fh:
        fh.attrs["format_version"] = 1
    with pytest.raises(InputError, match=r"q\.h5\.partial: cannot resume: written by another alseg"):
        PoolWriter(tmp_path / "q.h5", class_names=CLASSES, logits_shape=A, resume=True)


def test_writer_trims_to_the_largest_image(tmp_path):
    """A hint larger than every image (or a pool whose largest image left) does not leave padding."""
    lg, lb = _image(0, B)
    with PoolWriter(tmp_path / "p.h5", class_names=CLASSES, logits_shape=C, with_labels=True) as w:
        w.append(["a", "b"], np.stack([lg, lg]), np.stack([lb, lb]))
    with PoolReader(tmp_path / "p.h5") as pool:
        assert pool.fh["logits"].shape[2:] == B == pool.shape and not pool.variable_size


# ---------------------------------------------------------------------------------------- disk size


def test_padding_costs_almost_nothing_on_disk(tmp_path):
    """One image 4x the area of the first, and smaller images of odd sizes that leave their chunk mostly
    empty (a chunk tile is the first image's size).

    Bound: random normal float16 logits are incompressible to lzf (it stores them as they are), so the
    valid pixels cost their raw bytes; wholly padded chunks are never allocated and the zeros in part-filled
    chunks compress ~90:1. So the file must stay under 1.1x the valid float16 bytes plus 32 KiB of HDF5
    metadata. Part-filled chunks stored uncompressed would cost ~2x, a dense padded layout ~7x.
    """
    k = 16
    rng = np.random.default_rng(0)
    sizes = [(40, 60)] + [(20, 30)] * 10 + [(25, 37), (33, 41), (40, 45), (17, 59)] + [(80, 120)]
    images = [rng.normal(0, 2, (k, *s)).astype(np.float16) for s in sizes]
    with PoolWriter(tmp_path / "p.h5", class_names=[f"c{i}" for i in range(k)], logits_shape=sizes[0]) as w:
        w.append(["i0"], images[0][None])
        w.append([f"i{j}" for j in range(1, 11)], np.stack(images[1:11]))
        w.append([f"i{j}" for j in range(11, len(sizes))], images[11:])
    valid = sum(x.nbytes for x in images)
    chunks_touched = (len(sizes) - 1 + 4) * k * 40 * 60 * 2
    dense = len(sizes) * k * 80 * 120 * 2
    size = os.path.getsize(tmp_path / "p.h5")
    assert chunks_touched > 1.8 * valid and dense > 6 * valid  # the bound tells the layouts apart
    assert size < 1.1 * valid + 32768, (size, valid)
    with PoolReader(tmp_path / "p.h5") as pool:
        _, got = _read_all(pool, batch_size=5, with_labels=False)
    for j, x in enumerate(images):
        np.testing.assert_array_equal(got[f"i{j}"][0], x.astype(np.float32))


def test_scores_file_risk_maps_of_mixed_sizes(tmp_path):
    maps = [np.full((2, 3), 0.5, np.float32), np.full((4, 2), 0.25, np.float32)]
    write_scores(tmp_path / "s.h5", ["a", "b"], scores={"crc": [1.0, 0.5]}, risk_maps=(["a", "b"], maps))
    with ScoresReader(tmp_path / "s.h5") as s:
        assert s.attrs["format_version"] == 2
        ids, padded = s.risk_maps()
        assert ids == ["a", "b"] and padded.shape == (2, 4, 3)
        assert np.nanmean(padded[0]) == 0.5 and np.isnan(padded[0]).sum() == 12 - 6
        np.testing.assert_array_equal(s.risk_map_sizes(), [(2, 3), (4, 2)])
        got = s.risk_maps_by_id(["b"])
        assert list(got) == ["b"] and got["b"].shape == (4, 2) and (got["b"] == 0.25).all()
    with h5py.File(tmp_path / "s.h5", "r") as fh:  # stored padding is the fill value
        assert (fh["risk_maps"]["maps"][0, 2:] == 0).all() and (fh["risk_maps"]["maps"][1, :, 2:] == 0).all()
