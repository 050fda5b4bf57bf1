"""The node's crash-safe store: content-addressed blobs on disk plus an SQLite index.

Its files and their names: ``node.shell.store_layout``. Durability rules (why a SIGKILL at
any instant loses nothing acknowledged):
  * a blob is written to a temp file in its final directory, fsynced, verified against the
    sha256 it was offered under, renamed into place, and the directory is fsynced; only then
    is its index row committed and the call returns. A bad hash raises and stores nothing.
  * every index write is one SQLite transaction, durable when it returns (synchronous=FULL).
  * on open, recovery removes temp files, checks every indexed blob's size (or full hash
    with ``rehash=True``), drops rows whose blob is missing or corrupt, and adopts complete
    blob files that lost the race with their index row (the scan: ``node.shell.store_scan``).
    ``Store.recovery`` reports it all (``as_dict()`` for ``status``) and the node's log says
    what was repaired.
  * a failed disk write (ENOSPC, EFBIG, EIO, ...) or index write raises ``StoreError``: the
    temp file is gone and nothing is indexed.

Serving: ``serving_path`` (the transport's blob provider) rehashes a blob before the first
time it is served in this process and whenever its file changed since (size, mtime, inode),
so a blob that rotted on disk is dropped, not sent: a peer that got bad bytes from us would
rightly ban us. ``check_store`` (``medforge store check``, ``node.shell.store_check``)
rehashes everything on demand; read-only while a node runs, repairing only with the store
lock. ``read_snapshot`` (``node.shell.store_snapshot``) reads a store with no node running.
The store does no hashing of records (a record id is the hash of its signed *body*, which
only crypto/ can parse); it keeps what the protocol core accepted.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from node.errors import CorruptBlob, StoreCorrupt, StoreError, StoreLocked
from node.shell.store_layout import (
    BLOB_DIR,
    COPY_CHUNK,
    INDEX_FILE,
    LOCK_FILE,
    STORE_DIR,
    TMP_PREFIX,
    blob_file,
    hash_file,
)
from node.shell.store_scan import SUMMARY_IDS, CheckReport, RecoveryReport, scan

REVERIFY_AFTER = 600.0  # seconds a served blob's hash is trusted before it is hashed again

log = logging.getLogger("node.shell.store")

# size, mtime_ns, inode of a blob file when it was last hashed and found intact
_FileStamp = tuple[int, int, int]

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


class Store:
    """Open with ``Store.open(home)``; use as a context manager or call ``close()``."""

    def __init__(self, root: Path, lock_fd: int, db: sqlite3.Connection) -> None:
        self.root = root
        self._lock_fd = lock_fd
        self._db = db
        self._tmp_names = itertools.count()
        # blobs hashed intact: as their files were, and when (monotonic seconds)
        self._verified: dict[bytes, tuple[_FileStamp, float]] = {}
        self.recovery = RecoveryReport()
        self.damaged_at_serve: list[bytes] = []  # blobs serving_path found rotten and dropped

    @classmethod
    def open(cls, home: Path, *, rehash: bool = False) -> Store:
        """Lock, open and recover the store under ``home``. ``StoreLocked`` if another
        process (or another Store in this one) holds it."""
        store = cls._open_locked(Path(home) / STORE_DIR)
        try:
            store.recovery = store._recover(rehash)
        except BaseException:
            store.close()
            raise
        if not store.recovery.clean:
            log.warning("store %s recovered: %s", store.root, store.recovery.describe())
        return store

    @classmethod
    def _open_locked(cls, root: Path) -> Store:
        """Lock and open, without recovery."""
        (root / BLOB_DIR).mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(root / LOCK_FILE)
        try:
            db = _open_index(root / INDEX_FILE)
        except BaseException:
            os.close(lock_fd)
            raise
        return cls(root, lock_fd, db)

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
        return blob_file(self.root, sha256)

    def blob_path(self, sha256: bytes) -> Path | None:
        """The file holding the blob, or None. Fits ``Transport.set_blob_provider``."""
        return self._blob_file(sha256) if self.has_blob(sha256) else None

    def serving_path(self, sha256: bytes) -> Path | None:
        """The file holding the blob, checked against its sha256, or None: the
        ``Transport.set_blob_provider`` to use. The file is hashed the first time it is
        served in this process and again whenever its size, mtime or inode changed; a
        file that fails is dropped (index row and file) and None is returned, so the
        requester asks another holder. Never raises for what is on disk.

        Runs on the caller's thread (the transport's, a trio thread): each blob costs one
        hash per ``REVERIFY_AFTER`` seconds. Rot that keeps size and mtime is seen at the
        next check after that (or by ``medforge store check``)."""
        size = self.blob_size(sha256)
        if size is None:
            return None
        path = self._blob_file(sha256)
        try:
            stamp = _stamp(path)
            known = self._verified.get(sha256)
            if (
                known is not None
                and known[0] == stamp
                and (time.monotonic() - known[1] < REVERIFY_AFTER)
            ):
                return path
            if stamp[0] != size:
                problem = f"{stamp[0]} bytes, indexed as {size}"
            elif hash_file(path) != sha256:
                problem = "its bytes do not hash to its name"
            elif _stamp(path) != stamp:
                problem = "it changed while it was being hashed"
            else:
                self._verified[sha256] = (stamp, time.monotonic())
                return path
        except OSError as exc:  # gone, or unreadable (EIO): not servable either way
            problem = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable: {exc}"
        log.warning("stored blob %s is damaged (%s): dropped, not served", sha256.hex(), problem)
        self.damaged_at_serve = [*self.damaged_at_serve[-(SUMMARY_IDS * 4 - 1) :], sha256]
        try:
            self.drop_blob(sha256)
        except StoreError as exc:
            log.warning("could not drop blob %s: %s", sha256.hex(), exc)
        return None

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
        try:
            if not final.parent.is_dir():
                final.parent.mkdir(exist_ok=True)
                _fsync_dir(final.parent.parent)  # else a crash could lose the new directory
        except OSError as exc:
            raise StoreError(f"cannot make {final.parent}: {_os_reason(exc)}") from exc
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
            while chunk := source.read(COPY_CHUNK):
                writer.write(chunk)
            return writer.commit()

    def _index_blob(self, sha256: bytes, size: int) -> None:
        self._write(
            "INSERT OR REPLACE INTO blobs (sha256, size, stored_at) VALUES (?, ?, ?)",
            (sha256, size, time.time()),
        )

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        """One index write, durable when it returns; any SQLite failure (a full disk: "database
        or disk is full", an I/O error) is a ``StoreError`` and leaves the index unchanged."""
        self._check_open()
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                self._shrink_wal()
            raise StoreError(f"index write failed: {exc}") from exc

    def _shrink_wal(self) -> None:
        """After a write that did not fit, the WAL still holds the failed frames' space:
        give it back, or a full disk stays full after the write was refused."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # a reader (a `store check`), or no room to checkpoint
            log.warning("could not truncate the index's WAL: %s", exc)

    # -- records, verifications, peers, state ------------------------------------------

    def put_record(
        self, record_id: bytes, kind: str, data: bytes, *, received_at: float | None = None
    ) -> bool:
        """Insert a record; True if new. A known id keeps its first bytes and time."""
        cur = self._write(
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
        self._write(
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
        self._write(
            "INSERT OR REPLACE INTO peers VALUES (?, ?, ?)",
            (peer_id, json.dumps(list(addrs)), _now(last_seen)),
        )

    def peers(self) -> list[PeerEntry]:
        rows = self._db.execute("SELECT peer_id, addrs, last_seen FROM peers ORDER BY peer_id")
        return [PeerEntry(p, tuple(json.loads(a)), t) for p, a, t in rows]

    def set_state(self, key: str, value: bytes) -> None:
        self._write("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, value))

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
        found = scan(self.root, self._db, rehash=rehash, live=False)
        self._repair(found)
        return RecoveryReport(
            temp_files_removed=len(found.temp_files),
            missing_blobs=found.missing,
            corrupt_blobs=found.corrupt,
            adopted_blobs=found.unindexed,
            stray_files_removed=len(found.strays),
            rehashed=rehash,
        )

    def _repair(self, found: CheckReport) -> None:
        """Apply what a scan found. Safe: we hold the lock, so no writer is alive to own a
        temp file or to be about to index an unindexed one."""
        try:
            for tmp in found.temp_files:
                tmp.unlink(missing_ok=True)
            for sha256 in found.missing + found.corrupt:
                self.drop_blob(sha256)
            for sha256 in found.unindexed:  # complete files whose index row never committed
                self._index_blob(sha256, self._blob_file(sha256).stat().st_size)
            for stray in found.strays:
                stray.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"repairing {self.root}: {_os_reason(exc)}") from exc

    def drop_blob(self, sha256: bytes) -> None:
        """Forget a blob (index row and file): it is damaged, and will be fetched again."""
        self._verified.pop(sha256, None)
        self._write("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
        try:
            self._blob_file(sha256).unlink(missing_ok=True)
        except OSError as exc:  # unindexed now: the next recovery removes or adopts it
            raise StoreError(f"cannot remove blob {sha256.hex()}: {_os_reason(exc)}") from exc


class BlobWriter:
    """Streams one blob to a temp file; ``commit()`` verifies and makes it visible.
    Leaving the ``with`` block without ``commit()`` (or on error) discards everything.
    A failed disk write (a full disk) raises ``StoreError`` with the temp file removed."""

    def __init__(
        self, store: Store, sha256: bytes, size: int | None, tmp: Path, final: Path
    ) -> None:
        self._store = store
        self._sha256 = sha256
        self._size = size
        self._tmp = tmp
        self._final = final
        try:
            self._file: BinaryIO | None = tmp.open("xb")
        except OSError as exc:
            raise StoreError(f"cannot create {tmp}: {_os_reason(exc)}") from exc
        self._hash = hashlib.sha256()
        self._written = 0

    def write(self, data: bytes) -> int:
        if self._file is None:
            raise StoreError("blob writer is finished")
        self._written += len(data)
        if self._size is not None and self._written > self._size:
            raise CorruptBlob(f"more than the expected {self._size} bytes")
        self._hash.update(data)
        try:
            return self._file.write(data)
        except OSError as exc:
            self.abort()
            raise self._failed(exc) from exc

    def commit(self) -> Path:
        if self._file is None:
            raise StoreError("blob writer is finished")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            self.abort()
            raise self._failed(exc) from exc
        self._file = None
        if self._hash.digest() != self._sha256 or self._size not in (None, self._written):
            self._discard(self._tmp)
            raise CorruptBlob(f"bytes do not hash to {self._sha256.hex()}")
        was_indexed = self._store.has_blob(self._sha256)
        try:
            os.replace(self._tmp, self._final)
        except OSError as exc:
            self._discard(self._tmp)
            raise self._failed(exc) from exc
        try:
            _fsync_dir(self._final.parent)
            self._store._index_blob(self._sha256, self._written)
        except (OSError, StoreError) as exc:
            if not was_indexed:  # else the file we replaced held the same bytes: keep it
                self._discard(self._final)
            raise self._failed(exc) from exc
        return self._final

    def abort(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()  # flushes: on a full disk this fails again, and does not matter
            except OSError:
                pass
            self._discard(self._tmp)

    def _failed(self, exc: BaseException) -> StoreError:
        reason = _os_reason(exc) if isinstance(exc, OSError) else str(exc)
        return StoreError(f"could not store blob {self._sha256.hex()}: {reason}")

    @staticmethod
    def _discard(path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # a temp file is removed at the next open; a final one adopted
            log.warning("could not remove %s: %s", path, exc)

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


def _stamp(path: Path) -> _FileStamp:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"disk full ({exc.strerror})"
    return exc.strerror or str(exc)


def _record(row: tuple[bytes, str, bytes, float]) -> StoredRecord:
    return StoredRecord(bytes(row[0]), row[1], bytes(row[2]), row[3])
