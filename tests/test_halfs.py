"""alseg.halfs: the integer-op float16 -> float32 conversion against NumPy's exact cast."""

import numpy as np
import pytest

from alseg import halfs


def _all_halves() -> np.ndarray:
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)


def test_every_float16_value_converts_bit_for_bit():
    """All 65 536 float16 bit patterns (zeros of both signs, subnormals, normals, inf, NaN): the same
    float32 bits as astype, in one block (inf/NaN present: the exact cast) and in finite-only blocks."""
    x = _all_halves()
    want = x.astype(np.float32).view(np.uint32)
    assert np.array_equal(halfs.to_float32(x).view(np.uint32), want)
    finite = np.isfinite(x)
    got = np.empty(int(finite.sum()), np.float32)
    halfs.half_bits_to_float32(x[finite], got)
    assert np.array_equal(got.view(np.uint32), want[finite])


def test_blocks_strides_scale_and_other_dtypes(monkeypatch):
    monkeypatch.setattr(halfs, "_BLOCK_VALUES", 1000)  # blocks cut the array at odd places
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 5, 61)) * 100).astype(np.float16)
    x[3, 2, 7] = np.inf  # one block takes the exact path, the others the integer one
    got = halfs.to_float32(x[:, ::-1, 1::2])  # not contiguous
    assert got.dtype == np.float32
    assert np.array_equal(got, x[:, ::-1, 1::2].astype(np.float32))
    dst = np.empty((5, 61), np.float32)
    halfs.half_bits_to_float32(x[0], dst, scale=0.5)  # a power of two: still exact
    assert np.array_equal(dst, x[0].astype(np.float32) * np.float32(0.5))
    y = np.ones(3, np.float32)
    assert halfs.to_float32(y) is y
    assert halfs.to_float32(np.ones(3)).dtype == np.float32


@pytest.mark.parametrize("value", [np.nan, -np.inf])
def test_non_finite_survive(value):
    x = np.array([1.5, value, -2.0], dtype=np.float16)
    got = halfs.to_float32(x)
    assert got[0] == 1.5 and got[2] == -2.0
    assert (np.isnan(got[1]) if np.isnan(value) else got[1] == value)
