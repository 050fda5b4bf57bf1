"""libp2p peer ids computed without importing libp2p (the in-memory twin must not need it);
the derivation itself lives in ``crypto.identity`` (one key, one peer id).

A libp2p Ed25519 peer id is base58btc(identity-multihash(protobuf PublicKey{type=Ed25519,
data=32 raw bytes})); the tests check this against libp2p's own ``ID.from_pubkey``.
"""

from __future__ import annotations

from crypto.identity import Identity, PublicKey
from node.shell.transport.types import PeerId


def peer_id_from_public_key(public_key: bytes) -> PeerId:
    return PublicKey(public_key).peer_id()


def peer_id_from_seed(seed: bytes) -> PeerId:
    if len(seed) != 32:
        raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
    return Identity.from_seed(seed).public.peer_id()


def addr_peer(addr: str) -> PeerId:
    """The peer id an address names in its trailing ``/p2p/<id>``."""
    head, sep, peer = addr.rpartition("/p2p/")
    if not sep or not peer or "/" in peer:
        raise ValueError(f"address does not end in /p2p/<peer id>: {addr!r}")
    return peer
