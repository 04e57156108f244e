"""Training on partial labels: the label map ``train`` sees for an image with labelled regions.

docs/regions.md ("Training on partial labels") explains it for users; docs/algorithms.md §11.2 defines the
annotation. An image of the labelled state (:mod:`alseg.files.labelled`) is either fully labelled (its
whole ground truth is used, as always) or labelled in regions: then its training label map is the union
of its labelled regions, annotated ``precise`` (ground truth inside) or ``dominant`` (each region's
majority class, Cai et al. CVPR 2021), and the dataset's ignore index everywhere else, which mmseg's
losses skip. Where regions of several units overlap, a pixel keeps the label of the first unit listed.

The masking is an mmseg transform, :class:`PartialLabels` (registered as ``AlsegPartialLabels`` in mmseg's
``TRANSFORMS``), inserted into the train pipeline right after ``LoadAnnotations``: it sees the full
ground truth at original resolution (``dominant`` needs it) before any resize, crop or flip. Region maps:
patch maps from the image size, pixel ids y·W + x, superpixel maps from a region-map store
(:mod:`alseg.files.regionmaps`), either one the user passes or one :func:`ensure_superpixel_stores`
computes with the parameters of :func:`alseg.regions.region_map_params`.

This module imports numpy and alseg only; mmseg is touched in :func:`register_transform` alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from alseg.annotate import ANNOTATION_MODES, dominant, precise
from alseg.errors import InputError, UnknownName
from alseg.files.labelled import FULL, LabelledState, labelled_mask, read_labelled
from alseg.units import parse_unit

__all__ = [
    "ANNOTATION_MODES",
    "TRANSFORM_TYPE",
    "check_annotation",
    "LabelCount",
    "PartialLabels",
    "StoreLookup",
    "count_labels",
    "ensure_superpixel_stores",
    "insert_transform",
    "is_labelled_state",
    "open_stores",
    "partial_label_map",
    "read_labels",
    "register_transform",
]

TRANSFORM_TYPE = "AlsegPartialLabels"
RegionLookup = Callable[[str, str, tuple[int, int]], np.ndarray]


def is_labelled_state(path: str | os.PathLike) -> bool:
    """True when ``path`` is an ``alseg.labelled`` file (its first non-empty line is a header object), false
    for a plain id list or a file that cannot be read (the id-list reader then reports it)."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                if not line.startswith("{"):
                    return False
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(doc, dict)  # as alseg.files.labelled reads it: a header object
    except (OSError, UnicodeDecodeError):
        return False
    return False


def read_labels(path: str | os.PathLike) -> tuple[LabelledState, bool]:
    """``(state, is_state_file)``: a labelled-state file, or a plain id list read exactly as before
    (:func:`alseg.files.idlist.read_ids`: every listed image fully labelled, in list order)."""
    if is_labelled_state(path):
        return read_labelled(path), True
    from alseg.files.idlist import read_ids

    return LabelledState({i: {FULL: ()} for i in read_ids(path)}), False


def check_annotation(annotation: str) -> str:
    if annotation not in ANNOTATION_MODES:
        raise UnknownName(f"--annotation: unknown {annotation!r}; choose one of: {', '.join(ANNOTATION_MODES)}")
    return annotation


# ------------------------------------------------------------------------------------------ label maps


def _cached(lookup: RegionLookup) -> RegionLookup:
    cache: dict[str, np.ndarray] = {}

    def get(unit: str, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        if unit not in cache:
            cache[unit] = np.asarray(lookup(unit, image_id, shape))
        return cache[unit]

    return get


def partial_label_map(
    gt: np.ndarray,
    units: Mapping[str, Sequence[int]],
    image_id: str,
    lookup: RegionLookup,
    *,
    annotation: str = "precise",
    ignore_index: int = 255,
) -> np.ndarray:
    """The training label map (H, W) of one image from its full ground truth ``gt`` (H, W) int.

    ``units``: unit -> labelled region ids, one image's entry of :class:`LabelledState` (``{"image": ()}``:
    fully labelled, ``gt`` is returned as is). ``lookup(unit, image_id, (H, W))`` -> region map
    (:func:`alseg.regions.region_lookup`). ``precise``: ground truth inside the labelled regions;
    ``dominant``: each region's majority class (pixel regions: their own class). Everything else is
    ``ignore_index``; a pixel in regions of several units takes the first unit's label.
    """
    check_annotation(annotation)
    gt = np.asarray(gt)
    if FULL in units:
        return gt
    if gt.dtype.kind in "iu" and not (np.iinfo(gt.dtype).min <= ignore_index <= np.iinfo(gt.dtype).max):
        gt = gt.astype(np.int64)
    lookup = _cached(lookup)
    shape = (int(gt.shape[0]), int(gt.shape[1]))
    if annotation == "precise":
        mask = labelled_mask(LabelledState({image_id: dict(units)}), image_id, shape, lookup)
        return precise(gt, mask, ignore_index)
    out = np.full(gt.shape, ignore_index, dtype=gt.dtype)
    done = np.zeros(gt.shape, dtype=bool)
    for unit, regions in units.items():
        mask = labelled_mask(LabelledState({image_id: {unit: tuple(regions)}}), image_id, shape, lookup)
        if parse_unit(unit).kind == "pixel":
            labels = precise(gt, mask, ignore_index)  # a pixel's majority class is its own
        else:
            labels = dominant(gt, lookup(unit, image_id, shape), regions, ignore_index)
        new = mask & ~done
        out[new] = labels[new]
        done |= mask
    return out


# ------------------------------------------------------------------------------------------ region maps


def open_stores(paths: Sequence[str | os.PathLike], source: str = "--region-maps") -> dict[str, Path]:
    """unit -> store path of the given region-map stores (each opened once to read its unit); two stores
    of one unit are refused."""
    from alseg.files.regionmaps import RegionMapReader

    out: dict[str, Path] = {}
    for p in paths:
        with RegionMapReader(p) as reader:
            unit = str(parse_unit(reader.unit))
        if unit in out:
            raise InputError(f"{source}: {out[unit]} and {p} both hold region maps of unit {unit}; pass one")
        out[unit] = Path(p)
    return out


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (PIL), what SLIC is run on."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise InputError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from None


def superpixel_units(state: LabelledState) -> list[str]:
    """The superpixel units the state uses, in first-use order."""
    units: dict[str, None] = {}
    for per_image in state.images.values():
        for unit in per_image:
            if unit != FULL and parse_unit(unit).kind == "superpixel":
                units[unit] = None
    return list(units)


def ensure_superpixel_stores(
    state: LabelledState,
    stores: Mapping[str, Path],
    out_dir: Path,
    image_path: Callable[[str], str],
    *,
    compute: bool = True,
    progress: Callable[[int], None] = lambda n: None,
) -> dict[str, dict[str, Any]]:
    """For each superpixel unit of ``state`` without a given store, compute the maps of its images into
    ``out_dir/train.regions-<unit>.h5`` (:func:`alseg.regions.ensure_region_maps`, the default SLIC
    parameters; an existing one there is replaced). Returns unit -> ``{"source": "store"|"computed",
    "path", "params"}`` for every superpixel unit used. ``compute=False`` only names the stores (another
    process, rank 0 of a distributed training, computes them)."""
    from alseg.files.regionmaps import RegionMapReader, region_maps_path
    from alseg.regions import ensure_region_maps, region_map_params

    out: dict[str, dict[str, Any]] = {}
    for unit in superpixel_units(state):
        if unit in stores:
            with RegionMapReader(stores[unit]) as reader:
                out[unit] = {"source": "store", "path": str(stores[unit]), "params": reader.params}
            continue
        path = region_maps_path(out_dir / "train.h5", unit)
        out[unit] = {"source": "computed", "path": str(path), "params": region_map_params(unit)}
        if not compute:
            continue
        if path.exists():
            path.unlink()  # maps of another run's data could sit here; these are cheap to redo
        ids = [i for i, per_image in state.images.items() if unit in per_image]
        ensure_region_maps(path, unit, ids, lambda i: load_rgb(image_path(i)), progress=progress)
    return out


class StoreLookup:
    """``region_lookup`` over stores opened on first use, reopened in a new process (h5py handles do not
    survive a fork)."""

    def __init__(self, paths: Mapping[str, str | os.PathLike]):
        self.paths = {str(u): str(p) for u, p in paths.items()}
        self._pid: int | None = None
        self._lookup: RegionLookup | None = None
        self._readers: list[Any] = []

    def __call__(self, unit: str, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        if self._lookup is None or self._pid != os.getpid():
            from alseg.files.regionmaps import RegionMapReader
            from alseg.regions import region_lookup

            readers = {u: RegionMapReader(p, unit=u) for u, p in self.paths.items()}
            self._readers = list(readers.values())
            self._lookup = region_lookup(readers)
            self._pid = os.getpid()
        return self._lookup(unit, image_id, shape)

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers, self._lookup, self._pid = [], None, None

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["paths"])


# ------------------------------------------------------------------------------------------ counting


@dataclass
class LabelCount:
    """Labelled pixels of a training set at original resolution: ``labelled_pixels`` (pixels inside
    labelled regions, every pixel of a fully labelled image) out of ``image_pixels`` (all pixels of the
    labelled images)."""

    n_full: int = 0
    n_partial: int = 0
    labelled_pixels: int = 0
    image_pixels: int = 0
    per_unit: dict[str, int] = field(default_factory=dict)  # unit -> labelled regions

    @property
    def labelled_percent(self) -> float:
        return 100.0 * self.labelled_pixels / self.image_pixels if self.image_pixels else 0.0


def label_shape(seg_map_path: str) -> tuple[int, int]:
    """(H, W) of a label map from its file header."""
    from PIL import Image

    try:
        with Image.open(seg_map_path) as im:
            w, h = im.size
    except Exception as exc:
        raise InputError(f"{seg_map_path}: cannot read the label map ({type(exc).__name__}: {exc})") from None
    return int(h), int(w)


def count_labels(
    state: LabelledState,
    seg_map_path: Callable[[str], str],
    lookup: RegionLookup,
    source: str,
) -> LabelCount:
    """Resolve every labelled region of ``state`` (so a region id out of range, a missing region map or a
    map of the wrong size fails here, before training, in one line naming ``source``) and count pixels."""
    count = LabelCount()
    for image_id, per_image in state.images.items():
        shape = label_shape(seg_map_path(image_id))
        count.image_pixels += shape[0] * shape[1]
        if FULL in per_image:
            count.n_full += 1
            count.labelled_pixels += shape[0] * shape[1]
            continue
        count.n_partial += 1
        for unit, regions in per_image.items():
            count.per_unit[unit] = count.per_unit.get(unit, 0) + len(regions)
        try:
            mask = labelled_mask(state, image_id, shape, lookup)
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None
        count.labelled_pixels += int(mask.sum())
    return count


# ------------------------------------------------------------------------------------------ the transform


class PartialLabels:
    """mmseg transform ``AlsegPartialLabels``: replaces ``gt_seg_map`` of a partly labelled image by its
    partial label map (:func:`partial_label_map`); fully labelled images pass unchanged.

    Args (all plain values, so the transform sits in a config and in mmengine's dumped config):
        labelled_file: the labelled-state file.
        annotation: ``precise`` or ``dominant``.
        region_maps: unit -> region-map store, for superpixel units.
        ignore_index: the dataset's ignore index.
        img_prefix, img_suffix: the dataset's image folder and suffix; the image id is ``img_path`` relative
            to the folder without the suffix (:func:`alseg.dataset.sample_id`).
    """

    def __init__(self, labelled_file: str, annotation: str = "precise", region_maps: Mapping[str, str] | None = None,
                 ignore_index: int = 255, img_prefix: str = "", img_suffix: str | None = None):
        self.labelled_file = str(labelled_file)
        self.annotation = check_annotation(annotation)
        self.region_maps = {str(u): str(p) for u, p in (region_maps or {}).items()}
        self.ignore_index = int(ignore_index)
        self.img_prefix = str(img_prefix or "")
        self.img_suffix = img_suffix
        self.state, _ = read_labels(self.labelled_file)
        self._lookup = StoreLookup(self.region_maps)

    def __call__(self, results: dict) -> dict:
        from alseg.dataset import sample_id

        image_id = sample_id(results["img_path"], self.img_prefix, self.img_suffix)
        units = self.state.images.get(image_id)
        if units is None:
            raise InputError(f"{self.labelled_file}: image {image_id!r} ({results['img_path']}) is not in the "
                             "labelled state, but the train pipeline loaded it")
        if "gt_seg_map" not in results:
            raise InputError(f"{TRANSFORM_TYPE} must follow LoadAnnotations in the train pipeline")
        if FULL not in units:
            try:
                results["gt_seg_map"] = partial_label_map(
                    results["gt_seg_map"], units, image_id, self._lookup, annotation=self.annotation,
                    ignore_index=self.ignore_index)
            except InputError as exc:
                raise InputError(f"{self.labelled_file}: {exc}") from None
        return results

    def __repr__(self) -> str:
        return f"{TRANSFORM_TYPE}(labelled_file={self.labelled_file!r}, annotation={self.annotation!r})"


def register_transform() -> str:
    """Register :class:`PartialLabels` in mmseg's ``TRANSFORMS`` (idempotent); returns its type name."""
    from alseg.mm import _init_mm

    _init_mm()
    from mmseg.registry import TRANSFORMS

    if TRANSFORMS.module_dict.get(TRANSFORM_TYPE) is not PartialLabels:
        TRANSFORMS.register_module(name=TRANSFORM_TYPE, module=PartialLabels, force=True)
    return TRANSFORM_TYPE


def _is_load_annotations(step: Any) -> bool:
    t = step.get("type", "") if isinstance(step, Mapping) else ""
    name = t if isinstance(t, str) else getattr(t, "__name__", "")
    return name.rsplit(".", 1)[-1] == "LoadAnnotations"


def insert_transform(dataset_cfg: Any, leaves: Sequence[Any], **kwargs: Any) -> None:
    """Insert ``AlsegPartialLabels(**kwargs)`` right after ``LoadAnnotations`` in the pipeline of every leaf
    of ``dataset_cfg`` (wrappers and :class:`alseg.dataset.AlsegSubset` unwrapped). ``leaves``: the built
    leaf datasets in the same order (:attr:`alseg.dataset.SplitIndex.leaves`), which give each leaf's image
    folder and suffix."""
    from alseg.dataset import leaf_configs

    register_transform()
    configs = leaf_configs(dataset_cfg)
    if len(configs) != len(leaves):
        raise InputError(f"the train split has {len(configs)} dataset configs but {len(leaves)} datasets")
    for leaf_cfg, ds in zip(configs, leaves):
        steps = [dict(s) if isinstance(s, Mapping) else s for s in (leaf_cfg.get("pipeline") or [])]
        at = next((k + 1 for k, s in enumerate(steps) if _is_load_annotations(s)), None)
        if at is None:
            raise InputError("the train pipeline has no LoadAnnotations; partial labels are applied right after it")
        prefix = (getattr(ds, "data_prefix", None) or {}).get("img_path", "")
        steps.insert(at, dict(type=TRANSFORM_TYPE, img_prefix=str(prefix or ""),
                              img_suffix=getattr(ds, "img_suffix", None), **kwargs))
        leaf_cfg["pipeline"] = steps
