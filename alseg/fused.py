"""The fused path: per-image scores computed on the device while ``infer`` holds a batch's logits.

``alseg infer --scores entropy,margin,...`` calls :class:`FusedScorer` on each batch instead of storing
full logits for ``alseg score`` to read back. Every function here is the torch twin of a numpy reference
(:mod:`alseg.strategies`, :mod:`alseg.crc`): same formulas, same dtypes, vectorised over images, pixels
and classes (no Python loops over them), on whatever device the logits live. ``tests/test_fused.py``
checks that the fused scores equal ``alseg score`` on the stored logits.

The logits are rounded to float16 first, as the pool file stores them, so both paths score the same
numbers. What can still differ is float rounding inside exp/log/sums (~1e-7 relative); for ``crc`` a
pixel whose probability lies within that rounding of a threshold may fall on the other side of it.

Pure: tensors in, tensors or numpy arrays out; no I/O, no printing.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from alseg.errors import InputError, NonFiniteError, UnknownName

# `infer --scores` names (the registry's keys) and what each adds to the scores file
FUSED_SCORES = ("entropy", "margin", "least-confidence", "crc", "contextual-diversity", "badge")
from alseg.registry import AGGREGATIONS, SCALAR_SCORES as SCALAR  # noqa: E402


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """float32 softmax over the class axis 1 (the twin of :func:`alseg.strategies.softmax`)."""
    x = logits.float()
    x = x - x.amax(dim=1, keepdim=True)
    x = torch.exp(x)
    return x / x.sum(dim=1, keepdim=True)


def pixel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """(N,K,H,W) -> (N,H,W) normalised entropy in [0, 1], 0 log 0 = 0 (:func:`alseg.strategies.pixel_entropy`)."""
    k = probs.shape[1]
    if k <= 1:
        return torch.zeros((probs.shape[0], *probs.shape[2:]), dtype=torch.float32, device=probs.device)
    # entr(p) = -p log p, 0 at p = 0: one kernel instead of a chain of temporaries
    return torch.clamp(torch.special.entr(probs).sum(dim=1) / np.float32(math.log(k)), 0.0, 1.0)


def pixel_margin(probs: torch.Tensor) -> torch.Tensor:
    """(N,K,H,W) -> (N,H,W) 1 - (p_(1) - p_(2)) (:func:`alseg.strategies.pixel_margin`)."""
    if probs.shape[1] == 1:
        return 1.0 - probs[:, 0]
    top1, where = probs.max(dim=1, keepdim=True)
    # the largest of the others (a tie keeps the same value, as numpy's partition): cheaper than topk on CPU
    top2 = probs.scatter(1, where, -1.0).amax(dim=1, keepdim=True)
    return (1.0 - (top1 - top2))[:, 0]


def pixel_least_confidence(probs: torch.Tensor) -> torch.Tensor:
    """(N,K,H,W) -> (N,H,W) 1 - max_k p_k (:func:`alseg.strategies.pixel_least_confidence`)."""
    return 1.0 - probs.amax(dim=1)


PIXEL_SCORERS = {"entropy": pixel_entropy, "margin": pixel_margin, "least-confidence": pixel_least_confidence}


def aggregate(pixel_scores: torch.Tensor, how: str = "mean", q: float = 10.0) -> torch.Tensor:
    """(N,H,W) -> (N,) float64: ``mean``, ``sum`` or ``top-q`` (mean of the top max(1, floor(q/100 H W))
    pixels), as :func:`alseg.strategies.aggregate`."""
    flat = pixel_scores.reshape(pixel_scores.shape[0], -1).double()
    if how == "mean":
        return flat.mean(dim=1)
    if how == "sum":
        return flat.sum(dim=1)
    if how == "top-q":
        n_pixels = flat.shape[1]
        k = min(n_pixels, max(1, int(math.floor(q / 100.0 * n_pixels + 1e-9))))
        return torch.topk(flat, k, dim=1).values.mean(dim=1)
    raise UnknownName(f"--aggregation: unknown {how!r}; choose one of: {', '.join(AGGREGATIONS)}")


def contextual_diversity(probs: torch.Tensor, entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(P (N,K,K) float32, present (N,K) bool): row c of P is the entropy-weighted mean softmax over the
    pixels predicted c (plain mean when their entropy sums to 0), as
    :func:`alseg.strategies.contextual_diversity`. ``entropy``: :func:`pixel_entropy` of ``probs`` when
    the caller has it already."""
    n, k = probs.shape[:2]
    h = (pixel_entropy(probs) if entropy is None else entropy).reshape(n, 1, -1).double()  # (n, 1, HW)
    onehot = F.one_hot(probs.argmax(dim=1).reshape(n, -1), k).double()  # (n, HW, K); first maximum on ties
    p = probs.reshape(n, k, -1).double()  # (n, K, HW)
    # sums over the pixels predicted c, for every c at once: (n, K, HW) @ (n, HW, K), transposed
    weighted = torch.bmm(p * h, onehot).transpose(1, 2).reshape(n * k, k)
    plain = torch.bmm(p, onehot).transpose(1, 2).reshape(n * k, k)
    h_sum = torch.bmm(h, onehot).reshape(n * k)
    count = onehot.sum(dim=1).reshape(n * k)
    use_entropy = h_sum > 0
    present = count > 0
    out = torch.where(use_entropy[:, None], weighted / torch.where(use_entropy, h_sum, 1.0)[:, None],
                      torch.zeros_like(weighted))
    use_plain = present & ~use_entropy
    out = torch.where(use_plain[:, None], plain / torch.where(present, count, 1.0)[:, None], out)
    return out.reshape(n, k, k).float(), present.reshape(n, k)


