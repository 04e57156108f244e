"""Query units below the image: region maps, the cell-to-region rule, region scores and region selection.

docs/algorithms.md §11.1 is the definition; docs/regions.md explains it for users. Pure numpy (torch only
through :func:`alseg.labels.labels_on_grid`) except :func:`ensure_region_maps`, which computes missing maps
and hands them to the store in :mod:`alseg.files.regionmaps`.

Resolutions. Region maps live at the original image resolution (H, W); pixel scores live at the logit
resolution (h, w). Logit cell (i, j) belongs to the region under its centre pixel
(⌊(i + 0.5)·H/h⌋, ⌊(j + 0.5)·W/w⌋), the rule of :func:`alseg.labels.labels_on_grid`. A region that owns no
cell (smaller than a logit cell) takes the score of the cell under its centroid.

Score direction: higher = more informative = picked first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from alseg.errors import EmptyPoolError, InputError, UnknownName
from alseg.files.regionmaps import RegionMapReader, region_maps_path, write_region_maps
from alseg.labels import centre_indices, labels_on_grid
from alseg.units import UNIT_KINDS, Unit, parse_unit

__all__ = [
    "BUDGET_KINDS",
    "REDUCTIONS",
    "SLIC_COMPACTNESS",
    "UNIT_KINDS",
    "Candidates",
    "PixelQueries",
    "Unit",
    "cell_regions",
    "compute_region_map",
    "ensure_region_maps",
    "offered_regions",
    "parse_unit",
    "patch_map",
    "pixel_queries",
    "region_areas",
    "region_lookup",
    "region_map_params",
    "region_maps_path",
    "region_scores",
    "select_regions",
    "superpixel_map",
    "total_cost",
]

REDUCTIONS = ("mean", "sum", "max", "top-q")
BUDGET_KINDS = ("regions", "pixels", "clicks")
# skimage's default for SLIC in CIELAB: colour distance (L*a*b*, 0..100) weighed against spatial distance
# in units of the grid step; 10 gives compact superpixels that still follow strong edges.
SLIC_COMPACTNESS = 10.0


# ------------------------------------------------------------------------------------------ region maps


def patch_map(height: int, width: int, size: int) -> np.ndarray:
    """(H, W) int32 patch ids of ``size`` x ``size`` tiles, row-major from the top-left; the last row and column
    of tiles are clipped at the border. r = (y div S)·⌈W/S⌉ + (x div S)."""
    height, width, size = int(height), int(width), int(size)
    if height < 1 or width < 1 or size < 1:
        raise InputError(f"patch map needs height, width, size >= 1, got {height}, {width}, {size}")
    cols = -(-width // size)
    ys = (np.arange(height, dtype=np.int32) // size) * cols
    xs = np.arange(width, dtype=np.int32) // size
    return ys[:, None] + xs[None, :]


def superpixel_map(image: np.ndarray, n_segments: int, *, compactness: float = SLIC_COMPACTNESS) -> np.ndarray:
    """SLIC superpixels of an RGB image (H, W, 3) uint8 -> (H, W) int32 ids 0 .. n-1, consecutive.

    scikit-image ``segmentation.slic`` on the image as float RGB in [0, 1] (converted to CIELAB inside
    slic), ``n_segments`` = N, ``compactness`` (default 10, see :data:`SLIC_COMPACTNESS`), ``start_label=0``,
    connectivity enforced, skimage's other defaults (10 iterations, no smoothing). SLIC starts from a
    regular grid and has no randomness, so the same image gives the same map. The result is relabelled to
    consecutive ids in order of first label (n is about N, rarely exactly N).
    """
    from skimage.segmentation import slic
    from skimage.util import img_as_float

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"superpixels need an RGB image (H, W, 3), got shape {image.shape}")
    if int(n_segments) < 1:
        raise InputError(f"superpixel:N needs N >= 1, got {n_segments}")
    labels = slic(
        img_as_float(image), n_segments=int(n_segments), compactness=float(compactness), start_label=0, channel_axis=-1
    )
    _, consecutive = np.unique(labels, return_inverse=True)
    return consecutive.reshape(labels.shape).astype(np.int32)


def region_map_params(unit: Unit | str, *, compactness: float = SLIC_COMPACTNESS) -> dict[str, Any]:
    """Everything a unit's region maps depend on; a store made with other params is refused."""
    unit = parse_unit(str(unit))
    if unit.kind == "patch":
        return {"unit": str(unit), "size": unit.size}
    if unit.kind == "superpixel":
        return {"unit": str(unit), "method": "skimage.slic", "n_segments": unit.size,
                "compactness": float(compactness), "start_label": 0, "image": "float RGB"}
    raise InputError(f"unit {unit} has no region map (only patch:S and superpixel:N do)")


