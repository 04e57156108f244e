"""Ids and samples from mmseg's own dataset classes: the one place alseg learns where an image lives.

alseg never re-derives a data layout from config keys. It builds the dataset of a config's split through
mmseg's registry (so class defaults such as CityscapesDataset's ``_leftImg8bit.png`` suffix, ``ann_file``
splits, ``reduce_zero_label``, ``label_map``/``metainfo`` overrides and datasets registered by the user's
``custom_imports`` all apply), unwraps ``RepeatDataset``/``ClassBalancedDataset``/``ConcatDataset``, and
names every sample by its **id**: the image path relative to its dataset's image prefix, without the image
suffix — what mmseg itself reads from an ``ann_file`` line (``aachen/aachen_000000_000019`` for
Cityscapes, ``2007_000032`` for Pascal VOC, ``ADE_train_00000001`` for ADE20K).

Used by ``train`` (the labeled list becomes an :class:`AlsegSubset` of the train split), ``infer``
(:func:`resolve` finds the split holding an id list, :func:`test_loader` feeds it through the test
pipeline) and ``ids``. Imports mm* lazily.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from alseg.errors import InputError

SPLITS = ("train", "val", "test")
LOADER_KEYS = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader"}
WRAPPERS_ONE = ("RepeatDataset", "ClassBalancedDataset")
WRAPPERS_MANY = ("ConcatDataset",)
SUBSET_TYPE = "AlsegSubset"
# Debugging aid: with ALSEG_RECORD_SAMPLES=PATH set, each AlsegSubset appends "<rank> <split> <id>" to
# PATH.<rank> for every sample it is asked for (rank: torchrun's RANK, else 0); tests read which ids each
# rank of a distributed training loaded.
RECORD_ENV = "ALSEG_RECORD_SAMPLES"


def check_id(image_id: str, source: str) -> None:
    """Refuse an id that would leave the dataset's folders (absolute, ``..``, empty)."""
    from alseg.files.idlist import relative_id

    if not relative_id(image_id):
        raise InputError(f"{source}: id {image_id!r} is not a relative path inside the dataset; refused")


def _type_name(dataset_cfg: Any) -> str:
    t = dataset_cfg.get("type", "")
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def leaf_configs(dataset_cfg: Any) -> list[dict]:
    """The leaf dataset configs under repeat/class-balanced/concat wrappers, in order."""
    name = _type_name(dataset_cfg)
    if name == SUBSET_TYPE:
        return leaf_configs(dataset_cfg["dataset"])
    if name in WRAPPERS_ONE:
        return leaf_configs(dataset_cfg["dataset"])
    if name in WRAPPERS_MANY:
        return [leaf for sub in dataset_cfg["datasets"] for leaf in leaf_configs(sub)]
    return [dataset_cfg]


def set_data_root(dataset_cfg: Any, data_root: str) -> None:
    """Point every leaf of a (possibly wrapped) dataset config at ``data_root``."""
    for leaf in leaf_configs(dataset_cfg):
        leaf["data_root"] = data_root


def split_dataset_cfg(cfg, split: str) -> Any:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    loader = cfg.get(LOADER_KEYS[split])
    if not loader or not loader.get("dataset"):
        raise InputError(f"the config has no {LOADER_KEYS[split]}.dataset; use another --split")
    return loader["dataset"]


def sample_id(img_path: str, img_prefix: str, img_suffix: str | None) -> str:
    """``<prefix>/<id><suffix>`` -> ``id`` (posix separators)."""
    rel = os.path.relpath(img_path, img_prefix) if img_prefix else img_path
    rel = rel.replace(os.sep, "/")
    if img_suffix and rel.endswith(img_suffix):
        return rel[: -len(img_suffix)]
    return os.path.splitext(rel)[0]


def _build_leaf(leaf_cfg: Any, *, keep_pipeline: bool):
    from mmseg.registry import DATASETS

    leaf_cfg = copy.deepcopy(leaf_cfg)
    if not keep_pipeline:
        leaf_cfg["pipeline"] = []
    leaf_cfg["lazy_init"] = False
    leaf_cfg.pop("indices", None)  # alseg picks the samples itself
    try:
        ds = DATASETS.build(leaf_cfg)
    except (AssertionError, FileNotFoundError, OSError) as exc:
        root = leaf_cfg.get("data_root") or "."
        what = str(exc).strip() or type(exc).__name__
        raise InputError(
            f"{root}: mmseg's {_type_name(leaf_cfg)} cannot read this folder ({what}); check --data-root and the "
            "folder layout the dataset class expects"
        ) from None
    except KeyError as exc:
        raise InputError(f"dataset type {_type_name(leaf_cfg)!r} is not registered in mmseg ({exc}); "
                         "add it to the config's custom_imports") from None
    return ds


