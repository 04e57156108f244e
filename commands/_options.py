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
