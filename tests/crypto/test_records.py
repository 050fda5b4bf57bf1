"""Signed records: round trips, and every kind of tampering named by a typed error."""

from __future__ import annotations

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
from crypto.records import Commit, Genesis, decode_record
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
        decode_record(_reencode(make_commit(alice, genesis), v=2))


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
