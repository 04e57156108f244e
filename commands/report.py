"""``alseg report``: the HTML report of an experiment."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from alseg.commands._console import err, out, print_json, progress_bar, warn
from alseg.commands._errors import cli_errors
from alseg.commands._options import Json, Overwrite, Quiet


@cli_errors
def main(
    exp_dir: Annotated[Path, typer.Argument(help="Experiment folder written by `alseg run` (holds experiment.toml).")],
    out_path: Annotated[
        Optional[Path],
        typer.Option("--out", help="HTML file to write; every figure goes as PNG and SVG to STEM_files/ beside it "
                                   "(default: EXP/report.html)."),
    ] = None,
    gallery_round: Annotated[
        Optional[int],
        typer.Option("--round", help="Round whose selections the gallery shows (default: the last round with a pool.h5)."),
    ] = None,
    gallery_size: Annotated[
        int, typer.Option("--gallery-size", min=1, help="Top-ranked selected images shown per strategy.")
    ] = 6,
    overwrite: Overwrite = False,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Write a self-contained HTML report: does active learning pay? (AULC and paired differences to random
    with 95% CIs over seeds, labels saved), learning curves, per-class IoU, penalty matrix, time per stage,
    gallery, CRC-AL. Where the rounds recorded their annotation cost (cost.json): mIoU against labelled
    pixels and clicks, each strategy at equal clicks and equal labelled pixels, and the selected regions
    of region units drawn on their images.

    Reads: EXP/experiment.toml (and the config and pool_ids it names), EXP/seed-S/round-00 and
    EXP/seed-S/STRATEGY/round-NN (train/metrics.json, manifests, labeled.txt, selected.txt, pool.h5,
    scores.h5, crc.json, cost.json, selected.jsonl, labeled.jsonl), images and masks under data_root,
    superpixel stores (EXP/regions/), EXP/full/train/metrics.json. Writes: the HTML
    (figures embedded as PNG, no scripts, nothing fetched) and every figure as PNG and SVG in OUT_files/
    beside it (report.html -> report_files/). Prints the HTML path on stdout (or the result with --json)
    and summary tables on stderr.

    Example: alseg report runs/demo --out runs/demo/report.html
    """
    from alseg.files.manifest import to_jsonable
    from alseg.stages.report import report

    out_path = out_path if out_path is not None else exp_dir / "report.html"
    with contextlib.ExitStack() as stack:
        bar = None

        def hook(advance: int = 1, total: int | None = None, **info) -> None:
            # The bar opens on the first report of progress, i.e. after the tree was read: a bad path
            # gives only the one error line.
            nonlocal bar
            if bar is None:
                bar = stack.enter_context(progress_bar("report", quiet=quiet))
            bar(advance, total, **info)

        result = report(exp_dir, out_path=out_path, gallery_round=gallery_round, gallery_size=gallery_size,
                        overwrite=overwrite, progress=hook)
    for w in result.warnings:
        warn(w)
    _summary(result)
    if result.equal_clicks:
        _equal_cost(result.equal_clicks, "clicks", lambda v: f"{v:.0f}")
    if json_:
        print_json(to_jsonable(result))
    else:
        out.print(result.out_path, markup=False)


def _summary(result) -> None:
    from rich.table import Table

    table = Table(title="mIoU (%) per round: mean ± std over seeds", title_justify="left")
    table.add_column("strategy")
    for rd in result.rounds:
        table.add_column(f"R{rd}", justify="right")
    table.add_column("Φ", justify="right")
    by_key = {(r.strategy, r.round): r for r in result.table}
    for i, s in enumerate(result.strategies):
        cells = []
        for rd in result.rounds:
            r = by_key.get((s, rd))
            cells.append("—" if r is None else f"{r.miou_mean:.2f} ± {r.miou_std:.2f}")
        phi = f"{result.phi[i]:.2f}" if len(result.seeds) >= 2 else "—"
        table.add_row(s, *cells, phi)
    err.print(table)
    if len(result.seeds) < 2:
        err.print("Φ needs ≥ 2 seeds (paired t-test over seeds).", markup=False)
    if not result.aulc:
        return
    pays = Table(title="does active learning pay? AULC = mean mIoU over the budget; Δ vs random, paired by seed",
                 title_justify="left")
    for col in ("strategy", "AULC", "Δ vs random", "95% CI", "labels saved"):
        pays.add_column(col, justify="left" if col in ("strategy", "labels saved") else "right")
    saved = {x.strategy: x.text for x in result.labels_saved}
    for row in result.aulc:
        iv = row.diff_vs_random
        ci = "—" if iv is None else ("n/a" if iv.n < 2 else f"[{iv.low:+.2f}, {iv.high:+.2f}]")
        pays.add_row(row.strategy, f"{row.mean:.2f} ± {row.std:.2f}", "—" if iv is None else f"{iv.mean:+.2f}", ci,
                     saved.get(row.strategy, "—"))
    err.print(pays)


def _equal_cost(rows, what: str, fmt) -> None:
    from rich.table import Table

    levels = sorted({r.level for r in rows})
    table = Table(title=f"mIoU (%) at equal {what} (mean curve, linear between rounds; —: not reached)",
                  title_justify="left")
    table.add_column("strategy")
    for level in levels:
        table.add_column(f"{fmt(level)} {what}", justify="right")
    by = {(r.strategy, r.level): r for r in rows}
    for s in dict.fromkeys(r.strategy for r in rows):
        table.add_row(s, *("—" if by[s, lv].miou is None else f"{by[s, lv].miou:.2f}" for lv in levels))
    err.print(table)
