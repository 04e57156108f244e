"""Shared option definitions: one definition per option, reused by every command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alseg.device import DEVICE_HELP

Device = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
Seed = Annotated[int, typer.Option("--seed", help="Seed for every random choice; the same seed gives the same output.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist (default: refuse).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars (for cluster logs).")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")]
OutPath = Annotated[Path, typer.Option("--out", help="Output file.")]
Labeled = Annotated[Path, typer.Option("--labeled", help="Labeled id list (one id per line).")]
OptionalPath = Optional[Path]
Config = Annotated[
    str,
    typer.Argument(help="mmseg config: a file, or the name of a shipped config (`alseg configs` lists them), e.g. demo_unet_tiny."),
]
CfgOptions = Annotated[
    Optional[list[str]],
    typer.Option(
        "--cfg-options",
        help="Config overrides in mmseg's syntax, KEY=VALUE with dotted keys (a=1 b.c=[1,2] d=(3,4)); "
        "several pairs may follow one flag, as in mmseg's tools.",
    ),
]
DataRoot = Annotated[Optional[Path], typer.Option("--data-root", help="Dataset folder (default: the config's data_root).")]
SPLIT_HELP = "Split of the config whose dataset holds the ids: train, val, test, or auto (the first that holds them all)."
