"""Pure selectors: scores or embeddings of the unlabeled pool in, ranked ids out.

Spec ``docs/algorithms.md`` sections 1, 5, 6, 7 and 8. Rules shared by every selector:

- Inputs are first put in canonical order (rows sorted by id), so the result never depends on the row
  order of the input; ties always break by id order.
- Randomness only through a passed ``np.random.Generator``; a missing generator is an error.
- The result is a 1-D numpy array of ids (str) in pick / rank order. ``budget >= len(candidates)``
  returns every candidate (ranked); no candidates raises :class:`EmptyPoolError`.
- Distance-based selectors keep a running min-distance vector (O(N) memory, O(N*d) work per pick) and
  never build an N x N matrix. Every distance element is computed by the same per-pair kernel whatever
  the chunking, so results do not depend on ``chunk_size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from alseg.errors import DeviceError, EmptyPoolError, InputError, NonFiniteError, UnknownName
from alseg.strategies import check_finite

__all__ = [
    "DISTANCES",
    "SYMKL_EPS",
    "kcenter",
    "kmeans_pp",
    "pairwise_min_distance",
    "random_select",
    "stochastic_batches",
    "top_k",
]

DISTANCES = ("euclidean", "symkl")
# Probability clamp inside the logs of the symmetric KL (spec section 7).
SYMKL_EPS = 1e-8
# Distance contributed by a class present in exactly one of two images: 1/2 log(1/eps).
SYMKL_ONE_SIDED = 0.5 * math.log(1.0 / SYMKL_EPS)


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _canonical(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Return (ids as str array sorted, order) with ids[order] sorted; rejects empty and duplicates."""
    ids_arr = np.asarray(ids).astype(str).reshape(-1)
    if ids_arr.size == 0:
        raise EmptyPoolError("there are no candidate ids to select from; the unlabeled pool is empty")
    order = np.argsort(ids_arr, kind="stable")
    sorted_ids = ids_arr[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if dup.size:
        raise InputError(f"candidate ids must be unique; {sorted_ids[dup[0]]!r} appears more than once")
    return sorted_ids, order


def _check_budget(budget: int) -> int:
    b = int(budget)
    if b != budget or b < 0:
        raise InputError(f"budget must be a non-negative integer, got {budget!r}")
    return b


def _check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise InputError(
            f"rng must be a numpy.random.Generator built from the seed (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return rng


def _check_scores(scores: np.ndarray, ids: np.ndarray, order: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] != order.shape[0]:
        raise InputError(f"got {s.shape[0]} scores for {order.shape[0]} ids; they must be aligned")
    s = s[order]
    check_finite(s, ids, "scores")
    return s


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UnknownName(f"unknown device {device!r}; use e.g. 'cpu' or 'cuda'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r} requested but MPS is not available here; use --device cpu")
    return dev


def _rank_by_score(scores: np.ndarray, sorted_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """ids of ``rows`` (canonical positions) by score descending, ties by id."""
    rows = np.asarray(rows, dtype=np.int64)
    ranked = rows[np.lexsort((sorted_ids[rows], -scores[rows]))]
    return sorted_ids[ranked]


# ---------------------------------------------------------------------------------------------
# Random, top-k, stochastic batches


def random_select(ids: Sequence[str], budget: int, *, rng: np.random.Generator) -> np.ndarray:
    """Uniform sample of ``budget`` ids without replacement (spec section 1), in draw order.

    Draws ``rng.choice(n, size=min(budget, n), replace=False)`` over the id-sorted candidates.
    """
    sorted_ids, _ = _canonical(ids)
    b = _check_budget(budget)
    rng = _check_rng(rng)
    n = sorted_ids.shape[0]
    return sorted_ids[rng.choice(n, size=min(b, n), replace=False)]


def top_k(scores: np.ndarray, ids: Sequence[str], budget: int) -> np.ndarray:
    """The ``budget`` highest-scoring ids, by score descending, ties by id (spec sections 2-4)."""
    sorted_ids, order = _canonical(ids)
    s = _check_scores(scores, sorted_ids, order)
    b = _check_budget(budget)
    ranked = np.lexsort((sorted_ids, -s))
    return sorted_ids[ranked[:b]]


def stochastic_batches(
    scores: np.ndarray,
    ids: Sequence[str],
    budget: int,
    *,
    rng: np.random.Generator,
    groups: int | None = None,
) -> np.ndarray:
    """Stochastic batches (Gaillochet, Desrosiers & Lombaert 2023), spec section 5.

    With canonical (id-sorted) order and b = budget:
    - default: ``perm = rng.permutation(n)``, cut into floor(n/b) disjoint groups of b (rest dropped);
    - ``groups=G``: G groups, group g = ``rng.choice(n, size=b, replace=False)`` drawn one after another.
    Returns the group with the highest mean score (the first such group on exact ties), its ids ranked
    by score descending, ties by id. If n <= b, all candidates are returned (ranked).
    """
    sorted_ids, order = _canonical(ids)
    s = _check_scores(scores, sorted_ids, order)
    b = _check_budget(budget)
    rng = _check_rng(rng)
    n = sorted_ids.shape[0]
    if b == 0:
        return sorted_ids[:0]
    if n <= b:
        return _rank_by_score(s, sorted_ids, np.arange(n))
    if groups is None:
        perm = rng.permutation(n)
        n_groups = n // b
        members = perm[: n_groups * b].reshape(n_groups, b)
    else:
        if int(groups) != groups or groups < 1:
            raise InputError(f"groups must be a positive integer, got {groups!r}")
        members = np.stack([rng.choice(n, size=b, replace=False) for _ in range(int(groups))])
    means = s[members].mean(axis=1)
    best = int(np.argmax(means))  # first maximum on exact ties
    return _rank_by_score(s, sorted_ids, members[best])


# ---------------------------------------------------------------------------------------------
# Distances and the running min-distance vector


def _euclidean_to(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (rows of x) x (rows of centers), each element by the same per-pair kernel.

    The difference-based cdist mode computes every pair independently (no ||a||^2 + ||b||^2 - 2ab
    expansion), so the value of an element does not depend on how the rows are chunked, and identical
    rows give exactly 0.
    """
    return torch.cdist(x, centers, compute_mode="donot_use_mm_for_euclid_dist")


def _symkl_to(p: torch.Tensor, logp: torch.Tensor, present: torch.Tensor, center: int, all_p, all_logp, all_present) -> torch.Tensor:
    """symKL distance (spec section 7) between rows (p, logp, present) and one center row."""
    cp, clogp, cpres = all_p[center], all_logp[center], all_present[center]
    # KL(a||b) + KL(b||a) = sum_k (a_k - b_k)(log a_k - log b_k), logs of eps-clamped probabilities.
    per_class = ((p - cp) * (logp - clogp)).sum(dim=2)  # (n, K)
    both = present & cpres
    one = present ^ cpres
    kl = 0.5 * torch.where(both, per_class, torch.zeros_like(per_class)).sum(dim=1)
    return kl + SYMKL_ONE_SIDED * one.sum(dim=1).to(kl.dtype)


# Largest chunk x centers tile of distances held at once (elements).
_TILE = 1 << 22


def _min_euclidean_pruned(x: torch.Tensor, x_norm2: torch.Tensor, c: torch.Tensor, c_norm2: torch.Tensor) -> torch.Tensor:
    """min_j ||x_i - c_j|| per row, equal to ``_euclidean_to(x, c).amin(1)`` element for element.

    A fast matmul estimate ||x||^2 + ||c||^2 - 2 x.c (error below tol * (||x||^2 + ||c||^2) for float32
    with d terms) keeps only the centers that can be the nearest; the exact per-pair kernel then runs on
    those pairs alone. The result is the min of exact per-pair values, so it does not depend on chunking.
    """
    d = x.shape[1]
    tol = 8.0 * max(d, 16) * float(torch.finfo(x.dtype).eps) + 1e-6
    norm_sum = x_norm2[:, None] + c_norm2[None, :]
    approx = norm_sum - 2.0 * (x @ c.T)
    bound = tol * norm_sum
    threshold = (approx + bound).amin(dim=1, keepdim=True)
    rows, cols = torch.nonzero(approx - bound <= threshold, as_tuple=True)
    out = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
    step = max(1, _TILE // max(1, d))  # gathered pair rows stay under _TILE elements
    for p0 in range(0, rows.shape[0], step):
        r, k = rows[p0 : p0 + step], cols[p0 : p0 + step]
        exact = torch.cdist(x[r].unsqueeze(1), c[k].unsqueeze(1), compute_mode="donot_use_mm_for_euclid_dist")
        out.scatter_reduce_(0, r, exact.view(-1), reduce="amin")
    return out


class _Space:
    """Embeddings of one pool on a device, with distances from all rows to chosen rows (chunked)."""

    def __init__(self, embeddings, distance: str, device: torch.device, chunk_size: int, ids: np.ndarray, what: str):
        if distance not in DISTANCES:
            raise UnknownName(f"unknown distance {distance!r}; choose one of: {', '.join(DISTANCES)}")
        if int(chunk_size) < 1:
            raise InputError(f"chunk_size must be >= 1, got {chunk_size!r}")
        self.distance = distance
        self.device = device
        self.chunk_size = int(chunk_size)
        if distance == "euclidean":
            x = np.asarray(embeddings)
            if x.ndim != 2:
                raise InputError(f"{what} embeddings must have shape (N, d), got shape {x.shape}")
            x = np.ascontiguousarray(x, dtype=np.float32)
            if x.shape[0] and ids is not None:
                check_finite(x, ids, f"{what} embeddings")
            elif x.size and not np.isfinite(x).all():
                raise NonFiniteError(f"{what} embeddings hold NaN or inf; re-run inference")
            self.x = torch.from_numpy(x).to(device)
            self.n = x.shape[0]
        else:
            if not (isinstance(embeddings, (tuple, list)) and len(embeddings) == 2):
                raise InputError(f"symkl {what} embeddings must be a tuple (P (n,K,K), present (n,K)) from contextual_diversity")
            p, present = (np.asarray(a) for a in embeddings)
            if p.ndim != 3 or p.shape[1] != p.shape[2] or present.shape != p.shape[:2]:
                raise InputError(f"symkl {what} embeddings need P (n,K,K) and present (n,K), got {p.shape}, {present.shape}")
            p = np.ascontiguousarray(p, dtype=np.float32)
            if p.size and not np.isfinite(p).all():
                if ids is not None:
                    check_finite(p, ids, f"{what} contextual-diversity embeddings")
                raise NonFiniteError(f"{what} contextual-diversity embeddings hold NaN or inf")
            self.p = torch.from_numpy(p).to(device)
            self.logp = torch.log(self.p.clamp_min(SYMKL_EPS))
            self.present = torch.from_numpy(np.ascontiguousarray(present, dtype=bool)).to(device)
            self.n = p.shape[0]

    def dim_matches(self, other: _Space) -> bool:
        if self.distance == "euclidean":
            return self.x.shape[1] == other.x.shape[1]
        return self.p.shape[1] == other.p.shape[1]

    def norms(self) -> torch.Tensor:
        """Per-row norm (L2 of the row, or Frobenius of P for symkl), chunked like the distances."""
        out = torch.empty(self.n, dtype=torch.float32, device=self.device)
        for start in range(0, self.n, self.chunk_size):
            stop = min(start + self.chunk_size, self.n)
            if self.distance == "euclidean":
                chunk = self.x[start:stop]
                zero = torch.zeros(1, chunk.shape[1], dtype=chunk.dtype, device=self.device)
                out[start:stop] = _euclidean_to(chunk, zero)[:, 0]
            else:
                chunk = self.p[start:stop].reshape(stop - start, -1)
                zero = torch.zeros(1, chunk.shape[1], dtype=chunk.dtype, device=self.device)
                out[start:stop] = _euclidean_to(chunk, zero)[:, 0]
        return out

    def update_min(self, mind: torch.Tensor, source: _Space, rows: Sequence[int] | np.ndarray) -> None:
        """mind[i] = min(mind[i], min_{r in rows} dist(self_i, source_r)), in place, chunked."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return
        if self.distance == "euclidean":
            centers_all = source.x[torch.from_numpy(rows).to(self.device)]
            if rows.size == 1:
                for start in range(0, self.n, self.chunk_size):
                    stop = min(start + self.chunk_size, self.n)
                    d = _euclidean_to(self.x[start:stop], centers_all)[:, 0]
                    torch.minimum(mind[start:stop], d, out=mind[start:stop])
                return
            # Many centers: a tile of row_step x block distances stays under _TILE elements; all centers
            # in one block where possible, so each pool row is gathered for the exact kernel about once.
            block = min(rows.size, 4096)
            row_step = max(1, min(self.chunk_size, _TILE // block))
            c_norm2 = (centers_all * centers_all).sum(dim=1)
            for start in range(0, self.n, row_step):
                stop = min(start + row_step, self.n)
                chunk = self.x[start:stop]
                x_norm2 = (chunk * chunk).sum(dim=1)
                for c0 in range(0, rows.size, block):
                    d = _min_euclidean_pruned(chunk, x_norm2, centers_all[c0 : c0 + block], c_norm2[c0 : c0 + block])
                    torch.minimum(mind[start:stop], d, out=mind[start:stop])
        else:
            for r in rows:
                for start in range(0, self.n, self.chunk_size):
                    stop = min(start + self.chunk_size, self.n)
                    d = _symkl_to(
                        self.p[start:stop], self.logp[start:stop], self.present[start:stop],
                        int(r), source.p, source.logp, source.present,
                    )
                    torch.minimum(mind[start:stop], d.to(mind.dtype), out=mind[start:stop])


def pairwise_min_distance(
    embeddings,
    centers,
    *,
    distance: str = "euclidean",
    device: str = "cpu",
    chunk_size: int = 65536,
) -> np.ndarray:
    """min over centers of the distance from each embedding row to the centers, (N,) float32.

    ``embeddings``/``centers``: (N, d)/(M, d) arrays for ``euclidean``, or ``(P, present)`` tuples from
    :func:`alseg.strategies.contextual_diversity` for ``symkl``. Chunked over rows: memory O(N) plus a
    bounded tile, never N x M at once; each element comes from the exact difference kernel. With no centers every entry is +inf.
    """
    dev = _device(device)
    space = _Space(embeddings, distance, dev, chunk_size, None, "pool")
    ref = _Space(centers, distance, dev, chunk_size, None, "center")
    if space.n and ref.n and not space.dim_matches(ref):
        raise InputError("embeddings and centers have different dimensions")
    mind = torch.full((space.n,), math.inf, dtype=torch.float32, device=dev)
    space.update_min(mind, ref, np.arange(ref.n))
    return mind.cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Greedy k-center (Core-Set, contextual diversity) and k-means++ seeding (BADGE)


def _first_max(values: torch.Tensor, canon: torch.Tensor | None) -> int:
    """Original row of the largest value, ties by id: argmax (first) over values in canonical order.

    ``canon`` maps canonical position -> row; None when the rows already are in id order.
    """
    if canon is None:
        return int(torch.argmax(values))
    return int(canon[int(torch.argmax(values[canon]))])


def _canon_index(order: np.ndarray, device: torch.device) -> torch.Tensor | None:
    if np.array_equal(order, np.arange(order.shape[0])):
        return None
    return torch.from_numpy(order).to(device)


def kcenter(
    unlabeled,
    labeled,
    ids: Sequence[str],
    budget: int,
    *,
    distance: str = "euclidean",
    device: str = "cpu",
    chunk_size: int = 65536,
) -> np.ndarray:
    """Greedy k-center (Sener & Savarese 2018; spec sections 6 and 7), ids in pick order.

    ``unlabeled``: (U, d) float array for ``euclidean``; ``(P (U,K,K), present (U,K))`` for ``symkl``
    (contextual diversity, Agarwal et al. 2020). ``labeled``: the same for the labeled set (may have 0
    rows, or be None); its rows are the initial centers. ``ids`` are aligned with ``unlabeled``.
    Repeats ``budget`` times: pick the unlabeled row farthest from its nearest center (ties by id).
    With no labeled rows the first pick is the row of largest norm (L2 of the row; Frobenius of P).
    Memory O(U*d + U), work O(U*d) per pick, computed in chunks of ``chunk_size`` rows on ``device``.
    """
    sorted_ids, order = _canonical(ids)
    b = _check_budget(budget)
    dev = _device(device)
    ids_in_row_order = np.asarray(ids).astype(str).reshape(-1)
    pool = _Space(unlabeled, distance, dev, chunk_size, ids_in_row_order, "unlabeled")
    if pool.n != sorted_ids.shape[0]:
        raise InputError(f"got {pool.n} unlabeled embeddings for {sorted_ids.shape[0]} ids; they must be aligned")
    n = pool.n
    b = min(b, n)
    canon = _canon_index(order, dev)
    mind = torch.full((n,), math.inf, dtype=torch.float32, device=dev)
    has_labeled = False
    if labeled is not None:
        ref = _Space(labeled, distance, dev, chunk_size, None, "labeled")
        if ref.n:
            if not pool.dim_matches(ref):
                raise InputError("labeled and unlabeled embeddings have different dimensions")
            pool.update_min(mind, ref, np.arange(ref.n))
            has_labeled = True

    picks: list[int] = []
    for step in range(b):
        if step == 0 and not has_labeled:
            row = _first_max(pool.norms(), canon)
        else:
            row = _first_max(mind, canon)
        picks.append(row)
        if step + 1 < b:
            pool.update_min(mind, pool, [row])
        mind[row] = -math.inf  # never picked twice, even when every remaining distance is 0
    return ids_in_row_order[np.asarray(picks, dtype=np.int64)]


def kmeans_pp(
    embeddings: np.ndarray,
    ids: Sequence[str],
    budget: int,
    *,
    rng: np.random.Generator,
    device: str = "cpu",
    chunk_size: int = 65536,
) -> np.ndarray:
    """k-means++ seeding (BADGE, Ash et al. 2020; spec section 8), ids in pick order.

    First center: largest L2 norm (ties by id). Each next center: with w = D^2 (D = Euclidean distance
    to the nearest chosen center, 0 for chosen rows) as a float64 vector in canonical (id) order,
    ``c = cumsum(w)``, draw ``r = rng.random() * c[-1]`` and take ``searchsorted(c, r, 'right')`` - a
    point with D = 0 is never drawn. If all remaining D are 0, the rest is
    ``rng.choice(remaining, size=rest, replace=False)`` over the remaining rows in canonical order.
    """
    sorted_ids, order = _canonical(ids)
    b = _check_budget(budget)
    rng = _check_rng(rng)
    dev = _device(device)
    ids_in_row_order = np.asarray(ids).astype(str).reshape(-1)
    pool = _Space(embeddings, "euclidean", dev, chunk_size, ids_in_row_order, "BADGE")
    if pool.n != sorted_ids.shape[0]:
        raise InputError(f"got {pool.n} embeddings for {sorted_ids.shape[0]} ids; they must be aligned")
    n = pool.n
    b = min(b, n)
    if b == 0:
        return sorted_ids[:0]
    canon = _canon_index(order, dev)
    mind = torch.full((n,), math.inf, dtype=torch.float32, device=dev)
    chosen = np.zeros(n, dtype=bool)  # canonical positions
    rank_of_row = np.empty(n, dtype=np.int64)
    rank_of_row[order] = np.arange(n)

    first = _first_max(pool.norms(), canon)
    picks = [int(rank_of_row[first])]
    chosen[picks[0]] = True
    last_row = first
    while len(picks) < b:
        pool.update_min(mind, pool, [last_row])
        d = mind.cpu().numpy().astype(np.float64)
        if canon is not None:
            d = d[order]
        w = d * d
        w[chosen] = 0.0
        cum = np.cumsum(w)
        total = cum[-1]
        if not total > 0.0:
            remaining = np.flatnonzero(~chosen)
            picks.extend(int(i) for i in rng.choice(remaining, size=b - len(picks), replace=False))
            break
        pos = int(np.searchsorted(cum, rng.random() * total, side="right"))
        if pos >= n:  # r rounded up to the total: take the last point with positive weight
            pos = int(np.flatnonzero(w > 0)[-1])
        picks.append(pos)
        chosen[pos] = True
        last_row = int(order[pos])
    return sorted_ids[np.asarray(picks, dtype=np.int64)]
