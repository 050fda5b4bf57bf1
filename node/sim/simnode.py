"""One simulated node's state: the real core, the blobs its shell holds, and its counters.

Its own module so that the simulation (``network``), the cheats (``adversaries``) and the report
can all name it without importing each other.
"""

from __future__ import annotations

from crypto.identity import Identity
from node.core.protocol import Core

HONEST_ROLES = ("honest", "author")
MEMBER_ROLES = ("author", "equivocate", "invalid", "oversized")  # named in the genesis


class SimNode:
    """One simulated node; ``role`` is ``honest``, ``author`` or an adversary kind."""

    def __init__(self, index: int, core: Core, role: str, ident: Identity | None) -> None:
        self.index = index
        self.name = f"n{index:04d}"
        self.core = core
        self.role = role
        self.identity = ident
        self.online = True
        self.blobs: set[bytes] = set()
        self.seq = 0
        self.timer_gen = 0
        self.sent = 0
        self.messages = 0  # things sent over a link: messages, blob requests, blobs
        self.received = 0
        self.payload = 0
        self.duplicate = 0
        self.payload_blobs = 0  # bytes of distinct blobs received
        self.dups: dict[bytes, int] = {}  # blob -> bytes received again after holding it
        self.digest: str | None = None
        self.changed_at = 0.0

    def __repr__(self) -> str:
        return f"<SimNode {self.name} {self.role} {'online' if self.online else 'offline'}>"

    @property
    def honest(self) -> bool:
        return self.role in HONEST_ROLES


def is_member(role: str) -> bool:
    return role in MEMBER_ROLES
