"""``alseg select --unit patch:S|superpixel:N|pixel:P``: one region round (docs/regions.md, docs/algorithms.md
§11.1-11.3).

:func:`alseg.stages.select.select` hands every call with a unit other than ``image`` (or a pixel or click
budget) to :func:`select_region_round`; the image path is not touched.

What a round does, in order:

1. Reads the labelled state (``--labeled``: an ``alseg.labelled`` file, or a plain id list = fully labelled
   images). Candidate images: the pool's ids that are not labelled whole, visited in id order.
2. Finds the original images through the dataset of the config the pool was made with (the pool's
   ``config_path``, ``data_root`` and ``split`` attributes; ``--dataset-config`` / ``--data-root`` override them):
   image sizes (file headers), the RGB images for superpixels, and the ground truth at original resolution
   for click costs (read as mmseg's ``LoadAnnotations`` reads it). The pool's ``/labels`` (logit resolution)
   are never used for clicks.
3. Superpixel maps come from the store beside the pool file (:func:`alseg.files.regionmaps.region_maps_path`),
   or from ``region_store`` (``--region-store``) for the round's own unit; maps not yet stored are computed
   once and added, stored maps are never recomputed. Patch maps follow from
   the image size; pixel ids are y·W + x.
4. Streams the pool's logits batch by batch (never the whole pool): softmax, the pixel scorer
   (:data:`alseg.strategies.PIXEL_SCORERS`), region scores (:func:`alseg.regions.region_scores`), the overlap
   rule against the labelled pixels (:func:`alseg.regions.offered_regions`), the click cost when the budget
   is in clicks. Only the regions on offer are kept, as :class:`alseg.regions.Candidates`.
5. Orders them (score, a seeded sampler's keys, or for ``random`` a seeded permutation) and takes them under
   the budget (:func:`alseg.regions.select_regions`: never exceeded, ``--max-per-image``).
6. Writes ``--out`` (a labelled-state file of the new regions) and its manifest; with ``--update`` also the
   merged state to ``--labeled``, all or nothing.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alseg.errors import EmptyPoolError, InputError, UnknownName
from alseg.files.atomic import (check_not_input, check_writable, removed_on_failure, replace_last,
                                write_bytes_atomic)
from alseg.files.labelled import FULL, Labelled, LabelledState, format_labelled, labelled_mask, merge_labelled
from alseg.files.manifest import manifest_path, write_manifest
from alseg.units import Unit, parse_unit

__all__ = ["REGION_STRATEGIES", "ImageSource", "RegionSelectResult", "parse_pixel_budget", "select_region_round"]

REGION_STRATEGIES = ("entropy", "margin", "least-confidence", "random", "crc", "bald", "mc-entropy",
                     "variation-ratio", "clasp")  # every strategy with a pixel score; clasp over regions (§11.6)


@dataclass
class RegionSelectResult:
    """What a region round chose and what it costs. ``selected``: one entry per image touched, in the order
    its first region was picked: ``{"id", "unit", "regions"}`` (regions sorted)."""

    out_path: str
    strategy: str
    unit: str
    selected: list[dict]
    budget: int  # in budget_kind units (a --budget-pixels percentage is resolved to a pixel count)
    budget_kind: str  # regions | pixels | clicks
    budget_used: int
    n_regions: int  # regions chosen
    n_offered: int  # regions on offer
    n_unlabeled: int  # candidate images (not labelled whole)
    n_labeled: int  # images with any label before this round
    images_touched: int
    labelled_pixels: int  # new pixels this round, original resolution
    labelled_percent: float  # of pool_pixels
    pool_pixels: int  # every pixel of every pool image, original resolution
    labelled_pixels_total: int  # pool pixels labelled after this round (before: minus labelled_pixels)
    labelled_percent_total: float
    clicks: int | None  # estimated clicks (§11.3); None when the ground truth is not available
    seed: int
    region_maps: str | None = None  # the superpixel store used
    warnings: list[str] = field(default_factory=list)
    labeled_updated: str | None = None
    seconds: float = 0.0
    oracle: bool = False
    details: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ inputs


def parse_pixel_budget(text: str | int, pool_pixels: int) -> int:
    """``--budget-pixels``: ``"2%"`` (of the pool's pixels at original resolution, rounded down) or a count."""
    s = str(text).strip()
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)%", s)
    if m:
        pct = float(m.group(1))
        if not 0.0 < pct <= 100.0:
            raise InputError(f"--budget-pixels: a percentage must be in (0, 100], got {s}")
        return int(np.floor(pct / 100.0 * pool_pixels + 1e-9))
    if re.fullmatch(r"[1-9][0-9]*", s):
        return int(s)
    raise InputError(f"--budget-pixels must be a percentage of the pool's pixels (2%) or a pixel count (50000), got {s!r}")


