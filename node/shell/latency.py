"""Commit-to-merge latency: how long a commit waits, on this node, until the composite it is
folded into is served. Sans-IO: every call takes ``now`` (the service passes trio's clock).

The clock of a commit starts when this node learned of it: when it first asked a peer for
one of its blobs, or, when none had to be fetched (an own commit, blobs already held), when
the commit and its blobs were all held and it went to validation. It stops when a fold that
includes the commit completed and its digest became the served one. Commits restored from
the store at start are not timed (their wait began in an earlier run), nor is a commit
counted twice. Only a ``Histogram`` of the waits is kept.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from crypto.records import Commit

# seconds: a fold on one machine takes well under a second; a busy or catching-up network
# takes minutes (sync intervals are 30 s by default)
MERGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
MAX_TRACKED = 65536  # commits or blobs waiting at once; beyond this the oldest are dropped


@dataclass(frozen=True)
class HistogramSnapshot:
    """``counts[i]`` observations fell in ``(bounds[i-1], bounds[i]]``; the last count, past
    every bound (Prometheus' ``+Inf`` bucket less the others)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # len(bounds) + 1
    sum: float
    count: int

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) with ``math.inf`` last: Prometheus' ``le``."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Histogram:
    """Observations counted into fixed buckets with inclusive upper bounds (``le``)."""

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        if list(self.bounds) != sorted(set(self.bounds)) or not all(
            map(math.isfinite, self.bounds)
        ):
            raise ValueError(f"bucket bounds must be finite and increasing: {self.bounds}")
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self._counts), self._sum, sum(self._counts))

    def __repr__(self) -> str:
        return f"<Histogram count={sum(self._counts)} sum={self._sum:.3f}>"


class MergeLatency:
    """The node's commit-to-merge clock: ``fetching`` / ``learned`` start it, ``merged``
    stops it for every commit of a served fold."""

    def __init__(
        self,
        restored: Callable[[bytes], bool] = lambda record_id: False,
        bounds: Iterable[float] = MERGE_BUCKETS,
    ) -> None:
        self._restored = restored  # record id -> held since an earlier run (the store's)
        self.histogram = Histogram(bounds)
        self._fetch_started: dict[bytes, float] = {}  # blob sha256 -> first asked for
        self._waiting: dict[bytes, float] = {}  # commit id -> when we learned of it
        self._done: set[bytes] = set()  # merged or restored: never timed (again)

    def fetching(self, sha256: bytes, now: float) -> None:
        """A blob is asked for (the commit that names it is not known here yet)."""
        _bounded_setdefault(self._fetch_started, sha256, now)

    def learned(self, record_id: bytes, commit: Commit, now: float) -> None:
        """The commit (content id ``record_id``) and all its blobs are held and go to
        validation."""
        shas = [ref.sha256 for ref in commit.blobs.values()]
        started = [t for sha in shas if (t := self._fetch_started.pop(sha, None)) is not None]
        if self._restored(record_id):
            self._done.add(commit.id)
        elif commit.id not in self._done:
            _bounded_setdefault(self._waiting, commit.id, min([now, *started]))

    def merged(self, commit_ids: Iterable[bytes], now: float) -> None:
        """A fold of ``commit_ids`` completed and is the composite served."""
        if not self._waiting:
            return
        for cid in commit_ids:
            at = self._waiting.pop(cid, None)
            if at is not None:
                self.histogram.observe(max(0.0, now - at))
                self._done.add(cid)

    def snapshot(self) -> HistogramSnapshot:
        return self.histogram.snapshot()


def _bounded_setdefault(table: dict[bytes, float], key: bytes, value: float) -> None:
    if key not in table:
        if len(table) >= MAX_TRACKED:  # commits never merged (invalid, excluded) age out
            del table[next(iter(table))]
        table[key] = value
