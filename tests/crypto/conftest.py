from __future__ import annotations

from typing import Any

import pytest

from crypto.identity import Identity
from crypto.records import BLOB_KINDS, BlobRef, Commit, Genesis, Member


def _seeded(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


@pytest.fixture
def alice() -> Identity:
    return _seeded(1)


@pytest.fixture
def bob() -> Identity:
    return _seeded(2)


@pytest.fixture
def carol() -> Identity:
    return _seeded(3)


@pytest.fixture
def mallory() -> Identity:
    return _seeded(66)


@pytest.fixture
def genesis(alice: Identity, bob: Identity) -> Genesis:
    return Genesis(
        name="oncology-net",
        members=(Member("alice", alice.public), Member("bob", bob.public)),
        threshold=2,
        spec={"mode": "fusion", "base": "ab" * 32},
        nonce="2026-11-27",
    )


def make_commit(author: Identity, genesis: Genesis, seq: int = 0, **overrides: Any) -> Commit:
    fields: dict[str, Any] = dict(
        network=genesis.network_id,
        seq=seq,
        task="breast",
        classes=("benign", "malignant"),
        base="ab" * 32,
        blobs={k: BlobRef(bytes([i]) * 32, 100 + i) for i, k in enumerate(BLOB_KINDS)},
        parent=b"\0" * 32,
        coeffs=(1.0, 0.5),
        objective={"loss_before": 0.9, "loss_after": 0.7},
    )
    fields.update(overrides)
    return Commit.create(author, **fields)
