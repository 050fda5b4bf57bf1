"""The blob-fetch sub-machine on its own: steps out for what it is told, no core around it."""

from __future__ import annotations

import hashlib

from crypto.records import BlobRef
from node.core.events import BlobResult, CoreConfig, FetchBlob, Wake
from node.core.fetch import Fetcher, Step

CONFIG = CoreConfig(
    sync_interval=30.0, fetch_timeout=5.0, fetch_rate=1e9, max_fetches_per_peer=2, fetch_retry=2.0
)
RECORD = b"r" * 32


def sha(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def needing(*labels: str, held: bool = False) -> Fetcher:
    fetcher = Fetcher(CONFIG)
    blobs = {label: BlobRef(sha(label), 100) for label in labels}
    fetcher.need(RECORD, blobs, held=held)
    return fetcher


def fetches(steps: list[Step]) -> list[tuple[str, bytes]]:
    return [(s.peer, s.sha256) for s in steps if isinstance(s, FetchBlob)]


def test_a_wanted_blob_is_asked_of_one_holder_with_a_deadline() -> None:
    fetcher = needing("a")
    steps = fetcher.offer(sha("a"), ["alice", "bob"], 0.0, {"alice", "bob"})
    assert steps == [Wake(5.0 + 100 / 1e9), FetchBlob("alice", sha("a"), 100, "a")]
    assert fetcher.offer(sha("a"), ["bob"], 1.0, {"alice", "bob"}) == []  # in flight already
    assert fetcher.wanted() == {sha("a"): (100, "a")}


def test_blobs_held_already_are_not_wanted() -> None:
    fetcher = needing("a", "b", held=True)
    assert fetcher.wanted() == {}
    assert fetcher.holds(sha("a"))
    assert fetcher.holds(sha("b"))


def test_a_peer_gets_a_bounded_number_of_fetches_and_the_rest_queue_oldest_first() -> None:
    fetcher = needing("a", "b", "c")
    up = {"alice"}
    started = []
    for label in ("a", "b", "c"):
        started += fetches(fetcher.offer(sha(label), ["alice"], 0.0, up))
    assert started == [("alice", sha("a")), ("alice", sha("b"))]
    assert fetcher.statistics().queued == 1
    assert fetcher.answered("alice", sha("a"), BlobResult.VERIFIED)
    assert fetcher.verified(sha("a")) == [RECORD]
    assert fetches(fetcher.pump(0.5, up)) == [("alice", sha("c"))]


def test_a_refusal_by_the_only_holder_is_retried_with_a_doubling_backoff() -> None:
    fetcher = needing("a")
    up = {"alice"}
    fetcher.offer(sha("a"), ["alice"], 0.0, up)
    waits = []
    now = 0.0
    for _ in range(6):
        assert fetcher.answered("alice", sha("a"), BlobResult.UNAVAILABLE)
        steps = fetcher.failed(sha("a"), now, up)
        (wake,) = steps
        assert isinstance(wake, Wake)
        waits.append(wake.at - now)
        now = wake.at
        assert fetches(fetcher.on_timer(now, up)) == [("alice", sha("a"))]
    assert waits == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # up to the sync interval


def test_a_failed_holder_gives_way_to_the_next_and_is_tried_again_after_a_sync() -> None:
    fetcher = needing("a")
    up = {"alice", "bob"}
    fetcher.offer(sha("a"), ["mallory", "bob"], 0.0, up | {"mallory"})
    assert fetcher.answered("mallory", sha("a"), BlobResult.CORRUPT)
    assert fetches(fetcher.failed(sha("a"), 0.0, up)) == [("bob", sha("a"))]
    assert fetcher.answered("bob", sha("a"), BlobResult.UNAVAILABLE)
    assert fetches(fetcher.failed(sha("a"), 1.0, up)) == []  # both tried: a retry is due
    assert fetches(fetcher.sync(1.5, up | {"mallory"})) == [("mallory", sha("a"))]


def test_a_deadline_with_no_other_holder_asks_the_same_one_again_at_once() -> None:
    fetcher = needing("a")
    fetcher.offer(sha("a"), ["alice"], 0.0, {"alice"})
    assert fetches(fetcher.on_timer(10.0, {"alice"})) == [("alice", sha("a"))]


def test_a_late_answer_is_ignored_unless_it_brings_a_wanted_blob() -> None:
    fetcher = needing("a")
    fetcher.offer(sha("a"), ["alice", "bob"], 0.0, {"alice", "bob"})
    assert not fetcher.answered("bob", sha("a"), BlobResult.UNAVAILABLE)  # never asked
    assert not fetcher.answered("bob", sha("z"), BlobResult.VERIFIED)  # not wanted
    assert fetcher.answered("bob", sha("a"), BlobResult.VERIFIED)
    assert fetcher.verified(sha("a")) == [RECORD]
    assert fetcher.wanted() == {}


def test_the_fetches_of_a_peer_that_leaves_move_to_other_holders() -> None:
    fetcher = needing("a")
    fetcher.offer(sha("a"), ["alice", "bob"], 0.0, {"alice", "bob"})
    assert fetches(fetcher.peer_gone("alice", 1.0, {"bob"})) == [("bob", sha("a"))]
    assert fetcher.statistics().fetching == 1


def test_a_lost_blob_is_wanted_again_without_a_waiting_record() -> None:
    fetcher = needing("a", held=True)
    assert fetcher.lost(sha("a"))
    assert not fetcher.lost(sha("a"))  # not held any more
    fetcher.want(sha("a"))
    assert fetches(fetcher.offer(sha("a"), ["bob"], 0.0, {"bob"})) == [("bob", sha("a"))]
    assert fetcher.answered("bob", sha("a"), BlobResult.VERIFIED)
    assert fetcher.verified(sha("a")) == []
    assert fetcher.holds(sha("a"))
