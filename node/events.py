"""The replication core's vocabulary: the events it takes, the actions it returns, its
configuration and the frozen reports its queries give. See ``node.protocol`` for what each one
means; this module only holds the types so the core stays one readable file."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

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
    INVALID = "invalid"


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
    Send | Broadcast | FetchBlob | StoreRecord | Merge | SetTimer | Disconnect | Rebase | Rejected
)

# --- configuration and reports ------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    sync_interval: float = 30.0
    fetch_timeout: float = 20.0  # plus size / fetch_rate
    fetch_rate: float = 256 * 1024.0  # bytes/s below which a transfer counts as stalled
    rebase_delay: float = 5.0
    rebase_retry: float = 300.0
    max_blob_bytes: int | None = None  # None: the genesis spec's limit (or 512 MiB)
    errors_kept: int = 32


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
    rejected: int
    ignored: int
    duplicates: int
    garbage: int
    blobs: int
    fetching: int
    peers: int
