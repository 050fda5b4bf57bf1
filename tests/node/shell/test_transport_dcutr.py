"""DCUtR (hole punching) against the transport's dial guard, with real libp2p on loopback: a
banned peer or a stranger is not dialled by a hole punch, whichever side starts it, and a stopping
transport dials nothing (a dial in flight is cancelled). No NAT here (that is
tests/node/e2e/test_netns.py): the hole punch is DCUtR's exchange over a relayed
connection, and its dial goes to the peer's loopback address, the address a punch would try.
DCUtR's auto-drive loop is switched off so that only the test starts hole punches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import multiaddr
import pytest
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.rcmgr import Direction
from libp2p.relay.circuit_v2.dcutr import PROTOCOL_ID as DCUTR_PROTOCOL_ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol, read_dcutr_msg
from libp2p.relay.circuit_v2.pb.dcutr_pb2 import HolePunch
from libp2p.relay.circuit_v2.utils import write_delimited_msg

from node.shell.transport import PeerId
from node.shell.transport.libp2p import Libp2pTransport
from node.shell.transport.peerid import peer_id_from_seed
from node.shell.transport.relay import is_circuit
from tests.node.shell.test_transport_relay import WAIT, _transport


def _bare(addr: str) -> multiaddr.Multiaddr:
    """``/ip4/../tcp/..`` of a listen address (``.../p2p/<id>``): what DCUtR dials."""
    return multiaddr.Multiaddr(addr.split("/p2p/")[0])


async def _drive_nothing(self: DCUtRProtocol) -> None:
    await trio.sleep_forever()


class _DialsFrom(INotifee):
    """On the dialled side: each direct (not relayed) connection that ``peer`` dialled."""

    def __init__(self, peer: PeerId) -> None:
        self._peer = ID.from_base58(peer)
        self.seen = 0
        self.arrived = trio.Event()

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        addrs = [str(a) for a in conn.get_transport_addresses()]
        direction = getattr(conn, "direction", None)
        if conn.muxed_conn.peer_id == self._peer and direction == Direction.INBOUND:
            if not any(is_circuit(a) for a in addrs):
                self.seen += 1
                self.arrived.set()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


async def _ask_to_punch(asker: Libp2pTransport, target: Libp2pTransport) -> bool:
    """DCUtR's initiator, played by hand over the connection ``asker`` has to ``target``:
    CONNECT with ``asker``'s address, then SYNC, on which ``target`` dials that address.
    (``initiate_hole_punch`` would first dial ``target`` itself.) True if ``target``
    answered, False if it reset the stream."""
    stream = await asker.host.new_stream(ID.from_base58(target.peer_id), [DCUTR_PROTOCOL_ID])
    connect = HolePunch(type=HolePunch.CONNECT, ObsAddrs=[_bare(asker.listen_addrs[0]).to_bytes()])
    try:
        await write_delimited_msg(stream, connect)
        reply = await read_dcutr_msg(stream, HolePunch)
    except BaseLibp2pError:
        await stream.reset()
        return False
    assert reply.type == HolePunch.CONNECT
    await write_delimited_msg(stream, HolePunch(type=HolePunch.SYNC))
    await stream.close()
    return True


@dataclass
class _Relayed:
    """A relay, a ``hidden`` peer holding a reservation there, and a ``caller`` connected to
    it through the relay's circuit (the caller's peerstore knows the hidden peer's direct
    address, as identify would tell it); ``dials``: the caller's direct dials to it."""

    relay: Libp2pTransport
    hidden: Libp2pTransport
    caller: Libp2pTransport
    dials: _DialsFrom

    @property
    def hidden_id(self) -> ID:
        return ID.from_base58(self.hidden.peer_id)

    @property
    def hidden_addr(self) -> multiaddr.Multiaddr:
        return _bare(self.hidden.listen_addrs[0])

    def stop(self) -> None:
        for t in (self.relay, self.hidden, self.caller):
            t.stop()


async def _relayed(
    nursery: trio.Nursery, roster: set[PeerId], caller_roster: set[PeerId]
) -> _Relayed:
    """Started in ``nursery``; the relay and the hidden peer go by ``roster``, the caller by
    ``caller_roster`` (the same set, or one of its own). Every peer joins ``roster``, the
    relay and the caller join ``caller_roster``: whether it names the hidden peer is the
    test's."""
    relay = _transport(1, roster, relay_service=True)
    roster.add(relay.peer_id)
    await nursery.start(relay.run)
    hidden = _transport(2, roster, relays=(relay.listen_addrs[0],))
    caller = _transport(3, caller_roster)
    roster |= {hidden.peer_id, caller.peer_id}
    caller_roster |= {relay.peer_id, caller.peer_id}
    dials = _DialsFrom(caller.peer_id)
    hidden.host.get_network().register_notifee(dials)
    with trio.fail_after(WAIT):
        reserved = hidden._relaying.on_reserved
        await nursery.start(hidden.run)
        await nursery.start(caller.run)
        await reserved.wait()
        await caller.connect(f"{relay.listen_addrs[0]}/p2p-circuit/p2p/{hidden.peer_id}")
    lab = _Relayed(relay, hidden, caller, dials)
    caller.host.get_peerstore().add_addrs(lab.hidden_id, [lab.hidden_addr], 600)
    return lab


