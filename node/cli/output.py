"""Printing for humans or, with --json, for scripts."""

from __future__ import annotations

import json
from typing import Any


def emit(args: Any, data: dict[str, Any], human: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False) else human)


def add_json(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_home(parser: Any, *, required: bool = True) -> None:
    parser.add_argument("--home", type=str, required=required, help="institution home directory")
