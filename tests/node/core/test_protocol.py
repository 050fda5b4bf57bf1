"""The replication core driven by hand and by Hypothesis-chosen schedules: cores joined by a fake
network whose deliveries (order, duplication, loss-free partitions that heal) the test picks."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import canonical
from crypto.identity import Identity
from crypto.records import BLOB_KINDS, BlobRef, Commit, Genesis, Member, Record, decode_record
from node.core import messages
from node.core.order import Entry, forge_order, root_item
from node.core.protocol import (
    Action,
    BlobLost,
    BlobReceived,
    BlobResult,
    Broadcast,
    Core,
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
    Rebase,
    Rejected,
    Send,
    SetTimer,
    StoreInvalid,
    StoreRecord,
    Timer,
    Validate,
    Verdict,
)

ALICE, BOB, CAROL, MALLORY = (Identity.from_seed(bytes([n]) * 32) for n in (1, 2, 3, 66))
GENESIS = Genesis(
    name="net",
    members=tuple(
        Member(n, i.public) for n, i in (("alice", ALICE), ("bob", BOB), ("carol", CAROL))
    ),
    threshold=1,
    spec={"mode": "fusion", "base": "ab" * 32},
    nonce="test",
)
ROOT = root_item(GENESIS.network_id)
# Peer names here ("p0", ...) are not peer ids: every peer is trusted as a member.
CONFIG = CoreConfig(sync_interval=10.0, fetch_timeout=5.0, rebase_delay=1.0, strangers="trust")


def blob(label: str, size: int = 100) -> BlobRef:
    return BlobRef(hashlib.sha256(label.encode()).digest(), size)


def commit(author: Identity, seq: int, parent: bytes = ROOT, **kw: object) -> Commit:
    fields: dict[str, object] = dict(
        network=GENESIS.network_id,
        seq=seq,
        task=f"t{seq}",
        classes=("a", "b"),
        base="ab" * 32,
        blobs={
            k: blob(f"{author.public.hex()}/{seq}/{k}/{kw.get('task', '')}") for k in BLOB_KINDS
        },
        parent=parent,
        coeffs=(1.0, 0.5),
        objective={},
    )
    fields.update(kw)
    return Commit.create(author, **fields)


@dataclass
class Node:
    name: str
    core: Core
    identity: Identity | None
    blobs: set[bytes] = field(default_factory=set)
    disconnected: list[tuple[str, str]] = field(default_factory=list)
    digest: str | None = None
    timer: float | None = None
    seq: int = 100


class Net:
    """Cores on a fake network: `pool` holds deliveries until the test picks one."""

    def __init__(self, identities: list[Identity | None]) -> None:
        self.now = 0.0
        self.nodes = {
            f"p{k}": Node(f"p{k}", Core(GENESIS, me=i.public if i else None, config=CONFIG), i)
            for k, i in enumerate(identities)
        }
        self.links: set[frozenset[str]] = set()
        self.pool: list[tuple[str, str, Event]] = []  # (to, from, event)
        self.invalid: set[bytes] = set()
        self.withhold: set[str] = set()
        self.actions: list[tuple[str, Action]] = []

    def handle(self, name: str, event: Event) -> None:
        node = self.nodes[name]
        for action in node.core.handle(event, self.now):
            self.actions.append((name, action))
            self._do(node, action)

    def _do(self, node: Node, action: Action) -> None:
        if isinstance(action, Send):
            self.pool.append((action.peer, node.name, MessageReceived(node.name, action.data)))
        elif isinstance(action, Broadcast):
            for peer in self.peers(node.name):
                self.pool.append((peer, node.name, MessageReceived(node.name, action.data)))
        elif isinstance(action, FetchBlob):
            self._serve(node, action)
        elif isinstance(action, Merge):
            node.digest = action.order.head.hex()  # the fold is a function of the order
            self.handle(node.name, MergeDone(action.order.head, node.digest))
        elif isinstance(action, SetTimer):
            node.timer = action.at
        elif isinstance(action, Disconnect):
            node.disconnected.append((action.peer, action.reason))
            self.unlink(node.name, action.peer)
        elif isinstance(action, Rebase):
            self.rebase(node, action)
        elif isinstance(action, Validate):  # the validity function: a blob marked invalid
            bad = {ref.sha256 for ref in action.commit.blobs.values()} & self.invalid
            verdict = (
                Judged(action.record_id, Verdict.INVALID, "bad blob")
                if bad
                else Judged(action.record_id, Verdict.VALID)
            )
            self.handle(node.name, verdict)

    def _serve(self, node: Node, action: FetchBlob) -> None:
        holder = self.nodes[action.peer]
        if action.peer in self.withhold:
            return
        if action.sha256 not in holder.blobs:
            result = BlobResult.UNAVAILABLE
        else:
            result = BlobResult.VERIFIED
            node.blobs.add(action.sha256)
        self.pool.append((node.name, action.peer, BlobReceived(action.peer, action.sha256, result)))

    def rebase(self, node: Node, action: Rebase) -> None:
        assert node.identity is not None
        old = node.core.commit(action.commit_id)
        assert old is not None
        new = commit(
            node.identity,
            node.seq,
            action.parent,
            supersedes=action.commit_id,
            blobs=old.blobs,
            task=old.task,
        )
        node.seq += 1
        self.handle(node.name, LocalRecord(new.encode()))

    def publish(self, name: str, c: Commit) -> None:
        self.nodes[name].blobs.update(ref.sha256 for ref in c.blobs.values())
        self.handle(name, LocalRecord(c.encode()))

    def peers(self, name: str) -> list[str]:
        return sorted(p for link in self.links if name in link for p in link if p != name)

    def link(self, a: str, b: str) -> None:
        if frozenset((a, b)) not in self.links:
            self.links.add(frozenset((a, b)))
            self.handle(a, PeerConnected(b))
            self.handle(b, PeerConnected(a))

    def unlink(self, a: str, b: str) -> None:
        if frozenset((a, b)) in self.links:
            self.links.discard(frozenset((a, b)))
            self.pool = [d for d in self.pool if {d[0], d[1]} != {a, b}]
            self.handle(a, PeerDisconnected(b))
            self.handle(b, PeerDisconnected(a))

    def deliver(self, index: int, *, keep: bool = False) -> None:
        to, sender, event = self.pool[index] if keep else self.pool.pop(index)
        if frozenset((to, sender)) in self.links:
            self.handle(to, event)

    def drain(self) -> None:
        while self.pool:
            self.deliver(0)

    def settle(self, rounds: int = 12) -> None:
        """Deliver everything, then let timers (anti-entropy, deadlines, rebases) run."""
        for _ in range(rounds):
            self.drain()
            self.now += CONFIG.sync_interval
            for name, node in self.nodes.items():
                if node.timer is not None and node.timer <= self.now:
                    node.timer = None
                    self.handle(name, Timer())
        self.drain()

    def sent(self, kind: type) -> list[tuple[str, Action]]:
        return [(n, a) for n, a in self.actions if isinstance(a, kind)]


def pair() -> Net:
    net = Net([ALICE, BOB])
    net.link("p0", "p1")
    net.drain()
    return net


# --- by hand -----------------------------------------------------------------------------


def test_a_commit_reaches_the_peer_with_its_blobs_pulled_once() -> None:
    net = pair()
    c = commit(ALICE, 0)
    net.publish("p0", c)
    net.drain()
    alice, bob = net.nodes["p0"].core, net.nodes["p1"].core
    assert bob.order.commits == (c.id,)
    assert bob.root == alice.root
    assert bob.digest == alice.digest == bob.order.head.hex()
    fetched = [a.sha256 for n, a in net.sent(FetchBlob) if n == "p1"]
    assert sorted(fetched) == sorted(ref.sha256 for ref in c.blobs.values())
    assert any(isinstance(a, StoreRecord) for n, a in net.actions if n == "p1")


def test_a_pending_record_does_not_count_until_its_blobs_are_verified() -> None:
    net = pair()
    c = commit(ALICE, 0)
    net.publish("p0", c)
    while not net.sent(FetchBlob):
        net.deliver(0)
    bob = net.nodes["p1"].core
    assert bob.order.commits == ()
    assert len(bob.pending_blobs()) == 3
    assert bob.statistics().pending == 1
    net.drain()
    assert bob.order.commits == (c.id,)
    assert bob.pending_blobs() == {}


def test_a_blob_announced_by_many_is_fetched_from_one() -> None:
    net = Net([ALICE, None, None, None])
    for peer in ("p1", "p2", "p3"):
        net.link("p0", peer)
        net.link(peer, "p3") if peer != "p3" else None
    c = commit(ALICE, 0)
    net.publish("p0", c)
    net.settle()
    for name in ("p1", "p2", "p3"):
        fetched = [a.sha256 for n, a in net.sent(FetchBlob) if n == name]
        assert len(fetched) == len(set(fetched)) == 3
        assert net.nodes[name].core.order.commits == (c.id,)


def test_garbage_is_counted_and_answered_with_disconnect() -> None:
    net = pair()
    for data in (b"", b"\xff\x00garbage", messages.encode(messages.Records((b"junk",)))):
        net.link("p0", "p1")
        net.handle("p1", MessageReceived("p0", data))
        assert net.nodes["p1"].disconnected[-1][0] == "p0"
    stats = net.nodes["p1"].core.statistics()
    assert stats.garbage == 3
    assert len(net.nodes["p1"].core.errors) == 3


def test_a_forged_signature_disconnects_and_changes_nothing() -> None:
    net = pair()
    real = commit(ALICE, 0)
    from dataclasses import replace

    from crypto.records import Signature

    forged = replace(real, sigs=(Signature(ALICE.public, MALLORY.sign(real.signing_bytes())),))
    before = net.nodes["p1"].core.order
    net.handle("p1", MessageReceived("p0", messages.encode(messages.Records((forged.encode(),)))))
    assert net.nodes["p1"].disconnected
    assert net.nodes["p1"].core.order == before


def test_an_unknown_author_is_ignored_without_blame() -> None:
    net = pair()
    outsider = commit(MALLORY, 0)
    net.handle("p1", MessageReceived("p0", messages.encode(messages.Records((outsider.encode(),)))))
    assert not net.nodes["p1"].disconnected
    assert net.nodes["p1"].core.statistics().ignored == 1


def test_an_invalid_commit_is_refused_for_good_without_blaming_the_sender() -> None:
    net = Net([ALICE, BOB, CAROL])
    net.link("p0", "p1")
    net.link("p1", "p2")
    net.drain()
    c = commit(ALICE, 0)
    net.invalid.add(c.blobs["adapter_model"].sha256)
    # Alice's own node refuses to publish it ...
    net.publish("p0", c)
    assert any(isinstance(a, Rejected) for n, a in net.actions if n == "p0")
    assert net.nodes["p0"].core.statistics().complete == 0
    # ... so a hostile alice pushes it to bob directly, and serves its blobs.
    net.pool.append(
        ("p1", "p0", MessageReceived("p0", messages.encode(messages.Records((c.encode(),)))))
    )
    net.settle()
    bob = net.nodes["p1"]
    assert bob.core.order.commits == ()
    assert bob.core.invalid() == {
        hashlib.sha256(c.encode()).digest(): (ALICE.public.raw, "bad blob")
    }
    assert [a for n, a in net.actions if n == "p1" and isinstance(a, StoreInvalid)]
    assert not bob.disconnected  # alice's bytes are what alice signed: no peer is blamed
    assert net.nodes["p2"].core.statistics().pending == 0  # never relayed to carol
    fetches = len(net.sent(FetchBlob))
    # The same record again (a replay, anti-entropy) is known: not fetched, not judged again.
    net.pool.append(
        ("p1", "p0", MessageReceived("p0", messages.encode(messages.Records((c.encode(),)))))
    )
    net.settle()
    assert len(net.sent(FetchBlob)) == fetches
    assert len(net.sent(Validate)) == 2  # alice's own check, and bob's once


def test_a_restored_invalid_commit_stays_invalid_and_is_not_fetched() -> None:
    c = commit(ALICE, 0)
    core = Core(GENESIS, me=BOB.public, config=CONFIG)
    actions = core.handle(LocalRecord(c.encode(), restored=True, invalid="NonFiniteError"), 0.0)
    assert not [a for a in actions if isinstance(a, FetchBlob | Validate | StoreRecord)]
    assert core.statistics().invalid == 1
    assert core.statistics().complete == core.statistics().pending == 0


def test_blobs_found_damaged_when_judged_are_fetched_again() -> None:
    net = pair()
    c = commit(ALICE, 0)
    net.publish("p0", c)
    net.drain()
    bob = net.nodes["p1"]
    assert bob.core.order.commits == (c.id,)
    # Bob restarts with a store whose adapter blob rotted: judged MISSING, fetched again.
    core = Core(GENESIS, me=BOB.public, config=CONFIG, blobs=bob.blobs)
    bob.core = core
    cid = hashlib.sha256(c.encode()).digest()
    actions = core.handle(LocalRecord(c.encode(), blobs_held=False, restored=True), net.now)
    assert [a for a in actions if isinstance(a, Validate)]
    sha = c.blobs["adapter_model"].sha256
    core.handle(Judged(cid, Verdict.MISSING, missing=(sha,)), net.now)
    assert sha in core.pending_blobs()
    net.unlink("p0", "p1")
    net.link("p0", "p1")
    net.settle()
    assert core.order.commits == (c.id,)
    assert core.root == net.nodes["p0"].core.root


def test_a_withholding_peer_times_out_and_another_holder_serves() -> None:
    net = Net([ALICE, None, None])
    net.link("p0", "p1")
    net.link("p0", "p2")
    net.link("p1", "p2")
    net.withhold.add("p1")
    c = commit(ALICE, 0)
    net.publish("p0", c)
    net.settle()
    for name in ("p1", "p2"):
        assert net.nodes[name].core.order.commits == (c.id,)


def test_a_node_offline_for_long_catches_up_in_one_exchange() -> None:
    net = Net([ALICE, BOB])
    history = []
    parent = ROOT
    for seq in range(40):
        c = commit(ALICE, seq, parent)
        net.publish("p0", c)
        parent = Entry.of(c).item
        history.append(c)
    net.actions.clear()
    net.nodes["p1"].blobs.update(net.nodes["p0"].blobs)  # blobs are not the point here
    net.link("p0", "p1")
    net.drain()
    bob = net.nodes["p1"].core
    assert bob.root == net.nodes["p0"].core.root
    assert bob.order.commits == tuple(c.id for c in history)
    sends = [a for n, a in net.sent(Send) if n == "p0"]
    assert len(sends) <= 3  # summary, then one batch of records


def test_peers_report_convergence_through_summaries() -> None:
    net = pair()
    net.publish("p0", commit(ALICE, 0))
    net.settle(rounds=2)
    for name in ("p0", "p1"):
        conv = net.nodes[name].core.convergence()
        assert (conv.peers, conv.same_set, conv.same_composite) == (1, 1, 1)


def test_concurrent_commits_orphan_one_and_its_author_rebases() -> None:
    net = Net([ALICE, BOB])
    a, b = commit(ALICE, 0), commit(BOB, 0)
    net.publish("p0", a)
    net.publish("p1", b)
    net.link("p0", "p1")
    net.settle()
    loser = max(a, b, key=lambda c: c.id)
    rebases = net.sent(Rebase)
    assert [r.commit_id for _, r in rebases] == [loser.id]
    alice, bob = net.nodes["p0"].core, net.nodes["p1"].core
    assert alice.order == bob.order
    assert alice.order.orphans == ()
    assert loser.id in alice.order.superseded
    assert len(alice.order.commits) == 2


def test_a_stale_rebase_is_refused() -> None:
    net = Net([ALICE])
    a = commit(ALICE, 0)
    net.publish("p0", a)
    stale = commit(ALICE, 1, ROOT, supersedes=a.id, task="again")  # a is on the main chain
    net.publish("p0", stale)
    refused = net.sent(Rejected)
    assert refused
    assert "stale" in refused[-1][1].reason
    assert net.nodes["p0"].core.order.commits == (a.id,)


def test_order_equals_the_pure_function_of_the_records() -> None:
    net = Net([ALICE, BOB, CAROL])
    net.link("p0", "p1")
    net.link("p1", "p2")
    for k, (name, who) in enumerate((("p0", ALICE), ("p1", BOB), ("p2", CAROL))):
        net.publish(name, commit(who, k))
    net.settle()
    core = net.nodes["p2"].core
    from crypto.records import decode_record

    records = [decode_record(r) for r in core.records()]
    assert core.order == forge_order(GENESIS, records)


# --- any schedule ------------------------------------------------------------------------

AUTHORS = [("p0", ALICE), ("p1", BOB), ("p2", CAROL)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 10**6)), min_size=1, max_size=120))
def test_every_schedule_converges_to_one_set_and_one_composite(
    steps: list[tuple[int, int]],
) -> None:
    """Steps: 0-5 deliver a pending event (6: and keep a duplicate), 7 publish, 8 toggle a
    partition, 9 let time pass. Then the partition heals and everything settles."""
    net = Net([ALICE, BOB, CAROL, None, None])
    for a, b in (("p0", "p3"), ("p1", "p3"), ("p2", "p4"), ("p3", "p4"), ("p0", "p1")):
        net.link(a, b)
    seqs = {name: 0 for name, _ in AUTHORS}
    split = False
    for op, arg in steps:
        if op <= 6 and net.pool:
            net.deliver(arg % len(net.pool), keep=op == 6)
        elif op == 7:
            name, who = AUTHORS[arg % 3]
            net.publish(name, commit(who, seqs[name], net.nodes[name].core.tip))
            seqs[name] += 1
        elif op == 8:
            split = not split
            (net.unlink if split else net.link)("p3", "p4")
        elif op == 9:
            net.settle(rounds=1)
    net.link("p3", "p4")
    net.settle(rounds=20)
    cores = [n.core for n in net.nodes.values()]
    assert len({c.root for c in cores}) == 1
    assert len({c.order for c in cores}) == 1
    assert len({c.digest for c in cores}) == 1
    assert cores[0].order.orphans == ()
    assert not any(n.disconnected for n in net.nodes.values())


def _containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    # A named function: hypothesis reads a lambda's source to see that it recurses, and a
    # lambda split over lines can read as one that does not (a deprecation warning = error).
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.binary(max_size=40)
    | st.text(max_size=10),
    _containers,
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=300)
    | cbor_values.map(canonical.encode)
    | st.sampled_from(["sum", "ids", "recs"]).flatmap(
        lambda t: st.dictionaries(
            st.sampled_from(["root", "n", "bits", "fp", "head", "digest", "b", "ids", "recs"]),
            cbor_values,
            max_size=6,
        ).map(lambda d: canonical.encode({**d, "t": t, "v": 1}))
    )
)
def test_garbage_never_raises_out_of_the_core(data: bytes) -> None:
    core = Core(GENESIS, config=CONFIG)
    core.handle(PeerConnected("mallory"), 0.0)
    actions = core.handle(MessageReceived("mallory", data), 1.0)
    try:
        messages.decode(data)
    except messages.MalformedMessage:
        assert Disconnect("mallory", core.errors[-1][2]) in actions
    assert core.order.commits == ()


def test_records_messages_are_canonical_cbor() -> None:
    for recs in [(b"x",), (b"a" * 30, b"b" * 300, b"c" * 70000)]:
        data = messages.encode(messages.Records(recs))
        assert data == canonical.encode({"t": "recs", "v": 1, "recs": list(recs)})
        assert messages.decode(data) == messages.Records(recs)


def test_roster_updates_and_revocations_reorder_from_the_set() -> None:
    from crypto.records import Revocation, RosterUpdate, decode_record

    dave = Identity.from_seed(bytes([4]) * 32)
    net = pair()
    late = commit(dave, 0)
    net.publish("p0", late)  # nobody has named dave yet: refused locally, ignored remotely
    assert net.nodes["p0"].core.commit(late.id) is None
    add = RosterUpdate(
        network=GENESIS.network_id, epoch=1, op="add", name="dave", key=dave.public
    ).signed_by(ALICE)
    net.handle("p0", LocalRecord(add.encode()))
    net.publish("p0", late)
    a = commit(ALICE, 0, Entry.of(late).item)
    net.publish("p0", a)
    net.drain()
    bob = net.nodes["p1"].core
    assert bob.order.commits == (late.id, a.id)
    revoke = Revocation.of_commit(GENESIS.network_id, late.id)
    net.handle("p0", LocalRecord(revoke.signed_by(dave).encode()))
    net.drain()
    assert bob.order.excluded == {late.id}
    assert bob.order.commits == (a.id,)
    records = [decode_record(r) for r in bob.records()]
    assert bob.order == forge_order(GENESIS, records)


def test_catching_up_from_one_peer_keeps_a_few_fetches_in_flight_and_blames_nobody() -> None:
    net = Net([ALICE, BOB])
    parent = ROOT
    for seq in range(40):
        c = commit(ALICE, seq, parent)
        net.publish("p0", c)
        parent = Entry.of(c).item
    net.link("p0", "p1")
    bob = net.nodes["p1"]
    peak = 0
    while net.pool:  # deliver one at a time, watching bob's fetches to alice
        net.deliver(0)
        stats = bob.core.statistics()
        assert stats.fetching <= CONFIG.max_fetches_per_peer
        peak = max(peak, stats.fetching)
    assert peak == CONFIG.max_fetches_per_peer  # the queue was used, and filled the slots
    assert len(bob.core.order.commits) == 40
    assert not bob.disconnected


def test_a_refused_fetch_from_the_only_holder_is_retried_without_blame() -> None:
    net = pair()
    c = commit(ALICE, 0)
    net.publish("p0", c)
    sha = c.blobs["adapter_model"].sha256
    alice_blobs = set(net.nodes["p0"].blobs)
    net.nodes["p0"].blobs.discard(sha)  # alice (busy, restarting) refuses it once
    net.drain()
    bob = net.nodes["p1"]
    assert sha in bob.core.pending_blobs()
    net.nodes["p0"].blobs = alice_blobs
    net.now += CONFIG.fetch_retry  # well before the next sync round
    assert bob.timer is not None
    assert bob.timer <= net.now
    net.handle("p1", Timer())
    net.drain()
    assert bob.core.order.commits == (c.id,)
    assert not bob.disconnected


def _records_message(*cs: Commit) -> bytes:
    return messages.encode(messages.Records(tuple(c.encode() for c in cs)))


def _summary_of_an_empty_node() -> Send:
    out = Core(GENESIS, config=CoreConfig()).handle(PeerConnected("x"), 0.0)
    return next(a for a in out if isinstance(a, Send))


def test_a_stranger_can_pull_but_nothing_it_sends_counts() -> None:
    alice = Core(GENESIS, me=ALICE.public, config=CoreConfig(sync_interval=10.0))
    stranger = MALLORY.public.peer_id()  # a key the roster never named
    c = commit(ALICE, 0)
    alice.handle(LocalRecord(c.encode()), 0.0)
    alice.handle(Judged(hashlib.sha256(c.encode()).digest(), Verdict.VALID), 0.0)
    assert alice.statistics().complete == 1
    # It sends records (by a member, even) and a flood of ids: none is taken or remembered.
    forged = commit(BOB, 0)
    out = alice.handle(MessageReceived(stranger, _records_message(forged)), 1.0)
    assert not [a for a in out if isinstance(a, FetchBlob | Validate)]
    flood = messages.encode(messages.Ids(4, (), tuple(os.urandom(32) for _ in range(500))))
    alice.handle(MessageReceived(stranger, flood), 1.0)
    assert alice.statistics().strangers == 1
    assert alice.statistics().pending == 0
    assert alice.convergence().reporting == 0
    # But what a joining member needs, it gets: our ids for its (empty) summary, then the
    # records it says it lacks.
    empty = _summary_of_an_empty_node()
    answer = alice.handle(MessageReceived(stranger, empty.data), 2.0)
    ids = [a for a in answer if isinstance(a, Send)]
    assert ids
    wants = messages.decode(ids[0].data)
    assert isinstance(wants, messages.Ids)
    ask = messages.encode(messages.Ids(wants.bits, wants.buckets, ()))
    pushed = [a for a in alice.handle(MessageReceived(stranger, ask), 3.0) if isinstance(a, Send)]
    records = messages.decode(pushed[0].data)
    assert isinstance(records, messages.Records)
    assert records.records == (c.encode(),)


def test_strangers_none_gets_no_answer_at_all() -> None:
    alice = Core(GENESIS, me=ALICE.public, config=CoreConfig(strangers="none"))
    empty = _summary_of_an_empty_node()
    out = alice.handle(MessageReceived(MALLORY.public.peer_id(), empty.data), 0.0)
    assert not [a for a in out if isinstance(a, Send)]
    assert alice.statistics().strangers == 1


def test_a_record_by_an_unknown_key_is_decoded_once() -> None:
    decoded: list[bytes] = []

    def decode(data: bytes) -> Record:
        decoded.append(data)
        return decode_record(data, network=GENESIS.network_id)

    bob = Core(GENESIS, me=BOB.public, config=CONFIG, decode=decode)
    unknown = commit(MALLORY, 0)
    for _ in range(20):
        bob.handle(MessageReceived(ALICE.public.peer_id(), _records_message(unknown)), 0.0)
    assert decoded == [unknown.encode()]
    assert bob.statistics().ignored == 1


def test_a_restore_judged_out_of_order_asks_no_merge_and_no_rebase_until_done() -> None:
    chain, parent = [], ROOT
    for seq in range(10):
        c = commit(ALICE, seq, parent)
        chain.append(c)
        parent = Entry.of(c).item
    blobs = [ref.sha256 for c in chain for ref in c.blobs.values()]
    alice = Core(GENESIS, me=ALICE.public, config=CONFIG, blobs=blobs)
    actions: list[Action] = []
    for c in chain:
        actions += alice.handle(LocalRecord(c.encode(), blobs_held=False, restored=True), 0.0)
    judged = list(reversed(chain))  # the newest first: every other one looks orphaned
    for k, c in enumerate(judged):
        cid = hashlib.sha256(c.encode()).digest()
        actions += alice.handle(Judged(cid, Verdict.VALID), 10.0 * k)  # timers pass too
        actions += alice.handle(Timer(), 10.0 * k + 5)
        if k < len(judged) - 1:
            assert not [a for a in actions if isinstance(a, Merge | Rebase)]
    merges = [a for a in actions if isinstance(a, Merge)]
    assert len(merges) == 1
    assert merges[0].order.commits == tuple(c.id for c in chain)
    assert not [a for a in actions if isinstance(a, Rebase)]


def test_a_lost_blob_of_a_complete_commit_is_fetched_again() -> None:
    net = pair()
    c = commit(ALICE, 0)
    net.publish("p0", c)
    net.drain()
    bob = net.nodes["p1"]
    root = bob.core.root
    sha = c.blobs["adapter_model"].sha256
    bob.blobs.discard(sha)  # bob's shell found its copy rotten when serving it, and dropped it
    net.handle("p1", BlobLost(sha))
    assert sha in bob.core.pending_blobs()
    assert bob.core.root == root  # the commit stays complete and in the order meanwhile
    assert bob.core.order.commits == (c.id,)
    net.drain()
    assert sha in bob.blobs
    assert not bob.core.pending_blobs()


def test_refused_fetches_back_off() -> None:
    net = pair()
    c = commit(ALICE, 0)
    net.publish("p0", c)
    sha = c.blobs["adapter_model"].sha256
    net.nodes["p0"].blobs.discard(sha)  # alice keeps refusing
    net.drain()
    bob = net.nodes["p1"]

    def asks() -> int:
        return sum(1 for n, a in net.sent(FetchBlob) if n == "p1" and a.sha256 == sha)

    asked = []
    while net.now < 60:
        assert bob.timer is not None
        before = asks()
        net.now = bob.timer
        net.handle("p1", Timer())
        net.drain()
        if asks() > before:
            asked.append(net.now)
    gaps = [b - a for a, b in zip(asked, asked[1:], strict=False)]
    assert len(asked) < 20  # not once a second
    assert max(gaps) >= 2 * min(gaps)
    assert not bob.disconnected
