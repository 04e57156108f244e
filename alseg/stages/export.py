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

Region queries: when the ``--ids`` file is a labelled state (``select --unit patch:S|superpixel:N|pixel:P
--out selected.jsonl``), each image's task shows the regions to label (:mod:`alseg.labeltools.regions`):

- label-studio: ``data.alseg_regions`` (unit -> region ids), the class pre-annotation inside the queried
  regions only, and the query layer ``alseg_query`` (label ``label this region``) painting them.
- cvat: ``annotations.xml`` (CVAT for images 1.1: an ``alseg-query`` mask of the queried pixels under the
  class masks of the prediction inside them) and ``labels.json`` instead of ``annotations.zip``.

Superpixel maps come from ``region_maps`` (stores, one per unit), else from the store beside the pool file
that ``select`` wrote (``<pool stem>.regions-<unit>.h5``), else they are computed with the default SLIC
parameters. A plain id list exports exactly as before.

Every file is written atomically; an existing one is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

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
    n_regions: int | None = None  # region queries: the regions exported (None: whole images)
    region_maps: dict[str, Any] = field(default_factory=dict)  # superpixel unit -> where its maps came from


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
    region_maps: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    progress: Callable[..., None] = _noop,
) -> ExportResult:
    """Export the ids of ``selected_path`` for labeling in ``fmt`` (label-studio or cvat) into ``out_dir``;
    a labelled-state ``selected_path`` exports its regions as region queries (see the module doc)."""
    from alseg import dataset as D
    from alseg import mm
    from alseg.files.atomic import check_not_input
    from alseg.files.hdf5 import PoolReader, ScoresReader
    from alseg.files.idlist import read_ids
    from alseg.files.manifest import write_manifest
    from alseg.labeltools import image_name, image_relpath
    from alseg.labeltools import regions as R

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
    state = R.read_query_state(selected_path)  # None: a plain id list, exported as always
    if state is None and region_maps:
        raise InputError("--region-maps resolves the regions of a labelled state; --ids is a plain id list "
                         "(whole images)")
    stores = R.parse_region_maps(region_maps)
    ids = read_ids(selected_path) if state is None else state.ids
    if not ids:
        raise InputError(f"{selected_path}: the id list is empty; nothing to export")
    if fmt == "label-studio":
        files = ["tasks.json", "labeling_config.xml"]
    else:
        files = ["annotations.zip"] if state is None else ["annotations.xml", "labels.json"]
    files.append("manifest.json")
    _check_out(out_dir, files, overwrite)
    inputs = [selected_path, pool_path, scores_path, *stores.values()]
    check_not_input([out_dir / f for f in files], inputs)
    if state is not None:
        from alseg.files.regionmaps import region_maps_path
        from alseg.partial import superpixel_units

        for unit in superpixel_units(state):  # the store select wrote beside the pool, when no other is given
            beside = region_maps_path(pool_path, unit)
            if unit not in stores and beside.is_file():
                stores[unit] = beside

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

        resolver = R.RegionResolver(stores, lambda i: index.data_info(i)["img_path"])

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
                    if state is None:
                        yield image_id, class_map, risk_mask
                    else:
                        masks = R.query_masks(state, image_id, size, resolver, str(selected_path))
                        yield image_id, class_map, risk_mask, masks
                    progress(1)

        out_dir.mkdir(parents=True, exist_ok=True)
        with resolver:
            if fmt == "label-studio":
                n_with_risk = _write_label_studio(out_dir, index, class_names, predictions(), image_root_url,
                                                  risk_layer=risk_layer, state=state)
            elif state is None:
                n_with_risk = 0
                _write_cvat(out_dir, index, class_names, predictions(), image_name)
            else:
                n_with_risk = 0
                _write_cvat_queries(out_dir, index, class_names, predictions())
    for src, dst in copies:
        _copy_atomic(src, dst)

    result = ExportResult(format=fmt, out_dir=str(out_dir), files=[str(out_dir / f) for f in files[:-1]],
                          n_images=len(ids), ids=ids, class_names=list(class_names), n_with_risk=n_with_risk,
                          warnings=warnings, seconds=time.perf_counter() - t0)
    if state is not None:
        result.n_regions = sum(len(r) for units in state.images.values() for u, r in units.items() if u != "image")
        result.region_maps = resolver.info
    if copies:
        result.files.append(str(out_dir / "images"))
    write_manifest(out_dir, stage="export", args={
        "selected_path": selected_path, "pool_path": pool_path, "config_path": config_path, "format": fmt,
        "data_root": data_root, "image_root_url": image_root_url, "scores_path": scores_path,
        "risk_layer": risk_layer, "risk_threshold": risk_threshold,
        "region_maps": [str(p) for p in stores.values()]},
        inputs=inputs, outputs=[out_dir / f for f in files[:-1]], seconds=result.seconds, result=result)
    return result


def _write_label_studio(out_dir: Path, index, class_names, predictions, image_root_url, *, risk_layer: bool,
                        state=None) -> int:
    from alseg.files.atomic import write_text_atomic
    from alseg.labeltools import class_colours, image_relpath
    from alseg.labeltools import labelstudio as LS
    from alseg.labeltools.regions import regions_record

    tasks, n_risk = [], 0
    for image_id, class_map, risk_mask, *query in predictions:
        if image_root_url is not None:
            url = image_root_url + image_relpath(index, image_id)
        else:
            url = str(Path(index.data_info(image_id)["img_path"]).resolve())
        masks = query[0] if query else None
        result = LS.prediction_result(class_map, class_names, risk_mask=risk_mask, query_masks=masks)
        n_risk += int(any(r["from_name"] == LS.RISK_FROM_NAME for r in result))
        regions = None if state is None else regions_record(state.images[image_id])
        tasks.append(LS.make_task(url, image_id, result, regions=regions))
    colours = class_colours(len(class_names), _palette(index))
    write_text_atomic(out_dir / LS.CONFIG_NAME, LS.labeling_config(class_names, colours, risk=risk_layer,
                                                                   query=state is not None))
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


def _write_cvat_queries(out_dir: Path, index, class_names, predictions) -> None:
    """Region queries for CVAT: ``annotations.xml`` (CVAT for images 1.1) and ``labels.json``."""
    from alseg.files.atomic import atomic_path, write_text_atomic
    from alseg.labeltools import cvat as CV
    from alseg.labeltools import image_relpath
    from alseg.labeltools.regions import union

    labelmap = CV.query_labelmap(class_names, _palette(index))

    def images():
        for image_id, class_map, _, masks in predictions:
            inside = union(masks, class_map.shape)
            shapes = [(CV.QUERY_LABEL, inside, 0)]
            for k in np.unique(class_map[inside]):
                if 0 <= k < len(class_names):
                    shapes.append((str(class_names[k]), (class_map == k) & inside, 1))
            yield image_relpath(index, image_id), class_map.shape[1], class_map.shape[0], shapes

    with atomic_path(out_dir / CV.XML_NAME) as tmp:
        CV.write_query_xml(tmp, labelmap, images())
    write_text_atomic(out_dir / CV.LABELS_NAME, CV.labels_json(labelmap))


def _copy_atomic(src: str, dst: Path) -> None:
    from alseg.files.atomic import atomic_path

    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
