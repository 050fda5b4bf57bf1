#!/usr/bin/env python3
"""The five-host network of ``tests/node/e2e/test_netns.py`` as a scenario: a public relay,
two public members and two members behind their own NAT, in network namespaces on this
machine, every link delayed (25 ms per port each way), lossy (1 %) and rate-limited (20 Mbit/s);
each node told one address; commits from three institutions, a partition during two of them,
heal. Prints, and writes to ``--out``, the report: how each member reached the others, the time
from each commit to every node, the time from the heal to one digest, and the bound
(latency x hops + size / bandwidth). Needs root, iproute2 and iptables.

    sudo .venv/bin/python scripts/netns_network.py --out netns-report.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("netns-report.json"))
    args = parser.parse_args(argv)
    env = {**os.environ, "MEDFORGE_NETNS_REPORT": str(args.out.resolve())}
    test = "tests/node/e2e/test_netns.py"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", "-rs", test]
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    if code == 0 and args.out.exists():
        print(f"report written to {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
