"""``alseg infer``: logits and embeddings of a trained model for an id list (skin over ``alseg.stages.infer``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from alseg.dataset import SPLITS
from alseg.registry import MC_SCOPES
from alseg.stages.infer import RESOLUTIONS

from alseg.commands._console import err, print_json, progress_bar, warn
from alseg.commands._console import out as stdout
from alseg.commands._errors import cli_errors
from alseg.commands._options import SPLIT_HELP, CfgOptions, Config, DataRoot, Device, Json, Overwrite, Quiet


@cli_errors
def main(
    config: Config,
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Model weights (OUT/checkpoint.pth from alseg train).")],
    ids: Annotated[Path, typer.Option("--ids", help="Id list of the images to run (one id per line).")],
    out: Annotated[Path, typer.Option("--out", help="Pool file to write (HDF5, alseg.pool).")],
    data_root: DataRoot = None,
    split: Annotated[Literal[("auto", *SPLITS)], typer.Option("--split", help=SPLIT_HELP)] = "auto",
    with_labels: Annotated[bool, typer.Option("--with-labels", help=(
        "Also store the masks on the logits' grid: each logit cell takes the label at its centre (255 = ignore)."))] = False,
    embeddings: Annotated[
        str, typer.Option("--embeddings", help="Comma-separated embeddings to store: bottleneck, penultimate, badge (default: none).")
    ] = "",
    resolution: Annotated[
        Literal[RESOLUTIONS], typer.Option("--resolution", help="native: logits at the decode head's output size; full: upsampled to the input size.")
    ] = "native",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 8,
    device: Device = "auto",
    cfg_options: CfgOptions = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help=(
        "i/n: infer only the i-th of n contiguous blocks of the id list (whole batches) into OUT's "
        "<stem>.shard-i-of-n.h5 (cluster job arrays); join them with `alseg merge`. Under torchrun each "
        "rank takes its shard by itself and rank 0 merges (default: the whole list)."))] = None,
    logits: Annotated[str, typer.Option("--logits", help=(
        "What OUT keeps of the model output: native (the logits, float16), topk:K (the K largest "
        "probabilities, float16, and their classes per pixel) or none (ids, sizes, labels and embeddings "
        "only; `alseg score` needs native)."))] = "native",
    scores: Annotated[str, typer.Option("--scores", help=(
        "Comma-separated scores computed on the device while the logits are in memory (the fused path), "
        "written to --scores-out as `alseg score` would: entropy, margin, least-confidence, "
        "contextual-diversity, badge, crc:CALIBRATION.json (default: none)."))] = "",
    scores_out: Annotated[Optional[Path], typer.Option("--scores-out", help="Scores file for --scores (HDF5, alseg.scores).")] = None,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="Calibration JSON for --scores crc (same as crc:PATH).")] = None,
    aggregation: Annotated[str, typer.Option("--aggregation", help="Pixel-to-image reduction of --scores entropy/margin/least-confidence: mean, sum or top-q.")] = "mean",
    q: Annotated[float, typer.Option("--q", help="Percent of highest pixel scores averaged by --aggregation top-q.")] = 10.0,
    mc: Annotated[int, typer.Option("--mc", min=0, help=(
        "MC dropout: T stochastic passes per batch with dropout active in --mc-scope; OUT also gets /mc, per "
        "pixel H(p-bar), mutual information and the modal vote share (memory independent of T), for the "
        "strategies bald, mc-entropy and variation-ratio. The logits stay the deterministic ones (default 0: none)."))] = 0,
    mc_scope: Annotated[Literal[MC_SCOPES], typer.Option("--mc-scope", help=(
        "Where --mc samples dropout: head (backbone once, the decode head's own dropout T times) or full "
        "(every dropout layer, the whole model T times). Normalisation layers stay in eval mode."))] = "head",
    mc_seed: Annotated[int, typer.Option("--mc-seed", help="Seed of the --mc dropout masks (per batch: seed and the batch's first row).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted (killed) run from the batches it finished in OUT.partial/; refused if the config, checkpoint, id list or options differ. A shard finished with the same inputs is kept.")] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Run a trained model over an id list; stream logits (float16) and embeddings to a pool file.

    Reads: CONFIG, --checkpoint, the --ids list (ids of one split of the config's dataset), images (and
    masks with --with-labels) under --data-root. Images may differ in size.
    Writes: OUT (alseg.pool HDF5) and OUT.manifest.json (with --shard i/n: OUT's <stem>.shard-i-of-n.h5;
    with --scores: also --scores-out and its manifest).

    Sharded: `torchrun --nproc-per-node 8 -m alseg.commands infer ... --out pool.h5` runs one shard per
    GPU and merges them into pool.h5 (docs/scale.md).

    Example: alseg infer demo_unet_tiny --checkpoint runs/r0/checkpoint.pth --ids data/demo/splits/pool.txt --out runs/r0/pool.h5 --data-root data/demo --embeddings bottleneck,badge
    """
    from alseg.files.manifest import to_jsonable
    from alseg.stages.infer import infer

    from alseg.mm import parse_cfg_options

    options = parse_cfg_options(cfg_options or [])
    names = [e.strip() for e in embeddings.split(",") if e.strip()]
    from alseg.fused import parse_scores
    from alseg.stages.infer import parse_shard

    score_names, crc_path = parse_scores(scores)
    if crc_path is not None and calibration is not None and Path(crc_path) != calibration:
        raise typer.BadParameter(f"crc:{crc_path} and --calibration {calibration} name two calibrations; give one",
                                 param_hint="--scores")
    rank = os.environ.get("RANK", "0")  # under torchrun only rank 0 shows a bar and prints the result
    with progress_bar("infer", quiet=quiet or rank != "0") as progress:
        result = infer(
            config, checkpoint_path=checkpoint, ids_path=ids, out_path=out, data_root=data_root, device=device,
            batch_size=batch_size, with_labels=with_labels, embeddings=names, resolution=resolution,
            overwrite=overwrite, resume=resume, split=split, cfg_options=options, progress=progress,
            shard=None if shard is None else parse_shard(shard), logits=logits, scores=score_names,
            scores_out_path=scores_out, calibration_path=crc_path or calibration, aggregation=aggregation, q=q,
            mc=mc, mc_scope=mc_scope, mc_seed=mc_seed,
        )
    if rank != "0":
        return
    for message in result.warnings:
        warn(message)
    from rich.table import Table

    table = Table(title=f"infer: {result.n_images} images, {result.seconds:.1f} s")
    table.add_column("dataset")
    table.add_column("shape", justify="right")
    table.add_row("logits", " x ".join(str(s) for s in result.logits_shape))
    for name, dim in result.embeddings.items():
        table.add_row(f"embeddings/{name}", f"{result.n_images} x {dim}")
    if result.mc:
        table.add_row(f"mc (T={result.mc}, {result.mc_scope})",
                      " x ".join(str(s) for s in (result.n_images, 3, *result.logits_shape[2:])))
    err.print(table)
    if json:
        print_json(to_jsonable(result))
    else:
        stdout.print(result.out_path, markup=False, highlight=False)
        if result.scores_path:
            stdout.print(result.scores_path, markup=False, highlight=False)
