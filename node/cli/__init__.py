"""`medforge`: the command line. Each command group is one module with ``register``;
commands only parse arguments and call library code. Expected failures (bad input, a
missing home, a record that does not verify) print ``error: <reason>`` and exit 2."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from node.errors import NodeError

# Command modules, in help order. A module that fails to import (a missing optional part)
# hides its commands instead of breaking the whole CLI.
COMMAND_MODULES = (
    "node.cli.identity_cmd",
    "node.cli.network_cmd",
    "node.cli.commit_cmd",
    "node.cli.train_cmd",
    "node.cli.distill_cmd",
    "node.cli.merge_cmd",
    "node.cli.node_cmd",
    "node.cli.store_cmd",
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


def _expected_errors() -> tuple[type[BaseException], ...]:
    # merge.errors imports no torch, so the error trees cost nothing to load here.
    from crypto.errors import CryptoError
    from merge.errors import MergeError

    return (CryptoError, MergeError, NodeError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
