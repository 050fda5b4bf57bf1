"""Value types shared by every transport: link events, handlers, configuration, statistics.

Peer ids are libp2p peer id strings (base58 of the identity multihash of the Ed25519
public key) in both implementations, so the rest of the node never needs to know which
transport it runs on. Addresses are opaque strings that end in ``/p2p/<peer id>``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

PeerId = str

#: Handles one request from ``peer`` and returns the response bytes. Raising a
#: ``NodeError`` sends its message back as a refusal; other exceptions are logged
#: and answered with a generic refusal (a bug in one handler must not kill the node).
RequestHandler = Callable[[PeerId, bytes], Awaitable[bytes]]

#: Maps a sha256 (32 raw bytes) to the file that holds those bytes, or None.
BlobProvider = Callable[[bytes], Path | None]


class BlobSink(Protocol):
    """Where fetched chunks go: any binary file, ``io.BytesIO`` or a store blob writer."""

    def write(self, data: bytes, /) -> object: ...


# Named for the link, not the peer: ``node.core.events`` has ``PeerConnected`` and
# ``PeerDisconnected``, what the core is told once the shell has seen one of these.


@dataclass(frozen=True)
class LinkUp:
    """The first connection to ``peer`` is up (a second one to the same peer is not news)."""

    peer: PeerId


@dataclass(frozen=True)
class LinkDown:
    """The last connection to ``peer`` is gone."""

    peer: PeerId


Event = LinkUp | LinkDown


@dataclass(frozen=True)
class TransportConfig:
    """Limits and timings. Defaults suit a LAN-class deployment; tests shrink the timings."""

    listen_addrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    max_request: int = 1 << 20  # largest request frame we accept from a peer
    request_timeout: float = 30.0  # whole request/response round trip
    idle_timeout: float = 30.0  # longest silence inside one stream
    chunk_size: int = 256 * 1024
    serve_rate: float = 50.0  # blob fetches a peer may start per second (token bucket)
    serve_burst: int = 64  # a member catching up asks for thousands; the stream cap bounds load
    max_inbound_streams_per_peer: int = 16  # concurrent requests/fetches we serve a peer
    ban_seconds: float = 300.0  # a peer that sent garbage is refused for this long
    backoff_min: float = 0.5  # bootstrap redial backoff
    backoff_max: float = 30.0
    enable_dht: bool = False
    announce_addrs: tuple[str, ...] = ()  # advertised before the listen addresses
    relays: tuple[str, ...] = ()  # relays to hold a reservation at (a member behind NAT)
    relay_service: bool = False  # relay for members behind NAT (a member with a public address)
    relay_max_bytes: int = 1 << 30  # per relayed connection, both directions together
    relay_max_seconds: int = 3600  # lifetime of one relayed connection
    relay_max_reservations: int = 128  # members that may hold a slot at once
    hole_punching: bool = True  # DCUtR: upgrade relayed connections to direct ones


#: The counters of requests and blob transfers, bytes included (status and metrics).
TRAFFIC_COUNTERS = (
    "requests_sent",
    "requests_served",
    "blobs_fetched",
    "blobs_served",
    "blob_bytes_fetched",
    "blob_bytes_served",
)
#: The counters of frame-level faults and of what a transport refuses on its own.
FAULT_COUNTERS = (
    "remote_errors",
    "oversized_frames",
    "truncated_frames",
    "malformed_frames",
    "blob_mismatches",
    "resets",
    "timeouts",
    "refused_streams",
    "rate_limited",
    "bans",
    "banned_streams",
    "banned_connections",
)


@dataclass(frozen=True)
class TransportStatistics:
    """A snapshot; counters only grow.

    Frame-level faults are counted where the transport detects them, on whichever side
    (client or server) saw them. Each of ``oversized_frames``, ``malformed_frames`` and
    ``blob_mismatches`` is a protocol violation: it also counts in ``remote_errors`` and
    ``garbage_by_peer``, and the peer is disconnected and banned (``bans``). A truncated
    frame is not a violation (restarting peers and reset streams do it): counted only.
    """

    peer_id: PeerId
    peers: int
    requests_sent: int
    requests_served: int
    blobs_fetched: int
    blobs_served: int
    blob_bytes_fetched: int
    blob_bytes_served: int
    handler_errors: int
    # protocol violations by peers; each one disconnects the peer
    remote_errors: int  # all of them: oversized + malformed + blob mismatches
    oversized_frames: int  # a frame announced a length over our limit (never read)
    truncated_frames: int  # the stream ended mid-frame (counted only: never blamed)
    malformed_frames: int  # unknown status byte, bytes after the end of a frame
    blob_mismatches: int  # a blob of the wrong size or sha256
    # exchanges aborted without garbage (the peer stays connected)
    resets: int  # the stream was reset or the connection broke mid-exchange
    timeouts: int  # the peer was silent past idle_timeout, or missed request_timeout
    # what we refuse or cut off on our own
    refused_streams: int  # inbound streams reset unread: the peer had too many open
    rate_limited: int  # blob fetches refused by the per-peer token bucket
    bans: int  # peers banned for ban_seconds after a protocol violation
    banned_streams: int  # inbound streams from a banned peer, reset unread
    banned_connections: int  # connections from a banned peer, refused or dropped
    garbage_by_peer: Mapping[PeerId, int] = field(default_factory=dict)
