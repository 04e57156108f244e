"""The Python API mirrors the CLI: the same option names (dashes as underscores) on every stage."""

from __future__ import annotations

import inspect

import pytest
import typer

from alseg import api
from alseg.commands import app

CLI_ONLY = {"quiet", "json", "help"}  # presentation flags; the API returns the result object instead
API_ONLY = {"progress", "on_event"}  # hooks for what the CLI shows as bars


def cli_params(name: str) -> set[str]:
    group = typer.main.get_group(app)
    command = group.commands[name]
    out = set()
    for p in command.params:
        flag = next((o for o in p.opts if o.startswith("--")), None)
        out.add(flag[2:].replace("-", "_") if flag else p.name)
    return out - CLI_ONLY


@pytest.mark.parametrize("name", api.__all__)
def test_api_takes_the_cli_options(name):
    api_params = set(inspect.signature(getattr(api, name)).parameters) - API_ONLY
    assert api_params == cli_params(name)


@pytest.mark.slow
def test_the_documented_round_runs(tmp_path, monkeypatch):
    """docs/python-api.md's script, as written, in a fresh folder."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "python-api.md").read_text(encoding="utf-8")
    script = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(script, "docs/python-api.md", "exec"), {"__name__": "__doc_example__"})
    assert (tmp_path / "r2" / "selected.txt").is_file()
