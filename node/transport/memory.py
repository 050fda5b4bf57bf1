"""The in-memory twin: many transports in one process, no sockets, no threads.

A ``MemoryNetwork`` is the "internet" the twins share: addresses resolve to transports,
a connection is a pair of references, a stream is two in-memory byte pipes. Gossip floods
along connections between subscribed peers with a seen-set, like a gossipsub mesh that is
always fully grafted. All protocol logic (limits, framing, garbage handling) is inherited
from ``Transport``, so what the conformance suite checks holds for both.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import trio

from node.errors import ConnectionLost, PeerUnreachable, TransportError
from node.transport.base import Transport
from node.transport.types import PeerId, TransportConfig

_SEEN_CAP = 10_000  # message ids remembered for dedup (gossipsub keeps a time window)


class MemoryNetwork:
    """Address book shared by the twins of one test or simulation."""

    def __init__(self) -> None:
        self._listeners: dict[str, MemoryTransport] = {}
        self._next_port = 0
        self._changed = trio.Event()

    def _listen(self, transport: MemoryTransport) -> str:
        self._next_port += 1
        addr = f"/memory/{self._next_port}/p2p/{transport.peer_id}"
        self._listeners[addr] = transport
        return addr

    def _unlisten(self, addr: str) -> None:
        self._listeners.pop(addr, None)

    def _lookup(self, addr: str) -> MemoryTransport | None:
        return self._listeners.get(addr)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_changed(self) -> None:
        await self._changed.wait()


class _Pipe:
    """One direction of a stream: an unbounded byte buffer with EOF and reset."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False
        self._reset = False
        self._lot = trio.lowlevel.ParkingLot()

    def put(self, data: bytes) -> None:
        if self._reset:
            raise ConnectionLost("stream reset")
        if self._eof:
            raise TransportError("write after close_write")
        self._buf += data
        self._lot.unpark_all()

    def put_eof(self) -> None:
        self._eof = True
        self._lot.unpark_all()

    def reset(self) -> None:
        self._reset = True
        self._buf.clear()
        self._lot.unpark_all()

    async def get(self, max_bytes: int) -> bytes:
        if not (self._buf or self._eof or self._reset):
            await self._lot.park()
        else:
            await trio.lowlevel.checkpoint()
        while not (self._buf or self._eof or self._reset):
            await self._lot.park()
        if self._reset:
            raise ConnectionLost("stream reset")
        chunk = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        return chunk


class _MemoryStream:
    """One end of a stream; registered with its transport so a disconnect resets it."""

    def __init__(self, inbound: _Pipe, outbound: _Pipe, registry: set[_MemoryStream]) -> None:
        self._in = inbound
        self._out = outbound
        self._registry = registry
        registry.add(self)

    async def read(self, max_bytes: int) -> bytes:
        return await self._in.get(max_bytes)

    async def write(self, data: bytes) -> None:
        self._out.put(data)
        await trio.lowlevel.checkpoint()

    async def close_write(self) -> None:
        self._out.put_eof()
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        self._out.put_eof()
        self._registry.discard(self)
        await trio.lowlevel.checkpoint()

    async def reset(self) -> None:
        self.reset_nowait()
        await trio.lowlevel.checkpoint()

    def reset_nowait(self) -> None:
        self._in.reset()
        self._out.reset()
        self._registry.discard(self)


@dataclass(frozen=True)
class _Gossip:
    via: PeerId
    origin: PeerId
    seqno: int
    topic: str
    data: bytes


