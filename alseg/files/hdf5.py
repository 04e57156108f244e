"""The HDF5 contract between stages: the pool file (written by ``infer``) and the scores file (``score``).

This module is the one home of the schema; ``docs/hdf5.md`` documents it for people.

Pool file (``format = "alseg.pool"``, ``format_version`` 2, or 3 when it holds /mc; versions 1, 2 are still read)::

    /ids                  (N,)        UTF-8 strings, unique; the join key (axes "id")
    /sizes                (N,2)       int32 valid (h, w) of each image (axes "id,hw"); absent in version 1
    /logits               (N,K,H,W)   float16, H, W = the largest h, w; image i fills [i, :, :h_i, :w_i],
                                      the rest is padding (fill value 0). Chunks (1,K,ch,cw) never span
                                      two images; lzf-compressed, so padding costs almost nothing
                                      (axes "id,class,y,x")
    /labels               (N,H,W)     uint8/uint16 ground truth at the logits' resolution, padded with the
                                      ignore index (optional)
    /embeddings/<name>    (N,D)       float32 (axes "id,feature"; attrs: layer, kind)
    /mc                   (N,3,H,W)   float32 MC-dropout statistics per pixel (``infer --mc T``, version 3):
                                      H(p̄) and H(p̄) − E in nats, max_k V_k / T (attrs: stats, T, scope);
                                      padded, chunked and compressed like /logits (axes "id,stat,y,x")
    root attrs: format, format_version, class_names (JSON), n_classes, ignore_index, resolution,
                model_config_sha256, checkpoint_sha256, config_path, checkpoint_path, alseg_version, created;
                optional: logits_storage, shard ("i/n"), fingerprint (JSON), merged_shards (JSON)

``logits_storage`` (``infer --logits``) says what holds the model output: ``native`` (absent in older
files) is /logits above; ``topk:K`` replaces /logits with /topk_probs (N,K',H,W) float16, the K' largest
softmax probabilities per pixel in decreasing order, and /topk_classes (N,K',H,W) uint8/uint16, their class
indices; ``none`` stores no model output (ids, sizes, labels, embeddings only). ``PoolReader.iter_batches``
refuses the last two with one line (nothing is reconstructed); ``iter_topk`` reads top-k files.
Shards of one ``infer`` (``<stem>.shard-i-of-n.h5``) are ordinary pool files with a ``shard`` attribute;
:func:`merge_pools` copies them into one pool file (:func:`merge_scores` likewise for scores files).

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

Writers write a unique temporary name beside the file and rename it at the end (``alseg.files.atomic``);
``PoolWriter`` first keeps each batch as a durable segment in ``<name>.partial/``, so a killed ``infer``
can ``--resume``. Readers stream one image chunk at a time and check the format, its version and the
datasets they need, failing with one line naming the file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import itertools
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from alseg import __version__
from alseg.errors import InputError, OutputError, OutputExistsError
from alseg.halfs import to_float32
from alseg.files.atomic import (
    atomic_path,
    check_writable,
    fsync_dir,
    output_lock,
    partial_path,
    temp_path,
    write_error,
    write_text_atomic,
)

POOL_FORMAT = "alseg.pool"
SCORES_FORMAT = "alseg.scores"
POOL_VERSION = 2  # what PoolWriter writes
POOL_VERSION_MC = 3  # ... when the file holds /mc (`infer --mc T`)
SCORES_VERSION = 2  # the highest ScoresReader reads; write_scores writes 1 unless risk maps are padded
READS = {POOL_FORMAT: (1, 2, 3), SCORES_FORMAT: (1, 2)}
# The channels of /mc (docs/algorithms.md §11.7), independent of the number of passes T: from them
# H(p̄), E = H(p̄) − MI, BALD = MI and the variation ratio 1 − max_k V_k / T follow exactly.
MC_STATS = ("predictive_entropy", "mutual_information", "max_vote_fraction")
STR_DTYPE = h5py.string_dtype("utf-8")
# Largest chunk of /logits (bytes): one image of the first size per chunk, split into tiles above this.
CHUNK_BYTES = 4 << 20
# lzf: ~4x faster to write and ~3x faster to read than gzip-1+shuffle, and it squeezes the zero padding of
# a partly filled chunk about 90:1 (docs/hdf5.md has the measurements). Float16 logits themselves
# compress little with either (gzip-1+shuffle: 0.77-0.87 of their bytes; lzf: stored as they are).
COMPRESSION: dict[str, Any] = {"compression": "lzf"}
RDCC_NBYTES = 32 << 20  # chunk cache per open file: a few chunks of a large image
# The folder <pool>.partial of a pool file being written: header.json + one segment per append.
PARTIAL_FORMAT = "alseg.pool.partial"
PARTIAL_VERSION = 1
_SEGMENT = re.compile(r"seg-(\d{6,})\.npz")
LOGITS_STORAGE = ("native", "topk:K", "none")  # what `infer --logits` may keep of the model output
# Root attributes that are the same in every shard of one infer run (merge refuses a difference).
_SHARD_SAME = ("class_names", "n_classes", "ignore_index", "resolution", "logits_storage", "model_config_sha256",
               "checkpoint_sha256")


def parse_logits_storage(text: str, n_classes: int | None = None) -> tuple[str, int]:
    """``native`` -> ("native", 0), ``none`` -> ("none", 0), ``topk:K`` -> ("topk", K); anything else raises."""
    text = str(text).strip()
    if text in ("native", "none"):
        return text, 0
    m = re.fullmatch(r"topk:(\d+)", text)
    if m is None or int(m.group(1)) < 1:
        raise InputError(f"--logits: unknown {text!r}; choose one of: native, none, topk:K (K >= 1 classes kept)")
    k = int(m.group(1))
    if n_classes is not None and k > n_classes:
        raise InputError(f"--logits {text}: the model has only {n_classes} classes; keep K <= {n_classes}")
    return "topk", k


def _class_dtype(n_classes: int):
    return np.uint8 if n_classes <= 256 else np.uint16


def shard_path(path: str | os.PathLike, index: int, count: int) -> Path:
    """The file shard ``index`` of ``count`` writes for output ``path``: ``<stem>.shard-i-of-n<suffix>``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.shard-{int(index)}-of-{int(count)}{path.suffix}")


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# pool_digest's value: "h5meta-sha256:" + the sha256 of what it hashes.
POOL_DIGEST_PREFIX = "h5meta-sha256:"
_DIGEST_FULL_BYTES = 16 << 20  # datasets stored in at most this many bytes are hashed whole


def _digest_value(h: Any, value: Any) -> None:
    """Feed one attribute or dataset value into the hash ``h``, with its type and shape."""
    if isinstance(value, (bytes, str)):
        data = value.encode("utf-8") if isinstance(value, str) else value
        h.update(b"s%d:" % len(data) + data)
        return
    arr = np.asarray(value)
    if arr.dtype.kind == "O":  # variable-length strings (ids): lengths, then the bytes
        items = [x.encode("utf-8") if isinstance(x, str) else x if isinstance(x, bytes) else repr(x).encode()
                 for x in arr.reshape(-1)]
        h.update(b"o" + repr(arr.shape).encode() + np.array([len(x) for x in items], np.int64).tobytes())
        h.update(b"".join(items))
        return
    arr = np.ascontiguousarray(arr)
    h.update(b"a" + arr.dtype.str.encode() + repr(arr.shape).encode() + arr.tobytes())


