"""`medforge network ...`, `medforge roster ...` and `medforge revoke`."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto.errors import CryptoError
from crypto.identity import PublicKey
from crypto.records import Commit, Genesis, Member, Revocation, RosterUpdate, decode_record
from crypto.roster import Roster
from merge.base_shapes import BaseShapes, shapes_of
from merge.groups import GROUPINGS
from merge.spec import COMPACTIONS, MIXTURE_SEARCHES
from node.cli.output import add_home, add_json, emit, terminal_safe
from node.errors import ControlError, NodeNotRunning, UsageError
from node.forge.netspec import check_spec, is_fingerprint, make_spec, merge_spec
from node.shell.control import call
from node.shell.home import Home

if TYPE_CHECKING:  # torch loads only when --base names a model to load
    from merge.pipeline.backends.base import DualEncoder

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
        "--groups",
        choices=GROUPINGS,
        default="none",
        help="per-module coefficients: one pair per transformer layer or per target module "
        "name (fusion/stack; default none: one pair per commit)",
    )
    create.add_argument(
        "--mixture-search",
        choices=MIXTURE_SEARCHES,
        default=None,
        help="mixture: how an author searches its commit's coefficients: its share of a "
        "convex mixture, pulled towards the uniform share (shares; the default for mixture) "
        "or the paper's two coefficients (paper; the only choice for fusion and stack)",
    )
    create.add_argument(
        "--compaction",
        choices=COMPACTIONS,
        default=None,
        help="stack: turn a module into its dense ΔW once its stacked factors cost as much "
        "(auto; the default for stack, so the composite stops growing) or never (off; the "
        "default and the only choice for fusion and mixture)",
    )
    create.add_argument(
        "--compact-rank",
        type=int,
        default=0,
        metavar="N",
        help="with --compaction auto: compact once a module's rank exceeds N (default 0: at "
        "the crossover r·(out+in) >= out·in)",
    )
    _add_base_args(create)
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


def _add_base_args(create: argparse.ArgumentParser) -> None:
    """The base model, as `medforge train|distill|fingerprint|evaluate` name it: ``--base`` is
    a model path or id everywhere. The pre-issue-15 spellings (``--base FILE``, ``--base
    FINGERPRINT [--model PATH]``, ``--model PATH``) still work, with a warning (``_legacy``)."""
    create.add_argument(
        "--base",
        default=None,
        metavar="PATH|ID",
        help="the base model (a directory, or an id cached offline; text default: the shipped "
        "MiniLM): loaded here to compute its fingerprint and shape table, and recorded in the "
        "genesis as the model members load. With --base-file: only recorded, not loaded",
    )
    create.add_argument(
        "--base-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="instead of loading the base (air-gapped founders): the JSON file `medforge "
        "fingerprint --out FILE` wrote (fingerprint, shape table, backend, model)",
    )
    create.add_argument(
        "--backend",
        choices=("text", "clip"),
        default=None,
        help="how members load the base model (default: the --base-file's, else text)",
    )
    create.add_argument("--model", default=None, help=argparse.SUPPRESS)  # old name of --base


def _register_roster(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    roster = sub.add_parser(
        "roster", help="propose roster updates; co-sign and combine updates and revocations"
    )
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
    add_json(propose)
    propose.set_defaults(func=run_propose)

    sign = cmds.add_parser("sign", help="add --home's signature to a roster update or a revocation")
    add_home(sign)
    sign.add_argument("record", type=Path, help="a file from `roster propose` or `revoke`")
    sign.add_argument("--out", type=Path, required=True)
    add_json(sign)
    sign.set_defaults(func=run_sign)

    combine = cmds.add_parser(
        "combine",
        help="union of the signatures of copies of one roster update or one revocation",
    )
    combine.add_argument("records", type=Path, nargs="+", help="copies of one record")
    combine.add_argument("--out", type=Path, required=True)
    add_home(combine, required=False)  # only to say whether the threshold is met
    add_json(combine)
    combine.set_defaults(func=run_combine)

    revoke = sub.add_parser(
        "revoke",
        help="revoke a commit (yours alone, anyone's with the threshold), or a key from a seq on",
    )
    add_home(revoke)
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--commit", help="commit id (hex) to revoke")
    target.add_argument(
        "--from-seq", type=int, help="revoke a key (--key, default --home's) from this seq on"
    )
    revoke.add_argument("--key", help="with --from-seq: the public key (hex) to revoke")
    revoke.add_argument("--reason", default="")
    revoke.add_argument("--out", type=Path, required=True)
    add_json(revoke)
    revoke.set_defaults(func=run_revoke)


def parse_member(text: str) -> Member:
    path = Path(text)
    if path.suffix == ".json" and path.exists():
        info: dict[str, Any] = json.loads(path.read_text())
        return Member(str(info["name"]), _key(str(info["public_key"])))
    name, sep, key = text.partition(":")
    if not sep:
        raise UsageError(f"member {text!r}: expected NAME:KEYHEX or an id JSON file")
    return Member(name, _key(key))


def _key(text: str) -> PublicKey:
    try:
        return PublicKey(bytes.fromhex(text))
    except ValueError as exc:
        raise UsageError(f"{text!r} is not a hex public key") from exc


def _base(args: argparse.Namespace) -> tuple[str, BaseShapes, str, str]:
    """(fingerprint, shape table, backend kind, model) that the genesis will name: read off
    the model --base names, loaded here, or off the --base-file without loading anything."""
    model, file, expect = _legacy(args)
    if file is not None:
        return _from_file(file, args.backend, model)
    kind = args.backend or "text"
    backend = _load(kind, model)
    if expect is not None and backend.fingerprint != expect:
        raise UsageError(
            f"fingerprint {expect[:16]}… is not the one of {kind}:{model or 'default'} "
            f"({backend.fingerprint[:16]}…); name the model with --base PATH alone"
        )
    return backend.fingerprint, shapes_of(backend), kind, model or ""


def _legacy(args: argparse.Namespace) -> tuple[str | None, Path | None, str | None]:
    """(the model --base names, the --base-file, a fingerprint the model must have), read
    from the spellings before issue 15 too, each with a warning: ``--base FILE`` (now
    --base-file), ``--base FINGERPRINT [--model PATH]`` and ``--model PATH`` (now --base)."""
    base, file = args.base, args.base_file
    if args.model is not None:
        if file is not None:
            raise UsageError("--model is the old name of --base: pass --base-file FILE --base PATH")
        if base is None:
            _deprecated("--model PATH", "--base PATH")
            return args.model, None, None
        if Path(base).is_file():
            _deprecated("--base FILE --model PATH", "--base-file FILE --base PATH")
            return args.model, Path(base), None
        _deprecated("--base FINGERPRINT --model PATH", "--base PATH (its fingerprint is computed)")
        return args.model, None, _fingerprint(base, "--base")
    if base is None or file is not None:
        return base, file, None
    if Path(base).is_file():
        _deprecated("--base FILE", "--base-file FILE")
        return None, Path(base), None
    if is_fingerprint(base) and not Path(base).exists():
        _deprecated("--base FINGERPRINT", "--base PATH (its fingerprint is computed)")
        return None, None, base
    return base, None, None


def _deprecated(old: str, new: str) -> None:
    print(
        f"warning: `network create {old}` is deprecated, use {new}: --base names the base "
        "model in every command",
        file=sys.stderr,
    )


def _fingerprint(text: object, where: str) -> str:
    """``text`` if it is a base fingerprint, else the error saying what one is."""
    if not is_fingerprint(text):
        raise UsageError(
            f"{where} {text!r} is not a base fingerprint: 64 hex characters (0-9a-f), as "
            "`medforge fingerprint` prints"
        )
    return str(text)


def _from_file(path: Path, kind: str | None, model: str | None) -> tuple[str, BaseShapes, str, str]:
    """What `medforge fingerprint --out` wrote; ``kind``/``model`` given override the file's."""
    try:
        info = json.loads(path.read_text())
        shapes = BaseShapes.from_dict(info["shapes"])
        fingerprint = _fingerprint(info["fingerprint"], f"{path}: fingerprint")
        recorded = model if model is not None else str(info.get("base", ""))
        return fingerprint, shapes, kind or str(info.get("backend", "text")), recorded
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a `medforge fingerprint --out` file: {exc}") from exc


