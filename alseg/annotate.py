"""Simulated annotation of regions (docs/algorithms.md §11.2, docs/regions.md). Pure numpy.

Both modes return a partial label map of the image's shape: labels inside the annotated regions, the ignore
index everywhere else (mmseg's losses skip it, so training sees only what was annotated).

- :func:`precise`: the ground truth inside the region (ignore pixels stay ignore).
- :func:`dominant`: every pixel of a region gets the region's majority ground-truth class, the 1-click
  labelling of Cai et al. (CVPR 2021), label noise included. Ignore pixels do not vote; ties go to the
  lowest class index; a region with no valid pixel stays ignore.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from alseg.errors import InputError

__all__ = ["ANNOTATION_MODES", "dominant", "precise"]

ANNOTATION_MODES = ("precise", "dominant")


def _check_gt(gt: np.ndarray) -> np.ndarray:
    gt = np.asarray(gt)
    if gt.ndim != 2 or not np.issubdtype(gt.dtype, np.integer):
        raise InputError(f"ground truth must be a 2-D integer label map, got shape {gt.shape}, {gt.dtype}")
    return gt


def precise(gt: np.ndarray, region_mask: np.ndarray, ignore: int = 255) -> np.ndarray:
    """Ground truth (H, W) int inside ``region_mask`` (H, W) bool, ``ignore`` outside; same dtype as ``gt``."""
    gt = _check_gt(gt)
    mask = np.asarray(region_mask, dtype=bool)
    if mask.shape != gt.shape:
        raise InputError(f"region mask is {mask.shape}, the ground truth {gt.shape}")
    return np.where(mask, gt, np.asarray(ignore, dtype=gt.dtype))


def dominant(gt: np.ndarray, region_map: np.ndarray, region_ids: Sequence[int], ignore: int = 255) -> np.ndarray:
    """Majority-class labels of the regions ``region_ids`` of ``region_map`` (H, W) int; ``ignore`` elsewhere.

    The vote is over the whole region at original resolution, one bincount over (region, class) pairs.
    """
    gt = _check_gt(gt)
    region_map = np.asarray(region_map)
    if region_map.shape != gt.shape:
        raise InputError(f"region map is {region_map.shape}, the ground truth {gt.shape}")
    out = np.full(gt.shape, ignore, dtype=gt.dtype)
    ids = np.asarray(region_ids, dtype=np.int64).ravel()
    if ids.size == 0:
        return out
    n_regions = int(max(region_map.max(), ids.max())) + 1
    chosen = np.zeros(n_regions, dtype=bool)
    chosen[ids] = True
    in_chosen = chosen[region_map]
    valid = in_chosen & (gt != ignore)
    labels = gt[valid].astype(np.int64)
    if labels.size and labels.min() < 0:
        raise InputError("ground-truth class ids must be >= 0 (apart from the ignore index)")
    n_classes = int(labels.max()) + 1 if labels.size else 1
    votes = np.bincount(region_map[valid].astype(np.int64) * n_classes + labels, minlength=n_regions * n_classes)
    votes = votes.reshape(n_regions, n_classes)
    winner = votes.argmax(axis=1)  # first maximum: ties go to the lowest class index
    has_vote = votes.sum(axis=1) > 0
    region_label = np.where(has_vote, winner, ignore)
    out[in_chosen] = region_label[region_map[in_chosen]].astype(gt.dtype)
    return out
