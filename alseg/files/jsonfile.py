"""Reading alseg's versioned JSON files (manifests, calibration, metrics): one reader, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from alseg.errors import InputError


def read_versioned_json(path: str | os.PathLike, fmt: str, version: int, *, missing: str = "not found") -> dict[str, Any]:
    """Load ``path`` and check its ``format`` and ``format_version``; ``missing`` words the not-found error."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise InputError(f"{path}: not an {fmt} file")
    got = int(doc.get("format_version", -1))
    if got > version:
        raise InputError(f"{path}: written by a newer alseg (format_version {got} > {version}); upgrade alseg")
    return doc
