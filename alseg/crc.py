"""CRC-AL math: conformal risk control calibration, prediction sets, risk maps and Top-Diverse-K.

Erhan & Ure, "Reducing Annotation Effort in Semantic Segmentation Through Conformal Risk Controlled
Active Learning", AI 2025, 6(10), 270; conformal risk control: Angelopoulos et al., ICLR 2024.
The exact rules are in docs/algorithms.md §9; the reference implementation's defects fixed here are in §10
(exact CRC bound instead of ``α(n+1)/n - 1/(n+1)``; one histogram pass instead of K·1001 iterations per
image; no N x N matrices in selection).

Pure numpy (torch only inside the selectors, for ``device``): no I/O, no printing. Inputs are
probabilities (softmax already applied by ``alseg.strategies.softmax``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from alseg.errors import EmptyPoolError, InputError, NonFiniteError

DEFAULT_BINS = 1000
DEFAULT_T_MIN = 0.001
DEFAULT_ALPHA = 0.05
BARYCENTER_EPS = 1.19e-7  # float32 machine epsilon, as in the reference implementation


# ---------------------------------------------------------------------------------------------- helpers


def _as_numpy(x: Any) -> np.ndarray:
    """A numpy view of a numpy array or a (possibly CUDA) torch tensor."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_probs(probs: Any, what: str = "probs") -> np.ndarray:
    probs = _as_numpy(probs)
    if probs.ndim != 4:
        raise InputError(f"{what} must have shape (n_images, n_classes, H, W), got {probs.shape}")
    if not np.isfinite(probs).all():
        bad = np.unique(np.nonzero(~np.isfinite(probs))[0])
        raise NonFiniteError(f"{what} hold NaN or inf (batch rows {bad[:5].tolist()}); check the stored logits")
    return probs


