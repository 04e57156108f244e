"""Scorers of alseg.strategies against the slow references in tests/reference.py and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from alseg import strategies as S
from alseg.errors import InputError, NonFiniteError, UnknownName


def random_logits(seed, shape=(2, 4, 3, 5), scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ------------------------------------------------------------------ softmax / finiteness


def test_softmax_float32_sums_to_one_and_is_stable():
    x = np.array([[1000.0, 999.0, -1000.0]], dtype=np.float32)
    p = S.softmax(x, axis=1)
    assert p.dtype == np.float32
    e = math.exp(-1.0)
    np.testing.assert_allclose(p[0], [1 / (1 + e), e / (1 + e), 0.0], rtol=1e-6)
    h = S.softmax(random_logits(0).astype(np.float16))
    assert h.dtype == np.float32
    np.testing.assert_allclose(h.sum(axis=1), 1.0, rtol=1e-6)


def test_softmax_matches_reference():
    x = random_logits(1)
    np.testing.assert_allclose(S.softmax(x), ref.probs_loop(x), rtol=1e-5, atol=1e-7)


def test_check_finite_names_ids():
    x = random_logits(2, (3, 2, 2, 2))
    x[1, 0, 0, 0] = np.nan
    x[2, 1, 1, 1] = np.inf
    with pytest.raises(NonFiniteError, match="img-b, img-c"):
        S.check_finite(x, ["img-a", "img-b", "img-c"])
    with pytest.raises(NonFiniteError, match="img-b"):
        S.image_scores(x, "entropy", ids=["img-a", "img-b", "img-c"])
    S.check_finite(random_logits(3))  # finite: no error


# ------------------------------------------------------------------ pixel scorers


@pytest.mark.parametrize("name", sorted(S.PIXEL_SCORERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_scorer_matches_reference(name, seed):
    x = random_logits(seed, (2, 5, 3, 4))
    got = S.PIXEL_SCORERS[name](S.softmax(x))
    assert got.dtype == np.float32 and got.shape == (2, 3, 4)
    np.testing.assert_allclose(got, ref.pixel_scores_loop(x, name), rtol=1e-5, atol=2e-6)


def test_pixel_scorers_known_values():
    # one pixel, K = 4: p = (0.5, 0.3, 0.2, 0)
    p = np.array([0.5, 0.3, 0.2, 0.0], dtype=np.float32).reshape(1, 4, 1, 1)
    h = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)) / math.log(4)
    assert S.pixel_entropy(p)[0, 0, 0] == pytest.approx(h, rel=1e-6)
    assert S.pixel_margin(p)[0, 0, 0] == pytest.approx(1 - (0.5 - 0.3), rel=1e-6)
    assert S.pixel_least_confidence(p)[0, 0, 0] == pytest.approx(0.5, rel=1e-6)
    uniform = np.full((1, 4, 1, 1), 0.25, dtype=np.float32)
    assert S.pixel_entropy(uniform)[0, 0, 0] == pytest.approx(1.0, rel=1e-6)
    onehot = np.array([0, 1, 0, 0], dtype=np.float32).reshape(1, 4, 1, 1)
    assert S.pixel_entropy(onehot)[0, 0, 0] == 0.0  # 0 log 0 = 0, no NaN


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 6),
    scale=st.sampled_from([0.01, 1.0, 30.0, 300.0]),
)
def test_entropy_in_unit_interval(seed, k, scale):
    x = random_logits(seed, (2, k, 3, 3), scale)
    h = S.pixel_entropy(S.softmax(x))
    assert np.isfinite(h).all() and (h >= 0).all() and (h <= 1).all()
    for name in S.PIXEL_SCORERS:
        s = S.PIXEL_SCORERS[name](S.softmax(x))
        assert (s >= 0).all() and (s <= 1 + 1e-6).all()


# ------------------------------------------------------------------ aggregation


def test_aggregate_hand_values():
    s = np.array([[[0.1, 0.9], [0.5, 0.3]], [[0.0, 0.0], [0.0, 1.0]]], dtype=np.float32)
    np.testing.assert_allclose(S.aggregate(s, "mean"), [0.45, 0.25], rtol=1e-6)
    np.testing.assert_allclose(S.aggregate(s, "sum"), [1.8, 1.0], rtol=1e-6)
    # 4 pixels: q=50 -> top 2, q=10 -> at least one pixel, q=100 -> all
    np.testing.assert_allclose(S.aggregate(s, "top-q", q=50), [0.7, 0.5], rtol=1e-6)
    np.testing.assert_allclose(S.aggregate(s, "top-q", q=10), [0.9, 1.0], rtol=1e-6)
    np.testing.assert_allclose(S.aggregate(s, "top-q", q=100), [0.45, 0.25], rtol=1e-6)
    assert S.aggregate(s).dtype == np.float64
    # 10 x 10 pixels valued 0..99: top 10 % = 90..99, mean 94.5
    big = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    assert S.aggregate(big, "top-q", q=10)[0] == pytest.approx(94.5)
    with pytest.raises(UnknownName, match="top-q"):
        S.aggregate(s, "median")


def test_image_scores_pipeline_and_unknown_name():
    x = random_logits(4, (3, 4, 4, 4))
    for name in S.PIXEL_SCORERS:
        for how in S.AGGREGATIONS:
            got = S.image_scores(x, name, aggregation=how, q=25)
            want = S.aggregate(ref.pixel_scores_loop(x, name), how, q=25)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(UnknownName, match="entropy, least-confidence, margin"):
        S.image_scores(x, "bald")


# ------------------------------------------------------------------ contextual diversity


def test_contextual_diversity_hand_example():
    # 1 image, K = 3, 1 x 4 pixels. Logit -1000 gives probability exactly 0 in float32.
    z = -1000.0
    pix = [
        [0.0, z, z],  # p = (1, 0, 0): class 0, entropy 0
        [0.0, z, z],  # p = (1, 0, 0): class 0, entropy 0 -> class 0 uses the plain mean
        [math.log(0.25), math.log(0.75), z],  # class 1
        [z, math.log(0.6), math.log(0.4)],  # class 1
    ]  # class 2 is never predicted
    logits = np.array(pix, dtype=np.float32).T.reshape(1, 3, 1, 4)
    P, present = S.contextual_diversity(logits)
    assert P.dtype == np.float32 and P.shape == (1, 3, 3)
    assert present.tolist() == [[True, True, False]]
    assert np.isfinite(P).all()
    np.testing.assert_allclose(P[0, 0], [1.0, 0.0, 0.0], atol=1e-7)
    h_c = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(3)  # 0.511859
    h_d = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(3)  # 0.612602
    want = (h_c * np.array([0.25, 0.75, 0.0]) + h_d * np.array([0.0, 0.6, 0.4])) / (h_c + h_d)
    np.testing.assert_allclose(want, [0.113801, 0.668280, 0.217919], atol=2e-6)  # the hand numbers
    np.testing.assert_allclose(P[0, 1], want, rtol=1e-5)
    np.testing.assert_array_equal(P[0, 2], 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contextual_diversity_matches_reference(seed):
    x = random_logits(seed, (3, 4, 4, 5), scale=2.0)
    x[0, 3] -= 50.0  # class 3 absent in image 0
    P, present = S.contextual_diversity(x)
    P_ref, present_ref = ref.contextual_diversity_loop(x)
    np.testing.assert_array_equal(present, present_ref)
    assert not present[0, 3]
    np.testing.assert_allclose(P, P_ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ BADGE


@pytest.mark.parametrize(
    "k,h,w,s",
    [
        (21, 64, 64, 16),  # s = 13..16 all give 21*4*4 = 336 (gap 64): tie -> largest
        (19, 128, 256, 36),  # s = 33..36 give 19*3*7 = 399
        (1, 20, 20, 1),  # exactly 400 at s = 1
        (2, 40, 40, 3),  # 2*13*13 = 338 beats 2*20*20 = 800
        (5, 1, 1, 1),
        (400, 3, 3, 3),  # 400*1*1 = 400
    ],
)
def test_badge_window_hand_values(k, h, w, s):
    assert S.badge_window(k, h, w) == s
    assert ref.badge_window_loop(k, h, w) == s


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 40), h=st.integers(1, 80), w=st.integers(1, 80))
def test_badge_window_matches_reference(k, h, w):
    assert S.badge_window(k, h, w) == ref.badge_window_loop(k, h, w)


@pytest.mark.parametrize("s", [1, 2, 3])
def test_badge_logit_embedding_matches_reference(s):
    x = random_logits(5, (2, 3, 7, 8))  # 7 and 8 not multiples of 3: remainder dropped
    got = S.badge_logit_embedding(x, s)
    assert got.dtype == np.float32 and got.shape == (2, 3 * (7 // s) * (8 // s))
    np.testing.assert_allclose(got, ref.badge_logit_loop(x, s), rtol=1e-5, atol=1e-6)


def test_badge_last_layer_matches_loop():
    x = random_logits(6, (2, 3, 4, 5))
    f = np.random.default_rng(7).standard_normal((2, 6, 4, 5)).astype(np.float32)
    got = S.badge_last_layer_embedding(torch.from_numpy(x), torch.from_numpy(f))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (2, 18)
    np.testing.assert_allclose(got.numpy(), ref.badge_last_layer_loop(x, f), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError):
        S.badge_last_layer_embedding(torch.from_numpy(x), torch.from_numpy(f[:, :, :2]))


def test_entropy_from_logits_equals_entropy_of_softmax_and_flags_non_finite():
    """score's entropy path (log Z - sum e^x x / Z) against the textbook -sum p log p on the softmax,
    including saturated logits (p underflows to 0) and K = 1; a NaN or inf logit makes its pixel NaN."""
    from alseg.strategies import pixel_entropy, pixel_entropy_from_logits, softmax

    rng = np.random.default_rng(4)
    z = rng.normal(0, 3, (3, 5, 4, 6)).astype(np.float32)
    z[0, 0, 0, 0] = 200.0  # one class takes everything: entropy 0
    z[1, :, 1, 1] = -80.0  # all equal: entropy 1
    got = pixel_entropy_from_logits(z)
    np.testing.assert_allclose(got, pixel_entropy(softmax(z)), atol=2e-6)
    assert got[0, 0, 0] == pytest.approx(0.0, abs=1e-6) and got[1, 1, 1] == pytest.approx(1.0, abs=1e-6)
    assert (pixel_entropy_from_logits(z[:, :1]) == 0).all()
    bad = z.copy()
    bad[2, 3, 2, 5] = np.inf
    bad[1, 0, 3, 0] = np.nan
    nan = np.isnan(pixel_entropy_from_logits(bad))
    assert nan.sum() == 2 and nan[2, 2, 5] and nan[1, 3, 0]


def test_entropy_kernel_tiles_and_float16_match_the_textbook(monkeypatch):
    """The tiled kernel with tiles that cut images at odd places (7 pixels), on float16 (integer-op
    conversion), float32 and float64 logits, against -sum p log p of the float32 softmax; an inf in one
    float16 tile leaves the other pixels of that tile right."""
    from alseg import strategies as S

    rng = np.random.default_rng(5)
    z16 = (rng.normal(0, 4, (3, 6, 5, 9)) * np.array([1, 1, 1, 1, 1, 30])[None, :, None, None]).astype(np.float16)
    ref = S.pixel_entropy(S.softmax(z16.astype(np.float32)))
    monkeypatch.setattr(S, "_TILE_VALUES", 6 * 7)
    for z in (z16, z16.astype(np.float32), z16.astype(np.float64), z16[:, :, ::-1, :]):
        want = ref[:, ::-1, :] if z.strides[2] < 0 else ref
        np.testing.assert_allclose(S.pixel_entropy_from_logits(z), want, atol=2e-6)
    bad = z16.copy()
    bad[1, 2, 3, 4] = -np.inf
    got = S.pixel_entropy_from_logits(bad)
    assert np.isnan(got[1, 3, 4]) and np.isnan(got).sum() == 1
    np.testing.assert_allclose(np.nan_to_num(got), np.where(np.isnan(got), 0, ref), atol=2e-6)


# ------------------------------------------------------------------ tiled NumPy kernels vs brute force
#
# margin, least-confidence, entropy, predicted_classes, class_counts, clasp and contextual diversity run
# image by image in tiles of pixels with reused buffers. Each is checked here against a plain reference
# written with np.sort / explicit loops over images and classes, on inputs with exact ties between
# classes, uniform pixels, saturated logits (one class at +200: probabilities exactly 1 and 0), K = 1 and
# K = 2, and tiles of 7 pixels that cut the 45-pixel images at odd places.


def _hard_logits(seed, k, shape=(3, 5, 9)):
    """(N, K, H, W) float32 logits with ties (two classes at the maximum; all classes equal), saturated
    pixels (+200), and, in image 2, class 0 predicted only at saturated pixels (its entropy sum is 0)."""
    n, h, w = shape
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, k, h, w)) * 2).astype(np.float32)
    x[:2, :, 0, :3] = 0.5  # all classes equal: uniform pixels, every class tied
    if k >= 2:
        x[0, :2, 1, :] = 7.0  # classes 0 and 1 tied at the top: the first maximum is class 0
        x[1, k - 2 :, 2, :] = x[1].max() + 1.0  # the last two classes tied at the top
    x[0, k - 1, 3, 2:6] = 200.0  # saturated
    x[2, 0] = -5.0
    x[2, 0, 4, 1:4] = 200.0  # class 0 of image 2: saturated pixels only
    return x


def _argmax_loop(p):
    """First index of the maximum along axis 1, by a strict > running over the classes."""
    n, k = p.shape[:2]
    out = np.zeros((n,) + p.shape[2:], dtype=np.intp)
    for i in range(n):
        best = p[i, 0].copy()
        for c in range(1, k):
            better = p[i, c] > best
            out[i][better] = c
            best[better] = p[i, c][better]
    return out


def _entropy_loop(p):
    """-sum_k p log p / log K in float32, classes added one after the other, 0 where p is not > 0."""
    p = np.asarray(p, dtype=np.float32)
    n, k = p.shape[:2]
    if k <= 1:
        return np.zeros((n,) + p.shape[2:], dtype=np.float32)
    out = np.zeros((n,) + p.shape[2:], dtype=np.float32)
    for i in range(n):
        acc = np.zeros(p.shape[2:], dtype=np.float32)
        for c in range(k):
            row = p[i, c]
            with np.errstate(divide="ignore", invalid="ignore"):
                acc += np.where(row > 0, row * np.log(np.where(row > 0, row, 1)), 0).astype(np.float32)
        out[i] = np.clip(-acc / np.float32(math.log(k)), 0, 1)
    return out


def _margin_sort(p):
    p = np.asarray(p, dtype=np.float32)
    if p.shape[1] == 1:
        return np.float32(1) - p[:, 0]
    s = np.sort(p, axis=1)
    return np.float32(1) - (s[:, -1] - s[:, -2])


def _small_tiles(monkeypatch, k, pixels=7):
    monkeypatch.setattr(S, "_TILE_VALUES", pixels * k)
    monkeypatch.setattr(S, "_ROW_TILE_PIXELS", pixels)


@pytest.mark.parametrize("k", [1, 2, 3, 19])
@pytest.mark.parametrize("tiles", ["default", "7 pixels"])
def test_tiled_pixel_scorers_equal_brute_force(k, tiles, monkeypatch):
    if tiles != "default":
        _small_tiles(monkeypatch, k)
    x = _hard_logits(k, k)
    p = S.softmax(x)
    margin = S.pixel_margin(p)
    assert margin.dtype == np.float32 and margin.shape == (3, 5, 9)
    np.testing.assert_array_equal(margin, _margin_sort(p))
    lc = S.pixel_least_confidence(p)
    assert lc.dtype == np.float32
    np.testing.assert_array_equal(lc, np.float32(1) - np.sort(p, axis=1)[:, -1])
    h = S.pixel_entropy(p)
    assert h.dtype == np.float32 and h.shape == (3, 5, 9)
    np.testing.assert_allclose(h, _entropy_loop(p), rtol=0, atol=2e-7)
    assert h[0, 3, 2] == 0.0  # saturated
    if k >= 2:
        assert h[0, 0, 0] == pytest.approx(1.0, abs=1e-6)  # uniform
        assert margin[0, 0, 0] == 1.0 and margin[0, 1, 0] == 1.0  # ties: p_(2) = p_(1)
    # other dtypes and layouts: the same numbers as on their float32 values
    for q in (p.astype(np.float16), p.astype(np.float64), p[:, :, ::-1, ::2]):
        q32 = q.astype(np.float32)
        np.testing.assert_array_equal(S.pixel_margin(q), _margin_sort(q32))
        np.testing.assert_allclose(S.pixel_entropy(q), _entropy_loop(q32), rtol=0, atol=2e-7)


@pytest.mark.parametrize("k", [1, 2, 3, 19])
@pytest.mark.parametrize("tiles", ["default", "7 pixels"])
def test_predicted_classes_is_the_first_maximum(k, tiles, monkeypatch):
    if tiles != "default":
        _small_tiles(monkeypatch, k)
    p = S.softmax(_hard_logits(10 + k, k))
    got = S.predicted_classes(p)
    assert got.dtype == np.intp and got.shape == (3, 5, 9)
    np.testing.assert_array_equal(got, _argmax_loop(p))
    np.testing.assert_array_equal(got, p.argmax(axis=1))
    assert (got[:2, 0, :3] == 0).all()  # every class tied: class 0
    if k >= 2:
        assert (got[0, 1] == 0).all() and (got[1, 2] == k - 2).all()
    # integer scores, a strided view, and NaN (NumPy's argmax gives the first NaN)
    ints = np.random.default_rng(k).integers(0, 3, (2, k, 4, 7))
    np.testing.assert_array_equal(S.predicted_classes(ints), _argmax_loop(ints))
    np.testing.assert_array_equal(S.predicted_classes(p[:, :, ::-1]), _argmax_loop(p[:, :, ::-1]))
    bad = p.copy()
    bad[1, k - 1, 2, 3] = np.nan
    np.testing.assert_array_equal(S.predicted_classes(bad), bad.argmax(axis=1))
    assert S.predicted_classes(bad)[1, 2, 3] == k - 1
    with pytest.raises(InputError):
        S.predicted_classes(p[0])


def test_class_counts_equal_a_loop_over_classes():
    rng = np.random.default_rng(3)
    for dtype in (np.uint8, np.int16, np.int64, np.uint64):
        labels = rng.integers(0, 6, (4, 5, 9)).astype(dtype)
        labels[1, 0, :4] = 255  # the ignore index
        if np.issubdtype(dtype, np.signedinteger):
            labels[2, 3, 3] = -1
        labels[3] = 255  # nothing valid
        for k in (1, 2, 6, 19):
            want = np.array([[np.count_nonzero(labels[i] == c) for c in range(k)] for i in range(4)])
            got = S.class_counts(labels, k)
            assert got.dtype == np.int64 and got.shape == (4, k)
            np.testing.assert_array_equal(got, want)
    p = S.softmax(_hard_logits(4, 19))
    np.testing.assert_array_equal(S.class_counts(S.predicted_classes(p), 19),
                                  S.class_counts(p.argmax(axis=1), 19))


@pytest.mark.parametrize("k", [1, 2, 3, 19])
@pytest.mark.parametrize("tiles", ["default", "7 pixels"])
def test_clasp_scores_equal_float64_loops(k, tiles, monkeypatch):
    if tiles != "default":
        _small_tiles(monkeypatch, k)
    p = S.softmax(_hard_logits(20 + k, k))
    s_c, s = S.clasp_scores(p)
    assert s_c.dtype == np.float64 and s_c.shape == (3, k) and s.dtype == np.float64 and s.shape == (3,)
    h = _entropy_loop(p).astype(np.float64)
    for i in range(3):
        hi = h[i].ravel()
        assert s[i] == pytest.approx(math.fsum(hi) / hi.size, rel=1e-12, abs=1e-15)
        for c in range(k):
            want = math.fsum(p[i, c].astype(np.float64).ravel() * hi) / hi.size
            assert s_c[i, c] == pytest.approx(want, rel=1e-6, abs=1e-12)
    np.testing.assert_allclose(s_c.sum(axis=1), s, rtol=1e-6, atol=1e-12)


def _contextual_diversity_loop(x):
    """P and present by explicit loops over images and classes: float64 sums of p and h p over the pixels
    whose first maximum is c (h = the float32 entropy of the float32 softmax)."""
    p = S.softmax(x)
    h = _entropy_loop(p).astype(np.float64)
    yhat = _argmax_loop(p)
    n, k = p.shape[:2]
    P = np.zeros((n, k, k))
    present = np.zeros((n, k), dtype=bool)
    for i in range(n):
        for c in range(k):
            mask = yhat[i] == c
            if not mask.any():
                continue
            present[i, c] = True
            pix = p[i][:, mask].astype(np.float64)  # (K, pixels of c)
            hc = h[i][mask]
            den = math.fsum(hc)
            if den > 0:
                P[i, c] = [math.fsum(pix[j] * hc) / den for j in range(k)]
            else:
                P[i, c] = [math.fsum(pix[j]) / mask.sum() for j in range(k)]
    return P, present


@pytest.mark.parametrize("k", [1, 2, 3, 19])
@pytest.mark.parametrize("tiles", ["default", "7 pixels"])
def test_contextual_diversity_equals_float64_loops(k, tiles, monkeypatch):
    if tiles != "default":
        _small_tiles(monkeypatch, k)
    x = _hard_logits(30 + k, k)
    if k >= 3:
        x[1, 2] -= 60.0  # class 2 never predicted in image 1
    P, present = S.contextual_diversity(x)
    assert P.dtype == np.float32 and P.shape == (3, k, k) and present.dtype == bool and present.shape == (3, k)
    P_ref, present_ref = _contextual_diversity_loop(x)
    np.testing.assert_array_equal(present, present_ref)
    np.testing.assert_allclose(P, P_ref, rtol=1e-6, atol=1e-7)
    assert present[2, 0]
    if k >= 2:  # class 0 of image 2 holds saturated pixels only: h sum 0, the plain mean (1, 0, ...)
        np.testing.assert_array_equal(P[2, 0], np.eye(k, dtype=np.float32)[0])
    if k >= 3:
        assert not present[1, 2] and (P[1, 2] == 0).all()
    # float16 and float64 logits: the same as their float32 values (softmax converts them so)
    x16 = x.astype(np.float16)
    np.testing.assert_array_equal(S.contextual_diversity(x16)[0], S.contextual_diversity(x16.astype(np.float32))[0])
    np.testing.assert_array_equal(S.contextual_diversity(x.astype(np.float64))[0], P)


def test_contextual_diversity_errors_and_no_torch():
    x = _hard_logits(5, 4)
    x[1, 2, 3, 4] = -np.inf
    with pytest.raises(NonFiniteError, match="b"):
        S.contextual_diversity(x, ids=["a", "b", "c"])
    with pytest.raises(InputError):
        S.contextual_diversity(x[0])
    with pytest.raises(InputError):
        S.contextual_diversity(np.zeros((1, 3, 2, 2), dtype=np.int32))
    import subprocess
    import sys

    code = ("import sys, numpy as np; from alseg import strategies as S; "
            "x = np.random.default_rng(0).standard_normal((2, 4, 5, 6)).astype(np.float32); "
            "S.contextual_diversity(x); S.clasp_scores(S.softmax(x)); S.pixel_margin(S.softmax(x)); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tiled_scorers_leave_their_inputs_alone(monkeypatch):
    _small_tiles(monkeypatch, 5)
    x = _hard_logits(40, 5)
    p = S.softmax(x)
    x0, p0 = x.copy(), p.copy()
    for fn in (S.pixel_margin, S.pixel_least_confidence, S.pixel_entropy, S.predicted_classes, S.clasp_scores):
        fn(p)
    S.contextual_diversity(x)
    S.class_counts(S.predicted_classes(p), 5)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(p, p0)
