"""Synthetic segmentation scenes for demos and tests, in mmseg's custom-folder layout.

Layout written under ``out_dir``::

    img_dir/<id>.png        RGB uint8 images
    ann_dir/<id>.png        uint8 label maps (class index; 255 = ignore: a 1-pixel border and a few pixels)
    splits/pool.txt         the unlabeled pool (ids, one per line)
    splits/val.txt          held-out validation ids
    splits/calib.txt        calibration ids (CRC-AL)
    splits/all.txt          every id
    classes.json            class names, palette, ignore index

Classes (index: name): 0 background, 1 road (horizontal band), 2 building (rectangles with window
columns), 3 tree (noisy ellipses), 4 car and 5 van (the CONFUSABLE pair: the same red family; vans are
longer, a little bluer and have dark window rows), 6 sign (the RARE class: a small bright disc).

Scenes follow a long tail of types, so that selection matters the way it does on real data: many
redundant easy "open road" scenes, fewer streets and parks, and rare "parking", "depot" and "crossing"
scenes that hold most vans and every sign (``SCENES``). No strategy reads these labels: they only make
informative images rare. Everything is drawn with numpy from one ``np.random.Generator`` per image,
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
# scene type: (probability, what it holds); the long tail of the demo pool
SCENES = {
    "open-road": 0.40,  # background + a road band: redundant and easy
    "street": 0.24,     # road, buildings, trees, a car
    "park": 0.14,       # trees, maybe a car
    "parking": 0.10,    # road and several cars and vans (the confusable pair side by side)
    "depot": 0.07,      # buildings and vans
    "crossing": 0.05,   # road, a car and the rare sign (one or two)
}

# mean RGB and per-pixel noise sigma of each class's texture
_COLOURS = {
    0: ((110, 108, 100), 12.0),
    1: ((72, 72, 80), 7.0),
    2: ((150, 122, 100), 9.0),
    3: ((40, 125, 40), 18.0),
    4: ((178, 58, 52), 12.0),
    5: ((150, 55, 175), 12.0),  # van: a car-like shape, violet where cars are red, longer, with window rows
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


def _draw_vehicle(label, yy, xx, rng, s: int, cls: int) -> None:
    """A car (short) or a van (long) on the label map."""
    h = int(rng.integers(max(3, s // 10), max(4, s // 7) + 1))
    w = int(rng.integers(max(4, s // 7), max(5, s // 5) + 1)) if cls == 4 else int(
        rng.integers(max(6, s // 4), max(7, s // 3) + 1))
    y0, x0 = int(rng.integers(1, s - h - 1)), int(rng.integers(1, s - w - 1))
    label[_rect(yy, xx, y0, x0, h, w)] = cls


def make_scene(rng: np.random.Generator, size: int, *, scene: str) -> tuple[np.ndarray, np.ndarray]:
    """One scene of type ``scene`` (see ``SCENES``): ``(image (size,size,3) uint8 RGB, label (size,size) uint8)``."""
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    label = np.zeros((s, s), dtype=np.uint8)

    def road() -> None:
        h = int(rng.integers(max(3, s // 6), max(4, s // 3) + 1))
        y0 = int(rng.integers(s // 3, s - h))
        label[_rect(yy, xx, y0, 0, h, s)] = 1

    def buildings(n: int) -> None:
        for _ in range(n):
            h, w = (int(v) for v in rng.integers(s // 5, s // 2 + 1, size=2))
            y0, x0 = int(rng.integers(0, s // 2)), int(rng.integers(0, s - w))
            label[_rect(yy, xx, y0, x0, h, w)] = 2

    def trees(n: int) -> None:
        for _ in range(n):
            cy, cx = rng.uniform(0, s, size=2)
            ry, rx = rng.uniform(s / 12, s / 6, size=2)
            label[_ellipse(yy, xx, cy, cx, ry, rx)] = 3

    if scene == "open-road":
        road()
    elif scene == "street":
        road(), buildings(int(rng.integers(1, 3))), trees(int(rng.integers(0, 3)))
        for _ in range(int(rng.integers(1, 3))):
            _draw_vehicle(label, yy, xx, rng, s, 4)
    elif scene == "park":
        trees(int(rng.integers(2, 5)))
        if rng.random() < 0.5:
            _draw_vehicle(label, yy, xx, rng, s, 4)
    elif scene == "parking":
        road()
        for cls in rng.permutation([4, 4, 5, 5] + [int(rng.choice([4, 5]))]):
            _draw_vehicle(label, yy, xx, rng, s, int(cls))
    elif scene == "depot":
        buildings(int(rng.integers(1, 3)))
        for _ in range(int(rng.integers(2, 4))):
            _draw_vehicle(label, yy, xx, rng, s, 5)
    elif scene == "crossing":
        road(), trees(int(rng.integers(0, 2)))
        _draw_vehicle(label, yy, xx, rng, s, 4)
        for _ in range(int(rng.integers(1, 3))):  # one or two signs, big enough to survive 3 poolings
            r = rng.uniform(max(3.0, s / 9), max(3.5, s / 6))
            cy, cx = rng.uniform(r + 1, s - r - 1, size=2)
            label[_ellipse(yy, xx, cy, cx, r, r)] = 6
    else:
        raise ValueError(f"unknown scene type {scene!r}")

    image = np.empty((s, s, 3), dtype=np.float32)
    noise = rng.standard_normal((s, s, 3)).astype(np.float32)
    for cls, (mean, sigma) in _COLOURS.items():
        where = label == cls
        if where.any():
            image[where] = np.asarray(mean, np.float32) + sigma * noise[where]
    windows = (label == 2) & ((xx.astype(np.int64) % 4) == 0)  # window columns on buildings
    image[windows] -= 35.0
    van_rows = (label == 5) & ((yy.astype(np.int64) % 3) == 1)  # a van's window rows
    image[van_rows] -= 40.0
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
    n_images: int = 400,
    size: int = 48,
    seed: int = 0,
    n_val: int = 60,
    n_calib: int = 60,
    overwrite: bool = False,
) -> DemoData:
    """Write ``n_images`` synthetic scenes of ``size`` x ``size`` pixels to ``out_dir`` (see module doc).

    The folder is built under a temporary name beside ``out_dir`` and renamed at the end, so a folder
    that exists is complete. An existing ``out_dir`` is an error unless ``overwrite``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: is a file; --out must be a folder to create")
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
        names = list(SCENES)
        probs = np.asarray([SCENES[n] for n in names])
        scenes = [names[k] for k in split_rng.choice(len(names), size=n_images, p=probs / probs.sum())]
        n_classes = len(CLASS_NAMES)
        image_counts = np.zeros(n_classes, np.int64)
        pixel_counts = np.zeros(n_classes, np.int64)
        for i, image_id in enumerate(ids):
            image, label = make_scene(np.random.default_rng([seed, i]), size, scene=scenes[i])
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
