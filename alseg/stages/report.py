"""``alseg report``: one self-contained HTML report of an experiment tree (``docs/experiment.md``).

It answers "does active learning pay?": learning curves (mean ± std over seeds, full-supervision line,
x in images and in % of the pool), per-class IoU curves, the area under the learning curve (AULC) and
each strategy's paired difference to ``random`` with 95% confidence intervals over seeds, the labels a
strategy saves to reach random's final mIoU, and the penalty matrix over seeds; then time per stage,
a gallery of selected images, the class histogram of the selections and the CRC-AL calibration.

Annotation cost (docs/algorithms.md §11.3): where the rounds recorded it (``cost.json``, written by
``alseg run`` in every round folder), also mIoU against the % of the pool's pixels labelled and against the
estimated clicks, each strategy's mIoU at equal clicks and at equal labelled pixels (its mean curve read
linearly between rounds, with the paired difference to random over seeds), the query unit and annotation
mode in the header, and for region units (``selected.jsonl``) the selected regions drawn on their images.
Trees without ``cost.json`` (older runs) give the report they always gave, with one note.

Reads: ``EXP/experiment.toml`` (and the config it names, for the model in the header; the model is not
built), its ``pool_ids`` list (pool size), every ``train/metrics.json``, the stage manifests
(``*.manifest.json``, ``train/manifest.json``) for the time per stage, ``labeled.txt`` of round 0,
``selected.txt``, the gallery round's ``pool.h5`` / ``scores.h5``, ``crc.json``, images and masks under
``data_root`` and ``data_root/classes.json``; where present ``cost.json``, ``selected.jsonl`` /
``labeled.jsonl`` (region rounds), the select manifest's ``region_maps`` store (or one found beside the
round's pool, in the strategy's other rounds or under ``EXP/regions/``) for superpixel maps.
Writes: ``<out>.html`` (rendered from the Jinja2 template ``alseg/templates/report.html.j2`` with
autoescape; figures embedded as base64 PNG data URIs, inline CSS, no scripts, no external resources)
and every figure as PNG and SVG in ``<out stem>_files/`` beside it.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly (no pyplot), in
an ``rc_context`` with print-sized fonts (>= 11 pt at the figure's own size), so the report never
changes matplotlib's global backend or state.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alseg import __version__, stats
from alseg.files.jsonfile import read_versioned_json
from alseg.stages import no_progress as _noop
from alseg.errors import InputError, OutputError, OutputExistsError
from alseg.files.atomic import atomic_path, check_not_input, write_text_atomic
from alseg.files.idlist import read_ids
from alseg.files.manifest import read_manifest

# Column order of the time-per-stage table; other stage names found in manifests follow, sorted.
STAGES = ("infer", "score", "calibrate", "select", "train")
METRICS_FORMAT = "alseg.metrics"
COST_FORMAT = "alseg.cost"
_ROUND_RE = re.compile(r"^round-(\d+)$")
_SEED_RE = re.compile(r"^seed-(\d+)$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

BASELINE = "random"  # the strategy every other one is compared with (paired by seed)
STRONG_BASELINE = "random-stratified"  # the second reference when the experiment runs it (docs/algorithms.md §11.5)
CONFIDENCE = 0.95
MAX_CLASS_PANELS = 30  # per-class small multiples; more classes: the rarest this many

SECTIONS = (
    ("summary", "Summary"),
    ("pays", "Does active learning pay?"),
    ("curves", "Learning curves"),
    ("cost", "Equal annotation cost"),  # only when the rounds recorded their cost (cost.json)
    ("per-class", "Per-class IoU"),
    ("paired", "Paired differences to the baselines"),
    ("penalty", "Penalty matrix"),
    ("table", "Per-round table"),
    ("gallery", "Gallery"),
    ("classes", "Class histogram"),
    ("crc", "CRC-AL calibration"),
)



# --------------------------------------------------------------------------------------------- collect


@dataclass
class RoundRun:
    """One (seed, strategy, round) of the tree; round 0 is the seed's shared ``round-00``."""

    seed: int
    strategy: str
    round: int
    n_labeled: int
    miou: float
    round_dir: Path
    seconds: dict[str, float]
    selected: list[str]
    pool_path: Path | None = None
    scores_path: Path | None = None
    crc_path: Path | None = None
    per_class_iou: dict[str, float | None] = field(default_factory=dict)  # percent; None: class not in val
    # annotation cost after the round (cost.json, cumulative; docs/algorithms.md §11.3); None: not recorded
    images_touched: int | None = None
    labelled_pixels: int | None = None
    pool_pixels: int | None = None
    labelled_percent: float | None = None  # of the pool's pixels at original resolution
    clicks: int | None = None  # None also when the run could not count them (no label maps)
    unit: str | None = None  # the round's query unit (cost.json); None: not recorded
    annotation: str | None = None
    selected_path: Path | None = None  # selected.jsonl: this round's regions (region units)
    labeled_path: Path | None = None  # labeled.jsonl: every region labelled after the round

    @property
    def has_cost(self) -> bool:
        return self.labelled_pixels is not None


@dataclass
class Experiment:
    exp_dir: Path
    name: str
    data_root: Path | None
    seeds: list[int]
    strategies: list[str]
    runs: list[RoundRun]  # round 0 appears once per (seed, strategy), as the first point of each curve
    full_miou: float | None
    config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    full_per_class_iou: dict[str, float | None] = field(default_factory=dict)
    pool_size: int | None = None  # ids in the experiment's pool_ids list; None when it names none
    iterations: int | None = None  # training iterations of round 0 (first seed), from its metrics.json

    @property
    def rounds(self) -> list[int]:
        return sorted({r.round for r in self.runs})

    def records(self) -> list[stats.Record]:
        return [stats.Record(r.seed, r.strategy, r.round, r.n_labeled, r.miou) for r in self.runs]

    def run(self, seed: int, strategy: str, round_: int) -> RoundRun | None:
        for r in self.runs:
            if (r.seed, r.strategy, r.round) == (seed, strategy, round_):
                return r
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


@dataclass
class Metrics:
    """What the report uses of a ``train/metrics.json``."""

    miou: float  # final mIoU, percent
    n_labeled: int | None
    per_class_iou: dict[str, float | None]  # final IoU per class, percent
    iterations: int | None


