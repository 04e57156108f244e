"""Stage ``merge``: the shard files of one sharded ``infer`` run -> one pool file (or one scores file).

Reads: shard files ``<stem>.shard-i-of-n.h5`` (``alseg infer --shard i/n``, or the ranks of a torchrun job),
all pool files or all scores files. Writes: the merged file and ``<out>.manifest.json``.

A copying merge (see ``docs/scale.md``): the merged file stands alone (no link to the shards), is
written atomically, and its sha256 identifies its content, as for every other alseg file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from alseg.errors import InputError
from alseg.files.atomic import check_not_input, check_writable, holding_output_locks, removed_on_failure
from alseg.files.hdf5 import POOL_FORMAT, SCORES_FORMAT, file_format, merge_pools, merge_scores, pool_digest
from alseg.files.manifest import manifest_path, write_manifest
from alseg.stages import Progress, no_progress


@dataclass
class MergeResult:
    """What ``merge`` wrote: ``kind`` is ``pool`` or ``scores``; ``shards`` in shard order."""

    out_path: str
    kind: str
    n_images: int
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0


@holding_output_locks("out_path")
def merge(
    shard_paths: Sequence[str | Path],
    *,
    out_path: str | Path,
    pool_path: str | Path | None = None,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> MergeResult:
    """Merge the shards of one run, in shard order (= the id list's order), into ``out_path``.

    Pool shards give a pool file with exactly the datasets a one-process ``infer`` writes; scores shards
    (``infer --scores-out`` under sharding) give one scores file, whose ``pool_path``/``pool_sha256``
    name ``pool_path`` (the merged pool file) when given. Shards of different runs are refused.
    """
    t0 = time.perf_counter()
    shard_paths = [Path(p) for p in shard_paths]
    if not shard_paths:
        raise InputError("merge needs the shard files to merge")
    check_not_input([out_path, manifest_path(out_path)], [*shard_paths, pool_path])
    out_path = check_writable(out_path, overwrite=overwrite)
    kinds = {p: file_format(p) for p in shard_paths}
    kind = kinds[shard_paths[0]]
    if kind not in (POOL_FORMAT, SCORES_FORMAT):
        raise InputError(f"{shard_paths[0]}: not a pool or scores shard (format {kind!r})")
    for p, k in kinds.items():
        if k != kind:
            raise InputError(f"{p}: a {k or 'non-alseg'} file among {kind} shards; merge pool and scores shards "
                             "separately")
    if kind == POOL_FORMAT:
        if pool_path is not None:
            raise InputError("--pool names the merged pool of scores shards; pool shards need none")
        info = merge_pools(shard_paths, out_path, overwrite=overwrite, progress=progress)
    else:
        attrs = None if pool_path is None else {"pool_path": str(pool_path), "pool_sha256": pool_digest(pool_path)}
        info = merge_scores(shard_paths, out_path, overwrite=overwrite, attrs=attrs)
    result = MergeResult(out_path=str(out_path), kind="pool" if kind == POOL_FORMAT else "scores",
                         n_images=info["n_images"], shards=info["shards"], seconds=time.perf_counter() - t0)
    with removed_on_failure(out_path):
        write_manifest(
            out_path, stage="merge",
            args={"shard_paths": [str(p) for p in shard_paths], "out_path": str(out_path),
                  "pool_path": None if pool_path is None else str(pool_path)},
            inputs=[*info["shards"], pool_path], outputs=[out_path], seconds=result.seconds, result=result,
        )
    return result
