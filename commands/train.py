"""``alseg train``: train an mmseg model on the labeled ids (skin over ``alseg.stages.train``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from alseg.annotate import ANNOTATION_MODES
from alseg.stages.train import LAUNCHERS

from alseg.commands._console import err, out, print_json, progress_bar
from alseg.commands._errors import cli_errors
from alseg.commands._options import CfgOptions, Config, DataRoot, Device, Json, Overwrite, Quiet, Seed


@cli_errors
def main(
    config: Config,
    labeled: Annotated[Path, typer.Option("--labeled", help="Labeled id list (one id per line), or a labelled-state "
                                          "file (alseg.labelled JSONL: whole images and regions).")],
    work_dir: Annotated[Path, typer.Option("--out", help="Output folder: checkpoint.pth (+ checkpoint.json), metrics.json, manifest.json.")],
    data_root: DataRoot = None,
    val_ids: Annotated[Optional[Path], typer.Option("--val-ids", help="Validate on these ids of the val split only (default: the whole val split).")] = None,
    device: Device = "auto",
    seed: Seed = 0,
    max_iters: Annotated[Optional[int], typer.Option("--max-iters", help="Training iterations (default: the config's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per training batch, per process under torchrun (default: the config's).")] = None,
    cfg_options: CfgOptions = None,
    launcher: Annotated[Literal[LAUNCHERS], typer.Option("--launcher", help="How the processes were started: auto (pytorch when "
                                          "torchrun's RANK/WORLD_SIZE/LOCAL_RANK are set, else none), none (one "
                                          "process), pytorch (torchrun) or slurm (srun, CUDA).")] = "auto",
    annotation: Annotated[Literal[ANNOTATION_MODES], typer.Option("--annotation", help="How labelled regions are "
                          "annotated (simulated from the ground truth): precise (ground truth inside the region) or "
                          "dominant (the region's majority class, one click). Unlabelled pixels get the ignore index.")] = "precise",
    region_maps: Annotated[str, typer.Option("--region-maps", help="Region-map stores of the superpixel units, "
                           "comma-separated (e.g. pool.regions-superpixel-500.h5). Default: computed into "
                           "OUT/train.regions-<unit>.h5.")] = "",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Train a segmentation model on exactly the labeled ids; evaluate on the val split.

    Reads: CONFIG, the --labeled id list (ids of the config's train split; `alseg ids CONFIG` lists them)
    or labelled-state file (images labelled in regions train on those regions only), images and masks under
    --data-root, the config's val split, --region-maps.
    Writes: OUT/checkpoint.pth (weights, read with torch.load(weights_only=True)) and checkpoint.json,
    OUT/metrics.json (mIoU in percent), OUT/manifest.json.

    On N processes: torchrun --nproc-per-node N -m alseg.commands train ... (DDP; --batch-size is per
    process; rank 0 writes the outputs and prints the result).

    Example: alseg train demo_unet_tiny --labeled labeled.txt --out runs/r0 --data-root data/demo
    """
    from alseg.files.manifest import to_jsonable
    from alseg.mm import parse_cfg_options
    from alseg.stages.train import detect_launch, train

    options = parse_cfg_options(cfg_options or [])
    is_main = detect_launch(launcher).is_main  # ranks other than 0 show no bar and print nothing
    with progress_bar("train", quiet=quiet or not is_main) as progress:
        result = train(
            config, labeled_path=labeled, work_dir=work_dir, data_root=data_root, val_ids_path=val_ids,
            device=device, seed=seed, max_iters=max_iters, batch_size=batch_size, overwrite=overwrite,
            cfg_options=options, progress=progress, launcher=launcher, annotation=annotation,
            region_maps=[Path(p.strip()) for p in region_maps.split(",") if p.strip()],
        )
    if result is None:
        return
    from rich.table import Table

    partly = "" if result.annotation is None else f" ({result.labelled_percent:.1f}% of pixels, {result.annotation})"
    table = Table(title=f"train: {result.n_labeled} labeled{partly}, {result.iterations} iterations, {result.seconds:.0f} s")
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    for name, iou in result.per_class_iou.items():
        table.add_row(name, "-" if iou is None else f"{iou:.1f}")
    table.add_row("mIoU (final)", f"{result.final_miou:.1f}")
    table.add_row("mIoU (best)", f"{result.best_miou:.1f}")
    err.print(table)
    if json:
        print_json(to_jsonable(result))
    else:
        out.print(result.checkpoint_path, markup=False, highlight=False)