def pool_digest(path: str | os.PathLike) -> str:
    """A content digest of an HDF5 file (a pool file) that reads its metadata, not its logits.

    ``sha256_file`` of a 100 GB pool reads 100 GB; this reads a few MB. Hashed: the file size; every
    attribute of the root, groups and datasets; each dataset's path, shape, dtype, chunk shape, filters
    and fill value; the whole data of every dataset stored in at most 16 MiB and of ``/ids`` and
    ``/sizes`` whatever their size; for a larger chunked dataset (``/logits``, ``/labels``,
    ``/embeddings/*``) its chunk index (position, byte offset, stored size and filter mask of every
    chunk) and the stored bytes of its first, middle and last chunk. A byte-for-byte copy keeps the
    digest (no path, name or mtime enters it); rewriting the pool changes it (``PoolWriter``
    records ``created``, and the stored size of each compressed chunk follows its content), as does a
    change of ids, sizes, shapes, attributes or layout. Not seen: bulk data overwritten in place by the
    same number of stored bytes outside the sampled chunks; ``sha256_file`` sees that, at the cost of
    reading every byte. Returns ``"h5meta-sha256:<64 hex digits>"``.
    """
    path = Path(path)
    h = hashlib.sha256(b"alseg.pool_digest/1\0")
    h.update(b"size%d\0" % path.stat().st_size)
    with h5py.File(path, "r") as fh:
        names: list[str] = []
        fh.visit(names.append)
        for name in [""] + sorted(names):
            obj = fh[name] if name else fh
            h.update(b"\0node:" + name.encode("utf-8"))
            for key in sorted(obj.attrs.keys()):
                h.update(b"\0attr:" + key.encode("utf-8"))
                _digest_value(h, obj.attrs[key])
            if not isinstance(obj, h5py.Dataset):
                continue
            dcpl = obj.id.get_create_plist()
            filters = [dcpl.get_filter(i)[:3] for i in range(dcpl.get_nfilters())]
            h.update(repr((obj.shape, obj.dtype.str, str(obj.dtype), h5py.check_string_dtype(obj.dtype),
                           obj.chunks, filters, obj.fillvalue if obj.dtype.kind != "O" else None)).encode())
            whole = obj.id.get_storage_size() <= _DIGEST_FULL_BYTES or name.rsplit("/", 1)[-1] in ("ids", "sizes")
            if whole:
                _digest_value(h, obj[()])
                continue
            if obj.chunks is None:  # large and contiguous (alseg writes none): its first and last rows
                _digest_value(h, obj[0])
                _digest_value(h, obj[-1])
                continue
            index = bytearray()
            offsets: list[tuple[int, ...]] = []

            def add(info, index=index, offsets=offsets) -> None:
                index.extend(repr((info.chunk_offset, info.byte_offset, info.size, info.filter_mask)).encode())
                offsets.append(info.chunk_offset)

            if hasattr(obj.id, "chunk_iter"):
                obj.id.chunk_iter(add)
            else:  # HDF5 < 1.12.3: one call per chunk
                for i in range(obj.id.get_num_chunks()):
                    add(obj.id.get_chunk_info(i))
            h.update(b"\0chunks:" + hashlib.sha256(bytes(index)).digest())
            for k in sorted({0, len(offsets) // 2, len(offsets) - 1}) if offsets else ():
                mask, raw = obj.id.read_direct_chunk(offsets[k])
                h.update(b"\0chunk%d:%d:" % (k, mask) + hashlib.sha256(raw).digest())
    return POOL_DIGEST_PREFIX + h.hexdigest()


def content_digest(path: str | os.PathLike) -> str:
    """:func:`pool_digest` for an alseg pool file, :func:`sha256_file` for any other file: the
    identity that manifests record for their inputs and outputs."""
    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        try:
            with h5py.File(path, "r") as fh:
                fmt = fh.attrs.get("format")
            fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        except (OSError, KeyError, ValueError):
            fmt = None
        if fmt == POOL_FORMAT:
            return pool_digest(path)
    return sha256_file(path)


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


def file_format(path: str | os.PathLike) -> str:
    """The ``format`` attribute of an HDF5 file (``alseg.pool``, ``alseg.scores``); one line when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as fh:
            return str(_attr_text(fh.attrs, "format", ""))
    except OSError:
        raise InputError(f"{path}: not an HDF5 file (or it is truncated)") from None


def _check_ids(path: Path, ids: Sequence[str]) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise InputError(f"{path}: id {i!r} appears more than once in /ids")
        if not i.strip():
            raise InputError(f"{path}: /ids holds an empty id (row {len(seen)})")
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


READ_AHEAD_BATCHES = 2  # PoolReader asks the kernel for the chunks of this many batches ahead


class _ReadAhead:
    """``posix_fadvise(WILLNEED)`` over the stored chunks of given rows of chunked datasets: the kernel reads
    them in the background, so a cold (uncached) pool streams while the caller computes. Rows already hinted
    are not hinted again. A no-op where the platform or the file layout does not allow it."""

    def __init__(self, path: Path, datasets: Sequence[Any]):
        self.fd = None
        self.datasets = [ds for ds in datasets if ds.chunks is not None and ds.compression != "szip"]
        self.done: set[int] = set()
        if self.datasets and hasattr(os, "posix_fadvise"):
            try:
                self.fd = os.open(path, os.O_RDONLY)
            except OSError:
                self.fd = None

    def hint(self, rows: np.ndarray) -> None:
        if self.fd is None:
            return
        try:
            for row in (int(r) for r in rows):
                if row in self.done:
                    continue
                self.done.add(row)
                for ds in self.datasets:
                    tiles = [range(0, n, c) for n, c in zip(ds.shape[1:], ds.chunks[1:])]
                    for coord in itertools.product(*tiles):
                        info = ds.id.get_chunk_info_by_coord((row, *coord))
                        if info.byte_offset is not None and info.size:
                            os.posix_fadvise(self.fd, info.byte_offset, info.size, os.POSIX_FADV_WILLNEED)
        except (OSError, ValueError, KeyError, AttributeError):
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        self.close()


def _read_cropped(ds: Any, rows: Any, h: int, w: int, buffers: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """``ds[rows, ..., :h, :w]``: the plain read when nothing is cropped (h5py's fastest selection).

    ``buffers``: read a slice of rows into a buffer kept there per dataset and reused by the next call
    (no fresh allocation, whose page faults cost as much as the read itself); the result is a view of it.
    """
    sel = (rows,) if tuple(ds.shape[-2:]) == (h, w) else (
        (rows,) + (slice(None),) * (ds.ndim - 3) + (slice(0, h), slice(0, w)))
    if buffers is None or not isinstance(rows, slice):
        return ds[sel if len(sel) > 1 else rows]
    shape = (rows.stop - rows.start,) + tuple(ds.shape[1:-2]) + (h, w)
    size = int(np.prod(shape))
    buf = buffers.get(ds.name)
    if buf is None or buf.size < size:
        buf = buffers[ds.name] = np.empty(size, dtype=ds.dtype)
    out = buf[:size].reshape(shape)
    if size:
        ds.read_direct(out, sel)
    return out


def _runs(sizes: np.ndarray) -> list[np.ndarray]:
    """Positions 0..n-1 split into runs of consecutive rows sharing one (h, w)."""
    if len(sizes) == 0:
        return []
    cut = np.flatnonzero((sizes[1:] != sizes[:-1]).any(axis=1)) + 1
    return np.split(np.arange(len(sizes)), cut)


class _WriteSink:
    """The file under h5py's file-object driver: keeps the first ``OSError`` of a write (full disk,
    ``ulimit -f``) and pretends later writes succeed. HDF5 cannot close a file after a failed write: it
    keeps it open and crashes the interpreter at exit (a segfault); this way it closes cleanly and
    :func:`_h5_create` raises the error afterwards."""

    def __init__(self, raw):
        self.raw = raw
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        start, n = self.raw.tell(), view.nbytes
        if self.error is None:
            try:
                done = 0
                while done < n:
                    done += self.raw.write(view[done:]) or 0
                return n
            except OSError as exc:
                self.error = exc
        self.raw.seek(start + n)
        return n

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self.raw.truncate(size)
            except OSError as exc:
                self.error = exc
        return self.raw.tell() if size is None else size

    def readinto(self, buffer) -> int:
        return self.raw.readinto(buffer)

    def read(self, size: int = -1) -> bytes:
        return self.raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def _h5_create(path: Path, **kwargs: Any) -> Iterator[h5py.File]:
    """A new HDF5 file at ``path``; a failed write raises its ``OSError`` once HDF5 has closed the file."""
    with open(path, "w+b", buffering=0) as raw:
        sink = _WriteSink(raw)
        with h5py.File(sink, "w", **kwargs) as fh:
            yield fh
        if sink.error is not None:
            raise sink.error


# ---------------------------------------------------------------------------------------------- pool


class PoolWriter:
    """Streams rows into a pool file. Use as a context manager; the file appears under its name on exit.

    Images may differ in size: ``/logits`` is as large as the largest (h, w) and ``/sizes`` keeps each
    image's own. ``logits_shape`` is a hint, the (H, W) of the first image: it sets the chunk tile.

    Crash safety: HDF5 cannot be trusted after a kill, so rows never go into it directly. Each
    :meth:`append` writes one segment ``<path>.partial/seg-NNNNNN.npz`` (temporary name, fsync, rename: a
    segment that exists is complete); :meth:`close` assembles the HDF5 from the segments in order (a
    temporary file renamed into place) and removes the folder. ``resume=True`` continues the segments an
    interrupted run left, after checking that ``header.json`` holds the same schema and ``fingerprint``
    (any JSON-plain dict the caller wants to match, e.g. checkpoint digests); ``written_ids`` tells which
    rows are there. An uninterrupted and an interrupted run thus write the same datasets through the same
    code. The writer holds the output's lock (:func:`alseg.files.atomic.output_lock`) until it is closed.

    ``logits_storage`` (:func:`parse_logits_storage`): ``native`` stores the logits; ``topk:K`` takes the
    K largest probabilities (b,K,h,w) as ``logits`` and their class indices as ``topk_classes``; ``none``
    takes ``logits=None`` and the images' ``sizes``. ``extras`` {name: (shape of one row, dtype)} are
    per-row arrays kept in the segments only (the fused path's scores), read back with :meth:`extra` after
    ``close(commit=True, keep_partial=True)``.

    ``mc`` = ``{"T": passes, "scope": "head"|"full"}`` (``infer --mc T``) adds ``/mc``: each append then
    takes ``mc_maps``, per image the (3, h, w) statistics of :data:`MC_STATS` on the image's grid; the file
    says ``format_version`` 3.
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
        fingerprint: Mapping[str, Any] | None = None,
        logits_storage: str = "native",
        extras: Mapping[str, tuple[Sequence[int], Any]] | None = None,
        mc: Mapping[str, Any] | None = None,
    ):
        h, w = (int(s) for s in logits_shape)
        if h < 1 or w < 1:
            raise ValueError(f"logits_shape must be two sizes >= 1, got {tuple(logits_shape)}")
        self.path = Path(path)
        self.tmp = self.partial = partial_path(self.path)
        self.class_names = [str(c) for c in class_names]
        self.n_classes = len(self.class_names)
        self.ignore_index = int(ignore_index)
        self.with_labels = bool(with_labels)
        self.embedding_dims = {str(k): int(v) for k, v in (embedding_dims or {}).items()}
        self.embedding_attrs = {k: dict(v) for k, v in (embedding_attrs or {}).items()}
        self.attrs = dict(attrs or {})
        self.label_dtype = np.uint8 if self.n_classes < 255 and self.ignore_index <= 255 else np.uint16
        self.storage, self.topk = parse_logits_storage(logits_storage, self.n_classes)
        self.logits_storage = str(logits_storage).strip()
        self.extras = {str(k): (tuple(int(d) for d in shape), np.dtype(dtype))
                       for k, (shape, dtype) in (extras or {}).items()}
        more: dict[str, Any] = {}
        if self.storage != "native":  # absent for native, so that older partial folders still resume
            more["logits_storage"] = self.logits_storage
        if self.extras:
            more["extras"] = {k: [list(shape), dt.str] for k, (shape, dt) in self.extras.items()}
        self.mc = _mc_attrs(mc) if mc else None
        if self.mc:  # absent without MC, so that older partial folders still resume
            more["mc"] = self.mc
        self.fingerprint = _plain({
            "class_names": self.class_names, "ignore_index": self.ignore_index, "with_labels": self.with_labels,
            "embedding_dims": self.embedding_dims, **more, **dict(fingerprint or {}),
        })
        self._closed = False
        self._lock = output_lock(self.path)
        self._lock.__enter__()
        try:
            check_writable(self.path, overwrite=overwrite)
            if _partial_action(self.path, overwrite=overwrite, resume=resume) == "resume":
                self._reopen()
            else:
                self._start((h, w))
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise

    # -- the partial folder -----------------------------------------------------------------------------
    def _start(self, hint: tuple[int, int]) -> None:
        self.hint = hint
        self.shape = hint
        self.written_ids: list[str] = []
        self._id_set: set[str] = set()
        self._sizes: list[np.ndarray] = []
        self._segments: list[Path] = []
        try:
            self.partial.mkdir(parents=True)
        except OSError as exc:
            raise write_error(self.partial, exc) from None
        header = {"format": PARTIAL_FORMAT, "format_version": PARTIAL_VERSION, "alseg_version": __version__,
                  "logits_shape": list(hint), "fingerprint": self.fingerprint}
        write_text_atomic(self.partial / "header.json", json.dumps(header, indent=1, sort_keys=True) + "\n")

    def _reopen(self) -> None:
        p = self.partial
        header = _read_header(p)
        _compare_fingerprint(p, header["fingerprint"], self.fingerprint)
        for entry in p.iterdir():  # temporaries of a killed append
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)
        self.hint = tuple(int(s) for s in header["logits_shape"])
        self._segments = _segment_paths(p)
        self.written_ids, self._id_set, self._sizes = [], set(), []
        for seg in self._segments:
            with _open_segment(seg) as z:
                ids = [str(i) for i in z["ids"]]
                sizes = np.asarray(z["sizes"], dtype=np.int64).reshape(-1, 2)
                want = {"ids", "sizes"} | {f"emb.{e}" for e in self.embedding_dims} | {f"x.{e}" for e in self.extras}
                want |= {f"logits_{j}" for j in range(len(ids))} if self.storage != "none" else set()
                want |= {f"classes_{j}" for j in range(len(ids))} if self.storage == "topk" else set()
                want |= {f"labels_{j}" for j in range(len(ids))} if self.with_labels else set()
                want |= {f"mc_{j}" for j in range(len(ids))} if self.mc else set()
                if len(sizes) != len(ids) or not want <= set(z.files):
                    raise InputError(f"{seg}: damaged batch of an interrupted run; pass --overwrite to start over")
            for i in ids:
                if i in self._id_set:
                    raise InputError(f"{seg}: id {i!r} appears more than once; pass --overwrite to start over")
                self._id_set.add(i)
            self.written_ids.extend(ids)
            self._sizes.append(sizes)
        self.shape = tuple(int(s) for s in np.concatenate([np.asarray([self.hint]), *self._sizes]).max(axis=0))

    # -- rows -------------------------------------------------------------------------------------------
    def _as_runs(self, b: int, logits, labels, *, channels: int | None = None,
                 want_labels: bool | None = None) -> list[tuple[int, np.ndarray, np.ndarray | None]]:
        """(first row, logits (r,K,h,w), labels (r,h,w) or None) per run of equal-size images."""
        k = self.n_classes if channels is None else channels
        want_labels = self.with_labels if want_labels is None else want_labels
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
        logits: np.ndarray | Sequence[np.ndarray] | None,
        labels: np.ndarray | Sequence[np.ndarray] | None = None,
        embeddings: Mapping[str, np.ndarray] | None = None,
        *,
        topk_classes: np.ndarray | Sequence[np.ndarray] | None = None,
        sizes: np.ndarray | Sequence[Sequence[int]] | None = None,
        extras: Mapping[str, np.ndarray] | None = None,
        mc_maps: np.ndarray | Sequence[np.ndarray] | None = None,
    ) -> None:
        """Append ``len(ids)`` rows, stored as float16: one durable segment of the partial folder.

        ``logits`` is an array (b,K,H,W) (images of one size) or a list of b arrays (K,h_i,w_i); ``labels``
        (with ``with_labels``) likewise (b,H,W) or a list of (h_i,w_i). With ``topk:K`` storage ``logits``
        holds the K largest probabilities and ``topk_classes`` their classes, in the same shapes; with
        ``none`` storage ``logits`` is None and ``sizes`` (b,2) gives each image's (h, w).
        ``extras[name]`` is (b, *shape) for each name the writer was given. ``mc_maps`` (a writer with
        ``mc``): (b,3,h,w) or a list of b arrays (3,h_i,w_i), each on its image's grid, stored float32.
        """
        if self._closed:
            raise ValueError("append() on a closed PoolWriter")
        ids = [str(i) for i in ids]
        b = len(ids)
        class_runs = None
        if self.storage == "none":
            if logits is not None:
                raise ValueError("this pool file stores no logits (logits_storage none); pass logits=None and sizes")
            given = np.asarray(sizes if sizes is not None else np.zeros((0, 2)), dtype=np.int64).reshape(-1, 2)
            if len(given) != b or (given < 1).any():
                raise ValueError(f"sizes must be (b, 2) image sizes >= 1 for {b} ids, got {given.tolist()}")
            # zero-channel stand-ins carry the sizes through the same checks (labels must match them)
            runs = self._as_runs(b, [np.zeros((0, h, w), dtype=np.float16) for h, w in given], labels, channels=0)
        else:
            runs = self._as_runs(b, logits, labels, channels=self.topk or None)
            if self.storage == "topk":
                if topk_classes is None:
                    raise ValueError("topk storage: append() needs topk_classes")
                class_runs = self._as_runs(b, topk_classes, None, channels=self.topk, want_labels=False)
                if [(f, x.shape) for f, x, _ in class_runs] != [(f, x.shape) for f, x, _ in runs]:
                    raise ValueError("topk_classes must have the shapes of the top-k probabilities")
        if b == 0:
            return
        seen = set(self._id_set)
        for i in ids:
            if i in seen:
                raise InputError(f"{self.path}: id {i!r} appears more than once in /ids")
            seen.add(i)
        embeddings = dict(embeddings or {})
        if set(embeddings) != set(self.embedding_dims):
            raise ValueError(f"embeddings {sorted(embeddings)} != {sorted(self.embedding_dims)}")
        arrays: dict[str, np.ndarray] = {"ids": np.asarray(ids, dtype=str)}
        sizes = np.zeros((b, 2), dtype=np.int32)
        for first, x, y in runs:
            for j in range(len(x)):
                sizes[first + j] = x.shape[2:]
                if self.storage != "none":
                    arrays[f"logits_{first + j}"] = np.asarray(x[j], dtype=np.float16)
                if y is not None:
                    arrays[f"labels_{first + j}"] = np.asarray(y[j]).astype(self.label_dtype)
        for first, c, _ in class_runs or ():
            for j in range(len(c)):
                arrays[f"classes_{first + j}"] = np.asarray(c[j]).astype(_class_dtype(self.n_classes))
        arrays["sizes"] = sizes
        if (mc_maps is not None) != bool(self.mc):
            raise ValueError("this pool file stores MC statistics; append() needs mc_maps" if self.mc else
                             "mc_maps given to a PoolWriter without mc")
        for j in range(b if self.mc else 0):
            m = np.asarray(mc_maps[j], dtype=np.float32)
            if m.shape != (len(MC_STATS), *sizes[j]):
                raise ValueError(f"mc_maps[{j}] has shape {m.shape}, expected {(len(MC_STATS), *sizes[j])}")
            arrays[f"mc_{j}"] = m
        extras = dict(extras or {})
        if set(extras) != set(self.extras):
            raise ValueError(f"extras {sorted(extras)} != {sorted(self.extras)}")
        for name, (shape, dtype) in self.extras.items():
            x = np.asarray(extras[name]).astype(dtype, copy=False)
            if x.shape != (b, *shape):
                raise ValueError(f"extras[{name!r}] has shape {x.shape}, expected {(b, *shape)}")
            arrays[f"x.{name}"] = x
        for name, dim in self.embedding_dims.items():
            e = np.asarray(embeddings[name], dtype=np.float32)
            if e.shape != (b, dim):
                raise ValueError(f"embeddings[{name!r}] has shape {e.shape}, expected {(b, dim)}")
            arrays[f"emb.{name}"] = e
        seg = self.partial / f"seg-{len(self._segments):06d}.npz"
        tmp = temp_path(seg)
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, seg)
            fsync_dir(self.partial)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutputError(f"{write_error(seg, exc)}; `--resume` then continues after the "
                              f"{len(self.written_ids)} image(s) already done") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._segments.append(seg)
        self._sizes.append(sizes.astype(np.int64))
        self.written_ids.extend(ids)
        self._id_set.update(ids)
        self.shape = (max(self.shape[0], int(sizes[:, 0].max())), max(self.shape[1], int(sizes[:, 1].max())))

    # -- the final file ---------------------------------------------------------------------------------
    def _assemble(self) -> None:
        """Write the HDF5 from the segments, in order, under a temporary name; rename it into place."""
        k, n = self.n_classes, len(self.written_ids)
        sizes = np.concatenate(self._sizes) if n else np.zeros((0, 2), dtype=np.int64)
        h, w = (int(s) for s in sizes.max(axis=0)) if n else self.hint
        self.shape = (h, w)
        attrs = dict(self.attrs)
        if self.storage != "native":
            attrs["logits_storage"] = self.logits_storage
        try:
            with atomic_path(self.path) as tmp, _h5_create(tmp, rdcc_nbytes=RDCC_NBYTES) as fh:
                _write_pool_attrs(fh, self.class_names, self.ignore_index, attrs,
                                  version=POOL_VERSION_MC if self.mc else POOL_VERSION)
                ds = _create_pool_datasets(
                    fh, n=n, shape=(h, w), tile=chunk_tile(k, *self.hint), n_classes=k, storage=self.storage,
                    topk=self.topk, label_dtype=self.label_dtype if self.with_labels else None,
                    ignore_index=self.ignore_index, embedding_dims=self.embedding_dims,
                    embedding_attrs=self.embedding_attrs, mc=self.mc,
                )
                if n:
                    ds["ids"][:] = np.asarray(self.written_ids, dtype=object)
                    ds["sizes"][:] = sizes.astype(np.int32)
                images = {"logits": "logits", "topk_probs": "logits", "topk_classes": "classes", "labels": "labels",
                          "mc": "mc"}
                row = 0
                for seg, seg_sizes in zip(self._segments, self._sizes):
                    b = len(seg_sizes)
                    with _open_segment(seg) as z:
                        try:
                            for run in _runs(seg_sizes):
                                rh, rw = (int(s) for s in seg_sizes[run[0]])
                                at = slice(row + int(run[0]), row + int(run[-1]) + 1)
                                for name, key in images.items():
                                    if name in ds:
                                        ds[name][at, ..., :rh, :rw] = np.stack([z[f"{key}_{j}"] for j in run])
                            for name, e in ds["embeddings"].items():
                                e[row : row + b] = z[f"emb.{name}"]
                        except (zipfile.BadZipFile, KeyError, ValueError, EOFError) as exc:
                            raise _damaged(seg, exc) from None
                    row += b
        except OutputError as exc:
            raise OutputError(f"{exc}; the finished batches stay in {self.partial}: rerun with --resume") from None

    def extra(self, name: str) -> np.ndarray:
        """(N, *shape) rows of extra ``name`` from the segments, in row order (before :meth:`discard_partial`)."""
        shape, dtype = self.extras[name]
        parts = []
        for seg in self._segments:
            with _open_segment(seg) as z:
                try:
                    parts.append(np.asarray(z[f"x.{name}"]))
                except (zipfile.BadZipFile, KeyError, ValueError, EOFError) as exc:
                    raise _damaged(seg, exc) from None
        return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)

    def close(self, *, commit: bool = True, keep_partial: bool = False) -> Path:
        """Release the output; with ``commit`` assemble the pool file from the segments and rename it into
        place, then (unless ``keep_partial``: see :meth:`discard_partial`) remove the partial folder.
        Without ``commit`` the segments stay for ``resume`` (a folder without any is removed)."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            if commit:
                self._assemble()
                if not keep_partial:
                    self.discard_partial()
            elif not self._segments:
                self.discard_partial()
        finally:
            self._lock.__exit__(None, None, None)
        return self.path

    def discard_partial(self) -> None:
        """Remove the partial folder (after the pool file and whatever must accompany it are written)."""
        shutil.rmtree(self.partial, ignore_errors=True)

    def __enter__(self) -> "PoolWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception (KeyboardInterrupt included) the segments stay: `infer --resume` continues them.
        self.close(commit=exc_type is None)


def _write_pool_attrs(fh: h5py.File, class_names: Sequence[str], ignore_index: int, attrs: Mapping[str, Any], *,
                      version: int = POOL_VERSION) -> None:
    fh.attrs["format"] = POOL_FORMAT
    fh.attrs["format_version"] = int(version)
    fh.attrs["class_names"] = json.dumps(list(class_names))
    fh.attrs["n_classes"] = len(class_names)
    fh.attrs["ignore_index"] = int(ignore_index)
    fh.attrs["alseg_version"] = __version__
    fh.attrs["created"] = _now()
    for key, value in attrs.items():
        fh.attrs[key] = value if isinstance(value, (str, int, float, np.number)) else json.dumps(value)


def _create_pool_datasets(
    fh: h5py.File, *, n: int, shape: tuple[int, int], tile: tuple[int, int], n_classes: int, storage: str,
    topk: int, label_dtype, ignore_index: int, embedding_dims: Mapping[str, int],
    embedding_attrs: Mapping[str, Mapping[str, Any]], mc: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The empty datasets of a pool file (the one layout :class:`PoolWriter` and :func:`merge_pools` write):
    name -> dataset, and ``"embeddings"`` -> {name: dataset}. ``mc`` ({T, scope}) adds ``/mc``."""
    (h, w), (ch, cw), k = shape, tile, n_classes
    out: dict[str, Any] = {}
    out["ids"] = fh.create_dataset("ids", shape=(n,), maxshape=(None,), dtype=STR_DTYPE, chunks=(1024,))
    out["ids"].attrs["axes"] = "id"
    out["sizes"] = fh.create_dataset("sizes", shape=(n, 2), maxshape=(None, 2), dtype=np.int32, chunks=(1024, 2))
    out["sizes"].attrs["axes"] = "id,hw"
    if storage == "native":
        out["logits"] = fh.create_dataset(
            "logits", shape=(n, k, h, w), maxshape=(None, k, None, None), dtype=np.float16,
            chunks=(1, k, ch, cw), fillvalue=0, **COMPRESSION,
        )
        out["logits"].attrs["axes"] = "id,class,y,x"
    elif storage == "topk":
        out["topk_probs"] = fh.create_dataset(
            "topk_probs", shape=(n, topk, h, w), maxshape=(None, topk, None, None), dtype=np.float16,
            chunks=(1, topk, ch, cw), fillvalue=0, **COMPRESSION,
        )
        out["topk_probs"].attrs["axes"] = "id,rank,y,x"
        out["topk_classes"] = fh.create_dataset(
            "topk_classes", shape=(n, topk, h, w), maxshape=(None, topk, None, None), dtype=_class_dtype(k),
            chunks=(1, topk, ch, cw), fillvalue=0, **COMPRESSION,
        )
        out["topk_classes"].attrs["axes"] = "id,rank,y,x"
    if label_dtype is not None:
        out["labels"] = fh.create_dataset(
            "labels", shape=(n, h, w), maxshape=(None, None, None), dtype=label_dtype,
            chunks=(1, ch, cw), fillvalue=ignore_index, **COMPRESSION,
        )
        out["labels"].attrs["axes"] = "id,y,x"
    if mc:
        # the tile of /logits: an image's MC statistics lie in the same chunk grid as its logits
        out["mc"] = fh.create_dataset(
            "mc", shape=(n, len(MC_STATS), h, w), maxshape=(None, len(MC_STATS), None, None), dtype=np.float32,
            chunks=(1, len(MC_STATS), ch, cw), fillvalue=0, **COMPRESSION,
        )
        out["mc"].attrs["axes"] = "id,stat,y,x"
        out["mc"].attrs["stats"] = json.dumps(list(MC_STATS))
        out["mc"].attrs["units"] = "nats, nats, fraction of passes"
        out["mc"].attrs["T"] = int(mc["T"])
        out["mc"].attrs["scope"] = str(mc["scope"])
    out["embeddings"] = {}
    if embedding_dims:
        grp = fh.create_group("embeddings")
        for name, dim in embedding_dims.items():
            rows = max(1, min(256, (1 << 20) // max(dim * 4, 1)))
            e = grp.create_dataset(name, shape=(n, dim), maxshape=(None, dim), dtype=np.float32, chunks=(rows, dim))
            e.attrs["axes"] = "id,feature"
            for key, value in embedding_attrs.get(name, {}).items():
                e.attrs[key] = value
            out["embeddings"][name] = e
    return out


def _mc_attrs(mc: Mapping[str, Any]) -> dict[str, Any]:
    """``{"T": int >= 1, "scope": str}`` of an MC-dropout run, checked."""
    try:
        t, scope = int(mc["T"]), str(mc["scope"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"mc must be {{'T': passes, 'scope': name}}, got {mc!r}") from None
    if t < 1:
        raise ValueError(f"mc T must be >= 1 passes, got {t}")
    return {"T": t, "scope": scope}


def _plain(obj: Any) -> Any:
    """JSON round trip, so that tuples and lists (and numpy scalars) compare equal to what a header holds."""
    return json.loads(json.dumps(obj, sort_keys=True, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _segment_paths(partial: Path) -> list[Path]:
    numbered = sorted((int(m.group(1)), entry) for entry in partial.iterdir() if (m := _SEGMENT.fullmatch(entry.name)))
    for expect, (got, entry) in enumerate(numbered):
        if got != expect:
            raise InputError(f"{partial}: batch seg-{expect:06d}.npz is missing (found {entry.name}); "
                             "pass --overwrite to start over")
    return [entry for _, entry in numbered]


def _damaged(seg: Path, exc: BaseException) -> InputError:
    return InputError(f"{seg}: damaged batch of an interrupted run ({type(exc).__name__}: {exc}); "
                      "pass --overwrite to start over")


def _open_segment(seg: Path):
    try:
        return np.load(seg, allow_pickle=False)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise _damaged(seg, exc) from None


def _read_header(partial: Path) -> dict[str, Any]:
    path = partial / "header.json"
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{partial}: cannot resume: no readable header.json ({type(exc).__name__}); "
                         "pass --overwrite to start over") from None
    got = (header.get("format"), header.get("format_version")) if isinstance(header, dict) else None
    if got != (PARTIAL_FORMAT, PARTIAL_VERSION) or "fingerprint" not in header:
        raise InputError(f"{partial}: cannot resume: written by another alseg ({got}); pass --overwrite to start over")
    return header


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        text = value[:12] + "…"
    return text if len(text) <= 80 else text[:77] + "…"


def _compare_fingerprint(partial: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    missing = object()
    for key in sorted(set(old) | set(new)):
        if old.get(key, missing) != new.get(key, missing):
            raise InputError(
                f"{partial}: cannot resume: {key} differs from the interrupted run's (then {_short(old.get(key))}, "
                f"now {_short(new.get(key))}); rerun with the same inputs and options, or pass --overwrite to start over"
            )


def _old_partial(p: Path) -> InputError:
    return InputError(f"{p}: cannot resume: written by another alseg (one HDF5 file, not a folder of batches); "
                      "delete it or pass --overwrite to start over")


def _leftover(p: Path) -> OutputExistsError:
    return OutputExistsError(f"{p}: an interrupted run left its finished batches here; pass --resume to continue "
                             "it or --overwrite to start over")


def _has_segments(p: Path) -> bool:
    return p.is_dir() and any(_SEGMENT.fullmatch(e.name) for e in p.iterdir())


def _partial_action(path: Path, *, overwrite: bool, resume: bool) -> str:
    """``"resume"`` or ``"fresh"`` for a pool writer of ``path``; clears or refuses what an earlier run left.
    ``resume`` wins over ``overwrite`` (which then only replaces a finished pool file)."""
    p = partial_path(path)
    if not (p.exists() or p.is_symlink()):
        return "fresh"
    if not p.is_dir():
        if not overwrite:
            raise _old_partial(p)
        p.unlink()
        return "fresh"
    if _has_segments(p):
        if resume:
            return "resume"
        if not overwrite:
            raise _leftover(p)
    shutil.rmtree(p)  # overwrite, or nothing worth keeping (killed before its first batch)
    return "fresh"


def check_pool_resume(
    path: str | os.PathLike, *, overwrite: bool, resume: bool, fingerprint: Mapping[str, Any] | None = None
) -> int:
    """Fail early (before a model is loaded) where :class:`PoolWriter` would: an existing output without
    ``overwrite``, finished batches without ``resume`` or ``overwrite``, an old single-file partial, or a
    partial folder whose fingerprint differs in a key of ``fingerprint``. Returns the number of finished
    batches ``resume`` continues."""
    path = check_writable(path, overwrite=overwrite)
    p = partial_path(path)
    if (p.exists() or p.is_symlink()) and not p.is_dir() and not overwrite:
        raise _old_partial(p)
    if not _has_segments(p):
        return 0
    if not resume:
        if not overwrite:
            raise _leftover(p)
        return 0
    new = _plain(dict(fingerprint or {}))
    old = _read_header(p)["fingerprint"]
    _compare_fingerprint(p, {k: v for k, v in old.items() if k in new}, new)
    return len(_segment_paths(p))


def partial_resumable(path: str | os.PathLike, fingerprint: Mapping[str, Any]) -> bool:
    """Whether ``path``'s partial folder holds finished batches that ``resume`` would continue under
    ``fingerprint`` (the check of :func:`check_pool_resume`); False when there are none or they differ."""
    p = partial_path(Path(path))
    if not p.is_dir() or not _has_segments(p):
        return False
    new = _plain(dict(fingerprint))
    try:
        old = _read_header(p)["fingerprint"]
        _compare_fingerprint(p, {k: v for k, v in old.items() if k in new}, new)
    except (InputError, OSError, KeyError, TypeError, ValueError):
        return False
    return True


class _Shape:
    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(x) for x in shape)
        self.ndim = len(self.shape)


class PoolReader:
    """Reads a pool file lazily; logits are read one batch of chunks at a time, as float32, cropped to each
    image's valid (h, w).

    ``sizes`` (N,2): each image's (h, w) (all equal to the logits' (H, W) in a version-1 file);
    ``shape``: the largest (h, w); ``variable_size``: whether the images differ in size.
    ``logits_storage``: ``native``, ``topk:K`` or ``none`` (``infer --logits``); ``has_logits``: native.
    ``has_mc``: holds ``/mc`` (``infer --mc T``; :meth:`iter_mc`), ``mc`` its ``{"T", "scope"}`` or None.
    """

    def __init__(self, path: str | os.PathLike, *, require_labels: bool = False, require_embeddings: Sequence[str] = ()):
        self.path = Path(path)
        required = ["ids"] + (["labels"] if require_labels else [])
        required += [f"embeddings/{e}" for e in require_embeddings]
        self.fh = _open_checked(self.path, POOL_FORMAT, required)
        try:
            storage = self.fh.attrs.get("logits_storage", "native")
            self.logits_storage = storage.decode() if isinstance(storage, bytes) else str(storage)
            self.storage, self.topk = parse_logits_storage(self.logits_storage)
            stored = {"native": ["logits"], "topk": ["topk_probs", "topk_classes"], "none": []}[self.storage]
            missing = [name for name in stored if name not in self.fh]
            if missing:
                raise InputError(f"{path}: missing dataset(s) {', '.join('/' + m for m in missing)}")
            self.has_logits = self.storage == "native"
            self._load()
        except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
            self.fh.close()
            raise InputError(f"{self.path}: damaged pool file ({type(exc).__name__}: {exc})") from None
        except BaseException:
            self.fh.close()
            raise

    def _load(self) -> None:
        a, path = self.fh.attrs, self.path
        self.format_version = int(a["format_version"])
        self.ids = _decode_ids(self.fh["ids"][:])
        _check_ids(path, self.ids)
        self.index = _IdIndex(path, self.ids)
        n = len(self.ids)
        # the (N, K, H, W) the model output has, from whichever image-shaped dataset the file keeps
        if self.storage == "native":
            shape4, name = tuple(self.fh["logits"].shape), "logits"
        elif self.storage == "topk":
            probs, classes = self.fh["topk_probs"], self.fh["topk_classes"]
            if probs.ndim != 4 or classes.shape != probs.shape or probs.shape[1] != self.topk:
                raise InputError(f"{path}: /topk_probs {probs.shape} and /topk_classes {classes.shape} must both be "
                                 f"(images, {self.topk}, H, W) ({self.logits_storage})")
            shape4, name = (probs.shape[0], int(a["n_classes"]), *probs.shape[2:]), "topk_probs"
        elif "labels" in self.fh and self.fh["labels"].ndim == 3:
            shape4, name = (self.fh["labels"].shape[0], int(a["n_classes"]), *self.fh["labels"].shape[1:]), "labels"
        else:  # no image-shaped dataset: the largest size is the shape
            sizes = self.fh["sizes"][:].reshape(-1, 2) if "sizes" in self.fh else np.ones((1, 2), dtype=np.int64)
            shape4, name = (n, int(a["n_classes"]), *(int(x) for x in sizes.max(axis=0, initial=1))), "sizes"
        logits = _Shape(shape4)
        if logits.ndim != 4:
            raise InputError(f"{path}: /{name} has shape {logits.shape}; a pool file holds (images, classes, H, W)")
        k = int(logits.shape[1])
        try:
            self.class_names = json.loads(a["class_names"])
        except (KeyError, json.JSONDecodeError, TypeError):
            raise InputError(f"{path}: the class_names attribute is not a JSON list of names") from None
        if not isinstance(self.class_names, list) or not all(isinstance(c, str) for c in self.class_names):
            raise InputError(f"{path}: the class_names attribute is not a JSON list of names")
        self.n_classes = int(a["n_classes"])
        if self.n_classes != k or len(self.class_names) != k:
            raise InputError(f"{path}: /logits has {k} classes but the file says n_classes = {self.n_classes} "
                             f"with {len(self.class_names)} class names")
        self.ignore_index = int(a["ignore_index"])
        full = tuple(int(s) for s in logits.shape[2:])
        if logits.shape[0] != n:
            raise InputError(f"{path}: /logits has {logits.shape[0]} rows but /ids has {n}")
        if "labels" in self.fh and tuple(self.fh["labels"].shape) != (n, *full):
            raise InputError(f"{path}: /labels has shape {self.fh['labels'].shape}, expected {(n, *full)} like /logits")
        for name, ds in (self.fh["embeddings"].items() if "embeddings" in self.fh else ()):
            if ds.ndim != 2 or ds.shape[0] != n:
                raise InputError(f"{path}: /embeddings/{name} has shape {ds.shape}, expected ({n}, D): one row per id")
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
        self.has_mc = "mc" in self.fh
        self.mc = None
        if self.has_mc:
            ds = self.fh["mc"]
            if tuple(ds.shape) != (n, len(MC_STATS), *full):
                raise InputError(f"{path}: /mc has shape {ds.shape}, expected {(n, len(MC_STATS), *full)} like /logits")
            stats = json.loads(_attr_text(ds.attrs, "stats", "[]"))
            if stats != list(MC_STATS):
                raise InputError(f"{path}: /mc holds the statistics {stats}, this alseg reads {list(MC_STATS)}")
            self.mc = {"T": int(ds.attrs["T"]), "scope": str(_attr_text(ds.attrs, "scope"))}
        self.embedding_names = sorted(self.fh["embeddings"].keys()) if "embeddings" in self.fh else []
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in a.items()}

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        return self.index.rows(ids)

    @property
    def logits_nbytes(self) -> int:
        """Bytes the stored /logits take on disk (compressed); 0 without full logits."""
        return int(self.fh["logits"].id.get_storage_size()) if self.has_logits else 0

    def size(self, image_id: str) -> tuple[int, int]:
        """The valid (h, w) of one image."""
        h, w = self.sizes[self.index.rows([image_id])[0]]
        return int(h), int(w)

    def iter_batches(
        self, batch_size: int = 16, *, ids: Sequence[str] | None = None, with_labels: bool = False,
        native: bool = False, reuse: bool = False,
    ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray | None]]:
        """Yield ``(ids, logits float32 (b,K,h,w), labels int64 (b,h,w) or None)`` in file order (or ``ids``
        order), cropped to the images' valid size. ``native``: the logits in their stored dtype (float16
        by default), for a caller that converts them itself; with ``reuse`` too, each batch's logits may be
        a view of one buffer that the next batch overwrites (for a caller done with a batch before it asks
        for the next: no fresh memory per batch).

        Each batch of ``batch_size`` rows is split into runs of consecutive rows of one size; each run is
        one yield, so a yield may hold fewer than ``batch_size`` rows, and the ids of all yields, joined,
        are exactly the requested order. A pool of one image size yields whole batches.
        """
        if not self.has_logits:
            # nothing is reconstructed from top-k probabilities: scores would change without a word
            raise InputError(
                f"{self.path}: stores no full logits (written with `alseg infer --logits {self.logits_storage}`); "
                "use the scores file that run wrote (--scores-out), or rerun `alseg infer --logits native`"
            )
        yield from self._iter_images(batch_size, ("logits",), ids=ids, with_labels=with_labels, raw=native,
                                     single=True, reuse=reuse and native)

    def iter_topk(
        self, batch_size: int = 16, *, ids: Sequence[str] | None = None, with_labels: bool = False
    ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]]:
        """Yield ``(ids, probs float32 (b,K',h,w), classes int64 (b,K',h,w), labels or None)`` of a
        ``topk:K'`` file, batched and cropped as :meth:`iter_batches` does; probabilities decrease along
        axis 1 and ``classes`` are their class indices."""
        if self.storage != "topk":
            raise InputError(f"{self.path}: holds no top-k probabilities (logits_storage {self.logits_storage}); "
                             "write them with `alseg infer --logits topk:K`")
        for batch_ids, (probs, classes), labels in self._iter_images(
            batch_size, ("topk_probs", "topk_classes"), ids=ids, with_labels=with_labels, raw=True
        ):
            yield batch_ids, to_float32(probs), classes.astype(np.int64), labels

    def iter_mc(
        self, batch_size: int = 16, *, ids: Sequence[str] | None = None
    ) -> Iterator[tuple[list[str], np.ndarray]]:
        """Yield ``(ids, maps float32 (b,3,h,w))``: the per-pixel MC-dropout statistics of
        :data:`MC_STATS` (H(p̄), mutual information H(p̄) − E, max_k V_k / T), batched and cropped as
        :meth:`iter_batches` does. One line naming the file when it holds none."""
        if not self.has_mc:
            raise InputError(f"{self.path}: holds no MC-dropout statistics (/mc); run `alseg infer --mc T` "
                             "(e.g. --mc 10) to write them")
        # checked here, not at the first next(): callers learn of a pool without /mc before any progress
        return ((batch_ids, maps) for batch_ids, maps, _ in self._iter_images(batch_size, ("mc",), ids=ids,
                                                                              with_labels=False))

    def _iter_images(self, batch_size, names, *, ids, with_labels, raw=False, single=False, reuse=False):
        """Batches of the datasets ``names``: a list of stored-dtype arrays (``raw``), the first as stored
        (``raw`` and ``single``) or the first as float32."""
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        if with_labels and not self.has_labels:
            raise InputError(f"{self.path}: has no /labels; rerun `alseg infer --with-labels` on a labeled set")
        rows = np.arange(len(self.ids)) if ids is None else self.rows(ids)
        datasets, labels_ds = [self.fh[n] for n in names], (self.fh["labels"] if with_labels else None)
        ahead = _ReadAhead(self.path, datasets + ([labels_ds] if labels_ds is not None else []))
        buffers: dict[str, np.ndarray] | None = {} if reuse else None
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            # the kernel fetches the next batches' chunks while this one is read and scored (h5py holds the
            # GIL while it waits on the disk; the kernel's read-ahead does not)
            ahead.hint(rows[start + batch_size : start + (1 + READ_AHEAD_BATCHES) * batch_size])
            for run in _runs(self.sizes[batch]):
                sel = batch[run]
                h, w = (int(s) for s in self.sizes[sel[0]])
                # h5py reads increasing rows: read each distinct row once, then put them in order
                uniq, inv = np.unique(sel, return_inverse=True)
                idx = slice(int(uniq[0]), int(uniq[-1]) + 1) if uniq[-1] - uniq[0] == len(uniq) - 1 else uniq
                # rows already in file order need no reordering copy (a batch's ~20 MB, the common case)
                order = slice(None) if len(uniq) == len(sel) and (np.diff(sel) > 0).all() else inv
                try:
                    arrays = [_read_cropped(ds, idx, h, w, buffers)[order] for ds in datasets]
                    labels = labels_ds[idx, :h, :w][order].astype(np.int64) if labels_ds is not None else None
                except OSError as exc:  # a damaged chunk
                    raise InputError(f"{self.path}: cannot read the rows of id {self.ids[sel[0]]!r} "
                                     f"({exc}); the file is damaged") from None
                data = (arrays[0] if single else arrays) if raw else to_float32(arrays[0])
                yield [self.ids[r] for r in sel], data, labels

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
    with atomic_path(path) as tmp, _h5_create(tmp) as fh:
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
        try:
            self.ids = _decode_ids(self.fh["ids"][:])
            _check_ids(self.path, self.ids)
            self.index = _IdIndex(self.path, self.ids)
            self.score_names = sorted(self.fh["scores"].keys())
            self.embedding_names = sorted(self.fh["embeddings"].keys()) if "embeddings" in self.fh else []
            self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in self.fh.attrs.items()}
            n = len(self.ids)
            for group in ("scores", "embeddings"):
                for name, ds in (self.fh[group].items() if group in self.fh else ()):
                    if ds.shape[:1] != (n,):
                        raise InputError(f"{self.path}: /{group}/{name} has shape {ds.shape}, expected {n} rows "
                                         "(one per id)")
        except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
            self.fh.close()
            raise InputError(f"{self.path}: damaged scores file ({type(exc).__name__}: {exc})") from None
        except BaseException:
            self.fh.close()
            raise

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


