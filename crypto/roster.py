"""The network roster as a pure function of the record set.

Rules (every node computes the same roster from the same records, in any arrival order):

- Epoch 0 is the genesis: its members and threshold.
- Roster updates name the epoch they create. At epoch ``e`` the candidates are the updates for
  ``e`` co-signed by at least ``threshold`` members of epoch ``e-1``; the one with the lowest id
  is applied. Epochs are applied in order and stop at the first epoch without a candidate.
- A removed or rotated-out key keeps the commits it made up to ``keep_through_seq``.
- Co-signatures combine: roster updates and revocations with one id (one body) count with the
  union of their signatures, however many copies of them the set holds.
- A key revocation (``subject``, ``from_seq``) counts when signed by that key or by the
  threshold of the final roster's members; commits of that key from ``from_seq`` on are invalid.
- A commit revocation counts when signed by the commit's author (its id binds the author), or
  by at least the threshold of the final roster's members, whoever they are. Signatures by
  keys that are not members never count towards the threshold.
- Equivocation: one author, one sequence number, two different commits. Both are excluded and
  the author is flagged; arrival order never picks a winner.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from crypto.errors import RemovedMember, RevokedKey, ThresholdNotMet, UnknownSigner
from crypto.identity import PublicKey
from crypto.records import Commit, Genesis, Member, Record, Revocation, RosterUpdate


@dataclass
class Roster:
    network: bytes
    members: dict[PublicKey, Member]
    threshold: int
    epoch: int = 0
    # Former keys: commits up to and including this seq stay valid.
    retired: dict[PublicKey, int] = field(default_factory=dict)
    # Revoked keys: commits from this seq on are invalid.
    revoked_from: dict[PublicKey, int] = field(default_factory=dict)
    # Commit revocations: ids revoked by the threshold; and for every commit id a revocation
    # names, the keys that signed it (it counts if the commit's author is among them).
    revoked_by_quorum: set[bytes] = field(default_factory=set)
    revoked_by_key: dict[bytes, set[PublicKey]] = field(default_factory=dict)

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> Roster:
        return cls(genesis.network_id, {m.key: m for m in genesis.members}, genesis.threshold)

    @classmethod
    def from_records(cls, genesis: Genesis, records: Iterable[Record]) -> Roster:
        roster = cls.from_genesis(genesis)
        inputs = combine_signatures(r for r in records if isinstance(r, RosterUpdate | Revocation))
        roster._apply_updates([r for r in inputs if isinstance(r, RosterUpdate)])
        roster._apply_revocations([r for r in inputs if isinstance(r, Revocation)])
        return roster

    # -- queries -------------------------------------------------------------------------

    def check_author(self, key: PublicKey, seq: int) -> None:
        """Raise why ``key`` may not author commit number ``seq``; return if it may."""
        if key in self.revoked_from and seq >= self.revoked_from[key]:
            raise RevokedKey(f"key {key.hex()[:12]} is revoked from seq {self.revoked_from[key]}")
        if key in self.members:
            return
        if key in self.retired:
            if seq <= self.retired[key]:
                return
            raise RemovedMember(
                f"key {key.hex()[:12]} left the roster after seq {self.retired[key]}"
            )
        raise UnknownSigner(f"key {key.hex()[:12]} is not a member of this network")

    def may_author(self, key: PublicKey, seq: int) -> bool:
        try:
            self.check_author(key, seq)
        except (RevokedKey, RemovedMember, UnknownSigner):
            return False
        return True

    def is_revoked(self, commit: Commit) -> bool:
        if commit.id in self.revoked_by_quorum:
            return True
        return commit.author in self.revoked_by_key.get(commit.id, set())

    def check_commit(self, commit: Commit) -> None:
        self.check_author(commit.author, commit.seq)
        if self.is_revoked(commit):
            raise RevokedKey(f"commit {commit.id.hex()[:12]} was revoked")

    def quorum(self, signers: Iterable[PublicKey]) -> bool:
        return len(set(signers) & self.members.keys()) >= self.threshold

    def member_signers(self, record: RosterUpdate | Revocation) -> frozenset[PublicKey]:
        """The signers of ``record`` that count towards the threshold: members only."""
        return record.signers() & self.members.keys()

    def revocation_counts(self, rev: Revocation, *, author: PublicKey | None = None) -> bool:
        """Whether ``rev``'s signatures make it count under this roster: the threshold of
        members, or the revoked key itself, or (for a commit revocation) the commit's
        ``author``, when the caller knows who that is."""
        if self.quorum(rev.signers()):
            return True
        owner = rev.subject if rev.commit is None else author
        return owner is not None and owner in rev.signers()

    def check_quorum(self, record: RosterUpdate | Revocation) -> None:
        have = len(self.member_signers(record))
        if have < self.threshold:
            raise ThresholdNotMet(
                f"{record.KIND} {record.id.hex()[:12]}: "
                f"{have} of {self.threshold} member signatures"
            )

    # -- building ------------------------------------------------------------------------

    def _apply_updates(self, updates: list[RosterUpdate]) -> None:
        by_epoch: dict[int, list[RosterUpdate]] = defaultdict(list)
        for update in updates:
            if update.network == self.network:
                by_epoch[update.epoch].append(update)
        while True:
            candidates = [u for u in by_epoch.get(self.epoch + 1, []) if self.quorum(u.signers())]
            if not candidates:
                return
            self._apply(min(candidates, key=lambda u: u.id))

    def _apply(self, update: RosterUpdate) -> None:
        self.epoch = update.epoch
        if update.op == "add":
            self.members[update.key] = Member(update.name, update.key)
            self.retired.pop(update.key, None)
        elif update.op == "remove" and update.key in self.members:
            del self.members[update.key]
            self.retired[update.key] = update.keep_through_seq
        elif update.op == "rotate" and update.key in self.members and update.new_key:
            name = self.members.pop(update.key).name
            self.retired[update.key] = update.keep_through_seq
            self.members[update.new_key] = Member(name, update.new_key)
        elif update.op == "threshold":
            self.threshold = update.threshold
        # A threshold above the membership would freeze the roster forever.
        self.threshold = max(1, min(self.threshold, len(self.members)))

    def _apply_revocations(self, revocations: list[Revocation]) -> None:
        for rev in revocations:
            if rev.network != self.network:
                continue
            signers = rev.signers()
            if rev.commit is not None:
                # Who the author is, only the commit says (its id binds it): is_revoked asks.
                self.revoked_by_key.setdefault(rev.commit, set()).update(signers)
                if self.quorum(signers):
                    self.revoked_by_quorum.add(rev.commit)
            elif rev.subject is not None and rev.from_seq is not None:
                if rev.subject in signers or self.quorum(signers):
                    previous = self.revoked_from.get(rev.subject, rev.from_seq)
                    self.revoked_from[rev.subject] = min(previous, rev.from_seq)


def combine_signatures(
    records: Iterable[RosterUpdate | Revocation],
) -> list[RosterUpdate | Revocation]:
    """One record per id, carrying the union of the signatures of every copy (in id order)."""
    by_id: dict[bytes, RosterUpdate | Revocation] = {}
    for record in records:
        previous = by_id.get(record.id)
        by_id[record.id] = record if previous is None else previous.combined(record)
    return [by_id[i] for i in sorted(by_id)]


def find_equivocations(commits: Iterable[Commit]) -> tuple[set[PublicKey], set[bytes]]:
    """Authors who signed two different commits with one sequence number, and those commits."""
    seen: dict[tuple[PublicKey, int], set[bytes]] = defaultdict(set)
    for commit in commits:
        seen[(commit.author, commit.seq)].add(commit.id)
    authors: set[PublicKey] = set()
    excluded: set[bytes] = set()
    for (author, _seq), ids in seen.items():
        if len(ids) > 1:
            authors.add(author)
            excluded |= ids
    return authors, excluded
