"""Errors raised by the node's I/O shells (transport and store).

Who is at fault decides the branch, as in h11: ``Local*`` means we misused the API,
``Remote*`` means a peer sent something the protocol does not allow. A remote error is
counted and logged by the transport and the peer is disconnected; it never crashes the node.

    NodeError
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
    │   └── RemoteProtocolError          the peer broke the protocol (garbage)
    │       ├── OversizedFrame           ... a frame longer than the limit for it
    │       ├── TruncatedFrame           ... a stream ended mid-frame (never blamed: see class)
    │       └── BlobMismatch             ... the bytes do not match the announced size/hash
    └── StoreError                       anything on disk
        ├── StoreLocked                  another process holds the store
        ├── CorruptBlob                  bytes do not hash to the expected sha256
        └── StoreCorrupt                 the index is unreadable / inconsistent beyond repair
"""

from __future__ import annotations


class NodeError(Exception):
    """Base of every error raised by node/ I/O code."""


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
