"""``alseg infer``: logits and embeddings of a trained model for an id list (skin over ``alseg.stages.infer``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alseg.commands._console import err, print_json, progress_bar
from alseg.commands._errors import cli_errors
from alseg.commands._options import SPLIT_HELP, CfgOptions, Config, DataRoot, Device, Json, Overwrite, Quiet


@cli_errors
def main(
    config: Config,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Model weights (WORK_DIR/checkpoint.pth from alseg train).")],
    ids: Annotated[Path, typer.Option("--ids", help="Id list of the images to run (one id per line).")],
    out: Annotated[Path, typer.Option("--out", help="Pool file to write (HDF5, alseg.pool).")],
    data_root: DataRoot = None,
    split: Annotated[str, typer.Option("--split", help=SPLIT_HELP)] = "auto",
    with_labels: Annotated[bool, typer.Option("--with-labels", help=(
        "Also store the masks on the logits' grid: each logit cell takes the label at its centre (255 = ignore)."))] = False,
    embeddings: Annotated[
        str, typer.Option("--embeddings", help="Comma-separated embeddings to store: bottleneck, penultimate, badge (default: none).")
    ] = "",
    resolution: Annotated[
        str, typer.Option("--resolution", help="native: logits at the decode head's output size; full: upsampled to the input size.")
    ] = "native",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 8,
    device: Device = "auto",
    cfg_options: CfgOptions = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted (killed) run from the batches it finished in OUT.partial/; refused if the config, checkpoint, id list or options differ.")] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Run a trained model over an id list; stream logits (float16) and embeddings to a pool file.

    Reads: CONFIG, --checkpoint, the --ids list (ids of one split of the config's dataset), images (and
    masks with --with-labels) under --data-root. Images may differ in size.
    Writes: OUT (alseg.pool HDF5) and OUT.manifest.json.

    Example: alseg infer demo_unet_tiny --checkpoint runs/r0/checkpoint.pth --ids data/demo/splits/pool.txt --out runs/r0/pool.h5 --data-root data/demo --embeddings bottleneck,badge
    """
    from alseg.files.manifest import to_jsonable
    from alseg.stages.infer import infer

    if resolution not in ("native", "full"):
        raise typer.BadParameter(f"{resolution!r} is not one of: native, full", param_hint="--resolution")
    from alseg.mm import parse_cfg_options

    if split not in ("auto", "train", "val", "test"):
        raise typer.BadParameter(f"{split!r} is not one of: auto, train, val, test", param_hint="--split")
    options = parse_cfg_options(cfg_options or [])
    names = [e.strip() for e in embeddings.split(",") if e.strip()]
    with progress_bar("infer", quiet=quiet) as progress:
        result = infer(
            config, checkpoint_path=checkpoint, ids_path=ids, out_path=out, data_root=data_root, device=device,
            batch_size=batch_size, with_labels=with_labels, embeddings=names, resolution=resolution,
            overwrite=overwrite, resume=resume, split=split, cfg_options=options, progress=progress,
        )
    from rich.table import Table

    table = Table(title=f"infer: {result.n_images} images, {result.seconds:.1f} s")
    table.add_column("dataset")
    table.add_column("shape", justify="right")
    table.add_row("logits", " x ".join(str(s) for s in result.logits_shape))
    for name, dim in result.embeddings.items():
        table.add_row(f"embeddings/{name}", f"{result.n_images} x {dim}")
    err.print(table)
    err.print(f"wrote {result.out_path}", markup=False, highlight=False)
    if json:
        print_json(to_jsonable(result))
