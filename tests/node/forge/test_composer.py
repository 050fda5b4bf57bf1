"""The composer (issue 13): bounded memory, checkpoints, and refolds from the nearest one.

Every claim is held by digest equality with a refold from the empty composite (a fresh composer
without checkpoints), never by a tolerance; costs are counted in ``fold.apply`` calls, never in
time. Commits are real signed commits over real PEFT adapter files; checkpoints are real files
(``node.shell.checkpoint_files``) where the test is about the disk.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from crypto.identity import Identity
from crypto.records import Commit, Genesis, Member
from merge import checkpoint, fold
from merge.dense import DenseModule
from merge.digest import composite_digest
from merge.lora import DeferredModules, LoraAdapter
from merge.spec import MergeSpec
from node.errors import FoldError, StoreError
from node.forge.bundle import blob_ref
from node.forge.checkpoints import (
    CheckpointEntry,
    Chunk,
    MemoryCheckpoints,
    plan,
    prefix_keys,
    prefix_root,
    retained,
)
from node.forge.composer import Composer
from node.forge.footprint import footprint
from node.forge.netspec import make_spec, merge_spec
from node.forge.validate import Rules
from node.shell.checkpoint_files import CheckpointFiles
from tests.conftest import BASE, TINY_SHAPES, TinyBase, write_distilled

ME = Identity.from_seed(b"\x0c" * 32)
N = 40
Blobs = dict[str, bytes]


def network(mode: str = "stack") -> Genesis:
    return Genesis(
        "composer", (Member("me", ME.public),), 1, make_spec(mode, BASE, TINY_SHAPES), mode
    )


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> list[Blobs]:
    """Five real PEFT adapters (ranks 1-3) with one distilled set, as commit blobs."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    distilled = write_distilled(root / "d.safetensors").read_bytes()
    out = []
    for k in range(5):
        rank = 1 + k % 3
        model = get_peft_model(
            TinyBase(), LoraConfig(r=rank, lora_alpha=rank, target_modules=["q", "v"])
        )
        g = torch.Generator().manual_seed(100 + k)
        with torch.no_grad():
            for name, p in sorted(model.named_parameters()):
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        model.save_pretrained(str(root / f"a{k}"))
        weights = root / f"a{k}" / "adapter_model.safetensors"
        save_file(load_file(str(weights)), str(weights), metadata={"base": BASE})
        out.append(
            {
                "adapter_config": (root / f"a{k}" / "adapter_config.json").read_bytes(),
                "adapter_model": weights.read_bytes(),
                "distilled": distilled,
            }
        )
    return out


def make_commit(genesis: Genesis, seq: int, blobs: Blobs) -> Commit:
    # Coefficients within the spec's bounds (keep in [0.5, 1], |w2| <= 1.5), varied by seq.
    return Commit.create(
        ME,
        network=genesis.network_id,
        seq=seq,
        task=f"t{seq}",
        classes=("a", "b"),
        base=BASE,
        blobs={k: blob_ref(v) for k, v in blobs.items()},
        parent=b"\0" * 32,
        coeffs=(0.5 + (seq % 5) / 10, 0.25 + (seq % 7) * 0.15),
        objective={},
    )


class Store:
    """Blobs by sha256, counting reads (what the node's ``read_blob`` does from disk)."""

    def __init__(self, adapters: Sequence[Blobs]) -> None:
        self.blobs = {blob_ref(v).sha256: v for b in adapters for v in b.values()}
        self.reads = 0

    def read(self, sha: bytes) -> bytes:
        self.reads += 1
        return self.blobs[sha]


@pytest.fixture
def store(adapters: list[Blobs]) -> Store:
    return Store(adapters)


def chain(
    adapters: list[Blobs], n: int = N, *, first: int = 0, mode: str = "stack"
) -> list[Commit]:
    genesis = network(mode)
    return [
        make_commit(genesis, seq, adapters[seq % len(adapters)]) for seq in range(first, first + n)
    ]


