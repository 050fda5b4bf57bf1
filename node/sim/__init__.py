"""The network simulator: many real protocol cores on a seeded virtual network.

This package is the composition root: ``simulate(scenario, seed)`` plans the run
(``node.sim.schedule``: the plan is data), executes the plan (``node.sim.network``) and builds
the report (``node.sim.report``). The modules inside never import this package, only each
other, so they form no circle. ``node.cli.simulate_cmd`` is the command line around it.

Importing the package costs nothing: the names below load their modules (the simulation pulls
in torch through the fold) when first used, so ``node.sim.scenario`` and ``node.sim.schema``
serve ``medforge --help`` without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.sim.network import Simulation
    from node.sim.scenario import Scenario
    from node.sim.schedule import Plan, plan

_LAZY = {
    "Plan": "node.sim.schedule",
    "plan": "node.sim.schedule",
    "Scenario": "node.sim.scenario",
    "Simulation": "node.sim.network",
}


def simulate(scenario: Scenario, seed: int) -> dict[str, Any]:
    """The report of ``scenario`` run on ``seed``: a pure function of the two."""
    from node.sim.network import Simulation
    from node.sim.report import build
    from node.sim.schedule import plan

    sim = Simulation(plan(scenario, seed))
    sim.run()
    return build(sim)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Plan", "Scenario", "Simulation", "plan", "simulate"]
