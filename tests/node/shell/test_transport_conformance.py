"""One suite, two transports: whatever the node relies on must hold for libp2p and the twin.

Actors: alice and bob are honest, mallory sends garbage. Nothing here sleeps
to wait for a condition: every wait is on an event, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from node.errors import (
    BlobMismatch,
    BlobNotFound,
    ConnectionLost,
    NodeError,
    OversizedFrame,
    PayloadTooLarge,
    PeerTimeout,
    PeerUnreachable,
    RateLimited,
    RemoteProtocolError,
    RemoteRefused,
    TransportClosed,
    TransportError,
    TruncatedFrame,
)
from node.shell.transport import (
    Event,
    LinkDown,
    LinkUp,
    MemoryNetwork,
    MemoryTransport,
    Transport,
    TransportConfig,
    peer_id_from_seed,
    wire,
)
from node.shell.transport.types import FAULT_COUNTERS

WAIT = 10.0  # generous bound on any single wait; the happy path takes milliseconds

Factory = Callable[..., Awaitable[Transport]]


def seed_of(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


@pytest.fixture(params=["memory", "libp2p"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    network = MemoryNetwork()
    started: list[Transport] = []

    async def factory(name: str, start: bool = True, **overrides: Any) -> Transport:
        config = TransportConfig(**{"idle_timeout": 5.0, "backoff_min": 0.05, **overrides})
        transport: Transport
        if request.param == "memory":
            transport = MemoryTransport(network, seed_of(name), config)
        else:
            from node.shell.transport.libp2p import Libp2pTransport

            transport = Libp2pTransport(seed_of(name), config)
        if start:
            await nursery.start(transport.run)
            started.append(transport)
        return transport

    async with trio.open_nursery() as nursery:
        yield factory
        for transport in started:
            transport.stop()  # graceful; the nursery waits for every run() to return


async def next_event(t: Transport, kind: type[Event], peer: str | None = None) -> Any:
    """The next event of ``kind`` (about ``peer``), skipping others."""
    with trio.fail_after(WAIT):
        async for event in t.events:
            if isinstance(event, kind) and peer in (None, event.peer):
                return event
    raise AssertionError("event channel closed")


async def connected(a: Transport, b: Transport) -> None:
    assert await a.connect(b.listen_addrs[0]) == b.peer_id
    await next_event(b, LinkUp, a.peer_id)
    await next_event(a, LinkUp, b.peer_id)


FAULTS = FAULT_COUNTERS  # every fault counter a transport reports


def faults(t: Transport) -> dict[str, int]:
    """The fault counters of ``t`` that are not zero."""
    stats = t.statistics()
    return {name: getattr(stats, name) for name in FAULTS if getattr(stats, name)}


async def counted(t: Transport, **expected: int) -> None:
    """Wait until each named counter of ``t`` has reached its value (the transport
    sets ``_counted`` whenever a counter moves), then check it has not gone past it."""
    with trio.fail_after(WAIT):
        while any(getattr(t.statistics(), k) < v for k, v in expected.items()):
            await t._counted.wait()
    stats = t.statistics()
    assert {k: getattr(stats, k) for k in expected} == expected


# -- identity and connections -----------------------------------------------------------


async def test_identity_comes_from_the_seed(make: Factory) -> None:
    alice = await make("alice")
    assert alice.peer_id == peer_id_from_seed(seed_of("alice"))
    assert alice.listen_addrs
    assert all(a.endswith(f"/p2p/{alice.peer_id}") for a in alice.listen_addrs)


async def test_connect_and_disconnect_are_seen_on_both_sides(make: Factory) -> None:
    alice, bob = await make("alice"), await make("bob")
    await connected(alice, bob)
    assert alice.peers() == {bob.peer_id}
    assert bob.peers() == {alice.peer_id}
    assert await alice.connect(bob.listen_addrs[0]) == bob.peer_id  # idempotent
    assert bob.listen_addrs[0] in alice.peer_addrs(bob.peer_id)
    await alice.disconnect(bob.peer_id)
    await next_event(alice, LinkDown, bob.peer_id)
    await next_event(bob, LinkDown, alice.peer_id)
    assert alice.peers() == frozenset() == bob.peers()


async def test_stopping_a_peer_disconnects_it(make: Factory) -> None:
    alice, bob = await make("alice"), await make("bob")
    await connected(alice, bob)
    bob.stop()
    await next_event(alice, LinkDown, bob.peer_id)
    with pytest.raises(TransportClosed):
        await bob.request(alice.peer_id, b"x", max_response=10)


async def test_dialling_nobody_fails_cleanly(make: Factory) -> None:
    alice, bob = await make("alice"), await make("bob", start=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(bob.run)
        addr = bob.listen_addrs[0]
        bob.stop()
    # bob.run has returned: nothing listens on addr any more
    with pytest.raises(PeerUnreachable):
        await alice.connect(addr)
    with pytest.raises(PeerUnreachable):
        await alice.connect("/p2p/not-a-peer-id")
    with pytest.raises(PeerUnreachable):
        await alice.connect(alice.listen_addrs[0])


async def test_bootstrap_peer_is_redialled_after_a_drop(make: Factory) -> None:
    alice = await make("alice")
    bob = await make("bob", bootstrap=(alice.listen_addrs[0],))
    await next_event(bob, LinkUp, alice.peer_id)
    await alice.disconnect(bob.peer_id)
    await next_event(bob, LinkDown, alice.peer_id)
    await next_event(bob, LinkUp, alice.peer_id)
    assert alice.peer_id in bob.peers()


# -- request / response ----------------------------------------------------------------


async def echo(peer: str, payload: bytes) -> bytes:
    return peer.encode() + b":" + payload


async def test_request_response_round_trip(make: Factory) -> None:
    alice, bob = await make("alice"), await make("bob")
    bob.set_request_handler(echo)
    await connected(alice, bob)
    reply = await alice.request(bob.peer_id, b"have?", max_response=1000)
    assert reply == alice.peer_id.encode() + b":have?"
    assert await alice.request(bob.peer_id, b"", max_response=1000) == alice.peer_id.encode() + b":"
    assert alice.statistics().requests_sent == 2
    assert bob.statistics().requests_served == 2


async def test_request_refusals_are_typed(make: Factory) -> None:
    alice, bob = await make("alice"), await make("bob")
    await connected(alice, bob)
    with pytest.raises(RemoteRefused, match="no request handler"):
        await alice.request(bob.peer_id, b"x", max_response=100)

    async def picky(peer: str, payload: bytes) -> bytes:
        if payload == b"bug":
            raise KeyError("oops")
        if payload == b"big":
            return b"y" * 101
        raise NodeError("unknown record")

    bob.set_request_handler(picky)
    with pytest.raises(RemoteRefused, match="unknown record"):
        await alice.request(bob.peer_id, b"x", max_response=100)
    with pytest.raises(RemoteRefused, match="internal error"):
        await alice.request(bob.peer_id, b"bug", max_response=100)
    with pytest.raises(RemoteRefused, match="101 bytes"):
        await alice.request(bob.peer_id, b"big", max_response=100)
    assert bob.statistics().handler_errors == 1
    assert alice.peer_id in bob.peers()  # refusals are not garbage


async def test_request_limits_and_deadlines(make: Factory) -> None:
    alice = await make("alice", max_request=100, request_timeout=0.5)
    bob = await make("bob")
    with pytest.raises(PeerUnreachable):
        await alice.request(bob.peer_id, b"x", max_response=10)
    await connected(alice, bob)
    with pytest.raises(PayloadTooLarge):
        await alice.request(bob.peer_id, b"x" * 101, max_response=10)

    async def stuck(peer: str, payload: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    bob.set_request_handler(stuck)
    with pytest.raises(PeerTimeout):
        await alice.request(bob.peer_id, b"x", max_response=10)
    assert faults(alice) == {"timeouts": 1}  # the request_timeout; not garbage


async def test_a_silent_server_is_timed_out_not_banned(make: Factory) -> None:
    alice, bob = await make("alice", idle_timeout=0.2), await make("bob")
    answered = trio.Event()

    async def stuck(peer: str, payload: bytes) -> bytes:
        await answered.wait()  # silent until the client has given up
        return payload

    bob.set_request_handler(stuck)
    await connected(alice, bob)
    with pytest.raises(PeerTimeout):
        await alice.request(bob.peer_id, b"x", max_response=10)
    answered.set()
    assert faults(alice) == {"timeouts": 1}  # the idle_timeout inside the stream
    assert bob.peer_id in alice.peers()


# -- blobs -----------------------------------------------------------------------------


def blob_file(tmp_path: Path, data: bytes) -> tuple[Path, bytes]:
    path = tmp_path / "blob"
    path.write_bytes(data)
    return path, hashlib.sha256(data).digest()


async def test_fetch_blob_streams_and_verifies(make: Factory, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4099  # about 1 MiB, not a multiple of the chunk size
    path, sha = blob_file(tmp_path, data)
    alice, bob = await make("alice", chunk_size=64 * 1024), await make("bob", chunk_size=50_000)
    bob.set_blob_provider(lambda want: path if want == sha else None)
    await connected(alice, bob)
    sink = io.BytesIO()
    await alice.fetch_blob(bob.peer_id, sha, size=len(data), sink=sink)
    assert sink.getvalue() == data
    with pytest.raises(BlobNotFound):
        await alice.fetch_blob(bob.peer_id, b"\0" * 32, size=1, sink=io.BytesIO())
    with pytest.raises(BlobNotFound):  # we announce a size the holder does not have
        await alice.fetch_blob(bob.peer_id, sha, size=len(data) + 1, sink=io.BytesIO())
    stats = bob.statistics()
    assert (stats.blobs_served, stats.blob_bytes_served) == (1, len(data))
    assert alice.statistics().blob_bytes_fetched == len(data)


async def test_blob_with_the_wrong_hash_is_garbage(make: Factory, tmp_path: Path) -> None:
    path, _ = blob_file(tmp_path, b"not what was announced")
    claimed = hashlib.sha256(b"what was announced").digest()
    alice, mallory = await make("alice"), await make("mallory")
    mallory.set_blob_provider(lambda want: path)
    await connected(alice, mallory)
    with pytest.raises(BlobMismatch, match="hashes to"):
        await alice.fetch_blob(
            mallory.peer_id, claimed, size=path.stat().st_size, sink=io.BytesIO()
        )
    await next_event(alice, LinkDown, mallory.peer_id)
    assert alice.statistics().garbage_by_peer == {mallory.peer_id: 1}
    assert faults(alice) == {"remote_errors": 1, "blob_mismatches": 1, "bans": 1}


async def test_blob_longer_than_announced_is_cut_off(make: Factory) -> None:
    alice, mallory = await make("alice"), await make("mallory")

    async def overflow(peer: str, protocol: str, stream: wire.ByteStream) -> None:
        await wire.read_blob_request(stream, WAIT)
        await wire.send_blob_head(stream, 10)
        await stream.write(b"z" * 1000)  # 990 bytes more than announced
        await stream.close_write()

    mallory._serve_stream = overflow  # type: ignore[method-assign]
    await connected(alice, mallory)
    sink = io.BytesIO()
    with pytest.raises(BlobMismatch, match="more than the announced"):
        await alice.fetch_blob(mallory.peer_id, b"\1" * 32, size=10, sink=sink)
    assert len(sink.getvalue()) == 10  # never read past the announced size
    await next_event(alice, LinkDown, mallory.peer_id)
    assert faults(alice) == {"remote_errors": 1, "blob_mismatches": 1, "bans": 1}


async def test_an_oversized_blob_refusal_is_garbage(make: Factory) -> None:
    alice, mallory = await make("alice"), await make("mallory")

    async def rant(peer: str, protocol: str, stream: wire.ByteStream) -> None:
        await wire.read_blob_request(stream, WAIT)
        await stream.write(struct.pack(">BQ", wire.NOT_FOUND, wire.MAX_REFUSAL + 1))
        await stream.write(b"r" * (wire.MAX_REFUSAL + 1))
        await stream.close_write()

    mallory._serve_stream = rant  # type: ignore[method-assign]
    await connected(alice, mallory)
    with pytest.raises(OversizedFrame):
        await alice.fetch_blob(mallory.peer_id, b"\1" * 32, size=10, sink=io.BytesIO())
    await next_event(alice, LinkDown, mallory.peer_id)
    assert faults(alice) == {"remote_errors": 1, "oversized_frames": 1, "bans": 1}


async def test_blob_serving_is_rate_limited_per_peer(make: Factory, tmp_path: Path) -> None:
    path, sha = blob_file(tmp_path, b"adapter")
    alice, bob = await make("alice"), await make("bob", serve_rate=0.001, serve_burst=2)
    bob.set_blob_provider(lambda want: path)
    await connected(alice, bob)
    for _ in range(2):
        await alice.fetch_blob(bob.peer_id, sha, size=7, sink=io.BytesIO())
    with pytest.raises(RateLimited):
        await alice.fetch_blob(bob.peer_id, sha, size=7, sink=io.BytesIO())
    assert faults(bob) == {"rate_limited": 1}
    assert faults(alice) == {}  # a refusal, not a fault
    assert alice.peer_id in bob.peers()


# -- garbage from peers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("garbage", "kind"),
    [
        pytest.param(struct.pack(">II", 100, 1 << 30), "oversized_frames", id="oversized-frame"),
    ],
)
async def test_garbage_requests_disconnect_the_sender(
    make: Factory, garbage: bytes, kind: str
) -> None:
    alice, mallory, bob = await make("alice"), await make("mallory"), await make("bob")
    alice.set_request_handler(echo)
    await connected(mallory, alice)
    stream = await mallory._open_stream(alice.peer_id, wire.REQUEST_PROTOCOL)
    await stream.write(garbage)
    await stream.close_write()
    await next_event(alice, LinkDown, mallory.peer_id)
    assert alice.statistics().garbage_by_peer == {mallory.peer_id: 1}
    assert faults(alice) == {"remote_errors": 1, kind: 1, "bans": 1}
    assert alice.is_banned(mallory.peer_id)
    await connected(bob, alice)  # alice is still up and serving
    assert (
        await bob.request(alice.peer_id, b"ok", max_response=200) == bob.peer_id.encode() + b":ok"
    )


@pytest.mark.parametrize(
    ("response", "kind", "error"),
    [
        pytest.param(
            struct.pack(">BI", wire.OK, 5000) + b"w" * 5000,
            "oversized_frames",
            "exceeds",
            id="oversized",
        ),
        pytest.param(struct.pack(">BI", 99, 0), "malformed_frames", "status", id="unknown-status"),
        pytest.param(
            struct.pack(">BI", wire.OK, 2) + b"ok" + b"more",
            "malformed_frames",
            "after the end",
            id="bytes-after-the-frame",
        ),
    ],
)
async def test_bad_responses_are_garbage(
    make: Factory, response: bytes, kind: str, error: str
) -> None:
    alice, mallory = await make("alice"), await make("mallory")

    async def bad(peer: str, protocol: str, stream: wire.ByteStream) -> None:
        await wire.read_request(stream, 1000, WAIT)
        await stream.write(response)
        await stream.close_write()

    mallory._serve_stream = bad  # type: ignore[method-assign]
    await connected(alice, mallory)
    with pytest.raises(RemoteProtocolError, match=error):
        await alice.request(mallory.peer_id, b"x", max_response=100)
    await next_event(alice, LinkDown, mallory.peer_id)
    assert alice.statistics().garbage_by_peer == {mallory.peer_id: 1}
    assert faults(alice) == {"remote_errors": 1, kind: 1, "bans": 1}
    assert alice.is_banned(mallory.peer_id)


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(struct.pack(">II", 100, 50) + b"short", id="truncated"),
        pytest.param(b"\x01\x02", id="truncated-header"),
    ],
)
async def test_a_request_cut_short_is_counted_never_blamed(make: Factory, garbage: bytes) -> None:
    """A restarting peer, or one whose stream was reset for want of a slot, ends streams
    mid-frame: counted, and the peer stays connected and unbanned."""
    alice, mallory = await make("alice"), await make("mallory")
    alice.set_request_handler(echo)
    await connected(mallory, alice)
    stream = await mallory._open_stream(alice.peer_id, wire.REQUEST_PROTOCOL)
    await stream.write(garbage)
    await stream.close_write()
    await counted(alice, truncated_frames=1)
    assert faults(alice) == {"truncated_frames": 1}
    assert mallory.peer_id in alice.peers()
    assert not alice.is_banned(mallory.peer_id)
    assert await mallory.request(alice.peer_id, b"ok", max_response=200) == (
        mallory.peer_id.encode() + b":ok"
    )


async def test_a_response_cut_short_fails_the_exchange_only(make: Factory) -> None:
    alice, mallory = await make("alice"), await make("mallory")

    async def short(peer: str, protocol: str, stream: wire.ByteStream) -> None:
        await wire.read_request(stream, 1000, WAIT)
        await stream.write(struct.pack(">BI", wire.OK, 50) + b"short")
        await stream.close_write()

    mallory._serve_stream = short  # type: ignore[method-assign]
    await connected(alice, mallory)
    with pytest.raises(TruncatedFrame, match="ended"):
        await alice.request(mallory.peer_id, b"x", max_response=100)
    await counted(alice, truncated_frames=1)
    assert faults(alice) == {"truncated_frames": 1}
    assert mallory.peer_id in alice.peers()


async def test_a_request_reset_mid_frame_is_counted_not_banned(make: Factory) -> None:
    alice, mallory = await make("alice"), await make("mallory")
    alice.set_request_handler(echo)
    await connected(mallory, alice)
    stream = await mallory._open_stream(alice.peer_id, wire.REQUEST_PROTOCOL)
    await stream.write(b"\0\0")  # half a header...
    await stream.reset()  # ...then the client gives up
    await counted(alice, resets=1)
    assert faults(alice) == {"resets": 1}
    assert mallory.peer_id in alice.peers()
    assert not alice.is_banned(mallory.peer_id)


async def test_a_response_reset_mid_frame_is_counted_not_banned(make: Factory) -> None:
    alice, bob = await make("alice"), await make("bob")

    async def give_up(peer: str, protocol: str, stream: wire.ByteStream) -> None:
        await wire.read_request(stream, 1000, WAIT)
        await stream.write(struct.pack(">BI", wire.OK, 50) + b"half")
        await stream.reset()

    bob._serve_stream = give_up  # type: ignore[method-assign]
    await connected(alice, bob)
    with pytest.raises(ConnectionLost):
        await alice.request(bob.peer_id, b"x", max_response=100)
    assert faults(alice) == {"resets": 1}
    assert bob.peer_id in alice.peers()


async def test_a_silent_client_is_timed_out_not_banned(make: Factory) -> None:
    alice, mallory = await make("alice", idle_timeout=0.2), await make("mallory")
    alice.set_request_handler(echo)
    await connected(mallory, alice)
    stream = await mallory._open_stream(alice.peer_id, wire.REQUEST_PROTOCOL)
    await stream.write(b"\0\0")  # half a header, then silence
    with trio.fail_after(WAIT):
        try:
            assert await stream.read(10) == b""  # alice gave up on the stream...
        except ConnectionLost:
            pass  # ...by resetting it (libp2p) or closing it: either way, not hanging
    await stream.reset()
    assert faults(alice) == {"timeouts": 1}  # slowness is not garbage
    assert mallory.peer_id in alice.peers()


async def test_too_many_concurrent_streams_are_refused(make: Factory) -> None:
    alice, bob = await make("alice", max_inbound_streams_per_peer=2), await make("bob")
    release, both_in = trio.Event(), trio.Event()
    entered = 0

    async def slow(peer: str, payload: bytes) -> bytes:
        nonlocal entered
        entered += 1
        if entered == 2:
            both_in.set()
        await release.wait()
        return payload

    alice.set_request_handler(slow)
    await connected(bob, alice)
    request = functools.partial(bob.request, alice.peer_id, max_response=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, b"1")
        nursery.start_soon(request, b"2")
        with trio.fail_after(WAIT):
            await both_in.wait()
        with pytest.raises(ConnectionLost):
            await request(b"3")
        release.set()
    assert faults(alice) == {"refused_streams": 1}
    assert faults(bob) == {"resets": 1}  # a refusal, not garbage
    assert await request(b"4") == b"4"  # the slots are free again


async def test_a_garbage_sender_is_shut_out(make: Factory) -> None:
    alice, mallory = await make("alice", ban_seconds=3600), await make("mallory")
    alice.set_request_handler(echo)
    await connected(mallory, alice)
    stream = await mallory._open_stream(alice.peer_id, wire.REQUEST_PROTOCOL)
    await stream.write(struct.pack(">II", 100, 1 << 30))
    await stream.close_write()
    await next_event(alice, LinkDown, mallory.peer_id)
    assert alice.is_banned(mallory.peer_id)
    assert faults(alice) == {"remote_errors": 1, "oversized_frames": 1, "bans": 1}
    with pytest.raises(PeerUnreachable):
        await alice.connect(mallory.listen_addrs[0])
    with contextlib.suppress(PeerUnreachable):  # libp2p lets the dial through, then drops it
        await mallory.connect(alice.listen_addrs[0])
    await counted(alice, banned_connections=1)
    with trio.fail_after(WAIT), pytest.raises(TransportError):
        await mallory.request(alice.peer_id, b"let me in", max_response=100)
    assert mallory.peer_id not in alice.peers()
    assert alice.statistics().requests_served == 0
    assert alice.statistics().bans == 1


async def test_streams_from_a_banned_peer_are_reset_unread(make: Factory) -> None:
    """A banned peer's streams can still arrive while its connection is being dropped."""
    alice, mallory = await make("alice"), await make("mallory")
    alice.set_request_handler(echo)
    await connected(mallory, alice)
    alice._banned[mallory.peer_id] = trio.current_time() + 60  # as if just banned
    with pytest.raises(ConnectionLost):
        await mallory.request(alice.peer_id, b"let me in", max_response=100)
    assert faults(alice) == {"banned_streams": 1}
    assert faults(mallory) == {"resets": 1}
    assert alice.statistics().requests_served == 0


