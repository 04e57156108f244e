"""``alseg calibrate``: class-wise CRC thresholds for the per-image false-negative rate (docs/algorithms.md §9.1).

Reads: a pool file written by ``infer --with-labels`` on a calibration set (and optionally a second one
for ``--evaluate``). Writes: the calibration JSON (``alseg.files.calibration``) and its manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from alseg.stages import no_progress as _noop
from alseg.errors import InputError
from alseg.files.atomic import check_not_input, check_writable, holding_output_locks, removed_on_failure
from alseg.files.calibration import write_calibration
from alseg.files.hdf5 import PoolReader, pool_digest
from alseg.files.idlist import read_ids
from alseg.files.manifest import manifest_path, read_manifest, write_manifest



@dataclass
class CalibrateResult:
    out_path: str
    alpha: float
    n_calibration_images: int
    thresholds: dict[str, float]
    n_images: dict[str, int]
    uncalibrated: list[str]
    query_thresholds: dict[str, float] = field(default_factory=dict)
    always_in_set: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    evaluation: dict | None = None
    seconds: float = 0.0


def _training_ids(pool: PoolReader, train_ids_path: str | Path | None) -> tuple[list[str], str | None]:
    """The ids the model was trained on: ``--train-ids`` or, failing that, the checkpoint's train manifest."""
    if train_ids_path is not None:
        return read_ids(train_ids_path), str(train_ids_path)
    ckpt = pool.attrs.get("checkpoint_path")
    if not ckpt:
        return [], None
    mpath = manifest_path(Path(ckpt).parent)
    try:
        labeled = read_manifest(mpath)["args"].get("labeled_path")
        return (read_ids(labeled), labeled) if labeled else ([], None)
    except InputError:
        return [], None


def _stream(pool: PoolReader, accumulator, batch_size: int, progress, device=None) -> None:
    """Feed every labeled batch of ``pool`` to ``accumulator``. The softmax runs in NumPy (``device`` None)
    or in torch on ``device``; the accumulators' histograms are exact either way."""
    from alseg.strategies import softmax

    # Batches come cropped to each image's valid (h, w), one run of equal sizes at a time; the
    # accumulators sum per image, so padding never enters R̂_k or the held-out evaluation.
    for ids, logits, labels in pool.iter_batches(batch_size, with_labels=True):
        try:
            if device is None:
                probs = softmax(logits, axis=1)
            else:
                import torch

                probs = torch.softmax(torch.from_numpy(logits).to(device, torch.float32), dim=1).cpu().numpy()
            accumulator.update(probs, labels)
        except InputError as exc:  # bad labels or logits: name the file and the batch
            raise InputError(f"{pool.path}: {exc} (in the batch starting at id {ids[0]!r})") from None
        progress(len(ids))