# ---------------------------------------------------------------------------------------------- shards


_SHARD_ATTR = re.compile(r"(\d+)/(\d+)")


def _attr_text(attrs, key: str, default: Any = None) -> Any:
    value = attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else value


def _ordered_shards(paths: Sequence[Path], files: Sequence[h5py.File]) -> list[int]:
    """Positions of ``paths`` in shard order; refuses non-shards, mixed counts, duplicates and gaps."""
    where: dict[int, int] = {}
    count = None
    for pos, (path, fh) in enumerate(zip(paths, files)):
        m = _SHARD_ATTR.fullmatch(str(_attr_text(fh.attrs, "shard", "")))
        if m is None:
            raise InputError(f"{path}: not a shard (no shard attribute); merge takes the files that "
                             "`alseg infer --shard i/n` or torchrun write")
        index, n = int(m.group(1)), int(m.group(2))
        if count is None:
            count = n
        elif n != count:
            raise InputError(f"{path}: shard {index} of {n}, but {paths[0]} is one of {count}; merge the shards "
                             "of one run")
        if index in where:
            raise InputError(f"{path}: shard {index} of {n} is also {paths[where[index]]}; pass each shard once")
        where[index] = pos
    missing = [i for i in range(count or 0) if i not in where]
    if missing:
        raise InputError(f"shard {missing[0]} of {count} is missing (given: {', '.join(str(p) for p in paths)}); "
                         f"pass all {count} shards")
    return [where[i] for i in range(count or 0)]


