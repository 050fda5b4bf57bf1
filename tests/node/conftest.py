"""Fixtures of the node tests: networks of real homes, and no node process left behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto.records import Genesis, Member
from node.forge.netspec import make_spec
from node.shell.home import Home
from tests.conftest import BASE, TINY_SHAPES
from tests.node import procs


def make_homes(tmp_path: Path, names: list[str], *, threshold: int = 1) -> list[Home]:
    """One home per name, all founding members of one stack network over TinyBase."""
    homes = [Home.init(tmp_path / n, n) for n in names]
    genesis = Genesis(
        name="test-net",
        members=tuple(Member(h.config().name, h.identity().public) for h in homes),
        threshold=threshold,
        spec=make_spec("stack", BASE, TINY_SHAPES),
        nonce=os.urandom(4).hex(),
    )
    for home in homes:
        home.join(genesis)
    return homes


@pytest.fixture
def homes(tmp_path: Path) -> list[Home]:
    """alice, bob, carol and mallory: founding members of one network (threshold 1)."""
    return make_homes(tmp_path, ["alice", "bob", "carol", "mallory"])


@pytest.fixture(autouse=True)
def reap_nodes() -> Iterator[None]:
    """Whatever node process a test started and did not stop is killed after it."""
    yield
    procs.reap()
