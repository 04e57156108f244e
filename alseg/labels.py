"""Ground-truth masks on the logit grid: each logit cell takes the label at its centre.

mmseg's decode heads output logits at stride s, and mmseg upsamples them with bilinear interpolation,
``align_corners=False``: logit cell (i, j) sits at input position ((i + 0.5)·H/h, (j + 0.5)·W/w), the
centre of its s x s block. PyTorch's ``nearest`` mode takes the block's top-left pixel instead, half a
stride off (docs/algorithms.md §9.1, "Where the labels sit"). Pure torch, no I/O.
"""

from __future__ import annotations

from typing import Any

import torch

from alseg.errors import InputError


def centre_indices(n_in: int, n_out: int, *, device: Any = None) -> torch.Tensor:
    """(n_out,) int64: for output cell i, the input index ⌊(i + 0.5)·n_in / n_out⌋, clipped to n_in - 1.

    Exact integer arithmetic: ⌊(2i + 1)·n_in / (2·n_out)⌋. Identity when n_in == n_out.
    """
    if n_in < 1 or n_out < 1:
        raise InputError(f"grid sizes must be >= 1, got input {n_in}, output {n_out}")
    i = torch.arange(n_out, dtype=torch.int64, device=device)
    return torch.clamp(((2 * i + 1) * n_in) // (2 * n_out), max=n_in - 1)


def labels_on_grid(mask: Any, size: tuple[int, int]) -> torch.Tensor:
    """A label mask (H, W) int sampled at the centres of an (h, w) grid -> (h, w) int64.

    Cell (i, j) takes mask[⌊(i + 0.5)·H/h⌋, ⌊(j + 0.5)·W/w⌋] (clipped to the last row/column): the pixel
    under the cell's centre in align_corners=False geometry. Values are copied, never interpolated, so the
    ignore index (and any label id) survives unchanged; (h, w) == (H, W) returns the mask itself as int64.
    Works for downsampling (logits at stride s) and upsampling alike; sizes need not divide.
    """
    mask = torch.as_tensor(mask)
    if mask.ndim != 2:
        raise InputError(f"mask must have shape (H, W), got {tuple(mask.shape)}")
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise InputError(f"mask must hold integer label ids, got dtype {mask.dtype}")
    h, w = (int(s) for s in size)
    big_h, big_w = (int(s) for s in mask.shape)
    rows = centre_indices(big_h, h, device=mask.device)
    cols = centre_indices(big_w, w, device=mask.device)
    return mask.to(torch.int64)[rows[:, None], cols[None, :]]
