"""The shell's side of ``Merge(order)``: fold the ordered commits into the composite.

The fold is a pure function of the order (merge.fold), so the composer keeps the last
composite and, when the new order extends the old one (the usual case: a commit arrived on the
tip), applies only the new steps. Anything else (an orphan inserted before others, a
revocation) refolds from the empty composite. Both paths give the same bytes; a test holds them
to it by digest.

Each commit is applied with its scalar pair and, where it carries them (schema 2), its
per-group pairs under the merge spec's grouping (``merge.groups``): every node groups every
module alike, so the bytes stay a function of the order.

Adapters are loaded through the one validity function (``node.forge.validate``), so the fold only
ever sees what a node would have admitted. A step that still fails (a defect of ours, a blob
gone from disk) raises ``FoldError`` naming the commit, and the composer keeps its last
composite: nothing is half-applied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from crypto.records import Commit
from merge import fold
from merge.digest import composite_digest
from merge.groups import ModuleCoeffs
from merge.lora import LoraAdapter
from merge.spec import MergeSpec
from node.errors import FoldError
from node.forge.validate import Rules, check_commit

BlobReader = Callable[[bytes], bytes]


@dataclass
class Composer:
    spec: MergeSpec
    rules: Rules
    read_blob: BlobReader
    order: tuple[bytes, ...] = ()
    composite: fold.Composite = field(init=False)
    digest: str = field(init=False)
    _adapters: dict[bytes, LoraAdapter] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.composite = fold.empty(self.spec.mode)
        self.digest = composite_digest(self.composite)

    @property
    def base(self) -> str:
        return self.rules.base

    def admit(self, commit_id: bytes, adapter: LoraAdapter) -> None:
        """Hand over an adapter the validity function already produced for ``commit_id``."""
        self._adapters[commit_id] = adapter

    def adapter(self, commit: Commit) -> LoraAdapter:
        cached = self._adapters.get(commit.id)
        if cached is None:
            blobs = {kind: self.read_blob(ref.sha256) for kind, ref in commit.blobs.items()}
            cached = check_commit(commit, blobs, self.rules)
            self._adapters[commit.id] = cached
        return cached

    def module_coeffs(self, commit: Commit) -> ModuleCoeffs | None:
        """The commit's per-group pairs under the spec's grouping (``None``: schema 1)."""
        if commit.module_coeffs is None:
            return None
        return ModuleCoeffs(self.spec.search.groups, commit.module_coeffs)

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
            try:
                adapter, groups = self.adapter(commit), self.module_coeffs(commit)
                composite = fold.apply(composite, adapter, commit.coeffs, groups)
            except Exception as exc:  # noqa: BLE001 - reported with the commit that caused it
                raise FoldError(commit.id, exc) from exc
        self.order, self.composite = ids, composite
        self.digest = composite_digest(composite)
        return self.digest
