"""Printing for humans or, with --json, for scripts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def emit(args: Any, data: dict[str, Any], human: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False) else human)


def add_json(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_home(parser: Any, *, required: bool = True) -> None:
    parser.add_argument("--home", type=str, required=required, help="institution home directory")


def describe_training(training: Mapping[str, Any]) -> str:
    """``continual (replay 48, prior-corrected loss, trained on forge item 1a2b3c4d5e6f…)``
    or ``independent``."""
    method = str(training.get("method", "?"))
    if method != "continual":
        return method
    on = training.get("trained_on")
    where = f", trained on forge item {str(on)[:12]}…" if isinstance(on, str) else ""
    loss = training.get("loss")
    how = f", {loss} loss" if isinstance(loss, str) else ""
    return f"continual (replay {training.get('replay', 0)}{how}{where})"


def human_bytes(n: int) -> str:
    """``24.6 MiB``: binary units, one decimal above bytes."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"
