"""``alseg demo-data``: write a small synthetic segmentation dataset (skin over ``alseg.demo_data``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alseg.commands._console import err, print_json
from alseg.commands._errors import cli_errors
from alseg.commands._options import Json, Overwrite, Seed


@cli_errors
def main(
    out: Annotated[Path, typer.Option("--out", help="Folder to create (mmseg custom layout: img_dir/, ann_dir/, splits/).")],
    n_images: Annotated[int, typer.Option("--n-images", help="Number of images (pool + val + calib).")] = 400,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels (square images).")] = 48,
    n_val: Annotated[int, typer.Option("--n-val", help="Images in splits/val.txt.")] = 60,
    n_calib: Annotated[int, typer.Option("--n-calib", help="Images in splits/calib.txt.")] = 60,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    json: Json = False,
) -> None:
    """Write synthetic scenes (7 classes, one rare, two confusable) for demos and tests.

    Reads: nothing. Writes: `OUT/img_dir/*.png`, `OUT/ann_dir/*.png` (255 = ignore),
    `OUT/splits/{pool,val,calib,all}.txt`, `OUT/classes.json`.

    Example: alseg demo-data --out data/demo --n-images 400 --size 48 --seed 0
    """
    from alseg.demo_data import make_demo_data
    from alseg.files.manifest import to_jsonable

    result = make_demo_data(
        out, n_images=n_images, size=size, seed=seed, n_val=n_val, n_calib=n_calib, overwrite=overwrite
    )
    err.print(
        f"wrote {result.n_images} images ({result.size}x{result.size}) to {result.out_dir}: "
        f"pool {result.n_pool}, val {result.n_val}, calib {result.n_calib}; "
        f"rare class '{result.rare_class}' in {result.class_image_counts[result.rare_class]} images "
        f"[{result.seconds:.1f} s]",
        markup=False, highlight=False,
    )
    if json:
        print_json(to_jsonable(result))
