"""Out to a labeling tool and back: Label Studio brush tasks and CVAT "Segmentation mask 1.1" archives.

- :mod:`alseg.labeltools.rle` — Label Studio's brush RLE (encode/decode, numpy).
- :mod:`alseg.labeltools.labelstudio` — tasks with brush pre-annotations, the labeling config, and
  reading Label Studio's JSON export back into class maps.
- :mod:`alseg.labeltools.cvat` — ``labelmap.txt``, colour-coded ``SegmentationClass`` PNGs, the archive,
  and reading an archive (or its unpacked folder) back into class maps.

Everything here works on class maps: ``(H, W)`` int arrays of class indices, :data:`UNLABELED` (-1) where
the annotator painted nothing. Turning a class map into the value mmseg stores on disk (ignore index,
``reduce_zero_label``, ``label_map``) is the ``import`` stage's job.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from alseg.errors import InputError

UNLABELED = -1

FORMATS = ("label-studio", "cvat")  # the labeling tools alseg exports to and imports from


def voc_colormap(n: int) -> np.ndarray:
    """The Pascal VOC colour map (n, 3) uint8: CVAT's and VOC's default label and instance colours
    (entry 0 is black, then the bits of the index spread over R, G, B from the high bit down)."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out[i] = (r, g, b)
    return out


def class_colours(n_classes: int, palette: Sequence[Sequence[int]] | None, *,
                  reserved: Sequence[tuple[int, int, int]] = ()) -> list[tuple[int, int, int]]:
    """One distinct RGB colour per class: the dataset's palette where it has one that is distinct and not
    ``reserved``, else the next unused Pascal VOC colour."""
    taken = {tuple(int(v) for v in c) for c in reserved}
    chosen: list[tuple[int, int, int] | None] = []
    for k in range(n_classes):
        colour = None
        if palette is not None and k < len(palette):
            c = tuple(int(v) for v in palette[k])
            if len(c) == 3 and all(0 <= v <= 255 for v in c) and c not in taken:
                colour = c
        if colour is not None:
            taken.add(colour)
        chosen.append(colour)
    spare = (tuple(int(v) for v in c) for c in voc_colormap(256 + n_classes + len(taken))[1:])
    out = []
    for colour in chosen:
        while colour is None:
            c = next(spare)
            if c not in taken:
                colour = c
                taken.add(c)
        out.append(colour)
    return out


def hex_colour(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def image_relpath(index, image_id: str) -> str:
    """The image file of ``image_id`` relative to its dataset's image folder (posix, with its extension):
    what a labeling tool shows as the image's name when that folder is uploaded or served.
    ``index`` is an :class:`alseg.dataset.SplitIndex`."""
    import os

    leaf, _ = index.where[image_id]
    prefix = (getattr(index.leaves[leaf], "data_prefix", None) or {}).get("img_path", "")
    path = index.data_info(image_id)["img_path"]
    rel = os.path.relpath(path, prefix) if prefix else os.path.basename(path)
    return rel.replace(os.sep, "/")


def image_name(index, image_id: str) -> str:
    """:func:`image_relpath` without the file extension (CVAT's image name)."""
    import posixpath

    return posixpath.splitext(image_relpath(index, image_id))[0]


def image_size(path: str, *, where: str | None = None) -> tuple[int, int]:
    """(H, W) of an image file, from its header; an unreadable file is one error line (prefixed with
    ``where``, e.g. the task it belongs to, when given)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as exc:
        prefix = f"{where}: cannot read the image {path}" if where else f"{path}: cannot read the image"
        raise InputError(f"{prefix} ({type(exc).__name__}: {exc})") from None
    return int(h), int(w)