def _refuse_difference(first: Path, path: Path, key: str, a: Any, b: Any) -> None:
    if a != b:
        raise InputError(f"{path}: {key} differs from {first}'s ({_short(a)} there, {_short(b)} here); "
                         "merge only the shards of one infer run")


def pool_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """The ``fingerprint`` attribute of a pool file (``infer`` writes it into shards), {} when absent."""
    with _open_checked(path, POOL_FORMAT, ["ids"]) as fh:
        text = _attr_text(fh.attrs, "fingerprint")
    try:
        return json.loads(text) if text else {}
    except ValueError:
        raise InputError(f"{path}: its fingerprint attribute is not JSON; the file is damaged") from None


def _fingerprint_of(fh: h5py.File) -> dict[str, Any]:
    text = _attr_text(fh.attrs, "fingerprint")
    doc = json.loads(text) if text else {}
    doc.pop("shard", None)
    return doc


def _copy_images(src: h5py.Dataset, dst: h5py.Dataset, row0: int, sizes: np.ndarray) -> None:
    """Rows of ``src`` into ``dst`` from row ``row0``, the same values a one-process writer leaves.

    Chunks wholly inside ``src`` go over as they are stored (no decompression: the copy runs at disk
    speed) when both datasets share chunk shape, dtype and filter; edge chunks and other layouts are read
    and written, valid region only, the padding staying the fill value."""
    n = src.shape[0]
    same = (src.chunks == dst.chunks and src.dtype == dst.dtype and src.compression == dst.compression
            and src.fillvalue == dst.fillvalue and src.shuffle == dst.shuffle)
    if not same:
        for r in range(n):
            h, w = (int(x) for x in sizes[r])
            dst[row0 + r, ..., :h, :w] = src[r, ..., :h, :w]
        return
    offsets: list[tuple[int, ...]] = []
    if hasattr(src.id, "chunk_iter"):
        src.id.chunk_iter(lambda info: offsets.append(tuple(info.chunk_offset)))
    else:  # older HDF5: one lookup per chunk
        offsets = [tuple(src.id.get_chunk_info(i).chunk_offset) for i in range(src.id.get_num_chunks())]
    spatial, tile = src.shape[1:], src.chunks[1:]
    for off in offsets:
        if all(o + c <= s for o, c, s in zip(off[1:], tile, spatial)):
            mask, data = src.id.read_direct_chunk(off)
            dst.id.write_direct_chunk((off[0] + row0, *off[1:]), data, mask)
        else:  # an edge chunk: beyond the source's extent its bytes are undefined, so copy values
            sl = tuple(slice(o, min(o + c, s)) for o, c, s in zip(off[1:], tile, spatial))
            dst[(off[0] + row0, *sl)] = src[(off[0], *sl)]


