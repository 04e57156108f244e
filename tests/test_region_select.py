"""Region rounds of `alseg select --unit ...` (issue 14 §1, §2, §4): each checked against a value the test
computes itself (loops over cells and patches, hand-drawn ground truth)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alseg.files.hdf5 import PoolWriter
from alseg.files.labelled import FULL, LabelledState, read_labelled, write_labelled
from alseg.stages import select_regions as SR
from alseg.stages.select import select

from conftest import make_pool

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "demo_unet_tiny.py")
K = 7  # the demo config's classes


def _dataset(root: Path, images: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """The alseg custom layout (img_dir, ann_dir, splits) of ``id -> (rgb, gt)``; every id in the pool split."""
    for sub in ("img_dir", "ann_dir", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, (rgb, gt) in images.items():
        Image.fromarray(rgb).save(root / "img_dir" / f"{i}.png")
        Image.fromarray(gt.astype(np.uint8)).save(root / "ann_dir" / f"{i}.png")
    text = "".join(f"{i}\n" for i in images)
    for name in ("pool", "val", "calib", "all"):
        (root / "splits" / f"{name}.txt").write_text(text)
    return root


def _pool(path: Path, logits: dict[str, np.ndarray], data_root: Path) -> Path:
    shape = next(iter(logits.values())).shape[1:]
    with PoolWriter(path, class_names=[f"c{k}" for k in range(K)], logits_shape=shape,
                    attrs=dict(config_path=CONFIG, data_root=str(data_root), split="train")) as w:
        ids = list(logits)
        w.append(ids, np.stack([logits[i] for i in ids]))
    return path


def _entropy(logits: np.ndarray) -> np.ndarray:
    """(K, h, w) -> (h, w) entropy of the softmax, computed here by hand."""
    z = logits.astype(np.float64) - logits.max(axis=0)
    p = np.exp(z) / np.exp(z).sum(axis=0)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Eight 32 x 32 images (random colours), their 8 x 8 logits and a pool file recording the dataset."""
    root = tmp_path_factory.mktemp("regions")
    rng = np.random.default_rng(7)
    ids = [f"im{k}" for k in range(8)]
    blocks = lambda: rng.integers(0, 256, (4, 4, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # noqa: E731
    images = {i: (blocks(), rng.integers(0, K, (32, 32))) for i in ids}  # colour blocks: SLIC finds several
    data = _dataset(root / "data", images)
    logits = {i: rng.normal(0, 2, (K, 8, 8)).astype(np.float32) for i in ids}
    return dict(root=root, data=data, ids=ids, logits=logits, images=images)


def _fresh_pool(world, tmp_path) -> Path:
    return _pool(tmp_path / "pool.h5", world["logits"], world["data"])


# ------------------------------------------------------------------------------------------ unit image


def test_without_unit_the_image_path_gives_todays_ids(tmp_path, ids40):
    pool = make_pool(tmp_path / "pool.h5", ids40, seed=3)
    labeled = tmp_path / "labeled.txt"
    labeled.write_text("img_000\nimg_001\n")
    select("entropy", budget=5, labeled_path=labeled, out_path=tmp_path / "a.txt", pool_path=pool)
    select("entropy", budget=5, labeled_path=labeled, out_path=tmp_path / "b.txt", pool_path=pool, unit="image")
    # independent: mean pixel entropy of each unlabeled image, top 5, ties by id
    from alseg.files.hdf5 import PoolReader

    with PoolReader(pool) as p:
        scores = {i: float(_entropy(lg).mean()) for b, lgs, _ in p.iter_batches(64) for i, lg in zip(b, lgs)}
    want = sorted((i for i in ids40 if i not in ("img_000", "img_001")), key=lambda i: (-scores[i], i))[:5]
    assert (tmp_path / "a.txt").read_text().split() == want
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()


# ------------------------------------------------------------------------------------------ patch unit, brute force


def _brute_force(world, state: dict, size: int, budget: int, kind: str, max_per_image):
    """Every (score, id, region, cost) by loops: cell (i, j) -> pixel (4i+2, 4j+2) -> patch; the overlap rule;
    then the greedy skip-if-it-does-not-fit rule."""
    cols = -(-32 // size)
    cands = []
    for image_id in sorted(world["ids"]):
        units = state.get(image_id, {})
        if FULL in units:
            continue
        labelled = np.zeros((32, 32), bool)
        for y in range(32):
            for x in range(32):
                for unit, regions in units.items():
                    unit_kind, n = unit.split(":")
                    c = -(-32 // int(n))
                    r = (y // int(n)) * c + x // int(n) if unit_kind == "patch" else y * 32 + x
                    labelled[y, x] |= r in regions
        s = _entropy(world["logits"][image_id])
        sums, counts = {}, {}
        for i in range(8):
            for j in range(8):
                r = ((4 * i + 2) // size) * cols + (4 * j + 2) // size
                sums[r] = sums.get(r, 0.0) + s[i, j]
                counts[r] = counts.get(r, 0) + 1
        for r in sums:
            area = [(y, x) for y in range(32) for x in range(32) if (y // size) * cols + x // size == r]
            done = sum(labelled[y, x] for y, x in area)
            if 2 * done > len(area) or done == len(area):
                continue
            cands.append((-sums[r] / counts[r], image_id, r, len(area) - done))
    cands.sort()
    chosen, left, per_image = [], budget, {}
    for _, image_id, r, cost in cands:
        c = 1 if kind == "regions" else cost
        if c <= left and per_image.get(image_id, 0) < (max_per_image or 10**9):
            chosen.append((image_id, r))
            left -= c
            per_image[image_id] = per_image.get(image_id, 0) + 1
    return chosen, budget - left


STATE = {"im0": {FULL: ()}, "im1": {"patch:12": (0, 4)}, "im2": {"pixel:1": tuple(range(12, 12 + 32 * 5, 32))}}


@pytest.mark.parametrize("size,kind,budget,max_per_image", [
    (12, "regions", 7, None), (12, "regions", 9, 2), (8, "regions", 11, 3),
    (12, "pixels", 144 * 3 + 96 + 64, None), (12, "pixels", 1000, 1), (8, "pixels", 64 * 5 + 30, 2),
])
def test_patch_selection_equals_brute_force(world, tmp_path, size, kind, budget, max_per_image):
    pool = _fresh_pool(world, tmp_path)
    labelled = write_labelled(tmp_path / "labelled.jsonl", LabelledState({i: dict(u) for i, u in STATE.items()}))
    kw = {"budget": budget} if kind == "regions" else {"budget_pixels": str(budget)}
    res = select("entropy", unit=f"patch:{size}", labeled_path=labelled, out_path=tmp_path / "new.jsonl",
                 pool_path=pool, max_per_image=max_per_image, **kw)
    want, used = _brute_force(world, STATE, size, budget, kind, max_per_image)
    got = [(s["id"], r) for s in res.selected for r in s["regions"]]
    assert sorted(got) == sorted(want)
    assert res.budget_used == used <= budget
    out = read_labelled(tmp_path / "new.jsonl")
    assert sorted((i, r) for i, u in out.images.items() for r in u[f"patch:{size}"]) == sorted(want)
    assert res.pool_pixels == 8 * 32 * 32
    if kind == "pixels":
        assert res.labelled_pixels == used
    assert res.images_touched == len({i for i, _ in want})
    assert res.clicks is not None and res.clicks > 0  # the dataset has label maps
    man = json.loads((tmp_path / "new.jsonl.manifest.json").read_text())
    assert man["args"]["unit"] == f"patch:{size}" and man["result"]["labelled_pixels"] == res.labelled_pixels


def test_pixel_budget_percent_is_filled_exactly_when_possible(world, tmp_path):
    pool = _fresh_pool(world, tmp_path)
    labelled = tmp_path / "labelled.jsonl"
    write_labelled(labelled, LabelledState())
    # 2% of 8192 pool pixels = 163 (rounded down); 8 x 8 patches (64 px) and border patches of patch:12
    # (144, 96, 64 px): 163 cannot be reached by 64s alone, the greedy takes what fits and never exceeds it
    res = select("entropy", unit="patch:8", budget_pixels="2%", labeled_path=labelled,
                 out_path=tmp_path / "a.jsonl", pool_path=pool)
    assert res.budget == 163 and res.labelled_pixels == 128 and res.n_regions == 2
    res = select("margin", unit="pixel:3", budget_pixels="20", labeled_path=labelled,
                 out_path=tmp_path / "b.jsonl", pool_path=pool)
    assert res.labelled_pixels == 20 and res.n_regions == 20 and res.clicks == 20
    assert all(len(s["regions"]) <= 3 for s in res.selected)


def test_random_regions_are_seeded_and_uniform_over_regions(world, tmp_path):
    pool = _fresh_pool(world, tmp_path)
    labelled = write_labelled(tmp_path / "labelled.jsonl", LabelledState())
    runs = [select("random", unit="patch:16", budget=6, seed=s, labeled_path=labelled,
                   out_path=tmp_path / f"r{k}.jsonl", pool_path=pool).selected for k, s in enumerate((1, 1, 2))]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    # the order is a permutation of the canonical list (image id, region id), from default_rng(seed)
    canonical = [(i, r) for i in world["ids"] for r in range(4)]
    perm = np.random.default_rng(1).permutation(len(canonical))[:6]
    assert sorted((s["id"], r) for s in runs[0] for r in s["regions"]) == sorted(canonical[p] for p in perm)


def test_samplers_apply_to_region_scores(world, tmp_path):
    pool = _fresh_pool(world, tmp_path)
    labelled = write_labelled(tmp_path / "labelled.jsonl", LabelledState())
    run = lambda k, **kw: [(s["id"], r) for s in select(  # noqa: E731
        "entropy", unit="patch:8", budget=6, labeled_path=labelled, out_path=tmp_path / f"{k}.jsonl", pool_path=pool,
        **kw).selected for r in s["regions"]]
    top = run("top")
    assert run("p1", sampler="power", beta=1.0, seed=4) == run("p2", sampler="power", beta=1.0, seed=4) != top
    # softmax keys beta * s + Gumbel: a huge beta leaves the score order
    assert sorted(run("s", sampler="softmax", beta=1e9, seed=4)) == sorted(top)


# ------------------------------------------------------------------------------------------ superpixels, update


def test_superpixel_store_is_computed_once_and_reused(world, tmp_path):
    from alseg.files.regionmaps import RegionMapReader
    from alseg.regions import superpixel_map

    pool = _fresh_pool(world, tmp_path)
    labelled = write_labelled(tmp_path / "labelled.jsonl", LabelledState())
    res = select("entropy", unit="superpixel:9", budget=4, labeled_path=labelled, out_path=tmp_path / "r1.jsonl",
                 pool_path=pool, update=True)
    store = Path(res.region_maps)
    assert store == tmp_path / "pool.regions-superpixel-9.h5"
    stat, digest = store.stat().st_mtime_ns, hashlib.sha256(store.read_bytes()).hexdigest()
    res2 = select("entropy", unit="superpixel:9", budget=4, labeled_path=labelled, out_path=tmp_path / "r2.jsonl",
                  pool_path=pool, update=True)
    assert store.stat().st_mtime_ns == stat and hashlib.sha256(store.read_bytes()).hexdigest() == digest
    with RegionMapReader(store) as r:
        for i in world["ids"]:
            np.testing.assert_array_equal(r.region_map(i), superpixel_map(world["images"][i][0], 9))
        assert min(r.n_regions(i) for i in world["ids"]) > 1
    first = {(s["id"], x) for s in res.selected for x in s["regions"]}
    second = {(s["id"], x) for s in res2.selected for x in s["regions"]}
    assert len(first) == len(second) == 4 and not first & second


def test_update_never_offers_a_region_again_and_a_failed_rename_keeps_the_old_state(world, tmp_path, monkeypatch):
    pool = _fresh_pool(world, tmp_path)
    labelled = write_labelled(tmp_path / "labelled.jsonl", LabelledState({"im3": {FULL: ()}}))
    seen: set = set()
    for k in range(3):  # 7 images x 4 patches of 16 x 16 = 28 regions: 3 rounds of 8 never repeat one
        res = select("least-confidence", unit="patch:16", budget=8, labeled_path=labelled,
                     out_path=tmp_path / f"r{k}.jsonl", pool_path=pool, update=True)
        picked = {(s["id"], r) for s in res.selected for r in s["regions"]}
        assert len(picked) == 8 and not picked & seen and all(i != "im3" for i, _ in picked)
        seen |= picked
    state = read_labelled(labelled)
    assert {(i, r) for i, u in state.images.items() if FULL not in u for r in u["patch:16"]} == seen
    before = labelled.read_bytes()

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SR, "_rename", fail)
    with pytest.raises(Exception, match="cannot write"):
        select("entropy", unit="patch:16", budget=3, labeled_path=labelled, out_path=tmp_path / "crash.jsonl",
               pool_path=pool, update=True)
    assert labelled.read_bytes() == before
    assert not (tmp_path / "crash.jsonl").exists() and not (tmp_path / "crash.jsonl.manifest.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".labelled.jsonl")]
    monkeypatch.undo()
    res = select("entropy", unit="patch:16", budget=9, labeled_path=labelled, out_path=tmp_path / "last.jsonl",
                 pool_path=pool, update=True)
    assert {(s["id"], r) for s in res.selected for r in s["regions"]} == {
        (i, r) for i in world["ids"] if i != "im3" for r in range(4)} - seen  # the 4 left, nothing again
    assert res.labelled_percent_total == 100.0


def test_update_refuses_a_plain_id_list_not_named_jsonl(world, tmp_path):
    from alseg.errors import InputError

    pool = _fresh_pool(world, tmp_path)
    (tmp_path / "labeled.txt").write_text("im0\n")
    with pytest.raises(InputError, match="plain id list"):
        select("entropy", unit="patch:16", budget=2, labeled_path=tmp_path / "labeled.txt",
               out_path=tmp_path / "o.jsonl", pool_path=pool, update=True)
    assert (tmp_path / "labeled.txt").read_text() == "im0\n" and not (tmp_path / "o.jsonl").exists()
    # read only, a plain list is "these images are fully labelled"
    res = select("entropy", unit="patch:16", budget=200, labeled_path=tmp_path / "labeled.txt",
                 out_path=tmp_path / "o.jsonl", pool_path=pool)
    assert "im0" not in {s["id"] for s in res.selected} and res.n_regions == 7 * 4


# ------------------------------------------------------------------------------------------ clicks


def _square_in_background():
    gt = np.zeros((12, 12), dtype=np.int64)
    gt[2:9, 2:9] = 1  # tests/test_regions.py: each 6 x 6 patch = 2 components + 2 crossings + 1 vertex = 5
    return gt


def test_click_budget_on_hand_drawn_ground_truth(tmp_path):
    rgb = np.zeros((12, 12, 3), np.uint8)
    data = _dataset(tmp_path / "data", {"a": (rgb, _square_in_background()), "b": (rgb, np.zeros((12, 12)))})
    # logits 6 x 6: image a scores higher than b, and a's patches in order 0 > 1 > 2 > 3
    la = np.zeros((K, 6, 6), np.float32)
    lb = np.zeros((K, 6, 6), np.float32)
    lb[0] = 5.0
    for r, (y, x) in enumerate([(0, 0), (0, 3), (3, 0), (3, 3)]):
        la[0, y : y + 3, x : x + 3] = r  # larger logit: more confident, lower entropy
    pool = _pool(tmp_path / "pool.h5", {"a": la, "b": lb}, data)
    labelled = write_labelled(tmp_path / "labelled.jsonl", LabelledState())
    # a's patches cost 5 each, b's 1 each (one component, no crossing, its vertices on the patch borders):
    # 12 clicks = a0, a1 (10), a2 does not fit (15), a3 neither, then b0, b1 (12)
    res = select("entropy", unit="patch:6", budget_clicks=12, labeled_path=labelled, out_path=tmp_path / "c.jsonl",
                 pool_path=pool)
    assert [(s["id"], s["regions"]) for s in res.selected] == [("a", [0, 1]), ("b", [0, 1])]
    assert res.budget_used == res.clicks == 12
    res = select("entropy", unit="patch:6", budget_clicks=4, labeled_path=labelled, out_path=tmp_path / "d.jsonl",
                 pool_path=pool, annotation="dominant")
    assert res.n_regions == 4 and res.clicks == 4  # dominant: 1 click per region
    res = select("entropy", unit="patch:6", budget=1, labeled_path=labelled, out_path=tmp_path / "e.jsonl",
                 pool_path=pool)
    assert res.clicks == 5  # reported for any budget when the ground truth is there


def test_a_pool_without_a_config_asks_for_one(tmp_path, ids40):
    from alseg.errors import InputError

    pool = make_pool(tmp_path / "pool.h5", ids40[:4])
    (tmp_path / "labelled.jsonl").write_text("")
    with pytest.raises(InputError, match="records no config.*--dataset-config"):
        select("entropy", unit="patch:2", budget=2, labeled_path=tmp_path / "labelled.jsonl",
               out_path=tmp_path / "o.jsonl", pool_path=pool)
    assert not (tmp_path / "o.jsonl").exists()


# ------------------------------------------------------------------------------------------ hostile CLI


@pytest.mark.parametrize("args,message", [
    (["--unit", "patch:0", "--budget", "3"], "unknown query unit"),
    (["--unit", "tiles:32", "--budget", "3"], "unknown query unit"),
    (["--unit", "patch:8", "--budget", "3", "--budget-pixels", "2%"], "exactly one budget"),
    (["--unit", "patch:8", "--budget-pixels", "2%", "--budget-clicks", "9"], "exactly one budget"),
    (["--budget-pixels", "2%"], "region unit"),
    (["--unit", "patch:8", "--budget-pixels", "lots"], "--budget-pixels"),
])
def test_hostile_cli(world, tmp_path, args, message):
    pool = _fresh_pool(world, tmp_path)
    (tmp_path / "labelled.jsonl").write_text("")
    out = tmp_path / "out.jsonl"
    p = subprocess.run([sys.executable, "-m", "alseg.commands", "select", "--strategy", "entropy", "--pool", str(pool),
                        "--labeled", str(tmp_path / "labelled.jsonl"), "--out", str(out), "--quiet", *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], p.stderr
    assert not out.exists() and not Path(str(out) + ".manifest.json").exists()


# ------------------------------------------------------------------------------------------ crc risk and MC scores


def _patch_top(pixel_scores: dict[str, np.ndarray], size: int, budget: int) -> list[tuple[str, int]]:
    """Top ``budget`` patches by the mean score of the 8 x 8 logit cells whose centre (4i+2, 4j+2) lies in
    them (ties by id, then region), by loops."""
    cols = -(-32 // size)
    cands = []
    for image_id, s in pixel_scores.items():
        sums: dict[int, list[float]] = {}
        for i in range(8):
            for j in range(8):
                sums.setdefault(((4 * i + 2) // size) * cols + (4 * j + 2) // size, []).append(float(s[i, j]))
        cands += [(-sum(v) / len(v), image_id, r) for r, v in sums.items()]
    return [(i, r) for _, i, r in sorted(cands)[:budget]]


def test_crc_risk_scores_regions(world, tmp_path):
    """--strategy crc --unit patch: regions ranked by the mean CRC risk r(u) of their cells (§9.2), the risk
    computed here by the loop reference of tests/reference_crc.py."""
    from conftest import make_calibration
    from reference_crc import image_scores_loop

    pool = _fresh_pool(world, tmp_path)
    cal = make_calibration(tmp_path / "crc.json")  # 4 classes: rebuild it for the demo's 7
    doc = json.loads(cal.read_text())
    doc.update(class_names=[f"c{k}" for k in range(K)], thresholds=[0.3, 0.15, 0.0, 0.22, 0.1, 0.2, 0.05],
               query_thresholds=[0.3, 0.15, 0.001, 0.22, 0.1, 0.2, 0.05], n_images=[40] * K,
               uncalibrated=[False, False, True, False, False, False, False],
               calibrated=[True, True, False, True, True, True, True])
    cal.write_text(json.dumps(doc))
    labelled = write_labelled(tmp_path / "labelled.jsonl", LabelledState())
    res = select("crc", unit="patch:16", budget=5, labeled_path=labelled, out_path=tmp_path / "c.jsonl",
                 pool_path=pool, calibration_path=cal)
    risk = {}
    for i in world["ids"]:
        z = world["logits"][i].astype(np.float64)
        p = np.exp(z - z.max(0)) / np.exp(z - z.max(0)).sum(0)
        risk[i] = image_scores_loop(p[None], doc["query_thresholds"])[3][0]
    assert sorted((s["id"], r) for s in res.selected for r in s["regions"]) == sorted(_patch_top(risk, 16, 5))
    with pytest.raises(Exception, match="needs --calibration"):
        select("crc", unit="patch:16", budget=5, labeled_path=labelled, out_path=tmp_path / "d.jsonl", pool_path=pool)


@pytest.mark.parametrize("name", ["bald", "mc-entropy", "variation-ratio"])
def test_mc_scores_rank_regions(world, tmp_path, name):
    """MC strategies with a region unit: regions ranked by the mean of §11.7's pixel score over their cells,
    from the pool's /mc maps (H(p̄), MI, modal vote share), computed here by hand."""
    rng = np.random.default_rng(3)
    maps = {}
    for i in world["ids"]:
        h = rng.uniform(0, np.log(K), (8, 8))
        maps[i] = np.stack([h, h * rng.uniform(0, 1, (8, 8)), rng.integers(1, 11, (8, 8)) / 10]).astype(np.float32)
    ids = list(world["logits"])
    with PoolWriter(tmp_path / "pool.h5", class_names=[f"c{k}" for k in range(K)], logits_shape=(8, 8),
                    attrs=dict(config_path=CONFIG, data_root=str(world["data"]), split="train"),
                    mc={"T": 10, "scope": "head"}) as w:
        w.append(ids, np.stack([world["logits"][i] for i in ids]), mc_maps=np.stack([maps[i] for i in ids]))
    labelled = write_labelled(tmp_path / "labelled.jsonl", LabelledState())
    res = select(name, unit="patch:8", budget=6, labeled_path=labelled, out_path=tmp_path / "m.jsonl",
                 pool_path=tmp_path / "pool.h5")
    pixel = {i: {"bald": np.maximum(m[1].astype(np.float64), 0) / np.log(K), "mc-entropy": m[0] / np.log(K),
                 "variation-ratio": 1.0 - m[2].astype(np.float64)}[name] for i, m in maps.items()}
    assert sorted((s["id"], r) for s in res.selected for r in s["regions"]) == sorted(_patch_top(pixel, 8, 6))
    (tmp_path / "plain").mkdir()
    plain = _fresh_pool(world, tmp_path / "plain")
    with pytest.raises(Exception, match="holds no MC-dropout statistics"):
        select(name, unit="patch:8", budget=6, labeled_path=labelled, out_path=tmp_path / "n.jsonl", pool_path=plain)


def test_clasp_over_patches_is_the_sampler_on_hand_region_scores(world, tmp_path):
    """clasp --unit patch:8: s(r) = mean h and s_c(r) = mean h·p_c over each patch's cells (loops here), then
    alseg.samplers.clasp over (image, region) in canonical order with the round's beta."""
    from alseg.samplers import beta_schedule, clasp

    pool = _fresh_pool(world, tmp_path)
    labelled = write_labelled(tmp_path / "labelled.jsonl", LabelledState())
    res = select("clasp", unit="patch:8", budget=6, round="2/3", seed=9, labeled_path=labelled,
                 out_path=tmp_path / "c.jsonl", pool_path=pool)
    names, s_c, s = [], [], []
    for image_id in sorted(world["ids"]):
        z = world["logits"][image_id].astype(np.float64)
        p = np.exp(z - z.max(0)) / np.exp(z - z.max(0)).sum(0)
        h = _entropy(world["logits"][image_id]) / np.log(K)
        for r in range(16):
            cells = [(i, j) for i in range(8) for j in range(8) if ((4 * i + 2) // 8) * 4 + (4 * j + 2) // 8 == r]
            names.append(f"{image_id}\x00{r:09d}")
            s.append(np.mean([h[i, j] for i, j in cells]))
            s_c.append([np.mean([h[i, j] * p[c, i, j] for i, j in cells]) for c in range(K)])
    want = clasp(np.array(s_c), np.array(s), names, 6, beta=beta_schedule(2, 3), rng=np.random.default_rng(9))
    want = [(n.split("\x00")[0], int(n.split("\x00")[1])) for n in want]
    assert sorted((x["id"], r) for x in res.selected for r in x["regions"]) == sorted(want)
    assert res.details["beta"] == pytest.approx(10.0)
    with pytest.raises(Exception, match="needs --round"):
        select("clasp", unit="patch:8", budget=6, labeled_path=labelled, out_path=tmp_path / "d.jsonl", pool_path=pool)
    with pytest.raises(Exception, match="class quotas count regions"):
        select("clasp", unit="patch:8", budget_pixels="100", round="1/2", labeled_path=labelled,
               out_path=tmp_path / "e.jsonl", pool_path=pool)


# ------------------------------------------------------------------------------------------ score --unit


def test_score_unit_writes_every_region_and_select_reads_it(world, tmp_path):
    """`score --unit patch:16` stores each patch's mean cell entropy (loops here) for every image; `select
    --unit patch:16 --scores FILE` then picks exactly what it picks from the logits, labelled state included;
    a file of another unit or reduction is refused on one line."""
    from alseg.files.regionscores import RegionScoresReader
    from alseg.stages.score import score

    pool = _fresh_pool(world, tmp_path)
    res = score(pool, strategies=["entropy", "margin"], unit="patch:16", out_path=tmp_path / "rs.h5")
    assert res.n_images == 8
    with RegionScoresReader(tmp_path / "rs.h5") as r:
        assert r.unit == "patch:16" and list(r.offsets) == list(range(0, 33, 4))
        for image_id in world["ids"]:
            h = _entropy(world["logits"][image_id]) / np.log(K)  # normalised (docs/algorithms.md §2)
            want = [np.mean([h[i, j] for i in range(8) for j in range(8)
                             if ((4 * i + 2) // 16) * 2 + (4 * j + 2) // 16 == reg]) for reg in range(4)]
            # the pool keeps float16 logits: the hand values from the float32 originals agree to ~1e-5
            np.testing.assert_allclose(r.scores("entropy", image_id), want, atol=2e-4)
    labelled = write_labelled(tmp_path / "labelled.jsonl", LabelledState({i: dict(u) for i, u in STATE.items()}))
    for name in ("entropy", "margin"):
        a = select(name, unit="patch:16", budget=5, labeled_path=labelled, out_path=tmp_path / f"a_{name}.jsonl",
                   pool_path=pool)
        b = select(name, unit="patch:16", budget=5, labeled_path=labelled, out_path=tmp_path / f"b_{name}.jsonl",
                   pool_path=pool, scores_path=tmp_path / "rs.h5")
        assert a.selected == b.selected and a.labelled_pixels == b.labelled_pixels
    with pytest.raises(Exception, match="region scores of unit patch:16, this round queries patch:8"):
        select("entropy", unit="patch:8", budget=5, labeled_path=labelled, out_path=tmp_path / "c.jsonl",
               pool_path=pool, scores_path=tmp_path / "rs.h5")
    with pytest.raises(Exception, match="reduced by mean"):
        select("entropy", unit="patch:16", budget=5, labeled_path=labelled, out_path=tmp_path / "c.jsonl",
               pool_path=pool, scores_path=tmp_path / "rs.h5", region_reduction="max")
    with pytest.raises(Exception, match="holds no region scores of 'least-confidence'"):
        select("least-confidence", unit="patch:16", budget=5, labeled_path=labelled, out_path=tmp_path / "c.jsonl",
               pool_path=pool, scores_path=tmp_path / "rs.h5")
    with pytest.raises(Exception, match="pixel queries depend on what is labelled"):
        score(pool, strategies=["entropy"], unit="pixel:5", out_path=tmp_path / "px.h5")
