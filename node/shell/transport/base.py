"""The ``Transport`` interface, and the behaviour both implementations share.

A backend (libp2p or in-memory) supplies: running, dialling, disconnecting and raw streams
(``_open_stream``). Everything that decides what bytes mean lives here and in
``wire``, so both backends enforce the same limits, count the same things, and treat a
peer's garbage the same way: count it, log it, disconnect the peer, keep running.
"""

from __future__ import annotations

import logging
import math
import secrets
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import fields
from typing import Any

import trio

import node.shell.transport.wire as wire
from node.errors import (
    BlobMismatch,
    ConnectionLost,
    NodeError,
    OversizedFrame,
    PayloadTooLarge,
    PeerTimeout,
    RemoteProtocolError,
    TransportClosed,
    TransportError,
    TruncatedFrame,
)
from node.shell.transport.peerid import addr_peer, peer_id_from_seed
from node.shell.transport.ratelimit import TokenBucket
from node.shell.transport.types import (
    BlobProvider,
    BlobSink,
    Event,
    LinkDown,
    LinkUp,
    PeerId,
    RequestHandler,
    TransportConfig,
    TransportStatistics,
)

log = logging.getLogger("node.shell.transport")


class Transport(ABC):
    """One node's view of the network. Start with ``await nursery.start(t.run)``; stop
    with ``t.stop()`` (graceful: returns at once, ``run`` returns when all is closed).

    ``LinkUp`` and ``LinkDown`` arrive on ``events``; requests and blob fetches go to the
    handlers registered with ``set_request_handler`` / ``set_blob_provider``.
    """

    def __init__(self, seed: bytes, config: TransportConfig | None = None) -> None:
        self.config = config or TransportConfig()
        self.peer_id: PeerId = peer_id_from_seed(seed)
        self._seed = seed
        # Unbounded so that link notifications never block the network path; each one is
        # a connection made or lost, which costs the peer a handshake.
        self._event_tx, self.events = trio.open_memory_channel[Event](math.inf)
        self._request_handler: RequestHandler | None = None
        self._blob_provider: BlobProvider | None = None
        self._peers: dict[PeerId, trio.Event] = {}  # connected peer -> set on disconnect
        self._buckets: dict[PeerId, TokenBucket] = {}
        self._counts: Counter[str] = Counter()  # the int fields of TransportStatistics
        self._counted = trio.Event()  # set (and replaced) whenever a counter moves
        self._garbage: Counter[PeerId] = Counter()
        self._inbound: Counter[PeerId] = Counter()  # streams being served, per peer
        self._banned: dict[PeerId, float] = {}  # garbage senders -> trio time of release
        self._is_member: Callable[[PeerId], bool] = lambda peer: True
        self._running = False

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<{type(self).__name__} {self.peer_id[-8:]} {state} peers={len(self._peers)}>"

    # -- backend hooks -----------------------------------------------------------------

    @abstractmethod
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, call ``task_status.started()``, serve until ``stop()``, close cleanly."""

    @abstractmethod
    def stop(self) -> None:
        """Ask ``run`` to close every connection and return. Idempotent."""

    @property
    @abstractmethod
    def listen_addrs(self) -> tuple[str, ...]:
        """Dialable addresses, each ending in ``/p2p/<peer id>``."""

    @abstractmethod
    async def connect(self, addr: str) -> PeerId:
        """Dial ``addr`` (no-op if already connected); raises ``PeerUnreachable``."""

    @abstractmethod
    async def disconnect(self, peer: PeerId) -> None:
        """Close the connection to ``peer`` if there is one."""

    @abstractmethod
    def peer_addrs(self, peer: PeerId) -> tuple[str, ...]:
        """Addresses we know for ``peer`` (each ending in ``/p2p/<id>``), for persisting
        and redialling; empty if none are known."""

    @abstractmethod
    async def _open_stream(self, peer: PeerId, protocol: str) -> wire.ByteStream: ...

    # -- public API shared by both backends --------------------------------------------

    def peers(self) -> frozenset[PeerId]:
        return frozenset(self._peers)

    def set_request_handler(self, handler: RequestHandler) -> None:
        self._request_handler = handler

    def set_blob_provider(self, provider: BlobProvider) -> None:
        self._blob_provider = provider

    def set_member_filter(self, is_member: Callable[[PeerId], bool]) -> None:
        """The peers that may use peer routing through us (learn the addresses of the
        peers we know) and that we tell others about: the network's members. Every peer
        passes until this is set."""
        self._is_member = is_member

    def link_addrs(self, peer: PeerId) -> tuple[str, ...]:
        """Where our live connections to ``peer`` go (a relayed one contains
        ``/p2p-circuit``); what we know of it when the backend cannot tell."""
        return self.peer_addrs(peer) if peer in self._peers else ()

    async def find_peer(self, peer: PeerId) -> tuple[str, ...]:
        """Dialable addresses of ``peer`` (each ending in ``/p2p/<id>``): those we know.
        A backend with peer routing (libp2p's Kademlia DHT) also asks the network.
        Never raises for what the network answers; empty when nothing is known."""
        return self.peer_addrs(peer)

    async def request(self, peer: PeerId, payload: bytes, *, max_response: int) -> bytes:
        """Send one request frame, return the response body (at most ``max_response``).

        Bounded by ``config.request_timeout`` (``PeerTimeout``); wrap in
        ``trio.fail_after`` for a shorter deadline."""
        self._check_running()
        if max_response < 0:
            raise ValueError("max_response must be non-negative")
        if len(payload) > self.config.max_request:
            raise PayloadTooLarge(f"request of {len(payload)} bytes > {self.config.max_request}")
        idle = self.config.idle_timeout
        try:
            with trio.fail_after(self.config.request_timeout):
                async with self._client_stream(peer, wire.REQUEST_PROTOCOL) as stream:
                    await wire.send_request(stream, payload, max_response)
                    body = await wire.read_response(stream, max_response, idle)
                    await wire.expect_eof(stream, idle)
        except trio.TooSlowError as exc:
            self._count("timeouts")
            raise PeerTimeout(f"no response from {peer} in time") from exc
        self._count("requests_sent")
        return body

    async def fetch_blob(self, peer: PeerId, sha256: bytes, *, size: int, sink: BlobSink) -> None:
        """Stream the blob into ``sink``, verifying size and sha256 as it arrives.

        On any error the sink holds unverified bytes: the caller discards them."""
        self._check_running()
        if len(sha256) != 32 or size < 0:
            raise ValueError("sha256 is 32 raw bytes and size is non-negative")
        cfg = self.config
        async with self._client_stream(peer, wire.BLOB_PROTOCOL) as stream:
            await wire.send_blob_request(stream, sha256, size)
            await wire.receive_blob(stream, sha256, size, sink, cfg.chunk_size, cfg.idle_timeout)
        self._count("blobs_fetched")
        self._count("blob_bytes_fetched", size)

    async def ping(self, peer: PeerId) -> float:
        """One ``/ipfs/ping/1.0.0`` round trip to ``peer``: the seconds it took.

        Bounded by ``config.request_timeout`` (``PeerTimeout``; wrap in ``trio.fail_after``
        for a shorter deadline); a reset or a cut-short echo fails the ping only, an echo of
        other bytes is garbage."""
        self._check_running()
        payload = secrets.token_bytes(wire.PING_LENGTH)
        try:
            with trio.fail_after(self.config.request_timeout):
                async with self._client_stream(peer, wire.PING_PROTOCOL) as stream:
                    return await wire.ping(stream, payload, self.config.idle_timeout)
        except trio.TooSlowError as exc:
            self._count("timeouts")
            raise PeerTimeout(f"no ping answer from {peer} in time") from exc

    def statistics(self) -> TransportStatistics:
        """A snapshot of the counters, frame-level faults included (``TransportStatistics``
        says what moves each one); the same for every backend."""
        c = self._counts
        return TransportStatistics(
            peer_id=self.peer_id,
            peers=len(self._peers),
            garbage_by_peer=dict(self._garbage),
            **{name: c[name] for name in _COUNTERS},
        )

    # -- shared machinery for backends -------------------------------------------------

    def _check_running(self) -> None:
        if not self._running:
            raise TransportClosed(f"{self!r} is not running")

    def _client_stream(self, peer: PeerId, protocol: str) -> _ClientStream:
        return _ClientStream(self, peer, protocol)

    def _count(self, name: str, n: int = 1) -> None:
        """Move one counter of ``statistics()`` (a name from ``_COUNTERS``)."""
        assert name in _COUNTERS, name
        self._counts[name] += n
        self._counted.set()
        self._counted = trio.Event()

    async def _on_garbage(self, peer: PeerId, exc: RemoteProtocolError) -> None:
        """A peer broke the protocol: count, log, and drop the connection. A stream cut
        mid-frame is not that: a peer that restarts, or resets a stream it has no slot for,
        does exactly this; it is counted and the exchange fails, nothing more."""
        if isinstance(exc, TruncatedFrame):
            self._count("truncated_frames")
            log.info("stream from %s cut short: %s", peer, exc)
            return
        self._count("remote_errors")
        self._count(_garbage_kind(exc))
        self._garbage[peer] += 1
        self._banned[peer] = trio.current_time() + self.config.ban_seconds
        self._count("bans")
        log.warning("disconnecting %s: %s", peer, exc)
        await self.disconnect(peer)

    def is_banned(self, peer: PeerId) -> bool:
        """True while ``peer`` is shut out for sending garbage (``config.ban_seconds``)."""
        until = self._banned.get(peer)
        if until is not None and trio.current_time() >= until:
            del self._banned[peer]
            until = None
        return until is not None

    def _peer_up(self, peer: PeerId) -> None:
        if peer not in self._peers:
            self._peers[peer] = trio.Event()
            self._event_tx.send_nowait(LinkUp(peer))

    def _peer_down(self, peer: PeerId) -> None:
        gone = self._peers.pop(peer, None)
        if gone is not None:
            gone.set()
            self._event_tx.send_nowait(LinkDown(peer))

    async def _serve_stream(self, peer: PeerId, protocol: str, stream: wire.ByteStream) -> None:
        """Answer one inbound stream. Never raises for anything the peer did."""
        if self.is_banned(peer):
            self._count("banned_streams")  # its connection is going, or about to
            await stream.reset()
            return
        if self._inbound[peer] >= self.config.max_inbound_streams_per_peer:
            self._count("refused_streams")  # one peer must not tie up every task
            await stream.reset()
            return
        self._inbound[peer] += 1
        try:
            await self._answer(peer, protocol, stream)
        finally:
            self._inbound[peer] -= 1
            if not self._inbound[peer]:
                del self._inbound[peer]

    async def _answer(self, peer: PeerId, protocol: str, stream: wire.ByteStream) -> None:
        try:
            if protocol == wire.REQUEST_PROTOCOL:
                await self._serve_request(peer, stream)
            elif protocol == wire.BLOB_PROTOCOL:
                await self._serve_blob(peer, stream)
            elif protocol == wire.PING_PROTOCOL:  # the twin's; libp2p's host answers its own
                await wire.serve_ping(stream, self.config.idle_timeout)
            await stream.close()
        except RemoteProtocolError as exc:
            await stream.reset()
            await self._on_garbage(peer, exc)
        except (ConnectionLost, PeerTimeout) as exc:
            self._count("resets" if isinstance(exc, ConnectionLost) else "timeouts")
            log.info("stream %s from %s aborted: %s", protocol, peer, exc)
            await stream.reset()

    async def _serve_request(self, peer: PeerId, stream: wire.ByteStream) -> None:
        idle = self.config.idle_timeout
        payload, max_response = await wire.read_request(stream, self.config.max_request, idle)
        if self._request_handler is None:
            await wire.send_refusal(stream, wire.REFUSED, "no request handler")
            return
        try:
            body = await self._request_handler(peer, payload)
        except NodeError as exc:
            await wire.send_refusal(stream, wire.REFUSED, str(exc))
            return
        except Exception:
            # A server boundary: one bad request must not take the node down.
            log.exception("request handler failed on a request from %s", peer)
            self._count("handler_errors")
            await wire.send_refusal(stream, wire.REFUSED, "internal error")
            return
        if len(body) > max_response:
            await wire.send_refusal(stream, wire.TOO_LARGE, f"response is {len(body)} bytes")
            return
        await wire.send_response(stream, wire.OK, body)
        self._count("requests_served")

    async def _serve_blob(self, peer: PeerId, stream: wire.ByteStream) -> None:
        sha256, size = await wire.read_blob_request(stream, self.config.idle_timeout)
        if not self._take_serve_token(peer):
            self._count("rate_limited")
            await wire.send_blob_refusal(stream, wire.RATE_LIMITED, "too many fetches")
            return
        path = self._blob_provider(sha256) if self._blob_provider else None
        if path is None or not path.is_file() or path.stat().st_size != size:
            await wire.send_blob_refusal(stream, wire.NOT_FOUND, sha256.hex())
            return
        await wire.send_blob_head(stream, size)
        # Local disk reads of one chunk are short; a worker thread per chunk would cost
        # more than it saves and would outlive the stream on cancellation.
        with path.open("rb") as f:
            while chunk := f.read(self.config.chunk_size):
                await stream.write(chunk)
        await stream.close_write()
        self._count("blobs_served")
        self._count("blob_bytes_served", size)

    def _take_serve_token(self, peer: PeerId) -> bool:
        now = trio.current_time()
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = TokenBucket(self.config.serve_rate, self.config.serve_burst, now)
            self._buckets[peer] = bucket
        return bucket.try_take(now)

    async def _keep_connected(
        self, addr: str, then: Callable[[PeerId], Awaitable[None]] | None = None
    ) -> None:
        """Dial a bootstrap address, and redial with exponential backoff whenever the
        connection is lost or the dial fails; ``then(peer)`` runs after each connection
        (a relay reservation lives only as long as the connection it was made on)."""
        peer = addr_peer(addr)
        delay = self.config.backoff_min
        while True:
            if peer not in self._peers:
                try:
                    await self.connect(addr)
                except TransportError as exc:
                    log.info("bootstrap %s unreachable (%s); retry in %.1f s", addr, exc, delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, self.config.backoff_max)
                    continue
            delay = self.config.backoff_min
            gone = self._peers.get(peer)
            if gone is not None and then is not None:
                await then(peer)
            if gone is not None:
                await gone.wait()
            # A peer that drops us on purpose should not be hammered by instant redials.
            await trio.sleep(self.config.backoff_min)


# Every int counter of the statistics (everything but its identity fields and the map).
_COUNTERS = frozenset(
    f.name
    for f in fields(TransportStatistics)
    if f.name not in ("peer_id", "peers", "garbage_by_peer")
)


def _garbage_kind(exc: RemoteProtocolError) -> str:
    """The counter for one protocol violation, by its type (never by its message)."""
    if isinstance(exc, TruncatedFrame):
        return "truncated_frames"
    if isinstance(exc, OversizedFrame):
        return "oversized_frames"
    if isinstance(exc, BlobMismatch):
        return "blob_mismatches"
    return "malformed_frames"


class _ClientStream:
    """Open a stream for one exchange; reset it on any error, count the peer's garbage."""

    def __init__(self, transport: Transport, peer: PeerId, protocol: str) -> None:
        self._transport = transport
        self._peer = peer
        self._protocol = protocol
        self._stream: wire.ByteStream | None = None

    async def __aenter__(self) -> wire.ByteStream:
        try:
            self._stream = await self._transport._open_stream(self._peer, self._protocol)
        except ConnectionLost:
            self._transport._count("resets")  # reset while the protocol was negotiated
            raise
        return self._stream

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: Any, tb: Any) -> None:
        assert self._stream is not None
        if exc_type is None:
            await self._stream.close()
            return
        await self._stream.reset()
        if isinstance(exc, RemoteProtocolError):
            await self._transport._on_garbage(self._peer, exc)
        elif isinstance(exc, ConnectionLost):
            self._transport._count("resets")
        elif isinstance(exc, PeerTimeout):
            self._transport._count("timeouts")  # idle_timeout; request_timeout: request()
