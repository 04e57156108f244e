"""One vocabulary across stages: walk every command's parameters and help."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from alseg.commands import app

GROUP = typer.main.get_group(app)


def commands() -> dict[str, object]:
    out = {}
    for name, cmd in GROUP.commands.items():
        if hasattr(cmd, "commands"):  # a sub-group (device)
            out.update({f"{name} {sub}": c for sub, c in cmd.commands.items()})
        else:
            out[name] = cmd
    return out


ALL = commands()
WRITES = {"demo-data", "ids", "train", "infer", "merge", "score", "calibrate", "select", "export", "run", "report"}
COMPUTES = {"train", "infer", "score", "calibrate", "select", "run", "device check"}
READS_DATASET = {"ids", "train", "infer", "export", "import"}
RETIRED = {"--work-dir", "--exp-dir", "--selected", "--config"}  # renamed: --out, --out, --ids, CONFIG argument


def flags(cmd) -> set[str]:
    return {o for p in cmd.params for o in p.opts if o.startswith("--")}


def test_every_stage_is_covered():
    assert set(ALL) >= WRITES | COMPUTES | READS_DATASET


@pytest.mark.parametrize("name", sorted(ALL))
def test_shared_option_names(name):
    f = flags(ALL[name])
    assert "--json" in f, f"{name}: no --json"
    assert not f & RETIRED, f"{name}: retired option {f & RETIRED}"
    if name in WRITES:
        assert {"--out", "--overwrite"} <= f or name == "run", f"{name}: outputs are --out with --overwrite"
    if name in COMPUTES:
        assert "--device" in f, f"{name}: computes but takes no --device"
    if name in READS_DATASET:
        assert "--data-root" in f and "--cfg-options" in f, f"{name}: dataset options"
    lists = [p for p in ALL[name].params if getattr(p, "multiple", False) and "--cfg-options" not in p.opts]
    assert not lists, f"{name}: repeated-flag lists {[p.opts for p in lists]}; alseg uses comma lists"


@pytest.mark.parametrize("name", sorted(ALL))
def test_help_renders_its_example(name):
    r = CliRunner().invoke(app, [*name.split(), "--help"], terminal_width=240)
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert f"Example: alseg {name}" in text
    doc = ALL[name].help or ""
    for token in ("*.png", "OUT/", "{"):
        if token in doc:
            assert token in text, f"{name}: help lost {token!r}"