def composer(store: Store, mode: str = "stack", **kw: object) -> Composer:
    genesis = network(mode)
    spec = kw.pop("spec", merge_spec(genesis))
    assert isinstance(spec, MergeSpec)
    return Composer(spec, Rules.of(genesis), store.read, **kw)  # type: ignore[arg-type]


def from_empty(store: Store, commits: Sequence[Commit], mode: str = "stack", **kw: object) -> str:
    """The reference: a fresh composer, no checkpoints, folding everything."""
    return composer(store, mode, **kw).update(commits)


def applied(c: Composer) -> int:
    return c.statistics().applied


# -- refolds from a checkpoint equal the refold from empty ----------------------------------


@pytest.mark.parametrize("at", [N - 2, N - 13, 3])
def test_an_insertion_refolds_from_the_nearest_checkpoint(
    adapters: list[Blobs], store: Store, at: int
) -> None:
    commits = chain(adapters)
    late = chain(adapters, 1, first=1000)[0]
    c = composer(store, checkpoints=MemoryCheckpoints())
    c.update(commits)
    before = applied(c)
    new = [*commits[:at], late, *commits[at:]]
    assert c.update(new) == from_empty(store, new)
    stats = c.statistics()
    nearest = max((p for p in (16, 32, 40) if p <= at), default=0)  # retained at N = 40
    assert (stats.last_start, stats.applied - before) == (nearest, len(new) - nearest)
    assert stats.last_source == ("checkpoint" if nearest else "empty")


@pytest.mark.parametrize("at", [N - 1, N - 6, 20, 2])
def test_a_revocation_refolds_from_the_nearest_checkpoint(
    adapters: list[Blobs], store: Store, at: int
) -> None:
    commits = chain(adapters)
    c = composer(store, checkpoints=MemoryCheckpoints())
    c.update(commits)
    new = [*commits[:at], *commits[at + 1 :]]  # the commit at ``at`` leaves the order
    assert c.update(new) == from_empty(store, new)
    assert c.statistics().last_start == max((p for p in (16, 32) if p <= at), default=0)
    # Checkpoints past the revoked commit named a prefix that is gone: dropped (but for one
    # past the end of the new order, which an order may grow back into), and the fold wrote
    # the ones retention wants on the new order.
    keys = prefix_keys([prefix_root(c.spec, c.base)], [x.id for x in new], 0)
    held = c.checkpoints.entries()  # type: ignore[union-attr]
    assert all(e.key == keys[e.position] for e in held if e.position < len(keys))


