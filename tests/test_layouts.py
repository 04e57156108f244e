"""Real dataset layouts end to end: Cityscapes, Pascal VOC 2012 (+aug), ADE20K and DRIVE, each with mmseg's own
dataset base config and a tiny model, through the ``alseg`` entry point:
``ids -> train -> infer (pool, calibration) -> calibrate -> score -> select``.

The expected ids come from the fake trees' own naming (tests/layouts.py), not from alseg.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from alseg.commands import app, expand_cfg_options

import layouts

pytestmark = pytest.mark.slow
runner = CliRunner()
ALSEG = [sys.executable, "-m", "alseg.commands"]


def cli(*args, ok: bool = True):
    r = runner.invoke(app, expand_cfg_options([str(a) for a in args]))
    if ok:
        assert r.exit_code == 0, r.output
    return r


def read(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def round_through(tmp: Path, config: Path, data: Path, *, n_labeled: int, embeddings: bool = True,
                  call=cli) -> dict:
    """ids -> train -> infer -> calibrate -> score -> select; returns the files."""
    pool_txt, val_txt = tmp / "pool.txt", tmp / "val.txt"
    call("ids", config, "--data-root", data, "--split", "train", "--out", pool_txt)
    call("ids", config, "--data-root", data, "--split", "val", "--out", val_txt)
    labeled = tmp / "labeled.txt"
    labeled.write_text("".join(f"{i}\n" for i in read(pool_txt)[:n_labeled]))
    call("train", config, "--data-root", data, "--labeled", labeled, "--out", tmp / "r1", "--max-iters", 2,
         "--device", "cpu", "--quiet")
    ckpt = tmp / "r1" / "checkpoint.pth"
    emb = ["--embeddings", "bottleneck"] if embeddings else []
    call("infer", config, "--data-root", data, "--checkpoint", ckpt, "--ids", pool_txt, "--out", tmp / "pool.h5",
         "--device", "cpu", "--batch-size", 3, "--quiet", *emb)
    call("infer", config, "--data-root", data, "--checkpoint", ckpt, "--ids", val_txt, "--out", tmp / "calib.h5",
         "--with-labels", "--device", "cpu", "--quiet")
    call("calibrate", tmp / "calib.h5", "--alpha", 0.5, "--out", tmp / "crc.json", "--train-ids", labeled)
    call("score", tmp / "pool.h5", "--strategy", "margin,crc", "--calibration", tmp / "crc.json",
         "--out", tmp / "scores.h5", "--quiet")
    strategies = ["margin", "crc"] + (["coreset"] if embeddings else [])
    for strategy in strategies:
        call("select", "--strategy", strategy, "--budget", 2, "--labeled", labeled, "--scores", tmp / "scores.h5",
             "--pool", tmp / "pool.h5", "--out", tmp / f"selected-{strategy}.txt", "--device", "cpu", "--quiet")
    return dict(pool_txt=pool_txt, val_txt=val_txt, labeled=labeled, ckpt=ckpt, pool=tmp / "pool.h5",
                calib=tmp / "calib.h5", strategies=strategies)


def check_round(files: dict, expected_train: list[str], expected_val: list[str]) -> None:
    from alseg.files.hdf5 import PoolReader

    assert read(files["pool_txt"]) == expected_train
    assert read(files["val_txt"]) == expected_val
    labeled = set(read(files["labeled"]))
    for strategy in files["strategies"]:
        sel = read(files["pool_txt"].parent / f"selected-{strategy}.txt")
        assert len(sel) == 2 and set(sel) <= set(expected_train) and not set(sel) & labeled, (strategy, sel)
    with PoolReader(files["pool"]) as pool:
        assert pool.ids == expected_train
    with PoolReader(files["calib"]) as calib:
        assert calib.ids == expected_val and calib.has_labels


def test_cityscapes_round_through_the_real_entry_point(tmp_path):
    """Stock CityscapesDataset defaults (suffixes, city folders) found through mmseg; a real subprocess each step,
    and mmseg's ``--cfg-options a=1 b=2`` syntax (several pairs after one flag)."""
    data = tmp_path / "cityscapes"
    expected = layouts.cityscapes(data)
    config = layouts.tiny_config(tmp_path / "cs.py", "cityscapes.py", n_classes=19, scale=(64, 32))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    def call(*args, ok=True):
        r = subprocess.run([*ALSEG, *map(str, args)], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        return r

    files = round_through(tmp_path, config, data, n_labeled=4, call=call)
    check_round(files, expected["train"], expected["val"])
    assert expected["train"][0] == "aachen/aachen_000000_000019"
    from alseg.files.hdf5 import PoolReader

    with PoolReader(files["pool"]) as pool:
        assert pool.n_classes == 19 and pool.class_names[:3] == ["road", "sidewalk", "building"]
        assert pool.shape == (32, 64)  # Resize keeps 32x64, the FCN head on the last UNet decoder is full resolution
    # several KEY=VALUE pairs after one --cfg-options, mmseg's syntax; values parsed by mmengine's DictAction
    r = call("ids", config, "--data-root", data, "--split", "val", "--json", "--cfg-options",
             "val_dataloader.batch_size=3", "val_dataloader.dataset.data_prefix.img_path=leftImg8bit/train",
             "val_dataloader.dataset.data_prefix.seg_map_path=gtFine/train")
    assert json.loads(r.stdout)["ids"] == expected["train"]


def test_voc_variable_sizes_and_ann_file_split(tmp_path):
    from alseg.files.hdf5 import PoolReader

    data = tmp_path / "VOC2012"
    expected = layouts.voc(data)
    config = layouts.tiny_config(tmp_path / "voc.py", "pascal_voc12.py", n_classes=21, scale=(64, 48))
    files = round_through(tmp_path, config, data, n_labeled=3)
    check_round(files, expected["train"], expected["val"])  # ann_file splits, not the folder's 8 images
    sizes = dict(zip([f"2007_{k:06d}" for k in range(32, 40)], layouts.VOC_SIZES))
    with PoolReader(files["pool"]) as pool:
        got = {i: tuple(int(v) for v in s) for i, s in zip(pool.ids, pool.sizes)}
        # Resize(scale=(64, 48), keep_ratio) leaves these sizes alone; the UNet-FCN logits are at input size
        assert got == {i: sizes[i] for i in expected["train"]}
        assert pool.variable_size and pool.shape == (48, 64)
        seen = []
        for ids, logits, _ in pool.iter_batches(4):
            for i, lg in zip(ids, logits):
                seen.append(i)
                assert lg.shape[1:] == sizes[i]
        assert seen == expected["train"]
    with PoolReader(files["calib"]) as calib:
        for ids, _, labels in calib.iter_batches(8, with_labels=True):
            for i, lab in zip(ids, labels):
                mask = np.asarray(Image.open(data / "SegmentationClass" / f"{i}.png"))
                assert np.array_equal(lab, mask)  # stored labels = the mask, at its own size


def test_voc_aug_concat_dataset_ids(tmp_path):
    """mmseg's voc12_aug train split is a ConcatDataset of two ann_files: each id once, the first dataset's wins."""
    data = tmp_path / "VOC2012"
    expected = layouts.voc(data)
    out = tmp_path / "aug.txt"
    cli("ids", "voc/deeplabv3_r18_d8_aug", "--data-root", data, "--out", out)
    assert read(out) == expected["aug_train"]
    from alseg import dataset as D
    from alseg import mm

    index = D.build_index(mm.load_config("voc/deeplabv3_r18_d8_aug", data_root=data), "train")
    assert index.duplicates == 2
    assert index.data_info("2007_000032")["seg_map_path"].endswith("SegmentationClass/2007_000032.png")
    assert index.data_info("2008_000001")["seg_map_path"].endswith("SegmentationClassAug/2008_000001.png")


def test_ade20k_reduce_zero_label(tmp_path):
    from alseg.files.hdf5 import PoolReader

    data = tmp_path / "ADEChallengeData2016"
    expected = layouts.ade20k(data)
    config = layouts.tiny_config(tmp_path / "ade.py", "ade20k.py", n_classes=150, scale=(64, 48),
                                 reduce_zero_label=True)
    files = round_through(tmp_path, config, data, n_labeled=3)
    check_round(files, expected["train"], expected["val"])
    with PoolReader(files["calib"]) as calib:
        assert calib.n_classes == 150 and calib.class_names[0] == "wall"
        for ids, _, labels in calib.iter_batches(8, with_labels=True):
            for i, lab in zip(ids, labels):
                raw = np.asarray(Image.open(data / "annotations" / "validation" / f"{i}.png")).astype(np.int64)
                want = np.where(raw == 0, 255, raw - 1)  # mmseg's reduce_zero_label, by hand
                assert np.array_equal(lab, want)


def test_drive_stock_config_and_slide_inference(tmp_path):
    """The issue's failing command: mmseg's own DRIVE UNet config (RepeatDataset, '_manual1.png' masks) lists the
    right ids, and a round with slide inference (mmseg's test_cfg mode for DRIVE) runs on a tiny model."""
    data = tmp_path / "DRIVE"
    expected = layouts.drive(data)
    out = tmp_path / "stock.txt"
    cli("ids", "mmseg::unet/unet-s5-d16_fcn_4xb4-40k_drive-64x64.py", "--data-root", data, "--out", out)
    assert read(out) == expected["train"]
    config = layouts.tiny_config(tmp_path / "drive.py", "drive.py", n_classes=2, scale=(40, 40), slide=True,
                                 train_dataset="dict(dataset=dict(pipeline=train_pipeline))")
    files = round_through(tmp_path, config, data, n_labeled=2, embeddings=False)
    check_round(files, expected["train"], expected["val"])
    r = cli("infer", config, "--data-root", data, "--checkpoint", files["ckpt"], "--ids", files["pool_txt"],
            "--out", tmp_path / "e.h5", "--embeddings", "bottleneck", ok=False)
    assert r.exit_code == 1 and "slide" in r.stderr and not (tmp_path / "e.h5").exists()


def test_ids_errors_are_one_line(tmp_path):
    data = tmp_path / "cityscapes"
    expected = layouts.cityscapes(data)
    config = layouts.tiny_config(tmp_path / "cs.py", "cityscapes.py", n_classes=19, scale=(64, 32))
    ck = tmp_path / "none.pth"
    for bad_id, what in [("../../etc/passwd", "refused"), ("/etc/passwd", "refused"), ("aachen/nope", "no split")]:
        lst = tmp_path / "bad.txt"
        lst.write_text(f"{expected['train'][0]}\n{bad_id}\n")
        r = cli("infer", config, "--data-root", data, "--checkpoint", ck, "--ids", lst, "--out", tmp_path / "x.h5",
                ok=False)
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1 and str(lst) in lines[0] and what in lines[0], r.stderr
        assert bad_id in lines[0] and not (tmp_path / "x.h5").exists()
    # a val id given as a labeled id: not in the train split
    lst = tmp_path / "lab.txt"
    lst.write_text(f"{expected['val'][0]}\n")
    r = cli("train", config, "--data-root", data, "--labeled", lst, "--out", tmp_path / "w", ok=False)
    assert r.exit_code == 1 and "train split" in r.stderr and expected["val"][0] in r.stderr
    assert not (tmp_path / "w").exists()
    # a folder that is not the dataset
    r = cli("ids", config, "--data-root", tmp_path / "nowhere", ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.output
    # an unknown shipped config name
    r = cli("ids", "no_such_config", ok=False)
    assert r.exit_code == 1 and "alseg configs" in r.stderr


def test_shipped_configs_by_name_and_listing():
    from alseg import mm

    names = [n for n, _, _ in mm.shipped_configs()]
    for want in ("demo_unet_tiny", "cityscapes/deeplabv3_r18_d8", "cityscapes/segformer_mit_b0",
                 "voc/deeplabv3_r18_d8", "voc/deeplabv3_r18_d8_aug", "ade20k/segformer_mit_b0"):
        assert want in names
        cfg = mm.load_config(want)
        assert len(mm.class_names(cfg)) == cfg.model.decode_head.num_classes
    assert mm.find_config("demo_unet_tiny.py") == mm.configs_root() / "demo_unet_tiny.py"
    assert not any("_base_" in n for n in names)
    r = cli("configs")
    assert "cityscapes/deeplabv3_r18_d8" in r.stdout
    # from any directory: a name, not a path
    r = subprocess.run([*ALSEG, "configs", "--json"], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0 and any(d["name"] == "demo_unet_tiny" for d in json.loads(r.stdout))


def test_cfg_options_parse_like_mmseg():
    from alseg.mm import parse_cfg_options

    got = parse_cfg_options(["a=1", "b.c=[1,2]", "d=(3,4)", "e=x", "f=True", "g=None", "h=[(1,2),(3,4)]"])
    assert got == {"a": 1, "b.c": [1, 2], "d": (3, 4), "e": "x", "f": True, "g": None, "h": [(1, 2), (3, 4)]}
    assert expand_cfg_options(["train", "c", "--cfg-options", "a=1", "b=2", "--quiet"]) == [
        "train", "c", "--cfg-options", "a=1", "--cfg-options", "b=2", "--quiet"]


def test_custom_imports_dataset_type_and_metainfo_override(tmp_path, monkeypatch):
    """A dataset class the user registers through ``custom_imports``, and a ``metainfo`` class subset (mmseg then
    builds a label_map): both come from mmseg, not from alseg."""
    from alseg import dataset as D
    from alseg import mm

    (tmp_path / "my_alseg_ds.py").write_text(
        "from mmseg.datasets import BaseSegDataset\n"
        "from mmseg.registry import DATASETS\n\n"
        "@DATASETS.register_module()\n"
        "class MyTiles(BaseSegDataset):\n"
        "    METAINFO = dict(classes=('bg', 'field', 'river'), palette=[[0, 0, 0], [0, 255, 0], [0, 0, 255]])\n"
        "    def __init__(self, **kw):\n"
        "        super().__init__(img_suffix='_rgb.png', seg_map_suffix='_lbl.png', **kw)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    data = tmp_path / "tiles"
    for name in ("t/a1", "t/b2", "u/c3"):
        layouts._img(data / "rgb" / f"{name}_rgb.png", 16, 16, rng)
        layouts._mask(data / "lbl" / f"{name}_lbl.png", 16, 16, rng, 3)
    cfg_path = tmp_path / "mine.py"
    cfg_path.write_text(
        "custom_imports = dict(imports=['my_alseg_ds'], allow_failed_imports=False)\n"
        "_ds = dict(type='MyTiles', data_root='x', data_prefix=dict(img_path='rgb', seg_map_path='lbl'), pipeline=[])\n"
        "train_dataloader = dict(dataset=_ds)\nval_dataloader = dict(dataset=_ds)\ntest_dataloader = val_dataloader\n"
        "model = dict(decode_head=dict(num_classes=3))\n")
    out = tmp_path / "ids.txt"
    cli("ids", cfg_path, "--data-root", data, "--out", out)
    assert read(out) == ["t/a1", "t/b2", "u/c3"]
    cfg = mm.load_config(cfg_path, data_root=data)
    assert mm.class_names(cfg) == ["bg", "field", "river"]
    # a metainfo override with a subset of Cityscapes' classes: mmseg's label_map, through the index
    cs = tmp_path / "cityscapes"
    layouts.cityscapes(cs)
    config = layouts.tiny_config(tmp_path / "cs.py", "cityscapes.py", n_classes=2)
    cfg = mm.load_config(config, data_root=cs, cfg_options={
        "train_dataloader.dataset.metainfo": dict(classes=("road", "car"))})
    index = D.build_index(cfg, "train")
    assert index.class_names == ["road", "car"]
    label_map = index.data_info(index.ids[0])["label_map"]
    assert label_map[0] == 0 and label_map[13] == 1 and label_map[1] == 255  # road, car kept; sidewalk ignored
