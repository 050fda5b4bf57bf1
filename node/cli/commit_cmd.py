"""`medforge commit` (sign a plugin into a bundle) and `medforge verify` (check one offline)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto.records import Genesis, Record, decode_record
from merge.lora_config import CONFIG_NAME, WEIGHTS_NAME
from node.cli.output import add_home, add_json, describe_training, emit, terminal_safe
from node.cli.train_cmd import add_device_arg
from node.errors import NodeNotRunning, UsageError
from node.forge import claim
from node.forge.bundle import blob_ref, read_bundle_genesis, verify_bundle, write_bundle
from node.forge.netspec import merge_spec
from node.forge.validate import Rules, check_coeffs, check_content
from node.shell.control import call
from node.shell.home import Home

if TYPE_CHECKING:  # torch and nevergrad load only when a commit is searched or signed
    from merge.lora import LoraAdapter
    from merge.pipeline.search import SearchResult
    from node.forge.author import Head


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
        "--classes",
        nargs="+",
        help="class names in label order, as in train/distill (`a b c`; the old `a,b,c` "
        "works too; default: the distilled file's)",
    )
    commit.add_argument(
        "--coeffs",
        type=float,
        nargs=2,
        metavar=("W1", "W2"),
        help="skip the search and sign these coefficients",
    )
    commit.add_argument(
        "--score",
        action="store_true",
        help="with --coeffs: still load the base and score them (the accuracy of the head "
        "and of the merged candidate on each distilled set, and the warning if a task drops)",
    )
    commit.add_argument(
        "--parent",
        type=hash_hex,
        help="forge item (64 hex) the coefficients were searched against (default: the "
        "running node's tip, which the search uses; with --coeffs: yours to name)",
    )
    commit.add_argument(
        "--supersedes",
        type=hash_hex,
        help="id (64 hex) of your orphaned commit this replaces (the node rebases its own "
        "orphans by itself; this is the manual way)",
    )
    commit.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    add_device_arg(commit, "the coefficient search")
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


def hash_hex(text: str) -> str:
    """argparse ``type`` of --parent and --supersedes: a sha256 in hex (an id from `medforge
    log --json` or `status`), refused before anything loads or a sequence number is taken."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a 64-character hex id (`medforge log --json` prints them whole)"
        )
    return raw.hex()


def read_classes(distilled: Path) -> tuple[str, ...]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(distilled), framework="pt") as handle:
            metadata = handle.metadata() or {}
        classes = json.loads(metadata["classes"]) if "classes" in metadata else None
    except (SafetensorError, ValueError) as exc:
        raise UsageError(f"{distilled} is not a distilled safetensors file: {exc}") from exc
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise UsageError(f"{distilled} names no classes: pass --classes")
    return tuple(classes)


def commit_blobs(adapter: Path, distilled: Path) -> dict[str, bytes]:
    for path in (adapter / CONFIG_NAME, adapter / WEIGHTS_NAME, distilled):
        if not path.is_file():
            raise UsageError(f"{path} does not exist")
    return {
        "adapter_config": (adapter / CONFIG_NAME).read_bytes(),
        "adapter_model": (adapter / WEIGHTS_NAME).read_bytes(),
        "distilled": distilled.read_bytes(),
    }


def _head(home: Home, at: str | None = None) -> Head | None:
    """The running node's tip and main chain (up to forge item ``at``, when given), or None
    when no node runs on this home."""
    from node.forge.author import Head

    try:
        extra = {} if at is None else {"at": at}
        answer: dict[str, Any] = call(home.control_path, "head", timeout=30, **extra)
    except NodeNotRunning:
        return None  # any other refusal is the node's answer: it propagates
    return Head.from_answer(answer)


def _search(
    genesis: Genesis,
    head: Head,
    adapter: LoraAdapter,
    args: argparse.Namespace,
    trained_on: str | None = None,
) -> SearchResult:
    """Coefficients for this plugin against ``head`` (or the ones given with --coeffs, scored
    with --score), with the claim the commit carries. ``trained_on``: the item a continual
    plugin was trained on (stack onto that item: ``(1, 1)``, the trained model, unsearched)."""
    from merge.pipeline.search import SearchResult

    given = None
    if args.coeffs is not None:
        given = SearchResult((float(args.coeffs[0]), float(args.coeffs[1])), {})
    if given is not None and not args.score:
        return given
    from merge.pipeline.device import resolve_device
    from merge.pipeline.distill import load_distilled
    from node.forge import author

    device = str(resolve_device(args.device))  # an absent device fails before the base loads

    composer = head.compose(genesis)
    own = load_distilled(args.distilled)
    what = "scoring the given" if given is not None else "searching"
    budget = "" if given is not None else f" (budget {merge_spec(genesis).search.budget})"
    unsearched = author.trained_on_head(head, trained_on) and merge_spec(genesis).mode == "stack"
    if given is None and unsearched:
        what, budget = "scoring (1, 1), the model this plugin was trained as,", ""
    print(
        f"{what} coefficients against forge item v{len(head.commits)}{budget} ...",
        file=sys.stderr,
    )
    if given is not None:
        return author.scored(genesis, head, adapter, own, given, composer, device)
    return author.search(genesis, head, adapter, own, composer, device, trained_on)


