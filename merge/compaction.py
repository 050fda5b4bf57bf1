"""When a stacked module turns dense: the fold's compaction policy (issue 13).

A stack composite concatenates every commit's factors, so a module's rank is the sum of its
commits' ranks and grows without bound. ``Compaction`` says when a factored module is replaced
by its dense ``ΔW`` (``merge.dense``):

- ``rank == 0`` (the crossover): once ``r·(out + in) >= out·in``, i.e. the factors hold at
  least as many numbers as the dense matrix;
- ``rank == N > 0``: once ``r > N``.

The decision reads only a module's stacked rank and its shape, both functions of the commit
order, so every node switches at the same commit. ``None`` (the spec's ``"off"``) never
compacts: the fold is then exactly what it was before compaction existed.
"""

from __future__ import annotations

from dataclasses import dataclass

from merge.errors import SpecError
from merge.spec import MergeSpec


@dataclass(frozen=True)
class Compaction:
    """Compact a stacked module at the crossover (``rank=0``) or once its rank exceeds
    ``rank``."""

    rank: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise SpecError(f"a compaction rank is an int >= 0, got {self.rank!r}")

    def due(self, rank: int, shape: tuple[int, int]) -> bool:
        """Whether a factored module of ``rank`` adapting an ``(out, in)`` weight turns dense."""
        out, inp = shape
        if self.rank == 0:
            return rank * (out + inp) >= out * inp
        return rank > self.rank

    @classmethod
    def of(cls, spec: MergeSpec) -> Compaction | None:
        """The policy a network's merge spec names (``None``: compaction off)."""
        return None if spec.compaction == "off" else cls(spec.compact_rank)
