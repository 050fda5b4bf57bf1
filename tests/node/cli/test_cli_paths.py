"""CLI paths a contributor takes around a node: a commit written while no node runs says so,
and `medforge publish BUNDLE` publishes it once the node is up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from node.cli import main as cli
from node.shell.home import Home
from tests.conftest import write_distilled
from tests.node.procs import same_digest, start_line, stop, until

pytestmark = pytest.mark.slow


async def test_a_commit_made_without_a_node_is_published_later(
    homes: list[Home],
    tmp_path: Path,
    make_adapter: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice = homes[0]
    bundle = tmp_path / "bundle"
    code = cli(
        [
            "commit",
            "--home",
            str(alice.path),
            "--adapter",
            str(make_adapter()),
            "--distilled",
            str(write_distilled(tmp_path / "d.safetensors")),
            "--task",
            "t",
            "--coeffs",
            "1",
            "1",
            "--out",
            str(bundle),
        ]
    )
    assert code == 0
    assert "not published: no node is running" in capsys.readouterr().out
    nodes = start_line(homes[:2])
    try:
        assert cli(["publish", "--home", str(alice.path), str(bundle)]) == 0
        assert "published commit" in capsys.readouterr().out
        await until(lambda: same_digest(nodes, 1), "the bundle reached both nodes")
    finally:
        stop(nodes)
