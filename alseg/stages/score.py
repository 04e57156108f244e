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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from alseg.stages import no_progress as _noop
from alseg.errors import InputError, UnknownName
from alseg.files.atomic import check_not_input, check_writable, holding_output_locks, removed_on_failure
from alseg.files.hdf5 import PoolReader, pool_digest, sha256_file, write_scores
from alseg.files.manifest import manifest_path, write_manifest
from alseg.registry import SCALAR_SCORES, SCORED, get_strategy
from alseg.registry import MC_SCORES

Progress = Callable[..., None]
# Compute threads of `score` when not given: numpy releases the GIL inside each large array operation,
# so batches score in parallel while a reader thread decompresses the next ones.
MAX_WORKERS = 4


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


def _computed_in_order(items: Iterable[tuple], compute: Callable[..., Any], workers: int) -> Iterator[tuple]:
    """``(item, compute(*item))`` in the order of ``items``, computed on ``workers`` threads, at most
    ``workers + 1`` items in flight."""
    if workers <= 1:
        for item in items:
            yield item, compute(*item)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="alseg-score") as pool:
        pending: collections.deque = collections.deque()
        try:
            for item in items:
                pending.append((item, pool.submit(compute, *item)))
                if len(pending) > workers:
                    done, fut = pending.popleft()
                    yield done, fut.result()
            while pending:
                done, fut = pending.popleft()
                yield done, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()



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

    A reader thread decompresses the next batches while ``workers`` threads (default: the CPU count, at
    most 4) score the current ones; results are stored in file order, identical to a serial pass.
    Memory: about ``2 * workers + 2`` batches of float32 logits in flight.

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
    n_workers = 1 if on_device else min(MAX_WORKERS, os.cpu_count() or 1) if workers is None else int(workers)
    if n_workers < 1:
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

        def stratified(probs: np.ndarray, out: dict[str, Any]) -> None:
            """random-stratified's predicted class counts and clasp's scores (§11.5-11.6) of one batch."""
            if "random-stratified" in names:
                out["class-counts"] = S.class_counts(probs.argmax(axis=1), k)
            if "clasp" in names:
                out["clasp-class"], out["clasp"] = S.clasp_scores(probs)

        def compute_on_device(ids: list[str], logits: np.ndarray, _labels: Any) -> dict[str, Any]:
            import torch

            from alseg import fused as F

            S.check_finite(logits, ids, what=f"logits in {pool_path}")
            p = F.softmax(torch.from_numpy(logits).to(torch_device))
            out: dict[str, Any] = {}
            for name in names:
                if name in SCALAR_SCORES:
                    out[name] = F.aggregate(F.PIXEL_SCORERS[name](p), aggregation, q).cpu().numpy()
            if "contextual-diversity" in names:
                cd, present = F.contextual_diversity(p)
                out["contextual-diversity"], out["contextual-diversity-present"] = cd.cpu().numpy(), present.cpu().numpy()
            if "random-stratified" in names or "clasp" in names:  # cheap next to the rest: on the CPU
                stratified(S.softmax(logits, axis=1), out)
            if badge_params is not None:
                out["badge-logit"] = S.badge_logit_rows(logits, badge_params)
            if crc_thresholds is not None:
                u, v = F.crc(p, torch.as_tensor(crc_thresholds, dtype=torch.float64, device=torch_device))
                maps = (C.crc_image_scores(S.softmax(logits, axis=1), crc_thresholds, return_risk_maps=True)[2]
                        if save_risk_maps > 0 else None)
                out["crc"] = (u.cpu().numpy(), v.cpu().numpy(), maps)
            return out

        needs_probs = any(name not in ("entropy", *MC_SCORES) for name in names) or crc_thresholds is not None

        def compute(ids: list[str], logits: np.ndarray, _labels: Any) -> dict[str, Any]:
            # pure per-batch work (the same functions whatever the thread): results in, file order kept
            if on_device:
                return compute_on_device(ids, logits, _labels)
            out: dict[str, Any] = {}
            if "entropy" in names:  # from the logits directly: half the passes of softmax + entropy
                h = S.pixel_entropy_from_logits(logits)
                if np.isnan(h).any():  # non-finite logits: the error names the images
                    S.check_finite(logits, ids, what=f"logits in {pool_path}")
                out["entropy"] = S.aggregate(h, aggregation, q)
            if not needs_probs:
                return out
            S.check_finite(logits, ids, what=f"logits in {pool_path}")
            probs = S.softmax(logits, axis=1)
            for name in names:
                if name in SCALAR_SCORES and name != "entropy":
                    out[name] = S.aggregate(S.PIXEL_SCORERS[name](probs), aggregation, q)
            if "contextual-diversity" in names:
                out["contextual-diversity"], out["contextual-diversity-present"] = S.contextual_diversity(logits)
            stratified(probs, out)
            if badge_params is not None:
                out["badge-logit"] = S.badge_logit_rows(logits, badge_params)
            if crc_thresholds is not None:
                out["crc"] = C.crc_image_scores(probs, crc_thresholds, return_risk_maps=save_risk_maps > 0)
            return out

        progress(0, total=n)
        row = 0
        # iter_batches crops to each image's valid size (a batch of mixed sizes comes as several runs)
        batches = _read_ahead(pool.iter_batches(batch_size) if needs_logits else iter(()), depth=n_workers + 1)
        computed = _computed_in_order(batches, compute, n_workers)
        try:
            for (ids, _, _), res in computed:
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
            batches.close()
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

