"""`alseg run` with query units (issue 14 §1, §4, §6): region rounds, equal pixel budgets across units,
cost.json per round, one superpixel store per experiment, resume. Every number is checked against a count
made here from the labelled-state files, the image sizes and the ground truth (clicks through alseg.cost)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alseg.errors import InputError
from alseg.experiment import load_experiment
from alseg.files.idlist import read_ids
from alseg.files.labelled import FULL, read_labelled

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32  # demo images are SIZE x SIZE
PATCH = 8
BUDGET = 3 * SIZE * SIZE  # "7.5%" of the 40-image pool: three whole images, 48 patches of 8 x 8
STRATEGIES = ["random", "entropy-patch", "random-superpixel"]
UNITS = {"random": "image", "entropy-patch": f"patch:{PATCH}", "random-superpixel": "superpixel:64"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from alseg.demo_data import make_demo_data

    d = tmp_path_factory.mktemp("regiondata")
    make_demo_data(d / "data", n_images=60, size=SIZE, seed=5, n_val=8, n_calib=12)
    return d / "data"


def write_experiment(where: Path, data: Path, **extra) -> Path:
    body = {
        "name": "r", "config": str(ROOT / "configs" / "demo_unet_tiny.py"), "data_root": str(data),
        "pool_ids": str(data / "splits" / "pool.txt"), "val_ids": str(data / "splits" / "val.txt"),
        "initial": 4, "rounds": 2, "budget_pixels": "7.5%", "seeds": [0], "device": "cpu", "max_iters": 2,
        "batch_size": 4, "strategies": STRATEGIES, **extra,
    }
    lines = [f"{k} = {json.dumps(v)}" for k, v in body.items() if v is not None]
    lines += ['[params.entropy-patch]', 'strategy = "entropy"', f'unit = "patch:{PATCH}"',
              '[params.random-superpixel]', 'strategy = "random"', 'unit = "superpixel:64"']
    path = where / "regions.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def gt(data: Path, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(data / "ann_dir" / f"{image_id}.png")).astype(np.int64)


def region_map(unit: str, image_id: str, store) -> np.ndarray:
    """Patch ids by hand (row-major tiles); superpixel ids from the experiment's store."""
    if unit.startswith("patch:"):
        s = int(unit.split(":")[1])
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        return (y // s) * (-(-SIZE // s)) + x // s
    return store.region_map(image_id)


def masks(state, store) -> dict[str, np.ndarray]:
    """Image id -> labelled pixels, from a labelled state alone."""
    out = {}
    for image_id, units in state.images.items():
        m = np.zeros((SIZE, SIZE), bool)
        for unit, regions in units.items():
            if unit == FULL:
                m[:] = True
            else:
                m |= np.isin(region_map(unit, image_id, store), list(regions))
        out[image_id] = m
    return out


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    from alseg.stages.run import run

    d = tmp_path_factory.mktemp("regionexp")
    exp_file = write_experiment(d, data)
    events, store_mtimes = [], []
    store = d / "exp" / "regions" / "superpixel-64.h5"

    def on_event(event):
        events.append(event)
        if event.kind in ("done", "skip") and store.is_file():
            store_mtimes.append(store.stat().st_mtime_ns)

    result = run(exp_file, exp_dir=d / "exp", on_event=on_event)
    return dict(exp=d / "exp", file=exp_file, result=result, events=events, store=store, mtimes=store_mtimes)


def test_planned_steps_equal_the_emitted_ones(finished):
    """By hand: 1 regions step (one superpixel unit) + round 0 (select, train) + 3 strategies x 2 rounds x
    (infer, select, train) = 21."""
    from alseg.stages.run import plan_steps

    events, result = finished["events"], finished["result"]
    (plan,) = [e for e in events if e.kind == "plan"]
    emitted = [(e.seed, e.strategy, e.round, e.stage) for e in events if e.kind in ("start", "skip")]
    assert emitted == plan.plan == plan_steps(load_experiment(finished["file"]))
    assert len(emitted) == 21 == result.steps_run and emitted[0] == (0, None, 0, "regions")
    assert [s for s in emitted if s[1] == "random"] == [(0, "random", r, st) for r in (1, 2)
                                                        for st in ("infer", "select", "train")]


def test_states_grow_by_the_selection_and_equal_pixels_per_round(finished, data):
    from alseg.files.regionmaps import RegionMapReader
    from alseg.partial import read_labels

    seed = finished["exp"] / "seed-0"
    new_pixels = {}
    with RegionMapReader(finished["store"]) as store:
        for strategy in STRATEGIES:
            prev_path = seed / "round-00" / "labeled.txt"
            for rnd in (1, 2):
                d = seed / strategy / f"round-{rnd:02d}"
                prev, _ = read_labels(prev_path)
                sel = read_labelled(d / "selected.jsonl")
                now = read_labelled(d / "labeled.jsonl")
                # exactly the previous state plus the selected regions, none of them labelled before
                assert set(now.images) == set(prev.images) | set(sel.images)
                for image_id, units in sel.images.items():
                    assert set(units) == {UNITS[strategy]}
                    assert not prev.is_full(image_id)
                    for unit, regions in units.items():
                        old = set(prev.images.get(image_id, {}).get(unit, ()))
                        assert not old & set(regions)
                        if unit != FULL:
                            assert set(now.images[image_id][unit]) == old | set(regions)
                for image_id, units in prev.images.items():
                    if image_id not in sel.images:
                        assert now.images[image_id] == units
                before = sum(int(m.sum()) for m in masks(prev, store).values())
                after = sum(int(m.sum()) for m in masks(now, store).values())
                new_pixels[strategy, rnd] = after - before
                prev_path = d / "labeled.jsonl"
    for rnd in (1, 2):
        # whole images and 8 x 8 patches fill the budget exactly; superpixels up to it, never beyond
        assert new_pixels["random", rnd] == new_pixels["entropy-patch", rnd] == BUDGET
        assert 0.8 * BUDGET < new_pixels["random-superpixel", rnd] <= BUDGET


def test_cost_json_equals_an_independent_count(finished, data):
    from alseg.cost import image_clicks, region_clicks
    from alseg.files.regionmaps import RegionMapReader
    from alseg.partial import read_labels

    seed = finished["exp"] / "seed-0"
    pool = read_ids(data / "splits" / "pool.txt")
    pool_pixels = len(pool) * SIZE * SIZE
    initial = read_ids(seed / "round-00" / "labeled.txt")
    clicks0 = sum(image_clicks(gt(data, i)) for i in initial)

    def check(path: Path, images: int, pixels: int, clicks: int, unit: str) -> None:
        doc = json.loads(path.read_text())
        assert doc == {"format": "alseg.cost", "format_version": 1, "round": doc["round"], "images_touched": images,
                       "labelled_pixels": pixels, "pool_pixels": pool_pixels,
                       "labelled_percent": pytest.approx(100.0 * pixels / pool_pixels), "clicks": clicks,
                       "unit": unit, "annotation": "precise"}

    check(seed / "round-00" / "cost.json", 4, 4 * SIZE * SIZE, clicks0, "image")
    with RegionMapReader(finished["store"]) as store:
        for strategy in STRATEGIES:
            prev_path, clicks = seed / "round-00" / "labeled.txt", clicks0
            for rnd in (1, 2):
                d = seed / strategy / f"round-{rnd:02d}"
                prev, _ = read_labels(prev_path)
                old = masks(prev, store)
                for image_id, units in read_labelled(d / "selected.jsonl").images.items():
                    for unit, regions in units.items():
                        if unit == FULL:
                            clicks += image_clicks(gt(data, image_id))
                        else:
                            rm = region_map(unit, image_id, store)
                            per = region_clicks(gt(data, image_id), rm, "precise", labelled_mask=old.get(image_id),
                                                n_regions=int(rm.max()) + 1)
                            clicks += int(per[list(regions)].sum())
                now = read_labelled(d / "labeled.jsonl")
                pixels = sum(int(m.sum()) for m in masks(now, store).values())
                check(d / "cost.json", len(now.images), pixels, clicks, UNITS[strategy])
                prev_path = d / "labeled.jsonl"


def test_superpixels_computed_once_into_the_experiment_store(finished):
    exp, store = finished["exp"], finished["store"]
    assert store.is_file() and len(set(finished["mtimes"])) == 1  # written by the regions step, never again
    assert not list(exp.rglob("pool.regions-*.h5")) and not list(exp.rglob("train.regions-*.h5"))
    for rnd in (1, 2):
        d = exp / "seed-0" / "random-superpixel" / f"round-{rnd:02d}"
        sel = json.loads((d / "selected.jsonl.manifest.json").read_text())
        assert sel["result"]["region_maps"] == str(store) and sel["args"]["unit"] == "superpixel:64"
        train = json.loads((d / "train" / "manifest.json").read_text())
        assert train["args"]["region_maps"] == [str(store)] and train["args"]["annotation"] == "precise"


def test_resume_after_a_completed_run_reruns_nothing(finished):
    from alseg.stages.run import run

    exp = finished["exp"]
    costs = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in exp.rglob("cost.json")}
    states = {p: p.stat().st_mtime_ns for p in exp.rglob("labeled.jsonl")}
    events = []
    result = run(finished["file"], exp_dir=exp, on_event=events.append)
    assert result.steps_run == 0 and result.steps_reused == 21
    assert not [e for e in events if e.kind == "start"]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in exp.rglob("cost.json")} == costs
    assert {p: p.stat().st_mtime_ns for p in exp.rglob("labeled.jsonl")} == states
    assert len(costs) == 1 + 3 * 2


