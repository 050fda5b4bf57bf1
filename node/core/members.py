"""Who the roster names, as the replication core asks it: every key it has *ever* named, and the
roster in force. ``node.core.protocol.Core`` owns one ``Membership`` and hands it every roster
update and revocation it holds complete.

Rules:

- A key is *named* once the genesis or a roster update held names it (as ``key`` or
  ``new_key``); it stays named when removed or revoked, since the commits it signed before
  still count. The core ignores records that no named key signed, and treats the nodes of
  named keys as members among its peers (everyone else is a stranger).
- Who may author which sequence number, and which commits are revoked, is the roster in force
  (``crypto.roster.Roster`` over the genesis and every roster record held, copies of one
  record combined by signature union). Until the first roster record arrives, every genesis
  member may author anything and nothing is revoked, so no roster is consulted per commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from crypto.identity import PublicKey
from crypto.records import Commit, Genesis, Revocation, RosterUpdate
from crypto.roster import Roster


class Membership:
    """The roster in force and the keys ever named (see the module doc)."""

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self.roster = Roster.from_genesis(genesis)
        self._named = {m.key.raw for m in genesis.members}
        self._member_peers = {PublicKey(k).peer_id() for k in self._named}
        self._records: dict[bytes, RosterUpdate | Revocation] = {}
        # The genesis members while no roster record is held: membership is all there is.
        self._genesis_only: frozenset[bytes] | None = frozenset(self._named)

    def named(self, key: PublicKey) -> bool:
        return key.raw in self._named

    def names_any(self, keys: Iterable[PublicKey]) -> bool:
        return any(key.raw in self._named for key in keys)

    def is_member_peer(self, peer: str) -> bool:
        """Whether ``peer`` is the node (peer id) of a named key."""
        return peer in self._member_peers

    def may_author(self, commit: Commit) -> bool:
        if self._genesis_only is not None:
            return commit.author.raw in self._genesis_only
        return self.roster.may_author(commit.author, commit.seq)

    def is_revoked(self, commit: Commit) -> bool:
        return self._genesis_only is None and self.roster.is_revoked(commit)

    def records(self) -> list[RosterUpdate | Revocation]:
        """The roster updates and revocations held (signatures combined)."""
        return list(self._records.values())

    def add(self, record: RosterUpdate | Revocation) -> bool:
        """Take a roster record in (another copy of one held adds its signatures). True for
        a roster update: it may name keys, so records by them may count now."""
        previous = self._records.get(record.id)
        combined: Any = record if previous is None else previous.combined(record)
        self._records[record.id] = combined
        if isinstance(record, RosterUpdate):
            for key in (record.key, record.new_key):
                if key is not None:
                    self._named.add(key.raw)
                    self._member_peers.add(key.peer_id())
        self.roster = Roster.from_records(self.genesis, self._records.values())
        self._genesis_only = None
        return isinstance(record, RosterUpdate)
