"""Region queries out to Label Studio / CVAT and back (docs/labeling.md, "Region tasks").

The annotator is faked in each tool's own format: it paints known classes over the whole image (inside
and outside the queried regions) and leaves a few pixels of a region unpainted. The imported mask must
equal, pixel by pixel, an expected map built here independently of alseg (patch regions from
y div S, x div S; superpixel regions from a hand-made map in a store): the answer inside the queried
regions, the ignore index (255) everywhere else. A plain id list must still export exactly as before:
the outputs are compared with digests taken from the exporter before region queries existed.
"""

from __future__ import annotations

import hashlib
import io
import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from alseg.commands import app
from alseg.demo_data import CLASS_NAMES, make_demo_data
from alseg.files.hdf5 import PoolWriter
from alseg.files.idlist import read_ids, write_ids
from alseg.labeltools import rle

runner = CliRunner()
SIZE = 32
S = 8  # patch:8 -> 4 x 4 patches per image
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo_unet_tiny.py")
K = len(CLASS_NAMES)


# -------------------------------------------------------------------------------------------- fixtures


def _dataset(tmp: Path, *, remove_masks: bool = True):
    """The demo dataset, three pool images and a pool whose argmax is a known 4 x 4 block pattern."""
    data = make_demo_data(tmp / "demo", n_images=12, size=SIZE, n_val=2, n_calib=2)
    ids = read_ids(data.splits["pool"])[:3]
    write_ids(tmp / "selected.txt", ids)
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, K, (len(ids), 4, 4))
    classes = np.kron(blocks, np.ones((SIZE // 4, SIZE // 4), dtype=np.int64))
    logits = np.eye(K, dtype=np.float32)[classes].transpose(0, 3, 1, 2) * 4.0
    with PoolWriter(tmp / "pool.h5", class_names=list(CLASS_NAMES), logits_shape=(SIZE, SIZE)) as w:
        w.append(ids, logits)
    if remove_masks:  # real unlabeled images: no mask yet
        for i in ids:
            (data.out_dir / "ann_dir" / f"{i}.png").unlink()
    return data.out_dir, ids, dict(zip(ids, classes))


def _state(path: Path, rows: list[tuple[str, str, list[int]]]) -> Path:
    lines = [json.dumps({"format": "alseg.labelled", "format_version": 1})]
    lines += [json.dumps({"id": i, "unit": u, "regions": r}) for i, u, r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _patches(regions: list[int], size: int = SIZE, s: int = S) -> np.ndarray:
    """The pixels of patch regions, by hand: region r covers rows (r div cols)·S.. and columns (r mod cols)·S.."""
    cols = -(-size // s)
    out = np.zeros((size, size), dtype=bool)
    for r in regions:
        y0, x0 = (r // cols) * s, (r % cols) * s
        out[y0 : y0 + s, x0 : x0 + s] = True
    return out


def _truth(seed: int) -> np.ndarray:
    """What the annotator paints: a known class for every pixel of the image."""
    return np.random.default_rng(seed).integers(0, K, (SIZE, SIZE))


def _export(tmp, data_dir, fmt, ids_file, out, *extra):
    r = runner.invoke(app, ["export", CONFIG, "--ids", str(ids_file), "--pool", str(tmp / "pool.h5"),
                            "--data-root", str(data_dir), "--format", fmt, "--out", str(out), "--quiet", *extra])
    assert r.exit_code == 0, r.output
    return out


def _import(data_dir, fmt, path, *extra):
    return runner.invoke(app, ["import", CONFIG, str(path), "--format", fmt, "--data-root", str(data_dir),
                               "--quiet", *extra])


def _mask(data_dir: Path, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(data_dir / "ann_dir" / f"{image_id}.png"))


def _one_error_line(r, *needles):
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ------------------------------------------------------------------------------------------ Label Studio


def _ls_answer(tasks: list[dict], truths: dict[str, np.ndarray], holes: dict[str, np.ndarray]) -> list[dict]:
    """Label Studio's JSON export after an annotator painted ``truths`` (one brush region per class, over
    the whole image) except ``holes``, and left the query layer as it was."""
    out = []
    for n, task in enumerate(tasks, 1):
        image_id = task["data"]["alseg_id"]
        truth, hole = truths[image_id], holes.get(image_id, np.zeros((SIZE, SIZE), bool))
        result = [it for it in task["predictions"][0]["result"] if it["from_name"] == "alseg_query"]
        for k in np.unique(truth):
            painted = (truth == k) & ~hole
            if painted.any():
                result.append({"id": f"a{k}", "type": "brushlabels", "from_name": "label", "to_name": "image",
                               "original_width": SIZE, "original_height": SIZE, "image_rotation": 0,
                               "value": {"format": "rle", "rle": rle.mask_to_rle(painted),
                                         "brushlabels": [CLASS_NAMES[k]]}})
        out.append({"id": n, "data": task["data"], "predictions": task["predictions"],
                    "annotations": [{"id": 100 + n, "was_cancelled": False, "ground_truth": False, "result": result}]})
    return out


def test_label_studio_patch_round_trip(tmp_path):
    tmp = tmp_path
    data_dir, ids, predicted = _dataset(tmp)
    queried = {ids[0]: [0, 5, 15], ids[1]: [3], ids[2]: [6, 9]}
    sel = _state(tmp / "selected.jsonl", [(i, "patch:8", r) for i, r in queried.items()])
    out = _export(tmp, data_dir, "label-studio", sel, tmp / "ls", "--image-root-url", "/files/")

    config = (out / "labeling_config.xml").read_text()
    assert '<BrushLabels name="alseg_query" toName="image">' in config
    assert '<Label value="label this region"' in config
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["alseg_id"] for t in tasks] == ids
    for task in tasks:
        image_id = task["data"]["alseg_id"]
        assert task["data"]["alseg_regions"] == {"patch:8": queried[image_id]}
        inside = _patches(queried[image_id])
        items = task["predictions"][0]["result"]
        query = [it for it in items if it["from_name"] == "alseg_query"]
        assert len(query) == 1 and query[0]["value"]["brushlabels"] == ["label this region"]
        np.testing.assert_array_equal(rle.rle_to_mask(query[0]["value"]["rle"], SIZE, SIZE), inside)
        pre = np.full((SIZE, SIZE), -1)
        for it in items:
            if it["from_name"] == "label":
                pre[rle.rle_to_mask(it["value"]["rle"], SIZE, SIZE)] = CLASS_NAMES.index(it["value"]["brushlabels"][0])
        np.testing.assert_array_equal(pre, np.where(inside, predicted[image_id], -1))  # prediction inside only

    truths = {i: _truth(n) for n, i in enumerate(ids)}
    holes = {ids[0]: np.zeros((SIZE, SIZE), bool)}
    holes[ids[0]][1:3, 2:5] = True  # inside patch 0: left unpainted -> ignore
    (tmp / "answer.json").write_text(json.dumps(_ls_answer(tasks, truths, holes)))
    r = _import(data_dir, "label-studio", tmp / "answer.json", "--ids", str(sel), "--labeled", str(tmp / "labelled.jsonl"))
    assert r.exit_code == 0, r.output
    assert "3 mask(s)" in r.stderr and "(6 region(s))" in r.stderr
    for i in ids:
        hole = holes.get(i, np.zeros((SIZE, SIZE), bool))
        want = np.where(_patches(queried[i]) & ~hole, truths[i], 255).astype(np.uint8)
        got = _mask(data_dir, i)
        assert got.dtype == np.uint8 and got.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(got, want)
    rows = [json.loads(line) for line in (tmp / "labelled.jsonl").read_text().splitlines()]
    assert rows[0] == {"format": "alseg.labelled", "format_version": 1}
    assert rows[1:] == [{"id": i, "unit": "patch:8", "regions": r} for i, r in queried.items()]

    # train's partial-label transform leaves the imported partial map as it is (precise annotation)
    from mmseg.datasets.transforms import LoadAnnotations

    from alseg.partial import PartialLabels

    transform = PartialLabels(str(tmp / "labelled.jsonl"), img_prefix=str(data_dir / "img_dir"), img_suffix=".png")
    for i in ids:
        loaded = LoadAnnotations()({"seg_map_path": str(data_dir / "ann_dir" / f"{i}.png"), "reduce_zero_label": False,
                                    "seg_fields": []})
        loaded["img_path"] = str(data_dir / "img_dir" / f"{i}.png")
        before = loaded["gt_seg_map"].copy()
        np.testing.assert_array_equal(transform(loaded)["gt_seg_map"], before)

    # round 2: a new patch of the first image is added to its mask; the labels already there stay
    first = _mask(data_dir, ids[0])
    sel2 = _state(tmp / "selected2.jsonl", [(ids[0], "patch:8", [1, 5])])  # 5 is labelled already
    tasks2 = json.loads((_export(tmp, data_dir, "label-studio", sel2, tmp / "ls2") / "tasks.json").read_text())
    truth2 = _truth(99)
    (tmp / "answer2.json").write_text(json.dumps(_ls_answer(tasks2, {ids[0]: truth2}, {})))
    r = _import(data_dir, "label-studio", tmp / "answer2.json", "--ids", str(sel2), "--labeled", str(tmp / "labelled.jsonl"))
    assert r.exit_code == 0, r.output
    patch5 = _patches([5])
    n_differ = int((patch5 & (truth2 != first)).sum())
    assert f"{n_differ} pixel(s) inside the queried regions already carried another label" in r.stderr
    want = np.where(_patches([1]), truth2, first)  # patch 5 keeps round 1's answer
    np.testing.assert_array_equal(_mask(data_dir, ids[0]), want)
    rows = [json.loads(line) for line in (tmp / "labelled.jsonl").read_text().splitlines()]
    assert rows[1] == {"id": ids[0], "unit": "patch:8", "regions": [0, 1, 5, 15]}
    r = _import(data_dir, "label-studio", tmp / "answer2.json", "--ids", str(sel2), "--overwrite")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(_mask(data_dir, ids[0]), np.where(_patches([1, 5]), truth2, first))


def test_superpixel_regions_from_a_store(tmp_path):
    from alseg.files.regionmaps import write_region_maps
    from alseg.regions import region_map_params

    tmp = tmp_path
    data_dir, ids, _ = _dataset(tmp)
    y, x = np.mgrid[:SIZE, :SIZE]
    maps = {i: ((y // 5 + (x * x) // 97 + n) % 9).astype(np.int32) for n, i in enumerate(ids)}  # irregular regions
    unit = "superpixel:9"
    store = tmp / "pool.regions-superpixel-9.h5"  # where select puts it: export finds it beside --pool
    write_region_maps(store, unit, region_map_params(unit), maps.items())
    queried = {ids[0]: [2, 7], ids[2]: [0]}
    sel = _state(tmp / "sp.jsonl", [(i, unit, r) for i, r in queried.items()])

    tasks = json.loads((_export(tmp, data_dir, "label-studio", sel, tmp / "ls") / "tasks.json").read_text())
    assert [t["data"]["alseg_id"] for t in tasks] == list(queried)
    for task in tasks:
        image_id = task["data"]["alseg_id"]
        query = [it for it in task["predictions"][0]["result"] if it["from_name"] == "alseg_query"]
        np.testing.assert_array_equal(rle.rle_to_mask(query[0]["value"]["rle"], SIZE, SIZE),
                                      np.isin(maps[image_id], queried[image_id]))
    truths = {i: _truth(5 + n) for n, i in enumerate(ids)}
    (tmp / "answer.json").write_text(json.dumps(_ls_answer(tasks, truths, {})))
    r = _import(data_dir, "label-studio", tmp / "answer.json", "--ids", str(sel), "--region-maps", str(store),
                "--labeled", str(tmp / "labelled.jsonl"), "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["n_regions"] == 3 and result["region_maps"][unit]["source"] == "store"
    for i in queried:
        np.testing.assert_array_equal(_mask(data_dir, i), np.where(np.isin(maps[i], queried[i]), truths[i], 255))
    assert not (data_dir / "ann_dir" / f"{ids[1]}.png").exists()  # not queried, not written

    # without a store the maps are computed with the documented SLIC parameters
    from alseg.partial import load_rgb
    from alseg.regions import superpixel_map

    sel4 = _state(tmp / "sp4.jsonl", [(ids[1], "superpixel:30", [1])])
    r = runner.invoke(app, ["export", CONFIG, "--ids", str(sel4), "--pool", str(tmp / "pool.h5"), "--data-root",
                            str(data_dir), "--format", "label-studio", "--out", str(tmp / "ls4"), "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["region_maps"]["superpixel:30"]["source"] == "computed"
    task = json.loads((tmp / "ls4" / "tasks.json").read_text())[0]
    query = [it for it in task["predictions"][0]["result"] if it["from_name"] == "alseg_query"]
    slic = superpixel_map(load_rgb(data_dir / "img_dir" / f"{ids[1]}.png"), 30)
    np.testing.assert_array_equal(rle.rle_to_mask(query[0]["value"]["rle"], SIZE, SIZE), slic == 1)

    # CVAT reads the same store
    out = _export(tmp, data_dir, "cvat", sel, tmp / "cv", "--region-maps", str(store))
    root = ET.parse(out / "annotations.xml").getroot()
    for image in root.iter("image"):
        image_id = image.get("name")[: -len(".png")]
        query = [m for m in image.iter("mask") if m.get("label") == "alseg-query"]
        np.testing.assert_array_equal(_cvat_mask(query[0]), np.isin(maps[image_id], queried[image_id]))


# ------------------------------------------------------------------------------------------------- CVAT


def _cvat_mask(el) -> np.ndarray:
    """A CVAT ``<mask>`` decoded by hand: runs of its bounding box, row by row, 0 first."""
    runs = [int(v) for v in el.get("rle").split(",")]
    left, top, w, h = (int(el.get(k)) for k in ("left", "top", "width", "height"))
    flat, pos, value = np.zeros(w * h, dtype=bool), 0, False
    for n in runs:
        flat[pos : pos + n] = value
        pos, value = pos + n, not value
    assert pos == w * h
    out = np.zeros((SIZE, SIZE), dtype=bool)
    out[top : top + h, left : left + w] = flat.reshape(h, w)
    return out


def test_cvat_patch_round_trip(tmp_path):
    tmp = tmp_path
    data_dir, ids, predicted = _dataset(tmp)
    queried = {ids[0]: [0, 10], ids[1]: [15], ids[2]: [4, 5, 6]}
    sel = _state(tmp / "selected.jsonl", [(i, "patch:8", r) for i, r in queried.items()])
    out = _export(tmp, data_dir, "cvat", sel, tmp / "cv")
    assert not (out / "annotations.zip").exists()
    labels = json.loads((out / "labels.json").read_text())
    assert [lb["name"] for lb in labels] == [*CLASS_NAMES, "alseg-query"]
    for i in ids:  # the images, under the names the XML uses
        assert (out / "images" / f"{i}.png").read_bytes() == (data_dir / "img_dir" / f"{i}.png").read_bytes()

    root = ET.parse(out / "annotations.xml").getroot()
    assert root.findtext("version") == "1.1"
    colours = {lb.findtext("name"): lb.findtext("color") for lb in root.iter("label")}
    assert list(colours) == [*CLASS_NAMES, "alseg-query"]
    images = root.findall("image")
    assert [im.get("name") for im in images] == [f"{i}.png" for i in ids]
    for image in images:
        image_id = image.get("name")[:-4]
        assert (image.get("width"), image.get("height")) == (str(SIZE), str(SIZE))
        inside = _patches(queried[image_id])
        masks = image.findall("mask")
        assert masks[0].get("label") == "alseg-query" and masks[0].get("z_order") == "0"
        np.testing.assert_array_equal(_cvat_mask(masks[0]), inside)
        pre = np.full((SIZE, SIZE), -1)
        for m in masks[1:]:
            assert m.get("z_order") == "1"
            pre[_cvat_mask(m)] = CLASS_NAMES.index(m.get("label"))
        np.testing.assert_array_equal(pre, np.where(inside, predicted[image_id], -1))

    # CVAT's Segmentation mask 1.1 export of the finished task: every pixel painted, a few left in the
    # colour of alseg-query (the annotator did not cover them: unlabeled)
    rgb = {n: tuple(int(c[k : k + 2], 16) for k in (1, 3, 5)) for n, c in colours.items()}
    names = list(rgb)
    truths = {i: _truth(20 + n) for n, i in enumerate(ids)}
    left_over = np.zeros((SIZE, SIZE), bool)
    left_over[2:4, 3:6] = True  # inside patch 0 of the first image
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("labelmap.txt", "# label:color_rgb:parts:actions\n"
                    + "".join(f"{n}:{r},{g},{b}::\n" for n, (r, g, b) in rgb.items()))
        zf.writestr("ImageSets/Segmentation/default.txt", "".join(f"{i}\n" for i in ids))
        for i in ids:
            rows = truths[i].copy()
            if i == ids[0]:
                rows[left_over] = names.index("alseg-query")
            lut = np.asarray([rgb[n] for n in names], dtype=np.uint8)
            png = io.BytesIO()
            Image.fromarray(lut[rows]).save(png, format="PNG")
            zf.writestr(f"SegmentationClass/{i}.png", png.getvalue())
    (tmp / "task.zip").write_bytes(buf.getvalue())
    r = _import(data_dir, "cvat", tmp / "task.zip", "--ids", str(sel), "--labeled", str(tmp / "labelled.jsonl"))
    assert r.exit_code == 0, r.output
    for i in ids:
        inside = _patches(queried[i]) & ~(left_over if i == ids[0] else False)
        np.testing.assert_array_equal(_mask(data_dir, i), np.where(inside, truths[i], 255).astype(np.uint8))
    rows = [json.loads(line) for line in (tmp / "labelled.jsonl").read_text().splitlines()[1:]]
    assert rows == [{"id": i, "unit": "patch:8", "regions": r} for i, r in queried.items()]


# ----------------------------------------------------------------------------------- errors and refusals


def test_region_import_refusals(tmp_path):
    tmp = tmp_path
    data_dir, ids, _ = _dataset(tmp)
    sel = _state(tmp / "selected.jsonl", [(ids[0], "patch:8", [1])])
    tasks = json.loads((_export(tmp, data_dir, "label-studio", sel, tmp / "ls") / "tasks.json").read_text())
    answer = _ls_answer(tasks, {ids[0]: _truth(1)}, {})
    (tmp / "answer.json").write_text(json.dumps(answer))

    r = _import(data_dir, "label-studio", tmp / "answer.json", "--ids", str(tmp / "selected.txt"))
    _one_error_line(r, "selected.txt: a plain id list; --ids takes the labelled state")
    other = _state(tmp / "other.jsonl", [(ids[0], "patch:8", [2])])
    r = _import(data_dir, "label-studio", tmp / "answer.json", "--ids", str(other))
    _one_error_line(r, "the task was exported for regions", "other.jsonl lists")
    r = _import(data_dir, "label-studio", tmp / "answer.json", "--ids", str(_state(tmp / "none.jsonl", [(ids[1], "patch:8", [2])])))
    _one_error_line(r, f"image {ids[0]!r} is not in", "none.jsonl")
    write_ids(tmp / "labeled.txt", [ids[2]])
    r = _import(data_dir, "label-studio", tmp / "answer.json", "--ids", str(sel), "--labeled", str(tmp / "labeled.txt"))
    _one_error_line(r, "labeled.txt: a plain id list", "must be a .jsonl path")
    assert not (data_dir / "ann_dir" / f"{ids[0]}.png").exists()  # nothing written on refusal

    bad = _state(tmp / "bad.jsonl", [(ids[0], "patch:8", [16])])  # a 32 x 32 image has patches 0..15
    r = runner.invoke(app, ["export", CONFIG, "--ids", str(bad), "--pool", str(tmp / "pool.h5"), "--data-root",
                            str(data_dir), "--format", "label-studio", "--out", str(tmp / "bad"), "--quiet"])
    _one_error_line(r, "bad.jsonl", "region 16", "not in its region map")
    r = runner.invoke(app, ["export", CONFIG, "--ids", str(tmp / "selected.txt"), "--pool", str(tmp / "pool.h5"),
                            "--data-root", str(data_dir), "--format", "cvat", "--out", str(tmp / "x"), "--quiet",
                            "--region-maps", str(tmp / "pool.h5")])
    _one_error_line(r, "--region-maps resolves the regions of a labelled state")


# ------------------------------------------------------------------------------- whole images unchanged


def _digest(name: str, data: bytes) -> str:
    """sha256 of a text file's bytes; of a PNG's mode, shape and pixels (PNG compression is the codec's)."""
    if name.endswith(".png"):
        im = Image.open(io.BytesIO(data))
        arr = np.asarray(im)
        data = f"{im.mode}{arr.shape}".encode() + arr.tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


# taken with the exporter as it was before region queries (git HEAD f760efe), on _dataset's inputs
BEFORE = {
    "tasks.json": "e47ed242a538b489",
    "labeling_config.xml": "8811017d6448cf7c",
    "annotations.zip": [
        ["labelmap.txt", "215bf5391cf31e00"],
        ["SegmentationClass/img_00001.png", "2dbcd1140968039f"],
        ["SegmentationObject/img_00001.png", "b5120f2b2365b97d"],
        ["SegmentationClass/img_00003.png", "df189624773107b7"],
        ["SegmentationObject/img_00003.png", "d72b8292c04e190f"],
        ["SegmentationClass/img_00005.png", "19d63770ae7f600b"],
        ["SegmentationObject/img_00005.png", "ea2d18d4a6d0ae8e"],
        ["ImageSets/Segmentation/default.txt", "c17ce1b6b6394db0"],
    ],
}


def test_whole_image_id_list_exports_as_before(tmp_path):
    tmp = tmp_path
    data_dir, ids, _ = _dataset(tmp, remove_masks=False)
    assert ids == ["img_00001", "img_00003", "img_00005"]  # the inputs the digests were taken on
    ls = _export(tmp, data_dir, "label-studio", tmp / "selected.txt", tmp / "ls", "--image-root-url",
                 "/data/local-files/?d=img_dir/")
    assert sorted(p.name for p in ls.iterdir()) == ["labeling_config.xml", "manifest.json", "tasks.json"]
    for name in ("tasks.json", "labeling_config.xml"):
        assert _digest(name, (ls / name).read_bytes()) == BEFORE[name], name
    tasks = json.loads((ls / "tasks.json").read_text())
    assert all(set(t["data"]) == {"image", "alseg_id"} for t in tasks)
    cv = _export(tmp, data_dir, "cvat", tmp / "selected.txt", tmp / "cv")
    assert sorted(p.name for p in cv.iterdir()) == ["annotations.zip", "images", "manifest.json"]
    with zipfile.ZipFile(cv / "annotations.zip") as zf:
        got = [[i.filename, _digest(i.filename, zf.read(i))] for i in zf.infolist()]
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
    assert got == BEFORE["annotations.zip"]