def compute_region_map(unit: Unit | str, image: np.ndarray, *, compactness: float = SLIC_COMPACTNESS) -> np.ndarray:
    """The region map of one image (H, W, 3) for a patch or superpixel unit -> (H, W) int32."""
    unit = parse_unit(str(unit))
    image = np.asarray(image)
    if unit.kind == "patch":
        return patch_map(image.shape[0], image.shape[1], unit.size)
    if unit.kind == "superpixel":
        return superpixel_map(image, unit.size, compactness=compactness)
    raise InputError(f"unit {unit} has no region map (only patch:S and superpixel:N do)")


def ensure_region_maps(
    path: str | os.PathLike,
    unit: Unit | str,
    ids: Sequence[str],
    load_image: Callable[[str], np.ndarray],
    *,
    compactness: float = SLIC_COMPACTNESS,
    progress: Callable[[int], None] = lambda n: None,
) -> Path:
    """Make sure the store at ``path`` holds the region map of every id in ``ids``; returns ``path``.

    Maps already stored are reused, never recomputed; a store made with other parameters is refused
    (:class:`InputError`). Missing maps are computed one image at a time (``load_image(id)`` -> (H, W, 3)
    uint8) and streamed into a new store, which replaces the old one atomically. ``progress(n)`` is called
    after each computed map. Use :func:`alseg.files.regionmaps.region_maps_path` to place it beside a pool.
    """
    unit = parse_unit(str(unit))
    path = Path(path)
    params = region_map_params(unit, compactness=compactness)
    have: set[str] = set()
    if path.exists():
        with RegionMapReader(path, unit=str(unit), params=params) as old:
            have = set(old.ids)
    missing = [i for i in dict.fromkeys(ids) if i not in have]
    if not missing:
        return path

    def items() -> Iterable[tuple[str, np.ndarray]]:
        for image_id in missing:
            yield image_id, compute_region_map(unit, load_image(image_id), compactness=compactness)
            progress(1)

    import skimage

    return write_region_maps(
        path, str(unit), params, items(), keep_from=path if have else None,
        info={"skimage_version": skimage.__version__},
    )


