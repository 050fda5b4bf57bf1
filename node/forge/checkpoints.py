"""Which folds of the order the composer keeps as checkpoints, and the store it keeps them in.

A checkpoint is the composite after the first ``k`` commits of the order, filed under

- its **prefix key** ``h_k`` (``h_0`` from the merge spec, ``h_k = sha256(h_{k-1} || id_k)``):
  one lookup tells whether it is the fold of a prefix of an order, whatever came before;
- its **digest** (``merge.digest.composite_digest``): the composer recomputes it on every load,
  so a damaged file is discarded, never trusted (``merge.checkpoint`` holds the bytes).

Checkpoints are local: a cache of the fold, never replicated, never part of any digest.

**Retention** (pure: ``plan``): positions are multiples of ``every``; for each level ``j`` the
two newest held positions that are multiples of ``every * 2^j`` are kept, so at most
``2 * (log2(N / every) + 1)`` remain, and for any change ``d`` commits below the newest one a
kept checkpoint lies less than ``2 * max(d, every)`` below it: the refold costs ``O(d)``.
A checkpoint is written only at a position of the *stable* prefix (the node's main chain:
orphans move as others arrive) and only when it will be retained. One that names another
prefix at a position the stable prefix covers is stale (a revoked commit, a switched chain) and
dropped; one beyond the current order is kept under the same rule, since the order may grow
back into it (the store's own commits, judged again after a restart).

The store behind it is a ``CheckpointStore``: ``MemoryCheckpoints`` here (tests, scripts), the
node's files in ``node.shell.checkpoint_files``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from merge.checkpoint import Chunk
from merge.spec import MergeSpec

__all__ = [
    "CHECKPOINT_EVERY",
    "CheckpointEntry",
    "CheckpointStore",
    "Chunk",
    "MemoryCheckpoints",
    "Plan",
    "common_prefix",
    "plan",
    "prefix_keys",
    "prefix_root",
    "retained",
]

CHECKPOINT_EVERY = 8
_ROOT_TAG = b"medforge-composer-prefix/1"


@dataclass(frozen=True, order=True)
class CheckpointEntry:
    """One checkpoint: the fold of the first ``position`` commits of the order named ``key``."""

    position: int
    key: bytes
    digest: str  # hex composite digest of its content

    def __repr__(self) -> str:
        return f"<checkpoint v{self.position} {self.key.hex()[:12]} {self.digest[:12]}>"


class CheckpointStore(Protocol):
    """Where checkpoints live. Only the composer calls it, from one thread at a time.

    ``open`` and ``write`` raise ``node.errors.StoreError`` when the medium fails; a write is
    all or nothing (a reader never sees half a checkpoint under its name)."""

    def entries(self) -> list[CheckpointEntry]: ...

    def open(self, entry: CheckpointEntry) -> BinaryIO: ...

    def write(self, entry: CheckpointEntry, data: Iterable[Chunk]) -> None: ...

    def drop(self, entry: CheckpointEntry) -> None: ...


class MemoryCheckpoints:
    """A ``CheckpointStore`` in a dict (``files``: what a test may damage)."""

    def __init__(self) -> None:
        self.files: dict[CheckpointEntry, bytes] = {}

    def entries(self) -> list[CheckpointEntry]:
        return sorted(self.files)

    def open(self, entry: CheckpointEntry) -> BinaryIO:
        return io.BytesIO(self.files[entry])

    def write(self, entry: CheckpointEntry, data: Iterable[Chunk]) -> None:
        self.files[entry] = b"".join(data)

    def drop(self, entry: CheckpointEntry) -> None:
        self.files.pop(entry, None)

    def __repr__(self) -> str:
        return f"<MemoryCheckpoints {[e.position for e in self.entries()]}>"


def prefix_root(spec: MergeSpec, base: str) -> bytes:
    """``h_0``: the empty order under this spec and base (a checkpoint folded under another
    spec, e.g. another compaction policy, never matches)."""
    spec_text = json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(_ROOT_TAG + spec_text.encode() + b"\0" + base.encode()).digest()


def prefix_keys(keys: Sequence[bytes], ids: Sequence[bytes], start: int) -> list[bytes]:
    """``[h_0, ..., h_n]`` of ``ids``, reusing ``keys[: start + 1]`` (those of a common prefix)."""
    out = list(keys[: start + 1])
    for commit_id in ids[start:]:
        out.append(hashlib.sha256(out[-1] + commit_id).digest())
    return out


def common_prefix(a: Sequence[bytes], b: Sequence[bytes]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def retained(positions: Iterable[int], every: int) -> set[int]:
    """Per level ``j``, the two largest of ``positions`` that are multiples of ``every * 2^j``."""
    held = sorted({p for p in positions if p > 0 and p % every == 0}, reverse=True)
    keep: set[int] = set()
    step = every
    while held and step <= held[0]:
        keep.update([p for p in held if p % step == 0][:2])
        step *= 2
    return keep


@dataclass(frozen=True)
class Plan:
    """What one fold does to the checkpoints: positions to write on its way, entries to drop
    once it succeeded."""

    writes: frozenset[int]
    drops: tuple[CheckpointEntry, ...]


def plan(
    entries: Sequence[CheckpointEntry], keys: Sequence[bytes], stable: int, start: int, every: int
) -> Plan:
    """The checkpoints of a fold of ``keys`` (the order's prefix keys) from ``start``, with
    ``stable`` leading commits eligible (see the module's retention rule)."""
    n = len(keys) - 1
    stable = min(stable, n)

    def on_order(e: CheckpointEntry) -> bool:
        return e.position <= n and keys[e.position] == e.key

    live = [e for e in entries if on_order(e) or e.position > stable]
    chosen: dict[int, CheckpointEntry] = {}  # one per position: this order's, else lowest key
    for e in sorted(live, key=lambda e: (e.position, not on_order(e), e.key)):
        chosen.setdefault(e.position, e)
    held = {p for p, e in chosen.items() if on_order(e)}
    wanted = {k for k in range(start + 1, stable + 1) if k % every == 0 and k not in held}
    keep = retained(set(chosen) | wanted, every)
    drops = tuple(e for e in entries if chosen.get(e.position) is not e or e.position not in keep)
    return Plan(frozenset(wanted & keep), drops)
