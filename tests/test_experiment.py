"""Experiment TOML: typed keys (one line per wrong value) and the per-round iteration rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from alseg.errors import InputError
from alseg.experiment import load_experiment

BASE = 'config = "demo_unet_tiny"\nstrategies = ["random"]\n'


def write(tmp_path: Path, body: str, name: str = "e.toml") -> Path:
    path = tmp_path / name
    path.write_text(BASE + body, encoding="utf-8")
    return path


def test_iterations_grow_with_the_labeled_set(tmp_path):
    exp = load_experiment(write(tmp_path, "initial = 16\nbudget = 16\nrounds = 3\nmax_iters = 300\niters_per_image = 8\n"))
    # hand-worked: max(300, ceil(8 n))
    assert [exp.iterations(n) for n in (16, 32, 37, 38, 48, 64, 280)] == [300, 300, 300, 304, 384, 512, 2240]
    assert "iters_per_image = 8" in exp.to_toml()
    fixed = load_experiment(write(tmp_path, "initial = 4\nbudget = 2\nrounds = 1\nmax_iters = 7\n", "f.toml"))
    assert [fixed.iterations(n) for n in (1, 1000)] == [7, 7]
    default = load_experiment(write(tmp_path, "initial = 4\nbudget = 2\nrounds = 1\n", "d.toml"))
    assert default.iterations(50) is None  # the config's own train_cfg.max_iters


@pytest.mark.parametrize("body, message", [
    ('initial = 4\nbudget = "four"\nrounds = 1\n', "budget must be a positive integer (images selected per round), got 'four'"),
    ("initial = 4\nbudget = 0\nrounds = 1\n", "budget must be a positive integer (images selected per round), got 0"),
    ("initial = 4\nbudget = true\nrounds = 1\n", "budget must be a positive integer (images selected per round), got True"),
    ("initial = 4.5\nbudget = 2\nrounds = 1\n", "initial must be a positive integer (images labeled in round 0), got 4.5"),
    ('sizes = [4, "8"]\n', "sizes must be a list of labeled-set sizes, e.g. [16, 32, 48], got [4, '8']"),
    ('sizes = [4, 8]\nseeds = 3\n', "seeds must be a list of integer seeds, e.g. [0, 1, 2], got 3"),
    ('sizes = [4, 8]\nmax_iters = "300"\n', "max_iters must be a positive integer, got '300'"),
    ("sizes = [4, 8]\niters_per_image = 8\n", "iters_per_image needs max_iters (the fewest iterations of any round)"),
    ("sizes = [4, 8]\nmax_iters = 5\niters_per_image = -1\n", "iters_per_image must be a positive number, got -1"),
    ('sizes = [4, 8]\nfull_supervision = "yes"\n', "full_supervision must be true or false, got 'yes'"),
    ("sizes = [4, 8]\nbatch_size = 0\n", "batch_size must be a positive integer, got 0"),
    ("sizes = [4, 8]\ndevice = 0\n", "device must be a string, got 0"),
    ("sizes = [4, 8]\nparams = 3\n", "params must hold tables, e.g. [params.crc] then alpha = 0.1"),
])
def test_wrong_types_are_one_line(tmp_path, body, message):
    path = write(tmp_path, body)
    with pytest.raises(InputError) as info:
        load_experiment(path)
    assert str(info.value) == f"{path}: {message}"


def test_unreadable_experiment_files(tmp_path):
    latin = tmp_path / "latin.toml"
    latin.write_bytes(BASE.encode() + b'name = "caf\xe9"\nsizes = [4, 8]\n')
    with pytest.raises(InputError, match=r"latin.toml: not UTF-8 text \(byte \d+\)"):
        load_experiment(latin)
    with pytest.raises(InputError, match="is a directory, expected an experiment TOML file"):
        load_experiment(tmp_path)
    strategies = tmp_path / "s.toml"
    strategies.write_text('config = "demo_unet_tiny"\nstrategies = "margin"\nsizes = [4, 8]\n')
    with pytest.raises(InputError, match="strategies must be a list of names"):
        load_experiment(strategies)
