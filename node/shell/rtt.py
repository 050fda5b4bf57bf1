"""Round-trip times to connected members, measured with libp2p's ping protocol.

``RttProbe.run`` pings each connected member once per interval (``Transport.ping``: the
``/ipfs/ping/1.0.0`` exchange py-libp2p's host already answers), each ping bounded by a
timeout and run on its own, so a silent peer delays nobody else. It keeps, per peer, the last
round trip and a smoothed one (an EWMA with gain 1/8, TCP's SRTT of RFC 6298). A ping that
fails (timed out, reset, an echo of other bytes) forgets the peer's RTT until one succeeds
again: unknown, not stale. It never raises for anything a peer does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from node.errors import TransportClosed, TransportError
from node.shell.transport import PeerId, Transport

log = logging.getLogger("node.shell.rtt")
GAIN = 1 / 8  # weight of a new sample in the smoothed RTT
MAX_TIMEOUT = 10.0  # a ping slower than this (or than the interval) counts as failed
POLL = 1.0  # how often newly connected peers are looked for (their first ping is due at once)


@dataclass(frozen=True)
class Rtt:
    last_s: float  # the latest round trip
    smoothed_s: float  # EWMA of the round trips since the peer (re)answered


class RttProbe:
    """``nursery.start_soon(probe.run)``; ``probe.of(peer)`` for status."""

    def __init__(
        self,
        transport: Transport,
        wanted: Callable[[PeerId], bool],
        interval: float,
        timeout: float | None = None,
    ) -> None:
        self._transport = transport
        self._wanted = wanted  # which connected peers to ping (the members)
        self.interval = interval
        self.timeout = min(interval, MAX_TIMEOUT) if timeout is None else timeout
        self._rtts: dict[PeerId, Rtt] = {}
        self._due: dict[PeerId, float] = {}  # peer -> trio time its next ping is due
        self._in_flight: set[PeerId] = set()
        self.failures = 0  # pings that got no good answer, all peers together

    def __repr__(self) -> str:
        return f"<RttProbe every {self.interval} s, {len(self._rtts)} peers known>"

    def of(self, peer: PeerId) -> Rtt | None:
        """The peer's round trip, while it is connected and answered its latest ping."""
        return self._rtts.get(peer) if peer in self._transport.peers() else None

    def record(self, peer: PeerId, rtt_s: float) -> Rtt:
        old = self._rtts.get(peer)
        smoothed = rtt_s if old is None else old.smoothed_s + GAIN * (rtt_s - old.smoothed_s)
        self._rtts[peer] = new = Rtt(rtt_s, smoothed)
        return new

    def forget(self, peer: PeerId) -> None:
        self._rtts.pop(peer, None)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                self._start_due(nursery, trio.current_time())
                await trio.sleep(min(POLL, self.interval))

    def _start_due(self, nursery: trio.Nursery, now: float) -> None:
        connected = self._transport.peers()
        for peer in set(self._due) - connected:  # gone: its next connection starts afresh
            del self._due[peer]
            self.forget(peer)
        for peer in sorted(connected - self._in_flight):
            if self._due.get(peer, now) <= now and self._wanted(peer):
                self._due[peer] = now + self.interval
                self._in_flight.add(peer)
                nursery.start_soon(self._probe, peer)

    async def _probe(self, peer: PeerId) -> None:
        try:
            with trio.fail_after(self.timeout):
                rtt = await self._transport.ping(peer)
        except trio.TooSlowError:
            self.failures += 1
            self.forget(peer)
            log.info("ping to %s: no answer in %.1f s", peer, self.timeout)
        except TransportClosed:
            self.forget(peer)  # we are stopping
        except TransportError as exc:  # silence, a reset, garbage (the transport punishes)
            self.failures += 1
            self.forget(peer)
            log.info("ping to %s failed: %s", peer, exc)
        except Exception:  # noqa: BLE001 - a defect of ours: a measurement never stops the node
            self.failures += 1
            self.forget(peer)
            log.exception("ping to %s failed", peer)
        else:
            self.record(peer, rtt)
        finally:
            self._in_flight.discard(peer)
