"""The roster is a pure function of the record set: order of arrival never matters."""

from __future__ import annotations

import itertools

import pytest

from crypto.errors import RemovedMember, RevokedKey, ThresholdNotMet, UnknownSigner
from crypto.identity import Identity
from crypto.records import Genesis, Record, Revocation, RosterUpdate
from crypto.roster import Roster, find_equivocations
from tests.crypto.conftest import make_commit


def _update(
    genesis: Genesis, epoch: int, op: str, who: Identity, *signers: Identity, **kw: object
) -> RosterUpdate:
    update = RosterUpdate(genesis.network_id, epoch, op, "member", who.public, **kw)  # type: ignore[arg-type]
    for signer in signers:
        update = update.signed_by(signer)
    return update


def test_genesis_members_may_author(alice: Identity, mallory: Identity, genesis: Genesis) -> None:
    roster = Roster.from_records(genesis, [])
    roster.check_author(alice.public, 0)
    with pytest.raises(UnknownSigner):
        roster.check_author(mallory.public, 0)


def test_add_needs_the_threshold(
    alice: Identity, bob: Identity, carol: Identity, genesis: Genesis
) -> None:
    half = _update(genesis, 1, "add", carol, alice)
    assert not Roster.from_records(genesis, [half]).may_author(carol.public, 0)
    with pytest.raises(ThresholdNotMet):
        Roster.from_genesis(genesis).check_quorum(half)
    # Bob signs independently; the union of the two copies reaches the threshold.
    full = half.combined(_update(genesis, 1, "add", carol, bob))
    roster = Roster.from_records(genesis, [full])
    assert roster.may_author(carol.public, 0)
    assert roster.epoch == 1


def test_mallory_cannot_add_herself(alice: Identity, mallory: Identity, genesis: Genesis) -> None:
    forged = _update(genesis, 1, "add", mallory, mallory, alice)
    # Mallory's own signature does not count: she is not a member of epoch 0.
    assert not Roster.from_records(genesis, [forged]).may_author(mallory.public, 0)


def test_remove_keeps_history_through_seq(alice: Identity, bob: Identity, genesis: Genesis) -> None:
    removal = _update(genesis, 1, "remove", bob, alice, bob, keep_through_seq=3)
    roster = Roster.from_records(genesis, [removal])
    roster.check_author(bob.public, 3)
    with pytest.raises(RemovedMember):
        roster.check_author(bob.public, 4)


def test_rotate_moves_membership_to_the_new_key(
    alice: Identity, bob: Identity, carol: Identity, genesis: Genesis
) -> None:
    rotation = _update(
        genesis, 1, "rotate", bob, alice, bob, new_key=carol.public, keep_through_seq=0
    )
    roster = Roster.from_records(genesis, [rotation])
    assert roster.members[carol.public].name == "bob"
    assert roster.may_author(bob.public, 0)
    assert not roster.may_author(bob.public, 1)


def test_epochs_apply_in_order_whatever_the_arrival_order(
    alice: Identity, bob: Identity, carol: Identity, mallory: Identity, genesis: Genesis
) -> None:
    add_carol = _update(genesis, 1, "add", carol, alice, bob)
    # Epoch 2 is signed by alice and carol: valid only once carol is in (epoch 1).
    drop_bob = _update(genesis, 2, "remove", bob, alice, carol, keep_through_seq=-1)
    rival = _update(genesis, 1, "add", mallory, alice)  # below threshold: never counts
    records: list[Record] = [add_carol, drop_bob, rival]
    results = {
        frozenset(Roster.from_records(genesis, order).members)
        for order in itertools.permutations(records)
    }
    assert results == {frozenset({alice.public, carol.public})}


def test_commit_revocation_by_author_and_by_quorum(
    alice: Identity, bob: Identity, genesis: Genesis
) -> None:
    commit = make_commit(alice, genesis)
    own = Revocation(genesis.network_id, alice.public, commit=commit.id).signed_by(alice)
    assert Roster.from_records(genesis, [own]).is_revoked(commit)
    # Bob alone cannot revoke alice's commit by claiming to be its author...
    fake = Revocation(genesis.network_id, bob.public, commit=commit.id).signed_by(bob)
    assert not Roster.from_records(genesis, [fake]).is_revoked(commit)
    # ...but alice and bob together (the threshold) can revoke anyone's.
    quorum = fake.signed_by(alice)
    assert Roster.from_records(genesis, [quorum]).is_revoked(commit)


def test_key_revocation_from_seq(alice: Identity, genesis: Genesis) -> None:
    rev = Revocation(genesis.network_id, alice.public, from_seq=5).signed_by(alice)
    roster = Roster.from_records(genesis, [rev])
    roster.check_author(alice.public, 4)
    with pytest.raises(RevokedKey):
        roster.check_author(alice.public, 5)


def test_equivocation_excludes_both_commits(
    alice: Identity, bob: Identity, genesis: Genesis
) -> None:
    one = make_commit(alice, genesis, seq=7, task="breast")
    two = make_commit(alice, genesis, seq=7, task="lung")
    fine = make_commit(bob, genesis, seq=7)
    for order in itertools.permutations([one, two, fine]):
        authors, excluded = find_equivocations(order)
        assert authors == {alice.public}
        assert excluded == {one.id, two.id}
