"""What every simulated node shares without talking: the genesis, the blobs' contents, and the
memos of pure functions (record decoding, the fold).

Rules:

- Blobs are not moved as bytes: a blob is a registry entry (sha256, size, validity, and for an
  adapter the seed of the synthetic adapter it decodes to, ``node.forge.synthetic``). Sizes drive
  the virtual clock; validity is what the shell's validation hook would say.
- Decoding a record or message, and folding an order, are pure functions of their input, so one
  memo serves every node: that keeps 1000 nodes honest *and* cheap. The fold memo lives in
  ``node.forge.synthetic.Folds`` (the simulator never touches tensors), keyed by the item chain
  hash of each prefix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from crypto.identity import Identity
from crypto.records import BlobRef, Commit, Genesis, Member, Record, decode_record
from node.core import messages
from node.core.order import Order
from node.forge.synthetic import BASE, Folds, Step, spec

COEFFS = (1.0, 0.5)


@dataclass(frozen=True)
class Blob:
    size: int
    valid: bool = True
    adapter_seed: int | None = None  # an adapter blob: the seed it decodes from


def identity(seed: int, index: int) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"medforge-sim/{seed}/{index}".encode()).digest())


class World:
    """The genesis, the blob registry, every commit made, and the shared memos."""

    def __init__(self, seed: int, members: list[Identity], mode: str, blob_sizes: dict[str, int]):
        self.seed = seed
        self.mode = mode
        self.blob_sizes = blob_sizes
        self.genesis = Genesis(
            name=f"sim-{seed}",
            members=tuple(Member(f"m{k}", m.public) for k, m in enumerate(members)),
            threshold=1,
            spec=spec(mode),
            nonce=f"seed-{seed}",
        )
        self.network = self.genesis.network_id
        self.blobs: dict[bytes, Blob] = {}
        self.commits: dict[bytes, Commit] = {}  # commit id -> commit
        self.content: dict[bytes, bytes] = {}  # content id -> commit id
        self.published: dict[bytes, float] = {}  # commit id -> time
        self.bad: set[bytes] = set()  # commit ids an adversary made: never in an honest order
        # equivocation: id -> its twin. A twin is bad only where its twin is known too: one
        # whose twin never reached a node is, for that node, an ordinary commit.
        self.twins: dict[bytes, bytes] = {}
        self._records: dict[bytes, Record] = {}
        self._messages: dict[bytes, messages.Message] = {}
        self._folds = Folds(mode)
        self._config = self._blob(b"config", blob_sizes["adapter_config"])

    # --- blobs and commits -------------------------------------------------------------------

    def _blob(self, label: bytes, size: int, **kw: Any) -> BlobRef:
        sha = hashlib.sha256(b"medforge-sim-blob/%d/" % self.seed + label).digest()
        self.blobs.setdefault(sha, Blob(size, **kw))
        return BlobRef(sha, size)

    def make_commit(
        self,
        author: Identity,
        seq: int,
        parent: bytes,
        label: str,
        *,
        adapter_seed: int,
        valid: bool = True,
        declared: int | None = None,
        supersedes: bytes | None = None,
        now: float = 0.0,
    ) -> Commit:
        """A signed commit; its adapter blob decodes to ``synthetic.tiny_adapter(adapter_seed)``."""
        size = self.blob_sizes["adapter_model"]
        model = self._blob(
            b"adapter/%d/%d" % (adapter_seed, valid),
            size,
            valid=valid,
            adapter_seed=adapter_seed if valid else None,
        )
        distilled = self._blob(b"distilled/%d" % adapter_seed, self.blob_sizes["distilled"])
        blobs = {"adapter_config": self._config, "adapter_model": model, "distilled": distilled}
        if declared is not None:
            blobs["adapter_model"] = BlobRef(model.sha256, declared)
        commit = Commit.create(
            author,
            network=self.network,
            seq=seq,
            task=label,
            classes=("a", "b"),
            base=BASE,
            blobs=blobs,
            parent=parent,
            coeffs=COEFFS,
            objective={},
            supersedes=supersedes,
        )
        self.commits[commit.id] = commit
        self.content[hashlib.sha256(commit.encode()).digest()] = commit.id
        self.published.setdefault(commit.id, now)
        return commit

    def valid(self, commit: Commit) -> bool:
        """The verdict of the validity function on ``commit`` (its blobs' registry entries)."""
        return all(self.blobs[ref.sha256].valid for ref in commit.blobs.values())

    def blob_bytes(self, commit: Commit) -> int:
        return sum(ref.size for ref in commit.blobs.values())

    # --- memos of pure functions ---------------------------------------------------------------

    def decode_record(self, data: bytes) -> Record:
        record = self._records.get(data)
        if record is None:
            record = decode_record(data, network=self.network)  # raises: nothing memoised
            self._records[data] = record
        return record

    def decode_message(self, data: bytes) -> messages.Message:
        message = self._messages.get(data)
        if message is None:
            message = messages.decode(data)
            if len(self._messages) < 200_000:
                self._messages[data] = message
        return message

    def digest(self, order: Order) -> str:
        """The composite digest of ``order``, folding only past the longest known prefix."""
        return self._folds.digest(order.items, lambda j: self._step(order.commits[j]))

    def _step(self, commit_id: bytes) -> Step:
        commit = self.commits[commit_id]
        seed = self.blobs[commit.blobs["adapter_model"].sha256].adapter_seed
        assert seed is not None, "an invalid adapter reached the order"
        return seed, commit.coeffs
