"""The node's crash-safe store: content-addressed blobs on disk plus an SQLite index.

Layout under ``HOME/store/``::

    LOCK                   flock'ed for the life of the Store: one node per home
    index.sqlite3          WAL, synchronous=FULL: records, blobs, verifications, peers, state
    blobs/ab/cdef...       a blob named by its sha256 hex (2 + 62 characters)
    blobs/ab/.tmp-*        a blob being written; never read, removed on open
    checkpoints/           the composer's checkpoints: not the store's (node.shell.checkpoint_files)

Durability rules (why a SIGKILL at any instant loses nothing acknowledged):
  * a blob is written to a temp file in its final directory, fsynced, verified against the
    sha256 it was offered under, renamed into place, and the directory is fsynced; only then
    is its index row committed and the call returns. A bad hash raises and stores nothing.
  * every index write is one SQLite transaction, durable when it returns (synchronous=FULL).
  * on open, recovery removes temp files, checks every indexed blob's size (or full hash
    with ``rehash=True``), drops rows whose blob is missing or corrupt, and adopts complete
    blob files that lost the race with their index row. ``Store.recovery`` reports it all
    (``as_dict()`` for ``status``) and the node's log says what was repaired.
  * a failed disk write (ENOSPC, EFBIG, EIO, ...) or index write raises ``StoreError``: the
    temp file is gone and nothing is indexed.

Serving: ``serving_path`` (the transport's blob provider) rehashes a blob before the first
time it is served in this process and whenever its file changed since (size, mtime, inode),
so a blob that rotted on disk is dropped, not sent: a peer that got bad bytes from us would
rightly ban us. ``check_store`` (``medforge store check``) rehashes everything on demand;
read-only while a node runs, repairing only with the store lock.
The store does no hashing of records (a record id is the hash of its signed *body*, which
only crypto/ can parse); it keeps what the protocol core accepted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from node.errors import CorruptBlob, StoreCorrupt, StoreError, StoreLocked

STORE_DIR = "store"
INDEX_FILE = "index.sqlite3"
LOCK_FILE = "LOCK"
BLOB_DIR = "blobs"
TMP_PREFIX = ".tmp-"
_COPY_CHUNK = 1 << 20
REVERIFY_AFTER = 600.0  # seconds a served blob's hash is trusted before it is hashed again
SHORT_ID = 12  # hex characters of a blob id in summaries and logs
SUMMARY_IDS = 8  # ids listed per category in a summary; the counts are always whole

log = logging.getLogger("node.shell.store")

# done blobs, total blobs, done bytes, total bytes
Progress = Callable[[int, int, int, int], None]
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
class RecoveryReport:
    """What ``Store.open`` repaired. Empty lists mean the last shutdown was clean."""

    temp_files_removed: int = 0
    missing_blobs: list[bytes] = field(default_factory=list)  # indexed, file gone
    corrupt_blobs: list[bytes] = field(default_factory=list)  # indexed, wrong size/hash
    adopted_blobs: list[bytes] = field(default_factory=list)  # file complete, row lost
    stray_files_removed: int = 0  # blob-named files, no row, bytes not matching the name
    rehashed: bool = False  # every blob was hashed (else sizes only)

    @property
    def dropped(self) -> list[bytes]:
        return self.missing_blobs + self.corrupt_blobs

    @property
    def clean(self) -> bool:
        return not (
            self.temp_files_removed
            or self.dropped
            or self.adopted_blobs
            or self.stray_files_removed
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, and up to ``SUMMARY_IDS`` short hex ids per category."""
        return {
            "clean": self.clean,
            "rehashed": self.rehashed,
            "temp_files_removed": self.temp_files_removed,
            "stray_files_removed": self.stray_files_removed,
            "missing_blobs": len(self.missing_blobs),
            "corrupt_blobs": len(self.corrupt_blobs),
            "adopted_blobs": len(self.adopted_blobs),
            "missing": _short_ids(self.missing_blobs),
            "corrupt": _short_ids(self.corrupt_blobs),
            "adopted": _short_ids(self.adopted_blobs),
        }

    def describe(self) -> str:
        """One line for the log."""
        if self.clean:
            return "clean"
        parts = []
        for what, shas in (
            ("missing", self.missing_blobs),
            ("corrupt", self.corrupt_blobs),
            ("adopted", self.adopted_blobs),
        ):
            if shas:
                parts.append(f"{len(shas)} {what} ({', '.join(_short_ids(shas))})")
        if self.temp_files_removed:
            parts.append(f"{self.temp_files_removed} temp files removed")
        if self.stray_files_removed:
            parts.append(f"{self.stray_files_removed} stray files removed")
        return "; ".join(parts)


