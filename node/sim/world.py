"""What every simulated node shares without talking: the genesis, the blobs' contents, and the
memos of pure functions (record decoding, the fold).

Rules:

- Blobs are not moved as bytes: a blob is a registry entry (sha256, size, validity, and for an
  adapter the tiny ``merge.lora.LoraAdapter`` it decodes to). Sizes drive the virtual clock;
  validity is what the shell's validation hook would say.
- Adapters are built from a seed with a ``torch.Generator`` (no global RNG): 2 modules of rank 2
  over 8 dimensions by default.
- Decoding a record or message, and folding an order, are pure functions of their input, so one
  memo serves every node: that keeps 1000 nodes honest *and* cheap. The fold memo is keyed by
  the item chain hash of each prefix, so a node folds only past the longest prefix any node
  folded before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from crypto.identity import Identity
from crypto.records import BlobRef, Commit, Genesis, Member, Record, decode_record
from merge.base_shapes import BaseShapes
from merge.digest import composite_digest
from merge.fold import Composite, apply, empty
from merge.lora import LoraAdapter, LoraModule
from node import messages
from node.netspec import make_spec
from node.order import Order

BASE = "5e" * 32
COEFFS = (1.0, 0.5)
DIMS = 8
SIM_MODULES = 2
# The simulated base: the Linears ``tiny_adapter`` targets (adapters never leave the world).
SHAPES = BaseShapes(
    {f"encoder.layer.{k}.attention.query": (DIMS, DIMS) for k in range(SIM_MODULES)},
    "text-embeds",
    (-1, DIMS),
)


@dataclass(frozen=True)
class Blob:
    size: int
    valid: bool = True
    adapter: LoraAdapter | None = None


def tiny_adapter(
    seed: int, *, modules: int = SIM_MODULES, rank: int = 2, dims: int = DIMS
) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    mods = {
        f"encoder.layer.{k}.attention.query": LoraModule(
            A=torch.randn(rank, dims, generator=g), B=torch.randn(dims, rank, generator=g) * 0.1
        )
        for k in range(modules)
    }
    return LoraAdapter(base=BASE, modules=mods, name=f"sim-{seed}")


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
            spec=make_spec(mode, BASE, SHAPES),
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
        self._folds: dict[bytes, tuple[Composite, str]] = {}
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
        """A signed commit; its adapter blob decodes to ``tiny_adapter(adapter_seed)``."""
        size = self.blob_sizes["adapter_model"]
        model = self._blob(
            b"adapter/%d/%d" % (adapter_seed, valid),
            size,
            valid=valid,
            adapter=tiny_adapter(adapter_seed) if valid else None,
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
        k = len(order.commits)
        while k > 0 and order.items[k] not in self._folds:
            k -= 1
        composite = self._folds[order.items[k]][0] if k else empty(self.mode)
        for j in range(k, len(order.commits)):
            commit = self.commits[order.commits[j]]
            adapter = self.blobs[commit.blobs["adapter_model"].sha256].adapter
            assert adapter is not None, "an invalid adapter reached the order"
            composite = apply(composite, adapter, commit.coeffs)
            self._folds[order.items[j + 1]] = (composite, composite_digest(composite))
        return self._folds[order.head][1] if order.commits else composite_digest(composite)


DecodeRecord = Callable[[bytes], Record]
