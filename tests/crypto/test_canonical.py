"""The canonical encoding: one value, one byte string, and nothing else decodes."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto import canonical
from crypto.errors import (
    DuplicateKey,
    EncodingError,
    NonCanonicalEncoding,
    TruncatedEncoding,
    UnsupportedValue,
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.binary(max_size=64)
    | st.text(max_size=32)
)


def _containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    # Named: hypothesis reads a multi-line lambda's source as not recursing (an error here).
    return st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)


values = st.recursive(scalars, _containers, max_leaves=20)


@given(values)
def test_round_trip_is_identity(value: object) -> None:
    data = canonical.encode(value)
    decoded = canonical.decode(data)
    assert canonical.encode(decoded) == data
    assert _same(decoded, value)


def _same(a: object, b: object) -> bool:
    if isinstance(b, float):
        # -0.0 and 0.0 are different encodings and must survive as such.
        return isinstance(a, float) and struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(b, list | tuple):
        return isinstance(a, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in b)
    return a == b and type(a) is type(b)


@given(values, st.data())
def test_every_strict_prefix_is_refused(value: object, data: st.DataObject) -> None:
    encoded = canonical.encode(value)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(EncodingError):
        canonical.decode(encoded[:cut])


def test_map_keys_are_sorted_regardless_of_insertion_order() -> None:
    assert canonical.encode({"b": 1, "a": 2}) == canonical.encode({"a": 2, "b": 1})


def test_duplicate_keys_are_refused() -> None:
    # {"a": 1, "a": 2} written by hand: a map of two entries with the same key.
    data = bytes([0xA2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02])
    with pytest.raises(DuplicateKey):
        canonical.decode(data)


def test_unsorted_keys_are_refused() -> None:
    data = bytes([0xA2, 0x61, 0x62, 0x01, 0x61, 0x61, 0x02])
    with pytest.raises(NonCanonicalEncoding):
        canonical.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x18, 0x05]),  # 5 in a one-byte head: not the shortest form
        bytes([0x19, 0x00, 0x20]),  # 32 in a two-byte head
        bytes([0x5F, 0xFF]),  # indefinite-length bytes
        bytes([0x01, 0x01]),  # trailing byte
    ],
)
def test_non_shortest_and_indefinite_forms_are_refused(data: bytes) -> None:
    with pytest.raises(NonCanonicalEncoding):
        canonical.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        bytes([0xF9, 0x3C, 0x00]),  # float16 1.0: floats are always float64
        bytes([0xC1, 0x01]),  # a tag
        bytes([0xA1, 0x01, 0x01]),  # integer map key
        bytes([0xFB]) + struct.pack(">d", math.nan),
        bytes([0x62, 0xFF, 0xFE]),  # invalid UTF-8
    ],
)
def test_values_outside_the_subset_are_refused(data: bytes) -> None:
    with pytest.raises(UnsupportedValue):
        canonical.decode(data)


def test_absurd_lengths_are_refused_before_allocating() -> None:
    # A byte string claiming 2**60 bytes, and a list claiming 2**60 elements.
    with pytest.raises(TruncatedEncoding):
        canonical.decode(bytes([0x5B]) + (2**60).to_bytes(8, "big"))
    with pytest.raises(TruncatedEncoding):
        canonical.decode(bytes([0x9B]) + (2**60).to_bytes(8, "big"))


def test_size_and_depth_limits() -> None:
    with pytest.raises(UnsupportedValue):
        canonical.decode(canonical.encode(b"x" * 100), max_size=50)
    nested: object = []
    for _ in range(40):
        nested = [nested]
    with pytest.raises(UnsupportedValue):
        canonical.encode(nested)
    with pytest.raises(UnsupportedValue):
        canonical.decode(bytes([0x81] * 40 + [0x80]))


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, 2**64, {1: 2}, {"a"}])
def test_unencodable_values_are_refused(bad: object) -> None:
    with pytest.raises(UnsupportedValue):
        canonical.encode(bad)
