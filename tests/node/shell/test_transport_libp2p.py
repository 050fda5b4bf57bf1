"""What only the libp2p backend has: Noise pinning, libp2p's peer ids, restart, the DHT.
Everything shared with the in-memory twin is in test_transport_conformance.py."""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import warnings
from collections.abc import AsyncIterator
from typing import Any

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from node.errors import ConnectionLost, PeerUnreachable
from node.shell.transport import LinkDown, LinkUp, Transport, TransportConfig, wire
from node.shell.transport.libp2p import Libp2pTransport, _Stream, create_host

WAIT = 10.0
LOOPBACK = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]


def open_sockets() -> set[str]:
    """The sockets this process holds open, as ``socket:[inode]``."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (or the listdir's own fd)
        if target.startswith("socket:"):
            found.add(target)
    return found


def seed_of(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


async def next_event(t: Transport, kind: type[Any]) -> Any:
    with trio.fail_after(WAIT):
        async for event in t.events:
            if isinstance(event, kind):
                return event
    raise AssertionError("event channel closed")


@pytest.fixture
async def alice() -> AsyncIterator[Libp2pTransport]:
    transport = Libp2pTransport(seed_of("alice"))
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        yield transport
        transport.stop()


async def run_plaintext_host(stop: trio.Event, *, task_status: Any) -> None:
    """mallory's host speaks only /plaintext/2.0.0; closed gracefully like ours."""
    key_pair = create_new_key_pair(seed_of("mallory"))
    host: IHost = new_host(
        key_pair=key_pair,
        sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)},
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},  # type: ignore[dict-item]
        listen_addrs=LOOPBACK,
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
    async with host.run(listen_addrs=LOOPBACK):
        task_status.started(host)
        await stop.wait()
        await host.close()


async def run_raw_host(stop: trio.Event, *, task_status: Any) -> None:
    """A libp2p peer that speaks Noise + Yamux + identify but none of our protocols: a raw
    client of our request protocol."""
    host = create_host(seed_of("raw"), LOOPBACK)
    async with host.run(listen_addrs=LOOPBACK):
        task_status.started(host)
        await stop.wait()
        await host.close()


def libp2p_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("libp2p") and r.levelno >= logging.ERROR
    ]


async def test_peer_id_is_libp2ps_own(alice: Libp2pTransport) -> None:
    key_pair = create_new_key_pair(seed_of("alice"))
    assert alice.peer_id == str(ID.from_pubkey(key_pair.public_key))
    assert alice.peer_id == str(alice.host.get_id())


async def test_a_plaintext_peer_is_refused_both_ways(alice: Libp2pTransport) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        mallory: IHost = await nursery.start(run_plaintext_host, stop)
        with trio.fail_after(WAIT), pytest.raises(SwarmException):
            await mallory.connect(info_from_p2p_addr(multiaddr.Multiaddr(alice.listen_addrs[0])))
        mallory_addr = f"{mallory.get_addrs()[0]}"
        with trio.fail_after(WAIT), pytest.raises(PeerUnreachable):
            await alice.connect(mallory_addr)
        assert alice.peers() == frozenset()
        assert not mallory.get_network().get_connections()
        stop.set()


async def test_a_restarted_node_keeps_its_identity(alice: Libp2pTransport) -> None:
    expected = str(ID.from_pubkey(create_new_key_pair(seed_of("bob")).public_key))
    for _ in range(2):
        bob = Libp2pTransport(seed_of("bob"))
        async with trio.open_nursery() as nursery:
            await nursery.start(bob.run)
            assert await bob.connect(alice.listen_addrs[0]) == alice.peer_id
            assert (await next_event(alice, LinkUp)).peer == bob.peer_id == expected
            bob.stop()
        assert (await next_event(alice, LinkDown)).peer == expected


async def test_the_optional_dht_starts_and_stops_cleanly() -> None:
    config = TransportConfig(enable_dht=True)
    a, b = Libp2pTransport(seed_of("a"), config), Libp2pTransport(seed_of("b"), config)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await b.connect(a.listen_addrs[0])
        assert (await next_event(a, LinkUp)).peer == b.peer_id
        a.stop()
        b.stop()


def test_libp2p_logs_propagate_to_the_app() -> None:
    assert logging.getLogger("libp2p").propagate


