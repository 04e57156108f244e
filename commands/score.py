"""``alseg score``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from alseg.commands._console import err, out, print_json, progress_bar
from alseg.commands._errors import cli_errors
from alseg.commands._options import Json, Overwrite, Quiet
from alseg.files.manifest import to_jsonable
from alseg.registry import AGGREGATIONS, SCORED


@cli_errors
def main(
    pool: Annotated[Path, typer.Argument(help="Pool file written by `alseg infer`.", show_default=False)],
    strategy: Annotated[str, typer.Option(
        "--strategy", "-s", help=f"Strategies to score, comma-separated (e.g. margin,crc). Of: {', '.join(SCORED)}.")],
    out_path: Annotated[Path, typer.Option("--out", help="Scores file to write (HDF5).")],
    calibration: Annotated[Optional[Path], typer.Option(
        help="Calibration JSON from `alseg calibrate` (needed by crc).")] = None,
    aggregation: Annotated[Literal[AGGREGATIONS], typer.Option(
        help="Pixel-to-image reduction for entropy/margin/least-confidence.")] = "mean",
    q: Annotated[float, typer.Option(help="Percent of highest pixel scores averaged by --aggregation top-q.")] = 10.0,
    save_risk_maps: Annotated[int, typer.Option(
        help="Keep the CRC risk maps of the N most uncertain images (for `alseg report`).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images read from the pool file at a time.")] = 16,
    device: Annotated[str, typer.Option(help=(
        "Where scores are computed: cpu (default, NumPy) or auto, cuda, cuda:N, mps (torch, one process; "
        "BADGE pooling and saved risk maps stay on the CPU)."))] = "cpu",
    workers: Annotated[Optional[int], typer.Option(min=1, help=(
        "CPU scoring processes, each reading and scoring its own share of the pool (default: 1 below "
        "512 MiB of stored logits or under 4 CPUs, else the CPU count up to 8)."), show_default=False)] = None,
    unit: Annotated[str, typer.Option(metavar="UNIT", help=(
        "image (default: one score per image) or patch:S / superpixel:N: the score of every region of every "
        "image, into a region-scores file that `select --unit UNIT --scores FILE` reads instead of the logits."))
    ] = "image",
    region_reduction: Annotated[str, typer.Option(metavar="HOW", help=(
        "Region units: how a region's score reduces its pixel scores: mean, sum, max or top-q (with --q)."))
    ] = "mean",
    region_store: Annotated[Optional[Path], typer.Option(metavar="PATH", help=(
        "superpixel:N: the region-map store to read and extend (default: beside POOL); give select the same."))
    ] = None,
    dataset_config: Annotated[Optional[str], typer.Option(metavar="CONFIG", help=(
        "Region units: the mmseg config whose dataset holds the original images (default: the one POOL records)."))
    ] = None,
    data_root: Annotated[Optional[Path], typer.Option(help=(
        "Region units: dataset folder (default: the one POOL records)."))] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Score every image of a pool file for one or more strategies.

    Streams the pool file one batch at a time (memory does not grow with the pool) and writes the image
    scores and strategy embeddings (contextual-diversity matrices, BADGE logit-gradient embedding, CRC-AL
    uncertainty u(x) and co-occurrence embedding v(x)).

    Reads: POOL (and --calibration for crc). Writes: --out scores file and OUT.manifest.json.

    Example: alseg score pool.h5 --strategy margin,entropy --out scores.h5
    """
    from alseg.stages.score import score

    with progress_bar("score", quiet=quiet) as bar:
        result = score(pool, strategies=[n.strip() for n in strategy.split(",") if n.strip()], out_path=out_path, calibration_path=calibration,
                       aggregation=aggregation, q=q, save_risk_maps=save_risk_maps, batch_size=batch_size,
                       device=device, workers=workers, overwrite=overwrite, progress=bar, unit=unit,
                       region_reduction=region_reduction, region_store=region_store, dataset_config=dataset_config,
                       data_root=data_root)
    if json:
        print_json(to_jsonable(result))
    else:
        err.print(f"scored {result.n_images} images: {', '.join(result.datasets)} ({result.seconds:.1f} s)")
        out.print(result.out_path)
