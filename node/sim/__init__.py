"""The network simulator: many real protocol cores on a seeded virtual network.

This package is the composition root: ``simulate(scenario, seed)`` plans the run
(``node.sim.schedule``: the plan is data), executes the plan (``node.sim.network``) and builds
the report (``node.sim.report``). The modules inside never import this package, only each
other, so they form no circle. ``node.cli.simulate_cmd`` is the command line around it.
"""

from __future__ import annotations

from typing import Any

from node.sim.network import Simulation
from node.sim.report import build
from node.sim.scenario import Scenario
from node.sim.schedule import Plan, plan


def simulate(scenario: Scenario, seed: int) -> dict[str, Any]:
    """The report of ``scenario`` run on ``seed``: a pure function of the two."""
    sim = Simulation(plan(scenario, seed))
    sim.run()
    return build(sim)


__all__ = ["Plan", "Scenario", "Simulation", "plan", "simulate"]
