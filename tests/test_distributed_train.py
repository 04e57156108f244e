"""Distributed training: `alseg train` under torchrun (2 CPU processes, gloo) and `alseg run` with nproc = 2.

Rank 0 alone writes the checkpoint pair, metrics.json and manifest.json (the single-process format) and
prints the result; mmengine's InfiniteSampler gives each rank a disjoint half of the labeled ids per epoch
(read from the ALSEG_RECORD_SAMPLES debug record of alseg.dataset.AlsegSubset).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alseg.commands import app
from alseg.errors import AlsegError, DeviceError, InputError, UnknownName
from alseg.experiment import Experiment, load_experiment
from alseg.files.idlist import read_ids, write_ids
from alseg.stages.train import Launch, detect_launch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo_unet_tiny.py")
WORLD, MAX_ITERS, BATCH = 2, 4, 2


def torchrun(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}, **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(WORLD), "-m", "alseg.commands", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from alseg.demo_data import make_demo_data

    root = tmp_path_factory.mktemp("ddp")
    demo = make_demo_data(root / "data", n_images=20, size=32, seed=4, n_val=4, n_calib=2)
    labeled = root / "labeled.txt"
    write_ids(labeled, read_ids(demo.splits["pool"])[:8])  # 8 ids: 4 per rank per epoch
    return root, demo.out_dir, labeled


@pytest.fixture(scope="module")
def ddp(data):
    root, data_dir, labeled = data
    record = root / "samples"
    proc = torchrun(["train", CONFIG, "--labeled", str(labeled), "--out", str(root / "w"), "--data-root",
                     str(data_dir), "--val-ids", str(data_dir / "splits" / "val.txt"), "--device", "cpu",
                     "--max-iters", str(MAX_ITERS), "--batch-size", str(BATCH), "--quiet", "--json"],
                    cwd=root, env={"ALSEG_RECORD_SAMPLES": str(record)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc, record


@pytest.mark.slow
def test_rank0_writes_one_set_of_outputs(ddp):
    root, proc, _ = ddp
    work_dir = root / "w"
    result = json.loads(proc.stdout)  # one JSON object: rank 1 prints nothing
    assert result["iterations"] == MAX_ITERS and result["n_labeled"] == 8
    assert proc.stderr.count("mIoU (final)") == 1  # the table once, from rank 0
    files = sorted(p.name for p in work_dir.iterdir() if p.is_file())
    assert files == ["checkpoint.json", "checkpoint.pth", "demo_unet_tiny.py", "manifest.json", "metrics.json"]
    manifest = json.loads((work_dir / "manifest.json").read_text())
    assert manifest["result"] == result
    assert manifest["args"]["launcher"] == "pytorch" and manifest["args"]["world_size"] == WORLD
    metrics = json.loads((work_dir / "metrics.json").read_text())
    assert metrics["format"] == "alseg.metrics" and metrics["iterations"] == MAX_ITERS
    side = json.loads((work_dir / "checkpoint.json").read_text())
    assert side["iteration"] == MAX_ITERS and not any(k.startswith("module.") for k in _weights(work_dir))


def _weights(work_dir: Path) -> list[str]:
    from alseg.files.checkpoint import read_checkpoint

    return list(read_checkpoint(work_dir / "checkpoint.pth").state_dict)


@pytest.mark.slow
def test_distributed_checkpoint_loads_in_infer(ddp, data):
    root, _, _ = ddp
    _, data_dir, _ = data
    r = CliRunner().invoke(app, ["infer", CONFIG, "--checkpoint", str(root / "w" / "checkpoint.pth"), "--ids",
                                 str(data_dir / "splits" / "val.txt"), "--out", str(root / "val.h5"), "--data-root",
                                 str(data_dir), "--device", "cpu", "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_images"] == 4


@pytest.mark.slow
def test_ranks_load_disjoint_halves_per_epoch(ddp, data):
    _, _, record = ddp
    labeled = set(read_ids(data[2]))
    per_rank = []
    for rank in range(WORLD):
        lines = Path(f"{record}.{rank}").read_text().split("\n")
        rows = [line.split() for line in lines if line]
        assert all(r[0] == str(rank) for r in rows)
        per_rank.append([r[2] for r in rows if r[1] == "train"])
    per_epoch = len(labeled) // WORLD
    assert [len(ids) for ids in per_rank] == [MAX_ITERS * BATCH] * WORLD  # 2 epochs of 4 per rank
    for e in range(MAX_ITERS * BATCH // per_epoch):
        shards = [set(ids[e * per_epoch:(e + 1) * per_epoch]) for ids in per_rank]
        assert all(len(s) == per_epoch for s in shards)  # no id twice within a rank's epoch
        assert not shards[0] & shards[1]
        assert shards[0] | shards[1] == labeled


@pytest.mark.slow
def test_failure_under_torchrun_leaves_no_work_dir(data, tmp_path):
    _, data_dir, _ = data
    bad = tmp_path / "bad.txt"
    write_ids(bad, ["not_an_id"])
    proc = torchrun(["train", CONFIG, "--labeled", str(bad), "--out", str(tmp_path / "new" / "w"),
                     "--data-root", str(data_dir), "--device", "cpu", "--max-iters", "1", "--quiet"], cwd=tmp_path)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "error: " in proc.stderr and "'not_an_id' is not in the config's train split" in proc.stderr
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------------- launch


def test_detect_launch_from_the_environment():
    assert detect_launch("auto", {}) == Launch()
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert detect_launch("auto", env) == Launch("pytorch", 1, 4, 1)
    assert detect_launch("none", env) == Launch()
    assert not detect_launch("auto", env).is_main
    slurm = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"}
    assert detect_launch("slurm", slurm) == Launch("slurm", 0, 2, 0)
    with pytest.raises(InputError, match="--launcher pytorch: RANK, WORLD_SIZE, LOCAL_RANK not set; start alseg "
                                         "train under torchrun, or pass --launcher none"):
        detect_launch("pytorch", {})
    with pytest.raises(InputError, match="rank 4 is not in a world of 4 processes"):
        detect_launch("auto", {**env, "RANK": "4"})
    with pytest.raises(UnknownName, match="unknown launcher 'mpi'; choose one of: auto, none, pytorch, slurm"):
        detect_launch("mpi", {})


def test_cli_launcher_option(tmp_path):
    r = CliRunner().invoke(app, ["train", CONFIG, "--labeled", str(tmp_path / "l.txt"), "--out",
                                 str(tmp_path / "w"), "--launcher", "mpi"])
    assert r.exit_code == 2 and "'mpi' is not one of 'auto', 'none', 'pytorch', 'slurm'" in " ".join(
        line.strip("│ ") for line in r.output.splitlines())  # rich boxes the usage error
    r = CliRunner().invoke(app, ["train", CONFIG, "--labeled", str(tmp_path / "l.txt"), "--out",
                                 str(tmp_path / "w"), "--launcher", "pytorch"], env={"RANK": None})
    assert r.exit_code == 1 and "start alseg train under torchrun" in r.output
    assert not (tmp_path / "w").exists()


def test_distributed_config_on_cpu():
    from mmengine.config import Config

    from alseg.stages.train import _rank_device, _setup_distributed

    import torch

    launch = Launch("slurm", 0, 2, 0)  # slurm: the process group is mmengine's to start, not this test's
    cfg = Config(dict(env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="nccl", timeout=60))))
    _setup_distributed(cfg, launch, torch.device("cpu"))
    assert cfg.launcher == "slurm" and cfg.env_cfg.dist_cfg == dict(backend="gloo", timeout=60)
    assert cfg.model_wrapper_cfg.device_ids is None and cfg.model_wrapper_cfg.type == "MMDistributedDataParallel"
    if not torch.cuda.is_available():
        assert _rank_device("cpu", Launch("pytorch", 1, 2, 1)) == torch.device("cpu")
        with pytest.raises(DeviceError, match="--launcher slurm needs CUDA"):
            _rank_device("cpu", launch)


# ------------------------------------------------------------------------------------- alseg run, nproc


BASE = 'config = "demo_unet_tiny"\nstrategies = ["random"]\nsizes = [4, 6]\n'


def test_experiment_nproc_and_launcher(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text(BASE + 'nproc = 2\nlauncher = "torchrun"\n')
    exp = load_experiment(path)
    assert (exp.nproc, exp.launcher) == (2, "torchrun")
    assert "nproc = 2" in exp.to_toml() and 'launcher = "torchrun"' in exp.to_toml()
    path.write_text(BASE)
    exp = load_experiment(path)
    assert (exp.nproc, exp.launcher) == (1, None) and "nproc =" not in exp.to_toml()  # nproc = 1: as before
    for body, message in [("nproc = 0\n", "nproc must be a positive integer (training processes per node), got 0"),
                          ("nproc = true\n", "nproc must be a positive integer (training processes per node), got True"),
                          ('launcher = "mpi"\n', "launcher must be one of: torchrun, got 'mpi'")]:
        path.write_text(BASE + body)
        with pytest.raises(InputError) as info:
            load_experiment(path)
        assert str(info.value) == f"{path}: {message}"


def _experiment(tmp_path: Path, **kw) -> Experiment:
    return Experiment(path=tmp_path / "e.toml", name="e", config=Path(CONFIG), data_root=tmp_path / "data",
                      pool_ids=None, val_ids=tmp_path / "val.txt", calib_ids=None, sizes=[4, 6], seeds=[0],
                      strategies=["random"], **kw)


def test_torchrun_command_line(tmp_path):
    from alseg.mm import parse_cfg_options
    from alseg.stages.run import torchrun_train_command

    options = {"a.b": 1, "c": [1, 2.5], "d": "x", "e": (3, 4), "f": True}
    exp = _experiment(tmp_path, nproc=3, batch_size=2, cfg_options=options)
    cmd = torchrun_train_command(exp, labeled=tmp_path / "l.txt", work_dir=tmp_path / "w", seed=5, max_iters=7,
                                 device="cpu")
    assert cmd[:9] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
                       "-m", "alseg.commands", "train"]
    text = " ".join(cmd[9:])
    for part in (f"--labeled {tmp_path / 'l.txt'}", f"--out {tmp_path / 'w'}", "--seed 5", "--max-iters 7",
                 "--batch-size 2", "--launcher pytorch", f"--val-ids {tmp_path / 'val.txt'}", "--device cpu",
                 "--overwrite --quiet --json"):
        assert part in text
    items = [cmd[k + 1] for k, a in enumerate(cmd) if a == "--cfg-options"]
    assert parse_cfg_options(items) == options  # what alseg train parses back
    for bad in ({"model.init_cfg": {"type": "Pretrained"}}, {"a": "two words"}, {"a": "x,y"}):
        with pytest.raises(InputError, match="cannot be passed to the torchrun training"):
            torchrun_train_command(_experiment(tmp_path, nproc=2, cfg_options=bad), labeled=tmp_path / "l.txt",
                                   work_dir=tmp_path / "w", seed=0, max_iters=None, device="cpu")


def test_run_dispatches_training_by_nproc(tmp_path, monkeypatch):
    """nproc = 1 trains in process with the old step record; nproc = 2 runs the torchrun command line."""
    import alseg.stages.run as run_mod
    import alseg.stages.train as train_mod

    calls = []

    def fake_outputs(work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "checkpoint.pth").write_bytes(b"x")
        (work_dir / "metrics.json").write_text(json.dumps({"final": {"mIoU": 1.0}}))

    monkeypatch.setattr(train_mod, "train", lambda *a, work_dir, **kw: (calls.append("in-process"), fake_outputs(work_dir)))
    monkeypatch.setattr(run_mod, "run_train_command",
                        lambda command, *, work_dir, progress, total: (calls.append(command), fake_outputs(work_dir)))
    labeled = tmp_path / "l.txt"
    write_ids(labeled, ["a", "b"])
    for nproc in (1, 2):
        exp = _experiment(tmp_path, nproc=nproc)
        runner = run_mod._Runner(exp, tmp_path / "exp", "cpu", lambda event: None)
        runner.train((0, None, 0), labeled, tmp_path / f"w{nproc}")
    assert calls[0] == "in-process" and calls[1][5] == "2"
    one = json.loads((tmp_path / "w1" / "checkpoint.pth.step.json").read_text())["key"]["args"]
    two = json.loads((tmp_path / "w2" / "checkpoint.pth.step.json").read_text())["key"]["args"]
    assert "nproc" not in one and two["nproc"] == 2 and {k: v for k, v in two.items() if k != "nproc"} == one


def test_failed_torchrun_training_is_one_line(tmp_path):
    from alseg.stages.run import run_train_command

    command = [sys.executable, "-c", "import sys; print('error: no such thing', file=sys.stderr); sys.exit(1)"]
    with pytest.raises(AlsegError) as info:
        run_train_command(command, work_dir=tmp_path, progress=lambda *a, **k: None, total=None)
    assert str(info.value).endswith(": no such thing") and "training failed (exit 1" in str(info.value)


@pytest.mark.slow
def test_run_with_nproc_2(data, tmp_path):
    """A real experiment whose two trainings run on 2 processes each; reused when run again."""
    from alseg.stages.run import run

    _, data_dir, _ = data
    exp_path = tmp_path / "e.toml"
    exp_path.write_text(
        f'name = "t"\nconfig = "{CONFIG}"\ndata_root = "{data_dir}"\npool_ids = "{data_dir / "splits" / "pool.txt"}"\n'
        f'val_ids = "{data_dir / "splits" / "val.txt"}"\nsizes = [4, 6]\nstrategies = ["random"]\ndevice = "cpu"\n'
        'max_iters = 2\nbatch_size = 2\nnproc = 2\n[cfg_options]\n"model.decode_head.dropout_ratio" = 0.0\n')
    result = run(exp_path, exp_dir=tmp_path / "exp")
    assert [(r["round"], r["n_labeled"]) for r in result.rows] == [(0, 4), (1, 6)]
    for d in (tmp_path / "exp" / "seed-0" / "round-00" / "train", tmp_path / "exp" / "seed-0" / "random" / "round-01" / "train"):
        manifest = json.loads((d / "manifest.json").read_text())
        assert manifest["args"]["world_size"] == 2 and manifest["args"]["cfg_options"] == {"model.decode_head.dropout_ratio": 0.0}
        assert (d / "checkpoint.json").is_file()
    again = run(exp_path, exp_dir=tmp_path / "exp")
    assert again.steps_run == 0 and again.rows == result.rows
