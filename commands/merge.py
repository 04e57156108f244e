"""``alseg merge``: the shard files of a sharded ``infer`` into one file (skin over ``alseg.stages.merge``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alseg.commands._console import err, out, print_json, progress_bar
from alseg.commands._errors import cli_errors
from alseg.commands._options import Json, Overwrite, Quiet


@cli_errors
def main(
    shards: Annotated[list[Path], typer.Argument(
        help="Shard files of one run (pool.shard-0-of-N.h5 ... pool.shard-N-1-of-N.h5), in any order.",
        show_default=False)],
    out_path: Annotated[Path, typer.Option("--out", help="Merged file to write (rows in shard order).")],
    pool: Annotated[Optional[Path], typer.Option(
        "--pool", help="For scores shards: the merged pool file, recorded in the merged scores file.")] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Merge the shards of one sharded `alseg infer` (--shard i/n or torchrun) into one pool or scores file.

    Copies the rows in shard order, which is the id list's order: the merged pool file holds the same
    datasets as a one-process infer. Shards of different runs (checkpoint, config, classes, options)
    are refused.

    Reads: SHARDS (all pool files or all scores files). Writes: --out and OUT.manifest.json.

    Example: alseg merge runs/r0/pool.shard-0-of-2.h5 runs/r0/pool.shard-1-of-2.h5 --out runs/r0/pool.h5
    """
    from alseg.files.manifest import to_jsonable
    from alseg.stages.merge import merge

    with progress_bar("merge", quiet=quiet) as bar:
        result = merge(shards, out_path=out_path, pool_path=pool, overwrite=overwrite, progress=bar)
    if json:
        print_json(to_jsonable(result))
    else:
        err.print(f"merged {len(result.shards)} {result.kind} shards, {result.n_images} images "
                  f"({result.seconds:.1f} s)", markup=False, highlight=False)
        out.print(result.out_path, markup=False)
