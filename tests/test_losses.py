"""alseg's class-weighted cross-entropy against torch's reference and a hand-worked value."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from alseg.losses import AlsegWeightedCELoss


def test_weighted_ce_equals_torch_weighted_mean_and_masks_ignore():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 5, 5, generator=g)
    label = torch.randint(0, 3, (2, 5, 5), generator=g)
    label[0, :2] = 255
    w = [0.5, 2.0, 3.0]
    got = AlsegWeightedCELoss(w, loss_weight=2.0)(pred, label, ignore_index=255)
    ref = F.cross_entropy(pred, label, weight=torch.tensor(w), ignore_index=255)
    assert torch.allclose(got, 2.0 * ref)
    # a wrong label on an ignore pixel changes nothing
    pred2 = pred.clone()
    pred2[0, :, 0, 0] = torch.tensor([50.0, -50.0, 0.0])
    assert torch.allclose(AlsegWeightedCELoss(w)(pred2, label), AlsegWeightedCELoss(w)(pred, label))


def test_weighted_ce_hand_worked():
    # two pixels: uniform logits over 2 classes (CE = ln 2 each), labels 0 and 1, weights 1 and 3
    pred = torch.zeros(1, 2, 1, 2)
    label = torch.tensor([[[0, 1]]])
    got = AlsegWeightedCELoss([1.0, 3.0])(pred, label)
    assert math.isclose(float(got), (1 * math.log(2) + 3 * math.log(2)) / 4, rel_tol=1e-6)
    assert AlsegWeightedCELoss().loss_name == "loss_wce"
