"""Synthetic segmentation scenes for demos and tests, in mmseg's custom-folder layout.

Layout written under ``out_dir``::

    img_dir/<id>.png        RGB uint8 images
    ann_dir/<id>.png        uint8 label maps (class index; 255 = ignore: a 1-pixel border and a few pixels)
    splits/pool.txt         the unlabeled pool (ids, one per line)
    splits/val.txt          held-out validation ids
    splits/calib.txt        calibration ids (CRC-AL)
    splits/all.txt          every id
    classes.json            class names, palette, ignore index

Classes (index: name): 0 background, 1 road (horizontal stripes), 2 building (large rectangles with
window columns), 3 tree (noisy ellipses), 4 car and 5 van (the two CONFUSABLE classes: small
rectangles of nearly the same colour; vans are a little bluer and have darker window rows), 6 sign (the RARE class: a small bright ellipse in
about 6% of the images). Everything is drawn with numpy from one ``np.random.Generator`` per image,
seeded by ``(seed, image index)``, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alseg.errors import InputError, OutputExistsError

CLASS_NAMES = ("background", "road", "building", "tree", "car", "van", "sign")
PALETTE = (
    (0, 0, 0), (128, 64, 128), (70, 70, 70), (107, 142, 35), (0, 0, 142), (0, 60, 100), (220, 220, 0),
)
IGNORE_INDEX = 255
RARE_CLASS = "sign"
CONFUSABLE_CLASSES = ("car", "van")
RARE_FRACTION = 0.06

# mean RGB and per-pixel noise sigma of each class's texture
_COLOURS = {
    0: ((110, 108, 100), 12.0),
    1: ((72, 72, 80), 7.0),
    2: ((150, 122, 100), 9.0),
    3: ((40, 125, 40), 18.0),
    4: ((178, 58, 52), 12.0),
    5: ((170, 60, 130), 12.0),  # van: car's shape and red, a blue tint and window rows tell them apart
    6: ((235, 220, 40), 8.0),
}


@dataclass
class DemoData:
    """What :func:`make_demo_data` wrote."""

    out_dir: Path
    n_images: int
    size: int
    seed: int
    class_names: list[str]
    ignore_index: int
    rare_class: str
    confusable_classes: list[str]
    splits: dict[str, Path] = field(default_factory=dict)
    n_pool: int = 0
    n_val: int = 0
    n_calib: int = 0
    class_image_counts: dict[str, int] = field(default_factory=dict)
    class_pixel_fraction: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _rect(yy: np.ndarray, xx: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    return (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)


def make_scene(rng: np.random.Generator, size: int, *, with_rare: bool) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image (size,size,3) uint8 RGB, label (size,size) uint8)``."""
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    label = np.zeros((s, s), dtype=np.uint8)
    if rng.random() < 0.7:  # road: a horizontal band
        h = int(rng.integers(max(2, s // 8), max(3, s // 4) + 1))
        y0 = int(rng.integers(s // 3, s - h))
        label[_rect(yy, xx, y0, 0, h, s)] = 1
    for _ in range(int(rng.integers(0, 3))):  # buildings
        h, w = (int(v) for v in rng.integers(s // 5, s // 2 + 1, size=2))
        y0, x0 = int(rng.integers(0, s - h)), int(rng.integers(0, s - w))
        label[_rect(yy, xx, y0, x0, h, w)] = 2
    for _ in range(int(rng.integers(0, 4))):  # trees
        cy, cx = rng.uniform(0, s, size=2)
        ry, rx = rng.uniform(s / 14, s / 6, size=2)
        label[_ellipse(yy, xx, cy, cx, ry, rx)] = 3
    for cls in (4, 5):  # the two confusable vehicles, same shape family
        for _ in range(int(rng.integers(0, 3))):
            h = int(rng.integers(max(2, s // 12), max(3, s // 7) + 1))
            w = int(rng.integers(max(3, s // 8), max(4, s // 5) + 1))
            y0, x0 = int(rng.integers(0, s - h)), int(rng.integers(0, s - w))
            label[_rect(yy, xx, y0, x0, h, w)] = cls
    if with_rare:
        r = rng.uniform(max(1.5, s / 32), max(2.0, s / 18))
        cy, cx = rng.uniform(r + 1, s - r - 1, size=2)
        label[_ellipse(yy, xx, cy, cx, r, r)] = 6

    image = np.empty((s, s, 3), dtype=np.float32)
    noise = rng.standard_normal((s, s, 3)).astype(np.float32)
    for cls, (mean, sigma) in _COLOURS.items():
        where = label == cls
        if where.any():
            image[where] = np.asarray(mean, np.float32) + sigma * noise[where]
    windows = (label == 2) & ((xx.astype(np.int64) % 4) == 0)  # window columns on buildings
    image[windows] -= 35.0
    van_rows = (label == 5) & ((yy.astype(np.int64) % 3) == 1)  # a van's window rows
    image[van_rows] -= 25.0
    image += rng.uniform(-12, 12)  # global brightness
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    label[0, :] = label[-1, :] = label[:, 0] = label[:, -1] = IGNORE_INDEX  # thin ignore border
    n_holes = int(rng.integers(0, 6))
    if n_holes:
        label[rng.integers(1, s - 1, n_holes), rng.integers(1, s - 1, n_holes)] = IGNORE_INDEX
    return image, label


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=6)


def make_demo_data(
    out_dir: str | os.PathLike,
    *,
    n_images: int = 240,
    size: int = 64,
    seed: int = 0,
    n_val: int = 40,
    n_calib: int = 40,
    overwrite: bool = False,
) -> DemoData:
    """Write ``n_images`` synthetic scenes of ``size`` x ``size`` pixels to ``out_dir`` (see module doc).

    The folder is built under a temporary name beside ``out_dir`` and renamed at the end, so a folder
    that exists is complete. An existing ``out_dir`` is an error unless ``overwrite``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if n_images < 1 or size < 16:
        raise InputError(f"need n_images >= 1 and size >= 16 (got {n_images}, {size})")
    if n_val < 0 or n_calib < 0 or n_val + n_calib >= n_images:
        raise InputError(f"n_val + n_calib ({n_val} + {n_calib}) must leave a pool out of {n_images} images")
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir}: output exists; pass --overwrite to replace it")

    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "img_dir").mkdir(parents=True)
        (tmp / "ann_dir").mkdir()
        (tmp / "splits").mkdir()
        split_rng = np.random.default_rng([seed, 1 << 20])
        ids = [f"img_{i:05d}" for i in range(n_images)]
        n_rare = max(2, int(round(RARE_FRACTION * n_images))) if n_images >= 4 else 1
        rare = set(split_rng.choice(n_images, size=min(n_rare, n_images), replace=False).tolist())
        n_classes = len(CLASS_NAMES)
        image_counts = np.zeros(n_classes, np.int64)
        pixel_counts = np.zeros(n_classes, np.int64)
        for i, image_id in enumerate(ids):
            image, label = make_scene(np.random.default_rng([seed, i]), size, with_rare=i in rare)
            _write_png(tmp / "img_dir" / f"{image_id}.png", image)
            _write_png(tmp / "ann_dir" / f"{image_id}.png", label)
            counts = np.bincount(label[label != IGNORE_INDEX].ravel(), minlength=n_classes)
            pixel_counts += counts
            image_counts += counts > 0

        order = split_rng.permutation(n_images)
        val = sorted(ids[j] for j in order[:n_val])
        calib = sorted(ids[j] for j in order[n_val : n_val + n_calib])
        pool = sorted(ids[j] for j in order[n_val + n_calib :])
        for name, part in (("pool", pool), ("val", val), ("calib", calib), ("all", ids)):
            (tmp / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in part), encoding="utf-8")
        classes = {
            "format": "alseg.classes",
            "format_version": 1,
            "classes": list(CLASS_NAMES),
            "palette": [list(p) for p in PALETTE],
            "ignore_index": IGNORE_INDEX,
            "rare_class": RARE_CLASS,
            "confusable_classes": list(CONFUSABLE_CLASSES),
        }
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    total = max(int(pixel_counts.sum()), 1)
    return DemoData(
        out_dir=out_dir,
        n_images=n_images,
        size=size,
        seed=seed,
        class_names=list(CLASS_NAMES),
        ignore_index=IGNORE_INDEX,
        rare_class=RARE_CLASS,
        confusable_classes=list(CONFUSABLE_CLASSES),
        splits={name: out_dir / "splits" / f"{name}.txt" for name in ("pool", "val", "calib", "all")},
        n_pool=len(pool),
        n_val=len(val),
        n_calib=len(calib),
        class_image_counts={n: int(c) for n, c in zip(CLASS_NAMES, image_counts)},
        class_pixel_fraction={n: float(c) / total for n, c in zip(CLASS_NAMES, pixel_counts)},
        seconds=time.perf_counter() - start,
    )
