"""Losses alseg registers in mmseg (through a config's ``custom_imports = dict(imports=['alseg.losses'])``).

``AlsegWeightedCELoss``: class-weighted cross-entropy that masks ignore pixels. mmseg 1.2.2's
``CrossEntropyLoss(class_weight=...)`` indexes the weights with every label in a Python loop and fails on
the ignore index (255); its ``DiceLoss`` pools all classes of an image, which rewards predicting the
dominant class. This loss is the weighted mean of torch's cross-entropy over the valid pixels,
``sum_u w[y_u] * CE_u / sum_u w[y_u]``, vectorised.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class AlsegWeightedCELoss(nn.Module):
    """Class-weighted cross-entropy over non-ignored pixels (weighted mean, as ``torch.nn.CrossEntropyLoss``).

    Args:
        class_weight: one weight per class (e.g. from class pixel frequencies); ``None`` = unweighted.
        loss_weight: multiplier of the loss.
        loss_name: the key mmseg logs the loss under (must start with ``loss_``).
    """

    def __init__(self, class_weight: Sequence[float] | None = None, loss_weight: float = 1.0,
                 loss_name: str = "loss_wce"):
        super().__init__()
        self.class_weight = None if class_weight is None else [float(w) for w in class_weight]
        self.loss_weight = float(loss_weight)
        self._loss_name = loss_name

    def forward(self, cls_score: torch.Tensor, label: torch.Tensor, weight=None, avg_factor=None,
                reduction_override=None, ignore_index: int = 255, **kwargs) -> torch.Tensor:
        w = None if self.class_weight is None else cls_score.new_tensor(self.class_weight)
        if w is not None and w.numel() != cls_score.shape[1]:
            raise ValueError(f"class_weight has {w.numel()} entries for {cls_score.shape[1]} classes")
        total = F.cross_entropy(cls_score, label, weight=w, ignore_index=ignore_index, reduction="sum")
        valid = label != ignore_index
        norm = valid.sum() if w is None else w[label[valid]].sum()
        return self.loss_weight * total / norm.clamp_min(1e-12)

    @property
    def loss_name(self) -> str:
        return self._loss_name


def _register() -> None:
    from mmseg.registry import MODELS

    if "AlsegWeightedCELoss" not in MODELS.module_dict:
        MODELS.register_module(name="AlsegWeightedCELoss", module=AlsegWeightedCELoss)


try:  # imported by mmengine's custom_imports, after mmseg; alseg.compat has made mmseg importable
    from alseg.compat import import_mmseg

    import_mmseg()
    _register()
except ImportError:  # mmseg missing: the class is still usable directly
    pass
