"""Training on partial labels (issue 14 §3): the partial-label transform, the loss it feeds, and train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from alseg import partial
from alseg.commands import app
from alseg.demo_data import make_demo_data
from alseg.files.labelled import FULL, LabelledState, write_labelled

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "demo_unet_tiny.py")
runner = CliRunner()
SIZE = 32  # demo images are SIZE x SIZE; patch:16 gives 4 patches, ids 0 1 / 2 3


def _state(path: Path, images: dict[str, dict[str, tuple[int, ...]]]) -> Path:
    write_labelled(path, LabelledState(images))
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial")
    d = make_demo_data(root / "demo", n_images=24, size=SIZE, seed=0, n_val=4, n_calib=4)
    pool = (d.out_dir / "splits" / "pool.txt").read_text().split()
    return dict(root=root, data=d.out_dir, pool=pool)


# ------------------------------------------------------------------------------------------ hand-worked maps

GT = np.array([[0, 1, 2, 2],
               [1, 0, 2, 255],
               [3, 3, 255, 255],
               [0, 3, 255, 1]], dtype=np.uint8)
I = 255
EXPECTED = {
    # a: patch:2 regions 1 (top right) and 2 (bottom left)
    ("a", "precise"): [[I, I, 2, 2], [I, I, 2, I], [3, 3, I, I], [0, 3, I, I]],
    ("a", "dominant"): [[I, I, 2, 2], [I, I, 2, 2], [3, 3, I, I], [3, 3, I, I]],  # ignore pixel takes 2; 3 beats 0
    # c: patch:2 region 0 (a 2-2 tie between classes 0 and 1: the lower class wins) and pixel 15 = (3, 3)
    ("c", "precise"): [[0, 1, I, I], [1, 0, I, I], [I, I, I, I], [I, I, I, 1]],
    ("c", "dominant"): [[0, 0, I, I], [0, 0, I, I], [I, I, I, I], [I, I, I, 1]],
    # d: patch:2 region 3 holds three ignore pixels and one 1: dominant labels the whole patch 1
    ("d", "dominant"): [[I, I, I, I], [I, I, I, I], [I, I, 1, 1], [I, I, 1, 1]],
}


@pytest.mark.parametrize("image_id,annotation", sorted(EXPECTED) + [("full", "precise"), ("full", "dominant")])
def test_transform_matches_hand_worked_maps(tmp_path, image_id, annotation):
    from mmengine.dataset import Compose

    for name in ("a", "c", "d", "full"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{name}.png")
        Image.fromarray(GT).save(tmp_path / f"{name}_gt.png")
    state = _state(tmp_path / "labelled.jsonl", {
        "a": {"patch:2": (1, 2)}, "c": {"patch:2": (0,), "pixel:1": (15,)}, "d": {"patch:2": (3,)}, "full": {FULL: ()},
    })
    partial.register_transform()
    pipeline = Compose([
        dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=False),
        dict(type=partial.TRANSFORM_TYPE, labelled_file=str(state), annotation=annotation, img_prefix=str(tmp_path),
             img_suffix=".png"),
    ])
    out = pipeline(dict(img_path=str(tmp_path / f"{image_id}.png"), seg_map_path=str(tmp_path / f"{image_id}_gt.png"),
                        reduce_zero_label=False, seg_fields=[]))
    want = GT if image_id == "full" else np.array(EXPECTED[(image_id, annotation)], dtype=np.uint8)
    np.testing.assert_array_equal(out["gt_seg_map"], want)


# ------------------------------------------------------------------------------------------ the train pipeline


def _train_dataset(data_root: Path, labelled: Path, annotation: str = "precise"):
    """The train dataset exactly as ``alseg train`` builds it (subset, then the transform when needed)."""
    from mmseg.registry import DATASETS

    from alseg import dataset as D, mm

    cfg = mm.load_config(CONFIG, data_root=data_root)
    index = D.build_index(cfg, "train")
    state, _ = partial.read_labels(labelled)
    sub = D.subset_config(cfg.train_dataloader.dataset, labelled, "train", 0)
    if any(FULL not in units for units in state.images.values()):
        partial.insert_transform(sub, index.leaves, labelled_file=str(labelled), annotation=annotation,
                                 region_maps={}, ignore_index=index.ignore_index)
    return DATASETS.build(sub), sub


def _sample(ds, k: int, seed: int = 0):
    np.random.seed(seed)  # RandomFlip draws from numpy's global generator
    return ds[k]


def _same_sample(a, b) -> bool:
    return (torch.equal(a["inputs"], b["inputs"])
            and torch.equal(a["data_samples"].gt_sem_seg.data, b["data_samples"].gt_sem_seg.data)
            and a["data_samples"].metainfo == b["data_samples"].metainfo)


def test_plain_id_list_pipeline_is_unchanged(demo, tmp_path):
    """An id list builds no transform and gives the dataset's own pipeline output; a labelled-state file of
    the same images, whole or mixed with partial ones, gives the same output for its whole images."""
    from alseg import dataset as D, mm

    ids = demo["pool"][:4]
    listed = tmp_path / "labeled.txt"
    listed.write_text("".join(f"{i}\n" for i in ids))
    ds_list, cfg_list = _train_dataset(demo["data"], listed)
    assert partial.TRANSFORM_TYPE not in json.dumps(cfg_list, default=str)
    index = D.build_index(mm.load_config(CONFIG, data_root=demo["data"]), "train", keep_pipeline=True)
    whole = _state(tmp_path / "whole.jsonl", {i: {FULL: ()} for i in ids})
    mixed = _state(tmp_path / "mixed.jsonl", {**{i: {FULL: ()} for i in ids}, demo["pool"][5]: {"patch:16": (0,)}})
    ds_whole, _ = _train_dataset(demo["data"], whole)
    ds_mixed, cfg_mixed = _train_dataset(demo["data"], mixed)
    assert partial.TRANSFORM_TYPE in json.dumps(cfg_mixed, default=str)
    for k, image_id in enumerate(ids):
        for seed in (0, 1):
            np.random.seed(seed)
            leaf, idx = index.where[image_id]
            direct = index.leaves[leaf].prepare_data(idx)
            assert _same_sample(_sample(ds_list, k, seed), direct)
            assert _same_sample(_sample(ds_whole, k, seed), direct)
            assert _same_sample(_sample(ds_mixed, k, seed), direct)


def _perturbed_copy(src: Path, dst: Path, image_id: str, keep: np.ndarray) -> Path:
    """A copy of the demo data whose ground truth of ``image_id`` is wrong wherever ``keep`` is false."""
    import shutil

    shutil.copytree(src, dst)
    path = dst / "ann_dir" / f"{image_id}.png"
    gt = np.asarray(Image.open(path))
    wrong = np.where(keep, gt, (np.where(gt == 255, 0, gt) + 3) % 7).astype(np.uint8)  # a different valid class
    assert (wrong != gt)[~keep].all()
    Image.fromarray(wrong).save(path)
    return dst


def _loss_and_grads(cfg, data):
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(cfg.model)  # torch's default initialisation, seeded
    model.train()
    batch = model.data_preprocessor(pseudo_collate(data), training=True)
    losses = model.loss(batch["inputs"], batch["data_samples"])
    total = sum(v for k, v in losses.items() if "loss" in k)  # mmseg names it decode.loss_*
    total.backward()
    return total.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("annotation", ["precise", "dominant"])
def test_pixels_outside_labelled_regions_do_not_touch_loss_or_gradients(demo, tmp_path, annotation):
    """Wrong labels outside the labelled regions: the same loss and the same gradient for every parameter,
    through the real train pipeline, mmseg's data preprocessor and model.loss. Without the transform (the
    image labelled whole) the same perturbation does change the loss: the check has teeth."""
    from alseg import mm
    from alseg.regions import patch_map

    image_id, other = demo["pool"][6], demo["pool"][7]
    regions = (0, 3)
    keep = np.isin(patch_map(SIZE, SIZE, 16), regions)
    good = demo["data"]
    bad = _perturbed_copy(good, tmp_path / "bad", image_id, keep)
    cfg = mm.load_config(CONFIG, data_root=good)
    results = {}
    for name, root in (("good", good), ("bad", bad)):
        for mode in ("partial", "whole"):
            unit = {"patch:16": regions} if mode == "partial" else {FULL: ()}
            state = _state(tmp_path / f"{name}-{mode}.jsonl", {image_id: unit, other: {FULL: ()}})
            ds, _ = _train_dataset(root, state, annotation)
            data = [_sample(ds, 0, seed=3), _sample(ds, 1, seed=4)]
            results[name, mode] = (data, *_loss_and_grads(cfg, data))
    (data_g, loss_g, grads_g), (data_b, loss_b, grads_b) = results["good", "partial"], results["bad", "partial"]
    label = data_g[0]["data_samples"].gt_sem_seg.data[0].numpy()
    flipped = data_g[0]["data_samples"].metainfo.get("flip", False)
    outside = ~(keep[:, ::-1] if flipped else keep)
    assert (label[outside] == 255).all() and (label[~outside] != 255).any()
    assert torch.equal(loss_g, loss_b)
    assert grads_g.keys() == grads_b.keys() and grads_g
    for name in grads_g:
        assert torch.equal(grads_g[name], grads_b[name]), name
    assert not torch.equal(results["good", "whole"][1], results["bad", "whole"][1])


# ------------------------------------------------------------------------------------------ alseg train


def _train_args(demo, labelled: Path, out: Path, *extra: str) -> list[str]:
    return ["train", CONFIG, "--labeled", str(labelled), "--out", str(out), "--data-root", str(demo["data"]),
            "--device", "cpu", "--max-iters", "2", "--batch-size", "2", "--quiet", "--json", *extra]


def test_train_on_labelled_state_records_labelled_pixels(demo, tmp_path):
    pool = demo["pool"]
    images = {pool[0]: {FULL: ()}, pool[1]: {FULL: ()}, pool[2]: {"patch:16": (0, 3)}, pool[3]: {"patch:16": (1,)},
              pool[4]: {"patch:16": (2, 3), "pixel:5": (0, 1023)}}
    state = _state(tmp_path / "labelled.jsonl", images)
    r = runner.invoke(app, _train_args(demo, state, tmp_path / "r", "--annotation", "dominant"))
    assert r.exit_code == 0, r.output
    # independently: whole images are SIZE², a 16 x 16 patch is 256 pixels, and pixel 0 of pool[4] lies in
    # its patch 0 (not labelled), pixel 1023 = (31, 31) in its labelled patch 3
    expected = 2 * SIZE * SIZE + (2 + 1 + 2) * 256 + 1
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    labels = metrics["labels"]
    assert labels["labelled_pixels"] == expected and labels["image_pixels"] == 5 * SIZE * SIZE
    assert labels["labelled_percent"] == pytest.approx(100.0 * expected / (5 * SIZE * SIZE))
    assert labels["annotation"] == "dominant" and labels["source"] == "labelled state"
    assert (labels["n_full"], labels["n_partial"]) == (2, 3) and labels["region_maps"] == {}
    assert metrics["n_labeled"] == 5 and metrics["iterations"] == 2
    result = json.loads(r.stdout)
    assert result["labelled_pixels"] == expected and result["annotation"] == "dominant"
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["args"]["annotation"] == "dominant"


def test_train_on_id_list_records_whole_images(demo, tmp_path):
    listed = tmp_path / "labeled.txt"
    listed.write_text("".join(f"{i}\n" for i in demo["pool"][:3]))
    r = runner.invoke(app, _train_args(demo, listed, tmp_path / "r"))
    assert r.exit_code == 0, r.output
    labels = json.loads((tmp_path / "r" / "metrics.json").read_text())["labels"]
    assert labels["source"] == "id list" and labels["annotation"] is None
    assert labels["labelled_pixels"] == labels["image_pixels"] == 3 * SIZE * SIZE and labels["labelled_percent"] == 100.0


def test_superpixel_maps_from_a_store_or_computed(demo, tmp_path):
    """Without --region-maps the maps are computed into OUT (and recorded so); with a store they are read
    from it (and recorded so): a store whose maps differ from the computed ones changes the pixel count."""
    from alseg.files.regionmaps import write_region_maps
    from alseg.regions import region_map_params, superpixel_map

    image_id = demo["pool"][8]
    state = _state(tmp_path / "labelled.jsonl", {image_id: {"superpixel:4": (0,)}})
    r = runner.invoke(app, _train_args(demo, state, tmp_path / "computed"))
    assert r.exit_code == 0, r.output
    labels = json.loads((tmp_path / "computed" / "metrics.json").read_text())["labels"]
    rec = labels["region_maps"]["superpixel:4"]
    assert rec["source"] == "computed" and Path(rec["path"]).is_file()
    image = np.asarray(Image.open(demo["data"] / "img_dir" / f"{image_id}.png").convert("RGB"))
    assert labels["labelled_pixels"] == int((superpixel_map(image, 4) == 0).sum())
    store = tmp_path / "pool.regions-superpixel-4.h5"
    half = np.zeros((SIZE, SIZE), np.int32)
    half[:, SIZE // 2:] = 1  # region 0 = the left half
    write_region_maps(store, "superpixel:4", region_map_params("superpixel:4"), [(image_id, half)])
    r = runner.invoke(app, _train_args(demo, state, tmp_path / "stored", "--region-maps", str(store)))
    assert r.exit_code == 0, r.output
    labels = json.loads((tmp_path / "stored" / "metrics.json").read_text())["labels"]
    assert labels["region_maps"]["superpixel:4"]["source"] == "store"
    assert labels["labelled_pixels"] == SIZE * SIZE // 2


def _one_error_line(r, *needles: str) -> None:
    assert r.exit_code == 1, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_bad_labelled_state_is_one_error_line(demo, tmp_path):
    from alseg.files.regionmaps import write_region_maps
    from alseg.regions import region_map_params

    pool = demo["pool"]
    cases = {
        "unknown-id": ({pool[0]: {FULL: ()}, "img_99999": {"patch:16": (0,)}}, [], "img_99999"),
        "region-out-of-range": ({pool[0]: {"patch:16": (4,)}}, [], "region 4"),
        "no-map-in-store": ({pool[0]: {"superpixel:4": (0,)}}, ["store"], "no region map"),
    }
    store = tmp_path / "store.h5"
    write_region_maps(store, "superpixel:4", region_map_params("superpixel:4"), [(pool[1], np.zeros((SIZE, SIZE), int))])
    for name, (images, extra, needle) in cases.items():
        state = _state(tmp_path / f"{name}.jsonl", images)
        args = ["--region-maps", str(store)] if extra else []
        r = runner.invoke(app, _train_args(demo, state, tmp_path / name, *args))
        _one_error_line(r, str(state), needle)
        assert not (tmp_path / name).exists()  # the work dir this call created is removed again
    r = runner.invoke(app, _train_args(demo, tmp_path / "unknown-id.jsonl", tmp_path / "x", "--annotation", "rough"))
    assert r.exit_code == 2  # a usage error: not one of precise, dominant
