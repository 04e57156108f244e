"""The region-scores file of ``alseg score --unit U`` (``format = "alseg.region_scores"``, version 1).

One HDF5 file per pool and unit, read by ``alseg select --unit U --scores FILE``::

    /ids              (N,)     str    pool ids, in the pool's order
    /offsets          (N+1,)   int64  image i's regions are rows offsets[i] .. offsets[i+1] (region id = row - offsets[i])
    /areas            (R,)     int64  each region's area in original pixels
    /scores/<name>    (R,)     float64 region score of strategy <name> (higher = more informative)
    root attrs: format, format_version, unit, reduction, q, pool_path, pool_sha256, region_maps (the superpixel
                store used, or ""), alseg_version, created; /scores/<name> attrs: params (JSON)

Every region of every image is scored, labelled or not: which regions are on offer depends on the labelled
state, which ``select`` applies (docs/regions.md). The file is written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from alseg import __version__
from alseg.errors import InputError
from alseg.files.atomic import atomic_path, check_writable

FORMAT = "alseg.region_scores"
VERSION = 1


def write_region_scores(path: str | os.PathLike, ids: Sequence[str], offsets: np.ndarray, areas: np.ndarray,
                        scores: Mapping[str, np.ndarray], *, attrs: Mapping[str, Any],
                        params: Mapping[str, Mapping[str, Any]] | None = None, overwrite: bool = False) -> Path:
    from alseg.files.hdf5 import STR_DTYPE, _now

    path = check_writable(path, overwrite=overwrite)
    offsets = np.asarray(offsets, dtype=np.int64)
    total = int(offsets[-1]) if offsets.size else 0
    if offsets.shape != (len(ids) + 1,) or np.asarray(areas).shape != (total,):
        raise ValueError(f"offsets {offsets.shape} / areas {np.asarray(areas).shape} do not fit {len(ids)} ids")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        fh.attrs.update(format=FORMAT, format_version=VERSION, alseg_version=__version__, created=_now())
        for key, value in attrs.items():
            fh.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
        fh.create_dataset("ids", data=np.asarray(list(ids), dtype=object), dtype=STR_DTYPE)
        fh.create_dataset("offsets", data=offsets)
        fh.create_dataset("areas", data=np.asarray(areas, dtype=np.int64))
        grp = fh.create_group("scores")
        for name, values in scores.items():
            values = np.asarray(values, dtype=np.float64)
            if values.shape != (total,):
                raise ValueError(f"region scores {name!r} have shape {values.shape}, expected ({total},)")
            grp.create_dataset(name, data=values).attrs["params"] = json.dumps((params or {}).get(name, {}))
    return path


class RegionScoresReader:
    """Region scores of one strategy per image: ``reader.scores(name, image_id)`` -> (n_regions,) float64."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.fh = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise InputError(f"{self.path}: region-scores file not found") from None
        except OSError as exc:
            raise InputError(f"{self.path}: not an HDF5 file ({exc})") from None
        a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.fh.attrs.items()}
        if a.get("format") != FORMAT:
            self.fh.close()
            raise InputError(f"{self.path}: not a region-scores file (format {a.get('format')!r}); write one with "
                             "`alseg score POOL --unit U --strategy NAME --out FILE`")
        if int(a.get("format_version", -1)) != VERSION:
            self.fh.close()
            raise InputError(f"{self.path}: unsupported format_version {a.get('format_version')} (this alseg reads 1)")
        self.attrs = a
        self.unit, self.reduction, self.q = str(a["unit"]), str(a["reduction"]), float(a["q"])
        self.offsets = self.fh["offsets"][:]
        self.index = {i.decode() if isinstance(i, bytes) else str(i): k for k, i in enumerate(self.fh["ids"][:])}
        self.names = list(self.fh["scores"])

    def scores(self, name: str, image_id: str) -> np.ndarray:
        if name not in self.names:
            raise InputError(f"{self.path}: holds no region scores of {name!r} (has: {', '.join(self.names)}); "
                             f"rerun `alseg score --unit {self.unit} --strategy {name}`")
        if image_id not in self.index:
            raise InputError(f"{self.path}: has no regions of id {image_id!r}; it was scored from another pool")
        k = self.index[image_id]
        return self.fh["scores"][name][int(self.offsets[k]) : int(self.offsets[k + 1])]

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> "RegionScoresReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
