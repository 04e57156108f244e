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
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected an {fmt} JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return check_format(doc, path, fmt, version)


def check_format(doc: Any, path: str | os.PathLike, fmt: str, version: int) -> dict[str, Any]:
    """``doc`` as a header of format ``fmt`` that this alseg reads (``format_version`` <= ``version``)."""
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise InputError(f"{path}: not an {fmt} file" + (f" (its format is {found!r})" if found else ""))
    got = doc.get("format_version", -1)
    if not isinstance(got, int) or isinstance(got, bool):
        raise InputError(f"{path}: format_version must be an integer, got {got!r}")
    if got > version:
        raise InputError(f"{path}: written by a newer alseg (format_version {got} > {version}); upgrade alseg")
    return doc
