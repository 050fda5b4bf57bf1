from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.identity import Identity
from crypto.records import BLOB_KINDS, BlobRef, Commit, Genesis, Member, Revocation
from node.core.order import (
    Entry,
    OrderBook,
    chain_item,
    forge_order,
    order_commits,
    root_item,
)

ROOT = root_item(b"net" * 8)


def _id(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def entry(
    name: str,
    parent: bytes,
    author: str = "alice",
    seq: int | None = None,
    supersedes: bytes | None = None,
) -> Entry:
    return Entry(
        _id(name),
        author.encode(),
        seq if seq is not None else hash(name) % 10**6,
        parent,
        supersedes,
    )


def test_empty_order_is_item_zero() -> None:
    order = order_commits(ROOT, [])
    assert order.commits == ()
    assert order.tip == ROOT
    assert order.head == ROOT


def test_chain_in_parent_order_whatever_the_input_order() -> None:
    a = entry("a", ROOT)
    b = entry("b", a.item)
    c = entry("c", b.item)
    order = order_commits(ROOT, [c, a, b])
    assert order.commits == (a.id, b.id, c.id)
    assert order.main_length == 3
    assert order.tip == c.item
    assert order.items[1] == chain_item(ROOT, a.id) == a.item


def test_longest_chain_wins_over_lowest_id() -> None:
    a, b = entry("a", ROOT), entry("b", ROOT)
    low, high = sorted([a, b], key=lambda e: e.id)
    on_high = entry("x", high.item)
    order = order_commits(ROOT, [low, high, on_high])
    assert order.main == (high.id, on_high.id)
    assert order.orphans == (low.id,)


def test_tie_goes_to_lowest_id_and_orphans_follow_the_tip() -> None:
    a, b, c = entry("a", ROOT), entry("b", ROOT), entry("c", ROOT)
    order = order_commits(ROOT, [a, b, c])
    first, *rest = sorted([a.id, b.id, c.id])
    assert order.main == (first,)
    assert order.orphans == tuple(rest)
    # The item chain runs on through the orphans.
    assert order.items[3] == chain_item(chain_item(chain_item(ROOT, first), rest[0]), rest[1])


def test_orphans_sorted_by_parent_height_then_id() -> None:
    a = entry("a", ROOT)
    b = entry("b", a.item)
    c = entry("c", b.item)
    low = entry("low", ROOT)  # parent height 0
    mid = entry("mid", a.item)  # parent height 1
    order = order_commits(ROOT, [mid, c, low, b, a])
    assert order.main == (a.id, b.id, c.id)
    assert order.orphans == (low.id, mid.id)


def test_supersedes_removes_an_orphan_of_the_same_author_only() -> None:
    a = entry("a", ROOT, author="alice")
    late = entry("late", ROOT, author="bob")
    if late.id < a.id:  # make 'late' the orphan whatever the hashes say
        a, late = entry("a2", ROOT, author="alice"), entry("late2", ROOT, author="bob")
    assert a.id < late.id
    rebased = entry("rebased", a.item, author="bob", supersedes=late.id)
    hijack = entry("hijack", a.item, author="mallory", supersedes=late.id)
    assert order_commits(ROOT, [a, late, rebased]).commits == (a.id, rebased.id)
    order = order_commits(ROOT, [a, late, hijack])
    assert late.id in order.orphans
    assert not order.superseded


def test_supersedes_of_a_main_chain_commit_is_ignored() -> None:
    a = entry("a", ROOT, author="alice")
    b = entry("b", a.item, author="alice", supersedes=a.id)
    order = order_commits(ROOT, [a, b])
    assert order.commits == (a.id, b.id)
    assert not order.superseded


def test_equivocation_excludes_both_and_children_become_orphans() -> None:
    a = entry("a", ROOT, author="mallory", seq=7)
    a2 = entry("a2", ROOT, author="mallory", seq=7)
    on_a = entry("on-a", a.item, author="bob")
    honest = entry("honest", ROOT, author="alice")
    order = order_commits(ROOT, [a, a2, on_a, honest])
    assert order.excluded == {a.id, a2.id}
    assert order.flagged == {b"mallory"}
    assert order.main == (honest.id,)
    assert order.orphans == (on_a.id,)


def test_revoked_commit_is_excluded() -> None:
    a = entry("a", ROOT)
    b = entry("b", a.item, author="bob")
    order = order_commits(ROOT, [a, b], revoked=frozenset({a.id}))
    assert order.excluded == {a.id}
    assert order.commits == (b.id,)
    assert order.main_length == 0


# --- property tests: any arrival order, any duplication -----------------------------------


@st.composite
def commit_sets(draw: st.DrawFn) -> list[Entry]:
    n = draw(st.integers(min_value=0, max_value=14))
    entries: list[Entry] = []
    for k in range(n):
        # parent: item_0, an earlier commit's item, or an unknown item
        choice = draw(st.integers(min_value=-2, max_value=len(entries) - 1))
        parent = (
            ROOT if choice == -1 else _id(f"unknown{k}") if choice == -2 else entries[choice].item
        )
        author = draw(st.sampled_from(["alice", "bob", "carol"]))
        seq = draw(st.integers(min_value=0, max_value=20))
        sup = draw(st.none() | st.integers(min_value=0, max_value=max(0, len(entries) - 1)))
        supersedes = entries[sup].id if sup is not None and entries else None
        entries.append(Entry(_id(f"c{k}-{author}-{seq}"), author.encode(), seq, parent, supersedes))
    return entries


@settings(max_examples=150, deadline=None)
@given(commit_sets(), st.randoms(use_true_random=False))
def test_order_ignores_arrival_order_and_duplicates(entries: list[Entry], rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    shuffled = entries + rnd.sample(entries, len(entries) // 2)
    rnd.shuffle(shuffled)
    assert order_commits(ROOT, shuffled) == order_commits(ROOT, entries)


@settings(max_examples=150, deadline=None)
@given(commit_sets(), st.randoms(use_true_random=False))
def test_order_book_matches_the_pure_order_after_every_step(
    entries: list[Entry], rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    rnd.shuffle(entries)
    book = OrderBook(ROOT)
    for k, e in enumerate(entries):
        assert book.add(e) == order_commits(ROOT, entries[: k + 1])


@settings(max_examples=150, deadline=None)
@given(commit_sets(), st.randoms(use_true_random=False), st.integers(0, 20))
def test_deferred_adds_settle_to_the_pure_order(
    entries: list[Entry], rnd: object, plain_after: int
) -> None:
    """A restore adds commits with ``defer`` and settles once; plain adds may follow."""
    import random

    assert isinstance(rnd, random.Random)
    rnd.shuffle(entries)
    cut = max(0, len(entries) - plain_after)
    book = OrderBook(ROOT)
    for e in entries[:cut]:
        book.add(e, defer=True)
    assert book.settle() == order_commits(ROOT, entries[:cut])
    book = OrderBook(ROOT)
    for e in entries[:cut]:
        book.add(e, defer=True)
    for k, e in enumerate(entries[cut:], start=cut + 1):  # a plain add settles first
        assert book.add(e) == order_commits(ROOT, entries[:k])
    assert book.settle() == order_commits(ROOT, entries)


@settings(max_examples=100, deadline=None)
@given(commit_sets())
def test_order_is_well_formed(entries: list[Entry]) -> None:
    order = order_commits(ROOT, entries)
    assert len(set(order.commits)) == len(order.commits)
    assert len(order.items) == len(order.commits) + 1
    assert not set(order.commits) & (order.excluded | order.superseded)
    by_id = {e.id: e for e in entries}
    previous = ROOT
    for commit_id in order.main:  # every main-chain commit was searched against its place
        assert by_id[commit_id].parent == previous
        previous = by_id[commit_id].item


# --- on real signed records -----------------------------------------------------------------


def _commit(author: Identity, genesis: Genesis, seq: int, parent: bytes, **kw: object) -> Commit:
    fields: dict[str, object] = dict(
        network=genesis.network_id,
        seq=seq,
        task="breast",
        classes=("benign", "malignant"),
        base="ab" * 32,
        blobs={k: BlobRef(bytes([i]) * 32, 10) for i, k in enumerate(BLOB_KINDS)},
        parent=parent,
        coeffs=(1.0, 0.5),
        objective={},
    )
    fields.update(kw)
    return Commit.create(author, **fields)


def test_forge_order_applies_roster_and_revocation() -> None:
    alice, bob, mallory = (Identity.from_seed(bytes([n]) * 32) for n in (1, 2, 66))
    genesis = Genesis(
        name="net",
        members=(Member("alice", alice.public), Member("bob", bob.public)),
        threshold=1,
        spec={"mode": "fusion"},
        nonce="n",
    )
    root = root_item(genesis.network_id)
    a = _commit(alice, genesis, 0, root)
    b = _commit(bob, genesis, 0, Entry.of(a).item)
    outsider = _commit(mallory, genesis, 0, root)
    assert forge_order(genesis, [b, outsider, a]).commits == (a.id, b.id)
    revoke = Revocation.of_commit(genesis.network_id, a.id).signed_by(alice)
    order = forge_order(genesis, [a, b, revoke])
    assert order.excluded == {a.id}
    assert order.commits == (b.id,)