async def test_a_banned_peer_is_not_dialled_by_a_hole_punch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(DCUtRProtocol, "_auto_drive_loop", _drive_nothing)
    members: set[PeerId] = set()
    async with trio.open_nursery() as nursery:
        lab = await _relayed(nursery, members, members)
        hidden, caller, hidden_id, hidden_addr = (
            lab.hidden,
            lab.caller,
            lab.hidden_id,
            lab.hidden_addr,
        )
        # Banned as for garbage, minus the disconnect: the moment before a banned peer's
        # connection is dropped, or a banned peer back over a relay.
        caller._banned[hidden.peer_id] = trio.current_time() + 60
        dcutr = caller._relaying.dcutr
        assert dcutr is not None
        network = caller.host.get_network()
        with trio.fail_after(WAIT):
            assert not await _ask_to_punch(hidden, caller)  # reset unread
            assert caller.statistics().banned_streams == 1
            assert not await dcutr.initiate_hole_punch(hidden_id)  # nor started towards it
            for dial in (network.dial_addr, network.dial_addr_as_responder):  # DCUtR's dials
                with pytest.raises(SwarmException, match="banned"):
                    await dial(hidden_addr, hidden_id)
            await dcutr._dial_peer(hidden_id, hidden_addr)  # its dial step swallows the refusal
        assert lab.dials.seen == 0
        assert all(is_circuit(a) for a in caller.link_addrs(hidden.peer_id))

        # The same request from a peer in good standing: the caller dials it directly.
        del caller._banned[hidden.peer_id]
        with trio.fail_after(WAIT):
            assert await _ask_to_punch(hidden, caller)
            await lab.dials.arrived.wait()
        lab.stop()


async def test_a_stranger_over_a_relay_is_not_dialled_by_a_hole_punch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer the caller's roster does not name, reaching it over a relay the caller does
    not run (here: a relay whose roster does name it), asks for a hole punch: its stream is
    reset unread and counted as refused, and no punch is started towards it. Otherwise a
    stranger could make a member dial any address it sends."""
    monkeypatch.setattr(DCUtRProtocol, "_auto_drive_loop", _drive_nothing)
    caller_roster: set[PeerId] = set()
    async with trio.open_nursery() as nursery:
        lab = await _relayed(nursery, set(), caller_roster)
        stranger, caller = lab.hidden, lab.caller
        dcutr = caller._relaying.dcutr
        assert dcutr is not None
        refused = caller.statistics().refused_streams
        with trio.fail_after(WAIT):
            assert not await _ask_to_punch(stranger, caller)  # reset unread
            assert caller.statistics().refused_streams == refused + 1
            assert not await dcutr.initiate_hole_punch(lab.hidden_id)  # nor started towards it
        assert lab.dials.seen == 0
        assert all(is_circuit(a) for a in caller.link_addrs(stranger.peer_id))

        # Once the caller's roster names it (a roster update), the same request is served.
        caller_roster.add(stranger.peer_id)
        with trio.fail_after(WAIT):
            assert await _ask_to_punch(stranger, caller)
            await lab.dials.arrived.wait()
        lab.stop()


async def test_a_stopping_transport_cancels_its_dial_in_flight_and_dials_nothing() -> None:
    """A dial stuck in its handshake (a listener that accepts and never answers) when the
    transport stops is cancelled before the close, its socket closed; after that every
    dial entry point refuses."""
    caller = _transport(3, set())
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    addr = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")
    nobody = ID.from_base58(peer_id_from_seed(bytes([9]) * 32))
    accepted, hung_up, refused = trio.Event(), trio.Event(), trio.Event()
    errors: list[SwarmException] = []

    async def silent_server() -> None:
        async with await listener.accept() as conn:
            accepted.set()
            while await conn.receive_some():  # the dialer's hello, unanswered, until EOF
                pass
            hung_up.set()

    async def dial(network: Any) -> None:
        with pytest.raises(SwarmException) as caught:
            await network.dial_addr(addr, nobody)
        errors.append(caught.value)
        refused.set()

    network = caller.host.get_network()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(WAIT):
            await nursery.start(caller.run)
            nursery.start_soon(silent_server)
            nursery.start_soon(dial, network)
            await accepted.wait()
            caller.stop()
            await refused.wait()
            await hung_up.wait()
    await listener.aclose()
    assert "stopped" in str(errors[0])
    for entry in (network.dial_addr, network.dial_addr_as_responder):
        with pytest.raises(SwarmException, match="stopped"):
            await entry(addr, nobody)
