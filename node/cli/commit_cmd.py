"""`medforge commit` (sign a plugin into a bundle) and `medforge verify` (check one offline)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crypto.items import item_zero
from crypto.records import Commit, Genesis, Record, decode_record
from node.bundle import blob_ref, check_adapter, read_bundle_genesis, verify_bundle, write_bundle
from node.cli import UserError
from node.cli.output import add_home, add_json, emit
from node.home import Home
from node.netspec import base_fingerprint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_MODEL = "adapter_model.safetensors"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    commit = sub.add_parser(
        "commit",
        help="sign a LoRA plugin + distilled data into a commit bundle",
        description="Sign a PEFT LoRA adapter and its distilled summary set into a commit. "
        "With --coeffs the merge coefficients are taken as given; otherwise they are searched "
        "against the current composite of the running node (or the empty one).",
    )
    add_home(commit)
    commit.add_argument("--adapter", type=Path, required=True, help="PEFT adapter directory")
    commit.add_argument("--distilled", type=Path, required=True, help="distilled .safetensors")
    commit.add_argument("--task", required=True)
    commit.add_argument(
        "--classes", help="comma-separated class names (default: the distilled file's)"
    )
    commit.add_argument("--coeffs", type=float, nargs=2, metavar=("W1", "W2"))
    commit.add_argument("--parent", help="forge item (hex) the coefficients were searched against")
    commit.add_argument("--supersedes", help="id (hex) of your orphaned commit this replaces")
    commit.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    add_json(commit)
    commit.set_defaults(func=run_commit)

    verify = sub.add_parser("verify", help="check a commit bundle offline")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--home", help="trust this home's genesis (default: the bundle's own)")
    verify.add_argument("--genesis", type=Path, help="trust this genesis file")
    verify.add_argument(
        "--records",
        type=Path,
        nargs="*",
        default=[],
        help="roster updates / revocations to take into account",
    )
    add_json(verify)
    verify.set_defaults(func=run_verify)


def read_classes(distilled: Path) -> tuple[str, ...]:
    from safetensors import safe_open

    with safe_open(str(distilled), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "classes" not in metadata:
        raise UserError(f"{distilled} names no classes: pass --classes")
    return tuple(json.loads(metadata["classes"]))


def commit_blobs(adapter: Path, distilled: Path) -> dict[str, bytes]:
    for path in (adapter / ADAPTER_CONFIG, adapter / ADAPTER_MODEL, distilled):
        if not path.is_file():
            raise UserError(f"{path} does not exist")
    return {
        "adapter_config": (adapter / ADAPTER_CONFIG).read_bytes(),
        "adapter_model": (adapter / ADAPTER_MODEL).read_bytes(),
        "distilled": distilled.read_bytes(),
    }


def run_commit(args: argparse.Namespace) -> int:
    home = Home(Path(args.home))
    genesis = home.genesis()
    classes = tuple(args.classes.split(",")) if args.classes else read_classes(args.distilled)
    blobs = commit_blobs(args.adapter, args.distilled)
    if args.coeffs is None:
        raise UserError("no node is running to search against: pass --coeffs W1 W2")
    parent = bytes.fromhex(args.parent) if args.parent else item_zero(genesis.network_id)
    commit = Commit.create(
        home.identity(),
        network=genesis.network_id,
        seq=home.next_seq(),
        task=args.task,
        classes=classes,
        base=base_fingerprint(genesis),
        blobs={kind: blob_ref(data) for kind, data in blobs.items()},
        parent=parent,
        coeffs=(float(args.coeffs[0]), float(args.coeffs[1])),
        objective={},
        supersedes=bytes.fromhex(args.supersedes) if args.supersedes else None,
    )
    # Peers will run exactly this check: refuse to sign what they would refuse to merge.
    check_adapter(commit, blobs["adapter_config"], blobs["adapter_model"], genesis)
    write_bundle(args.out, commit, blobs, genesis)
    data = {"commit": commit.id.hex(), "seq": commit.seq, "bundle": str(args.out)}
    emit(args, data, f"commit {commit.id.hex()} (seq {commit.seq}) written to {args.out}")
    return 0


def _trusted_genesis(args: argparse.Namespace) -> tuple[Genesis, str]:
    if args.genesis:
        record = decode_record(args.genesis.read_bytes())
        if not isinstance(record, Genesis):
            raise UserError(f"{args.genesis} is not a genesis document")
        return record, str(args.genesis)
    if args.home:
        return Home(Path(args.home)).genesis(), f"{args.home}/genesis.cbor"
    return read_bundle_genesis(args.bundle), "the bundle's own genesis (not independently trusted)"


def run_verify(args: argparse.Namespace) -> int:
    genesis, source = _trusted_genesis(args)
    records: list[Record] = [decode_record(p.read_bytes()) for p in args.records]
    bundle = verify_bundle(args.bundle, genesis, records)
    commit = bundle.commit
    data = {
        "valid": True,
        "commit": commit.id.hex(),
        "author": commit.author.hex(),
        "seq": commit.seq,
        "task": commit.task,
        "network": genesis.network_id.hex(),
        "trusted_genesis": source,
    }
    emit(
        args,
        data,
        f"valid: commit {commit.id.hex()[:16]} task {commit.task!r} seq "
        f"{commit.seq} by {commit.author.hex()[:16]} in network {genesis.name}",
    )
    return 0
