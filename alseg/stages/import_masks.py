"""``alseg import``: finished masks from a labeling tool into the dataset, where mmseg reads them.

Reads: a Label Studio JSON export or a CVAT "Segmentation mask 1.1" archive (zip or folder), and the
config (through :mod:`alseg.dataset`: which id an image is, where its mask goes, how masks are coded).

Writes one single-channel PNG per annotated image at the mask path mmseg's dataset class gives that id
(``seg_map_path``: its ``data_prefix``, ``seg_map_suffix`` and sub-folders), coded the way mmseg will
decode it: class ``k`` is stored as ``k`` (``k + 1`` with ``reduce_zero_label``, and through the inverse of
the dataset's ``label_map`` when its classes are a subset); unlabeled pixels as the ignore index (0 with
``reduce_zero_label``, which mmseg turns into 255). With ``labeled_path`` the imported ids are appended
to that id list (those already in it are not repeated).

All or nothing: every mask is decoded and checked (class names, sizes, existing masks without
``overwrite``) and written to a temporary file beside its target before any target is touched; then the
temporaries are renamed into place. A failure before that point leaves the dataset as it was.

Region queries (``ids_path``: the labelled state ``export --ids`` was given, :mod:`alseg.labeltools.regions`):
each mask keeps the returned labels inside the image's queried regions only; every other pixel is
unlabeled. The result is a partial label map. An existing mask is updated, not refused: pixels outside the
queried regions keep their value, and so do pixels inside them that already carry a label, unless
``overwrite`` (then the new answer replaces them inside the queried regions). With ``labeled_path`` the
regions are merged into that labelled state (created if missing), which ``alseg train --labeled`` and
``alseg select --labeled`` read.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from alseg.errors import InputError, OutputExistsError
from alseg.labeltools import FORMATS, image_size
from alseg.files.atomic import holding_output_locks
from alseg.stages import no_progress as _noop

_PNG_LIKE = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


@dataclass
class ImportResult:
    format: str
    export_path: str
    imported: list[str]
    mask_paths: list[str]
    skipped: list[str] = field(default_factory=list)
    labeled_updated: str | None = None
    n_added_to_labeled: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    n_regions: int | None = None  # region queries: the regions imported (None: whole images)
    region_maps: dict[str, Any] = field(default_factory=dict)  # superpixel unit -> where its maps came from


@dataclass
class _Item:
    where: str
    image_id: str
    decode: Callable[[tuple[int, int]], np.ndarray | None]  # (H, W) -> class map, None: nothing painted
    regions: Any = None  # Label Studio: the task's data.alseg_regions (a region query), for a cross-check


def mask_coding(info: Mapping[str, Any], n_classes: int, ignore_index: int, where: str) -> tuple[np.ndarray, int]:
    """``(lut, unlabeled)``: the value stored on disk for each class ``k`` (``lut[k]``) and for unlabeled
    pixels, inverting what mmseg's ``LoadAnnotations`` does (``reduce_zero_label``, then ``label_map``)."""
    label_map = info.get("label_map") or None
    reduce = bool(info.get("reduce_zero_label", False))
    lut = np.arange(n_classes, dtype=np.int64)
    if label_map:
        for k in range(n_classes):
            olds = [int(o) for o, n in label_map.items() if int(n) == k]
            if len(olds) != 1:
                raise InputError(f"{where}: class {k} comes from {len(olds)} labels of the dataset's label_map; "
                                 "cannot write masks for it")
            lut[k] = olds[0]
    if reduce:
        lut = lut + 1
        unlabeled = 0
    else:
        unlabeled = int(ignore_index)
    if lut.max(initial=0) > 255 or not 0 <= unlabeled <= 255:
        raise InputError(f"{where}: mmseg reads masks as 8-bit; {n_classes} classes do not fit")
    if unlabeled in set(lut.tolist()):
        raise InputError(f"{where}: the ignore value {unlabeled} is also a class's value; cannot write masks")
    return lut, unlabeled


