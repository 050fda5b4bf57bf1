"""`medforge demo`: a local network of three hospitals on real offline data."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = sub.add_parser(
        "demo",
        help="three hospitals, three real nodes, one composite (the main job)",
        description="Create a network of three institutions on 127.0.0.1, train and distil a "
        "plugin at each on its own slice of ICD-10-CM, commit through the nodes, watch them "
        "converge, and compare the composite with each single plugin and the base.",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-run"),
        help="where the homes, stores and results go (default ./demo-run)",
    )
    demo.add_argument("--quick", action="store_true", help="small data and few steps (CI)")
    demo.add_argument("--mode", choices=("stack", "fusion", "mixture"), default="stack")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--independent",
        action="store_true",
        help="train each plugin on its own data only (the paper); default: continual on the "
        "network's composite with replay",
    )
    again = demo.add_mutually_exclusive_group()
    again.add_argument("--fresh", action="store_true", help="delete --workdir and start over")
    again.add_argument(
        "--resume",
        action="store_true",
        help="reuse --workdir: keep identities, plugins and commits (default)",
    )
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from node.cli.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            workdir=args.workdir,
            quick=args.quick,
            mode=args.mode,
            seed=args.seed,
            fresh=args.fresh,
            independent=args.independent,
        )
    )
    return 0