async def test_a_raw_libp2p_client_is_served_without_errors(
    alice: Libp2pTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain libp2p host (no medforge transport) dials alice and speaks the request
    protocol by hand: it is answered, and libp2p logs no ERROR on the way."""

    async def echo(peer: str, payload: bytes) -> bytes:
        return payload

    alice.set_request_handler(echo)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        raw: IHost = await nursery.start(run_raw_host, stop)
        with trio.fail_after(WAIT):
            await raw.connect(info_from_p2p_addr(multiaddr.Multiaddr(alice.listen_addrs[0])))
        assert (await next_event(alice, LinkUp)).peer == str(raw.get_id())
        with trio.fail_after(WAIT):
            opened = await raw.new_stream(
                ID.from_base58(alice.peer_id), [TProtocol(wire.REQUEST_PROTOCOL)]
            )
            stream = _Stream(opened)
            await wire.send_request(stream, b"hello", 100)
            assert await wire.read_response(stream, 100, WAIT) == b"hello"
            await stream.close()
        errors = libp2p_errors(caplog)  # before any shutdown noise
        stop.set()
    assert errors == []
    assert alice.statistics().requests_served == 1


async def test_a_peer_without_our_protocol_is_a_reset_not_garbage(
    alice: Libp2pTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that refuses our own protocol: libp2p logs its ERROR (nothing demotes it),
    and the transport sees a reset during negotiation, not a protocol violation."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        raw: IHost = await nursery.start(run_raw_host, stop)
        raw_id = str(raw.get_id())
        with trio.fail_after(WAIT):
            await alice.connect(f"{raw.get_addrs()[0]}")
        with trio.fail_after(WAIT), pytest.raises(ConnectionLost):
            await alice.request(raw_id, b"are you medforge?", max_response=100)
        errors = libp2p_errors(caplog)
        stop.set()
    assert any(wire.REQUEST_PROTOCOL in e and "protocols not supported" in e for e in errors)
    assert alice.statistics().resets == 1
    assert alice.statistics().remote_errors == 0


async def test_the_auto_connectors_idle_cycle_is_debug(
    alice: Libp2pTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """The swarm's auto-connector logged two INFO lines every 10 s saying that nothing
    changed. Run one real cycle at its own level (INFO): nothing; then at DEBUG: the same
    lines, at DEBUG."""
    auto_connector = alice.host.get_network().auto_connector  # type: ignore[attr-defined]
    name = "libp2p.network.auto_connector"

    def cycle() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == name and "AUTO_CONNECTOR_STATE" in r.msg]

    await auto_connector.maybe_connect()
    assert cycle() == []
    assert [r for r in caplog.records if r.name == name and r.levelno >= logging.INFO] == []
    caplog.set_level(logging.DEBUG, logger=name)
    await auto_connector.maybe_connect()
    assert [r.levelno for r in cycle()] == [logging.DEBUG]
    below = [r for r in caplog.records if r.name == name and "below target" in r.msg]
    assert [r.levelno for r in below] == [logging.DEBUG]


async def test_raw_tcp_garbage_does_not_hurt_the_node(alice: Libp2pTransport) -> None:
    """Below our framing: bytes that are not even multistream/Noise."""
    port = int(multiaddr.Multiaddr(alice.listen_addrs[0]).value_for_protocol("tcp"))
    for garbage in (b"\x00" * 64, b"GET / HTTP/1.1\r\n\r\n", bytes(range(256)) * 64):
        with trio.fail_after(WAIT):
            sock = await trio.open_tcp_stream("127.0.0.1", port)
            async with sock:
                await sock.send_all(garbage)
    async with trio.open_nursery() as nursery:
        bob = Libp2pTransport(seed_of("bob"))
        await nursery.start(bob.run)

        async def echo(peer: str, payload: bytes) -> bytes:
            return payload

        alice.set_request_handler(echo)
        await bob.connect(alice.listen_addrs[0])
        with trio.fail_after(WAIT):
            assert await bob.request(alice.peer_id, b"still up", max_response=100) == b"still up"
        bob.stop()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts fds in /proc")
async def test_cancelling_right_after_stop_still_closes_every_socket() -> None:
    """pytest-trio cancels a test's nursery as soon as the test returns, so right after
    ``stop()``. That used to cancel ``host.close()`` mid-way: the dialer's socket stayed
    open and a later test's garbage collection failed on its ResourceWarning (#4)."""
    gc.collect()
    before = open_sockets()
    for _ in range(2):
        a, b = Libp2pTransport(seed_of("a")), Libp2pTransport(seed_of("b"))
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            await b.connect(a.listen_addrs[0])
            assert (await next_event(a, LinkUp)).peer == b.peer_id
            b.stop()
            a.stop()
            nursery.cancel_scope.cancel()
    del a, b, nursery
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    assert [str(w.message) for w in caught if "unclosed" in str(w.message)] == []
    assert open_sockets() - before == set()


async def test_only_connect_dials(alice: Libp2pTransport) -> None:
    """libp2p dials whenever a stream is wanted to an unconnected peer, and such a dial
    racing a disconnect leaked its socket; the transport refuses every dial but
    ``connect()``'s, and any towards a banned peer or once it is stopping."""
    async with trio.open_nursery() as nursery:
        bob = Libp2pTransport(seed_of("bob"))
        await nursery.start(bob.run)
        bob_id = ID.from_base58(bob.peer_id)
        addr = multiaddr.Multiaddr(bob.listen_addrs[0]).decapsulate_code(421)  # no /p2p
        alice.host.get_peerstore().add_addrs(bob_id, [addr], 60)
        alice._banned[bob.peer_id] = trio.current_time() + 60
        with pytest.raises(SwarmException, match="banned"):
            await alice.host.get_network().dial_peer(bob_id)
        del alice._banned[bob.peer_id]
        with pytest.raises(SwarmException, match="not connected"):  # only connect() dials
            await alice.host.get_network().dial_peer(bob_id)
        assert not alice.host.get_network().get_connections(bob_id)
        assert await alice.connect(f"{addr}/p2p/{bob.peer_id}") == bob.peer_id
        bob.stop()
    with pytest.raises(SwarmException, match="stopped"):
        await bob.host.get_network().dial_peer(ID.from_base58(alice.peer_id))


def test_identify_to_a_peer_that_just_left_is_debug(caplog: pytest.LogCaptureFixture) -> None:
    """Seen when nodes stop together: identify answers a peer whose socket is gone and
    libp2p logs an ERROR with a traceback. Demoted; any other identify error stays."""
    import node.shell.transport.libp2p  # noqa: F401 - installs the filters

    logger = logging.getLogger("libp2p.identity.identify.identify")
    with caplog.at_level(logging.INFO):
        logger.error(
            "Error sending identify response to 12D3Koo: Write operation failed: TCP "
            "connection reset by remote peer: [Errno 32] Broken pipe"
        )
        logger.error("Error sending identify response to 12D3Koo: protobuf encoding failed")
    assert [r.getMessage()[-24:] for r in caplog.records if r.levelno >= logging.ERROR] == [
        "protobuf encoding failed"
    ]


def test_a_connection_cancelled_mid_setup_is_debug(caplog: pytest.LogCaptureFixture) -> None:
    """Seen in CI when a peer stopped while bob was still upgrading its connection: the
    swarm logs a WARNING carrying a traceback of trio's Cancelled, and yamux an ERROR for the
    closed reader. Both demoted; any other add_conn failure or read error stays."""
    import node.shell.transport.libp2p  # noqa: F401 - installs the filters

    swarm = logging.getLogger("libp2p.network.swarm")
    yamux = logging.getLogger("libp2p.stream_muxer.yamux.yamux")
    # each logger's own level too: an earlier test or libp2p may have raised it
    with (
        caplog.at_level(logging.INFO, logger=swarm.name),
        caplog.at_level(logging.INFO, logger=yamux.name),
    ):
        swarm.warning(
            "[ADDCONN_FAIL] add_conn failed for peer %s: %r\n%s",
            "12D3Koo",
            trio.Cancelled._create(source="explicit"),
            "Traceback (most recent call last):\n  ...\ntrio.Cancelled: cancelled\n",
        )
        swarm.warning(
            "[ADDCONN_FAIL] add_conn failed for peer %s: %r\n%s", "12D3Koo", OSError("X"), ""
        )
        yamux.error("Error in handle_incoming for peer 12D3Koo: ClosedResourceError: ")
        yamux.error("Error in handle_incoming for peer 12D3Koo: ValueError: bad frame")
    assert [r.getMessage().split("\n")[0] for r in caplog.records] == [
        "[ADDCONN_FAIL] add_conn failed for peer 12D3Koo: OSError('X')",
        "Error in handle_incoming for peer 12D3Koo: ValueError: bad frame",
    ]


def test_a_wildcard_listen_address_is_advertised_as_the_hosts_addresses() -> None:
    """libp2p advertised /ip4/0.0.0.0/... (what the README's listen line binds), which no
    peer can dial; announce addresses (a public address the host cannot see) come first."""
    from node.shell.transport.libp2p import advertised

    wildcard = multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/4001")
    public = multiaddr.Multiaddr("/ip4/198.51.100.7/tcp/4001")
    out = [str(a) for a in advertised([wildcard], [public])]
    assert out[0] == str(public)
    assert out[1:]
    assert all(a.endswith("/tcp/4001") for a in out)
    assert not any("/0.0.0.0/" in a for a in out)
    plain = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/5")
    assert advertised([plain], []) == [plain]
