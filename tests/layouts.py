"""Tiny fake dataset trees in the exact folder layouts of Cityscapes, Pascal VOC 2012 (+aug), ADE20K and DRIVE,
and tiny test configs that inherit mmseg's own dataset base configs (only pipelines shrunk, a tiny model).

Images are random pixels; masks are random class indices with some ignore pixels. Every function returns
what a test needs to check ids independently of alseg: the ids a split must hold, per the dataset's naming.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from alseg.mm import configs_root


def _img(path: Path, h: int, w: int, rng, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)


def _mask(path: Path, h: int, w: int, rng, n_classes: int, *, ignore: int | None = 255, low: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = rng.integers(low, n_classes, (h, w)).astype(np.uint8)
    # blocky masks so a few training iterations see every class in a crop
    m = np.kron(m[: (h + 7) // 8, : (w + 7) // 8], np.ones((8, 8), np.uint8))[:h, :w]
    if ignore is not None:
        m[:2, :2] = ignore
    Image.fromarray(m).save(path)
    return m


def cityscapes(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png + gtFine/..._gtFine_labelTrainIds.png."""
    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": []}
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for city in cities:
            for k in range(4 if split == "train" else 3):
                stem = f"{city}_{k:06d}_{19 + k:06d}"
                _img(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", 32, 64, rng)
                _mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", 32, 64, rng, 19)
                # the other gtFine files a real tree has must not be picked up
                _mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", 32, 64, rng, 34, ignore=None)
                splits[split].append(f"{city}/{stem}")
    return {k: sorted(v) for k, v in splits.items()}


VOC_SIZES = [(48, 64), (44, 64), (48, 56), (40, 64), (48, 48), (36, 64), (64, 40), (48, 52)]  # Resize(64, 48) keeps them


def voc(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """VOC2012: JPEGImages/*.jpg (variable sizes), SegmentationClass/*.png, SegmentationClassAug/*.png,
    ImageSets/Segmentation/{train,val,aug}.txt."""
    rng = np.random.default_rng(seed)
    names = [f"2007_{k:06d}" for k in range(32, 32 + len(VOC_SIZES))]
    for name, (h, w) in zip(names, VOC_SIZES):
        _img(root / "JPEGImages" / f"{name}.jpg", h, w, rng, "JPEG")
        _mask(root / "SegmentationClass" / f"{name}.png", h, w, rng, 21)
        _mask(root / "SegmentationClassAug" / f"{name}.png", h, w, rng, 21)
    extra = [f"2008_{k:06d}" for k in range(3)]  # only in the augmented set
    for name in extra:
        _img(root / "JPEGImages" / f"{name}.jpg", 40, 48, rng, "JPEG")
        _mask(root / "SegmentationClassAug" / f"{name}.png", 40, 48, rng, 21)
    train, val = names[:5], names[5:]
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (sets / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (sets / "aug.txt").write_text("".join(f"{i}\n" for i in train[:2] + extra))
    return {"train": train, "val": val, "aug_train": train + extra}


ADE_SIZES = [(48, 64), (44, 64), (48, 56), (40, 64), (48, 48), (36, 64), (64, 40)]


def ade20k(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """ADEChallengeData2016: images/{training,validation}/ADE_*.jpg, annotations/.../ADE_*.png (0 = other)."""
    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": []}
    for k, (h, w) in enumerate(ADE_SIZES):
        split, folder, tag = (("train", "training", "train") if k < 5 else ("val", "validation", "val"))
        name = f"ADE_{tag}_{k + 1:08d}"
        _img(root / "images" / folder / f"{name}.jpg", h, w, rng, "JPEG")
        _mask(root / "annotations" / folder / f"{name}.png", h, w, rng, 151, ignore=None)
        splits[split].append(name)
    return splits


def drive(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """DRIVE as mmseg converts it: images/{training,validation}/*.png, annotations/.../*_manual1.png (0/1)."""
    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": []}
    for split, folder, ks in (("train", "training", range(21, 25)), ("val", "validation", range(1, 3))):
        for k in ks:
            name = f"{k:02d}_{'training' if split == 'train' else 'test'}"
            _img(root / "images" / folder / f"{name}.png", 40, 40, rng)
            _mask(root / "annotations" / folder / f"{name}_manual1.png", 40, 40, rng, 2, ignore=None)
            splits[split].append(name)
    return splits


_MODEL = """
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size_divisor=8,
                           test_cfg=dict(size_divisor=8)),
    pretrained=None,
    backbone=dict(type='UNet', in_channels=3, base_channels=4, num_stages=4, strides=(1, 1, 1, 1),
                  enc_num_convs=(1, 1, 1, 1), dec_num_convs=(1, 1, 1), downsamples=(True, True, True),
                  enc_dilations=(1, 1, 1, 1), dec_dilations=(1, 1, 1), norm_cfg=norm_cfg, act_cfg=dict(type='ReLU'),
                  upsample_cfg=dict(type='InterpConv'), norm_eval=False, init_cfg=None),
    decode_head=dict(type='FCNHead', in_channels=4, in_index=3, channels=8, num_convs=1, concat_input=False,
                     dropout_ratio=0.0, num_classes={n_classes}, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict({test_cfg}),
)
"""

_PIPELINES = """
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'{reduce}),
    dict(type='RandomCrop', crop_size=(32, 32)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale={scale}, keep_ratio=True),
    dict(type='LoadAnnotations'{reduce}),
    dict(type='PackSegInputs'),
]
"""


def tiny_config(path: Path, dataset_base: str, *, n_classes: int, scale=(64, 48), reduce_zero_label: bool = False,
                slide: bool = False, train_dataset: str = "dict(pipeline=train_pipeline)") -> Path:
    """A config inheriting ``mmseg::_base_/datasets/<dataset_base>``: only pipelines, loaders' workers and the
    model are alseg's (a 4-channel UNet), as a user shrinks a stock config for a small machine."""
    bases = [str(configs_root() / "_base_" / "runtime.py"), str(configs_root() / "_base_" / "schedules" / "sgd_20k.py")]
    reduce = ", reduce_zero_label=True" if reduce_zero_label else ""
    test_cfg = "mode='slide', crop_size=(32, 32), stride=(24, 24)" if slide else "mode='whole'"
    text = (
        f"_base_ = ['mmseg::_base_/datasets/{dataset_base}', {bases[0]!r}, {bases[1]!r}]\n"
        + _MODEL.format(n_classes=n_classes, test_cfg=test_cfg)
        + _PIPELINES.format(reduce=reduce, scale=tuple(scale))
        + "train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, "
        + f"dataset={train_dataset})\n"
        + "val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, "
        + "dataset=dict(pipeline=test_pipeline))\n"
        + "test_dataloader = val_dataloader\n"
    )
    path.write_text(text)
    return path