def _training(
    adapter: Path, parent: bytes, named: bool = False
) -> dict[str, str | int | float] | None:
    """How the plugin was trained, from its ``medforge.json`` (None: it does not say, and the
    commit stays schema 1). Warns when a continual plugin goes onto another item than the one
    it was trained on: still valid, committed as trained (never retrained here)."""
    from merge.pipeline.train import PLUGIN_META, read_plugin_meta
    from node.forge.author import training_record

    if not (adapter / PLUGIN_META).is_file():
        return None
    try:
        training = training_record(read_plugin_meta(adapter))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{adapter / PLUGIN_META} is not a plugin meta file: {exc}") from exc
    on = training.get("trained_on") if training else None
    if isinstance(on, str) and on != parent.hex():
        why = "--parent names it" if named else "the tip moved since"
        warning = (
            f"warning: this plugin was trained on forge item {on[:16]}…, it is committed onto "
            f"{parent.hex()[:16]}… ({why}); it is still valid, but retrain (`medforge train "
            f"--home`) to build on that item"
        )  # `on` comes from the plugin's medforge.json, which may have come from anywhere
        print(terminal_safe(warning), file=sys.stderr)
    return training


def run_commit(args: argparse.Namespace) -> int:
    home = Home(Path(args.home))
    genesis = home.genesis()
    rules = Rules.of(genesis)
    blobs = commit_blobs(args.adapter, args.distilled)
    classes = (
        tuple(c for given in args.classes for c in given.split(",") if c)
        if args.classes
        else read_classes(args.distilled)
    )
    # Every peer runs exactly these checks at receipt: refuse before searching, signing or
    # taking a sequence number (a refused commit must not use one up).
    adapter = check_content(rules, classes=classes, coeffs=None, blobs=blobs, name=args.task)
    if args.coeffs is not None:
        check_coeffs(rules, [float(w) for w in args.coeffs])
    from node.forge import author

    # --parent: search against the composite the plugin names (a commit's claim is about
    # its parent), not against whatever the tip is now
    head = _head(home, args.parent)
    target = head if head is not None else author.Head.empty(genesis)
    parent = bytes.fromhex(args.parent) if args.parent else target.tip
    training = _training(args.adapter, parent, named=args.parent is not None)
    on = training.get("trained_on") if training else None
    result = _search(genesis, target, adapter, args, on if isinstance(on, str) else None)
    check_coeffs(rules, [float(w) for w in result.coeffs], result.module_coeffs)
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
        training=training,
    )
    write_bundle(args.out, commit, blobs, genesis)
    figures = claim.decode(commit.objective, commit.task)
    for warning in claim.warnings(figures):
        print(terminal_safe(warning), file=sys.stderr)
    data: dict[str, Any] = {
        "commit": commit.id.hex(),
        "seq": commit.seq,
        "bundle": str(args.out),
        "coeffs": list(commit.coeffs),
        "module_coeffs": {g: list(p) for g, p in (commit.module_coeffs or {}).items()} or None,
        "objective": dict(commit.objective),
        "training": dict(commit.training) if commit.training is not None else None,
        "task_accuracy": [f.as_dict() for f in figures],
        "warnings": claim.warnings(figures),
    }
    human = f"commit {commit.id.hex()} (seq {commit.seq}, w={commit.coeffs}) written to {args.out}"
    if figures:
        human += f"\naccuracy on the distilled sets (head -> merged): {claim.describe(figures)}"
    if commit.training is not None:
        human += f"\ntraining: {describe_training(commit.training)}"
    if commit.module_coeffs:
        after, scalar = (commit.objective.get(k) for k in ("loss_after", "loss_scalar"))
        human += f"\n{len(commit.module_coeffs)} per-group pairs (loss {after}; scalar {scalar})"
    if head is not None:
        published = call(home.control_path, "publish", bundle=str(args.out.resolve()))
        data["published"] = published
        human += f"\npublished: forge item v{published['forge_item']}"
        if published.get("orphan"):
            human += " (an orphan: its parent is not the tip; this node rebases it onto the tip)"
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
            raise UsageError(f"{args.genesis} is not a genesis document")
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