def test_a_late_commit_d_from_the_tip_costs_o_of_d_applies(
    adapters: list[Blobs], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted at fold.apply itself: after an insertion ``d`` commits below the tip of 128,
    at most ``d + 2·max(d, 8) + 8`` applies, whatever the length of the history."""
    commits = chain(adapters, 128)
    late = chain(adapters, 1, first=1000)[0]
    folded = MemoryCheckpoints()
    composer(store, checkpoints=folded).update(commits)
    calls = []
    real = fold.apply
    monkeypatch.setattr(fold, "apply", lambda *a, **k: calls.append(1) or real(*a, **k))
    for d in (1, 4, 9, 20, 40):
        checkpoints = MemoryCheckpoints()
        checkpoints.files = dict(folded.files)
        c = composer(store, checkpoints=checkpoints)
        c.update(commits)  # a restart: v128 loaded, nothing applied
        assert calls == []
        new = [*commits[: 128 - d], late, *commits[128 - d :]]
        c.update(new)
        assert len(calls) == c.statistics().applied
        assert len(calls) <= d + 2 * max(d, 8) + 8, (d, len(calls))
        calls.clear()


def test_an_orphan_arriving_or_leaving_refolds_from_the_stable_tip(
    adapters: list[Blobs], store: Store
) -> None:
    """Behind the main chain (``stable``), orphans come and go: the fold at the tip is held in
    memory, so the orphans are all that is applied again."""
    main, orphans = chain(adapters, 21), chain(adapters, 3, first=500)
    c = composer(store, checkpoints=MemoryCheckpoints())
    c.update([*main, *orphans], stable=21)
    before = applied(c)
    late = chain(adapters, 1, first=900)[0]
    new = [*main, orphans[0], late, *orphans[1:]]
    assert c.update(new, stable=21) == from_empty(store, new)
    stats = c.statistics()
    assert (stats.last_source, stats.last_start, stats.applied - before) == ("tip", 21, 4)
    gone = [*main, late, *orphans[1:]]  # orphans[0] superseded
    assert c.update(gone, stable=21) == from_empty(store, gone)
    assert c.statistics().last_source == "tip"
    assert [e.position for e in c.checkpoints.entries()] == [8, 16]  # type: ignore[union-attr]


# -- restart, damage ---------------------------------------------------------------------------


def test_a_restarted_composer_loads_a_checkpoint_and_applies_only_the_rest(
    adapters: list[Blobs], store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    commits = chain(adapters, 43)
    first = composer(store, checkpoints=CheckpointFiles(tmp_path / "ck"))
    digest = first.update(commits)
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert [int(name[:10]) for name in files] == [16, 32, 40]
    reads = store.reads
    restarted = composer(store, checkpoints=CheckpointFiles(tmp_path / "ck"))
    with caplog.at_level(logging.INFO, logger="node.forge.composer"):
        assert restarted.update(commits) == digest == from_empty(store, commits)
    stats = restarted.statistics()
    assert (stats.last_source, stats.last_start, stats.applied) == ("checkpoint", 40, 3)
    assert stats.checkpoints_loaded == 1
    assert store.reads - reads == 3 * 3 + 43 * 3  # 3 adapters to apply (+ the reference fold)
    assert "v40 loaded from checkpoint" in caplog.text


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "gone"])
def test_a_damaged_checkpoint_is_discarded_and_an_older_one_used(
    adapters: list[Blobs],
    store: Store,
    tmp_path: Path,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    commits = chain(adapters, 43)
    digest = composer(store, checkpoints=CheckpointFiles(tmp_path / "ck")).update(commits)
    newest = max((tmp_path / "ck").iterdir())
    data = newest.read_bytes()
    if damage == "flip":  # a bit deep inside a tensor: only the digest can tell
        newest.write_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    elif damage == "truncate":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        newest.unlink()
    restarted = composer(store, checkpoints=CheckpointFiles(tmp_path / "ck"))
    with caplog.at_level(logging.WARNING, logger="node.forge.composer"):
        assert restarted.update(commits) == digest
    stats = restarted.statistics()
    assert (stats.last_source, stats.last_start) == ("checkpoint", 32)
    if damage != "gone":  # a file that is gone was never listed: nothing to discard
        assert stats.checkpoints_discarded == 1
        assert "is damaged" in caplog.text
    # The fold past 32 wrote v40 again, good this time.
    assert newest.read_bytes() == data
    assert [e.position for e in restarted.checkpoints.entries()] == [16, 32, 40]  # type: ignore[union-attr]


def test_every_checkpoint_damaged_falls_back_to_the_empty_composite(
    adapters: list[Blobs], store: Store
) -> None:
    commits = chain(adapters, 24)
    memory = MemoryCheckpoints()
    digest = composer(store, checkpoints=memory).update(commits)
    for entry in memory.entries():
        memory.files[entry] = memory.files[entry][:-1] + b"\x7f"
    restarted = composer(store, checkpoints=memory)
    assert restarted.update(commits) == digest
    stats = restarted.statistics()
    assert (stats.last_source, stats.checkpoints_discarded, stats.applied) == ("empty", 2, 24)


@pytest.mark.parametrize("mode", ["mixture", "fusion"])
def test_other_modes_restart_from_checkpoints_too(
    adapters: list[Blobs], store: Store, mode: str
) -> None:
    commits = chain(adapters, 19, mode=mode)
    memory = MemoryCheckpoints()
    digest = composer(store, mode, checkpoints=memory).update(commits)
    restarted = composer(store, mode, checkpoints=memory)
    assert restarted.update(commits) == digest == from_empty(store, commits, mode)
    assert restarted.statistics().last_start == 16


def test_a_deferred_mixture_restarts_without_reading_a_member(
    adapters: list[Blobs], store: Store
) -> None:
    """The node's mixture (``defer_members``) holds no member's tensors: its digest is the held
    fold's, a restart from a checkpoint reads no blob at all, and a member used (export) is
    read from the store and checked against the digest it was folded with."""
    commits = chain(adapters, 19, mode="mixture")
    memory = MemoryCheckpoints()
    running = composer(store, "mixture", checkpoints=memory, defer_members=True)
    digest = running.update(commits)
    assert digest == from_empty(store, commits, "mixture")
    c = running.composite
    assert all(m.deferred for m in c.members)
    held = fold.fold("mixture", [(running.adapter(k), k.coeffs) for k in commits])
    assert footprint(c).nbytes == footprint(held).nbytes
    assert "19 read from the store when used" in footprint(c).representation
    at16 = from_empty(store, commits[:16], "mixture")
    reads = store.reads
    restarted = composer(store, "mixture", checkpoints=memory, defer_members=True)
    assert restarted.update(commits[:16]) == at16
    assert store.reads == reads, "a restart reads no member"
    assert restarted.statistics().last_source == "checkpoint"
    member = restarted.composite.members[3]
    want = held.members[3].modules
    assert sorted(member.modules) == sorted(want)
    assert all(torch.equal(member.modules[n].B, want[n].B) for n in want)
    assert store.reads == reads + 3, "read when used: the commit's three blobs"


def never() -> LoraAdapter:
    raise AssertionError("read a member that should stay unread")


def test_a_deferred_member_whose_blobs_changed_is_refused(
    adapters: list[Blobs], store: Store
) -> None:
    """A checkpoint that names a member by a digest its blobs no longer give (as one written
    before a change of the validity function would): a member used fails with its commit
    named; it never serves other tensors under the digest it was folded with."""
    commits = chain(adapters, 8, mode="mixture")
    memory = MemoryCheckpoints()
    composer(store, "mixture", checkpoints=memory, defer_members=True).update(commits)
    (entry,) = memory.entries()
    data = bytearray(memory.files.pop(entry))
    at = data.index(commits[0].id) + len(commits[0].id)  # member 0: its key, then its digest
    data[at : at + 32] = b"\x11" * 32
    forged = bytes(data)

    def named(ref: checkpoint.MemberRef) -> LoraAdapter:  # what the checkpoint says, unread
        assert ref.digest is not None
        assert ref.nbytes is not None
        return LoraAdapter(BASE, DeferredModules(ref.digest, ref.nbytes, never))

    # Filed under the digest of what it names: consistent, as a stale checkpoint would be.
    digest = composite_digest(checkpoint.decode(forged, named))
    memory.files[CheckpointEntry(entry.position, entry.key, digest)] = forged
    restarted = composer(store, "mixture", checkpoints=memory, defer_members=True)
    assert restarted.update(commits) == digest
    assert restarted.statistics().last_source == "checkpoint"
    stale = restarted.composite.members[0]
    with pytest.raises(FoldError, match=commits[0].id.hex()[:12] + ".*its blobs give adapter"):
        stale.modules["q"]


def test_a_compacted_stack_checkpoints_its_dense_modules(
    adapters: list[Blobs], store: Store
) -> None:
    """The spec's compaction reaches the fold, and a dense module survives a checkpoint."""
    spec = MergeSpec(mode="stack", compaction="auto")  # 8x8 Linears: dense from rank 4
    commits = chain(adapters, 20)
    memory = MemoryCheckpoints()
    c = composer(store, checkpoints=memory, spec=spec)
    digest = c.update(commits)
    assert all(isinstance(m, DenseModule) for m in c.composite.modules.values())
    assert footprint(c.composite).representation == "stack, 2 modules: 2 dense"
    assert digest != from_empty(store, commits)  # compaction changes the bytes...
    restarted = composer(store, checkpoints=memory, spec=spec)
    assert restarted.update(commits) == digest == from_empty(store, commits, spec=spec)
    assert restarted.statistics().last_start == 16
    # ...so a checkpoint folded under another policy never matches (its prefix keys differ).
    plain = composer(store, checkpoints=memory)
    plain.update(commits)
    assert plain.statistics().last_source == "empty"


class FullDisk(MemoryCheckpoints):
    """A checkpoint store whose medium is full: every write fails."""

    def write(self, entry: CheckpointEntry, data: Iterable[Chunk]) -> None:
        raise StoreError("disk full")


def test_a_failed_checkpoint_write_costs_only_the_checkpoint(
    adapters: list[Blobs], store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    commits = chain(adapters, 17)
    c = composer(store, checkpoints=FullDisk())
    with caplog.at_level(logging.WARNING, logger="node.forge.composer"):
        assert c.update(commits) == from_empty(store, commits)
    assert c.statistics().checkpoints_written == 0
    assert "could not write checkpoint v16: disk full" in caplog.text


# -- bounds ----------------------------------------------------------------------------------


def test_the_adapter_cache_stays_bounded(adapters: list[Blobs], store: Store) -> None:
    commits = chain(adapters)
    c = composer(store, checkpoints=MemoryCheckpoints(), cache_size=4)
    sizes = []
    for k, commit in enumerate(commits):
        c.admit(commit.id, c.adapter(commit))  # as the node does once a commit is judged
        c.update(commits[: k + 1])
        sizes.append(c.statistics().cached_adapters)
    assert max(sizes) == 4
    # Forty admitted before one fold (a node restoring its store): still four held.
    fresh = composer(store, cache_size=4)
    for commit in commits:
        fresh.admit(commit.id, fresh.adapter(commit))
    assert fresh.statistics().cached_adapters == 4
    assert fresh.update(commits) == c.digest


def test_checkpoint_retention_stays_logarithmic(adapters: list[Blobs], store: Store) -> None:
    commits = chain(adapters, 130)
    c = composer(store, checkpoints=MemoryCheckpoints())
    for k in range(1, len(commits) + 1):
        c.update(commits[:k])
        held = [e.position for e in c.checkpoints.entries()]  # type: ignore[union-attr]
        assert len(held) <= 2 * (math.floor(math.log2(max(k, 8) / 8)) + 1), (k, held)
    assert held == [64, 96, 112, 120, 128]


def test_retention_keeps_a_checkpoint_near_every_distance() -> None:
    """The rule behind the O(d) refold, on long histories: ``2·(log2(N/8) + 1)`` held at
    most, and for any ``d`` one within ``2·max(d, 8)`` below ``N - d``."""
    kept: set[int] = set()
    for n in range(8, 5000, 8):
        kept = retained(kept | {n}, 8)
        assert len(kept) <= 2 * (math.floor(math.log2(n / 8)) + 1)
        for d in (1, 7, 8, 30, 100, 1000):
            if d < n:
                below = max((p for p in kept if p <= n - d), default=0)
                assert n - d - below < 2 * max(d, 8), (n, d, sorted(kept))


def test_a_plan_writes_only_what_it_keeps_and_drops_stale_prefixes() -> None:
    ids = [bytes([k]) * 32 for k in range(40)]
    keys = prefix_keys([b"\0" * 32], ids, 0)
    # From empty, the fold passes 8..40 but writes only the checkpoints it will keep.
    assert plan([], keys, 40, 0, 8).writes == {16, 32, 40}
    # Orphans past the main chain are never written.
    assert plan([], keys, 21, 0, 8).writes == {8, 16}


def test_statistics_and_repr(adapters: list[Blobs], store: Store) -> None:
    c = composer(store)
    assert repr(c).startswith("<Composer stack v0 ")
    c.update(chain(adapters, 3))
    assert repr(c).startswith("<Composer stack v3 ")
    assert c.statistics().checkpoints == 0  # no checkpoint store
