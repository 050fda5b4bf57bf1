"""What happens when in a scenario: links at start, commits, partitions, churn and late
joiners. Every choice is drawn from the simulation's seeded RNG at
planning time, in a fixed order."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.sim.network import SimNode, Simulation


def plan(sim: Simulation) -> None:
    s = sim.s
    _plan_churn(sim)
    sim.at(0.0, sim.relink)
    authors = [n for n in sim.nodes if n.role == "author"]
    for k in range(s.commits):
        jitter = sim.rng.uniform(0, s.commit_interval / 2)
        sim.at(s.start + k * s.commit_interval + jitter, _commit, sim, authors[k % len(authors)], k)
    for p in s.partitions:
        sim.at(p.start, _split, sim, p.fraction)
        sim.at(p.end, _heal, sim)


def _commit(sim: Simulation, node: SimNode, k: int) -> None:
    sim.publish(node, k)


def _plan_churn(sim: Simulation) -> None:
    churn = sim.s.churn
    plain = [n for n in sim.nodes if n.role == "honest"]
    sim.rng.shuffle(plain)
    leaving = plain[: int(churn.fraction * len(plain))]
    late = plain[len(leaving) : len(leaving) + int(churn.late * len(plain))]
    for node in leaving:
        sim.at(churn.start, sim.set_online, node, False)
        sim.at(churn.start + churn.duration, sim.set_online, node, True)
    for node in late:
        sim.at(0.0, sim.set_online, node, False)  # before the links come up at 0.0
        sim.at(churn.late_at, sim.set_online, node, True)


def _split(sim: Simulation, fraction: float) -> None:
    order = [n.index for n in sim.nodes]
    sim.rng.shuffle(order)
    sim.side = set(order[: int(fraction * len(order))])
    sim.relink()


def _heal(sim: Simulation) -> None:
    sim.side = None
    sim.relink()
