"""The roster is a pure function of the record set: order of arrival never matters."""

from __future__ import annotations

import itertools

import pytest

from crypto.errors import RemovedMember, RevokedKey, ThresholdNotMet, UnknownSigner
from crypto.identity import Identity
from crypto.records import Genesis, Member, Record, Revocation, RosterUpdate
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
    revocation = Revocation.of_commit(genesis.network_id, commit.id)
    own = revocation.signed_by(alice)
    assert Roster.from_records(genesis, [own]).is_revoked(commit)
    # Bob alone (below the threshold of 2) cannot revoke alice's commit...
    by_bob = revocation.signed_by(bob)
    assert not Roster.from_records(genesis, [by_bob]).is_revoked(commit)
    # ...but alice and bob together (the threshold) can revoke anyone's.
    quorum = by_bob.signed_by(alice)
    assert Roster.from_records(genesis, [quorum]).is_revoked(commit)


@pytest.fixture
def three(alice: Identity, bob: Identity, carol: Identity) -> Genesis:
    """alice, bob and carol; any two of them are the threshold."""
    return Genesis(
        name="three",
        members=tuple(
            Member(n, i.public) for n, i in (("alice", alice), ("bob", bob), ("carol", carol))
        ),
        threshold=2,
        spec={"mode": "stack", "base": "ab" * 32},
        nonce="three",
    )


def test_the_authors_own_revocation_counts_alone(carol: Identity, three: Genesis) -> None:
    commit = make_commit(carol, three)
    own = Revocation.of_commit(three.network_id, commit.id).signed_by(carol)
    roster = Roster.from_records(three, [own])
    assert roster.is_revoked(commit)
    assert commit.id not in roster.revoked_by_quorum  # it counts as the author's, not a quorum
    assert roster.revocation_counts(own, author=carol.public)
    assert not roster.revocation_counts(own)  # without knowing the author: one member of 2


def test_one_member_other_than_the_author_is_below_the_threshold(
    alice: Identity, bob: Identity, carol: Identity, three: Genesis
) -> None:
    commit = make_commit(carol, three)
    alone = Revocation.of_commit(three.network_id, commit.id).signed_by(alice)
    roster = Roster.from_records(three, [alone])
    assert not roster.is_revoked(commit)
    roster.check_commit(commit)  # does not raise
    assert not roster.revocation_counts(alone, author=carol.public)
    with pytest.raises(ThresholdNotMet, match="1 of 2"):
        roster.check_quorum(alone)
    # A revocation of carol's commit by bob does not touch her other commits either.
    other = make_commit(carol, three, seq=1)
    both = alone.signed_by(bob)
    roster = Roster.from_records(three, [both])
    assert roster.is_revoked(commit)
    assert not roster.is_revoked(other)


def test_members_revoking_independently_make_one_record_that_combines(
    alice: Identity, bob: Identity, carol: Identity, three: Genesis
) -> None:
    commit = make_commit(carol, three)
    revocation = Revocation.of_commit(three.network_id, commit.id, "leaked patient data")
    by_alice, by_bob = revocation.signed_by(alice), revocation.signed_by(bob)
    assert by_alice.id == by_bob.id
    both = by_alice.combined(by_bob)
    assert both.signers() == {alice.public, bob.public}
    roster = Roster.from_records(three, [both])
    assert roster.is_revoked(commit)
    assert commit.id in roster.revoked_by_quorum
    assert roster.revocation_counts(both)
    # The set may hold the copies separately: they combine there too, in any order.
    for records in itertools.permutations([by_alice, by_bob]):
        assert Roster.from_records(three, records).is_revoked(commit)
    assert not Roster.from_records(three, [by_alice, by_alice]).is_revoked(commit)


def test_a_non_members_signature_does_not_count(
    alice: Identity, carol: Identity, mallory: Identity, three: Genesis
) -> None:
    commit = make_commit(carol, three)
    revocation = Revocation.of_commit(three.network_id, commit.id)
    forged = revocation.signed_by(alice).signed_by(mallory)
    roster = Roster.from_records(three, [forged])
    assert not roster.is_revoked(commit)
    assert roster.member_signers(forged) == {alice.public}
    # Nor does a revocation made for another network.
    elsewhere = Revocation.of_commit(b"\7" * 32, commit.id).signed_by(carol)
    assert not Roster.from_records(three, [elsewhere]).is_revoked(commit)


def test_a_removed_authors_own_revocation_still_counts(
    alice: Identity, bob: Identity, carol: Identity, three: Genesis
) -> None:
    commit = make_commit(carol, three)
    removal = _update(three, 1, "remove", carol, alice, bob, keep_through_seq=5)
    own = Revocation.of_commit(three.network_id, commit.id).signed_by(carol)
    roster = Roster.from_records(three, [removal, own])
    assert carol.public not in roster.members
    assert roster.is_revoked(commit)


def test_key_revocation_from_seq(alice: Identity, genesis: Genesis) -> None:
    rev = Revocation.of_key(genesis.network_id, alice.public, 5).signed_by(alice)
    roster = Roster.from_records(genesis, [rev])
    roster.check_author(alice.public, 4)
    with pytest.raises(RevokedKey):
        roster.check_author(alice.public, 5)


def test_key_revocation_by_the_threshold_of_others(
    alice: Identity, bob: Identity, carol: Identity, three: Genesis
) -> None:
    rev = Revocation.of_key(three.network_id, carol.public, 3, "stolen laptop")
    by_alice = rev.signed_by(alice)
    assert Roster.from_records(three, [by_alice]).may_author(carol.public, 7)  # below
    assert not Roster.from_records(three, [by_alice]).revocation_counts(by_alice)
    roster = Roster.from_records(three, [by_alice, rev.signed_by(bob)])
    assert roster.may_author(carol.public, 2)
    assert not roster.may_author(carol.public, 3)
    # The earliest from_seq that counts wins, whatever the arrival order.
    earlier = Revocation.of_key(three.network_id, carol.public, 1).signed_by(carol)
    for records in itertools.permutations([by_alice.signed_by(bob), earlier]):
        assert Roster.from_records(three, records).revoked_from == {carol.public: 1}


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