def _load(kind: str, model: str | None) -> DualEncoder:
    from merge.pipeline.backends import load_backend
    from merge.pipeline.errors import UnsupportedBaseError

    try:
        return load_backend(kind, model or None)  # the shape table is read off the real base
    except UnsupportedBaseError as exc:
        if not model or Path(model).exists():
            raise
        raise UsageError(
            f"--base {model!r} is neither a model directory nor a model id cached here ({exc}); "
            "a founder with only the fingerprint file passes --base-file FILE"
        ) from exc


def run_create(args: argparse.Namespace) -> int:
    home = Home(Path(args.home))
    me = Member(home.config().name, home.identity().public)
    members = {m.key: m for m in map(parse_member, args.member)}
    members.setdefault(me.key, me)
    if not 1 <= args.threshold <= len(members):
        raise UsageError(f"threshold must be between 1 and {len(members)}")
    fingerprint, shapes, kind, model = _base(args)
    spec = make_spec(
        args.mode,
        fingerprint,
        shapes,
        backend=kind,
        model=model,
        groups=args.groups,
        compaction=_compaction(args),
        compact_rank=args.compact_rank,
        mixture_search=_mixture_search(args),
    )
    if args.spec:
        spec.update(json.loads(args.spec.read_text()))
    # Refuse a malformed spec (or module groups no commit could name) before anyone signs it.
    check_spec(spec)
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
    _show(args, genesis, Roster.from_genesis(genesis), source="genesis")
    return 0


