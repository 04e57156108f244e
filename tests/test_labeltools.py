"""Out to a labeling tool and back: brush RLE, Label Studio tasks, CVAT archives, `alseg export`/`import`.

The round trips simulate the annotator: the exported pre-annotation is taken as the finished annotation
(moved from ``predictions`` to ``annotations`` as Label Studio exports it; for CVAT the exported
SegmentationClass PNGs are the finished masks), so importing must give back the model's argmax pixel
for pixel. The RLE is checked against ``tests/reference_rle.py`` (a per-bit decoder) and a known answer
from label-studio-converter's own tests.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from alseg.commands import app
from alseg.demo_data import CLASS_NAMES, PALETTE, make_demo_data
from alseg.files.hdf5 import PoolWriter, write_scores
from alseg.files.idlist import read_ids, write_ids
from alseg.labeltools import rle
from reference_rle import decode_bits

runner = CliRunner()
SIZE = 32
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo_unet_tiny.py")
_GT: dict[Path, io.BytesIO] = {}  # ground-truth masks the fixture removed from the dataset


# ------------------------------------------------------------------------------------------------ RLE


def test_rle_known_answer_from_label_studio_converter():
    # label-studio-converter tests/test_brush.py: encode_rle(words) == packed
    words = [1, 1, 1, 1, 2, 3, 5, 6, 7, 8, 4, 4, 4, 4, 4, 4, 4, 4]
    packed = [0, 0, 0, 18, 57, 27, 252, 96, 32, 1, 0, 6, 0, 40, 0, 192, 3, 128, 17, 56, 32]
    assert rle.decode(packed).tolist() == words  # repeat and literal chunks
    assert decode_bits(packed) == words
    assert decode_bits(rle.encode(words)) == words


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(1, 300)), max_size=40))
def test_rle_encode_matches_the_reference_decoder(runs):
    words = [v for v, n in runs for _ in range(n)]
    packed = rle.encode(np.asarray(words, dtype=np.uint8))
    assert all(0 <= b <= 255 for b in packed)
    assert decode_bits(packed) == words
    assert rle.decode(packed).tolist() == words


def test_rle_long_runs_and_masks():
    words = np.zeros(200_000, dtype=np.uint8)
    words[10:140_000] = 255  # longer than one 16-bit count field
    packed = rle.encode(words)
    assert decode_bits(packed) == words.tolist()
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) < 0.3
    packed = rle.mask_to_rle(mask)
    rgba = np.asarray(decode_bits(packed), dtype=np.uint8).reshape(37, 53, 4)
    assert (rgba[..., 3] == np.where(mask, 255, 0)).all()
    assert (rle.rle_to_mask(packed, 37, 53) == mask).all()
    with pytest.raises(rle.RLEError, match="RGBA needs"):
        rle.rle_to_mask(packed, 37, 54)
    with pytest.raises(rle.RLEError, match="ends inside"):
        rle.decode(packed[: len(packed) // 2])


# -------------------------------------------------------------------------------------------- fixtures


def _known(data_dir: Path, image_id: str, n_classes: int, shift: int = 0) -> np.ndarray:
    """The demo mask with ignore pixels set to class 0, minus ``shift`` (clipped): the model's answer."""
    path = data_dir / "ann_dir" / f"{image_id}.png"
    gt = np.asarray(Image.open(_GT.get(path, path))).astype(np.int64)
    gt[gt == 255] = 0
    return np.clip(gt - shift, 0, n_classes - 1)


def _write_pool(path: Path, data_dir: Path, ids: list[str], class_names, *, shift: int = 0, scale: int = 1) -> dict:
    """A pool whose argmax (after bilinear upsampling by ``scale``) is known: one-hot logits of the masks."""
    known, logits = {}, []
    k = len(class_names)
    for i in ids:
        m = _known(data_dir, i, k, shift)
        low = m[::scale, ::scale] if scale > 1 else m
        known[i] = m if scale == 1 else low
        logits.append((np.eye(k, dtype=np.float32)[low].transpose(2, 0, 1) * 4.0))
    with PoolWriter(path, class_names=list(class_names), logits_shape=logits[0].shape[1:]) as w:
        w.append(ids, np.stack(logits))
    return known


