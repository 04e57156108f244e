"""``alseg export``: selected images with the model's pre-annotation, for Label Studio or CVAT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from alseg.commands._console import err, out, print_json, progress_bar, warn
from alseg.commands._errors import cli_errors
from alseg.commands._options import CfgOptions, Config, DataRoot, Json, Overwrite, Quiet
from alseg.labeltools import FORMATS

FORMAT_HELP = "label-studio (tasks.json + labeling_config.xml) or cvat (Segmentation mask 1.1 zip + images/)."


@cli_errors
def main(
    config: Config,
    selected: Annotated[Path, typer.Option("--ids", help="Id list to export (e.g. selected.txt from `alseg select`), or "
                        "a labelled state of regions (selected.jsonl from `alseg select --unit ...`): each task then "
                        "shows the regions to label.")],
    pool: Annotated[Path, typer.Option(help="Pool file from `alseg infer` holding the selected ids' logits.")],
    fmt: Annotated[Literal[FORMATS], typer.Option("--format", help=FORMAT_HELP)],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write into (created if missing).")],
    data_root: DataRoot = None,
    image_root_url: Annotated[Optional[str], typer.Option(
        help="Label Studio: data.image = this prefix + the image path relative to the dataset's image folder "
             "(e.g. '/data/local-files/?d=demo/img_dir/'); default: the image's absolute local path.")] = None,
    scores: Annotated[Optional[Path], typer.Option(
        help="Scores file with CRC risk maps (`alseg score --strategy crc --save-risk-maps N`), for --risk-layer.")] = None,
    risk_layer: Annotated[bool, typer.Option(
        help="Label Studio: add a second brush control 'alseg_risk' painting the pixels whose CRC risk is at "
             "least --risk-threshold (a hint; never imported as a class).")] = False,
    risk_threshold: Annotated[float, typer.Option(help="Risk (0-1) at or above which a pixel is painted.")] = 0.5,
    region_maps: Annotated[str, typer.Option("--region-maps", help="Region queries: region-map stores of the "
                           "superpixel units, comma-separated. Default: the store select wrote beside --pool "
                           "(POOL.regions-<unit>.h5), else computed (default SLIC parameters).")] = "",
    cfg_options: CfgOptions = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Export selected images with the model's prediction as pre-annotation for a labeling tool.

    The pre-annotation is the argmax of the pool's logits upsampled (bilinear) to each image's own size.
    docs/labeling.md walks through the loop out to the tool and back (`alseg import`).

    With a labelled state of regions as --ids, each task shows the regions to label: Label Studio gets a
    query layer 'label this region' and data.alseg_regions; CVAT gets annotations.xml (CVAT for images 1.1)
    with an 'alseg-query' mask per image, and labels.json. The pre-annotation covers the regions only.

    Reads: CONFIG, --ids, --pool (and the images under --data-root); --scores for --risk-layer;
    --region-maps for superpixel regions.
    Writes: into --out: tasks.json and labeling_config.xml (label-studio) or annotations.zip and images/
    (cvat; region queries: annotations.xml, labels.json and images/), and manifest.json.

    Example: alseg export demo_unet_tiny --ids selected.txt --pool pool.h5 --data-root data/demo --format label-studio --out to_label
    """
    from alseg.files.manifest import to_jsonable
    from alseg.mm import parse_cfg_options
    from alseg.stages.export import export

    with progress_bar("export", quiet=quiet) as bar:
        result = export(selected, pool, config, fmt=fmt, out_dir=out_dir, data_root=data_root,
                        image_root_url=image_root_url, scores_path=scores, risk_layer=risk_layer,
                        risk_threshold=risk_threshold, overwrite=overwrite, region_maps=region_maps or None,
                        cfg_options=parse_cfg_options(cfg_options or []), progress=bar)
    for message in result.warnings:
        warn(message)
    if json:
        print_json(to_jsonable(result))
    else:
        extra = f", {result.n_with_risk} with a risk layer" if result.n_with_risk else ""
        if result.n_regions is not None:
            extra += f", {result.n_regions} region(s) to label"
        err.print(f"{result.format}: exported {result.n_images} image(s){extra} -> {result.out_dir}",
                  markup=False, highlight=False)
        out.print(result.out_dir, markup=False)
