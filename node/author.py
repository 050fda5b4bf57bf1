"""The author's side of a commit: search coefficients against a head, then sign.

"Search once, apply everywhere" (shared/DESIGN.md rule 3): only the author runs forward
passes; the result travels in the signed commit. Used by `medforge commit` (against the
running node's tip) and by the node itself when it rebases one of its orphans.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crypto.identity import Identity
from crypto.records import BlobRef, Commit, Genesis
from merge.backends.base import DualEncoder
from merge.distill import Distilled, load_distilled
from merge.errors import BaseMismatchError
from merge.lora import LoraAdapter
from merge.search import SearchResult, search_coeffs
from node.composer import Composer
from node.netspec import backend, base_fingerprint, merge_spec

BlobPath = Callable[[bytes], Path]


@functools.lru_cache(maxsize=2)
def load_encoder(kind: str, model: str, fingerprint: str) -> DualEncoder:
    """The network's base model, loaded once per process; refused if its fingerprint is not
    the one the genesis names."""
    from merge.backends import load_backend

    encoder = load_backend(kind, model or None)
    if encoder.fingerprint != fingerprint:
        raise BaseMismatchError(
            f"{kind}:{model or 'default'}",
            None,
            f"fingerprint {encoder.fingerprint[:16]}… is not the network's {fingerprint[:16]}…",
        )
    return encoder


def network_encoder(genesis: Genesis) -> DualEncoder:
    kind, model = backend(genesis)
    return load_encoder(kind, model, base_fingerprint(genesis))


def task_data(commits: Sequence[Commit], blob_path: BlobPath) -> list[Distilled]:
    """The distilled sets of the tasks merged so far (one per distinct blob)."""
    seen: set[bytes] = set()
    data = []
    for commit in commits:
        sha = commit.blobs["distilled"].sha256
        if sha not in seen:
            seen.add(sha)
            data.append(load_distilled(blob_path(sha)))
    return data


def search(
    genesis: Genesis,
    head: Composer,
    head_commits: Sequence[Commit],
    adapter: LoraAdapter,
    own: Distilled,
    blob_path: BlobPath,
) -> SearchResult:
    encoder = network_encoder(genesis)
    data = [*task_data(head_commits, blob_path), own]
    return search_coeffs(encoder, head.composite, adapter, data, merge_spec(genesis).search)


def sign_commit(
    identity: Identity,
    genesis: Genesis,
    *,
    seq: int,
    task: str,
    classes: tuple[str, ...],
    blobs: dict[str, BlobRef],
    parent: bytes,
    result: SearchResult,
    supersedes: bytes | None = None,
) -> Commit:
    objective: dict[str, Any] = {k: float(v) for k, v in result.objective.items()}
    return Commit.create(
        identity,
        network=genesis.network_id,
        seq=seq,
        task=task,
        classes=classes,
        base=base_fingerprint(genesis),
        blobs=blobs,
        parent=parent,
        coeffs=(float(result.coeffs[0]), float(result.coeffs[1])),
        objective=objective,
        supersedes=supersedes,
    )
