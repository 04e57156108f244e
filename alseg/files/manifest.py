"""Stage manifests: ``<output>.manifest.json`` beside each output (``train.manifest.json`` in a work dir).

A manifest records the stage, alseg version, resolved arguments, seed, inputs (path, sha256; for a pool
file its metadata digest, see :func:`file_digest`), outputs, wall time and the stage's result dict. ``alseg run`` uses the input digests to decide whether a finished
stage can be reused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from alseg import __version__
from alseg.files.atomic import write_text_atomic

MANIFEST_FORMAT = "alseg.manifest"
MANIFEST_VERSION = 1


def manifest_path(output: str | os.PathLike) -> Path:
    """Where the manifest of ``output`` lives: a file's sibling, or inside a work directory."""
    output = Path(output)
    if output.is_dir() or output.suffix == "":
        return output / "manifest.json"
    return output.with_name(output.name + ".manifest.json")


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy scalars/arrays and paths to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def file_digest(path: str | os.PathLike) -> str | None:
    """The recorded identity of a file: its sha256, or for a pool file the cheap content digest
    (:func:`alseg.files.hdf5.pool_digest`, ``"h5meta-sha256:..."``) that does not read the logits."""
    from alseg.files.hdf5 import content_digest

    path = Path(path)
    return content_digest(path) if path.is_file() else None


def write_manifest(
    output: str | os.PathLike,
    *,
    stage: str,
    args: Mapping[str, Any],
    inputs: Iterable[str | os.PathLike] = (),
    outputs: Iterable[str | os.PathLike] = (),
    seconds: float | None = None,
    result: Any = None,
) -> Path:
    path = manifest_path(output)
    doc = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "stage": stage,
        "alseg_version": __version__,
        "args": to_jsonable(dict(args)),
        "inputs": [{"path": str(p), "sha256": file_digest(p)} for p in inputs if p is not None],
        "outputs": [{"path": str(p), "sha256": file_digest(p)} for p in outputs if p is not None],
        "seconds": seconds,
        "result": to_jsonable(result),
    }
    return write_text_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    from alseg.files.jsonfile import read_versioned_json

    return read_versioned_json(path, MANIFEST_FORMAT, MANIFEST_VERSION, missing="manifest not found")