def _compaction(args: argparse.Namespace) -> str:
    """``--compaction``, or its default: new stack networks compact, other modes cannot."""
    if args.compaction is not None:
        return str(args.compaction)
    return "auto" if args.mode == "stack" else "off"


def _mixture_search(args: argparse.Namespace) -> str:
    """``--mixture-search``, or its default: new mixture networks search shares (measured in
    scripts/bench_forge.py, rows Mixture and Mixture (shares)); other modes have no choice."""
    if args.mixture_search is not None:
        return str(args.mixture_search)
    return "shares" if args.mode == "mixture" else "paper"


def run_join(args: argparse.Namespace) -> int:
    record = decode_record(args.genesis.read_bytes())
    if not isinstance(record, Genesis):
        raise UsageError(f"{args.genesis} is not a genesis document")
    home = Home(Path(args.home))
    home.join(record)
    if home.identity().public not in {m.key for m in record.members}:
        print(
            "note: this institution is not a founding member; commits count once a roster "
            "update adds it"
        )
    # the name is the genesis author's choice, like the names `log` escapes
    print(terminal_safe(f"joined network {record.name} ({record.network_id.hex()})"))
    return 0


def run_show(args: argparse.Namespace) -> int:
    """The roster in force when the home's node runs (it holds the roster updates), else the
    genesis roster, and says which."""
    home = Home(Path(args.home))
    genesis = home.genesis()
    try:
        answer = call(home.control_path, "roster", timeout=10)
    except NodeNotRunning:
        _show(args, genesis, Roster.from_genesis(genesis), source="genesis (no node running)")
        return 0
    records = [decode_record(bytes.fromhex(r)) for r in answer["records"]]
    _show(args, genesis, Roster.from_records(genesis, records), source="in force (node)")
    return 0


