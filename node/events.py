"""The replication core's vocabulary: the events it takes, the actions it returns, its
configuration and the frozen reports its queries give. See ``node.protocol`` for what each one
means; this module only holds the types so the core stays one readable file."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from crypto.records import Commit
from node.order import Order

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

# --- configuration and reports ------------------------------------------------------------


@dataclass(frozen=True)
class Config:
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
