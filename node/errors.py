"""Every error node/ raises, in one tree.

A caller branches on the class, never on the message. Who is at fault decides the branch,
as in h11: ``Local*``/usage errors mean we (or the user) asked for something impossible,
``Remote*``/peer faults mean a peer sent something the protocol does not allow. A peer's fault
is counted and logged where it is caught and the peer is disconnected or its record refused; it
never crashes the node.

    NodeError
    ├── UsageError                       the command cannot run as asked (printed, no traceback)
    │   ├── HomeError                    a home that is missing, incomplete or misconfigured
    │   ├── ScenarioError                a simulation scenario that cannot run, naming the key
    │   └── DemoError                    the demo could not run (a node did not start, ...)
    ├── ControlError                     talking to a running node over its control socket
    │   ├── NodeNotRunning               nothing answers on the home's control socket
    │   ├── NodeRefused                  the node answered with a refusal (its reason)
    │   └── ControlProtocolError         the answer was not a control reply (closed, garbage)
    ├── MalformedMessage                 a peer's bytes are not a protocol message (the core's)
    ├── ForgeError                       a commit's content, judged by node/forge
    │   ├── InvalidCommit                content every node refuses alike (``kind``, ``reason``)
    │   ├── MissingBlobs                 the bytes given are not the commit's blobs (fetch again)
    │   └── FoldError                    folding admitted content failed (``commit_id``, cause)
    ├── TransportError                   anything on the wire
    │   ├── TransportClosed              the transport is not running (we closed it)
    │   ├── PayloadTooLarge              we tried to send more than the configured cap
    │   ├── PortInUse                    our listen port is taken by another process
    │   ├── PeerUnreachable              dial failed, or the peer is not connected
    │   ├── PeerTimeout                  the peer did not answer in time
    │   ├── ConnectionLost               the stream or connection broke mid-exchange
    │   ├── RemoteRefused                the peer answered with a well-formed refusal
    │   │   ├── BlobNotFound             ... it does not serve that blob
    │   │   └── RateLimited              ... we asked too often
    │   └── RemoteProtocolError          the peer broke the wire protocol (garbage)
    │       ├── OversizedFrame           ... a frame longer than the limit for it
    │       ├── TruncatedFrame           ... a stream ended mid-frame (never blamed: see class)
    │       └── BlobMismatch             ... the bytes do not match the announced size/hash
    └── StoreError                       anything on disk
        ├── StoreLocked                  another process holds the store
        ├── CorruptBlob                  bytes do not hash to the expected sha256
        └── StoreCorrupt                 the index is unreadable / inconsistent beyond repair

``crypto.errors.CryptoError`` (records, keys) and ``merge.errors.MergeError`` (tensors) are the
trees of the packages below; node/ lets them through with their own class, and keeps the cause
(``raise ... from exc``) where it translates one.
"""

from __future__ import annotations

from collections.abc import Sequence


class NodeError(Exception):
    """Base of every error raised by node/."""


class UsageError(NodeError):
    """A mistake in how a command was called or configured; printed without a traceback."""


class HomeError(UsageError):
    """A home directory that is missing, incomplete or already initialised."""


class ScenarioError(UsageError):
    """A scenario that cannot be run, naming the key."""


class DemoError(UsageError):
    """The demo could not run (a node did not start, did not converge, ...)."""


class ControlError(NodeError):
    """Base of errors talking to a running node over its control socket."""


class NodeNotRunning(ControlError):
    """No node answers on this home's control socket."""


class NodeRefused(ControlError):
    """The node answered and refused the request; the message is its reason."""


class ControlProtocolError(ControlError):
    """The node's answer was not a control reply (it closed the socket, or sent garbage)."""


class MalformedMessage(NodeError):
    """A peer's bytes are not a protocol message (the peer's fault, raised by the core)."""


class ForgeError(NodeError):
    """Base of errors about a commit's content and its fold (node/forge)."""


class InvalidCommit(ForgeError):
    """The commit is refused by every node alike. ``kind`` names the check that failed
    (``NonFiniteError``, ``ShapeError``, ``CoefficientBound``, ...)."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"{kind}: {reason}")


class MissingBlobs(ForgeError):
    """Bytes given for a blob are not the blob the commit names (a store or transfer fault,
    not the commit's): ``shas`` are the blobs to fetch again."""

    def __init__(self, shas: Sequence[bytes]) -> None:
        self.shas = tuple(shas)
        super().__init__(f"blobs {[s.hex()[:12] for s in self.shas]} are not what the commit names")


class FoldError(ForgeError):
    """Folding ``commit_id`` failed; the composite is the one before the update."""

    def __init__(self, commit_id: bytes, cause: BaseException) -> None:
        self.commit_id = commit_id
        self.cause = cause
        super().__init__(f"commit {commit_id.hex()[:12]}: {type(cause).__name__}: {cause}")


class TransportError(NodeError):
    """Base of transport errors."""


class TransportClosed(TransportError):
    """The transport is not running: it was never started or has been stopped."""


class PayloadTooLarge(TransportError):
    """We tried to send more than the configured cap (a local misuse, nothing was sent)."""


class PortInUse(TransportError):
    """The configured listen port is already bound by another process."""


class PeerUnreachable(TransportError):
    """The peer could not be dialled, or is not connected when it must be."""


class PeerTimeout(TransportError):
    """The peer did not answer within the deadline."""


class ConnectionLost(TransportError):
    """The stream or connection broke in the middle of an exchange (reset, peer gone)."""


class RemoteRefused(TransportError):
    """The peer answered with a well-formed refusal (not a protocol violation)."""


class BlobNotFound(RemoteRefused):
    """The peer does not serve the requested blob."""


class RateLimited(RemoteRefused):
    """The peer refused because we exceeded its per-peer serving rate."""


class RemoteProtocolError(TransportError):
    """The peer sent bytes the protocol does not allow (malformed or oversized frame...)."""


class OversizedFrame(RemoteProtocolError):
    """A peer announced a frame longer than the limit for it; none of it was read."""


class TruncatedFrame(RemoteProtocolError):
    """A stream ended in the middle of a frame (or a blob before its announced size). A
    peer that shuts down while sending, or resets a stream it has no slot for, does exactly
    this, so it is counted but neither disconnected nor banned: the exchange is retried."""


class BlobMismatch(RemoteProtocolError):
    """A fetched blob had more bytes than announced, fewer, or the wrong sha256."""


class StoreError(NodeError):
    """Base of store errors."""


class StoreLocked(StoreError):
    """Another process already holds this store (one node per home)."""


class CorruptBlob(StoreError):
    """Bytes do not hash to the sha256 they were stored or offered under."""


class StoreCorrupt(StoreError):
    """The index cannot be read or repaired."""