class ImageSource:
    """The pool's images at original resolution, through the dataset of an mmseg config: ``shape(id)``,
    ``image(id)`` (RGB uint8), ``labels(id)`` (as mmseg's ``LoadAnnotations`` reads them) and
    ``has_labels(ids)``."""

    def __init__(self, config: str, data_root: str | None, split: str, ids: list[str], source: str):
        from alseg import dataset as D
        from alseg import mm

        cfg = mm.load_config(config, data_root=data_root)
        self.index = D.resolve(cfg, ids, source, split or "auto")
        self.ignore_index = self.index.ignore_index
        self.config, self.data_root = str(config), self.index.data_root
        self._shapes: dict[str, tuple[int, int]] = {}

    def _info(self, image_id: str) -> dict:
        return self.index.data_info(image_id)

    def shape(self, image_id: str) -> tuple[int, int]:
        if image_id not in self._shapes:
            from PIL import Image

            path = self._info(image_id)["img_path"]
            try:
                with Image.open(path) as im:
                    w, h = im.size
            except Exception as exc:
                raise InputError(f"{path}: cannot read the image of {image_id!r} ({type(exc).__name__}: {exc}); "
                                 "check --dataset-config / --data-root") from None
            self._shapes[image_id] = (int(h), int(w))
        return self._shapes[image_id]

    def image(self, image_id: str) -> np.ndarray:
        from alseg.partial import load_rgb

        return load_rgb(self._info(image_id)["img_path"])

    def has_labels(self, ids) -> bool:
        for i in ids:
            seg = self._info(i).get("seg_map_path")
            if not seg or not os.path.isfile(seg):
                return False
        return True

    def labels(self, image_id: str) -> np.ndarray:
        from mmseg.datasets.transforms import LoadAnnotations

        info = self._info(image_id)
        info.setdefault("seg_fields", [])
        seg = info.get("seg_map_path")
        if not seg or not os.path.isfile(seg):
            raise InputError(f"id {image_id!r}: ground truth not found at {seg}; click costs need the label maps "
                             "at original resolution (check --dataset-config / --data-root)")
        gt = np.asarray(LoadAnnotations()(info)["gt_seg_map"])
        if gt.shape != self.shape(image_id):
            raise InputError(f"{seg}: label map is {gt.shape}, its image {self.shape(image_id)}")
        return gt.astype(np.int64)


def _image_source(pool_attrs: dict, pool_path: str, config, data_root, ids: list[str]) -> ImageSource:
    recorded = pool_attrs.get("config_path")
    config = config if config is not None else recorded
    if not config:
        raise InputError(f"{pool_path}: records no config; region units need the original images: pass "
                         "--dataset-config CONFIG (and --data-root DIR)")
    root = data_root if data_root is not None else (pool_attrs.get("data_root") or None)
    try:
        return ImageSource(str(config), None if root is None else str(root), str(pool_attrs.get("split") or "auto"),
                           ids, str(pool_path))
    except InputError as exc:
        raise InputError(f"{exc} (the original images are found through {config}"
                         f"{'' if root is None else f' with data root {root}'}; pass --dataset-config / --data-root)") from None


def _stores(pool_path: str, state: LabelledState, unit: Unit, ids: list[str], source: ImageSource,
            warnings: list[str], region_store: str | os.PathLike | None = None) -> tuple[dict[str, Any], str | None]:
    """Open region-map stores: every superpixel unit of the state and the round's own unit (computed for
    the images it lacks). ``region_store``: the store of the round's own unit (default: beside the pool).
    Returns (unit -> reader, the round's store path)."""
    from alseg.files.regionmaps import RegionMapReader
    from alseg.files.regionmaps import region_maps_path as _beside_pool
    from alseg.regions import ensure_region_maps

    def region_maps_path(pool: str, u: str) -> Path:
        return Path(region_store) if region_store is not None and u == str(unit) else _beside_pool(pool, u)

    wanted = set(ids)
    units = {u for i, per_image in state.images.items() if i in wanted for u in per_image
             if u != FULL and parse_unit(u).kind == "superpixel"}
    own = None
    if unit.kind == "superpixel":
        own = region_maps_path(pool_path, str(unit))
        ensure_region_maps(own, unit, ids, source.image)
        units.add(str(unit))
    readers = {}
    for u in sorted(units):
        path = region_maps_path(pool_path, u)
        if not path.is_file():
            raise InputError(f"the labelled state has {u} regions, but their region maps are not at {path} "
                             "(the store a select with this unit writes beside the pool file)")
        readers[u] = RegionMapReader(path, unit=u)
    return readers, None if own is None else str(own)


# ------------------------------------------------------------------------------------------ scoring