def read_metrics_detail(path: Path) -> Metrics:
    doc = read_versioned_json(path, METRICS_FORMAT, 1)
    try:
        miou = float(doc["final"]["mIoU"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: has no numeric final.mIoU") from None
    per_class = doc["final"].get("per_class_iou") or {}
    if not isinstance(per_class, dict):
        raise InputError(f"{path}: final.per_class_iou must map class names to IoU")
    try:
        per_class = {str(k): (None if v is None else float(v)) for k, v in per_class.items()}
    except (TypeError, ValueError):
        raise InputError(f"{path}: final.per_class_iou holds a value that is not a number") from None
    n, it = doc.get("n_labeled"), doc.get("iterations")
    return Metrics(miou, int(n) if n is not None else None, per_class, int(it) if it is not None else None)


def read_metrics(path: Path) -> tuple[float, int | None]:
    """``(final mIoU in percent, n_labeled or None)`` from a ``train/metrics.json``."""
    m = read_metrics_detail(path)
    return m.miou, m.n_labeled


@dataclass
class Cost:
    """A round's ``cost.json`` (``alseg.cost``, version 1): the annotation cost after the round, cumulative."""

    images_touched: int
    labelled_pixels: int
    pool_pixels: int
    labelled_percent: float
    clicks: int | None
    unit: str
    annotation: str | None


def read_cost(path: Path) -> Cost:
    """Read a ``cost.json``; a missing or malformed field is an :class:`InputError` naming the file."""
    doc = read_versioned_json(path, COST_FORMAT, 1)

    def number(key: str, kind: type, optional: bool = False):
        v = doc.get(key)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and float(v) != int(v)) \
                or not math.isfinite(float(v)) or v < 0:
            raise InputError(f"{path}: {key} must be a number >= 0{' or null' if optional else ''}, got {v!r}")
        return kind(v)

    unit = doc.get("unit")
    if not isinstance(unit, str) or not unit:
        raise InputError(f"{path}: unit must be a query unit (image, patch:S, superpixel:N, pixel:P), got {unit!r}")
    annotation = doc.get("annotation")
    return Cost(number("images_touched", int), number("labelled_pixels", int), number("pool_pixels", int),
                number("labelled_percent", float), number("clicks", int, optional=True), unit,
                None if annotation is None else str(annotation))


def _round_files(round_dir: Path) -> dict[str, Any]:
    """What :class:`RoundRun` takes from a round folder besides the metrics: the selection (``selected.txt``,
    else the images of ``selected.jsonl``), the region files, and the cost (``cost.json``) when recorded."""
    from alseg.files.labelled import read_labelled

    out: dict[str, Any] = {}
    sel_txt, sel_jsonl, lab_jsonl = (round_dir / n for n in ("selected.txt", "selected.jsonl", "labeled.jsonl"))
    if sel_txt.is_file() or not sel_jsonl.is_file():
        out["selected"] = read_ids(sel_txt, allow_missing=True)
    else:
        out["selected"] = read_labelled(sel_jsonl).ids  # images in the order of their first pick
        out["selected_path"] = sel_jsonl
    if lab_jsonl.is_file():
        out["labeled_path"] = lab_jsonl
    cost_path = round_dir / "cost.json"
    if cost_path.is_file():
        c = read_cost(cost_path)
        out.update(images_touched=c.images_touched, labelled_pixels=c.labelled_pixels, pool_pixels=c.pool_pixels,
                   labelled_percent=c.labelled_percent, clicks=c.clicks, unit=c.unit, annotation=c.annotation)
    return out


def _labeled_ids(round_dir: Path) -> list[str]:
    """The images with any label after a round: ``labeled.txt``, else the images of ``labeled.jsonl``."""
    from alseg.files.labelled import read_labelled

    if not (round_dir / "labeled.txt").is_file() and (round_dir / "labeled.jsonl").is_file():
        return read_labelled(round_dir / "labeled.jsonl").ids
    return read_ids(round_dir / "labeled.txt", allow_missing=True)


def _stage_seconds(round_dir: Path) -> dict[str, float]:
    """Seconds per stage summed over the manifests of one round folder (two ``infer`` runs for crc)."""
    seconds: dict[str, float] = {}
    paths = sorted(round_dir.glob("*.manifest.json")) + [round_dir / "train" / "manifest.json"]
    for path in paths:
        if not path.is_file():
            continue
        doc = read_manifest(path)
        stage, secs = doc.get("stage"), doc.get("seconds")
        if stage and isinstance(secs, (int, float)):
            seconds[stage] = seconds.get(stage, 0.0) + float(secs)
    return seconds


def _round_dirs(folder: Path) -> dict[int, Path]:
    out = {}
    for p in folder.iterdir():
        m = _ROUND_RE.match(p.name)
        if m and p.is_dir():
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def _n_labeled(round_dir: Path, metrics_path: Path, n: int | None) -> int:
    if n is not None:
        return n
    labeled = round_dir / "labeled.txt"
    if not labeled.is_file() and (round_dir / "labeled.jsonl").is_file():
        return len(_labeled_ids(round_dir))
    if not labeled.is_file():
        raise InputError(f"{metrics_path}: has no n_labeled and {labeled} is missing")
    return len(read_ids(labeled))


def collect(exp_dir: str | Path) -> Experiment:
    """Walk an experiment tree (``docs/experiment.md``) into an :class:`Experiment`.

    Round 0 (``seed-S/round-00``, shared) is prepended to every strategy's runs of that seed. A round
    folder without ``train/metrics.json`` (still running) is left out with a warning; malformed files
    raise :class:`InputError` naming the file.
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise InputError(f"{exp_dir}: experiment directory not found")
    toml_path = exp_dir / "experiment.toml"
    if not toml_path.is_file():
        return collect_by_hand(exp_dir)
    try:
        config = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{toml_path}: not valid TOML ({exc})") from None
    data_root = None
    if config.get("data_root"):
        data_root = Path(config["data_root"])
        if not data_root.is_absolute():
            data_root = (exp_dir / data_root).resolve()
    warnings: list[str] = []

    seed_dirs = sorted(
        ((int(m.group(1)), p) for p in exp_dir.iterdir() if p.is_dir() and (m := _SEED_RE.match(p.name))),
    )
    if not seed_dirs:
        raise InputError(f"{exp_dir}: no seed-*/ folders; the experiment has not run yet (alseg run)")

    declared = [str(s) for s in config.get("strategies", [])]
    found: set[str] = set()
    runs: list[RoundRun] = []
    for seed, seed_dir in seed_dirs:
        r0_dir = seed_dir / "round-00"
        r0_metrics = r0_dir / "train" / "metrics.json"
        if not r0_metrics.is_file():
            raise InputError(f"{r0_metrics}: not found; round 0 of seed {seed} has not been trained")
        m0 = read_metrics_detail(r0_metrics)
        miou0, n0 = m0.miou, _n_labeled(r0_dir, r0_metrics, m0.n_labeled)
        secs0 = _stage_seconds(r0_dir)
        files0 = {k: v for k, v in _round_files(r0_dir).items() if k not in ("selected", "selected_path")}
        strategy_dirs = sorted(p for p in seed_dir.iterdir() if p.is_dir() and not _ROUND_RE.match(p.name))
        for sdir in strategy_dirs:
            rounds = _round_dirs(sdir)
            if not rounds:
                continue
            found.add(sdir.name)
            runs.append(RoundRun(seed, sdir.name, 0, n0, miou0, r0_dir, dict(secs0), [],
                                 per_class_iou=dict(m0.per_class_iou), **files0))
            for rd, rdir in rounds.items():
                if rd == 0:
                    raise InputError(f"{rdir}: round 0 is shared; it belongs in {r0_dir}")
                metrics = rdir / "train" / "metrics.json"
                if not metrics.is_file():
                    warnings.append(f"{metrics} missing (round not finished?); round {rd} of {sdir.name}, "
                                    f"seed {seed} left out")
                    continue
                m = read_metrics_detail(metrics)
                runs.append(RoundRun(
                    seed, sdir.name, rd, _n_labeled(rdir, metrics, m.n_labeled), m.miou, rdir, _stage_seconds(rdir),
                    pool_path=(rdir / "pool.h5") if (rdir / "pool.h5").is_file() else None,
                    scores_path=(rdir / "scores.h5") if (rdir / "scores.h5").is_file() else None,
                    crc_path=(rdir / "crc.json") if (rdir / "crc.json").is_file() else None,
                    per_class_iou=m.per_class_iou, **_round_files(rdir),
                ))
    if not found:
        raise InputError(f"{seed_dirs[0][1]}: no strategy folders with round-NN/ inside; nothing to report")
    strategies = [s for s in declared if s in found] + sorted(found - set(declared))
    order = {s: i for i, s in enumerate(strategies)}
    runs.sort(key=lambda r: (order[r.strategy], r.seed, r.round))

    full_miou, full_per_class = None, {}
    full_metrics = exp_dir / "full" / "train" / "metrics.json"
    if full_metrics.is_file():
        mf = read_metrics_detail(full_metrics)
        full_miou, full_per_class = mf.miou, mf.per_class_iou
    iterations = read_metrics_detail(seed_dirs[0][1] / "round-00" / "train" / "metrics.json").iterations
    return Experiment(
        exp_dir=exp_dir, name=str(config.get("name", exp_dir.name)), data_root=data_root,
        seeds=[s for s, _ in seed_dirs], strategies=strategies, runs=runs, full_miou=full_miou,
        config=config, warnings=warnings, full_per_class_iou=full_per_class,
        pool_size=_pool_size(exp_dir, config, warnings), iterations=iterations,
    )


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def collect_by_hand(exp_dir: Path) -> Experiment:
    """Rounds made by hand (README's loop): each round folder holds a training work dir with
    ``metrics.json`` (``r1/model/metrics.json``) and, once selected, ``selected.txt``; ``pool.h5``,
    ``scores.h5`` and ``crc.json`` beside them feed the gallery and the CRC section when present.

    Round folders directly in ``exp_dir`` form one curve, named after the strategy their selections'
    manifests record (``"by hand"`` if none or several); folders of round folders (``margin/r1``,
    ``random/r1``) form one curve each. Rounds are ordered by labeled-set size; seed 0.
    """
    found = []
    for metrics in sorted(exp_dir.glob("**/metrics.json")):
        rel = metrics.relative_to(exp_dir).parts
        if len(rel) < 3 or len(rel) > 4:  # round/work_dir/metrics.json or group/round/work_dir/metrics.json
            continue
        try:
            m = read_metrics_detail(metrics)
        except InputError:
            continue  # another tool's metrics.json
        found.append((metrics, m))
    if not found:
        raise InputError(f"{exp_dir}: neither an `alseg run` experiment (no experiment.toml) nor rounds made by hand "
                         "(no <round>/<work dir>/metrics.json from `alseg train`)")
    groups: dict[Path, list[tuple[Path, Path, Metrics]]] = {}
    for metrics, m in found:
        round_dir = metrics.parent.parent
        groups.setdefault(round_dir.parent, []).append((round_dir, metrics, m))
    runs: list[RoundRun] = []
    strategies: list[str] = []
    config: dict[str, Any] = {"name": exp_dir.name}
    for group_dir in sorted(groups, key=_natural_key):
        rounds = sorted(groups[group_dir], key=lambda t: (t[2].n_labeled or 0, _natural_key(t[0])))
        named = set()
        for round_dir, _, _ in rounds:
            for sel in (round_dir / "selected.txt.manifest.json", round_dir / "selected.jsonl.manifest.json"):
                if sel.is_file():
                    named.add(str(read_manifest(sel).get("args", {}).get("strategy", "")))
        name = group_dir.name if group_dir != exp_dir else (named.pop() if len(named) == 1 else "by hand")
        name = name or "by hand"
        strategies.append(name)
        for index, (round_dir, metrics, m) in enumerate(rounds):
            def beside(file: str) -> Path | None:
                return (round_dir / file) if (round_dir / file).is_file() else None

            runs.append(RoundRun(
                0, name, index, _n_labeled(round_dir, metrics, m.n_labeled), m.miou, round_dir,
                _stage_seconds_by_hand(round_dir, metrics.parent),
                pool_path=beside("pool.h5"), scores_path=beside("scores.h5"), crc_path=beside("crc.json"),
                **_round_files(round_dir),
                per_class_iou=m.per_class_iou,
            ))
            train_manifest = metrics.parent / "manifest.json"
            if "config" not in config and train_manifest.is_file():
                args = read_manifest(train_manifest).get("args", {})
                if args.get("config_path"):
                    config["config"] = str(args["config_path"])
                if args.get("data_root"):
                    config["data_root"] = str(args["data_root"])
    data_root = Path(config["data_root"]) if config.get("data_root") else None
    return Experiment(
        exp_dir=exp_dir, name=exp_dir.name, data_root=data_root, seeds=[0], strategies=strategies, runs=runs,
        full_miou=None, config=config, warnings=[], iterations=found[0][1].iterations,
    )


def _stage_seconds_by_hand(round_dir: Path, work_dir: Path) -> dict[str, float]:
    """Seconds per stage of a hand-made round: the manifests beside its outputs and in its work dir."""
    seconds = _stage_seconds(round_dir)
    manifest = work_dir / "manifest.json"
    if work_dir != round_dir / "train" and manifest.is_file():
        doc = read_manifest(manifest)
        if doc.get("stage") and isinstance(doc.get("seconds"), (int, float)):
            seconds[doc["stage"]] = seconds.get(doc["stage"], 0.0) + float(doc["seconds"])
    return seconds


def _pool_size(exp_dir: Path, config: dict[str, Any], warnings: list[str]) -> int | None:
    """Number of ids in the experiment's pool (``pool_ids``; ``alseg run`` resolves it to EXP/pool.txt when
    the experiment file names none)."""
    value = config.get("pool_ids")
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute():
        path = (exp_dir / path).resolve()
    if not path.is_file():
        warnings.append(f"pool_ids {path} not found; the learning curves show no % of the pool")
        return None
    return len(read_ids(path))


def pool_percent(n_labeled: Any, pool_size: int) -> Any:
    """Labeled-set size as a percentage of the pool: ``100 * n / pool_size`` (arrays too)."""
    return 100.0 * np.asarray(n_labeled, dtype=np.float64) / pool_size if np.ndim(n_labeled) else \
        100.0 * float(n_labeled) / pool_size


def pool_images(percent: Any, pool_size: int) -> Any:
    """The inverse of :func:`pool_percent`."""
    return np.asarray(percent, dtype=np.float64) * pool_size / 100.0 if np.ndim(percent) else \
        float(percent) * pool_size / 100.0


# ---------------------------------------------------------------------------------------------- result


@dataclass
class TableRow:
    strategy: str
    round: int
    n_labeled: float
    miou_mean: float
    miou_std: float
    n_seeds: int
    seconds: dict[str, float]  # mean over seeds, per stage
    labelled_percent: float | None = None  # cost.json, mean over the seeds that recorded it; None: not recorded
    clicks: float | None = None


@dataclass
class AulcRow:
    """One strategy's AULC (mean mIoU over the budget, percent) over seeds, and its paired difference to
    random (``None`` for random itself or without random)."""

    strategy: str
    n_seeds: int
    mean: float
    std: float  # sample std (ddof = 1) over seeds; 0 with one seed
    diff_vs_random: stats.Interval | None


@dataclass
class LabelsSaved:
    """Where a strategy's mean curve first reaches random's final mean mIoU (linear between rounds)."""

    strategy: str
    target_miou: float  # random's final mean mIoU
    random_n_labeled: float  # random's final labeled-set size
    n_labeled: float | None  # None: not reached within the strategy's rounds
    percent: float | None  # n_labeled as % of random_n_labeled
    text: str


@dataclass
class ModelInfo:
    """The model of the experiment, read from its config without building it."""

    config: str | None  # shipped config name, else the file name
    config_path: str | None
    model_type: str | None = None
    backbone: str | None = None
    decode_head: str | None = None
    n_classes: int | None = None
    iterations: int | str | None = None  # training iterations per round (or the rule that sets them)


@dataclass
class ReportResult:
    out_path: str
    png_paths: list[str]
    strategies: list[str]
    seeds: list[int]
    rounds: list[int]
    table: list[TableRow]
    penalty: list[list[float]]  # (S, S), row i beats column j
    phi: list[float]  # (S,)
    rounds_compared: list[list[int]]
    full_supervision_miou: float | None
    gallery_round: int | None
    class_names: list[str] = field(default_factory=list)
    class_shares: dict[str, list[float]] = field(default_factory=dict)  # per strategy, share per class
    warnings: list[str] = field(default_factory=list)
    svg_paths: list[str] = field(default_factory=list)
    pool_size: int | None = None
    model: ModelInfo | None = None
    aulc: list[AulcRow] = field(default_factory=list)
    paired: list[stats.PairedDiff] = field(default_factory=list)  # vs random, per round then AULC (round None)
    paired_strong: list[stats.PairedDiff] = field(default_factory=list)  # the same against strong_baseline
    strong_baseline: str | None = None  # the experiment's (non-oracle) random-stratified strategy, if it ran one
    labels_saved: list[LabelsSaved] = field(default_factory=list)
    rarest_class: str | None = None
    rarest_rule: str = ""
    alseg_version: str = __version__
    costs_recorded: bool = False  # any round folder had a cost.json
    units: dict[str, str] = field(default_factory=dict)  # strategy -> query unit
    annotations: dict[str, str | None] = field(default_factory=dict)  # strategy -> annotation mode (None: not said)
    equal_clicks: list[stats.EqualCost] = field(default_factory=list)  # mIoU at equal clicks, per strategy and level
    equal_pixels: list[stats.EqualCost] = field(default_factory=list)  # the same at equal % of labelled pixels


# --------------------------------------------------------------------------------------------- analysis


def _aulc_rows(records: list[stats.Record], strategies: list[str]) -> list[AulcRow]:
    areas = stats.aulc_by_seed(records)
    diffs = {d.strategy: d.diff for d in stats.paired_vs_baseline(records, BASELINE, CONFIDENCE) if d.round is None}
    rows = []
    for s in strategies:
        values = np.array(list(areas.get(s, {}).values()), dtype=np.float64)
        if not len(values):
            continue
        rows.append(AulcRow(s, len(values), float(values.mean()),
                            float(values.std(ddof=1)) if len(values) >= 2 else 0.0, diffs.get(s)))
    return rows


def _fmt_images(n: float) -> str:
    return f"{n:.1f}".rstrip("0").rstrip(".")


def _labels_saved(curves: dict[str, stats.Curve]) -> list[LabelsSaved]:
    """Per strategy, the labeled-set size where its mean curve reaches random's final mean mIoU."""
    if BASELINE not in curves:
        return []
    base = curves[BASELINE]
    target, budget = float(base.mean[-1]), float(base.n_labeled[-1])
    out = []
    for s, c in curves.items():
        if s == BASELINE:
            out.append(LabelsSaved(s, target, budget, budget, 100.0,
                                   f"reference: {target:.1f} mIoU at {_fmt_images(budget)} images"))
            continue
        n = stats.labels_to_reach(c.n_labeled, c.mean, target)
        if n is None:
            text = (f"does not reach random's final {target:.1f} mIoU within {_fmt_images(c.n_labeled[-1])} "
                    "images (not reached)")
            out.append(LabelsSaved(s, target, budget, None, None, text))
            continue
        pct = 100.0 * n / budget
        out.append(LabelsSaved(s, target, budget, n, pct,
                               f"reaches random's final {target:.1f} mIoU at {_fmt_images(n)} images = "
                               f"{pct:.0f}% of random's {_fmt_images(budget)}"))
    return out


# cost field of RoundRun, x label, words for the title and the table, figure name
COST_AXES = (
    ("labelled_percent", "labelled pixels (% of the pool's pixels)", "labelled pixels", "learning_curves_pixels.png"),
    ("clicks", "estimated clicks (docs/algorithms.md §11.3)", "clicks", "learning_curves_clicks.png"),
)


def _fmt_level(key: str, value: float) -> str:
    if key == "labelled_percent":
        return f"{value:.3g}%"
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 or value >= 100 else f"{value:.1f}"


def _cost_analysis(exp: Experiment) -> dict[str, Any]:
    """Curves against labelled pixels and clicks, and the equal-cost tables: per cost, the levels of
    :func:`stats.cost_levels` (a quarter, a half and all of the way from the common start to the largest cost
    every curve reaches, then the largest any curve reaches), each strategy's mean curve read there, and its
    paired difference to ``random`` (else to the first strategy with costs) over seeds."""
    curves: dict[str, dict[str, stats.Curve]] = {}
    figures: dict[str, tuple[str, str, str]] = {}
    equal: dict[str, dict[str, Any]] = {}
    for key, xlabel, what, figure in COST_AXES:
        c = stats.learning_curves(exp.runs, x=key)
        curves[key] = c
        equal[key] = {"key": key, "what": what, "levels": [], "labels": [], "baseline": None, "rows": [], "table": [],
                      "without": [s for s in exp.strategies if s not in c]}
        if not c:
            continue
        figures[figure] = (key, xlabel, what)
        levels = stats.cost_levels(c)
        ref = BASELINE if BASELINE in c else next(iter(c))
        rows = stats.at_equal_cost(exp.runs, key, levels, baseline=ref, confidence=CONFIDENCE)
        table = []
        for s, curve in c.items():
            cells = []
            for level in levels:
                row = next(r for r in rows if r.strategy == s and r.level == level)
                why = None
                if row.miou is None:
                    why = "starts above" if level < curve.x[0] else "not reached"
                cells.append({"row": row, "why": why})
            table.append({"strategy": s, "end": _fmt_level(key, float(curve.x[-1])), "cells": cells})
        equal[key].update(levels=levels, labels=[_fmt_level(key, v) for v in levels], baseline=ref, rows=rows,
                          table=table)
    return {"curves": curves, "figures": figures, "equal": equal}


def _units_text(units: dict[str, str]) -> str:
    if len(set(units.values())) == 1:
        return f"{next(iter(units.values()))} (every strategy)"
    return "; ".join(f"{s}: {u}" for s, u in units.items())


def _annotation_text(units: dict[str, str], annotations: dict[str, str | None]) -> str:
    regions = {s: annotations.get(s) or "precise (not recorded; alseg's default)" for s, u in units.items()
               if u != "image"}
    if not regions:
        return "whole images (full masks)"
    if len(set(regions.values())) == 1:
        return f"{next(iter(regions.values()))} (region units); whole images: full masks"
    return "; ".join(f"{s}: {a}" for s, a in regions.items()) + "; whole images: full masks"


def _model_info(exp: Experiment, warnings: list[str]) -> ModelInfo:
    """Config name and model types from the experiment's config, read by mmengine (the model is not built)."""
    value = exp.config.get("config")
    iterations = exp.config.get("max_iters") or exp.iterations
    if exp.config.get("iters_per_image") is not None and exp.config.get("max_iters") is not None:
        iterations = f"max({exp.config['max_iters']}, {exp.config['iters_per_image']} × labeled images)"
    if not value:
        return ModelInfo(None, None, iterations=iterations)
    path = Path(str(value))
    if not path.is_absolute() and not str(value).startswith("mmseg::"):
        path = (exp.exp_dir / path).resolve() if (exp.exp_dir / path).is_file() else Path(str(value))
    name = path.stem
    try:
        from alseg import mm

        found = mm.find_config(path)
        try:
            name = found.resolve().relative_to(mm.configs_root().resolve()).with_suffix("").as_posix()
        except ValueError:
            name = found.stem
        cfg = mm.load_config(found, cfg_options=exp.config.get("cfg_options") or None)
    except Exception as exc:  # a config that moved or no longer parses must not stop the report
        warnings.append(f"config {value} could not be read ({type(exc).__name__}: {exc}); the header names no model")
        return ModelInfo(name, str(value), iterations=iterations)
    model = cfg.get("model") or {}

    def type_of(part: Any) -> str | None:
        if isinstance(part, (list, tuple)):  # cascade decode heads
            return " + ".join(str(p.get("type")) for p in part)
        return None if not part else str(part.get("type"))

    head = model.get("decode_head")
    n_classes = head.get("num_classes") if isinstance(head, dict) else None
    if iterations is None and cfg.get("train_cfg"):
        iterations = cfg.train_cfg.get("max_iters")
    return ModelInfo(name, str(found), type_of(model) if model else None, type_of(model.get("backbone")),
                     type_of(head), int(n_classes) if n_classes is not None else None,
                     iterations if iterations is None or isinstance(iterations, str) else int(iterations))


def _class_curves(exp: Experiment, names: list[str]) -> dict[str, dict[str, stats.Curve]]:
    """``{class: {strategy: Curve}}`` of per-class IoU (mean ± std over seeds), through the same
    :func:`stats.learning_curves` as mIoU; a run without that class's IoU (absent from val) is left out."""
    out: dict[str, dict[str, stats.Curve]] = {}
    for name in names:
        records = [stats.Record(r.seed, r.strategy, r.round, r.n_labeled, r.per_class_iou[name])
                   for r in exp.runs if r.per_class_iou.get(name) is not None]
        if records:
            out[name] = stats.learning_curves(records)
    return out


def _rarest_class(exp: Experiment, names: list[str], pixel_counts: np.ndarray | None,
                  class_curves: dict[str, dict[str, stats.Curve]]) -> tuple[str | None, str]:
    """The rarest class and the rule that picked it (said in the report).

    First choice: the smallest pixel share in the round-0 labeled images (one random sample of the pool
    per seed, the same for every strategy; ties: the first class), among the classes with an IoU in every
    run (a class absent from the val images has no IoU, so no curve to read). Without masks: the lowest
    full-supervision IoU; without that, the lowest final mean IoU of random (else the first strategy).
    """
    if pixel_counts is not None and pixel_counts.sum() > 0 and len(names) == len(pixel_counts):
        shares = pixel_counts / pixel_counts.sum()
        scored = [k for k, c in enumerate(names) if all(r.per_class_iou.get(c) is not None for r in exp.runs)]
        candidates = scored or list(range(len(names)))
        k = min(candidates, key=lambda j: (shares[j], j))
        rule = (f"smallest pixel share in the round-0 labeled images of all seeds "
                f"({100 * shares[k]:.2f}% of their labeled pixels)")
        skipped = [names[j] for j in range(len(names)) if j not in candidates and shares[j] < shares[k]]
        if skipped:
            rule += f" among the classes with an IoU in every run (rarer, without: {', '.join(skipped)})"
        return names[k], rule
    full = {c: v for c, v in exp.full_per_class_iou.items() if v is not None}
    if full:
        c = min(full, key=full.get)
        return c, f"lowest full-supervision IoU ({full[c]:.1f}); no masks to count pixels"
    last: dict[str, float] = {}
    for c, per in class_curves.items():
        curve = per.get(BASELINE) or next(iter(per.values()))
        last[c] = float(curve.mean[-1])
    if last:
        c = min(last, key=last.get)
        return c, f"lowest final mean IoU ({last[c]:.1f}); no masks and no full-supervision run"
    return None, "no per-class IoU in the metrics"


# --------------------------------------------------------------------------------------------- drawing

# Print-sized text: >= 11 pt at the figure's own size (the PNG shows at 100 dpi, 1 inch = 100 px).
_RC = {
    "font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "xtick.labelsize": 11, "ytick.labelsize": 11,
    "legend.fontsize": 11, "legend.title_fontsize": 11, "figure.titlesize": 13,
    "svg.hashsalt": "alseg",  # stable ids inside the SVGs: the same report twice gives the same files
}
SMALL = 11  # the smallest font size any figure uses


class _Style:
    """Colours shared by every figure."""

    def __init__(self, strategies: list[str], class_names: list[str], palette: np.ndarray):
        from matplotlib import colormaps

        cmap = colormaps["tab10"]
        self.strategy_color = {s: cmap(i % 10) for i, s in enumerate(strategies)}
        self.class_names = class_names
        self.palette = palette  # (K, 3) uint8


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _fig_bytes(fig, fmt: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=100, metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()


def _class_info(exp: Experiment, runs: list[RoundRun]) -> tuple[list[str], np.ndarray, int]:
    """Class names, palette (K,3) uint8 and ignore index: classes.json, else a pool file, else tab20."""
    names: list[str] | None = None
    palette = None
    ignore = 255
    if exp.data_root is not None and (exp.data_root / "classes.json").is_file():
        path = exp.data_root / "classes.json"
        doc = _read_json(path)
        names = doc.get("classes") or doc.get("class_names") if isinstance(doc, dict) else None
        if not names:
            raise InputError(f"{path}: has no 'classes' list")
        names = [str(n) for n in names]
        if doc.get("palette"):
            palette = np.asarray(doc["palette"], dtype=np.int64)
            if palette.shape != (len(names), 3):
                raise InputError(f"{path}: palette must be {len(names)} [r, g, b] triples")
        ignore = int(doc.get("ignore_index", 255))
    if names is None:
        for r in runs:
            if r.pool_path is not None:
                from alseg.files.hdf5 import PoolReader

                with PoolReader(r.pool_path) as pool:
                    names, ignore = list(pool.class_names), pool.ignore_index
                break
    if names is None:
        for r in runs:
            if r.crc_path is not None:
                from alseg.files.calibration import read_calibration

                names = list(read_calibration(r.crc_path)["class_names"])
                break
    if names is None:
        names = []
    if palette is None:
        from matplotlib import colormaps

        cmap = colormaps["tab20"]
        palette = np.array([[int(255 * c) for c in cmap(k % 20)[:3]] for k in range(max(len(names), 1))])
    return names, palette.astype(np.uint8), ignore


def _find_file(folder: Path, image_id: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{image_id}{suffix}"
        if path.is_file():
            return path
    raise InputError(f"{folder / (image_id + '.png')}: not found (id {image_id!r})")


def _load_image(data_root: Path, image_id: str) -> np.ndarray:
    from PIL import Image

    with Image.open(_find_file(data_root / "img_dir", image_id)) as im:
        return np.asarray(im.convert("RGB"))


def _load_mask(data_root: Path, image_id: str) -> np.ndarray:
    from PIL import Image

    path = _find_file(data_root / "ann_dir", image_id)
    with Image.open(path) as im:
        mask = np.asarray(im)
    if mask.ndim != 2:
        raise InputError(f"{path}: a mask must be one channel of class indices, got shape {mask.shape}")
    return mask


def _colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    out = np.full(label.shape + (3,), 255, dtype=np.uint8)  # ignore / unknown classes: white
    valid = label < len(palette)
    out[valid] = palette[label[valid]]
    return out


def _upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (h, w) map to ``shape``."""
    h, w = a.shape
    rows = np.minimum((np.arange(shape[0]) * h) // shape[0], h - 1)
    cols = np.minimum((np.arange(shape[1]) * w) // shape[1], w - 1)
    return a[rows][:, cols]


def _legend_right(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _fig_curves(exp: Experiment, curves: dict[str, stats.Curve], style: _Style):
    fig = _new_figure(9.0, 5.0)
    ax = fig.add_subplot()
    for s, c in curves.items():
        color = style.strategy_color[s]
        ax.plot(c.n_labeled, c.mean, marker="o", color=color, label=s)
        ax.fill_between(c.n_labeled, np.clip(c.mean - c.std, 0, 100), np.clip(c.mean + c.std, 0, 100), color=color,
                        alpha=0.18, linewidth=0)  # mIoU lives in [0, 100]
    if exp.full_miou is not None:
        ax.axhline(exp.full_miou, color="black", linestyle="--", linewidth=1.2,
                   label=f"full supervision ({exp.full_miou:.1f})")
    ax.set_xlabel("labeled images")
    ax.set_ylabel("mIoU (%)")
    if exp.pool_size:
        pool = exp.pool_size
        top = ax.secondary_xaxis("top", functions=(lambda n: pool_percent(n, pool), lambda p: pool_images(p, pool)))
        top.set_xlabel(f"% of the pool ({pool} images)")
    n = len(exp.seeds)
    ax.set_title(f"mIoU vs labeled images (mean ± std over {n} seed{'s' if n != 1 else ''})")
    ax.grid(True, alpha=0.3)
    _legend_right(ax)
    return fig


def _fig_class_curves(class_curves: dict[str, dict[str, stats.Curve]], shown: list[str], rarest: str | None,
                      full: dict[str, float | None], style: _Style, missing: dict[str, str]):
    """Small multiples: one panel per class, mean IoU over seeds per strategy (band: ± std). ``missing``:
    a note per class whose IoU some runs lack (absent from the val images)."""
    ncols = min(3, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = _new_figure(3.3 * ncols + 1.8, 2.7 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    for k, name in enumerate(shown):
        ax = axes[k // ncols][k % ncols]
        for s, c in class_curves[name].items():
            color = style.strategy_color.get(s, "grey")
            ax.plot(c.n_labeled, c.mean, marker="o", markersize=3.5, color=color, label=s)
            ax.fill_between(c.n_labeled, np.clip(c.mean - c.std, 0, 100), np.clip(c.mean + c.std, 0, 100),
                            color=color, alpha=0.12, linewidth=0)  # IoU lives in [0, 100]
        if full.get(name) is not None:
            ax.axhline(full[name], color="black", linestyle="--", linewidth=1.0, label="full supervision")
        is_rarest = name == rarest
        title = f"{name} (rarest)" if is_rarest else name
        ax.set_title(title + (f"\n{missing[name]}" if name in missing else ""),
                     color="firebrick" if is_rarest else "black", fontweight="bold" if is_rarest else "normal")
        ax.grid(True, alpha=0.3)
        if k % ncols == 0:
            ax.set_ylabel("IoU (%)")
        if k // ncols == nrows - 1 or k + ncols >= len(shown):
            ax.set_xlabel("labeled images")
            ax.tick_params(labelbottom=True)
    for k in range(len(shown), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", frameon=False)
    fig.suptitle("IoU per class vs labeled images (mean ± std over seeds)")
    return fig


def _strategy_base(exp: Experiment, name: str) -> str:
    """The registered strategy behind a folder name (a variant names it with ``strategy = ...``)."""
    opts = exp.config.get("params", {}).get(name, {})
    return str(opts.get("strategy", name)) if isinstance(opts, dict) else name


def _recorded(exp: Experiment, name: str, key: str) -> str | None:
    """The value of ``key`` most of a strategy's selecting rounds recorded in cost.json (ties: the first)."""
    values = [getattr(r, key) for r in exp.runs if r.strategy == name and r.round >= 1 and getattr(r, key)]
    return max(dict.fromkeys(values), key=values.count) if values else None


def _declared(exp: Experiment, name: str, key: str) -> str | None:
    """``[params.NAME] key``, else the experiment's top-level ``key``."""
    opts = exp.config.get("params", {}).get(name, {})
    if isinstance(opts, dict) and opts.get(key):
        return str(opts[key])
    return str(exp.config[key]) if exp.config.get(key) else None


def strategy_unit(exp: Experiment, name: str) -> str:
    """A strategy's query unit: what its rounds recorded (cost.json), else ``[params.NAME] unit``, else the
    experiment's ``unit``, else ``image``."""
    return _recorded(exp, name, "unit") or _declared(exp, name, "unit") or "image"


def strategy_annotation(exp: Experiment, name: str) -> str | None:
    """A strategy's annotation mode (``precise`` | ``dominant``): recorded, else declared; None: not said."""
    return _recorded(exp, name, "annotation") or _declared(exp, name, "annotation")


def is_oracle(exp: Experiment, name: str) -> bool:
    """A simulation-only strategy (``oracle = true`` in its params): every table and figure marks it."""
    opts = exp.config.get("params", {}).get(name, {})
    return isinstance(opts, dict) and bool(opts.get("oracle", False))


def strong_baseline(exp: Experiment) -> str | None:
    """The second reference: the first strategy that is ``random-stratified`` and not its oracle."""
    return next((s for s in exp.strategies if _strategy_base(exp, s) == STRONG_BASELINE and not is_oracle(exp, s)),
                None)


def _paired_set(paired: list[stats.PairedDiff], baseline: str, figure: str) -> dict[str, Any]:
    """One baseline's table: per strategy the paired difference (and p-value) per round and of the AULC."""
    per_round = [d for d in paired if d.round is not None]
    return {
        "baseline": baseline, "figure": figure,
        "rounds": sorted({(d.round, d.n_labeled) for d in per_round}),
        "rows": [{"strategy": s,
                  "cells": {d.round: d for d in per_round if d.strategy == s},
                  "aulc": next((d for d in paired if d.strategy == s and d.round is None), None)}
                 for s in dict.fromkeys(d.strategy for d in paired)],
    }


def _fig_paired(paired: list[stats.PairedDiff], style: _Style, baseline: str = BASELINE):
    """Per round: strategy - ``baseline`` (same seed), mean and 95% CI."""
    fig = _new_figure(9.0, 4.6)
    ax = fig.add_subplot()
    per = [d for d in paired if d.round is not None]
    strategies = list(dict.fromkeys(d.strategy for d in per))
    xs = sorted({d.n_labeled for d in per})
    step = (min(np.diff(xs)) if len(xs) > 1 else 1.0) * 0.06
    for i, s in enumerate(strategies):
        mine = [d for d in per if d.strategy == s]
        x = np.array([d.n_labeled for d in mine]) + (i - (len(strategies) - 1) / 2) * step
        y = np.array([d.diff.mean for d in mine])
        lo = np.array([d.diff.low for d in mine])
        hi = np.array([d.diff.high for d in mine])
        has_ci = np.isfinite(lo) & np.isfinite(hi)
        yerr = np.vstack([np.where(has_ci, y - lo, 0), np.where(has_ci, hi - y, 0)])
        ax.errorbar(x, y, yerr=yerr, marker="o", capsize=4, color=style.strategy_color[s], label=s)
    # With few seeds an interval can be ten times the differences (t = 12.7 for 2 seeds): the view follows the
    # means, and an interval running past it ends in an arrow (the table gives it in full).
    means = np.array([d.diff.mean for d in per] + [0.0])
    span = max(float(np.ptp(means)), 2.0)
    ylo, yhi = means.min() - 1.5 * span, means.max() + 1.5 * span
    bounds = np.array([[d.diff.low, d.diff.high] for d in per], dtype=np.float64)
    finite = bounds[np.isfinite(bounds)]
    if finite.size:
        ylo, yhi = max(ylo, finite.min() - 0.1 * span), min(yhi, finite.max() + 0.1 * span)
    ylo, yhi = min(ylo, means.min() - 0.1 * span), max(yhi, means.max() + 0.1 * span)
    ax.set_ylim(ylo, yhi)
    for i, s in enumerate(strategies):
        for d in (d for d in per if d.strategy == s):
            x = d.n_labeled + (i - (len(strategies) - 1) / 2) * step
            if np.isfinite(d.diff.high) and d.diff.high > yhi:
                ax.plot([x], [yhi], marker="^", color=style.strategy_color[s], markersize=9, clip_on=False)
            if np.isfinite(d.diff.low) and d.diff.low < ylo:
                ax.plot([x], [ylo], marker="v", color=style.strategy_color[s], markersize=9, clip_on=False)
    ax.axhline(0, color="black", linewidth=1)
    ax.set_xlabel("labeled images")
    ax.set_ylabel(f"mIoU − {baseline} mIoU (points)")
    ax.set_title(f"paired difference to {baseline} (same seed): mean and {100 * CONFIDENCE:.0f}% CI", pad=14)
    ax.grid(True, alpha=0.3)
    _legend_right(ax)
    return fig


def _fig_penalty(pm: stats.PenaltyMatrix):
    s = len(pm.strategies)
    fig = _new_figure(max(5.0, 1.2 * s + 3.0), max(3.8, 0.8 * (s + 1) + 2.0))
    ax = fig.add_subplot()
    data = np.vstack([pm.P, pm.phi[None, :]])
    im = ax.imshow(data, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    for i in range(s + 1):
        for j in range(s):
            if i == j:
                ax.text(j, i, "—", ha="center", va="center", color="grey")
                continue
            v = data[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v > 0.6 else "black")
    ax.axhline(s - 0.5, color="black", linewidth=2)
    ax.set_xticks(range(s), pm.strategies, rotation=30, ha="right")
    ax.set_yticks(range(s + 1), list(pm.strategies) + ["Φ (mean)"])
    ax.set_xlabel("j (beaten)")
    ax.set_ylabel("i (better)")
    ax.set_title("share of rounds where i is\nsignificantly better than j (over seeds)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of rounds")
    return fig


def _fig_gallery(rows: list[dict[str, Any]], has_pool: bool, style: _Style, title: str):
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    cols = ["image", "ground truth", "prediction", "uncertainty"] if has_pool else ["image", "ground truth"]
    n = len(rows)
    fig = _new_figure(2.4 * len(cols) + (1.2 if has_pool else 0.4), 2.4 * n + 0.6)
    fig.suptitle(title)
    axes = fig.subplots(n, len(cols), squeeze=False)
    for r, row in enumerate(rows):
        for c, col in enumerate(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if col == "image":
                ax.imshow(row["image"], interpolation="nearest")
                ax.set_ylabel(f"#{r + 1} {row['id']}", fontsize=SMALL)
            elif col == "prediction":
                ax.imshow(_colorize(row["pred"], style.palette), interpolation="nearest")
            elif col == "uncertainty":  # opaque, so the colour bar reads the values directly
                ax.imshow(row["unc"], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xlabel(row["unc_kind"], fontsize=SMALL)
            else:
                ax.imshow(_colorize(row["gt"], style.palette), interpolation="nearest")
            if r == 0:
                ax.set_title(col)
    if has_pool:  # one scale for the column: CRC risk maps and normalised entropy both lie in [0, 1]
        fig.colorbar(ScalarMappable(Normalize(0, 1), "magma"), ax=[axes[r][-1] for r in range(n)],
                     location="right", shrink=min(1.0, 2.0 / n) if n > 1 else 0.9, aspect=15,
                     label="uncertainty (0 low, 1 high)")
    return fig


def _fig_cost_curves(exp: Experiment, curves: dict[str, stats.Curve], style: _Style, units: dict[str, str],
                     xlabel: str, what: str):
    """mIoU against an annotation cost (``Curve.x``: mean over seeds per round), mean ± std over seeds."""
    fig = _new_figure(9.0, 5.0)
    ax = fig.add_subplot()
    for s, c in curves.items():
        color = style.strategy_color[s]
        ax.plot(c.x, c.mean, marker="o", color=color, label=f"{s} ({units.get(s, 'image')})")
        ax.fill_between(c.x, np.clip(c.mean - c.std, 0, 100), np.clip(c.mean + c.std, 0, 100), color=color,
                        alpha=0.18, linewidth=0)
    if exp.full_miou is not None:
        ax.axhline(exp.full_miou, color="black", linestyle="--", linewidth=1.2,
                   label=f"full supervision ({exp.full_miou:.1f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mIoU (%)")
    n = len(exp.seeds)
    ax.set_title(f"mIoU vs {what} (mean ± std over {n} seed{'s' if n != 1 else ''})")
    ax.grid(True, alpha=0.3)
    _legend_right(ax)
    return fig


SELECTED_RGB = (255, 140, 0)  # this round's regions in the region gallery (orange)
BEFORE_RGB = (30, 144, 255)  # regions labelled in earlier rounds (blue)


def _outline(mask: np.ndarray, region_map: np.ndarray | None, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels (4-steps, inside the mask) of its border: a 4-neighbour outside
    it, off the image, or in another region of ``region_map``."""
    pad = np.pad(mask, 1, constant_values=False)
    edge = mask & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    if region_map is not None:
        rm = np.asarray(region_map)
        rp = np.pad(rm, 1, mode="edge")
        edge |= mask & ((rp[:-2, 1:-1] != rm) | (rp[2:, 1:-1] != rm) | (rp[1:-1, :-2] != rm) | (rp[1:-1, 2:] != rm))
    for _ in range(width - 1):
        e = np.pad(edge, 1, constant_values=False)
        edge = edge | (mask & (e[:-2, 1:-1] | e[2:, 1:-1] | e[1:-1, :-2] | e[1:-1, 2:]))
    return edge


def region_overlay(image: np.ndarray, selected: np.ndarray, before: np.ndarray | None = None,
                   region_map: np.ndarray | None = None, *, alpha: float = 0.45) -> np.ndarray:
    """The image (H, W, 3) uint8 with ``selected`` (H, W) bool filled translucent orange and outlined in dark
    orange (its border and the borders between its regions of ``region_map``), and ``before`` (labelled in
    earlier rounds) filled translucent blue with a blue outline. The lines are about 1/200 of the image's
    larger side wide (at least 1 px), so they survive the gallery's downscaling. Pixels in neither mask keep
    their values."""
    image = np.asarray(image)
    sel = np.asarray(selected, dtype=bool)
    width = max(1, round(max(sel.shape) / 200))
    out = image.astype(np.float64)
    if before is not None:
        old = np.asarray(before, dtype=bool) & ~sel
        out[old] = (1 - alpha) * out[old] + alpha * np.asarray(BEFORE_RGB, dtype=np.float64)
        out[_outline(old, None, width)] = np.asarray(BEFORE_RGB, dtype=np.float64) * 0.75
    out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(SELECTED_RGB, dtype=np.float64)
    out[_outline(sel, region_map, width)] = np.asarray(SELECTED_RGB, dtype=np.float64) * 0.75
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class _RegionMaps:
    """Region maps for drawing a run's regions: patches from the image size; superpixels from the store the
    select manifest names, else one beside the round's pool file, in the strategy's other rounds or under
    ``EXP/regions/`` that holds the image. Open stores are kept until :meth:`close`."""

    def __init__(self, exp_dir: Path):
        self.exp_dir = exp_dir
        self._readers: dict[Path, Any] = {}
        self._found: dict[tuple[Path, str], list[Path]] = {}

    def _reader(self, path: Path):
        from alseg.files.regionmaps import RegionMapReader

        if path not in self._readers:
            try:
                self._readers[path] = RegionMapReader(path)
            except InputError:
                self._readers[path] = None
        return self._readers[path]

    def candidates(self, run: RoundRun, unit: str) -> list[Path]:
        key = (run.round_dir, unit)
        if key not in self._found:
            self._found[key] = self._candidates(run, unit)
        return self._found[key]

    def _candidates(self, run: RoundRun, unit: str) -> list[Path]:
        from alseg.files.regionmaps import region_maps_path

        paths: list[Path] = []
        if run.selected_path is not None:
            manifest = run.selected_path.with_name(run.selected_path.name + ".manifest.json")
            if manifest.is_file():
                doc = read_manifest(manifest)
                store = (doc.get("result") or {}).get("region_maps")
                if store and (doc.get("result") or {}).get("unit") == unit:
                    paths.append(Path(store))
                pool = (doc.get("args") or {}).get("pool_path")
                if pool:
                    paths.append(region_maps_path(pool, unit))
        paths.append(region_maps_path(run.round_dir / "pool.h5", unit))
        slug = unit.replace(":", "-")
        paths += sorted(run.round_dir.parent.glob(f"round-*/*.regions-{slug}.h5"))
        if (self.exp_dir / "regions").is_dir():
            paths += sorted((self.exp_dir / "regions").rglob("*.h5"))
        return list(dict.fromkeys(p for p in paths if p.is_file()))

    def lookup(self, run: RoundRun):
        """A ``(unit, image_id, shape) -> region map`` for :func:`alseg.files.labelled.labelled_mask`."""
        from alseg.regions import patch_map
        from alseg.units import parse_unit

        def find(unit: str, image_id: str, shape: tuple[int, int]) -> np.ndarray:
            u = parse_unit(unit)
            if u.kind == "patch":
                return patch_map(shape[0], shape[1], u.size)
            for path in self.candidates(run, str(u)):
                reader = self._reader(path)
                if reader is not None and reader.unit == str(u) and image_id in reader \
                        and reader.shape(image_id) == tuple(shape):
                    return reader.region_map(image_id)
            raise InputError(f"no {u} region map of {image_id!r} found (select manifest, beside "
                             f"{run.round_dir / 'pool.h5'}, the strategy's other rounds, {self.exp_dir / 'regions'})")

        return find

    def close(self) -> None:
        for reader in self._readers.values():
            if reader is not None:
                reader.close()
        self._readers.clear()


def _region_rows(run: RoundRun, exp: Experiment, maps: _RegionMaps, style: _Style, n: int,
                 mask: Callable[[str], np.ndarray]) -> list[dict[str, Any]]:
    """The first ``n`` images of a region round (order of first pick) with their regions drawn: this round's
    (``selected.jsonl``), and those labelled before (``labeled.jsonl`` minus this round's)."""
    from alseg.files.labelled import labelled_mask, read_labelled
    from alseg.units import parse_unit

    new = read_labelled(run.selected_path)
    cumulative = read_labelled(run.labeled_path) if run.labeled_path is not None else None
    lookup = maps.lookup(run)
    rows = []
    for image_id in new.ids[:n]:
        image = _load_image(exp.data_root, image_id)
        shape = image.shape[:2]
        sel = labelled_mask(new, image_id, shape, lookup)
        before = None
        if cumulative is not None:
            try:
                before = labelled_mask(cumulative, image_id, shape, lookup) & ~sel
            except InputError:  # an earlier unit's maps are gone: draw this round's regions only
                before = None
        units = list(new.images[image_id])
        region_map = None
        if units and parse_unit(units[0]).has_region_map:
            region_map = lookup(units[0], image_id, shape)
        labelled = sel if before is None else (sel | before)
        gt = _colorize(mask(image_id), style.palette)
        gt[~labelled] = 230  # unlabelled: light grey
        points = np.argwhere(sel) if units and parse_unit(units[0]).kind == "pixel" else None
        rows.append({"id": image_id, "overlay": region_overlay(image, sel, before, region_map), "labels": gt,
                     "n_regions": sum(len(r) for r in new.images[image_id].values()), "pixels": int(sel.sum()),
                     "points": points})
    return rows


def _fig_region_gallery(rows: list[dict[str, Any]], title: str):
    cols = ["regions: this round / before", "ground truth where labelled"]
    n = len(rows)
    fig = _new_figure(2.6 * len(cols) + 0.6, 2.4 * n + 0.6)
    fig.suptitle(title)
    axes = fig.subplots(n, len(cols), squeeze=False)
    for r, row in enumerate(rows):
        for c, col in enumerate(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(row["overlay"] if c == 0 else row["labels"], interpolation="nearest")
            if c == 0:
                if row["points"] is not None and len(row["points"]):  # single pixels: circled to be seen
                    ax.scatter(row["points"][:, 1], row["points"][:, 0], s=40, facecolors="none",
                               edgecolors=[c_ / 255 for c_ in SELECTED_RGB], linewidths=1.5)
                ax.set_ylabel(f"#{r + 1} {row['id']}", fontsize=SMALL)
                n = row["n_regions"]
                ax.set_xlabel(f"{n} region{'s' if n != 1 else ''}, {row['pixels']} px", fontsize=SMALL)
            if r == 0:
                ax.set_title(col, fontsize=SMALL)
    return fig


def _fig_class_hist(shares: dict[str, np.ndarray], style: _Style):
    k = len(style.class_names)
    s = len(shares)
    fig = _new_figure(max(8.0, 0.3 * k * max(s, 1) + 2.5), 4.6)
    ax = fig.add_subplot()
    width = 0.8 / max(s, 1)
    x = np.arange(k)
    for i, (name, share) in enumerate(shares.items()):
        ax.bar(x + (i - (s - 1) / 2) * width, share, width, label=name, color=style.strategy_color[name])
    ax.set_xticks(x, style.class_names, rotation=30 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_ylabel("share of labeled pixels")
    ax.set_title("ground-truth pixels of the selected images (all rounds, all seeds)")
    ax.grid(True, axis="y", alpha=0.3)
    _legend_right(ax)
    return fig


def _fig_crc_thresholds(cal: dict[str, Any], style: _Style):
    names = list(cal["class_names"])
    k = len(names)
    t = np.asarray(cal["thresholds"], dtype=np.float64)
    unc = np.asarray(cal["uncalibrated"], dtype=bool)
    fig = _new_figure(max(8.0, 0.8 * k + 3), 4.4)
    ax = fig.add_subplot()
    colors = [tuple(c / 255 for c in style.palette[i % len(style.palette)]) for i in range(k)]
    top = max(1.0, float(t.max(initial=0)) + 0.1)
    n_img = list(cal.get("n_images") or [None] * k)
    for i in np.flatnonzero(unc):  # a hatched column behind the (zero) threshold marks the class
        ax.bar(i, top, color="whitesmoke", edgecolor="firebrick", hatch="//", linewidth=0.8, zorder=0)
        ax.text(i, 0.5 * top, f"uncalibrated (n = {n_img[i]})", ha="center", va="center", fontsize=SMALL,
                rotation=90, color="firebrick", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
    ax.bar(np.arange(k), t, color=colors, edgecolor="black", zorder=2)
    ax.axhline(float(cal["t_min"]), color="grey", linestyle=":", linewidth=1,
               label=f"t_min = {cal['t_min']} (uncalibrated classes only)")
    ax.set_xticks(np.arange(k), names, rotation=30 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_ylim(0, top)
    ax.set_ylabel("threshold t̂_k")
    ax.set_title(f"CRC thresholds per class (α = {cal['alpha']}; hatched = uncalibrated)")
    _legend_right(ax)
    return fig


def _fig_crc_risk(cal: dict[str, Any], style: _Style):
    names = list(cal["class_names"])
    grid = np.asarray(cal["grid"], dtype=np.float64)
    risk = np.asarray(cal["risk"], dtype=np.float64)
    unc = np.asarray(cal["uncalibrated"], dtype=bool)
    fig = _new_figure(9.5, 5.0)
    ax = fig.add_subplot()
    for i, name in enumerate(names):
        color = tuple(c / 255 for c in style.palette[i % len(style.palette)])
        ax.plot(grid, risk[i], color=color, linestyle="--" if unc[i] else "-", linewidth=1.6,
                label=name + (" (uncalibrated)" if unc[i] else ""))
        if not unc[i]:
            ax.plot([cal["thresholds"][i]], [np.interp(cal["thresholds"][i], grid, risk[i])], "o", color=color)
    ax.axhline(float(cal["alpha"]), color="black", linestyle=":", linewidth=1.2, label=f"α = {cal['alpha']}")
    ax.set_xlabel("threshold t")
    ax.set_ylabel("empirical risk R̂_k(t) (mean FNR)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("empirical risk curves (dots: chosen thresholds)")
    ax.grid(True, alpha=0.3)
    ax.legend(ncols=2 if len(names) > 12 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------- report


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _is_num(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _f_num(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if _is_num(x) else "—"


def _f_signed(x: Any, digits: int = 2) -> str:
    return f"{x:+.{digits}f}" if _is_num(x) else "—"


def _f_ci(iv: stats.Interval | None, digits: int = 2) -> str:
    if iv is None:
        return "—"
    if iv.n < 2:
        return "n/a"
    return f"[{iv.low:+.{digits}f}, {iv.high:+.{digits}f}]"


def _f_p(p: Any) -> str:
    if not _is_num(p):
        return "p —"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _f_seconds(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def _verdict(iv: stats.Interval | None) -> str:
    if iv is None:
        return ""
    if iv.n < 2:
        return "n/a (1 seed: no interval)"
    if iv.low > 0:
        return "better than random"
    if iv.high < 0:
        return "worse than random"
    return "no significant difference"


def render_html(context: dict[str, Any]) -> str:
    """The report page from ``alseg/templates/report.html.j2`` (autoescape on: every value is escaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("alseg", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(num=_f_num, signed=_f_signed, ci=_f_ci, seconds=_f_seconds, verdict=_verdict, pvalue=_f_p)
    return env.get_template("report.html.j2").render(**context)


def report(
    exp_dir: str | Path,
    *,
    out_path: str | Path,
    gallery_round: int | None = None,
    gallery_size: int = 6,
    overwrite: bool = False,
    progress: Callable[..., None] = _noop,
) -> ReportResult:
    """Write the HTML report of ``exp_dir`` to ``out_path`` and its figures (PNG and SVG) to
    ``<out stem>_files/``.

    ``gallery_round``: the round whose selections the gallery shows (default: the last round of the
    first seed that has a ``pool.h5``); ``gallery_size``: top-ranked selected ids shown per strategy.
    """
    from matplotlib import rc_context

    out_path = Path(out_path)
    files_dir = out_path.with_name(out_path.stem + "_files")
    check_not_input([out_path, files_dir], [exp_dir])
    if out_path.is_file() and out_path.suffix.lower() not in (".html", ".htm") and Path(exp_dir).resolve() in \
            out_path.resolve().parents:
        raise OutputError(f"{out_path}: is a file of the experiment the report reads; write the report elsewhere")
    if not overwrite:
        if out_path.exists():
            raise OutputExistsError(f"{out_path}: output exists; pass --overwrite to replace it")
        if files_dir.is_dir() and any(files_dir.iterdir()):
            raise OutputExistsError(f"{files_dir}: output exists; pass --overwrite to replace it")
    if gallery_size < 1:
        raise InputError(f"gallery size must be >= 1, got {gallery_size}")

    exp = collect(exp_dir)
    warnings = list(exp.warnings)
    records = exp.records()
    curves = stats.learning_curves(records)
    pm = stats.penalty_matrix(records)
    paired = stats.paired_vs_baseline(records, BASELINE, CONFIDENCE)
    strong = strong_baseline(exp)
    paired_strong = stats.paired_vs_baseline(records, strong, CONFIDENCE) if strong else []
    aulc_rows = _aulc_rows(records, exp.strategies)
    saved = _labels_saved(curves)
    units = {s: strategy_unit(exp, s) for s in exp.strategies}
    annotations = {s: strategy_annotation(exp, s) for s in exp.strategies}
    has_costs = any(r.has_cost for r in exp.runs)
    cost = _cost_analysis(exp) if has_costs else None
    model = _model_info(exp, warnings)
    names, palette, ignore = _class_info(exp, exp.runs)
    if not names:  # no classes.json, pool file or calibration: the metrics name the classes
        names = list(next((r.per_class_iou for r in exp.runs if r.per_class_iou), {}))
        if names:
            from matplotlib import colormaps

            palette = np.array([[int(255 * c) for c in colormaps["tab20"](k % 20)[:3]] for k in range(len(names))],
                               dtype=np.uint8)
    style = _Style(exp.strategies, names, palette)
    first_seed = exp.seeds[0]
    has_data = exp.data_root is not None and exp.data_root.is_dir()
    if not has_data:
        warnings.append(f"data_root {exp.data_root} not found; gallery and class histogram left out")
    if BASELINE not in exp.strategies:
        warnings.append(f"no '{BASELINE}' strategy: no paired differences, AULC differences or labels saved")

    # the gallery round
    selecting = [r for r in exp.runs if r.seed == first_seed and r.round >= 1]
    if gallery_round is None:
        with_pool = [r.round for r in selecting if r.pool_path is not None]
        with_sel = [r.round for r in selecting if r.selected]
        gallery_round = max(with_pool) if with_pool else (max(with_sel) if with_sel else None)
    elif gallery_round not in {r.round for r in selecting}:
        have = ", ".join(str(r) for r in sorted({r.round for r in selecting})) or "none"
        raise InputError(f"{exp.exp_dir}: round {gallery_round} not found for seed {first_seed} (rounds: {have})")

    crc_runs = [r for r in exp.runs if r.seed == first_seed and r.crc_path is not None]
    crc_run = None
    if crc_runs:
        at_round = [r for r in crc_runs if r.round == gallery_round]
        crc_run = at_round[0] if at_round else max(crc_runs, key=lambda r: r.round)

    has_paired = any(d.round is not None for d in paired)
    has_strong = any(d.round is not None for d in paired_strong)
    region_runs = {}  # strategy -> its region round in the gallery (selected.jsonl of the first seed)
    if gallery_round is not None and has_data:
        for strategy in exp.strategies:
            run = exp.run(first_seed, strategy, gallery_round)
            if run is not None and run.selected_path is not None and run.selected and \
                    (run.unit or strategy_unit(exp, strategy)) != "image":  # not whole images under a pixel budget
                region_runs[strategy] = run
    n_steps = 5 + int(has_paired) + int(has_strong) + len(exp.strategies) + (2 if crc_run else 0) + \
        (len(cost["figures"]) if cost else 0) + len(region_runs)
    progress(0, total=n_steps)
    pngs: dict[str, bytes] = {}
    svgs: dict[str, bytes] = {}
    uris: dict[str, str] = {}

    def draw(name: str, fig) -> str:
        stem = name.removesuffix(".png")
        pngs[name] = _fig_bytes(fig, "png")
        svgs[stem + ".svg"] = _fig_bytes(fig, "svg")
        uris[name] = _data_uri(pngs[name])
        progress(1)
        return uris[name]

    mask_cache: dict[str, np.ndarray] = {}

    def mask(image_id: str) -> np.ndarray:
        if image_id not in mask_cache:
            mask_cache[image_id] = _load_mask(exp.data_root, image_id)
        return mask_cache[image_id]

    def pixel_counts(ids: list[str]) -> np.ndarray:
        counts = np.zeros(max(len(names), 1), dtype=np.int64)
        for image_id in ids:
            m = mask(image_id)
            m = m[(m != ignore) & (m < len(counts))]
            counts += np.bincount(m.ravel().astype(np.int64), minlength=len(counts))
        return counts

    # the rarest class: pixel share in the round-0 labeled sets (a random sample of the pool per seed)
    round0_counts = None
    if has_data and names:
        round0_ids = sorted({i for seed in exp.seeds
                             for i in _labeled_ids(exp.exp_dir / f"seed-{seed}" / "round-00")})
        try:
            round0_counts = pixel_counts(round0_ids) if round0_ids else None
        except InputError as exc:
            warnings.append(f"round-0 masks unreadable ({exc}); the rarest class is picked by IoU instead")
    class_curves = _class_curves(exp, names)
    rarest, rarest_rule = _rarest_class(exp, names, round0_counts, class_curves)
    shown = [c for c in names if c in class_curves]
    if len(shown) > MAX_CLASS_PANELS and round0_counts is not None:
        keep = set(np.argsort(round0_counts, kind="stable")[:MAX_CLASS_PANELS].tolist())
        shown = [c for k, c in enumerate(names) if k in keep and c in class_curves]
    shown = shown[:MAX_CLASS_PANELS]
    if rarest is not None and rarest in class_curves and rarest not in shown:
        shown = [rarest] + shown[:-1]

    gallery: list[dict[str, Any]] = []
    shares: dict[str, np.ndarray] = {}
    cal = None
    region_maps = _RegionMaps(exp.exp_dir)
    with rc_context(_RC), contextlib.closing(region_maps):
        draw("learning_curves.png", _fig_curves(exp, curves, style))
        if cost:
            for name, (key, xlabel, what) in cost["figures"].items():
                draw(name, _fig_cost_curves(exp, cost["curves"][key], style, units, xlabel, what))
        if shown:
            trained = list({r.round_dir: r for r in exp.runs}.values())  # round 0 once per seed
            have = {c: sum(r.per_class_iou.get(c) is not None for r in trained) for c in shown}
            missing = {c: f"IoU in {k} of {len(trained)} trainings" for c, k in have.items() if k < len(trained)}
            draw("class_iou.png", _fig_class_curves(class_curves, shown, rarest, exp.full_per_class_iou, style,
                                                    missing))
        else:
            progress(1)
        if has_paired:
            draw("paired_diff.png", _fig_paired(paired, style))
        if has_strong:
            draw("paired_diff_strong.png", _fig_paired(paired_strong, style, strong))
        draw("penalty.png", _fig_penalty(pm))

        for strategy in exp.strategies:
            run = exp.run(first_seed, strategy, gallery_round) if gallery_round is not None else None
            if not has_data or run is None or not run.selected:
                why = ("no data_root" if not has_data else
                       f"no selection in round {gallery_round} of seed {first_seed}")
                gallery.append({"strategy": strategy, "missing": why})
                progress(1)
                continue
            top = run.selected[:gallery_size]
            rows = [{"id": i, "image": _load_image(exp.data_root, i), "gt": mask(i)} for i in top]
            if run.pool_path is not None:
                _fill_predictions(run, rows)
            title = f"{strategy}: top {len(top)} of round {gallery_round} (seed {first_seed})"
            uri = draw(f"gallery_{_safe_name(strategy)}.png",
                       _fig_gallery(rows, run.pool_path is not None, style, title))
            gallery.append({"strategy": strategy, "uri": uri, "missing": None,
                            "note": "" if run.pool_path is not None else " (no pool.h5: image and ground truth only)"})
            if strategy in region_runs:
                gallery.append(_region_gallery(region_runs[strategy], exp, region_maps, style, gallery_size,
                                               mask, draw, progress, warnings))

        if has_data:
            for strategy in exp.strategies:
                counts = pixel_counts([i for r in exp.runs if r.strategy == strategy and r.round >= 1
                                       for i in r.selected])
                total = counts.sum()
                shares[strategy] = counts / total if total else counts.astype(np.float64)
            if not names:
                style.class_names = [f"class {i}" for i in range(max(len(names), 1))]
            draw("class_hist.png", _fig_class_hist(shares, style))
        else:
            progress(1)

        if crc_run is not None:
            from alseg.files.calibration import read_calibration

            cal = read_calibration(crc_run.crc_path)
            draw("crc_thresholds.png", _fig_crc_thresholds(cal, style))
            if cal.get("grid") is not None and cal.get("risk") is not None:
                draw("crc_risk.png", _fig_crc_risk(cal, style))
            else:
                progress(1)

    table = _table_rows(exp, curves)
    has_clicks = any(r.clicks is not None for r in table)
    stages = [s for s in STAGES if any(s in r.seconds for r in table)]
    stages += sorted({k for r in table for k in r.seconds} - set(stages))
    last = max(exp.rounds)
    finals = {s: float(c.mean[-1]) for s, c in curves.items() if c.rounds[-1] == last}
    best = max(finals, key=finals.get) if finals else None
    paired_sets = [_paired_set(diffs, name, figure)
                   for diffs, name, figure in ((paired, BASELINE, "paired_diff.png"),
                                               (paired_strong, strong, "paired_diff_strong.png")) if diffs]
    context = {
        "title": f"alseg report: {exp.name}",
        "sections": [(k, v) for k, v in SECTIONS if k != "cost" or has_costs],
        "exp": exp,
        "model": model,
        "alseg_version": __version__,
        "run_versions": sorted(_run_versions(exp)),
        "last_round": last,
        "sizes": [float(x) for x in next(iter(curves.values())).n_labeled] if curves else [],
        "best": None if best is None else (best, finals[best]),
        "lowest_phi": None if len(exp.seeds) < 2 or not pm.strategies else
        (pm.strategies[int(np.argmin(pm.phi))], float(pm.phi.min())),
        "warnings": warnings,
        "baseline": BASELINE,
        "confidence": CONFIDENCE,
        "aulc": aulc_rows,
        "saved": {x.strategy: x for x in saved},
        "figures": uris,
        "rarest": rarest,
        "rarest_rule": rarest_rule,
        "n_classes_shown": len(shown),
        "n_classes": len(names),
        "paired_sets": paired_sets,
        "strong_baseline": strong,
        "oracles": [s for s in exp.strategies if is_oracle(exp, s)],
        "pm": pm,
        "n_rounds_compared": int(pm.n_compared.max(initial=0)),
        "table": table,
        "stages": stages,
        "gallery_round": gallery_round,
        "first_seed": first_seed,
        "gallery": gallery,
        "legend": [(name, tuple(rgb)) for name, rgb in zip(style.class_names, style.palette.tolist())],
        "class_names": list(style.class_names),
        "shares": shares,
        "crc": None if cal is None else _crc_context(cal, crc_run, exp),
        "has_costs": has_costs,
        "has_clicks": has_clicks,
        "cost": cost,
        "units": units,
        "unit_text": _units_text(units),
        "annotation_text": _annotation_text(units, annotations),
        "show_units": has_costs or any(u != "image" for u in units.values()),
    }
    doc = render_html(context)

    files_dir.mkdir(parents=True, exist_ok=True)
    png_paths, svg_paths = [], []
    for blobs, paths in ((pngs, png_paths), (svgs, svg_paths)):
        for name, data in blobs.items():
            path = files_dir / name
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            paths.append(str(path))
    write_text_atomic(out_path, doc)
    progress(1)
    return ReportResult(
        out_path=str(out_path), png_paths=png_paths, strategies=list(exp.strategies), seeds=list(exp.seeds),
        rounds=exp.rounds, table=table, penalty=pm.P.tolist(), phi=pm.phi.tolist(),
        rounds_compared=pm.n_compared.tolist(), full_supervision_miou=exp.full_miou,
        gallery_round=gallery_round, class_names=list(style.class_names),
        class_shares={k: v.tolist() for k, v in shares.items()}, warnings=warnings, svg_paths=svg_paths,
        pool_size=exp.pool_size, model=model, aulc=aulc_rows, paired=paired, labels_saved=saved,
        paired_strong=paired_strong, strong_baseline=strong,
        rarest_class=rarest, rarest_rule=rarest_rule,
        costs_recorded=has_costs, units=units, annotations=annotations,
        equal_clicks=cost["equal"]["clicks"]["rows"] if cost else [],
        equal_pixels=cost["equal"]["labelled_percent"]["rows"] if cost else [],
    )


def _region_gallery(run: RoundRun, exp: Experiment, maps: _RegionMaps, style: _Style, size: int,
                    mask: Callable[[str], np.ndarray], draw: Callable[[str, Any], str],
                    progress: Callable[..., None], warnings: list[str]) -> dict[str, Any]:
    """One strategy's region gallery: the first ``size`` images of its region round, regions drawn."""
    name = f"{run.strategy} regions"
    try:
        rows = _region_rows(run, exp, maps, style, size, mask)
    except InputError as exc:
        warnings.append(f"regions of {run.strategy}, round {run.round}, not drawn: {exc}")
        progress(1)
        return {"strategy": name, "missing": f"not drawn ({exc})"}
    unit = run.unit or strategy_unit(exp, run.strategy)
    title = f"{run.strategy} ({unit})\nfirst {len(rows)} images of round {run.round}, seed {run.seed}"
    uri = draw(f"regions_{_safe_name(run.strategy)}.png", _fig_region_gallery(rows, title))
    return {"strategy": name, "uri": uri, "missing": None,
            "note": " (orange: this round's regions; blue: labelled before)"}


def _crc_context(cal: dict[str, Any], crc_run: RoundRun, exp: Experiment) -> dict[str, Any]:
    """The calibration as the template shows it: one row per class, missing evaluation keys as None."""
    path = crc_run.crc_path
    k = len(cal["class_names"])
    ev = cal.get("evaluation") or {}
    fnr = ev.get("fnr") or [None] * k
    held = ev.get("n_images") or [None] * k
    return {
        "path": path.relative_to(exp.exp_dir) if path.is_relative_to(exp.exp_dir) else path,
        "alpha": cal["alpha"], "t_min": cal["t_min"], "evaluated": bool(ev),
        "classes": [{"name": c, "uncalibrated": bool(cal["uncalibrated"][i]),
                     "threshold": float(cal["query_thresholds"][i]),  # the one prediction sets use
                     "n_images": cal["n_images"][i], "fnr": fnr[i], "n_held_out": held[i]}
                    for i, c in enumerate(cal["class_names"])],
        "coverage": ev.get("coverage"), "mean_set_size": ev.get("mean_set_size"),
        "set_sizes": ev.get("set_size_counts") or ev.get("set_size_hist"),
    }


def _run_versions(exp: Experiment) -> set[str]:
    """alseg versions recorded in the training manifests (the versions that ran the experiment)."""
    versions = set()
    for r in exp.runs:
        path = r.round_dir / "train" / "manifest.json"
        if path.is_file():
            v = read_manifest(path).get("alseg_version")
            if v:
                versions.add(str(v))
    return versions


def _fill_predictions(run: RoundRun, rows: list[dict[str, Any]]) -> None:
    """Prediction (argmax) and uncertainty (CRC risk map if stored, else normalised entropy) per row."""
    from alseg.files.hdf5 import PoolReader, ScoresReader
    from alseg.strategies import pixel_entropy, softmax

    risk: dict[str, np.ndarray] = {}
    if run.scores_path is not None:
        with ScoresReader(run.scores_path) as scores:
            risk = scores.risk_maps_by_id(r["id"] for r in rows)  # cropped to each image's size
    by_id = {r["id"]: r for r in rows}
    with PoolReader(run.pool_path) as pool:  # logits come cropped to each image's valid size
        for ids, logits, _ in pool.iter_batches(8, ids=[r["id"] for r in rows]):
            entropy = pixel_entropy(softmax(logits, axis=1))
            for b, image_id in enumerate(ids):
                row = by_id[image_id]
                shape = row["image"].shape[:2]
                row["pred"] = _upsample(logits[b].argmax(axis=0), shape)
                if image_id in risk:
                    row["unc"], row["unc_kind"] = _upsample(risk[image_id], shape), "CRC risk map"
                else:
                    row["unc"], row["unc_kind"] = _upsample(entropy[b], shape), "entropy"


def _table_rows(exp: Experiment, curves: dict[str, stats.Curve]) -> list[TableRow]:
    rows = []
    for strategy, c in curves.items():
        for i, rd in enumerate(c.rounds):
            runs = [r for r in exp.runs if r.strategy == strategy and r.round == rd]
            stages = sorted({k for r in runs for k in r.seconds})
            seconds = {k: float(np.mean([r.seconds[k] for r in runs if k in r.seconds])) for k in stages}
            pct = [r.labelled_percent for r in runs if r.labelled_percent is not None]
            clicks = [r.clicks for r in runs if r.clicks is not None]
            rows.append(TableRow(strategy, int(rd), float(c.n_labeled[i]), float(c.mean[i]), float(c.std[i]),
                                 int(c.n_seeds[i]), seconds, float(np.mean(pct)) if pct else None,
                                 float(np.mean(clicks)) if clicks else None))
    return rows
