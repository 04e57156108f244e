"""Pure scorers: logits in, per-pixel / per-image scores or embeddings out.

Everything here follows ``docs/algorithms.md`` sections 2-4, 7 and 8. Functions are pure: no I/O, no
printing, no globals, no in-place edits of their inputs. Arrays are numpy in and out, computed with NumPy
alone (the per-pixel kernels image by image in cache-resident tiles); the one exception is
:func:`badge_last_layer_embedding`, which runs inside model inference and takes and returns torch tensors.

Score direction: higher = more informative = picked first, for every scorer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from typing import TYPE_CHECKING

import numpy as np

from alseg.errors import InputError, NonFiniteError, UnknownName
from alseg.halfs import half_bits_to_float32, to_float32

if TYPE_CHECKING:  # torch is imported where it is used: scoring with NumPy alone need not load it (seconds)
    import torch

__all__ = [
    "AGGREGATIONS",
    "PIXEL_SCORERS",
    "aggregate",
    "badge_last_layer_embedding",
    "badge_logit_embedding",
    "badge_logit_dim",
    "badge_logit_embedding_adaptive",
    "badge_logit_params",
    "badge_logit_rows",
    "badge_window",
    "check_finite",
    "clasp_scores",
    "class_counts",
    "contextual_diversity",
    "get_pixel_scorer",
    "image_scores",
    "pixel_entropy",
    "pixel_entropy_from_logits",
    "pixel_least_confidence",
    "pixel_margin",
    "predicted_classes",
    "softmax",
]

# How many offending ids a NonFiniteError message lists before "...".
_MAX_IDS_IN_MESSAGE = 5


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax along ``axis``, computed in float32.

    ``logits``: float16 or float32 (any float is accepted and cast), e.g. ``(N, K, H, W)``.
    Returns float32 probabilities of the same shape. This is the one softmax helper of alseg.
    """
    x = np.asarray(logits)
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"logits must be a float array, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=True) if x.dtype != np.float16 else to_float32(x)
    x -= x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


