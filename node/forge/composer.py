"""The shell's side of ``Merge(order)``: fold the ordered commits into the composite.

The fold is a pure function of the order (merge.fold), so the composer may start from any fold
of a prefix of the new order and apply only the rest; every start gives the same bytes, and
tests hold them to it by digest. It starts from the newest of:

- the current composite, when the new order extends the old one (the usual case: a commit
  arrived on the tip);
- the composite at the stable tip (``update(..., stable=)``: the node's main chain), kept in
  memory while orphans follow it, so an orphan arriving or leaving costs only the orphans;
- a checkpoint (``node.forge.checkpoints``) whose prefix key is that of the new order: after a
  revocation or a switched chain ``d`` commits below the tip this costs ``O(d)`` applies, and a
  restarted node loads the newest one and applies only what came after it. A checkpoint is
  believed only once its digest, recomputed, is the one it was filed under; a damaged one is
  logged, discarded, and the next older one (or the empty composite) is tried;
- the empty composite.

**Memory**: the composer holds the current composite (plus the stable tip's while orphans
exist) and at most ``cache_size`` adapters (the ones ``admit()`` handed over, until they are
folded, and the last few read); any other adapter is read from the store again with
``read_blob`` and the validity function when a refold needs it. A *mixture* composite keeps
every member whole; with ``defer_members`` (the node) each member is a deferred adapter
(``merge.lora.DeferredModules``: its digest and size, read again from the store when used), so
a mixture's memory and restart do not grow with its members: a checkpoint names each member
with its digest, and loading one reads no member at all. A refold takes the members from the
composite it replaces rather than from the store.

Each commit is applied with its scalar pair and, where it carries them (schema 2), its
per-group pairs under the merge spec's grouping (``merge.groups``), and with the spec's
compaction policy (``merge.compaction``): every node groups and compacts every module alike, so
the bytes stay a function of the order.

Adapters are loaded through the one validity function (``node.forge.validate``), so the fold only
ever sees what a node would have admitted. A step that still fails (a defect of ours, a blob
gone from disk) raises ``FoldError`` naming the commit, and the composer keeps its last
composite: nothing is half-applied.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from crypto.records import Commit
from merge import checkpoint, fold
from merge.compaction import Compaction
from merge.digest import adapter_digest, composite_digest
from merge.errors import CheckpointError
from merge.groups import ModuleCoeffs
from merge.lora import DeferredModules, LoraAdapter, adapter_nbytes
from merge.spec import MergeSpec
from node.errors import FoldError, StoreError
from node.forge.checkpoints import (
    CHECKPOINT_EVERY,
    CheckpointEntry,
    CheckpointStore,
    common_prefix,
    plan,
    prefix_keys,
    prefix_root,
)
from node.forge.validate import Rules, adapter_name, check_commit

BlobReader = Callable[[bytes], bytes]
ADAPTER_CACHE = 8  # adapters held at most (beside a mixture's members)
log = logging.getLogger("node.forge.composer")


@dataclass(frozen=True)
class ComposerStatistics:
    """Counters since the composer was made, and where the last fold started."""

    applied: int  # fold.apply calls
    adapters_read: int  # adapters read from the store (and validated) again
    cached_adapters: int
    checkpoints: int  # held in the checkpoint store now
    checkpoints_loaded: int
    checkpoints_written: int
    checkpoints_discarded: int  # damaged (unparsable, or not their digest): dropped
    last_start: int  # the prefix length the last fold started from
    last_source: str  # "empty", "composite", "tip" or "checkpoint"


@dataclass(frozen=True)
class _Fold:
    """A fold of the first ``position`` commits of an order, held in memory."""

    position: int
    key: bytes
    composite: fold.Composite
    digest: str | None = None  # when known: hashing a large composite is not free


class Composer:
    """``update(commits)`` makes ``composite`` (and ``digest``) that of ``commits``.

    ``checkpoints``: where to keep checkpoints (``None``: none, a non-append change refolds from
    the empty composite or the stable tip); ``checkpoint_every``: their spacing in commits;
    ``defer_members``: a mixture's members are deferred adapters, read again when used (a
    long-lived node; a one-off fold that evaluates its members at once keeps them held)."""

    def __init__(
        self,
        spec: MergeSpec,
        rules: Rules,
        read_blob: BlobReader,
        *,
        checkpoints: CheckpointStore | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
        cache_size: int = ADAPTER_CACHE,
        defer_members: bool = False,
    ) -> None:
        if checkpoint_every < 1 or cache_size < 1:
            raise ValueError("checkpoint_every and cache_size are at least 1")
        self.spec, self.rules, self.read_blob = spec, rules, read_blob
        self.checkpoints, self.every, self.cache_size = checkpoints, checkpoint_every, cache_size
        self.compaction = Compaction.of(spec)
        self.defer = defer_members and spec.mode == "mixture"
        self.order: tuple[bytes, ...] = ()
        self.composite = fold.empty(spec.mode)
        self.digest = composite_digest(self.composite)
        self._keys = [prefix_root(spec, rules.base)]  # prefix keys of ``order``
        self._tip: _Fold | None = None
        self._adapters: OrderedDict[bytes, LoraAdapter] = OrderedDict()
        self._lock = threading.Lock()  # admit() runs on the node's thread, update() on a worker
        self._counts = dict.fromkeys(("applied", "read", "loaded", "written", "discarded"), 0)
        self._last = (0, "empty")

    @property
    def base(self) -> str:
        return self.rules.base

    def __repr__(self) -> str:
        return f"<Composer {self.spec.mode} v{len(self.order)} {self.digest[:12]}>"

    def statistics(self) -> ComposerStatistics:
        c = self._counts
        held = len(self.checkpoints.entries()) if self.checkpoints is not None else 0
        return ComposerStatistics(
            c["applied"], c["read"], len(self._adapters), held, c["loaded"], c["written"],
            c["discarded"], *self._last,
        )  # fmt: skip

    # -- adapters ------------------------------------------------------------------------

    def admit(self, commit_id: bytes, adapter: LoraAdapter) -> None:
        """Hand over an adapter the validity function already produced for ``commit_id``."""
        self._cache(commit_id, adapter)

    def adapter(self, commit: Commit) -> LoraAdapter:
        """``commit``'s validated adapter: from the cache, a mixture's members, or the store."""
        return self._adapter(commit, self._members())

    def _adapter(self, commit: Commit, members: dict[bytes, LoraAdapter]) -> LoraAdapter:
        with self._lock:
            cached = self._adapters.get(commit.id) or members.get(commit.id)
        if cached is None:
            blobs = {kind: self.read_blob(ref.sha256) for kind, ref in commit.blobs.items()}
            cached = check_commit(commit, blobs, self.rules)
            self._counts["read"] += 1
            self._cache(commit.id, cached)
        return cached

    def _cache(self, commit_id: bytes, adapter: LoraAdapter) -> None:
        with self._lock:
            self._adapters[commit_id] = adapter
            self._adapters.move_to_end(commit_id)
            while len(self._adapters) > self.cache_size:
                self._adapters.popitem(last=False)

    def _folded(self, commit_id: bytes) -> None:
        # Folded: the first to go, so that admitted adapters still waiting for their fold stay.
        with self._lock:
            if commit_id in self._adapters:
                self._adapters.move_to_end(commit_id, last=False)

    def _deferred(self, commit: Commit, adapter: LoraAdapter) -> LoraAdapter:
        """``adapter`` (``commit``'s) as a deferred one, when the composer defers members."""
        if not self.defer or adapter.deferred:
            return adapter
        return self._defer(commit, adapter_digest(adapter), adapter_nbytes(adapter), adapter.base)

    def _defer(self, commit: Commit, digest: str, nbytes: int, base: str) -> LoraAdapter:
        modules = DeferredModules(digest, nbytes, lambda: self._reload(commit, digest, nbytes))
        return LoraAdapter(base, modules, adapter_name(commit))

    def _reload(self, commit: Commit, digest: str, nbytes: int) -> LoraAdapter:
        """A deferred member's adapter, read again: it must be the one that was folded."""
        adapter = self._adapter(commit, {})
        got = adapter_digest(adapter), adapter_nbytes(adapter)
        if got != (digest, nbytes):
            cause = CheckpointError(
                f"its blobs give adapter {got[0][:16]} ({got[1]} bytes), "
                f"not {digest[:16]} ({nbytes} bytes) as folded"
            )
            raise FoldError(commit.id, cause)
        return adapter

    def _members(self) -> dict[bytes, LoraAdapter]:
        """A mixture's members by commit id: a refold takes them from here, not the store."""
        c = self.composite
        return dict(zip(self.order, c.members, strict=True)) if c.mode == "mixture" else {}

    def module_coeffs(self, commit: Commit) -> ModuleCoeffs | None:
        """The commit's per-group pairs under the spec's grouping (``None``: schema 1)."""
        if commit.module_coeffs is None:
            return None
        return ModuleCoeffs(self.spec.search.groups, commit.module_coeffs)

    # -- folding -------------------------------------------------------------------------

    def update(self, commits: Sequence[Commit], *, stable: int | None = None) -> str:
        """Make the composite that of ``commits`` (in this order); returns its digest.

        ``stable``: how many leading commits will stay where they are (the main chain; default
        all): checkpoints are written only there."""
        ids = tuple(c.id for c in commits)
        if ids == self.order:
            return self.digest
        keys = prefix_keys(self._keys, ids, common_prefix(self.order, ids))
        stable = len(ids) if stable is None else min(stable, len(ids))
        done = self._fold(commits, keys, stable, self._members())
        self.order, self._keys, self.composite = ids, keys, done.composite
        self.digest = done.digest or composite_digest(done.composite)
        self._prune(keys, stable)
        return self.digest

    def _start(
        self, commits: Sequence[Commit], keys: Sequence[bytes], members: dict[bytes, LoraAdapter]
    ) -> _Fold:
        """The newest fold of a prefix of the new order that we hold or can load."""
        n = len(keys) - 1
        held = [_Fold(len(self.order), self._keys[-1], self.composite, self.digest), self._tip]
        best = max(
            (f for f in held if f is not None and f.position <= n and keys[f.position] == f.key),
            key=lambda f: f.position,
            default=_Fold(0, keys[0], fold.empty(self.spec.mode)),
        )
        for entry in self._usable(keys, best.position):
            loaded = self._load(entry, commits, members)
            if loaded is not None:
                self._last = (entry.position, "checkpoint")
                log.info(
                    "composite v%d loaded from checkpoint %s; applying %d commit(s)",
                    entry.position, entry.digest[:16], n - entry.position,
                )  # fmt: skip
                return _Fold(entry.position, entry.key, loaded, entry.digest)
        source = "empty" if best.position == 0 else "tip" if best is self._tip else "composite"
        self._last = (best.position, source)
        return best

    def _usable(self, keys: Sequence[bytes], above: int) -> list[CheckpointEntry]:
        """Checkpoints of prefixes of the order named by ``keys`` past ``above``, newest first."""
        if self.checkpoints is None:
            return []
        n = len(keys) - 1
        found = [
            e
            for e in self.checkpoints.entries()
            if above < e.position <= n and keys[e.position] == e.key
        ]
        return sorted(found, reverse=True)

    def _fold(
        self,
        commits: Sequence[Commit],
        keys: Sequence[bytes],
        stable: int,
        members: dict[bytes, LoraAdapter],
    ) -> _Fold:
        start = self._start(commits, keys, members)
        writes: frozenset[int] = frozenset()
        if self.checkpoints is not None:
            entries = self.checkpoints.entries()
            writes = plan(entries, keys, stable, start.position, self.every).writes
        composite, digest = start.composite, start.digest
        tip = self._tip_for(keys, stable, start)
        for k in range(start.position, len(commits)):
            composite, digest = self._apply(composite, commits[k], members), None
            if k + 1 in writes:
                digest = self._save(k + 1, keys[k + 1], composite, commits)
            if k + 1 == stable:
                tip = _Fold(stable, keys[stable], composite, digest)
        self._tip = tip
        return _Fold(len(commits), keys[-1], composite, digest)

    def _tip_for(self, keys: Sequence[bytes], stable: int, start: _Fold) -> _Fold | None:
        """The fold at the stable tip, where we hold it before folding past ``start``."""
        for f in (start, self._tip):
            if f is not None and f.position == stable and keys[stable] == f.key:
                return f
        return None

    def _apply(
        self, composite: fold.Composite, commit: Commit, members: dict[bytes, LoraAdapter]
    ) -> fold.Composite:
        try:
            adapter = self._deferred(commit, self._adapter(commit, members))
            groups = self.module_coeffs(commit)
            out = fold.apply(composite, adapter, commit.coeffs, groups, compaction=self.compaction)
        except Exception as exc:  # noqa: BLE001 - reported with the commit that caused it
            raise FoldError(commit.id, exc) from exc
        self._counts["applied"] += 1
        self._folded(commit.id)
        return out

    # -- checkpoints ---------------------------------------------------------------------

    def _save(self, position: int, key: bytes, c: fold.Composite, commits: Sequence[Commit]) -> str:
        """Write ``c``, the fold of the first ``position`` commits; returns its digest. A failed
        write costs only the checkpoint."""
        assert self.checkpoints is not None
        members = [commit.id for commit in commits[:position]] if c.mode == "mixture" else []
        entry = CheckpointEntry(position, key, composite_digest(c))
        try:
            self.checkpoints.write(entry, checkpoint.chunks(c, members))
        except StoreError as exc:
            log.warning("could not write checkpoint v%d: %s", position, exc)
            return entry.digest
        self._counts["written"] += 1
        return entry.digest

    def _load(
        self, entry: CheckpointEntry, commits: Sequence[Commit], members: dict[bytes, LoraAdapter]
    ) -> fold.Composite | None:
        """The checkpoint's composite if its digest is the one it was filed under; a damaged
        one is dropped. ``None`` also when it cannot be read now (a member's blob gone)."""
        assert self.checkpoints is not None
        prefix = {c.id: c for c in commits[: entry.position]}
        try:
            with self.checkpoints.open(entry) as source:
                c = checkpoint.read(source, lambda ref: self._member(prefix, ref, members))
            if composite_digest(c) != entry.digest:
                raise CheckpointError("its content does not hash to its digest")
        except (StoreError, FoldError, OSError) as exc:  # the medium or a blob: keep it
            log.warning("could not load checkpoint v%d: %s", entry.position, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - CheckpointError, or any other way bytes are bad
            self._discard(entry, f"{type(exc).__name__}: {exc}")
            return None
        self._counts["loaded"] += 1
        return c

    def _member(
        self,
        prefix: dict[bytes, Commit],
        ref: checkpoint.MemberRef,
        members: dict[bytes, LoraAdapter],
    ) -> LoraAdapter:
        """A checkpoint's member: held already, deferred on the digest the checkpoint names
        (the checkpoint's own digest proves it), or read from the store."""
        commit = prefix.get(ref.key)
        if commit is None:
            raise CheckpointError(f"member {ref.key.hex()[:12]} is not a commit of its prefix")
        if commit.id not in members and self.defer and ref.digest is not None:
            assert ref.nbytes is not None
            return self._defer(commit, ref.digest, ref.nbytes, self.rules.base)
        try:
            return self._deferred(commit, self._adapter(commit, members))
        except Exception as exc:  # noqa: BLE001 - the blob, not the checkpoint: keep it
            raise FoldError(commit.id, exc) from exc

    def _discard(self, entry: CheckpointEntry, why: str) -> None:
        assert self.checkpoints is not None
        log.warning("checkpoint v%d %s is damaged (%s): discarded", entry.position, entry, why)
        self._counts["discarded"] += 1
        try:
            self.checkpoints.drop(entry)
        except StoreError as exc:
            log.warning("could not drop checkpoint v%d: %s", entry.position, exc)

    def _prune(self, keys: Sequence[bytes], stable: int) -> None:
        """Drop what retention no longer keeps (nothing is left to write: ``start=stable``)."""
        if self.checkpoints is None:
            return
        for entry in plan(self.checkpoints.entries(), keys, stable, stable, self.every).drops:
            try:
                self.checkpoints.drop(entry)
            except StoreError as exc:
                log.warning("could not drop checkpoint v%d: %s", entry.position, exc)
