"""`medforge simulate`: run a network scenario on the simulator and report.

The scenario comes from --scenario FILE.toml (its keys are listed below and in
docs/simulator.md); options given on the command line override it. Writes report.json and
report.png under --out and prints a short summary (or the JSON with --json). --sweep
KEY=V1,V2,... (repeat it for a grid) runs the scenario once per value (per combination), on
--seeds N seeds from --seed, and writes the comparison to sweep.md, sweep.json and sweep.png
instead, printing the table. Exit 0 when every run converged (every online honest node on one
composite), 1 when one did not, 2 for a bad scenario, option or sweep.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from node.errors import ScenarioError

# scenario keys that have an option of their own (type and help from node.sim.schema)
_OPTIONS = (
    "nodes",
    "topology",
    "topology_file",
    "degree",
    "latency",
    "loss",
    "bandwidth",
    "mode",
    "commits",
    "authors",
    "commit_interval",
    "duration",
    "sync_interval",
)


def register(subparsers: Any) -> None:
    from node.sim import schema

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="simulate a network of nodes on one machine",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog=schema.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", type=Path, help="scenario TOML file (keys below)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--out", type=Path, default=Path("sim-out"), help="report directory (default sim-out)"
    )
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="run once per value of a scenario key (churn.fraction, adversaries.garbage ... "
        "for keys in tables); repeat for a grid of every combination",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="run each value of --sweep (or alone, the scenario) on the N seeds from --seed "
        "on, and compare them (default 1)",
    )
    docs = {k.name: k.doc for k in schema.sections()[0][1]}
    types = schema.scalars()
    for name in _OPTIONS:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=types[name], help=docs[name])
    parser.set_defaults(func=run)


def scenario_from(args: argparse.Namespace) -> Any:
    from node.sim.scenario import Scenario, from_mapping, load

    base = load(args.scenario) if args.scenario else Scenario()
    overrides = {k: getattr(args, k) for k in _OPTIONS if getattr(args, k, None) is not None}
    return from_mapping(overrides, base)


def run(args: argparse.Namespace) -> int:
    """Raises ``ScenarioError`` (exit 2) for a bad scenario, option or sweep."""
    scenario = scenario_from(args)
    if args.sweep or args.seeds != 1:
        return _sweep(args, scenario)
    from node.sim import report as reports
    from node.sim import simulate

    result = simulate(scenario, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(reports.to_json(result))
    reports.plot(result, args.out / "report.png")
    print(reports.to_json(result) if args.json else reports.summary(result))
    if not args.json:
        print(f"wrote {args.out / 'report.json'} and {args.out / 'report.png'}")
    return 0 if result["convergence"]["converged"] else 1


def _sweep(args: argparse.Namespace, scenario: Any) -> int:
    from node.sim import report as reports
    from node.sim import sweep

    if args.seeds < 1:
        raise ScenarioError(f"--seeds: at least 1, got {args.seeds}")
    axes = [sweep.parse_axis(text) for text in args.sweep]
    result = sweep.run(scenario, axes, range(args.seed, args.seed + args.seeds))
    table = sweep.table(result)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = [args.out / name for name in ("sweep.md", "sweep.json", "sweep.png")]
    paths[0].write_text(table + "\n")
    paths[1].write_text(reports.to_json(result))
    sweep.plot(result, paths[2])
    print(reports.to_json(result) if args.json else table)
    if not args.json:
        print(f"wrote {', '.join(map(str, paths))}")
    converged = all(run["converged"] for row in result["rows"] for run in row["runs"])
    return 0 if converged else 1