def merge_pools(
    shard_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike, *, overwrite: bool = False,
    progress=lambda advance=1, total=None: None,
) -> dict[str, Any]:
    """Copy the shards of one ``infer`` run into one pool file at ``out_path`` (atomic), rows in shard
    order, which is the id list's order. Returns ``{"n_images", "shards", "shape"}``.

    Refuses, with one line, files that are not pool shards, shards of different runs (class names,
    checkpoint, config, options, fingerprint), a missing or repeated shard, or an id in two shards.
    The result has exactly the datasets a one-process ``infer`` writes (same values, same layout)."""
    paths = [Path(p) for p in shard_paths]
    if not paths:
        raise InputError("merge needs at least one shard")
    out_path = check_writable(out_path, overwrite=overwrite)
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(_open_checked(p, POOL_FORMAT, ["ids", "sizes"])) for p in paths]
        order = _ordered_shards(paths, files)
        paths, files = [paths[i] for i in order], [files[i] for i in order]
        first, f0 = paths[0], files[0]
        readers = [stack.enter_context(PoolReader(p)) for p in paths]  # full validation of each shard
        emb0 = {name: (ds.shape[1], _plain(dict(ds.attrs))) for name, ds in f0.get("embeddings", {}).items()}
        for path, fh, reader in zip(paths[1:], files[1:], readers[1:]):
            for key in _SHARD_SAME:
                a, b = _plain(_attr_text(f0.attrs, key)), _plain(_attr_text(fh.attrs, key))
                _refuse_difference(first, path, key, a, b)
            _refuse_difference(first, path, "fingerprint", _fingerprint_of(f0), _fingerprint_of(fh))
            _refuse_difference(first, path, "labels", readers[0].has_labels, reader.has_labels)
            _refuse_difference(first, path, "MC statistics (infer --mc)", readers[0].mc, reader.mc)
            emb = {name: (ds.shape[1], _plain(dict(ds.attrs))) for name, ds in fh.get("embeddings", {}).items()}
            _refuse_difference(first, path, "embeddings", emb0, emb)
        ids = [i for r in readers for i in r.ids]
        seen: dict[str, Path] = {}
        for path, reader in zip(paths, readers):
            for i in reader.ids:
                if i in seen:
                    raise InputError(f"{path}: id {i!r} is also in {seen[i]}; shards of one run are disjoint")
                seen[i] = path
        sizes = np.concatenate([r.sizes for r in readers]) if ids else np.zeros((0, 2), dtype=np.int64)
        n = len(ids)
        r0 = readers[0]
        image_names = [name for name in ("logits", "topk_probs", "topk_classes", "labels", "mc") if name in f0]
        tile = tuple(f0[image_names[0]].chunks[-2:]) if image_names else (1, 1)
        h, w = (int(x) for x in sizes.max(axis=0)) if n else (1, 1)
        attrs = {k: _attr_text(f0.attrs, k) for k in f0.attrs
                 if k not in ("format", "format_version", "class_names", "n_classes", "ignore_index",
                              "alseg_version", "created", "shard", "fingerprint")}
        fingerprint = _fingerprint_of(f0)
        if fingerprint:
            attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
        attrs["merged_shards"] = json.dumps([p.name for p in paths])
        progress(0, n)
        with atomic_path(out_path) as tmp, _h5_create(tmp, rdcc_nbytes=RDCC_NBYTES) as out:
            _write_pool_attrs(out, r0.class_names, r0.ignore_index, attrs,
                              version=POOL_VERSION_MC if r0.has_mc else POOL_VERSION)
            ds = _create_pool_datasets(
                out, n=n, shape=(h, w), tile=tile, n_classes=r0.n_classes, storage=r0.storage, topk=r0.topk,
                label_dtype=f0["labels"].dtype if "labels" in f0 else None, ignore_index=r0.ignore_index,
                embedding_dims={k: d for k, (d, _) in emb0.items()},
                embedding_attrs={k: dict(f0["embeddings"][k].attrs) for k in emb0}, mc=r0.mc,
            )
            if n:
                ds["ids"][:] = np.asarray(ids, dtype=object)
                ds["sizes"][:] = sizes.astype(np.int32)
            row = 0
            for fh, reader in zip(files, readers):
                b = len(reader.ids)
                for name in image_names:
                    _copy_images(fh[name], ds[name], row, reader.sizes)
                for name, e in ds["embeddings"].items():
                    src = fh["embeddings"][name]
                    for s in range(0, b, 65536):  # bounded memory for millions of rows
                        e[row + s : row + min(b, s + 65536)] = src[s : min(b, s + 65536)]
                row += b
                progress(b, None)
    return {"n_images": n, "shards": [str(p) for p in paths], "shape": [h, w]}