def _pixel_score_batches(pool, strategy: str, ids: list[str], batch_size: int, seed: int,
                         crc_thresholds: np.ndarray | None = None):
    """Yield ``(image_id, pixel scores (h, w) float64)`` in ``ids`` order, streaming the pool.
    ``random``: uniform draws from a generator seeded by (seed, crc32(id)); the logits are not read.
    ``crc``: the risk map r(u) of §9.2 with the calibration's ``crc_thresholds``; ``bald``, ``mc-entropy``,
    ``variation-ratio``: from the pool's ``/mc`` maps (`infer --mc T`), as :func:`alseg.mc.mc_pixel_scores`."""
    from alseg.registry import MC_SCORES

    if strategy == "random":
        for image_id in ids:
            rng = np.random.default_rng([seed, zlib.crc32(image_id.encode("utf-8"))])
            yield image_id, rng.random(pool.size(image_id))
        return
    if strategy in MC_SCORES:
        from alseg.mc import mc_pixel_scores

        for batch_ids, maps in pool.iter_mc(batch_size, ids=ids):
            scores = mc_pixel_scores(maps, strategy, pool.n_classes)
            for k, image_id in enumerate(batch_ids):
                yield image_id, np.asarray(scores[k], dtype=np.float64)
        return
    from alseg import strategies as S

    if strategy == "crc":
        from alseg.crc import crc_image_scores

        def scorer(probs):
            return crc_image_scores(probs, crc_thresholds, return_risk_maps=True)[2]
    elif strategy == "clasp":  # (K + 1, h, w) per image: h·p_c for each class c, then h (§11.6)
        def scorer(probs):
            h = S.pixel_entropy(probs)[:, None]
            return np.concatenate([h * probs, h], axis=1)
    else:
        scorer = S.get_pixel_scorer(strategy)
    for batch_ids, logits, _ in pool.iter_batches(batch_size, ids=ids):
        S.check_finite(logits, batch_ids)
        scores = scorer(S.softmax(logits, axis=1))
        for k, image_id in enumerate(batch_ids):
            yield image_id, np.asarray(scores[k], dtype=np.float64)


def _image_candidates(image_index: int, image_id: str, unit: Unit, pixel_scores: np.ndarray | None, shape,
                      state: LabelledState, lookup, *, reduction: str, q: float, clicks_of, annotation: str,
                      ignore: int = 255, precomputed: np.ndarray | None = None):
    """The regions one image offers -> (Candidates part in region-id order, labelled pixels before)."""
    from alseg.cost import PIXEL_CLICKS
    from alseg.regions import Candidates, offered_regions, pixel_queries, region_scores

    mask = labelled_mask(state, image_id, shape, lookup) if image_id in state.images else None
    before = 0 if mask is None else int(mask.sum())
    if unit.kind == "pixel":
        pq = pixel_queries(pixel_scores, np.zeros(shape, bool) if mask is None else mask, unit.size)
        order = np.argsort(pq.region_ids, kind="stable")
        n = order.size
        ones = np.ones(n, dtype=np.int64)
        return Candidates(np.full(n, image_index, dtype=np.int64), pq.region_ids[order], pq.scores[order], ones,
                          ones * PIXEL_CLICKS), before
    # unit image (a pixel or click budget over whole images): the image is one region, id 0
    region_map = np.zeros(shape, np.int32) if unit.kind == "image" else lookup(str(unit), image_id, shape)
    n = int(region_map.max()) + 1
    if precomputed is not None:  # from `score --unit` (alseg.files.regionscores)
        scores = np.asarray(precomputed, dtype=np.float64)
        if scores.shape != (n,):
            raise InputError(f"the region scores of {image_id!r} are for {scores.shape[0]} regions, its {unit} map "
                             f"has {n}; score with the same unit and region maps as select")
    else:
        scores, _ = region_scores(pixel_scores, region_map, reduction, q, n_regions=n)
    cost, offered = offered_regions(region_map, mask, n_regions=n)
    rows = np.flatnonzero(offered)
    if clicks_of is not None:
        clicks = _unit_clicks(clicks_of(image_id), unit, region_map, annotation, ignore, mask)[rows]
    else:
        clicks = np.zeros(rows.size, dtype=np.int64)
    return Candidates(np.full(rows.size, image_index, dtype=np.int64), rows.astype(np.int64), scores[rows],
                      cost[rows], clicks), before


def _unit_clicks(gt: np.ndarray, unit: Unit, region_map: np.ndarray, annotation: str, ignore: int,
                 mask: np.ndarray | None) -> np.ndarray:
    """Clicks of every region of one image (§11.3); a whole image (unit image, nothing labelled yet) costs
    c_c + c_p whatever the annotation, an image partly labelled by another unit its rest as a precise area."""
    from alseg.cost import image_clicks, region_clicks

    if unit.kind == "image":
        if mask is None:
            return np.array([image_clicks(gt, ignore=ignore)], dtype=np.int64)
        annotation = "precise"
    return region_clicks(gt, region_map, annotation, ignore=ignore, labelled_mask=mask,
                         n_regions=int(region_map.max()) + 1)