def _check_labels(labels: Any, probs: np.ndarray, n_classes: int, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (labels as int64 with ignore pixels set to 0, valid mask)."""
    labels = _as_numpy(labels)
    n, _, h, w = probs.shape
    if labels.shape != (n, h, w):
        raise InputError(f"labels must have shape {(n, h, w)} to match probs {probs.shape}, got {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        i = int(np.nonzero(bad.any(axis=(1, 2)))[0][0])
        raise InputError(
            f"labels hold values outside 0..{n_classes - 1} and != ignore_index {ignore_index} "
            f"(batch row {i}, e.g. {int(labels[bad][0])}); check n_classes and ignore_index"
        )
    return np.where(valid, labels, 0), valid


def calibration_grid(bins: int = DEFAULT_BINS) -> np.ndarray:
    """Threshold grid t_j = j / bins, j = 0..bins, float64, shape (bins+1,)."""
    return np.arange(bins + 1, dtype=np.float64) / bins


def crc_bound(n: int, alpha: float) -> float:
    """The CRC risk bound α - (1-α)/n on R̂ (B = 1); -inf for n = 0."""
    if n <= 0:
        return -np.inf
    return alpha - (1.0 - alpha) / n


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}")
    return alpha


# ------------------------------------------------------------------------------------------ calibration


def crc_threshold(risk_curve: Any, n: int, alpha: float, grid: Any) -> float:
    """Exact conformal risk control threshold (docs/algorithms.md §9.1).

    ``risk_curve`` (bins+1,) is R̂(t_j) on ``grid`` (non-decreasing, R̂(0) = 0). Returns the largest grid t
    with R̂(t) ≤ α - (1-α)/n, i.e. sup{t : n/(n+1) R̂(t) + 1/(n+1) ≤ α}. Returns 0.0 when n = 0 or the
    bound is negative (too few images; the class is then "uncalibrated").
    """
    alpha = _check_alpha(alpha)
    bound = crc_bound(int(n), alpha)
    if bound < 0:
        return 0.0
    risk_curve = np.asarray(risk_curve, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    ok = np.nonzero(risk_curve <= bound)[0]
    if ok.size == 0:  # cannot happen for a real curve (R̂(0) = 0), kept for hand-made inputs
        return 0.0
    return float(grid[ok[-1]])


@dataclass
class Calibration:
    """Per-class CRC thresholds and the risk curves they came from.

    thresholds (K,) float64: t̂_k (0.0 where uncalibrated). n_images (K,) int: n_k, the calibration
    images containing class k. uncalibrated (K,) bool: n_k = 0 or α - (1-α)/n_k < 0. grid (bins+1,)
    float64: t_j = j/bins. risk (K, bins+1) float64: R̂_k(t_j); rows of classes with n_k = 0 are all
    zero (no data; read ``n_images`` before plotting them).

    A calibrated class may get t̂_k = 0 (the bound forces every pixel into its set); it keeps that
    threshold at query time (:meth:`query_thresholds`): only uncalibrated classes are floored.
    """

    alpha: float
    bins: int
    thresholds: np.ndarray
    n_images: np.ndarray
    uncalibrated: np.ndarray
    grid: np.ndarray
    risk: np.ndarray

    @property
    def n_classes(self) -> int:
        return int(self.thresholds.shape[0])

    @property
    def calibrated(self) -> np.ndarray:
        """(K,) bool: classes whose t̂_k carries the guarantee E[FNR_k] ≤ α."""
        return ~self.uncalibrated

    @property
    def always_in_set(self) -> np.ndarray:
        """(K,) bool: calibrated classes with t̂_k = 0, in every pixel's prediction set."""
        return self.calibrated & (self.thresholds <= 0.0)

    def query_thresholds(self, t_min: float = DEFAULT_T_MIN) -> np.ndarray:
        """(K,) float64 thresholds to use at query time: :func:`effective_thresholds`."""
        return effective_thresholds(self.thresholds, self.uncalibrated, t_min)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types only (JSON-ready). The grid is implied by ``bins`` and not stored."""
        return {
            "alpha": float(self.alpha),
            "bins": int(self.bins),
            "thresholds": [float(t) for t in self.thresholds],
            "n_images": [int(n) for n in self.n_images],
            "uncalibrated": [bool(b) for b in self.uncalibrated],
            "calibrated": [bool(b) for b in self.calibrated],
            "risk": [[float(r) for r in row] for row in self.risk],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        try:
            bins = int(d["bins"])
            thresholds = np.asarray(d["thresholds"], dtype=np.float64)
            n_images = np.asarray(d["n_images"], dtype=np.int64)
            uncalibrated = np.asarray(d["uncalibrated"], dtype=bool)
            risk = np.asarray(d["risk"], dtype=np.float64).reshape(len(thresholds), bins + 1)
            alpha = float(d["alpha"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed calibration record: {exc}") from None
        k = thresholds.shape[0]
        if n_images.shape != (k,) or uncalibrated.shape != (k,):
            raise InputError("malformed calibration record: per-class lists differ in length")
        return cls(alpha, bins, thresholds, n_images, uncalibrated, calibration_grid(bins), risk)


class CalibrationAccumulator:
    """Streaming CRC calibration (docs/algorithms.md §9.1): one pass, one histogram per (image, class).

    ``update(probs, labels)``: probs (n, K, H, W) float (numpy or torch), labels (n, H, W) int with
    ``ignore_index`` for unlabeled pixels. For each image i and class k present in its labels, the
    loss L_i^k(t_j) = fraction of class-k pixels with p_k < t_j is read off a cumulative histogram of
    p_k over those pixels; Σ_i L_i^k(t_j) and n_k are accumulated. ``result(alpha)`` gives a
    :class:`Calibration`. One update holds a histogram of n·K·(bins+2) int64: feed batches, not the
    whole calibration set.
    """

    def __init__(self, n_classes: int, *, bins: int = DEFAULT_BINS, ignore_index: int = 255) -> None:
        if n_classes < 1:
            raise InputError(f"n_classes must be >= 1, got {n_classes}")
        if bins < 1:
            raise InputError(f"bins must be >= 1, got {bins}")
        self.n_classes = int(n_classes)
        self.bins = int(bins)
        self.ignore_index = int(ignore_index)
        self.grid = calibration_grid(self.bins)
        self.risk_sum = np.zeros((self.n_classes, self.bins + 1), dtype=np.float64)
        self.n_images = np.zeros(self.n_classes, dtype=np.int64)

    def update(self, probs: Any, labels: Any) -> None:
        probs = _check_probs(probs)
        n, k, h, w = probs.shape
        if k != self.n_classes:
            raise InputError(f"probs have {k} classes, the calibration expects {self.n_classes}")
        labels, valid = _check_labels(labels, probs, k, self.ignore_index)
        if n == 0:
            return
        # p at the true label, only at labeled pixels.
        p_true = np.take_along_axis(probs, labels[:, None], axis=1)[:, 0][valid]
        img = np.broadcast_to(np.arange(n)[:, None, None], labels.shape)[valid]
        cls = labels[valid]
        # b = #{j : t_j <= p}; then p < t_j  <=>  j >= b, so L(t_j) = cumsum(hist)[j] / count, exactly,
        # with the same float64 comparison a per-threshold loop would make.
        b = np.searchsorted(self.grid, p_true.astype(np.float64), side="right")
        nb = self.bins + 2  # b ranges over 1..bins+1 (bins+1 only for p >= 1, never below a grid t)
        flat = (img * k + cls) * nb + b
        hist = np.bincount(flat, minlength=n * k * nb).reshape(n, k, nb)
        counts = hist.sum(axis=2)  # (n, K) class-k pixels per image
        present = counts > 0
        below = np.cumsum(hist[:, :, : self.bins + 1], axis=2)
        loss = below / np.maximum(counts, 1)[:, :, None]  # 0 rows where absent
        self.risk_sum += loss.sum(axis=0)
        self.n_images += present.sum(axis=0)

    def result(self, alpha: float = DEFAULT_ALPHA) -> Calibration:
        alpha = _check_alpha(alpha)
        risk = self.risk_sum / np.maximum(self.n_images, 1)[:, None]
        thresholds = np.array(
            [crc_threshold(risk[c], int(self.n_images[c]), alpha, self.grid) for c in range(self.n_classes)],
            dtype=np.float64,
        )
        uncalibrated = np.array([crc_bound(int(n), alpha) < 0 for n in self.n_images], dtype=bool)
        return Calibration(
            alpha=alpha,
            bins=self.bins,
            thresholds=thresholds,
            n_images=self.n_images.copy(),
            uncalibrated=uncalibrated,
            grid=self.grid.copy(),
            risk=risk,
        )


# ------------------------------------------------------------------------------------------- evaluation


def _check_thresholds(thresholds: Any) -> np.ndarray:
    thresholds = np.asarray(_as_numpy(thresholds), dtype=np.float64)
    if thresholds.ndim != 1:
        raise InputError(f"thresholds must be 1-D (n_classes,), got shape {thresholds.shape}")
    if not np.isfinite(thresholds).all():
        raise NonFiniteError("thresholds hold NaN or inf; recalibrate")
    return thresholds


def effective_thresholds(thresholds: Any, uncalibrated: Any, t_min: float = DEFAULT_T_MIN) -> np.ndarray:
    """Query-time thresholds (K,) float64 (docs/algorithms.md §9.1): a calibrated class keeps its t̂_k
    exactly, even t̂_k = 0 (every pixel in its set; raising it would void E[FNR_k] ≤ α); an uncalibrated
    class (``uncalibrated`` (K,) bool, too few calibration images, t̂ = 0) gets max(t̂_k, t_min), so it
    does not enter every pixel's set. No FNR guarantee holds for uncalibrated classes."""
    thresholds = _check_thresholds(thresholds)
    uncalibrated = np.asarray(_as_numpy(uncalibrated))
    if uncalibrated.shape != thresholds.shape or uncalibrated.dtype != bool:
        raise InputError(
            f"uncalibrated must be a bool array of shape {thresholds.shape} (one flag per class), "
            f"got {uncalibrated.dtype} {uncalibrated.shape}"
        )
    t_min = float(t_min)
    if not 0.0 <= t_min < 1.0:
        raise InputError(f"t_min must lie in [0, 1), got {t_min}")
    return np.where(uncalibrated, np.maximum(thresholds, t_min), thresholds)


def _query_thresholds(thresholds: Any, uncalibrated: Any, t_min: float | None) -> np.ndarray:
    """``thresholds`` as given (already the query-time ones), or :func:`effective_thresholds` when the
    uncalibrated flags come with them. A ``t_min`` without flags is refused: the floor applies to
    uncalibrated classes only, and flooring every class was a bug (it broke the guarantee)."""
    if uncalibrated is None:
        if t_min is not None:
            raise InputError(
                "t_min floors only uncalibrated classes: pass uncalibrated=(K,) bool with it, or pass the "
                "calibration file's query_thresholds"
            )
        return _check_thresholds(thresholds)
    return effective_thresholds(thresholds, uncalibrated, DEFAULT_T_MIN if t_min is None else t_min)


def prediction_sets(
    probs: Any, thresholds: Any, *, uncalibrated: Any = None, t_min: float | None = None
) -> np.ndarray:
    """C(u) = {k : p_k(u) >= t_k} as a bool array (n, K, H, W).

    t_k = ``thresholds`` exactly (the calibration file's ``query_thresholds``), or, with ``uncalibrated``,
    :func:`effective_thresholds` (t̂_k for calibrated classes, max(t̂_k, t_min) for uncalibrated ones).
    """
    probs = _check_probs(probs)
    thr = _query_thresholds(thresholds, uncalibrated, t_min)
    if thr.shape[0] != probs.shape[1]:
        raise InputError(f"{thr.shape[0]} thresholds for probs with {probs.shape[1]} classes")
    # float32 p is promoted to float64 for the comparison (numpy 2 array-array promotion): exact.
    return probs >= thr[None, :, None, None]


class EvaluationAccumulator:
    """Empirical CRC quality on labeled images, at the query-time thresholds.

    ``thresholds`` are used exactly, or, with ``uncalibrated`` (K,) bool, as :func:`effective_thresholds`
    makes them (only uncalibrated classes are floored at ``t_min``). ``result()`` returns a JSON-ready dict:
    - ``thresholds``: the thresholds applied; ``t_min`` and ``uncalibrated`` (None when not given).
    - ``fnr``: per class, mean over images containing k of the fraction of class-k pixels not in their
      prediction set (None for classes in no image); ``n_images``: per class, those images.
    - ``coverage``: share of non-ignore pixels whose true label is in the set; ``n_pixels``: those pixels.
    - ``set_size_counts``: counts of |C(u)| = 0..K over non-ignore pixels; ``mean_set_size``.
    """

    def __init__(
        self,
        thresholds: Any,
        *,
        uncalibrated: Any = None,
        t_min: float | None = None,
        ignore_index: int = 255,
        n_classes: int | None = None,
    ) -> None:
        self.thresholds = _query_thresholds(thresholds, uncalibrated, t_min)
        self.uncalibrated = None if uncalibrated is None else np.asarray(_as_numpy(uncalibrated), dtype=bool)
        self.t_min = None if uncalibrated is None else float(DEFAULT_T_MIN if t_min is None else t_min)
        k = self.thresholds.shape[0]
        if n_classes is not None and n_classes != k:
            raise InputError(f"n_classes = {n_classes} but {k} thresholds were given")
        self.n_classes = k
        self.ignore_index = int(ignore_index)
        self.fnr_sum = np.zeros(k, dtype=np.float64)
        self.n_images = np.zeros(k, dtype=np.int64)
        self.n_covered = 0
        self.n_pixels = 0
        self.set_size_counts = np.zeros(k + 1, dtype=np.int64)

    def update(self, probs: Any, labels: Any) -> None:
        probs = _check_probs(probs)
        n, k, h, w = probs.shape
        if k != self.n_classes:
            raise InputError(f"probs have {k} classes, the thresholds {self.n_classes}")
        labels, valid = _check_labels(labels, probs, k, self.ignore_index)
        sets = probs >= self.thresholds[None, :, None, None]  # (n, K, H, W)
        covered = np.take_along_axis(sets, labels[:, None], axis=1)[:, 0] & valid  # (n, H, W)
        onehot = (labels[:, None] == np.arange(k)[None, :, None, None]) & valid[:, None]  # (n, K, H, W)
        n_k = onehot.sum(axis=(2, 3))  # (n, K)
        n_hit = (onehot & sets).sum(axis=(2, 3))
        present = n_k > 0
        self.fnr_sum += np.where(present, 1.0 - n_hit / np.maximum(n_k, 1), 0.0).sum(axis=0)
        self.n_images += present.sum(axis=0)
        self.n_covered += int(covered.sum())
        self.n_pixels += int(valid.sum())
        sizes = sets.sum(axis=1)[valid]
        self.set_size_counts += np.bincount(sizes, minlength=k + 1)

    def result(self) -> dict[str, Any]:
        fnr = [float(s / n) if n > 0 else None for s, n in zip(self.fnr_sum, self.n_images)]
        total = int(self.set_size_counts.sum())
        return {
            "thresholds": [float(t) for t in self.thresholds],
            "t_min": self.t_min,
            "uncalibrated": None if self.uncalibrated is None else [bool(b) for b in self.uncalibrated],
            "fnr": fnr,
            "n_images": [int(n) for n in self.n_images],
            "coverage": float(self.n_covered / self.n_pixels) if self.n_pixels else None,
            "n_pixels": int(self.n_pixels),
            "set_size_counts": [int(c) for c in self.set_size_counts],
            "mean_set_size": (
                float((np.arange(self.n_classes + 1) * self.set_size_counts).sum() / total) if total else None
            ),
        }


# ------------------------------------------------------------------------------ prediction sets, scores


def cooccurrence(sets: Any) -> np.ndarray:
    """Co-occurrence pattern D (n, K, K) float64 from prediction sets (n, K, H, W) bool.

    M = P Pᵀ (set-indicator counts per image), D_ab = M_ab² / Σ_b' M_ab'²; rows with zero sum stay 0.
    """
    sets = _as_numpy(sets).astype(bool, copy=False)
    if sets.ndim != 4:
        raise InputError(f"sets must have shape (n_images, n_classes, H, W), got {sets.shape}")
    n, k, h, w = sets.shape
    # Counts are integers <= H·W, exact in float32 up to 2^24 pixels per image.
    dtype = np.float32 if h * w <= 2**24 else np.float64
    p = sets.reshape(n, k, h * w).astype(dtype)
    m = np.matmul(p, p.transpose(0, 2, 1)).astype(np.float64)
    m2 = m * m
    row = m2.sum(axis=2, keepdims=True)
    return np.divide(m2, row, out=np.zeros_like(m2), where=row > 0)


def confusion_weights(cooc: Any) -> np.ndarray:
    """Confusion weights w (n, K) float64 in [0, 1]: w_a = -Σ_b D_ab log D_ab / log K, 0 log 0 = 0."""
    d = np.asarray(cooc, dtype=np.float64)
    if d.ndim != 3 or d.shape[1] != d.shape[2]:
        raise InputError(f"co-occurrence must have shape (n_images, K, K), got {d.shape}")
    k = d.shape[1]
    if k < 2:
        raise InputError("CRC-AL needs at least 2 classes (w is normalised by log K)")
    dlogd = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    return -dlogd.sum(axis=2) / np.log(k)


def risk_maps(sets: Any, weights: Any) -> np.ndarray:
    """Risk map R (n, H, W) float32: R(u) = Σ_{a∈C(u)} w_a / Σ_a w_a, R = 0 where Σ w = 0."""
    sets = _as_numpy(sets).astype(bool, copy=False)
    w = np.asarray(weights, dtype=np.float64)
    n, k, h, wd = sets.shape
    if w.shape != (n, k):
        raise InputError(f"weights must have shape {(n, k)}, got {w.shape}")
    total = w.sum(axis=1, keepdims=True)
    wn = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    r = np.matmul(wn[:, None, :], sets.reshape(n, k, h * wd).astype(np.float64))
    return r.reshape(n, h, wd).astype(np.float32)


def crc_image_scores(
    probs: Any,
    thresholds: Any,
    *,
    uncalibrated: Any = None,
    t_min: float | None = None,
    return_risk_maps: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """CRC-AL image scores (docs/algorithms.md §9.2). Higher u = more informative.

    probs (n, K, H, W) float; thresholds (K,) the query-time thresholds (the calibration file's
    ``query_thresholds``), used exactly, or t̂ with ``uncalibrated``/``t_min`` as in
    :func:`prediction_sets`. Returns
    u (n,) float64 = mean risk map, v (n, K*K) float32 = vec(D) row-major, and the risk maps
    (n, H, W) float32 when ``return_risk_maps`` (else None). Works on the whole batch at once
    (temporaries of n·K·H·W·8 bytes): callers choose n.
    """
    sets = prediction_sets(probs, thresholds, uncalibrated=uncalibrated, t_min=t_min)
    n, k = sets.shape[:2]
    d = cooccurrence(sets)
    w = confusion_weights(d)
    r = risk_maps(sets, w)
    u = r.reshape(n, -1).mean(axis=1, dtype=np.float64) if n else np.zeros(0)
    v = d.reshape(n, k * k).astype(np.float32)
    return u, v, (r if return_risk_maps else None)


# ---------------------------------------------------------------------------------------- selection


def _check_finite_rows(arr: np.ndarray, name: str) -> None:
    """Raise NonFiniteError if ``arr`` holds NaN or inf; blocks of rows keep the boolean temporary small."""
    if arr.size == 0:
        return
    rows = arr.reshape(arr.shape[0], -1)
    block = max(1, (1 << 24) // rows.shape[1])
    for start in range(0, rows.shape[0], block):
        if not np.isfinite(rows[start : start + block]).all():
            raise NonFiniteError(f"{name} holds NaN or inf; rescore")


def _prepare_selection(u_unlabeled, v_unlabeled, ids_unlabeled, u_reference, v_reference, budget):
    """Checked inputs; candidate rows stay in input order (no copy of the embeddings), with ``order``, the
    canonical (id-sorted) order that breaks ties, so the result never depends on row order."""
    u_c = np.asarray(_as_numpy(u_unlabeled), dtype=np.float64).reshape(-1)
    v_c = np.asarray(_as_numpy(v_unlabeled))
    ids = np.asarray(ids_unlabeled)
    n = u_c.shape[0]
    if n == 0:
        raise EmptyPoolError("no unlabeled candidates to select from; the pool is empty")
    if v_c.ndim != 2 or v_c.shape[0] != n or ids.shape != (n,):
        raise InputError(
            f"candidates: u {u_c.shape}, v {v_c.shape}, ids {ids.shape} must be (N,), (N, E), (N,)"
        )
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if (sorted_ids[1:] == sorted_ids[:-1]).any():
        raise InputError("candidate ids are not unique; ids are the join key")
    e = v_c.shape[1]
    if u_reference is None or v_reference is None:
        u_r, v_r = np.zeros(0), np.zeros((0, e), dtype=np.float32)
    else:
        u_r = np.asarray(_as_numpy(u_reference), dtype=np.float64).reshape(-1)
        v_r = np.asarray(_as_numpy(v_reference))
        if v_r.size == 0:
            v_r = v_r.reshape(0, e)
        if v_r.ndim != 2 or v_r.shape != (u_r.shape[0], e):
            raise InputError(f"references: u {u_r.shape}, v {v_r.shape} must be (M,), (M, {e})")
    for name, arr in (("u_unlabeled", u_c), ("v_unlabeled", v_c), ("u_reference", u_r), ("v_reference", v_r)):
        _check_finite_rows(arr, name)
    if (u_c < 0).any() or (u_r < 0).any():
        raise InputError("image scores u must be >= 0 for the barycenter distance")
    if int(budget) < 0:
        raise InputError(f"budget must be >= 0, got {budget}")
    return u_c, v_c, ids, order, u_r, v_r, int(budget)


class _BarycenterRows:
    """D'_ij from one reference i to every candidate j, float32 on the device: one pass over the
    candidate embeddings per reference, memory O(N) beside them.

    d_ij comes from :func:`alseg.selectors.distance_rows` (direct difference, blocked; no
    ||a||² + ||b||² - 2ab expansion, so no cancellation and d = 0 for identical rows), so an element's
    value does not depend on ``chunk_size`` or on the slabs of the pass. The embeddings are used in
    place when they already are contiguous float32 on the CPU (no copy); otherwise one float32 copy is
    made on the device.
    """

    def __init__(self, u_c, v_c, tau, device, chunk_size):
        import torch

        from alseg.selectors import _device

        self.torch = torch
        self.device = _device(device)
        self.u_c = torch.as_tensor(np.asarray(u_c, dtype=np.float32), device=self.device)
        self.v_c = torch.from_numpy(np.ascontiguousarray(v_c, dtype=np.float32)).to(self.device)
        self.tau = float(tau)
        self.chunk = max(1, int(chunk_size))
        self.n = self.u_c.shape[0]
        self._d = torch.empty(self.n, dtype=torch.float32, device=self.device)
        self._w = torch.empty(self.n, dtype=torch.float32, device=self.device)

    def rows(self, u_i: float, v_i, start: int, stop: int) -> Any:
        """D'_ij for candidates j in start..stop-1, (stop - start,) float32, in a buffer that the next
        call over these rows reuses. ``v_i`` (E,) float32 on the device."""
        from alseg.selectors import distance_rows

        torch = self.torch
        d = distance_rows(self.v_c, v_i, self._d, start, stop, chunk_size=self.chunk)
        # torch.pow(0, 0) = 1, so τ = 1 with u_j = 0 and τ = 0 give no NaN.
        d.add_(BARYCENTER_EPS).pow_(self.tau)
        u = self.u_c[start:stop]
        w = torch.add(u, float(u_i) + BARYCENTER_EPS, out=self._w[start:stop])
        torch.div(u, w, out=w).pow_(1.0 - self.tau)
        return d.mul_(w)

    def block(self, u_r, v_r) -> Any:
        """D' (m, N) float32 for m references: u_r (m,), v_r (m, E) (one :meth:`rows` pass each)."""
        torch = self.torch
        v_r = torch.from_numpy(np.ascontiguousarray(_as_numpy(v_r), dtype=np.float32)).to(self.device)
        u_r = np.asarray(u_r, dtype=np.float64).reshape(-1)
        out = torch.empty((u_r.shape[0], self.n), dtype=torch.float32, device=self.device)
        for i in range(u_r.shape[0]):
            out[i] = self.rows(float(u_r[i]), v_r[i], 0, self.n)
        return out


def _greedy(u_unlabeled, v_unlabeled, ids_unlabeled, u_reference, v_reference, budget, tau, device,
            chunk_size, use_mean):
    import torch

    from alseg.selectors import _first_max, _rank_index, merge_best, row_slabs, slab_best

    u_c, v_c, ids, order, u_r, v_r, budget = _prepare_selection(
        u_unlabeled, v_unlabeled, ids_unlabeled, u_reference, v_reference, budget
    )
    tau = float(tau)
    if not 0.0 <= tau <= 1.0:
        raise InputError(f"tau must lie in [0, 1], got {tau}")
    n = u_c.shape[0]
    budget = min(budget, n)
    bary = _BarycenterRows(u_c, v_c, tau, device, chunk_size)
    dev = bary.device
    rank = _rank_index(order, dev)  # ties go to the smallest id
    # Running sum (float64: up to M + budget terms; MPS has no float64) and running min per candidate; a
    # picked row gets a min of -inf, so f = sum/|T| + min never picks it again.
    acc = torch.float32 if dev.type == "mps" else torch.float64
    run_sum = torch.zeros(n, dtype=acc, device=dev)
    run_min = torch.full((n,), float("inf"), dtype=torch.float32, device=dev)
    f = torch.empty(n, dtype=acc, device=dev)
    n_ref = 0

    def absorb(u_i: float, v_i, want_best: bool) -> int | None:
        """Add reference i to T: one pass, slab by slab, that also finds the next pick when asked."""
        nonlocal n_ref
        n_ref += 1

        def slab(start: int, stop: int):
            dp = bary.rows(u_i, v_i, start, stop)
            run_sum[start:stop].add_(dp)
            m = run_min[start:stop]
            torch.minimum(m, dp, out=m)
            if not want_best:
                return None
            if not use_mean:
                return slab_best(m, start, rank)
            g = torch.div(run_sum[start:stop], n_ref, out=f[start:stop])
            return slab_best(g.add_(m), start, rank)

        results = row_slabs(n, dev, slab)
        return merge_best(results, rank) if want_best else None

    # One reference at a time, in reference order: the running sum is the same sequence for any chunking.
    v_r_t = torch.from_numpy(np.ascontiguousarray(v_r, dtype=np.float32)).to(dev)
    j = None
    for i in range(u_r.shape[0]):
        j = absorb(float(u_r[i]), v_r_t[i], want_best=i == u_r.shape[0] - 1)
    if j is None and budget:  # T is empty: the first pick is argmax u
        j = _first_max(torch.as_tensor(u_c, dtype=acc, device=dev), rank)
    picks: list[int] = []
    for step in range(budget):
        picks.append(j)
        run_min[j] = -float("inf")
        if step + 1 < budget:
            j = absorb(float(u_c[j]), bary.v_c[j], want_best=True)
    return ids[np.asarray(picks, dtype=np.int64)]


def top_diverse_k(
    u_unlabeled: Any,
    v_unlabeled: Any,
    ids_unlabeled: Any,
    u_reference: Any,
    v_reference: Any,
    budget: int,
    *,
    tau: float = 0.5,
    device: str = "cpu",
    chunk_size: int = 65536,
) -> np.ndarray:
    """Top-Diverse-K selection on the barycenter distance (docs/algorithms.md §9.3). Returns ranked ids.

    u (N,)/(M,) image scores ≥ 0, v (N, E)/(M, E) embeddings vec(D) of candidates and references
    (labeled images; M may be 0). D'_ij = (||v_i - v_j|| + ε)^τ · (u_j / (u_i + u_j + ε))^(1-τ) from
    reference i to candidate j. T starts as the references; each pick maximises mean_{i∈T} D'_ij +
    min_{i∈T} D'_ij (argmax u when T is empty) and joins T. Running sum/min per candidate: memory O(N)
    beside the embeddings (used in place when float32), each pick one float32 pass over them on
    ``device`` (O(N·E)). Ties go to the smallest id, whatever the row order. ``chunk_size`` bounds the
    rows of one distance kernel on a GPU (on CPU blocks are cache-sized) and does not change the result.
    """
    return _greedy(u_unlabeled, v_unlabeled, ids_unlabeled, u_reference, v_reference, budget, tau, device,
                   chunk_size, use_mean=True)


def barycenter_kcenter(
    u_unlabeled: Any,
    v_unlabeled: Any,
    ids_unlabeled: Any,
    u_reference: Any,
    v_reference: Any,
    budget: int,
    *,
    tau: float = 0.5,
    device: str = "cpu",
    chunk_size: int = 65536,
) -> np.ndarray:
    """Greedy k-center on the barycenter distance D' (``--selector kcenter``): each pick maximises
    min_{i∈T} D'_ij (argmax u when T is empty). Same inputs, canonical order and ties as
    :func:`top_diverse_k`."""
    return _greedy(u_unlabeled, v_unlabeled, ids_unlabeled, u_reference, v_reference, budget, tau, device,
                   chunk_size, use_mean=False)
