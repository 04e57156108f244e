"""Selectors and scoring on a device: the torch path against brute-force references, the pool digest
that replaces hashing a whole pool file, and the read-ahead scoring pipeline."""

from __future__ import annotations

import math
import shutil

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
import reference_crc as refc
from alseg import crc as C
from alseg import selectors as Z
from alseg.errors import InputError
from alseg.files.hdf5 import POOL_DIGEST_PREFIX, ScoresReader, content_digest, pool_digest, sha256_file
from alseg.files.idlist import write_ids
from alseg.files.manifest import file_digest, read_manifest
from conftest import make_pool

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
    ["mps"] if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else [])


def ids_of(n, prefix="im"):
    return np.array([f"{prefix}{i:05d}" for i in range(n)])


@pytest.fixture
def many_slabs(monkeypatch):
    """CPU passes split into 3 slabs on worker threads even for small pools."""
    monkeypatch.setattr(Z, "_MIN_SLAB_ROWS", 8)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


def device_param():
    return pytest.mark.parametrize("device", [
        pytest.param(d, marks=pytest.mark.gpu) if d != "cpu" else d for d in DEVICES])


# ------------------------------------------------------------------ the one-center distance pass


def test_distances_to_is_exact_and_blocking_independent():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1000, 37)) + 50.0).astype(np.float32)  # norms dwarf distances
    x[17] = x[3]
    xt = torch.from_numpy(x)
    want = np.sqrt(((x.astype(np.float64) - x[3].astype(np.float64)) ** 2).sum(axis=1))
    runs = [Z.distances_to(xt, xt[3], chunk_size=c).numpy() for c in (1, 7, 1 << 20)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])  # the value of an element never depends on the block
    np.testing.assert_allclose(runs[0], want, rtol=1e-6, atol=1e-6)
    assert runs[0][3] == 0.0 and runs[0][17] == 0.0  # no ||a||^2 + ||b||^2 - 2ab cancellation
    # the pairwise kernel of the pruned many-center path gives the same bits
    np.testing.assert_array_equal(Z._pair_distances(xt, xt[3:4].expand(1000, 37)).numpy(), runs[0])


# ------------------------------------------------------------------ k-center and k-means++


def kmeans_pp_reference(x, ids, budget, seed):
    """Brute force: full float64 distance matrix, the documented draw protocol in id order."""
    ids = np.asarray(ids).astype(str)
    order = np.argsort(ids, kind="stable")
    x, ids = np.asarray(x, np.float64)[order], ids[order]
    rng = np.random.default_rng(seed)
    n = len(ids)
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(axis=2))
    picks = [int(np.argmax(np.sqrt((x**2).sum(axis=1))))]
    mind = dist[:, picks[0]].copy()
    while len(picks) < min(budget, n):
        w = mind**2
        w[picks] = 0.0
        cum = np.cumsum(w)
        pos = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        picks.append(pos)
        mind = np.minimum(mind, dist[:, pos])
    return ids[picks]


@device_param()
@pytest.mark.parametrize("n_labeled", [0, 30])
def test_kcenter_torch_equals_bruteforce(device, n_labeled):
    rng = np.random.default_rng(n_labeled)
    u = rng.standard_normal((300, 24)).astype(np.float32)
    u[50:60] = u[10]  # duplicates: distance exactly 0
    lab = rng.standard_normal((n_labeled, 24)).astype(np.float32)
    ids = ids_of(300)
    want = ref.kcenter_bruteforce(u, lab if n_labeled else None, ids, 40)
    perm = rng.permutation(300)
    np.testing.assert_array_equal(Z.kcenter(u[perm], lab, ids[perm], 40, device=device), want)
    np.testing.assert_array_equal(Z.kcenter(u, lab, ids, 40, device=device, chunk_size=13), want)


@device_param()
def test_kmeans_pp_torch_equals_bruteforce(device):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    ids = ids_of(200)
    want = kmeans_pp_reference(x, ids, 25, seed=9)
    np.testing.assert_array_equal(Z.kmeans_pp(x, ids, 25, rng=np.random.default_rng(9), device=device), want)
    perm = rng.permutation(200)
    got = Z.kmeans_pp(x[perm], ids[perm], 25, rng=np.random.default_rng(9), device=device, chunk_size=5)
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ Top-Diverse-K


