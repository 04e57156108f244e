"""``alseg score``: per-image scores and per-strategy embeddings from a pool file, in one streaming pass.

Reads: a pool file (``infer``), and for ``crc`` a calibration JSON (``calibrate``).
Writes: a scores file (``docs/hdf5.md``) and its manifest.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from alseg.stages import no_progress as _noop
from alseg.errors import InputError, OutputError, UnknownName
from alseg.files.atomic import check_not_input, check_writable, holding_output_locks, removed_on_failure
from alseg.files.hdf5 import PoolReader, pool_digest, sha256_file, write_scores
from alseg.files.manifest import manifest_path, write_manifest
from alseg.halfs import to_float32
from alseg.registry import SCALAR_SCORES, SCORED, get_strategy
from alseg.registry import MC_SCORES

Progress = Callable[..., None]
# Scoring processes of `score` when not given: min(MAX_WORKERS, CPUs) once the pool's stored logits reach
# PROCESS_MIN_BYTES (~400 Cityscapes-sized images) on a machine of at least PROCESS_MIN_CPUS, else one (a
# process takes ~0.4 s to start, and on 2 cores two processes only matched one, scripts/bench_score.py).
MAX_WORKERS = 8
PROCESS_MIN_BYTES = 512 * 2**20
PROCESS_MIN_CPUS = 4
_TASK_BATCHES = 4  # batches per task of a scoring process


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


def _read_ahead(batches: Iterable[Any], depth: int) -> Iterator[Any]:
    """The items of ``batches`` in order, produced by a background thread up to ``depth`` items ahead.

    The thread does the HDF5 reads and decompression while the caller computes. An exception in the
    thread is raised here; leaving early (close, exception) stops the thread and waits for it, so the
    file can be closed right after.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in batches:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failed(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=run, name="alseg-score-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass(frozen=True)
class _BatchScorer:
    """What ``score`` computes from one batch of logits; picklable, so worker processes run the same code.

    ``device``: a torch device name (the fused kernels, :mod:`alseg.fused`) or None (NumPy)."""

    names: tuple[str, ...]
    n_classes: int
    aggregation: str
    q: float
    crc_thresholds: np.ndarray | None
    badge_params: dict | None
    risk_maps: bool
    pool_path: str
    device: str | None = None

    def __call__(self, ids: list[str], logits: np.ndarray) -> dict[str, Any]:
        """Per-batch results; ``logits`` as stored (float16): the entropy kernel converts tile by tile."""
        from alseg import strategies as S

        if self.device is not None:
            return self._on_device(ids, to_float32(logits))
        names, agg, q = self.names, self.aggregation, self.q
        out: dict[str, Any] = {}
        if "entropy" in names:  # from the logits directly: half the passes of softmax + entropy
            h = S.pixel_entropy_from_logits(logits)
            if np.isnan(h).any():  # non-finite logits: the error names the images
                S.check_finite(logits, ids, what=f"logits in {self.pool_path}")
            out["entropy"] = S.aggregate(h, agg, q)
        if not any(name not in ("entropy", *MC_SCORES) for name in names) and self.crc_thresholds is None:
            return out
        logits = to_float32(logits)
        S.check_finite(logits, ids, what=f"logits in {self.pool_path}")
        probs = S.softmax(logits, axis=1)
        for name in names:
            if name in SCALAR_SCORES and name != "entropy":
                out[name] = S.aggregate(S.PIXEL_SCORERS[name](probs), agg, q)
        if "contextual-diversity" in names:
            out["contextual-diversity"], out["contextual-diversity-present"] = S.contextual_diversity(logits)
        self._stratified(probs, out)
        if self.badge_params is not None:
            out["badge-logit"] = S.badge_logit_rows(logits, self.badge_params, probs=probs)
        if self.crc_thresholds is not None:
            from alseg import crc as C

            out["crc"] = C.crc_image_scores(probs, self.crc_thresholds, return_risk_maps=self.risk_maps)
        return out

    def _stratified(self, probs: np.ndarray, out: dict[str, Any]) -> None:
        """random-stratified's predicted class counts and clasp's scores (§11.5-11.6) of one batch."""
        from alseg import strategies as S

        if "random-stratified" in self.names:
            out["class-counts"] = S.class_counts(S.predicted_classes(probs), self.n_classes)
        if "clasp" in self.names:
            out["clasp-class"], out["clasp"] = S.clasp_scores(probs)

    def _on_device(self, ids: list[str], logits: np.ndarray) -> dict[str, Any]:
        import torch

        from alseg import crc as C
        from alseg import fused as F
        from alseg import strategies as S

        device = torch.device(self.device)
        names, agg, q = self.names, self.aggregation, self.q
        S.check_finite(logits, ids, what=f"logits in {self.pool_path}")
        p = F.softmax(torch.from_numpy(logits).to(device))
        out: dict[str, Any] = {}
        for name in names:
            if name in SCALAR_SCORES:
                out[name] = F.aggregate(F.PIXEL_SCORERS[name](p), agg, q).cpu().numpy()
        if "contextual-diversity" in names:
            cd, present = F.contextual_diversity(p)
            out["contextual-diversity"], out["contextual-diversity-present"] = cd.cpu().numpy(), present.cpu().numpy()
        if "random-stratified" in names or "clasp" in names:  # cheap next to the rest: on the CPU
            self._stratified(S.softmax(logits, axis=1), out)
        if self.badge_params is not None:
            out["badge-logit"] = S.badge_logit_rows(logits, self.badge_params)
        if self.crc_thresholds is not None:
            u, v = F.crc(p, torch.as_tensor(self.crc_thresholds, dtype=torch.float64, device=device))
            maps = (C.crc_image_scores(S.softmax(logits, axis=1), self.crc_thresholds, return_risk_maps=True)[2]
                    if self.risk_maps else None)
            out["crc"] = (u.cpu().numpy(), v.cpu().numpy(), maps)
        return out


def _scored_batches(pool: PoolReader, scorer: _BatchScorer, batch_size: int,
                    workers: int) -> Iterator[tuple[list[str], dict[str, Any]]]:
    """``(ids, scorer(ids, logits))`` for every batch of ``pool``, in file order (none for ``workers`` 0).

    One worker: a reader thread reads ahead while this process scores (h5py's copies overlap the kernels).
    More: ``workers`` processes, each opening the pool and reading and scoring its own runs of
    ``_TASK_BATCHES`` batches into one reused buffer; only the results travel back. Not threads: h5py holds the GIL while it reads, and the scoring kernels' many short NumPy
    calls hand the GIL back and forth, so two threads scored 1.05x as fast as one (measured, 2 cores).
    At most two tasks per worker are in flight, so memory stays flat in N.
    """
    if workers == 0:
        return
    if workers == 1:
        # iter_batches crops to each image's valid size (a batch of mixed sizes comes as several runs)
        batches = _read_ahead(pool.iter_batches(batch_size, native=True), depth=2)
        try:
            for ids, logits, _ in batches:
                yield ids, scorer(ids, logits)
        finally:
            batches.close()
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ids, step = list(pool.ids), batch_size * _TASK_BATCHES
    # spawn, not fork: the parent holds the pool open in HDF5 and may hold torch's thread pools
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(str(pool.path), scorer, batch_size))
    pending: collections.deque = collections.deque()
    try:
        for start in range(0, len(ids), step):
            pending.append(executor.submit(_worker_score, ids[start : start + step]))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    except BrokenProcessPool:
        raise OutputError(f"{pool.path}: a scoring process died (out of memory, or a Python script calling "
                          "score without the `if __name__ == '__main__':` guard); rerun with --workers 1") from None
    finally:
        for fut in pending:
            fut.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


