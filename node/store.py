"""The node's crash-safe store: content-addressed blobs on disk plus an SQLite index.

Layout under ``HOME/store/``::

    LOCK                   flock'ed for the life of the Store: one node per home
    index.sqlite3          WAL, synchronous=FULL: records, blobs, verifications, peers, state
    blobs/ab/cdef...       a blob named by its sha256 hex (2 + 62 characters)
    blobs/ab/.tmp-*        a blob being written; never read, removed on open

Durability rules (why a SIGKILL at any instant loses nothing acknowledged):
  * a blob is written to a temp file in its final directory, fsynced, verified against the
    sha256 it was offered under, renamed into place, and the directory is fsynced; only then
    is its index row committed and the call returns. A bad hash raises and stores nothing.
  * every index write is one SQLite transaction, durable when it returns (synchronous=FULL).
  * on open, recovery removes temp files, checks every indexed blob's size (or full hash
    with ``rehash=True``), drops rows whose blob is missing or corrupt, and adopts complete
    blob files that lost the race with their index row. ``Store.recovery`` reports it all.
The store does no hashing of records (a record id is the hash of its signed *body*, which
only crypto/ can parse); it keeps what the protocol core accepted.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from node.errors import CorruptBlob, StoreCorrupt, StoreError, StoreLocked

STORE_DIR = "store"
INDEX_FILE = "index.sqlite3"
LOCK_FILE = "LOCK"
BLOB_DIR = "blobs"
TMP_PREFIX = ".tmp-"
_COPY_CHUNK = 1 << 20

SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    sha256 BLOB PRIMARY KEY, size INTEGER NOT NULL, stored_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id BLOB PRIMARY KEY, kind TEXT NOT NULL, data BLOB NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS verifications (
    record_id BLOB PRIMARY KEY, ok INTEGER NOT NULL, reason TEXT NOT NULL,
    checked_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS peers (
    peer_id TEXT PRIMARY KEY, addrs TEXT NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


@dataclass(frozen=True)
class StoredRecord:
    id: bytes
    kind: str
    data: bytes
    received_at: float


@dataclass(frozen=True)
class Verification:
    record_id: bytes
    ok: bool
    reason: str
    checked_at: float


@dataclass(frozen=True)
class PeerEntry:
    peer_id: str
    addrs: tuple[str, ...]
    last_seen: float


@dataclass(frozen=True)
class RecoveryReport:
    """What ``Store.open`` repaired. Empty lists mean the last shutdown was clean."""

    temp_files_removed: int = 0
    missing_blobs: list[bytes] = field(default_factory=list)  # indexed, file gone
    corrupt_blobs: list[bytes] = field(default_factory=list)  # indexed, wrong size/hash
    adopted_blobs: list[bytes] = field(default_factory=list)  # file complete, row lost

    @property
    def dropped(self) -> list[bytes]:
        return self.missing_blobs + self.corrupt_blobs


@dataclass(frozen=True)
class StoreStatistics:
    records: int
    blobs: int
    blob_bytes: int


def _now(value: float | None) -> float:
    return time.time() if value is None else value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_sha(sha256: bytes) -> bytes:
    if len(sha256) != 32:
        raise ValueError(f"a sha256 is 32 raw bytes, got {len(sha256)}")
    return sha256


class Store:
    """Open with ``Store.open(home)``; use as a context manager or call ``close()``."""

    def __init__(self, root: Path, lock_fd: int, db: sqlite3.Connection) -> None:
        self.root = root
        self._lock_fd = lock_fd
        self._db = db
        self._tmp_names = itertools.count()
        self.recovery = RecoveryReport()

    @classmethod
    def open(cls, home: Path, *, rehash: bool = False) -> Store:
        """Lock, open and recover the store under ``home``. ``StoreLocked`` if another
        process (or another Store in this one) holds it."""
        root = Path(home) / STORE_DIR
        (root / BLOB_DIR).mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(root / LOCK_FILE)
        try:
            db = _open_index(root / INDEX_FILE)
        except BaseException:
            os.close(lock_fd)
            raise
        store = cls(root, lock_fd, db)
        try:
            store.recovery = store._recover(rehash)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        if self._lock_fd < 0:
            return
        self._db.close()
        os.close(self._lock_fd)  # releases the flock
        self._lock_fd = -1

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._lock_fd < 0 else "open"
        return f"<Store {self.root} {state}>"

    # -- blobs -------------------------------------------------------------------------

    def _blob_file(self, sha256: bytes) -> Path:
        hex_ = _check_sha(sha256).hex()
        return self.root / BLOB_DIR / hex_[:2] / hex_[2:]

    def blob_path(self, sha256: bytes) -> Path | None:
        """The file holding the blob, or None. Fits ``Transport.set_blob_provider``."""
        return self._blob_file(sha256) if self.has_blob(sha256) else None

    def has_blob(self, sha256: bytes) -> bool:
        return self.blob_size(sha256) is not None

    def blob_size(self, sha256: bytes) -> int | None:
        row = self._db.execute("SELECT size FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else int(row[0])

    def blobs(self) -> list[tuple[bytes, int]]:
        return [(bytes(s), int(n)) for s, n in self._db.execute("SELECT sha256, size FROM blobs")]

    def blob_writer(self, expected_sha256: bytes, size: int | None = None) -> BlobWriter:
        """A sink for streamed bytes (e.g. ``Transport.fetch_blob``); ``commit()`` stores."""
        self._check_open()
        final = self._blob_file(expected_sha256)
        if not final.parent.is_dir():
            final.parent.mkdir()
            _fsync_dir(final.parent.parent)  # else a crash could lose the new directory
        tmp = final.parent / f"{TMP_PREFIX}{os.getpid()}-{next(self._tmp_names)}"
        return BlobWriter(self, expected_sha256, size, tmp, final)

    def put_blob(self, source: bytes | Path | BinaryIO, expected_sha256: bytes) -> Path:
        """Store bytes, a file's contents or a stream's, verified against the sha256
        before anything becomes visible. Idempotent."""
        existing = self.blob_path(expected_sha256)
        if isinstance(source, bytes):
            if hashlib.sha256(source).digest() != expected_sha256:
                raise CorruptBlob(f"data does not hash to {expected_sha256.hex()}")
            if existing is not None:
                return existing
            with self.blob_writer(expected_sha256, len(source)) as writer:
                writer.write(source)
                return writer.commit()
        if isinstance(source, Path):
            with source.open("rb") as f:
                return self.put_blob(f, expected_sha256)
        with self.blob_writer(expected_sha256) as writer:
            while chunk := source.read(_COPY_CHUNK):
                writer.write(chunk)
            return writer.commit()

    def _index_blob(self, sha256: bytes, size: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO blobs (sha256, size, stored_at) VALUES (?, ?, ?)",
            (sha256, size, time.time()),
        )

    # -- records, verifications, peers, state ------------------------------------------

    def put_record(
        self, record_id: bytes, kind: str, data: bytes, *, received_at: float | None = None
    ) -> bool:
        """Insert a record; True if new. A known id keeps its first bytes and time."""
        self._check_open()
        cur = self._db.execute(
            "INSERT OR IGNORE INTO records (id, kind, data, received_at) VALUES (?, ?, ?, ?)",
            (record_id, kind, data, _now(received_at)),
        )
        return cur.rowcount == 1

    def has_record(self, record_id: bytes) -> bool:
        q = "SELECT 1 FROM records WHERE id = ?"
        return self._db.execute(q, (record_id,)).fetchone() is not None

    def get_record(self, record_id: bytes) -> StoredRecord | None:
        q = "SELECT id, kind, data, received_at FROM records WHERE id = ?"
        row = self._db.execute(q, (record_id,)).fetchone()
        return None if row is None else _record(row)

    def records(self, kind: str | None = None) -> list[StoredRecord]:
        """All records (of ``kind``), ordered by id: a stable order, not arrival order."""
        q = "SELECT id, kind, data, received_at FROM records"
        rows = (
            self._db.execute(q + " WHERE kind = ? ORDER BY id", (kind,))
            if kind is not None
            else self._db.execute(q + " ORDER BY id")
        )
        return [_record(row) for row in rows]

    def set_verification(
        self, record_id: bytes, ok: bool, reason: str = "", *, checked_at: float | None = None
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO verifications VALUES (?, ?, ?, ?)",
            (record_id, int(ok), reason, _now(checked_at)),
        )

    def verification(self, record_id: bytes) -> Verification | None:
        q = "SELECT record_id, ok, reason, checked_at FROM verifications WHERE record_id = ?"
        row = self._db.execute(q, (record_id,)).fetchone()
        return None if row is None else Verification(bytes(row[0]), bool(row[1]), row[2], row[3])

    def upsert_peer(
        self, peer_id: str, addrs: Sequence[str], *, last_seen: float | None = None
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO peers VALUES (?, ?, ?)",
            (peer_id, json.dumps(list(addrs)), _now(last_seen)),
        )

    def peers(self) -> list[PeerEntry]:
        rows = self._db.execute("SELECT peer_id, addrs, last_seen FROM peers ORDER BY peer_id")
        return [PeerEntry(p, tuple(json.loads(a)), t) for p, a, t in rows]

    def set_state(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, value))

    def get_state(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def statistics(self) -> StoreStatistics:
        (records,) = self._db.execute("SELECT count(*) FROM records").fetchone()
        blobs, size = self._db.execute("SELECT count(*), total(size) FROM blobs").fetchone()
        return StoreStatistics(records=records, blobs=blobs, blob_bytes=int(size))

    def _check_open(self) -> None:
        if self._lock_fd < 0:
            raise StoreError(f"{self!r} is closed")

    # -- recovery ----------------------------------------------------------------------

    def _recover(self, rehash: bool) -> RecoveryReport:
        report = RecoveryReport(temp_files_removed=self._remove_temp_files())
        indexed = dict(self.blobs())
        for sha256, size in indexed.items():
            problem = _check_blob(self._blob_file(sha256), sha256, size, rehash)
            if problem is not None:
                (report.missing_blobs if problem == "missing" else report.corrupt_blobs).append(
                    sha256
                )
                self.drop_blob(sha256)
        for sha256, path in self._unindexed_files(indexed):
            self._adopt_or_remove(sha256, path, report)
        return report

    def _remove_temp_files(self) -> int:
        # Safe: we hold the lock, so no writer is alive to own a temp file.
        removed = 0
        for tmp in (self.root / BLOB_DIR).glob(f"*/{TMP_PREFIX}*"):
            tmp.unlink()
            removed += 1
        return removed

    def _unindexed_files(self, indexed: dict[bytes, int]) -> Iterator[tuple[bytes, Path]]:
        for path in (self.root / BLOB_DIR).glob("*/*"):
            try:
                sha256 = bytes.fromhex(path.parent.name + path.name)
            except ValueError:
                continue  # not ours
            if len(sha256) == 32 and sha256 not in indexed:
                yield sha256, path

    def _adopt_or_remove(self, sha256: bytes, path: Path, report: RecoveryReport) -> None:
        """A complete file whose index row never committed (crash between the two)."""
        if _check_blob(path, sha256, path.stat().st_size, rehash=True) is None:
            self._index_blob(sha256, path.stat().st_size)
            report.adopted_blobs.append(sha256)
        else:
            path.unlink()

    def drop_blob(self, sha256: bytes) -> None:
        """Forget a blob (index row and file): it is damaged, and will be fetched again."""
        self._db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
        self._blob_file(sha256).unlink(missing_ok=True)


class BlobWriter:
    """Streams one blob to a temp file; ``commit()`` verifies and makes it visible.
    Leaving the ``with`` block without ``commit()`` (or on error) discards everything."""

    def __init__(
        self, store: Store, sha256: bytes, size: int | None, tmp: Path, final: Path
    ) -> None:
        self._store = store
        self._sha256 = sha256
        self._size = size
        self._tmp = tmp
        self._final = final
        self._file: BinaryIO | None = tmp.open("xb")
        self._hash = hashlib.sha256()
        self._written = 0

    def write(self, data: bytes) -> int:
        if self._file is None:
            raise StoreError("blob writer is finished")
        self._written += len(data)
        if self._size is not None and self._written > self._size:
            raise CorruptBlob(f"more than the expected {self._size} bytes")
        self._hash.update(data)
        return self._file.write(data)

    def commit(self) -> Path:
        if self._file is None:
            raise StoreError("blob writer is finished")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        if self._hash.digest() != self._sha256 or self._size not in (None, self._written):
            self._tmp.unlink()
            raise CorruptBlob(f"bytes do not hash to {self._sha256.hex()}")
        os.replace(self._tmp, self._final)
        _fsync_dir(self._final.parent)
        self._store._index_blob(self._sha256, self._written)
        return self._final

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise StoreLocked(f"{path.parent} is in use by another process") from exc
    return fd


def _open_index(path: Path) -> sqlite3.Connection:
    try:
        # autocommit: each statement is its own transaction, durable on return
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        (check,) = db.execute("PRAGMA quick_check").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreCorrupt(f"{path}: {exc}") from exc
    if check != "ok":
        db.close()
        raise StoreCorrupt(f"{path}: quick_check says {check}")
    return db


def _check_blob(path: Path, sha256: bytes, size: int, rehash: bool) -> str | None:
    """None if the file is intact, else "missing" or "corrupt"."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if actual != size:
        return "corrupt"
    if rehash:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_COPY_CHUNK):
                digest.update(chunk)
        if digest.digest() != sha256:
            return "corrupt"
    return None


def _record(row: tuple[bytes, str, bytes, float]) -> StoredRecord:
    return StoredRecord(bytes(row[0]), row[1], bytes(row[2]), row[3])
