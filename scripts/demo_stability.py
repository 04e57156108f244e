"""Is the demo's training stable? Train the demo model N times (different seeds) on one labeled set.

Prints per-class IoU (mean, min over seeds), mIoU mean ± std and the number of trainings in which a class
present in the val split got IoU 0 (a collapse). Issue target: no collapse in 20 trainings, and a
seed-to-seed std small next to the gap between the first and the last round of the demo.

    .venv/bin/python scripts/demo_stability.py --trainings 20 --labeled 16
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="demo_unet_tiny")
    ap.add_argument("--data", type=Path, default=None, help="demo data folder (default: generate one)")
    ap.add_argument("--trainings", type=int, default=20)
    ap.add_argument("--labeled", type=int, default=16, help="size of the labeled set (the demo's round 0)")
    ap.add_argument("--labeled-seed", type=int, default=0)
    ap.add_argument("--labeled-file", type=Path, default=None, help="use this labeled list instead")
    ap.add_argument("--max-iters", type=int, default=None)
    ap.add_argument("--cfg-options", nargs="*", default=[], help="mmseg KEY=VALUE overrides")
    ap.add_argument("--out", type=Path, default=None, help="write the per-training results as JSON")
    args = ap.parse_args()

    from alseg.demo_data import make_demo_data
    from alseg.files.idlist import read_ids, write_ids
    from alseg.stages.train import train

    tmp = Path(tempfile.mkdtemp(prefix="alseg-stability-"))
    data = args.data or make_demo_data(tmp / "data", n_images=400, n_val=60, n_calib=60).out_dir
    pool = read_ids(data / "splits" / "pool.txt")
    rng = np.random.default_rng(args.labeled_seed)
    labeled = tmp / "labeled.txt"
    if args.labeled_file:
        labeled = args.labeled_file
    else:
        write_ids(labeled, sorted(rng.choice(pool, size=args.labeled, replace=False).tolist()))
    from alseg.mm import parse_cfg_options

    options = parse_cfg_options(args.cfg_options)
    rows = []
    for seed in range(args.trainings):
        t0 = time.perf_counter()
        r = train(args.config, labeled_path=labeled, work_dir=tmp / f"t{seed}", data_root=data, device="cpu",
                  seed=seed, max_iters=args.max_iters, cfg_options=options)
        rows.append({"seed": seed, "miou": r.final_miou, "iou": r.per_class_iou, "seconds": time.perf_counter() - t0})
        print(f"seed {seed:2d}: mIoU {r.final_miou:5.1f}  " + " ".join(
            f"{k[:5]} {('-' if v is None else f'{v:4.1f}')}" for k, v in r.per_class_iou.items())
            + f"  [{rows[-1]['seconds']:.1f} s]", flush=True)
    names = list(rows[0]["iou"])
    iou = np.array([[np.nan if r["iou"][n] is None else r["iou"][n] for n in names] for r in rows])
    miou = np.array([r["miou"] for r in rows])
    collapses = int(np.sum(np.nan_to_num(iou, nan=1.0) <= 0.0, axis=1).astype(bool).sum())
    print(f"\n{len(rows)} trainings on {len(read_ids(labeled))} labeled images: mIoU {miou.mean():.1f} ± {miou.std(ddof=1):.1f} "
          f"(min {miou.min():.1f}); trainings with a collapsed class: {collapses}; "
          f"{np.mean([r['seconds'] for r in rows]):.1f} s per training")
    for k, n in enumerate(names):
        print(f"  {n:12s} IoU mean {np.nanmean(iou[:, k]):5.1f}  min {np.nanmin(iou[:, k]):5.1f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
