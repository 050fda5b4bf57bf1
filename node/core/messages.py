"""The replication protocol's wire messages, encoded with ``crypto.canonical``.

Every message is a canonical CBOR map ``{"t": <type>, "v": 1, ...}``; the decoder refuses
anything else with ``node.errors.MalformedMessage`` (the peer's fault).

- ``sum``  ``Summary``: the sender's set summary (a ``node.core.summary.SetSummary``: root,
  count, bucket bits and fingerprints) and its merged composite (``head`` item, ``digest`` hex
  or null).
  Sent on connect and every sync interval; it doubles as the convergence report.
- ``ids``  ``Ids``: the answer to a summary whose root differs: the sender's ids in the buckets
  whose fingerprints differ. The receiver pushes what the sender lacks.
- ``recs`` ``Records``: signed records the sender holds *complete* (with every blob verified), so
  the receiver may fetch their blobs from it. Records are small (no tensors); blobs move over the
  shell's request/response stream, never inside a message.

Sizes are bounded (``MAX_MESSAGE_BYTES``) so a message always fits in one request of the
shell's transport, whose default ``max_request`` is 1 MiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from crypto import canonical
from crypto.errors import CryptoError
from node.core.summary import FINGERPRINT_BYTES, MAX_BITS
from node.errors import MalformedMessage

VERSION = 1
MAX_MESSAGE_BYTES = 1000 * 1024
MAX_IDS = 16 * 1024
MAX_RECORDS = 512
_HASH = 32


@dataclass(frozen=True)
class Summary:
    """The ``sum`` message: a ``SetSummary``'s fields, then the sender's composite."""

    root: bytes
    count: int
    bits: int
    fingerprints: bytes
    head: bytes
    digest: str | None


@dataclass(frozen=True)
class Ids:
    bits: int
    buckets: tuple[int, ...]
    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class Records:
    records: tuple[bytes, ...]


Message: TypeAlias = Summary | Ids | Records


def encode(message: Message) -> bytes:
    if isinstance(message, Summary):
        body: dict[str, Any] = {
            "t": "sum",
            "root": message.root,
            "n": message.count,
            "bits": message.bits,
            "fp": message.fingerprints,
            "head": message.head,
            "digest": message.digest,
        }
    elif isinstance(message, Ids):
        body = {
            "t": "ids",
            "bits": message.bits,
            "b": list(message.buckets),
            "ids": list(message.ids),
        }
    else:
        return _records_bytes(message.records)
    return canonical.encode({**body, "v": VERSION})


# {"t": "recs", "v": 1, "recs": [...]} with the keys in canonical order ("t" < "v" < "recs" by
# their encoded bytes), written directly: records are relayed on every hop, and the generic
# encoder costs more than the rest of a relay. A test holds it equal to ``canonical.encode``.
_RECORDS_PREFIX = b"\xa3\x61t\x64recs\x61v\x01\x64recs"


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major << 5 | n,))
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * width):
            return bytes((major << 5 | info,)) + n.to_bytes(width, "big")
    raise ValueError("length out of range")


def _records_bytes(records: tuple[bytes, ...]) -> bytes:
    parts = [_RECORDS_PREFIX, _head(4, len(records))]
    for record in records:
        parts += (_head(2, len(record)), record)
    return b"".join(parts)


def decode(data: bytes) -> Message:
    """Parse one message; ``MalformedMessage`` says what was wrong."""
    try:
        raw = canonical.decode(data, max_size=MAX_MESSAGE_BYTES, max_depth=4)
    except CryptoError as exc:
        raise MalformedMessage(f"not canonical CBOR: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("v") != VERSION:
        raise MalformedMessage("a message is a map with v = 1")
    kind = raw.get("t")
    if kind == "sum":
        return _summary(raw)
    if kind == "ids":
        return _ids(raw)
    if kind == "recs":
        return _records(raw)
    raise MalformedMessage(f"unknown message type {kind!r}")


def _fields(raw: dict[str, Any], names: set[str]) -> None:
    if set(raw) != names | {"t", "v"}:
        raise MalformedMessage(f"{raw['t']}: expected fields {sorted(names)}")


def _nat(value: Any, high: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise MalformedMessage(f"{what} must be an integer in 0..{high}")
    return value


def _hash(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != _HASH:
        raise MalformedMessage(f"{what} must be a 32-byte hash")
    return value


def _summary(raw: dict[str, Any]) -> Summary:
    _fields(raw, {"root", "n", "bits", "fp", "head", "digest"})
    bits = _nat(raw["bits"], MAX_BITS, "sum.bits")
    fingerprints = raw["fp"]
    if not isinstance(fingerprints, bytes) or len(fingerprints) != FINGERPRINT_BYTES << bits:
        raise MalformedMessage("sum.fp must hold one 8-byte fingerprint per bucket")
    digest = raw["digest"]
    if digest is not None and (not isinstance(digest, str) or len(digest) != 2 * _HASH):
        raise MalformedMessage("sum.digest must be a hex sha256 or null")
    return Summary(
        _hash(raw["root"], "sum.root"),
        _nat(raw["n"], 2**63, "sum.n"),
        bits,
        fingerprints,
        _hash(raw["head"], "sum.head"),
        digest,
    )


def _ids(raw: dict[str, Any]) -> Ids:
    _fields(raw, {"bits", "b", "ids"})
    bits = _nat(raw["bits"], MAX_BITS, "ids.bits")
    buckets, ids = raw["b"], raw["ids"]
    if not isinstance(buckets, list) or not isinstance(ids, list) or len(ids) > MAX_IDS:
        raise MalformedMessage(f"ids.b and ids.ids must be lists (at most {MAX_IDS} ids)")
    return Ids(
        bits,
        tuple(_nat(b, (1 << bits) - 1, "ids.b[]") for b in buckets),
        tuple(_hash(i, "ids.ids[]") for i in ids),
    )


def _records(raw: dict[str, Any]) -> Records:
    _fields(raw, {"recs"})
    records = raw["recs"]
    if not isinstance(records, list) or not 0 < len(records) <= MAX_RECORDS:
        raise MalformedMessage(f"recs.recs must list 1..{MAX_RECORDS} records")
    if not all(isinstance(r, bytes) for r in records):
        raise MalformedMessage("recs.recs must hold record bytes")
    return Records(tuple(records))


def chunked_records(records: list[bytes]) -> list[bytes]:
    """``Records`` messages holding ``records``, each under the size limit."""
    messages: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for record in records:
        if batch and (size + len(record) > MAX_MESSAGE_BYTES // 2 or len(batch) >= MAX_RECORDS):
            messages.append(encode(Records(tuple(batch))))
            batch, size = [], 0
        batch.append(record)
        size += len(record) + 8
    if batch:
        messages.append(encode(Records(tuple(batch))))
    return messages


def chunked_ids(bits: int, buckets: tuple[int, ...], ids: list[bytes]) -> list[bytes]:
    """``Ids`` messages answering a summary. The buckets travel with the first chunk only, so
    the receiver pushes once; past ``MAX_IDS`` it may push a few records the sender has."""
    chunks = [ids[k : k + MAX_IDS] for k in range(0, len(ids), MAX_IDS)] or [[]]
    return [
        encode(Ids(bits, buckets if k == 0 else (), tuple(chunk))) for k, chunk in enumerate(chunks)
    ]
