"""The HDF5 contract between stages: the pool file (written by ``infer``) and the scores file (``score``).

This module is the one home of the schema; ``docs/hdf5.md`` documents it for people.

Pool file (``format = "alseg.pool"``, ``format_version`` 2; version 1 is still read)::

    /ids                  (N,)        UTF-8 strings, unique; the join key (axes "id")
    /sizes                (N,2)       int32 valid (h, w) of each image (axes "id,hw"); absent in version 1
    /logits               (N,K,H,W)   float16, H, W = the largest h, w; image i fills [i, :, :h_i, :w_i],
                                      the rest is padding (fill value 0). Chunks (1,K,ch,cw) never span
                                      two images; lzf-compressed, so padding costs almost nothing
                                      (axes "id,class,y,x")
    /labels               (N,H,W)     uint8/uint16 ground truth at the logits' resolution, padded with the
                                      ignore index (optional)
    /embeddings/<name>    (N,D)       float32 (axes "id,feature"; attrs: layer, kind)
    root attrs: format, format_version, class_names (JSON), n_classes, ignore_index, resolution,
                model_config_sha256, checkpoint_sha256, config_path, checkpoint_path, alseg_version, created

Version 1 has no /sizes: every image fills the whole (H, W). Readers see only valid regions:
``PoolReader.iter_batches`` crops every yielded array to its images' (h, w).

Scores file (``format = "alseg.scores"``)::

    /ids                  (N,)        UTF-8 strings
    /scores/<strategy>    (N,)        float64, higher = more informative (attrs: params JSON)
    /embeddings/<name>    (N,...)     float32/bool per-strategy embeddings (attrs: strategy, params JSON)
    /risk_maps/ids, maps, sizes       (M,), (M,H,W) float16 zero-padded, (M,2) int32 valid (h, w)
    root attrs: format, format_version, pool_path, pool_sha256, alseg_version, created

A scores file says ``format_version`` 2 only when its risk maps are padded (they differ in size), which a
version-1 reader would misread; otherwise it says 1, and a version-1 reader reads it correctly.

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
POOL_VERSION = 2  # what PoolWriter writes
SCORES_VERSION = 2  # the highest ScoresReader reads; write_scores writes 1 unless risk maps are padded
READS = {POOL_FORMAT: (1, 2), SCORES_FORMAT: (1, 2)}
STR_DTYPE = h5py.string_dtype("utf-8")
# Largest chunk of /logits (bytes): one image of the first size per chunk, split into tiles above this.
CHUNK_BYTES = 4 << 20
# lzf: ~4x faster to write and ~3x faster to read than gzip-1+shuffle, and it squeezes the zero padding of
# a partly filled chunk about 90:1 (docs/hdf5.md has the measurements). Float16 logits themselves
# compress little with either (gzip-1+shuffle: 0.77-0.87 of their bytes; lzf: stored as they are).
COMPRESSION: dict[str, Any] = {"compression": "lzf"}
RDCC_NBYTES = 32 << 20  # chunk cache per open file: a few chunks of a large image


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
        fh = h5py.File(path, "r", rdcc_nbytes=RDCC_NBYTES)
    except OSError:
        raise InputError(f"{path}: not an HDF5 file (or it is truncated)") from None
    try:
        got = fh.attrs.get("format")
        got = got.decode() if isinstance(got, bytes) else got
        if got != fmt:
            raise InputError(f"{path}: not an {fmt} file (format attribute is {got!r})")
        version = int(fh.attrs.get("format_version", -1))
        known = READS[fmt]
        if version > max(known):
            raise InputError(
                f"{path}: written by a newer alseg (format_version {version} > {max(known)}); upgrade alseg"
            )
        if version not in known:
            raise InputError(
                f"{path}: unsupported format_version {version} (this alseg reads {', '.join(map(str, known))})"
            )
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


def chunk_tile(
    n_classes: int, height: int, width: int, *, itemsize: int = 2, max_bytes: int = CHUNK_BYTES
) -> tuple[int, int]:
    """Spatial tile (ch, cw) of a /logits chunk (1, K, ch, cw): (height, width), halved along its longer
    side until one chunk holds at most ``max_bytes`` (or is one pixel)."""
    ch, cw = max(1, int(height)), max(1, int(width))
    while n_classes * ch * cw * itemsize > max_bytes and (ch > 1 or cw > 1):
        if ch >= cw:
            ch = (ch + 1) // 2
        else:
            cw = (cw + 1) // 2
    return ch, cw


def _runs(sizes: np.ndarray) -> list[np.ndarray]:
    """Positions 0..n-1 split into runs of consecutive rows sharing one (h, w)."""
    if len(sizes) == 0:
        return []
    cut = np.flatnonzero((sizes[1:] != sizes[:-1]).any(axis=1)) + 1
    return np.split(np.arange(len(sizes)), cut)


# ---------------------------------------------------------------------------------------------- pool


class PoolWriter:
    """Streams rows into a pool file. Use as a context manager; the file appears under its name on exit.

    Images may differ in size: ``/logits`` grows to the largest (h, w) seen and ``/sizes`` keeps each
    image's own. ``logits_shape`` is a hint, the (H, W) of the first image: it sets the chunk tile.
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
        h, w = (int(s) for s in logits_shape)
        if h < 1 or w < 1:
            raise ValueError(f"logits_shape must be two sizes >= 1, got {tuple(logits_shape)}")
        embedding_dims = dict(embedding_dims or {})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.tmp.exists():
            self.fh = h5py.File(self.tmp, "a", rdcc_nbytes=RDCC_NBYTES)
            try:
                self._reopen(embedding_dims, with_labels)
            except BaseException:
                self.fh.close()
                raise
            return
        self.fh = h5py.File(self.tmp, "w", rdcc_nbytes=RDCC_NBYTES)
        self.written_ids = []
        self.shape = (h, w)
        fh = self.fh
        fh.attrs["format"] = POOL_FORMAT
        fh.attrs["format_version"] = POOL_VERSION
        fh.attrs["class_names"] = json.dumps(list(class_names))
        fh.attrs["n_classes"] = self.n_classes
        fh.attrs["ignore_index"] = int(ignore_index)
        fh.attrs["alseg_version"] = __version__
        fh.attrs["created"] = _now()
        for key, value in (attrs or {}).items():
            fh.attrs[key] = value if isinstance(value, (str, int, float, np.number)) else json.dumps(value)
        k = self.n_classes
        ch, cw = chunk_tile(k, h, w)
        fh.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=STR_DTYPE, chunks=(1024,)).attrs["axes"] = "id"
        fh.create_dataset(
            "sizes", shape=(0, 2), maxshape=(None, 2), dtype=np.int32, chunks=(1024, 2)
        ).attrs["axes"] = "id,hw"
        ds = fh.create_dataset(
            "logits", shape=(0, k, h, w), maxshape=(None, k, None, None), dtype=np.float16,
            chunks=(1, k, ch, cw), fillvalue=0, **COMPRESSION,
        )
        ds.attrs["axes"] = "id,class,y,x"
        if with_labels:
            ldt = np.uint8 if self.n_classes < 255 and ignore_index <= 255 else np.uint16
            fh.create_dataset(
                "labels", shape=(0, h, w), maxshape=(None, None, None), dtype=ldt, chunks=(1, ch, cw),
                fillvalue=int(ignore_index), **COMPRESSION,
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

    def _reopen(self, embedding_dims: Mapping[str, int], with_labels: bool) -> None:
        fh = self.fh
        version = int(fh.attrs.get("format_version", -1))
        if version != POOL_VERSION or "sizes" not in fh:
            raise InputError(
                f"{self.tmp}: cannot resume: written by another alseg (format_version {version}, this one writes "
                f"{POOL_VERSION}); delete it and start over"
            )
        if fh["logits"].shape[1] != self.n_classes:
            raise InputError(f"{self.tmp}: cannot resume: logits shape differs from this run's model")
        if set(fh.get("embeddings", {}).keys()) != set(embedding_dims) or ("labels" in fh) != with_labels:
            raise InputError(f"{self.tmp}: cannot resume: embeddings/labels differ from this run's options")
        # /ids is written last in append(): rows beyond it (an append cut short) are dropped.
        rows = self._row_datasets()
        n = min(ds.shape[0] for ds in rows)
        for ds in rows:
            if ds.shape[0] != n:
                ds.resize((n, *ds.shape[1:]))
        self.written_ids = _decode_ids(fh["ids"][:])
        self.shape = tuple(int(s) for s in fh["logits"].shape[2:])

    def _row_datasets(self) -> list[h5py.Dataset]:
        fh = self.fh
        rows = [fh["ids"], fh["sizes"], fh["logits"]] + ([fh["labels"]] if "labels" in fh else [])
        return rows + (list(fh["embeddings"].values()) if "embeddings" in fh else [])

    def _as_runs(self, b: int, logits, labels) -> list[tuple[int, np.ndarray, np.ndarray | None]]:
        """(first row, logits (r,K,h,w), labels (r,h,w) or None) per run of equal-size images."""
        k, want_labels = self.n_classes, "labels" in self.fh
        if want_labels and labels is None:
            raise ValueError("this pool file stores labels; append() needs them")
        if isinstance(logits, np.ndarray) or (hasattr(logits, "shape") and hasattr(logits, "dtype")):
            logits = np.asarray(logits)
            if logits.ndim != 4 or logits.shape[:2] != (b, k) or min(logits.shape[2:], default=0) < 1:
                raise ValueError(f"logits shape {logits.shape} != {(b, k, 'H', 'W')}")
            if want_labels:
                labels = np.asarray(labels)
                if labels.shape != (b, *logits.shape[2:]):
                    raise ValueError(f"labels shape {labels.shape} != {(b, *logits.shape[2:])}")
            return [(0, logits, labels if want_labels else None)] if b else []
        images = [np.asarray(x) for x in logits]
        if len(images) != b:
            raise ValueError(f"got {len(images)} logits arrays for {b} ids")
        for i, x in enumerate(images):
            if x.ndim != 3 or x.shape[0] != k or min(x.shape[1:]) < 1:
                raise ValueError(f"logits[{i}] has shape {x.shape}, expected ({k}, h, w)")
        masks = None
        if want_labels:
            masks = [np.asarray(y) for y in labels]
            if len(masks) != b:
                raise ValueError(f"got {len(masks)} label arrays for {b} ids")
            for i, (x, y) in enumerate(zip(images, masks)):
                if y.shape != x.shape[1:]:
                    raise ValueError(f"labels[{i}] has shape {y.shape}, expected {x.shape[1:]} like its logits")
        sizes = np.array([x.shape[1:] for x in images], dtype=np.int64).reshape(-1, 2)
        return [
            (int(r[0]), np.stack([images[i] for i in r]), None if masks is None else np.stack([masks[i] for i in r]))
            for r in _runs(sizes)
        ]

    def append(
        self,
        ids: Sequence[str],
        logits: np.ndarray | Sequence[np.ndarray],
        labels: np.ndarray | Sequence[np.ndarray] | None = None,
        embeddings: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append ``len(ids)`` rows, stored as float16.

        ``logits`` is an array (b,K,H,W) (images of one size) or a list of b arrays (K,h_i,w_i); ``labels``
        (with ``with_labels``) likewise (b,H,W) or a list of (h_i,w_i).
        """
        fh = self.fh
        ids = list(ids)
        n0, b = fh["ids"].shape[0], len(ids)
        runs = self._as_runs(b, logits, labels)
        sizes = np.zeros((b, 2), dtype=np.int32)
        for first, x, _ in runs:
            sizes[first : first + len(x)] = x.shape[2:]
        if b == 0:
            return
        hmax, wmax = (max(a, int(c)) for a, c in zip(self.shape, sizes.max(axis=0)))
        self.shape = (hmax, wmax)
        # Everything but /ids first: /ids is the commit mark that resume trusts.
        lg = fh["logits"]
        lg.resize((n0 + b, self.n_classes, hmax, wmax))
        for first, x, _ in runs:
            h, w = x.shape[2:]
            lg[n0 + first : n0 + first + len(x), :, :h, :w] = np.asarray(x, dtype=np.float16)
        if "labels" in fh:
            lb = fh["labels"]
            lb.resize((n0 + b, hmax, wmax))
            for first, _, y in runs:
                h, w = y.shape[1:]
                lb[n0 + first : n0 + first + len(y), :h, :w] = y
        for name, ds in (fh["embeddings"].items() if "embeddings" in fh else ()):
            ds.resize((n0 + b, ds.shape[1]))
            ds[n0:] = np.asarray(embeddings[name], dtype=np.float32)
        fh["sizes"].resize((n0 + b, 2))
        fh["sizes"][n0:] = sizes
        fh["ids"].resize((n0 + b,))
        fh["ids"][n0:] = np.asarray(ids, dtype=object)
        self.written_ids.extend(ids)

    def close(self, *, commit: bool = True) -> Path:
        """Flush and close; with ``commit`` trim /logits to the largest image, check ids are unique and
        rename onto the final name."""
        ids = list(self.written_ids)
        if commit and ids:
            h, w = (int(s) for s in self.fh["sizes"][:].max(axis=0))
            for name in ("logits", "labels"):
                if name in self.fh and tuple(self.fh[name].shape[-2:]) != (h, w):
                    ds = self.fh[name]
                    ds.resize((*ds.shape[:-2], h, w))
            self.shape = (h, w)
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
    """Reads a pool file lazily; logits are read one batch of chunks at a time, as float32, cropped to each
    image's valid (h, w).

    ``sizes`` (N,2): each image's (h, w) (all equal to the logits' (H, W) in a version-1 file);
    ``shape``: the largest (h, w); ``variable_size``: whether the images differ in size.
    """

    def __init__(self, path: str | os.PathLike, *, require_labels: bool = False, require_embeddings: Sequence[str] = ()):
        self.path = Path(path)
        required = ["ids", "logits"] + (["labels"] if require_labels else [])
        required += [f"embeddings/{e}" for e in require_embeddings]
        self.fh = _open_checked(self.path, POOL_FORMAT, required)
        try:
            self._load()
        except BaseException:
            self.fh.close()
            raise

    def _load(self) -> None:
        a = self.fh.attrs
        self.format_version = int(a["format_version"])
        self.ids = _decode_ids(self.fh["ids"][:])
        _check_ids(self.path, self.ids)
        self.index = _IdIndex(self.path, self.ids)
        self.class_names = json.loads(a["class_names"])
        self.n_classes = int(a["n_classes"])
        self.ignore_index = int(a["ignore_index"])
        n = len(self.ids)
        logits = self.fh["logits"]
        full = tuple(int(s) for s in logits.shape[2:])
        if logits.shape[0] != n:
            raise InputError(f"{self.path}: /logits has {logits.shape[0]} rows but /ids has {n}")
        if self.format_version >= 2:
            if "sizes" not in self.fh:
                raise InputError(f"{self.path}: missing dataset(s) /sizes")
            sizes = self.fh["sizes"][:].astype(np.int64)
            if sizes.shape != (n, 2):
                raise InputError(f"{self.path}: /sizes has shape {sizes.shape}, expected {(n, 2)}")
            if n and ((sizes < 1).any() or (sizes > np.asarray(full)).any()):
                bad = int(np.flatnonzero(((sizes < 1) | (sizes > np.asarray(full))).any(axis=1))[0])
                raise InputError(
                    f"{self.path}: /sizes of id {self.ids[bad]!r} is {tuple(sizes[bad])}, outside 1..{full}"
                )
        else:
            sizes = np.tile(np.asarray(full, dtype=np.int64), (n, 1))
        self.sizes = sizes
        self.shape = tuple(int(s) for s in sizes.max(axis=0)) if n else full
        self.variable_size = bool(n) and bool((sizes != sizes[0]).any())
        self.has_labels = "labels" in self.fh
        self.embedding_names = sorted(self.fh["embeddings"].keys()) if "embeddings" in self.fh else []
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in a.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        return self.index.rows(ids)

    def size(self, image_id: str) -> tuple[int, int]:
        """The valid (h, w) of one image."""
        h, w = self.sizes[self.index.rows([image_id])[0]]
        return int(h), int(w)

    def iter_batches(
        self, batch_size: int = 16, *, ids: Sequence[str] | None = None, with_labels: bool = False
    ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray | None]]:
        """Yield ``(ids, logits float32 (b,K,h,w), labels int64 (b,h,w) or None)`` in file order (or ``ids``
        order), cropped to the images' valid size.

        Each batch of ``batch_size`` rows is split into runs of consecutive rows of one size; each run is
        one yield, so a yield may hold fewer than ``batch_size`` rows, and the ids of all yields, joined,
        are exactly the requested order. A pool of one image size yields whole batches.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if with_labels and not self.has_labels:
            raise InputError(f"{self.path}: has no /labels; rerun `alseg infer --with-labels` on a labeled set")
        rows = np.arange(len(self.ids)) if ids is None else self.rows(ids)
        logits_ds, labels_ds = self.fh["logits"], (self.fh["labels"] if with_labels else None)
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            for run in _runs(self.sizes[batch]):
                sel = batch[run]
                h, w = (int(s) for s in self.sizes[sel[0]])
                # h5py reads increasing rows: read each distinct row once, then put them in order
                uniq, inv = np.unique(sel, return_inverse=True)
                idx = slice(int(uniq[0]), int(uniq[-1]) + 1) if uniq[-1] - uniq[0] == len(uniq) - 1 else uniq
                logits = logits_ds[idx, :, :h, :w].astype(np.float32)[inv]
                labels = labels_ds[idx, :h, :w][inv].astype(np.int64) if labels_ds is not None else None
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
    risk_maps: tuple[Sequence[str], np.ndarray | Sequence[np.ndarray]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a scores file atomically. ``scores[name]`` is (N,), ``embeddings[name]`` is (N, ...).

    ``risk_maps`` = (ids, maps) stores CRC risk maps of a few images under ``/risk_maps``: ``maps`` is an
    array (M,H,W) or a list of M arrays (h_i,w_i), stored zero-padded to the largest with their sizes.
    """
    path = check_writable(path, overwrite=overwrite)
    tmp = partial_path(path)
    ids = list(ids)
    _check_ids(path, ids)
    n = len(ids)
    version = 1
    if risk_maps is not None:
        map_ids, maps, map_sizes = list(risk_maps[0]), *_pad_maps(risk_maps[1])
        if len(map_ids) != len(map_sizes):
            raise ValueError(f"{len(map_ids)} risk map ids for {len(map_sizes)} maps")
        if (map_sizes != np.asarray(maps.shape[1:])).any():
            version = 2  # padded maps: a version-1 reader would take the padding for risk
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(tmp, "w") as fh:
            fh.attrs["format"] = SCORES_FORMAT
            fh.attrs["format_version"] = version
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
                rgrp.create_dataset("ids", data=np.asarray(map_ids, dtype=object), dtype=STR_DTYPE)
                rgrp.create_dataset("maps", data=maps, fillvalue=0).attrs["axes"] = "id,y,x"
                rgrp.create_dataset("sizes", data=map_sizes.astype(np.int32)).attrs["axes"] = "id,hw"
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _pad_maps(maps: np.ndarray | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(M,H,W) float16 zero-padded to the largest map, and the (M,2) sizes."""
    if isinstance(maps, np.ndarray):
        if maps.ndim != 3:
            raise ValueError(f"risk maps must be (M,H,W) or a list of (h,w) arrays, got shape {maps.shape}")
        return maps.astype(np.float16), np.tile(np.asarray(maps.shape[1:], dtype=np.int64), (len(maps), 1))
    arrays = [np.asarray(m) for m in maps]
    if any(m.ndim != 2 for m in arrays):
        raise ValueError("each risk map must be a 2-D (h, w) array")
    sizes = np.array([m.shape for m in arrays], dtype=np.int64).reshape(-1, 2)
    h, w = sizes.max(axis=0) if len(arrays) else (0, 0)
    out = np.zeros((len(arrays), h, w), dtype=np.float16)
    for i, m in enumerate(arrays):
        out[i, : m.shape[0], : m.shape[1]] = m
    return out, sizes


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
        """``(ids, maps (M,H,W) float32)`` saved by ``score --save-risk-maps``; empty when none.

        Maps of a variable-size pool are padded to the largest; pixels outside a map's own size
        (:meth:`risk_map_sizes`) are NaN, so nothing averages padding by mistake. :meth:`risk_maps_by_id`
        gives the cropped maps.
        """
        if "risk_maps" not in self.fh:
            return [], np.zeros((0, 0, 0), dtype=np.float32)
        maps = self.fh["risk_maps"]["maps"][:].astype(np.float32)
        sizes = self.risk_map_sizes()
        if len(maps):
            ys, xs = np.arange(maps.shape[1]), np.arange(maps.shape[2])
            outside = (ys[None, :, None] >= sizes[:, 0, None, None]) | (xs[None, None, :] >= sizes[:, 1, None, None])
            maps[outside] = np.nan
        return _decode_ids(self.fh["risk_maps"]["ids"][:]), maps

    def risk_map_sizes(self) -> np.ndarray:
        """(M,2) valid (h, w) of each stored risk map (files without /risk_maps/sizes: the full map)."""
        if "risk_maps" not in self.fh:
            return np.zeros((0, 2), dtype=np.int64)
        grp = self.fh["risk_maps"]
        if "sizes" in grp:
            return grp["sizes"][:].astype(np.int64).reshape(-1, 2)
        m, h, w = grp["maps"].shape
        return np.tile(np.asarray([h, w], dtype=np.int64), (m, 1))

    def risk_maps_by_id(self, ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """``{id: risk map (h, w) float32}``, cropped to each map's size; only stored ids (of ``ids`` when given)."""
        if "risk_maps" not in self.fh:
            return {}
        grp = self.fh["risk_maps"]
        wanted = None if ids is None else set(ids)
        out = {}
        for i, (image_id, (h, w)) in enumerate(zip(_decode_ids(grp["ids"][:]), self.risk_map_sizes())):
            if wanted is None or image_id in wanted:
                out[image_id] = np.asarray(grp["maps"][i, :h, :w], dtype=np.float32)
        return out

    def params(self, name: str) -> dict[str, Any]:
        group = "scores" if name in self.score_names else "embeddings"
        return json.loads(self.fh[group][name].attrs.get("params", "{}"))

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> "ScoresReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
