"""crc32_combine: the CRC of a concatenation from its parts' CRCs, as zlib computes it whole."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st

from pipeline.buffer import frame
from pipeline.buffer.crc import crc32_combine


@given(st.binary(max_size=300), st.binary(max_size=5000))
def test_combined_crc_is_the_crc_of_the_concatenation(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_a_long_second_part() -> None:
    a, b = b"head", bytes(range(256)) * 8192  # 2 MiB: every bit of the length is used
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


@given(st.binary(min_size=1, max_size=4000), st.integers(0, 2**40))
def test_a_frame_with_its_payload_crc_given_is_the_same_frame(payload: bytes, seq: int) -> None:
    meta = {"src": "agent", "offs": [0, 7]}
    given_crc = frame.encode_parts(frame.KIND_DATA, seq, 2, meta, [payload], zlib.crc32(payload))
    computed = frame.encode_parts(frame.KIND_DATA, seq, 2, meta, [payload])
    assert given_crc == computed
