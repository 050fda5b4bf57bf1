"""`medforge`: the command line. Each command group is one module with ``register``;
commands only parse arguments and call library code. An expected failure prints
``error: <kind>: <reason>`` on stderr (with ``--json`` also ``{"error": {...}}`` on stdout) and
exits with a code that tells the cases apart (``Exit``; documented in the README)."""

from __future__ import annotations

import argparse
import enum
import importlib
import json
import sys
from collections.abc import Sequence

from node.cli.output import terminal_safe
from node.errors import (
    ControlProtocolError,
    NodeError,
    NodeNotRunning,
    NodeRefused,
    PortInUse,
    StoreCorrupt,
    TransportError,
)

# Command modules, in help order. A module that fails to import (a missing optional part)
# hides its commands instead of breaking the whole CLI.
COMMAND_MODULES = (
    "node.cli.identity_cmd",
    "node.cli.network_cmd",
    "node.cli.commit_cmd",
    "node.cli.train_cmd",
    "node.cli.distill_cmd",
    "node.cli.merge_cmd",
    "node.cli.evaluate_cmd",
    "node.cli.node_cmd",
    "node.cli.store_cmd",
    "node.cli.doctor_cmd",
    "node.cli.simulate_cmd",
    "node.cli.demo_cmd",
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medforge")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medforge",
        description="Build a medical foundation model together: signed LoRA plugins, "
        "merged on every node, with no central server.",
    )
    parser.add_argument("--version", action="version", version=f"medforge {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


class Exit(enum.IntEnum):
    OK = 0
    PROBLEMS_FOUND = 1  # a check ran and found problems (`store check`, ...)
    BAD_INPUT = 2  # usage, arguments, files, records, adapters, home or config
    NO_NODE = 3  # no node is running on the home
    REFUSED = 4  # the running node refused the request (its reason is printed)
    NODE_FAILED = 5  # the node, its transport or its store failed
    INTERRUPTED = 130
    STDOUT_CLOSED = 141  # the reader of stdout went away (`medforge log | head`): 128 + SIGPIPE


def exit_code(exc: BaseException) -> Exit:
    if isinstance(exc, NodeNotRunning):
        return Exit.NO_NODE
    if isinstance(exc, NodeRefused):
        return Exit.REFUSED
    if isinstance(exc, ControlProtocolError | StoreCorrupt):
        return Exit.NODE_FAILED
    if isinstance(exc, TransportError) and not isinstance(exc, PortInUse):
        return Exit.NODE_FAILED  # a port in use is the operator's configuration: bad input
    return Exit.BAD_INPUT


def _expected_errors() -> tuple[type[BaseException], ...]:
    # merge.errors imports no torch, so the error trees cost nothing to load here.
    from crypto.errors import CryptoError
    from merge.errors import MergeError

    return (CryptoError, MergeError, NodeError, OSError)


def _stdout_closed() -> bool:
    """Whether stdout's reader has gone (a pipe into `head` that has read enough): poll
    reports an error on the write end of a pipe whose reader closed it. Then stdout is pointed
    at /dev/null, so the interpreter's own flush at exit prints no second message."""
    import os
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or stdout is no real file
        return False
    if closed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return closed


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except BrokenPipeError as exc:
        if _stdout_closed():  # not an error of the command: its reader stopped reading
            return Exit.STDOUT_CLOSED
        code = exit_code(exc)
        print(terminal_safe(f"error: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return code
    except _expected_errors() as exc:
        code = exit_code(exc)
        if getattr(args, "json", False):  # a script reads stdout; a person still sees stderr
            error = {"kind": type(exc).__name__, "message": str(exc), "exit": int(code)}
            print(json.dumps({"error": error}, indent=2, sort_keys=True))
        print(terminal_safe(f"error: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return code
    return code


if __name__ == "__main__":
    sys.exit(main())
