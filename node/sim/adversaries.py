"""Misbehaving nodes. Each runs the real core (so it relays like anyone) behind a shell that
cheats in one way; honest cores must never crash and never let the cheat into their composite.

- ``forged``: sends commits that name a member as author but carry the adversary's signature.
- ``equivocate`` (a member): signs two different commits with one sequence number and sends
  one to each half of its neighbours (serving both sets of blobs).
- ``invalid`` (a member): publishes a commit whose adapter blob fails validation (NaN).
- ``oversized`` (a member): sends a commit declaring an adapter bigger than the genesis limit.
- ``replay``: re-sends every record it holds, again and again, then one signed for another
  network.
- ``garbage``: sends random bytes.
- ``withhold``: relays records but never answers a blob request.

When each cheats is the plan's (``schedule.Attack``). ``cheat`` is what one does at such a time:
it reads the running simulation through ``Stage`` (so this module needs no simulation to import)
and returns what to send where; the simulation sends it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from crypto import canonical
from crypto.records import Commit, Signature
from node.core import messages
from node.core.order import root_item
from node.forge.synthetic import BASE
from node.sim.schedule import TIMES
from node.sim.simnode import SimNode
from node.sim.world import World

BAD_ADAPTER_SEED = 900_000

Sends = list[tuple[bytes, Sequence[int]]]  # (data, neighbours to send it to), in this order


class Stage(Protocol):
    """What a cheat may read of the running simulation (``network.Simulation`` is one)."""

    @property
    def world(self) -> World: ...
    @property
    def rng(self) -> random.Random: ...
    @property
    def nodes(self) -> Sequence[SimNode]: ...
    @property
    def adj(self) -> Sequence[Sequence[int]]: ...


def cheat(stage: Stage, node: SimNode, k: int) -> Sends:
    """What adversary ``node`` sends in its ``k``-th round."""
    return _ATTACKS[node.role](stage, node, k)


def _records(*commits: Commit) -> bytes:
    return messages.encode(messages.Records(tuple(c.encode() for c in commits)))


def _forged(sim: Stage, node: SimNode, k: int) -> Sends:
    assert node.identity is not None
    victim = next(n for n in sim.nodes if n.role == "author")
    assert victim.identity is not None
    real = sim.world.make_commit(
        victim.identity, 10_000 + k, victim.core.tip, "forged", adapter_seed=BAD_ADAPTER_SEED + k
    )
    sim.world.bad.add(real.id)
    forged = replace(
        real,
        objective={"loss": 0.0},
        sigs=(Signature(victim.identity.public, node.identity.sign(real.signing_bytes())),),
    )
    sim.world.bad.add(forged.id)
    return [(_records(forged), sim.adj[node.index])]


def _equivocate(sim: Stage, node: SimNode, k: int) -> Sends:
    assert node.identity is not None
    tip = node.core.tip
    twins = [
        sim.world.make_commit(
            node.identity,
            node.seq,
            tip,
            f"twin-{k}-{side}",
            adapter_seed=BAD_ADAPTER_SEED + 100 + 2 * k + side,
        )
        for side in (0, 1)
    ]
    node.seq += 1
    sim.world.twins[twins[0].id], sim.world.twins[twins[1].id] = twins[1].id, twins[0].id
    for twin in twins:
        node.blobs.update(ref.sha256 for ref in twin.blobs.values())
    half = len(sim.adj[node.index]) // 2
    return [
        (_records(twins[0]), sim.adj[node.index][:half]),
        (_records(twins[1]), sim.adj[node.index][half:]),
    ]


def _invalid(sim: Stage, node: SimNode, k: int) -> Sends:
    assert node.identity is not None
    commit = sim.world.make_commit(
        node.identity,
        node.seq,
        node.core.tip,
        f"nan-{k}",
        adapter_seed=BAD_ADAPTER_SEED + 200 + k,
        valid=False,
    )
    node.seq += 1
    sim.world.bad.add(commit.id)
    node.blobs.update(ref.sha256 for ref in commit.blobs.values())
    return [(_records(commit), sim.adj[node.index])]


def _oversized(sim: Stage, node: SimNode, k: int) -> Sends:
    assert node.identity is not None
    commit = sim.world.make_commit(
        node.identity,
        node.seq,
        node.core.tip,
        f"huge-{k}",
        adapter_seed=BAD_ADAPTER_SEED + 300 + k,
        declared=1 << 40,
    )
    node.seq += 1
    sim.world.bad.add(commit.id)
    return [(_records(commit), sim.adj[node.index])]


def _replay(sim: Stage, node: SimNode, k: int) -> Sends:
    held = list(node.core.records())
    sends: Sends = [(data, sim.adj[node.index]) for data in messages.chunked_records(held)]
    if k == TIMES - 1:
        sends.append((_other_network(sim), sim.adj[node.index]))
    return sends


def _other_network(sim: Stage) -> bytes:
    """A valid commit of another network: its signature must not carry over."""
    author = next(n for n in sim.nodes if n.role == "author")
    assert author.identity is not None
    other = canonical.sha256(b"another network")
    commit = Commit.create(
        author.identity,
        network=other,
        seq=0,
        task="elsewhere",
        classes=("a",),
        base=BASE,
        blobs=sim.world.make_commit(
            author.identity,
            20_000,
            root_item(sim.world.network),
            "template",
            adapter_seed=BAD_ADAPTER_SEED + 400,
        ).blobs,
        parent=root_item(other),
        coeffs=(1.0, 1.0),
        objective={},
    )
    return _records(commit)


def _garbage(sim: Stage, node: SimNode, k: int) -> Sends:
    data = bytes(sim.rng.getrandbits(8) for _ in range(1 + sim.rng.randrange(200)))
    return [(data, sim.adj[node.index])]


def _withhold(sim: Stage, node: SimNode, k: int) -> Sends:
    """Nothing to send: the shell refuses every blob request (see ``network``)."""
    return []


_ATTACKS: dict[str, Callable[[Stage, SimNode, int], Sends]] = {
    "forged": _forged,
    "equivocate": _equivocate,
    "invalid": _invalid,
    "oversized": _oversized,
    "replay": _replay,
    "garbage": _garbage,
    "withhold": _withhold,
}