def check_finite(array: np.ndarray, ids: Sequence[str] | None = None, what: str = "logits") -> None:
    """Raise :class:`NonFiniteError` if ``array`` holds NaN or inf.

    ``ids`` (optional) is aligned with axis 0 of ``array``; the message names the first offending ids,
    or the first offending row positions when no ids are given.
    """
    a = np.asarray(array)
    if a.ndim == 0:
        if not np.isfinite(a):
            raise NonFiniteError(f"{what} hold NaN or inf")
        return
    if a.size == 0:
        return
    rows = a.reshape(a.shape[0], -1)
    # Blocks of rows keep the boolean temporary small for pools of millions of embeddings.
    block = max(1, (1 << 24) // max(1, rows.shape[1]))
    bad = [np.flatnonzero(~np.isfinite(rows[i : i + block]).all(axis=1)) + i for i in range(0, rows.shape[0], block)]
    bad_rows = np.concatenate(bad)
    if bad_rows.size == 0:
        return
    if ids is not None:
        ids_arr = np.asarray(ids)
        names = [str(ids_arr[i]) for i in bad_rows[:_MAX_IDS_IN_MESSAGE]]
        where = "id(s) " + ", ".join(names)
    else:
        where = "row(s) " + ", ".join(str(int(i)) for i in bad_rows[:_MAX_IDS_IN_MESSAGE])
    more = f" and {len(bad_rows) - _MAX_IDS_IN_MESSAGE} more" if len(bad_rows) > _MAX_IDS_IN_MESSAGE else ""
    raise NonFiniteError(
        f"{what} hold NaN or inf for {where}{more}; check the model output for these images "
        f"(e.g. re-run inference in float32)"
    )


def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim != 4:
        raise InputError(f"probabilities must have shape (N, K, H, W), got shape {p.shape}")
    return p


# Tiles of the NumPy kernels below, which run image by image in reused scratch buffers (the style of
# pixel_entropy_from_logits). Kernels on a (K, P) block of all classes at once (entropy, clasp's s_c,
# contextual diversity, pixel_entropy_from_logits) take _TILE_VALUES // K pixels a tile: float32 scratch of 512 KiB, in cache.
# Kernels that loop over the K classes on (P,) rows (margin, argmax) take _ROW_TILE_PIXELS pixels a tile:
# longer NumPy calls, fewer of them (margin measured 0.27 ms/img at 2^15 pixels, 0.46 at 2^12).
_TILE_VALUES = 1 << 17  # the entropy kernel: fastest of 2^16..2^20 measured
_ROW_TILE_PIXELS = 1 << 15
# log(max(p, this)) is log p for every p > 0 (subnormals included) and finite at p = 0, so p log p = 0 there.
_SMALLEST_SUBNORMAL = np.float32(np.finfo(np.float32).smallest_subnormal)


def _prob_pixels(probs: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """Checked ``probs`` (N, K, H, W) as float32 (N, K, H*W) (a view where the layout allows) and (H, W)."""
    p = to_float32(_check_probs(probs))
    return p.reshape(p.shape[0], p.shape[1], -1), p.shape[2:]


def _tile_pixels(n_classes: int, n_pixels: int) -> int:
    """Pixels a tile of the (K, P) kernels: _TILE_VALUES // K, at least 1, at most the image."""
    return max(1, min(n_pixels, _TILE_VALUES // max(1, n_classes)))


def _row_tile_pixels(n_pixels: int) -> int:
    """Pixels a tile of the class-loop kernels."""
    return max(1, min(n_pixels, _ROW_TILE_PIXELS))


def _tiles(n_pixels: int, tile: int):
    """``(start, stop)`` of the tiles that cover ``n_pixels``."""
    return ((s, min(n_pixels, s + tile)) for s in range(0, n_pixels, tile))


class _EntropyScratch:
    """Reused buffers of :func:`_entropy_tile`, for tiles of up to ``tile`` pixels of ``k`` >= 2 classes."""

    def __init__(self, k: int, tile: int) -> None:
        self.log = np.empty((k, tile), dtype=np.float32)
        self.pos = np.empty((k, tile), dtype=np.float32)
        # array operands: NumPy's fmax against a scalar is ~4x slower than against an array
        self.tiny = np.full(tile, _SMALLEST_SUBNORMAL, dtype=np.float32)
        self.zero = np.zeros(tile, dtype=np.float32)
        self.neg_log_k = np.float32(-math.log(k))


def _entropy_tile(p: np.ndarray, out: np.ndarray, s: _EntropyScratch, nonnegative: bool = False) -> None:
    """``out[...]`` = :func:`pixel_entropy` of the (K, w) float32 tile ``p`` (K >= 2), bit for bit.

    -sum_k q log q / log K with q = p where p > 0 and 0 elsewhere (NaN included, as the ``p > 0`` mask of
    the whole-array version): fmax(p, 0) is q, log(fmax(p, smallest subnormal)) its log (finite where
    q = 0, so q log q = 0 there), and the class sum adds row after row as ``sum(axis=1)`` does.
    ``nonnegative``: the caller knows p >= 0 and finite (a softmax), so q = p.
    """
    w = p.shape[1]
    lg = s.log[:, :w]
    np.fmax(p, s.tiny[:w], out=lg)
    np.log(lg, out=lg)
    if nonnegative:
        np.multiply(lg, p, out=lg)
    else:
        q = s.pos[:, :w]
        np.fmax(p, s.zero[:w], out=q)
        np.multiply(lg, q, out=lg)
    np.add.reduce(lg, axis=0, out=out)
    np.divide(out, s.neg_log_k, out=out)
    np.clip(out, 0.0, 1.0, out=out)


class _ArgmaxScratch:
    """Reused buffers of :func:`_first_argmax_tile`, for tiles of up to ``tile`` pixels of ``k`` classes
    held as ``dtype``."""

    def __init__(self, k: int, tile: int, dtype: np.dtype) -> None:
        self.top = np.empty(tile, dtype=dtype)
        self.hit = np.empty(tile, dtype=bool)
        rank_dtype = _class_dtype(k + 1)  # ranks 1..K
        self.rank = np.empty(tile, dtype=rank_dtype)
        self.cand = np.empty(tile, dtype=rank_dtype)


def _first_argmax_tile(p: np.ndarray, out: np.ndarray, s: _ArgmaxScratch) -> None:
    """``out[...] = p.argmax(axis=0)`` of the (K, w) tile ``p``: the first maximum on ties, and the first
    NaN where a pixel holds one, as NumPy's.

    Class c that equals the pixel's maximum bids the rank K - c; the highest bid is the lowest such c.
    Equal, multiply and maximum on (w,) rows of bytes: ~13x faster than NumPy's argmax along a non-last
    axis (and than masked assignments, which do not vectorise).
    """
    k, w = p.shape
    top, hit, rank, cand = s.top[:w], s.hit[:w], s.rank[:w], s.cand[:w]
    bid = rank.dtype.type
    np.max(p, axis=0, out=top)
    np.equal(p[0], top, out=hit)
    np.multiply(hit.view(np.uint8), bid(k), out=rank)
    for c in range(1, k):
        np.equal(p[c], top, out=hit)
        np.multiply(hit.view(np.uint8), bid(k - c), out=cand)
        np.maximum(rank, cand, out=rank)
    np.subtract(bid(k), rank, out=out)
    if top.dtype.kind in "fc" and np.isnan(top).any():  # NaN equals nothing: NumPy's own argmax here
        out[...] = np.argmax(p, axis=0)


def _class_dtype(n_classes: int) -> type:
    """The smallest unsigned integer dtype that holds the class indices 0..K-1."""
    return np.uint8 if n_classes <= 1 << 8 else np.uint16 if n_classes <= 1 << 16 else np.intp


# ---------------------------------------------------------------------------------------------
# Pixel scorers: probs (N, K, H, W) -> (N, H, W) float32, higher = more informative.


def pixel_entropy(probs: np.ndarray) -> np.ndarray:
    """Normalised entropy h(u) = -sum_k p_k log p_k / log K, with 0 log 0 = 0; in [0, 1].

    Lewis & Catlett 1994 (spec section 2). ``probs`` (N, K, H, W) -> (N, H, W) float32.
    With K = 1 every pixel is certain and the score is 0. Computed image by image in cache-resident tiles
    (:func:`_entropy_tile`); a probability that is not > 0 (0, negative, NaN) adds nothing.
    """
    p, spatial = _prob_pixels(probs)
    n, k, n_px = p.shape
    if k <= 1:
        return np.zeros((n,) + spatial, dtype=np.float32)
    out = np.empty((n, n_px), dtype=np.float32)
    tile = _tile_pixels(k, n_px)
    scratch = _EntropyScratch(k, tile)
    for i in range(n):
        for s, e in _tiles(n_px, tile):
            _entropy_tile(p[i, :, s:e], out[i, s:e], scratch)
    return out.reshape((n,) + spatial)


_LOG2E = 1.0 / math.log(2.0)


def pixel_entropy_from_logits(logits: np.ndarray) -> np.ndarray:
    """:func:`pixel_entropy` of ``softmax(logits)`` without forming the probabilities; ``score``'s
    entropy path.

    In base 2 with y = (z - max_k z) log2(e) and Z = sum_k 2^y: H / log K = (log2 Z - sum_k 2^y y / Z)
    / log2 K, and 0 log 0 = 0 holds by itself. Computed tile by tile (a few thousand pixels, all
    classes) in reused float32 buffers that stay in cache, float16 converted by
    :func:`alseg.halfs.half_bits_to_float32`: about 3x faster than whole-array NumPy. Non-finite logits give NaN for their pixels (the caller
    reports them). Agrees with ``pixel_entropy(softmax(logits))`` to float32 rounding.
    """
    x = np.asarray(logits)
    if x.ndim != 4:
        raise InputError(f"logits must have shape (N, K, H, W), got shape {x.shape}")
    n, k = x.shape[:2]
    if k <= 1:
        return np.zeros((n,) + x.shape[2:], dtype=np.float32)
    if x.dtype not in (np.float16, np.float32):
        x = x.astype(np.float32)
    half = x.dtype == np.float16
    flat = np.ascontiguousarray(x).reshape(n, k, -1)
    n_px = flat.shape[2]
    out = np.empty((n, n_px), dtype=np.float32)
    if n == 0 or n_px == 0:
        return out.reshape((n,) + x.shape[2:])
    tile = _tile_pixels(k, n_px)
    y_all = np.empty((k, tile), dtype=np.float32)
    e_all = np.empty((k, tile), dtype=np.float32)
    exp_all = np.empty((k, tile), dtype=np.uint16) if half else None
    m_all, z_all, q_all = (np.empty(tile, dtype=np.float32) for _ in range(3))
    inv_log2k = np.float32(1.0 / math.log2(k))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for i in range(n):
            for s in range(0, n_px, tile):
                w = min(tile, n_px - s)
                src = flat[i, :, s : s + w]
                y, e, m, z, q = y_all[:, :w], e_all[:, :w], m_all[:w], z_all[:w], q_all[:w]
                if half:
                    half_bits_to_float32(src, y, _LOG2E, scratch=exp_all[:, :w])
                else:
                    np.multiply(src, np.float32(_LOG2E), out=y)
                np.max(y, axis=0, out=m)
                np.subtract(y, m, out=y)
                np.exp2(y, out=e)
                np.add.reduce(e, axis=0, out=z)
                np.multiply(e, y, out=e)
                np.add.reduce(e, axis=0, out=q)
                np.divide(q, z, out=q)
                np.log2(z, out=z)
                o = out[i, s : s + w]
                np.subtract(z, q, out=o)
                np.multiply(o, inv_log2k, out=o)
        np.clip(out, 0.0, 1.0, out=out, where=~np.isnan(out))
    return out.reshape((n,) + x.shape[2:])


def pixel_margin(probs: np.ndarray) -> np.ndarray:
    """Margin score m(u) = 1 - (p_(1) - p_(2)) of the two largest probabilities; in [0, 1].

    Roth & Small 2006 (spec section 3). ``probs`` (N, K, H, W) -> (N, H, W) float32. A running largest
    and second largest over the K class rows (a tie gives p_(2) = p_(1)), tile by tile.
    """
    p, spatial = _prob_pixels(probs)
    n, k, n_px = p.shape
    if k == 0:
        raise InputError(f"probabilities must have at least one class, got shape {(n, k) + spatial}")
    out = np.empty((n, n_px), dtype=np.float32)
    one = np.float32(1.0)
    if k == 1:  # p_(2) = 0
        np.subtract(one, p[:, 0], out=out)
        return out.reshape((n,) + spatial)
    tile = _row_tile_pixels(n_px)
    first_all, second_all, low_all = (np.empty(tile, dtype=np.float32) for _ in range(3))
    for i in range(n):
        for s, e in _tiles(n_px, tile):
            rows = p[i, :, s:e]
            first, second, low = first_all[: e - s], second_all[: e - s], low_all[: e - s]
            np.maximum(rows[0], rows[1], out=first)
            np.minimum(rows[0], rows[1], out=second)
            for c in range(2, k):
                np.minimum(first, rows[c], out=low)  # what drops out of the top one
                np.maximum(first, rows[c], out=first)
                np.maximum(second, low, out=second)
            o = out[i, s:e]
            np.subtract(first, second, out=o)
            np.subtract(one, o, out=o)
    return out.reshape((n,) + spatial)


def pixel_least_confidence(probs: np.ndarray) -> np.ndarray:
    """Least-confidence score c(u) = 1 - max_k p_k.

    Joshi et al. 2009 (spec section 4). ``probs`` (N, K, H, W) -> (N, H, W) float32.
    """
    p, spatial = _prob_pixels(probs)
    n, k, n_px = p.shape
    out = np.empty((n, n_px), dtype=np.float32)
    for i in range(n):  # the max over the class axis into the output, image by image: no temporaries
        np.max(p[i], axis=0, out=out[i])
    np.subtract(np.float32(1.0), out, out=out)
    return out.reshape((n,) + spatial)


PixelScorer = Callable[[np.ndarray], np.ndarray]

PIXEL_SCORERS: dict[str, PixelScorer] = {
    "entropy": pixel_entropy,
    "margin": pixel_margin,
    "least-confidence": pixel_least_confidence,
}


def get_pixel_scorer(name: str) -> PixelScorer:
    """Look up a pixel scorer by registry key; unknown names raise :class:`UnknownName`."""
    if name not in PIXEL_SCORERS:
        raise UnknownName(f"unknown scorer {name!r}; choose one of: {', '.join(sorted(PIXEL_SCORERS))}")
    return PIXEL_SCORERS[name]


# ---------------------------------------------------------------------------------------------
# Aggregation: (N, H, W) -> (N,)

from alseg.registry import AGGREGATIONS  # noqa: E402  (the names live in the registry)


def aggregate(pixel_scores: np.ndarray, how: str = "mean", q: float = 10.0) -> np.ndarray:
    """Reduce per-pixel scores (N, H, W) to per-image scores (N,) float64.

    ``mean`` (default, as in the reference), ``sum``, or ``top-q``: the mean of the highest ``q`` percent
    of pixel scores of each image, i.e. of the top max(1, floor(q/100 * H*W)) pixels.
    """
    s = np.asarray(pixel_scores)
    if s.ndim < 2:
        raise InputError(f"pixel scores must have shape (N, H, W), got shape {s.shape}")
    flat = s.reshape(s.shape[0], -1).astype(np.float64)
    if how == "mean":
        return flat.mean(axis=1)
    if how == "sum":
        return flat.sum(axis=1)
    if how == "top-q":
        if not (0.0 < q <= 100.0):
            raise InputError(f"--q (the top-q percentage) must be in (0, 100], got {q}")
        n_pixels = flat.shape[1]
        # The small slack keeps e.g. q=10 on 100 pixels at exactly 10 despite float rounding.
        k = max(1, int(math.floor(q / 100.0 * n_pixels + 1e-9)))
        k = min(k, n_pixels)
        top = np.partition(flat, n_pixels - k, axis=1)[:, n_pixels - k :]
        return top.mean(axis=1)
    raise UnknownName(f"--aggregation: unknown {how!r}; choose one of: {', '.join(AGGREGATIONS)}")


def image_scores(
    logits: np.ndarray,
    scorer: str,
    *,
    aggregation: str = "mean",
    q: float = 10.0,
    ids: Sequence[str] | None = None,
) -> np.ndarray:
    """Per-image scores (N,) float64 from logits (N, K, H, W): softmax, pixel scorer, aggregation.

    ``scorer`` is a key of :data:`PIXEL_SCORERS`; higher = more informative. Non-finite logits raise
    :class:`NonFiniteError` naming the ids (when given).
    """
    pixel_scorer = get_pixel_scorer(scorer)
    if aggregation not in AGGREGATIONS:
        raise UnknownName(f"--aggregation: unknown {aggregation!r}; choose one of: {', '.join(AGGREGATIONS)}")
    x = np.asarray(logits)
    if x.ndim != 4:
        raise InputError(f"logits must have shape (N, K, H, W), got shape {x.shape}")
    check_finite(x, ids, "logits")
    if scorer == "entropy":  # the same numbers as `score`'s entropy path
        return aggregate(pixel_entropy_from_logits(x), aggregation, q)
    return aggregate(pixel_scorer(softmax(x, axis=1)), aggregation, q)


# ---------------------------------------------------------------------------------------------
# Class-stratified strategies (spec sections 11.5 and 11.6).


def predicted_classes(probs: np.ndarray) -> np.ndarray:
    """yhat = ``probs.argmax(axis=1)``, (N, H, W) intp, the first maximum on ties (the first NaN where a
    pixel holds one), ~10x faster: a pass per class over cache-resident tiles instead of NumPy's argmax
    along a non-last axis. ``probs`` (N, K, H, W), any real dtype, compared as given (no cast).

    For ``class_counts(predicted_classes(probs), K)`` (random-stratified) and anywhere else an argmax
    over the classes of a batch is needed.
    """
    x = _check_probs(probs)
    n, k = x.shape[:2]
    if k == 0:
        raise InputError(f"probabilities must have at least one class, got shape {x.shape}")
    flat = x.reshape(n, k, -1)
    n_px = flat.shape[2]
    out = np.empty((n, n_px), dtype=np.intp)
    tile = _row_tile_pixels(n_px)
    scratch = _ArgmaxScratch(k, tile, x.dtype)
    for i in range(n):
        for s, e in _tiles(n_px, tile):
            _first_argmax_tile(flat[i, :, s:e], out[i, s:e], scratch)
    return out.reshape((n,) + x.shape[2:])


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """n_c(x): how many cells of each image hold class c, (N, K) int64.

    ``labels`` (N, H, W) integer maps: the predicted argmax for ``random-stratified``, the ground truth for
    its oracle. Values outside [0, K) (the ignore index) are not counted.
    """
    y = np.asarray(labels)
    if y.ndim != 3 or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"label maps must be (N, H, W) integers, got shape {y.shape}, {y.dtype}")
    n = y.shape[0]
    flat = y.reshape(n, -1)
    out = np.zeros((n, n_classes), dtype=np.int64)
    if flat.shape[1] == 0:
        return out
    for i in range(n):  # one bincount an image, the range test only where a value falls outside [0, K)
        row = flat[i]
        if not (row.min() >= 0 and row.max() < n_classes):
            row = row[(row >= 0) & (row < n_classes)]
        out[i] = np.bincount(row.astype(np.intp, copy=False), minlength=n_classes)
    return out


def clasp_scores(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ClaSP PE's scores of each image: ``(s_c, s)``.

    s_c(x) = (1/|Omega|) sum_u h(u) p_c(u), (N, K) float64: the normalised entropy weighted by the predicted
    probability of class c; s(x) = mean normalised entropy, (N,) float64. Since sum_c p_c = 1, the s_c of an
    image add up to s. h is :func:`pixel_entropy`'s, the sums are float64 (products of float32 are exact in
    float64), computed tile by tile: the entropy of a tile, then a float64 matrix-vector product with it.
    """
    p, spatial = _prob_pixels(probs)
    n, k, n_px = p.shape
    s_c = np.zeros((n, k), dtype=np.float64)
    s = np.zeros(n, dtype=np.float64)
    if n_px == 0:  # no pixels: s_c = 0, s = the mean of nothing
        s.fill(np.nan)
        return s_c, s
    tile = _tile_pixels(k, n_px)
    scratch = _EntropyScratch(k, tile) if k > 1 else None
    h_all = np.zeros(tile, dtype=np.float32)  # K = 1: h stays 0
    h64_all = np.empty(tile, dtype=np.float64)
    p64_all = np.empty(k * tile, dtype=np.float64)
    part = np.empty(k, dtype=np.float64)
    for i in range(n):
        for a, b in _tiles(n_px, tile):
            w = b - a
            src, h, h64 = p[i, :, a:b], h_all[:w], h64_all[:w]
            p64 = p64_all[: k * w].reshape(k, w)
            if scratch is not None:
                _entropy_tile(src, h, scratch)
            np.copyto(h64, h)
            np.copyto(p64, src)
            np.matmul(p64, h64, out=part)
            s_c[i] += part
            s[i] += np.add.reduce(h64)
    s_c /= float(n_px)
    s /= float(n_px)
    return s_c, s


# ---------------------------------------------------------------------------------------------
# Contextual diversity (Agarwal et al. ECCV 2020), spec section 7.


class _ClassSumScratch:
    """Reused buffers of :func:`_class_sums` for images of ``n_px`` pixels of ``k`` classes, float64
    chunks of ``tile`` pixels."""

    def __init__(self, k: int, n_px: int, tile: int) -> None:
        self.sorted32 = np.empty((k, n_px), dtype=np.float32)
        self.h32 = np.empty(n_px, dtype=np.float32)
        self.h64 = np.empty(n_px, dtype=np.float64)
        self.chunk64 = np.empty(k * tile, dtype=np.float64)
        self.tile = tile
        self.starts = np.zeros(k + 1, dtype=np.intp)
        self.part = np.empty(k, dtype=np.float64)


def _class_sums(probs: np.ndarray, h: np.ndarray, yhat: np.ndarray,
                s: _ClassSumScratch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sums over the pixels of each predicted class c of one image, in float64: ``(sum h p, sum p, sum h,
    count)``, (K, K), (K, K), (K,), (K,) int64; row c of the first two sums the (K,) vectors p(u).

    ``probs`` (K, P) float32, ``h`` (P,) float32, ``yhat`` (P,) class indices. The pixels are put in the
    order of yhat (a stable sort, one gather), so each class is a run of columns, summed in float64
    chunks: a matrix-vector product with h and a row sum. O(K P) in all; a float32 times a float32 is
    exact in float64.
    """
    k = probs.shape[0]
    counts = np.bincount(yhat, minlength=k)
    order = np.argsort(yhat, kind="stable")
    np.take(probs, order, axis=1, out=s.sorted32, mode="wrap")  # valid indices: "wrap" skips a buffer
    np.take(h, order, out=s.h32, mode="wrap")
    np.copyto(s.h64, s.h32)
    np.cumsum(counts, out=s.starts[1:])
    weighted = np.zeros((k, k), dtype=np.float64)
    plain = np.zeros((k, k), dtype=np.float64)
    h_sum = np.zeros(k, dtype=np.float64)
    for c in np.flatnonzero(counts):
        for a in range(int(s.starts[c]), int(s.starts[c + 1]), s.tile):
            b = min(int(s.starts[c + 1]), a + s.tile)
            run = s.chunk64[: k * (b - a)].reshape(k, b - a)
            np.copyto(run, s.sorted32[:, a:b])
            np.matmul(run, s.h64[a:b], out=s.part)
            weighted[c] += s.part
            np.add.reduce(run, axis=1, out=s.part)
            plain[c] += s.part
            h_sum[c] += np.add.reduce(s.h64[a:b])
    return weighted, plain, h_sum, counts


def contextual_diversity(logits: np.ndarray, ids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-image class-conditional mean softmax, weighted by entropy.

    ``logits`` (N, K, H, W). Returns ``(P, present)``: ``P`` (N, K, K) float32 whose row c is
    P_c = sum_{u: yhat(u)=c} h(u) p(u) / sum_{u: yhat(u)=c} h(u) (the plain mean of p over those pixels
    when the entropy sum is 0), and ``present`` (N, K) bool, True where class c is predicted at least
    once. Rows of absent classes are all zero. yhat = argmax (first maximum on ties).

    Image by image, in NumPy: the softmax (bit for bit :func:`softmax`'s), h (:func:`pixel_entropy`'s) and
    yhat of each tile of pixels, then the float64 sums of each class's pixels (:func:`_class_sums`).
    """
    x = np.asarray(logits)
    if x.ndim != 4:
        raise InputError(f"logits must have shape (N, K, H, W), got shape {x.shape}")
    check_finite(x, ids, "logits")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"logits must be a float array, got dtype {x.dtype}")
    n, k = x.shape[:2]
    flat = x.reshape(n, k, -1)
    n_px = flat.shape[2]
    P = np.zeros((n, k, k), dtype=np.float32)
    present = np.zeros((n, k), dtype=bool)
    if n == 0 or n_px == 0:
        return P, present
    tile = _tile_pixels(k, n_px)
    half, cast = x.dtype == np.float16, x.dtype not in (np.float16, np.float32)
    conv = np.empty((k, tile), dtype=np.float32) if half or cast else None
    bits = np.empty((k, tile), dtype=np.uint16) if half else None
    top_all, z_all = np.empty(tile, dtype=np.float32), np.empty(tile, dtype=np.float32)
    argmax_scratch = _ArgmaxScratch(k, tile, np.float32)
    entropy_scratch = _EntropyScratch(k, tile) if k > 1 else None
    sum_scratch = _ClassSumScratch(k, n_px, tile)
    probs = np.empty((k, n_px), dtype=np.float32)  # one image's softmax
    h = np.zeros(n_px, dtype=np.float32)  # K = 1: stays 0
    yhat = np.empty(n_px, dtype=_class_dtype(k))
    for i in range(n):
        for a, b in _tiles(n_px, tile):
            w = b - a
            src = flat[i, :, a:b]
            if half:  # float16 -> float32 exactly, as softmax's to_float32
                half_bits_to_float32(src, conv[:, :w], scratch=bits[:, :w])
                src = conv[:, :w]
            elif cast:
                np.copyto(conv[:, :w], src)
                src = conv[:, :w]
            pt, top, z = probs[:, a:b], top_all[:w], z_all[:w]
            np.max(src, axis=0, out=top)  # softmax's steps, on a tile
            np.subtract(src, top, out=pt)
            np.exp(pt, out=pt)
            np.add.reduce(pt, axis=0, out=z)
            np.divide(pt, z, out=pt)
            if entropy_scratch is not None:
                _entropy_tile(pt, h[a:b], entropy_scratch, nonnegative=True)
            _first_argmax_tile(pt, yhat[a:b], argmax_scratch)
        weighted, plain, h_sum, counts = _class_sums(probs, h, yhat, sum_scratch)
        seen = counts > 0
        use_h = h_sum > 0
        use_plain = seen & ~use_h
        rows = np.zeros((k, k), dtype=np.float64)
        rows[use_h] = weighted[use_h] / h_sum[use_h, None]
        rows[use_plain] = plain[use_plain] / counts[use_plain, None]
        P[i] = rows
        present[i] = seen
    return P, present


# ---------------------------------------------------------------------------------------------
# BADGE (Ash et al. 2020) embeddings, spec section 8.


def badge_window(n_classes: int, height: int, width: int, target: int = 400) -> int:
    """Pooling window s for the ``logit`` BADGE embedding.

    The s in [1, min(H, W)] for which K * floor(H/s) * floor(W/s) is closest to ``target``; ties go to
    the larger s. Fixed once per pool.
    """
    if n_classes < 1 or height < 1 or width < 1:
        raise InputError(f"need n_classes, height, width >= 1, got {n_classes}, {height}, {width}")
    best_s, best_gap = 1, None
    for s in range(1, min(height, width) + 1):
        gap = abs(n_classes * (height // s) * (width // s) - target)
        if best_gap is None or gap <= best_gap:
            best_s, best_gap = s, gap
    return best_s


def _onehot_gradient(probs: np.ndarray) -> np.ndarray:
    """g = p - onehot(argmax p) along axis 1, float32."""
    g = probs.astype(np.float32, copy=True)
    yhat = predicted_classes(probs)
    np.put_along_axis(g, yhat[:, None], np.take_along_axis(g, yhat[:, None], axis=1) - 1.0, axis=1)
    return g


def _badge_gradient(x: np.ndarray, probs: np.ndarray | None) -> np.ndarray:
    """g = p - onehot(yhat) of logits ``x`` (checked finite), from ``probs`` = softmax(x) when the caller has
    it (the same values: it saves the softmax)."""
    if probs is None:
        probs = softmax(x, axis=1)
    elif probs.shape != x.shape:
        raise InputError(f"probabilities {probs.shape} and logits {x.shape} differ in shape")
    return _onehot_gradient(probs)


def badge_logit_embedding(logits: np.ndarray, window: int, ids: Sequence[str] | None = None, *,
                          probs: np.ndarray | None = None) -> np.ndarray:
    """BADGE ``logit`` embedding: g = p - onehot(yhat) average-pooled over non-overlapping s x s windows.

    ``logits`` (N, K, H, W), ``window`` = s (see :func:`badge_window`). The last H mod s rows and W mod s
    columns are dropped (as ``avg_pool2d`` does). Returns (N, K * (H//s) * (W//s)) float32, flattened in
    (K, H//s, W//s) order. ``probs``: softmax(logits), when already computed. Window sums accumulate in
    float64.
    """
    x = np.asarray(logits)
    if x.ndim != 4:
        raise InputError(f"logits must have shape (N, K, H, W), got shape {x.shape}")
    n_images, n_classes, height, width = x.shape
    s = int(window)
    if s < 1 or s > min(height, width):
        raise InputError(f"BADGE window must be in [1, {min(height, width)}] for {height}x{width} logits, got {s}")
    check_finite(x, ids, "logits")
    g = _badge_gradient(x, probs)
    hs, ws = height // s, width // s
    g = g[:, :, : hs * s, : ws * s].reshape(n_images, n_classes, hs, s, ws, s)
    pooled = g.sum(axis=(3, 5), dtype=np.float64)  # no float64 copy of g: 3x faster than astype + mean
    pooled /= s * s
    return pooled.reshape(n_images, -1).astype(np.float32)


def _adaptive_bins(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin i of ``cells`` over ``size`` pixels covers [floor(i*size/cells), ceil((i+1)*size/cells))."""
    i = np.arange(cells)
    return (i * size) // cells, -((-(i + 1) * size) // cells)


def badge_logit_embedding_adaptive(
    logits: np.ndarray, grid: Sequence[int], ids: Sequence[str] | None = None, *, probs: np.ndarray | None = None
) -> np.ndarray:
    """BADGE ``logit`` embedding of a variable-size pool: g = p - onehot(yhat) averaged over a fixed grid.

    ``logits`` (N, K, h, w) (one size per call), ``grid`` = (gh, gw). Cell (i, j) is the mean of g over
    rows [floor(i h/gh), ceil((i+1) h/gh)) and columns likewise (the bins of ``adaptive_avg_pool2d``), so
    every image, whatever its size, gives (N, K * gh * gw) float32 in (K, gh, gw) order. For h = s*gh and
    w = s*gw this is :func:`badge_logit_embedding` with window s (to float rounding).
    """
    x = np.asarray(logits)
    if x.ndim != 4:
        raise InputError(f"logits must have shape (N, K, H, W), got shape {x.shape}")
    gh, gw = (int(c) for c in grid)
    if gh < 1 or gw < 1:
        raise InputError(f"BADGE grid must be two sizes >= 1, got {tuple(grid)}")
    n_images, n_classes, height, width = x.shape
    check_finite(x, ids, "logits")
    g = _badge_gradient(x, probs).astype(np.float64)
    # Separable box sums from cumulative sums: rows first, then columns.
    r0, r1 = _adaptive_bins(height, gh)
    c0, c1 = _adaptive_bins(width, gw)
    cum = np.zeros((n_images, n_classes, height + 1, width))
    np.cumsum(g, axis=2, out=cum[:, :, 1:])
    rows = (cum[:, :, r1] - cum[:, :, r0]) / (r1 - r0)[:, None]  # (N, K, gh, w)
    cum = np.zeros((n_images, n_classes, gh, width + 1))
    np.cumsum(rows, axis=3, out=cum[..., 1:])
    pooled = (cum[..., c1] - cum[..., c0]) / (c1 - c0)  # (N, K, gh, gw)
    return pooled.reshape(n_images, -1).astype(np.float32)


def badge_logit_params(
    n_classes: int, height: int, width: int, *, variable_size: bool = False, target: int = 400
) -> dict:
    """How a pool's BADGE ``logit`` embedding is pooled, from its (largest) size (H, W).

    Window s = :func:`badge_window` (K, H, W). One image size: ``{"window": s, "target_dim": target}``
    (window pooling). Variable sizes: ``"pooling": "adaptive"`` and ``"grid": [H // s, W // s]`` are
    added and each image's valid region is pooled onto that grid, so every row has one dimension.
    """
    s = badge_window(n_classes, height, width, target)
    params: dict = {"window": s, "target_dim": target}
    if variable_size:
        params.update(pooling="adaptive", grid=[height // s, width // s])
    return params


def badge_logit_rows(logits: np.ndarray, params: dict, ids: Sequence[str] | None = None, *,
                     probs: np.ndarray | None = None) -> np.ndarray:
    """The BADGE ``logit`` embedding of ``logits`` pooled as ``params`` (:func:`badge_logit_params`) says;
    ``probs``: softmax(logits), when already computed."""
    if params.get("pooling") == "adaptive":
        return badge_logit_embedding_adaptive(logits, params["grid"], ids, probs=probs)
    return badge_logit_embedding(logits, params["window"], ids, probs=probs)


def badge_logit_dim(n_classes: int, height: int, width: int, params: dict) -> int:
    """Length of one BADGE ``logit`` row for a pool of (largest) size (H, W)."""
    if params.get("pooling") == "adaptive":
        gh, gw = params["grid"]
        return n_classes * int(gh) * int(gw)
    s = int(params["window"])
    return n_classes * (height // s) * (width // s)


def badge_last_layer_embedding(logits: "torch.Tensor", features: "torch.Tensor") -> "torch.Tensor":
    """BADGE ``last-layer`` embedding G = (1/|Omega|) sum_u g(u) h(u)^T, flattened row-major (K, D).

    ``logits`` (N, K, H, W) and ``features`` (N, D, H, W) torch tensors at the same H, W (h = the
    penultimate decode-head feature). Returns (N, K*D) float32 on the device of ``logits``. This is the
    gradient of the pseudo-labelled cross-entropy w.r.t. the final 1x1 classifier weights.
    """
    if logits.ndim != 4 or features.ndim != 4:
        raise InputError(f"need logits (N,K,H,W) and features (N,D,H,W), got {tuple(logits.shape)}, {tuple(features.shape)}")
    if logits.shape[0] != features.shape[0] or logits.shape[2:] != features.shape[2:]:
        raise InputError(
            f"logits {tuple(logits.shape)} and features {tuple(features.shape)} differ in N, H or W; "
            f"resize the logits to the feature resolution first"
        )
    import torch

    n_images, n_classes, height, width = logits.shape
    probs = torch.softmax(logits.float(), dim=1)
    yhat = probs.argmax(dim=1)
    g = probs - torch.nn.functional.one_hot(yhat, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    feats = features.to(device=probs.device, dtype=torch.float32)
    grad = torch.einsum("nkp,ndp->nkd", g.reshape(n_images, n_classes, -1), feats.reshape(n_images, feats.shape[1], -1))
    return (grad / float(height * width)).reshape(n_images, -1)
