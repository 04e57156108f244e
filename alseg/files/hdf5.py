"""The HDF5 contract between stages: the pool file (written by ``infer``) and the scores file (``score``).

This module is the one home of the schema; ``docs/hdf5.md`` documents it for people.

Pool file (``format = "alseg.pool"``)::

    /ids                  (N,)        UTF-8 strings, unique; the join key (axes "id")
    /logits               (N,K,H,W)   float16, chunked one image per chunk (axes "id,class,y,x")
    /labels               (N,H,W)     uint8/uint16 ground truth at the logits' resolution (optional)
    /embeddings/<name>    (N,D)       float32 (axes "id,feature"; attrs: layer, kind)
    root attrs: format, format_version, class_names (JSON), n_classes, ignore_index, resolution
                ("native" | "full"), model_config_sha256, checkpoint_sha256, config_path,
                checkpoint_path, alseg_version, created

Scores file (``format = "alseg.scores"``)::

    /ids                  (N,)        UTF-8 strings
    /scores/<strategy>    (N,)        float64, higher = more informative (attrs: params JSON)
    /embeddings/<name>    (N,...)     float32/bool per-strategy embeddings (attrs: strategy, params JSON)
    root attrs: format, format_version, pool_path, pool_sha256, alseg_version, created

Writers write ``<name>.partial`` and rename at the end; readers stream one image chunk at a time and
check the format, its version and the datasets they need, failing with one line naming the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from alseg import __version__
from alseg.errors import InputError
from alseg.files.atomic import check_writable, partial_path

POOL_FORMAT = "alseg.pool"
SCORES_FORMAT = "alseg.scores"
FORMAT_VERSION = 1
STR_DTYPE = h5py.string_dtype("utf-8")


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _decode_ids(raw: np.ndarray) -> list[str]:
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in raw]


def _open_checked(path: str | os.PathLike, fmt: str, required: Sequence[str]) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        fh = h5py.File(path, "r")
    except OSError:
        raise InputError(f"{path}: not an HDF5 file (or it is truncated)") from None
    try:
        got = fh.attrs.get("format")
        got = got.decode() if isinstance(got, bytes) else got
        if got != fmt:
            raise InputError(f"{path}: not an {fmt} file (format attribute is {got!r})")
        version = int(fh.attrs.get("format_version", -1))
        if version > FORMAT_VERSION:
            raise InputError(
                f"{path}: written by a newer alseg (format_version {version} > {FORMAT_VERSION}); upgrade alseg"
            )
        if version != FORMAT_VERSION:
            raise InputError(f"{path}: unsupported format_version {version} (this alseg reads {FORMAT_VERSION})")
        missing = [name for name in required if name not in fh]
        if missing:
            raise InputError(f"{path}: missing dataset(s) {', '.join('/' + m for m in missing)}")
        return fh
    except BaseException:
        fh.close()
        raise


def _check_ids(path: Path, ids: Sequence[str]) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise InputError(f"{path}: id {i!r} appears more than once in /ids")
        seen.add(i)


class _IdIndex:
    """Maps ids to rows; every lookup names the first missing id."""

    def __init__(self, path: Path, ids: list[str]):
        self.path = path
        self.ids = ids
        self.row = {i: r for r, i in enumerate(ids)}

    def rows(self, ids: Iterable[str], what: str = "") -> np.ndarray:
        out = []
        for i in ids:
            r = self.row.get(i)
            if r is None:
                raise InputError(f"{self.path}: id {i!r}{what} is not in this file")
            out.append(r)
        return np.asarray(out, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- pool


class PoolWriter:
    """Streams rows into a pool file. Use as a context manager; the file appears under its name on exit.

    ``resume=True`` reopens ``<path>.partial`` left by an interrupted run (``written_ids`` tells which
    rows are there) instead of starting over.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        class_names: Sequence[str],
        logits_shape: tuple[int, int],
        ignore_index: int = 255,
        with_labels: bool = False,
        embedding_dims: Mapping[str, int] | None = None,
        embedding_attrs: Mapping[str, Mapping[str, Any]] | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        resume: bool = False,
    ):
        self.path = check_writable(path, overwrite=overwrite)
        self.tmp = partial_path(self.path)
        self.n_classes = len(class_names)
        self.shape = tuple(int(s) for s in logits_shape)
        embedding_dims = dict(embedding_dims or {})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.tmp.exists():
            self.fh = h5py.File(self.tmp, "a")
            if tuple(self.fh["logits"].shape[1:]) != (self.n_classes, *self.shape):
                self.fh.close()
                raise InputError(f"{self.tmp}: cannot resume: logits shape differs from this run's model")
            if set(self.fh.get("embeddings", {}).keys()) != set(embedding_dims) or ("labels" in self.fh) != with_labels:
                self.fh.close()
                raise InputError(f"{self.tmp}: cannot resume: embeddings/labels differ from this run's options")
            self.written_ids = _decode_ids(self.fh["ids"][:])
            return
        self.fh = h5py.File(self.tmp, "w")
        self.written_ids = []
        fh = self.fh
        fh.attrs["format"] = POOL_FORMAT
        fh.attrs["format_version"] = FORMAT_VERSION
        fh.attrs["class_names"] = json.dumps(list(class_names))
        fh.attrs["n_classes"] = self.n_classes
        fh.attrs["ignore_index"] = int(ignore_index)
        fh.attrs["alseg_version"] = __version__
        fh.attrs["created"] = _now()
        for key, value in (attrs or {}).items():
            fh.attrs[key] = value if isinstance(value, (str, int, float, np.number)) else json.dumps(value)
        h, w = self.shape
        fh.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=STR_DTYPE, chunks=(1024,)).attrs["axes"] = "id"
        ds = fh.create_dataset(
            "logits", shape=(0, self.n_classes, h, w), maxshape=(None, self.n_classes, h, w),
            dtype=np.float16, chunks=(1, self.n_classes, h, w),
        )
        ds.attrs["axes"] = "id,class,y,x"
        if with_labels:
            ldt = np.uint8 if self.n_classes < 255 and ignore_index <= 255 else np.uint16
            fh.create_dataset(
                "labels", shape=(0, h, w), maxshape=(None, h, w), dtype=ldt, chunks=(1, h, w)
            ).attrs["axes"] = "id,y,x"
        if embedding_dims:
            grp = fh.create_group("embeddings")
            for name, dim in embedding_dims.items():
                e = grp.create_dataset(
                    name, shape=(0, dim), maxshape=(None, dim), dtype=np.float32, chunks=(min(256, 1 << 20 // max(dim * 4, 1) or 1), dim)
                )
                e.attrs["axes"] = "id,feature"
                for key, value in (embedding_attrs or {}).get(name, {}).items():
                    e.attrs[key] = value

    def append(
        self,
        ids: Sequence[str],
        logits: np.ndarray,
        labels: np.ndarray | None = None,
        embeddings: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append ``len(ids)`` rows. ``logits`` (b,K,H,W) is stored as float16."""
        fh = self.fh
        n0, b = fh["ids"].shape[0], len(ids)
        if logits.shape != (b, self.n_classes, *self.shape):
            raise ValueError(f"logits shape {logits.shape} != {(b, self.n_classes, *self.shape)}")
        fh["ids"].resize((n0 + b,))
        fh["ids"][n0:] = np.asarray(list(ids), dtype=object)
        fh["logits"].resize((n0 + b, *fh["logits"].shape[1:]))
        fh["logits"][n0:] = np.asarray(logits, dtype=np.float16)
        if "labels" in fh:
            if labels is None:
                raise ValueError("this pool file stores labels; append() needs them")
            fh["labels"].resize((n0 + b, *self.shape))
            fh["labels"][n0:] = labels
        for name, ds in (fh["embeddings"].items() if "embeddings" in fh else ()):
            ds.resize((n0 + b, ds.shape[1]))
            ds[n0:] = np.asarray(embeddings[name], dtype=np.float32)
        self.written_ids.extend(ids)

    def close(self, *, commit: bool = True) -> Path:
        """Flush and close; with ``commit`` check ids are unique and rename onto the final name."""
        ids = list(self.written_ids)
        self.fh.flush()
        self.fh.close()
        if commit:
            _check_ids(self.tmp, ids)
            os.replace(self.tmp, self.path)
        return self.path

    def __enter__(self) -> "PoolWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close(commit=True)
        else:
            # Keep the partial file: `infer --resume` continues from it. KeyboardInterrupt included.
            self.close(commit=False)


class PoolReader:
    """Reads a pool file lazily; logits are read one batch of chunks at a time, as float32."""

    def __init__(self, path: str | os.PathLike, *, require_labels: bool = False, require_embeddings: Sequence[str] = ()):
        self.path = Path(path)
        required = ["ids", "logits"] + (["labels"] if require_labels else [])
        required += [f"embeddings/{e}" for e in require_embeddings]
        self.fh = _open_checked(self.path, POOL_FORMAT, required)
        a = self.fh.attrs
        self.ids = _decode_ids(self.fh["ids"][:])
        _check_ids(self.path, self.ids)
        self.index = _IdIndex(self.path, self.ids)
        self.class_names = json.loads(a["class_names"])
        self.n_classes = int(a["n_classes"])
        self.ignore_index = int(a["ignore_index"])
        self.shape = tuple(self.fh["logits"].shape[2:])
        self.has_labels = "labels" in self.fh
        self.embedding_names = sorted(self.fh["embeddings"].keys()) if "embeddings" in self.fh else []
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in a.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        return self.index.rows(ids)

    def iter_batches(
        self, batch_size: int = 16, *, ids: Sequence[str] | None = None, with_labels: bool = False
    ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray | None]]:
        """Yield ``(ids, logits float32 (b,K,H,W), labels (b,H,W) or None)`` in file order (or ``ids`` order)."""
        if with_labels and not self.has_labels:
            raise InputError(f"{self.path}: has no /labels; rerun `alseg infer --with-labels` on a labeled set")
        rows = np.arange(len(self.ids)) if ids is None else self.rows(ids)
        logits_ds, labels_ds = self.fh["logits"], (self.fh["labels"] if with_labels else None)
        for start in range(0, len(rows), batch_size):
            sel = rows[start : start + batch_size]
            order = np.argsort(sel, kind="stable")  # h5py fancy indexing needs increasing rows
            srt = sel[order]
            inv = np.empty_like(order)
            inv[order] = np.arange(len(order))
            contiguous = len(srt) > 0 and srt[-1] - srt[0] == len(srt) - 1
            idx = slice(int(srt[0]), int(srt[-1]) + 1) if contiguous else srt
            logits = logits_ds[idx].astype(np.float32)[inv]
            labels = labels_ds[idx][inv].astype(np.int64) if labels_ds is not None else None
            yield [self.ids[r] for r in sel], logits, labels

    def embedding(self, name: str, ids: Sequence[str] | None = None) -> np.ndarray:
        """``(n, D)`` float32 embedding rows, aligned with ``ids`` (all rows in file order by default)."""
        if name not in self.embedding_names:
            have = ", ".join(self.embedding_names) or "none"
            raise InputError(
                f"{self.path}: no embedding {name!r} (has: {have}); rerun `alseg infer --embeddings {name}`"
            )
        data = self.fh["embeddings"][name][:]
        return data if ids is None else data[self.rows(ids)]

    def embedding_attrs(self, name: str) -> dict[str, Any]:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.fh["embeddings"][name].attrs.items()}

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> "PoolReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -------------------------------------------------------------------------------------------- scores


def write_scores(
    path: str | os.PathLike,
    ids: Sequence[str],
    *,
    scores: Mapping[str, np.ndarray],
    embeddings: Mapping[str, np.ndarray] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    attrs: Mapping[str, Any] | None = None,
    risk_maps: tuple[Sequence[str], np.ndarray] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a scores file atomically. ``scores[name]`` is (N,), ``embeddings[name]`` is (N, ...).

    ``risk_maps`` = (ids, maps (M,H,W)) stores CRC risk maps of a few images under ``/risk_maps``.
    """
    path = check_writable(path, overwrite=overwrite)
    tmp = partial_path(path)
    ids = list(ids)
    _check_ids(path, ids)
    n = len(ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(tmp, "w") as fh:
            fh.attrs["format"] = SCORES_FORMAT
            fh.attrs["format_version"] = FORMAT_VERSION
            fh.attrs["alseg_version"] = __version__
            fh.attrs["created"] = _now()
            for key, value in (attrs or {}).items():
                fh.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
            fh.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=STR_DTYPE).attrs["axes"] = "id"
            grp = fh.create_group("scores")
            for name, values in scores.items():
                values = np.asarray(values, dtype=np.float64)
                if values.shape != (n,):
                    raise ValueError(f"scores[{name!r}] has shape {values.shape}, expected ({n},)")
                ds = grp.create_dataset(name, data=values)
                ds.attrs["axes"] = "id"
                ds.attrs["params"] = json.dumps((params or {}).get(name, {}))
            egrp = fh.create_group("embeddings")
            for name, values in (embeddings or {}).items():
                values = np.asarray(values)
                if values.shape[0] != n:
                    raise ValueError(f"embeddings[{name!r}] has {values.shape[0]} rows, expected {n}")
                ds = egrp.create_dataset(name, data=values, chunks=(min(n, 1024), *values.shape[1:]) if n else None)
                ds.attrs["axes"] = "id," + ",".join(f"dim{i}" for i in range(1, values.ndim))
                ds.attrs["params"] = json.dumps((params or {}).get(name, {}))
            if risk_maps is not None:
                rgrp = fh.create_group("risk_maps")
                rgrp.create_dataset("ids", data=np.asarray(list(risk_maps[0]), dtype=object), dtype=STR_DTYPE)
                rgrp.create_dataset("maps", data=np.asarray(risk_maps[1], dtype=np.float16)).attrs["axes"] = "id,y,x"
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class ScoresReader:
    """Reads a scores file; every accessor takes ``ids`` and joins on them."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.fh = _open_checked(self.path, SCORES_FORMAT, ["ids", "scores"])
        self.ids = _decode_ids(self.fh["ids"][:])
        _check_ids(self.path, self.ids)
        self.index = _IdIndex(self.path, self.ids)
        self.score_names = sorted(self.fh["scores"].keys())
        self.embedding_names = sorted(self.fh["embeddings"].keys()) if "embeddings" in self.fh else []
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.fh.attrs.items()}

    def _get(self, group: str, name: str, ids: Sequence[str] | None, hint: str) -> np.ndarray:
        names = self.score_names if group == "scores" else self.embedding_names
        if name not in names:
            raise InputError(f"{self.path}: no /{group}/{name} (has: {', '.join(names) or 'none'}); {hint}")
        data = self.fh[group][name][:]
        return data if ids is None else data[self.index.rows(ids)]

    def score(self, name: str, ids: Sequence[str] | None = None) -> np.ndarray:
        return self._get("scores", name, ids, f"rerun `alseg score --strategy {name}`")

    def embedding(self, name: str, ids: Sequence[str] | None = None) -> np.ndarray:
        return self._get("embeddings", name, ids, "rerun `alseg score` with the strategy that writes it")

    def risk_maps(self) -> tuple[list[str], np.ndarray]:
        """``(ids, maps (M,H,W) float32)`` saved by ``score --save-risk-maps``; empty when none."""
        if "risk_maps" not in self.fh:
            return [], np.zeros((0, 0, 0), dtype=np.float32)
        return _decode_ids(self.fh["risk_maps"]["ids"][:]), self.fh["risk_maps"]["maps"][:].astype(np.float32)

    def params(self, name: str) -> dict[str, Any]:
        group = "scores" if name in self.score_names else "embeddings"
        return json.loads(self.fh[group][name].attrs.get("params", "{}"))

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> "ScoresReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
