"""Fixtures of the node tests: a network of four real homes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crypto.records import Genesis, Member
from node.home import Home
from node.netspec import make_spec
from tests.conftest import BASE, TINY_SHAPES


@pytest.fixture
def homes(tmp_path: Path) -> list[Home]:
    """alice, bob, carol and mallory: founding members of one stack network (threshold 1)."""
    homes = [Home.init(tmp_path / n, n) for n in ("alice", "bob", "carol", "mallory")]
    genesis = Genesis(
        name="matrix",
        members=tuple(Member(h.config().name, h.identity().public) for h in homes),
        threshold=1,
        spec=make_spec("stack", BASE, TINY_SHAPES),
        nonce=os.urandom(4).hex(),
    )
    for home in homes:
        home.join(genesis)
    return homes
