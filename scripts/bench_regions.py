#!/usr/bin/env python
"""Benchmark (not a test): the cost of region queries (docs/regions.md, "Speed").

Two parts, one table each:

- **SLIC**: :func:`alseg.regions.superpixel_map` (scikit-image ``slic``, the documented parameters:
  float RGB, compactness 10, start_label 0, relabelled) on 512 x 1024 images, for N = 500 and 1000.
  Two sets of images, each resized to 512 x 1024 (PIL bicubic): the photos that ship with
  scikit-image (``skimage.data`` astronaut, coffee, chelsea, rocket) and demo scenes
  (:func:`alseg.demo_data.make_scene`, 512 x 512, types street, parking and park), which are flatter
  and give fewer superpixels. Each image is segmented ``--repeats`` times; the table gives the median
  and the fastest time per image and the range of superpixel counts n.
- **Region scoring**: the per-image candidate path of ``alseg select --unit`` over a pool file of
  ``--pool-images`` images of 19-class float32 logits at 128 x 256 (original size 512 x 1024): the
  pool's logits streamed in batches of 8, entropy pixel scores
  (``select_regions._pixel_score_batches``), then ``select_regions._image_candidates`` (cell-to-region
  rule, ``mean`` reduction, overlap rule against an empty labelled state; no click costs). Units:
  ``patch:64`` (128 patches, maps computed from the size) and ``superpixel:500`` (maps read from a
  region-map store, as select does; the photos' SLIC maps above repeated over the pool). The table gives
  images per second of the whole path and of its region part alone (pixel scores precomputed).

Usage: ``python scripts/bench_regions.py [--repeats 3] [--pool-images 32]``. Takes about a minute on a
small CPU. Timings are wall clock in this process; numpy/torch use their default thread counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

H, W = 512, 1024  # original size
GRID = (128, 256)  # logit size
N_CLASSES = 19
SCENES = ("street", "parking", "park")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _resize(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).resize((W, H), Image.BICUBIC))


def photos() -> list[np.ndarray]:
    """scikit-image's sample photos resized (bicubic) to 512 x 1024 RGB uint8 (those it can load)."""
    import skimage.data

    out = []
    for name in PHOTOS:
        try:
            out.append(_resize(getattr(skimage.data, name)()))
        except Exception as exc:  # a sample missing from this scikit-image
            print(f"# skimage.data.{name} not available ({type(exc).__name__}); skipped")
    return out


def demo_scenes() -> list[np.ndarray]:
    """Demo scenes at 512 x 512, resized (bicubic) to 512 x 1024 RGB uint8."""
    from alseg.demo_data import make_scene

    return [_resize(make_scene(np.random.default_rng([0, n]), H, scene=scene)[0]) for n, scene in enumerate(SCENES)]


def bench_slic(sets: dict[str, list[np.ndarray]], repeats: int) -> tuple[list[list[str]], dict[int, list[np.ndarray]]]:
    """One row per (image set, N); the maps of the first set, by N."""
    from alseg.regions import SLIC_COMPACTNESS, superpixel_map

    rows, maps = [], {}
    for (set_name, images), n_segments in [(s, n) for s in sets.items() for n in (500, 1000)]:
        times, counts = [], []
        first = n_segments not in maps
        maps.setdefault(n_segments, [])
        for image in images:
            for _ in range(repeats):
                t = time.perf_counter()
                region_map = superpixel_map(image, n_segments)
                times.append(time.perf_counter() - t)
            if first:
                maps[n_segments].append(region_map)
            counts.append(int(region_map.max()) + 1)
        rows.append([f"superpixel:{n_segments}", f"{set_name} ({len(images)})", f"{SLIC_COMPACTNESS:g}", str(len(times)),
                     f"{statistics.median(times):.2f}", f"{min(times):.2f}",
                     f"{min(counts)}-{max(counts)}"])
    return rows, maps


