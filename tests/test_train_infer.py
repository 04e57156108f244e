"""Demo data, then train -> infer through the real CLI on CPU (tiny UNet, a few iterations)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from alseg.commands import app
from alseg.demo_data import CLASS_NAMES, make_demo_data

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "demo_unet_tiny.py")
runner = CliRunner()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_data_is_deterministic(tmp_path):
    a = make_demo_data(tmp_path / "a", n_images=12, size=32, seed=3, n_val=2, n_calib=2)
    b = make_demo_data(tmp_path / "b", n_images=12, size=32, seed=3, n_val=2, n_calib=2)
    c = make_demo_data(tmp_path / "c", n_images=12, size=32, seed=4, n_val=2, n_calib=2)
    assert _files(a.out_dir) == _files(b.out_dir)
    assert _files(a.out_dir) != _files(c.out_dir)
    assert not list(tmp_path.glob(".*partial*"))


def test_demo_data_class_statistics(tmp_path):
    from PIL import Image

    d = make_demo_data(tmp_path / "demo")
    assert d.class_names == list(CLASS_NAMES) and len(CLASS_NAMES) >= 6
    counts = d.class_image_counts
    assert all(counts[c] > 0 for c in CLASS_NAMES), counts  # every class appears
    rare = d.rare_class
    assert counts[rare] <= 0.1 * d.n_images  # present in few images ...
    assert d.class_pixel_fraction[rare] == min(d.class_pixel_fraction.values())  # ... and small
    assert all(counts[c] >= 0.1 * d.n_images for c in d.confusable_classes)
    assert counts["van"] < counts["car"]  # vans live in the rarer scene types
    ids = (d.out_dir / "splits" / "all.txt").read_text().split()
    assert len(ids) == 400 and ids[17] == "img_00017"
    parts = [(d.out_dir / "splits" / f"{s}.txt").read_text().split() for s in ("pool", "val", "calib")]
    assert sorted(sum(parts, [])) == sorted(ids) and [len(p) for p in parts] == [280, 60, 60]
    # a long tail of scene types: many redundant easy images hold only background and road
    easy = 0
    for i in ids:
        m = np.asarray(Image.open(d.out_dir / "ann_dir" / f"{i}.png"))
        easy += set(np.unique(m)) <= {0, 1, 255}
    assert 0.3 * len(ids) <= easy <= 0.5 * len(ids)
    mask = np.asarray(Image.open(d.out_dir / "ann_dir" / "img_00000.png"))
    image = np.asarray(Image.open(d.out_dir / "img_dir" / "img_00000.png"))
    assert mask.shape == (48, 48) and image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert (mask[0] == 255).all() and set(np.unique(mask)) <= set(range(len(CLASS_NAMES))) | {255}
    meta = json.loads((d.out_dir / "classes.json").read_text())
    assert meta["classes"] == list(CLASS_NAMES) and len(meta["palette"]) == len(CLASS_NAMES)


def test_demo_data_cli_refuses_existing(tmp_path):
    args = ["demo-data", "--out", str(tmp_path / "d"), "--n-images", "8", "--size", "32", "--n-val", "2", "--n-calib", "2"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and again.stderr.startswith("error: ") and "--overwrite" in again.stderr


def test_config_classes_match_demo_data():
    from alseg.mm import class_names, load_config

    assert class_names(load_config(CONFIG)) == list(CLASS_NAMES)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("round")
    demo = make_demo_data(root / "demo", n_images=40, size=32, seed=0, n_val=6, n_calib=6)
    labeled = root / "labeled.txt"
    labeled.write_text("".join(f"{i}\n" for i in (demo.out_dir / "splits" / "pool.txt").read_text().split()[:12]))
    work_dir = root / "r0"
    result = runner.invoke(app, [
        "train", CONFIG, "--labeled", str(labeled), "--out", str(work_dir), "--data-root", str(demo.out_dir),
        "--device", "cpu", "--max-iters", "6", "--batch-size", "4", "--quiet", "--json",
    ])
    assert result.exit_code == 0, result.output
    ids_path = demo.out_dir / "splits" / "all.txt"
    pool = root / "pool.h5"
    result_infer = runner.invoke(app, [
        "infer", CONFIG, "--checkpoint", str(work_dir / "checkpoint.pth"), "--ids", str(ids_path),
        "--out", str(pool), "--data-root", str(demo.out_dir), "--with-labels",
        "--embeddings", "bottleneck,penultimate,badge", "--batch-size", "8", "--device", "cpu", "--quiet", "--json",
    ])
    assert result_infer.exit_code == 0, result_infer.output
    return dict(root=root, demo=demo, labeled=labeled, work_dir=work_dir, train=json.loads(result.stdout),
                ids_path=ids_path, pool=pool, infer=json.loads(result_infer.stdout))


def test_train_writes_checkpoint_and_metrics(trained):
    work_dir = trained["work_dir"]
    assert (work_dir / "checkpoint.pth").is_file()
    metrics = json.loads((work_dir / "metrics.json").read_text())
    assert metrics["format"] == "alseg.metrics" and metrics["format_version"] == 1
    assert metrics["n_labeled"] == 12 and metrics["iterations"] == 6
    assert 0.0 <= metrics["final"]["mIoU"] <= 100.0
    assert set(metrics["final"]["per_class_iou"]) == set(CLASS_NAMES)
    assert trained["train"]["final_miou"] == metrics["final"]["mIoU"]
    manifest = json.loads((work_dir / "manifest.json").read_text())
    assert manifest["stage"] == "train" and manifest["result"]["n_labeled"] == 12
    # alseg's checkpoint: plain tensors that torch's safe loader reads as is, class names in the sidecar
    ckpt = torch.load(work_dir / "checkpoint.pth", weights_only=True)
    assert ckpt["format"] == "alseg.checkpoint" and all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())
    side = json.loads((work_dir / "checkpoint.json").read_text())
    assert side["dataset_meta"]["classes"] == list(CLASS_NAMES) and side["iteration"] == 6


def test_train_refuses_existing_and_empty_and_missing(trained, tmp_path):
    base = ["train", CONFIG, "--data-root", str(trained["demo"].out_dir), "--device", "cpu", "--max-iters", "1", "--quiet"]
    again = runner.invoke(app, base + ["--labeled", str(trained["labeled"]), "--out", str(trained["work_dir"])])
    assert again.exit_code == 1 and "--overwrite" in again.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = runner.invoke(app, base + ["--labeled", str(empty), "--out", str(tmp_path / "w")])
    assert r.exit_code == 1 and "empty" in r.stderr
    missing = tmp_path / "missing.txt"
    missing.write_text("img_00001\nimg_99999\n")
    r = runner.invoke(app, base + ["--labeled", str(missing), "--out", str(tmp_path / "w")])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: ")
    assert "img_99999" in r.stderr


def _model_and_batch(trained, image_id):
    from alseg import mm

    cfg = mm.load_config(CONFIG, data_root=trained["demo"].out_dir)
    model = mm.build_model(cfg, trained["work_dir"] / "checkpoint.pth", torch.device("cpu"))
    from alseg import dataset as D

    index = D.resolve(cfg, [image_id], "test")
    batch = next(iter(D.test_loader(cfg, index, [image_id], with_labels=False, batch_size=1)))
    return model, batch


def test_infer_pool_file(trained):
    from PIL import Image

    ids = trained["ids_path"].read_text().split()
    with h5py.File(trained["pool"], "r") as fh:
        assert [i.decode() for i in fh["ids"][:]] == ids
        logits = fh["logits"][:]
        labels = fh["labels"][:]
        emb = {k: fh["embeddings"][k][:] for k in fh["embeddings"]}
        emb_attrs = {k: dict(fh["embeddings"][k].attrs) for k in fh["embeddings"]}
        assert json.loads(fh.attrs["class_names"]) == list(CLASS_NAMES)
        assert fh.attrs["resolution"] == "native" and len(fh.attrs["checkpoint_sha256"]) == 64
    model, batch = _model_and_batch(trained, ids[0])
    with torch.inference_mode():
        data = model.data_preprocessor(batch, False)
        head = model.decode_head(model.extract_feat(data["inputs"]))
    k = len(CLASS_NAMES)
    assert logits.shape == (len(ids), k, *head.shape[-2:]) and logits.dtype == np.float16
    np.testing.assert_allclose(logits[0].astype(np.float32), head[0].numpy(), atol=1e-2, rtol=1e-2)
    # labels: the mask sampled at the centre of each logit cell (not its top-left pixel), ignore index kept
    from alseg.labels import labels_on_grid

    mask = torch.from_numpy(np.asarray(Image.open(trained["demo"].out_dir / "ann_dir" / f"{ids[3]}.png")).astype(np.int64))
    want = labels_on_grid(mask, tuple(logits.shape[-2:]))
    np.testing.assert_array_equal(labels[3], want.numpy().astype(labels.dtype))
    if tuple(logits.shape[-2:]) != tuple(mask.shape):  # the old top-left (`nearest`) labels differ
        top_left = torch.nn.functional.interpolate(mask[None, None].float(), size=logits.shape[-2:], mode="nearest")
        assert (top_left[0, 0].numpy().astype(labels.dtype) != labels[3]).any()
    assert (labels == 255).any()
    d = model.decode_head.conv_seg.in_channels
    assert emb["penultimate"].shape == (len(ids), d)
    assert emb["badge"].shape == (len(ids), k * d)
    assert emb["bottleneck"].shape == (len(ids), 8 * 8)  # UNet base 8, 4 stages: 64 channels at the bottom
    assert emb_attrs["badge"]["layer"].startswith("decode_head.conv_seg")
    assert emb_attrs["bottleneck"]["layer"] == "backbone[0]"
    assert trained["infer"]["logits_shape"] == list(logits.shape)


def test_badge_embedding_equals_direct_recomputation(trained):
    ids = trained["ids_path"].read_text().split()
    image_id = ids[5]
    model, batch = _model_and_batch(trained, image_id)
    seen = {}
    handle = model.decode_head.conv_seg.register_forward_hook(
        lambda m, i, o: seen.update(feature=i[0].clone(), logits=o.clone())
    )
    with torch.inference_mode():
        data = model.data_preprocessor(batch, False)
        model.decode_head(model.extract_feat(data["inputs"]))
    handle.remove()
    h = seen["feature"][0].double().numpy()  # (D, H, W)
    z = seen["logits"][0].double().numpy()  # (K, H, W)
    p = np.exp(z - z.max(0)) / np.exp(z - z.max(0)).sum(0)
    g = p - np.eye(p.shape[0])[p.argmax(0)].transpose(2, 0, 1)
    want = np.einsum("kyx,dyx->kd", g, h) / (h.shape[1] * h.shape[2])
    with h5py.File(trained["pool"], "r") as fh:
        row = [i.decode() for i in fh["ids"][:]].index(image_id)
        got = fh["embeddings"]["badge"][row]
        pen = fh["embeddings"]["penultimate"][row]
    np.testing.assert_allclose(got, want.reshape(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(pen, h.mean(axis=(1, 2)), rtol=1e-4, atol=1e-6)


def test_infer_resume_after_interruption(trained, tmp_path):
    from alseg.stages.infer import infer

    out = tmp_path / "pool.h5"
    common = dict(checkpoint_path=trained["work_dir"] / "checkpoint.pth", ids_path=trained["ids_path"],
                  out_path=out, data_root=trained["demo"].out_dir, device="cpu", batch_size=8,
                  with_labels=True, embeddings=("bottleneck", "penultimate", "badge"))
    calls = []

    def stop_after_two_batches(advance=1, total=None):
        calls.append(advance)
        if len([c for c in calls if c]) > 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        infer(CONFIG, progress=stop_after_two_batches, **common)
    partial = out.with_name(out.name + ".partial")
    assert partial.exists() and not out.exists()
    assert 0 < len(list(partial.glob("seg-*.npz"))) < 5  # finished batches of 8, one file each
    r = runner.invoke(app, [
        "infer", CONFIG, "--checkpoint", str(common["checkpoint_path"]), "--ids", str(trained["ids_path"]),
        "--out", str(out), "--data-root", str(trained["demo"].out_dir), "--with-labels",
        "--embeddings", "bottleneck,penultimate,badge", "--device", "cpu", "--resume", "--quiet", "--json",
    ])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_resumed"] > 0
    with h5py.File(out, "r") as a, h5py.File(trained["pool"], "r") as b:
        ids_a = [i.decode() for i in a["ids"][:]]
        ids_b = [i.decode() for i in b["ids"][:]]
        assert sorted(ids_a) == sorted(ids_b)
        order = [ids_a.index(i) for i in ids_b]
        np.testing.assert_array_equal(a["logits"][:][order], b["logits"][:])
        np.testing.assert_array_equal(a["labels"][:][order], b["labels"][:])
        np.testing.assert_allclose(a["embeddings/badge"][:][order], b["embeddings/badge"][:], rtol=1e-5, atol=1e-7)
    assert not partial.exists()


def test_infer_missing_image_is_one_error_line(trained, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("img_00000\nimg_99999\n")
    r = runner.invoke(app, [
        "infer", CONFIG, "--checkpoint", str(trained["work_dir"] / "checkpoint.pth"), "--ids", str(ids),
        "--out", str(tmp_path / "p.h5"), "--data-root", str(trained["demo"].out_dir), "--device", "cpu", "--quiet",
    ])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "img_99999" in lines[0]
    assert not (tmp_path / "p.h5").exists()


def test_infer_refuses_existing_output(trained):
    r = runner.invoke(app, [
        "infer", CONFIG, "--checkpoint", str(trained["work_dir"] / "checkpoint.pth"),
        "--ids", str(trained["ids_path"]), "--out", str(trained["pool"]), "--data-root", str(trained["demo"].out_dir),
    ])
    assert r.exit_code == 1 and "--overwrite" in r.stderr


def test_cli_round_train_infer_score_select(trained, tmp_path):
    """A whole round through the real entry point, continuing from the fixture's train + infer."""
    from alseg.files.hdf5 import ScoresReader
    from alseg.files.idlist import read_ids

    root, pool, labeled = trained["root"], trained["pool"], trained["labeled"]
    scores = tmp_path / "scores.h5"
    r = runner.invoke(app, ["score", str(pool), "--strategy", "margin,contextual-diversity,badge",
                            "--out", str(scores), "--quiet"])
    assert r.exit_code == 0, r.output
    lab = read_ids(labeled)
    for strategy, extra in [("margin", ["--scores", str(scores)]), ("coreset", []),
                            ("badge", ["--badge-embedding", "last-layer"]),
                            ("contextual-diversity", ["--scores", str(scores)])]:
        out = tmp_path / f"{strategy}.txt"
        r = runner.invoke(app, ["select", "--strategy", strategy, "--budget", "5", "--labeled", str(labeled),
                                "--pool", str(pool), *extra, "--out", str(out), "--device", "cpu", "--quiet"])
        assert r.exit_code == 0, r.output
        sel = read_ids(out)
        assert len(set(sel)) == 5 and not set(sel) & set(lab)
    with ScoresReader(scores) as s:
        unl = [i for i in s.ids if i not in set(lab)]
        m = s.score("margin", unl)
    assert read_ids(tmp_path / "margin.txt") == [unl[j] for j in sorted(range(len(unl)), key=lambda j: (-m[j], unl[j]))[:5]]
    # the pool file covers every split here, so the margin picks may include val/calib ids: train refuses those,
    # naming the list and the id (only ids of the config's train split can be trained on)
    train_ids = set(read_ids(trained["demo"].out_dir / "splits" / "pool.txt"))
    picked = read_ids(tmp_path / "margin.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(f"{i}\n" for i in lab + [trained["demo"].splits["val"].read_text().split()[0]]))
    r = runner.invoke(app, ["train", CONFIG, "--labeled", str(bad), "--out", str(tmp_path / "rb"), "--data-root",
                            str(trained["demo"].out_dir), "--max-iters", "1", "--quiet"])
    assert r.exit_code == 1 and str(bad) in r.stderr and "train split" in r.stderr and not (tmp_path / "rb").exists()
    # the next round trains on labeled + selected (train-split picks, topped up from the pool)
    nxt = tmp_path / "labeled2.txt"
    extra = [i for i in picked if i in train_ids] + sorted(train_ids - set(lab) - set(picked))
    nxt.write_text("".join(f"{i}\n" for i in lab + extra[:5]))
    r = runner.invoke(app, ["train", CONFIG, "--labeled", str(nxt), "--out", str(tmp_path / "r1"), "--data-root",
                            str(trained["demo"].out_dir), "--device", "cpu", "--max-iters", "4", "--batch-size", "4",
                            "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n_labeled"] == len(lab) + 5


@pytest.mark.slow
def test_native_and_full_resolution_rank_images_alike(tmp_path):
    """DeepLabV3 (head at 1/8): full-resolution logits are the bilinear upsampling of the native ones, and
    image rankings computed at the native resolution agree with those at full resolution."""
    import torch
    from scipy.stats import spearmanr

    from alseg.files.hdf5 import PoolReader
    from alseg.strategies import image_scores

    demo = make_demo_data(tmp_path / "d", n_images=40, size=32, seed=1, n_val=4, n_calib=4)
    labeled = tmp_path / "l.txt"
    labeled.write_text("".join(f"{i}\n" for i in (demo.out_dir / "splits" / "pool.txt").read_text().split()[:8]))
    config = str(Path(CONFIG).parent / "deeplabv3_r18_d8.py")
    r = runner.invoke(app, ["train", config, "--labeled", str(labeled), "--out", str(tmp_path / "w"),
                            "--data-root", str(demo.out_dir), "--max-iters", "2", "--batch-size", "2",
                            "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    logits = {}
    for resolution in ("native", "full"):
        out = tmp_path / f"{resolution}.h5"
        r = runner.invoke(app, ["infer", config, "--checkpoint", str(tmp_path / "w" / "checkpoint.pth"), "--ids",
                                str(demo.out_dir / "splits" / "pool.txt"), "--out", str(out), "--data-root",
                                str(demo.out_dir), "--resolution", resolution, "--device", "cpu", "--quiet"])
        assert r.exit_code == 0, r.output
        with PoolReader(out) as pool:
            logits[resolution] = np.concatenate([b[1] for b in pool.iter_batches(64)])
    assert logits["native"].shape[2:] == (4, 4) and logits["full"].shape[2:] == (32, 32)
    up = torch.nn.functional.interpolate(torch.from_numpy(logits["native"]), size=(32, 32), mode="bilinear",
                                         align_corners=False).numpy()
    np.testing.assert_allclose(logits["full"], up, atol=0.02, rtol=0.01)  # float16 storage of both
    for scorer in ("entropy", "margin", "least-confidence"):
        native, full = image_scores(logits["native"], scorer), image_scores(logits["full"], scorer)
        # a barely trained model's scores differ in the 4th decimal, so agreement is strong but not perfect
        # (measured 0.79-0.99); a misaligned or wrong full-resolution path gives about 0
        assert spearmanr(native, full).statistic > 0.5, scorer
        top_native, top_full = set(np.argsort(-native)[:8]), set(np.argsort(-full)[:8])
        assert len(top_native & top_full) >= 3, scorer