# ------------------------------------------------------------------------------------------ the TOML keys


BASE = 'config = "demo_unet_tiny"\n'


@pytest.mark.parametrize("body, message", [
    ('strategies = ["random"]\ninitial = 4\nrounds = 1\nbudget_pixels = "lots"\n', "budget_pixels must be a percentage"),
    ('strategies = ["random"]\ninitial = 4\nrounds = 1\nbudget_pixels = "0%"\n', "budget_pixels must be a percentage"),
    ('strategies = ["random"]\ninitial = 4\nrounds = 1\nbudget = 3\nbudget_pixels = 100\n', "give one budget per round"),
    ('strategies = ["random"]\ninitial = 4\nrounds = 1\nbudget_pixels = 100\nbudget_clicks = 9\n', "give one budget per round"),
    ('strategies = ["coreset"]\ninitial = 4\nrounds = 1\nbudget_pixels = "5%"\n', "use entropy, margin"),
    ('strategies = ["margin"]\nsizes = [4, 8]\nunit = "tiles:4"\n', "unit: unknown query unit 'tiles:4'"),
    ('strategies = ["margin"]\nsizes = [4, 8]\nannotation = "rough"\n', "annotation must be one of: precise, dominant"),
    ('strategies = ["margin"]\nsizes = [4, 8]\nunit = "patch:8"\nmax_per_image = 0\n', "max_per_image must be a positive"),
    ('strategies = ["margin"]\nsizes = [4, 8]\nregion_reduction = "median"\n', "region_reduction must be one of"),
    ('strategies = ["margin"]\nsizes = [4, 8]\n[params.margin]\nmax_per_image = 2\n', "only for region rounds"),
    ('strategies = ["margin"]\nsizes = [4, 8]\nunit = "patch:8"\n[params.margin]\nstochastic = true\n',
     "not a parameter of a region round"),
    ('strategies = ["clasp"]\ninitial = 4\nrounds = 1\nbudget_pixels = "5%"\nunit = "patch:8"\n',
     "clasp over regions takes unit patch:S or superpixel:N"),
    ('strategies = ["coreset"]\nsizes = [4, 8]\n[params.coreset]\nunit = "superpixel:50"\n',
     "strategy 'coreset' (unit superpixel:50)"),
])
def test_region_keys_are_checked(tmp_path, body, message):
    path = tmp_path / "e.toml"
    path.write_text(BASE + body)
    with pytest.raises(InputError) as info:
        load_experiment(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_region_keys_resolve_per_strategy_and_round_trip(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text(BASE + 'strategies = ["random", "entropy-sp", "margin"]\ninitial = 4\nrounds = 3\n'
                    'budget_pixels = " 5% "\nannotation = "dominant"\nmax_per_image = 3\n'
                    '[params.entropy-sp]\nstrategy = "entropy"\nunit = "superpixel:50"\nregion_reduction = "max"\n'
                    '[params.margin]\nunit = "patch:16"\nannotation = "precise"\n')
    exp = load_experiment(path)
    assert exp.rounds == 3 and exp.sizes == [4] and exp.budget_pixels == "5%"
    assert [exp.unit_of(s) for s in exp.strategies] == ["image", "superpixel:50", "patch:16"]
    assert [exp.annotation_of(s) for s in exp.strategies] == ["dominant", "dominant", "precise"]
    assert all(exp.is_region(s) for s in exp.strategies) and exp.superpixel_units() == ["superpixel:50"]
    again = tmp_path / "again.toml"
    again.write_text(exp.to_toml())
    back = load_experiment(again)
    for key in ("sizes", "strategies", "params", "unit", "annotation", "budget_pixels", "max_per_image", "n_rounds"):
        assert getattr(back, key) == getattr(exp, key), key
    plain = tmp_path / "plain.toml"
    plain.write_text(BASE + 'strategies = ["margin"]\ninitial = 4\nbudget = 2\nrounds = 2\n')
    exp = load_experiment(plain)
    assert not exp.is_region("margin") and exp.rounds == 2 and "unit" not in exp.to_toml()


# ------------------------------------------------------------------------------------------ the image rule


def test_whole_images_under_a_pixel_budget_in_rank_order_skip_what_does_not_fit(tmp_path):
    """select --unit image --budget-pixels: images by mean pixel entropy; one that does not fit is skipped."""
    from alseg.files.hdf5 import PoolWriter
    from alseg.stages.select import select

    root = tmp_path / "data"
    for sub in ("img_dir", "ann_dir", "splits"):
        (root / sub).mkdir(parents=True)
    shapes = {"a": (32, 32), "b": (32, 32), "c": (16, 32), "d": (24, 24)}  # 1024, 1024, 512, 576 pixels
    rng = np.random.default_rng(0)
    for i, (h, w) in shapes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "img_dir" / f"{i}.png")
        Image.fromarray(rng.integers(0, 7, (h, w)).astype(np.uint8)).save(root / "ann_dir" / f"{i}.png")
    for name in ("pool", "val", "calib", "all"):
        (root / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in shapes))
    scale = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 8.0}  # flat logits: highest entropy first
    base = rng.normal(0, 1, (7, 8, 8)).astype(np.float32)
    pool = tmp_path / "pool.h5"
    with PoolWriter(pool, class_names=[f"c{k}" for k in range(7)], logits_shape=(8, 8),
                    attrs=dict(config_path=str(ROOT / "configs" / "demo_unet_tiny.py"), data_root=str(root),
                               split="train")) as w:
        w.append(list(shapes), np.stack([base * scale[i] for i in shapes]))
    labeled = tmp_path / "labeled.txt"
    labeled.write_text("")
    res = select("entropy", unit="image", budget_pixels=1600, labeled_path=labeled, out_path=tmp_path / "s.jsonl",
                 pool_path=pool)
    # a (1024) fits, b (1024) does not fit in the 576 left and is skipped, c (512) fits, d (576) does not
    assert [s["id"] for s in res.selected] == ["a", "c"] and res.labelled_pixels == 1536 <= 1600
    state = read_labelled(tmp_path / "s.jsonl")
    assert state.full_ids == ["a", "c"]
    from alseg.cost import image_clicks

    want = sum(image_clicks(np.asarray(Image.open(root / "ann_dir" / f"{i}.png")).astype(np.int64)) for i in "ac")
    assert res.clicks == want