def make_pool(path: Path, n_images: int) -> list[str]:
    """A pool file of smooth random logits (19, 128, 256) float32: blobs, so entropies vary like a model's."""
    import torch
    import torch.nn.functional as F

    from alseg.files.hdf5 import PoolWriter

    ids = [f"img_{k:05d}" for k in range(n_images)]
    rng = np.random.default_rng(1)
    with PoolWriter(path, class_names=[f"c{k}" for k in range(N_CLASSES)], logits_shape=GRID) as w:
        for start in range(0, n_images, 8):
            batch = ids[start : start + 8]
            low = torch.from_numpy(rng.normal(0, 3, (len(batch), N_CLASSES, 16, 32)).astype(np.float32))
            logits = F.interpolate(low, size=GRID, mode="bilinear", align_corners=False).numpy()
            w.append(batch, logits)
    return ids


def bench_scoring(pool_path: Path, ids: list[str], sp_maps: list[np.ndarray], tmp: Path) -> list[list[str]]:
    from alseg.files.hdf5 import PoolReader
    from alseg.files.labelled import LabelledState
    from alseg.files.regionmaps import RegionMapReader, write_region_maps
    from alseg.regions import region_lookup, region_map_params
    from alseg.stages import select_regions as SR
    from alseg.units import parse_unit

    store = tmp / "pool.regions-superpixel-500.h5"
    write_region_maps(store, "superpixel:500", region_map_params("superpixel:500"),
                      ((i, sp_maps[k % len(sp_maps)]) for k, i in enumerate(ids)))
    state = LabelledState()
    rows = []
    with PoolReader(pool_path) as pool, RegionMapReader(store, unit="superpixel:500") as reader:
        lookup = region_lookup({"superpixel:500": reader})
        # the pixel scores alone (shared by every unit), and kept for the region-only timing
        t = time.perf_counter()
        scores = dict(SR._pixel_score_batches(pool, "entropy", ids, 8, 0))
        t_scores = time.perf_counter() - t
        for unit_text in ("patch:64", "superpixel:500"):
            unit = parse_unit(unit_text)

            def candidates(image_index, image_id, pixel_scores):
                return SR._image_candidates(image_index, image_id, unit, pixel_scores, (H, W), state, lookup,
                                            reduction="mean", q=10.0, clicks_of=None, annotation="precise")

            t = time.perf_counter()
            n_regions = 0
            for k, (image_id, pixel_scores) in enumerate(SR._pixel_score_batches(pool, "entropy", ids, 8, 0)):
                cands, _ = candidates(k, image_id, pixel_scores)
                n_regions += int(cands.score.shape[0])
            t_all = time.perf_counter() - t
            t = time.perf_counter()
            for k, image_id in enumerate(ids):
                candidates(k, image_id, scores[image_id])
            t_regions = time.perf_counter() - t
            rows.append([unit_text, str(len(ids)), f"{n_regions / len(ids):.0f}", f"{len(ids) / t_all:.1f}",
                         f"{len(ids) / t_regions:.1f}", f"{len(ids) / t_scores:.1f}"])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="SLIC runs per image (default 3)")
    parser.add_argument("--pool-images", type=int, default=32, help="images in the scoring pool (default 32)")
    args = parser.parse_args()

    import torch

    print(f"# bench_regions: {os.cpu_count()} CPU(s), torch threads {torch.get_num_threads()}, "
          f"numpy {np.__version__}")
    sets = {"photos": photos(), "demo scenes": demo_scenes()}
    sets = {k: v for k, v in sets.items() if v}
    slic_rows, maps = bench_slic(sets, args.repeats)
    print(f"\nSLIC per {H}x{W} image ({args.repeats} runs each; seconds)\n")
    print(table(["unit", "images", "compactness", "runs", "median s", "fastest s", "n"], slic_rows))

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ids = make_pool(tmp / "pool.h5", args.pool_images)
        rows = bench_scoring(tmp / "pool.h5", ids, maps[500], tmp)
    print(f"\nRegion scoring ({args.pool_images} images, logits {N_CLASSES}x{GRID[0]}x{GRID[1]} float32, original "
          f"{H}x{W}, entropy, mean; images per second)\n")
    print(table(["unit", "images", "regions/image", "img/s whole path", "img/s regions only",
                 "img/s pixel scores only"], rows))


if __name__ == "__main__":
    main()
