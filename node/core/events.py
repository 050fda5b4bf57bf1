"""The replication core's vocabulary: the events it takes, the actions it returns, its
configuration and the frozen reports its queries give. The rules that connect them are in
``node.core.protocol``; this module only holds the types, which every module of the core shares.

Events (what the shell tells ``Core.handle``)::

    PeerConnected(peer)             a connection is up; the core starts anti-entropy with it
    PeerDisconnected(peer)          it is gone; fetches from it move to other holders
    MessageReceived(peer, data)     bytes of one ``node.core.messages`` message from that peer
    BlobReceived(peer, sha256, result)  the answer to a FetchBlob: VERIFIED (stored, hash
                                    checked), UNAVAILABLE (refused / timed out), CORRUPT
                                    (bytes that do not hash to what was asked: the peer's fault)
    LocalRecord(data, blobs_held, restored, invalid)  a record made here (own commit, a
                                    rebase, the CLI) or loaded from the store at start (with
                                    the verdict the store kept, if it was judged invalid)
    Judged(id, verdict, reason, missing)  the answer to a Validate: VALID, INVALID (the
                                    validity function refused it) or MISSING (some held blob
                                    was not the commit's bytes: dropped, fetch it again)
    BlobLost(sha256)                a held blob was found damaged or gone (when served or
                                    folded) and dropped: fetch it again from the holders
    Timer()                         the time asked for by the last SetTimer has come
    MergeDone(item, digest)         the shell folded the order named ``item`` into ``digest``

Actions (what ``Core.handle`` returns, for the shell to carry out in order)::

    Send(peer, data)                one message to one peer
    Broadcast(data)                 the same message to every connected peer (not a flood)
    FetchBlob(peer, sha256, size, kind)  pull a blob over the request/response stream; answer
                                    with BlobReceived (the shell times out slow peers itself or
                                    lets the core's deadline do it)
    StoreRecord(id, data)           persist a record that is valid and complete (``id`` is the
                                    content id: sha256 of ``data``)
    Validate(id, commit)            judge a commit whose blobs are all held, with the one
                                    validity function (node.forge.validate); answer with Judged
    StoreInvalid(id, data, reason)  keep a commit judged invalid, as evidence
    Merge(order)                    fold ``order.commits`` and answer MergeDone(order.head, ...)
    SetTimer(at)                    deliver Timer() at or after ``at``; replaces any earlier one
    Disconnect(peer, reason)        the peer broke the protocol; close it
    Rebase(commit_id, parent)       an own commit is an orphan: re-search it against ``parent``
                                    (the tip) and answer with LocalRecord of a commit that
                                    ``supersedes`` it
    Rejected(record_id, reason)     a local record was refused (invalid or a stale rebase)

The core's sub-machines (``node.core.fetch``, ``node.core.rebase``) also return ``Wake(at)``
steps, which never reach the shell: the core turns them into ``SetTimer``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from crypto.records import Commit
from node.core.order import Order

# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerConnected:
    peer: str


@dataclass(frozen=True)
class PeerDisconnected:
    peer: str


@dataclass(frozen=True)
class MessageReceived:
    peer: str
    data: bytes


class BlobResult(enum.Enum):
    VERIFIED = "verified"
    UNAVAILABLE = "unavailable"
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class BlobReceived:
    peer: str
    sha256: bytes
    result: BlobResult


@dataclass(frozen=True)
class LocalRecord:
    data: bytes
    blobs_held: bool = True
    restored: bool = False
    invalid: str | None = None  # restored: the verdict the store kept for it


class Verdict(enum.Enum):
    VALID = "valid"
    INVALID = "invalid"  # the commit fails the validity function: everywhere alike
    MISSING = "missing"  # some blob bytes were not the commit's (our store's fault): refetch


@dataclass(frozen=True)
class Judged:
    record_id: bytes
    verdict: Verdict
    reason: str = ""
    missing: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class BlobLost:
    """A held blob turned out damaged or gone (the shell dropped it): fetch it again."""

    sha256: bytes


@dataclass(frozen=True)
class Timer:
    pass


@dataclass(frozen=True)
class MergeDone:
    item: bytes
    digest: str


Event: TypeAlias = (
    PeerConnected
    | PeerDisconnected
    | MessageReceived
    | BlobReceived
    | LocalRecord
    | Timer
    | MergeDone
    | Judged
    | BlobLost
)

# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    peer: str
    data: bytes


@dataclass(frozen=True)
class Broadcast:
    data: bytes


@dataclass(frozen=True)
class FetchBlob:
    peer: str
    sha256: bytes
    size: int
    kind: str


@dataclass(frozen=True)
class StoreRecord:
    id: bytes
    data: bytes


@dataclass(frozen=True)
class Validate:
    """Run the validity function on this commit and its (held) blobs; answer ``Judged``."""

    record_id: bytes
    commit: Commit


@dataclass(frozen=True)
class StoreInvalid:
    """Keep an invalid commit as evidence (so it is never fetched or judged again)."""

    id: bytes
    data: bytes
    reason: str


@dataclass(frozen=True)
class Merge:
    order: Order


@dataclass(frozen=True)
class SetTimer:
    at: float


@dataclass(frozen=True)
class Disconnect:
    peer: str
    reason: str


@dataclass(frozen=True)
class Rebase:
    commit_id: bytes
    parent: bytes


@dataclass(frozen=True)
class Rejected:
    record_id: bytes
    reason: str


Action: TypeAlias = (
    Send
    | Broadcast
    | FetchBlob
    | StoreRecord
    | Validate
    | StoreInvalid
    | Merge
    | SetTimer
    | Disconnect
    | Rebase
    | Rejected
)

# --- between the core and its sub-machines ----------------------------------------------


@dataclass(frozen=True)
class Wake:
    """A sub-machine needs a ``Timer`` by ``at`` (a deadline, a retry, a rebase comes due);
    the core sends ``SetTimer`` if that is sooner than the one it asked for."""

    at: float


# --- configuration and reports ------------------------------------------------------------


@dataclass(frozen=True)
class CoreConfig:
    """The replication core's knobs (``node.shell.home.Config`` is the node's own file)."""

    sync_interval: float = 30.0
    fetch_timeout: float = 20.0  # plus size / fetch_rate
    fetch_rate: float = 256 * 1024.0  # bytes/s below which a transfer counts as stalled
    max_fetches_per_peer: int = 4  # in flight to one peer; the rest wait in a queue
    fetch_retry: float = 2.0  # a refused / reset fetch with no other holder: first retry
    # after this, then twice as long each time, up to the sync interval
    rebase_delay: float = 5.0
    rebase_retry: float = 300.0
    max_blob_bytes: int | None = None  # None: the genesis spec's limit (or 512 MiB)
    errors_kept: int = 32
    strangers: str = "read"  # peers the roster never named: "read" | "none" | "trust"
    unknown_kept: int = 4096  # ids of records by unknown keys remembered (not decoded again)

    def __post_init__(self) -> None:
        if self.strangers not in ("read", "none", "trust"):
            raise ValueError(f"strangers must be read, none or trust, got {self.strangers!r}")


@dataclass(frozen=True)
class PeerReport:
    """What a peer last told us about itself (its summary)."""

    root: bytes
    count: int
    head: bytes
    digest: str | None
    at: float


@dataclass(frozen=True)
class Convergence:
    peers: int
    reporting: int
    same_set: int
    same_composite: int


@dataclass(frozen=True)
class Statistics:
    complete: int
    pending: int
    validating: int
    invalid: int
    rejected: int
    ignored: int
    duplicates: int
    garbage: int
    strangers: int
    blobs: int
    fetching: int
    queued: int
    peers: int