class MemoryTransport(Transport):
    """A ``Transport`` whose peers live in the same trio run."""

    def __init__(
        self, network: MemoryNetwork, seed: bytes, config: TransportConfig | None = None
    ) -> None:
        super().__init__(seed, config)
        self._network = network
        self._addr: str | None = None
        self._links: dict[PeerId, MemoryTransport] = {}
        self._streams: dict[PeerId, set[_MemoryStream]] = {}
        self._topics: set[str] = set()
        self._seqno = 0
        self._seen: OrderedDict[tuple[PeerId, int], None] = OrderedDict()
        self._gossip_tx, self._gossip_rx = trio.open_memory_channel[_Gossip](math.inf)
        self._stopping = trio.Event()
        self._nursery: trio.Nursery | None = None

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        return (self._addr,) if self._addr else ()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._addr = self._network._listen(self)
            self._running = True
            nursery.start_soon(self._pump_gossip)
            for addr in self.config.bootstrap:
                nursery.start_soon(self._keep_connected, addr)
            task_status.started()
            try:
                await self._stopping.wait()
            finally:
                self._shutdown()
                nursery.cancel_scope.cancel()

    def stop(self) -> None:
        self._stopping.set()

    def _shutdown(self) -> None:
        self._running = False
        if self._addr:
            self._network._unlisten(self._addr)
            self._addr = None
        for peer in list(self._links):
            self._drop_link(peer)

    async def connect(self, addr: str) -> PeerId:
        self._check_running()
        remote = self._network._lookup(addr)
        if remote is None or not remote._running:
            raise PeerUnreachable(f"nothing listens on {addr}")
        if remote is self:
            raise PeerUnreachable("cannot dial self")
        if remote.is_banned(self.peer_id):
            remote._count("banned_connections")  # as libp2p's notifee drops it there
            raise PeerUnreachable(f"{addr} bans us for sending garbage")
        if self.is_banned(remote.peer_id):
            raise PeerUnreachable(f"{addr} is banned for sending garbage")
        if remote.peer_id not in self._links:
            self._add_link(remote)
            remote._add_link(self)
        await trio.lowlevel.checkpoint()
        return remote.peer_id

    def peer_addrs(self, peer: PeerId) -> tuple[str, ...]:
        remote = self._links.get(peer)
        return remote.listen_addrs if remote is not None else ()

    async def disconnect(self, peer: PeerId) -> None:
        self._drop_link(peer)
        await trio.lowlevel.checkpoint()

    def _add_link(self, remote: MemoryTransport) -> None:
        self._links[remote.peer_id] = remote
        self._streams[remote.peer_id] = set()
        self._peer_up(remote.peer_id)
        self._network._notify()

    def _drop_link(self, peer: PeerId) -> None:
        remote = self._links.pop(peer, None)
        if remote is None:
            return
        for stream in list(self._streams.pop(peer, ())):
            stream.reset_nowait()
        self._peer_down(peer)
        remote._drop_link(self.peer_id)
        self._network._notify()

    async def _open_stream(self, peer: PeerId, protocol: str) -> _MemoryStream:
        self._check_running()
        remote = self._links.get(peer)
        if remote is None or remote._nursery is None:
            raise PeerUnreachable(f"not connected to {peer}")
        up, down = _Pipe(), _Pipe()
        ours = _MemoryStream(down, up, self._streams[peer])
        theirs = _MemoryStream(up, down, remote._streams[self.peer_id])
        remote._nursery.start_soon(remote._serve_stream, self.peer_id, protocol, theirs)
        await trio.lowlevel.checkpoint()
        return ours

    # -- gossip ------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)
        self._network._notify()
        await trio.lowlevel.checkpoint()

    async def wait_mesh(self, peer: PeerId, topic: str) -> None:
        while not self._meshed(peer, topic):
            await self._network._wait_changed()

    def _meshed(self, peer: PeerId, topic: str) -> bool:
        remote = self._links.get(peer)
        return remote is not None and topic in remote._topics and topic in self._topics

    async def _publish(self, topic: str, data: bytes) -> None:
        self._seqno += 1
        msg = _Gossip(self.peer_id, self.peer_id, self._seqno, topic, data)
        self._remember(msg)
        self._forward(msg)
        await trio.lowlevel.checkpoint()

    async def _pump_gossip(self) -> None:
        async for msg in self._gossip_rx:
            if not self._remember(msg):
                continue
            if msg.topic in self._topics:
                self._gossip_in(msg.topic, msg.origin, msg.data)
                self._forward(msg)

    def _remember(self, msg: _Gossip) -> bool:
        """Record the message id; False if it was seen before."""
        key = (msg.origin, msg.seqno)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > _SEEN_CAP:
            self._seen.popitem(last=False)
        return True

    def _forward(self, msg: _Gossip) -> None:
        relayed = _Gossip(self.peer_id, msg.origin, msg.seqno, msg.topic, msg.data)
        for peer, remote in self._links.items():
            if peer not in (msg.via, msg.origin) and msg.topic in remote._topics:
                remote._gossip_tx.send_nowait(relayed)
