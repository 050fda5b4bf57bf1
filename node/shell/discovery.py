"""Members find each other: a node dials every member of the roster in force that it is not
connected to, at addresses it learns from the members it reaches.

The roster names every member's key, hence its peer id; what a new member lacks is
addresses. ``Discovery.run`` looks each missing member up with ``Transport.find_peer`` (for
libp2p, a Kademlia lookup through the members we are connected to: their answers carry the
addresses identify gave them) and dials what it finds. So one reachable address (a
bootstrap) is enough to join: every member that peer knows of is found from it, and the
members those know of in turn.

Each missing member is tried when a member connects (it may know others) and otherwise at
most once per interval; after a failure it waits twice as long as before (up to
``MAX_BACKOFF``): a member that is down costs a lookup now and
then, not a dial storm. Lookups run concurrently, a few at a time, each bounded by the
transport's timeouts. Nothing here raises for what the network answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import trio

from node.errors import TransportClosed, TransportError
from node.shell.transport import PeerId, Transport

log = logging.getLogger("node.shell.discovery")
MAX_BACKOFF = 300.0  # seconds: the longest a member that could not be reached waits
PARALLEL = 4  # lookups in flight at once


class Discovery:
    """``nursery.start_soon(discovery.run)``; ``found`` counts the missing members it
    reached, ``failures`` the lookups that reached nobody."""

    def __init__(
        self,
        transport: Transport,
        members: Callable[[], Iterable[PeerId]],
        interval: float,
        name_of: Callable[[PeerId], str] = str,
    ) -> None:
        self._transport = transport
        self._name_of = name_of  # for the log: the roster's name of a member
        self._members = members  # the peer ids of the roster in force
        self.interval = interval
        self._due: dict[PeerId, float] = {}  # member -> trio time of its next attempt
        self._backoff: dict[PeerId, float] = {}
        self._in_flight: set[PeerId] = set()
        self._limiter = trio.CapacityLimiter(PARALLEL)
        self._kicked = trio.Event()
        self.found = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"<Discovery every {self.interval} s, {self.found} found>"

    def kick(self) -> None:
        """A member connected: it may know members we do not, so every missing member is
        due now (their backoff is kept for the next failure)."""
        self._due.clear()
        self._kicked.set()

    def missing(self) -> list[PeerId]:
        """Members of the roster in force we are not connected to (not us)."""
        connected = self._transport.peers()
        me = self._transport.peer_id
        return sorted(p for p in set(self._members()) if p != me and p not in connected)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                for peer in self.missing():
                    if peer not in self._in_flight and self._due.get(peer, now) <= now:
                        self._in_flight.add(peer)
                        nursery.start_soon(self._attempt, peer)
                with trio.move_on_after(self.interval):
                    await self._kicked.wait()
                self._kicked = trio.Event()

    async def _attempt(self, peer: PeerId) -> None:
        try:
            async with self._limiter:
                reached = await self.reach(peer)
        finally:
            self._in_flight.discard(peer)
        if reached:
            self._backoff.pop(peer, None)
            self._due.pop(peer, None)
        else:
            wait = min(MAX_BACKOFF, 2 * self._backoff.get(peer, self.interval / 2))
            self._backoff[peer] = wait
            self._due[peer] = trio.current_time() + wait
            log.info("member %s not reachable yet; next try in %.0f s", self._name_of(peer), wait)

    async def reach(self, peer: PeerId) -> bool:
        """Look ``peer`` up and dial its addresses until one answers."""
        try:
            addrs = await self._transport.find_peer(peer)
        except (TransportError, TransportClosed):
            return False
        for addr in addrs:
            if peer in self._transport.peers():
                break  # the lookup itself reached it (a Kademlia query dials), or it dialled us
            try:
                await self._transport.connect(addr)
            except TransportClosed:
                return False
            except TransportError as exc:
                log.debug("member %s not reachable at %s: %s", peer, addr, exc)
                continue
            break
        if peer in self._transport.peers():
            self.found += 1
            log.info("member %s reached through peer routing", self._name_of(peer))
            return True
        self.failures += 1
        return False
