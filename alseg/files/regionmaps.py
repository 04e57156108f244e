"""The region-map store: each image's region map (patch or superpixel ids at original resolution), computed
once and reused in every later round (docs/regions.md).

File ``<pool stem>.regions-<unit slug>.h5`` beside the pool file (``format = "alseg.regions"``,
``format_version`` 1)::

    /ids        (N,)    UTF-8 strings, unique (axes "id")
    /shapes     (N,2)   int32 (H, W) of each image at original resolution (axes "id,hw")
    /n_regions  (N,)    int32 number of regions of each map; ids are 0 .. n_regions-1 (axes "id")
    /offsets    (N,)    int64 where image i starts in /maps (axes "id")
    /maps       (M,)    int32 the maps, each flattened row-major, one after another (axes "pixel");
                        chunked, gzip-compressed (patch maps cost almost nothing)
    root attrs: format, format_version, unit ("superpixel:500"), params (JSON, sorted keys: everything the
                maps depend on), alseg_version, created, plus informational ones (``skimage_version``)

A store made with other ``unit``/``params`` is refused with one line: maps are never silently recomputed
or mixed. Writers stream one map at a time and write a temporary file beside the store, renamed at the end
(a file that exists is complete); adding ids copies the existing maps into the new file first.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np

from alseg import __version__
from alseg.errors import InputError
from alseg.files.atomic import atomic_path

FORMAT = "alseg.regions"
VERSION = 1
_CHUNK = 1 << 18  # pixels per chunk of /maps (1 MiB of int32)


def region_maps_path(pool_path: str | os.PathLike, unit: str) -> Path:
    """Where the region maps of ``unit`` for the pool file ``pool_path`` live:
    ``<dir>/<pool stem>.regions-<unit with ':' as '-'>.h5``."""
    pool_path = Path(pool_path)
    return pool_path.with_name(f"{pool_path.stem}.regions-{str(unit).replace(':', '-')}.h5")


def _params_text(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RegionMapReader:
    """Reads one image's map at a time. Use as a context manager.

    ``unit``/``params`` (optional): the store must have been made with exactly these, else
    :class:`InputError` in one line saying what differs and what to do.
    """

    def __init__(self, path: str | os.PathLike, *, unit: str | None = None, params: Mapping[str, Any] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: region-map store not found")
        try:
            self._fh = h5py.File(self.path, "r")
        except OSError:
            raise InputError(f"{self.path}: not an HDF5 file (or it is truncated)") from None
        try:
            self._check(unit, params)
        except BaseException:
            self._fh.close()
            raise

    def _check(self, unit: str | None, params: Mapping[str, Any] | None) -> None:
        fh, path = self._fh, self.path
        got = _text(fh.attrs.get("format"))
        if got != FORMAT:
            raise InputError(f"{path}: not an {FORMAT} file (format attribute is {got!r})")
        version = int(fh.attrs.get("format_version", -1))
        if version > VERSION:
            raise InputError(f"{path}: written by a newer alseg (format_version {version} > {VERSION}); upgrade alseg")
        if version != VERSION:
            raise InputError(f"{path}: unsupported format_version {version} (this alseg reads {VERSION})")
        missing = [n for n in ("ids", "shapes", "n_regions", "offsets", "maps") if n not in fh]
        if missing:
            raise InputError(f"{path}: missing dataset(s) {', '.join('/' + m for m in missing)}")
        self.unit = str(_text(fh.attrs.get("unit", "")))
        self.params = json.loads(_text(fh.attrs.get("params", "{}")))
        if unit is not None and str(unit) != self.unit:
            raise InputError(f"{path}: holds region maps of unit {self.unit}, not {unit}; use the store for {unit}")
        if params is not None and _params_text(params) != _params_text(self.params):
            raise InputError(
                f"{path}: made with other parameters ({_params_text(self.params)}, asked for {_params_text(params)}); "
                f"pass the same parameters or delete the store to recompute every map"
            )
        self.ids = [_text(i) for i in fh["ids"][()]]
        self._row = {i: r for r, i in enumerate(self.ids)}
        self._shapes = np.asarray(fh["shapes"][()], dtype=np.int64).reshape(-1, 2)
        self._n_regions = np.asarray(fh["n_regions"][()], dtype=np.int64)
        self._offsets = np.asarray(fh["offsets"][()], dtype=np.int64)

    def __enter__(self) -> "RegionMapReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._row

    def _index(self, image_id: str) -> int:
        row = self._row.get(image_id)
        if row is None:
            raise InputError(f"{self.path}: no region map for id {image_id!r}; rebuild the store for this pool")
        return row

    def shape(self, image_id: str) -> tuple[int, int]:
        h, w = self._shapes[self._index(image_id)]
        return int(h), int(w)

    def n_regions(self, image_id: str) -> int:
        return int(self._n_regions[self._index(image_id)])

    def region_map(self, image_id: str) -> np.ndarray:
        """(H, W) int32 region ids of ``image_id`` at original resolution."""
        row = self._index(image_id)
        h, w = (int(s) for s in self._shapes[row])
        start = int(self._offsets[row])
        return np.asarray(self._fh["maps"][start : start + h * w], dtype=np.int32).reshape(h, w)


def write_region_maps(
    path: str | os.PathLike,
    unit: str,
    params: Mapping[str, Any],
    items: Iterable[tuple[str, np.ndarray]],
    *,
    keep_from: str | os.PathLike | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a store at ``path`` atomically from ``items`` ``(image_id, region_map (H, W) int)`` (consumed one
    at a time). ``keep_from``: an existing store (same unit and params) whose maps are copied in first.
    ``info``: extra informational root attributes. Returns ``path``."""
    path = Path(path)
    params_text = _params_text(params)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.attrs["format"] = FORMAT
            fh.attrs["format_version"] = VERSION
            fh.attrs["unit"] = str(unit)
            fh.attrs["params"] = params_text
            fh.attrs["alseg_version"] = __version__
            fh.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            for key, value in (info or {}).items():
                fh.attrs[key] = value
            maps = fh.create_dataset(
                "maps", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(_CHUNK,), compression="gzip"
            )
            maps.attrs["axes"] = "pixel"
            ids: list[str] = []
            shapes: list[tuple[int, int]] = []
            n_regions: list[int] = []
            offsets: list[int] = []
            seen: set[str] = set()

            def add(image_id: str, region_map: np.ndarray) -> None:
                region_map = np.asarray(region_map)
                if region_map.ndim != 2 or not np.issubdtype(region_map.dtype, np.integer):
                    raise InputError(f"{path}: region map of {image_id!r} must be a 2-D integer array")
                if image_id in seen:
                    raise InputError(f"{path}: id {image_id!r} given more than once")
                if region_map.size and region_map.min() < 0:
                    raise InputError(f"{path}: region map of {image_id!r} holds negative region ids")
                seen.add(image_id)
                start = maps.shape[0]
                flat = region_map.astype(np.int32, copy=False).reshape(-1)
                maps.resize((start + flat.size,))
                maps[start:] = flat
                ids.append(image_id)
                shapes.append(region_map.shape)
                n_regions.append(int(region_map.max()) + 1 if region_map.size else 0)
                offsets.append(start)

            if keep_from is not None:
                with RegionMapReader(keep_from, unit=unit, params=params) as old:
                    for image_id in old.ids:
                        add(image_id, old.region_map(image_id))
            for image_id, region_map in items:
                add(str(image_id), region_map)
            fh.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            fh["ids"].attrs["axes"] = "id"
            fh.create_dataset("shapes", data=np.asarray(shapes, dtype=np.int32).reshape(-1, 2))
            fh["shapes"].attrs["axes"] = "id,hw"
            fh.create_dataset("n_regions", data=np.asarray(n_regions, dtype=np.int32))
            fh["n_regions"].attrs["axes"] = "id"
            fh.create_dataset("offsets", data=np.asarray(offsets, dtype=np.int64))
            fh["offsets"].attrs["axes"] = "id"
    return path
