"""``alseg export``: the selected images, with the model's prediction as pre-annotation, for a labeling tool.

Reads: the selected id list, the pool file (logits at the decode head's resolution, each image's valid
size in ``/sizes``), the config (where each image lives, its classes and palette) and, for the risk
layer, a scores file with CRC risk maps (``alseg score --strategy crc --save-risk-maps N``).

The pre-annotation is the model's argmax at the image's own resolution: each image's valid logits are
upsampled bilinearly to the size of its image file (the decode head's ``align_corners``, as mmseg does
when it predicts), then the argmax is taken. Risk maps are upsampled the same way and thresholded.

Writes, into ``--out`` (a folder):

- label-studio: ``tasks.json`` (tasks with brush pre-annotations), ``labeling_config.xml`` and
  ``manifest.json`` (:mod:`alseg.labeltools.labelstudio`). ``data.image`` is
  ``--image-root-url`` + the image's path relative to the dataset's image folder, else the image's
  absolute local path.
- cvat: ``annotations.zip`` (Segmentation mask 1.1, :mod:`alseg.labeltools.cvat`), ``images/`` (copies
  of the images under their relative paths, so a task made from that folder has the names the archive
  uses) and ``manifest.json``.

Every file is written atomically; an existing one is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from alseg.errors import InputError
from alseg.labeltools import FORMATS, image_size
from alseg.stages import no_progress as _noop



@dataclass
class ExportResult:
    format: str
    out_dir: str
    files: list[str]
    n_images: int
    ids: list[str]
    class_names: list[str]
    n_with_risk: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def upsample(maps: np.ndarray, size: tuple[int, int], *, align_corners: bool = False) -> np.ndarray:
    """Bilinear resize of (C, h, w) float maps to (C, H, W) float32 (torch, as mmseg's ``resize``)."""
    import torch
    import torch.nn.functional as F

    maps = np.asarray(maps, dtype=np.float32)
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    with torch.no_grad():
        t = F.interpolate(torch.from_numpy(np.ascontiguousarray(maps))[None], size=tuple(int(s) for s in size),
                          mode="bilinear", align_corners=bool(align_corners))
    return t[0].numpy()


def prediction_at_image_size(logits: np.ndarray, size: tuple[int, int], *, align_corners: bool = False) -> np.ndarray:
    """Class map (H, W) int64: argmax over classes of ``logits`` (K, h, w) upsampled to ``size``; ties
    go to the lower class index."""
    return np.argmax(upsample(logits, size, align_corners=align_corners), axis=0).astype(np.int64)


def _palette(index) -> list | None:
    pal = index.metainfo.get("palette")
    return [list(p) for p in pal] if pal else None


def _check_out(out_dir: Path, names: list[str], overwrite: bool) -> None:
    from alseg.files.atomic import check_writable

    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: is a file; --out must be a folder")
    for name in names:
        check_writable(out_dir / name, overwrite=overwrite)


def export(
    selected_path: str | os.PathLike,
    pool_path: str | os.PathLike,
    config_path: str | os.PathLike,
    *,
    fmt: str,
    out_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    image_root_url: str | None = None,
    scores_path: str | os.PathLike | None = None,
    risk_layer: bool = False,
    risk_threshold: float = 0.5,
    overwrite: bool = False,
    cfg_options: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    progress: Callable[..., None] = _noop,
) -> ExportResult:
    """Export the ids of ``selected_path`` for labeling in ``fmt`` (label-studio or cvat) into ``out_dir``."""
    from alseg import dataset as D
    from alseg import mm
    from alseg.files.atomic import check_not_input
    from alseg.files.hdf5 import PoolReader, ScoresReader
    from alseg.files.idlist import read_ids
    from alseg.files.manifest import write_manifest
    from alseg.labeltools import image_name, image_relpath

    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if risk_layer and fmt != "label-studio":
        raise InputError("--risk-layer is a Label Studio layer; CVAT masks hold one class per pixel")
    if risk_layer and scores_path is None:
        raise InputError("--risk-layer needs --scores scores.h5 from `alseg score --strategy crc --save-risk-maps N`")
    if not 0.0 < risk_threshold <= 1.0:
        raise InputError(f"--risk-threshold must be in (0, 1], got {risk_threshold}")
    out_dir = Path(out_dir)
    ids = read_ids(selected_path)
    if not ids:
        raise InputError(f"{selected_path}: the id list is empty; nothing to export")
    files = ["tasks.json", "labeling_config.xml"] if fmt == "label-studio" else ["annotations.zip"]
    files.append("manifest.json")
    _check_out(out_dir, files, overwrite)
    inputs = [selected_path, pool_path, scores_path]
    check_not_input([out_dir / f for f in files], inputs)

    cfg = mm.load_config(config_path, data_root=data_root, cfg_options=cfg_options)
    index = D.resolve(cfg, ids, str(selected_path))
    index.check_files(ids, masks=False, source=str(selected_path))
    class_names = index.class_names or mm.class_names(cfg)
    align_corners = bool((cfg.get("model") or {}).get("decode_head", {}).get("align_corners", False))
    warnings: list[str] = []
    risk: dict[str, np.ndarray] = {}
    if risk_layer:
        with ScoresReader(scores_path) as scores:
            risk = scores.risk_maps_by_id(ids)
        if len(risk) < len(ids):
            missing = [i for i in ids if i not in risk]
            warnings.append(f"{scores_path} holds no risk map of {len(missing)} of {len(ids)} image(s) (e.g. "
                            f"{missing[0]!r}); they get no risk layer (raise `score --save-risk-maps`)")

    copies: list[tuple[str, Path]] = []
    if fmt == "cvat":
        copies = [(index.data_info(i)["img_path"], out_dir / "images" / image_relpath(index, i)) for i in ids]
        _check_out(out_dir, [str(dst.relative_to(out_dir)) for _, dst in copies], overwrite)

    with PoolReader(pool_path) as pool:
        if list(pool.class_names) != list(class_names):
            raise InputError(f"{pool_path}: its classes ({', '.join(pool.class_names)}) are not the config's "
                             f"({', '.join(class_names)}); export with the config the pool was inferred with")
        pool.rows(ids)  # one line naming the first id the pool lacks

        def predictions():
            progress(0, total=len(ids))
            for batch_ids, logits, _ in pool.iter_batches(batch_size, ids=ids):
                for j, image_id in enumerate(batch_ids):
                    size = image_size(index.data_info(image_id)["img_path"])
                    class_map = prediction_at_image_size(logits[j], size, align_corners=align_corners)
                    risk_mask = None
                    if image_id in risk:
                        risk_up = upsample(risk[image_id][None], size, align_corners=align_corners)[0]
                        risk_mask = risk_up >= risk_threshold
                    yield image_id, class_map, risk_mask
                    progress(1)

        out_dir.mkdir(parents=True, exist_ok=True)
        if fmt == "label-studio":
            n_with_risk = _write_label_studio(out_dir, index, class_names, predictions(), image_root_url,
                                              risk_layer=risk_layer)
        else:
            n_with_risk = 0
            _write_cvat(out_dir, index, class_names, predictions(), image_name)
    for src, dst in copies:
        _copy_atomic(src, dst)

    result = ExportResult(format=fmt, out_dir=str(out_dir), files=[str(out_dir / f) for f in files[:-1]],
                          n_images=len(ids), ids=ids, class_names=list(class_names), n_with_risk=n_with_risk,
                          warnings=warnings, seconds=time.perf_counter() - t0)
    if copies:
        result.files.append(str(out_dir / "images"))
    write_manifest(out_dir, stage="export", args={
        "selected_path": selected_path, "pool_path": pool_path, "config_path": config_path, "format": fmt,
        "data_root": data_root, "image_root_url": image_root_url, "scores_path": scores_path,
        "risk_layer": risk_layer, "risk_threshold": risk_threshold},
        inputs=inputs, outputs=[out_dir / f for f in files[:-1]], seconds=result.seconds, result=result)
    return result


def _write_label_studio(out_dir: Path, index, class_names, predictions, image_root_url, *, risk_layer: bool) -> int:
    from alseg.files.atomic import write_text_atomic
    from alseg.labeltools import class_colours, image_relpath
    from alseg.labeltools import labelstudio as LS

    tasks, n_risk = [], 0
    for image_id, class_map, risk_mask in predictions:
        if image_root_url is not None:
            url = image_root_url + image_relpath(index, image_id)
        else:
            url = str(Path(index.data_info(image_id)["img_path"]).resolve())
        result = LS.prediction_result(class_map, class_names, risk_mask=risk_mask)
        n_risk += int(any(r["from_name"] == LS.RISK_FROM_NAME for r in result))
        tasks.append(LS.make_task(url, image_id, result))
    colours = class_colours(len(class_names), _palette(index))
    write_text_atomic(out_dir / LS.CONFIG_NAME, LS.labeling_config(class_names, colours, risk=risk_layer))
    write_text_atomic(out_dir / LS.TASKS_NAME, json.dumps(tasks, separators=(",", ":")) + "\n")
    return n_risk


def _write_cvat(out_dir: Path, index, class_names, predictions, image_name) -> None:
    from alseg.files.atomic import atomic_path
    from alseg.labeltools import cvat as CV

    labelmap = CV.dataset_labelmap(class_names, _palette(index))
    class_rows = np.asarray([labelmap.names.index(str(c)) for c in class_names], dtype=np.int64)
    background = class_names.index(CV.BACKGROUND) if CV.BACKGROUND in class_names else None

    def items():
        for image_id, class_map, _ in predictions:
            yield (image_name(index, image_id), CV.class_png(class_map, class_rows, labelmap),
                   CV.object_png(class_map, background))

    with atomic_path(out_dir / CV.ARCHIVE_NAME) as tmp:
        CV.write_archive(tmp, labelmap, items())


def _copy_atomic(src: str, dst: Path) -> None:
    from alseg.files.atomic import atomic_path

    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
