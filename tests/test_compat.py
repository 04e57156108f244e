"""mmseg on mmcv-lite: the configs build and run, compiled-only ops fail clearly, checkpoints load safely."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alseg.compat import has_compiled_mmcv, load_trusted_checkpoint, load_untrusted_checkpoint
from alseg.errors import CompiledOpsRequired, InputError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def mmseg_models():
    from alseg import mm

    mm._init_mm()
    from mmseg.registry import MODELS

    return MODELS


@pytest.mark.parametrize(
    "name, native",
    [("demo_unet_tiny.py", (64, 64)), ("deeplabv3_r18_d8.py", (8, 8)), ("segformer_mit_b0.py", (16, 16))],
)
def test_config_builds_and_runs_forward(mmseg_models, name, native):
    from alseg.mm import class_names, load_config

    cfg = load_config(CONFIGS / name)
    model = mmseg_models.build(cfg.model).eval()
    assert model.decode_head.conv_seg.out_channels == len(class_names(cfg))
    with torch.inference_mode():
        logits = model.decode_head(model.extract_feat(torch.rand(2, 3, 64, 64)))
        full = model(torch.rand(1, 3, 64, 64), mode="tensor")
    assert tuple(logits.shape) == (2, len(class_names(cfg)), *native)
    assert torch.isfinite(logits).all()
    assert tuple(full.shape[-2:]) in {native, (64, 64)}


@pytest.mark.skipif(has_compiled_mmcv(), reason="the compiled mmcv ops are installed here")
def test_compiled_only_op_raises_clear_error(mmseg_models):
    from mmcv.ops import CrissCrossAttention

    with pytest.raises(CompiledOpsRequired, match="CrissCrossAttention") as info:
        CrissCrossAttention(8)
    assert "--full-ops" in str(info.value)
    with pytest.raises(CompiledOpsRequired, match="--full-ops"):
        mmseg_models.build(dict(type="CCHead", in_channels=16, channels=8, num_classes=3, recurrence=2))


def _mmengine_like_checkpoint(path: Path) -> None:
    torch.save(
        {
            "meta": {"seed": np.int64(0), "hist": np.arange(3), "lr": np.float64(0.1)},
            "state_dict": {"w": torch.ones(2)},
            "message_hub": {"log_scalars": {"loss": np.array([1.0, 0.5])}},
        },
        path,
    )


def test_trusted_loader_reads_mmengine_checkpoint_plain_torch_rejects(tmp_path):
    path = tmp_path / "ckpt.pth"
    _mmengine_like_checkpoint(path)
    with pytest.raises(Exception):
        torch.load(path)  # torch >= 2.6: weights_only=True rejects numpy objects
    ckpt = load_trusted_checkpoint(path)
    assert torch.equal(ckpt["state_dict"]["w"], torch.ones(2))
    assert int(ckpt["meta"]["seed"]) == 0
    with pytest.raises(InputError, match="weights_only=True"):
        load_untrusted_checkpoint(path)
    with pytest.raises(InputError, match="not found"):
        load_trusted_checkpoint(tmp_path / "missing.pth")
