from __future__ import annotations

import stat
from pathlib import Path

import pytest

from crypto.errors import BadSignature, KeyFileError
from crypto.identity import Identity


def test_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    alice = Identity.generate()
    path = tmp_path / "identity.pem"
    alice.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        Identity.generate().save(path)
    assert Identity.load(path).public == alice.public


def test_passphrase_encryption(tmp_path: Path) -> None:
    alice = Identity.generate()
    path = tmp_path / "identity.pem"
    alice.save(path, passphrase=b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert Identity.load(path, b"correct horse").public == alice.public
    with pytest.raises(KeyFileError, match="passphrase"):
        Identity.load(path)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        Identity.load(path, b"battery staple")


def test_signatures_verify_only_under_the_signer() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    sig = alice.sign(b"hello")
    alice.public.verify(sig, b"hello")
    with pytest.raises(BadSignature):
        mallory.public.verify(sig, b"hello")
    with pytest.raises(BadSignature):
        alice.public.verify(sig, b"hellO")


def test_peer_id_is_the_one_libp2p_derives() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    alice = Identity.from_seed(bytes(range(32)))
    key_pair = create_new_key_pair(alice.private_bytes())
    assert ID.from_pubkey(key_pair.public_key).to_base58() == alice.public.peer_id()
    assert alice.public.peer_id().startswith("12D3KooW")
