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
  circuits   the library's relay loop (``CircuitV2Protocol._relay_data``, one task per
             direction) never ends a circuit that a limit cuts: the direction that runs past
             relay_max_bytes (or relay_max_seconds) resets both streams, and the other one,
             waiting to read a stream reset under it, never wakes (Yamux drops the stream's
             wake-up event without setting it). The circuit's slot (``active_connections``,
             released when both directions end) stays taken, and after
             MAX_CIRCUITS_PER_PEER cut circuits the member is unreachable through us
             (NO_RESERVATION). The loop also closes the streams it finds under a peer's id
             (``_active_relays[peer]``, one entry per peer), which may be another circuit's,
             and checks relay_max_seconds only when data flows. ``_relay_half`` replaces it.
  punching   DCUtR dials the addresses a peer sends it (``dial_addr``) around the
             transport's dial guard; those dials now pass it (``libp2p.py``), and here the
             DCUtR stream of a banned peer or a stranger is reset unread and no hole punch
             is started towards one, nor once the transport stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import PROTOCOL_ID as DCUTR_PROTOCOL_ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.constants import MAX_READ_LEN

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


class _Circuit:
    """The two directions of one relayed connection, each a ``_relay_half``: the first to
    fail cancels the other."""

    def __init__(self) -> None:
        self._halves = 2  # directions still to end
        self._scopes: list[trio.CancelScope] = []
        self._failed = False

    def join(self, deadline: float | None) -> trio.CancelScope:
        """The scope of one direction; ``deadline`` in ``time.monotonic()`` terms."""
        scope = trio.CancelScope()
        if deadline is not None:
            scope.deadline = trio.current_time() + max(0.0, deadline - time.monotonic())
        if self._failed:
            scope.cancel()
        self._scopes.append(scope)
        return scope

    def leave(self) -> bool:
        """One direction has ended; True when it was the last."""
        self._halves -= 1
        return not self._halves

    def fail(self) -> bool:
        """Cancel every direction; True the first time only."""
        if self._failed:
            return False
        self._failed = True
        for scope in self._scopes:
            scope.cancel()
        return True