@dataclass
class SplitIndex:
    """The samples of one split of a config, keyed by id, as mmseg's dataset classes list them."""

    split: str
    leaves: list[Any]
    ids: list[str]
    where: dict[str, tuple[int, int]]  # id -> (leaf, index in the leaf)
    duplicates: int = 0
    metainfo: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.metainfo.get("classes", ())]

    @property
    def ignore_index(self) -> int:
        return int(getattr(self.leaves[0], "ignore_index", 255)) if self.leaves else 255

    @property
    def data_root(self) -> str:
        return str(getattr(self.leaves[0], "data_root", "") or ".") if self.leaves else "."

    def missing(self, ids: Sequence[str]) -> list[str]:
        return [i for i in ids if i not in self.where]

    def locate(self, ids: Sequence[str], source: str) -> list[tuple[int, int]]:
        """``(leaf, index)`` of each id; one error line naming ``source`` and the first unknown id."""
        out = []
        for i in ids:
            check_id(i, source)
            hit = self.where.get(i)
            if hit is None:
                raise InputError(f"{source}: id {i!r} is not in the config's {self.split} split "
                                 f"({len(self.ids)} ids; list them with `alseg ids CONFIG --split {self.split}`)")
            out.append(hit)
        return out

    def data_info(self, image_id: str) -> dict[str, Any]:
        leaf, idx = self.where[image_id]
        return copy.deepcopy(self.leaves[leaf].get_data_info(idx))

    def check_files(self, ids: Sequence[str], *, masks: bool, source: str) -> None:
        """One error line for the first id whose image (or mask) file is missing."""
        for i in ids:
            info = self.data_info(i)
            if not os.path.isfile(info["img_path"]):
                raise InputError(f"{source}: id {i!r}: image not found at {info['img_path']}")
            seg = info.get("seg_map_path")
            if masks and (not seg or not os.path.isfile(seg)):
                raise InputError(f"{source}: id {i!r}: mask not found at {seg}")


def build_index(cfg, split: str, *, keep_pipeline: bool = False, dataset_cfg: Any = None) -> SplitIndex:
    """Build the split's dataset(s) through mmseg's registry and index their samples by id."""
    from alseg.mm import _init_mm

    _init_mm()
    dataset_cfg = split_dataset_cfg(cfg, split) if dataset_cfg is None else dataset_cfg
    leaves = [_build_leaf(c, keep_pipeline=keep_pipeline) for c in leaf_configs(dataset_cfg)]
    ids: list[str] = []
    where: dict[str, tuple[int, int]] = {}
    duplicates = 0
    for li, ds in enumerate(leaves):
        prefix = (getattr(ds, "data_prefix", None) or {}).get("img_path", "")
        suffix = getattr(ds, "img_suffix", None)
        for k in range(len(ds)):
            image_id = sample_id(ds.get_data_info(k)["img_path"], prefix, suffix)
            if image_id in where:
                duplicates += 1  # e.g. VOC train + aug: the first dataset's sample wins
                continue
            where[image_id] = (li, k)
            ids.append(image_id)
    meta = dict(leaves[0].metainfo) if leaves else {}
    return SplitIndex(split=split, leaves=leaves, ids=ids, where=where, duplicates=duplicates, metainfo=meta)


def resolve(cfg, ids: Sequence[str], source: str, split: str = "auto") -> SplitIndex:
    """The split that holds every id of ``ids`` (``auto``: train, then val, then test)."""
    for i in ids:
        check_id(i, source)
    if split != "auto":
        index = build_index(cfg, split)
        index.locate(ids, source)
        return index
    best: tuple[int, SplitIndex] | None = None
    seen: set[int] = set()
    for name in SPLITS:
        loader = cfg.get(LOADER_KEYS[name])
        if not loader or not loader.get("dataset") or id(loader) in seen:
            continue
        seen.add(id(loader))
        index = build_index(cfg, name)
        missing = index.missing(ids)
        if not missing:
            return index
        if best is None or len(missing) < best[0]:
            best = (len(missing), index)
    if best is None:
        raise InputError("the config defines no train, val or test dataloader")
    first = best[1].missing(ids)[0]
    raise InputError(f"{source}: id {first!r} is in no split of the config (closest: {best[1].split}, which lacks "
                     f"{best[0]} of {len(ids)} ids); list a split's ids with `alseg ids CONFIG --split NAME`")


