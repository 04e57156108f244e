"""`alseg run`: shared round 0, resume after a crash, invalidation by changed inputs. Real tiny training."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from alseg.commands import app
from alseg.files.idlist import read_ids, write_ids

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["random", "margin", "crc"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from alseg.demo_data import make_demo_data

    d = tmp_path_factory.mktemp("rundata")
    make_demo_data(d / "data", n_images=60, size=32, seed=3, n_val=8, n_calib=12)
    return d


def write_experiment(where: Path, data: Path, **extra) -> Path:
    body = {
        "name": "t", "config": str(ROOT / "configs" / "demo_unet_tiny.py"), "data_root": str(data / "data"),
        "pool_ids": str(data / "data" / "splits" / "pool.txt"), "val_ids": str(data / "data" / "splits" / "val.txt"),
        "calib_ids": str(data / "data" / "splits" / "calib.txt"), "sizes": [6, 10, 14], "seeds": [0],
        "device": "cpu", "max_iters": 3, "batch_size": 4, "strategies": STRATEGIES, **extra,
    }
    lines = [f"{k} = {json.dumps(v)}" for k, v in body.items()]
    lines += ["[params.crc]", "alpha = 0.2", "save_risk_maps = 2"]
    path = where / "exp.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def tree_files(exp: Path) -> dict[str, object]:
    """What an experiment produced: id lists, metrics, logits and scores (timestamps and logs excluded)."""
    out: dict[str, object] = {}
    for p in sorted(exp.rglob("*")):
        rel = str(p.relative_to(exp))
        if p.name in ("selected.txt", "labeled.txt"):
            out[rel] = read_ids(p)
        elif p.name == "metrics.json":
            out[rel] = json.loads(p.read_text())["final"]
        elif p.suffix == ".h5":
            with h5py.File(p) as fh:
                out[rel] = {"ids": [x.decode() for x in fh["ids"][...]]}
                if "logits" in fh:
                    out[rel]["logits"] = fh["logits"][...].tobytes()
                if "scores" in fh:
                    out[rel].update({f"s/{k}": fh["scores"][k][...].tobytes() for k in fh["scores"]})
        elif p.name == "crc.json":
            out[rel] = json.loads(p.read_text())["thresholds"]
    return out


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    from alseg.stages.run import run

    d = tmp_path_factory.mktemp("exp_a")
    events = []
    result = run(write_experiment(d, data), exp_dir=d / "exp", on_event=events.append)
    return d / "exp", result, events


def test_shared_round0_and_layout(uninterrupted):
    exp, result, _ = uninterrupted
    seed = exp / "seed-0"
    assert (seed / "round-00" / "train" / "checkpoint.pth").is_file()
    assert len(read_ids(seed / "round-00" / "labeled.txt")) == 6
    ckpt_digest = json.loads((seed / "round-00" / "train" / "checkpoint.pth.step.json").read_text())
    round0_ckpt = "$EXP/seed-0/round-00/train/checkpoint.pth"
    digests = set()
    for strategy in STRATEGIES:
        r1 = seed / strategy / "round-01"
        assert read_ids(r1 / "labeled.txt")[:6] == read_ids(seed / "round-00" / "labeled.txt")
        assert len(read_ids(r1 / "labeled.txt")) == 10 and len(read_ids(seed / strategy / "round-02" / "labeled.txt")) == 14
        if strategy == "random":
            assert not list((seed / strategy).rglob("*.h5")), "random must never run inference"
            continue
        key = json.loads((r1 / "pool.h5.step.json").read_text())["key"]
        digests.add(key["inputs"][round0_ckpt])
    assert len(digests) == 1 and None not in digests  # every strategy's round 1 used the same round-0 model
    assert ckpt_digest["key"]["stage"] == "train"
    assert (seed / "crc" / "round-01" / "crc.json").is_file()
    rows = {(r["strategy"], r["round"]) for r in result.rows}
    assert rows == {(None, 0)} | {(s, r) for s in STRATEGIES for r in (1, 2)}
    assert all(0.0 <= r["miou"] <= 100.0 for r in result.rows)


def test_resume_after_crash_reproduces_uninterrupted_run(uninterrupted, data, tmp_path, monkeypatch):
    import alseg.stages.select as select_stage
    from alseg.stages.run import run

    exp_a, _, _ = uninterrupted
    exp_file = write_experiment(tmp_path, data)
    real_select = select_stage.select
    calls = {"n": 0}

    def crashing_select(strategy, **kwargs):
        if strategy == "crc" and "round-02" in str(kwargs["out_path"]):
            raise KeyboardInterrupt  # Ctrl-C in the middle of round 2 of crc
        calls["n"] += 1
        return real_select(strategy, **kwargs)

    monkeypatch.setattr(select_stage, "select", crashing_select)
    with pytest.raises(KeyboardInterrupt):
        run(exp_file, exp_dir=tmp_path / "exp")
    assert (tmp_path / "exp" / "seed-0" / "crc" / "round-02" / "scores.h5").is_file()
    assert not (tmp_path / "exp" / "seed-0" / "crc" / "round-02" / "selected.txt").exists()
    monkeypatch.setattr(select_stage, "select", real_select)

    events = []
    result = run(exp_file, exp_dir=tmp_path / "exp", on_event=events.append)
    ran = [(e.strategy, e.round, e.stage) for e in events if e.kind == "start"]
    assert ran == [("crc", 2, "select"), ("crc", 2, "train")]
    assert result.steps_reused > 0
    # reused steps count as done: the overall count still runs 1..N, with N the same 26 steps
    steps = [e.step for e in events if e.kind in ("start", "skip")]
    assert steps == list(range(1, 27)) and result.steps_run + result.steps_reused == result.steps_planned == 26
    assert tree_files(tmp_path / "exp") == tree_files(exp_a)


def test_planned_steps_equal_the_steps_a_real_run_emits(uninterrupted):
    """N by hand for 1 seed, sizes [6, 10, 14] (2 rounds): round 0 select + train = 2; per round random
    select + train = 2, margin infer + score + select + train = 4, crc infer (pool) + infer (calib) +
    calibrate + score + select + train = 6 -> 2 + 2 * (2 + 4 + 6) = 26."""
    _, result, events = uninterrupted
    (plan,) = [e for e in events if e.kind == "plan"]
    assert events[0] is plan and plan.total == len(plan.plan) == 26 == result.steps_planned
    emitted = [e for e in events if e.kind in ("start", "skip")]
    assert len(emitted) == result.steps_run == 26 and result.steps_reused == 0
    assert [(e.seed, e.strategy, e.round, e.stage) for e in emitted] == plan.plan
    assert [e.step for e in emitted] == list(range(1, 27)) and {e.n_steps for e in emitted} == {26}
    done = [e for e in events if e.kind == "done"]
    assert [e.step for e in done] == list(range(1, 27))


def test_training_progress_carries_the_loss(uninterrupted):
    _, _, events = uninterrupted
    trains = {e.step for e in events if e.kind == "start" and e.stage == "train"}
    assert len(trains) == 7  # round 0 and 3 strategies x 2 rounds
    for step in trains:
        losses = [e.info["loss"] for e in events if e.kind == "progress" and e.step == step and "loss" in e.info]
        assert len(losses) == 3  # max_iters = 3: one loss per iteration
        assert all(np.isfinite(v) and v > 0 for v in losses)  # cross-entropy of an untrained model


def test_changed_input_invalidates_dependents(uninterrupted, data, tmp_path):
    import shutil

    from alseg.stages.run import run

    exp = tmp_path / "exp"
    shutil.copytree(uninterrupted[0], exp)
    exp_file = write_experiment(tmp_path, data)
    # the user edits round 1 of margin by hand: the rest of that strategy's chain must be redone
    sel = exp / "seed-0" / "margin" / "round-01" / "selected.txt"
    ids = read_ids(sel)
    pool = read_ids(data / "data" / "splits" / "pool.txt")
    labeled = set(read_ids(exp / "seed-0" / "round-00" / "labeled.txt")) | set(ids)
    ids[-1] = next(i for i in pool if i not in labeled)
    write_ids(sel, ids)
    events = []
    run(exp_file, exp_dir=exp, on_event=events.append)
    ran = [(e.strategy, e.round, e.stage) for e in events if e.kind == "start"]
    assert ran == [("margin", 1, "train"), ("margin", 2, "infer"), ("margin", 2, "score"), ("margin", 2, "select"),
                   ("margin", 2, "train")]
    assert read_ids(exp / "seed-0" / "margin" / "round-01" / "labeled.txt")[-1] == ids[-1]


def test_run_cli_and_bad_experiment(data, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nstrategies = ["margin"]\n')
    r = CliRunner().invoke(app, ["run", str(bad), "--quiet"])
    assert r.exit_code == 1 and r.stderr.strip() == (
        f"error: {bad}: missing key(s) config, initial, budget, rounds (see docs/experiment.md)")
    exp_file = write_experiment(tmp_path, data, strategies=["nope"])
    r = CliRunner().invoke(app, ["run", str(exp_file), "--quiet"])
    assert r.exit_code == 1 and "unknown strategy 'nope'" in r.stderr


def test_experiment_ids_from_the_config_split_and_carved_calibration(data, tmp_path):
    """No pool_ids: the config's train split; calib_size: carved from it once, disjoint, the same every time."""
    from alseg.experiment import load_experiment
    from alseg.files.idlist import read_ids
    from alseg.stages.run import _resolve_ids

    exp_file = tmp_path / "e.toml"
    exp_file.write_text(
        f'config = "demo_unet_tiny"\ndata_root = "{data / "data"}"\ninitial = 4\nbudget = 2\nrounds = 1\n'
        'strategies = ["crc"]\ncalib_size = 5\n[cfg_options]\n"model.decode_head.channels" = 16\n'
        '"train_dataloader.dataset.pipeline.2.prob" = "0.25"\n')
    exp = load_experiment(exp_file)
    assert exp.config.name == "demo_unet_tiny.py" and exp.pool_ids is None
    assert exp.cfg_options == {"model.decode_head.channels": 16, "train_dataloader.dataset.pipeline.2.prob": 0.25}
    train_split = read_ids(data / "data" / "splits" / "pool.txt")  # the demo config's train ann_file
    _resolve_ids(exp, tmp_path / "x")
    pool, calib = read_ids(exp.pool_ids), read_ids(exp.calib_ids)
    assert len(calib) == 5 and not set(pool) & set(calib) and sorted(pool + calib) == sorted(train_split)
    assert [i for i in train_split if i in set(calib)] == calib  # split order kept
    exp2 = load_experiment(exp_file)
    _resolve_ids(exp2, tmp_path / "y")
    assert read_ids(exp2.calib_ids) == calib
    assert "calib_ids" in exp.to_toml() and "[cfg_options]" in exp.to_toml()