def _order(cands, strategy: str, sampler: str, beta: float, rng: np.random.Generator) -> np.ndarray | None:
    """Visiting order of the candidates (rows are in canonical order: image id, then region id)."""
    n = int(cands.score.shape[0])
    if strategy == "random":
        return rng.permutation(n).astype(np.int64)
    if sampler == "top":
        return None  # select_regions: score descending, ties by image then region id
    from alseg.samplers import _check_beta, _keys, _pick

    gumbel = rng.gumbel(size=n)
    keys = _keys(np.asarray(cands.score, dtype=np.float64), sampler, _check_beta(beta), gumbel)
    return _pick(keys, gumbel, np.arange(n), n)


def _open_region_scores(path, pool_path, strategy: str, unit: Unit, reduction: str, q: float):
    """The region-scores file of `score --unit` (alseg.files.regionscores), checked against this round."""
    from alseg.files.hdf5 import pool_digest
    from alseg.files.regionscores import RegionScoresReader

    reader = RegionScoresReader(path)
    try:
        if reader.unit != str(unit):
            raise InputError(f"{path}: region scores of unit {reader.unit}, this round queries {unit}")
        if reader.reduction != reduction or (reduction == "top-q" and reader.q != q):
            raise InputError(f"{path}: regions reduced by {reader.reduction} (q {reader.q}), this round asks for "
                             f"--region-reduction {reduction}; score again or pass the same reduction")
        if reader.attrs.get("pool_sha256") != pool_digest(pool_path):
            raise InputError(f"{path}: scored from another pool file than {pool_path}; rerun `alseg score --unit`")
        if strategy not in reader.names:
            raise InputError(f"{path}: holds no region scores of {strategy!r} (has: {', '.join(reader.names)}); "
                             f"rerun `alseg score --unit {unit} --strategy {strategy}`")
    except BaseException:
        reader.close()
        raise
    return reader


def score_regions(pool_path: str | Path, *, strategies: list[str], unit: str, out_path: str | Path,
                  reduction: str = "mean", q: float = 10.0, calibration_path: str | Path | None = None,
                  config: str | None = None, data_root: str | Path | None = None,
                  region_store: str | Path | None = None, batch_size: int = 16, overwrite: bool = False,
                  progress: Callable[..., None] = lambda *a, **k: None) -> dict[str, Any]:
    """``alseg score --unit U``: the score of every region of every pool image for each strategy, streamed
    from the pool (one pass per strategy), into a region-scores file (:mod:`alseg.files.regionscores`) that
    ``select --unit U --scores FILE`` reads instead of the logits. Returns what it wrote."""
    from alseg.files.hdf5 import PoolReader, pool_digest
    from alseg.files.regionscores import write_region_scores
    from alseg.regions import REDUCTIONS, region_lookup, region_scores

    t0 = time.perf_counter()
    unit_ = parse_unit(unit)
    if unit_.kind not in ("patch", "superpixel"):
        raise InputError(f"score --unit takes patch:S or superpixel:N, got {unit}: pixel queries depend on what is "
                         "labelled and are chosen by `select --unit pixel:P` from the pool itself")
    usable = [n for n in REGION_STRATEGIES if n not in ("random", "clasp")]
    bad = [n for n in strategies if n not in usable]
    if bad:
        raise InputError(f"--unit {unit_}: {bad[0]!r} has no pixel score to reduce over regions; use {', '.join(usable)}")
    if reduction not in REDUCTIONS:
        raise InputError(f"--region-reduction: unknown {reduction!r}; choose one of: {', '.join(REDUCTIONS)}")
    check_not_input([out_path, manifest_path(out_path)], [pool_path, calibration_path])
    out_path = check_writable(out_path, overwrite=overwrite)
    crc_thresholds = None
    if "crc" in strategies:
        if calibration_path is None:
            raise InputError("strategy 'crc' needs --calibration crc.json (from `alseg calibrate`)")
        from alseg.files.calibration import read_calibration

        crc_thresholds = np.asarray(read_calibration(calibration_path)["query_thresholds"], dtype=np.float64)
    warnings: list[str] = []
    with PoolReader(pool_path) as pool:
        ids = list(pool.ids)
        source = _image_source(dict(pool.attrs), str(pool_path), config, data_root, ids)
        readers, store = _stores(str(pool_path), LabelledState(), unit_, ids, source, warnings, region_store)
        try:
            lookup = region_lookup(readers)
            counts = np.zeros(len(ids), dtype=np.int64)
            areas: list[np.ndarray] = []
            scores: dict[str, list[np.ndarray]] = {}
            progress(0, total=len(ids) * len(strategies))
            row = {i: k for k, i in enumerate(ids)}
            for name in strategies:
                got: dict[str, np.ndarray] = {}
                for image_id, pixel_scores in _pixel_score_batches(pool, name, ids, batch_size, 0, crc_thresholds):
                    region_map = lookup(str(unit_), image_id, source.shape(image_id))
                    sc, ar = region_scores(pixel_scores, region_map, reduction, q, n_regions=int(region_map.max()) + 1)
                    got[image_id] = sc
                    if not scores:  # the first strategy fixes the regions
                        counts[row[image_id]] = sc.size
                        areas.append(ar)
                    progress(1)
                scores[name] = [got[i] for i in ids]
        finally:
            for reader in readers.values():
                reader.close()
        digest = pool_digest(pool_path)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    write_region_scores(
        out_path, ids, offsets, np.concatenate(areas) if areas else np.zeros(0, np.int64),
        {n: np.concatenate(v) if v else np.zeros(0) for n, v in scores.items()},
        attrs={"unit": str(unit_), "reduction": reduction, "q": float(q), "pool_path": str(pool_path),
               "pool_sha256": digest, "region_maps": store or ""},
        params={n: {"calibration": str(calibration_path)} if n == "crc" else {} for n in strategies},
        overwrite=overwrite)
    result = {"out_path": str(out_path), "n_images": len(ids), "n_regions": int(offsets[-1]), "unit": str(unit_),
              "strategies": list(strategies), "region_maps": store, "warnings": warnings,
              "seconds": time.perf_counter() - t0}
    with removed_on_failure(out_path):
        write_manifest(out_path, stage="score", args={"pool_path": pool_path, "strategies": strategies, "unit": unit,
                                                      "region_reduction": reduction, "q": q,
                                                      "calibration_path": calibration_path},
                       inputs=[pool_path, calibration_path], outputs=[out_path], seconds=result["seconds"],
                       result=result)
    return result


