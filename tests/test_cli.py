"""The CLI through the real entry point: help that teaches, one-line errors, layering."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from alseg.commands import app
from alseg.files.idlist import read_ids, write_ids
from alseg.registry import STRATEGIES
from conftest import make_pool

runner = CliRunner()
STAGES = ["demo-data", "train", "infer", "score", "calibrate", "select", "run", "report"]


def test_help_lists_every_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in STAGES + ["device"]:
        assert stage in result.output


@pytest.mark.parametrize("stage", STAGES + ["device check"])
def test_every_command_has_help_with_an_example(stage):
    result = runner.invoke(app, [*stage.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output or "example" in result.output


def test_select_help_lists_every_strategy():
    out = runner.invoke(app, ["select", "--help"], terminal_width=400).output
    flat = "".join(c for c in out if not c.isspace() and c != "│")  # the choices column may wrap
    for name in STRATEGIES:
        assert name in flat


def test_installed_entry_point():
    exe = subprocess.run([sys.executable, "-m", "pip", "show", "-f", "alseg"], capture_output=True, text=True)
    assert "alseg" in exe.stdout
    import shutil

    alseg = shutil.which("alseg") or str(__import__("pathlib").Path(sys.executable).parent / "alseg")
    done = subprocess.run([alseg, "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "select" in done.stdout


def test_library_never_imports_the_cli():
    code = (
        "import sys, pkgutil, importlib, alseg\n"
        "for m in pkgutil.walk_packages(alseg.__path__, 'alseg.'):\n"
        "    if not m.name.startswith('alseg.commands'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = [m for m in ('typer', 'alseg.commands') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_select_round_through_cli(tmp_path, ids40):
    make_pool(tmp_path / "pool.h5", ids40)
    write_ids(tmp_path / "lab.txt", ids40[:5])
    r = runner.invoke(app, ["score", str(tmp_path / "pool.h5"), "--strategy", "margin", "--out",
                            str(tmp_path / "s.h5"), "--quiet"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["select", "--strategy", "margin", "--budget", "4", "--labeled", str(tmp_path / "lab.txt"),
                            "--scores", str(tmp_path / "s.h5"), "--out", str(tmp_path / "sel.txt"), "--update",
                            "--quiet"])
    assert r.exit_code == 0, r.output
    sel = read_ids(tmp_path / "sel.txt")
    assert len(sel) == 4 and read_ids(tmp_path / "lab.txt") == ids40[:5] + sel
    # random needs no HDF5 at all
    write_ids(tmp_path / "all.txt", ids40)
    r = runner.invoke(app, ["select", "--strategy", "random", "--budget", "3", "--labeled", str(tmp_path / "lab.txt"),
                            "--pool-ids", str(tmp_path / "all.txt"), "--out", str(tmp_path / "r.txt"), "--seed", "4"])
    assert r.exit_code == 0 and len(read_ids(tmp_path / "r.txt")) == 3


def test_budget_larger_than_pool_warns(tmp_path, ids40):
    write_ids(tmp_path / "all.txt", ids40[:6])
    write_ids(tmp_path / "lab.txt", ids40[:2])
    r = runner.invoke(app, ["select", "--strategy", "random", "--budget", "10", "--labeled", str(tmp_path / "lab.txt"),
                            "--pool-ids", str(tmp_path / "all.txt"), "--out", str(tmp_path / "r.txt")])
    assert r.exit_code == 0
    assert "warning: budget 10 exceeds the 4 unlabeled id(s)" in r.stderr
    assert sorted(read_ids(tmp_path / "r.txt")) == ids40[2:6]


@pytest.mark.parametrize("args,message", [
    (["--strategy", "margin"], "error: strategy 'margin' needs candidates: pass --pool pool.h5 or --scores scores.h5"),
    (["--strategy", "coreset", "--pool", "{d}/pool.h5"], "error: {d}/pool.h5: no embedding 'bottleneck' (has: none)"),
    (["--strategy", "margin", "--scores", "{d}/missing.h5"], "error: {d}/missing.h5: file not found"),
    (["--strategy", "crc", "--pool", "{d}/pool.h5"], "error: strategy 'crc' needs --scores scores.h5 from"),
])
def test_bad_input_is_one_line_exit_1(tmp_path, ids40, args, message):
    from alseg.files.hdf5 import PoolWriter
    import numpy as np

    with PoolWriter(tmp_path / "pool.h5", class_names=["a", "b"], logits_shape=(2, 2)) as w:
        w.append(ids40[:3], np.zeros((3, 2, 2, 2)))
    write_ids(tmp_path / "lab.txt", [])
    args = [a.replace("{d}", str(tmp_path)) for a in args]
    r = runner.invoke(app, ["select", *args, "--budget", "2", "--labeled", str(tmp_path / "lab.txt"),
                            "--out", str(tmp_path / "o.txt"), "--quiet"])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.replace("{d}", str(tmp_path))), r.stderr
    assert "Traceback" not in r.output
    assert not (tmp_path / "o.txt").exists()


def test_existing_output_needs_overwrite(tmp_path, ids40):
    write_ids(tmp_path / "all.txt", ids40)
    write_ids(tmp_path / "lab.txt", [])
    (tmp_path / "o.txt").write_text("keep\n")
    base = ["select", "--strategy", "random", "--budget", "2", "--labeled", str(tmp_path / "lab.txt"),
            "--pool-ids", str(tmp_path / "all.txt"), "--out", str(tmp_path / "o.txt")]
    r = runner.invoke(app, base)
    assert r.exit_code == 1 and "output exists; pass --overwrite" in r.stderr
    assert (tmp_path / "o.txt").read_text() == "keep\n"
    assert runner.invoke(app, base + ["--overwrite"]).exit_code == 0
