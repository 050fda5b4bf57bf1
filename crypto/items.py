"""Forge item names: a chain hash over the commits merged so far.

``item_0 = H(network id)``, ``item_k = H(item_{k-1} || commit_k id)``: two nodes name the same
composite iff they merged the same commits in the same order.
"""

from __future__ import annotations

from crypto.canonical import sha256


def item_zero(network_id: bytes) -> bytes:
    return sha256(network_id)


def next_item(previous: bytes, commit_id: bytes) -> bytes:
    return sha256(previous + commit_id)
