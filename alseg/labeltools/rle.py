"""Label Studio's brush RLE: the bit-packed run-length code of ``thi.ng/rle-pack``, over RGBA bytes.

A Label Studio brush region (``"type": "brushlabels"``, ``"value": {"format": "rle", "rle": [...]}``)
stores its mask as an RGBA image of the task's ``original_height`` x ``original_width``, flattened row by
row (H*W*4 bytes), run-length coded and bit-packed; ``rle`` is the list of the packed bytes (ints
0..255). The bit stream, most significant bit first:

- header: the number of words ``num`` (32 bits), ``word_size - 1`` (5 bits), then four run-length field
  sizes ``s_0..s_3`` minus one (4 bits each; label-studio-converter writes 3, 4, 8, 16);
- then chunks until ``num`` words are out: one bit ``repeat``, two bits ``t``, then ``count - 1`` in
  ``s_t`` bits; a repeat chunk holds one word (``word_size`` bits) that fills ``count`` places, a literal
  chunk holds ``count`` words. The stream is zero-padded to whole bytes.

A pixel is painted when its alpha byte is at least :data:`ALPHA_THRESHOLD` (label-studio-converter reads
the alpha channel; alseg writes 255 in all four channels of painted pixels, 0 elsewhere).

:func:`encode` writes repeat chunks only (a valid stream that every decoder reads; RGBA masks are long
runs, so literals would save little). :func:`decode` reads both kinds. Both are vectorised with numpy
except the walk over chunk headers, which is inherently sequential (one Python step per chunk).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RLE_SIZES = (3, 4, 8, 16)  # what label-studio-converter writes
WORD_SIZE = 8
ALPHA_THRESHOLD = 128
_HEADER_BITS = 32 + 5 + 4 * 4


class RLEError(ValueError):
    """A brush RLE that does not decode (truncated, or not Label Studio's format)."""


def _pack(values: np.ndarray, widths: np.ndarray) -> list[int]:
    """Concatenate ``values[i]`` written in ``widths[i]`` bits (MSB first); zero-pad to bytes."""
    values = np.asarray(values, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    total = int(widths.sum())
    starts = np.cumsum(widths) - widths
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, widths)
    shift = np.repeat(widths, widths) - 1 - pos
    bits = ((np.repeat(values, widths) >> shift) & 1).astype(np.uint8)
    return np.packbits(bits).tolist()


def encode(words: np.ndarray | Sequence[int], *, rle_sizes: Sequence[int] = RLE_SIZES) -> list[int]:
    """RLE of a 1-D array of bytes (0..255), as Label Studio stores it in ``value.rle``."""
    arr = np.asarray(words)
    if arr.ndim != 1:
        raise ValueError(f"encode takes a 1-D array of bytes, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("encode takes bytes (0..255)")
    sizes = [int(s) for s in rle_sizes]
    if len(sizes) != 4 or not all(1 <= s <= 16 for s in sizes) or sizes != sorted(sizes):
        raise ValueError(f"rle_sizes must be four increasing bit counts in 1..16, got {rle_sizes}")
    arr = arr.astype(np.int64)
    n = int(arr.size)
    header_v = [n, WORD_SIZE - 1, *(s - 1 for s in sizes)]
    header_w = [32, 5, 4, 4, 4, 4]
    if n == 0:
        return _pack(np.asarray(header_v), np.asarray(header_w))
    starts = np.flatnonzero(np.r_[True, arr[1:] != arr[:-1]])
    lengths = np.diff(np.r_[starts, n])
    values = arr[starts]
    # a run longer than the largest count field is cut into chunks of at most 2**s_3 words
    most = 1 << sizes[3]
    pieces = -(-lengths // most)
    values = np.repeat(values, pieces)
    counts = np.full(int(pieces.sum()), most, dtype=np.int64)
    last = np.cumsum(pieces) - 1
    counts[last] = lengths - (pieces - 1) * most
    c = counts - 1
    limits = np.asarray([1 << s for s in sizes[:3]])
    t = (c[:, None] >= limits[None, :]).sum(axis=1)  # the smallest field that holds c
    fields_v = np.stack([np.ones_like(c), t, c, values], axis=1).ravel()
    fields_w = np.stack([np.ones_like(c), np.full_like(c, 2), np.asarray(sizes)[t],
                         np.full_like(c, WORD_SIZE)], axis=1).ravel()
    return _pack(np.r_[header_v, fields_v], np.r_[header_w, fields_w])


def decode(rle: Sequence[int] | bytes) -> np.ndarray:
    """The words an RLE holds, as a 1-D array (uint8 for 8-bit words, else uint32)."""
    try:
        buf = bytes(rle) if not isinstance(rle, bytes) else rle
    except (TypeError, ValueError):
        raise RLEError("rle must be a list of integers 0..255") from None
    n_bits = len(buf) * 8
    if n_bits < _HEADER_BITS:
        raise RLEError(f"rle has {len(buf)} bytes, too few for its header")
    bits = None  # unpacked lazily, only for literal chunks
    pos = 0

    def read(width: int) -> int:
        nonlocal pos
        if pos + width > n_bits:
            raise RLEError(f"rle ends inside a chunk (bit {pos} of {n_bits})")
        first, off = pos >> 3, pos & 7
        span = buf[first : (pos + width + 7) >> 3]
        value = (int.from_bytes(span, "big") >> (len(span) * 8 - off - width)) & ((1 << width) - 1)
        pos += width
        return value

    num = read(32)
    word_size = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    if num > (n_bits // (3 + sizes[0])) * (1 << sizes[3]):  # every chunk takes >= 3 + s_0 bits
        raise RLEError(f"rle header claims {num} words, more than its {len(buf)} bytes can hold")
    # values and counts, in order: repeats gather in Python lists, literal blocks stay arrays
    pieces_v: list[np.ndarray] = []
    pieces_c: list[np.ndarray] = []
    rep_v: list[int] = []
    rep_c: list[int] = []
    done = 0
    while done < num:
        repeat = read(1)
        count = read(sizes[read(2)]) + 1
        if repeat:
            rep_v.append(read(word_size))
            rep_c.append(count)
        else:
            if pos + count * word_size > n_bits:
                raise RLEError(f"rle ends inside a literal chunk (bit {pos} of {n_bits})")
            if bits is None:
                bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8))
            block = bits[pos : pos + count * word_size].reshape(count, word_size).astype(np.int64)
            if rep_v:
                pieces_v.append(np.asarray(rep_v, dtype=np.int64))
                pieces_c.append(np.asarray(rep_c, dtype=np.int64))
                rep_v, rep_c = [], []
            pieces_v.append(block @ (1 << np.arange(word_size - 1, -1, -1, dtype=np.int64)))
            pieces_c.append(np.ones(count, dtype=np.int64))
            pos += count * word_size
        done += count
    if done != num:
        raise RLEError(f"rle holds {done} words, but its header says {num}")
    if rep_v:
        pieces_v.append(np.asarray(rep_v, dtype=np.int64))
        pieces_c.append(np.asarray(rep_c, dtype=np.int64))
    dtype = np.uint8 if word_size <= 8 else np.uint32
    if not pieces_v:
        return np.zeros(0, dtype=dtype)
    return np.repeat(np.concatenate(pieces_v), np.concatenate(pieces_c)).astype(dtype)


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """A boolean mask (H, W) as Label Studio brush RLE: RGBA bytes, 255 in every channel where painted."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    return encode(np.repeat(mask.ravel().astype(np.uint8) * 255, 4))


def rle_to_mask(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """The boolean mask (height, width) of a brush RLE: alpha >= :data:`ALPHA_THRESHOLD`."""
    words = decode(rle)
    want = int(height) * int(width) * 4
    if words.size != want:
        raise RLEError(f"rle holds {words.size} values, but {height}x{width} RGBA needs {want}")
    return words.reshape(int(height), int(width), 4)[:, :, 3] >= ALPHA_THRESHOLD
