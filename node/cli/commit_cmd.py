"""`medforge commit` (sign a plugin into a bundle) and `medforge verify` (check one offline)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto.records import Commit, Genesis, Record, decode_record
from merge.lora_config import CONFIG_NAME, WEIGHTS_NAME
from node.bundle import blob_ref, read_bundle_genesis, verify_bundle, write_bundle
from node.cli import UserError
from node.cli.output import add_home, add_json, emit
from node.control import NodeNotRunning, call
from node.home import Home
from node.netspec import merge_spec
from node.order import root_item as item_zero
from node.validate import Rules, check_coeffs, check_content

if TYPE_CHECKING:  # torch and nevergrad load only when a commit is searched or signed
    from merge.lora import LoraAdapter
    from merge.search import SearchResult

ADAPTER_CONFIG = CONFIG_NAME
ADAPTER_MODEL = WEIGHTS_NAME


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
    commit.add_argument(
        "--coeffs",
        type=float,
        nargs=2,
        metavar=("W1", "W2"),
        help="skip the search and sign these coefficients",
    )
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
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(distilled), framework="pt") as handle:
            metadata = handle.metadata() or {}
        classes = json.loads(metadata["classes"]) if "classes" in metadata else None
    except (SafetensorError, ValueError) as exc:
        raise UserError(f"{distilled} is not a distilled safetensors file: {exc}") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{distilled} names no classes: pass --classes")
    return tuple(classes)


def commit_blobs(adapter: Path, distilled: Path) -> dict[str, bytes]:
    for path in (adapter / ADAPTER_CONFIG, adapter / ADAPTER_MODEL, distilled):
        if not path.is_file():
            raise UserError(f"{path} does not exist")
    return {
        "adapter_config": (adapter / ADAPTER_CONFIG).read_bytes(),
        "adapter_model": (adapter / ADAPTER_MODEL).read_bytes(),
        "distilled": distilled.read_bytes(),
    }


def _head(home: Home) -> dict[str, Any] | None:
    """The running node's tip and main chain, or None when no node runs on this home."""
    try:
        result: dict[str, Any] = call(home.control_path, "head", timeout=30)
    except NodeNotRunning:
        return None  # any other refusal is the node's answer: it propagates
    return result


def _search(
    genesis: Genesis, head: dict[str, Any] | None, adapter: LoraAdapter, args: argparse.Namespace
) -> tuple[bytes, SearchResult]:
    """Coefficients for this plugin against the node's tip (or the empty composite)."""
    if head is None:
        commits: list[Commit] = []
        paths: dict[bytes, Path] = {}
        tip = item_zero(genesis.network_id)
    else:
        commits, paths = _head_commits(head)
        tip = bytes.fromhex(head["tip"])
    from merge.search import SearchResult

    if args.coeffs is not None:
        w1, w2 = float(args.coeffs[0]), float(args.coeffs[1])
        return tip, SearchResult((w1, w2), {})
    from merge.distill import load_distilled
    from node import author
    from node.composer import Composer

    spec = merge_spec(genesis)
    composer = Composer(spec, Rules.of(genesis), lambda sha: paths[sha].read_bytes())
    composer.update(commits)
    own = load_distilled(args.distilled)
    print(
        f"searching coefficients against forge item v{len(commits)} "
        f"(budget {spec.search.budget}) ...",
        file=sys.stderr,
    )
    result = author.search(genesis, composer, commits, adapter, own, paths.__getitem__)
    return tip, result


def _head_commits(head: dict[str, Any]) -> tuple[list[Commit], dict[bytes, Path]]:
    commits, paths = [], {}
    for entry in head["commits"]:
        commit = decode_record(bytes.fromhex(entry["record"]))
        assert isinstance(commit, Commit)
        commits.append(commit)
        for kind, path in entry["blobs"].items():
            paths[commit.blobs[kind].sha256] = Path(path)
    return commits, paths


def run_commit(args: argparse.Namespace) -> int:
    home = Home(Path(args.home))
    genesis = home.genesis()
    rules = Rules.of(genesis)
    blobs = commit_blobs(args.adapter, args.distilled)
    classes = tuple(args.classes.split(",")) if args.classes else read_classes(args.distilled)
    # Every peer runs exactly these checks at receipt: refuse before searching, signing or
    # taking a sequence number (a refused commit must not use one up).
    adapter = check_content(rules, classes=classes, coeffs=None, blobs=blobs, name=args.task)
    if args.coeffs is not None:
        check_coeffs(rules, [float(w) for w in args.coeffs])
    head = _head(home)
    parent, result = _search(genesis, head, adapter, args)
    if args.parent:
        parent = bytes.fromhex(args.parent)
    check_coeffs(rules, [float(w) for w in result.coeffs])
    from node import author

    commit = author.sign_commit(
        home.identity(),
        genesis,
        seq=home.next_seq(),
        task=args.task,
        classes=classes,
        blobs={kind: blob_ref(data) for kind, data in blobs.items()},
        parent=parent,
        result=result,
        supersedes=bytes.fromhex(args.supersedes) if args.supersedes else None,
    )
    write_bundle(args.out, commit, blobs, genesis)
    data: dict[str, Any] = {
        "commit": commit.id.hex(),
        "seq": commit.seq,
        "bundle": str(args.out),
        "coeffs": list(commit.coeffs),
        "objective": dict(commit.objective),
    }
    human = f"commit {commit.id.hex()} (seq {commit.seq}, w={commit.coeffs}) written to {args.out}"
    if head is not None:
        published = call(home.control_path, "publish", bundle=str(args.out.resolve()))
        data["published"] = published
        human += f"\npublished: forge item v{published['forge_item']}"
    else:
        data["published"] = None
        human += (
            f"\nnot published: no node is running on {home.path} (coefficients were searched "
            f"against the empty composite); start it and run `medforge publish --home "
            f"{home.path} {args.out}`"
        )
    emit(args, data, human)
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
