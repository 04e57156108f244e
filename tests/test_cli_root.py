"""The root command: --version, shell completion, one-line usage errors (through the real entry point)."""

from __future__ import annotations

import subprocess
import sys

from alseg import __version__


def alseg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alseg.commands", *args], capture_output=True, text=True, timeout=120)


def test_version():
    r = alseg("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"alseg {__version__} (Python ")


def test_completion_script_names_the_program():
    r = alseg("--show-completion", "bash")
    assert r.returncode == 0 and "_alseg_completion" in r.stdout and "complete " in r.stdout


def test_usage_errors_are_one_line_with_exit_code_2():
    r = alseg("score", "--strategy", "margin", "--out", "x.h5", "p.h5", "--batch-size", "many")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: alseg score: Invalid value for '--batch-size'") and "alseg score --help" in r.stderr
    r = alseg("nope")
    assert r.returncode == 2 and r.stderr == "error: alseg: No such command 'nope'. (see `alseg --help`)\n"


def test_an_option_given_twice_is_refused_not_overridden():
    r = alseg("score", "p.h5", "-s", "margin", "--strategy", "crc", "--out", "x.h5")
    assert r.returncode == 2 and r.stderr == (
        "error: --strategy given more than once; alseg takes one value, or a comma list (--strategy a,b)\n")
    from alseg.commands import repeated_option

    assert repeated_option(["train", "c", "--cfg-options", "a=1", "--cfg-options", "b=2", "--seed=-1"]) is None
    assert repeated_option(["select", "--budget=3", "--budget", "4"]) == "--budget"


def test_the_cli_starts_without_importing_torch():
    """Every command module is imported at start; torch (seconds) must wait for a command that computes."""
    r = subprocess.run([sys.executable, "-c", "import sys, alseg.commands; print('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
