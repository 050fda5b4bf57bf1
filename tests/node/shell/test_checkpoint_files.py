"""The composer's checkpoint files under the store, and a real node restarting from one."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from node.cli import main
from node.errors import StoreError
from node.forge.checkpoints import CheckpointEntry, Chunk
from node.shell.checkpoint_files import CheckpointFiles, checkpoint_name
from node.shell.home import Home
from node.shell.runner import run_node
from node.shell.service import NodeService
from node.shell.transport import MemoryNetwork
from tests.node.shell.test_service import _commit, _homes, _memory

ENTRY = CheckpointEntry(8, b"\x01" * 32, "ab" * 32)


def test_checkpoints_survive_a_reopen_and_temporaries_do_not(tmp_path: Path) -> None:
    files = CheckpointFiles(tmp_path / "ck")
    files.write(ENTRY, [b"abc", memoryview(b"def")])
    assert files.entries() == [ENTRY]
    with files.open(ENTRY) as f:
        assert f.read() == b"abcdef"
    (tmp_path / "ck" / ".tmp-1-0").write_bytes(b"half a checkpoint")
    (tmp_path / "ck" / "README").write_text("not ours: left alone, never listed")
    again = CheckpointFiles(tmp_path / "ck")
    assert again.entries() == [ENTRY]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        checkpoint_name(ENTRY),
        "README",
    ]
    again.drop(ENTRY)
    assert again.entries() == []
    assert CheckpointFiles(tmp_path / "ck").entries() == []


def test_a_failed_write_leaves_nothing_and_says_so(tmp_path: Path) -> None:
    files = CheckpointFiles(tmp_path / "ck")

    def failing() -> Iterator[Chunk]:
        yield b"abc"
        raise OSError(28, "No space left on device")

    with pytest.raises(StoreError, match="No space left"):
        files.write(ENTRY, failing())
    assert files.entries() == []
    assert list((tmp_path / "ck").iterdir()) == []


def test_a_checkpoint_gone_behind_our_back_is_a_store_error(tmp_path: Path) -> None:
    files = CheckpointFiles(tmp_path / "ck")
    files.write(ENTRY, [b"x"])
    files.path(ENTRY).unlink()
    with pytest.raises(StoreError):
        files.open(ENTRY)
    assert files.entries() == []


async def test_a_restarted_node_loads_its_checkpoint_and_applies_only_the_rest(
    tmp_path: Path, nursery: trio.Nursery, make_adapter: Callable[..., Path], distilled: Path
) -> None:
    (home,) = _homes(tmp_path, ["alice"])
    config = home.config()
    config.checkpoint_every = 2
    home.save_config(config)
    node = await _start(home, nursery)
    for k, coeffs in enumerate([(1.0, 1.0), (0.5, 1.0), (0.75, 0.5)]):
        commit, blobs = _commit(
            home, make_adapter(f"a{k}", seed=k), distilled, node.core.tip, coeffs
        )
        await node.publish(commit, blobs)
        with trio.fail_after(30):
            await node.wait_until(
                lambda n, k=k: n.core.digest is not None and len(n.core.order.main) == k + 1
            )  # type: ignore[misc]
    digest = node.composer.digest
    state = node.status()
    assert state.composite_representation == "stack, 2 modules: 2 factored (rank 6)"
    assert state.composite_bytes == 2 * 4 * (6 * 8 + 8 * 6)  # q and v: A [6, 8], B [8, 6]
    await _stop(node)
    assert [e.position for e in CheckpointFiles.under(home.store_path).entries()] == [2]

    restarted = await _start(home, nursery)
    with trio.fail_after(30):
        await restarted.wait_until(
            lambda n: n.core.digest is not None and len(n.core.order.main) == 3
        )
    assert restarted.composer.digest == restarted.core.digest == digest
    stats = restarted.composer.statistics()
    assert (stats.last_source, stats.last_start, stats.applied) == ("checkpoint", 2, 1)
    # `medforge status` says how the composite is held, for people and for scripts.
    human = await trio.to_thread.run_sync(_cli, ["status", "--home", str(home.path)])
    assert "stack, 2 modules: 2 factored (rank 6); 768 B" in human
    shown = json.loads(
        await trio.to_thread.run_sync(_cli, ["status", "--home", str(home.path), "--json"])
    )
    assert (shown["composite_bytes"], shown["composite_representation"]) == (
        768,
        "stack, 2 modules: 2 factored (rank 6)",
    )
    await _stop(restarted)


def _cli(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


async def _start(home: Home, nursery: trio.Nursery) -> NodeService:
    node = NodeService(home, transport=_memory(MemoryNetwork())(home))
    await nursery.start(run_node, node)
    return node


async def _stop(node: NodeService) -> None:
    node.stop()
    with trio.fail_after(10):
        await node.stopped.wait()
