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
3. Superpixel maps come from the store beside the pool file (:func:`alseg.files.regionmaps.region_maps_path`);
   maps not yet stored are computed once and added, stored maps are never recomputed. Patch maps follow from
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

import contextlib
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alseg.errors import EmptyPoolError, InputError, UnknownName
from alseg.files.atomic import (check_not_input, check_writable, fsync_dir, removed_on_failure, temp_path,
                                write_bytes_atomic, write_error)
from alseg.files.labelled import FULL, Labelled, LabelledState, format_labelled, labelled_mask, merge_labelled
from alseg.files.manifest import manifest_path, write_manifest
from alseg.units import Unit, parse_unit

__all__ = ["REGION_STRATEGIES", "ImageSource", "RegionSelectResult", "parse_pixel_budget", "select_region_round"]

REGION_STRATEGIES = ("entropy", "margin", "least-confidence", "random")


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
            warnings: list[str]) -> tuple[dict[str, Any], str | None]:
    """Open region-map stores: every superpixel unit of the state and the round's own unit (computed for
    the images it lacks). Returns (unit -> reader, the round's store path)."""
    from alseg.files.regionmaps import RegionMapReader, region_maps_path
    from alseg.regions import ensure_region_maps

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


def _pixel_score_batches(pool, strategy: str, ids: list[str], batch_size: int, seed: int):
    """Yield ``(image_id, pixel scores (h, w) float64)`` in ``ids`` order, streaming the pool's logits.
    ``random``: uniform draws from a generator seeded by (seed, crc32(id)); the logits are not read."""
    if strategy == "random":
        for image_id in ids:
            rng = np.random.default_rng([seed, zlib.crc32(image_id.encode("utf-8"))])
            yield image_id, rng.random(pool.size(image_id))
        return
    from alseg import strategies as S

    scorer = S.get_pixel_scorer(strategy)
    for batch_ids, logits, _ in pool.iter_batches(batch_size, ids=ids):
        S.check_finite(logits, batch_ids)
        scores = scorer(S.softmax(logits, axis=1))
        for k, image_id in enumerate(batch_ids):
            yield image_id, np.asarray(scores[k], dtype=np.float64)


