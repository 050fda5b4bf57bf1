"""The composer's checkpoints as files under the store (a ``node.forge.checkpoints`` store).

Layout::

    HOME/store/checkpoints/<position:010d>-<prefix key hex>-<digest hex>.ckpt
    HOME/store/checkpoints/.tmp-*      a checkpoint being written; removed on open

The directory listing is the index, not a table in ``index.sqlite3``: the composer writes from
its worker thread while the store's SQLite connection stays on the trio thread, and a rename is
atomic, so the listing can never name a checkpoint whose file is incomplete, and there is no
row to reconcile with a file after a crash. There are O(log N) files, read once when the node
starts. The name carries all that retention and lookup need (position, prefix key) and the
digest the content must hash to: the file is content-addressed and the composer recomputes the
digest on every load, so a damaged file is discarded there, never trusted.

Writes are crash-safe like the store's blobs: a temporary in the directory, fsynced, renamed
into place, the directory fsynced. Any failure of the disk is a ``StoreError``; the composer
logs it and goes on without that checkpoint. Only the holder of the store lock (the node) may
use the directory.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from node.errors import StoreError
from node.forge.checkpoints import CheckpointEntry, Chunk

CHECKPOINT_DIR = "checkpoints"
_TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"(\d{10})-([0-9a-f]{64})-([0-9a-f]{64})\.ckpt")
log = logging.getLogger("node.shell.checkpoint_files")


def checkpoint_name(entry: CheckpointEntry) -> str:
    return f"{entry.position:010d}-{entry.key.hex()}-{entry.digest}.ckpt"


class CheckpointFiles:
    """``CheckpointFiles(directory)``; ``CheckpointFiles.under(store.root)`` in a node."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob(f"{_TMP_PREFIX}*"):
                stale.unlink(missing_ok=True)  # a write cut short by a crash
            names = [p.name for p in self.directory.iterdir()]
        except OSError as exc:
            raise StoreError(f"checkpoints in {self.directory}: {exc}") from exc
        self._entries = {e for e in map(_parse, names) if e is not None}
        self._lock = threading.Lock()  # status reads entries on the trio thread
        self._tmp_names = itertools.count()

    @classmethod
    def under(cls, store_root: Path) -> CheckpointFiles:
        return cls(Path(store_root) / CHECKPOINT_DIR)

    def __repr__(self) -> str:
        return f"<CheckpointFiles {self.directory} {[e.position for e in self.entries()]}>"

    def path(self, entry: CheckpointEntry) -> Path:
        return self.directory / checkpoint_name(entry)

    def entries(self) -> list[CheckpointEntry]:
        with self._lock:
            return sorted(self._entries)

    def open(self, entry: CheckpointEntry) -> BinaryIO:
        try:
            return self.path(entry).open("rb")
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                with self._lock:
                    self._entries.discard(entry)  # gone behind our back: forget it
            raise StoreError(f"checkpoint v{entry.position}: {exc}") from exc

    def write(self, entry: CheckpointEntry, data: Iterable[Chunk]) -> None:
        final = self.path(entry)
        tmp = self.directory / f"{_TMP_PREFIX}{os.getpid()}-{next(self._tmp_names)}"
        try:
            with tmp.open("wb") as sink:
                for chunk in data:
                    sink.write(chunk)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write checkpoint v{entry.position}: {exc}") from exc
        with self._lock:
            self._entries.add(entry)

    def drop(self, entry: CheckpointEntry) -> None:
        with self._lock:
            self._entries.discard(entry)
        try:
            self.path(entry).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot remove checkpoint v{entry.position}: {exc}") from exc


def _parse(name: str) -> CheckpointEntry | None:
    """The entry a file name names; None for anything else (temporaries, strangers)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    position, key, digest = match.groups()
    return CheckpointEntry(int(position), bytes.fromhex(key), digest)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
