"""`medforge simulate`: run a network scenario on the simulator and report.

The scenario comes from ``--scenario FILE.toml`` (see ``node.sim.scenario``), and options given
on the command line override it. Writes ``report.json`` and ``report.png`` under ``--out`` and
prints a short summary (or the JSON with ``--json``). Exit 0 when every online honest node
converged, 1 when not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from node.errors import ScenarioError

# option name -> (type, help); each overrides the scenario key of the same name
_OPTIONS: dict[str, tuple[type, str]] = {
    "nodes": (int, "number of nodes"),
    "topology": (str, "random-regular | small-world | line | star | file"),
    "topology_file": (str, "edge list for --topology file: 'a b [latency_s]' per line"),
    "degree": (int, "links per node (random-regular, small-world)"),
    "latency": (str, "per-link latency: fixed:X | uniform:A:B | lognormal:MU:SIGMA (s)"),
    "loss": (float, "probability that a message or transfer is lost"),
    "bandwidth": (float, "bytes per second per link direction"),
    "mode": (str, "merge mode: fusion | stack | mixture"),
    "commits": (int, "commits made by the authors"),
    "authors": (int, "nodes that make commits"),
    "commit_interval": (float, "virtual seconds between commits"),
    "duration": (float, "virtual seconds simulated"),
    "sync_interval": (float, "anti-entropy period of every node (s)"),
}


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="simulate a network of nodes on one machine",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--scenario", type=Path, help="scenario TOML file")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", type=Path, default=Path("sim-out"), help="report directory")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    for name, (kind, text) in _OPTIONS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=text)
    parser.set_defaults(func=run)


def scenario_from(args: argparse.Namespace) -> Any:
    from node.sim.scenario import Scenario, from_mapping, load

    base = load(args.scenario) if args.scenario else Scenario()
    overrides = {k: getattr(args, k) for k in _OPTIONS if getattr(args, k, None) is not None}
    return from_mapping(overrides, base)


def run(args: argparse.Namespace) -> int:
    from node.sim import report as reports
    from node.sim import simulate

    try:
        scenario = scenario_from(args)
    except (ScenarioError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = simulate(scenario, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(reports.to_json(result))
    reports.plot(result, args.out / "report.png")
    print(reports.to_json(result) if args.json else reports.summary(result))
    if not args.json:
        print(f"wrote {args.out / 'report.json'} and {args.out / 'report.png'}")
    return 0 if result["convergence"]["converged"] else 1