def badge_logit(probs: torch.Tensor, window: int) -> torch.Tensor:
    """(N, K*(H//s)*(W//s)) float32: p - onehot(argmax p) averaged over s x s windows, remainder dropped
    (:func:`alseg.strategies.badge_logit_embedding`)."""
    n, k, h, w = probs.shape
    s = int(window)
    if s < 1 or s > min(h, w):
        raise InputError(f"BADGE window must be in [1, {min(h, w)}] for {h}x{w} logits, got {s}")
    g = probs.scatter_add(1, probs.argmax(dim=1, keepdim=True), torch.full_like(probs[:, :1], -1.0))
    pooled = F.avg_pool2d(g.double(), kernel_size=s, stride=s)
    return pooled.reshape(n, -1).float()


def crc(probs: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CRC-AL (u (N,) float64, v (N,K*K) float32) at the query-time ``thresholds`` (K,) float64, as
    :func:`alseg.crc.crc_image_scores`: sets C(u) = {k : p_k >= t_k}, co-occurrence D, confusion weights w,
    risk map R = Σ_{a∈C} w_a / Σ w, u = mean R."""
    n, k, h, w = probs.shape
    if k < 2:
        raise InputError("CRC-AL needs at least 2 classes (w is normalised by log K)")
    sets = probs >= _float32_at_least(thresholds).view(1, k, 1, 1)
    dtype = torch.float32 if h * w <= 2**24 else torch.float64  # integer counts, exact
    p = sets.reshape(n, k, h * w).to(dtype)
    m = torch.bmm(p, p.transpose(1, 2)).double()
    m2 = m * m
    row = m2.sum(dim=2, keepdim=True)
    d = torch.where(row > 0, m2 / torch.where(row > 0, row, torch.ones_like(row)), torch.zeros_like(m2))
    dlogd = torch.where(d > 0, d * torch.log(torch.where(d > 0, d, torch.ones_like(d))), torch.zeros_like(d))
    weights = -dlogd.sum(dim=2) / math.log(k)
    total = weights.sum(dim=1, keepdim=True)
    wn = torch.where(total > 0, weights / torch.where(total > 0, total, torch.ones_like(total)),
                     torch.zeros_like(weights))
    risk = torch.bmm(wn[:, None, :], sets.reshape(n, k, h * w).double()).reshape(n, h * w).float()
    return risk.double().mean(dim=1), d.reshape(n, k * k).float()


def _float32_at_least(thresholds: torch.Tensor) -> torch.Tensor:
    """For float32 p: p >= t (float64) exactly when p >= the smallest float32 >= t; one float32 compare."""
    t32 = thresholds.float()
    below = t32.double() < thresholds
    return torch.where(below, torch.nextafter(t32, torch.full_like(t32, float("inf"))), t32)


def topk_probs(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest probabilities per pixel, decreasing, as float16 (N,k,H,W), and their classes
    (N,k,H,W) (uint8 up to 256 classes, else int32)."""
    values, classes = torch.topk(probs, int(k), dim=1)
    return values.half(), classes.to(torch.uint8 if probs.shape[1] <= 256 else torch.int32)


def parse_scores(text: str) -> tuple[list[str], str | None]:
    """``"entropy,margin,crc:crc.json"`` -> (names, calibration path or None); unknown names raise."""
    names, calibration = [], None
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        name, _, arg = part.partition(":")
        if name not in FUSED_SCORES:
            raise UnknownName(f"--scores: unknown {name!r}; choose from: {', '.join(FUSED_SCORES)}")
        if arg:
            if name != "crc":
                raise InputError(f"--scores: {part!r}: only crc takes an argument (crc:crc.json)")
            calibration = arg
        if name not in names:
            names.append(name)
    return names, calibration


class FusedScorer:
    """Scores of ``names`` for each batch, on the logits' device; the rows go to the pool writer's
    segments as ``extras`` (so an interrupted run resumes them) and into the scores file at the end.

    ``thresholds`` (K,) float64: the calibration's ``query_thresholds`` (for ``crc``). ``badge`` params
    (:func:`alseg.strategies.badge_logit_params`) come from the first image's size; the fused path pools
    one image size only, so an image of another size is refused (``alseg score`` pools those adaptively).
    """

    def __init__(
        self, names: Sequence[str], *, n_classes: int, shape: tuple[int, int], aggregation: str = "mean",
        q: float = 10.0, thresholds: np.ndarray | None = None, crc_params: Mapping[str, Any] | None = None,
    ):
        from alseg.strategies import badge_logit_dim, badge_logit_params

        if aggregation not in AGGREGATIONS:
            raise UnknownName(f"--aggregation: unknown {aggregation!r}; choose one of: {', '.join(AGGREGATIONS)}")
        if not 0.0 < q <= 100.0:
            raise InputError(f"--q (the top-q percentage) must be in (0, 100], got {q}")
        for name in names:
            if name not in FUSED_SCORES:
                raise UnknownName(f"--scores: unknown {name!r}; choose from: {', '.join(FUSED_SCORES)}")
        if "crc" in names and thresholds is None:
            raise InputError("--scores crc needs a calibration: crc:crc.json (from `alseg calibrate`)")
        self.names, self.k, self.shape = list(names), int(n_classes), tuple(int(s) for s in shape)
        self.aggregation, self.q = aggregation, float(q)
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        k = self.k
        # extras: name -> (row shape, dtype); params: dataset name -> params, as `alseg score` records them
        self.extras: dict[str, tuple[tuple[int, ...], Any]] = {}
        self.params: dict[str, dict] = {}
        for name in self.names:
            if name in SCALAR:
                self.extras[f"scores.{name}"] = ((), np.float64)
                self.params[name] = {"aggregation": aggregation, "q": self.q}
        if "contextual-diversity" in self.names:
            self.extras["embeddings.contextual-diversity"] = ((k, k), np.float32)
            self.extras["embeddings.contextual-diversity-present"] = ((k,), np.bool_)
            self.params["contextual-diversity"] = {"epsilon": 1e-8}
        if "badge" in self.names:
            self.badge = badge_logit_params(k, *self.shape, variable_size=False)
            self.extras["embeddings.badge-logit"] = ((badge_logit_dim(k, *self.shape, self.badge),), np.float32)
            self.params["badge-logit"] = self.badge
        if "crc" in self.names:
            self.extras["scores.crc"] = ((), np.float64)
            self.extras["embeddings.crc"] = ((k * k,), np.float32)
            self.params["crc"] = dict(crc_params or {})

    def __call__(self, ids: Sequence[str], logits: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
        """Per image logits (K, h_i, w_i) on the device -> {extra name: (b, ...) numpy rows}."""
        b = len(ids)
        out = {name: np.zeros((b, *shape), dtype=dtype) for name, (shape, dtype) in self.extras.items()}
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(logits):
            groups.setdefault(tuple(x.shape), []).append(i)
        for shape, rows in groups.items():
            if "badge" in self.names and tuple(shape[1:]) != self.shape:
                raise InputError(
                    f"id {ids[rows[0]]!r}: its logits are {shape[1]}x{shape[2]}, the first image's {self.shape[0]}x"
                    f"{self.shape[1]}; the fused badge embedding needs one image size: drop badge from --scores "
                    "and run `alseg score --strategy badge` on stored logits"
                )
            x = torch.stack([logits[i] for i in rows])
            # the pool file stores float16: score the very numbers `alseg score` would read back
            x = x.half().float()
            finite = torch.isfinite(x).flatten(1).all(dim=1)
            if not bool(finite.all()):
                bad = [ids[rows[j]] for j in torch.nonzero(~finite).flatten().tolist()[:5]]
                raise NonFiniteError(f"logits hold NaN or inf for id(s) {', '.join(bad)}; check the model "
                                     "output for these images (e.g. re-run inference in float32)")
            for name, value in self.batch(x).items():
                out[name][rows] = value
        return out

    def batch(self, logits: torch.Tensor) -> dict[str, np.ndarray]:
        """Logits (n,K,h,w) of one size -> {extra name: (n, ...) numpy rows}."""
        probs = softmax(logits)
        out: dict[str, torch.Tensor] = {}
        entropy = pixel_entropy(probs) if {"entropy", "contextual-diversity"} & set(self.names) else None
        for name in self.names:
            if name in SCALAR:
                pixel = entropy if name == "entropy" else PIXEL_SCORERS[name](probs)
                out[f"scores.{name}"] = aggregate(pixel, self.aggregation, self.q)
        if "contextual-diversity" in self.names:
            out["embeddings.contextual-diversity"], out["embeddings.contextual-diversity-present"] = (
                contextual_diversity(probs, entropy))
        if "badge" in self.names:
            out["embeddings.badge-logit"] = badge_logit(probs, self.badge["window"])
        if "crc" in self.names:
            thr = torch.as_tensor(self.thresholds, dtype=torch.float64, device=probs.device)
            out["scores.crc"], out["embeddings.crc"] = crc(probs, thr)
        return {name: value.cpu().numpy() for name, value in out.items()}

    def scores_file(self, rows: Mapping[str, np.ndarray]) -> tuple[dict, dict, dict]:
        """(scores, embeddings, params) for :func:`alseg.files.hdf5.write_scores` from the gathered rows."""
        scores = {k.split(".", 1)[1]: v for k, v in rows.items() if k.startswith("scores.")}
        embeddings = {k.split(".", 1)[1]: v for k, v in rows.items() if k.startswith("embeddings.")}
        return scores, embeddings, dict(self.params)
