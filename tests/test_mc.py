"""Streamed MC dropout (§11.7) against the same quantities computed from T stored samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from alseg.mc import MCSums, dropout_scope


def stored_reference(samples: np.ndarray) -> dict[str, np.ndarray]:
    """From all T maps (T, b, K, h, w), in float64 NumPy: the textbook formulas."""
    p_bar = samples.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p_bar > 0, p_bar * np.log(p_bar), 0.0), axis=1)
        e = -np.mean(np.nansum(np.where(samples > 0, samples * np.log(samples), 0.0), axis=2), axis=0)
    votes = np.stack([(samples.argmax(axis=2) == k).sum(axis=0) for k in range(samples.shape[2])], axis=1)
    return {"entropy": h, "expected": e, "bald": np.maximum(h - e, 0.0), "vr": 1 - votes.max(axis=1) / len(samples)}


def test_streaming_equals_stored_samples():
    rng = np.random.default_rng(0)
    t, b, k, h, w = 15, 2, 5, 6, 7
    logits = rng.normal(0, 2, (t, b, k, h, w))
    samples = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    samples[3, 0, :, 1, 1] = np.eye(k)[2]  # an exact one-hot pass: 0 log 0 must count as 0
    acc = MCSums()
    for s in samples:
        acc.add(torch.from_numpy(s).to(torch.float32))
    ref = stored_reference(samples.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(acc.predictive_entropy().numpy(), ref["entropy"], atol=1e-5)
    np.testing.assert_allclose(acc.expected_entropy().numpy(), ref["expected"], atol=1e-5)
    np.testing.assert_allclose(acc.bald().numpy(), ref["bald"], atol=1e-5)
    np.testing.assert_allclose(acc.variation_ratio().numpy(), ref["vr"], atol=1e-12)
    assert (acc.bald().numpy() >= 0).all() and acc.predictive_entropy().max() <= math.log(k) + 1e-9


def test_one_pass_or_identical_passes_give_zero_bald():
    p = torch.softmax(torch.randn(1, 4, 3, 3, dtype=torch.float64), dim=1)
    acc = MCSums()
    for _ in range(5):
        acc.add(p)
    assert torch.allclose(acc.bald(), torch.zeros(1, 3, 3, dtype=torch.float64), atol=1e-12)
    assert torch.equal(acc.variation_ratio(), torch.zeros(1, 3, 3, dtype=torch.float64))
    assert torch.allclose(acc.mean_probs(), p)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Dropout2d(0.5))
        self.decode_head = torch.nn.Sequential(torch.nn.Dropout2d(0.3), torch.nn.Conv2d(4, 2, 1))


def test_dropout_scope_switches_only_dropout_and_restores():
    m = Tiny().train()
    with dropout_scope(m, "head") as active:
        assert active == 1
        assert m.decode_head[0].training and not m.backbone[2].training and not m.backbone[1].training
    assert all(x.training for x in m.modules())
    m.eval()
    with dropout_scope(m, "full") as active:
        assert active == 2 and not m.backbone[1].training
    assert not any(x.training for x in m.modules())


def test_no_dropout_in_scope_reproduces_the_deterministic_output():
    m = Tiny().eval()
    m.decode_head[0].p = 0.0
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        ref = m.decode_head(m.backbone(x))
        with dropout_scope(m, "head") as active:
            assert active == 0
            outs = [m.decode_head(m.backbone(x)) for _ in range(3)]
    assert all(torch.equal(o, ref) for o in outs)


def test_unknown_scope():
    from alseg.errors import InputError

    with pytest.raises(InputError, match="--mc-scope"):
        with dropout_scope(Tiny(), "backbone"):
            pass
