"""Institution identities: one Ed25519 key signs commits and is the node's libp2p identity.

Key file: PKCS#8 PEM, mode 0600, optionally encrypted with a passphrase taken from an
environment variable (never from the command line, where it would show in ``ps``).

Encryption at rest (what ``Identity.save`` writes): a standard PKCS#8 ``ENCRYPTED PRIVATE
KEY`` (RFC 5958) with PBES2 (RFC 8018) = scrypt (RFC 7914 §7; N=2**17, r=8, p=1, a 16-byte
random salt) + AES-256-CBC, the structure ``openssl pkcs8 -topk8 -scrypt`` writes. It is built
here from ``cryptography``'s scrypt and AES primitives because ``cryptography`` serialises
PKCS#8 only with PBKDF2 (``BestAvailableEncryption``: 2,048 iterations of HMAC-SHA256, which is
how key files were written before), and it is decrypted here too because ``cryptography``
releases before 45 hand PKCS#8 decryption to OpenSSL, whose 32 MiB scrypt memory cap refuses
N above 2**14. Every other key file (unencrypted, or encrypted the old way) is read by
``cryptography``'s own PKCS#8 loader, so old homes keep working. A passphrase for a new key
needs at least ``MIN_PASSPHRASE_CHARS`` characters (``WeakPassphrase`` otherwise); loading
accepts any passphrase, so keys written before the rule still open.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from crypto.errors import BadSignature, KeyFileError

MIN_PASSPHRASE_CHARS = 12
# scrypt cost of new key files: 128 MiB and about 0.3 s per derivation (OWASP's current
# minimum for scrypt), paid once by each process that loads the key.
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
# What a key file may ask of this loader: at most 1 GiB of scrypt memory (128 * r * N * p).
_SCRYPT_MAX_MEMORY = 2**30

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

    def _pkcs8(self, encoding: serialization.Encoding) -> bytes:
        return self._key.private_bytes(
            encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def save(self, path: Path, passphrase: bytes | None = None) -> None:
        """Write the key as PKCS#8 PEM with mode 0600, encrypted (scrypt + AES-256-CBC) when
        a passphrase is given; refuse a short passphrase and refuse to overwrite a file."""
        check_passphrase(passphrase)
        if passphrase is None:
            pem = self._pkcs8(serialization.Encoding.PEM)
        else:
            encrypted = _encrypt_pkcs8(self._pkcs8(serialization.Encoding.DER), passphrase)
            pem = _pem(_ENCRYPTED_LABEL, encrypted)
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
        envelope = _scrypt_envelope(pem)
        try:
            if envelope is None:  # unencrypted, or encrypted the old way (PBKDF2)
                key = serialization.load_pem_private_key(pem, password=passphrase or None)
            elif passphrase:
                der = _decrypt_pkcs8(envelope, passphrase, path)
                key = serialization.load_der_private_key(der, password=None)
            else:
                raise TypeError("an encrypted key and no passphrase")
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


class WeakPassphrase(KeyFileError):
    """A passphrase too short to protect a key file against offline guessing."""


def check_passphrase(passphrase: bytes | None) -> None:
    """Refuse a passphrase for a new key file that has fewer than ``MIN_PASSPHRASE_CHARS``
    characters (UTF-8; bytes that are not UTF-8 count one each). ``None``: no encryption."""
    if passphrase is None:
        return
    try:
        chars = len(passphrase.decode("utf-8"))
    except UnicodeDecodeError:
        chars = len(passphrase)
    if chars < MIN_PASSPHRASE_CHARS:
        raise WeakPassphrase(
            f"a key passphrase needs at least {MIN_PASSPHRASE_CHARS} characters, not {chars}"
        )


# --- PKCS#8 EncryptedPrivateKeyInfo with PBES2(scrypt, AES-256-CBC) ---------------------------
#
#   SEQUENCE { SEQUENCE { OID pbes2, SEQUENCE {
#                  SEQUENCE { OID scrypt, SEQUENCE { OCTET STRING salt, INTEGER N, r, p } },
#                  SEQUENCE { OID aes256-CBC, OCTET STRING iv } } },
#              OCTET STRING encryptedData }

_ENCRYPTED_LABEL = "ENCRYPTED PRIVATE KEY"
_SEQUENCE, _INTEGER, _OCTET_STRING, _OID = 0x30, 0x02, 0x04, 0x06
_OID_PBES2 = bytes.fromhex("2a864886f70d01050d")  # 1.2.840.113549.1.5.13
_OID_SCRYPT = bytes.fromhex("2b06010401da47040b")  # 1.3.6.1.4.1.11591.4.11
_OID_AES256_CBC = bytes.fromhex("60864801650304012a")  # 2.16.840.1.101.3.4.1.42
_SALT_BYTES = 16
_AES_BLOCK = 16


@dataclass(frozen=True)
class _Envelope:
    salt: bytes
    n: int
    r: int
    p: int
    iv: bytes
    data: bytes


def _encrypt_pkcs8(plain: bytes, passphrase: bytes) -> bytes:
    salt, iv = os.urandom(_SALT_BYTES), os.urandom(_AES_BLOCK)
    key = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)
    padder = padding.PKCS7(8 * _AES_BLOCK).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    data = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    scrypt_params = _tlv(
        _SEQUENCE,
        _tlv(_OCTET_STRING, salt) + _uint(SCRYPT_N) + _uint(SCRYPT_R) + _uint(SCRYPT_P),
    )
    pbes2_params = _tlv(
        _SEQUENCE,
        _tlv(_SEQUENCE, _tlv(_OID, _OID_SCRYPT) + scrypt_params)
        + _tlv(_SEQUENCE, _tlv(_OID, _OID_AES256_CBC) + _tlv(_OCTET_STRING, iv)),
    )
    algorithm = _tlv(_SEQUENCE, _tlv(_OID, _OID_PBES2) + pbes2_params)
    return _tlv(_SEQUENCE, algorithm + _tlv(_OCTET_STRING, data))


def _decrypt_pkcs8(envelope: _Envelope, passphrase: bytes, path: Path) -> bytes:
    """The PKCS#8 DER inside ``envelope``; ``ValueError`` for a wrong passphrase."""
    if 128 * envelope.r * envelope.n * envelope.p > _SCRYPT_MAX_MEMORY:
        raise KeyFileError(f"{path}: scrypt parameters ask for more than 1 GiB of memory")
    kdf = Scrypt(salt=envelope.salt, length=32, n=envelope.n, r=envelope.r, p=envelope.p)
    key = kdf.derive(passphrase)  # ValueError for parameters scrypt does not accept
    decryptor = Cipher(algorithms.AES(key), modes.CBC(envelope.iv)).decryptor()
    padded = decryptor.update(envelope.data) + decryptor.finalize()
    unpadder = padding.PKCS7(8 * _AES_BLOCK).unpadder()
    return unpadder.update(padded) + unpadder.finalize()  # ValueError: bad padding


