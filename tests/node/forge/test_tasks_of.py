"""The tasks a composite serves, read from its commits (``medforge evaluate``, the card)."""

from __future__ import annotations

from crypto.identity import Identity
from crypto.records import Genesis, Member
from node.forge.sources import Task, tasks_of
from tests.crypto.conftest import make_commit


def test_a_shared_task_serves_the_classes_of_every_commit_of_it() -> None:
    """Label skew: two institutions commit task "icd" holding different classes of it; the
    composite answers over all of them (it kept only the last commit's before)."""
    alice, bob = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    members = (Member("alice", alice.public), Member("bob", bob.public))
    genesis = Genesis("net", members, 1, {"mode": "stack", "base": "ab" * 32}, "n")
    commits = [
        make_commit(alice, genesis, 0, task="icd", classes=("a", "b")),
        make_commit(bob, genesis, 0, task="heart", classes=("no", "yes")),
        make_commit(bob, genesis, 1, task="icd", classes=("b", "c")),
    ]
    assert tasks_of(commits) == (Task("icd", ("a", "b", "c")), Task("heart", ("no", "yes")))
