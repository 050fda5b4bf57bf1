"""Discovery's bookkeeping over the in-memory twin (the libp2p path, with real nodes in a line
and behind NAT, is in tests/node/e2e/test_discovery.py and test_netns.py)."""

from __future__ import annotations

import trio

from node.shell.discovery import MAX_BACKOFF, Discovery
from node.shell.status import describe_link
from node.shell.transport import MemoryNetwork, MemoryTransport


async def test_missing_members_back_off_and_a_reached_one_is_forgotten() -> None:
    network = MemoryNetwork()
    alice, bob = (MemoryTransport(network, bytes([i]) * 32) for i in (1, 2))
    ghost = MemoryTransport(network, b"\x03" * 32).peer_id  # a member that never runs
    async with trio.open_nursery() as nursery:
        for t in (alice, bob):
            await nursery.start(t.run)
        members = [alice.peer_id, bob.peer_id, ghost]
        discovery = Discovery(alice, lambda: members, interval=2.0)
        assert discovery.missing() == sorted([bob.peer_id, ghost])  # never ourselves

        waits = []
        for _ in range(10):
            await discovery._attempt(ghost)  # nobody knows an address: a failure
            waits.append(discovery._backoff[ghost])
        assert waits[:3] == [2.0, 4.0, 8.0]  # doubling from the interval...
        assert waits[-1] == MAX_BACKOFF  # ...up to the cap
        assert discovery.failures == 10

        await alice.connect(bob.listen_addrs[0])  # bob reached (here: by its address)
        await discovery._attempt(bob.peer_id)
        assert bob.peer_id not in discovery._backoff
        assert discovery.missing() == [ghost]
        discovery.kick()  # a member connected: every missing member is due at once
        assert discovery._due == {}
        for t in (alice, bob):
            t.stop()


def test_a_link_is_described_by_its_address_or_its_relay() -> None:
    names = {"12D3KooWRelay": "relay"}.get
    relayed = "/ip4/10.88.0.2/tcp/4001/p2p/12D3KooWRelay/p2p-circuit/p2p/12D3KooWCarol"
    assert describe_link((relayed,), lambda p: names(p) or p) == "relayed by relay"
    direct = "/ip4/10.88.0.3/tcp/4001/p2p/12D3KooWAlice"
    assert describe_link((direct, relayed), lambda p: p) == "/ip4/10.88.0.3/tcp/4001"
    assert describe_link(("/p2p-circuit/p2p/12D3KooWCarol",), lambda p: p) == "relayed"
    assert describe_link((), lambda p: p) == ""
