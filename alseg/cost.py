"""Click cost of annotating a region (docs/algorithms.md §11.3; docs/regions.md says where alseg differs).

After Cai et al., "Revisiting Superpixels for Active Learning in Semantic Segmentation with Realistic
Annotation Costs", CVPR 2021, and their public cost script (``scripts/compute_anno_cost.py`` in
cailile/Revisiting-Superpixels-for-Active-Learning). For a label map Y (H, W) at original resolution and an
area A (a region of a region map), with ignore pixels excluded everywhere:

- c_c(A) :func:`component_counts`: connected components of Y restricted to A, per class, 8-connectivity
  (one click each to name the class).
- c_p(A) :func:`vertex_counts`: polygon vertices inside A and not on A's border. The polygons are estimated
  from Y (:func:`polygon_vertices`): each connected component's outline (holes filled: a hole is another
  component's outline) traced by ``skimage.measure.find_contours`` and simplified by Douglas-Peucker
  (``skimage.measure.approximate_polygon``) with tolerance 2 px.
- c_i(A) :func:`crossing_counts`: label changes along A's border, i.e. 4-adjacent pairs of border pixels of
  A whose labels differ.

A's border: the pixels of A with an 8-neighbour outside A (outside the image counts as outside A).
Totals (:func:`region_clicks`, :func:`image_clicks`): whole image c_c + c_p (every vertex counts, no border
is drawn); patch or superpixel annotated precisely c_c + c_i + c_p; superpixel annotated by its dominant
class 1; a pixel 1 (:data:`PIXEL_CLICKS`).
"""

from __future__ import annotations

import numpy as np

from alseg.errors import InputError, UnknownName

__all__ = [
    "CLICK_MODES",
    "PIXEL_CLICKS",
    "POLYGON_TOLERANCE",
    "border_pixels",
    "component_counts",
    "crossing_counts",
    "image_clicks",
    "polygon_vertices",
    "region_clicks",
    "vertex_counts",
]

POLYGON_TOLERANCE = 2.0  # px, Douglas-Peucker tolerance of the estimated polygons
PIXEL_CLICKS = 1
CLICK_MODES = ("precise", "dominant")


