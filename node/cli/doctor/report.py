"""What ``medforge doctor`` reports: one ``Check`` per fact, gathered in a ``Report``; and
the ``Facts`` several checks share, each read once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from crypto.identity import Identity
from crypto.records import Genesis
from node.errors import ControlError
from node.shell.home import Config, Home

# ok: fine. warn: works, but probably not what an operator wants. fail: the node will not
# start, or will not take part. skip: not checked (asked not to, or a fact it needs failed).
Level = Literal["ok", "warn", "fail", "skip"]
CONTROL_TIMEOUT = 5.0  # seconds for each control-socket answer


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str
    fix: str = ""  # what to do, when not ok

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "level": self.level, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class Report:
    home: str
    checks: tuple[Check, ...]

    def count(self, level: Level) -> int:
        return sum(1 for c in self.checks if c.level == level)

    @property
    def ok(self) -> bool:
        """No check failed (warnings and skips allowed)."""
        return self.count("fail") == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "home": self.home,
            "ok": self.ok,
            "failed": self.count("fail"),
            "warnings": self.count("warn"),
            "checks": [c.as_dict() for c in self.checks],
        }

    def render(self) -> str:
        """A header, one line per check (``ok``, ``warn``, ``FAIL``, ``skip``) with the fix
        under a warning or a failure, and a summary line."""
        lines = [f"medforge doctor: {self.home}"]
        for c in self.checks:
            level = "FAIL" if c.level == "fail" else c.level
            lines.append(f"{level:<5} {c.name:<11} {c.detail}")
            if c.fix and c.level in ("warn", "fail"):
                lines.append(f"{'':<17}-> {c.fix}")
        failed, warned = self.count("fail"), self.count("warn")
        warnings = f"{warned} warning{'' if warned == 1 else 's'}"
        if failed:
            lines.append(f"{failed} failed, {warnings}")
        else:
            lines.append(f"no check failed ({warnings})" if warned else "all checks ok")
        return "\n".join(lines)


@dataclass
class Facts:
    """What several checks need; each is filled by the check that reads it (None: it
    failed, or has not run)."""

    home: Home
    raw: dict[str, Any] = field(default_factory=dict)  # config.toml as TOML, if it parses
    config: Config | None = None
    identity: Identity | None = None
    genesis: Genesis | None = None
    node: dict[str, Any] | None = None  # the running node's status answer
    node_error: ControlError | None = None
