"""Members find each other (issue 14): nodes started in a line, each told one address, end up
connected to every member of the roster, through the DHT's peer routing among members; a peer
the roster does not name learns no member's address from a member."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from node.shell.home import Home
from node.shell.transport import TransportConfig
from node.shell.transport.libp2p import Libp2pTransport
from tests.node.conftest import make_homes
from tests.node.procs import Node, start_line, stop, until

pytestmark = pytest.mark.slow


def _connected_members(node: Node) -> set[str]:
    return {p["name"] for p in node.status()["peers"] if p["member"]}


def _connected_to(node: Node, others: set[str]) -> Callable[[], bool]:
    return lambda: _connected_members(node) == others


async def test_members_told_one_address_each_find_every_member(tmp_path: Path) -> None:
    names = ["alice", "bob", "carol", "dave"]
    homes = make_homes(tmp_path, names)
    nodes = start_line(homes)  # bob knows alice, carol bob, dave carol: nothing else
    try:
        for node, name in zip(nodes, names, strict=True):
            await until(_connected_to(node, set(names) - {name}), f"{name}: every member")
    finally:
        logs = stop(nodes)
    assert any("reached through peer routing" in log for log in logs)


async def test_a_stranger_learns_no_member_address(tmp_path: Path) -> None:
    """A peer outside the roster connects to a member (strangers may pull commits) and asks
    it, by Kademlia, for another member: its DHT streams are reset, it is never added to
    the member's routing table, and it learns nothing."""
    alice, bob = make_homes(tmp_path, ["alice", "bob"])
    stranger = Home.init(tmp_path / "eve", "eve")
    config = TransportConfig(enable_dht=True, request_timeout=5)

    def member(home: Home) -> Libp2pTransport:
        t = Libp2pTransport(home.identity().private_bytes(), config)
        t.set_member_filter(lambda peer: peer in {a.peer_id, b.peer_id})
        return t

    a, b = member(alice), member(bob)
    eve = Libp2pTransport(stranger.identity().private_bytes(), config)
    async with trio.open_nursery() as nursery:
        for t in (a, b, eve):
            await nursery.start(t.run)
        await b.connect(a.listen_addrs[0])
        assert await a.find_peer(b.peer_id)  # members find each other
        await eve.connect(a.listen_addrs[0])
        assert await eve.find_peer(b.peer_id) == ()  # ...a stranger finds nothing
        assert a.statistics().refused_streams >= 1
        for t in (a, b, eve):
            t.stop()
