"""What is wrong with a store: its blob files scanned against its index, and the reports.

``scan`` finds missing, corrupt and unindexed blobs, stray and temp files, and changes
nothing; the store's recovery (``Store.open``, reported as a ``RecoveryReport``) and ``medforge
store check`` (``node.shell.store_check``, a ``CheckReport``) repair what it found. It is its
own module, below ``node.shell.store``, because both sides need it: the store scans at every
open, and the check opens a store to repair what the scan found.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.shell.store_layout import BLOB_DIR, TMP_PREFIX, blob_file, hash_file

SHORT_ID = 12  # hex characters of a blob id in summaries and logs
SUMMARY_IDS = 8  # ids listed per category in a summary; the counts are always whole

# done blobs, total blobs, done bytes, total bytes
Progress = Callable[[int, int, int, int], None]


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


def _short_ids(shas: Sequence[bytes]) -> list[str]:
    return [sha.hex()[:SHORT_ID] for sha in shas[:SUMMARY_IDS]]


def scan(
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


def _indexed_size(db: sqlite3.Connection, sha256: bytes) -> int | None:
    row = db.execute("SELECT size FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
    return None if row is None else int(row[0])


def _check_blob(path: Path, sha256: bytes, size: int, rehash: bool) -> str | None:
    """None if the file is intact, else "missing" or "corrupt" (unreadable counts as
    corrupt: its bytes cannot be vouched for)."""
    try:
        actual = path.stat().st_size
        if actual != size:
            return "corrupt"
        if rehash and hash_file(path) != sha256:
            return "corrupt"
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "corrupt"
    return None