_WORKER: dict[str, Any] = {}  # a scoring process's open pool, scorer and batch size


def _worker_init(pool_path: str, scorer: _BatchScorer, batch_size: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the pool
    os.environ["OMP_NUM_THREADS"] = "1"  # torch (contextual diversity) is imported later: one thread each
    try:
        from threadpoolctl import threadpool_limits

        _WORKER["blas"] = threadpool_limits(1)  # the processes are the parallelism
    except ImportError:
        pass
    _WORKER.update(pool=PoolReader(pool_path), scorer=scorer, batch_size=batch_size)


def _worker_score(ids: list[str]) -> list[tuple[list[str], dict[str, Any]]]:
    pool, scorer = _WORKER["pool"], _WORKER["scorer"]
    return [(batch_ids, scorer(batch_ids, logits))
            for batch_ids, logits, _ in pool.iter_batches(_WORKER["batch_size"], ids=ids, native=True, reuse=True)]


def _mc_scores(pool: PoolReader, names: Sequence[str], *, aggregation: str, q: float, batch_size: int,
               progress: Progress = _noop, ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Image scores {name: (N,) float64} of the MC strategies ``names`` (``bald``, ``mc-entropy``,
    ``variation-ratio``) from the pool's ``/mc`` maps, streamed one batch at a time, in ``ids`` order
    (default: file order); :func:`alseg.mc.mc_image_scores` per batch."""
    from alseg.mc import mc_image_scores

    n = len(pool) if ids is None else len(ids)
    out = {name: np.empty(n, dtype=np.float64) for name in names}
    row = 0
    batches = _read_ahead(pool.iter_mc(batch_size, ids=ids), depth=2)
    try:
        for batch_ids, maps in batches:
            b = len(batch_ids)
            for name in names:
                out[name][row : row + b] = mc_image_scores(maps, name, pool.n_classes, aggregation=aggregation, q=q,
                                                           ids=batch_ids)
            row += b
            progress(b)
    finally:
        batches.close()
    return out


@dataclass
class ScoreResult:
    out_path: str
    n_images: int
    strategies: list[str]
    datasets: list[str] = field(default_factory=list)
    seconds: float = 0.0


@holding_output_locks("out_path")
def score(
    pool_path: str | Path,
    *,
    strategies: Sequence[str],
    out_path: str | Path,
    calibration_path: str | Path | None = None,
    aggregation: str = "mean",
    q: float = 10.0,
    save_risk_maps: int = 0,
    batch_size: int = 16,
    overwrite: bool = False,
    progress: Progress = _noop,
    workers: int | None = None,
    device: str = "cpu",
    unit: str = "image",
    region_reduction: str = "mean",
    region_store: str | Path | None = None,
    dataset_config: str | None = None,
    data_root: str | Path | None = None,
) -> ScoreResult:
    """Score every image of ``pool_path`` for each strategy in ``strategies``; write ``out_path``.

    ``workers`` processes read and score runs of batches in parallel (default: one for pools of under
    :data:`PROCESS_MIN_BYTES` of stored logits or machines of under :data:`PROCESS_MIN_CPUS` CPUs, else
    the CPU count, at most :data:`MAX_WORKERS`); results are stored in file order, identical to a serial
    pass. Memory: a few batches of logits per process. A script that calls this with ``workers > 1``
    needs the usual ``if __name__ == "__main__":`` guard (the processes are spawned).

    ``device`` other than ``cpu``: the softmax, pixel scores, contextual diversity and the CRC statistics
    run in torch on that device (:mod:`alseg.fused`, one worker); BADGE's pooled embedding and saved risk
    maps are still computed on the CPU. Scores agree with the CPU path to float rounding.
    """
    from alseg import strategies as S

    t0 = time.perf_counter()
    names = list(dict.fromkeys(strategies))
    if str(unit).strip() != "image":  # every region of every image (docs/regions.md): a region-scores file
        from alseg.stages.select_regions import score_regions

        res = score_regions(pool_path, strategies=names, unit=unit, out_path=out_path, reduction=region_reduction,
                            q=q, calibration_path=calibration_path, config=dataset_config, data_root=data_root,
                            region_store=region_store, batch_size=batch_size, overwrite=overwrite, progress=progress)
        return ScoreResult(out_path=res["out_path"], n_images=res["n_images"], strategies=names,
                           datasets=[f"scores/{n} ({res['n_regions']} {res['unit']} regions)" for n in names],
                           seconds=res["seconds"])
    for name in names:
        strat = get_strategy(name)
        if name not in SCORED:
            hint = "it needs no scores" if strat.needs == "nothing" else (
                "select computes it from the pool file" if strat.needs == "embedding" else
                "score its base score (e.g. --strategy entropy) and select with --base-score")
            raise UnknownName(f"strategy {name!r} has no `score` step ({hint}); scored strategies: {', '.join(SCORED)}")
    if aggregation not in S.AGGREGATIONS:
        raise UnknownName(f"--aggregation: unknown {aggregation!r}; choose one of: {', '.join(S.AGGREGATIONS)}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    from alseg.device import resolve_device

    # the default CPU path is NumPy: it need not import torch (seconds) to learn that
    torch_device = None if device.strip().lower() == "cpu" else resolve_device(device)
    on_device = torch_device is not None and torch_device.type != "cpu"
    n_workers = 1 if on_device else None if workers is None else int(workers)
    if n_workers is not None and n_workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if save_risk_maps < 0:
        raise InputError(f"--save-risk-maps must be >= 0 (how many maps to keep), got {save_risk_maps}")
    if not 0.0 < q <= 100.0:
        raise InputError(f"--q (the top-q percentage) must be in (0, 100], got {q}")
    check_not_input([out_path, manifest_path(out_path)], [pool_path, calibration_path])
    out_path = check_writable(out_path, overwrite=overwrite)

    calibration = None
    if "crc" in names:
        if calibration_path is None:
            raise InputError("strategy 'crc' needs --calibration crc.json (from `alseg calibrate`)")
        from alseg.files.calibration import check_matches_pool, read_calibration

        calibration = read_calibration(calibration_path)
    with PoolReader(pool_path) as pool:
        if calibration is not None:
            check_matches_pool(calibration, calibration_path, pool.class_names, pool_path)
        n, k = len(pool), pool.n_classes
        h, w = pool.shape
        mc_names = [name for name in names if name in MC_SCORES]  # from /mc (`infer --mc T`), not the logits
        if mc_names and not pool.has_mc:
            raise InputError(f"{pool_path}: holds no MC-dropout statistics, which {mc_names[0]!r} needs; run "
                             "`alseg infer --mc T` (e.g. --mc 10) to write them")
        needs_logits = len(mc_names) < len(names)
        scores: dict[str, np.ndarray] = {}
        embeddings: dict[str, np.ndarray] = {}
        params: dict[str, dict] = {}
        for name in names:
            if name in SCALAR_SCORES:
                scores[name] = np.empty(n, dtype=np.float64)
                params[name] = {"aggregation": aggregation, "q": q}
        if "contextual-diversity" in names:
            embeddings["contextual-diversity"] = np.empty((n, k, k), dtype=np.float32)
            embeddings["contextual-diversity-present"] = np.empty((n, k), dtype=bool)
            params["contextual-diversity"] = {"epsilon": 1e-8}
        if "random-stratified" in names:  # §11.5: predicted class counts n_c(x) of every image
            embeddings["class-counts"] = np.empty((n, k), dtype=np.int64)
            params["class-counts"] = {"source": "prediction", "unit": "logit cell", "class_names": pool.class_names}
        if "clasp" in names:  # §11.6: s(x) = mean entropy, s_c(x) = entropy weighted by p_c
            scores["clasp"] = np.empty(n, dtype=np.float64)
            embeddings["clasp-class"] = np.empty((n, k), dtype=np.float64)
            params["clasp"] = params["clasp-class"] = {"entropy": "normalised", "reduction": "mean",
                                                       "class_names": pool.class_names}
        if "badge" in names:
            # one dimension for every image: window pooling for one image size, a fixed grid otherwise
            badge = S.badge_logit_params(k, h, w, variable_size=pool.variable_size)
            embeddings["badge-logit"] = np.empty((n, S.badge_logit_dim(k, h, w, badge)), dtype=np.float32)
            params["badge-logit"] = badge
        kept: list[tuple[float, str, np.ndarray]] = []
        if calibration is not None:
            from alseg import crc as C

            # t̂ for calibrated classes (even 0), t_min for uncalibrated ones: as the file records them
            thresholds = np.asarray(calibration["query_thresholds"], dtype=np.float64)
            t_min = float(calibration["t_min"])
            scores["crc"] = np.empty(n, dtype=np.float64)
            embeddings["crc"] = np.empty((n, k * k), dtype=np.float32)
            params["crc"] = {"calibration": str(calibration_path), "alpha": calibration["alpha"], "t_min": t_min,
                             "calibration_sha256": sha256_file(calibration_path)}
        crc_thresholds = thresholds if calibration is not None else None
        badge_params = badge if "badge" in names else None

        scorer = _BatchScorer(
            names=tuple(names), n_classes=k, aggregation=aggregation, q=q, crc_thresholds=crc_thresholds,
            badge_params=badge_params, risk_maps=save_risk_maps > 0, pool_path=str(pool_path),
            device=str(torch_device) if on_device else None,
        )
        progress(0, total=n)
        row = 0
        if n_workers is None:  # processes pay off once reading and scoring take longer than starting them
            cpus = os.cpu_count() or 1
            n_workers = 1 if pool.logits_nbytes < PROCESS_MIN_BYTES or cpus < PROCESS_MIN_CPUS else min(MAX_WORKERS, cpus)
        # MC strategies alone read /mc below, not the logits: no batches (a generator, so close() works)
        computed = _scored_batches(pool, scorer, batch_size, n_workers if needs_logits else 0)
        try:
            for ids, res in computed:
                b = len(ids)
                sl = slice(row, row + b)
                for name in names:
                    if name in SCALAR_SCORES:
                        scores[name][sl] = res[name]
                if "contextual-diversity" in names:
                    embeddings["contextual-diversity"][sl] = res["contextual-diversity"]
                    embeddings["contextual-diversity-present"][sl] = res["contextual-diversity-present"]
                if badge_params is not None:
                    embeddings["badge-logit"][sl] = res["badge-logit"]
                if "random-stratified" in names:
                    embeddings["class-counts"][sl] = res["class-counts"]
                if "clasp" in names:
                    scores["clasp"][sl], embeddings["clasp-class"][sl] = res["clasp"], res["clasp-class"]
                if crc_thresholds is not None:
                    u, v, maps = res["crc"]
                    scores["crc"][sl] = u
                    embeddings["crc"][sl] = v
                    if save_risk_maps > 0:
                        # keep the N most uncertain maps seen so far (ties: smaller id first)
                        kept += [(float(u[i]), image_id, maps[i].astype(np.float16)) for i, image_id in enumerate(ids)]
                        kept = sorted(kept, key=lambda t: (-t[0], t[1]))[:save_risk_maps]
                row += b
                progress(b)
        finally:
            computed.close()
        if mc_names:
            progress(0, total=2 * n if needs_logits else n)
            for name, values in _mc_scores(pool, mc_names, aggregation=aggregation, q=q, batch_size=batch_size,
                                           progress=progress).items():
                scores[name] = values
                params[name] = {"aggregation": aggregation, "q": q, "T": pool.mc["T"], "scope": pool.mc["scope"]}
        pool_ids = list(pool.ids)
    risk_maps = None
    if save_risk_maps > 0 and calibration is not None:
        # maps of different sizes are stored zero-padded with /risk_maps/sizes
        risk_maps = ([t[1] for t in kept], [t[2] for t in kept] if kept else np.zeros((0, h, w)))
    write_scores(
        out_path, pool_ids, scores=scores, embeddings=embeddings, params=params, risk_maps=risk_maps,
        attrs={"pool_path": str(pool_path), "pool_sha256": pool_digest(pool_path)}, overwrite=overwrite,
    )
    result = ScoreResult(
        out_path=str(out_path), n_images=n, strategies=names,
        datasets=[f"scores/{s}" for s in scores] + [f"embeddings/{e}" for e in embeddings],
        seconds=time.perf_counter() - t0,
    )
    with removed_on_failure(out_path):
        write_manifest(
            out_path, stage="score",
            args={"pool_path": pool_path, "strategies": names, "calibration_path": calibration_path,
                  "aggregation": aggregation, "q": q, "save_risk_maps": save_risk_maps, "device": device},
            inputs=[pool_path, calibration_path], outputs=[out_path], seconds=result.seconds, result=result,
        )
    return result