def _ids_for_names(cfg, names: Sequence[str], source: str):
    """The split (index) holding an image of every name (see :func:`alseg.labeltools.image_name`), and
    the id of each name."""
    from alseg import dataset as D
    from alseg.labeltools import image_name

    best = None
    seen: set[int] = set()
    for split in D.SPLITS:
        loader = cfg.get(D.LOADER_KEYS[split])
        if not loader or not loader.get("dataset") or id(loader) in seen:
            continue
        seen.add(id(loader))
        index = D.build_index(cfg, split)
        by_name = {image_name(index, i): i for i in index.ids}
        missing = [n for n in names if n not in by_name]
        if not missing:
            return index, [by_name[n] for n in names]
        if best is None or len(missing) < len(best):
            best = missing
    if best is None:
        raise InputError("the config defines no train, val or test dataloader")
    raise InputError(f"{source}: image {best[0]!r} is in no split of the config (names are image paths relative "
                     "to the dataset's image folder, without extension); check --config and --data-root")


def _label_studio_items(path: Path, cfg, class_names_of, skipped: list[str]):
    from alseg import dataset as D
    from alseg.labeltools import labelstudio as LS

    tasks = LS.read_export(path)
    done = [t for t in tasks if t.results]
    skipped += [t.image_id for t in tasks if not t.results]
    if not done:
        raise InputError(f"{path}: no task has a finished annotation; nothing to import")
    index = D.resolve(cfg, [t.image_id for t in done], str(path))
    names = class_names_of(index)

    def decoder(task):
        return lambda size: LS.class_map_from_results(task.results, names, where=task.where, size=size)

    return index, [_Item(where=t.where, image_id=t.image_id, decode=decoder(t), regions=t.regions) for t in done]


def _cvat_items(export, cfg, class_names_of):
    from alseg.labeltools import cvat as CV

    index, ids = _ids_for_names(cfg, export.names, str(export.path))
    names = class_names_of(index)
    row_class = CV.row_classes(export.labelmap, names, source=str(export.path))

    def decoder(name):
        def decode(size):
            where = export.where(name)
            rows = export.label_rows(name)
            if rows.shape != tuple(size):
                raise InputError(f"{where}: mask is {rows.shape[1]}x{rows.shape[0]} but the image is "
                                 f"{size[1]}x{size[0]}; the mask does not fit the image")
            return CV.class_map_from_rows(rows, row_class, export.labelmap, names, where=where)
        return decode

    return index, [_Item(where=export.where(n), image_id=i, decode=decoder(n)) for n, i in zip(export.names, ids)]