@pytest.fixture
def demo(tmp_path):
    data = make_demo_data(tmp_path / "demo", n_images=12, size=SIZE, n_val=2, n_calib=2)
    pool_ids = read_ids(data.splits["pool"])
    selected = pool_ids[:3]
    write_ids(tmp_path / "selected.txt", selected)
    known = _write_pool(tmp_path / "pool.h5", data.out_dir, selected, CLASS_NAMES)
    for i in selected:  # the images to label have no mask yet (kept aside for _known)
        path = data.out_dir / "ann_dir" / f"{i}.png"
        _GT[path] = io.BytesIO(path.read_bytes())
        path.unlink()
    return tmp_path, data.out_dir, selected, known


def _export(tmp, data_dir, fmt, *extra, config=CONFIG, pool="pool.h5"):
    r = runner.invoke(app, ["export", config, "--ids", str(tmp / "selected.txt"), "--pool", str(tmp / pool),
                            "--data-root", str(data_dir), "--format", fmt,
                            "--out", str(tmp / f"out-{fmt}"), "--quiet", *extra])
    assert r.exit_code == 0, r.output
    return tmp / f"out-{fmt}"


def _import(tmp, data_dir, fmt, path, *extra, config=CONFIG):
    return runner.invoke(app, ["import", config, str(path), "--format", fmt, "--data-root",
                               str(data_dir), "--quiet", *extra])


def _as_annotated(tasks: list[dict]) -> list[dict]:
    """What Label Studio exports after an annotator accepted each pre-annotation as is."""
    out = []
    for n, task in enumerate(tasks, 1):
        out.append({"id": n, "data": task["data"], "predictions": task["predictions"],
                    "annotations": [{"id": 100 + n, "was_cancelled": False, "ground_truth": False,
                                     "result": json.loads(json.dumps(task["predictions"][0]["result"]))}]})
    return out


def _mask(data_dir: Path, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(data_dir / "ann_dir" / f"{image_id}.png"))


def _one_error_line(r, *needles):
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------ Label Studio


def test_label_studio_round_trip(demo):
    tmp, data_dir, selected, known = demo
    out = _export(tmp, data_dir, "label-studio", "--image-root-url", "/data/local-files/?d=img_dir/")
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["alseg_id"] for t in tasks] == selected
    assert tasks[0]["data"]["image"] == f"/data/local-files/?d=img_dir/{selected[0]}.png"
    for task in tasks:
        items = task["predictions"][0]["result"]
        present = sorted({CLASS_NAMES[k] for k in np.unique(known[task["data"]["alseg_id"]])})
        assert sorted(it["value"]["brushlabels"][0] for it in items) == present  # one region per class present
        for it in items:
            assert it["type"] == "brushlabels" and it["value"]["format"] == "rle"
            assert (it["original_width"], it["original_height"]) == (SIZE, SIZE)
            assert len(decode_bits(it["value"]["rle"])) == SIZE * SIZE * 4
    config = (out / "labeling_config.xml").read_text()
    assert '<BrushLabels name="label" toName="image">' in config
    assert '<Label value="van" background="#003c64"/>' in config  # the demo palette's colour
    assert (out / "manifest.json").is_file()

    export = tmp / "ls-export.json"
    export.write_text(json.dumps(_as_annotated(tasks)))
    r = _import(tmp, data_dir, "label-studio", export, "--labeled", str(tmp / "labeled.txt"))
    assert r.exit_code == 0, r.output
    for i in selected:
        got = _mask(data_dir, i)
        assert got.dtype == np.uint8 and got.ndim == 2
        np.testing.assert_array_equal(got, known[i])
    assert read_ids(tmp / "labeled.txt") == selected

    # again: every mask exists now; refused without --overwrite, nothing changes
    before = {i: (data_dir / "ann_dir" / f"{i}.png").read_bytes() for i in selected}
    r = _import(tmp, data_dir, "label-studio", export, "--labeled", str(tmp / "labeled.txt"))
    _one_error_line(r, "a mask exists for", "pass --overwrite")
    assert before == {i: (data_dir / "ann_dir" / f"{i}.png").read_bytes() for i in selected}
    r = _import(tmp, data_dir, "label-studio", export, "--labeled", str(tmp / "labeled.txt"), "--overwrite")
    assert r.exit_code == 0, r.output
    assert read_ids(tmp / "labeled.txt") == selected  # no id twice


