from __future__ import annotations

import os
import stat
from pathlib import Path

import cryptography
import pytest
from cryptography.hazmat.primitives import serialization

from crypto import identity as identity_module
from crypto.errors import BadSignature, KeyFileError
from crypto.identity import MIN_PASSPHRASE_CHARS, Identity, WeakPassphrase

PASSPHRASE = b"correct horse battery"


@pytest.fixture
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """N=2**12 for tests about behaviour, not cost (the reader takes N from the file); the
    real N=2**17 is checked by test_new_key_files_are_pkcs8_with_scrypt."""
    monkeypatch.setattr(identity_module, "SCRYPT_N", 2**12)


def test_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    alice = Identity.generate()
    path = tmp_path / "identity.pem"
    alice.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        Identity.generate().save(path)
    assert Identity.load(path).public == alice.public


@pytest.mark.usefixtures("cheap_scrypt")
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


def test_new_key_files_are_pkcs8_with_scrypt(tmp_path: Path) -> None:
    alice = Identity.generate()
    path = tmp_path / "identity.pem"
    alice.save(path, PASSPHRASE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    envelope = identity_module._scrypt_envelope(pem)
    assert envelope is not None
    assert (envelope.n, envelope.r, envelope.p) == (2**17, 8, 1)
    assert len(envelope.salt) == 16
    assert Identity.load(path, PASSPHRASE).public == alice.public
    if int(cryptography.__version__.split(".")[0]) >= 45:
        # The standard form: cryptography's own PKCS#8 reader opens it too (before 45 it
        # hands this to OpenSSL, whose 32 MiB scrypt cap refuses N=2**17).
        key = serialization.load_pem_private_key(pem, password=PASSPHRASE).public_key()
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert raw == alice.public.raw


@pytest.mark.usefixtures("cheap_scrypt")
def test_wrong_or_missing_passphrase_and_tampering_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.pem"
    Identity.generate().save(path, PASSPHRASE)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        Identity.load(path, b"correct horse batterz")
    with pytest.raises(KeyFileError, match="is encrypted"):
        Identity.load(path, None)
    # Another file of the same key under the same passphrase: fresh salt, IV and ciphertext.
    again = tmp_path / "again.pem"
    Identity.load(path, PASSPHRASE).save(again, PASSPHRASE)
    first, second = (identity_module._scrypt_envelope(p.read_bytes()) for p in (path, again))
    assert first is not None
    assert second is not None
    assert first.salt != second.salt
    assert first.iv != second.iv
    assert first.data != second.data
    lines = path.read_bytes().split(b"\n")  # line 2 holds the ciphertext's first block
    middle = bytearray(lines[2])
    middle[10] = ord("A") if middle[10] != ord("A") else ord("B")
    lines[2] = bytes(middle)
    tampered = tmp_path / "tampered.pem"
    tampered.write_bytes(b"\n".join(lines))
    with pytest.raises(KeyFileError):
        Identity.load(tampered, PASSPHRASE)


@pytest.mark.parametrize(
    "passphrase",
    [b"", b"x", b"correct hor", "ééééééééééé".encode()],  # 0, 1, 11, 11 characters
    ids=["empty", "one", "eleven-ascii", "eleven-non-ascii"],
)
def test_short_passphrase_is_refused(tmp_path: Path, passphrase: bytes) -> None:
    path = tmp_path / "identity.pem"
    with pytest.raises(WeakPassphrase, match=f"at least {MIN_PASSPHRASE_CHARS} characters"):
        Identity.generate().save(path, passphrase)
    assert issubclass(WeakPassphrase, KeyFileError)  # the CLI prints it and exits 2
    assert not path.exists()


@pytest.mark.usefixtures("cheap_scrypt")
def test_twelve_characters_are_enough(tmp_path: Path) -> None:
    alice = Identity.generate()
    path = tmp_path / "identity.pem"
    alice.save(path, "ééééééééééé!".encode())
    assert Identity.load(path, "ééééééééééé!".encode()).public == alice.public


def test_key_files_written_the_old_way_still_load(tmp_path: Path) -> None:
    """The pre-scrypt writer: PKCS#8 via BestAvailableEncryption (PBKDF2, 2,048 iterations),
    with a passphrase the length rule would now refuse for a new key."""
    alice = Identity.generate()
    path = tmp_path / "identity.pem"
    pem = alice._key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"short"),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    assert identity_module._scrypt_envelope(pem) is None  # PBKDF2: cryptography's loader
    assert Identity.load(path, b"short").public == alice.public
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        Identity.load(path, b"shorT")
    with pytest.raises(KeyFileError, match="is encrypted"):
        Identity.load(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


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
