"""``medforge store check``: every blob of a store rehashed on demand, from outside the node.

``check_store`` is the store's recovery run by hand and in full (every blob hashed, not only
sized), plus the blobs stored commits name but the store lacks. Read-only while a node runs
(the index opened ``mode=ro``, no lock taken); repairing only with the store lock, through a
``Store`` opened without recovery. Separate from ``node.shell.store`` because the running node
never calls it: it is an operator's tool (the CLI's ``store check`` and ``doctor``). It sits
above the store (it repairs through one), the scan it shares with recovery below it
(``node.shell.store_scan``), so that neither imports the other in a circle.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path

from node.errors import StoreCorrupt, StoreError, StoreLocked
from node.shell.store import Store
from node.shell.store_layout import INDEX_FILE, LOCK_FILE, STORE_DIR
from node.shell.store_scan import CheckReport, Progress, scan


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
            report = scan(root, store._db, rehash=True, live=False, progress=progress)
            store._repair(report)
            report.repaired = report.problems > 0
            report.unheld = _unheld(store._db)
        return report
    live = _lock_held(root / LOCK_FILE)
    db = _open_index_readonly(root / INDEX_FILE)
    try:
        report = scan(root, db, rehash=True, live=live, progress=progress)
        report.unheld = _unheld(db)
    except sqlite3.Error as exc:
        raise StoreCorrupt(f"{root / INDEX_FILE}: {exc}") from exc
    finally:
        db.close()
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
