"""The composite `medforge evaluate` and `medforge predict` score: exactly one source flag.

``--home DIR``: the network's composite as this institution's node holds it, the main chain
up to the tip (the composite every member searches against; orphans awaiting rebase are left
out and counted). A running node is asked for its ``head`` over the control socket; with no
node running the home's store is read offline: the index is opened read-only and immutable
(SQLite creates no journal beside it, nothing is written) under a *shared* flock on
``store/LOCK``, held only while the index is read, so that no node can start writing
meanwhile; the blobs are then read as files. A node that holds the lock but does not answer
(starting, stopping) is a ``StoreLocked``: try again. After an unclean shutdown the index's
write-ahead log holds writes of its own; it is then read through SQLite's read-only mode.

``--export DIR``, ``--plugin DIR``, ``--bundle DIR...``: see ``node.forge.sources``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto.records import Genesis, Record, decode_record
from node.errors import ControlError, NodeNotRunning, StoreLocked
from node.shell.control import call
from node.shell.home import Home
from node.shell.store_layout import blob_file
from node.shell.store_snapshot import read_snapshot

if TYPE_CHECKING:  # the tensor side loads when a command runs, not when the parser is built
    from node.forge.sources import Source

SOURCES_HELP = (
    "The composite comes from exactly one of: --home (the network's composite as this "
    "institution's node holds it, up to the tip of its main chain: asked over the control "
    "socket if the node runs, else read offline from the home's store), --export (a "
    "directory `medforge export` wrote: PEFT adapter or mixture), --plugin (one plugin's "
    "directory as `medforge train` wrote it) or --bundle (commit bundles, folded in the "
    "order given). Nothing is written anywhere."
)


def add_source_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--home", type=Path, metavar="DIR", help="institution home (its node's)")
    group.add_argument("--export", type=Path, metavar="DIR", help="what `medforge export` wrote")
    group.add_argument("--plugin", type=Path, metavar="DIR", help="what `medforge train` wrote")
    group.add_argument(
        "--bundle", type=Path, nargs="+", metavar="DIR", help="commit bundle(s), in fold order"
    )


def load_source(args: argparse.Namespace) -> Source:
    from node.forge import sources

    if args.home is not None:
        return home_source(Home(args.home))
    if args.export is not None:
        return sources.read_export(args.export)
    if args.plugin is not None:
        return sources.read_plugin(args.plugin)
    return sources.read_bundles(args.bundle)


def home_source(home: Home) -> Source:
    genesis = home.genesis()
    try:
        answer: dict[str, Any] = call(home.control_path, "head", timeout=60)
    except NodeNotRunning:
        return _offline(home, genesis)
    return _online(home, genesis, answer)


def _online(home: Home, genesis: Genesis, answer: dict[str, Any]) -> Source:
    from node.forge.author import Head
    from node.forge.sources import read_head

    source = read_head(genesis, Head.from_answer(answer), home.path)
    notes = ["node running: composed from its head"]
    try:
        status: dict[str, Any] = call(home.control_path, "status", timeout=30)
    except ControlError:
        status = {}  # it stopped meanwhile: what it answered still stands
    if status.get("orphans"):
        notes.append(f"{status['orphans']} orphan commit(s) awaiting rebase are left out")
    served = status.get("composite_digest")
    if status and served != source.digest:
        notes.append(f"the node serves digest {served or '(merging)'}")
    return replace(source, notes=tuple(notes))


def _offline(home: Home, genesis: Genesis) -> Source:
    from node.forge.author import Head
    from node.forge.sources import read_head, stored_head

    records, files = read_store(home, genesis)
    if not records:
        head, orphans = Head.empty(genesis), 0
    else:
        head, orphans = stored_head(genesis, records, files)
    notes = ["no node running: read from the store offline"]
    if orphans:
        notes.append(f"{orphans} orphan commit(s) awaiting rebase are left out")
    return read_head(genesis, head, home.path, notes)


def read_store(home: Home, genesis: Genesis) -> tuple[list[Record], dict[bytes, Path]]:
    """The valid records of the home's store (those judged invalid are evidence, left out)
    and the file of every blob it holds; nothing is written."""
    root = home.store_path
    try:
        rows, held = read_snapshot(root)
    except StoreLocked as exc:
        raise StoreLocked(f"{exc} (no node answers on {home.control_path})") from exc
    records = [decode_record(data, network=genesis.network_id) for data in rows]
    return records, {sha: blob_file(root, sha) for sha in held}
