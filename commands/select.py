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
    labeled: Annotated[Path, typer.Option(help=(
        "Labeled id list; these ids are never selected (may be empty). With --unit patch/superpixel/pixel also a "
        "labelled-state file (.jsonl, docs/regions.md): labelled regions are never offered again."))],
    out_path: Annotated[Path, typer.Option("--out", help=(
        "Where to write the selected ids, in rank order; with a region --unit, a labelled-state file (.jsonl) of "
        "the new regions."))],
    budget: Annotated[Optional[int], typer.Option(help=(
        "Number of images to select; with a region --unit, the number of regions (pixels for pixel:P)."))] = None,
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
    oracle: Annotated[bool, typer.Option(help=(
        "random-stratified: strata from ground-truth class counts (--pool from `infer --with-labels`). "
        "For experiments only: outputs say 'oracle'."))] = False,
    round_: Annotated[Optional[str], typer.Option("--round", metavar="t/T", help=(
        "clasp: query round t of T; sets beta = 1 x 100^((t-1)/(T-1)) (ClaSP PE's schedule). `alseg run` passes it."))
    ] = None,
    exclude_classes: Annotated[Optional[str], typer.Option(metavar="NAMES", help=(
        "random-stratified, clasp: classes that get no stratum, names or indices, comma-separated; 'none' for "
        "none (default: a class named background)."))] = None,
    min_count: Annotated[int, typer.Option(help="random-stratified: cells of a class that put an image in its stratum.")] = 1,
    class_share: Annotated[float, typer.Option(help="clasp: share of the budget split over the class strata.")] = 0.66,
    unit: Annotated[Optional[str], typer.Option(metavar="UNIT", help=(
        "What one query is: image (default, whole images), patch:S (S x S tiles at original size), superpixel:N "
        "(SLIC, about N per image; maps stored beside --pool and reused) or pixel:P (the P best pixels per "
        "image). Region units take entropy, margin, least-confidence or random. --unit image with --budget-pixels "
        "or --budget-clicks: whole images in score order, each taken if it fits. docs/regions.md."),
        show_default=False)] = None,
    budget_pixels: Annotated[Optional[str], typer.Option(metavar="P%|COUNT", help=(
        "Region units: budget in labelled pixels at original resolution, a percentage of all pool pixels (2%) "
        "or a count. Instead of --budget; never exceeded."))] = None,
    budget_clicks: Annotated[Optional[int], typer.Option(metavar="N", help=(
        "Region units: budget in estimated annotation clicks (Cai et al. 2021, docs/regions.md), counted on "
        "the dataset's label maps at original resolution (simulation). Instead of --budget; never exceeded."))
    ] = None,
    region_reduction: Annotated[str, typer.Option(metavar="HOW", help=(
        "Region units: how a region's score reduces its pixel scores: mean, sum, max or top-q (with --q)."))
    ] = "mean",
    max_per_image: Annotated[Optional[int], typer.Option(help=(
        "Region units: at most this many regions from one image per round (default: no limit)."))] = None,
    annotation: Annotated[str, typer.Option(metavar="MODE", help=(
        "Region units, click cost: precise (c_c + c_i + c_p per region) or dominant (1 click per region)."))
    ] = "precise",
    dataset_config: Annotated[Optional[str], typer.Option(metavar="CONFIG", help=(
        "Region units: the mmseg config whose dataset holds the original images and label maps (default: the "
        "one --pool records)."))] = None,
    data_root: Annotated[Optional[Path], typer.Option(help=(
        "Region units: dataset folder (default: the one --pool records)."))] = None,
    region_store: Annotated[Optional[Path], typer.Option(metavar="PATH", help=(
        "superpixel:N: the region-map store to read and extend (default: POOL_STEM.regions-superpixel-N.h5 beside "
        "--pool); one store kept across rounds computes every map once."))] = None,
    device: Device = "auto",
    update: Annotated[bool, typer.Option(help=(
        "Also append the selection to --labeled (region units: merge into the labelled-state file; a plain id "
        "list must be named .jsonl to be rewritten as one): all or nothing (on failure neither --out nor "
        "--labeled changes)."))] = False,
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

    Regions: alseg select --strategy entropy --unit superpixel:500 --budget-pixels 1% --labeled labelled.jsonl
    --pool pool.h5 --out round2.jsonl --update
    """
    from alseg.errors import InputError
    from alseg.stages.select import select

    if unit is None and (budget_pixels is not None or budget_clicks is not None):
        raise InputError(f"{'--budget-pixels' if budget_pixels is not None else '--budget-clicks'} counts pixels or "
                         "clicks of regions: use a region unit (--unit patch:S, superpixel:N or pixel:P), or --unit "
                         "image for whole images under that budget")
    unit = unit or "image"
    with progress_bar("select", quiet=quiet) as bar:
        result = select(strategy, budget=budget, labeled_path=labeled, out_path=out_path, pool_path=pool,
                        scores_path=scores, pool_ids_path=pool_ids, calibration_path=calibration, seed=seed,
                        stochastic=stochastic, groups=groups, base_score=base_score, embedding=embedding,
                        badge_embedding=badge_embedding, tau=tau, selector=selector, aggregation=aggregation,
                        q=q, sampler=sampler, beta=beta, device=device, update=update, overwrite=overwrite,
                        progress=bar, oracle=oracle, round=round_, exclude_classes=exclude_classes,
                        min_count=min_count, class_share=class_share, unit=unit, budget_pixels=budget_pixels,
                        budget_clicks=budget_clicks, region_reduction=region_reduction, max_per_image=max_per_image,
                        annotation=annotation, dataset_config=dataset_config, data_root=data_root,
                        region_store=region_store)
    for message in result.warnings:
        warn(message)
    if json:
        print_json(to_jsonable(result))
    elif getattr(result, "unit", "image") != "image":
        clicks = "" if result.clicks is None else f", ~{result.clicks:,} clicks"
        err.print(f"{result.strategy}, {result.unit}: selected {result.n_regions} of {result.n_offered} regions in "
                  f"{result.images_touched} images ({result.labelled_pixels:,} px = {result.labelled_percent:.2f}% "
                  f"of the pool{clicks}; budget {result.budget_used:,}/{result.budget:,} {result.budget_kind}) -> "
                  f"{result.out_path}" + (f" (merged into {result.labeled_updated})" if result.labeled_updated else ""))
        out.print(result.out_path)
    else:
        if result.oracle:
            warn("oracle: chosen from ground-truth class counts, a simulation baseline, not a real selection")
        err.print(f"{result.strategy}{' (oracle)' if result.oracle else ''}: selected {len(result.selected)} of {result.n_unlabeled} unlabeled ids "
                  f"-> {result.out_path}" + (f" (appended to {result.labeled_updated})" if result.labeled_updated else ""))
        out.print(result.out_path)