# -- ping (libp2p's /ipfs/ping/1.0.0: py-libp2p's host answers it, the twin its own) ----


PingServer = Callable[[wire.ByteStream], Awaitable[None]]


def serve_ping_with(t: Transport, server: PingServer) -> None:
    """Make ``t`` answer pings with ``server`` instead of the honest echo."""
    if isinstance(t, MemoryTransport):
        honest = t._serve_stream

        async def serve(peer: str, protocol: str, stream: wire.ByteStream) -> None:
            if protocol == wire.PING_PROTOCOL:
                await server(stream)
            else:
                await honest(peer, protocol, stream)

        t._serve_stream = serve  # type: ignore[method-assign]
        return
    from libp2p.custom_types import TProtocol

    from node.shell.transport.libp2p import Libp2pTransport, _Stream

    assert isinstance(t, Libp2pTransport)
    t.host.set_stream_handler(TProtocol(wire.PING_PROTOCOL), lambda s: server(_Stream(s)))


async def test_ping_measures_a_round_trip(make: Factory) -> None:
    alice, bob = await make("alice"), await make("bob")
    await connected(alice, bob)
    rtts = [await alice.ping(bob.peer_id) for _ in range(3)]  # a new stream each time
    assert all(isinstance(rtt, float) and 0 < rtt < WAIT for rtt in rtts)
    assert await bob.ping(alice.peer_id) > 0  # both sides serve it
    assert faults(alice) == {} == faults(bob)
    with pytest.raises(PeerUnreachable):
        await alice.ping(peer_id_from_seed(seed_of("nobody")))


