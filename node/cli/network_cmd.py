"""`medforge network ...`, `medforge roster ...` and `medforge revoke`."""

from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path
from typing import Any

from crypto.identity import PublicKey
from crypto.records import Genesis, Member, Revocation, RosterUpdate, decode_record
from crypto.roster import Roster
from merge.base_shapes import BaseShapes, shapes_of
from merge.spec import MergeSpec
from node.cli import UserError
from node.cli.output import add_home, add_json, emit
from node.home import Home
from node.netspec import make_spec

MODES = ("fusion", "mixture", "stack")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    network = sub.add_parser("network", help="create, join or show a network").add_subparsers(
        dest="network_command", required=True
    )
    create = network.add_parser("create", help="write a genesis document (network id = its hash)")
    add_home(create)
    create.add_argument("--name", required=True, help="network name")
    create.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="NAME:KEYHEX|ID.json",
        help="a founding member (repeat); the creator is always included",
    )
    create.add_argument("--threshold", type=int, default=1, help="k of n for roster changes")
    create.add_argument("--mode", choices=MODES, default="stack", help="merge method")
    create.add_argument(
        "--base",
        required=True,
        metavar="FILE|FINGERPRINT",
        help="the base model: the JSON file `medforge fingerprint --out FILE` wrote "
        "(fingerprint + shape table), or a fingerprint, then --backend/--model are loaded "
        "to read the shape table and must match it",
    )
    create.add_argument(
        "--backend",
        choices=("text", "clip"),
        default=None,
        help="how members load the base model (default: the file's, else text)",
    )
    create.add_argument("--model", default=None, help="base model path or id")
    create.add_argument(
        "--spec", type=Path, help="JSON file merged over the spec (e.g. search settings, limits)"
    )
    create.add_argument("--out", type=Path, help="also write the genesis here")
    add_json(create)
    create.set_defaults(func=run_create)

    join = network.add_parser("join", help="make --home a member of the network in GENESIS")
    add_home(join)
    join.add_argument("genesis", type=Path)
    join.set_defaults(func=run_join)

    show = network.add_parser("show", help="network id, members, threshold, merge spec")
    add_home(show)
    add_json(show)
    show.set_defaults(func=run_show)

    _register_roster(sub)


