"""The sans-IO replication core: events in, actions out, ``now`` passed in.

The trio service and the simulator both drive this one class, ``Core``: they call
``core.handle(event, now)`` and carry out the actions it returns, in order. Nothing here does
I/O, reads a clock, or draws an unseeded random number; the core imports ``crypto`` and the pure
``node.order`` / ``node.summary`` / ``node.messages`` only.

Events (frozen dataclasses, defined in ``node.events`` and re-exported here)::

    PeerConnected(peer)             a connection is up; the core starts anti-entropy with it
    PeerDisconnected(peer)          it is gone; fetches from it move to other holders
    MessageReceived(peer, data)     bytes of one ``node.messages`` message from that peer
    BlobReceived(peer, sha256, result)  the answer to a FetchBlob: VERIFIED (stored, hash
                                    checked), UNAVAILABLE (refused / timed out), CORRUPT
                                    (bytes that do not hash to what was asked: the peer's fault)
    LocalRecord(data, blobs_held, restored, invalid)  a record made here (own commit, a
                                    rebase, the CLI) or loaded from the store at start (with
                                    the verdict the store kept, if it was judged invalid)
    Judged(id, verdict, reason, missing)  the answer to a Validate: VALID, INVALID (the
                                    validity function refused it) or MISSING (some held blob
                                    was not the commit's bytes: dropped, fetch it again)
    BlobLost(sha256)                a held blob was found damaged or gone (when served or
                                    folded) and dropped: fetch it again from the holders
    Timer()                         the time asked for by the last SetTimer has come
    MergeDone(item, digest)         the shell folded the order named ``item`` into ``digest``

Actions (frozen dataclasses)::

    Send(peer, data)                one message to one peer
    Broadcast(data)                 the same message to every connected peer (not a flood)
    FetchBlob(peer, sha256, size, kind)  pull a blob over the request/response stream; answer
                                    with BlobReceived (the shell times out slow peers itself or
                                    lets the core's deadline do it)
    StoreRecord(id, data)           persist a record that is valid and complete (``id`` is the
                                    content id: sha256 of ``data``)
    Validate(id, commit)            judge a commit whose blobs are all held, with the one
                                    validity function (node.validate); answer with Judged
    StoreInvalid(id, data, reason)  keep a commit judged invalid, as evidence
    Merge(order)                    fold ``order.commits`` and answer MergeDone(order.head, ...)
    SetTimer(at)                    deliver Timer() at or after ``at``; replaces any earlier one
    Disconnect(peer, reason)        the peer broke the protocol; close it
    Rebase(commit_id, parent)       an own commit is an orphan: re-search it against ``parent``
                                    (the tip) and answer with LocalRecord of a commit that
                                    ``supersedes`` it
    Rejected(record_id, reason)     a local record was refused (invalid or a stale rebase)

Rules:

- The replicated state is a grow-only set of signed records; the **set** is the content ids
  (sha256 of the bytes) of the records held *complete*: valid, and every blob verified.
  Records whose blobs are missing, or that wait for their verdict, are *pending*: they are
  not in the set root, not relayed and not in the order. The order is ``node.order`` over
  the complete commits and the roster.
- A commit with every blob held is judged whole (``Validate``) before it counts. One judged
  invalid is invalid on every node alike (the validity function is pure): it is kept as
  evidence, counted against its author, never relayed, never merged, and its id is never
  fetched or judged again. The peer that sent it is not blamed: it holds what its author
  signed, and a valid member signed it.
- A record is relayed (``recs``) once, when it becomes complete, to every peer not known to
  hold it. Whoever sends us a record holds it complete, so it is a holder of its blobs.
- Each blob is fetched once, from one holder at a time, with at most
  ``max_fetches_per_peer`` fetches in flight to any one peer (the rest wait in a queue, oldest
  first). On failure or after the deadline the next holder is tried (after a deadline with no
  other holder, the same one again; after a refusal, reset or truncation with no other holder,
  the same ones after ``fetch_retry``); every sync interval failed holders are tried again.
  Only bytes proven wrong (CORRUPT) blame the peer: refusals, resets, truncation and timeouts
  are UNAVAILABLE.
- Anti-entropy (``node.summary``) on connect and every ``sync_interval``: a summary to every
  peer; a peer whose root differs answers with its ids in the differing buckets; we push what
  it lacks. The summary carries the composite digest: ``convergence()`` reads them back.
- Garbage from a peer (a malformed message, a record that does not verify, bytes that do not
  hash to the blob asked for) is counted, remembered in ``errors`` and answered with
  ``Disconnect``; it never raises out of ``handle``. Records by keys the roster has never
  named are ignored without blame (a roster update we do not hold yet may name them), so
  anti-entropy brings them back.
- A peer whose key the roster never named (a *stranger*) gets only what a joining member
  needs, per ``Config.strangers``: ``"read"`` (default) answers its summaries and id lists,
  so it can pull records, but nothing it sends is decoded as a record, fetched or counted
  towards convergence; ``"none"`` ignores it entirely; ``"trust"`` treats every peer as a
  member (the simulator, whose peer names are not peer ids). Per-peer state is bounded by
  our own: a peer's ``has`` set only keeps ids we hold.
- While commits restored from the store are being judged again, no ``Merge`` is asked and no
  rebase is scheduled: the order of a half-restored set is transient.
- Own orphans are rebased after ``rebase_delay`` scaled by a jitter taken from the commit id
  (so concurrent orphans do not re-collide), once per commit; a local commit that supersedes a
  commit that is no longer an orphan, or does not extend the tip, is refused as stale.
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
from node import messages
from node.events import (
    Action,
    BlobLost,
    BlobReceived,
    BlobResult,
    Broadcast,
    Config,
    Convergence,
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
)
from node.messages import Ids, MalformedMessage, Records, Summary
from node.order import Entry, Order, OrderBook, root_item
from node.summary import IdSet
from node.summary import Summary as SetSummary


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
    "PeerConnected",
    "PeerDisconnected",
    "MessageReceived",
    "BlobResult",
    "BlobReceived",
    "BlobLost",
    "LocalRecord",
    "Timer",
    "MergeDone",
    "Judged",
    "Verdict",
    "Event",
    "Send",
    "Broadcast",
    "FetchBlob",
    "StoreRecord",
    "Validate",
    "StoreInvalid",
    "Merge",
    "SetTimer",
    "Disconnect",
    "Rebase",
    "Rejected",
    "Action",
    "Config",
    "PeerReport",
    "Convergence",
    "Statistics",
]


_DEFAULT_MAX_BLOB = 512 * 1024 * 1024


def _spec_limit(genesis: Genesis) -> int:
    limits = genesis.spec.get("merge", {}).get("limits", {})
    value = limits.get("max_blob_bytes", _DEFAULT_MAX_BLOB) if isinstance(limits, dict) else None
    return value if isinstance(value, int) else _DEFAULT_MAX_BLOB


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Core:
    """The replication state of one node and every decision about it (see the module doc)."""

    def __init__(
        self,
        genesis: Genesis,
        *,
        me: PublicKey | None = None,
        config: Config | None = None,
        blobs: Iterable[bytes] = (),
        decode_message: Callable[[bytes], messages.Message] = messages.decode,
        decode: Callable[[bytes], Record] | None = None,
    ) -> None:
        self.genesis = genesis
        self.network = genesis.network_id
        self.config = config or Config()
        self._me = me.raw if me is not None else None
        self._max_blob = self.config.max_blob_bytes or _spec_limit(genesis)
        self._base = genesis.spec.get("base")
        # Decoding is a pure function of the bytes: the simulator shares a memo across nodes.
        self._decode_message = decode_message
        self._decode = decode or partial(decode_record, network=self.network)
        self._held: dict[bytes, _Held] = {}
        self._set = IdSet()
        self._rejected: set[bytes] = set()
        self._judging: set[bytes] = set()
        self._restoring: set[bytes] = set()  # restored commits still being judged again
        self._local: set[bytes] = set()  # local records not yet stored or rejected
        self._invalid: dict[bytes, tuple[bytes, str]] = {}  # id -> (author key, reason)
        self._blobs: set[bytes] = set(blobs)
        self._waiting: dict[bytes, list[bytes]] = {}
        self._blob_meta: dict[bytes, tuple[int, str]] = {}
        self._holders: dict[bytes, dict[str, None]] = {}
        self._tried: dict[bytes, set[str]] = {}
        self._fetching: dict[bytes, tuple[str, float]] = {}
        self._load: dict[str, int] = {}  # fetches in flight per peer (<= max_fetches_per_peer)
        self._queued: dict[bytes, None] = {}  # blobs whose holders are all busy, oldest first
        self._retry: dict[bytes, float] = {}  # blobs whose only holder refused: ask again at
        self._backoff: dict[bytes, float] = {}  # ... after this long (doubles to sync_interval)
        self._peers: dict[str, _Peer] = {}
        self._known_keys = {m.key.raw for m in genesis.members}
        self._member_peers = {PublicKey(k).peer_id() for k in self._known_keys}
        # Records by keys the roster never named, already decoded once: not again (bounded;
        # forgotten when the roster changes, since an update may name their key).
        self._unknown: dict[bytes, None] = {}
        self._roster_inputs: dict[bytes, RosterUpdate | Revocation] = {}
        self._roster = Roster.from_genesis(genesis)
        self._genesis_members: frozenset[bytes] | None = frozenset(self._known_keys)
        self._commits: dict[bytes, tuple[Entry, Commit]] = {}
        self._root = root_item(self.network)
        self._book = OrderBook(self._root)
        self._merged = self._book.order  # the last order handed to the shell to fold
        self._digest: tuple[bytes, str] | None = None
        self._rebase_due: dict[bytes, float] = {}
        self._rebase_asked: dict[bytes, float] = {}
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
        return self._roster

    def roster_records(self) -> list[RosterUpdate | Revocation]:
        """The roster updates and revocations held (signatures combined)."""
        return list(self._roster_inputs.values())

    def invalid(self) -> dict[bytes, tuple[bytes, str]]:
        """Commits judged invalid: id -> (author's public key, reason)."""
        return dict(self._invalid)

    def records(self) -> Iterator[bytes]:
        """The bytes of every complete record, by content id."""
        return (self._held[cid].data for cid in self._set)

    def pending_blobs(self) -> dict[bytes, tuple[int, str]]:
        """Blobs that pending records wait for: sha256 -> (size, kind)."""
        return {sha: self._blob_meta[sha] for sha in self._waiting}

    def peers(self) -> dict[str, PeerReport | None]:
        return {peer: p.report for peer, p in self._peers.items()}

    def convergence(self) -> Convergence:
        reports = [p.report for p in self._peers.values() if p.report is not None]
        same_set = [r for r in reports if r.root == self.root]
        digest = self.digest
        same = [r for r in same_set if digest is not None and r.digest == digest]
        return Convergence(len(self._peers), len(reports), len(same_set), len(same))

    def statistics(self) -> Statistics:
        return Statistics(
            complete=len(self._set),
            pending=len(self._held) - len(self._set),
            validating=len(self._judging),
            invalid=len(self._invalid),
            rejected=len(self._rejected),
            ignored=self._counts["ignored"],
            duplicates=self._counts["duplicates"],
            garbage=self._counts["garbage"],
            strangers=self._counts["strangers"],
            blobs=len(self._blobs),
            fetching=len(self._fetching),
            queued=len(self._queued),
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
        for sha in [s for s, (p, _) in self._fetching.items() if p == peer]:
            self._end_fetch(sha)
            self._fetch(sha)
        self._pump()

    def _garbage(self, peer: str, reason: str) -> None:
        self._counts["garbage"] += 1
        self._errors.append((self._now, peer, reason))
        if peer in self._peers:
            self._out.append(Disconnect(peer, reason))
            self._drop_peer(peer)

    def is_member(self, peer: str) -> bool:
        """Whether ``peer`` is the node of a key the roster has ever named."""
        return self.config.strangers == "trust" or peer in self._member_peers

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
        if held is not None or cid in self._rejected or cid in self._invalid or (
            cid in self._unknown
        ):
            self._counts["duplicates"] += 1
            if held is not None and held.missing and peer is not None:
                self._add_holder(held, peer)
            return
        try:
            record = self._decode(data)
        except CryptoError as exc:
            self._refuse(cid, peer, f"record does not verify: {exc}", blame=True)
            return
        if invalid is not None and isinstance(record, Commit):  # judged before a restart
            self._invalid[cid] = (record.author.raw, invalid)
            return
        problem, blame = self._check(record, local=peer is None and not restored)
        if problem:
            self._refuse(cid, peer, problem, blame=blame)
            return
        if peer is None and not restored:
            self._local.add(cid)
        self._admit(cid, data, record, peer, blobs_held=blobs_held)
        if restored and cid in self._judging:
            self._restoring.add(cid)

    def _check(self, record: Record, *, local: bool) -> tuple[str, bool]:
        """Why ``record`` is not taken ('' if it is), and whether the sender is to blame."""
        if isinstance(record, Genesis):
            return "a genesis is not replicated", False
        if isinstance(record, Commit):
            return self._check_commit(record, local=local)
        if not {k.raw for k in record.signers()} & self._known_keys:
            return "no signer the roster has ever named", False
        return "", False

    def _check_commit(self, commit: Commit, *, local: bool) -> tuple[str, bool]:
        if commit.author.raw not in self._known_keys:
            return "author the roster has never named", False
        if self._base is not None and commit.base != self._base:
            return "commit is for another base model", True
        if any(ref.size > self._max_blob for ref in commit.blobs.values()):
            return f"a blob exceeds the limit of {self._max_blob} bytes", True
        own = local and commit.author.raw == self._me
        if own and commit.supersedes is not None and not self._fresh_rebase(commit):
            return "stale rebase: its target is no longer an orphan or the tip moved", False
        return "", False

    def _fresh_rebase(self, commit: Commit) -> bool:
        order, target = self._book.order, commit.supersedes
        assert target is not None
        self._rebase_asked.pop(target, None)  # answered
        orphan = target in order.orphans
        if orphan and commit.parent != order.tip:
            self._schedule_rebase(target)  # the tip moved while the author searched: again
        return orphan and commit.parent == order.tip

    def _refuse(self, cid: bytes, peer: str | None, reason: str, *, blame: bool) -> None:
        if peer is None:
            self._local.discard(cid)
            self._out.append(Rejected(cid, reason))
        elif blame:
            self._rejected.add(cid)
            self._garbage(peer, reason)
        else:
            self._counts["ignored"] += 1
            self._unknown[cid] = None
            if len(self._unknown) > self.config.unknown_kept:
                del self._unknown[next(iter(self._unknown))]

    def _admit(
        self, cid: bytes, data: bytes, record: Record, peer: str | None, *, blobs_held: bool
    ) -> None:
        missing: set[bytes] = set()
        if isinstance(record, Commit):
            for kind, ref in record.blobs.items():
                self._blob_meta.setdefault(ref.sha256, (ref.size, kind))
                missing.add(ref.sha256)
            if peer is None and blobs_held:
                self._blobs |= missing
            missing -= self._blobs
        held = _Held(record, data, missing)
        self._held[cid] = held
        if not missing:
            self._judge(cid, held)
            return
        for sha in sorted(missing):
            self._waiting.setdefault(sha, []).append(cid)
        if peer is not None:
            self._add_holder(held, peer)

    def _add_holder(self, held: _Held, peer: str) -> None:
        for sha in sorted(held.missing):
            self._holders.setdefault(sha, {})[peer] = None
            self._fetch(sha)

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
            self._blobs.discard(sha)
            held.missing.add(sha)
            waiting = self._waiting.setdefault(sha, [])
            if cid not in waiting:
                waiting.append(cid)
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

    def _may_author(self, commit: Commit) -> bool:
        if self._genesis_members is not None:  # no roster change yet: membership is all
            return commit.author.raw in self._genesis_members
        return self._roster.may_author(commit.author, commit.seq)

    def _count_commit(self, entry: Entry, commit: Commit) -> None:
        if not self._may_author(commit):
            return
        self._book.add(entry)
        roster = self._roster
        # is_revoked re-encodes the commit for its id: ask only when anything is revoked.
        if (roster.revoked_by_quorum or roster.revoked_by_key) and roster.is_revoked(commit):
            self._book.set_revoked(self._book.revoked | {entry.id})

    def _roster_changed(self, record: RosterUpdate | Revocation) -> None:
        previous = self._roster_inputs.get(record.id)
        combined: Any = record if previous is None else previous.combined(record)
        self._roster_inputs[record.id] = combined
        if isinstance(record, RosterUpdate):
            for key in (record.key, record.new_key):
                if key is not None:
                    self._known_keys.add(key.raw)
                    self._member_peers.add(key.peer_id())
            self._unknown.clear()  # records by the keys it names may now count
        self._roster = Roster.from_records(self.genesis, self._roster_inputs.values())
        self._genesis_members = None
        allowed = [(e, c) for e, c in self._commits.values() if self._may_author(c)]
        revoked = frozenset(e.id for e, c in allowed if self._roster.is_revoked(c))
        self._book = OrderBook(self._root, {e.id: e for e, _ in allowed}, revoked)

    # --- blobs ---

    def _fetch(self, sha: bytes) -> None:
        """Start fetching ``sha`` from a holder with a free slot; with every holder busy it
        waits in the queue (a peer serves a bounded number of streams: asking for more only
        gets them reset, which must never look like the peer's fault)."""
        if sha in self._fetching or sha not in self._waiting:
            return
        tried = self._tried.get(sha, set())
        limit = self.config.max_fetches_per_peer
        busy = False
        for peer in self._holders.get(sha, {}):
            if peer not in self._peers or peer in tried:
                continue
            if self._load.get(peer, 0) >= limit:
                busy = True
                continue
            size, kind = self._blob_meta[sha]
            deadline = self._now + self.config.fetch_timeout + size / self.config.fetch_rate
            self._fetching[sha] = (peer, deadline)
            self._load[peer] = self._load.get(peer, 0) + 1
            self._queued.pop(sha, None)
            self._wake(deadline)
            self._out.append(FetchBlob(peer, sha, size, kind))
            return
        if busy:
            self._queued[sha] = None

    def _end_fetch(self, sha: bytes) -> str:
        """The fetch of ``sha`` is over (answered, timed out, peer gone): free its slot."""
        peer, _ = self._fetching.pop(sha)
        load = self._load.get(peer, 0) - 1
        if load > 0:
            self._load[peer] = load
        else:
            self._load.pop(peer, None)
        return peer

    def _pump(self) -> None:
        """Start queued fetches while slots are free (oldest first)."""
        limit = self.config.max_fetches_per_peer
        for sha in list(self._queued):
            if all(self._load.get(peer, 0) >= limit for peer in self._peers):
                return
            del self._queued[sha]  # _fetch queues it again if its holders are still busy
            self._fetch(sha)

    def _on_blob(self, peer: str, sha: bytes, result: BlobResult) -> None:
        current = self._fetching.get(sha)
        if current is not None and current[0] == peer:
            self._end_fetch(sha)
        elif result is not BlobResult.VERIFIED or sha not in self._waiting:
            return  # a late answer to a fetch we gave up on
        if result is BlobResult.VERIFIED:
            self._blob_verified(sha)
        else:
            self._tried.setdefault(sha, set()).add(peer)
            if result is BlobResult.CORRUPT:  # bytes proven wrong: the only fault we blame
                self._garbage(peer, f"served corrupt bytes for blob {sha.hex()[:12]}")
            self._fetch(sha)
            if sha not in self._fetching and sha not in self._queued:
                # Refused, reset or cut short, and no other holder is free: ask the same
                # ones again soon (a busy or restarting peer is not a bad one), backing off.
                delay = self._backoff.get(sha, self.config.fetch_retry)
                self._backoff[sha] = min(2 * delay, self.config.sync_interval)
                self._retry[sha] = self._now + delay
                self._wake(self._retry[sha])
        self._pump()

    def _blob_verified(self, sha: bytes) -> None:
        self._blobs.add(sha)
        self._holders.pop(sha, None)
        self._tried.pop(sha, None)
        self._retry.pop(sha, None)
        self._backoff.pop(sha, None)
        self._queued.pop(sha, None)
        for cid in self._waiting.pop(sha, []):
            held = self._held[cid]
            held.missing.discard(sha)
            if not held.missing:
                self._judge(cid, held)

    def _on_blob_lost(self, sha: bytes) -> None:
        """A blob of complete records is gone from the store: they stay complete (they were
        judged valid, and validity does not depend on our disk), and the blob is fetched
        again from the peers that hold them."""
        if sha not in self._blobs:
            return
        self._blobs.discard(sha)
        users = [  # content ids, as peers' ``has`` sets hold them
            cid
            for cid, held in self._held.items()
            if isinstance(held.record, Commit)
            and any(ref.sha256 == sha for ref in held.record.blobs.values())
        ]
        if not users:
            return
        self._waiting.setdefault(sha, [])
        holders = self._holders.setdefault(sha, {})
        for peer, p in self._peers.items():
            if any(cid in p.has for cid in users):
                holders[peer] = None
        self._fetch(sha)

    # --- time ---

    def _on_timer(self) -> None:
        now = self._now
        self._timer_at = None  # fired: the next SetTimer must be sent even for the same time
        if self._next_sync is not None and now >= self._next_sync:
            self._next_sync = now + self.config.sync_interval
            self._sync()
        for sha in [s for s, (_, deadline) in self._fetching.items() if deadline <= now]:
            peer = self._end_fetch(sha)
            self._tried.setdefault(sha, set()).add(peer)
            self._fetch(sha)
            if sha not in self._fetching:  # no other holder: a lost transfer is retried
                self._tried[sha].discard(peer)  # now (a timeout bounds the rate)
                self._fetch(sha)
        for sha in [s for s, at in self._retry.items() if at <= now]:
            del self._retry[sha]
            self._tried.pop(sha, None)
            self._fetch(sha)
        self._pump()
        for cid in [c for c, at in self._rebase_due.items() if at <= now]:
            del self._rebase_due[cid]
            self._rebase(cid)
        for cid in [c for c, at in self._rebase_asked.items() if at <= now]:
            del self._rebase_asked[cid]  # never answered: schedule again
            self._schedule_rebase(cid)
        self._rearm()

    def _sync(self) -> None:
        if self._peers:
            self._out.append(Broadcast(self._summary_bytes()))
        self._tried.clear()  # a holder that failed once (loss, restart) gets another chance
        for sha in list(self._waiting):
            self._fetch(sha)

    def _after(self) -> None:
        if self._restoring:
            # Restored commits are judged again in no particular order: until all are, the
            # order is a transient one (own commits would look orphaned and be rebased).
            return
        order = self._book.order
        if order is not self._merged and order.head != self._merged.head:
            self._merged = order
            self._out.append(Merge(order))
            for cid in order.orphans:
                self._schedule_rebase(cid)

    def _schedule_rebase(self, cid: bytes) -> None:
        entry = self._commits[cid][0]
        if entry.author != self._me or cid in self._rebase_due or cid in self._rebase_asked:
            return
        jitter = int.from_bytes(cid[:2], "big") / 65536
        self._rebase_due[cid] = self._now + self.config.rebase_delay * (1 + jitter)
        self._wake(self._rebase_due[cid])

    def _rebase(self, cid: bytes) -> None:
        order = self._book.order
        if cid in order.orphans:
            self._rebase_asked[cid] = self._now + self.config.rebase_retry
            self._wake(self._rebase_asked[cid])
            self._out.append(Rebase(cid, order.tip))

    def _wake(self, at: float) -> None:
        """Make sure a Timer comes by ``at``. The timer only ever moves earlier between two
        firings (a deadline that went away just costs one idle Timer), so adding a deadline
        is O(1) and nothing is recomputed per event."""
        if self._timer_at is None or at < self._timer_at:
            self._timer_at = at
            self._out.append(SetTimer(at))

    def _rearm(self) -> None:
        times = [t for t in (self._next_sync,) if t is not None]
        times += [deadline for _, deadline in self._fetching.values()]
        times += self._retry.values()
        times += self._rebase_due.values()
        times += self._rebase_asked.values()
        if times:
            self._wake(min(times))
