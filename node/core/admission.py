"""What the replication core takes at all: the checks a record passes before any of its blobs is
fetched, made from the record alone and what the network agreed on (the keys the roster named,
the genesis spec). ``node.core.protocol.Core`` owns one ``Admission``; the verdict is a
``Refusal`` or None.

Rules:

- A genesis is not replicated. A roster record counts once some key the roster ever named
  signed it, a commit once its author was ever named (``node.core.members``); the others are
  ignored without blame, since a roster update we do not hold yet may name their keys.
- A commit for another base model than the spec's ``base``, or naming a blob over the size
  limit (``CoreConfig.max_blob_bytes``, else the spec's ``merge.limits.max_blob_bytes``, else
  512 MiB), is refused with blame: every node refuses it before fetching anything, so no
  honest peer relays it. (Bytes that do not decode and verify as a record are refused with
  blame too, by the core, before these checks.)
- Refused ids are remembered so the same bytes are not decoded again: blamed ones for good,
  ignored ones (the last ``unknown_kept``) until a roster update, which may name their keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto.records import Commit, Genesis, Record
from node.core.events import CoreConfig
from node.core.members import Membership

DEFAULT_MAX_BLOB = 512 * 1024 * 1024


@dataclass(frozen=True)
class Refusal:
    """Why a record is not taken. With ``blame`` the peer that sent it is at fault (counted
    as garbage and disconnected); without, the record is only ignored. A local record is
    answered with ``Rejected`` either way."""

    reason: str
    blame: bool = False


def spec_limit(genesis: Genesis) -> int:
    """The genesis spec's largest blob (``merge.limits.max_blob_bytes``), or the default."""
    limits = genesis.spec.get("merge", {}).get("limits", {})
    value = limits.get("max_blob_bytes", DEFAULT_MAX_BLOB) if isinstance(limits, dict) else None
    return value if isinstance(value, int) else DEFAULT_MAX_BLOB


class Admission:
    """The checks before a record is taken, and the ids refused (see the module doc)."""

    def __init__(self, genesis: Genesis, members: Membership, config: CoreConfig) -> None:
        self._members = members
        self._base = genesis.spec.get("base")
        self.max_blob = config.max_blob_bytes or spec_limit(genesis)
        self._kept = config.unknown_kept
        self._rejected: set[bytes] = set()  # blamed: never again
        self._ignored: dict[bytes, None] = {}  # oldest first, at most ``unknown_kept``

    def check(self, record: Record) -> Refusal | None:
        """Why ``record`` is not taken; None if it is."""
        if isinstance(record, Genesis):
            return Refusal("a genesis is not replicated")
        if not isinstance(record, Commit):
            if not self._members.names_any(record.signers()):
                return Refusal("no signer the roster has ever named")
            return None
        if not self._members.named(record.author):
            return Refusal("author the roster has never named")
        if self._base is not None and record.base != self._base:
            return Refusal("commit is for another base model", blame=True)
        if any(ref.size > self.max_blob for ref in record.blobs.values()):
            return Refusal(f"a blob exceeds the limit of {self.max_blob} bytes", blame=True)
        return None

    def refused(self, record_id: bytes) -> bool:
        """Whether a peer's record with this id was refused before (and is still known)."""
        return record_id in self._rejected or record_id in self._ignored

    def remember(self, record_id: bytes, refusal: Refusal) -> None:
        """A peer's record was refused: do not decode it again."""
        if refusal.blame:
            self._rejected.add(record_id)
            return
        self._ignored[record_id] = None
        if len(self._ignored) > self._kept:
            del self._ignored[next(iter(self._ignored))]

    def roster_named_keys(self) -> None:
        """A roster update came: ignored records may be by keys it names, so take them again."""
        self._ignored.clear()

    @property
    def rejected(self) -> int:
        """How many records were refused with blame."""
        return len(self._rejected)