def test_label_studio_unknown_class_and_size_mismatch(demo):
    tmp, data_dir, selected, _ = demo
    tasks = json.loads((_export(tmp, data_dir, "label-studio") / "tasks.json").read_text())
    annotated = _as_annotated(tasks)
    bad = json.loads(json.dumps(annotated))
    bad[-1]["annotations"][0]["result"][0]["value"]["brushlabels"] = ["bus"]
    (tmp / "bad.json").write_text(json.dumps(bad))
    r = _import(tmp, data_dir, "label-studio", tmp / "bad.json")
    _one_error_line(r, "bad.json: task 3", repr(selected[2]), "label 'bus' is not a class of the config")
    assert not any((data_dir / "ann_dir" / f"{i}.png").exists() for i in selected)  # nothing half-written
    assert not [p for p in (data_dir / "ann_dir").iterdir() if p.name.startswith(".")]

    bad = json.loads(json.dumps(annotated))
    bad[1]["annotations"][0]["result"][0]["original_width"] = SIZE + 8
    (tmp / "bad.json").write_text(json.dumps(bad))
    r = _import(tmp, data_dir, "label-studio", tmp / "bad.json")
    _one_error_line(r, "task 2", repr(selected[1]), f"is {SIZE + 8}x{SIZE} but the image is {SIZE}x{SIZE}")
    assert not any((data_dir / "ann_dir" / f"{i}.png").exists() for i in selected)


def test_label_studio_existing_mask_refused(demo):
    tmp, data_dir, selected, _ = demo
    tasks = json.loads((_export(tmp, data_dir, "label-studio") / "tasks.json").read_text())
    (tmp / "export.json").write_text(json.dumps(_as_annotated(tasks)))
    existing = data_dir / "ann_dir" / f"{selected[1]}.png"
    existing.write_bytes(b"a mask someone made")
    r = _import(tmp, data_dir, "label-studio", tmp / "export.json", "--labeled", str(tmp / "labeled.txt"))
    _one_error_line(r, str(existing), "a mask exists", "--overwrite")
    assert existing.read_bytes() == b"a mask someone made"
    assert not (data_dir / "ann_dir" / f"{selected[0]}.png").exists()
    assert not (tmp / "labeled.txt").exists()


