"""``alseg import``: finished masks from Label Studio or CVAT into the dataset's annotation folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from alseg.commands._console import err, out, print_json, progress_bar, warn
from alseg.commands._errors import cli_errors
from alseg.commands._options import CfgOptions, Config, DataRoot, Json, Overwrite, Quiet
from alseg.labeltools import FORMATS

FORMAT_HELP = "label-studio (the project's JSON export) or cvat (a Segmentation mask 1.1 zip or its folder)."


@cli_errors
def main(
    config: Config,
    export_path: Annotated[Path, typer.Argument(metavar="EXPORT", help="The labeling tool's export: Label Studio "
                                                "JSON, or CVAT Segmentation mask 1.1 (zip or folder).")],
    fmt: Annotated[Literal[FORMATS], typer.Option("--format", help=FORMAT_HELP)],
    data_root: DataRoot = None,
    labeled: Annotated[Optional[Path], typer.Option(
        help="Labeled id list to append the imported ids to (created if missing; no id twice); with --ids, the "
             "labelled state (.jsonl) to merge the imported regions into.")] = None,
    ids: Annotated[Optional[Path], typer.Option(
        "--ids", help="Region queries: the labelled state the tasks were exported from (selected.jsonl); the "
                      "masks keep the labels inside its regions only (ignore index elsewhere).")] = None,
    region_maps: Annotated[str, typer.Option("--region-maps", help="With --ids: region-map stores of the "
                           "superpixel units, comma-separated (the ones export used). Default: computed "
                           "(default SLIC parameters).")] = "",
    cfg_options: CfgOptions = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Import finished masks from a labeling tool into the dataset, where mmseg reads them.

    Each mask is written as a single-channel PNG at the mask path the config's dataset class gives the
    image (seg_map_suffix, reduce_zero_label and label_map honoured; unlabeled pixels = ignore). Unknown
    class names and size mismatches are refused; nothing is written unless every mask is valid.

    With --ids selected.jsonl (region queries) each mask is a partial label map: the answer inside the
    queried regions, the ignore index elsewhere; an existing mask is updated (its labels are kept unless
    --overwrite) and the regions are merged into --labeled, a labelled state for `alseg train --labeled`.

    Reads: CONFIG and EXPORT (the dataset under --data-root); --ids, --region-maps.
    Writes: one mask per annotated image into the dataset's annotation folder; --labeled, appended (merged).

    Example: alseg import demo_unet_tiny export.json --format label-studio --data-root data/demo --labeled labeled.txt
    """
    from alseg.files.manifest import to_jsonable
    from alseg.mm import parse_cfg_options
    from alseg.stages.import_masks import import_masks

    with progress_bar("import", quiet=quiet) as bar:
        result = import_masks(export_path, config, fmt=fmt, data_root=data_root, labeled_path=labeled,
                              overwrite=overwrite, cfg_options=parse_cfg_options(cfg_options or []),
                              ids_path=ids, region_maps=region_maps or None, progress=bar)
    for message in result.warnings:
        warn(message)
    if json:
        print_json(to_jsonable(result))
    else:
        extra = (f"; {result.n_added_to_labeled} id(s) added to {result.labeled_updated}"
                 if result.labeled_updated else "")
        if result.n_regions is not None:
            extra = f" ({result.n_regions} region(s)){extra}"
        err.print(f"{result.format}: wrote {len(result.imported)} mask(s){extra}", markup=False, highlight=False)
        out.print("\n".join(result.imported), markup=False)
