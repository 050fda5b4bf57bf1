"""`medforge merge`: fold commit bundles offline, in the order given, and print the digest."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto.records import Genesis, decode_record
from merge.spec import MODES
from node.cli.output import add_json, emit
from node.errors import UsageError
from node.forge.bundle import Bundle, read_bundle_genesis, verify_bundle
from node.forge.netspec import merge_spec
from node.forge.validate import Rules
from node.shell.home import Home

if TYPE_CHECKING:  # merge.fold imports torch: only the commands that compute load it
    from merge.fold import Composite


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    merge = sub.add_parser(
        "merge",
        help="merge commit bundles offline and print the composite digest",
        description="Verify each bundle, then apply them in the order given with the "
        "coefficients their authors signed. Any machine gets the same digest.",
    )
    merge.add_argument("bundles", type=Path, nargs="+")
    merge.add_argument("--home", help="trust this home's genesis")
    merge.add_argument("--genesis", type=Path, help="trust this genesis file")
    merge.add_argument("--mode", choices=MODES, help="override the network's merge mode")
    merge.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="write the composite as a PEFT adapter dir (mixture: one per member and "
        "mixture.json), with a model card README.md",
    )
    add_json(merge)
    merge.set_defaults(func=run)


def _genesis(args: argparse.Namespace) -> Genesis:
    if args.genesis:
        record = decode_record(args.genesis.read_bytes())
        if not isinstance(record, Genesis):
            raise UsageError(f"{args.genesis} is not a genesis document")
        return record
    if args.home:
        return Home(Path(args.home)).genesis()
    return read_bundle_genesis(args.bundles[0])


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from node.forge.composer import Composer

    genesis = _genesis(args)
    bundles: list[Bundle] = [verify_bundle(path, genesis) for path in args.bundles]
    blobs = {b.commit.blobs[k].sha256: b.blob_path(k) for b in bundles for k in b.commit.blobs}
    spec = merge_spec(genesis)
    if args.mode:  # a mixture takes no module groups: its commits' per-group pairs are refused
        groups = "none" if args.mode == "mixture" else spec.search.groups
        # Only stack compacts: another mode folds without the network's compaction.
        compaction = spec.compaction if args.mode == "stack" else "off"
        spec = replace(
            spec,
            mode=args.mode,
            search=replace(spec.search, groups=groups),
            compaction=compaction,
            compact_rank=spec.compact_rank if compaction != "off" else 0,
        )
    composer = Composer(spec, Rules.of(genesis), lambda sha: blobs[sha].read_bytes())
    digest = composer.update([b.commit for b in bundles])
    data: dict[str, Any] = {
        "digest": digest,
        "mode": spec.mode,
        "commits": [b.commit.id.hex() for b in bundles],
    }
    text = f"{spec.mode} composite of {len(bundles)} commit(s): {digest}"
    if args.export:
        data["export"] = _export(composer.composite, args.export, genesis, bundles, digest)
        text += f"\nwritten to {args.export} (with its model card README.md)"
    emit(args, data, text)
    return 0


def _export(
    composite: Composite, out: Path, genesis: Genesis, bundles: list[Bundle], digest: str
) -> dict[str, str]:
    """A PEFT adapter dir (fusion, stack) or one per member (mixture), with a card."""
    from node.forge.card import CARD_FILE, Provenance
    from node.forge.export import export_composite

    prov = Provenance.of(genesis, [b.commit for b in bundles], digest)
    export_composite(composite, out, prov.fingerprint, provenance=prov)
    return {"out": str(out), "base_model": prov.base_model, "card": CARD_FILE}
