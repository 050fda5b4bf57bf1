"""Institution identities: one Ed25519 key signs commits and is the node's libp2p identity.

Key file: PKCS#8 PEM, mode 0600, optionally encrypted with a passphrase taken from an
environment variable (never from the command line, where it would show in ``ps``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from crypto.errors import BadSignature, KeyFileError

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# libp2p PublicKey protobuf: field 1 (KeyType) = 1 (Ed25519), field 2 (Data) = 32 bytes.
_LIBP2P_ED25519_PREFIX = bytes((0x08, 0x01, 0x12, 0x20))
# Multihash "identity" (0x00) of the 36-byte protobuf: keys this small are inlined in peer ids.
_IDENTITY_MULTIHASH = bytes((0x00, 36))


def base58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    digits = ""
    while n:
        n, rem = divmod(n, 58)
        digits = _B58[rem] + digits
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + digits


@dataclass(frozen=True, order=True)
class PublicKey:
    """A raw 32-byte Ed25519 public key."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise BadSignature(f"an Ed25519 public key has 32 bytes, not {len(self.raw)}")

    def hex(self) -> str:
        return self.raw.hex()

    def peer_id(self) -> str:
        """The libp2p peer id (base58 identity multihash) of this key."""
        return base58(_IDENTITY_MULTIHASH + _LIBP2P_ED25519_PREFIX + self.raw)

    def verify(self, signature: bytes, message: bytes) -> None:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            raise BadSignature(f"signature does not verify under key {self.hex()[:16]}…") from None

    def __repr__(self) -> str:
        return f"PublicKey({self.hex()[:16]}…)"


class Identity:
    """An Ed25519 private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity from 32 bytes (tests, simulations)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def save(self, path: Path, passphrase: bytes | None = None) -> None:
        """Write the key as PEM with mode 0600; refuse to overwrite an existing file."""
        algorithm: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm
        )
        try:
            # O_EXCL: never clobber a key; 0o600 from creation, not chmod after the fact.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{path} exists; refusing to overwrite an identity") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> Identity:
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read identity {path}: {exc.strerror}") from None
        try:
            key = serialization.load_pem_private_key(pem, password=passphrase or None)
        except TypeError:
            raise KeyFileError(
                f"{path} is encrypted: set the passphrase environment variable"
            ) from None
        except ValueError:
            raise KeyFileError(f"{path}: wrong passphrase or not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} is not an Ed25519 key")
        return cls(key)

    def __repr__(self) -> str:
        return f"Identity({self.public!r})"
