"""The py-libp2p 0.8.1 backend, and every workaround it needs, in one place.

Workarounds (numbers from shared/notes/libp2p-0.8.1.md):
  #1  Noise is the only security transport offered, so a plaintext peer is refused.
  #2, #3, #5, #7 are gossipsub's: the node runs no pubsub. Every exchange is a request
      (``wire.REQUEST_PROTOCOL``) or a blob fetch (``wire.BLOB_PROTOCOL``) on its own stream.
  #4  graceful stop: ``host.close()`` runs inside ``host.run()`` before anything is
      cancelled, else the dialer's socket leaks and peers keep ghost connections. A
      cancelled ``run`` stops the same way (libp2p runs shielded, ``CLOSE_GRACE``).
  dial only ``connect()`` dials (``_guard_dials``): libp2p's on-demand dial from
      ``new_stream`` racing a disconnect or a stop leaks the new socket. DCUtR's dials
      (``dial_addr``, around ``dial_peer``) pass the same guard: nothing towards a banned
      peer, nothing once we stop, and a dial in flight is cancelled before the close.
  rst Yamux reports a reset that has already been processed as EOF; ``_Stream.read``
      checks the stream's reset flag, so a reset is ``ConnectionLost`` as in the twin.
  #6  ``max_connections_per_peer=1``: dials take ~15 ms instead of ~250 ms.
  log importing libp2p turns off propagation of its logger; we turn it back on. Two
      kinds of libp2p lines are demoted to DEBUG (``quiet_logs``), nothing else: the
      auto-connector's INFO lines every 10 s that say nothing changed, and identify's
      ERROR (with a traceback) when the peer it answers has just closed the connection.
  Bootstrap redial is ours (``Transport._keep_connected``): libp2p's own loop forgets a
  peer after a few failures and runs outside any nursery.
  ping: the host's default handler (``libp2p.host.ping.PingService``) answers
      ``/ipfs/ping/1.0.0``; the client is ``Transport.ping`` over the same wire, because
      ``PingService.ping`` reports whole milliseconds (0 on loopback) and reuses a stream.
  dht peer routing is py-libp2p's Kademlia DHT (``KadDHT``, server mode), gated to the
      network's members (``set_member_filter``): a stranger's ``/ipfs/kad/1.0.0`` stream
      is reset unread, only members enter the routing table (so only members' addresses
      are ever handed out), and the DHT dials members only. KadDHT adds a peer to its
      table only when that peer queries it, so a member is added when it connects.
libp2p exceptions are translated to ``node.errors`` only here (``_mapped``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

import node.shell.transport.wire as wire
from node.errors import ConnectionLost, PeerUnreachable, PortInUse
from node.shell.transport import quiet_logs
from node.shell.transport.base import Transport
from node.shell.transport.peerid import addr_peer
from node.shell.transport.relay import CIRCUIT, Relaying, is_circuit, relay_part
from node.shell.transport.types import PeerId, TransportConfig

logging.getLogger("libp2p").propagate = True  # libp2p sets False on import
quiet_logs.install()

CLOSE_GRACE = 5.0  # seconds a cancelled transport gets to close its connections (#4)
_log = logging.getLogger("node.shell.transport.libp2p")
_explicit_dial: ContextVar[bool] = ContextVar("explicit_dial", default=False)  # connect()
_T = TypeVar("_T")


@contextmanager
def _mapped(error: type[Exception], what: str) -> Iterator[None]:
    """Translate libp2p's exceptions into ours."""
    try:
        yield
    except (BaseLibp2pError, OSError, ValueError) as exc:
        raise error(f"{what}: {type(exc).__name__}: {exc}") from exc


def create_host(
    seed: bytes, listen_addrs: list[multiaddr.Multiaddr], announce: tuple[str, ...] = ()
) -> IHost:
    """A host pinned to Noise + Yamux, one connection per peer (workarounds #1, #6), that
    advertises dialable addresses (``advertised``)."""
    key_pair = create_new_key_pair(seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    extra = [multiaddr.Multiaddr(a) for a in announce]
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=listen_addrs,
        connection_config=ConnectionConfig(max_connections_per_peer=1),
        addrs_factory=lambda candidates: advertised(candidates, extra),
    )