def _show(args: argparse.Namespace, genesis: Genesis, roster: Roster, source: str) -> None:
    members = [{"name": m.name, "public_key": m.key.hex()} for m in roster.members.values()]
    data = {
        "network_id": genesis.network_id.hex(),
        "name": genesis.name,
        "members": members,
        "threshold": roster.threshold,
        "epoch": roster.epoch,
        "roster_source": source,
        "spec": dict(genesis.spec),
    }
    lines = [
        f"network {genesis.name}  id {genesis.network_id.hex()}",
        f"roster epoch {roster.epoch}, {source}",
        f"threshold {roster.threshold} of {len(members)}",
        *(f"  {m['name']:<20} {m['public_key']}" for m in members),
        _merge_line(genesis),
        "spec (whole, as JSON: --json)",
        *spec_lines(dict(genesis.spec)),
    ]
    emit(args, data, "\n".join(lines))


SPEC_LIST = 6  # a table of more entries (a base's module shapes) is shown as a count


def spec_lines(spec: Mapping[str, Any], indent: str = "  ") -> list[str]:
    """The spec as indented ``key value`` lines, sorted; a long table of plain values (the
    base's module shapes: hundreds for CLIP) is summarised by its count and first names."""
    out = []
    for key in sorted(spec):
        value = spec[key]
        if isinstance(value, Mapping) and value:
            plain = not any(isinstance(v, Mapping) for v in value.values())
            if plain and len(value) > SPEC_LIST:
                first = ", ".join(sorted(value)[:3])
                out.append(f"{indent}{key}: {len(value)} entries ({first}, …)")
                continue
            out.append(f"{indent}{key}:")
            out += spec_lines(value, indent + "  ")
        else:
            out.append(f"{indent}{key} {json.dumps(value)}")
    return out


def _merge_line(genesis: Genesis) -> str:
    spec = merge_spec(genesis)
    if spec.mode == "mixture":
        return f"merge mixture, {spec.search.mixture_search} search, compaction off"
    if spec.compaction == "off":
        return f"merge {spec.mode}, compaction off"
    when = f"rank > {spec.compact_rank}" if spec.compact_rank else "at the crossover"
    return f"merge {spec.mode}, compaction {spec.compaction} ({when})"


def _read_signable(path: Path) -> RosterUpdate | Revocation:
    record = decode_record(path.read_bytes())
    if not isinstance(record, RosterUpdate | Revocation):
        raise UsageError(f"{path} is a {record.KIND}, not a roster update or a revocation")
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
    _report(args, update, home.genesis(), None, written=args.out)
    return 0


def run_sign(args: argparse.Namespace) -> int:
    home = Home(Path(args.home))
    record = _read_signable(args.record)
    genesis = home.genesis()
    if record.network != genesis.network_id:
        raise UsageError(f"this {_what(record)} belongs to another network")
    signed = record.signed_by(home.identity())
    args.out.write_bytes(signed.encode())
    _report(args, signed, genesis, _author_of(home, signed), written=args.out)
    return 0


def run_combine(args: argparse.Namespace) -> int:
    records = [_read_signable(p) for p in args.records]
    combined = records[0]
    for other in records[1:]:
        combined = combined.combined(other)  # SchemaError unless the bodies are one
    home = Home(Path(args.home)) if args.home else None
    genesis = home.genesis() if home is not None else None
    if genesis is not None and combined.network != genesis.network_id:
        raise UsageError(f"this {_what(combined)} belongs to another network")
    args.out.write_bytes(combined.encode())
    _report(args, combined, genesis, _author_of(home, combined) if home else None, written=args.out)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    home = Home(Path(args.home))
    identity = home.identity()
    genesis = home.genesis()
    if args.commit is not None:
        if args.key is not None:
            raise UsageError("--key names the key of a key revocation: use it with --from-seq")
        commit = _commit_id(args.commit)
        revocation = Revocation.of_commit(genesis.network_id, commit, args.reason)
    else:
        subject = _key(args.key) if args.key else identity.public
        if args.from_seq < 0:
            raise UsageError("--from-seq must be >= 0")
        revocation = Revocation.of_key(genesis.network_id, subject, args.from_seq, args.reason)
    signed: Revocation = revocation.signed_by(identity)
    decode_record(signed.encode())  # the same checks every peer will run
    args.out.write_bytes(signed.encode())
    _report(args, signed, genesis, _author_of(home, signed), written=args.out)
    return 0


