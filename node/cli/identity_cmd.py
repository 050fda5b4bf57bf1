"""`medforge init` and `medforge id`."""

from __future__ import annotations

import argparse
from pathlib import Path

from node.cli.output import add_home, add_json, emit
from node.shell.home import PASSPHRASE_ENV, Home


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    init = sub.add_parser(
        "init",
        help="create an institution identity and home",
        description=f"Create an Ed25519 identity (mode 0600; encrypted when ${PASSPHRASE_ENV} "
        "is set) and a config file in --home. Refuses to overwrite an existing identity.",
    )
    add_home(init)
    init.add_argument("--name", required=True, help="institution name, e.g. st-marys")
    add_json(init)
    init.set_defaults(func=run_init)

    ident = sub.add_parser("id", help="print name, public key and libp2p peer id")
    add_home(ident)
    add_json(ident)
    ident.set_defaults(func=run_id)


def _describe(home: Home) -> dict[str, str]:
    public = home.identity().public
    return {
        "name": home.config().name,
        "public_key": public.hex(),
        "peer_id": public.peer_id(),
        "home": str(home.path),
    }


def run_init(args: argparse.Namespace) -> int:
    home = Home.init(Path(args.home), args.name)
    info = _describe(home)
    emit(args, info, f"created {info['name']} in {home.path}\npublic key {info['public_key']}")
    return 0


def run_id(args: argparse.Namespace) -> int:
    info = _describe(Home(Path(args.home)))
    human = f"{info['name']}\npublic key {info['public_key']}\npeer id    {info['peer_id']}"
    emit(args, info, human)
    return 0