async def test_a_ping_echoed_as_other_bytes_is_garbage(make: Factory) -> None:
    alice, mallory = await make("alice"), await make("mallory")

    async def liar(stream: wire.ByteStream) -> None:
        ping = await wire.read_exactly(stream, wire.PING_LENGTH, WAIT)
        await stream.write(bytes(b ^ 0xFF for b in ping))
        await stream.close()

    serve_ping_with(mallory, liar)
    await connected(alice, mallory)
    with pytest.raises(RemoteProtocolError, match="echoed"):
        await alice.ping(mallory.peer_id)
    await next_event(alice, LinkDown, mallory.peer_id)
    assert faults(alice) == {"remote_errors": 1, "malformed_frames": 1, "bans": 1}


async def test_a_silent_ping_peer_times_out_and_stays(make: Factory) -> None:
    alice, bob = await make("alice", request_timeout=0.3), await make("bob")

    async def mute(stream: wire.ByteStream) -> None:
        with contextlib.suppress(ConnectionLost):
            while await stream.read(wire.PING_LENGTH):  # read, never answer, until reset
                pass
        await stream.reset()

    serve_ping_with(bob, mute)
    await connected(alice, bob)
    with trio.fail_after(WAIT), pytest.raises(PeerTimeout):
        await alice.ping(bob.peer_id)
    assert faults(alice) == {"timeouts": 1}
    assert bob.peer_id in alice.peers()
