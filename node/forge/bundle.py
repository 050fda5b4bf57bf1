"""Commit bundles: a signed commit and its blobs as a directory, checkable offline.

Layout::

    BUNDLE/commit.cbor           the signed commit record
    BUNDLE/genesis.cbor          the genesis it was made for (informational: a verifier trusts
                                 its own copy of the genesis, never the bundle's)
    BUNDLE/blobs/<sha256 hex>    adapter_config, adapter_model, distilled
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from crypto.errors import BlobRefMismatch, SchemaError
from crypto.records import BLOB_KINDS, BlobRef, Commit, Genesis, Record, decode_record
from crypto.roster import Roster
from node.forge.netspec import merge_spec
from node.forge.validate import Rules, check_commit

COMMIT_FILE = "commit.cbor"
GENESIS_FILE = "genesis.cbor"
BLOB_DIR = "blobs"


@dataclass(frozen=True)
class Bundle:
    path: Path
    commit: Commit

    def blob_path(self, kind: str) -> Path:
        return self.path / BLOB_DIR / self.commit.blobs[kind].sha256.hex()

    def blob_bytes(self, kind: str) -> bytes:
        return self.blob_path(kind).read_bytes()


def blob_ref(data: bytes) -> BlobRef:
    return BlobRef(hashlib.sha256(data).digest(), len(data))


def max_blob_bytes(genesis: Genesis) -> int:
    return merge_spec(genesis).limits.max_blob_bytes


def write_bundle(out: Path, commit: Commit, blobs: Mapping[str, bytes], genesis: Genesis) -> Bundle:
    """Write a bundle; refuses to write into an existing non-empty directory."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / BLOB_DIR).mkdir(parents=True)
    for kind in BLOB_KINDS:
        data = blobs[kind]
        if blob_ref(data) != commit.blobs[kind]:
            raise BlobRefMismatch(f"blob {kind} does not match the commit's reference")
        (staging / BLOB_DIR / commit.blobs[kind].sha256.hex()).write_bytes(data)
    (staging / GENESIS_FILE).write_bytes(genesis.encode())
    (staging / COMMIT_FILE).write_bytes(commit.encode())
    if out.exists():
        out.rmdir()
    staging.rename(out)  # a bundle appears whole or not at all
    return Bundle(out, commit)


def read_bundle_genesis(path: Path) -> Genesis:
    record = decode_record((path / GENESIS_FILE).read_bytes())
    if not isinstance(record, Genesis):
        raise SchemaError(f"{path / GENESIS_FILE} is not a genesis document")
    return record


def verify_bundle(path: Path, genesis: Genesis, records: Iterable[Record] = ()) -> Bundle:
    """Check signature, schema, network, roster membership, blob hashes and sizes, then the
    one validity function every node runs at receipt (``node.forge.validate``).

    Raises a ``crypto.errors.CryptoError`` subclass naming the reason, ``InvalidCommit`` for
    content every node would refuse, or ``OSError`` for a missing file.
    """
    record = decode_record((path / COMMIT_FILE).read_bytes(), network=genesis.network_id)
    if not isinstance(record, Commit):
        raise SchemaError(f"{path / COMMIT_FILE} holds a {record.KIND}, not a commit")
    Roster.from_records(genesis, records).check_commit(record)
    bundle = Bundle(path, record)
    limit = max_blob_bytes(genesis)
    for kind in BLOB_KINDS:
        _verify_blob(bundle.blob_path(kind), kind, record.blobs[kind], limit)
    blobs = {kind: bundle.blob_bytes(kind) for kind in BLOB_KINDS}
    check_commit(record, blobs, Rules.of(genesis))
    return bundle


def _verify_blob(path: Path, kind: str, ref: BlobRef, limit: int) -> None:
    if ref.size > limit:
        raise BlobRefMismatch(f"blob {kind} claims {ref.size} bytes, over the limit of {limit}")
    size = path.stat().st_size
    if size != ref.size:
        raise BlobRefMismatch(f"blob {kind} has {size} bytes, the commit says {ref.size}")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.digest() != ref.sha256:
        raise BlobRefMismatch(f"blob {kind} does not hash to {ref.sha256.hex()[:16]}…")