def _scrypt_envelope(pem: bytes) -> _Envelope | None:
    """The PBES2(scrypt, AES-256-CBC) envelope of an encrypted PKCS#8 PEM, or ``None`` for any
    other file (``cryptography``'s loader then reads it, or says what is wrong with it)."""
    try:
        der = _unpem(pem, _ENCRYPTED_LABEL)
        info, rest = _read(der, _SEQUENCE)
        algorithm, info = _read(info, _SEQUENCE)
        encrypted, info = _read(info, _OCTET_STRING)
        oid, algorithm = _read(algorithm, _OID)
        if oid != _OID_PBES2 or rest or info:
            return None
        params, algorithm = _read(algorithm, _SEQUENCE)
        kdf, params = _read(params, _SEQUENCE)
        cipher, params = _read(params, _SEQUENCE)
        oid, kdf = _read(kdf, _OID)
        if oid != _OID_SCRYPT or algorithm or params:
            return None
        scrypt_params, kdf = _read(kdf, _SEQUENCE)
        salt, scrypt_params = _read(scrypt_params, _OCTET_STRING)
        n, scrypt_params = _read_uint(scrypt_params)
        r, scrypt_params = _read_uint(scrypt_params)
        p, scrypt_params = _read_uint(scrypt_params)
        if scrypt_params:  # the optional keyLength must say 32, AES-256's
            key_length, scrypt_params = _read_uint(scrypt_params)
            if key_length != 32:
                return None
        oid, cipher = _read(cipher, _OID)
        iv, cipher = _read(cipher, _OCTET_STRING)
        if oid != _OID_AES256_CBC or len(iv) != _AES_BLOCK or kdf or scrypt_params or cipher:
            return None
    except ValueError:
        return None
    return _Envelope(salt, n, r, p, iv, encrypted)


def _tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes((tag, size)) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + body


def _uint(value: int) -> bytes:
    return _tlv(_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _read(der: bytes, tag: int) -> tuple[bytes, bytes]:
    """Split one DER element with ``tag`` off ``der``: (its body, what follows)."""
    if len(der) < 2 or der[0] != tag:
        raise ValueError("unexpected DER element")
    size, start = der[1], 2
    if size & 0x80:
        count = size & 0x7F
        if not 1 <= count <= 4 or len(der) < 2 + count:
            raise ValueError("bad DER length")
        size, start = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
    if len(der) < start + size:
        raise ValueError("truncated DER")
    return der[start : start + size], der[start + size :]


def _read_uint(der: bytes) -> tuple[int, bytes]:
    body, rest = _read(der, _INTEGER)
    if not body or body[0] & 0x80:
        raise ValueError("not a positive DER integer")
    return int.from_bytes(body, "big"), rest


def _pem(label: str, der: bytes) -> bytes:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode()


def _unpem(pem: bytes, label: str) -> bytes:
    begin, end = f"-----BEGIN {label}-----".encode(), f"-----END {label}-----".encode()
    text = pem.strip()
    if not (text.startswith(begin) and text.endswith(end)):
        raise ValueError(f"not a PEM {label}")
    try:
        return base64.b64decode(b"".join(text[len(begin) : -len(end)].split()), validate=True)
    except binascii.Error:
        raise ValueError("bad base64") from None
