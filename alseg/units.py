"""Query units: what one query asks an annotator to label (docs/regions.md, docs/algorithms.md §11.1).

``image`` | ``patch:S`` (S x S tiles) | ``superpixel:N`` (SLIC, about N per image) | ``pixel:P`` (P pixels
per image). This module only names and parses units, so that both the region code (:mod:`alseg.regions`)
and the labelled-state file (:mod:`alseg.files.labelled`) share one definition; it imports nothing but the
error types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alseg.errors import InputError

UNIT_KINDS = ("image", "patch", "superpixel", "pixel")
_PATTERN = re.compile(r"(image)|(patch|superpixel|pixel):([1-9][0-9]*)")


@dataclass(frozen=True)
class Unit:
    """A parsed query unit. ``size`` is S (patch side in pixels), N (superpixels per image) or P (pixels
    per image); ``None`` for ``image``. ``str(unit)`` gives back the canonical spelling."""

    kind: str
    size: int | None = None

    def __str__(self) -> str:
        return self.kind if self.size is None else f"{self.kind}:{self.size}"

    @property
    def slug(self) -> str:
        """The unit as a file-name part: ``patch-32``, ``superpixel-500``."""
        return str(self).replace(":", "-")

    @property
    def has_region_map(self) -> bool:
        """True for units whose regions are given by a map at original resolution (patch, superpixel)."""
        return self.kind in ("patch", "superpixel")


def parse_unit(text: str) -> Unit:
    """``"image"``, ``"patch:S"``, ``"superpixel:N"`` or ``"pixel:P"`` (a positive integer) -> :class:`Unit`."""
    m = _PATTERN.fullmatch(str(text).strip())
    if m is None:
        raise InputError(
            f"unknown query unit {text!r}; use image, patch:S, superpixel:N or pixel:P (S, N, P positive integers)"
        )
    if m.group(1):
        return Unit("image")
    return Unit(m.group(2), int(m.group(3)))
