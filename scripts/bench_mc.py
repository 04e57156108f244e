#!/usr/bin/env python
"""Benchmark (not a test): `alseg infer --mc T` with ``--mc-scope head`` against ``full`` (docs/algorithms.md §11.7).

For the demo UNet (``configs/demo_unet_tiny.py``, its head's ``dropout_ratio`` set to 0.1: the config has
none) and DeepLabV3 (``configs/deeplabv3_r18_d8.py``, ASPP head, dropout 0.1), on generated demo images
(``alseg.demo_data``), with random-init weights (mmseg's init, then the 1x1 classifier drawn with std 1 so
that softmaxes are not near-uniform; untrained: the numbers are costs and agreements, not accuracy):

- time of ``infer`` without MC, with ``--mc 10 --mc-scope head`` and ``--mc 10 --mc-scope full``
  (each includes loading the model, the same for all three; the MC overhead is the difference);
- Spearman rank correlation of the per-image BALD scores (mean aggregation) of head vs full, and of two
  head runs with different ``--mc-seed`` (the Monte-Carlo noise of T = 10 itself);
- peak memory of ``infer --mc T --mc-scope head`` for T = 1, 10, 50, each in a fresh subprocess: the
  process's peak resident set (``ru_maxrss``) on CPU, ``torch.cuda.max_memory_allocated`` on CUDA; and the
  bytes of the running sums per batch (independent of T) against what storing T maps would take.

Each time is the best of ``--repeat`` runs. Usage: ``python scripts/bench_mc.py [--n 24] [--size 128]
[--device cpu] [--json out.json]`` (about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIGS = {
    "demo_unet_tiny": (str(ROOT / "configs" / "demo_unet_tiny.py"), {"model.decode_head.dropout_ratio": 0.1}),
    "deeplabv3_r18_d8": (str(ROOT / "configs" / "deeplabv3_r18_d8.py"), {}),
}
BATCH = 4


def make_world(root: Path, n: int, size: int) -> dict:
    """Demo data and one random-init checkpoint per config."""
    import torch

    from alseg import mm
    from alseg.demo_data import make_demo_data
    from alseg.files.checkpoint import write_checkpoint

    data = make_demo_data(root / "data", n_images=n + 4, size=size, seed=0, n_val=2, n_calib=2).out_dir
    ckpts = {}
    for name, (config, options) in CONFIGS.items():
        cfg = mm.load_config(config, data_root=data, cfg_options=options)
        from mmseg.registry import MODELS

        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        model.init_weights()
        with torch.no_grad():
            model.decode_head.conv_seg.weight.normal_(0, 1.0)
        ckpts[name] = write_checkpoint(root / f"{name}.pth", model.state_dict(),
                                       dataset_meta={"classes": list(mm.class_names(cfg))})
    return {"data": data, "ids": data / "splits" / "pool.txt", "ckpts": ckpts}


def run_infer(world: dict, name: str, out: Path, *, mc: int, scope: str = "head", seed: int = 0,
              device: str = "cpu") -> float:
    from alseg.stages.infer import infer

    config, options = CONFIGS[name]
    t0 = time.perf_counter()
    infer(config, checkpoint_path=world["ckpts"][name], ids_path=world["ids"], out_path=out,
          data_root=world["data"], device=device, batch_size=BATCH, cfg_options=options, mc=mc, mc_scope=scope,
          mc_seed=seed, overwrite=True)
    return time.perf_counter() - t0


def bald(pool: Path) -> np.ndarray:
    from alseg.files.hdf5 import PoolReader
    from alseg.mc import mc_image_scores

    with PoolReader(pool) as p:
        return np.concatenate([mc_image_scores(m, "bald", p.n_classes) for _, m in p.iter_mc(16)])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def child(args) -> None:
    """One ``infer --mc T`` in this fresh process; prints its peak memory as JSON."""
    world = json.loads(args.child)
    world = {"data": Path(world["data"]), "ids": Path(world["ids"]), "ckpts": world["ckpts"]}
    import torch

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = run_infer(world, args.name, Path(args.out), mc=args.t, device=args.device)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"T": args.t, "peak_bytes": int(peak), "seconds": seconds,
                      "what": "cuda max_memory_allocated" if cuda else "ru_maxrss"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="pool images")
    parser.add_argument("--size", type=int, default=128, help="image side (pixels)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per setting (the best is kept)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--name", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--t", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    import logging

    import torch

    logging.getLogger("mmengine").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    report: dict = {"n_images": args.n, "size": args.size, "device": args.device, "threads": args.threads,
                    "batch_size": BATCH, "weights": "random init (classifier std 1), untrained", "configs": {}}
    with tempfile.TemporaryDirectory(prefix="alseg-bench-mc-") as tmp:
        root = Path(tmp)
        world = make_world(root, args.n, args.size)
        for name in CONFIGS:
            r: dict = {}
            run_infer(world, name, root / "warm.h5", mc=0, device=args.device)  # imports, caches
            for key, mc, scope in (("no_mc", 0, "head"), ("head_T10", 10, "head"), ("full_T10", 10, "full")):
                r[f"seconds_{key}"] = min(run_infer(world, name, root / f"{name}-{scope if mc else 0}.h5", mc=mc,
                                                    scope=scope, device=args.device) for _ in range(args.repeat))
            run_infer(world, name, root / f"{name}-head1.h5", mc=10, scope="head", seed=1, device=args.device)
            b_head, b_full = bald(root / f"{name}-head.h5"), bald(root / f"{name}-full.h5")
            r["spearman_head_full"] = spearman(b_head, b_full)
            r["spearman_head_seed0_seed1"] = spearman(b_head, bald(root / f"{name}-head1.h5"))
            r["max_abs_bald_head_minus_full"] = float(np.abs(b_head - b_full).max())
            from alseg.files.hdf5 import PoolReader

            with PoolReader(root / f"{name}-0.h5") as p:
                k, (h, w) = p.n_classes, p.shape
            r["logit_grid"] = [k, h, w]
            # MCSums per batch: S1 float64 (b,K,h,w), votes int32 (b,K,h,w), S2 float64 (b,h,w)
            r["sums_bytes_per_batch"] = BATCH * h * w * (k * 8 + k * 4 + 8)
            r["stored_maps_bytes_per_batch_T50"] = 50 * BATCH * k * h * w * 4
            peaks = {}
            for t in (1, 10, 50):
                doc = json.dumps({"data": str(world["data"]), "ids": str(world["ids"]),
                                  "ckpts": {n: str(p) for n, p in world["ckpts"].items()}})
                cmd = [sys.executable, __file__, "--child", doc, "--name", name, "--out", str(root / f"m{t}.h5"),
                       "--t", str(t), "--device", args.device, "--threads", str(args.threads)]
                env = {**os.environ, "PYTHONWARNINGS": "ignore"}
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
                peaks[t] = json.loads(out.strip().splitlines()[-1])
            r["peak_memory"] = peaks
            report["configs"][name] = r
            print(f"{name}: {json.dumps(r)}", file=sys.stderr)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def print_table(report: dict) -> None:
    print(f"# infer --mc, {report['n_images']} images of {report['size']}x{report['size']}, batch "
          f"{report['batch_size']}, {report['device']}, {report['threads']} threads, {report['weights']}")
    n = report["n_images"]
    print("| config | logits K x h x w | infer s: no MC | head T=10 (+ms/image) | full T=10 (+ms/image) "
          "| Spearman BALD head/full | head seed 0/1 | peak MB T=1 / 10 / 50 | sums / 50 stored maps, MB per batch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in report["configs"].items():
        peaks = " / ".join(f"{r['peak_memory'][t]['peak_bytes'] / 2**20:.0f}" for t in (1, 10, 50))
        extra = {k: 1000 * (r[f"seconds_{k}"] - r["seconds_no_mc"]) / n for k in ("head_T10", "full_T10")}
        print(f"| {name} | {' x '.join(map(str, r['logit_grid']))} | {r['seconds_no_mc']:.2f} | "
              f"{r['seconds_head_T10']:.2f} (+{extra['head_T10']:.0f}) | {r['seconds_full_T10']:.2f} "
              f"(+{extra['full_T10']:.0f}) | {r['spearman_head_full']:.3f} | {r['spearman_head_seed0_seed1']:.3f} | "
              f"{peaks} | {r['sums_bytes_per_batch'] / 2**20:.1f} / {r['stored_maps_bytes_per_batch_T50'] / 2**20:.0f} |")


if __name__ == "__main__":
    main()