def crc_pool(rng, n, e=16):
    u = rng.random(n)
    u[::11] = 0.0
    v = rng.random((n, e)).astype(np.float32)
    v[5:9] = v[2]  # identical embeddings: d = 0 exactly
    return u, v


@device_param()
@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("n_ref", [0, 6])
def test_top_diverse_k_torch_equals_bruteforce(device, tau, n_ref):
    rng = np.random.default_rng(int(10 * tau) + n_ref)
    u, v = crc_pool(rng, 60)
    ur, vr = rng.random(n_ref), rng.random((n_ref, v.shape[1])).astype(np.float32)
    ids = ids_of(60)
    perm = rng.permutation(60)
    for budget in (1, 20, 60):
        want = refc.top_diverse_k_bruteforce(u, v, ids, ur, vr, budget, tau=tau)
        got = C.top_diverse_k(u[perm], v[perm], ids[perm], ur, vr, budget, tau=tau, device=device)
        np.testing.assert_array_equal(got, want)
        want = refc.kcenter_bruteforce(u, v, ids, ur, vr, budget, tau=tau)
        got = C.barycenter_kcenter(u[perm], v[perm], ids[perm], ur, vr, budget, tau=tau, device=device)
        np.testing.assert_array_equal(got, want)


def test_barycenter_rows_float32_match_reference_and_do_not_copy():
    rng = np.random.default_rng(1)
    u, v = crc_pool(rng, 50)
    rows = C._BarycenterRows(u, v, 0.5, "cpu", 7)
    # float32 contiguous embeddings are used in place: no second copy of a 1.4 GB matrix
    assert rows.v_c.data_ptr() == v.__array_interface__["data"][0]
    got = rows.block(u[:4], v[:4]).numpy()
    want = refc.barycenter_matrix(u[:4], v[:4], u, v, 0.5)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9)
    # identical embeddings (rows 2 and 5): d = 0 exactly, so with tau = 1 D' is eps itself
    pure = C._BarycenterRows(u, v, 1.0, "cpu", 7).block(u[2:3], v[2:3]).numpy()
    assert pure[0, 5] == pure[0, 2] == np.float32(C.BARYCENTER_EPS)


def test_slabs_on_worker_threads_give_the_same_picks(many_slabs):
    rng = np.random.default_rng(8)
    u = rng.standard_normal((300, 24)).astype(np.float32)
    u[50:60] = u[10]
    ids = ids_of(300)
    perm = rng.permutation(300)
    assert len(Z.row_slabs(300, torch.device("cpu"), lambda a, b: (a, b))) == 3
    np.testing.assert_array_equal(Z.kcenter(u[perm], None, ids[perm], 40), ref.kcenter_bruteforce(u, None, ids, 40))
    np.testing.assert_array_equal(Z.kmeans_pp(u[perm], ids[perm], 25, rng=np.random.default_rng(9)),
                                  kmeans_pp_reference(u, ids, 25, seed=9))
    uc, v = crc_pool(rng, 90)
    ur, vr = rng.random(4), rng.random((4, v.shape[1])).astype(np.float32)
    ids = ids_of(90)
    perm = rng.permutation(90)
    for fn, want in ((C.top_diverse_k, refc.top_diverse_k_bruteforce), (C.barycenter_kcenter, refc.kcenter_bruteforce)):
        np.testing.assert_array_equal(fn(uc[perm], v[perm], ids[perm], ur, vr, 30), want(uc, v, ids, ur, vr, 30))
    # an error inside a slab reaches the caller
    with pytest.raises(ZeroDivisionError):
        Z.row_slabs(300, torch.device("cpu"), lambda a, b: 1 / 0)


# ------------------------------------------------------------------ top-k


def top_k_reference(scores, ids, budget):
    ids = np.asarray(ids).astype(str)
    order = np.argsort(ids, kind="stable")
    s, sid = np.asarray(scores, np.float64)[order], ids[order]
    return sid[np.lexsort((sid, -s))[:budget]]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 80), budget=st.integers(0, 90), levels=st.integers(1, 5))
