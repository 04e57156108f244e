"""``alseg score``: per-image scores and per-strategy embeddings from a pool file, in one streaming pass.

Reads: a pool file (``infer``), and for ``crc`` a calibration JSON (``calibrate``).
Writes: a scores file (``docs/hdf5.md``) and its manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from alseg.stages import no_progress as _noop
from alseg.errors import InputError, UnknownName
from alseg.files.atomic import check_not_input, check_writable, holding_output_locks, removed_on_failure
from alseg.files.hdf5 import PoolReader, sha256_file, write_scores
from alseg.files.manifest import manifest_path, write_manifest
from alseg.registry import SCALAR_SCORES, SCORED, get_strategy

Progress = Callable[..., None]



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
) -> ScoreResult:
    """Score every image of ``pool_path`` for each strategy in ``strategies``; write ``out_path``."""
    from alseg import strategies as S

    t0 = time.perf_counter()
    names = list(dict.fromkeys(strategies))
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
        progress(0, total=n)
        row = 0
        # iter_batches crops to each image's valid size (a batch of mixed sizes comes as several runs)
        for ids, logits, _ in pool.iter_batches(batch_size):
            b = len(ids)
            S.check_finite(logits, ids, what=f"logits in {pool_path}")
            probs = S.softmax(logits, axis=1)
            sl = slice(row, row + b)
            for name in names:
                if name in SCALAR_SCORES:
                    scores[name][sl] = S.aggregate(S.PIXEL_SCORERS[name](probs), aggregation, q)
            if "contextual-diversity" in names:
                P, present = S.contextual_diversity(logits)
                embeddings["contextual-diversity"][sl] = P
                embeddings["contextual-diversity-present"][sl] = present
            if "badge" in names:
                embeddings["badge-logit"][sl] = S.badge_logit_rows(logits, badge)
            if calibration is not None:
                u, v, maps = C.crc_image_scores(probs, thresholds, return_risk_maps=save_risk_maps > 0)
                scores["crc"][sl] = u
                embeddings["crc"][sl] = v
                if save_risk_maps > 0:
                    # keep the N most uncertain maps seen so far (ties: smaller id first)
                    kept += [(float(u[i]), image_id, maps[i].astype(np.float16)) for i, image_id in enumerate(ids)]
                    kept = sorted(kept, key=lambda t: (-t[0], t[1]))[:save_risk_maps]
            row += b
            progress(b)
        pool_ids = list(pool.ids)
    risk_maps = None
    if save_risk_maps > 0 and calibration is not None:
        # maps of different sizes are stored zero-padded with /risk_maps/sizes
        risk_maps = ([t[1] for t in kept], [t[2] for t in kept] if kept else np.zeros((0, h, w)))
    write_scores(
        out_path, pool_ids, scores=scores, embeddings=embeddings, params=params, risk_maps=risk_maps,
        attrs={"pool_path": str(pool_path), "pool_sha256": sha256_file(pool_path)}, overwrite=overwrite,
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
                  "aggregation": aggregation, "q": q, "save_risk_maps": save_risk_maps},
            inputs=[pool_path, calibration_path], outputs=[out_path], seconds=result.seconds, result=result,
        )
    return result

