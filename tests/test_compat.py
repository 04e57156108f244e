"""mmseg on mmcv-lite: the configs build and run, compiled-only ops fail clearly, checkpoints load safely
(more in tests/test_checkpoint_safety.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alseg.compat import has_compiled_mmcv
from alseg.errors import CompiledOpsRequired, InputError
from alseg.files.checkpoint import read_checkpoint

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


def test_mmengine_checkpoint_loads_weights_only_with_numpy_allowlist(tmp_path):
    path = tmp_path / "ckpt.pth"
    _mmengine_like_checkpoint(path)
    with pytest.raises(Exception):
        torch.load(path)  # torch >= 2.6: weights_only=True rejects numpy objects
    ckpt = read_checkpoint(path)  # still weights_only=True, plus numpy arrays, dtypes and scalars
    assert ckpt.kind == "mmengine" and torch.equal(ckpt.state_dict["w"], torch.ones(2))
    assert ckpt.info["seed"] == 0 and ckpt.info["hist"] == [0, 1, 2]
    with pytest.raises(InputError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")


@pytest.mark.parametrize(
    "name, bottleneck_dim",
    [("demo_unet_tiny.py", 64), ("deeplabv3_r18_d8.py", 512), ("segformer_mit_b0.py", 256)],
)
def test_embedding_hooks_on_every_head(mmseg_models, name, bottleneck_dim):
    """bottleneck = pooled last backbone stage; penultimate = pooled input of conv_seg; badge from both."""
    from alseg.mm import FeatureTaps, load_config
    from alseg.strategies import badge_last_layer_embedding

    cfg = load_config(CONFIGS / name)
    model = mmseg_models.build(cfg.model).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode(), FeatureTaps(model) as taps:
        logits = model.decode_head(model.extract_feat(x))
        names = ["bottleneck", "penultimate", "badge"]
        emb = taps.embeddings(names)
        dims = taps.dims(names)
        feature = taps.captured["feature"]
        # the hooked feature really is the classifier's input: re-applying conv_seg gives the head's logits
        torch.testing.assert_close(model.decode_head.conv_seg(feature), logits)
        backbone_out = model.extract_feat(x)
        if isinstance(backbone_out, (list, tuple)):
            deepest = min(backbone_out, key=lambda o: o.shape[-1] * o.shape[-2])
        else:
            deepest = backbone_out
    k = logits.shape[1]
    assert dims == {"bottleneck": bottleneck_dim, "penultimate": feature.shape[1], "badge": k * feature.shape[1]}
    assert emb["bottleneck"].shape == (2, bottleneck_dim)
    torch.testing.assert_close(emb["penultimate"], feature.mean(dim=(2, 3)))
    torch.testing.assert_close(emb["badge"], badge_last_layer_embedding(logits, feature))
    if deepest.shape[1] == bottleneck_dim:
        torch.testing.assert_close(emb["bottleneck"], deepest.float().mean(dim=(2, 3)))
