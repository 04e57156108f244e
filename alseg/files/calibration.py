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
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: calibration file not found; run `alseg calibrate` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid JSON calibration file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
        raise InputError(f"{path}: not an {CALIBRATION_FORMAT} file")
    version = int(doc.get("format_version", -1))
    if version > CALIBRATION_VERSION:
        raise InputError(f"{path}: written by a newer alseg (format_version {version} > {CALIBRATION_VERSION}); upgrade")
    missing = [key for key in REQUIRED if key not in doc]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)}")
    k = len(doc["class_names"])
    if any(len(doc[key]) != k for key in ("thresholds", "n_images", "uncalibrated")):
        raise InputError(f"{path}: thresholds/n_images/uncalibrated must have one entry per class ({k})")
    doc["n_classes"] = k
    return doc
