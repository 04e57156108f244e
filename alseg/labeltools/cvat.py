"""CVAT's "Segmentation mask 1.1" format (a Pascal VOC segmentation layout), out and back.

The archive::

    labelmap.txt                       # label:color_rgb:parts:actions, one label a line
    ImageSets/Segmentation/default.txt # the image names, without extension
    SegmentationClass/<name>.png       # RGB, each pixel the colour of its label in labelmap.txt
    SegmentationObject/<name>.png      # instances: one per class present, Pascal VOC colours 1, 2, ...

``<name>`` is the image's path relative to the dataset's image folder, without its extension: the name
CVAT gives an image uploaded with that relative path. CVAT paints pixels without annotation in the
colour of the label ``background``, black by convention. alseg therefore writes ``background`` first,
black: it is the dataset's own class ``background`` when the dataset has one (as Pascal VOC and the demo
data do), else an extra entry that means "unlabeled" on the way back. Every other class keeps its palette
colour unless black or a duplicate, then it takes the next unused Pascal VOC colour.

Back, the archive (a ``.zip`` or its unpacked folder) is read with its own ``labelmap.txt``, so colours
CVAT chose are fine; masks may be RGB, palette or 1-channel (then the value is the labelmap row).

Region queries (``alseg export --ids selected.jsonl``) go out as a "CVAT for images 1.1" file instead,
``annotations.xml``, because only that format holds overlapping shapes: per image one ``<mask>`` of the
label ``alseg-query`` (:data:`QUERY_LABEL`) covering the queried pixels, ``z_order="0"``, and one
``<mask>`` per class of the model's prediction inside them, ``z_order="1"``. A ``<mask>`` is CVAT's
run-length code of its bounding box (``left``, ``top``, ``width``, ``height``): row by row, alternating
runs of 0 and 1 starting with 0 (:func:`mask_rle`). ``labels.json`` lists the labels for CVAT's raw
label editor. The annotators' answer comes back as Segmentation mask 1.1, where pixels left in the
colour of ``alseg-query`` are unlabeled (:func:`row_classes`).
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

import numpy as np

from alseg.errors import InputError
from alseg.labeltools import UNLABELED, class_colours, voc_colormap

BACKGROUND = "background"
BLACK = (0, 0, 0)
LABELMAP = "labelmap.txt"
IMAGESET = "ImageSets/Segmentation/default.txt"
CLASS_DIR = "SegmentationClass"
OBJECT_DIR = "SegmentationObject"
ARCHIVE_NAME = "annotations.zip"
XML_NAME = "annotations.xml"  # region queries: CVAT for images 1.1
LABELS_NAME = "labels.json"  # region queries: the task's labels, for CVAT's raw label editor
QUERY_LABEL = "alseg-query"  # the label of the region-query masks; unlabeled on the way back


@dataclass
class Labelmap:
    """The rows of ``labelmap.txt``: ``names[i]`` painted in ``colours[i]`` (RGB)."""

    names: list[str]
    colours: list[tuple[int, int, int]]

    def text(self) -> str:
        rows = ["# label:color_rgb:parts:actions"]
        rows += [f"{n}:{r},{g},{b}::" for n, (r, g, b) in zip(self.names, self.colours)]
        return "\n".join(rows) + "\n"


def dataset_labelmap(class_names: Sequence[str], palette: Sequence[Sequence[int]] | None) -> Labelmap:
    """The labelmap alseg exports: ``background`` first and black, then the classes (see module doc)."""
    names = [str(c) for c in class_names]
    others = [k for k, n in enumerate(names) if n != BACKGROUND]
    pal = None if palette is None else [palette[k] for k in others if k < len(palette)]
    colours = class_colours(len(others), pal, reserved=[BLACK])
    return Labelmap(names=[BACKGROUND] + [names[k] for k in others], colours=[BLACK] + colours)


def parse_labelmap(text: str, source: str) -> Labelmap:
    names, colours = [], []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        try:
            rgb = tuple(int(v) for v in parts[1].split(","))
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except (IndexError, ValueError):
            raise InputError(f"{source}: line {n} is not 'label:r,g,b:parts:actions' ({line!r})") from None
        if parts[0] in names:
            raise InputError(f"{source}: label {parts[0]!r} appears twice")
        names.append(parts[0])
        colours.append(rgb)
    if not names:
        raise InputError(f"{source}: lists no labels")
    if len(set(colours)) != len(colours):
        raise InputError(f"{source}: two labels share one colour; masks would be ambiguous")
    return Labelmap(names=names, colours=colours)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def class_png(class_map: np.ndarray, class_rows: np.ndarray, labelmap: Labelmap) -> bytes:
    """RGB PNG of a class map (H, W); ``class_rows[k]`` is the labelmap row of class k, unlabeled pixels
    take row 0 (``background``)."""
    lut = np.asarray(labelmap.colours, dtype=np.uint8)
    rows = np.where(class_map >= 0, class_rows[np.clip(class_map, 0, None)], 0)
    return _png(lut[rows])


def object_png(class_map: np.ndarray, background_class: int | None) -> bytes:
    """Instance PNG: each class present (but background) is one instance, numbered 1, 2, ... in class
    order and painted in Pascal VOC colours; the rest is black."""
    present = [int(k) for k in np.unique(class_map) if k >= 0 and k != background_class]
    inst = np.zeros(class_map.shape, dtype=np.int64)
    for n, k in enumerate(present, 1):
        inst[class_map == k] = n
    return _png(voc_colormap(len(present) + 1)[inst])


def write_archive(path: str | os.PathLike, labelmap: Labelmap, items: Iterator[tuple[str, bytes, bytes]]) -> list[str]:
    """Write the archive to ``path`` (the caller makes it atomic); ``items`` yields ``(name, class PNG,
    object PNG)``. Returns the names."""
    names = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(LABELMAP, labelmap.text())
        for name, cls_png, obj_png in items:
            zf.writestr(f"{CLASS_DIR}/{name}.png", cls_png)
            zf.writestr(f"{OBJECT_DIR}/{name}.png", obj_png)
            names.append(name)
        zf.writestr(IMAGESET, "".join(f"{n}\n" for n in names))
    return names


class CvatExport:
    """An archive (zip) or its unpacked folder: its labelmap and the class masks by image name."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            files = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        elif self.path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile:
                raise InputError(f"{self.path}: not a zip archive (export the CVAT task as "
                                 "'Segmentation mask 1.1')") from None
            files = [n for n in self._zip.namelist() if not n.endswith("/")]
        else:
            raise InputError(f"{self.path}: CVAT export not found")
        # the archive may hold one top folder (an unpacked download): find labelmap.txt
        maps = sorted((f for f in files if PurePosixPath(f).name == LABELMAP), key=lambda f: f.count("/"))
        if not maps:
            raise InputError(f"{self.path}: has no {LABELMAP}; export the CVAT task as 'Segmentation mask 1.1'")
        self.root = str(PurePosixPath(maps[0]).parent)
        self.root = "" if self.root == "." else self.root + "/"
        self.labelmap = parse_labelmap(self._read(maps[0]).decode("utf-8-sig"), f"{self.path}: {maps[0]}")
        prefix = f"{self.root}{CLASS_DIR}/"
        self.masks = {f[len(prefix):-4]: f for f in files if f.startswith(prefix) and f.lower().endswith(".png")}
        if not self.masks:
            raise InputError(f"{self.path}: holds no {CLASS_DIR}/*.png masks")
        self.names = sorted(self.masks)

    def _read(self, member: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(member)
        return (self.path / member).read_bytes()

    def where(self, name: str) -> str:
        return f"{self.path}: {self.masks[name]}"

    def label_rows(self, name: str) -> np.ndarray:
        """The labelmap row of every pixel of image ``name``'s class mask (H, W) int64."""
        from PIL import Image

        where = self.where(name)
        try:
            with Image.open(io.BytesIO(self._read(self.masks[name]))) as im:
                im.load()
                if im.mode in ("L", "I", "I;16"):
                    rows = np.asarray(im, dtype=np.int64)
                    bad = rows >= len(self.labelmap.names)
                    if bad.any():
                        y, x = np.argwhere(bad)[0]
                        raise InputError(f"{where}: value {rows[y, x]} at (y={y}, x={x}) is not a row of {LABELMAP}")
                    return rows
                rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{where}: cannot read the mask ({type(exc).__name__}: {exc})") from None
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        known = np.asarray([(r << 16) | (g << 8) | b for r, g, b in self.labelmap.colours], dtype=np.int64)
        order = np.argsort(known)
        pos = np.clip(np.searchsorted(known[order], code), 0, len(known) - 1)
        hit = known[order][pos] == code
        if not hit.all():
            y, x = np.argwhere(~hit)[0]
            raise InputError(f"{where}: colour {tuple(int(v) for v in rgb[y, x])} at (y={y}, x={x}) is not in "
                             f"{LABELMAP}")
        return order[pos]

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> "CvatExport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def row_classes(labelmap: Labelmap, class_names: Sequence[str], *, source: str) -> np.ndarray:
    """Class index of each labelmap row (``UNLABELED`` for ``background`` when the dataset has no such
    class and for the region-query label ``alseg-query``; -2 for a label that is not a class: refused only
    where a mask uses it)."""
    index = {str(n): k for k, n in enumerate(class_names)}
    out = []
    for name in labelmap.names:
        if name in index:
            out.append(index[name])
        elif name in (BACKGROUND, QUERY_LABEL):
            out.append(UNLABELED)
        else:
            out.append(-2)
    return np.asarray(out, dtype=np.int64)


def class_map_from_rows(rows: np.ndarray, row_class: np.ndarray, labelmap: Labelmap, class_names: Sequence[str],
                        *, where: str) -> np.ndarray:
    out = row_class[rows]
    unknown = out == -2
    if unknown.any():
        y, x = np.argwhere(unknown)[0]
        name = labelmap.names[rows[y, x]]
        raise InputError(f"{where}: label {name!r} (at y={y}, x={x}) is not a class of the config "
                         f"({', '.join(map(str, class_names))})")
    return out


# ------------------------------------------------------------------------------ region queries (CVAT for images 1.1)


def query_labelmap(class_names: Sequence[str], palette: Sequence[Sequence[int]] | None) -> Labelmap:
    """:func:`dataset_labelmap` plus the label ``alseg-query`` last, in a colour no other label has
    (magenta when free)."""
    base = dataset_labelmap(class_names, palette)
    taken = set(base.colours)
    colour = (255, 0, 255)
    if colour in taken:
        colour = next(tuple(int(v) for v in c) for c in voc_colormap(256 + len(taken))[1:]
                      if tuple(int(v) for v in c) not in taken)
    return Labelmap(names=base.names + [QUERY_LABEL], colours=base.colours + [colour])


def mask_rle(mask: np.ndarray) -> tuple[list[int], int, int, int, int] | None:
    """CVAT's ``<mask>`` code of a boolean mask (H, W): ``(rle, left, top, width, height)``, the runs of
    its bounding box row by row, alternating 0 and 1 and starting with a (possibly empty) run of 0;
    ``None`` for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = int(ys[0]), int(ys[-1]), int(xs[0]), int(xs[-1])
    flat = mask[top : bottom + 1, left : right + 1].ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return [int(r) for r in runs], left, top, right - left + 1, bottom - top + 1


def labels_json(labelmap: Labelmap) -> str:
    """The labels as CVAT's raw label editor takes them (Project/Task -> Labels -> Raw)."""
    import json

    from alseg.labeltools import hex_colour

    rows = [{"name": n, "color": hex_colour(c), "type": "any", "attributes": []}
            for n, c in zip(labelmap.names, labelmap.colours)]
    return json.dumps(rows, indent=2) + "\n"


def write_query_xml(path: str | os.PathLike, labelmap: Labelmap,
                    images: Iterator[tuple[str, int, int, list[tuple[str, np.ndarray, int]]]]) -> int:
    """Write ``annotations.xml`` (CVAT for images 1.1) to ``path`` (the caller makes it atomic).

    ``images`` yields ``(name, width, height, shapes)``, ``shapes`` a list of ``(label, mask (H, W) bool,
    z_order)``; empty masks are left out. Returns the number of images."""
    from xml.sax.saxutils import escape, quoteattr

    from alseg.labeltools import hex_colour

    def attrs(pairs) -> str:
        return " ".join(f"{k}={quoteattr(str(v))}" for k, v in pairs)

    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write('<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n'
                 "  <meta>\n    <task>\n      <name>alseg region queries</name>\n      <mode>annotation</mode>\n"
                 "      <labels>\n")
        for name, colour in zip(labelmap.names, labelmap.colours):
            fh.write(f"        <label>\n          <name>{escape(name)}</name>\n"
                     f"          <color>{hex_colour(colour)}</color>\n          <type>any</type>\n"
                     "          <attributes/>\n        </label>\n")
        fh.write("      </labels>\n    </task>\n  </meta>\n")
        for frame, (name, width, height, shapes) in enumerate(images):
            fh.write(f"  <image {attrs([('id', frame), ('name', name), ('width', int(width)), ('height', int(height))])}>\n")
            for label, mask, z_order in shapes:
                code = mask_rle(mask)
                if code is None:
                    continue
                rle, left, top, w, h = code
                fh.write("    <mask " + attrs([("label", label), ("source", "auto"), ("occluded", 0),
                                               ("rle", ", ".join(str(r) for r in rle)), ("left", left),
                                               ("top", top), ("width", w), ("height", h),
                                               ("z_order", int(z_order))]) + "/>\n")
            fh.write("  </image>\n")
            n += 1
        fh.write("</annotations>\n")
    return n
