"""Region queries out to a labeling tool and back: which pixels of an image an annotator is asked to label.

``alseg select --unit patch:S|superpixel:N|pixel:P --out selected.jsonl`` writes a labelled-state file
(:mod:`alseg.files.labelled`) of the regions to label. ``alseg export --ids selected.jsonl`` turns each
image's regions into a *query mask* (the pixels of its queried regions, at the image's own resolution)
that the tool shows as a layer of its own, and ``alseg import --ids selected.jsonl`` keeps the returned
labels inside that mask only: everything outside it is unlabeled (the ignore index on disk).

Region maps are resolved as everywhere in alseg: patch maps from the image size, pixel ids y·W + x,
superpixel maps from a region-map store (:mod:`alseg.files.regionmaps`) given for the unit, or, without
one, computed from the image with the parameters of :func:`alseg.regions.region_map_params` (SLIC is
deterministic, so these are the maps a ``select`` with the default parameters used).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from alseg.errors import InputError
from alseg.files.labelled import FULL, LabelledState, labelled_mask
from alseg.units import parse_unit


def read_query_state(path: str | os.PathLike) -> LabelledState | None:
    """The labelled state of ``path`` when it is an ``alseg.labelled`` file (regions to label), ``None``
    when it is a plain id list (whole images, exported as always)."""
    from alseg.files.labelled import read_labelled
    from alseg.partial import is_labelled_state

    if not is_labelled_state(path):
        return None
    state = read_labelled(path)
    if not state.ids:
        raise InputError(f"{path}: the labelled state lists no image; nothing to export")
    return state


def regions_record(units: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """An image's entry of the state as JSON: unit -> sorted region ids (``{"image": []}``: the whole image)."""
    return {str(u): [int(r) for r in regions] for u, regions in units.items()}


class RegionResolver:
    """``(unit, image_id, (H, W)) -> region map`` for the units of a query state.

    Patch maps come from the shape. A superpixel unit takes its maps from ``stores[unit]`` (a region-map
    store; an image it lacks is an error) or, without a store, computes each image's map from the image
    file (``image_path(id)``) with the default SLIC parameters. ``info`` records, per superpixel unit used,
    ``{"source": "store"|"computed", "path", "params"}``.
    """

    def __init__(self, stores: Mapping[str, str | os.PathLike], image_path: Callable[[str], str]):
        self.paths = {str(parse_unit(u)): Path(p) for u, p in stores.items()}
        self.image_path = image_path
        self._readers: dict[str, Any] = {}
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self.info: dict[str, dict[str, Any]] = {}

    def __call__(self, unit: str, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        from alseg.regions import compute_region_map, patch_map, region_map_params

        u = parse_unit(unit)
        if u.kind == "patch":
            return patch_map(shape[0], shape[1], u.size)
        if u.kind != "superpixel":
            raise InputError(f"unit {u} has no region map")
        key = (str(u), image_id)
        if key in self._cache:
            return self._cache[key]
        if str(u) in self.paths:
            from alseg.files.regionmaps import RegionMapReader

            if str(u) not in self._readers:
                self._readers[str(u)] = RegionMapReader(self.paths[str(u)], unit=str(u))
                self.info[str(u)] = {"source": "store", "path": str(self.paths[str(u)]),
                                     "params": self._readers[str(u)].params}
            reader = self._readers[str(u)]
            region_map = reader.region_map(image_id)
            if tuple(region_map.shape) != tuple(shape):
                raise InputError(f"{reader.path}: the region map of {image_id!r} is {region_map.shape[1]}x"
                                 f"{region_map.shape[0]}, the image {shape[1]}x{shape[0]}; pass the store of "
                                 "these images")
        else:
            from alseg.partial import load_rgb

            self.info.setdefault(str(u), {"source": "computed", "path": None, "params": region_map_params(u)})
            region_map = compute_region_map(u, load_rgb(self.image_path(image_id)))
        self._cache = {key: region_map}  # one image at a time: a task asks for its maps together
        return region_map

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers = {}

    def __enter__(self) -> "RegionResolver":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def query_masks(state: LabelledState, image_id: str, shape: tuple[int, int], resolver: RegionResolver,
                source: str) -> dict[str, np.ndarray]:
    """Unit -> (H, W) bool: the pixels of ``image_id``'s queried regions of each unit (``{"image": all}``
    for an image listed whole). A region id outside its map is one error line naming ``source``."""
    units = state.images.get(image_id)
    if units is None:
        raise InputError(f"{source}: lists no region of {image_id!r}")
    h, w = (int(s) for s in shape)
    if FULL in units:
        return {FULL: np.ones((h, w), dtype=bool)}
    out = {}
    for unit, regions in units.items():
        try:
            out[unit] = labelled_mask(LabelledState({image_id: {unit: tuple(regions)}}), image_id, (h, w), resolver)
        except InputError as exc:
            msg = str(exc)
            raise InputError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    return out


def union(masks: Mapping[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(tuple(int(s) for s in shape), dtype=bool)
    for mask in masks.values():
        out |= mask
    return out


def parse_region_maps(value: str | os.PathLike | Sequence[str | os.PathLike] | None,
                      source: str = "--region-maps") -> dict[str, Path]:
    """unit -> store path from a comma list (as ``train --region-maps`` takes it) or a list of paths; each
    must be a region-map store, and two stores of one unit are refused."""
    from alseg.partial import open_stores

    if value is None:
        return {}
    if isinstance(value, (str, os.PathLike)):
        items = [p.strip() for p in str(value).split(",") if p.strip()]
    else:
        items = [str(p) for p in value if str(p).strip()]
    return open_stores([Path(p) for p in items], source)


def unpainted_regions(units: Mapping[str, Sequence[int]], image_id: str, painted: np.ndarray,
                      resolver: RegionResolver) -> int:
    """How many queried regions of one image hold no painted pixel (``painted`` (H, W) bool)."""
    shape = painted.shape
    n = 0
    for unit, regions in units.items():
        if unit == FULL:
            n += int(not painted.any())
            continue
        ids = np.asarray(regions, dtype=np.int64)
        if parse_unit(unit).kind == "pixel":
            n += int((~painted.ravel()[ids]).sum())
            continue
        region_map = resolver(unit, image_id, shape)
        hit = np.zeros(int(region_map.max()) + 1, dtype=bool)
        hit[region_map[painted]] = True
        n += int((~hit[ids]).sum())
    return n