def _image_candidates(image_index: int, image_id: str, unit: Unit, pixel_scores: np.ndarray, shape,
                      state: LabelledState, lookup, *, reduction: str, q: float, clicks_of, annotation: str,
                      ignore: int = 255):
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
    region_map = lookup(str(unit), image_id, shape)
    n = int(region_map.max()) + 1
    scores, _ = region_scores(pixel_scores, region_map, reduction, q, n_regions=n)
    cost, offered = offered_regions(region_map, mask, n_regions=n)
    rows = np.flatnonzero(offered)
    if clicks_of is not None:
        from alseg.cost import region_clicks

        clicks = region_clicks(clicks_of(image_id), region_map, annotation, ignore=ignore, labelled_mask=mask,
                               n_regions=n)[rows]
    else:
        clicks = np.zeros(rows.size, dtype=np.int64)
    return Candidates(np.full(rows.size, image_index, dtype=np.int64), rows.astype(np.int64), scores[rows],
                      cost[rows], clicks), before


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
    outputs = [out_path, manifest_path(out_path)]
    previous = {p: p.read_bytes() for p in outputs if p.is_file()}
    tmp = temp_path(labeled_path)
    try:
        try:
            with open(tmp, "wb") as fh:
                fh.write(format_labelled(merged).encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise write_error(labeled_path, exc) from None
        write_bytes_atomic(out_path, format_labelled(new_state).encode("utf-8"))
        write_manifest(out_path, **manifest)
        try:
            _rename(tmp, labeled_path)
        except OSError as exc:
            raise write_error(labeled_path, exc) from None
        fsync_dir(labeled_path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        for p in outputs:
            with contextlib.suppress(Exception):
                if p in previous:
                    write_bytes_atomic(p, previous[p])
                else:
                    p.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------ the round


def _check_options(strategy, unit_text, budget, budget_pixels, budget_clicks, opts) -> tuple[Unit, str]:
    unit = parse_unit(unit_text)
    given = [name for name, v in (("--budget", budget), ("--budget-pixels", budget_pixels),
                                  ("--budget-clicks", budget_clicks)) if v is not None]
    if unit.kind == "image":
        raise InputError(f"{' and '.join(given[1:] or given)} count(s) pixels or clicks of regions: use a region "
                         "unit (--unit patch:S, superpixel:N or pixel:P), or --budget N alone for whole images")
    if len(given) != 1:
        raise InputError("give exactly one budget: --budget N (regions), --budget-pixels 2% or a pixel count, or "
                         f"--budget-clicks N; got {' and '.join(given) if given else 'none'}")
    if strategy not in REGION_STRATEGIES:
        raise InputError(f"--unit {unit} scores regions from pixel scores: use --strategy "
                         f"{', '.join(REGION_STRATEGIES)}; {strategy!r} selects whole images (--unit image)")
    for flag, bad in (("--scores", opts["scores_path"] is not None), ("--pool-ids", opts["pool_ids_path"] is not None),
                      ("--calibration", opts["calibration_path"] is not None), ("--stochastic", opts["stochastic"]),
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

    with PoolReader(pool_path) as pool:
        pool_ids = list(pool.ids)
        attrs = dict(pool.attrs)
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
        readers, store = _stores(str(pool_path), state, unit_, candidates_ids, source, warnings)
        try:
            lookup = region_lookup(readers)
            clicks_of = source.labels if kind == "clicks" else None
            parts, labelled_before = [], 0
            index_of = {i: k for k, i in enumerate(candidates_ids)}
            progress(0, total=len(candidates_ids))
            for image_id, pixel_scores in _pixel_score_batches(pool, strategy, candidates_ids, batch_size, seed):
                part, before = _image_candidates(
                    index_of[image_id], image_id, unit_, pixel_scores, source.shape(image_id), state, lookup,
                    reduction=region_reduction, q=q, clicks_of=clicks_of, annotation=annotation,
                    ignore=source.ignore_index)
                parts.append(part)
                labelled_before += before
                progress(1)
            from alseg.regions import Candidates

            cands = Candidates.concat(parts)
            rng = np.random.default_rng(seed)
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

    full_pixels = sum(h * w for h, w in (source.shape(i) for i in pool_ids if state.is_full(i)))
    total = int(full_pixels + labelled_before + new_pixels)
    used = {"regions": int(rows.size), "pixels": new_pixels, "clicks": clicks}[kind]
    selected = [{"id": i, "unit": str(unit_), "regions": sorted(r)} for i, r in picked.items()]
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
              "beta": beta, "annotation": annotation, "dataset_config": config, "data_root": data_root, "update": update},
        inputs=[labeled_path, pool_path, store], outputs=[out_path], seconds=result.seconds, result=result,
    )
    merged = merge_labelled(state, new) if update else None
    _write(out_path, new_state, manifest, labeled_path if update else None, merged)
    return result


def _clicks(picked: dict[str, list[int]], unit: Unit, state: LabelledState, lookup, source: ImageSource,
            annotation: str) -> int:
    """Estimated clicks of the chosen regions (§11.3), with the overlap rule against the old state."""
    from alseg.cost import region_clicks

    total = 0
    for image_id, regions in picked.items():
        shape = source.shape(image_id)
        region_map = lookup(str(unit), image_id, shape)
        mask = labelled_mask(state, image_id, shape, lookup) if image_id in state.images else None
        per_region = region_clicks(source.labels(image_id), region_map, annotation, ignore=source.ignore_index,
                                   labelled_mask=mask, n_regions=int(region_map.max()) + 1)
        total += int(per_region[np.asarray(regions, dtype=np.int64)].sum())
    return total
