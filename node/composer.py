"""The shell's side of ``Merge(order)``: fold the ordered commits into the composite.

The fold is a pure function of the order (merge.fold), so the composer keeps the last
composite and, when the new order extends the old one (the usual case: a commit arrived on the
tip), applies only the new steps. Anything else (an orphan inserted before others, a
revocation) refolds from the empty composite. Both paths give the same bytes; a test holds them
to it by digest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from crypto.records import Commit
from merge import fold
from merge.digest import composite_digest
from merge.lora import LoraAdapter, load_adapter_bytes
from merge.spec import MergeSpec

BlobReader = Callable[[bytes], bytes]


@dataclass
class Composer:
    spec: MergeSpec
    base: str
    read_blob: BlobReader
    order: tuple[bytes, ...] = ()
    composite: fold.Composite = field(init=False)
    digest: str = field(init=False)
    _adapters: dict[bytes, LoraAdapter] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.composite = fold.empty(self.spec.mode)
        self.digest = composite_digest(self.composite)

    def adapter(self, commit: Commit) -> LoraAdapter:
        cached = self._adapters.get(commit.id)
        if cached is None:
            cached = load_adapter_bytes(
                self.read_blob(commit.blobs["adapter_config"].sha256),
                self.read_blob(commit.blobs["adapter_model"].sha256),
                base=self.base,
                limits=self.spec.limits,
                name=f"{commit.task}@{commit.id.hex()[:12]}",
            )
            self._adapters[commit.id] = cached
        return cached

    def update(self, commits: Sequence[Commit]) -> str:
        """Make the composite that of ``commits`` (in this order); returns its digest."""
        ids = tuple(c.id for c in commits)
        if ids == self.order:
            return self.digest
        if ids[: len(self.order)] == self.order:
            start, composite = len(self.order), self.composite
        else:
            start, composite = 0, fold.empty(self.spec.mode)
        for commit in commits[start:]:
            composite = fold.apply(composite, self.adapter(commit), commit.coeffs)
        self.order, self.composite = ids, composite
        self.digest = composite_digest(composite)
        return self.digest
