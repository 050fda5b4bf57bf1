"""The commit-to-merge histogram and clock (sans-IO: every time is given), and the RTT
smoothing of the ping probe."""

from __future__ import annotations

import math

import pytest

from crypto.identity import Identity
from crypto.records import BLOB_KINDS, BlobRef, Commit
from node.shell.latency import MERGE_BUCKETS, Histogram, MergeLatency
from node.shell.rtt import GAIN, RttProbe
from node.shell.transport import MemoryNetwork, MemoryTransport


def test_observations_fall_in_the_first_bucket_whose_bound_holds_them() -> None:
    h = Histogram((1.0, 5.0, 30.0))
    for value in (0.0, 0.2, 1.0, 1.0001, 5.0, 29.9, 30.0, 31.0, 1e6):
        h.observe(value)
    snap = h.snapshot()
    # upper bounds are inclusive (Prometheus' le): 1.0 is in the first bucket, 30.0 in the third
    assert snap.bounds == (1.0, 5.0, 30.0)
    assert snap.counts == (3, 2, 2, 2)
    assert snap.count == 9
    assert snap.sum == pytest.approx(sum((0.0, 0.2, 1.0, 1.0001, 5.0, 29.9, 30.0, 31.0, 1e6)))
    assert snap.cumulative() == [(1.0, 3), (5.0, 5), (30.0, 7), (math.inf, 9)]


def test_an_empty_histogram_counts_nothing() -> None:
    snap = Histogram(MERGE_BUCKETS).snapshot()
    assert snap.count == 0
    assert snap.sum == 0.0
    assert snap.counts == (0,) * (len(MERGE_BUCKETS) + 1)
    assert snap.cumulative()[-1] == (math.inf, 0)


@pytest.mark.parametrize("bounds", [(), (2.0, 1.0), (1.0, 1.0), (1.0, math.inf)])
def test_bucket_bounds_must_be_finite_and_increasing(bounds: tuple[float, ...]) -> None:
    if not bounds:  # no bounds at all is allowed: one +Inf bucket
        assert Histogram(bounds).snapshot().counts == (0,)
        return
    with pytest.raises(ValueError, match="increasing"):
        Histogram(bounds)


def _shas(tag: int) -> tuple[bytes, bytes, bytes]:
    return bytes([tag, 0]) * 16, bytes([tag, 1]) * 16, bytes([tag, 2]) * 16


def _commit(alice: Identity, seq: int, shas: tuple[bytes, bytes, bytes]) -> Commit:
    return Commit.create(
        alice,
        network=b"\0" * 32,
        seq=seq,
        task="t",
        classes=("a", "b"),
        base="ab" * 32,
        blobs={kind: BlobRef(sha, 1) for kind, sha in zip(BLOB_KINDS, shas, strict=True)},
        parent=b"\0" * 32,
        coeffs=(1.0, 1.0),
        objective={},
    )


def test_the_clock_runs_from_the_first_fetch_or_validation_to_the_served_fold() -> None:
    alice = Identity.generate()
    fetched = _commit(alice, 1, _shas(1))
    local = _commit(alice, 2, _shas(2))
    latency = MergeLatency(bounds=(1.0, 10.0))
    latency.fetching(_shas(1)[1], now=100.0)  # its blobs are asked for first
    latency.fetching(_shas(1)[2], now=101.0)
    latency.learned(b"r1", fetched, now=104.0)  # then held and validated
    latency.learned(b"r2", local, now=105.0)  # an own commit: nothing fetched
    latency.merged([fetched.id], now=105.5)  # 5.5 s since its first blob was asked for
    latency.merged([fetched.id, local.id], now=105.5)  # local's turn: 0.5 s
    latency.merged([fetched.id, local.id], now=200.0)  # a refold counts nobody twice
    latency.learned(b"r1", fetched, now=300.0)  # nor a re-validation after it merged
    latency.merged([fetched.id, local.id], now=400.0)
    snap = latency.snapshot()
    assert snap.count == 2
    assert snap.counts == (1, 1, 0)  # 0.5 s and 5.5 s
    assert snap.sum == pytest.approx(6.0)


def test_restored_commits_are_not_timed() -> None:
    alice = Identity.generate()
    old, new = _commit(alice, 1, _shas(1)), _commit(alice, 2, _shas(2))
    latency = MergeLatency(restored=lambda record_id: record_id == b"old")
    latency.learned(b"old", old, now=0.0)
    latency.learned(b"new", new, now=1.0)
    latency.merged([old.id, new.id], now=3.0)
    assert latency.snapshot().count == 1
    assert latency.snapshot().sum == pytest.approx(2.0)


def test_the_smoothed_rtt_is_an_ewma_seeded_by_the_first_sample() -> None:
    probe = RttProbe(MemoryTransport(MemoryNetwork(), b"\0" * 32), lambda peer: True, 30.0)
    assert probe.timeout == 10.0  # bounded, whatever the interval
    first = probe.record("bob", 0.002)
    assert first.last_s == first.smoothed_s == 0.002
    second = probe.record("bob", 0.010)
    assert second.last_s == 0.010
    assert second.smoothed_s == pytest.approx(0.002 + GAIN * 0.008)
    assert probe.of("bob") is None  # bob is not connected: unknown, not stale
    probe.forget("bob")
    assert probe.record("bob", 0.004).smoothed_s == 0.004
