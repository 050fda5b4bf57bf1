"""A store's records and blob ids, read without opening a ``Store``: with no node running.

For a command that wants what a home holds while its node is stopped (the composite of
``medforge evaluate --home``, ``node.cli.composite_source``). Opening a ``Store`` would take
the exclusive lock and run recovery, that is write; this writes nothing, not even SQLite's
``-shm`` file, and holds a *shared* flock only while the index is read, so that no node can
start writing meanwhile. Separate from ``node.shell.store`` because it shares none of the
running store's state, only the names of its files (``node.shell.store_layout``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from node.errors import StoreCorrupt, StoreLocked
from node.shell.store_layout import INDEX_FILE, LOCK_FILE


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
