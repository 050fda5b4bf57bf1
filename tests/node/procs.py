"""Real `medforge node run` processes for the end-to-end tests: start, stop, wait.

Every process started here is also registered so that the ``reap_nodes`` fixture (autouse, in
``tests/node/conftest.py``) kills whatever a failing test left running. A node's stderr goes to
a file in its home (a full pipe would stall it); ``stop`` returns those logs and asserts that
every node exited 0 without a traceback.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node.cli import main as cli
from node.errors import ControlError
from node.shell.control import call
from node.shell.home import Home

ROOT = Path(__file__).resolve().parents[2]
WAIT = 90
_running: list[subprocess.Popen[str]] = []


@dataclass
class Node:
    home: Home
    proc: subprocess.Popen[str]
    addr: str
    log: Path

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = call(self.home.control_path, "status", timeout=10)
        return result


def start(home: Home, bootstrap: list[str], *extra: str) -> Node:
    """Start a node on ``home`` (bootstrapping to ``bootstrap``; ``extra``: more `node run`
    arguments) and wait for its "ready"."""
    config = home.config()
    config.bootstrap = bootstrap
    home.save_config(config)
    log = home.path / f"node-{len(list(home.path.glob('node-*.log')))}.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node.cli",
                "node",
                "run",
                "--home",
                str(home.path),
                "--sync-interval",
                "1",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=ROOT,
        )
    _running.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"{home.path.name} exited before ready:\n{log.read_text()}"
    ready = json.loads(line)
    assert ready["event"] == "ready", ready
    peer = home.identity().public.peer_id()
    return Node(home, proc, f"{ready['listen'][0]}/p2p/{peer}", log)


def start_line(homes: list[Home]) -> list[Node]:
    """One node per home, each bootstrapping to the one before: a line."""
    nodes: list[Node] = []
    for home in homes:
        nodes.append(start(home, [nodes[-1].addr] if nodes else []))
    return nodes


def stop(nodes: list[Node]) -> list[str]:
    """SIGTERM each; every one must exit 0 and log no traceback. Returns their logs."""
    for node in nodes:
        node.proc.send_signal(signal.SIGTERM)
    for node in nodes:
        assert node.proc.wait(timeout=30) == 0, node.log.read_text()
        assert node.proc.stdout is not None
        node.proc.stdout.close()
    logs = [node.log.read_text() for node in nodes]
    assert not any("Traceback" in text for text in logs), logs
    return logs


def reap() -> None:
    """Kill every node process still running (a test that failed half-way)."""
    while _running:
        proc = _running.pop()
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Re-check another process's state until it holds (there is no event to await)."""
    with trio.fail_after(WAIT):
        while not await trio.to_thread.run_sync(predicate):  # noqa: ASYNC110 - another
            await trio.sleep(0.1)  # process's state: there is no event to await
    assert predicate(), what


def wait(predicate: Callable[[], bool], what: str) -> None:
    """``until`` for a synchronous test: re-check another process's state until it holds."""
    import time

    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)  # another process's state: there is no event to await


def same_digest(nodes: list[Node], items: int) -> bool:
    """Every node at forge item ``items`` with one composite digest."""
    try:
        states = [n.status() for n in nodes]
    except ControlError:
        return False
    digests = {s["composite_digest"] for s in states}
    return (
        len(digests) == 1 and None not in digests and all(s["forge_item"] == items for s in states)
    )


def commit_cli(home: Home, adapter: Path, distilled: Path, out: Path, *coeffs: str) -> int:
    """`medforge commit --coeffs ...` through ``home``'s running node."""
    return cli(
        [
            "commit",
            "--home",
            str(home.path),
            "--adapter",
            str(adapter),
            "--distilled",
            str(distilled),
            "--task",
            f"t-{out.name}",
            "--coeffs",
            *coeffs,
            "--out",
            str(out),
        ]
    )