def merge_scores(
    shard_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike, *, overwrite: bool = False,
    attrs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Concatenate the scores files of one sharded ``infer --scores`` run (shard order) into ``out_path``.

    Score and embedding names, their params and shapes must agree. ``attrs`` (e.g. the merged pool's
    ``pool_path`` and ``pool_sha256``) replace the shards' pool attributes, which name their shard."""
    paths = [Path(p) for p in shard_paths]
    if not paths:
        raise InputError("merge needs at least one shard")
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(ScoresReader(p)) for p in paths]
        order = _ordered_shards(paths, [r.fh for r in readers])
        paths, readers = [paths[i] for i in order], [readers[i] for i in order]
        def layout(r: ScoresReader) -> dict[str, Any]:
            return {f"{g}/{name}": [list(r.fh[g][name].shape[1:]), str(r.fh[g][name].dtype), r.params(name)]
                    for g, names in (("scores", r.score_names), ("embeddings", r.embedding_names)) for name in names}
        base = layout(readers[0])
        for path, r in zip(paths[1:], readers[1:]):
            _refuse_difference(paths[0], path, "datasets", sorted(base), sorted(layout(r)))
            for key, value in layout(r).items():
                _refuse_difference(paths[0], path, key, base[key], value)
        ids = [i for r in readers for i in r.ids]
        _check_ids(Path(out_path), ids)
        r0 = readers[0]
        scores = {name: np.concatenate([r.score(name) for r in readers]) for name in r0.score_names}
        embeddings = {name: np.concatenate([r.embedding(name) for r in readers]) for name in r0.embedding_names}
        params = {name: r0.params(name) for name in [*r0.score_names, *r0.embedding_names]}
        merged_attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in r0.attrs.items()
                        if k not in ("format", "format_version", "alseg_version", "created", "shard", "pool_path",
                                     "pool_sha256")}
        merged_attrs.update(attrs or {})
        merged_attrs["merged_shards"] = [p.name for p in paths]
    write_scores(out_path, ids, scores=scores, embeddings=embeddings, params=params, attrs=merged_attrs,
                 overwrite=overwrite)
    return {"n_images": len(ids), "shards": [str(p) for p in paths]}
