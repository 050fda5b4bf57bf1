"""`medforge node run --log-json`: everything the node reports is one JSON object per line on
one stream (issue 15), from real processes that find each other."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from node.cli import logs
from node.shell.home import Home
from tests.node import procs


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line as JSON; fails on the first line that is not."""
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"line {n} is not JSON: {line!r}")
    return out


async def test_two_nodes_log_only_json_lines(homes: list[Home]) -> None:
    a = procs.start(homes[0], [], "--log-json")
    b = procs.start(homes[1], [a.addr], "--log-json")
    await procs.until(lambda: any(p["addrs"] for p in b.status()["peers"]), "b meets a")
    texts = procs.stop([a, b])
    for text in texts:
        records = parse_lines(text)
        assert {"ts", "level", "logger", "msg"} <= set(records[0])
        assert any(r.get("event", {}).get("event") == "ready" for r in records)
    assert any("connected" in r["msg"] for r in parse_lines(texts[1]))


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.filterwarnings("always::UserWarning")  # shown (logged), not raised
def test_warnings_and_tracebacks_stay_one_json_line_each(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.setup(as_json=True)
    warnings.warn("a library's warning", UserWarning, stacklevel=1)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("node.test").exception("it failed")
    records = parse_lines(capsys.readouterr().err)
    assert len(records) == 2
    assert "a library's warning" in records[0]["msg"]
    assert records[1]["msg"] == "it failed"
    assert "ValueError: boom" in records[1]["exc"]