def _clasp_order(cands, class_parts: list[np.ndarray], image_ids: list[str], budget: int, round_t: tuple[int, int],
                 rng: np.random.Generator, *, class_share: float, exclude_classes, class_names: list[str]):
    """§11.6 over regions: :func:`alseg.samplers.clasp` on the candidates (named image id, NUL, region id, so
    its canonical order is the candidates' own) -> (visiting order of ``budget`` rows, the round's beta)."""
    from alseg.samplers import beta_schedule, clasp
    from alseg.stages.select import excluded_classes

    k = len(class_names)
    s_c = np.concatenate(class_parts) if class_parts else np.zeros((0, k))
    names = np.asarray([f"{image_ids[int(i)]}\x00{int(r):09d}" for i, r in zip(cands.image_index, cands.region_id)],
                       dtype=object)
    beta = beta_schedule(*round_t)
    if names.size == 0:
        return np.zeros(0, dtype=np.int64), beta
    picked = clasp(s_c, np.asarray(cands.score, dtype=np.float64), names, budget, beta=beta, rng=rng,
                   share=class_share, exclude=excluded_classes(exclude_classes, class_names))
    row_of = {name: j for j, name in enumerate(names)}
    return np.asarray([row_of[name] for name in picked], dtype=np.int64), beta


# ------------------------------------------------------------------------------------------ writing


def _rename(src: Path, dst: Path) -> None:
    """The last step of an ``--update``: the merged state replaces ``--labeled`` (tests make it fail)."""
    os.replace(src, dst)


def _write(out_path: Path, new_state: LabelledState, manifest: dict, labeled_path: Path | None,
           merged: LabelledState | None) -> None:
    """``--out`` and its manifest, and with ``merged`` the new ``--labeled``: all or nothing. The merged
    state goes to a temporary first, then --out and the manifest, then the temporary is renamed onto
    --labeled; any failure removes the temporary and restores --out and its manifest as they were."""
    if merged is None:
        write_bytes_atomic(out_path, format_labelled(new_state).encode("utf-8"))
        with removed_on_failure(out_path):
            write_manifest(out_path, **manifest)
        return
    def write_outputs() -> None:
        write_bytes_atomic(out_path, format_labelled(new_state).encode("utf-8"))
        write_manifest(out_path, **manifest)

    replace_last(labeled_path, format_labelled(merged).encode("utf-8"), [out_path, manifest_path(out_path)],
                 write_outputs, rename=lambda src, dst: _rename(src, dst))


# ------------------------------------------------------------------------------------------ the round


