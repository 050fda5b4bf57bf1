"""The network simulator: many real protocol cores on a seeded virtual network.

``simulate(scenario, seed)`` runs one scenario and returns its report (``node.sim.report``);
``node.cli.simulate_cmd`` is the command line around it.
"""

from __future__ import annotations

from typing import Any

from node.sim.network import Simulation
from node.sim.report import build
from node.sim.scenario import Scenario


def simulate(scenario: Scenario, seed: int) -> dict[str, Any]:
    sim = Simulation(scenario, seed)
    sim.run()
    return build(sim)


__all__ = ["Scenario", "Simulation", "simulate"]
