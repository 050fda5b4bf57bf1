"""The sans-IO replication core: events in, actions out, ``now`` passed in.

The trio service and the simulator both drive this one class, ``Core``: they call
``core.handle(event, now)`` and carry out the actions it returns, in order. Nothing here does
I/O, reads a clock, or draws an unseeded random number; the core imports ``crypto`` and the
rest of ``node.core`` only. The events it takes and the actions it returns are the frozen
dataclasses of ``node.core.events`` (re-exported here), whose header says what each one means.

``Core`` holds the records and the peers and makes the decisions that join them. The parts
with state of their own are owned by it, each with its rules in its module's header; the
fetcher and the rebaser return steps (actions, and ``Wake`` for the core's one timer), the
other two answer questions, and none of them acts on its own::

    node.core.fetch.Fetcher          blobs held and wanted; which holder is asked, and when
    node.core.rebase.Rebaser         when to ask for the rebase of an own orphan
    node.core.admission.Admission    what is taken at all (a ``Refusal`` or None); ids refused
    node.core.members.Membership     the roster in force, and every key it ever named

The pure functions it calls are ``node.core.order`` (the order of the commits),
``node.core.summary`` (set summaries) and ``node.core.messages`` (the wire).

Rules:

- The replicated state is a grow-only set of signed records; the **set** is the content ids
  (sha256 of the bytes) of the records held *complete*: valid, and every blob verified.
  Records whose blobs are missing, or that wait for their verdict, are *pending*: they are
  not in the set root, not relayed and not in the order. The order is ``node.core.order`` over
  the complete commits and the roster.
- A commit with every blob held is judged whole (``Validate``) before it counts. One judged
  invalid is invalid on every node alike (the validity function is pure): it is kept as
  evidence, counted against its author, never relayed, never merged, and its id is never
  fetched or judged again. The peer that sent it is not blamed: it holds what its author
  signed, and a valid member signed it.
- A record is relayed (``recs``) once, when it becomes complete, to every peer not known to
  hold it. Whoever sends us a record holds it complete, so it is a holder of its blobs.
- The blobs a pending record misses are fetched from the peers that sent it (and, for a
  ``MISSING`` verdict or a ``BlobLost``, from the peers known to hold the records that name
  them), by the rules of ``node.core.fetch``: each once, from one holder at a time, a bounded
  number in flight per peer. Only bytes proven wrong (CORRUPT) blame the peer: refusals,
  resets, truncation and timeouts are UNAVAILABLE.
- Anti-entropy (``node.core.summary``) on connect and every ``sync_interval``: a summary to every
  peer; a peer whose root differs answers with its ids in the differing buckets; we push what
  it lacks. The summary carries the composite digest: ``convergence()`` reads them back.
- Garbage from a peer (a malformed message, a record that does not verify, bytes that do not
  hash to the blob asked for) is counted, remembered in ``errors`` and answered with
  ``Disconnect``; it never raises out of ``handle``. Records by keys the roster has never
  named are ignored without blame (a roster update we do not hold yet may name them), so
  anti-entropy brings them back (``node.core.admission``).
- A peer whose key the roster never named (a *stranger*) gets only what a joining member
  needs, per ``CoreConfig.strangers``: ``"read"`` (default) answers its summaries and id lists,
  so it can pull records, but nothing it sends is decoded as a record, fetched or counted
  towards convergence; ``"none"`` ignores it entirely; ``"trust"`` treats every peer as a
  member (the simulator, whose peer names are not peer ids). Per-peer state is bounded by
  our own: a peer's ``has`` set only keeps ids we hold.
- While commits restored from the store are being judged again, no ``Merge`` is asked and no
  rebase is scheduled: the order of a half-restored set is transient.
- Own orphans of each new order are rebased (``node.core.rebase``); a local commit that
  supersedes a commit that is no longer an orphan, or does not extend the tip, is refused as
  stale (and the orphan, if still one, is scheduled again).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from crypto.errors import CryptoError
from crypto.identity import PublicKey
from crypto.records import Commit, Genesis, Record, Revocation, RosterUpdate, decode_record
from crypto.roster import Roster
from node.core import messages
from node.core.admission import Admission, Refusal
from node.core.events import (
    Action,
    BlobLost,
    BlobReceived,
    BlobResult,
    Broadcast,
    Convergence,
    CoreConfig,
    Disconnect,
    Event,
    FetchBlob,
    Judged,
    LocalRecord,
    Merge,
    MergeDone,
    MessageReceived,
    PeerConnected,
    PeerDisconnected,
    PeerReport,
    Rebase,
    Rejected,
    Send,
    SetTimer,
    Statistics,
    StoreInvalid,
    StoreRecord,
    Timer,
    Validate,
    Verdict,
    Wake,
)
from node.core.fetch import Fetcher
from node.core.members import Membership
from node.core.messages import Ids, Records, Summary
from node.core.order import Entry, Order, OrderBook, root_item
from node.core.rebase import Rebaser
from node.core.summary import IdSet, SetSummary
from node.errors import MalformedMessage


@dataclass
class _Held:
    record: Record
    data: bytes
    missing: set[bytes]


@dataclass
class _Peer:
    has: set[bytes] = field(default_factory=set)
    report: PeerReport | None = None


__all__ = [
    "Core",
    # events
    "PeerConnected", "PeerDisconnected", "MessageReceived", "BlobResult", "BlobReceived",
    "BlobLost", "LocalRecord", "Timer", "MergeDone", "Judged", "Verdict", "Event",
    # actions
    "Send", "Broadcast", "FetchBlob", "StoreRecord", "Validate", "StoreInvalid", "Merge",
    "SetTimer", "Disconnect", "Rebase", "Rejected", "Action",
    # configuration and reports
    "CoreConfig", "PeerReport", "Convergence", "Statistics",
]  # fmt: skip


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Core:
    """The replication state of one node and every decision about it (see the module doc)."""

    def __init__(
        self,
        genesis: Genesis,
        *,
        me: PublicKey | None = None,
        config: CoreConfig | None = None,
        blobs: Iterable[bytes] = (),
        decode_message: Callable[[bytes], messages.Message] = messages.decode,
        decode: Callable[[bytes], Record] | None = None,
    ) -> None:
        self.genesis = genesis
        self.network = genesis.network_id
        self.config = config or CoreConfig()
        self._me = me.raw if me is not None else None
        # Decoding is a pure function of the bytes: the simulator shares a memo across nodes.
        self._decode_message = decode_message
        self._decode = decode or partial(decode_record, network=self.network)
        self._held: dict[bytes, _Held] = {}
        self._set = IdSet()
        self._judging: set[bytes] = set()
        self._restoring: set[bytes] = set()  # restored commits still being judged again
        self._local: set[bytes] = set()  # local records not yet stored or rejected
        self._invalid: dict[bytes, tuple[bytes, str]] = {}  # id -> (author key, reason)
        self._fetcher = Fetcher(self.config, blobs)
        self._peers: dict[str, _Peer] = {}
        self._members = Membership(genesis)
        self._admission = Admission(genesis, self._members, self.config)
        self._commits: dict[bytes, tuple[Entry, Commit]] = {}
        self._root = root_item(self.network)
        self._book = OrderBook(self._root)
        self._merged = self._book.order  # the last order handed to the shell to fold
        self._digest: tuple[bytes, str] | None = None
        self._rebaser = Rebaser(self.config)
        self._next_sync: float | None = None
        self._timer_at: float | None = None
        self._errors: deque[tuple[float, str, str]] = deque(maxlen=self.config.errors_kept)
        self._counts = {"ignored": 0, "duplicates": 0, "garbage": 0, "strangers": 0}
        self._summary_cache: tuple[tuple[bytes, bytes, str | None], bytes] | None = None
        self._now = 0.0
        self._out: list[Action] = []
        self._handlers: dict[type, Callable[[Any], None]] = {
            MessageReceived: lambda e: self._on_message(e.peer, e.data),
            BlobReceived: lambda e: self._on_blob(e.peer, e.sha256, e.result),
            PeerConnected: lambda e: self._on_connect(e.peer),
            PeerDisconnected: lambda e: self._drop_peer(e.peer),
            LocalRecord: lambda e: self._on_record(
                e.data, None, blobs_held=e.blobs_held, restored=e.restored, invalid=e.invalid
            ),
            Judged: self._on_judged,
            BlobLost: lambda e: self._on_blob_lost(e.sha256),
            Timer: lambda e: self._on_timer(),
            MergeDone: self._on_merged,
        }

    # --- the one entry point ---

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event at time ``now``; return what the shell must do, in order."""
        self._now = now
        if self._next_sync is None:
            self._next_sync = now + self.config.sync_interval
            self._wake(self._next_sync)
        # One dict lookup per event: this runs for every message on every simulated node.
        self._handlers[type(event)](event)
        self._after()
        out, self._out = self._out, []
        return out

    def _on_merged(self, event: MergeDone) -> None:
        if event.item == self._book.order.head:
            self._digest = (event.item, event.digest)

    # --- queries ---

    @property
    def root(self) -> bytes:
        """The set root over the content ids of the complete records."""
        return self._set.root

    @property
    def order(self) -> Order:
        return self._book.order

    @property
    def tip(self) -> bytes:
        """The item a new local commit names as parent (searched against ``order.main``)."""
        return self._book.order.tip

    @property
    def digest(self) -> str | None:
        """The composite digest of the current order, once the shell has reported it."""
        if self._digest is not None and self._digest[0] == self._book.order.head:
            return self._digest[1]
        return None

    @property
    def errors(self) -> tuple[tuple[float, str, str], ...]:
        """The last peer errors: (time, peer, reason)."""
        return tuple(self._errors)

    def commit(self, commit_id: bytes) -> Commit | None:
        held = self._commits.get(commit_id)
        return held[1] if held is not None else None

    def holds(self, record_id: bytes) -> bool:
        """Whether the record with this content id is held complete (in the set)."""
        return record_id in self._set

    @property
    def roster(self) -> Roster:
        """The roster in force: the genesis plus every roster update and revocation held."""
        return self._members.roster

    def roster_records(self) -> list[RosterUpdate | Revocation]:
        """The roster updates and revocations held (signatures combined)."""
        return self._members.records()

    def invalid(self) -> dict[bytes, tuple[bytes, str]]:
        """Commits judged invalid: id -> (author's public key, reason)."""
        return dict(self._invalid)

    def records(self) -> Iterator[bytes]:
        """The bytes of every complete record, by content id."""
        return (self._held[cid].data for cid in self._set)

    def pending_blobs(self) -> dict[bytes, tuple[int, str]]:
        """Blobs that pending records wait for: sha256 -> (size, kind)."""
        return self._fetcher.wanted()

    def peers(self) -> dict[str, PeerReport | None]:
        return {peer: p.report for peer, p in self._peers.items()}

    def convergence(self) -> Convergence:
        reports = [p.report for p in self._peers.values() if p.report is not None]
        same_set = [r for r in reports if r.root == self.root]
        digest = self.digest
        same = [r for r in same_set if digest is not None and r.digest == digest]
        return Convergence(len(self._peers), len(reports), len(same_set), len(same))

    def statistics(self) -> Statistics:
        fetches = self._fetcher.statistics()
        return Statistics(
            complete=len(self._set),
            pending=len(self._held) - len(self._set),
            validating=len(self._judging),
            invalid=len(self._invalid),
            rejected=self._admission.rejected,
            ignored=self._counts["ignored"],
            duplicates=self._counts["duplicates"],
            garbage=self._counts["garbage"],
            strangers=self._counts["strangers"],
            blobs=fetches.held,
            fetching=fetches.fetching,
            queued=fetches.queued,
            peers=len(self._peers),
        )

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<Core records={stats.complete} pending={stats.pending} peers={stats.peers} "
            f"order={len(self.order.commits)} head={self.order.head.hex()[:12]}>"
        )

    # --- peers and messages ---

    def _on_connect(self, peer: str) -> None:
        self._peers.setdefault(peer, _Peer())
        self._out.append(Send(peer, self._summary_bytes()))

    def _drop_peer(self, peer: str) -> None:
        if self._peers.pop(peer, None) is None:
            return
        self._follow(self._fetcher.peer_gone(peer, self._now, self._peers))

    def _garbage(self, peer: str, reason: str) -> None:
        self._counts["garbage"] += 1
        self._errors.append((self._now, peer, reason))
        if peer in self._peers:
            self._out.append(Disconnect(peer, reason))
            self._drop_peer(peer)

    def is_member(self, peer: str) -> bool:
        """Whether ``peer`` is the node of a key the roster has ever named."""
        return self.config.strangers == "trust" or self._members.is_member_peer(peer)

    def _on_message(self, peer: str, data: bytes) -> None:
        stranger = not self.is_member(peer)
        if stranger and self.config.strangers == "none":
            self._counts["strangers"] += 1
            return
        if peer not in self._peers:  # a shell may deliver before PeerConnected
            self._peers[peer] = _Peer()
        try:
            message = self._decode_message(data)
        except MalformedMessage as exc:
            self._garbage(peer, str(exc))
            return
        if isinstance(message, Summary):
            self._on_summary(peer, message, stranger=stranger)
        elif isinstance(message, Ids):
            self._on_ids(peer, message)
        elif stranger:  # read-only: a stranger may pull what we hold, nothing it sends counts
            self._counts["strangers"] += 1
        else:
            for record in message.records:
                if peer not in self._peers:  # disconnected for garbage mid-message
                    return
                self._on_record(record, peer)

    def _summary_bytes(self) -> bytes:
        key = (self._set.root, self.order.head, self.digest)
        if self._summary_cache is None or self._summary_cache[0] != key:
            s = self._set.summary()
            message = Summary(s.root, s.count, s.bits, s.fingerprints, key[1], key[2])
            self._summary_cache = (key, messages.encode(message))
        return self._summary_cache[1]

    def _on_summary(self, peer: str, message: Summary, *, stranger: bool = False) -> None:
        if not stranger:  # convergence counts members only
            self._peers[peer].report = PeerReport(
                message.root, message.count, message.head, message.digest, self._now
            )
        if message.root == self._set.root:
            return
        theirs = SetSummary(message.root, message.count, message.bits, message.fingerprints)
        buckets = self._set.summary(message.bits).differing(theirs)
        if buckets:
            ids = self._set.in_buckets(buckets, message.bits)
            for data in messages.chunked_ids(message.bits, buckets, ids):
                self._out.append(Send(peer, data))

    def _on_ids(self, peer: str, message: Ids) -> None:
        # Only ids we hold are worth remembering (they spare a push): a peer cannot grow
        # our state by naming ids, whatever it sends.
        self._peers[peer].has.update(i for i in message.ids if i in self._held)
        if not message.buckets:
            return
        theirs = set(message.ids)
        push = [c for c in self._set.in_buckets(message.buckets, message.bits) if c not in theirs]
        self._push(peer, push)

    def _push(self, peer: str, cids: list[bytes]) -> None:
        if not cids:
            return
        self._peers[peer].has.update(cids)
        for data in messages.chunked_records([self._held[c].data for c in cids]):
            self._out.append(Send(peer, data))

    # --- records ---

    def _on_record(
        self,
        data: bytes,
        peer: str | None,
        *,
        blobs_held: bool = False,
        restored: bool = False,
        invalid: str | None = None,
    ) -> None:
        cid = _sha256(data)
        if peer is not None:
            self._peers[peer].has.add(cid)
        held = self._held.get(cid)
        if held is not None or cid in self._invalid or self._admission.refused(cid):
            self._counts["duplicates"] += 1
            if held is not None and held.missing and peer is not None:
                self._add_holder(held, peer)
            return
        try:
            record = self._decode(data)
        except CryptoError as exc:
            self._refuse(cid, peer, Refusal(f"record does not verify: {exc}", blame=True))
            return
        if invalid is not None and isinstance(record, Commit):  # judged before a restart
            self._invalid[cid] = (record.author.raw, invalid)
            return
        refusal = self._check(record, local=peer is None and not restored)
        if refusal is not None:
            self._refuse(cid, peer, refusal)
            return
        if peer is None and not restored:
            self._local.add(cid)
        self._admit(cid, data, record, peer, blobs_held=blobs_held)
        if restored and cid in self._judging:
            self._restoring.add(cid)

    def _check(self, record: Record, *, local: bool) -> Refusal | None:
        """Why ``record`` is not taken (``node.core.admission``, then: a rebase of our own
        must still be fresh); None if it is."""
        refusal = self._admission.check(record)
        if refusal is not None or not local or not isinstance(record, Commit):
            return refusal
        own = record.author.raw == self._me
        if own and record.supersedes is not None and not self._fresh_rebase(record):
            return Refusal("stale rebase: its target is no longer an orphan or the tip moved")
        return None

    def _fresh_rebase(self, commit: Commit) -> bool:
        order, target = self._book.order, commit.supersedes
        assert target is not None
        self._rebaser.answered(target)
        orphan = target in order.orphans
        if orphan and commit.parent != order.tip:
            self._schedule_rebase(target)  # the tip moved while the author searched: again
        return orphan and commit.parent == order.tip

    def _refuse(self, cid: bytes, peer: str | None, refusal: Refusal) -> None:
        if peer is None:
            self._local.discard(cid)
            self._out.append(Rejected(cid, refusal.reason))
            return
        self._admission.remember(cid, refusal)
        if refusal.blame:
            self._garbage(peer, refusal.reason)
        else:
            self._counts["ignored"] += 1

    def _admit(
        self, cid: bytes, data: bytes, record: Record, peer: str | None, *, blobs_held: bool
    ) -> None:
        missing: set[bytes] = set()
        if isinstance(record, Commit):
            held_here = peer is None and blobs_held
            missing = self._fetcher.need(cid, record.blobs, held=held_here)
        held = _Held(record, data, missing)
        self._held[cid] = held
        if not missing:
            self._judge(cid, held)
            return
        if peer is not None:
            self._add_holder(held, peer)

    def _add_holder(self, held: _Held, peer: str) -> None:
        """``peer`` sent a record that waits for blobs: it holds them (it holds the record
        complete), so it is offered as their holder."""
        for sha in sorted(held.missing):
            self._follow(self._fetcher.offer(sha, (peer,), self._now, self._peers))

    def _judge(self, cid: bytes, held: _Held) -> None:
        """Every blob is held: a commit is judged whole before it counts; others count now."""
        if isinstance(held.record, Commit):
            self._judging.add(cid)
            self._out.append(Validate(cid, held.record))
        else:
            self._complete(cid, held)

    def _on_judged(self, event: Judged) -> None:
        cid = event.record_id
        held = self._held.get(cid)
        if cid not in self._judging or held is None:
            return  # a late answer
        self._judging.discard(cid)
        self._restoring.discard(cid)
        if event.verdict is Verdict.VALID:
            self._complete(cid, held)
        elif event.verdict is Verdict.INVALID:
            self._invalidate(cid, held, event.reason)
        else:
            self._refetch(cid, held, event.missing)

    def _invalidate(self, cid: bytes, held: _Held, reason: str) -> None:
        del self._held[cid]
        assert isinstance(held.record, Commit)
        self._invalid[cid] = (held.record.author.raw, reason)
        self._out.append(StoreInvalid(cid, held.data, reason))
        if cid in self._local:
            self._local.discard(cid)
            self._out.append(Rejected(cid, reason))

    def _refetch(self, cid: bytes, held: _Held, shas: tuple[bytes, ...]) -> None:
        """Held bytes were not the commit's blobs (the shell dropped them): fetch them again
        from whoever holds the record."""
        holders = [peer for peer, p in self._peers.items() if cid in p.has]
        for sha in shas:
            self._fetcher.lost(sha)
            self._fetcher.want(sha, cid)
            held.missing.add(sha)
        for peer in holders:
            self._add_holder(held, peer)

    def _complete(self, cid: bytes, held: _Held) -> None:
        self._local.discard(cid)
        self._set.add(cid)
        self._out.append(StoreRecord(cid, held.data))
        relay = messages.encode(Records((held.data,)))
        for peer, p in self._peers.items():
            if cid not in p.has:
                p.has.add(cid)
                self._out.append(Send(peer, relay))
        record = held.record
        if isinstance(record, Commit):
            entry = Entry.of(record)
            self._commits[entry.id] = (entry, record)
            self._count_commit(entry, record)
        elif isinstance(record, RosterUpdate | Revocation):
            self._roster_changed(record)

    def _count_commit(self, entry: Entry, commit: Commit) -> None:
        if not self._members.may_author(commit):
            return
        self._book.add(entry, defer=bool(self._restoring))  # one recompute after a restore
        if self._members.is_revoked(commit):
            self._book.set_revoked(self._book.revoked | {entry.id})

    def _roster_changed(self, record: RosterUpdate | Revocation) -> None:
        if self._members.add(record):
            self._admission.roster_named_keys()  # records by the keys it names may count
        members = self._members
        allowed = [(e, c) for e, c in self._commits.values() if members.may_author(c)]
        revoked = frozenset(e.id for e, c in allowed if members.is_revoked(c))
        self._book = OrderBook(self._root, {e.id: e for e, _ in allowed}, revoked)

    # --- blobs (the fetching itself is node.core.fetch's) ---

    def _follow(self, steps: Iterable[Action | Wake]) -> None:
        """Carry out a sub-machine's steps: actions go out, wakes move the timer."""
        for step in steps:
            if isinstance(step, Wake):
                self._wake(step.at)
            else:
                self._out.append(step)

    def _on_blob(self, peer: str, sha: bytes, result: BlobResult) -> None:
        if not self._fetcher.answered(peer, sha, result):
            return  # a late answer to a fetch we gave up on
        if result is BlobResult.VERIFIED:
            for cid in self._fetcher.verified(sha):
                held = self._held[cid]
                held.missing.discard(sha)
                if not held.missing:
                    self._judge(cid, held)
        else:
            if result is BlobResult.CORRUPT:  # bytes proven wrong: the only fault we blame
                self._garbage(peer, f"served corrupt bytes for blob {sha.hex()[:12]}")
            self._follow(self._fetcher.failed(sha, self._now, self._peers))
        self._follow(self._fetcher.pump(self._now, self._peers))

    def _on_blob_lost(self, sha: bytes) -> None:
        """A blob of complete records is gone from the store: they stay complete (they were
        judged valid, and validity does not depend on our disk), and the blob is fetched
        again from the peers that hold them."""
        if not self._fetcher.lost(sha):
            return
        users = [  # content ids, as peers' ``has`` sets hold them
            cid
            for cid, held in self._held.items()
            if isinstance(held.record, Commit)
            and any(ref.sha256 == sha for ref in held.record.blobs.values())
        ]
        if not users:
            return
        self._fetcher.want(sha)
        holders = [peer for peer, p in self._peers.items() if any(c in p.has for c in users)]
        self._follow(self._fetcher.offer(sha, holders, self._now, self._peers))

    # --- time ---

    def _on_timer(self) -> None:
        now = self._now
        self._timer_at = None  # fired: the next SetTimer must be sent even for the same time
        if self._next_sync is not None and now >= self._next_sync:
            self._next_sync = now + self.config.sync_interval
            self._sync()
        self._follow(self._fetcher.on_timer(now, self._peers))
        self._follow(self._rebaser.on_timer(now, self._book.order))
        self._rearm()

    def _sync(self) -> None:
        if self._peers:
            self._out.append(Broadcast(self._summary_bytes()))
        self._follow(self._fetcher.sync(self._now, self._peers))

    def _after(self) -> None:
        if self._restoring:
            # Restored commits are judged again in no particular order: until all are, the
            # order is a transient one (own commits would look orphaned and be rebased).
            return
        order = self._book.settle()
        if order is not self._merged and order.head != self._merged.head:
            self._merged = order
            self._out.append(Merge(order))
            for cid in order.orphans:
                self._schedule_rebase(cid)

    def _schedule_rebase(self, cid: bytes) -> None:
        if self._commits[cid][0].author == self._me:
            self._follow(self._rebaser.schedule(cid, self._now))

    def _wake(self, at: float) -> None:
        """Make sure a Timer comes by ``at``. The timer only ever moves earlier between two
        firings (a deadline that went away just costs one idle Timer), so adding a deadline
        is O(1) and nothing is recomputed per event."""
        if self._timer_at is None or at < self._timer_at:
            self._timer_at = at
            self._out.append(SetTimer(at))

    def _rearm(self) -> None:
        times = [t for t in (self._next_sync,) if t is not None]
        times += self._fetcher.wakes()
        times += self._rebaser.wakes()
        if times:
            self._wake(min(times))
