#!/usr/bin/env python3
"""Benchmark the simulator: 1000 nodes, 200 commits with small adapters, one process.

Targets (issue 4): under 60 s wall on 2 cores; payload bytes received per node per blob at most
1.05x the blob's size; convergence time in virtual seconds reported against the lower bound
``diameter x latency + size / bandwidth``.

    .venv/bin/python scripts/bench_sim.py [--nodes 1000] [--commits 200] [--seed 1] [--out DIR]

Prints the figures, writes ``report.json`` / ``report.png`` under ``--out`` (default
bench-results/sim), exits 1 if the network did not converge or a blob was pulled twice.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from node.sim import Simulation, plan
from node.sim import report as reports
from node.sim.scenario import Scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench-results/sim"))
    args = parser.parse_args()
    scenario = Scenario(
        nodes=args.nodes,
        degree=4,
        commits=args.commits,
        authors=50,
        commit_interval=3.0,
        search_time=1.0,
        latency="uniform:0.02:0.1",
        bandwidth=10e6,
        adapter_bytes=64 * 1024,
        distilled_bytes=32 * 1024,
        config_bytes=512,
        duration=3.0 * args.commits + 120.0,
        sync_interval=30.0,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    sim = Simulation(plan(scenario, args.seed))
    sim.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = reports.build(sim)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(reports.to_json(result))
    reports.plot(result, args.out / "report.png")
    conv, prop, pay = result["convergence"], result["propagation"], result["payload"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rebases = conv["commits_signed"] - args.commits
    print(
        f"nodes {args.nodes}, commits {args.commits} (+{rebases} rebases signed, "
        f"{conv['commits_refused']} of them refused as stale), seed {args.seed}"
    )
    print(
        f"wall {wall:.1f} s (target < 60 s: {'met' if wall < 60 else 'MISSED'}), "
        f"cpu {cpu:.1f} s, peak RSS {peak:.0f} MiB"
    )
    print(reports.summary(result))
    print(
        f"convergence: every commit everywhere in median {prop['delay_median']} s, max "
        f"{prop['delay_max']} s (virtual), vs lower bound diameter x latency + size/bw = "
        f"{prop['bound_formula']} s; per-commit bound median {prop['bound_median']} s"
    )
    print(
        f"payload per node per blob: max {pay['max_ratio_per_blob']}x blob size "
        f"(target <= 1.05x: {'met' if pay['max_ratio_per_blob'] <= 1.05 else 'MISSED'})"
    )
    ok = conv["converged"] and pay["max_ratio_per_blob"] <= 1.05
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