def test_top_k_equals_full_sort(seed, n, budget, levels):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, n).astype(np.float64)  # many ties, also at the boundary
    ids = rng.permutation(np.array([f"x{i}" for i in range(n)]))
    np.testing.assert_array_equal(Z.top_k(scores, ids, budget), top_k_reference(scores, ids, budget))


@pytest.mark.parametrize("kind", ["random", "ties", "sampled-rows-high", "few-high"])
def test_top_k_large_pool_equals_full_sort(kind):
    # large enough for the sampled threshold; each kind hits one of its paths
    n, b = 200_000, 1_000
    rng = np.random.default_rng(1)
    s = rng.random(n)
    if kind == "ties":
        s = rng.integers(0, 50, n).astype(np.float64)  # ~1400 rows per value: ties at the boundary
    elif kind == "sampled-rows-high":
        s = np.zeros(n)
        s[: 500 * 6 : 6] = 1.0  # 500 of the sampled rows (stride 6) high: fewer than b pass t0, full partition
    elif kind == "few-high":
        s = np.zeros(n)
        s[rng.choice(n, 10, replace=False)] = 2.0  # t = 0: everything ties at the boundary
    ids = rng.permutation(np.array([f"r{i:06d}" for i in range(n)]))
    np.testing.assert_array_equal(Z.top_k(s, ids, b), top_k_reference(s, ids, b))


def test_top_k_compares_ids_as_strings_and_signed_zero():
    # ints compare as str, as the full sort did: "10" < "9"
    np.testing.assert_array_equal(Z.top_k([1.0, 1.0, 1.0], [9, 10, 11], 2), ["10", "11"])
    np.testing.assert_array_equal(Z.top_k([0.0, -0.0, 0.0], ["c", "a", "b"], 2), ["a", "b"])
    with pytest.raises(InputError, match="unique"):
        Z.top_k([1.0, 1.0, 0.0], ["a", "a", "b"], 2)


# ------------------------------------------------------------------ the pool digest


def test_pool_digest_survives_a_copy_and_sees_ids_and_metadata(tmp_path, ids40):
    pool = make_pool(tmp_path / "pool.h5", ids40)
    d = pool_digest(pool)
    assert d.startswith(POOL_DIGEST_PREFIX) and len(d) == len(POOL_DIGEST_PREFIX) + 64
    assert pool_digest(pool) == d
    copy = tmp_path / "copy" / "other-name.h5"
    copy.parent.mkdir()
    shutil.copy(pool, copy)  # new path, new mtime
    assert pool_digest(copy) == d and content_digest(copy) == d and file_digest(copy) == d

    def changed(edit):
        p = tmp_path / f"edit{len(list(tmp_path.iterdir()))}.h5"
        shutil.copy(pool, p)
        with h5py.File(p, "r+") as fh:
            edit(fh)
        return pool_digest(p)

    def rename_id(fh):
        ids = fh["ids"][:]
        ids[3] = b"img_999"
        fh["ids"][:] = ids

    assert changed(rename_id) != d
    assert changed(lambda fh: fh["logits"].attrs.__setitem__("axes", "id,class,x,y")) != d
    assert changed(lambda fh: fh["logits"].resize(41, axis=0)) != d  # shape of /logits
    assert changed(lambda fh: fh.attrs.__setitem__("checkpoint_sha256", "0" * 64)) != d
    assert changed(lambda fh: fh["sizes"].__setitem__((0, 0), 5)) != d

    def overwrite_first_image(fh):
        fh["logits"][0] = fh["logits"][0] + 1  # same stored size (uncompressible): a sampled chunk
    assert changed(overwrite_first_image) != d
    # another pool (other logits, same ids) has another digest
    assert pool_digest(make_pool(tmp_path / "seed1.h5", ids40, seed=1)) != d
    # a file that is not a pool keeps its plain sha256
    ids_file = write_ids(tmp_path / "ids.txt", ids40)
    assert file_digest(ids_file) == sha256_file(ids_file)