@holding_output_locks("out_path")
def calibrate(
    pool_path: str | Path,
    *,
    out_path: str | Path,
    alpha: float = 0.05,
    bins: int = 1000,
    t_min: float = 0.001,
    train_ids_path: str | Path | None = None,
    evaluate_path: str | Path | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    overwrite: bool = False,
    progress: Callable[..., None] = _noop,
) -> CalibrateResult:
    """Compute t̂_k per class with the exact CRC rule in one streaming pass over ``pool_path``."""
    from alseg import crc as C

    t0 = time.perf_counter()
    if not 0.0 < alpha < 1.0:
        raise InputError(f"--alpha must be in (0, 1), got {alpha}")
    if not 0.0 <= t_min < 1.0:
        raise InputError(f"--t-min must be in [0, 1), got {t_min}")
    if bins < 1:
        raise InputError(f"--bins must be >= 1, got {bins}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    from alseg.device import resolve_device

    # the CPU keeps the NumPy path, without importing torch to learn that
    torch_device = None if device.strip().lower() == "cpu" else resolve_device(device)
    torch_device = None if torch_device is None or torch_device.type == "cpu" else torch_device
    check_not_input([out_path, manifest_path(out_path)], [pool_path, evaluate_path, train_ids_path])
    out_path = check_writable(out_path, overwrite=overwrite)
    warnings: list[str] = []
    with PoolReader(pool_path, require_labels=True) as pool:
        class_names = pool.class_names
        train_ids, train_src = _training_ids(pool, train_ids_path)
        overlap = sorted(set(pool.ids) & set(train_ids))
        if overlap:
            warnings.append(
                f"{len(overlap)} calibration id(s) were used to train the model (from {train_src}, e.g. {overlap[0]!r}); "
                "the CRC guarantee assumes calibration data the model has not seen"
            )
        acc = C.CalibrationAccumulator(pool.n_classes, bins=bins, ignore_index=pool.ignore_index)
        progress(0, total=len(pool) + (0 if evaluate_path is None else 0))
        _stream(pool, acc, batch_size, progress, torch_device)
        cal = acc.result(alpha)
        n_cal = len(pool)
    # Only uncalibrated classes are floored at t_min; a calibrated class keeps t̂ even at 0 (docs §9.1).
    query = cal.query_thresholds(t_min)
    uncalibrated = [class_names[k] for k in np.flatnonzero(cal.uncalibrated)]
    always_in_set = [class_names[k] for k in np.flatnonzero(cal.always_in_set)]
    if uncalibrated:
        need = int(np.ceil((1 - alpha) / alpha))
        floor = (f"at query time their threshold is t_min={t_min}" if t_min > 0
                 else "with t_min=0 every pixel is in their prediction sets")
        warnings.append(
            f"{len(uncalibrated)} class(es) uncalibrated (fewer than {need} calibration images contain them): "
            f"{', '.join(uncalibrated)}; no FNR guarantee for them; {floor}"
        )
    if always_in_set:
        warnings.append(
            f"{len(always_in_set)} class(es) calibrated at t̂ = 0: {', '.join(always_in_set)}; the risk bound "
            f"at alpha={alpha} puts every pixel in their prediction sets (the guarantee holds; t_min does not "
            "apply to them)"
        )
    evaluation = None
    if evaluate_path is not None:
        with PoolReader(evaluate_path, require_labels=True) as held_out:
            if held_out.n_classes != len(class_names):
                raise InputError(f"{evaluate_path}: has {held_out.n_classes} classes, calibration has {len(class_names)}")
            ev = C.EvaluationAccumulator(cal.thresholds, uncalibrated=cal.uncalibrated, t_min=t_min,
                                         ignore_index=held_out.ignore_index, n_classes=held_out.n_classes)
            progress(0, total=n_cal + len(held_out))
            _stream(held_out, ev, batch_size, progress, torch_device)
            evaluation = {**ev.result(), "pool_path": str(evaluate_path)}
    doc = {
        **cal.to_dict(),
        "grid": cal.grid,
        "t_min": t_min,
        "query_thresholds": query,
        "class_names": class_names,
        "pool_path": str(pool_path),
        "pool_sha256": pool_digest(pool_path),
        "evaluation": evaluation,
    }
    write_calibration(out_path, doc)
    result = CalibrateResult(
        out_path=str(out_path), alpha=alpha, n_calibration_images=n_cal,
        thresholds={c: float(t) for c, t in zip(class_names, cal.thresholds)},
        n_images={c: int(n) for c, n in zip(class_names, cal.n_images)},
        uncalibrated=uncalibrated, query_thresholds={c: float(t) for c, t in zip(class_names, query)},
        always_in_set=always_in_set, warnings=warnings, evaluation=evaluation, seconds=time.perf_counter() - t0,
    )
    with removed_on_failure(out_path):
        write_manifest(
            out_path, stage="calibrate",
            args={"pool_path": pool_path, "alpha": alpha, "bins": bins, "t_min": t_min,
                  "train_ids_path": train_ids_path, "evaluate_path": evaluate_path, "device": device},
            inputs=[pool_path, evaluate_path], outputs=[out_path], seconds=result.seconds, result=result,
        )
    return result
