"""`medforge doctor --home DIR [--json] [--no-model]`: check a home before and while its node
runs. One line per check (ok, warn, FAIL, skip) with the reason and what to do.

Exit status: 0 no check failed (warnings allowed), 1 a check failed, 2 a usage error (no
such home: ``error: HomeError: ...``). The checks are ``node.cli.doctor``'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from node.cli.output import add_home, add_json, emit
from node.shell.home import Home
from node.shell.netcheck import DIAL_TIMEOUT


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    doctor = sub.add_parser(
        "doctor",
        help="check a home: key permissions, config, genesis and roster, ports, peers, "
        "base model, store, disk, the running node",
        description="Check a home before and while its node runs: identity.pem permissions "
        "and passphrase, config.toml, the listen port, each bootstrap (and relay) peer (does "
        "a libp2p node answer there?), the genesis and this identity's place in the roster "
        "in force, the base model and its fingerprint, the store (rehashed read-only, as "
        "`store check`), free disk, and whether a node answers on the control socket. "
        "Writes nothing. Exit 0 no check failed, 1 a check failed, 2 usage error.",
    )
    add_home(doctor)
    doctor.add_argument(
        "--no-model",
        action="store_true",
        help="do not load the base model to check its fingerprint (its presence is checked)",
    )
    doctor.add_argument(
        "--dial-timeout",
        type=float,
        default=DIAL_TIMEOUT,
        metavar="S",
        help="seconds to probe each peer: TCP connect and libp2p's answer "
        f"(default {DIAL_TIMEOUT:g})",
    )
    add_json(doctor)
    doctor.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    from node.cli.doctor import diagnose

    report = diagnose(
        Home(Path(args.home)), model=not args.no_model, dial_timeout=args.dial_timeout
    )
    emit(args, report.as_dict(), report.render())
    return 0 if report.ok else 1
