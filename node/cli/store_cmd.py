"""`medforge store check`: rehash every stored blob, report (and with --repair, fix) damage.

Exit status: 0 the store is clean (or was repaired), 1 problems were found and not
repaired, 2 an error (``error: <Type>: reason``), e.g. --repair while a node runs.

Without --repair the check only reads: it takes no lock and opens the index read-only, so
it may run beside a running node (the report then says ``live``, and the node's in-flight
temp files are listed but are not problems). --repair needs the store lock, so the node
must be stopped; what it drops is fetched from peers when the node starts again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from node.cli.output import add_home, add_json, emit
from node.shell.home import Home

# Progress goes to stderr for stores this big (blobs or bytes); without a terminal, as a
# line every PROGRESS_EVERY blobs or PROGRESS_SECONDS, whichever comes first.
PROGRESS_MIN_BLOBS = 200
PROGRESS_MIN_BYTES = 256 << 20
PROGRESS_EVERY = 500
PROGRESS_SECONDS = 10.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    store = sub.add_parser("store", help="inspect and repair this node's blob store")
    cmds = store.add_subparsers(dest="store_command", required=True)
    check = cmds.add_parser(
        "check",
        help="rehash every blob; report missing, corrupt, unindexed and temp files",
        description="Rehash every indexed blob against its sha256 and report missing, corrupt, "
        "unindexed and temp files. Read-only (safe while the node runs) unless --repair. "
        "Exit 0 clean or repaired, 1 problems not repaired, 2 error.",
    )
    add_home(check)
    check.add_argument(
        "--repair",
        action="store_true",
        help="drop bad blobs, adopt complete unindexed files, remove temp files "
        "(needs the store lock: stop the node first; it re-fetches what was dropped)",
    )
    add_json(check)
    check.set_defaults(func=run_check)


class _Progress:
    """Reports a long check on stderr: a bar on a terminal, else a line now and then."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._shown = False
        self._last_line = time.monotonic()
        self._last_blobs = 0

    def __call__(self, blobs: int, total_blobs: int, done: int, total: int) -> None:
        if total_blobs < PROGRESS_MIN_BLOBS and total < PROGRESS_MIN_BYTES:
            return
        if sys.stderr.isatty():
            self._tick_bar(done, total)
            return
        now = time.monotonic()
        due = (
            blobs - self._last_blobs >= PROGRESS_EVERY or now - self._last_line >= PROGRESS_SECONDS
        )
        if due or blobs == total_blobs:
            self._last_line, self._last_blobs = now, blobs
            print(
                f"checked {blobs}/{total_blobs} blobs ({_size(done)} of {_size(total)})",
                file=sys.stderr,
                flush=True,
            )

    def _tick_bar(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, unit="B", unit_scale=True, desc="rehashing", file=sys.stderr
            )
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_check(args: argparse.Namespace) -> int:
    from node.shell.store_check import check_store

    home = Home(Path(args.home)).require()
    progress = _Progress()
    try:
        report = check_store(home.path, repair=args.repair, progress=progress)
    finally:
        progress.close()
    emit(args, report.as_dict(), _human(report.as_dict()))
    return 0 if report.clean or report.repaired else 1


def _human(r: dict[str, Any]) -> str:
    mode = (
        "read-only, a node is running on this home"
        if r["live"]
        else "repaired"
        if r["repaired"]
        else "no node running"
    )
    lines = [
        f"store {r['store']}: {r['blobs_checked']} blobs ({_size(r['bytes_checked'])}) "
        f"rehashed ({mode})"
    ]
    verb = "dropped" if r["repaired"] else "found"
    for key, what in (
        ("missing", "missing (indexed, file gone)"),
        ("corrupt", "corrupt (wrong size or hash)"),
        ("unindexed", "unindexed (complete file, no index row)"),
        ("strays", "stray (blob-named file whose bytes do not match)"),
        ("temp_files", "temp files" + (" (writes in flight)" if r["live"] else "")),
    ):
        if r[key]:
            action = "adopted" if key == "unindexed" and r["repaired"] else verb
            if r["repaired"] and key in ("strays", "temp_files"):
                action = "removed"
            lines.append(f"  {len(r[key])} {what}, {action}:")
            lines.extend(f"    {item}" for item in r[key][:20])
            if len(r[key]) > 20:
                lines.append(f"    ... and {len(r[key]) - 20} more")
    if r["unheld"]:
        lines.append(
            f"  {len(r['unheld'])} blobs named by stored commits are not held "
            "(the node fetches them from peers when it starts):"
        )
        lines.extend(f"    {sha}" for sha in r["unheld"][:20])
    if r["clean"]:
        lines.append("clean")
    elif r["repaired"]:
        lines.append(f"{r['problems']} problems repaired")
    else:
        hint = "stop the node, then run" if r["live"] else "run"
        lines.append(f"{r['problems']} problems; {hint} `medforge store check --repair`")
    return "\n".join(lines)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
