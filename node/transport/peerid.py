"""libp2p peer ids computed without importing libp2p (the in-memory twin must not need it).

A libp2p Ed25519 peer id is base58btc(identity-multihash(protobuf PublicKey{type=Ed25519,
data=32 raw bytes})); the tests check this against libp2p's own ``ID.from_pubkey``.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.transport.types import PeerId

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# protobuf: field 1 (KeyType) = 1 (Ed25519), field 2 (Data) = 32 bytes
_ED25519_PROTO_PREFIX = b"\x08\x01\x12\x20"
_IDENTITY_MULTIHASH = b"\x00"


def base58(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = ""
    while number:
        number, rem = divmod(number, 58)
        digits = _B58[rem] + digits
    leading_zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * leading_zeros + digits


def public_key_from_seed(seed: bytes) -> bytes:
    if len(seed) != 32:
        raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def peer_id_from_public_key(public_key: bytes) -> PeerId:
    proto = _ED25519_PROTO_PREFIX + public_key
    return base58(_IDENTITY_MULTIHASH + bytes([len(proto)]) + proto)


def peer_id_from_seed(seed: bytes) -> PeerId:
    return peer_id_from_public_key(public_key_from_seed(seed))


def addr_peer(addr: str) -> PeerId:
    """The peer id an address names in its trailing ``/p2p/<id>``."""
    head, sep, peer = addr.rpartition("/p2p/")
    if not sep or not peer or "/" in peer:
        raise ValueError(f"address does not end in /p2p/<peer id>: {addr!r}")
    return peer
