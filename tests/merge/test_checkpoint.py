"""A composite to checkpoint bytes and back: the very bytes (by digest), and damage refused.

A checkpoint is believed only by its digest (the composer recomputes it); here: every mode and
representation comes back with its digest, and bytes that are not a whole checkpoint raise
``CheckpointError`` rather than give a composite (or a crash, or a huge allocation).
"""

from __future__ import annotations

import io
import struct
from functools import partial

import pytest
import torch
from merge_fixtures import random_adapter

from merge import checkpoint
from merge.compaction import Compaction
from merge.dense import DenseModule
from merge.digest import adapter_digest, composite_digest
from merge.errors import CheckpointError
from merge.fold import Composite, apply, empty, fold
from merge.lora import DeferredModules, LoraAdapter, LoraModule, adapter_nbytes

SHAPES = {"enc.q": (6, 5), "enc.v": (6, 5), "head": (3, 6)}
ADAPTERS = [
    random_adapter(1, SHAPES, {"enc.q": 2, "enc.v": 2}),
    random_adapter(2, SHAPES, {"enc.q": 3, "head": 1}),
    random_adapter(3, SHAPES, {"enc.q": 2, "enc.v": 4, "head": 2}),
]
STEPS = list(zip(ADAPTERS, [(1.0, 1.0), (0.75, 0.5), (0.5, 1.25)], strict=True))
KEYS = [bytes([k]) * 32 for k in range(len(ADAPTERS))]


def composites() -> dict[str, Composite]:
    compacted = empty("stack")
    for adapter, coeffs in STEPS:  # past rank 4: enc.q (7) and enc.v (6) turn dense, head (3) not
        compacted = apply(compacted, adapter, coeffs, compaction=Compaction(4))
    return {
        "fusion": fold("fusion", STEPS),
        "stack": fold("stack", STEPS),
        "stack-dense": compacted,
        "mixture": fold("mixture", STEPS),
        "empty-stack": empty("stack"),
        "empty-mixture": empty("mixture"),
    }


def members(ref: checkpoint.MemberRef) -> LoraAdapter:
    return ADAPTERS[KEYS.index(ref.key)]


@pytest.mark.parametrize("name", sorted(composites()))
def test_a_composite_comes_back_with_its_digest(name: str) -> None:
    c = composites()[name]
    keys = KEYS[: len(c.members)]
    data = checkpoint.encode(c, keys)
    back = checkpoint.decode(data, members)
    assert back.mode == c.mode
    assert composite_digest(back) == composite_digest(c)
    # Streaming to a sink gives the same bytes as encoding at once.
    sink = io.BytesIO()
    checkpoint.write(c, sink, keys)
    assert sink.getvalue() == data


def test_dense_and_factored_modules_keep_their_representation() -> None:
    c = composites()["stack-dense"]
    kinds = {n: type(m) for n, m in c.modules.items()}
    assert DenseModule in kinds.values()
    assert LoraModule in kinds.values()
    back = checkpoint.decode(checkpoint.encode(c))
    assert {n: type(m) for n, m in back.modules.items()} == kinds
    # The fold goes on from a loaded checkpoint exactly as from the composite itself.
    more = random_adapter(4, SHAPES, {"enc.v": 1, "head": 2})
    policy = Compaction(4)
    assert composite_digest(apply(back, more, (0.5, 0.5), compaction=policy)) == composite_digest(
        apply(c, more, (0.5, 0.5), compaction=policy)
    )


def test_mixture_weights_are_exact_floats_and_members_are_asked_for() -> None:
    c = composites()["mixture"]

    refs: list[checkpoint.MemberRef] = []

    def lookup(ref: checkpoint.MemberRef) -> LoraAdapter:
        refs.append(ref)
        return members(ref)

    back = checkpoint.decode(checkpoint.encode(c, KEYS), lookup)
    assert [r.key for r in refs] == KEYS
    # Each member is named with its digest and size, so a deferred one needs no read.
    assert [r.digest for r in refs] == [adapter_digest(a) for a in ADAPTERS]
    assert [r.nbytes for r in refs] == [adapter_nbytes(a) for a in ADAPTERS]
    assert [struct.pack("<d", w) for w in back.weights] == [struct.pack("<d", w) for w in c.weights]
    with pytest.raises(CheckpointError, match="keys"):
        checkpoint.encode(c, KEYS[:1])
    with pytest.raises(CheckpointError, match="members"):
        checkpoint.decode(checkpoint.encode(c, KEYS))  # no way to get them