def region_lookup(stores: Mapping[str, RegionMapReader] | None = None) -> Callable[[str, str, tuple[int, int]], np.ndarray]:
    """A ``(unit, image_id, (H, W)) -> region map`` function for :func:`alseg.files.labelled.labelled_mask`.

    Patch maps are computed from the shape; superpixel maps come from ``stores[unit]`` (open readers).
    """
    stores = dict(stores or {})

    def lookup(unit: str, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        u = parse_unit(unit)
        if u.kind == "patch":
            return patch_map(shape[0], shape[1], u.size)
        if str(u) not in stores:
            raise InputError(f"no region-map store open for unit {u} (needed for image {image_id!r})")
        region_map = stores[str(u)].region_map(image_id)
        if tuple(region_map.shape) != tuple(shape):
            raise InputError(
                f"{stores[str(u)].path}: region map of {image_id!r} is {region_map.shape}, the image is {tuple(shape)}"
            )
        return region_map

    return lookup


# ------------------------------------------------------------------------------------------ reductions


def _check_map(region_map: np.ndarray) -> np.ndarray:
    region_map = np.asarray(region_map)
    if region_map.ndim != 2 or not np.issubdtype(region_map.dtype, np.integer):
        raise InputError(f"a region map must be a 2-D integer array, got shape {region_map.shape}, {region_map.dtype}")
    if region_map.size == 0:
        raise InputError("a region map must not be empty")
    if region_map.min() < 0:
        raise InputError("a region map must hold region ids >= 0")
    return region_map


def _n_regions(region_map: np.ndarray, n_regions: int | None) -> int:
    top = int(region_map.max()) + 1
    if n_regions is None:
        return top
    if n_regions < top:
        raise InputError(f"n_regions = {n_regions}, but the region map holds id {top - 1}")
    return int(n_regions)


def cell_regions(region_map: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) int64: the region under each logit cell's centre (the rule of ``labels_on_grid``)."""
    region_map = _check_map(region_map)
    return labels_on_grid(region_map.astype(np.int64, copy=False), grid).numpy()


def region_areas(region_map: np.ndarray, n_regions: int | None = None) -> np.ndarray:
    """(n_regions,) int64 pixels of each region at original resolution."""
    region_map = _check_map(region_map)
    return np.bincount(region_map.ravel(), minlength=_n_regions(region_map, n_regions)).astype(np.int64)


def _centroid_cells(region_map: np.ndarray, n: int, grid: tuple[int, int]) -> np.ndarray:
    """(n,) flat index i·w + j of the logit cell under each region's centroid.

    The centroid is the mean of the region's pixel centres (y + 0.5, x + 0.5); the cell under it is the one
    whose span [i·H/h, (i+1)·H/h) x [j·W/w, (j+1)·W/w) holds it. Regions of area 0 get cell 0.
    """
    big_h, big_w = region_map.shape
    h, w = grid
    flat = region_map.ravel()
    area = np.bincount(flat, minlength=n).astype(np.float64)
    ys, xs = np.divmod(np.arange(flat.size, dtype=np.float64), big_w)
    safe = np.maximum(area, 1.0)
    cy = (np.bincount(flat, weights=ys, minlength=n) / safe) + 0.5
    cx = (np.bincount(flat, weights=xs, minlength=n) / safe) + 0.5
    i = np.clip(np.floor(cy * h / big_h), 0, h - 1).astype(np.int64)
    j = np.clip(np.floor(cx * w / big_w), 0, w - 1).astype(np.int64)
    return i * w + j


def _top_count(n_cells: np.ndarray, q: float) -> np.ndarray:
    # the same rule as strategies.aggregate: the top max(1, floor(q/100 · n)) cells, slack for float rounding
    k = np.floor(q / 100.0 * n_cells + 1e-9).astype(np.int64)
    return np.minimum(np.maximum(k, 1), np.maximum(n_cells, 1))


def region_scores(
    pixel_scores: np.ndarray,
    region_map: np.ndarray,
    how: str = "mean",
    q: float = 10.0,
    *,
    n_regions: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Region scores of one image -> (scores (n_regions,) float64, areas (n_regions,) int64).

    ``pixel_scores`` (h, w) at logit resolution, ``region_map`` (H, W) int ids at original resolution,
    ``n_regions`` defaults to max id + 1. Each logit cell belongs to the region under its centre; a region's
    score is the reduction of its cells' scores: ``mean`` (default), ``sum``, ``max`` or ``top-q`` (mean of
    the highest max(1, ⌊q/100 · n_cells⌋) cells). A region that owns no cell takes the score of the cell
    under its centroid (for every reduction). Areas count original pixels; an id with area 0 scores 0.
    """
    if how not in REDUCTIONS:
        raise UnknownName(f"--region-aggregation: unknown {how!r}; choose one of: {', '.join(REDUCTIONS)}")
    if how == "top-q" and not (0.0 < q <= 100.0):
        raise InputError(f"--q (the top-q percentage) must be in (0, 100], got {q}")
    region_map = _check_map(region_map)
    s = np.asarray(pixel_scores, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        raise InputError(f"pixel scores must have shape (h, w), got shape {s.shape}")
    n = _n_regions(region_map, n_regions)
    areas = np.bincount(region_map.ravel(), minlength=n).astype(np.int64)
    cells = cell_regions(region_map, s.shape).ravel()
    flat = s.ravel()
    n_cells = np.bincount(cells, minlength=n)
    if how == "mean":
        scores = np.bincount(cells, weights=flat, minlength=n) / np.maximum(n_cells, 1)
    elif how == "sum":
        scores = np.bincount(cells, weights=flat, minlength=n)
    else:
        order = np.lexsort((-flat, cells))  # by region, then score descending
        r_sorted = cells[order]
        start = np.concatenate(([0], np.cumsum(n_cells)[:-1]))
        rank = np.arange(order.size) - start[r_sorted]
        keep_k = np.ones(n, dtype=np.int64) if how == "max" else _top_count(n_cells, q)
        kept = rank < keep_k[r_sorted]
        scores = np.bincount(r_sorted[kept], weights=flat[order][kept], minlength=n) / keep_k
    orphans = n_cells == 0
    if orphans.any():
        scores[orphans] = flat[_centroid_cells(region_map, n, s.shape)[orphans]]
    scores[areas == 0] = 0.0
    return scores, areas


def offered_regions(
    region_map: np.ndarray, labelled_mask: np.ndarray | None = None, *, n_regions: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The overlap rule -> (cost_pixels (n,) int64 unlabelled pixels of each region, offered (n,) bool).

    A region costs only its unlabelled pixels; one with more than half its pixels labelled (so also one
    already labelled, or one of area 0) is not offered.
    """
    region_map = _check_map(region_map)
    n = _n_regions(region_map, n_regions)
    flat = region_map.ravel()
    areas = np.bincount(flat, minlength=n).astype(np.int64)
    if labelled_mask is None:
        labelled = np.zeros(n, dtype=np.int64)
    else:
        mask = np.asarray(labelled_mask, dtype=bool)
        if mask.shape != region_map.shape:
            raise InputError(f"labelled mask is {mask.shape}, the region map {region_map.shape}")
        labelled = np.bincount(flat[mask.ravel()], minlength=n).astype(np.int64)
    unlabelled = areas - labelled
    offered = (areas > 0) & (2 * labelled <= areas) & (unlabelled > 0)
    return unlabelled, offered


# ------------------------------------------------------------------------------------------ pixel unit


@dataclass(frozen=True)
class PixelQueries:
    """The pixels one image offers: ``yx`` (P', 2) int64 at original resolution, ``region_ids`` (P',) int64
    = y·W + x (a pixel's id in the labelled-state file), ``scores`` (P',) float64, best first."""

    yx: np.ndarray
    region_ids: np.ndarray
    scores: np.ndarray


def pixel_queries(pixel_scores: np.ndarray, labelled_mask: np.ndarray, n_pixels: int) -> PixelQueries:
    """The ``pixel:P`` unit (PixelPick-style): the P highest-scoring unlabelled pixels of one image.

    ``pixel_scores`` (h, w) at logit resolution, ``labelled_mask`` (H, W) bool at original resolution.
    Each logit cell stands for the original pixel under its centre, (⌊(i + 0.5)·H/h⌋, ⌊(j + 0.5)·W/w⌋);
    cells whose pixel is labelled are left out; where several cells share one pixel (logits larger than the
    image) the pixel keeps its best cell. The P best remaining pixels are returned, best first, ties by
    row-major cell index; fewer when fewer are left.
    """
    s = np.asarray(pixel_scores, dtype=np.float64)
    mask = np.asarray(labelled_mask, dtype=bool)
    if s.ndim != 2 or s.size == 0 or mask.ndim != 2 or mask.size == 0:
        raise InputError(f"pixel scores (h, w) and labelled mask (H, W) must be 2-D, got {s.shape}, {mask.shape}")
    if int(n_pixels) < 1:
        raise InputError(f"pixel:P needs P >= 1, got {n_pixels}")
    (h, w), (big_h, big_w) = s.shape, mask.shape
    rows = centre_indices(big_h, h).numpy()
    cols = centre_indices(big_w, w).numpy()
    pixel_id = (rows[:, None] * big_w + cols[None, :]).ravel()
    flat = s.ravel()
    order = np.lexsort((np.arange(flat.size), -flat))
    order = order[~mask.ravel()[pixel_id[order]]]
    _, first = np.unique(pixel_id[order], return_index=True)  # each pixel once, at its best cell
    order = order[np.sort(first)][: int(n_pixels)]
    ids = pixel_id[order].astype(np.int64)
    return PixelQueries(yx=np.stack(np.divmod(ids, big_w), axis=1), region_ids=ids, scores=flat[order])


# ------------------------------------------------------------------------------------------ selection


@dataclass(frozen=True)
class Candidates:
    """Regions on offer, as aligned (n,) arrays. ``image_index`` is the image's rank in the id-sorted list of
    images (ties in score break by it, then by ``region_id``); costs are non-negative integers."""

    image_index: np.ndarray
    region_id: np.ndarray
    score: np.ndarray
    cost_pixels: np.ndarray
    cost_clicks: np.ndarray

    @classmethod
    def concat(cls, parts: Iterable["Candidates"]) -> "Candidates":
        parts = list(parts)
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty, np.zeros(0), empty, empty)
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("image_index", "region_id", "score", "cost_pixels", "cost_clicks")))