@dataclass
class CheckReport:
    """What ``check_store`` found (and, with ``repaired``, fixed). Blob ids are raw sha256."""

    root: Path
    live: bool = False  # a node held the store lock: the check only read
    repaired: bool = False  # the problems below were repaired (store lock held)
    blobs_checked: int = 0
    bytes_checked: int = 0
    missing: list[bytes] = field(default_factory=list)  # indexed, file gone
    corrupt: list[bytes] = field(default_factory=list)  # indexed, wrong size or hash
    unindexed: list[bytes] = field(default_factory=list)  # complete file, no row: adopted
    strays: list[Path] = field(default_factory=list)  # no row, bytes not the name's: removed
    temp_files: list[Path] = field(default_factory=list)  # with a node running: in flight
    unheld: list[bytes] = field(default_factory=list)  # named by a stored commit, not held

    @property
    def problems(self) -> int:
        """What is wrong with the store itself. ``unheld`` blobs are not counted: the
        store cannot repair them, the node fetches them from peers."""
        found = len(self.missing) + len(self.corrupt) + len(self.unindexed) + len(self.strays)
        return found + (0 if self.live else len(self.temp_files))

    @property
    def clean(self) -> bool:
        return self.problems == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": str(self.root),
            "live": self.live,
            "repaired": self.repaired,
            "clean": self.clean,
            "problems": self.problems,
            "blobs_checked": self.blobs_checked,
            "bytes_checked": self.bytes_checked,
            "missing": [s.hex() for s in self.missing],
            "corrupt": [s.hex() for s in self.corrupt],
            "unindexed": [s.hex() for s in self.unindexed],
            "strays": [str(p.relative_to(self.root)) for p in self.strays],
            "temp_files": [str(p.relative_to(self.root)) for p in self.temp_files],
            "unheld": [s.hex() for s in self.unheld],
        }


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


def _short_ids(shas: Sequence[bytes]) -> list[str]:
    return [sha.hex()[:SHORT_ID] for sha in shas[:SUMMARY_IDS]]


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
            elif _hash_file(path) != sha256:
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
            while chunk := source.read(_COPY_CHUNK):
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
        found = _scan(self.root, self._db, rehash=rehash, live=False)
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


# -- checking a store on demand (``medforge store check``) ------------------------------


def check_store(
    home: Path, *, repair: bool = False, progress: Progress | None = None
) -> CheckReport:
    """Rehash every indexed blob of the store under ``home`` and look for missing, corrupt,
    unindexed and temp files; also list blobs that stored commits name but the store lacks.

    Without ``repair`` nothing is written and no lock is taken: it is safe while a node runs
    (``live`` in the report; its in-flight temp files are then not problems). With
    ``repair`` it takes the store lock (``StoreLocked`` while a node runs), drops missing and
    corrupt blobs, adopts complete unindexed files, removes temp and stray files, as
    recovery does: the node fetches the dropped blobs from peers when it next starts."""
    root = Path(home) / STORE_DIR
    if not (root / INDEX_FILE).is_file():
        raise StoreError(f"{root} holds no store: no node has run on this home")
    if repair:
        try:
            store = Store._open_locked(root)
        except StoreLocked as exc:
            raise StoreLocked(
                f"a node is running on {home} (it holds {root / LOCK_FILE}): stop it before "
                "repairing, or check without --repair (read-only)"
            ) from exc
        with store:
            report = _scan(root, store._db, rehash=True, live=False, progress=progress)
            store._repair(report)
            report.repaired = report.problems > 0
            report.unheld = _unheld(store._db)
        return report
    live = _lock_held(root / LOCK_FILE)
    db = _open_index_readonly(root / INDEX_FILE)
    try:
        report = _scan(root, db, rehash=True, live=live, progress=progress)
        report.unheld = _unheld(db)
    except sqlite3.Error as exc:
        raise StoreCorrupt(f"{root / INDEX_FILE}: {exc}") from exc
    finally:
        db.close()
    return report


def _scan(
    root: Path,
    db: sqlite3.Connection,
    *,
    rehash: bool,
    live: bool,
    progress: Progress | None = None,
) -> CheckReport:
    """Find what is wrong, change nothing. ``live``: another process (the node) may write
    meanwhile, so each finding is confirmed against the index before it is reported."""
    report = CheckReport(root, live=live)
    blob_dir = root / BLOB_DIR
    report.temp_files = sorted(blob_dir.glob(f"*/{TMP_PREFIX}*"))
    indexed = {bytes(s): int(n) for s, n in db.execute("SELECT sha256, size FROM blobs")}
    total = sum(indexed.values())
    for sha256, size in indexed.items():
        path = blob_file(root, sha256)
        problem = _check_blob(path, sha256, size, rehash)
        if problem is not None and live:  # dropped, or dropped and fetched again, meanwhile?
            dropped = _indexed_size(db, sha256) != size
            if dropped or _check_blob(path, sha256, size, rehash) is None:
                problem = None
        report.blobs_checked += 1
        report.bytes_checked += size
        if problem is not None:
            (report.missing if problem == "missing" else report.corrupt).append(sha256)
        if progress is not None:
            progress(report.blobs_checked, len(indexed), report.bytes_checked, total)
    for path in sorted(blob_dir.glob("*/*")):
        try:
            sha256 = bytes.fromhex(path.parent.name + path.name)
        except ValueError:
            continue  # a temp file, or not ours
        if len(sha256) != 32 or sha256 in indexed:
            continue
        try:
            complete = _check_blob(path, sha256, path.stat().st_size, rehash=True) is None
        except FileNotFoundError:
            continue  # gone meanwhile (a live node dropped it)
        if live and _indexed_size(db, sha256) is not None:
            continue  # the node indexed it while we looked
        (report.unindexed.append(sha256) if complete else report.strays.append(path))
    return report


