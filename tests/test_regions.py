"""Region queries (issue 14): units, region maps and their store, region scores, selection under budgets,
the labelled-state file, simulated annotation and the click-cost model. Every expected value is worked by
hand or by an obvious loop in this file, never by the code under test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alseg import annotate, cost, regions
from alseg.errors import InputError, OutputError
from alseg.files import labelled as lab
from alseg.files.regionmaps import RegionMapReader, region_maps_path
from alseg.regions import Candidates

# ------------------------------------------------------------------------------------------ units


@pytest.mark.parametrize(
    "text, kind, size",
    [("image", "image", None), ("patch:32", "patch", 32), ("superpixel:500", "superpixel", 500), ("pixel:20", "pixel", 20)],
)
def test_parse_unit(text, kind, size):
    unit = regions.parse_unit(text)
    assert (unit.kind, unit.size, str(unit)) == (kind, size, text)


@pytest.mark.parametrize("bad", ["", "patch", "patch:0", "patch:-3", "superpixel:x", "image:4", "tile:8", "pixel:1.5"])
def test_parse_unit_refuses_bad_strings_in_one_line(bad):
    with pytest.raises(InputError) as err:
        regions.parse_unit(bad)
    assert "\n" not in str(err.value) and "patch:S" in str(err.value)


# ------------------------------------------------------------------------------------------ region maps

# 5 x 7 image, 3 x 3 patches: 2 rows x 3 columns of patches, the last row and column clipped.
PATCHES_5x7 = np.array(
    [
        [0, 0, 0, 1, 1, 1, 2],
        [0, 0, 0, 1, 1, 1, 2],
        [0, 0, 0, 1, 1, 1, 2],
        [3, 3, 3, 4, 4, 4, 5],
        [3, 3, 3, 4, 4, 4, 5],
    ]
)


def test_patch_map_clips_border_patches():
    np.testing.assert_array_equal(regions.patch_map(5, 7, 3), PATCHES_5x7)
    np.testing.assert_array_equal(regions.region_areas(PATCHES_5x7), [9, 9, 3, 6, 6, 2])
    assert regions.patch_map(4, 4, 8).max() == 0  # a patch larger than the image is the image


def _smooth_image(h=48, w=64):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 4) % 256, (yy * 4) % 256, ((xx + yy) * 2) % 256], -1).astype(np.uint8)
    img[10:30, 15:40] = [200, 30, 30]
    return img


def test_superpixels_are_deterministic_and_consecutive():
    img = _smooth_image()
    a = regions.superpixel_map(img, 20)
    b = regions.superpixel_map(img.copy(), 20)
    np.testing.assert_array_equal(a, b)
    assert a.shape == img.shape[:2] and a.dtype == np.int32
    np.testing.assert_array_equal(np.unique(a), np.arange(a.max() + 1))
    assert 5 <= a.max() + 1 <= 40
    # the red rectangle is a strong edge: no superpixel straddles it by much
    inside = np.zeros(img.shape[:2], bool)
    inside[10:30, 15:40] = True
    purity = [max(inside[a == r].mean(), 1 - inside[a == r].mean()) for r in range(a.max() + 1)]
    assert min(purity) > 0.8


def test_region_map_store_reuses_maps_and_refuses_other_parameters(tmp_path):
    images = {f"im{i}.png": np.roll(_smooth_image(), 5 * i, axis=1) for i in range(3)}
    calls = []

    def load(image_id):
        calls.append(image_id)
        return images[image_id]

    pool = tmp_path / "pool.h5"
    path = region_maps_path(pool, "superpixel:20")
    assert path.name == "pool.regions-superpixel-20.h5"
    regions.ensure_region_maps(path, "superpixel:20", ["im0.png", "im1.png"], load)
    assert calls == ["im0.png", "im1.png"]
    with RegionMapReader(path) as store:
        first = store.region_map("im0.png")
    regions.ensure_region_maps(path, "superpixel:20", ["im0.png", "im1.png", "im2.png"], load)
    assert calls == ["im0.png", "im1.png", "im2.png"]  # only the new image was computed
    regions.ensure_region_maps(path, "superpixel:20", ["im2.png", "im0.png"], load)
    assert len(calls) == 3  # nothing to do
    with RegionMapReader(path, unit="superpixel:20") as store:
        assert store.ids == ["im0.png", "im1.png", "im2.png"]
        np.testing.assert_array_equal(store.region_map("im0.png"), first)
        for i, img in images.items():
            np.testing.assert_array_equal(store.region_map(i), regions.superpixel_map(img, 20))
            assert store.shape(i) == img.shape[:2]
    with pytest.raises(InputError, match="made with other parameters") as err:
        regions.ensure_region_maps(path, "superpixel:20", ["im0.png"], load, compactness=20.0)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="not superpixel:30"):
        RegionMapReader(path, unit="superpixel:30")


# ------------------------------------------------------------------------------------------ region scores


def test_region_scores_by_hand_with_clipped_patches():
    s = np.arange(35, dtype=np.float64).reshape(5, 7)  # logits at the image's own resolution
    mean, areas = regions.region_scores(s, PATCHES_5x7, "mean")
    np.testing.assert_array_equal(areas, [9, 9, 3, 6, 6, 2])
    # patch 2 is column 6 of rows 0..2: 6, 13, 20; patch 5 is column 6 of rows 3..4: 27, 34
    assert mean[2] == 13.0 and mean[5] == 30.5 and mean[0] == 8.0
    total, _ = regions.region_scores(s, PATCHES_5x7, "sum")
    assert total[5] == 61.0 and total[2] == 39.0
    top, _ = regions.region_scores(s, PATCHES_5x7, "max")
    assert top[0] == 16.0 and top[4] == 33.0
    # patch 0 holds 0 1 2 7 8 9 14 15 16: 50 % of 9 cells -> the top 4: 16 15 14 9
    topq, _ = regions.region_scores(s, PATCHES_5x7, "top-q", q=50)
    assert topq[0] == 13.5


def test_regions_smaller_than_a_logit_cell_take_the_cell_under_their_centroid():
    region_map = np.zeros((8, 8), dtype=np.int64)
    region_map[5, 1] = 1  # one pixel, centroid (5.5, 1.5)
    region_map[0:2, 6:8] = 2  # 2 x 2 block, centroid (1.0, 7.0)
    s = np.array([[1.0, 2.0], [3.0, 4.0]])  # logits at stride 4: cell centres are pixels (2|6, 2|6)
    np.testing.assert_array_equal(regions.cell_regions(region_map, (2, 2)), np.zeros((2, 2)))
    for how in regions.REDUCTIONS:
        scores, areas = regions.region_scores(s, region_map, how, q=10)
        np.testing.assert_array_equal(areas, [59, 1, 4])
        # region 1: cell row floor(5.5 * 2/8) = 1, col floor(1.5 * 2/8) = 0 -> 3; region 2: cell (0, 1) -> 2
        assert scores[1] == 3.0 and scores[2] == 2.0
    assert regions.region_scores(s, region_map, "mean")[0][0] == 2.5


def _reference_region_scores(s, region_map, how, q):
    """Obvious loops: each cell's centre pixel, each region's cells, the reduction."""
    (h, w), (big_h, big_w) = s.shape, region_map.shape
    n = region_map.max() + 1
    cells = {r: [] for r in range(n)}
    for i in range(h):
        for j in range(w):
            y = min(int((i + 0.5) * big_h / h), big_h - 1)
            x = min(int((j + 0.5) * big_w / w), big_w - 1)
            cells[region_map[y, x]].append(s[i, j])
    out = np.zeros(n)
    for r in range(n):
        v = sorted(cells[r], reverse=True)
        if not v:
            ys, xs = np.nonzero(region_map == r)
            cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
            out[r] = s[min(int(cy * h / big_h), h - 1), min(int(cx * w / big_w), w - 1)]
        elif how == "mean":
            out[r] = np.mean(v)
        elif how == "sum":
            out[r] = np.sum(v)
        elif how == "max":
            out[r] = v[0]
        else:
            k = max(1, int(q / 100 * len(v) + 1e-9))
            out[r] = np.mean(v[:k])
    return out


@pytest.mark.parametrize("how", regions.REDUCTIONS)
def test_region_scores_match_a_reference_loop(how):
    rng = np.random.default_rng(3)
    for big, small in [((23, 31), (6, 8)), ((16, 16), (16, 16)), ((10, 12), (20, 24))]:
        region_map = np.unique(rng.integers(0, 9, size=big) // 3 + 3 * (np.arange(big[1]) // 8)[None, :],
                               return_inverse=True)[1].reshape(big)
        s = rng.random(small)
        got, _ = regions.region_scores(s, region_map, how, q=30)
        np.testing.assert_allclose(got, _reference_region_scores(s, region_map, how, 30))


def test_offered_regions_follow_the_overlap_rule():
    region_map = regions.patch_map(4, 8, 4)  # two 4 x 4 patches
    labelled = np.zeros((4, 8), bool)
    labelled[0:2, 0:4] = True
    labelled[2, 0] = True  # patch 0: 9 of 16 labelled -> more than half: not offered
    labelled[0:2, 4:8] = True  # patch 1: 8 of 16 -> offered, costs its 8 unlabelled pixels
    cost_pixels, offered = regions.offered_regions(region_map, labelled)
    np.testing.assert_array_equal(cost_pixels, [7, 8])
    np.testing.assert_array_equal(offered, [False, True])
    np.testing.assert_array_equal(regions.offered_regions(region_map)[0], [16, 16])


def test_pixel_queries_pick_the_best_unlabelled_pixels():
    s = np.array([[0.1, 0.9], [0.8, 0.8]])  # stride 2 on a 4 x 4 image: cells stand for pixels (1|3, 1|3)
    labelled = np.zeros((4, 4), bool)
    labelled[1, 3] = True  # the best cell's pixel is labelled
    q = regions.pixel_queries(s, labelled, 2)
    np.testing.assert_array_equal(q.yx, [[3, 1], [3, 3]])  # 0.8 twice: row-major cell order
    np.testing.assert_array_equal(q.region_ids, [13, 15])
    np.testing.assert_array_equal(q.scores, [0.8, 0.8])
    assert len(regions.pixel_queries(s, labelled, 10).scores) == 3


# ------------------------------------------------------------------------------------------ selection


def _reference_select(image_index, region_id, score, costs, budget, max_per_image=None, order=None):
    if order is None:
        order = sorted(range(len(score)), key=lambda r: (-score[r], image_index[r], region_id[r]))
    left, taken, per_image = budget, [], {}
    for r in order:
        if costs[r] > left or (max_per_image and per_image.get(image_index[r], 0) >= max_per_image):
            continue
        taken.append(r)
        left -= costs[r]
        per_image[image_index[r]] = per_image.get(image_index[r], 0) + 1
    return taken


def _cands(score, pixels, clicks=None, image_index=None, region_id=None):
    n = len(score)
    return Candidates(
        image_index=np.asarray(image_index if image_index is not None else np.zeros(n, int)),
        region_id=np.asarray(region_id if region_id is not None else np.arange(n)),
        score=np.asarray(score, float),
        cost_pixels=np.asarray(pixels),
        cost_clicks=np.asarray(clicks if clicks is not None else np.ones(n, int)),
    )


def test_pixel_budget_is_filled_exactly_skipping_what_does_not_fit():
    c = _cands([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [40, 70, 30, 20, 10, 5])
    rows = regions.select_regions(c, 100, "pixels")
    # 40 (60 left), 70 does not fit: skipped, 30 (30 left), 20 (10 left), 10 (0 left), 5 does not fit
    np.testing.assert_array_equal(rows, [0, 2, 3, 4])
    assert regions.total_cost(c, rows, "pixels") == 100


def test_click_budget_is_filled_exactly():
    c = _cands([5, 4, 3, 2, 1], [1, 1, 1, 1, 1], clicks=[7, 9, 4, 6, 3])
    rows = regions.select_regions(c, 14, "clicks")
    np.testing.assert_array_equal(rows, [0, 2, 4])  # 7 (7 left), 9 skipped, 4 (3 left), 6 skipped, 3 (0 left)
    assert regions.total_cost(c, rows, "clicks") == 14
    rows = regions.select_regions(c, 20, "clicks")
    np.testing.assert_array_equal(rows, [0, 1, 2])  # 7 + 9 + 4 = 20
    assert regions.total_cost(c, rows, "clicks") == 20


def test_ties_break_by_image_then_region_and_max_per_image():
    c = _cands([1.0] * 4 + [0.5], [1] * 5, image_index=[1, 0, 1, 0, 2], region_id=[0, 7, 3, 2, 0])
    np.testing.assert_array_equal(regions.select_regions(c, 5, "regions"), [3, 1, 0, 2, 4])
    np.testing.assert_array_equal(regions.select_regions(c, 5, "regions", max_per_image=1), [3, 0, 4])
    np.testing.assert_array_equal(regions.select_regions(c, 2, "regions", order=np.array([4, 2, 1])), [4, 2])


def test_selection_matches_the_reference_loop():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 40))
        image_index = rng.integers(0, 5, n)
        region_id = rng.permutation(n)
        score = rng.integers(0, 4, n).astype(float)  # many ties
        pixels = rng.integers(1, 50, n)
        budget = int(rng.integers(0, 400))
        mpi = [None, 1, 2, 3][trial % 4]
        order = rng.permutation(n) if trial % 5 == 0 else None
        c = _cands(score, pixels, image_index=image_index, region_id=region_id)
        got = regions.select_regions(c, budget, "pixels", max_per_image=mpi, order=order)
        want = _reference_select(image_index, region_id, score, pixels, budget, mpi,
                                 None if order is None else list(order))
        assert list(got) == want
        assert pixels[got].sum() <= budget


# ------------------------------------------------------------------------------------------ labelled state


def test_labelled_state_round_trip_and_merge(tmp_path):
    path = tmp_path / "labelled.jsonl"
    state = lab.merge_labelled(lab.LabelledState(), [
        lab.Labelled("b.png", "superpixel:50", [7, 3]),
        lab.Labelled("a.png"),
        lab.Labelled("b.png", "pixel:2", [13]),
    ])
    lab.write_labelled(path, state)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"format": "alseg.labelled", "format_version": 1}
    assert json.loads(lines[1]) == {"id": "b.png", "unit": "superpixel:50", "regions": [3, 7]}
    back = lab.read_labelled(path)
    assert back == state and back.full_ids == ["a.png"] and back.ids == ["b.png", "a.png"]
    again = lab.merge_labelled(back, [lab.Labelled("b.png", "superpixel:50", [3, 9])])
    np.testing.assert_array_equal(again.regions("b.png", "superpixel:50"), [3, 7, 9])  # idempotent union
    assert lab.merge_labelled(again, [lab.Labelled("b.png", "superpixel:50", [3, 9])]) == again
    whole = lab.merge_labelled(again, [lab.Labelled("b.png")])
    assert whole.images["b.png"] == {"image": ()}
    assert lab.merge_labelled(whole, [lab.Labelled("b.png", "patch:4", [0])]) == whole


def test_a_labelled_region_never_comes_back():
    region_map = regions.patch_map(8, 8, 4)
    state = lab.merge_labelled(lab.LabelledState(), [lab.Labelled("x.png", "patch:4", [2])])
    mask = lab.labelled_mask(state, "x.png", (8, 8), regions.region_lookup())
    assert mask.sum() == 16 and mask[4:8, 0:4].all()
    _, offered = regions.offered_regions(region_map, mask)
    np.testing.assert_array_equal(offered, [True, True, False, True])
    # a superpixel-like region of another unit half over it costs only its unlabelled half
    other = np.zeros((8, 8), np.int64)
    other[4:8, 2:6] = 1
    cost_pixels, offered = regions.offered_regions(other, mask)
    assert cost_pixels[1] == 8 and offered[1]


def test_labelled_mask_resolves_every_unit(tmp_path):
    sp = np.zeros((4, 6), np.int64)
    sp[:, 3:] = 1

    class Store:
        path = tmp_path / "store.h5"

        def region_map(self, image_id):
            return sp

    state = lab.merge_labelled(lab.LabelledState(), [
        lab.Labelled("a.png", "superpixel:2", [1]), lab.Labelled("a.png", "pixel:1", [6]),
        lab.Labelled("a.png", "patch:2", [0]),
    ])
    mask = lab.labelled_mask(state, "a.png", (4, 6), regions.region_lookup({"superpixel:2": Store()}))
    want = np.zeros((4, 6), bool)
    want[:, 3:] = True  # superpixel 1
    want[1, 0] = True  # pixel 6 = y 1, x 0
    want[0:2, 0:2] = True  # patch 0
    np.testing.assert_array_equal(mask, want)
    assert not lab.labelled_mask(state, "other.png", (4, 6)).any()
    with pytest.raises(InputError, match="need the region maps"):
        lab.labelled_mask(state, "a.png", (4, 6))


def test_a_plain_id_list_means_fully_labelled_images(tmp_path):
    path = tmp_path / "labeled.txt"
    path.write_text("a/1.png\nb/2.png\n")
    state = lab.read_labelled(path)
    assert state.full_ids == ["a/1.png", "b/2.png"]
    assert lab.labelled_mask(state, "a/1.png", (2, 3)).all()
    assert lab.read_labelled(tmp_path / "missing.jsonl", allow_missing=True).ids == []


def test_labelled_reader_refuses_newer_and_broken_files(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"format": "alseg.labelled", "format_version": 2}\n')
    with pytest.raises(InputError, match="newer alseg"):
        lab.read_labelled(path)
    path.write_text('{"format": "alseg.labelled", "format_version": 1}\n{"id": "a.png", "unit": "patch:0", "regions": [1]}\n')
    with pytest.raises(InputError, match=r"l.jsonl:2: unknown query unit"):
        lab.read_labelled(path)
    path.write_text('{"format": "alseg.selection", "format_version": 1}\n')
    with pytest.raises(InputError, match="not an alseg.labelled file"):
        lab.read_labelled(path)


def test_a_crash_while_writing_leaves_the_old_state(tmp_path, monkeypatch):
    path = tmp_path / "labelled.jsonl"
    old = lab.merge_labelled(lab.LabelledState(), [lab.Labelled("a.png")])
    lab.write_labelled(path, old)
    before = path.read_bytes()
    import alseg.files.atomic as atomic

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", crash)
    new = lab.merge_labelled(old, [lab.Labelled("b.png", "patch:8", [1, 2])])
    with pytest.raises(OutputError):
        lab.write_labelled(path, new)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert lab.read_labelled(path) == old
    assert [p.name for p in tmp_path.iterdir()] == ["labelled.jsonl"]  # no temporary left behind


# ------------------------------------------------------------------------------------------ annotation


def test_precise_keeps_ground_truth_inside_only():
    gt = np.array([[0, 1], [2, 255]], np.uint8)
    out = annotate.precise(gt, np.array([[True, False], [True, True]]))
    np.testing.assert_array_equal(out, [[0, 255], [2, 255]])
    assert out.dtype == np.uint8


def test_dominant_majority_with_ties_and_ignore():
    region_map = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [2, 2, 2, 3, 3, 3]])
    gt = np.array([
        [4, 4, 1, 2, 1, 255],  # region 0: 4 x3, 1 x2, 255 x1 (ignored) -> 4
        [1, 255, 4, 1, 2, 255],  # region 1: 2 x2, 1 x2 -> tie -> 1 (lowest)
        [255, 255, 255, 0, 3, 3],  # region 2: only ignore -> stays ignore; region 3 -> 3
    ], np.uint8)
    gt[1, 1] = 255
    out = annotate.dominant(gt, region_map, [0, 1, 2])
    np.testing.assert_array_equal(out[:2, :3], 4)
    np.testing.assert_array_equal(out[:2, 3:], 1)
    np.testing.assert_array_equal(out[2], 255)  # region 3 was not chosen; region 2 has no vote
    np.testing.assert_array_equal(annotate.dominant(gt, region_map, [3])[2, 3:], 3)


# ------------------------------------------------------------------------------------------ click cost


def _square_in_background():
    gt = np.zeros((12, 12), np.uint8)
    gt[2:9, 2:9] = 1  # a 7 x 7 square of class 1; corners at pixels (2|8, 2|8)
    return gt


def test_whole_image_cost_of_a_square_inside_another_class():
    gt = _square_in_background()
    assert cost.component_counts(gt, np.zeros_like(gt, np.int64))[0] == 2
    assert sorted(map(tuple, cost.polygon_vertices(gt))) == [(2, 2), (2, 8), (8, 2), (8, 8)]
    assert cost.image_clicks(gt) == 2 + 4


def test_patch_cost_counts_components_crossings_and_vertices_by_hand():
    gt = _square_in_background()
    patches = regions.patch_map(12, 12, 6)  # four 6 x 6 patches, each holding one corner of the square
    # patch 0: class 0 (an L) and class 1 -> 2 components; its border ring changes label once on the
    # bottom row (x 1 -> 2) and once on the right column (y 1 -> 2); the corner (2, 2) is inside, off the ring
    np.testing.assert_array_equal(cost.component_counts(gt, patches), [2, 2, 2, 2])
    np.testing.assert_array_equal(cost.crossing_counts(gt, patches), [2, 2, 2, 2])
    np.testing.assert_array_equal(cost.vertex_counts(gt, patches), [1, 1, 1, 1])
    np.testing.assert_array_equal(cost.region_clicks(gt, patches), [5, 5, 5, 5])
    np.testing.assert_array_equal(cost.region_clicks(gt, patches, "dominant"), [1, 1, 1, 1])
    # a 12 x 12 patch (the whole image as one region): the corners are inside, the ring is uniform
    one = np.zeros((12, 12), np.int64)
    assert cost.region_clicks(gt, one)[0] == 2 + 0 + 4


def test_crossings_and_vertices_on_a_border():
    gt = np.zeros((8, 8), np.uint8)
    gt[:, 4:] = 1  # a vertical boundary between x = 3 and x = 4
    gt[6, 1] = 255  # ignore pixels vote for nothing and are no class
    patch = np.zeros((8, 8), np.int64)
    # the ring crosses the boundary on the top and on the bottom row
    assert cost.crossing_counts(gt, patch)[0] == 2
    assert cost.component_counts(gt, patch)[0] == 2
    # the outlines end at the image edge: their 4 end points lie on the ring, so none is counted
    assert cost.vertex_counts(gt, patch)[0] == 0
    assert cost.image_clicks(gt) == 2 + 4
    # the diagonal is one 8-connected component, and so are the two triangles of class 0 (they touch at
    # their corners); with 4-connectivity it would be 5 + 2
    diag = np.eye(5, dtype=np.uint8)
    assert cost.component_counts(diag, np.zeros((5, 5), np.int64))[0] == 1 + 1


def test_labelled_pixels_are_not_part_of_the_area():
    gt = _square_in_background()
    patches = regions.patch_map(12, 12, 6)
    labelled = np.zeros((12, 12), bool)
    labelled[:, 0:3] = True  # the left three columns are already labelled
    # patch 0 is now columns 3..5: class 0 on rows 0..1, class 1 on rows 2..5 -> 2 components; its ring
    # changes on the left (x = 3) and right column (x = 5) -> 2 crossings; the corner (2, 2) is gone -> 0
    assert cost.region_clicks(gt, patches, labelled_mask=labelled)[0] == 2 + 2 + 0