def _int_costs(values: np.ndarray, what: str, n: int) -> np.ndarray:
    v = np.asarray(values)
    if v.shape != (n,):
        raise InputError(f"{what} must have shape ({n},), got {v.shape}")
    if v.size and (not np.all(np.isfinite(v)) or np.any(v < 0) or np.any(v != np.round(v))):
        raise InputError(f"{what} must be non-negative integers")
    return v.astype(np.int64)


def _occurrence_rank(groups: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements share its group."""
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    starts = np.flatnonzero(np.concatenate(([True], g[1:] != g[:-1])))
    lengths = np.diff(np.concatenate((starts, [g.size])))
    rank = np.empty(groups.size, dtype=np.int64)
    rank[order] = np.arange(g.size) - np.repeat(starts, lengths)
    return rank


def select_regions(
    candidates: Candidates,
    budget: int,
    kind: str = "regions",
    *,
    max_per_image: int | None = None,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy budgeted selection over regions -> rows of ``candidates`` in pick order (int64).

    Candidates are visited in ``order`` (rows, e.g. from a sampler of §11.4; default: score descending,
    ties by image then region id). A candidate is taken when its cost (1 per region, ``cost_pixels`` or
    ``cost_clicks`` for ``kind`` regions|pixels|clicks) fits in what is left of ``budget`` and its image has
    fewer than ``max_per_image`` taken; otherwise it is skipped and the next one that fits is taken. The
    total never exceeds the budget. Vectorised: each pass takes the longest prefix that fits at once.
    """
    if kind not in BUDGET_KINDS:
        raise UnknownName(f"--budget-unit: unknown {kind!r}; choose one of: {', '.join(BUDGET_KINDS)}")
    n = int(np.asarray(candidates.score).shape[0])
    image_index = np.asarray(candidates.image_index, dtype=np.int64)
    region_id = np.asarray(candidates.region_id, dtype=np.int64)
    score = np.asarray(candidates.score, dtype=np.float64)
    if image_index.shape != (n,) or region_id.shape != (n,):
        raise InputError("candidate arrays must all have the same length")
    if n and not np.all(np.isfinite(score)):
        raise InputError("candidate scores hold NaN or inf")
    if kind == "regions":
        costs = np.ones(n, dtype=np.int64)
    else:
        costs = _int_costs(candidates.cost_pixels if kind == "pixels" else candidates.cost_clicks, f"cost_{kind}", n)
    if int(budget) != budget or budget < 0:
        raise InputError(f"--budget must be a non-negative integer, got {budget}")
    if max_per_image is not None and max_per_image < 1:
        raise InputError(f"--max-per-image must be >= 1, got {max_per_image}")
    if n == 0:
        raise EmptyPoolError("no region is on offer (every region is labelled or more than half labelled)")
    if order is None:
        rest = np.lexsort((region_id, image_index, -score))
    else:
        rest = np.asarray(order, dtype=np.int64)
        if rest.ndim != 1 or (rest.size and (rest.min() < 0 or rest.max() >= n)) or np.unique(rest).size != rest.size:
            raise InputError(f"order must list distinct candidate rows in 0 .. {n - 1}")
    _, image_group = np.unique(image_index, return_inverse=True)
    taken_per_image = np.zeros(int(image_group.max()) + 1, dtype=np.int64)
    remaining = int(budget)
    chosen: list[np.ndarray] = []
    while rest.size:
        keep = costs[rest] <= remaining
        if max_per_image is not None:
            keep &= taken_per_image[image_group[rest]] < max_per_image
        rest = rest[keep]
        if not rest.size:
            break
        fits = np.cumsum(costs[rest]) <= remaining
        if max_per_image is not None:
            g = image_group[rest]
            fits &= _occurrence_rank(g) + taken_per_image[g] < max_per_image
        stop = rest.size if fits.all() else int(np.argmin(fits))
        take = rest[:stop]
        chosen.append(take)
        remaining -= int(costs[take].sum())
        np.add.at(taken_per_image, image_group[take], 1)
        rest = rest[stop + 1 :]  # the candidate at `stop` does not fit (or its image is full): skipped
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def total_cost(candidates: Candidates, rows: np.ndarray, kind: str = "regions") -> int:
    """What the chosen ``rows`` cost in ``kind`` units."""
    rows = np.asarray(rows, dtype=np.int64)
    if kind == "regions":
        return int(rows.size)
    if kind not in BUDGET_KINDS:
        raise UnknownName(f"--budget-unit: unknown {kind!r}; choose one of: {', '.join(BUDGET_KINDS)}")
    costs = candidates.cost_pixels if kind == "pixels" else candidates.cost_clicks
    return int(np.asarray(costs, dtype=np.int64)[rows].sum())