def _check(gt: np.ndarray, region_map: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    gt = np.asarray(gt)
    if gt.ndim != 2 or not np.issubdtype(gt.dtype, np.integer) or gt.size == 0:
        raise InputError(f"ground truth must be a non-empty 2-D integer label map, got shape {gt.shape}, {gt.dtype}")
    if region_map is None:
        return gt, None
    region_map = np.asarray(region_map)
    if region_map.shape != gt.shape or not np.issubdtype(region_map.dtype, np.integer):
        raise InputError(f"region map must be an integer map of the ground truth's shape {gt.shape}, got {region_map.shape}")
    return gt, region_map.astype(np.int64)


def _areas(region_map: np.ndarray, labelled_mask: np.ndarray | None, n_regions: int | None) -> tuple[np.ndarray, int]:
    """The region map with labelled pixels (outside every A) set to -1, and the number of regions."""
    n = int(region_map.max()) + 1 if n_regions is None else int(n_regions)
    if labelled_mask is not None:
        mask = np.asarray(labelled_mask, dtype=bool)
        if mask.shape != region_map.shape:
            raise InputError(f"labelled mask is {mask.shape}, the region map {region_map.shape}")
        region_map = np.where(mask, -1, region_map)
    return region_map, max(n, 0)


def _count(regions: np.ndarray, n: int) -> np.ndarray:
    regions = regions[regions >= 0]
    return np.bincount(regions, minlength=n)[:n].astype(np.int64)


def border_pixels(region_map: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of a region (id >= 0) with an 8-neighbour outside it; off the image counts as outside."""
    rm = np.asarray(region_map, dtype=np.int64)
    padded = np.pad(rm, 1, constant_values=-2)  # -2: no region id, not even "excluded" (-1)
    h, w = rm.shape
    border = np.zeros(rm.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                border |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != rm
    return border & (rm >= 0)


def component_counts(
    gt: np.ndarray,
    region_map: np.ndarray,
    *,
    ignore: int = 255,
    labelled_mask: np.ndarray | None = None,
    n_regions: int | None = None,
) -> np.ndarray:
    """c_c: (n_regions,) int64 connected components (8-connectivity, per class) of ``gt`` inside each region.

    ``labelled_mask`` (optional): pixels already labelled are not part of any region (overlap rule).
    """
    from skimage.measure import label

    gt, rm = _check(gt, region_map)
    rm, n = _areas(rm, labelled_mask, n_regions)
    valid = (gt != ignore) & (rm >= 0)
    classes = gt.astype(np.int64)
    n_classes = int(classes[valid].max()) + 1 if valid.any() else 1
    key = np.where(valid, rm * n_classes + classes + 1, 0)  # 0: background (ignore, or outside every region)
    components = label(key, background=0, connectivity=2).ravel()
    _, first = np.unique(components, return_index=True)
    first = first[components[first] > 0]
    return _count(rm.ravel()[first], n)


def crossing_counts(
    gt: np.ndarray,
    region_map: np.ndarray,
    *,
    ignore: int = 255,
    labelled_mask: np.ndarray | None = None,
    n_regions: int | None = None,
) -> np.ndarray:
    """c_i: (n_regions,) int64 label changes along each region's border: 4-adjacent pairs of border pixels of
    the same region whose labels differ (pairs with an ignore pixel do not count)."""
    gt, rm = _check(gt, region_map)
    rm, n = _areas(rm, labelled_mask, n_regions)
    border = border_pixels(rm)
    ok = border & (gt != ignore)
    found = []
    for a, b in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),  # right neighbours
                 ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):  # down neighbours
        pair = ok[a] & ok[b] & (rm[a] == rm[b]) & (gt[a] != gt[b])
        found.append(rm[a][pair])
    return _count(np.concatenate(found), n)


def _closed_start(contour: np.ndarray) -> np.ndarray:
    """A closed contour restarted at its lexicographically smallest point (an extreme point, so a true vertex):
    Douglas-Peucker always keeps the start, which must not be an arbitrary point on an edge."""
    ring = contour[:-1]
    i = int(np.lexsort((ring[:, 1], ring[:, 0]))[0])
    ring = np.concatenate([ring[i:], ring[:i]])
    return np.concatenate([ring, ring[:1]])


def polygon_vertices(gt: np.ndarray, *, ignore: int = 255, tolerance: float = POLYGON_TOLERANCE) -> np.ndarray:
    """(V, 2) int64 (y, x): the vertices of the polygons estimated from ``gt``, one polygon per component.

    Each connected component (8-connectivity, per class; ignore pixels are no class) with its holes filled is
    traced at level 0.5 by ``find_contours`` (a component touching the image edge gives an open outline that
    ends there) and simplified by ``approximate_polygon(tolerance)``. A closed outline starts at its
    lexicographically smallest point and its repeated last point is dropped. A vertex lies on a pixel edge;
    it is placed on the component's pixel beside it.
    """
    from scipy import ndimage
    from skimage.measure import approximate_polygon, find_contours, label

    gt, _ = _check(gt)
    key = np.where(gt != ignore, gt.astype(np.int64) + 1, 0)
    components = label(key, background=0, connectivity=2)
    big_h, big_w = gt.shape
    out = []
    for k, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        y0, y1 = max(box[0].start - 1, 0), min(box[0].stop + 1, big_h)
        x0, x1 = max(box[1].start - 1, 0), min(box[1].stop + 1, big_w)
        filled = ndimage.binary_fill_holes(components[y0:y1, x0:x1] == k)
        for contour in find_contours(filled.astype(np.float64), 0.5, fully_connected="high"):
            closed = len(contour) > 2 and np.array_equal(contour[0], contour[-1])
            if closed:
                contour = _closed_start(contour)
            poly = approximate_polygon(contour, tolerance)
            if closed and len(poly) > 1:
                poly = poly[:-1]
            lo, hi = np.floor(poly).astype(np.int64), np.ceil(poly).astype(np.int64)
            hi = np.minimum(hi, np.array(filled.shape) - 1)
            use_hi = filled[hi[:, 0], hi[:, 1]]
            pix = np.where(use_hi[:, None], hi, lo)
            out.append(pix + np.array([y0, x0]))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), dtype=np.int64)


def vertex_counts(
    gt: np.ndarray,
    region_map: np.ndarray,
    *,
    ignore: int = 255,
    tolerance: float = POLYGON_TOLERANCE,
    vertices: np.ndarray | None = None,
    labelled_mask: np.ndarray | None = None,
    n_regions: int | None = None,
) -> np.ndarray:
    """c_p: (n_regions,) int64 polygon vertices inside each region and not on its border.

    ``vertices`` (V, 2) (y, x): the image's polygon vertices (dataset polygons where they exist); default
    :func:`polygon_vertices` of ``gt``.
    """
    gt, rm = _check(gt, region_map)
    rm, n = _areas(rm, labelled_mask, n_regions)
    v = polygon_vertices(gt, ignore=ignore, tolerance=tolerance) if vertices is None else np.asarray(vertices, dtype=np.int64)
    if v.size == 0:
        return np.zeros(n, dtype=np.int64)
    v = v.reshape(-1, 2)
    inside = (v[:, 0] >= 0) & (v[:, 0] < rm.shape[0]) & (v[:, 1] >= 0) & (v[:, 1] < rm.shape[1])
    v = v[inside]
    border = border_pixels(rm)
    keep = ~border[v[:, 0], v[:, 1]]
    return _count(rm[v[keep, 0], v[keep, 1]], n)


def region_clicks(
    gt: np.ndarray,
    region_map: np.ndarray,
    mode: str = "precise",
    *,
    ignore: int = 255,
    tolerance: float = POLYGON_TOLERANCE,
    vertices: np.ndarray | None = None,
    labelled_mask: np.ndarray | None = None,
    n_regions: int | None = None,
) -> np.ndarray:
    """(n_regions,) int64 clicks to annotate each region: ``precise`` c_c + c_i + c_p, ``dominant`` 1.

    With ``labelled_mask`` a region is only its unlabelled pixels (the overlap rule of §11.1).
    """
    if mode not in CLICK_MODES:
        raise UnknownName(f"--annotation: unknown {mode!r}; choose one of: {', '.join(CLICK_MODES)}")
    gt, rm = _check(gt, region_map)
    n = int(rm.max()) + 1 if n_regions is None else int(n_regions)
    if mode == "dominant":
        return np.ones(n, dtype=np.int64)
    kw = dict(ignore=ignore, labelled_mask=labelled_mask, n_regions=n)
    return (
        component_counts(gt, rm, **kw)
        + crossing_counts(gt, rm, **kw)
        + vertex_counts(gt, rm, tolerance=tolerance, vertices=vertices, **kw)
    )


def image_clicks(
    gt: np.ndarray, *, ignore: int = 255, tolerance: float = POLYGON_TOLERANCE, vertices: np.ndarray | None = None
) -> int:
    """Clicks to annotate a whole image: c_c + c_p, every polygon vertex counted (no region border is drawn)."""
    gt, _ = _check(gt)
    c_c = int(component_counts(gt, np.zeros(gt.shape, dtype=np.int64), ignore=ignore, n_regions=1)[0])
    v = polygon_vertices(gt, ignore=ignore, tolerance=tolerance) if vertices is None else np.asarray(vertices).reshape(-1, 2)
    return c_c + int(v.shape[0])
