"""Label Studio: brush tasks with the model's pre-annotation out, the annotators' brush masks back in.

Out (``alseg export --format label-studio``):

- ``tasks.json``: a JSON list with one task per image, ``{"data": {"image": URL, "alseg_id": ID},
  "predictions": [{"model_version": "alseg", "result": [...]}]}``. Each result item is one brush region
  per class present in the prediction: ``{"type": "brushlabels", "from_name": "label", "to_name":
  "image", "original_width": W, "original_height": H, "image_rotation": 0, "value": {"format": "rle",
  "rle": [...], "brushlabels": [CLASS]}}``, the mask as brush RLE (:mod:`alseg.labeltools.rle`).
- ``labeling_config.xml``: ``<Image name="image">``, ``<BrushLabels name="label">`` with one ``<Label>``
  per class (coloured from the dataset's palette) and, with a risk layer, a second control
  ``<BrushLabels name="alseg_risk">`` holding one label, ``look here``: the pixels whose CRC risk is at
  or above a threshold, shown as a separate region so annotators see where the model is unsure. It is a
  hint, never a class: import skips every region of that control.

Region queries (``alseg export --ids selected.jsonl``, a labelled state from ``select --unit ...``): the
task's ``data`` also holds ``alseg_regions`` (unit -> the queried region ids, as in the state), the class
pre-annotation covers the queried regions only, and a third control ``<BrushLabels name="alseg_query">``
with one label, ``label this region``, paints the queried pixels of each unit (one brush region per unit,
id ``alseg_query_<unit>``). Like the risk layer it is never imported as a class; ``alseg import --ids``
keeps only the labels inside the queried regions.

Back (``alseg import --format label-studio``): Label Studio's "JSON" export, a list of tasks each with
``annotations[].result[]``. Per task the annotation used is the one marked ``ground_truth``, else the
last one not cancelled; tasks with none are skipped. Regions are painted in result order, so where two
regions overlap the later one wins; pixels no region covers are unlabeled. The image id comes from
``data.alseg_id``, which ``alseg export`` writes into every task and Label Studio keeps.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from alseg.errors import InputError
from alseg.labeltools import UNLABELED, hex_colour
from alseg.labeltools.rle import RLEError, mask_to_rle, rle_to_mask

CLASS_FROM_NAME = "label"
TO_NAME = "image"
RISK_FROM_NAME = "alseg_risk"
RISK_LABEL = "look here"
RISK_COLOUR = "#ff00ff"
QUERY_FROM_NAME = "alseg_query"
QUERY_LABEL = "label this region"
QUERY_COLOUR = "#00ffff"
HINT_FROM_NAMES = (RISK_FROM_NAME, QUERY_FROM_NAME)  # layers alseg exports as hints, never imported
MODEL_VERSION = "alseg"
TASKS_NAME = "tasks.json"
CONFIG_NAME = "labeling_config.xml"


def labeling_config(class_names: Sequence[str], colours: Sequence[Sequence[int]], *, risk: bool = False,
                    query: bool = False) -> str:
    """The labeling config (XML) of an exported project: one ``BrushLabels`` of the classes, the risk
    control when ``risk`` and the region-query control when ``query``."""
    lines = ["<View>", f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>',
             f'  <BrushLabels name="{CLASS_FROM_NAME}" toName="{TO_NAME}">']
    for name, rgb in zip(class_names, colours):
        lines.append(f"    <Label value={quoteattr(str(name))} background={quoteattr(hex_colour(rgb))}/>")
    lines.append("  </BrushLabels>")
    if risk:
        lines += [f'  <BrushLabels name="{RISK_FROM_NAME}" toName="{TO_NAME}">',
                  f"    <Label value={quoteattr(RISK_LABEL)} background={quoteattr(RISK_COLOUR)}/>",
                  "  </BrushLabels>"]
    if query:
        lines += [f'  <BrushLabels name="{QUERY_FROM_NAME}" toName="{TO_NAME}">',
                  f"    <Label value={quoteattr(QUERY_LABEL)} background={quoteattr(QUERY_COLOUR)}/>",
                  "  </BrushLabels>"]
    lines.append("</View>")
    return "\n".join(lines) + "\n"


def _region(region_id: str, from_name: str, label: str, mask: np.ndarray) -> dict[str, Any]:
    h, w = mask.shape
    return {
        "id": region_id, "type": "brushlabels", "from_name": from_name, "to_name": TO_NAME,
        "original_width": int(w), "original_height": int(h), "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]},
    }


def prediction_result(class_map: np.ndarray, class_names: Sequence[str], *,
                      risk_mask: np.ndarray | None = None,
                      query_masks: Mapping[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Result items of one image: a brush region per class present in ``class_map`` (H, W) int, then the
    risk region (pixels of ``risk_mask``) when given and not empty. With ``query_masks`` (unit -> (H, W)
    bool, the queried pixels of each unit) the class regions cover the queried pixels only, and one
    query region per unit follows them."""
    out = []
    inside = None
    if query_masks is not None:
        inside = np.zeros(class_map.shape, dtype=bool)
        for mask in query_masks.values():
            inside |= mask
    present = np.unique(class_map if inside is None else class_map[inside])
    for k in present:
        if 0 <= k < len(class_names):
            mask = class_map == k
            if inside is not None:
                mask &= inside
            out.append(_region(f"alseg_c{int(k)}", CLASS_FROM_NAME, str(class_names[k]), mask))
    if risk_mask is not None and risk_mask.any():
        out.append(_region("alseg_risk", RISK_FROM_NAME, RISK_LABEL, risk_mask))
    for unit, mask in (query_masks or {}).items():
        if mask.any():
            out.append(_region(f"alseg_query_{str(unit).replace(':', '-')}", QUERY_FROM_NAME, QUERY_LABEL, mask))
    return out


