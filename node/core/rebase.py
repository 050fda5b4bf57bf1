"""When the replication core asks its shell to rebase an own orphan: a small timer machine.
``node.core.protocol.Core`` owns one ``Rebaser``, schedules its own orphans on it and passes the
order in force when time passes; it answers with ``Rebase`` actions and ``Wake`` steps.

Rules:

- An own commit that is an orphan of the order is rebased after ``rebase_delay`` scaled by a
  jitter taken from its id (1x to 2x): the authors of concurrent orphans would otherwise search
  at the same moment and collide again. A commit is scheduled once: not again while it is due
  or asked.
- When it comes due and is still an orphan, the shell is asked to re-search it against the
  tip (``Rebase(commit, tip)``); its answer, a local commit that ``supersedes`` it, is awaited
  for ``rebase_retry``, after which the commit is scheduled again. The core checks the answer
  (one that no longer extends the tip is stale and refused) and may schedule the orphan again.
"""

from __future__ import annotations

from collections.abc import Iterator

from node.core.events import CoreConfig, Rebase, Wake
from node.core.order import Order


class Rebaser:
    """Own orphans waiting for their rebase, and rebases asked for (see the module doc)."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self._due: dict[bytes, float] = {}  # commit id -> when to ask
        self._asked: dict[bytes, float] = {}  # commit id -> when to give up waiting

    def schedule(self, cid: bytes, now: float) -> list[Wake]:
        """The own commit ``cid`` is an orphan: rebase it soon (unless already under way)."""
        if cid in self._due or cid in self._asked:
            return []
        jitter = int.from_bytes(cid[:2], "big") / 65536
        self._due[cid] = now + self.config.rebase_delay * (1 + jitter)
        return [Wake(self._due[cid])]

    def answered(self, cid: bytes) -> None:
        """A rebase of ``cid`` came (fresh or stale): it is no longer awaited."""
        self._asked.pop(cid, None)

    def on_timer(self, now: float, order: Order) -> list[Rebase | Wake]:
        """Time is ``now``: ask for the due rebases of commits still orphans in ``order``;
        schedule again those asked for too long ago."""
        out: list[Rebase | Wake] = []
        for cid in [c for c, at in self._due.items() if at <= now]:
            del self._due[cid]
            if cid in order.orphans:
                self._asked[cid] = now + self.config.rebase_retry
                out += (Wake(self._asked[cid]), Rebase(cid, order.tip))
        for cid in [c for c, at in self._asked.items() if at <= now]:
            del self._asked[cid]  # never answered
            out += self.schedule(cid, now)
        return out

    def wakes(self) -> Iterator[float]:
        yield from self._due.values()
        yield from self._asked.values()

    def __repr__(self) -> str:
        return f"<Rebaser due={len(self._due)} asked={len(self._asked)}>"
