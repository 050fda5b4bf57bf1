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

Every cheat happens at ``ATTACK_AT`` seconds and again every ``REPEAT`` seconds, a few times.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from crypto import canonical
from crypto.records import Commit, Signature
from node import messages
from node.order import root_item

if TYPE_CHECKING:
    from node.sim.network import SimNode, Simulation

ATTACK_AT = 3.0
REPEAT = 20.0
TIMES = 3
BAD_ADAPTER_SEED = 900_000


def plan(sim: Simulation) -> None:
    for node in sim.nodes:
        attack = _ATTACKS.get(node.role)
        if attack is None:
            continue
        for k in range(TIMES):
            sim.at(ATTACK_AT + k * REPEAT + node.index * 1e-3, attack, sim, node, k)


def _send_to(sim: Simulation, node: SimNode, data: bytes, neighbours: list[int]) -> None:
    for v in neighbours:
        sim.transmit(node.index, v, data)


def _records(*commits: Commit) -> bytes:
    return messages.encode(messages.Records(tuple(c.encode() for c in commits)))


def _forged(sim: Simulation, node: SimNode, k: int) -> None:
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
    _send_to(sim, node, _records(forged), sim.adj[node.index])


def _equivocate(sim: Simulation, node: SimNode, k: int) -> None:
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
    _send_to(sim, node, _records(twins[0]), sim.adj[node.index][:half])
    _send_to(sim, node, _records(twins[1]), sim.adj[node.index][half:])


def _invalid(sim: Simulation, node: SimNode, k: int) -> None:
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
    _send_to(sim, node, _records(commit), sim.adj[node.index])


def _oversized(sim: Simulation, node: SimNode, k: int) -> None:
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
    _send_to(sim, node, _records(commit), sim.adj[node.index])


def _replay(sim: Simulation, node: SimNode, k: int) -> None:
    held = list(node.core.records())
    for data in messages.chunked_records(held):
        _send_to(sim, node, data, sim.adj[node.index])
    if k == TIMES - 1:
        _send_to(sim, node, _other_network(sim), sim.adj[node.index])


def _other_network(sim: Simulation) -> bytes:
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
        base="5e" * 32,
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


def _garbage(sim: Simulation, node: SimNode, k: int) -> None:
    data = bytes(sim.rng.getrandbits(8) for _ in range(1 + sim.rng.randrange(200)))
    _send_to(sim, node, data, sim.adj[node.index])


def _withhold(sim: Simulation, node: SimNode, k: int) -> None:
    """Nothing to do at a time: the shell refuses every blob request (see network._fetch)."""


_ATTACKS = {
    "forged": _forged,
    "equivocate": _equivocate,
    "invalid": _invalid,
    "oversized": _oversized,
    "replay": _replay,
    "garbage": _garbage,
    "withhold": _withhold,
}
