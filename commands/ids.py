"""``alseg ids``: list the ids of a split of a config's dataset (skin over ``alseg.stages.ids``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from alseg.dataset import SPLITS

from alseg.commands._console import err, out, print_json
from alseg.commands._errors import cli_errors
from alseg.commands._options import CfgOptions, Config, DataRoot, Json, Overwrite


@cli_errors
def main(
    config: Config,
    split: Annotated[Literal[SPLITS], typer.Option("--split", help="Which dataloader's dataset: train, val or test.")] = "train",
    data_root: DataRoot = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the ids to this id list (default: print them).")] = None,
    cfg_options: CfgOptions = None,
    overwrite: Overwrite = False,
    json: Json = False,
) -> None:
    """List the image ids a split of the config's dataset holds: the first step of a real round.

    An id is the image path relative to the dataset's image folder, without the image suffix, exactly what
    mmseg reads from an ann_file (aachen/aachen_000000_000019 for Cityscapes, 2007_000032 for VOC).

    Reads: CONFIG and the data under --data-root, through mmseg's own dataset class.
    Writes: --out (one id per line), or the ids on stdout.

    Example: alseg ids cityscapes/deeplabv3_r18_d8 --data-root data/cityscapes --split train --out pool.txt
    """
    from alseg.files.manifest import to_jsonable
    from alseg.mm import parse_cfg_options
    from alseg.stages.ids import list_ids

    result = list_ids(config, split=split, data_root=data_root, out_path=out_file, overwrite=overwrite,
                      cfg_options=parse_cfg_options(cfg_options or []))
    extra = f", {result.duplicates} duplicate(s) skipped" if result.duplicates else ""
    err.print(f"{split}: {result.n_ids} ids in {result.data_root} ({', '.join(result.dataset_types)}{extra})",
              markup=False, highlight=False)
    if json:
        doc = to_jsonable(result)
        if out_file is not None:
            doc.pop("ids")
        print_json(doc)
    elif out_file is not None:
        out.print(str(result.out_path), markup=False)
    else:
        out.print("\n".join(result.ids), markup=False)
