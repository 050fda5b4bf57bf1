"""Set summaries for anti-entropy: two nodes find the difference of their record sets in one
exchange of summaries and one of ids.

Rules:

- The **set root** names a set: ``sha256("medforge-set/1" || id_1 || ... || id_n)`` over the
  sorted 32-byte record ids. Equal roots mean equal sets (that is what peers send each other,
  together with their composite digest, to report convergence).
- A **summary** cuts the id space into ``2**bits`` buckets by the ids' leading bits and gives one
  8-byte fingerprint per bucket: the first 8 bytes of the sha256 of the bucket's sorted ids
  (eight zero bytes when empty). Ids are content hashes, so buckets fill evenly; ``bits`` is
  chosen from the sender's count so a bucket holds about ``BUCKET_TARGET`` ids.
- The receiver recomputes its own fingerprints at the sender's ``bits``; the buckets whose
  fingerprints differ are exactly where the sets differ (up to a 2**-64 collision), and the
  receiver answers with its ids in those buckets. The sender then pushes what the receiver
  lacks. A node that was offline for a month therefore catches up in one round trip plus the
  records, and a lost announcement is repaired by the next periodic exchange.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

ID_BYTES = 32
FINGERPRINT_BYTES = 8
BUCKET_TARGET = 16
MAX_BITS = 12
_EMPTY = bytes(FINGERPRINT_BYTES)
_ROOT_TAG = b"medforge-set/1"


def set_root(sorted_ids: Iterable[bytes]) -> bytes:
    return hashlib.sha256(_ROOT_TAG + b"".join(sorted_ids)).digest()


def bits_for(count: int) -> int:
    """Bucket bits so that a bucket holds about ``BUCKET_TARGET`` of ``count`` ids."""
    bits = 0
    while bits < MAX_BITS and count > BUCKET_TARGET << bits:
        bits += 1
    return bits


def bucket_bounds(bucket: int, bits: int) -> tuple[bytes, bytes | None]:
    """The id range ``[low, high)`` of a bucket (``high`` None: up to the end of the space)."""
    shift = 8 * ID_BYTES - bits
    low = (bucket << shift).to_bytes(ID_BYTES, "big")
    if bucket + 1 >= 1 << bits:
        return low, None
    return low, ((bucket + 1) << shift).to_bytes(ID_BYTES, "big")


def fingerprint(sorted_ids: Sequence[bytes]) -> bytes:
    if not sorted_ids:
        return _EMPTY
    return hashlib.sha256(b"".join(sorted_ids)).digest()[:FINGERPRINT_BYTES]


@dataclass(frozen=True)
class SetSummary:
    """What a node tells a peer about its set: root, size and per-bucket fingerprints."""

    root: bytes
    count: int
    bits: int
    fingerprints: bytes

    def differing(self, other: SetSummary) -> tuple[int, ...]:
        """Buckets whose fingerprints differ; both summaries must use the same ``bits``."""
        if other.bits != self.bits:
            raise ValueError("summaries with different bucket bits cannot be compared")
        size = FINGERPRINT_BYTES
        mine, theirs = self.fingerprints, other.fingerprints
        return tuple(
            b
            for b in range(1 << self.bits)
            if mine[b * size : (b + 1) * size] != theirs[b * size : (b + 1) * size]
        )


class IdSet:
    """A grow-only set of record ids, kept sorted, with its root and summaries cached."""

    def __init__(self, ids: Iterable[bytes] = ()) -> None:
        self._sorted: list[bytes] = sorted(set(ids))
        self._members = set(self._sorted)
        self._root: bytes | None = None
        self._summaries: dict[int, SetSummary] = {}

    def add(self, record_id: bytes) -> bool:
        """Add an id; False when it was already there."""
        if record_id in self._members:
            return False
        self._members.add(record_id)
        bisect.insort(self._sorted, record_id)
        self._root = None
        self._summaries.clear()
        return True

    def __contains__(self, record_id: object) -> bool:
        return record_id in self._members

    def __len__(self) -> int:
        return len(self._sorted)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._sorted)

    @property
    def root(self) -> bytes:
        if self._root is None:
            self._root = set_root(self._sorted)
        return self._root

    def summary(self, bits: int | None = None) -> SetSummary:
        bits = bits_for(len(self)) if bits is None else bits
        if bits not in self._summaries:
            prints = b"".join(fingerprint(self.in_bucket(b, bits)) for b in range(1 << bits))
            self._summaries[bits] = SetSummary(self.root, len(self), bits, prints)
        return self._summaries[bits]

    def in_bucket(self, bucket: int, bits: int) -> list[bytes]:
        low, high = bucket_bounds(bucket, bits)
        start = bisect.bisect_left(self._sorted, low)
        end = len(self._sorted) if high is None else bisect.bisect_left(self._sorted, high)
        return self._sorted[start:end]

    def in_buckets(self, buckets: Iterable[int], bits: int) -> list[bytes]:
        return [i for b in buckets for i in self.in_bucket(b, bits)]