def advertised(
    candidates: list[multiaddr.Multiaddr], announce: list[multiaddr.Multiaddr]
) -> list[multiaddr.Multiaddr]:
    """What identify tells peers (and the DHT hands on): the operator's ``announce``
    addresses first (a public or port-forwarded address the host cannot see), then every
    listen address with a wildcard (0.0.0.0) expanded into the host's interface addresses,
    loopback last. libp2p would advertise ``/ip4/0.0.0.0/...`` itself, which no peer can
    dial."""
    from libp2p.utils.address_validation import expand_wildcard_address

    out: list[multiaddr.Multiaddr] = list(announce)
    for addr in candidates:
        host = _ip4(addr)
        out.extend(expand_wildcard_address(addr) if host == "0.0.0.0" else [addr])
    unique = list(dict.fromkeys(str(a) for a in out if _ip4(a) != "0.0.0.0"))
    unique.sort(key=lambda a: a.startswith("/ip4/127."))  # stable: loopback last
    return [multiaddr.Multiaddr(a) for a in unique]


def _ip4(addr: multiaddr.Multiaddr) -> str | None:
    try:
        return str(addr.value_for_protocol("ip4"))
    except Exception:  # noqa: BLE001 - not an ip4 address (ip6, dns, a relay circuit)
        return None


class _Stream:
    """``wire.ByteStream`` over a libp2p stream; EOF is b"" (a half-close ends a frame)."""

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int) -> bytes:
        try:
            return await self._stream.read(max_bytes)
        except EOFError as exc:  # StreamEOF: the peer half-closed; a normal end of its frame
            if self._was_reset():
                raise ConnectionLost("read: stream reset") from exc
            return b""
        except BaseLibp2pError as exc:
            raise ConnectionLost(f"read: {type(exc).__name__}: {exc}") from exc

    def _was_reset(self) -> bool:
        """Yamux drops a stream's bookkeeping when a reset (RST, or the connection
        failing) arrives, and a read after that raises EOF, not a reset: without this a
        peer that resets mid-frame, or dies, looks like a truncated frame. The twin raises
        ``ConnectionLost`` for both, and so do we. (A FIN never sets the flag.)"""
        muxed = getattr(self._stream, "muxed_stream", None)
        return getattr(muxed, "reset_received", False) is True

    async def write(self, data: bytes) -> None:
        with _mapped(ConnectionLost, "write"):
            await self._stream.write(data)

    async def close_write(self) -> None:
        # NetStream has close_write (a Yamux FIN, read side stays open); INetStream
        # does not declare it.
        with _mapped(ConnectionLost, "close_write"):
            await self._stream.close_write()  # type: ignore[attr-defined]

    async def close(self) -> None:
        with _mapped(ConnectionLost, "close"):
            await self._stream.close()

    async def reset(self) -> None:
        await self._stream.reset()  # never raises: libp2p swallows reset failures


class _Notifee(INotifee):
    """Turns swarm connection callbacks into our peer events."""

    def __init__(self, transport: Libp2pTransport) -> None:
        self._transport = transport

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = str(conn.muxed_conn.peer_id)
        if self._transport.is_banned(peer):
            self._transport._count("banned_connections")
            # Not inline: closing from inside the swarm's notify path would stall it.
            self._transport._spawn(self._transport.disconnect, peer)
        else:
            self._transport._peer_up(peer)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer_id = conn.muxed_conn.peer_id
        if not network.get_connections(peer_id):
            self._transport._peer_down(str(peer_id))

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


def ensure_port_free(listen_addr: str) -> None:
    """Refuse a fixed TCP port another process already listens on. py-libp2p binds with
    SO_REUSEPORT (for hole punching), so a second node on one port would silently share it
    and receive half of its peers' connections."""
    import socket

    try:
        addr = multiaddr.Multiaddr(listen_addr)
        port = int(addr.value_for_protocol("tcp"))
        family, host = socket.AF_INET, addr.value_for_protocol("ip4")
    except Exception:  # noqa: BLE001 - not a plain ip4/tcp address: libp2p judges it
        return
    if port == 0:
        return
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR (a restart over TIME_WAIT is fine) but not SO_REUSEPORT: the bind
        # fails while any socket listens on the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortInUse(f"{listen_addr}: port {port} is in use ({exc.strerror})") from exc