def _check_options(strategy, unit_text, budget, budget_pixels, budget_clicks, opts) -> tuple[Unit, str]:
    unit = parse_unit(unit_text)
    given = [name for name, v in (("--budget", budget), ("--budget-pixels", budget_pixels),
                                  ("--budget-clicks", budget_clicks)) if v is not None]
    if unit.kind == "image" and budget_pixels is None and budget_clicks is None:
        raise InputError("--unit image takes whole images: --budget N alone (images), or --budget-pixels / "
                         "--budget-clicks for whole images under a pixel or click budget")
    if len(given) != 1:
        raise InputError("give exactly one budget: --budget N (regions), --budget-pixels 2% or a pixel count, or "
                         f"--budget-clicks N; got {' and '.join(given) if given else 'none'}")
    if strategy not in REGION_STRATEGIES:
        if unit.kind == "image":
            raise InputError(f"--unit image with a pixel or click budget ranks images by their mean pixel score: use "
                             f"--strategy {', '.join(REGION_STRATEGIES)}; {strategy!r} takes --budget N (images)")
        raise InputError(f"--unit {unit} scores regions from pixel scores: use --strategy "
                         f"{', '.join(REGION_STRATEGIES)}; {strategy!r} selects whole images (--unit image)")
    precomputed = strategy not in ("random", "clasp") and unit.kind in ("patch", "superpixel")
    for flag, bad in (("--scores", opts["scores_path"] is not None and not precomputed),
                      ("--pool-ids", opts["pool_ids_path"] is not None),
                      ("--calibration", opts["calibration_path"] is not None and strategy != "crc"),
                      ("--stochastic", opts["stochastic"]),
                      ("--oracle", opts["oracle"])):
        if bad:
            raise InputError(f"{flag} does not apply to a region round (--unit {unit}); region scores come from "
                             "the pool's logits (--pool)")
    if opts["pool_path"] is None:
        raise InputError(f"--unit {unit} needs --pool pool.h5 (from `alseg infer`): its ids, its logits and, "
                         "beside it, the region-map store")
    kind = "regions" if budget is not None else "pixels" if budget_pixels is not None else "clicks"
    if kind == "regions" and (int(budget) != budget or budget < 1):
        raise InputError(f"--budget must be at least 1 (regions), got {budget}")
    if kind == "clicks" and (int(budget_clicks) != budget_clicks or budget_clicks < 1):
        raise InputError(f"--budget-clicks must be at least 1, got {budget_clicks}")
    from alseg.regions import REDUCTIONS
    from alseg.samplers import SAMPLERS

    if opts["region_reduction"] not in REDUCTIONS:
        raise UnknownName(f"--region-reduction: unknown {opts['region_reduction']!r}; choose one of: "
                          f"{', '.join(REDUCTIONS)}")
    if opts["region_reduction"] == "top-q" and not 0.0 < opts["q"] <= 100.0:
        raise InputError(f"--q (the top-q percentage) must be in (0, 100], got {opts['q']}")
    if opts["max_per_image"] is not None and opts["max_per_image"] < 1:
        raise InputError(f"--max-per-image must be >= 1, got {opts['max_per_image']}")
    if opts["sampler"] not in SAMPLERS:
        raise UnknownName(f"--sampler: unknown {opts['sampler']!r}; choose one of: {', '.join(SAMPLERS)}")
    if opts["sampler"] != "top" and strategy == "random":
        raise InputError(f"--sampler {opts['sampler']} samples by a score; 'random' has none")
    if opts["batch_size"] < 1:
        raise InputError(f"--batch-size must be >= 1, got {opts['batch_size']}")
    from alseg.cost import CLICK_MODES

    if opts["annotation"] not in CLICK_MODES:
        raise UnknownName(f"--annotation: unknown {opts['annotation']!r}; choose one of: {', '.join(CLICK_MODES)}")
    return unit, kind