def _read_mask(path: Path, size: tuple[int, int], where: str) -> np.ndarray:
    """An existing mask as mmseg stores it (H, W), to update with a region answer."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            old = np.asarray(im)
    except Exception as exc:
        raise InputError(f"{path}: cannot read the existing mask ({type(exc).__name__}: {exc}); {where}") from None
    if old.ndim != 2 or old.dtype != np.uint8:
        raise InputError(f"{path}: the existing mask is not a single-channel 8-bit image; cannot add regions to it")
    if old.shape != tuple(size):
        raise InputError(f"{path}: the existing mask is {old.shape[1]}x{old.shape[0]} but the image is "
                         f"{size[1]}x{size[0]}")
    return old


def _labelled_target(labeled_path: Path) -> Any:
    """The labelled state at ``labeled_path`` to merge imported regions into (empty when missing)."""
    from alseg.files.labelled import LabelledState
    from alseg.partial import read_labels

    if not labeled_path.exists():
        return LabelledState(), []
    state, is_state = read_labels(labeled_path)
    if is_state:
        return state, []
    if labeled_path.suffix != ".jsonl":
        raise InputError(f"{labeled_path}: a plain id list; importing regions writes a labelled state (JSON "
                         f"Lines), so --labeled must be a .jsonl path: cp {labeled_path} "
                         f"{labeled_path.with_suffix('.jsonl')} and pass that")
    return state, [f"{labeled_path}: a plain id list, rewritten as a labelled state (JSON Lines)"]


def _save_mask(array: np.ndarray, path: Path, fmt: str) -> None:
    from PIL import Image

    with open(path, "wb") as fh:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(fh, format=fmt)
        fh.flush()
        os.fsync(fh.fileno())


@holding_output_locks("labeled_path")
def import_masks(
    export_path: str | os.PathLike,
    config_path: str | os.PathLike,
    *,
    fmt: str,
    data_root: str | os.PathLike | None = None,
    labeled_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    cfg_options: Mapping[str, Any] | None = None,
    ids_path: str | os.PathLike | None = None,
    region_maps: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    progress: Callable[..., None] = _noop,
) -> ImportResult:
    """Write the finished masks of a labeling tool's export into the dataset (see module doc); with
    ``ids_path`` (a labelled state of regions) as partial label maps of the queried regions."""
    from alseg import mm
    from alseg.files.atomic import check_not_input, fsync_dir, temp_path, write_error
    from alseg.files.idlist import read_ids, write_ids
    from alseg.labeltools import UNLABELED
    from alseg.labeltools import regions as R
    from alseg.labeltools.cvat import CvatExport

    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    export_path = Path(export_path)
    query = None
    stores: dict[str, Path] = {}
    warnings: list[str] = []
    if ids_path is not None:
        query = R.read_query_state(ids_path)
        if query is None:
            raise InputError(f"{ids_path}: a plain id list; --ids takes the labelled state of the regions that were "
                             "exported (`select --unit ... --out selected.jsonl`); whole images need no --ids")
        stores = R.parse_region_maps(region_maps)
    elif region_maps:
        raise InputError("--region-maps resolves the regions of --ids selected.jsonl; pass --ids too")
    if labeled_path is not None:
        check_not_input([labeled_path], [export_path, ids_path, *stores.values()])
        if query is None:
            labeled = read_ids(labeled_path, allow_missing=True)
        else:
            labeled_state, notes = _labelled_target(Path(labeled_path))
            warnings += notes
    cfg = mm.load_config(config_path, data_root=data_root, cfg_options=cfg_options)

    def class_names_of(index) -> list[str]:
        return index.class_names or mm.class_names(cfg)

    skipped: list[str] = []
    with contextlib.ExitStack() as stack:
        if fmt == "label-studio":
            index, items = _label_studio_items(export_path, cfg, class_names_of, skipped)
        else:
            export = stack.enter_context(CvatExport(export_path))
            index, items = _cvat_items(export, cfg, class_names_of)
        n_classes = len(class_names_of(index))
        if query is not None:
            for item in items:
                if item.image_id not in query.images:
                    raise InputError(f"{item.where}: image {item.image_id!r} is not in {ids_path}; import with the "
                                     "--ids file the tasks were exported from")
                want = R.regions_record(query.images[item.image_id])
                if item.regions is not None and item.regions != want:
                    raise InputError(f"{item.where}: the task was exported for regions {item.regions} but {ids_path} "
                                     f"lists {want}; import with the --ids file the tasks were exported from")
            missing = [i for i in query.ids if i not in {item.image_id for item in items}]
            if missing:
                warnings.append(f"{len(missing)} image(s) of {ids_path} have no annotation in {export_path} "
                                f"(e.g. {missing[0]!r}); their regions stay unlabelled")
        resolver = stack.enter_context(R.RegionResolver(stores, lambda i: index.data_info(i)["img_path"]))

        # 1. where each mask goes; refuse duplicates, existing masks and lossy formats before decoding
        seen: dict[str, str] = {}
        targets: list[Path] = []
        for item in items:
            if item.image_id in seen:
                raise InputError(f"{item.where}: image {item.image_id!r} is annotated twice "
                                 f"(also {seen[item.image_id]})")
            seen[item.image_id] = item.where
            target = index.data_info(item.image_id).get("seg_map_path")
            if not target:
                raise InputError(f"{item.where}: the dataset class gives no mask path for {item.image_id!r}")
            target = Path(target)
            if target.suffix.lower() not in _PNG_LIKE:
                raise InputError(f"{target}: masks with suffix {target.suffix!r} would be lossy or unreadable; "
                                 "use a dataset with seg_map_suffix='.png'")
            if target.is_dir():
                raise InputError(f"{target}: is a folder, not a mask file")
            if target.exists() and not overwrite and query is None:
                raise OutputExistsError(f"{target}: a mask exists for {item.image_id!r} ({item.where}); pass "
                                        "--overwrite to replace it")
            targets.append(target)
        check_not_input(targets, [export_path, labeled_path, ids_path])

        # 2. decode, check and stage every mask beside its target; nothing visible changes yet
        staged: list[tuple[Path, Path]] = []
        made: list[Path] = []
        progress(0, total=len(items))
        n_kept = n_unpainted = 0
        try:
            for item, target in zip(items, targets):
                info = index.data_info(item.image_id)
                size = image_size(info["img_path"], where=item.where)
                class_map = item.decode(size)
                if class_map is None:
                    raise InputError(f"{item.where}: the annotation paints no class; delete it or label the image")
                lut, unlabeled = mask_coding(info, n_classes, index.ignore_index, item.where)
                if query is not None:  # keep the labels inside the queried regions only
                    units = query.images[item.image_id]
                    inside = R.union(R.query_masks(query, item.image_id, size, resolver, str(ids_path)), size)
                    class_map = np.where(inside, class_map, UNLABELED)
                    n_unpainted += R.unpainted_regions(units, item.image_id, class_map != UNLABELED, resolver)
                stored = np.where(class_map == UNLABELED, unlabeled, lut[np.clip(class_map, 0, None)])
                stored = stored.astype(np.uint8)
                if query is not None and target.exists():  # add the regions to the mask already there
                    old = _read_mask(target, size, item.where)
                    replace = inside if overwrite else inside & (old == unlabeled)
                    n_kept += int((inside & ~replace & (old != stored)).sum())
                    stored = np.where(replace, stored, old).astype(np.uint8)
                for folder in (target.parent, *target.parent.parents):
                    if folder.exists():
                        break
                    made.append(folder)
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    tmp = temp_path(target)
                    staged.append((tmp, target))
                    _save_mask(stored, tmp, _PNG_LIKE[target.suffix.lower()])
                except OSError as exc:
                    raise write_error(target, exc) from None
                progress(1)
            # 3. all masks are ready: rename them into place
            for tmp, target in staged:
                try:
                    os.replace(tmp, target)
                except OSError as exc:
                    raise write_error(target, exc) from None
            for folder in {t.parent for _, t in staged}:
                fsync_dir(folder)
        except BaseException:
            for tmp, _ in staged:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            for folder in sorted(set(made), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise

    imported = [item.image_id for item in items]
    added = 0
    if skipped:
        warnings.append(f"{len(skipped)} task(s) have no finished annotation and were skipped (e.g. {skipped[0]!r})")
    n_regions = None
    if query is not None:
        n_regions = sum(len(r) for i in imported for u, r in query.images[i].items() if u != "image")
        if n_kept:
            warnings.append(f"{n_kept} pixel(s) inside the queried regions already carried another label in the "
                            "existing masks and kept it; pass --overwrite to take the new answer there")
        if n_unpainted:
            warnings.append(f"{n_unpainted} queried region(s) came back with no pixel labelled; they are recorded "
                            "as labelled all the same (their pixels stay unlabeled)")
    if labeled_path is not None and query is None:
        have = set(labeled)
        new = [i for i in imported if i not in have]
        write_ids(labeled_path, labeled + new)
        added = len(new)
    elif labeled_path is not None:
        from alseg.files.labelled import Labelled, merge_labelled, write_labelled

        before = set(labeled_state.ids)
        merged = merge_labelled(labeled_state, [Labelled(i, u, tuple(r)) for i in imported
                                                for u, r in query.images[i].items()])
        write_labelled(labeled_path, merged)
        added = sum(1 for i in imported if i not in before)
    return ImportResult(format=fmt, export_path=str(export_path), imported=imported,
                        mask_paths=[str(t) for t in targets], skipped=skipped,
                        labeled_updated=None if labeled_path is None else str(labeled_path),
                        n_added_to_labeled=added, warnings=warnings, seconds=time.perf_counter() - t0,
                        n_regions=n_regions, region_maps=dict(resolver.info))
