"""The calibration file (``calibrate`` writes it, ``score --strategy crc`` and ``report`` read it).

JSON: ``{"format": "alseg.calibration", "format_version": 1, "alpha", "bins", "t_min", "class_names",
"n_classes", "thresholds" [K], "n_images" [K], "uncalibrated" [K], "grid" [bins+1], "risk" [K][bins+1],
"pool_path", "pool_sha256", "evaluation": null | {...}}``.
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
CALIBRATION_VERSION = 1
REQUIRED = ("alpha", "t_min", "class_names", "thresholds", "n_images", "uncalibrated")


def write_calibration(path: str | os.PathLike, doc: Mapping[str, Any]) -> Path:
    body = {"format": CALIBRATION_FORMAT, "format_version": CALIBRATION_VERSION, **to_jsonable(dict(doc))}
    body["n_classes"] = len(body["class_names"])
    return write_text_atomic(path, json.dumps(body, indent=1) + "\n")


def read_calibration(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    doc = read_versioned_json(path, CALIBRATION_FORMAT, CALIBRATION_VERSION,
                              missing="calibration file not found; run `alseg calibrate` first")
    missing = [key for key in REQUIRED if key not in doc]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)}")
    k = len(doc["class_names"])
    if any(len(doc[key]) != k for key in ("thresholds", "n_images", "uncalibrated")):
        raise InputError(f"{path}: thresholds/n_images/uncalibrated must have one entry per class ({k})")
    doc["n_classes"] = k
    return doc