def select_region_round(
    strategy: str,
    *,
    unit: str,
    budget: int | None,
    budget_pixels: str | int | None,
    budget_clicks: int | None,
    labeled_path: str | Path,
    out_path: str | Path,
    pool_path: str | Path | None,
    scores_path=None,
    pool_ids_path=None,
    calibration_path=None,
    seed: int = 0,
    stochastic: bool = False,
    oracle: bool = False,
    region_reduction: str = "mean",
    q: float = 10.0,
    max_per_image: int | None = None,
    sampler: str = "top",
    beta: float = 1.0,
    annotation: str = "precise",
    config: str | None = None,
    data_root: str | Path | None = None,
    batch_size: int = 16,
    update: bool = False,
    overwrite: bool = False,
    progress: Callable[..., None] = lambda *a, **k: None,
    region_store: str | Path | None = None,
    round: str | None = None,  # noqa: A002  (clasp: --round t/T)
    exclude_classes: str | list[str] | None = None,
    class_share: float = 0.66,
) -> RegionSelectResult:
    """One region round; see the module docstring. Called by :func:`alseg.stages.select.select`."""
    from alseg.files.hdf5 import PoolReader
    from alseg.partial import read_labels
    from alseg.regions import region_lookup, select_regions

    t0 = time.perf_counter()
    opts = dict(scores_path=scores_path, pool_ids_path=pool_ids_path, calibration_path=calibration_path,
                stochastic=stochastic, oracle=oracle, pool_path=pool_path, region_reduction=region_reduction, q=q,
                max_per_image=max_per_image, sampler=sampler, batch_size=batch_size, annotation=annotation)
    unit_, kind = _check_options(strategy, unit, budget, budget_pixels, budget_clicks, opts)
    check_not_input([out_path, manifest_path(out_path)], [labeled_path, pool_path])
    if update:
        check_not_input([labeled_path], [pool_path])
    out_path = check_writable(out_path, overwrite=overwrite)
    labeled_path = Path(labeled_path)
    state, is_state = read_labels(labeled_path)
    warnings: list[str] = []
    if update and not is_state:
        if labeled_path.suffix != ".jsonl":
            raise InputError(f"{labeled_path}: a plain id list; --update with --unit {unit_} writes a labelled state "
                             f"(JSON Lines), so --labeled must be a .jsonl path: cp {labeled_path} "
                             f"{labeled_path.with_suffix('.jsonl')} and pass that")
        warnings.append(f"{labeled_path}: a plain id list, rewritten as a labelled state (JSON Lines)")

    crc_thresholds = None
    clasp_round = None
    if strategy == "clasp":
        from alseg.stages.select import parse_round

        if unit_.kind not in ("patch", "superpixel") or kind != "regions" or max_per_image is not None:
            raise InputError("clasp over regions takes --unit patch:S or superpixel:N with --budget N (regions) and "
                             "no --max-per-image: its class quotas count regions")
        if round is None:
            raise InputError("strategy 'clasp' needs --round t/T (query round t of T; `alseg run` passes it), "
                             "which sets its power-sampling beta")
        clasp_round = parse_round(round)
    if strategy == "crc" and scores_path is None:
        if calibration_path is None:
            raise InputError(f"--strategy crc --unit {unit_} needs --calibration crc.json (from `alseg calibrate`): "
                             "its thresholds make the risk maps the regions are scored by")
        from alseg.files.calibration import check_matches_pool, read_calibration

        calibration = read_calibration(calibration_path)
        crc_thresholds = np.asarray(calibration["query_thresholds"], dtype=np.float64)

    with PoolReader(pool_path) as pool:
        pool_ids = list(pool.ids)
        attrs = dict(pool.attrs)
        if crc_thresholds is not None:
            check_matches_pool(calibration, calibration_path, pool.class_names, pool_path)
        if strategy in ("bald", "mc-entropy", "variation-ratio") and not pool.has_mc and scores_path is None:
            raise InputError(f"{pool_path}: holds no MC-dropout statistics, which {strategy!r} needs; run "
                             "`alseg infer --mc T` (e.g. --mc 10) to write them")
        candidates_ids = sorted(i for i in pool_ids if not state.is_full(i))
        if not candidates_ids:
            raise EmptyPoolError(f"{pool_path}: no image left to query ({len(pool_ids)} id(s), all labelled whole "
                                 f"in {labeled_path})")
        source = _image_source(attrs, str(pool_path), config, data_root, pool_ids)
        pool_pixels = int(sum(h * w for h, w in (source.shape(i) for i in pool_ids)))
        if kind == "regions":
            limit = int(budget)
        elif kind == "pixels":
            limit = parse_pixel_budget(budget_pixels, pool_pixels)
        else:
            limit = int(budget_clicks)
        if kind == "clicks" and not source.has_labels(candidates_ids):
            raise InputError("--budget-clicks counts clicks on the ground truth at original resolution, which the "
                             f"dataset of {source.config} lacks for some pool images; use --budget or --budget-pixels")
        readers, store = _stores(str(pool_path), state, unit_, candidates_ids, source, warnings, region_store)
        region_file = None
        try:
            lookup = region_lookup(readers)
            clicks_of = source.labels if kind == "clicks" else None
            parts, labelled_before, class_parts = [], 0, []
            index_of = {i: k for k, i in enumerate(candidates_ids)}
            progress(0, total=len(candidates_ids))
            if scores_path is not None:
                region_file = _open_region_scores(scores_path, pool_path, strategy, unit_, region_reduction, q)
                batches = ((i, None) for i in candidates_ids)
            else:
                batches = _pixel_score_batches(pool, strategy, candidates_ids, batch_size, seed, crc_thresholds)
            for image_id, pixel_scores in batches:
                class_maps = None
                if strategy == "clasp":  # regions by s(r) = mean h; s_c(r) = mean h·p_c over their cells
                    class_maps, pixel_scores = pixel_scores[:-1], pixel_scores[-1]
                part, before = _image_candidates(
                    index_of[image_id], image_id, unit_, pixel_scores, source.shape(image_id), state, lookup,
                    reduction="mean" if class_maps is not None else region_reduction, q=q, clicks_of=clicks_of,
                    annotation=annotation, ignore=source.ignore_index,
                    precomputed=None if region_file is None else region_file.scores(strategy, image_id))
                if class_maps is not None:
                    from alseg.regions import region_scores

                    region_map = lookup(str(unit_), image_id, source.shape(image_id))
                    n_map = int(region_map.max()) + 1
                    class_parts.append(np.stack([region_scores(m, region_map, "mean", n_regions=n_map)[0]
                                                 for m in class_maps], axis=1)[part.region_id])
                parts.append(part)
                labelled_before += before
                progress(1)
            from alseg.regions import Candidates

            cands = Candidates.concat(parts)
            rng = np.random.default_rng(seed)
            if strategy == "clasp":
                order, beta = _clasp_order(cands, class_parts, candidates_ids, limit, clasp_round, rng,
                                           class_share=class_share, exclude_classes=exclude_classes,
                                           class_names=list(pool.class_names))
            else:
                order = _order(cands, strategy, sampler, beta, rng)
            rows = select_regions(cands, limit, kind, max_per_image=max_per_image, order=order)
            if rows.size == 0:
                warnings.append(f"no region fits in the budget of {limit} {kind}; nothing selected")

            # the new regions, images in the order of their first pick
            picked: dict[str, list[int]] = {}
            for r in rows:
                picked.setdefault(candidates_ids[int(cands.image_index[r])], []).append(int(cands.region_id[r]))
            new = [Labelled(i, str(unit_), sorted(regions)) for i, regions in picked.items()]
            new_state = merge_labelled(LabelledState(), new)
            new_pixels = int(cands.cost_pixels[rows].sum())
            if kind == "clicks":
                clicks = int(cands.cost_clicks[rows].sum())
            elif unit_.kind == "pixel":
                clicks = int(rows.size)  # one click per pixel, ground truth or not
            elif source.has_labels(picked):
                clicks = _clicks(picked, unit_, state, lookup, source, annotation)
            else:
                clicks = None
        finally:
            for reader in readers.values():
                reader.close()
            if region_file is not None:
                region_file.close()

    full_pixels = sum(h * w for h, w in (source.shape(i) for i in pool_ids if state.is_full(i)))
    total = int(full_pixels + labelled_before + new_pixels)
    used = {"regions": int(rows.size), "pixels": new_pixels, "clicks": clicks}[kind]
    selected = [{"id": i, "unit": str(unit_), "regions": [] if unit_.kind == "image" else sorted(r)}
                for i, r in picked.items()]
    pct = lambda n: 100.0 * n / pool_pixels if pool_pixels else 0.0  # noqa: E731
    result = RegionSelectResult(
        out_path=str(out_path), strategy=strategy, unit=str(unit_), selected=selected, budget=limit,
        budget_kind=kind, budget_used=int(used), n_regions=int(rows.size), n_offered=int(cands.score.shape[0]),
        n_unlabeled=len(candidates_ids), n_labeled=len(state.images), images_touched=len(picked),
        labelled_pixels=new_pixels, labelled_percent=pct(new_pixels), pool_pixels=pool_pixels,
        labelled_pixels_total=total, labelled_percent_total=pct(total), clicks=clicks, seed=seed,
        region_maps=store, warnings=warnings, labeled_updated=str(labeled_path) if update else None,
        seconds=time.perf_counter() - t0,
        details={"region_reduction": region_reduction, "q": q, "max_per_image": max_per_image,
                 "sampler": sampler, "beta": beta, "annotation": annotation, "config": source.config,
                 "data_root": source.data_root},
    )
    manifest = dict(
        stage="select",
        args={"strategy": strategy, "unit": str(unit_), "budget": budget, "budget_pixels": budget_pixels,
              "budget_clicks": budget_clicks, "labeled_path": labeled_path, "pool_path": pool_path, "seed": seed,
              "region_reduction": region_reduction, "q": q, "max_per_image": max_per_image, "sampler": sampler,
              "beta": beta, "annotation": annotation, "dataset_config": config, "data_root": data_root, "update": update,
              "region_store": region_store},
        inputs=[labeled_path, pool_path, store], outputs=[out_path], seconds=result.seconds, result=result,
    )
    merged = merge_labelled(state, new) if update else None
    _write(out_path, new_state, manifest, labeled_path if update else None, merged)
    return result


def _clicks(picked: dict[str, list[int]], unit: Unit, state: LabelledState, lookup, source: ImageSource,
            annotation: str) -> int:
    """Estimated clicks of the chosen regions (§11.3), with the overlap rule against the old state."""
    total = 0
    for image_id, regions in picked.items():
        shape = source.shape(image_id)
        region_map = np.zeros(shape, np.int32) if unit.kind == "image" else lookup(str(unit), image_id, shape)
        mask = labelled_mask(state, image_id, shape, lookup) if image_id in state.images else None
        per_region = _unit_clicks(source.labels(image_id), unit, region_map, annotation, source.ignore_index, mask)
        total += int(per_region[np.asarray(regions, dtype=np.int64)].sum())
    return total
