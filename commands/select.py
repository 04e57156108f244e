"""``alseg select``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from alseg.commands._console import err, out, print_json, progress_bar, warn
from alseg.commands._errors import cli_errors
from alseg.commands._options import Device, Json, Overwrite, Quiet, Seed
from alseg.files.manifest import to_jsonable
from alseg.registry import (AGGREGATIONS, BADGE_EMBEDDINGS, CRC_SELECTORS, POOL_EMBEDDINGS, SAMPLERS,
                            SCALAR_SCORES, STRATEGIES)

_STRATEGY_HELP = "One of: " + ", ".join(STRATEGIES) + " (docs/algorithms.md gives the math of each)."


@cli_errors
def main(
    strategy: Annotated[Literal[tuple(STRATEGIES)], typer.Option("--strategy", "-s", metavar="NAME", help=_STRATEGY_HELP)],
    budget: Annotated[int, typer.Option(help="Number of images to select.")],
    labeled: Annotated[Path, typer.Option(help="Labeled id list; these ids are never selected (may be empty).")],
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the selected ids, in rank order.")],
    pool: Annotated[Optional[Path], typer.Option(help="Pool file from `alseg infer` (logits, embeddings).")] = None,
    scores: Annotated[Optional[Path], typer.Option(help="Scores file from `alseg score` (else computed from --pool).")] = None,
    pool_ids: Annotated[Optional[Path], typer.Option(
        help="Candidate id list (default: the ids of --scores or --pool). All `random` needs.")] = None,
    calibration: Annotated[Optional[Path], typer.Option(help="crc without --scores: calibration JSON.")] = None,
    seed: Seed = 0,
    stochastic: Annotated[bool, typer.Option(
        help="Stochastic batches on the strategy's scalar score (entropy, margin, least-confidence, crc).")] = False,
    groups: Annotated[Optional[int], typer.Option(
        help="Stochastic batches: draw G independent random groups instead of a disjoint partition.")] = None,
    base_score: Annotated[Literal[SCALAR_SCORES], typer.Option(
        metavar="SCORE", help="Score used by --strategy stochastic-batches: " + ", ".join(SCALAR_SCORES) + ".")
    ] = "entropy",
    embedding: Annotated[Literal[POOL_EMBEDDINGS], typer.Option(
        metavar="NAME", help="coreset embedding: " + " or ".join(POOL_EMBEDDINGS) + ".")] = "bottleneck",
    badge_embedding: Annotated[Literal[BADGE_EMBEDDINGS], typer.Option(metavar="NAME",
        help="badge embedding: logit (from logits) or last-layer (needs `infer --embeddings badge`).")] = "logit",
    tau: Annotated[float, typer.Option(help="crc: barycenter exponent, 1 = pure diversity, 0 = pure uncertainty.")] = 0.5,
    selector: Annotated[Literal[CRC_SELECTORS], typer.Option(
        metavar="NAME", help="crc selector: " + " or ".join(CRC_SELECTORS) + ".")] = "top-diverse-k",
    aggregation: Annotated[Literal[AGGREGATIONS], typer.Option(
        metavar="HOW", help="Pixel reduction when scoring on the fly: " + ", ".join(AGGREGATIONS) + ".")] = "mean",
    q: Annotated[float, typer.Option(help="Percent of pixels for --aggregation top-q.")] = 10.0,
    sampler: Annotated[Literal[SAMPLERS], typer.Option(metavar="NAME", help=(
        "How scalar scores (entropy, margin, least-confidence, crc's risk) become a batch: " + ", ".join(SAMPLERS)
        + ". top = the highest; power/softmax/softrank sample without replacement (Kirsch et al. 2023), seeded."))
    ] = "top",
    beta: Annotated[float, typer.Option(help="Sampler temperature: larger is closer to top.")] = 1.0,
    device: Device = "auto",
    update: Annotated[bool, typer.Option(help="Also append the selection to --labeled: all or nothing (on failure neither --out nor --labeled changes).")] = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Select the images to label next.

    Candidates are the unlabeled ids (candidate ids minus --labeled). Uncertainty strategies rank by
    score, diversity strategies (coreset, contextual-diversity, badge, crc) pick greedily with the labeled
    ids as references. The same inputs and --seed give the same selection, whatever the row order.

    Reads: --labeled and, by strategy, --pool / --scores / --calibration / --pool-ids.
    Writes: --out (one id per line) and OUT.manifest.json; with --update, --labeled.

    Example: alseg select --strategy margin --budget 100 --labeled labeled.txt --pool pool.h5 --out selected.txt
    """
    from alseg.stages.select import select

    with progress_bar("select", quiet=quiet) as bar:
        result = select(strategy, budget=budget, labeled_path=labeled, out_path=out_path, pool_path=pool,
                        scores_path=scores, pool_ids_path=pool_ids, calibration_path=calibration, seed=seed,
                        stochastic=stochastic, groups=groups, base_score=base_score, embedding=embedding,
                        badge_embedding=badge_embedding, tau=tau, selector=selector, aggregation=aggregation,
                        q=q, sampler=sampler, beta=beta, device=device, update=update, overwrite=overwrite,
                        progress=bar)
    for message in result.warnings:
        warn(message)
    if json:
        print_json(to_jsonable(result))
    else:
        err.print(f"{result.strategy}: selected {len(result.selected)} of {result.n_unlabeled} unlabeled ids "
                  f"-> {result.out_path}" + (f" (appended to {result.labeled_updated})" if result.labeled_updated else ""))
        out.print(result.out_path)
