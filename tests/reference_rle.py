"""A slow, obvious decoder of Label Studio's brush RLE (thi.ng rle-pack), one bit at a time.

Written from the format's description (``alseg/labeltools/rle.py`` module doc), independently of the
vectorised code: the whole stream becomes a string of '0'/'1' and fields are read off its front.
(label-studio-converter, which has ``brush.decode_rle``, pulls pandas, nltk, lxml and requests into the
environment, so the tests carry this decoder instead, plus a known answer from that package's tests.)
"""

from __future__ import annotations


def decode_bits(rle: list[int]) -> list[int]:
    stream = "".join(format(byte, "08b") for byte in rle)
    at = 0

    def take(n: int) -> int:
        nonlocal at
        field = stream[at : at + n]
        assert len(field) == n, "stream ended early"
        at += n
        return int(field, 2)

    num = take(32)
    word = take(5) + 1
    sizes = [take(4) + 1 for _ in range(4)]
    out: list[int] = []
    while len(out) < num:
        is_repeat = take(1) == 1
        count = take(sizes[take(2)]) + 1
        if is_repeat:
            value = take(word)
            for _ in range(count):
                out.append(value)
        else:
            for _ in range(count):
                out.append(take(word))
    assert len(out) == num
    return out
