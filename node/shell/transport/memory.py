"""The in-memory twin: many transports in one process, no sockets, no threads.

A ``MemoryNetwork`` is the "internet" the twins share: addresses resolve to transports,
a connection is a pair of references, a stream is two in-memory byte pipes. All protocol
logic (limits, framing, garbage handling) is inherited from ``Transport``, so what the
conformance suite checks holds for both.
"""

from __future__ import annotations

from typing import Any

import trio

from node.errors import ConnectionLost, PeerUnreachable, TransportError
from node.shell.transport.base import Transport
from node.shell.transport.types import PeerId, TransportConfig


class MemoryNetwork:
    """Address book shared by the twins of one test or simulation."""

    def __init__(self) -> None:
        self._listeners: dict[str, MemoryTransport] = {}
        self._next_port = 0

    def _listen(self, transport: MemoryTransport) -> str:
        self._next_port += 1
        addr = f"/memory/{self._next_port}/p2p/{transport.peer_id}"
        self._listeners[addr] = transport
        return addr

    def _unlisten(self, addr: str) -> None:
        self._listeners.pop(addr, None)

    def _lookup(self, addr: str) -> MemoryTransport | None:
        return self._listeners.get(addr)


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

    def _drop_link(self, peer: PeerId) -> None:
        remote = self._links.pop(peer, None)
        if remote is None:
            return
        for stream in list(self._streams.pop(peer, ())):
            stream.reset_nowait()
        self._peer_down(peer)
        remote._drop_link(self.peer_id)

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
