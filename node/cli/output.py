"""Printing for humans or, with --json, for scripts."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from typing import Any


def emit(args: Any, data: dict[str, Any], human: str) -> None:
    """``data`` as JSON with --json (which escapes every control character itself), else
    ``human``, made terminal-safe."""
    json_out = getattr(args, "json", False)
    print(json.dumps(data, indent=2, sort_keys=True) if json_out else terminal_safe(human))


def terminal_safe(text: str) -> str:
    """``text`` with every control character but newline and tab, line and paragraph
    separators and the bidirectional controls written as escapes (``\\x1b``,
    ``\\u202e``). Task, class, member and network names and a commit's training fields come
    from signed records that any member (or, for a genesis, its author) chose; printed raw,
    an escape sequence in one could rewrite or hide lines of an operator's terminal, and a
    bidirectional override could reorder what it shows ("Trojan Source")."""
    return "".join(_escape(c) if _hidden(c) else c for c in text)


_BIDI = frozenset("\u061c\u200e\u200f") | frozenset(
    map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)])
)


def _hidden(c: str) -> bool:
    if c in "\n\t":
        return False
    return c in _BIDI or unicodedata.category(c) in ("Cc", "Zl", "Zp")


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def add_json(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_home(parser: Any, *, required: bool = True) -> None:
    parser.add_argument("--home", type=str, required=required, help="institution home directory")


def describe_training(training: Mapping[str, Any]) -> str:
    """``continual (replay 48, prior-corrected loss, composite-svd init, trained on forge
    item 1a2b3c4d5e6f…)`` or ``independent``."""
    method = str(training.get("method", "?"))
    if method != "continual":
        return method
    on = training.get("trained_on")
    where = f", trained on forge item {str(on)[:12]}…" if isinstance(on, str) else ""
    loss = training.get("loss")
    how = f", {loss} loss" if isinstance(loss, str) else ""
    init = training.get("init")
    how += f", {init} init" if isinstance(init, str) else ""
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
