"""Members behind NAT: py-libp2p 0.8.1's circuit relay v2 and DCUtR, and the glue they lack.

What the library does (measured through real namespaces and MASQUERADE routers, see
``scripts/netlab.py``): a hop service with limits (``CircuitV2Protocol(allow_hop=True)``),
reservations that refresh themselves, relayed connections that carry any protocol, and DCUtR,
which upgrades a relayed connection to a direct one (a NAT'd member dialling a public one
out through its NAT; two NAT'd members by a TCP simultaneous open where their routers drop
unsolicited SYNs; not where a router answers them with a reset).

What it lacks, and this module adds:
  advertise  the library never advertises a circuit address, and ``addrs_factory`` mangles
             one (it cuts at the first ``/p2p/``). The *relay* records, in its own peerstore,
             ``<relay addr>/p2p/<relay>/p2p-circuit`` for each member holding a reservation,
             so the Kademlia answers it gives for that member carry the circuit address.
  dial       ``host.connect`` refuses ``/p2p-circuit`` addresses; ``dial`` takes them to the
             circuit transport.
  reserve    a reservation lives only while the member stays connected to the relay, and
             nothing renews it after a reconnect: ``reserve`` runs after every (re)connect.
  members    the hop service would serve anyone: a stream from a peer the roster does not
             name is reset unread, so strangers neither take slots nor are relayed.
  limits     the library's default is 4 reservations in all; the operator sets them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport

from node.shell.transport.types import PeerId, TransportConfig

_log = logging.getLogger("node.shell.transport.relay")
CIRCUIT = "/p2p-circuit"
MAX_CIRCUITS_PER_PEER = 8  # concurrent relayed connections to one reserved member
RESERVATION_TTL = 3600  # seconds; renewed by the library 30 s before it runs out


def is_circuit(addr: str) -> bool:
    return CIRCUIT in addr


def relay_part(addr: str) -> str:
    """``/ip4/R/tcp/P/p2p/RID`` of a circuit address ``.../p2p/RID/p2p-circuit/p2p/NID``."""
    return addr.split(CIRCUIT, 1)[0]


class Relaying:
    """The relay roles of one host: always STOP (accept connections relayed to us), HOP when
    ``config.relay_service``, CLIENT when ``config.relays`` names relays to reserve at, and
    DCUtR when ``config.hole_punching``. Start ``services()`` with the host, then
    ``await started()``."""

    def __init__(
        self,
        host: IHost,
        config: TransportConfig,
        is_member: Callable[[PeerId], bool],
        count: Callable[[str], None],
    ) -> None:
        self._host = host
        self._config = config
        self._is_member = is_member
        self._count = count
        self.limits = RelayLimits(
            duration=config.relay_max_seconds,
            data=config.relay_max_bytes,
            max_circuit_conns=MAX_CIRCUITS_PER_PEER,
            max_reservations=config.relay_max_reservations,
            reservation_ttl=RESERVATION_TTL,
        )
        self.protocol = CircuitV2Protocol(host, limits=self.limits, allow_hop=config.relay_service)
        roles = RelayRole.STOP
        if config.relay_service:
            roles |= RelayRole.HOP
        if config.relays:
            roles |= RelayRole.CLIENT
        self.circuits = CircuitV2Transport(
            host, self.protocol, RelayConfig(roles=roles, limits=self.limits)
        )
        self.dcutr = DCUtRProtocol(host) if config.hole_punching else None
        self.reservations = 0  # made, all relays together (each reconnect makes one again)
        self.on_reserved = trio.Event()  # set, and replaced, at each reservation made

    def services(self) -> list[Any]:
        return [self.protocol] if self.dcutr is None else [self.protocol, self.dcutr]

    async def started(self) -> None:
        """Once the protocol has registered its handlers: put the member gate on HOP."""
        await self.protocol.event_started.wait()
        if self._config.relay_service:
            self._host.set_stream_handler(HOP_PROTOCOL_ID, self._gated_hop)

    async def _gated_hop(self, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        if not self._is_member(peer):
            self._count("refused_streams")
            await stream.reset()
            return
        await self.protocol._handle_hop_stream(stream)  # a reservation, or a whole circuit
        if self.protocol.resource_manager.has_reservation(ID.from_base58(peer)):
            self._advertise_circuit(peer)

    def _advertise_circuit(self, peer: PeerId) -> None:
        """Record ``<our addr>/p2p-circuit`` as an address of ``peer``, so the DHT answers
        a member asking for ``peer`` with a way to reach it."""
        ours = [str(a) for a in self._host.get_addrs() if not str(a).startswith("/ip4/127.")]
        if not ours:
            return
        circuit = multiaddr.Multiaddr(f"{ours[0]}{CIRCUIT}")
        self._host.get_peerstore().add_addrs(ID.from_base58(peer), [circuit], RESERVATION_TTL)

    async def dial(self, addr: str) -> None:
        """Open a relayed connection (``.../p2p/RID/p2p-circuit/p2p/NID``); the relay must
        be reachable (``Transport.connect`` dials it first)."""
        await self.circuits.dial(multiaddr.Multiaddr(addr))

    async def reserve(self, relay: PeerId, nursery: trio.Nursery) -> bool:
        """Reserve a slot at ``relay`` (connected): the library renews it while we stay
        connected, and we call this again after every reconnect."""
        relay_id = ID.from_base58(relay)
        stream = await self._host.new_stream(relay_id, [TProtocol(HOP_PROTOCOL_ID)])
        try:
            ok = await self.circuits.reserve(stream, relay_id, nursery)
        finally:
            await stream.close()
        if ok:
            self.reservations += 1
            self.on_reserved.set()
            self.on_reserved = trio.Event()
            _log.info("reserved a relay slot at %s", relay)
        else:
            _log.warning("relay %s refused a reservation (full, or not a relay)", relay)
        return bool(ok)