def test_score_records_the_digest_and_select_checks_it(tmp_path, ids40):
    from alseg.stages.score import score
    from alseg.stages.select import select

    pool = make_pool(tmp_path / "pool.h5", ids40)
    out = tmp_path / "scores.h5"
    score(pool, strategies=["entropy"], out_path=out)
    with ScoresReader(out) as s:
        assert s.attrs["pool_sha256"] == pool_digest(pool)
    man = read_manifest(tmp_path / "scores.h5.manifest.json")
    assert man["inputs"][0]["sha256"] == pool_digest(pool)
    labeled = write_ids(tmp_path / "labeled.txt", ids40[:5])
    r = select("entropy", budget=3, labeled_path=labeled, out_path=tmp_path / "sel.txt", pool_path=pool,
               scores_path=out)
    assert len(r.selected) == 3
    other = make_pool(tmp_path / "other.h5", ids40, seed=2)
    with pytest.raises(InputError, match="another pool file"):
        select("entropy", budget=3, labeled_path=labeled, out_path=tmp_path / "sel2.txt", pool_path=other,
               scores_path=out)
    # a scores file written before the digest (or by a writer that records the file's sha256) still checks
    with h5py.File(out, "r+") as fh:
        fh.attrs["pool_sha256"] = sha256_file(pool)
    select("entropy", budget=3, labeled_path=labeled, out_path=tmp_path / "sel3.txt", pool_path=pool,
           scores_path=out)


# ------------------------------------------------------------------ scoring: read ahead, compute in parallel


def test_score_in_parallel_equals_serial(tmp_path, ids40):
    """Worker processes (each reading its own runs of batches) give the serial pass's file, dataset by
    dataset, for every per-batch output (crc with kept risk maps included); a worker's error (a NaN logit)
    reaches the caller as the same one-line error, and nothing is written."""
    from alseg.errors import NonFiniteError
    from alseg.stages.score import score
    from conftest import make_calibration

    pool = make_pool(tmp_path / "pool.h5", ids40)
    cal = make_calibration(tmp_path / "crc.json")
    names = ["entropy", "margin", "least-confidence", "contextual-diversity", "badge", "random-stratified",
             "clasp", "crc"]
    kw = dict(strategies=names, calibration_path=cal, save_risk_maps=3, batch_size=3)
    score(pool, out_path=tmp_path / "a.h5", workers=1, **kw)
    score(pool, out_path=tmp_path / "b.h5", workers=3, **kw)
    with ScoresReader(tmp_path / "a.h5") as a, ScoresReader(tmp_path / "b.h5") as b:
        assert a.ids == b.ids == ids40
        assert set(a.score_names) == set(b.score_names) >= {"entropy", "crc", "clasp"}
        for name in a.score_names:
            np.testing.assert_array_equal(a.score(name), b.score(name))
        for name in a.embedding_names:
            np.testing.assert_array_equal(a.embedding(name), b.embedding(name))
    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb:
        np.testing.assert_array_equal(fa["risk_maps/maps"][:], fb["risk_maps/maps"][:])
    with pytest.raises(InputError, match="workers"):
        score(pool, strategies=["entropy"], out_path=tmp_path / "c.h5", workers=0)
    with h5py.File(pool, "r+") as fh:
        fh["logits"][29, 1, 2, 3] = np.nan
    for workers in (1, 2):
        with pytest.raises(NonFiniteError, match=ids40[29]):
            score(pool, strategies=["entropy"], out_path=tmp_path / "d.h5", workers=workers)
        assert not (tmp_path / "d.h5").exists()


def test_read_ahead_raises_the_readers_error_and_stops_early():
    from alseg.stages.score import _read_ahead

    def failing():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in _read_ahead(failing(), depth=1):
            got.append(x)
    assert got == [1, 2]
    produced = []

    def endless():
        for i in range(10**9):
            produced.append(i)
            yield (i,)

    it = _read_ahead(endless(), depth=2)
    assert [next(it)[0] for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert len(produced) < 50  # the reader stopped: bounded read-ahead
    assert math.isfinite(len(produced))