def _commit_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise UsageError(f"--commit {text!r}: a commit id is 64 hex characters")
    return raw


def _what(record: RosterUpdate | Revocation) -> str:
    return "roster update" if isinstance(record, RosterUpdate) else "revocation"


def _author_of(home: Home | None, record: RosterUpdate | Revocation) -> PublicKey | None:
    """The author of the commit a commit revocation names, if --home's running node holds
    it on its main chain; None when that is not known here."""
    if home is None or not isinstance(record, Revocation) or record.commit is None:
        return None
    try:
        head = call(home.control_path, "head", timeout=5)
        for entry in head["commits"]:
            commit = decode_record(bytes.fromhex(entry["record"]))
            if isinstance(commit, Commit) and commit.id == record.commit:
                return commit.author
    except (ControlError, OSError, CryptoError, KeyError, TypeError, ValueError):
        pass
    return None


def _report(
    args: argparse.Namespace,
    record: RosterUpdate | Revocation,
    genesis: Genesis | None,
    author: PublicKey | None,
    *,
    written: Path | None = None,
) -> None:
    """How many signatures ``record`` has, and whether they meet the threshold (of the
    genesis roster: roster updates this home has not seen are not taken into account)."""
    if isinstance(record, RosterUpdate):
        target = f"{record.op} {record.name}, epoch {record.epoch}"
    elif record.commit is not None:
        target = f"commit {record.commit.hex()[:16]}"
    else:
        assert record.subject is not None
        target = f"key {record.subject.hex()[:16]} from seq {record.from_seq}"
    data: dict[str, Any] = {
        "kind": record.KIND,
        "record": record.id.hex(),
        "target": target,
        "signatures": len(record.sigs),
        "signers": sorted(k.hex() for k in record.signers()),
    }
    line = f"{_what(record)} {record.id.hex()[:16]} ({target}): {len(record.sigs)} signature(s)"
    if genesis is None:
        data["meets_threshold"] = None
        line += "; pass --home to check them against the threshold"
    else:
        roster = Roster.from_genesis(genesis)
        members = roster.member_signers(record)
        names = sorted(roster.members[k].name for k in members)
        outsiders = len(record.signers() - members)
        met = len(members) >= roster.threshold
        # Who may revoke alone: the commit's author (when known here) or the revoked key.
        owner = (
            None
            if isinstance(record, RosterUpdate)
            else ("the revoked key" if record.commit is None else "the commit's author")
        )
        key = None if isinstance(record, RosterUpdate) else record.subject or author
        own = key is not None and key in record.signers()
        data |= {
            "member_signers": names,
            "threshold": roster.threshold,
            "members": len(roster.members),
            "author": author.hex() if author is not None else None,
            "signed_by_owner": own,
            "meets_threshold": met or own,
        }
        line += f" by {len(members)} member(s)" + (f" ({', '.join(names)})" if names else "")
        if outsiders:
            line += f", {outsiders} by non-members (not counted)"
        line += f"; threshold {roster.threshold} of {len(roster.members)}: "
        if met:
            line += "met" + (f", and signed by {owner}" if own else "")
        elif own:
            line += f"not met, but signed by {owner}: counts"
        else:
            need = roster.threshold - len(members)
            line += f"not met ({need} more member signature(s) needed"
            if owner is not None:
                unknown = owner == "the commit's author" and author is None
                line += f", or {owner}'s own signature" + (" (not known here)" if unknown else "")
            line += ")"
    if written is not None:
        data["out"] = str(written)
        line += f"\nwritten to {written}"
    emit(args, data, line)
