"""``alseg calibrate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from alseg.commands._console import err, out, print_json, progress_bar, warn
from alseg.commands._errors import cli_errors
from alseg.commands._options import Json, Overwrite, Quiet
from alseg.files.manifest import to_jsonable


@cli_errors
def main(
    pool: Annotated[Path, typer.Argument(
        help="Pool file from `alseg infer --with-labels` on a calibration set.", show_default=False)],
    out_path: Annotated[Path, typer.Option("--out", help="Calibration JSON to write.")],
    alpha: Annotated[float, typer.Option(help="Risk level: the per-class false-negative rate to control.")] = 0.05,
    bins: Annotated[int, typer.Option(help="Threshold grid resolution (t = j/bins).")] = 1000,
    t_min: Annotated[float, typer.Option(help=(
        "Query-time threshold of the classes too rare in the calibration pool to calibrate (they carry no FNR "
        "guarantee); calibrated classes keep their own threshold, 0 included."))] = 0.001,
    train_ids: Annotated[Optional[Path], typer.Option(
        help="Ids the model was trained on, to warn about overlap (default: from the checkpoint's train manifest).")] = None,
    evaluate: Annotated[Optional[Path], typer.Option(
        help="A labeled held-out pool file: report per-class FNR, coverage and set sizes at the thresholds.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images read at a time.")] = 16,
    device: Annotated[str, typer.Option(help=(
        "Where the softmax runs: cpu (default, NumPy) or auto, cuda, cuda:N, mps (torch); the histograms are "
        "exact on the CPU either way."))] = "cpu",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Calibrate CRC-AL class-wise thresholds with conformal risk control.

    For each class k, t̂_k is the largest threshold whose empirical per-image false-negative rate satisfies
    the CRC rule R̂_k(t) ≤ α − (1−α)/n_k, so that E[FNR_k] ≤ α on new images. Classes in fewer than
    (1−α)/α calibration images are flagged uncalibrated (t̂ = 0). One streaming pass, no threshold loop.

    Reads: POOL (logits + labels). Writes: --out calibration JSON and OUT.manifest.json.

    Example: alseg calibrate calib.h5 --alpha 0.05 --out crc.json --evaluate heldout.h5
    """
    from alseg.stages.calibrate import calibrate

    with progress_bar("calibrate", quiet=quiet) as bar:
        result = calibrate(pool, out_path=out_path, alpha=alpha, bins=bins, t_min=t_min, train_ids_path=train_ids,
                           evaluate_path=evaluate, batch_size=batch_size, device=device, overwrite=overwrite,
                           progress=bar)
    for message in result.warnings:
        warn(message)
    if json:
        print_json(to_jsonable(result))
        return
    table = Table(title=f"CRC thresholds (α = {result.alpha}, {result.n_calibration_images} calibration images)")
    table.add_column("class")
    table.add_column("t̂", justify="right")
    table.add_column("n images", justify="right")
    ev = result.evaluation
    if ev:
        table.add_column("held-out FNR", justify="right")
    for k, (name, t) in enumerate(result.thresholds.items()):
        row = [name, "uncalibrated" if name in result.uncalibrated else f"{t:.3f}", str(result.n_images[name])]
        if ev:
            fnr = ev["fnr"][k]
            row.append("-" if fnr is None or fnr != fnr else f"{fnr:.3f}")
        table.add_row(*row)
    err.print(table)
    if ev:
        err.print(f"held-out pixel coverage {ev['coverage']:.4f}; set sizes {ev['set_size_counts']}")
    out.print(result.out_path)
