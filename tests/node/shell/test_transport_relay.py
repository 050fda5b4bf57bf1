"""Circuit relay v2 through our transport, on loopback (the NAT itself is in
tests/node/e2e/test_netns.py): a member reserves a slot at a relay and keeps it across the
relay's restart; another member reaches it through the relay and exchanges requests; a peer the
roster does not name is refused by the relay."""

from __future__ import annotations

from typing import Any

import trio

from node.errors import PeerUnreachable
from node.shell.transport import PeerId, TransportConfig
from node.shell.transport.libp2p import Libp2pTransport

WAIT = 20.0
FAST = {"request_timeout": 10.0, "idle_timeout": 5.0, "backoff_min": 0.05, "backoff_max": 0.5}


def _transport(seed: int, members: set[PeerId], **config: object) -> Libp2pTransport:
    t = Libp2pTransport(bytes([seed]) * 32, TransportConfig(**{**FAST, **config}))  # type: ignore[arg-type]
    t.set_member_filter(lambda peer: peer in members)
    return t


async def _pong(peer: PeerId, payload: bytes) -> bytes:
    return b"pong:" + payload


async def _serve(
    t: Libp2pTransport, done: trio.Event, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    try:
        await t.run(task_status=task_status)
    finally:
        done.set()


async def test_a_member_is_reached_through_its_relay_also_after_the_relay_restarts() -> None:
    members: set[PeerId] = set()
    relay = _transport(1, members, relay_service=True)
    members |= {relay.peer_id}
    async with trio.open_nursery() as nursery:
        relay_done = trio.Event()
        await nursery.start(_serve, relay, relay_done)
        relay_addr = relay.listen_addrs[0]
        hidden = _transport(2, members, relays=(relay_addr,))
        caller = _transport(3, members)
        stranger = _transport(4, members)
        members |= {hidden.peer_id, caller.peer_id}
        hidden.set_request_handler(_pong)
        with trio.fail_after(WAIT):
            reserved = hidden._relaying.on_reserved
            for t in (hidden, caller, stranger):
                await nursery.start(t.run)
            await reserved.wait()
        circuit = f"{relay_addr}/p2p-circuit/p2p/{hidden.peer_id}"
        with trio.fail_after(WAIT):
            assert await caller.connect(circuit) == hidden.peer_id
            assert await caller.request(hidden.peer_id, b"hi", max_response=64) == b"pong:hi"
        with trio.fail_after(WAIT):
            try:
                await stranger.connect(circuit)
            except PeerUnreachable:
                pass  # the relay resets a stranger's hop stream
        assert hidden.peer_id not in stranger.peers()
        assert relay.statistics().refused_streams >= 1  # the stranger's hop stream

        # The relay restarts (same key, same port): its reservations were in memory only.
        relay.stop()
        await caller.disconnect(hidden.peer_id)
        relay2 = _transport(
            1, members, relay_service=True, listen_addrs=(relay_addr.split("/p2p/")[0],)
        )
        with trio.fail_after(WAIT):
            await relay_done.wait()  # closed, listener included: nobody reserves there again
            reserved = hidden._relaying.on_reserved
            await nursery.start(relay2.run)
            await reserved.wait()  # the member reconnected and reserved again
            assert await caller.connect(circuit) == hidden.peer_id
            assert await caller.request(hidden.peer_id, b"again", max_response=64) == b"pong:again"
        assert hidden._relaying.reservations >= 2  # one more after the restart, at least
        for t in (relay2, hidden, caller, stranger):
            t.stop()
