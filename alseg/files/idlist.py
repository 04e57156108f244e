"""Id lists: UTF-8 text, one id per line, no header; order is meaningful (selection rank)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Iterable

from alseg.errors import InputError
from alseg.files.atomic import write_text_atomic


def read_ids(path: str | os.PathLike, *, allow_missing: bool = False) -> list[str]:
    """Read an id list; blank lines are skipped, duplicates are an error naming the first one."""
    path = Path(path)
    if not path.exists():
        if allow_missing:
            return []
        raise InputError(f"{path}: id list not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an id list (one image id per line)")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM is not part of the first id
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the id list ({exc.strerror or exc})") from None
    ids = [line.strip() for line in text.splitlines()]
    ids = [i for i in ids if i]
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise InputError(f"{path}: id {i!r} appears more than once")
        _check_relative(i, path)
        seen.add(i)
    return ids


def relative_id(image_id: str) -> bool:
    """Ids name images inside a dataset: false for an empty id, an absolute one or one with ``..``."""
    p = PurePosixPath(image_id.replace("\\", "/"))
    return bool(image_id) and not p.is_absolute() and ".." not in p.parts and not (len(image_id) > 1 and image_id[1] == ":")


def _check_relative(image_id: str, path: Path) -> None:
    if not relative_id(image_id):
        raise InputError(f"{path}: id {image_id!r} is not a relative path inside the dataset; refused")


def write_ids(path: str | os.PathLike, ids: Iterable[str]) -> Path:
    """Write ids one per line, atomically."""
    ids = [str(i) for i in ids]
    for i in ids:
        if not i or "\n" in i or i != i.strip():
            raise InputError(f"{path}: invalid id {i!r} (empty, or with surrounding whitespace or a newline)")
    return write_text_atomic(path, "".join(f"{i}\n" for i in ids))


def append_ids(path: str | os.PathLike, new_ids: Iterable[str]) -> list[str]:
    """Append ``new_ids`` to the list at ``path`` (created if missing), atomically; returns the full list."""
    current = read_ids(path, allow_missing=True)
    have = set(current)
    dup = [i for i in new_ids if i in have]
    if dup:
        raise InputError(f"{path}: id {dup[0]!r} is already in the labeled list")
    full = current + list(new_ids)
    write_ids(path, full)
    return full