def test_crc_and_clasp_region_rounds_get_their_calibration_and_round(data, tmp_path):
    """crc over patches: infer the calibration split, calibrate, then select with crc.json; clasp over
    patches (its quotas count regions: a budget of 48 regions = 48 patches of 64 pixels): --round t/T from
    the loop. The plan counts both by hand: 2 + (5 + 3) = 10 steps."""
    from alseg.stages.run import plan_steps, run

    path = write_experiment(tmp_path, data, initial=None, rounds=None, budget_pixels=None, sizes=[4, 52],
                            strategies=["crc-patch", "clasp-patch"], calib_ids=str(data / "splits" / "calib.txt"))
    path.write_text(path.read_text() + '[params.crc-patch]\nstrategy = "crc"\nunit = "patch:8"\nalpha = 0.2\n'
                    '[params.clasp-patch]\nstrategy = "clasp"\nunit = "patch:8"\n')
    events = []
    result = run(path, exp_dir=tmp_path / "exp", on_event=events.append)
    emitted = [(e.seed, e.strategy, e.round, e.stage) for e in events if e.kind == "start"]
    assert emitted == plan_steps(load_experiment(path)) and result.steps_run == 10
    assert [s[3] for s in emitted if s[1] == "crc-patch"] == ["infer", "infer", "calibrate", "select", "train"]
    d = tmp_path / "exp" / "seed-0"
    crc = json.loads((d / "crc-patch" / "round-01" / "selected.jsonl.manifest.json").read_text())
    assert crc["args"]["strategy"] == "crc" and crc["args"]["unit"] == "patch:8"
    assert json.loads((d / "crc-patch" / "round-01" / "crc.json").read_text())["alpha"] == 0.2
    assert read_ids(d / "crc-patch" / "round-01" / "labeled_ids.txt") == read_ids(d / "round-00" / "labeled.txt")
    clasp = json.loads((d / "clasp-patch" / "round-01" / "selected.jsonl.step.json").read_text())["key"]["args"]
    assert clasp["strategy"] == "clasp" and clasp["round"] == "1/1"
    for s in ("crc-patch", "clasp-patch"):
        cost = json.loads((d / s / "round-01" / "cost.json").read_text())
        assert cost["labelled_pixels"] - 4 * SIZE * SIZE == BUDGET and cost["unit"] == "patch:8"
