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


@dataclass
class _Item:
    where: str
    image_id: str
    decode: Callable[[tuple[int, int]], np.ndarray | None]  # (H, W) -> class map, None: nothing painted


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

    return index, [_Item(where=t.where, image_id=t.image_id, decode=decoder(t)) for t in done]


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
    progress: Callable[..., None] = _noop,
) -> ImportResult:
    """Write the finished masks of a labeling tool's export into the dataset (see module doc)."""
    from alseg import mm
    from alseg.files.atomic import check_not_input, fsync_dir, temp_path, write_error
    from alseg.files.idlist import read_ids, write_ids
    from alseg.labeltools import UNLABELED
    from alseg.labeltools.cvat import CvatExport

    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    export_path = Path(export_path)
    if labeled_path is not None:
        check_not_input([labeled_path], [export_path])
        labeled = read_ids(labeled_path, allow_missing=True)
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
            if target.exists() and not overwrite:
                raise OutputExistsError(f"{target}: a mask exists for {item.image_id!r} ({item.where}); pass "
                                        "--overwrite to replace it")
            targets.append(target)
        check_not_input(targets, [export_path, labeled_path])

        # 2. decode, check and stage every mask beside its target; nothing visible changes yet
        staged: list[tuple[Path, Path]] = []
        made: list[Path] = []
        progress(0, total=len(items))
        try:
            for item, target in zip(items, targets):
                info = index.data_info(item.image_id)
                size = image_size(info["img_path"], where=item.where)
                class_map = item.decode(size)
                if class_map is None:
                    raise InputError(f"{item.where}: the annotation paints no class; delete it or label the image")
                lut, unlabeled = mask_coding(info, n_classes, index.ignore_index, item.where)
                stored = np.where(class_map == UNLABELED, unlabeled, lut[np.clip(class_map, 0, None)])
                stored = stored.astype(np.uint8)
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
    warnings: list[str] = []
    if skipped:
        warnings.append(f"{len(skipped)} task(s) have no finished annotation and were skipped (e.g. {skipped[0]!r})")
    if labeled_path is not None:
        have = set(labeled)
        new = [i for i in imported if i not in have]
        write_ids(labeled_path, labeled + new)
        added = len(new)
    return ImportResult(format=fmt, export_path=str(export_path), imported=imported,
                        mask_paths=[str(t) for t in targets], skipped=skipped,
                        labeled_updated=None if labeled_path is None else str(labeled_path),
                        n_added_to_labeled=added, warnings=warnings, seconds=time.perf_counter() - t0)
