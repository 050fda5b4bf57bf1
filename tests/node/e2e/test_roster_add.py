"""A member added by a roster update commits, as a new user does it: three founders (2 of 3),
propose + sign + combine + publish, the new member's own node joins and `medforge commit`
publishes through it; every node merges the commit and names its author."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from node.shell.home import Home
from tests.conftest import write_distilled
from tests.node.conftest import make_homes
from tests.node.e2e.test_revocation import line_of_nodes, run
from tests.node.procs import commit_cli, same_digest, start, stop, until

pytestmark = pytest.mark.slow


async def test_a_member_added_by_a_roster_update_commits(
    tmp_path: Path, make_adapter: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    founders = make_homes(tmp_path, ["alice", "bob", "carol"], threshold=2)
    dave = Home.init(tmp_path / "dave", "dave")  # not a founder: joins the same genesis
    dave.join(founders[0].genesis())
    alice, bob, _ = founders
    dave_key = dave.identity().public.hex()  # what dave sends the founders (`medforge id`)
    logs: list[str] = []
    with line_of_nodes(founders, logs) as nodes:
        run(
            capsys,
            "roster",
            "propose",
            "--home",
            str(alice.path),
            "--op",
            "add",
            "--epoch",
            "1",
            "--member",
            f"dave:{dave_key}",
            "--out",
            str(tmp_path / "u1"),
        )
        run(
            capsys,
            "roster",
            "sign",
            "--home",
            str(bob.path),
            str(tmp_path / "u1"),
            "--out",
            str(tmp_path / "u2"),
        )
        run(
            capsys,
            "roster",
            "combine",
            str(tmp_path / "u1"),
            str(tmp_path / "u2"),
            "--out",
            str(tmp_path / "u3"),
        )
        run(capsys, "publish", "--home", str(alice.path), str(tmp_path / "u3"))
        await until(lambda: all(n.status()["records"] == 1 for n in nodes), "update everywhere")

        new = start(dave, [nodes[-1].addr])  # dave's node knows only carol's address
        everyone = [*nodes, new]
        try:
            await until(lambda: new.status()["records"] == 1, "dave's node has the update")
            distilled = write_distilled(tmp_path / "distilled.safetensors")
            assert (
                commit_cli(dave, make_adapter("dave-plugin"), distilled, tmp_path / "c1", "1", "1")
                == 0
            )
            await until(lambda: same_digest(everyone, 1), "dave's commit everywhere")
            capsys.readouterr()
            entry = json.loads(run(capsys, "log", "--home", str(alice.path), "--json"))
            assert [e["author"] for e in entry["items"]] == ["dave"]
            peers = {p["name"] for p in nodes[-1].status()["peers"]}
            assert "dave" in peers  # named by the roster in force, not a peer-id fragment
            shown = json.loads(run(capsys, "network", "show", "--home", str(alice.path), "--json"))
            assert shown["epoch"] == 1  # the roster in force, from the running node
            assert "dave" in {m["name"] for m in shown["members"]}
            assert nodes[-1].status()["roster_epoch"] == 1
        finally:
            logs.extend(stop([new]))
    assert not any("Traceback" in log for log in logs)
