from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.summary import IdSet, bits_for, bucket_bounds, set_root


def _ids(names: set[int]) -> list[bytes]:
    return [hashlib.sha256(n.to_bytes(4, "big")).digest() for n in names]


def _reconcile(a: IdSet, b: IdSet) -> tuple[set[bytes], set[bytes]]:
    """One exchange as the protocol runs it: a sends its summary, b answers with its ids in the
    differing buckets, a pushes what b lacks. Returns (what a pushes to b, what a learns b has)."""
    theirs = a.summary()
    mine = b.summary(theirs.bits)
    buckets = mine.differing(theirs)
    b_ids = set(b.in_buckets(buckets, theirs.bits))
    a_ids = set(a.in_buckets(buckets, theirs.bits))
    return a_ids - b_ids, b_ids - a_ids


def test_root_depends_on_the_set_only() -> None:
    ids = _ids({1, 2, 3})
    assert IdSet(ids).root == IdSet(reversed(ids)).root == set_root(sorted(ids))
    assert IdSet(ids).root != IdSet(ids[:2]).root


def test_add_reports_news_and_invalidates_the_root() -> None:
    s = IdSet()
    empty_root = s.root
    (one,) = _ids({1})
    assert s.add(one)
    assert not s.add(one)
    assert s.root != empty_root
    assert len(s) == 1


def test_bits_grow_with_the_set() -> None:
    assert bits_for(0) == 0
    assert bits_for(16) == 0
    assert bits_for(17) == 1
    assert bits_for(10**9) == 12


def test_buckets_cover_the_id_space() -> None:
    assert bucket_bounds(0, 0) == (bytes(32), None)
    low, high = bucket_bounds(1, 2)
    assert low == bytes([0x40]) + bytes(31)
    assert high == bytes([0x80]) + bytes(31)


@settings(max_examples=60, deadline=None)
@given(
    st.sets(st.integers(0, 5000), max_size=300),
    st.sets(st.integers(0, 5000), max_size=300),
)
def test_one_exchange_finds_the_whole_difference(left: set[int], right: set[int]) -> None:
    a, b = IdSet(_ids(left)), IdSet(_ids(right))
    push, learn = _reconcile(a, b)
    assert push == set(_ids(left - right))
    assert learn == set(_ids(right - left))
    for i in push:
        b.add(i)
    for i in learn:
        a.add(i)
    assert a.root == b.root


def test_a_small_difference_costs_a_few_buckets() -> None:
    everything = IdSet(_ids(set(range(2000))))
    stale = IdSet(_ids(set(range(1990))))
    push, _ = _reconcile(everything, stale)
    assert len(push) == 10
    # only the differing buckets travel: about 10 x BUCKET_TARGET ids, not the whole set
    theirs = everything.summary()
    buckets = stale.summary(theirs.bits).differing(theirs)
    assert len(buckets) <= 10
    assert len(stale.in_buckets(buckets, theirs.bits)) < 10 * 4 * 16