def _unheld(db: sqlite3.Connection) -> list[bytes]:
    """Blobs named by stored commits (not those kept as invalid evidence) that the store
    does not hold: lost since they were stored; the node fetches them again."""
    from crypto.errors import CryptoError
    from crypto.records import Commit, decode_record

    held = {bytes(s) for (s,) in db.execute("SELECT sha256 FROM blobs")}
    invalid = {bytes(r) for (r,) in db.execute("SELECT record_id FROM verifications WHERE ok = 0")}
    unheld: list[bytes] = []
    rows = db.execute("SELECT id, data FROM records WHERE kind = ? ORDER BY id", (Commit.KIND,))
    for record_id, data in rows:
        if bytes(record_id) in invalid:
            continue
        try:
            record = decode_record(bytes(data))
        except (CryptoError, ValueError):
            continue  # not ours to judge here; the node judges records
        if isinstance(record, Commit):
            for ref in record.blobs.values():
                if ref.sha256 not in held and ref.sha256 not in unheld:
                    unheld.append(ref.sha256)
    return unheld


def _indexed_size(db: sqlite3.Connection, sha256: bytes) -> int | None:
    row = db.execute("SELECT size FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
    return None if row is None else int(row[0])


def _lock_held(path: Path) -> bool:
    """Whether another process holds the store lock now (probed, not kept)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock, if it got one
    return False


def _open_index_readonly(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreCorrupt(f"{path}: {exc}") from exc
    try:
        (check,) = db.execute("PRAGMA quick_check").fetchone()
    except sqlite3.Error as exc:
        db.close()
        raise StoreCorrupt(f"{path}: {exc}") from exc
    if check != "ok":
        db.close()
        raise StoreCorrupt(f"{path}: quick_check says {check}")
    return db


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


def blob_file(root: Path, sha256: bytes) -> Path:
    """Where blob ``sha256`` lives under a store root (readers without the store open)."""
    hex_ = _check_sha(sha256).hex()
    return root / BLOB_DIR / hex_[:2] / hex_[2:]


def _check_blob(path: Path, sha256: bytes, size: int, rehash: bool) -> str | None:
    """None if the file is intact, else "missing" or "corrupt" (unreadable counts as
    corrupt: its bytes cannot be vouched for)."""
    try:
        actual = path.stat().st_size
        if actual != size:
            return "corrupt"
        if rehash and _hash_file(path) != sha256:
            return "corrupt"
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "corrupt"
    return None


def _hash_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.digest()


def _stamp(path: Path) -> _FileStamp:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"disk full ({exc.strerror})"
    return exc.strerror or str(exc)


def _record(row: tuple[bytes, str, bytes, float]) -> StoredRecord:
    return StoredRecord(bytes(row[0]), row[1], bytes(row[2]), row[3])


def read_snapshot(root: Path) -> tuple[list[bytes], list[bytes]]:
    """Read a store without opening it (no node, or one starting): the encoded records not
    judged invalid, and the sha256 of every blob indexed. Writes nothing, not even SQLite's
    -shm file; raises ``StoreLocked`` if a node holds the store, ``StoreCorrupt`` if the
    index is unreadable. A store never opened reads as empty."""
    index = root / INDEX_FILE
    if not index.is_file():
        return [], []
    with _shared_lock(root / LOCK_FILE):
        try:
            return _read_index(index)
        except sqlite3.Error as exc:
            raise StoreCorrupt(f"{index}: {exc}") from exc


def _read_index(index: Path) -> tuple[list[bytes], list[bytes]]:
    wal = index.with_name(index.name + "-wal")
    # immutable: no lock, no -wal/-shm file made; only right when nobody writes (the shared
    # flock) and no write-ahead log holds writes the file does not have yet.
    mode = "mode=ro" if wal.is_file() and wal.stat().st_size > 0 else "immutable=1"
    db = sqlite3.connect(f"{index.resolve().as_uri()}?{mode}", uri=True, isolation_level=None)
    try:
        judged = db.execute("SELECT record_id FROM verifications WHERE ok = 0")
        invalid = {bytes(r) for (r,) in judged}
        rows = [
            bytes(data)
            for record_id, data in db.execute("SELECT id, data FROM records ORDER BY id")
            if bytes(record_id) not in invalid
        ]
        held = [bytes(s) for (s,) in db.execute("SELECT sha256 FROM blobs ORDER BY sha256")]
    finally:
        db.close()
    return rows, held


@contextlib.contextmanager
def _shared_lock(path: Path) -> Iterator[None]:
    """A shared flock on the store lock: a node (which takes it exclusively) cannot open the
    store while it is held, and one that holds it makes this fail at once."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # no node ever locked it; one starting now makes its own
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StoreLocked(f"a node holds {path} (starting or stopping?): try again") from exc
        yield
    finally:
        os.close(fd)  # releases the flock
