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

import contextlib
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, wait
from typing import Any

import numpy as np
import torch

from alseg.errors import DeviceError, EmptyPoolError, InputError, NonFiniteError, UnknownName
from alseg.strategies import check_finite

__all__ = [
    "DISTANCES",
    "SYMKL_EPS",
    "distance_rows",
    "distances_to",
    "kcenter",
    "kmeans_pp",
    "pairwise_min_distance",
    "random_select",
    "row_slabs",
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


def _top_rows(s: np.ndarray, b: int) -> tuple[np.ndarray, float]:
    """(rows, t): t is the b-th largest value of ``s`` (0 < b < n) and ``rows`` every row with s >= t.

    A strided sample first gives a threshold t0 that about 2b values pass; one comparison over ``s``
    then leaves a few candidates, partitioned alone: O(N) at the speed of one scan, faster than a
    partition of all N (if fewer than b pass, the full partition is used). Exact either way: every row
    with s >= t passes t0 <= t.
    """
    n = s.shape[0]
    if n >= 1 << 16 and 8 * b < n:
        sample = s[:: max(1, n // max(4096, 32 * b))]
        r = min(sample.shape[0] - 1, 2 * b * sample.shape[0] // n + 64)  # rank of t0 from the top
        t0 = np.partition(sample, sample.shape[0] - 1 - r)[sample.shape[0] - 1 - r]
        rows = np.flatnonzero(s >= t0)
        if rows.shape[0] >= b:
            sub = s[rows]
            t = np.partition(sub, sub.shape[0] - b)[sub.shape[0] - b]
            return rows[sub >= t], float(t)
    t = np.partition(s, n - b)[n - b]
    return np.flatnonzero(s >= t), float(t)


def top_k(scores: np.ndarray, ids: Sequence[str], budget: int) -> np.ndarray:
    """The ``budget`` highest-scoring ids, by score descending, ties by id (spec sections 2-4).

    The same ids in the same order as ``lexsort((ids, -scores))[:budget]`` over the id-sorted pool, in
    O(N) + O(k log k): find the k-th largest score t (:func:`_top_rows`); every row above t is in, and
    the rows equal to t (the only place a tie can change the set) are resolved by id. Ids are compared
    as str. Ids must be unique (the files they come from are checked on read); duplicates among the
    returned ids raise :class:`InputError`, a full O(N log N) check of the pool is not made here.
    """
    ids_arr = np.asarray(ids).reshape(-1)
    n = ids_arr.shape[0]
    if n == 0:
        raise EmptyPoolError("there are no candidate ids to select from; the unlabeled pool is empty")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] != n:
        raise InputError(f"got {s.shape[0]} scores for {n} ids; they must be aligned")
    if not np.isfinite(s).all():
        check_finite(s, ids_arr, "scores")  # raises, naming the ids
    b = min(_check_budget(budget), n)
    if b == 0:
        return ids_arr[:0].astype(str)
    if b == n:
        rows = np.arange(n)
    else:
        rows, t = _top_rows(s, b)
        if rows.shape[0] > b:  # ties at t: keep the rows above t and the smallest ids among those equal to t
            above = rows[s[rows] > t]
            equal = rows[s[rows] == t]
            equal = equal[np.argsort(ids_arr[equal].astype(str), kind="stable")[: b - above.shape[0]]]
            rows = np.concatenate([above, equal])
    chosen = ids_arr[rows].astype(str)
    ranked = np.lexsort((chosen, -s[rows]))
    sorted_chosen = np.sort(chosen)
    dup = np.flatnonzero(sorted_chosen[1:] == sorted_chosen[:-1])
    if dup.size:
        raise InputError(f"candidate ids must be unique; {sorted_chosen[dup[0]]!r} appears more than once")
    return chosen[ranked]


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


# Bytes of one block of rows in the CPU distance pass: few enough blocks that per-op dispatch stays small,
# small enough that the difference block stays in the last-level cache (measured: 4 MiB beat 0.125-2 MiB).
_CPU_BLOCK_BYTES = 4 << 20
# Fewest rows per slab of a CPU pass (more slabs than rows / this would cost more than they save).
_MIN_SLAB_ROWS = 2048


class _SlabWorkers:
    """One thread per core, each running one contiguous slab of rows of a CPU pass, with torch's own
    intra-op parallelism off inside it.

    A pass runs as many cache-sized blocks; with torch's OpenMP threads every block is one parallel
    region ending in a barrier, and on a machine whose cores also run other work each barrier waits for
    a descheduled thread (measured on 2 shared cores: the 10^6 x 361 pass 5-10x slower than one
    matrix-vector product). One slab per thread joins once per pass instead. Under OpenMP
    ``torch.set_num_threads`` sets the calling thread's count (and torch's default for threads started
    later, which is put back): the workers' 1 leaves every other thread as it was.
    """

    def __init__(self, n_threads: int):
        self.queues: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(n_threads)]
        previous = torch.get_num_threads()
        ready = threading.Barrier(n_threads + 1)
        for q in self.queues:
            threading.Thread(target=self._loop, args=(q, ready), name=_SLAB_THREAD, daemon=True).start()
        ready.wait()
        torch.set_num_threads(previous)  # also torch's default for threads started later

    @staticmethod
    def _loop(q: queue.SimpleQueue, ready: threading.Barrier) -> None:
        torch.set_num_threads(1)
        ready.wait()
        while True:
            fn, args, fut = q.get()
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # raised in the caller by fut.result()
                fut.set_exception(exc)

    def map(self, fn: Callable[..., Any], arg_list: Sequence[tuple]) -> list[Any]:
        futures = []
        for q, args in zip(self.queues, arg_list):
            fut: Future = Future()
            q.put((fn, args, fut))
            futures.append(fut)
        wait(futures)  # every slab has finished with the shared tensors before anything is raised
        return [f.result() for f in futures]


_SLAB_THREAD = "alseg-slab"
_WORKERS: _SlabWorkers | None = None
_WORKERS_LOCK = threading.Lock()


def row_slabs(n: int, device: torch.device, fn: Callable[[int, int], Any]) -> list[Any]:
    """``[fn(start, stop), ...]`` over contiguous slabs covering rows 0..n-1, in row order.

    On CPU one slab per torch thread (fewer for a small pass, at least ``_MIN_SLAB_ROWS`` rows each),
    each on a worker thread (see :class:`_SlabWorkers`); on any other device one slab in the calling
    thread. ``fn`` must only touch rows start..stop-1 of shared tensors, so the result does not depend
    on the slabs. Called from inside a slab it runs inline (no nested hand-off).
    """
    global _WORKERS
    if device.type != "cpu" or threading.current_thread().name == _SLAB_THREAD:
        return [fn(0, n)]
    n_threads = torch.get_num_threads()
    t = max(1, min(n_threads, n // _MIN_SLAB_ROWS))
    with _WORKERS_LOCK:
        if _WORKERS is None or len(_WORKERS.queues) < t:
            _WORKERS = _SlabWorkers(max(n_threads, os.cpu_count() or 1))
        workers = _WORKERS
    return workers.map(fn, [(n * i // t, n * (i + 1) // t) for i in range(t)])


_BLAS: Any = None  # threadpoolctl controller of the loaded BLAS libraries, made once (0.5 ms each time)


@contextlib.contextmanager
def _blas_one_thread(active: bool = True) -> Iterator[None]:
    """numpy's BLAS on one thread while slab workers each run their own product (threadpoolctl; a
    no-op without it: still correct, the calls then share BLAS's threads)."""
    global _BLAS
    if active and _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - scikit-learn brings threadpoolctl
            _BLAS = False
        else:
            _BLAS = ThreadpoolController().select(user_api="blas")
    if not active or not _BLAS:
        yield
        return
    with _BLAS.limit(limits=1):
        yield


def _pair_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_i|| for paired rows (b may be one row, broadcast): the one exact kernel of the device.

    Difference first, then the row norm (no ||a||^2 + ||b||^2 - 2ab expansion): identical rows give
    exactly 0, and an element's value does not depend on which other rows share its block. On CPU the
    row norm of the difference of a cache-resident block runs near the speed of one matrix-vector
    product, 1.6x faster than ``torch.cdist``; other devices use cdist's difference mode, one fused
    read of the rows.
    """
    if a.device.type == "cpu":
        return torch.linalg.vector_norm(a - b, dim=-1)
    b = b.expand_as(a) if b.dim() == 1 or b.shape[0] == 1 else b
    return torch.cdist(a.unsqueeze(1), b.unsqueeze(1), compute_mode="donot_use_mm_for_euclid_dist").view(-1)


def distance_rows(x: torch.Tensor, c: torch.Tensor, out: torch.Tensor, start: int, stop: int, *,
                  chunk_size: int = 65536) -> torch.Tensor:
    """``out[start:stop] = ||x[start:stop] - c||`` (c: (d,)), in blocks, each element by
    :func:`_pair_distances`: cache-sized blocks on CPU, ``chunk_size`` rows elsewhere."""
    d = x.shape[1]
    c = c.reshape(1, d)
    if x.device.type == "cpu":
        step = max(1, min(int(chunk_size), _CPU_BLOCK_BYTES // max(1, d * x.element_size())))
        buf = torch.empty((min(step, max(stop - start, 1)), d), dtype=x.dtype)
        for s in range(start, stop, step):
            e = min(s + step, stop)
            diff = buf[: e - s]
            torch.sub(x[s:e], c, out=diff)
            torch.linalg.vector_norm(diff, dim=1, out=out[s:e])
    else:
        for s in range(start, stop, int(chunk_size)):
            e = min(s + int(chunk_size), stop)
            out[s:e] = torch.cdist(x[s:e], c, compute_mode="donot_use_mm_for_euclid_dist")[:, 0]
    return out[start:stop]


def distances_to(x: torch.Tensor, c: torch.Tensor, out: torch.Tensor | None = None, *,
                 chunk_size: int = 65536) -> torch.Tensor:
    """Euclidean distance from every row of ``x`` (N, d) to one point ``c`` (d,), (N,) in x's dtype:
    one pass over ``x`` (:func:`distance_rows` over :func:`row_slabs`); the result does not depend on
    the blocking. ``out`` (N,) is filled and returned when given."""
    n = x.shape[0]
    if out is None:
        out = torch.empty(n, dtype=x.dtype, device=x.device)
    row_slabs(n, x.device, lambda start, stop: distance_rows(x, c, out, start, stop, chunk_size=chunk_size))
    return out


def slab_best(values: torch.Tensor, start: int, rank: torch.Tensor | None) -> tuple[float, Any]:
    """The largest of ``values`` (one slab, its first row ``start``) and where: the first row holding it
    (``rank`` None: rows are in id order) or all rows holding it. Merge slabs with :func:`merge_best`."""
    top = values.max()
    if rank is None:
        return float(top), start + int(torch.argmax(values))
    return float(top), start + torch.nonzero(values == top).view(-1)


def merge_best(results: Sequence[tuple[float, Any]], rank: torch.Tensor | None) -> int:
    """Row of the largest value over slabs, ties by id (smallest canonical ``rank``; row order if None)."""
    top = max(r[0] for r in results)
    if rank is None:
        return next(int(r[1]) for r in results if r[0] == top)
    rows = torch.cat([r[1] for r in results if r[0] == top])
    return int(rows[torch.argmin(rank[rows])]) if rows.numel() > 1 else int(rows[0])


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
    """min_j ||x_i - c_j|| per row, equal to the minimum of :func:`_pair_distances` element for element.

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
        out.scatter_reduce_(0, r, _pair_distances(x[r], c[k]), reduce="amin")
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
        self._dist: torch.Tensor | None = None  # (n,) buffer of the one-center pass
        self._norm2: torch.Tensor | None = None  # (n,) squared row norms (CPU one-center pass)
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
        """Per-row norm (L2 of the row, or Frobenius of P for symkl): the distance to the origin."""
        flat = self.x if self.distance == "euclidean" else self.p.reshape(self.n, -1)
        zero = torch.zeros(flat.shape[1], dtype=flat.dtype, device=self.device)
        return distances_to(flat, zero, chunk_size=self.chunk_size)

    def update_min_one(self, mind: torch.Tensor, center: torch.Tensor, rank: torch.Tensor | None = None,
                       want_best: bool = False) -> int | None:
        """mind = min(mind, dist(rows, center)) for one euclidean center (d,): one pass, slab by slab;
        with ``want_best`` also the row of the largest mind afterwards (ties by id, see :func:`merge_best`).

        On CPU a matrix-vector product first bounds each row's distance (||x||^2 + ||c||^2 - 2 x.c, error
        below ``tol * (||x||^2 + ||c||^2)``, as in :func:`_min_euclidean_pruned`); only the rows whose
        bound could lower their min get the exact kernel, so mind holds exact kernel values, the same as
        the plain pass. The product runs in numpy's BLAS, one thread per slab (see
        :func:`_blas_one_thread`): 1.5-2x faster per core here than the blocked difference or torch.mv.
        """
        if self._dist is None:
            self._dist = torch.empty(self.n, dtype=torch.float32, device=self.device)
        dist = self._dist
        pruned = self.device.type == "cpu"
        if pruned:
            if self._norm2 is None:  # once: squared norms, block by block (no (n, d) temporary)
                norm2 = self._norm2 = torch.empty(self.n, dtype=torch.float32)
                step = max(1, _CPU_BLOCK_BYTES // (4 * self.x.shape[1]))

                def squares(a: int, b: int) -> None:
                    for s0 in range(a, b, step):
                        blk = self.x[s0 : min(s0 + step, b)]
                        torch.linalg.vecdot(blk, blk, dim=1, out=norm2[s0 : s0 + blk.shape[0]])

                row_slabs(self.n, self.device, squares)
            x_np, c_np = self.x.numpy(), center.numpy()
            c_norm2 = float(torch.dot(center, center))
            tol = 8.0 * max(self.x.shape[1], 16) * float(torch.finfo(torch.float32).eps) + 1e-6

        def slab(start: int, stop: int):
            m = mind[start:stop]
            if pruned:
                approx = self._norm2[start:stop] + c_norm2
                bound = approx * tol
                approx.sub_(torch.from_numpy(x_np[start:stop] @ c_np), alpha=2.0)
                rows = torch.nonzero(approx.sub_(bound) <= m * m).view(-1)
            if not pruned or 2 * rows.numel() > stop - start:  # most rows: the plain blocked pass
                d = distance_rows(self.x, center, dist, start, stop, chunk_size=self.chunk_size)
                torch.minimum(m, d, out=m)
            else:
                step = max(1, _CPU_BLOCK_BYTES // (4 * self.x.shape[1]))
                for p0 in range(0, rows.numel(), step):
                    r = rows[p0 : p0 + step]
                    m[r] = torch.minimum(m[r], _pair_distances(self.x[start + r], center))
            return slab_best(m, start, rank) if want_best else None

        with _blas_one_thread(pruned):
            results = row_slabs(self.n, self.device, slab)
        return merge_best(results, rank) if want_best else None

    def update_min(self, mind: torch.Tensor, source: _Space, rows: Sequence[int] | np.ndarray) -> None:
        """mind[i] = min(mind[i], min_{r in rows} dist(self_i, source_r)), in place, chunked."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return
        if self.distance == "euclidean":
            if rows.size == 1:  # one pass over the rows (every pick of k-center and k-means++)
                self.update_min_one(mind, source.x[int(rows[0])])
                return
            centers_all = source.x[torch.from_numpy(rows).to(self.device)]
            # Many centers: a tile of row_step x block distances stays under _TILE / 4 elements (the pruned
            # kernel keeps ~5 such temporaries alive: peak memory 1.35x the embeddings at N = 1e5, 1 000
            # centers, against 2.05x at _TILE); all centers in one block where possible, so each pool row
            # is gathered for the exact kernel about once.
            block = min(rows.size, 4096)
            row_step = max(1, min(self.chunk_size, _TILE // 4 // block))
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


def _first_max(values: torch.Tensor, rank: torch.Tensor | None) -> int:
    """Row of the largest value, ties by id (the smallest canonical rank among the rows holding it).

    ``rank`` maps row -> position in id order; None when the rows already are in id order. No gather of
    the whole vector per pick: the maximum, then the (usually one) rows that hold it.
    """
    if rank is None:
        return int(torch.argmax(values))
    rows = torch.nonzero(values == values.max()).view(-1)
    if rows.numel() == 1:
        return int(rows[0])
    return int(rows[torch.argmin(rank[rows])])


def _rank_index(order: np.ndarray, device: torch.device) -> torch.Tensor | None:
    """row -> canonical rank for ``order`` (canonical position -> row); None if already in id order."""
    if np.array_equal(order, np.arange(order.shape[0])):
        return None
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    return torch.from_numpy(rank).to(device)


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
    rank = _rank_index(order, dev)
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
    row = _first_max(mind if has_labeled else pool.norms(), rank) if b else 0
    for step in range(b):
        picks.append(row)
        mind[row] = -math.inf  # never picked twice, even when every remaining distance is 0
        if step + 1 < b:
            if distance == "euclidean":  # the update's pass also finds the next pick
                row = pool.update_min_one(mind, pool.x[row], rank, want_best=True)
            else:
                pool.update_min(mind, pool, [row])
                row = _first_max(mind, rank)
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
    rank = _rank_index(order, dev)
    mind = torch.full((n,), math.inf, dtype=torch.float32, device=dev)
    chosen = np.zeros(n, dtype=bool)  # canonical positions
    rank_of_row = np.empty(n, dtype=np.int64)
    rank_of_row[order] = np.arange(n)

    first = _first_max(pool.norms(), rank)
    picks = [int(rank_of_row[first])]
    chosen[picks[0]] = True
    last_row = first
    while len(picks) < b:
        pool.update_min(mind, pool, [last_row])
        d = mind.cpu().numpy().astype(np.float64)
        if rank is not None:
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
