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
    monkeypatch.setattr(S, "_ENTROPY_TILE_VALUES", 6 * 7)
    for z in (z16, z16.astype(np.float32), z16.astype(np.float64), z16[:, :, ::-1, :]):
        want = ref[:, ::-1, :] if z.strides[2] < 0 else ref
        np.testing.assert_allclose(S.pixel_entropy_from_logits(z), want, atol=2e-6)
    bad = z16.copy()
    bad[1, 2, 3, 4] = -np.inf
    got = S.pixel_entropy_from_logits(bad)
    assert np.isnan(got[1, 3, 4]) and np.isnan(got).sum() == 1
    np.testing.assert_allclose(np.nan_to_num(got), np.where(np.isnan(got), 0, ref), atol=2e-6)
