"""Circuits at a relay, with real libp2p on loopback: its limits cut a circuit and give the
slot back, and a circuit that ends leaves the member's other circuits alone. py-libp2p
0.8.1's relay loop kept the slot of every circuit a limit cut (its other direction never
woke), so after MAX_CIRCUITS_PER_PEER cut circuits a member was unreachable through the
relay; it cut a circuit at relay_max_seconds only when data flowed; and a circuit ending
closed the streams of the member's latest circuit, whichever that was."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from libp2p.peer.id import ID

from node.errors import ConnectionLost
from node.shell.transport import LinkDown, PeerId
from node.shell.transport.libp2p import Libp2pTransport
from node.shell.transport.relay import MAX_CIRCUITS_PER_PEER
from tests.node.shell.test_transport_relay import WAIT
from tests.node.shell.test_transport_relay import _transport as _any_transport

LIMIT = 32 * 1024  # bytes per circuit: the handshakes take a few KiB, one big request more


def _transport(seed: int, members: set[PeerId], **config: object) -> Libp2pTransport:
    # no hole punching: the circuit must stay relayed
    return _any_transport(seed, members, **{"hole_punching": False, **config})


async def _pong(peer: PeerId, payload: bytes) -> bytes:
    return b"pong:" + payload[:8]


async def _link_down(t: Libp2pTransport, peer: PeerId) -> None:
    async for event in t.events:
        if isinstance(event, LinkDown) and event.peer == peer:
            return


async def _slots_held(relay: Libp2pTransport, member: PeerId, held: int = 0) -> None:
    """Until no more than ``held`` circuits hold a slot of ``member``'s reservation."""
    reservation: Any = relay._relaying.protocol.resource_manager.get_reservation(
        ID.from_base58(member)
    )
    while reservation.active_connections > held:
        await relay._relaying.on_hop_stream.wait()  # each circuit's HOP stream ends after it


async def _network(
    nursery: trio.Nursery, callers: int = 1, **relay_config: object
) -> tuple[Libp2pTransport, Libp2pTransport, list[Libp2pTransport], str]:
    """A relay, a member holding a slot at it, callers; and the circuit to the member."""
    members: set[PeerId] = set()
    relay = _transport(1, members, relay_service=True, **relay_config)
    members.add(relay.peer_id)
    await nursery.start(relay.run)
    hidden = _transport(2, members, relays=(relay.listen_addrs[0],))
    others = [_transport(3 + i, members) for i in range(callers)]
    members |= {hidden.peer_id, *(c.peer_id for c in others)}
    hidden.set_request_handler(_pong)
    reserved = hidden._relaying.on_reserved
    for t in (hidden, *others):
        await nursery.start(t.run)
    await reserved.wait()
    return relay, hidden, others, f"{relay.listen_addrs[0]}/p2p-circuit/p2p/{hidden.peer_id}"


async def test_circuits_cut_by_the_byte_limit_give_their_slot_back() -> None:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(WAIT):
            relay, hidden, [caller], circuit = await _network(nursery, relay_max_bytes=LIMIT)
        for _ in range(MAX_CIRCUITS_PER_PEER):  # as many as the member has slots
            with trio.fail_after(WAIT):
                assert await caller.connect(circuit) == hidden.peer_id
                assert await caller.request(hidden.peer_id, b"small", max_response=64) == (
                    b"pong:small"
                )
                with pytest.raises(ConnectionLost):  # over the limit: the relay cuts it
                    await caller.request(hidden.peer_id, b"x" * 2 * LIMIT, max_response=64)
                await _link_down(caller, hidden.peer_id)
                await _slots_held(relay, hidden.peer_id)
        with trio.fail_after(WAIT):  # every slot was given back: one more circuit is accepted
            assert await caller.connect(circuit) == hidden.peer_id
            assert await caller.request(hidden.peer_id, b"again", max_response=64) == b"pong:again"
        for t in (relay, hidden, caller):
            t.stop()


async def test_an_idle_circuit_is_cut_at_the_time_limit() -> None:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(WAIT):
            relay, hidden, [caller], circuit = await _network(nursery, relay_max_seconds=3)
            assert await caller.connect(circuit) == hidden.peer_id
            start = trio.current_time()
            await _link_down(caller, hidden.peer_id)  # no request was made on it
            assert 2.0 < trio.current_time() - start < 3 + 3
            await _slots_held(relay, hidden.peer_id)
            assert await caller.connect(circuit) == hidden.peer_id
        for t in (relay, hidden, caller):
            t.stop()


async def test_a_circuit_that_ends_leaves_the_members_other_circuits_alone() -> None:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(WAIT):
            relay, hidden, [first, second], circuit = await _network(nursery, callers=2)
            for caller in (first, second):
                assert await caller.connect(circuit) == hidden.peer_id
            await first.disconnect(hidden.peer_id)
            await _slots_held(relay, hidden.peer_id, held=1)  # the first circuit has ended
            assert await second.request(hidden.peer_id, b"still", max_response=64) == b"pong:still"
        for t in (relay, hidden, first, second):
            t.stop()