class Libp2pTransport(Transport):
    """``Transport`` over py-libp2p: TCP + Noise + Yamux, our two stream protocols."""

    def __init__(self, seed: bytes, config: TransportConfig | None = None) -> None:
        super().__init__(seed, config)
        listen = [multiaddr.Multiaddr(a) for a in self.config.listen_addrs]
        self._listen = listen
        self.host = create_host(seed, listen, self.config.announce_addrs)
        for protocol in (wire.REQUEST_PROTOCOL, wire.BLOB_PROTOCOL):
            self.host.set_stream_handler(TProtocol(protocol), self._on_stream)
        self.host.get_network().register_notifee(_Notifee(self))
        self._dht = self._make_dht() if self.config.enable_dht else None
        self._relaying = Relaying(
            self.host,
            self.config,
            lambda p: self._is_member(p),
            self._count,
            is_banned=self.is_banned,
            is_running=lambda: self._running,
        )
        self._dials: set[trio.CancelScope] = set()  # libp2p dials in flight
        self._guard_dials()
        self._stopping = trio.Event()
        self._nursery: trio.Nursery | None = None

    def _guard_dials(self) -> None:
        """Every dial libp2p makes goes through ``_dial``. Three swarm methods dial:
        ``dial_peer`` (``connect()``, and libp2p's on-demand dial when ``new_stream`` finds
        no connection: identify, or our own request racing a disconnect) and ``dial_addr``
        / ``dial_addr_as_responder``, which only DCUtR calls (its hole punch and the
        direct dial it tries first, to the addresses the peer or identify gave). On-demand
        dials are refused, except the DHT's towards members (when enabled): one racing a
        disconnect or our shutdown leaks its socket (``Swarm.close()`` has already taken
        its list of connections)."""
        network = self.host.get_network()
        dial_peer = network.dial_peer

        async def guarded_dial_peer(peer_id: ID) -> list[INetConn]:
            explicit = _explicit_dial.get() or bool(self._dht and self._is_member(str(peer_id)))
            return await self._dial(peer_id, lambda: dial_peer(peer_id), on_demand=not explicit)

        network.dial_peer = guarded_dial_peer  # type: ignore[method-assign]
        for name in ("dial_addr", "dial_addr_as_responder"):  # same signature
            setattr(network, name, self._guarded_addr_dial(getattr(network, name)))

    def _guarded_addr_dial(
        self, dial: Callable[..., Awaitable[INetConn]]
    ) -> Callable[..., Awaitable[INetConn]]:
        async def guarded(
            addr: multiaddr.Multiaddr, peer_id: ID, source: tuple[str, int] | None = None
        ) -> INetConn:
            return await self._dial(peer_id, lambda: dial(addr, peer_id, source))

        return guarded

    async def _dial(
        self, peer_id: ID, dial: Callable[[], Awaitable[_T]], *, on_demand: bool = False
    ) -> _T:
        """Run one libp2p dial, unless ``_dial_refusal`` says no; one still in flight when
        we stop is cancelled (before ``host.close()``, which would miss its socket)."""
        why = self._dial_refusal(str(peer_id), on_demand=on_demand)
        if why is not None:
            raise SwarmException(f"not dialling {peer_id}: {why}")
        with trio.CancelScope() as scope:
            self._dials.add(scope)
            try:
                return await dial()
            finally:
                self._dials.discard(scope)
        raise SwarmException(f"not dialling {peer_id}: transport is stopped")

    def _dial_refusal(self, peer: PeerId, *, on_demand: bool = False) -> str | None:
        """Why ``peer`` may not be dialled now, or None: never once we are stopping, never
        towards a banned peer, and not on demand (see ``_guard_dials``)."""
        if not self._running:
            return "transport is stopped"
        if self.is_banned(peer):
            return "banned"
        return "not connected" if on_demand else None

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        return tuple(str(a) for a in self.host.get_addrs()) if self._running else ()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``stop()``, then close gracefully (#4). Cancelling the caller is a
        stop too: libp2p runs in a shielded scope, and a watcher outside it turns the
        caller's cancellation into ``stop()``, then allows ``CLOSE_GRACE`` seconds for
        the close before cancelling libp2p for real. (A test's nursery that is cancelled
        right after ``stop()`` otherwise interrupts ``host.close()`` and the dialer's
        sockets leak, to be found by a later test's garbage collection.)"""
        shield = trio.CancelScope(shield=True)
        async with trio.open_nursery() as watcher:
            watcher.start_soon(self._stop_when_cancelled, shield)
            try:
                with shield:
                    await self._serve(task_status)
            finally:
                watcher.cancel_scope.cancel()

    async def _stop_when_cancelled(self, shield: trio.CancelScope) -> None:
        try:
            await trio.sleep_forever()
        finally:  # the caller was cancelled, or _serve returned (then this is a no-op)
            self.stop()
            shield.deadline = min(shield.deadline, trio.current_time() + CLOSE_GRACE)

    async def _serve(self, task_status: Any) -> None:
        try:
            async with self.host.run(listen_addrs=self._listen), AsyncExitStack() as stack:
                for service in self._services():
                    await stack.enter_async_context(background_trio_service(service))
                await self._relaying.started()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._running = True
                    for addr in self.config.bootstrap:
                        nursery.start_soon(self._keep_connected, addr)
                    for addr in self.config.relays:
                        nursery.start_soon(self._keep_connected, addr, self._reserve)
                    # the peerstore grows without bound unless something evicts from it
                    nursery.start_soon(self.host.get_peerstore().start_cleanup_task, 300)
                    task_status.started()
                    await self._stopping.wait()
                    self._running = False
                    for dial in self._dials:  # nothing new starts (_dial_refusal)
                        dial.cancel()
                    await self.host.close()  # #4: before anything is cancelled
                    nursery.cancel_scope.cancel()
        finally:
            self._running = False

    def _services(self) -> list[Any]:
        return [*([] if self._dht is None else [self._dht]), *self._relaying.services()]

    async def _reserve(self, relay: PeerId) -> None:
        """Reserve a slot at ``relay`` while we stay connected to it, retrying with backoff
        (a relay that is full now may have room later)."""
        delay = self.config.backoff_min
        while relay in self._peers and self._nursery is not None:
            try:
                with trio.fail_after(self.config.request_timeout):
                    if await self._relaying.reserve(relay, self._nursery):
                        return
            except (trio.TooSlowError, BaseLibp2pError, OSError, ValueError) as exc:
                _log.info("relay %s: reservation failed: %s", relay, exc)
            await trio.sleep(delay)
            delay = min(delay * 2, self.config.backoff_max)

    # -- peer routing (the DHT) --------------------------------------------------------

    def _make_dht(self) -> Any:
        from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL_ID
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

        dht = KadDHT(self.host, DHTMode.SERVER)  # registers its handler; ours replaces it

        async def gated(stream: INetStream) -> None:
            peer = str(stream.muxed_conn.peer_id)
            if self.is_banned(peer) or not self._is_member(peer):
                self._count("refused_streams")
                await stream.reset()
                return
            await dht.handle_stream(stream)

        self.host.set_stream_handler(KAD_PROTOCOL_ID, gated)
        return dht

    def _peer_up(self, peer: PeerId) -> None:
        fresh = peer not in self._peers
        super()._peer_up(peer)
        if fresh and self._dht is not None and self._is_member(peer):
            self._spawn(self._add_to_routing_table, peer)

    async def _add_to_routing_table(self, peer: PeerId) -> None:
        """KadDHT learns a peer only when that peer queries it; we add each member that
        connects, so that members asking us for one another find it. (Skipping the
        server-mode check: it reads the protocols identify has not yet recorded.)"""
        if self._dht is None:
            return
        try:
            await self._dht.add_peer(ID.from_base58(peer), skip_server_mode_check=True)
        except Exception as exc:  # noqa: BLE001 - the DHT is best-effort discovery
            _log.debug("routing table: could not add %s: %s", peer, exc)

    async def find_peer(self, peer: PeerId) -> tuple[str, ...]:
        """An iterative Kademlia lookup of ``peer`` among the members we reach (the
        addresses each answer carries go to the peerstore), then what the peerstore
        holds. Not ``KadDHT.find_peer``: that returns the peerstore's addresses without
        asking anyone when it has some, and those may be the stale ones that failed."""
        if self._dht is not None and self._running:
            try:
                with trio.move_on_after(self.config.request_timeout):
                    key = ID.from_base58(peer).to_bytes()
                    await self._dht.peer_routing.find_closest_peers_network(key)
            except Exception as exc:  # noqa: BLE001 - whatever the DHT's peers answered
                _log.debug("find_peer %s: %s", peer, exc)
        found = self.peer_addrs(peer)
        direct = tuple(a for a in found if not is_circuit(a))
        relayed = (*(a for a in found if is_circuit(a)), *self._circuits_to(peer))
        return direct + tuple(dict.fromkeys(relayed))  # direct first: a relay is the last resort

    def _circuits_to(self, peer: PeerId) -> tuple[str, ...]:
        """``peer`` through each relay we hold a slot at: two members behind NAT that use
        one relay reach each other this way even when no lookup brought the address."""
        return tuple(
            f"{relay}/p2p-circuit/p2p/{peer}"
            for relay in self.config.relays
            if addr_peer(relay) != peer
        )

    def stop(self) -> None:
        self._stopping.set()

    def _spawn(self, fn: Callable[[PeerId], Awaitable[None]], peer: PeerId) -> None:
        if self._nursery is not None and self._running:
            self._nursery.start_soon(fn, peer)

    async def connect(self, addr: str) -> PeerId:
        self._check_running()
        with _mapped(PeerUnreachable, f"bad address {addr!r}"):
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        peer = str(info.peer_id)
        if peer == self.peer_id:
            raise PeerUnreachable("cannot dial self")
        if self.is_banned(peer):
            raise PeerUnreachable(f"{peer} is banned for sending garbage")
        if is_circuit(addr):  # a relayed dial goes over our link to the relay (a no-op when
            await self.connect(relay_part(addr))  # that link is up; redialled after a restart)
        explicit = _explicit_dial.set(True)
        try:
            with trio.fail_after(self.config.request_timeout), _mapped(PeerUnreachable, addr):
                if is_circuit(addr):
                    await self._relaying.dial(addr)  # host.connect refuses circuit addresses
                else:
                    await self.host.connect(info)
        except trio.TooSlowError as exc:
            raise PeerUnreachable(f"dial {addr} timed out") from exc
        except ConnectionError as exc:  # the circuit transport's failures
            raise PeerUnreachable(f"{addr}: {exc}") from exc
        finally:
            _explicit_dial.reset(explicit)
        self._peer_up(peer)  # the notifee may still be in flight; make connect() final
        return peer

    def peer_addrs(self, peer: PeerId) -> tuple[str, ...]:
        try:
            addrs = self.host.get_peerstore().addrs(ID.from_base58(peer))
        except (BaseLibp2pError, KeyError, ValueError):  # PeerStoreError is a KeyError
            return ()  # unknown or expired
        suffix = f"/p2p/{peer}"
        return tuple(a if a.endswith(suffix) else a + suffix for a in map(str, addrs))

    def link_addrs(self, peer: PeerId) -> tuple[str, ...]:
        try:
            conns = self.host.get_network().connections.get(ID.from_base58(peer), [])
            found = [str(a) for c in conns for a in c.get_transport_addresses()]
        except Exception:  # noqa: BLE001 - a connection closing under us: nothing to report
            found = []
        # py-libp2p 0.8.1 labels a connection relayed *to* us /p2p/<our id>/p2p-circuit/...
        # (it takes its own id for the relay's): the relay is unknown, so it is dropped
        mislabelled = f"/p2p/{self.peer_id}{CIRCUIT}"
        found = [
            a[len(mislabelled) - len(CIRCUIT) :] if a.startswith(mislabelled) else a for a in found
        ]
        return tuple(dict.fromkeys(found)) or super().link_addrs(peer)

    async def disconnect(self, peer: PeerId) -> None:
        with _mapped(ConnectionLost, f"disconnect {peer}"):
            await self.host.disconnect(ID.from_base58(peer))
        self._peer_down(peer)

    async def _open_stream(self, peer: PeerId, protocol: str) -> _Stream:
        if peer not in self._peers:
            raise PeerUnreachable(f"not connected to {peer}")
        # Connected, yet the stream failed: the peer reset it during negotiation (too many
        # open streams, protocol unsupported) - the same ConnectionLost the twin raises.
        with _mapped(ConnectionLost, f"open {protocol} to {peer}"):
            stream = await self.host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])
        return _Stream(stream)

    async def _on_stream(self, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        await self._serve_stream(peer, str(stream.get_protocol()), _Stream(stream))
