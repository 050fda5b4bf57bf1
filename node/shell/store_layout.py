"""Where the node's store keeps its files, and how a blob file is named and hashed.

Layout under ``HOME/store/``::

    LOCK                   flock'ed for the life of the Store: one node per home
    index.sqlite3          WAL, synchronous=FULL: records, blobs, verifications, peers, state
    blobs/ab/cdef...       a blob named by its sha256 hex (2 + 62 characters)
    blobs/ab/.tmp-*        a blob being written; never read, removed on open
    checkpoints/           the composer's checkpoints: not the store's (node.shell.checkpoint_files)

Its own module, importing nothing of the store's, because everything that reads these files
needs the names: the running store (``node.shell.store``), the scan its recovery and ``store
check`` share (``node.shell.store_scan``), readers without a Store (``store_check``,
``store_snapshot``) and the doctor.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

STORE_DIR = "store"
INDEX_FILE = "index.sqlite3"
LOCK_FILE = "LOCK"
BLOB_DIR = "blobs"
TMP_PREFIX = ".tmp-"
COPY_CHUNK = 1 << 20  # bytes read or copied at a time


def blob_file(root: Path, sha256: bytes) -> Path:
    """Where blob ``sha256`` lives under a store root (readers without the store open)."""
    hex_ = _check_sha(sha256).hex()
    return root / BLOB_DIR / hex_[:2] / hex_[2:]


def hash_file(path: Path) -> bytes:
    """The sha256 of a file's bytes, read ``COPY_CHUNK`` at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.digest()


def _check_sha(sha256: bytes) -> bytes:
    if len(sha256) != 32:
        raise ValueError(f"a sha256 is 32 raw bytes, got {len(sha256)}")
    return sha256
