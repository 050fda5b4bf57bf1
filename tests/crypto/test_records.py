"""Signed records: round trips, and every kind of tampering named by a typed error."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto import canonical
from crypto.errors import (
    BadSignature,
    CryptoError,
    SchemaError,
    UnknownSchemaVersion,
    WrongNetwork,
)
from crypto.identity import Identity
from crypto.records import DOMAIN, VERSIONS, Commit, Genesis, Revocation, decode_record
from tests.crypto.conftest import make_commit


def test_commit_round_trip(alice: Identity, genesis: Genesis) -> None:
    commit = make_commit(alice, genesis)
    decoded = decode_record(commit.encode(), network=genesis.network_id)
    assert decoded == commit
    assert decoded.id == commit.id
    assert decoded.encode() == commit.encode()


def test_genesis_id_is_the_network_id(genesis: Genesis) -> None:
    decoded = decode_record(genesis.encode())
    assert isinstance(decoded, Genesis)
    assert decoded.network_id == genesis.network_id == canonical.sha256(genesis.signing_bytes())


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_flipping_any_byte_is_caught(
    alice: Identity, genesis: Genesis, data: st.DataObject
) -> None:
    encoded = make_commit(alice, genesis).encode()
    index = data.draw(st.integers(0, len(encoded) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(encoded)
    tampered[index] ^= 1 << bit
    with pytest.raises(CryptoError):
        decode_record(bytes(tampered), network=genesis.network_id)


def test_signature_by_someone_else_is_refused(
    alice: Identity, mallory: Identity, genesis: Genesis
) -> None:
    commit = make_commit(alice, genesis)
    forged = replace(commit, sigs=()).signed_by(mallory)
    with pytest.raises(BadSignature, match="signed by its author"):
        decode_record(forged.encode())


def test_a_signature_from_another_network_is_refused(alice: Identity, genesis: Genesis) -> None:
    other = replace(genesis, nonce="another network")
    commit = make_commit(alice, other)
    with pytest.raises(WrongNetwork):
        decode_record(commit.encode(), network=genesis.network_id)


def test_unsigned_commit_is_refused(alice: Identity, genesis: Genesis) -> None:
    unsigned = replace(make_commit(alice, genesis), sigs=())
    with pytest.raises(BadSignature, match="not signed"):
        decode_record(unsigned.encode())


def _reencode(record: Commit, **envelope: object) -> bytes:
    raw = canonical.decode(record.encode())
    raw.update(envelope)
    return canonical.encode(raw)


def test_unknown_schema_version(alice: Identity, genesis: Genesis) -> None:
    with pytest.raises(UnknownSchemaVersion):
        decode_record(_reencode(make_commit(alice, genesis), v=3))  # 1 and 2 are commit versions


def test_unknown_fields_and_kinds(alice: Identity, genesis: Genesis) -> None:
    commit = make_commit(alice, genesis)
    body = commit.body() | {"extra": 1}
    with pytest.raises(SchemaError, match="unknown"):
        decode_record(_reencode(commit, body=body))
    with pytest.raises(SchemaError, match="unknown record kind"):
        decode_record(_reencode(commit, kind="pull-request"))


@pytest.mark.parametrize(
    "overrides",
    [
        {"classes": ()},
        {"classes": ("a", "a")},
        {"coeffs": (1.0,)},
        {"coeffs": (1.0, float("nan"))},
        {"task": ""},
        {"blobs": {}},
    ],
)
def test_malformed_commits_are_refused_at_creation(
    alice: Identity, genesis: Genesis, overrides: dict[str, object]
) -> None:
    with pytest.raises(CryptoError):
        make_commit(alice, genesis, **overrides)


def test_oversized_record_is_refused(alice: Identity, genesis: Genesis) -> None:
    big = make_commit(alice, genesis, classes=tuple(f"class {i:04d}" for i in range(4000)))
    with pytest.raises(CryptoError, match="exceeds"):
        decode_record(big.encode(), max_size=4096)


def test_cosignatures_combine_and_keep_the_id(
    alice: Identity, bob: Identity, genesis: Genesis
) -> None:
    from crypto.records import RosterUpdate

    carol_key = Identity.from_seed(b"\3" * 32).public
    update = RosterUpdate(genesis.network_id, 1, "add", "carol", carol_key)
    by_alice, by_bob = update.signed_by(alice), update.signed_by(bob)
    both = by_alice.combined(by_bob)
    assert by_alice.id == by_bob.id == both.id
    assert both.signers() == {alice.public, bob.public}
    assert decode_record(both.encode()) == both


# --- revocations (schema version 2): the body names what is revoked, never who revokes -----


def _revocation(genesis: Genesis) -> Revocation:
    return Revocation.of_commit(genesis.network_id, b"\x5c" * 32, "unsafe on pediatric scans")


def test_a_revocation_signed_by_two_members_is_one_record(
    alice: Identity, bob: Identity, genesis: Genesis
) -> None:
    by_alice = _revocation(genesis).signed_by(alice)
    by_bob = _revocation(genesis).signed_by(bob)
    assert by_alice.body() == by_bob.body()
    assert alice.public.raw not in canonical.encode(by_alice.body())
    assert by_alice.id == by_bob.id
    assert by_alice.signing_bytes() == by_bob.signing_bytes()
    both = by_alice.combined(by_bob)
    assert both.id == by_alice.id
    assert both.signers() == {alice.public, bob.public}
    decoded = decode_record(both.encode(), network=genesis.network_id)
    assert decoded == both
    assert decoded.signers() == both.signers()
    assert decoded.encode() == both.encode()
    # Signing again is idempotent; the order of combining does not matter.
    assert both.signed_by(alice).encode() == both.encode()
    assert by_bob.combined(by_alice).encode() == both.encode()


def test_key_revocations_round_trip_and_combine(
    alice: Identity, bob: Identity, carol: Identity, genesis: Genesis
) -> None:
    rev = Revocation.of_key(genesis.network_id, carol.public, 4, "key on a stolen laptop")
    both = rev.signed_by(alice).combined(rev.signed_by(bob))
    decoded = decode_record(both.encode())
    assert isinstance(decoded, Revocation)
    assert (decoded.subject, decoded.from_seq, decoded.commit) == (carol.public, 4, None)
    assert decoded.signers() == {alice.public, bob.public}


def test_different_revocations_do_not_combine(
    alice: Identity, bob: Identity, genesis: Genesis
) -> None:
    one = Revocation.of_commit(genesis.network_id, b"\1" * 32).signed_by(alice)
    two = Revocation.of_commit(genesis.network_id, b"\2" * 32).signed_by(bob)
    other_reason = Revocation.of_commit(genesis.network_id, b"\1" * 32, "why").signed_by(bob)
    for other in (two, other_reason):
        with pytest.raises(SchemaError, match="cannot combine"):
            one.combined(other)


def test_a_revocation_is_schema_version_2_and_signs_its_version(
    alice: Identity, genesis: Genesis
) -> None:
    rev = _revocation(genesis).signed_by(alice)
    assert canonical.decode(rev.encode())["v"] == VERSIONS["revocation"] == 2
    assert canonical.decode(rev.signing_bytes())["v"] == 2
    # Version 1 kinds sign what they always signed: their ids (network ids) do not move.
    assert set(canonical.decode(genesis.signing_bytes())) == {"domain", "kind", "body"}
    assert canonical.decode(make_commit(alice, genesis).encode())["v"] == 1


def _with_body(
    record: Revocation, version: int, body: dict[str, object], signer: Identity
) -> bytes:
    """An envelope around ``body``, signed over the bytes that version would sign."""
    signing: dict[str, object] = {"domain": DOMAIN, "kind": "revocation", "body": body}
    if version != 1:
        signing["v"] = version
    sig = signer.sign(canonical.encode(signing))
    return canonical.encode(
        {
            "v": version,
            "kind": "revocation",
            "body": body,
            "sigs": [{"key": signer.public.raw, "sig": sig}],
        }
    )


def test_a_version_1_revocation_is_refused(alice: Identity, genesis: Genesis) -> None:
    old = {
        "network": genesis.network_id,
        "key": alice.public.raw,
        "commit": b"\5" * 32,
        "from_seq": None,
        "reason": "",
    }
    with pytest.raises(UnknownSchemaVersion, match="retired"):
        decode_record(_with_body(_revocation(genesis), 1, old, alice))
    new = _revocation(genesis).body()
    for version in (1, 3):  # a version-2 body under any other version is not understood
        with pytest.raises(UnknownSchemaVersion):
            decode_record(_with_body(_revocation(genesis), version, new, alice))
    assert decode_record(_with_body(_revocation(genesis), 2, new, alice)).signers() == {
        alice.public
    }


@pytest.mark.parametrize(
    "change",
    [
        {"key": b"\1" * 32},  # the version-1 signer field
        {"subject": b"\1" * 32},  # a commit and a key at once
        {"commit": None},  # neither
        {"commit": None, "subject": b"\1" * 32, "from_seq": -1},
        {"commit": None, "subject": b"\1" * 32, "from_seq": True},
        {"commit": b"\1" * 31},
        {"reason": "x" * 1001},
    ],
)
def test_malformed_revocations_are_refused(
    alice: Identity, genesis: Genesis, change: dict[str, object]
) -> None:
    body = _revocation(genesis).body() | change
    with pytest.raises(SchemaError):
        decode_record(_with_body(_revocation(genesis), 2, body, alice))


def test_malformed_revocations_are_refused_at_creation(alice: Identity, genesis: Genesis) -> None:
    with pytest.raises(SchemaError):
        Revocation(genesis.network_id)
    with pytest.raises(SchemaError):
        Revocation(genesis.network_id, commit=b"\1" * 32, subject=alice.public, from_seq=0)
    with pytest.raises(SchemaError):
        Revocation.of_key(genesis.network_id, alice.public, -1)


def test_a_tampered_revocation_is_refused(alice: Identity, bob: Identity, genesis: Genesis) -> None:
    both = _revocation(genesis).signed_by(alice).signed_by(bob)
    encoded = both.encode()
    for index in range(len(encoded)):
        tampered = bytearray(encoded)
        tampered[index] ^= 0x01
        with pytest.raises(CryptoError):
            decode_record(bytes(tampered), network=genesis.network_id)
    # Another commit under the same signatures: refused, not a revocation of that commit.
    retarget = replace(both, commit=b"\6" * 32)
    with pytest.raises(BadSignature):
        decode_record(retarget.encode())
    with pytest.raises(BadSignature, match="not signed"):
        decode_record(_revocation(genesis).encode())
    with pytest.raises(WrongNetwork):
        decode_record(encoded, network=b"\x09" * 32)


# --- commit schema 2: training provenance and per-module coefficients ---------------------


def test_a_commit_without_version_2_fields_keeps_its_version_1_bytes(
    alice: Identity, genesis: Genesis
) -> None:
    commit = make_commit(alice, genesis)
    envelope = canonical.decode(commit.encode())
    assert envelope["v"] == 1
    assert "training" not in envelope["body"]
    assert "module_coeffs" not in envelope["body"]
    assert set(canonical.decode(commit.signing_bytes())) == {"domain", "kind", "body"}
    assert decode_record(commit.encode()) == commit


def test_a_version_2_commit_round_trips_and_signs_its_version(
    alice: Identity, genesis: Genesis
) -> None:
    commit = make_commit(
        alice,
        genesis,
        training={"method": "continual", "replay": 48},
        module_coeffs={"layer.0": (1.0, 0.75), "layer.1": (0.5, 1.25)},
    )
    assert canonical.decode(commit.encode())["v"] == 2 == VERSIONS["commit"]
    assert canonical.decode(commit.signing_bytes())["v"] == 2
    again = decode_record(commit.encode())
    assert again == commit
    assert again.id == commit.id
    assert again.module_coeffs == {"layer.0": (1.0, 0.75), "layer.1": (0.5, 1.25)}
    only_training = make_commit(alice, genesis, training={"method": "independent"})
    assert decode_record(only_training.encode()).module_coeffs is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("module_coeffs", {}),
        ("module_coeffs", {"g": (1.0, math.nan)}),
        ("module_coeffs", {"": (1.0, 1.0)}),
        ("module_coeffs", {"g": (1.0,)}),
        ("training", {"method": True}),
        ("training", {"steps": math.inf}),
        ("training", {f"k{i}": 1 for i in range(17)}),
    ],
)
def test_bad_version_2_fields_are_refused(
    alice: Identity, genesis: Genesis, field: str, value: object
) -> None:
    with pytest.raises(SchemaError):
        make_commit(alice, genesis, **{field: value})


def test_a_version_envelope_must_match_its_commit_body(alice: Identity, genesis: Genesis) -> None:
    """One encoding per commit: a v2 envelope around a v1 body (or the reverse) is refused."""
    for commit, wrong in (
        (make_commit(alice, genesis), 2),
        (make_commit(alice, genesis, training={"method": "continual"}), 1),
    ):
        body = commit.body()
        signing: dict[str, object] = {"domain": DOMAIN, "kind": "commit", "body": body}
        if wrong != 1:
            signing["v"] = wrong
        data = canonical.encode(
            {
                "v": wrong,
                "kind": "commit",
                "body": body,
                "sigs": [{"key": alice.public.raw, "sig": alice.sign(canonical.encode(signing))}],
            }
        )
        with pytest.raises(SchemaError):
            decode_record(data)