def make_task(image_url: str, image_id: str, result: list[dict[str, Any]],
              regions: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """One task; ``regions`` (unit -> region ids) adds ``data.alseg_regions`` for a region query."""
    data: dict[str, Any] = {"image": image_url, "alseg_id": image_id}
    if regions is not None:
        data["alseg_regions"] = {str(u): [int(r) for r in ids] for u, ids in regions.items()}
    return {"data": data, "predictions": [{"model_version": MODEL_VERSION, "result": result}]}


@dataclass
class AnnotatedTask:
    """One task of a Label Studio export: where it is (for messages), its image id, the result items
    of its finished annotation (``None``: not annotated) and, for a region query, ``data.alseg_regions``."""

    where: str
    image_id: str
    results: list[dict[str, Any]] | None
    regions: Any = None


def read_export(path: str | os.PathLike) -> list[AnnotatedTask]:
    """The tasks of Label Studio's JSON export (a list of tasks; a single task object is accepted)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: Label Studio export not found (export the project as JSON)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a JSON file ({exc})") from None
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise InputError(f"{path}: expected Label Studio's JSON export, a list of tasks")
    out = []
    for k, task in enumerate(doc):
        where = f"{path}: task {task.get('id', k) if isinstance(task, dict) else k}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise InputError(f"{where}: not a Label Studio task (no 'data' object); export the project as JSON")
        image_id = task["data"].get("alseg_id")
        if not isinstance(image_id, str) or not image_id:
            raise InputError(f"{where}: has no data.alseg_id; import only tasks made by `alseg export`")
        where = f"{where} ({image_id!r})"
        chosen = None
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            raise InputError(f"{where}: 'annotations' is not a list")
        finished = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
        truth = [a for a in finished if a.get("ground_truth")]
        if truth or finished:
            chosen = (truth or finished)[-1]
            results = chosen.get("result")
            if not isinstance(results, list):
                raise InputError(f"{where}: the annotation's 'result' is not a list")
            chosen = results
        out.append(AnnotatedTask(where=where, image_id=image_id, results=chosen,
                                 regions=task["data"].get("alseg_regions")))
    return out


def class_map_from_results(results: list[dict[str, Any]], class_names: Sequence[str], *, where: str,
                           size: tuple[int, int]) -> np.ndarray | None:
    """Paint the brush regions of one annotation into a class map (H, W) int64 (``UNLABELED`` where
    nothing is painted); ``None`` when it holds no class region. ``size`` = (H, W) of the image; a region
    of another size, a label that is not a class, or a non-brush region is refused with one line."""
    index = {str(n): k for k, n in enumerate(class_names)}
    h, w = size
    out = np.full((h, w), UNLABELED, dtype=np.int64)
    painted = False
    for item in results:
        if not isinstance(item, dict):
            raise InputError(f"{where}: a result item is not an object")
        if item.get("from_name") in HINT_FROM_NAMES:
            continue  # the risk or region-query hint alseg exported, not a class
        value = item.get("value") if isinstance(item.get("value"), dict) else {}
        kind = item.get("type")
        labels = value.get("brushlabels", value.get("labels"))
        if value.get("format") != "rle" or "rle" not in value:
            raise InputError(f"{where}: result {item.get('id', '?')!r} is a {kind!r} region; only brush masks "
                             "(BrushLabels, format rle) can be imported")
        if not isinstance(labels, list) or len(labels) != 1:
            raise InputError(f"{where}: brush region {item.get('id', '?')!r} has labels {labels!r}; "
                             "expected exactly one class")
        name = str(labels[0])
        if name not in index:
            raise InputError(f"{where}: label {name!r} is not a class of the config "
                             f"({', '.join(map(str, class_names))})")
        try:
            rh, rw = int(item["original_height"]), int(item["original_width"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: brush region {item.get('id', '?')!r} has no original_width/height") from None
        if (rh, rw) != (h, w):
            raise InputError(f"{where}: brush region {item.get('id', '?')!r} is {rw}x{rh} but the image is "
                             f"{w}x{h}; the mask does not fit the image")
        try:
            mask = rle_to_mask(value["rle"], h, w)
        except RLEError as exc:
            raise InputError(f"{where}: brush region {item.get('id', '?')!r}: {exc}") from None
        out[mask] = index[name]
        painted = True
    return out if painted else None
