"""Recourse, as a network would use it: three real `medforge node run` processes on loopback in
a line (alice - bob - carol), threshold 2 of 3. Carol commits two plugins; alice and bob, who
did not write them, each revoke carol's second commit on their own, combine their two files
and publish the result: every node drops the commit and folds back to the composite it had at
forge item 1. One member's revocation alone (below the threshold) changes nothing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crypto.records import Revocation, decode_record
from node.cli import main as cli
from node.shell.home import Home
from tests.conftest import write_distilled
from tests.node.conftest import make_homes
from tests.node.procs import Node, commit_cli, same_digest, start_line, stop, until

pytestmark = pytest.mark.slow


@pytest.fixture
def homes(tmp_path: Path) -> list[Home]:
    homes = make_homes(tmp_path, ["alice", "bob", "carol"], threshold=2)
    for home in homes:  # a checkpoint at every forge item: the restart below loads one
        config = home.config()
        config.checkpoint_every = 1
        home.save_config(config)
    return homes


@contextlib.contextmanager
def line_of_nodes(homes: list[Home], logs: list[str]) -> Iterator[list[Node]]:
    """Nodes in a line (``procs.start_line``), stopped on the way out; their logs kept."""
    nodes = start_line(homes)
    try:
        yield nodes
    finally:
        logs.extend(stop(nodes))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = cli(list(argv))
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 0, out
    return out


def digests(nodes: list[Node]) -> set[str | None]:
    return {n.status()["composite_digest"] for n in nodes}


def records_everywhere(nodes: list[Node], count: int) -> bool:
    return all(n.status()["records"] == count for n in nodes)


async def test_members_other_than_the_author_revoke_a_commit_together(
    homes: list[Home],
    tmp_path: Path,
    make_adapter: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice, bob, carol = homes
    distilled = write_distilled(tmp_path / "distilled.safetensors")
    logs: list[str] = []
    with line_of_nodes(homes, logs) as nodes:
        assert (
            commit_cli(carol, make_adapter("p1", seed=1), distilled, tmp_path / "c1", "1", "1") == 0
        )
        await until(lambda: same_digest(nodes, 1), "carol's first plugin on every node")
        (at_item_1,) = digests(nodes)
        assert (
            commit_cli(carol, make_adapter("p2", seed=2), distilled, tmp_path / "c2", "0.5", "1")
            == 0
        )
        await until(lambda: same_digest(nodes, 2), "carol's second plugin on every node")
        (at_item_2,) = digests(nodes)
        assert at_item_2 != at_item_1
        first = decode_record((tmp_path / "c1" / "commit.cbor").read_bytes()).id.hex()
        second = decode_record((tmp_path / "c2" / "commit.cbor").read_bytes()).id.hex()

        # Below the threshold: bob alone revokes carol's first commit. Every node holds the
        # revocation, and nothing changes.
        out = run(
            capsys,
            "revoke",
            "--home",
            str(bob.path),
            "--commit",
            first,
            "--out",
            str(tmp_path / "bob-first.rev"),
        )
        # bob's node holds the commit, so the CLI knows carol wrote it.
        assert (
            "1 signature(s) by 1 member(s) (bob); threshold 2 of 3: not met (1 more "
            "member signature(s) needed, or the commit's author's own signature)"
        ) in out
        # (carol's own revocation would count alone; she writes one and keeps it.)
        out = run(
            capsys,
            "revoke",
            "--home",
            str(carol.path),
            "--commit",
            first,
            "--out",
            str(tmp_path / "carol-first.rev"),
        )
        assert "threshold 2 of 3: not met, but signed by the commit's author: counts" in out
        run(capsys, "publish", "--home", str(bob.path), str(tmp_path / "bob-first.rev"))
        await until(lambda: records_everywhere(nodes, 3), "bob's lone revocation everywhere")
        assert same_digest(nodes, 2)
        assert digests(nodes) == {at_item_2}

        # alice and bob revoke carol's second commit independently: one record, two files.
        for who in (alice, bob):
            run(
                capsys,
                "revoke",
                "--home",
                str(who.path),
                "--commit",
                second,
                "--reason",
                "unsafe on pediatric scans",
                "--out",
                str(tmp_path / f"{who.config().name}.rev"),
            )
        by_alice = decode_record((tmp_path / "alice.rev").read_bytes())
        by_bob = decode_record((tmp_path / "bob.rev").read_bytes())
        assert isinstance(by_alice, Revocation)
        assert by_alice.id == by_bob.id
        assert by_alice.encode() != by_bob.encode()
        out = run(
            capsys,
            "roster",
            "combine",
            str(tmp_path / "alice.rev"),
            str(tmp_path / "bob.rev"),
            "--out",
            str(tmp_path / "both.rev"),
            "--home",
            str(alice.path),
        )
        assert "2 signature(s) by 2 member(s) (alice, bob); threshold 2 of 3: met" in out
        run(capsys, "publish", "--home", str(alice.path), str(tmp_path / "both.rev"))

        # Every node drops the commit and folds back to what it had at forge item 1.
        await until(
            lambda: same_digest(nodes, 1) and digests(nodes) == {at_item_1},
            "every node drops carol's second commit",
        )
        for node in nodes:
            state = node.status()
            assert (state["forge_item"], state["composite_digest"]) == (1, at_item_1)
            assert state["records"] == 4
            assert state["merge_error"] is None
            log = json.loads(run(capsys, "log", "--home", str(node.home.path), "--json"))
            assert [e["commit"] for e in log["items"]] == [first]
            # status names what the order leaves out, and why
            assert [(e["commit"], e["why"]) for e in state["excluded"]] == [(second, "revoked")]
    assert not any("Traceback" in e for e in logs), logs

    # A restart of every node reads the revocations back from the store: nothing changes,
    # and each node starts from its checkpoint of forge item 1 rather than refolding.
    logs.clear()
    with line_of_nodes(homes, logs) as nodes:
        await until(
            lambda: same_digest(nodes, 1) and digests(nodes) == {at_item_1},
            "the same composite after a restart",
        )
        for node in nodes:
            state = node.status()
            assert state["composite_representation"] == "stack, 2 modules: 2 factored (rank 2)"
            assert state["composite_bytes"] > 0
    assert not any("Traceback" in e for e in logs), logs
    for log in logs:
        assert "composite v1 loaded from checkpoint" in log, log
        assert "applying 0 commit(s)" in log, log