def register_subset() -> str:
    """Register :class:`AlsegSubset` in mmseg's dataset registry (idempotent); returns its type name."""
    from alseg.mm import _init_mm

    _init_mm()
    import numpy as np
    from mmseg.registry import DATASETS

    if SUBSET_TYPE in DATASETS.module_dict:
        return SUBSET_TYPE

    class AlsegSubset:
        """The samples of ``dataset`` whose ids are listed in ``ids_file`` (an id list, or a labelled-state
        file: every image it names), through the dataset's own pipeline.

        Wrappers are unwrapped (an infinite sampler makes ``RepeatDataset`` moot). A sample whose pipeline
        returns ``None`` is replaced by another listed sample, never by an unlisted one. Under DDP mmengine's
        samplers (``InfiniteSampler``, ``DefaultSampler``) give each rank a disjoint share of the indices.
        """

        def __init__(self, dataset: dict, ids_file: str, split: str = "train", seed: int = 0, lazy_init: bool = False):
            from alseg.partial import read_labels

            ids = read_labels(ids_file)[0].ids  # an id list, or every image of a labelled-state file
            if not ids:
                raise InputError(f"{ids_file}: the id list is empty")
            self.index = build_index(None, split, keep_pipeline=True, dataset_cfg=dataset)
            self.rows = self.index.locate(ids, str(ids_file))
            self.ids = list(ids)
            self.index.check_files(ids, masks=True, source=str(ids_file))
            self._rng = np.random.default_rng(seed)
            self.split = split
            self._record = os.environ.get(RECORD_ENV) or None

        @property
        def metainfo(self) -> dict:
            return copy.deepcopy(self.index.metainfo)

        def full_init(self) -> None:
            pass

        def __len__(self) -> int:
            return len(self.rows)

        def get_data_info(self, k: int) -> dict:
            leaf, idx = self.rows[k]
            return self.index.leaves[leaf].get_data_info(idx)

        def __getitem__(self, k: int):
            if self._record:  # see RECORD_ENV; a worker process inherits RANK from its rank
                rank = os.environ.get("RANK", "0")
                with open(f"{self._record}.{rank}", "a", encoding="utf-8") as fh:
                    fh.write(f"{rank} {self.split} {self.ids[k]}\n")
            for _ in range(50):
                leaf, idx = self.rows[k]
                try:
                    data = self.index.leaves[leaf].prepare_data(idx)
                except Exception as exc:  # unreadable/truncated image or mask: one line naming the file
                    info = self.index.leaves[leaf].get_data_info(idx)
                    raise InputError(f"{_unreadable(info)}: cannot load labeled id {self.ids[k]!r} through the "
                                     f"train pipeline ({type(exc).__name__}: {exc})") from None
                if data is not None:
                    return data
                k = int(self._rng.integers(len(self.rows)))
            raise InputError(f"the pipeline returned no sample for 50 labeled images (last: {self.ids[k]!r})")

    DATASETS.register_module(name=SUBSET_TYPE, module=AlsegSubset, force=True)
    return SUBSET_TYPE


def subset_config(dataset_cfg: Any, ids_file: str | os.PathLike, split: str, seed: int = 0) -> dict:
    """A dataset config for the listed ids of ``dataset_cfg`` (an :class:`AlsegSubset`)."""
    return dict(type=register_subset(), dataset=copy.deepcopy(dataset_cfg), ids_file=str(Path(ids_file).resolve()),
                split=split, seed=int(seed))


def test_pipeline(cfg, *, with_labels: bool) -> list[dict]:
    """The config's test pipeline (its first test/val leaf's, else ``test_pipeline``); ``LoadAnnotations``
    only when labels are wanted."""
    steps = None
    for key in ("test_dataloader", "val_dataloader"):
        loader = cfg.get(key)
        if loader and loader.get("dataset"):
            leaf = leaf_configs(loader["dataset"])[0]
            if leaf.get("pipeline"):
                steps = leaf["pipeline"]
                break
    if steps is None:
        steps = cfg.get("test_pipeline")
    if not steps:
        raise InputError("the config has no test pipeline (test_dataloader.dataset.pipeline or test_pipeline)")
    steps = [dict(s) for s in steps]
    has_ann = any(s.get("type") == "LoadAnnotations" for s in steps)
    steps = [s for s in steps if with_labels or s.get("type") != "LoadAnnotations"]
    if with_labels and not has_ann:
        at = next((k + 1 for k, s in enumerate(steps) if s.get("type") == "LoadImageFromFile"), 0)
        steps.insert(at, dict(type="LoadAnnotations"))
    return steps


def _unreadable(info: dict) -> str:
    """The file of a sample that the pipeline failed on: its mask when the image decodes, else the image."""
    from PIL import Image

    mask = info.get("seg_map_path")
    try:
        with Image.open(info["img_path"]) as im:
            im.load()
    except Exception:
        return str(info.get("img_path"))
    if mask:
        try:
            with Image.open(mask) as im:
                im.load()
        except Exception:
            return str(mask)
    return str(info.get("img_path"))


def test_loader(cfg, index: SplitIndex, ids: Sequence[str], *, with_labels: bool, batch_size: int,
                num_workers: int = 0):
    """A torch DataLoader over ``ids`` (of ``index``) with the config's test pipeline; mmengine batches."""
    import torch.utils.data
    from mmengine.dataset import Compose, pseudo_collate

    pipeline = Compose(test_pipeline(cfg, with_labels=with_labels))
    ids = list(ids)

    class _Ids(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, k: int) -> dict:
            info = index.data_info(ids[k])
            try:
                return pipeline(info)
            except Exception as exc:  # unreadable/truncated image or mask: one line naming the file
                raise InputError(f"{_unreadable(info)}: cannot load id {ids[k]!r} through the test pipeline "
                                 f"({type(exc).__name__}: {exc})") from None

    return torch.utils.data.DataLoader(
        _Ids(), batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=pseudo_collate
    )