def _register_roster(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    roster = sub.add_parser("roster", help="propose, co-sign and combine roster updates")
    cmds = roster.add_subparsers(dest="roster_command", required=True)
    propose = cmds.add_parser("propose", help="write a roster update signed by --home")
    add_home(propose)
    propose.add_argument("--op", choices=("add", "remove", "rotate", "threshold"), required=True)
    propose.add_argument("--epoch", type=int, required=True, help="the roster epoch it creates")
    propose.add_argument("--member", required=True, metavar="NAME:KEYHEX|ID.json")
    propose.add_argument("--new-key", help="rotate: the member's new public key (hex)")
    propose.add_argument(
        "--keep-through-seq",
        type=int,
        default=-1,
        help="remove/rotate: the old key's commits up to this seq stay valid",
    )
    propose.add_argument("--threshold", type=int, default=0)
    propose.add_argument("--out", type=Path, required=True)
    propose.set_defaults(func=run_propose)

    sign = cmds.add_parser("sign", help="add --home's signature to an update")
    add_home(sign)
    sign.add_argument("update", type=Path)
    sign.add_argument("--out", type=Path, required=True)
    sign.set_defaults(func=run_sign)

    combine = cmds.add_parser("combine", help="union of the signatures of copies of one update")
    combine.add_argument("updates", type=Path, nargs="+")
    combine.add_argument("--out", type=Path, required=True)
    combine.set_defaults(func=run_combine)

    revoke = sub.add_parser("revoke", help="revoke one of your commits, or your key from a seq on")
    add_home(revoke)
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--commit", help="commit id (hex) to revoke")
    target.add_argument("--from-seq", type=int, help="revoke --home's key from this seq on")
    revoke.add_argument("--reason", default="")
    revoke.add_argument("--out", type=Path, required=True)
    revoke.set_defaults(func=run_revoke)


def parse_member(text: str) -> Member:
    path = Path(text)
    if path.suffix == ".json" and path.exists():
        info: dict[str, Any] = json.loads(path.read_text())
        return Member(str(info["name"]), _key(str(info["public_key"])))
    name, sep, key = text.partition(":")
    if not sep:
        raise UserError(f"member {text!r}: expected NAME:KEYHEX or an id JSON file")
    return Member(name, _key(key))


def _key(text: str) -> PublicKey:
    try:
        return PublicKey(bytes.fromhex(text))
    except ValueError:
        raise UserError(f"{text!r} is not a hex public key") from None


def _base(args: argparse.Namespace) -> tuple[str, BaseShapes, str, str]:
    """(fingerprint, shape table, backend kind, model) that the genesis will name."""
    path = Path(args.base)
    if path.is_file():
        try:
            info = json.loads(path.read_text())
            shapes = BaseShapes.from_dict(info["shapes"])
            fingerprint = str(info["fingerprint"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not a `medforge fingerprint --out` file: {exc}") from None
        kind = args.backend or str(info.get("backend", "text"))
        return fingerprint, shapes, kind, args.model if args.model is not None else info["base"]
    from merge.backends import load_backend

    kind, model = args.backend or "text", args.model or ""
    backend = load_backend(kind, model or None)  # the shape table is read off the real base
    if backend.fingerprint != args.base:
        raise UserError(
            f"--base {args.base[:16]}… is not the fingerprint of {kind}:{model or 'default'} "
            f"({backend.fingerprint[:16]}…); pass the file `medforge fingerprint --out` wrote"
        )
    return backend.fingerprint, shapes_of(backend), kind, model


def run_create(args: argparse.Namespace) -> int:
    home = Home(Path(args.home))
    me = Member(home.config().name, home.identity().public)
    members = {m.key: m for m in map(parse_member, args.member)}
    members.setdefault(me.key, me)
    if not 1 <= args.threshold <= len(members):
        raise UserError(f"threshold must be between 1 and {len(members)}")
    fingerprint, shapes, kind, model = _base(args)
    spec = make_spec(args.mode, fingerprint, shapes, backend=kind, model=model)
    if args.spec:
        spec.update(json.loads(args.spec.read_text()))
        MergeSpec.from_dict(spec["merge"])  # refuse a malformed spec before anyone signs it
        BaseShapes.from_dict(spec["shapes"])
    genesis = Genesis(
        name=args.name,
        members=tuple(sorted(members.values(), key=lambda m: m.key)),
        threshold=args.threshold,
        spec=spec,
        nonce=secrets.token_hex(16),
    )
    home.join(genesis)
    if args.out:
        args.out.write_bytes(genesis.encode())
    _show(args, genesis, Roster.from_genesis(genesis))
    return 0


def run_join(args: argparse.Namespace) -> int:
    record = decode_record(args.genesis.read_bytes())
    if not isinstance(record, Genesis):
        raise UserError(f"{args.genesis} is not a genesis document")
    home = Home(Path(args.home))
    home.join(record)
    if home.identity().public not in {m.key for m in record.members}:
        print(
            "note: this institution is not a founding member; commits count once a roster "
            "update adds it"
        )
    print(f"joined network {record.name} ({record.network_id.hex()})")
    return 0


def run_show(args: argparse.Namespace) -> int:
    genesis = Home(Path(args.home)).genesis()
    _show(args, genesis, Roster.from_genesis(genesis))
    return 0


def _show(args: argparse.Namespace, genesis: Genesis, roster: Roster) -> None:
    members = [{"name": m.name, "public_key": m.key.hex()} for m in roster.members.values()]
    data = {
        "network_id": genesis.network_id.hex(),
        "name": genesis.name,
        "members": members,
        "threshold": roster.threshold,
        "spec": dict(genesis.spec),
    }
    lines = [
        f"network {genesis.name}  id {genesis.network_id.hex()}",
        f"threshold {roster.threshold} of {len(members)}",
        *(f"  {m['name']:<20} {m['public_key']}" for m in members),
        f"spec {json.dumps(dict(genesis.spec), sort_keys=True)}",
    ]
    emit(args, data, "\n".join(lines))


def _read_update(path: Path) -> RosterUpdate:
    record = decode_record(path.read_bytes())
    if not isinstance(record, RosterUpdate):
        raise UserError(f"{path} is not a roster update")
    return record


def run_propose(args: argparse.Namespace) -> int:
    home = Home(Path(args.home))
    member = parse_member(args.member)
    update = RosterUpdate(
        network=home.genesis().network_id,
        epoch=args.epoch,
        op=args.op,
        name=member.name,
        key=member.key,
        new_key=_key(args.new_key) if args.new_key else None,
        keep_through_seq=args.keep_through_seq,
        threshold=args.threshold,
    ).signed_by(home.identity())
    decode_record(update.encode())  # the same checks every peer will run
    args.out.write_bytes(update.encode())
    print(f"roster update {update.id.hex()[:16]} ({args.op} {member.name}) signed, 1 signature")
    return 0


def run_sign(args: argparse.Namespace) -> int:
    home = Home(Path(args.home))
    update = _read_update(args.update)
    if update.network != home.genesis().network_id:
        raise UserError("this update belongs to another network")
    signed = update.signed_by(home.identity())
    args.out.write_bytes(signed.encode())
    print(f"roster update {signed.id.hex()[:16]}: {len(signed.sigs)} signature(s)")
    return 0


def run_combine(args: argparse.Namespace) -> int:
    updates = [_read_update(p) for p in args.updates]
    combined = updates[0]
    for other in updates[1:]:
        combined = combined.combined(other)
    args.out.write_bytes(combined.encode())
    print(f"roster update {combined.id.hex()[:16]}: {len(combined.sigs)} signature(s)")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    home = Home(Path(args.home))
    identity = home.identity()
    revocation = Revocation(
        network=home.genesis().network_id,
        key=identity.public,
        commit=bytes.fromhex(args.commit) if args.commit else None,
        from_seq=args.from_seq,
        reason=args.reason,
    ).signed_by(identity)
    args.out.write_bytes(revocation.encode())
    print(f"revocation {revocation.id.hex()[:16]} written to {args.out}")
    return 0
