"""Errors raised by ``crypto``: every rejection names its reason.

Tree::

    CryptoError
    ├── EncodingError            bytes that are not canonical CBOR of our subset
    │   ├── TruncatedEncoding
    │   ├── NonCanonicalEncoding  (valid CBOR, but not the one canonical form)
    │   ├── DuplicateKey
    │   └── UnsupportedValue      (a type, a NaN, an integer out of range, too deep, too big)
    ├── SchemaError              a well-encoded record of the wrong shape
    │   └── UnknownSchemaVersion
    ├── SignatureError
    │   ├── BadSignature
    │   ├── UnknownSigner         (not a member of the roster in force)
    │   ├── RevokedKey
    │   ├── RemovedMember
    │   ├── WrongNetwork          (signed for another network)
    │   └── ThresholdNotMet
    ├── BlobRefMismatch          a blob whose bytes do not match its reference
    └── KeyFileError             identity files: exists, unreadable, wrong passphrase
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base of every error raised by ``crypto``."""


class EncodingError(CryptoError):
    pass


class TruncatedEncoding(EncodingError):
    pass


class NonCanonicalEncoding(EncodingError):
    pass


class DuplicateKey(EncodingError):
    pass


class UnsupportedValue(EncodingError):
    pass


class SchemaError(CryptoError):
    pass


class UnknownSchemaVersion(SchemaError):
    pass


class SignatureError(CryptoError):
    pass


class BadSignature(SignatureError):
    pass


class UnknownSigner(SignatureError):
    pass


class RevokedKey(SignatureError):
    pass


class RemovedMember(SignatureError):
    pass


class WrongNetwork(SignatureError):
    pass


class ThresholdNotMet(SignatureError):
    pass


class BlobRefMismatch(CryptoError):
    pass


class KeyFileError(CryptoError):
    pass
