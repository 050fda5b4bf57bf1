"""The blob side of the replication core: which blobs are held, which are wanted, and which
holder is being asked for each. ``node.core.protocol.Core`` owns one ``Fetcher`` and feeds it
what it learns (a record needs blobs, a peer holds them, a fetch was answered, a peer left, time
passed); the fetcher answers with steps: ``FetchBlob`` actions for the shell, and ``Wake(at)``
(``node.core.events``) for the core's timer. It does no I/O, reads no clock and knows nothing
of records beyond a commit's blob references; ``now`` and the connected peers are passed in.

Rules:

- A blob is *wanted* while a pending record waits for it (a ``MISSING`` verdict makes a
  record wait again for the blobs its judge found wrong), or once the held copy of a blob that
  complete records name was lost (``BlobLost``). Only wanted blobs are fetched. A blob is
  *held* once verified, or when the shell says it holds it already (a local commit's, a
  restored store's).
- Each wanted blob is fetched once, from one holder at a time (holders in the order they were
  offered), with at most ``max_fetches_per_peer`` fetches in flight to any one peer: a peer
  serves a bounded number of streams, and asking for more only gets them reset, which must
  never look like the peer's fault. With every holder busy the blob waits in a queue, oldest
  first, and starts when a slot frees.
- A fetch ends when it is answered, when its deadline (``fetch_timeout`` plus
  ``size / fetch_rate``) passes or when its peer leaves. On failure the next holder not yet
  tried is asked. After a deadline with no other holder free, the same one is asked again at
  once (a timeout already bounds the rate); after a refusal, reset or truncation with no other
  holder, the same ones after ``fetch_retry``, doubling each time up to ``sync_interval``.
  Every sync interval, holders that failed are tried again (a loss, a restart).
- Only bytes proven wrong (``CORRUPT``) are the peer's fault, and blaming it is the core's
  business; refusals, resets, truncation and timeouts are ``UNAVAILABLE``. An answer from a
  peer the blob is not being fetched from counts only if it delivers a wanted blob.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

from crypto.records import BlobRef
from node.core.events import BlobResult, CoreConfig, FetchBlob, Wake

Step: TypeAlias = FetchBlob | Wake


@dataclass(frozen=True)
class FetchStatistics:
    held: int
    wanted: int
    fetching: int
    queued: int
    retrying: int


class _InFlight(NamedTuple):
    peer: str
    deadline: float


class Fetcher:
    """Held and wanted blobs and the fetches of the wanted ones (see the module doc).

    Every method that may start a fetch takes ``now`` and ``up``, the peers connected now, and
    returns the steps to take, in order.
    """

    def __init__(self, config: CoreConfig, held: Iterable[bytes] = ()) -> None:
        self.config = config
        self._held: set[bytes] = set(held)
        self._wanted: dict[bytes, list[bytes]] = {}  # sha -> ids of the records waiting for it
        self._meta: dict[bytes, tuple[int, str]] = {}  # sha -> (size, kind), the first seen
        self._holders: dict[bytes, dict[str, None]] = {}  # ordered: asked first to last
        self._tried: dict[bytes, set[str]] = {}  # holders that failed since the last sync
        self._fetching: dict[bytes, _InFlight] = {}
        self._load: dict[str, int] = {}  # fetches in flight per peer (<= max_fetches_per_peer)
        self._queued: dict[bytes, None] = {}  # wanted blobs whose holders are all busy
        self._retry: dict[bytes, float] = {}  # refused by every holder: ask them again at
        self._backoff: dict[bytes, float] = {}  # ... after this long next time

    # --- what the core tells it ---

    def need(self, record: bytes, blobs: Mapping[str, BlobRef], *, held: bool) -> set[bytes]:
        """The record ``record`` names ``blobs`` (kind -> ref); ``held``: the shell holds them
        all already. Returns the ones missing, which the record now waits for."""
        shas: set[bytes] = set()
        for kind, ref in blobs.items():
            self._meta.setdefault(ref.sha256, (ref.size, kind))
            shas.add(ref.sha256)
        if held:
            self._held |= shas
        missing = shas - self._held
        for sha in sorted(missing):
            self.want(sha, record)
        return missing

    def want(self, sha: bytes, record: bytes | None = None) -> None:
        """Fetch ``sha`` (already described by ``need``) once holders are offered; ``record``
        waits for it. Without one it is still wanted: records that hold it complete lost it."""
        waiting = self._wanted.setdefault(sha, [])
        if record is not None and record not in waiting:
            waiting.append(record)

    def lost(self, sha: bytes) -> bool:
        """A held copy of ``sha`` is gone (damaged, dropped); False if it was not held."""
        if sha not in self._held:
            return False
        self._held.discard(sha)
        return True

    def offer(
        self, sha: bytes, peers: Iterable[str], now: float, up: Collection[str]
    ) -> list[Step]:
        """``peers`` hold ``sha`` (they sent a record that names it): fetch from them."""
        holders = self._holders.setdefault(sha, {})
        for peer in peers:
            holders[peer] = None
        out: list[Step] = []
        self._start(sha, now, up, out)
        return out

    def answered(self, peer: str, sha: bytes, result: BlobResult) -> bool:
        """``peer`` answered a ``FetchBlob`` for ``sha``: its slot is free and, unless the blob
        came, the peer is tried. False: a late answer to a fetch given up on, to ignore; else
        the core goes on with ``verified`` or ``failed`` (blaming the peer first if CORRUPT)."""
        current = self._fetching.get(sha)
        if current is not None and current.peer == peer:
            self._end(sha)
        elif result is not BlobResult.VERIFIED or sha not in self._wanted:
            return False
        if result is not BlobResult.VERIFIED:
            self._tried.setdefault(sha, set()).add(peer)
        return True

    def verified(self, sha: bytes) -> list[bytes]:
        """``sha`` is held now; returns the ids of the records that waited for it."""
        self._held.add(sha)
        for state in (self._holders, self._tried, self._retry, self._backoff, self._queued):
            state.pop(sha, None)
        return self._wanted.pop(sha, [])

    def failed(self, sha: bytes, now: float, up: Collection[str]) -> list[Step]:
        """The answer for ``sha`` was no blob: ask the next holder, or, with no other holder
        free, the same ones again after a backoff (a busy or restarting peer is not a bad one)."""
        out: list[Step] = []
        self._start(sha, now, up, out)
        if sha not in self._fetching and sha not in self._queued:
            delay = self._backoff.get(sha, self.config.fetch_retry)
            self._backoff[sha] = min(2 * delay, self.config.sync_interval)
            self._retry[sha] = now + delay
            out.append(Wake(self._retry[sha]))
        return out

    def peer_gone(self, peer: str, now: float, up: Collection[str]) -> list[Step]:
        """``peer`` is no longer connected (``up`` no longer has it): its fetches move on."""
        out: list[Step] = []
        for sha in [s for s, f in self._fetching.items() if f.peer == peer]:
            self._end(sha)
            self._start(sha, now, up, out)
        self._pump(now, up, out)
        return out

    def pump(self, now: float, up: Collection[str]) -> list[Step]:
        """Start queued fetches while slots are free (oldest first)."""
        out: list[Step] = []
        self._pump(now, up, out)
        return out

    def sync(self, now: float, up: Collection[str]) -> list[Step]:
        """A sync interval: every holder that failed once gets another chance."""
        out: list[Step] = []
        self._tried.clear()
        for sha in list(self._wanted):
            self._start(sha, now, up, out)
        return out

    def on_timer(self, now: float, up: Collection[str]) -> list[Step]:
        """Time is ``now``: fetches past their deadline move on, due retries start."""
        out: list[Step] = []
        for sha in [s for s, f in self._fetching.items() if f.deadline <= now]:
            peer = self._end(sha)
            self._tried.setdefault(sha, set()).add(peer)
            self._start(sha, now, up, out)
            if sha not in self._fetching:  # no other holder: a lost transfer is retried
                self._tried[sha].discard(peer)  # now (a timeout bounds the rate)
                self._start(sha, now, up, out)
        for sha in [s for s, at in self._retry.items() if at <= now]:
            del self._retry[sha]
            self._tried.pop(sha, None)
            self._start(sha, now, up, out)
        self._pump(now, up, out)
        return out

    # --- queries ---

    def holds(self, sha: bytes) -> bool:
        return sha in self._held

    def wanted(self) -> dict[bytes, tuple[int, str]]:
        """Blobs wanted: sha256 -> (size, kind)."""
        return {sha: self._meta[sha] for sha in self._wanted}

    def wakes(self) -> Iterator[float]:
        """Every time a ``Timer`` is due for: in-flight deadlines and retries."""
        yield from (f.deadline for f in self._fetching.values())
        yield from self._retry.values()

    def statistics(self) -> FetchStatistics:
        return FetchStatistics(
            held=len(self._held),
            wanted=len(self._wanted),
            fetching=len(self._fetching),
            queued=len(self._queued),
            retrying=len(self._retry),
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<Fetcher held={s.held} wanted={s.wanted} fetching={s.fetching} "
            f"queued={s.queued} retrying={s.retrying}>"
        )

    # --- the machine ---

    def _start(self, sha: bytes, now: float, up: Collection[str], out: list[Step]) -> None:
        """Fetch ``sha`` from the first connected, untried holder with a free slot; with
        every such holder busy it waits in the queue."""
        if sha in self._fetching or sha not in self._wanted:
            return
        tried = self._tried.get(sha, set())
        limit = self.config.max_fetches_per_peer
        busy = False
        for peer in self._holders.get(sha, {}):
            if peer not in up or peer in tried:
                continue
            if self._load.get(peer, 0) >= limit:
                busy = True
                continue
            size, kind = self._meta[sha]
            deadline = now + self.config.fetch_timeout + size / self.config.fetch_rate
            self._fetching[sha] = _InFlight(peer, deadline)
            self._load[peer] = self._load.get(peer, 0) + 1
            self._queued.pop(sha, None)
            out += (Wake(deadline), FetchBlob(peer, sha, size, kind))
            return
        if busy:
            self._queued[sha] = None

    def _end(self, sha: bytes) -> str:
        """The fetch of ``sha`` is over: free its peer's slot; returns the peer."""
        peer = self._fetching.pop(sha).peer
        load = self._load.get(peer, 0) - 1
        if load > 0:
            self._load[peer] = load
        else:
            self._load.pop(peer, None)
        return peer

    def _pump(self, now: float, up: Collection[str], out: list[Step]) -> None:
        limit = self.config.max_fetches_per_peer
        for sha in list(self._queued):
            if all(self._load.get(peer, 0) >= limit for peer in up):
                return
            del self._queued[sha]  # _start queues it again if its holders are still busy
            self._start(sha, now, up, out)