def test_label_studio_risk_layer_is_a_hint_not_a_class(demo):
    tmp, data_dir, selected, known = demo
    risk = np.zeros((SIZE // 2, SIZE // 2), dtype=np.float32)
    risk[2:6, 3:9] = 0.9  # at half resolution: upsampled to the image
    write_scores(tmp / "scores.h5", selected, scores={"crc": np.arange(3.0)},
                 risk_maps=([selected[0], selected[2]], [risk, np.zeros_like(risk)]))
    out = _export(tmp, data_dir, "label-studio", "--scores", str(tmp / "scores.h5"), "--risk-layer")
    assert '<BrushLabels name="alseg_risk" toName="image">' in (out / "labeling_config.xml").read_text()
    tasks = json.loads((out / "tasks.json").read_text())
    risky = [[it for it in t["predictions"][0]["result"] if it["from_name"] == "alseg_risk"] for t in tasks]
    assert [len(r) for r in risky] == [1, 0, 0]  # the all-zero map paints nothing; the middle image has none
    painted = rle.rle_to_mask(risky[0][0]["value"]["rle"], SIZE, SIZE)
    assert painted[5:11, 7:17].all() and not painted[:3].any() and not painted[14:].any()
    annotated = _as_annotated(tasks)
    annotated[1]["annotations"] = [dict(annotated[1]["annotations"][0], was_cancelled=True)]  # skipped
    (tmp / "export.json").write_text(json.dumps(annotated))
    r = _import(tmp, data_dir, "label-studio", tmp / "export.json")
    assert r.exit_code == 0, r.output
    assert f"1 task(s) have no finished annotation and were skipped (e.g. {selected[1]!r})" in r.stderr
    assert not (data_dir / "ann_dir" / f"{selected[1]}.png").exists()
    for i in (selected[0], selected[2]):
        np.testing.assert_array_equal(_mask(data_dir, i), known[i])


def _bilinear_reference(low: np.ndarray, size: int) -> np.ndarray:
    """align_corners=False bilinear resize of (K, h, w) to (K, size, size), one output pixel at a time."""
    k, h, w = low.shape
    out = np.zeros((k, size, size))
    for y in range(size):
        sy = max((y + 0.5) * h / size - 0.5, 0.0)
        y0 = int(sy)
        y1, wy = min(y0 + 1, h - 1), sy - int(sy)
        for x in range(size):
            sx = max((x + 0.5) * w / size - 0.5, 0.0)
            x0 = int(sx)
            x1, wx = min(x0 + 1, w - 1), sx - int(sx)
            out[:, y, x] = ((1 - wy) * ((1 - wx) * low[:, y0, x0] + wx * low[:, y0, x1])
                            + wy * ((1 - wx) * low[:, y1, x0] + wx * low[:, y1, x1]))
    return out


def test_pre_annotation_is_the_argmax_at_image_resolution(demo):
    tmp, data_dir, selected, _ = demo
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (len(selected), len(CLASS_NAMES), SIZE // 4, SIZE // 4)).astype(np.float16)
    with PoolWriter(tmp / "low.h5", class_names=list(CLASS_NAMES), logits_shape=(SIZE // 4, SIZE // 4)) as w:
        w.append(selected, logits.astype(np.float32))
    tasks = json.loads((_export(tmp, data_dir, "label-studio", pool="low.h5") / "tasks.json").read_text())
    for task, low in zip(tasks, logits):
        want = np.argmax(_bilinear_reference(low.astype(np.float64), SIZE), axis=0)
        got = np.full((SIZE, SIZE), -1)
        for it in task["predictions"][0]["result"]:
            got[rle.rle_to_mask(it["value"]["rle"], SIZE, SIZE)] = CLASS_NAMES.index(it["value"]["brushlabels"][0])
        assert (got == want).mean() > 0.99  # float32 vs float64 ties aside
        assert (got >= 0).all()


def test_reduce_zero_label_and_unlabeled_pixels(demo):
    """Six classes (road..sign) stored as class + 1, unlabeled as 0; mmseg's LoadAnnotations reads them back."""
    from mmseg.datasets.transforms import LoadAnnotations

    tmp, data_dir, selected, _ = demo
    classes = CLASS_NAMES[1:]
    config = tmp / "reduce.py"
    meta = f"dict(classes={tuple(classes)!r}, palette={[list(c) for c in PALETTE[1:]]!r})"
    config.write_text(f"_base_ = [{CONFIG!r}]\n" + "".join(
        f"{k} = dict(dataset=dict(reduce_zero_label=True, metainfo={meta}))\n"
        for k in ("train_dataloader", "val_dataloader", "test_dataloader")))
    known = _write_pool(tmp / "pool6.h5", data_dir, selected, classes, shift=1)
    tasks = json.loads((_export(tmp, data_dir, "label-studio", config=str(config), pool="pool6.h5")
                        / "tasks.json").read_text())
    annotated = _as_annotated(tasks)
    dropped = annotated[0]["annotations"][0]["result"].pop(0)  # the annotator erased one region
    hole = rle.rle_to_mask(dropped["value"]["rle"], SIZE, SIZE)
    (tmp / "export.json").write_text(json.dumps(annotated))
    r = _import(tmp, data_dir, "label-studio", tmp / "export.json", config=str(config))
    assert r.exit_code == 0, r.output
    for n, i in enumerate(selected):
        stored = _mask(data_dir, i)
        want = known[i] + 1
        if n == 0:
            want = np.where(hole, 0, want)
        np.testing.assert_array_equal(stored, want)
        loaded = LoadAnnotations()({"seg_map_path": str(data_dir / "ann_dir" / f"{i}.png"), "reduce_zero_label": True,
                                    "seg_fields": []})["gt_seg_map"]
        np.testing.assert_array_equal(loaded, np.where(want == 0, 255, known[i]))


def test_mask_coding_inverts_label_map(tmp_path):
    from mmseg.datasets.transforms import LoadAnnotations

    from alseg.stages.import_masks import mask_coding

    label_map = {0: 1, 1: 255, 2: 0}  # the dataset keeps old classes 2 and 0, in that order
    for reduce in (False, True):
        lut, unlabeled = mask_coding({"label_map": label_map, "reduce_zero_label": reduce}, 2, 255, "x")
        assert lut.tolist() == ([2, 0] if not reduce else [3, 1]) and unlabeled == (0 if reduce else 255)
        classes = np.array([[0, 1, -1], [1, 0, -1]])
        Image.fromarray(np.where(classes < 0, unlabeled, lut[classes.clip(0)]).astype(np.uint8)).save(tmp_path / "m.png")
        loaded = LoadAnnotations()({"seg_map_path": str(tmp_path / "m.png"), "reduce_zero_label": reduce,
                                    "label_map": label_map, "seg_fields": []})["gt_seg_map"]
        assert loaded.tolist() == [[0, 1, 255], [1, 0, 255]]


# ------------------------------------------------------------------------------------------------- CVAT


def test_cvat_round_trip(demo):
    tmp, data_dir, selected, known = demo
    out = _export(tmp, data_dir, "cvat")
    with zipfile.ZipFile(out / "annotations.zip") as zf:
        names = set(zf.namelist())
        labelmap = zf.read("labelmap.txt").decode().splitlines()
        assert zf.read("ImageSets/Segmentation/default.txt").decode().split() == selected
        first = np.asarray(Image.open(io.BytesIO(zf.read(f"SegmentationClass/{selected[0]}.png"))))
    assert {f"SegmentationClass/{i}.png" for i in selected} <= names
    assert {f"SegmentationObject/{i}.png" for i in selected} <= names
    assert labelmap[1] == "background:0,0,0::" and "van:0,60,100::" in labelmap
    assert first.shape == (SIZE, SIZE, 3)
    for i in selected:  # the images, under the names the archive uses
        assert (out / "images" / f"{i}.png").read_bytes() == (data_dir / "img_dir" / f"{i}.png").read_bytes()

    r = _import(tmp, data_dir, "cvat", out / "annotations.zip", "--labeled", str(tmp / "labeled.txt"))
    assert r.exit_code == 0, r.output
    for i in selected:
        np.testing.assert_array_equal(_mask(data_dir, i), known[i])
    assert read_ids(tmp / "labeled.txt") == selected

    unpacked = tmp / "unpacked" / "task_1"  # CVAT's download, unpacked into a folder
    with zipfile.ZipFile(out / "annotations.zip") as zf:
        zf.extractall(unpacked)
    r = _import(tmp, data_dir, "cvat", tmp / "unpacked", "--overwrite")
    assert r.exit_code == 0, r.output
    for i in selected:
        np.testing.assert_array_equal(_mask(data_dir, i), known[i])


def test_cvat_unknown_label_and_size_mismatch(demo):
    tmp, data_dir, selected, _ = demo
    out = _export(tmp, data_dir, "cvat")
    folder = tmp / "cvat"
    with zipfile.ZipFile(out / "annotations.zip") as zf:
        zf.extractall(folder)
    labelmap = (folder / "labelmap.txt").read_text()
    (folder / "labelmap.txt").write_text(labelmap.replace("sign:", "bus:"))
    mask = folder / "SegmentationClass" / f"{selected[2]}.png"
    rgb = np.asarray(Image.open(mask)).copy()
    rgb[4, 5] = (220, 220, 0)  # the palette colour of sign, now called bus
    Image.fromarray(rgb).save(mask)
    r = _import(tmp, data_dir, "cvat", folder)
    _one_error_line(r, f"SegmentationClass/{selected[2]}.png", "label 'bus' (at y=4, x=5) is not a class")
    assert not any((data_dir / "ann_dir" / f"{i}.png").exists() for i in selected)

    (folder / "labelmap.txt").write_text(labelmap)
    Image.fromarray(np.zeros((SIZE, SIZE + 8, 3), dtype=np.uint8)).save(mask)
    r = _import(tmp, data_dir, "cvat", folder)
    _one_error_line(r, f"SegmentationClass/{selected[2]}.png", f"mask is {SIZE + 8}x{SIZE} but the image is {SIZE}x{SIZE}")
    assert not any((data_dir / "ann_dir" / f"{i}.png").exists() for i in selected)


def test_export_refuses_existing_outputs_and_bad_options(demo):
    tmp, data_dir, selected, _ = demo
    _export(tmp, data_dir, "label-studio")
    args = ["export", CONFIG, "--ids", str(tmp / "selected.txt"), "--pool", str(tmp / "pool.h5"),
            "--data-root", str(data_dir), "--out", str(tmp / "out-label-studio"), "--quiet"]
    _one_error_line(runner.invoke(app, [*args, "--format", "label-studio"]), "output exists; pass --overwrite")
    _one_error_line(runner.invoke(app, [*args, "--format", "cvat", "--risk-layer"]), "--risk-layer")
    assert runner.invoke(app, [*args, "--format", "voc"]).exit_code == 2


@pytest.mark.parametrize("command", ["export", "import"])
def test_help_has_an_example(command):
    r = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert r.exit_code == 0 and "Example: alseg " + command in r.output
