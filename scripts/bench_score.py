#!/usr/bin/env python
"""Benchmark (not a test): `alseg score --strategy entropy` against the pool file's read rate.

A synthetic Cityscapes-sized pool (N images, 19 classes, 128 x 256 float16 logits, lzf; Gaussian logits,
which lzf cannot shrink, so the file is ~1.25 MB per image) is written through ``PoolWriter`` into a
temporary folder. Then, in the same run:

- limit:    read every /logits chunk once with no compute (``ds[i]`` per image, decompressed float16);
- measured: ``alseg.stages.score.score(pool, strategies=["entropy"])`` end to end (pool digest, scores
            file and manifest written): ``workers=1`` is one process with a reader thread, ``workers=W``
            (W > 1) is W scoring processes, each reading its own batches (their ~0.4 s start included).

Each is timed ``cold`` (the file's pages dropped from the page cache first with
``posix_fadvise(DONTNEED)``, as for a pool larger than memory; on a VM the host may still cache it) and
``warm`` (read once just before: the "read" is then a copy out of the page cache, and scoring is bound by
the entropy kernel's CPU time, printed last). ratio = measured / limit (the target: <= 2, i.e. scoring at
>= 50 % of the read rate); rate = limit / measured.

Usage: ``python scripts/bench_score.py [--n 2975] [--quick] [--dir /tmp]``. The full N = 2975 needs
~3.7 GB of disk (twice while the pool is assembled) and a few minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

K, H, W = 19, 128, 256


def write_pool(path: Path, n: int, batch: int = 16) -> None:
    from alseg.files.hdf5 import PoolWriter

    rng = np.random.default_rng(0)
    with PoolWriter(path, class_names=[f"c{k}" for k in range(K)], logits_shape=(H, W)) as w:
        for start in range(0, n, batch):
            b = min(batch, n - start)
            logits = (rng.standard_normal((b, K, H, W), dtype=np.float32) * 3.0).astype(np.float16)
            w.append([f"img_{i:06d}" for i in range(start, start + b)], logits)


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_all(path: Path) -> float:
    import h5py

    t0 = time.perf_counter()
    with h5py.File(path, "r") as fh:
        ds = fh["logits"]
        for i in range(ds.shape[0]):
            ds[i]
    return time.perf_counter() - t0


def run_score(path: Path, out: Path, workers: int | None, batch_size: int) -> float:
    from alseg.stages.score import score

    t0 = time.perf_counter()
    score(path, strategies=["entropy"], out_path=out, overwrite=True, workers=workers, batch_size=batch_size)
    return time.perf_counter() - t0


def kernel_ms(batch: int, repeats: int = 7) -> float:
    from alseg.strategies import pixel_entropy_from_logits

    x = (np.random.default_rng(1).standard_normal((batch, K, H, W), dtype=np.float32) * 3).astype(np.float16)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        pixel_entropy_from_logits(x)
        best = min(best, time.perf_counter() - t0)
    return best / batch * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2975, help="images in the synthetic pool (Cityscapes train: 2975)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=None,
                   help="scoring processes of the parallel case (default: the CPU count, at most score's MAX_WORKERS)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each case; the fastest is shown")
    p.add_argument("--dir", default=None, help="where the temporary pool goes (default: the system temp dir)")
    p.add_argument("--quick", action="store_true", help="N = 200 for a smoke run")
    args = p.parse_args()
    if args.quick:
        args.n, args.repeats = 200, 1
    tmp = Path(tempfile.mkdtemp(prefix="alseg-bench-score-", dir=args.dir))
    try:
        pool = tmp / "pool.h5"
        t0 = time.perf_counter()
        write_pool(pool, args.n)
        size = pool.stat().st_size
        print(f"pool: {args.n} x {K} x {H} x {W} float16 lzf, {size / 2**30:.2f} GiB on disk "
              f"(written in {time.perf_counter() - t0:.0f} s); cpus: {os.cpu_count()}", flush=True)
        from alseg.stages.score import MAX_WORKERS

        default_workers = min(MAX_WORKERS, os.cpu_count() or 1) if args.workers is None else args.workers
        rows = []
        for cache in ("cold", "warm"):
            for workers in sorted({default_workers, 1}, reverse=True):
                best_read = best_score = float("inf")
                for _ in range(args.repeats):
                    # the same cache state before the read and before the score
                    drop_cache(pool) if cache == "cold" else read_all(pool)
                    best_read = min(best_read, read_all(pool))
                    drop_cache(pool) if cache == "cold" else read_all(pool)
                    best_score = min(best_score, run_score(pool, tmp / "scores.h5", workers, args.batch_size))
                rows.append((f"entropy {cache} workers={workers}", best_score, best_read))
        header = f"{'case':<28}{'measured s':>12}{'limit s':>10}{'ratio':>8}{'rate':>8}  limit"
        print(header)
        print("-" * (len(header) + 40))
        for case, measured, limit in rows:
            print(f"{case:<28}{measured:>12.2f}{limit:>10.2f}{measured / limit:>8.2f}{limit / measured:>7.0%}"
                  f"  read every /logits chunk once ({size / limit / 2**20:.0f} MiB/s)")
        print("ratio = score time / read time (target <= 2); rate = score's share of the read rate (target >= 50%)")
        print(f"entropy kernel alone (alseg.strategies.pixel_entropy_from_logits, one thread, a batch of "
              f"{args.batch_size} in memory): {kernel_ms(args.batch_size):.2f} ms per image")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
