"""The plan of a run, as data: the topology, who plays which role, and what happens when.

``plan(scenario, seed)`` makes a ``Plan``; ``network.Simulation`` executes one and plans
nothing. A plan is a pure function of the scenario and the seed.

Rules:

- One ``random.Random(seed)``, drawn from in a fixed order: the topology, the roles, the
  churning nodes, the commit times. The plan keeps the stream's state where planning left it
  (``rng_state``), and the run draws on from there (losses, a partition's sides when it starts,
  garbage bytes), so one seed is one stream and a seed replays the trace it always did.
- ``steps`` are in time order; steps at one time run in the order listed, and before anything
  the run schedules itself at that time.
- Adversaries cheat at ``ATTACK_AT`` seconds and again every ``REPEAT`` seconds, ``TIMES``
  times; what each cheat does is ``adversaries``'.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node.sim.scenario import ADVERSARY_KINDS, Scenario
from node.sim.topology import Edge, build

ATTACK_AT = 3.0
REPEAT = 20.0
TIMES = 3


@dataclass(frozen=True)
class Relink:
    """Bring up every link that may be up, take down every one that may not."""

    at: float


@dataclass(frozen=True)
class SetOnline:
    at: float
    node: int
    online: bool


@dataclass(frozen=True)
class Publish:
    """``node`` (an author) signs its ``k``-th adapter onto its tip."""

    at: float
    node: int
    k: int


@dataclass(frozen=True)
class Split:
    """The network splits in two: a random ``fraction`` of the nodes on one side."""

    at: float
    fraction: float


@dataclass(frozen=True)
class Heal:
    at: float


@dataclass(frozen=True)
class Attack:
    """``node`` (an adversary) cheats for the ``round``-th time."""

    at: float
    node: int
    round: int


Step = Relink | SetOnline | Publish | Split | Heal | Attack


@dataclass(frozen=True)
class Plan:
    scenario: Scenario
    seed: int
    latency: Mapping[Edge, float]  # undirected edges, sorted, with their one-way latency
    roles: tuple[str, ...]  # by node index
    steps: tuple[Step, ...]
    rng_state: tuple[Any, ...]  # ``random.Random.getstate()`` after planning


def plan(s: Scenario, seed: int) -> Plan:
    rng = random.Random(seed)
    latency = build(s, rng)
    roles = _roles(s, rng)
    steps: list[Step] = _churn(s, roles, rng)
    steps.append(Relink(0.0))
    steps += _commits(s, roles, rng)
    for p in s.partitions:
        steps += [Split(p.start, p.fraction), Heal(p.end)]
    steps += _attacks(roles)
    ordered = tuple(sorted(steps, key=lambda step: step.at))  # stable: ties keep their order
    return Plan(s, seed, latency, roles, ordered, rng.getstate())


def _roles(s: Scenario, rng: random.Random) -> tuple[str, ...]:
    order = list(range(s.nodes))
    rng.shuffle(order)
    roles = ["honest"] * s.nodes
    for i in order[: s.authors]:
        roles[i] = "author"
    rest = iter(order[s.authors :])
    for kind, count in sorted(s.adversaries.items()):
        for _ in range(count):
            roles[next(rest)] = kind
    return tuple(roles)


def _churn(s: Scenario, roles: tuple[str, ...], rng: random.Random) -> list[Step]:
    churn = s.churn
    plain = [i for i, role in enumerate(roles) if role == "honest"]
    rng.shuffle(plain)
    leaving = plain[: int(churn.fraction * len(plain))]
    late = plain[len(leaving) : len(leaving) + int(churn.late * len(plain))]
    steps: list[Step] = []
    for i in leaving:
        steps += [
            SetOnline(churn.start, i, False),
            SetOnline(churn.start + churn.duration, i, True),
        ]
    for i in late:  # offline before the links come up at 0.0
        steps += [SetOnline(0.0, i, False), SetOnline(churn.late_at, i, True)]
    return steps


def _commits(s: Scenario, roles: tuple[str, ...], rng: random.Random) -> list[Step]:
    authors = [i for i, role in enumerate(roles) if role == "author"]
    steps: list[Step] = []
    for k in range(s.commits):
        jitter = rng.uniform(0, s.commit_interval / 2)
        steps.append(
            Publish(s.start + k * s.commit_interval + jitter, authors[k % len(authors)], k)
        )
    return steps


def _attacks(roles: tuple[str, ...]) -> list[Step]:
    return [
        Attack(ATTACK_AT + k * REPEAT + i * 1e-3, i, k)
        for i, role in enumerate(roles)
        if role in ADVERSARY_KINDS
        for k in range(TIMES)
    ]
