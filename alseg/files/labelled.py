"""The labelled state at pixel level: which images, regions and pixels carry labels (docs/regions.md).

File format ``alseg.labelled``, ``format_version`` 1: UTF-8 JSON Lines. The first line is the header, then
one line per fully labelled image or per (image, unit) with labelled regions::

    {"format": "alseg.labelled", "format_version": 1}
    {"id": "aachen/000001.png", "unit": "image"}
    {"id": "aachen/000002.png", "unit": "superpixel:500", "regions": [3, 17, 42]}
    {"id": "aachen/000002.png", "unit": "patch:64", "regions": [0, 5]}
    {"id": "aachen/000003.png", "unit": "pixel:20", "regions": [1027, 50313]}

Region ids are resolved through the unit's region map (patch ids are computed from the image size,
superpixel ids come from the region-map store); a pixel's id is y·W + x at original resolution.
Lines are in the order images were first labelled; region ids are sorted. A fully labelled image has one
``image`` line and no other. Reading accepts several lines for one (id, unit) and takes their union.

A plain id list (one id per line, no header; ``labeled.txt``) is still valid input and means "these
images are fully labelled": :func:`read_labelled` tells the two apart by the header line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from alseg.errors import InputError
from alseg.files.atomic import write_text_atomic
from alseg.files.idlist import read_ids, relative_id
from alseg.units import parse_unit

FORMAT = "alseg.labelled"
VERSION = 1
FULL = "image"

RegionMapLookup = Callable[[str, str, tuple[int, int]], np.ndarray]


@dataclass
class LabelledState:
    """Image id -> unit string -> sorted region ids; ``{"image": ()}`` alone marks a fully labelled image.
    Insertion order of ``images`` is the order images were first labelled."""

    images: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        """Every image with any label, in the order first labelled."""
        return list(self.images)

    @property
    def full_ids(self) -> list[str]:
        """Images labelled in full."""
        return [i for i, units in self.images.items() if FULL in units]

    def is_full(self, image_id: str) -> bool:
        return FULL in self.images.get(image_id, {})

    def regions(self, image_id: str, unit: str) -> np.ndarray:
        """(n,) int64 sorted labelled region ids of ``image_id`` in ``unit`` (empty when none)."""
        return np.asarray(self.images.get(image_id, {}).get(str(parse_unit(unit)), ()), dtype=np.int64)


@dataclass(frozen=True)
class Labelled:
    """One new selection to merge: ``regions`` of ``unit`` in ``image_id``; unit ``image`` = the whole image."""

    image_id: str
    unit: str = FULL
    regions: Sequence[int] = ()


def _add(state: LabelledState, image_id: str, unit: str, regions: Iterable[int], where: str) -> None:
    if not isinstance(image_id, str) or not relative_id(image_id) or image_id != image_id.strip() or "\n" in image_id:
        raise InputError(f"{where}: invalid image id {image_id!r}")
    unit = str(parse_unit(unit))
    units = state.images.setdefault(image_id, {})
    if FULL in units:
        return  # a fully labelled image stays so; nothing more to add
    if unit == FULL:
        state.images[image_id] = {FULL: ()}
        return
    ids = []
    for r in regions:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
            raise InputError(f"{where}: region ids must be integers >= 0, got {r!r} for {image_id!r} ({unit})")
        ids.append(int(r))
    if not ids:
        if not units:
            del state.images[image_id]
        return
    units[unit] = tuple(sorted(set(units.get(unit, ())).union(ids)))


def merge_labelled(state: LabelledState, new: Iterable[Labelled]) -> LabelledState:
    """A new state: ``state`` plus the selections ``new``. Idempotent: regions already labelled stay
    as they are (a labelled region never comes back); an image selected whole replaces its regions."""
    out = LabelledState({i: dict(units) for i, units in state.images.items()})
    for item in new:
        _add(out, item.image_id, item.unit, item.regions, "merge")
    return out


def read_labelled(path: str | os.PathLike, *, allow_missing: bool = False) -> LabelledState:
    """Read an ``alseg.labelled`` file, or a plain id list (every listed image fully labelled)."""
    path = Path(path)
    if not path.exists():
        if allow_missing:
            return LabelledState()
        raise InputError(f"{path}: labelled-state file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a labelled-state file or an id list")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line]
    header = _header(path, lines[0][1]) if lines else None
    state = LabelledState()
    if header is None:  # a plain id list
        for image_id in read_ids(path):
            _add(state, image_id, FULL, (), str(path))
        return state
    for n, line in lines[1:]:
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "id" not in row or "unit" not in row:
            raise InputError(f'{where}: expected an object with "id" and "unit"')
        unit = row["unit"]
        regions = row.get("regions", [])
        if str(unit) != FULL and not (isinstance(regions, list) and regions):
            raise InputError(f'{where}: unit {unit} needs a non-empty "regions" list')
        try:
            _add(state, row["id"], str(unit), regions, where)
        except InputError as exc:
            msg = str(exc)
            raise InputError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    return state


def _header(path: Path, first: str) -> dict | None:
    """The header dict when ``first`` is one; None when the file is a plain id list."""
    if not first.startswith("{"):
        return None
    try:
        doc = json.loads(first)
    except json.JSONDecodeError:
        return None  # an id that starts with "{"
    if not isinstance(doc, dict):
        return None
    from alseg.files.jsonfile import check_format

    version = check_format(doc, path, FORMAT, VERSION)["format_version"]
    if version < 1:
        raise InputError(f"{path}: unsupported format_version {version} (this alseg reads {VERSION})")
    return doc


def format_labelled(state: LabelledState) -> str:
    """The file text of ``state`` (header line, then one line per image and unit)."""
    dump = lambda obj: json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))  # noqa: E731
    out = [dump({"format": FORMAT, "format_version": VERSION})]
    for image_id, units in state.images.items():
        if FULL in units:
            out.append(dump({"id": image_id, "unit": FULL}))
            continue
        for unit, regions in units.items():
            out.append(dump({"id": image_id, "unit": unit, "regions": [int(r) for r in regions]}))
    return "\n".join(out) + "\n"


def write_labelled(path: str | os.PathLike, state: LabelledState) -> Path:
    """Write ``state`` atomically (temporary file, fsync, rename): a crash leaves the old file as it was."""
    return write_text_atomic(path, format_labelled(state))


def labelled_mask(
    state: LabelledState,
    image_id: str,
    shape: tuple[int, int],
    region_map_lookup: RegionMapLookup | None = None,
) -> np.ndarray:
    """(H, W) bool: the labelled pixels of ``image_id`` at original resolution ``shape``.

    ``region_map_lookup(unit, image_id, shape)`` -> (H, W) int region map, needed for patch and superpixel
    units (:func:`alseg.regions.region_lookup` builds one); pixel ids are y·W + x.
    """
    big_h, big_w = (int(s) for s in shape)
    units: Mapping[str, tuple[int, ...]] = state.images.get(image_id, {})
    if FULL in units:
        return np.ones((big_h, big_w), dtype=bool)
    mask = np.zeros((big_h, big_w), dtype=bool)
    for unit, regions in units.items():
        ids = np.asarray(regions, dtype=np.int64)
        if parse_unit(unit).kind == "pixel":
            if ids.size and ids.max() >= big_h * big_w:
                raise InputError(f"labelled pixel id {int(ids.max())} of {image_id!r} is outside its {big_h}x{big_w} image")
            mask.flat[ids] = True
            continue
        if region_map_lookup is None:
            raise InputError(f"labelled {unit} regions of {image_id!r} need the region maps to be resolved")
        region_map = np.asarray(region_map_lookup(unit, image_id, (big_h, big_w)))
        n = int(region_map.max()) + 1
        if ids.size and ids.max() >= n:
            raise InputError(f"labelled {unit} region {int(ids.max())} of {image_id!r} is not in its region map ({n} regions)")
        lut = np.zeros(n, dtype=bool)
        lut[ids] = True
        mask |= lut[region_map]
    return mask
