"""The calibration file (``calibrate`` writes it, ``score --strategy crc``, ``select`` and ``report`` read it).

JSON, format_version 2: ``{"format": "alseg.calibration", "format_version": 2, "alpha", "bins", "t_min",
"class_names", "n_classes", "thresholds" [K], "n_images" [K], "uncalibrated" [K], "calibrated" [K],
"query_thresholds" [K], "grid" [bins+1], "risk" [K][bins+1], "pool_path", "pool_sha256",
"evaluation": null | {...}}``.

``thresholds`` are the calibrated t̂_k; ``query_thresholds`` are the ones prediction sets use: t̂_k for a
calibrated class (even 0: every pixel then is in its set, and the guarantee holds), max(t̂_k, t_min) for an
uncalibrated one (no guarantee). Readers use ``query_thresholds`` and never re-derive them.

Version 1 (before alseg floored only uncalibrated classes) floored every class at t_min at query time. It
is still read, as it was applied: ``query_thresholds`` = max(t̂_k, t_min) for every class, and every class
that floor raised (t̂_k < t_min, in practice t̂_k = 0) is marked uncalibrated, since the guarantee did not
hold for it. Scores from a version-1 file therefore do not change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from alseg.errors import InputError
from alseg.files.atomic import write_text_atomic
from alseg.files.jsonfile import read_versioned_json
from alseg.files.manifest import to_jsonable

CALIBRATION_FORMAT = "alseg.calibration"
CALIBRATION_VERSION = 2
PER_CLASS = ("thresholds", "n_images", "uncalibrated", "calibrated", "query_thresholds")
REQUIRED = ("alpha", "t_min", "class_names", *PER_CLASS)
REQUIRED_V1 = ("alpha", "t_min", "class_names", "thresholds", "n_images", "uncalibrated")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def _check_types(doc: Mapping[str, Any], where: str, keys: tuple[str, ...]) -> None:
    """Each present key holds what it should: numbers where numbers go (a string "0.1" is refused, not
    converted), thresholds in [0, 1], flags as booleans."""
    def bad(key: str, what: str) -> InputError:
        return InputError(f"{where}: {key} must be {what}, got {str(doc[key])[:60]}")

    for key in keys:
        if key not in doc:
            continue
        value = doc[key]
        if key in ("alpha", "t_min"):
            if not (_is_number(value) and 0 <= value < 1):
                raise bad(key, "a number in [0, 1)")
        elif key == "class_names":
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise bad(key, "a list of class names")
        elif not isinstance(value, list):
            raise bad(key, "a list with one entry per class")
        elif key in ("thresholds", "query_thresholds"):
            if not all(_is_number(t) and 0 <= t <= 1 for t in value):
                raise bad(key, "a list of numbers in [0, 1]")
        elif key in ("calibrated", "uncalibrated"):
            if not all(isinstance(b, bool) for b in value):
                raise bad(key, "a list of true/false flags")
        elif key == "n_images":
            if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
                raise bad(key, "a list of image counts")


def _check(doc: Mapping[str, Any], where: str) -> int:
    missing = [key for key in REQUIRED if key not in doc]
    if missing:
        raise InputError(f"{where}: missing key(s) {', '.join(missing)}")
    _check_types(doc, where, REQUIRED)
    k = len(doc["class_names"])
    if any(len(doc[key]) != k for key in PER_CLASS):
        raise InputError(f"{where}: {'/'.join(PER_CLASS)} must have one entry per class ({k})")
    if any(bool(c) == bool(u) for c, u in zip(doc["calibrated"], doc["uncalibrated"])):
        raise InputError(f"{where}: calibrated and uncalibrated must be complementary per class")
    return k


def write_calibration(path: str | os.PathLike, doc: Mapping[str, Any]) -> Path:
    body = {"format": CALIBRATION_FORMAT, "format_version": CALIBRATION_VERSION, **to_jsonable(dict(doc))}
    body["n_classes"] = _check(body, f"calibration record for {path}")
    return write_text_atomic(path, json.dumps(body, indent=1) + "\n")


def _upgrade_v1(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """A version-1 record as version 2, with the thresholds version 1 applied (see the module docstring)."""
    missing = [key for key in REQUIRED_V1 if key not in doc]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)}")
    t_min = float(doc["t_min"])
    thresholds = [float(t) for t in doc["thresholds"]]
    if len(doc["uncalibrated"]) != len(thresholds):
        raise InputError(f"{path}: thresholds/uncalibrated must have one entry per class ({len(thresholds)})")
    floored = [bool(u) or t < t_min for u, t in zip(doc["uncalibrated"], thresholds)]
    return {
        **doc,
        "uncalibrated": floored,
        "calibrated": [not f for f in floored],
        "query_thresholds": [max(t, t_min) for t in thresholds],
    }


def read_calibration(path: str | os.PathLike) -> dict[str, Any]:
    """The record, as version 2 whatever version the file has (``format_version`` keeps the file's own)."""
    path = Path(path)
    doc = read_versioned_json(path, CALIBRATION_FORMAT, CALIBRATION_VERSION,
                              missing="calibration file not found; run `alseg calibrate` first")
    version = int(doc.get("format_version", -1))
    if version == 1:
        _check_types(doc, str(path), REQUIRED_V1)
        doc = _upgrade_v1(doc, path)
    elif version != CALIBRATION_VERSION:
        raise InputError(f"{path}: unsupported format_version {version} (this alseg reads 1, 2)")
    doc["n_classes"] = _check(doc, str(path))
    return doc


def check_matches_pool(doc: Mapping[str, Any], path: str | os.PathLike, class_names: list[str],
                       pool_path: str | os.PathLike) -> None:
    """The calibration must name the pool's classes in the pool's order: thresholds are per class index,
    so a reordered or different class list would apply each threshold to another class."""
    names = list(doc["class_names"])
    if len(names) != len(class_names):
        raise InputError(f"{path}: calibrated for {len(names)} classes, but {pool_path} has {len(class_names)}")
    if names != list(class_names):
        k = next(i for i, (a, b) in enumerate(zip(names, class_names)) if a != b)
        raise InputError(f"{path}: class {k} is {names[k]!r} here but {class_names[k]!r} in {pool_path}; "
                         "calibrate with the same model and classes")
