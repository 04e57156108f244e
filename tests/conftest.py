"""Shared fixtures: synthetic pool files written through the real schema module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alseg.files.calibration import write_calibration
from alseg.files.hdf5 import PoolWriter

N_CLASSES = 4
SHAPE = (6, 6)
EMBEDDING_DIMS = {"bottleneck": 8, "penultimate": 6, "badge": N_CLASSES * 6}


def make_pool(path: Path, ids: list[str], *, seed: int = 0, order: np.ndarray | None = None,
              with_labels: bool = False, mc: bool = False) -> Path:
    """A pool file whose content per id depends only on (seed, id), written in ``order``; with ``mc`` also
    ``/mc`` maps (T = 10, scope head) drawn per id: H(p̄) in [0, log K], MI in [0, H(p̄)], votes in {1..10}/10."""
    rows = {}
    for i in ids:
        r = np.random.default_rng([seed, int(i.split("_")[-1])])
        logits = r.normal(0, 2.0, (N_CLASSES, *SHAPE)).astype(np.float32)
        labels = r.integers(0, N_CLASSES, SHAPE)
        labels[0, 0] = 255
        emb = {k: r.normal(size=d).astype(np.float32) for k, d in EMBEDDING_DIMS.items()}
        h = r.uniform(0, np.log(N_CLASSES), SHAPE)
        maps = np.stack([h, h * r.uniform(0, 1, SHAPE), r.integers(1, 11, SHAPE) / 10]).astype(np.float32)
        rows[i] = (logits, labels, emb, maps)
    order = np.arange(len(ids)) if order is None else order
    with PoolWriter(path, class_names=[f"c{k}" for k in range(N_CLASSES)], logits_shape=SHAPE,
                    with_labels=with_labels, embedding_dims=EMBEDDING_DIMS,
                    mc={"T": 10, "scope": "head"} if mc else None) as w:
        for start in range(0, len(order), 7):
            chunk = [ids[j] for j in order[start : start + 7]]
            w.append(chunk, np.stack([rows[i][0] for i in chunk]),
                     np.stack([rows[i][1] for i in chunk]) if with_labels else None,
                     {k: np.stack([rows[i][2][k] for i in chunk]) for k in EMBEDDING_DIMS},
                     mc_maps=np.stack([rows[i][3] for i in chunk]) if mc else None)
    return path


def make_calibration(path: Path) -> Path:
    k = N_CLASSES
    return write_calibration(path, {
        "alpha": 0.1, "bins": 1000, "t_min": 0.001, "class_names": [f"c{i}" for i in range(k)],
        "thresholds": [0.30, 0.15, 0.0, 0.22], "n_images": [40, 40, 3, 40], "uncalibrated": [False, False, True, False],
        "calibrated": [True, True, False, True], "query_thresholds": [0.30, 0.15, 0.001, 0.22],
        "grid": [], "risk": [], "pool_path": "synthetic", "pool_sha256": "", "evaluation": None,
    })


@pytest.fixture
def ids40() -> list[str]:
    return [f"img_{i:03d}" for i in range(40)]