def test_a_version_1_mixture_is_read_with_members_looked_up_by_key() -> None:
    """Checkpoints written before members carried their digest still load (a node keeps its
    checkpoints across an upgrade); the lookup is told it has no digest to go by."""
    c = composites()["mixture"]
    v1 = checkpoint._TAG_V1
    data = checkpoint._field(v1) + checkpoint._field(b"mixture") + checkpoint._u64(3)
    for w, key in zip(c.weights, KEYS, strict=True):
        data += struct.pack("<d", w) + checkpoint._field(key)
    refs: list[checkpoint.MemberRef] = []

    def lookup(ref: checkpoint.MemberRef) -> LoraAdapter:
        refs.append(ref)
        return members(ref)

    back = checkpoint.decode(data, lookup)
    assert composite_digest(back) == composite_digest(c)
    assert refs == [checkpoint.MemberRef(k, None, None) for k in KEYS]


def test_a_deferred_member_is_read_when_used_and_hashes_as_the_adapter() -> None:
    loads: list[int] = []

    def load(k: int) -> LoraAdapter:
        loads.append(k)
        return ADAPTERS[k]

    deferred = [
        LoraAdapter(a.base, DeferredModules(adapter_digest(a), adapter_nbytes(a), partial(load, k)))
        for k, a in enumerate(ADAPTERS)
    ]
    held = fold("mixture", STEPS)
    lazy = fold("mixture", list(zip(deferred, [s[1] for s in STEPS], strict=True)))
    assert composite_digest(lazy) == composite_digest(held)
    assert checkpoint.encode(lazy, KEYS) == checkpoint.encode(held, KEYS)
    assert loads == [], "the digest and a checkpoint read no member"
    # Used, a member is read once and then held among the recent few.
    first = deferred[0].modules
    assert sorted(first) == sorted(ADAPTERS[0].modules)
    assert torch.equal(first["enc.q"].A, ADAPTERS[0].modules["enc.q"].A)
    assert loads == [0]
    assert deferred[0].deferred
    assert adapter_nbytes(deferred[0]) == adapter_nbytes(ADAPTERS[0])


@pytest.mark.parametrize("name", ["stack", "stack-dense", "mixture"])
def test_every_truncation_is_refused(name: str) -> None:
    c = composites()[name]
    data = checkpoint.encode(c, KEYS[: len(c.members)])
    for cut in range(len(data)):
        with pytest.raises(CheckpointError):
            checkpoint.decode(data[:cut], members)


def test_trailing_bytes_another_version_and_absurd_sizes_are_refused() -> None:
    data = checkpoint.encode(composites()["stack"])
    with pytest.raises(CheckpointError, match="after the end"):
        checkpoint.decode(data + b"\0")
    with pytest.raises(CheckpointError, match="not a medforge checkpoint"):
        checkpoint.decode(data.replace(b"checkpoint/2", b"checkpoint/9", 1))
    # A module count that cannot fit in what follows is refused before anything is built.
    head = len(checkpoint.encode(empty("stack"))) - 8
    huge = data[:head] + struct.pack("<Q", 1 << 60) + data[head + 8 :]
    with pytest.raises(CheckpointError, match="cannot fit"):
        checkpoint.decode(huge)


def test_a_flipped_byte_is_refused_or_changes_the_digest() -> None:
    """What the parser cannot see (a bit in a tensor), the digest does: no flip anywhere gives
    a composite with the original digest."""
    c = composites()["stack-dense"]
    want = composite_digest(c)
    data = bytearray(checkpoint.encode(c))
    for at in range(0, len(data), 7):
        damaged = bytearray(data)
        damaged[at] ^= 0x10
        try:
            back = checkpoint.decode(bytes(damaged))
        except CheckpointError:
            continue
        assert composite_digest(back) != want, at