def test_variants_oracle_and_clasp_run_as_their_base_strategy(data, tmp_path):
    """A variant (entropy-power) runs entropy's stages with its own params in its own folder; clasp gets
    --round t/T from the loop; the oracle's pool carries the labels its counts need."""
    from alseg.files.hdf5 import PoolReader
    from alseg.stages.run import plan_steps, run
    from alseg.experiment import load_experiment

    path = write_experiment(tmp_path, data, strategies=["entropy-power", "clasp", "random-stratified-oracle"])
    path.write_text(path.read_text() + '[params.entropy-power]\nstrategy = "entropy"\nsampler = "power"\nbeta = 2.0\n'
                    '[params.random-stratified-oracle]\nstrategy = "random-stratified"\noracle = true\n')
    events = []
    result = run(path, exp_dir=tmp_path / "exp", on_event=events.append)
    exp = tmp_path / "exp" / "seed-0"
    planned = plan_steps(load_experiment(path))
    assert result.steps_run == len(planned)
    for rnd, total in ((1, 2), (2, 2)):
        sel = json.loads((exp / "clasp" / f"round-{rnd:02d}" / "selected.txt.manifest.json").read_text())
        assert sel["args"]["strategy"] == "clasp" and sel["args"]["round"] == f"{rnd}/{total}"
        assert sel["result"]["details"]["round"] == f"{rnd}/{total}"
        ep = json.loads((exp / "entropy-power" / f"round-{rnd:02d}" / "selected.txt.manifest.json").read_text())
        assert ep["args"]["strategy"] == "entropy" and ep["args"]["sampler"] == "power" and ep["args"]["beta"] == 2.0
        orc = json.loads((exp / "random-stratified-oracle" / f"round-{rnd:02d}" / "selected.txt.manifest.json")
                         .read_text())
        assert orc["args"]["oracle"] is True and orc["result"]["oracle"] is True
        with PoolReader(exp / "random-stratified-oracle" / f"round-{rnd:02d}" / "pool.h5") as pool:
            assert pool.has_labels
        with PoolReader(exp / "clasp" / f"round-{rnd:02d}" / "pool.h5") as pool:
            assert not pool.has_labels
    assert {r["strategy"] for r in result.rows} == {None, "entropy-power", "clasp", "random-stratified-oracle"}