class Relaying:
    """The relay roles of one host: always STOP (accept connections relayed to us), HOP when
    ``config.relay_service``, CLIENT when ``config.relays`` names relays to reserve at, and
    DCUtR when ``config.hole_punching``. Start ``services()`` with the host, then
    ``await started()``. ``is_banned`` and ``is_running`` are the transport's: DCUtR takes
    nothing from a banned peer or a stranger, and starts nothing once the transport stops."""

    def __init__(
        self,
        host: IHost,
        config: TransportConfig,
        is_member: Callable[[PeerId], bool],
        count: Callable[[str], None],
        *,
        is_banned: Callable[[PeerId], bool],
        is_running: Callable[[], bool],
    ) -> None:
        self._host = host
        self._config = config
        self._is_member = is_member
        self._count = count
        self._is_banned = is_banned
        self._is_running = is_running
        self.limits = RelayLimits(
            duration=config.relay_max_seconds,
            data=config.relay_max_bytes,
            max_circuit_conns=MAX_CIRCUITS_PER_PEER,
            max_reservations=config.relay_max_reservations,
            reservation_ttl=RESERVATION_TTL,
        )
        self.protocol = CircuitV2Protocol(host, limits=self.limits, allow_hop=config.relay_service)
        self.protocol._relay_data = self._relay_half  # type: ignore[method-assign]
        self._relayed: dict[frozenset[int], _Circuit] = {}  # by the ids of its two streams
        roles = RelayRole.STOP
        if config.relay_service:
            roles |= RelayRole.HOP
        if config.relays:
            roles |= RelayRole.CLIENT
        self.circuits = CircuitV2Transport(
            host, self.protocol, RelayConfig(roles=roles, limits=self.limits)
        )
        self.dcutr = DCUtRProtocol(host) if config.hole_punching else None
        if self.dcutr is not None:  # its auto-drive loop calls this for every relayed peer
            self._punch = self.dcutr.initiate_hole_punch
            self.dcutr.initiate_hole_punch = self._guarded_punch  # type: ignore[method-assign]
        self.reservations = 0  # made, all relays together (each reconnect makes one again)
        self.on_reserved = trio.Event()  # set, and replaced, at each reservation made
        self.hop_streams = 0  # HOP streams served to their end (reservations, circuits)
        self.on_hop_stream = trio.Event()  # set, and replaced, as each one ends

    def services(self) -> list[Any]:
        return [self.protocol] if self.dcutr is None else [self.protocol, self.dcutr]

    async def started(self) -> None:
        """Once the protocols have registered their handlers: put the member gate on HOP
        and the member and ban gate on DCUtR."""
        await self.protocol.event_started.wait()
        if self._config.relay_service:
            self._host.set_stream_handler(HOP_PROTOCOL_ID, self._gated_hop)
        if self.dcutr is not None:
            await self.dcutr.event_started.wait()
            self._host.set_stream_handler(DCUTR_PROTOCOL_ID, self._gated_dcutr)

    async def _gated_hop(self, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        if not self._is_member(peer):
            self._count("refused_streams")
            await stream.reset()
            return
        try:
            await self.protocol._handle_hop_stream(stream)  # a reservation, or a whole circuit
        finally:
            self.hop_streams += 1
            self.on_hop_stream.set()
            self.on_hop_stream = trio.Event()
        if self.protocol.resource_manager.has_reservation(ID.from_base58(peer)):
            self._advertise_circuit(peer)

    async def _gated_dcutr(self, stream: INetStream) -> None:
        """A peer asks us to hole punch: the session ends with us dialling the addresses
        it sent. Not for a banned peer or a stranger (its stream is reset unread: a
        stranger reaching us over someone else's relay would otherwise make us dial any
        address it names), nor once we stop."""
        peer = str(stream.muxed_conn.peer_id)
        refused = self._refusal(peer)
        if refused is not None or not self._is_running():
            if refused is not None:
                self._count(refused)
            await stream.reset()
            return
        assert self.dcutr is not None  # the handler is ours only with DCUtR
        await self.dcutr._handle_dcutr_stream(stream)

    async def _guarded_punch(self, peer_id: ID) -> bool:
        """``DCUtRProtocol.initiate_hole_punch``, refused for a banned peer, a stranger and
        once we stop (its dials pass the transport's guard as well)."""
        if self._refusal(str(peer_id)) is not None or not self._is_running():
            return False
        return bool(await self._punch(peer_id))

    def _refusal(self, peer: PeerId) -> str | None:
        """Why DCUtR takes nothing from ``peer`` (the statistic it counts), or None."""
        if self._is_banned(peer):
            return "banned_streams"
        return None if self._is_member(peer) else "refused_streams"

    # -- relaying a circuit (HOP), in place of the library's loop ----------------------

    async def _relay_half(
        self,
        src_stream: INetStream,
        dst_stream: INetStream,
        peer_id: ID,
        deadline: float | None = None,
        circuit_data_limit: list[int] | None = None,
    ) -> None:
        """One direction of a circuit, called as ``CircuitV2Protocol._relay_data`` (twice
        per circuit, the streams swapped; ``deadline`` in ``time.monotonic()`` terms, the
        data limit the bytes left to both directions together). An EOF is passed on as a
        half-close; anything else (a limit, a reset, the deadline) ends the circuit: the
        other direction is cancelled and both streams are reset, so the library's handler
        returns and releases the circuit's slot."""
        src, dst = src_stream, dst_stream
        key = frozenset((id(src), id(dst)))
        circuit = self._relayed.setdefault(key, _Circuit())
        clean = False
        try:
            with circuit.join(deadline):  # the deadline holds for an idle circuit too
                clean = await self._pump(src, dst, circuit_data_limit)
        finally:
            if circuit.leave():
                del self._relayed[key]
            self._forget_relay(peer_id, src, dst)
            if not clean and circuit.fail():
                await src.reset()  # never raises: libp2p swallows reset failures
                await dst.reset()

    async def _pump(self, src: INetStream, dst: INetStream, budget: list[int] | None) -> bool:
        """Copy ``src`` to ``dst``: True at ``src``'s EOF (passed on as a half-close), False
        when the circuit's byte budget runs out or a stream fails."""
        try:
            while True:
                try:
                    data = await src.read(MAX_READ_LEN)
                except EOFError:  # StreamEOF: the sender half-closed
                    data = b""
                if not data:
                    await dst.close_write()  # type: ignore[attr-defined]  # NetStream has it
                    return True
                if budget is not None:
                    if len(data) > budget[0]:
                        _log.info("circuit cut: relay_max_bytes (%d) reached", self.limits.data)
                        return False
                    budget[0] -= len(data)
                with trio.fail_after(self.protocol.write_timeout):  # the library's bound
                    await dst.write(data)
        except (BaseLibp2pError, OSError, ValueError, trio.TooSlowError) as exc:
            _log.debug("circuit ended: %s: %s", type(exc).__name__, exc)
            return False

    def _forget_relay(self, peer_id: ID, src: INetStream, dst: INetStream) -> None:
        """Drop the library's shutdown list entry for ``peer_id`` if it names this
        circuit's streams (the library's loop dropped it, whichever circuit it named)."""
        entry = self.protocol._active_relays.get(peer_id)
        if entry is not None and any(s is src or s is dst for s in entry):
            del self.protocol._active_relays[peer_id]

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
