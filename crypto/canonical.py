"""The one canonical byte encoding: a strict subset of deterministic CBOR (RFC 8949 §4.2.1).

Why CBOR and not JSON: records carry raw bytes (keys, hashes, signatures) and exact floats
(merge coefficients); CBOR holds both without base64 or decimal round-trips.

Rules (the decoder enforces every one; anything else is an ``EncodingError``):

- values: ``None``, ``bool``, ``int`` with ``-2**64 <= x < 2**64``, ``float`` (always encoded as
  float64, finite only), ``bytes``, ``str``, ``list``/``tuple`` (decoded as ``list``), ``dict``
  with ``str`` keys only;
- lengths and integers use the shortest head; no indefinite lengths, no tags;
- map keys sorted by their encoded bytes (bytewise), no duplicates;
- the input must be consumed exactly; size and nesting depth are bounded.

``decode(encode(x)) == x`` for every supported value, and ``encode(decode(b)) == b`` for every
``b`` that decodes: one value, one encoding.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from typing import Any

from crypto.errors import (
    DuplicateKey,
    NonCanonicalEncoding,
    TruncatedEncoding,
    UnsupportedValue,
)

MAX_SIZE = 16 * 1024 * 1024
MAX_DEPTH = 16

_UINT, _NINT, _BYTES, _TEXT, _ARRAY, _MAP, _SIMPLE = 0, 1, 2, 3, 4, 5, 7
_FALSE, _TRUE, _NULL, _FLOAT64 = 20, 21, 22, 27


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def content_id(data: bytes) -> bytes:
    """The content id of canonical bytes: their sha256."""
    return sha256(data)


def encode(obj: Any) -> bytes:
    out = bytearray()
    _encode(obj, out, 0)
    return bytes(out)


def _head(major: int, n: int, out: bytearray) -> None:
    if n < 24:
        out.append(major << 5 | n)
    elif n < 1 << 8:
        out += bytes((major << 5 | 24, n))
    elif n < 1 << 16:
        out.append(major << 5 | 25)
        out += n.to_bytes(2, "big")
    elif n < 1 << 32:
        out.append(major << 5 | 26)
        out += n.to_bytes(4, "big")
    else:
        out.append(major << 5 | 27)
        out += n.to_bytes(8, "big")


def _encode(obj: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise UnsupportedValue(f"nesting deeper than {MAX_DEPTH}")
    if obj is None:
        out.append(_SIMPLE << 5 | _NULL)
    elif obj is True or obj is False:
        out.append(_SIMPLE << 5 | (_TRUE if obj else _FALSE))
    elif isinstance(obj, int):
        _encode_int(obj, out)
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise UnsupportedValue(f"non-finite float {obj!r}")
        out.append(_SIMPLE << 5 | _FLOAT64)
        out += struct.pack(">d", obj)
    elif isinstance(obj, bytes | bytearray | memoryview):
        _head(_BYTES, len(obj), out)
        out += bytes(obj)
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        _head(_TEXT, len(raw), out)
        out += raw
    elif isinstance(obj, list | tuple):
        _head(_ARRAY, len(obj), out)
        for item in obj:
            _encode(item, out, depth + 1)
    elif isinstance(obj, Mapping):
        _encode_map(obj, out, depth)
    else:
        raise UnsupportedValue(f"cannot encode {type(obj).__name__}")


def _encode_int(n: int, out: bytearray) -> None:
    if not -(1 << 64) <= n < 1 << 64:
        raise UnsupportedValue(f"integer {n} out of 64-bit range")
    if n >= 0:
        _head(_UINT, n, out)
    else:
        _head(_NINT, -1 - n, out)


def _encode_map(obj: Mapping[Any, Any], out: bytearray, depth: int) -> None:
    items = []
    for key, value in obj.items():
        if not isinstance(key, str):
            raise UnsupportedValue(f"map key {key!r} is not text")
        items.append((encode(key), value))
    items.sort(key=lambda kv: kv[0])
    _head(_MAP, len(items), out)
    for key_bytes, value in items:
        out += key_bytes
        _encode(value, out, depth + 1)


def decode(data: bytes, *, max_size: int = MAX_SIZE, max_depth: int = MAX_DEPTH) -> Any:
    """Decode canonical bytes, refusing every non-canonical or oversized input."""
    if len(data) > max_size:
        raise UnsupportedValue(f"{len(data)} bytes exceeds the limit of {max_size}")
    reader = _Reader(bytes(data), max_depth)
    value = reader.value(0)
    if reader.pos != len(reader.data):
        raise NonCanonicalEncoding(f"{len(reader.data) - reader.pos} trailing bytes")
    return value


class _Reader:
    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise TruncatedEncoding(f"need {n} bytes at offset {self.pos}, input ends")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def head(self) -> tuple[int, int, int]:
        first = self.take(1)[0]
        major, info = first >> 5, first & 31
        if major == _SIMPLE or info < 24:
            return major, info, info
        if info > 27:
            raise NonCanonicalEncoding(f"indefinite or reserved length at offset {self.pos - 1}")
        width = 1 << (info - 24)
        n = int.from_bytes(self.take(width), "big")
        shortest = 24 if n < 1 << 8 else 25 if n < 1 << 16 else 26 if n < 1 << 32 else 27
        if n < 24 or info != shortest:
            raise NonCanonicalEncoding(f"length {n} not in its shortest form")
        return major, info, n

    def value(self, depth: int) -> Any:
        if depth > self.max_depth:
            raise UnsupportedValue(f"nesting deeper than {self.max_depth}")
        major, info, n = self.head()
        if major == _UINT:
            return n
        if major == _NINT:
            return -1 - n
        if major == _BYTES:
            return self.take(n)
        if major == _TEXT:
            return self.text(n)
        if major == _ARRAY:
            return [self.value(depth + 1) for _ in range(self.count(n))]
        if major == _MAP:
            return self.map(self.count(n), depth)
        if major == _SIMPLE:
            return self.simple(info)
        raise UnsupportedValue(f"CBOR tags (major type 6) are not allowed, offset {self.pos - 1}")

    def count(self, n: int) -> int:
        # Every element takes at least one byte: a count beyond the remaining input is a lie,
        # refused before we loop on it.
        if n > len(self.data) - self.pos:
            left = len(self.data) - self.pos
            raise TruncatedEncoding(f"{n} elements announced, {left} bytes left")
        return n

    def text(self, n: int) -> str:
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsupportedValue(f"invalid UTF-8 text: {exc}") from None

    def map(self, n: int, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        previous = b""
        for _ in range(n):
            start = self.pos
            key = self.value(depth + 1)
            if not isinstance(key, str):
                raise UnsupportedValue(f"map key {key!r} is not text")
            key_bytes = self.data[start : self.pos]
            if key in result:
                raise DuplicateKey(f"duplicate map key {key!r}")
            if key_bytes <= previous:
                raise NonCanonicalEncoding(f"map keys not in canonical order at {key!r}")
            previous = key_bytes
            result[key] = self.value(depth + 1)
        return result

    def simple(self, info: int) -> Any:
        if info == _FALSE:
            return False
        if info == _TRUE:
            return True
        if info == _NULL:
            return None
        if info == _FLOAT64:
            (value,) = struct.unpack(">d", self.take(8))
            if not math.isfinite(value):
                raise UnsupportedValue("non-finite float")
            return value
        raise UnsupportedValue(f"simple value / float width {info} is not allowed")
