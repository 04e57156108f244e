"""Stage ``ids``: the ids one split of a config's dataset holds, as mmseg's own dataset classes list them.

Reads: an mmseg config and the data under its ``data_root``. Writes: optionally an id list (the pool of a
real round is usually ``alseg ids CONFIG --split train``). See :mod:`alseg.dataset` for what an id is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from alseg.errors import InputError


@dataclass
class IdsResult:
    split: str
    n_ids: int
    ids: list[str]
    class_names: list[str] = field(default_factory=list)
    dataset_types: list[str] = field(default_factory=list)
    data_root: str = "."
    duplicates: int = 0
    out_path: str | None = None
    seconds: float = 0.0


def list_ids(
    config_path: str | os.PathLike,
    *,
    split: str = "train",
    data_root: str | os.PathLike | None = None,
    out_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    cfg_options: Mapping[str, Any] | None = None,
) -> IdsResult:
    """List the ids of ``split``; with ``out_path`` also write them as an id list (atomically)."""
    from alseg import dataset as D
    from alseg import mm
    from alseg.files.atomic import check_writable
    from alseg.files.idlist import write_ids

    t0 = time.perf_counter()
    if out_path is not None:
        out_path = check_writable(out_path, overwrite=overwrite)
    cfg = mm.load_config(config_path, data_root=data_root, cfg_options=cfg_options)
    index = D.build_index(cfg, split)
    if not index.ids:
        raise InputError(f"{index.data_root}: the config's {split} split holds no images there "
                         "(check --data-root and the folder layout of the dataset class)")
    if out_path is not None:
        write_ids(out_path, index.ids)
    return IdsResult(
        split=split, n_ids=len(index.ids), ids=index.ids, class_names=index.class_names,
        dataset_types=[type(leaf).__name__ for leaf in index.leaves], data_root=index.data_root,
        duplicates=index.duplicates, out_path=None if out_path is None else str(out_path),
        seconds=time.perf_counter() - t0,
    )
