"""What the control socket answers: status, the forge log, the head, publish, export, stop.

``Ops(service).handle`` is the control server's handler (wired by ``node.shell.main``). Every
answer is plain JSON data; ``medforge status|log|export|commit`` render it. A request the node
cannot carry out raises ``NodeRefused`` with the reason the caller is shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from crypto.canonical import content_id
from crypto.records import Commit, Record, decode_record
from node.errors import NodeRefused
from node.forge.bundle import verify_bundle
from node.forge.card import CARD_FILE, Provenance
from node.forge.export import export_composite, export_merged
from node.shell.service import NodeService


class Ops:
    def __init__(self, node: NodeService) -> None:
        self.node = node

    async def handle(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        if op == "status":
            return self.node.status().as_dict()
        if op == "log":
            return forge_log(self.node)
        if op == "head":
            at = request.get("at")
            return head(self.node, at if isinstance(at, str) else None)
        if op == "roster":  # the records behind the roster in force, for `network show`
            return {"records": [r.encode().hex() for r in self.node.core.roster_records()]}
        if op == "publish":
            return await publish(self.node, Path(str(request["bundle"])))
        if op == "publish_record":
            return await publish_record(self.node, Path(str(request["file"])))
        if op == "export":
            return await export(
                self.node,
                Path(str(request["out"])),
                merged=request.get("merged") is True,
                max_rank=_max_rank(request.get("max_rank")),
            )
        if op == "stop":
            self.node.stop()
            return {"stopping": True}
        raise NodeRefused(f"unknown op {op!r}")


def forge_log(node: NodeService) -> list[dict[str, Any]]:
    """Every forge item's commit, with ``received_at``: when this node first stored it (unix
    seconds; the store's ``records.received_at``, its own commits when published), or None."""
    order = node.core.order
    entries = []
    for k, cid in enumerate(order.commits):
        commit = node.core.commit(cid)
        if commit is None:
            continue
        stored = node.store.get_record(content_id(commit.encode()))  # the store's key
        entries.append(
            {
                "item": k + 1,
                "item_id": order.items[k + 1].hex(),
                "commit": cid.hex(),
                "author": node.name_of(commit.author.peer_id()),
                "seq": commit.seq,
                "task": commit.task,
                "classes": list(commit.classes),
                "coeffs": list(commit.coeffs),
                "objective": dict(commit.objective),
                "orphan": k >= order.main_length,
                "supersedes": commit.supersedes.hex() if commit.supersedes else None,
                "training": dict(commit.training) if commit.training is not None else None,
                "received_at": stored.received_at if stored is not None else None,
            }
        )
    return entries


def head(node: NodeService, at: str | None = None) -> dict[str, Any]:
    """What an author needs to search against the tip (or against ``at``, a forge item of
    the main chain, hex): the main chain's commits up to it, and their blobs."""
    order = node.core.order
    upto = order.main_length
    if at is not None:
        item = bytes.fromhex(at) if _is_hex64(at) else b""
        if item not in order.items[: order.main_length + 1]:
            raise NodeRefused(f"{at[:16]}… is not a forge item of this node's main chain")
        upto = order.items.index(item)
    commits = []
    for cid in order.commits[:upto]:
        commit = node.core.commit(cid)
        if commit is not None:
            commits.append(
                {
                    "record": commit.encode().hex(),
                    "blobs": {
                        k: str(node.store.blob_path(ref.sha256)) for k, ref in commit.blobs.items()
                    },
                }
            )
    return {"tip": order.items[upto].hex(), "commits": commits}


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text.lower())


async def publish(node: NodeService, bundle_path: Path) -> dict[str, Any]:
    # Checked against the roster in force (a member added by a roster update may commit),
    # not the genesis alone.
    records = node.core.roster_records()
    bundle = await trio.to_thread.run_sync(verify_bundle, bundle_path, node.genesis, records)
    commit = bundle.commit
    blobs = {ref.sha256: bundle.blob_path(kind) for kind, ref in commit.blobs.items()}
    await node.publish(commit, blobs)
    order = node.core.order
    position = order.commits.index(commit.id) + 1 if commit.id in order.commits else None
    return {
        "commit": commit.id.hex(),
        "forge_item": position,
        "orphan": position is not None and position > order.main_length,
    }


async def publish_record(node: NodeService, path: Path) -> dict[str, Any]:
    data = await trio.to_thread.run_sync(path.read_bytes)
    record: Record = decode_record(data, network=node.genesis.network_id)
    if isinstance(record, Commit):
        raise NodeRefused("publish a commit as a bundle (it needs its blobs)")
    await node.publish(record)
    return {"record": record.id.hex(), "kind": record.KIND}


def _max_rank(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NodeRefused(f"max_rank must be an int >= 1, got {value!r}")
    return value


async def export(
    node: NodeService, out: Path, *, merged: bool = False, max_rank: int | None = None
) -> dict[str, Any]:
    """The composite as PEFT (or a mixture of PEFT members), or ``merged`` into the base, with
    a model card naming the network, the forge item, the digest and the commits' tasks."""
    composer = node.composer
    # What is served now, even if a fold lands meanwhile.
    composite, digest, order = composer.composite, composer.digest, composer.order
    if merged and max_rank is not None:
        raise NodeRefused("a merged export adds the exact ΔW: max_rank does not apply")
    if merged and composite.mode == "mixture":
        raise NodeRefused(
            "a mixture has no merged weights (its members' outputs are mixed): "
            "export it without --merged"
        )
    prov = _provenance(node, order, digest)
    if merged:
        await trio.to_thread.run_sync(
            lambda: export_merged(composite, out, node.genesis, provenance=prov)
        )
    else:
        await trio.to_thread.run_sync(
            lambda: export_composite(
                composite, out, composer.base, max_rank=max_rank, provenance=prov
            )
        )
    return {
        "out": str(out),
        "digest": digest,
        "forge_item": len(order),
        "mode": composite.mode,
        "merged": merged,
        "base_model": prov.base_model,
        "card": CARD_FILE,
    }


def _provenance(node: NodeService, order: tuple[bytes, ...], digest: str) -> Provenance:
    commits = [c for c in map(node.core.commit, order) if c is not None]
    return Provenance.of(
        node.genesis,
        commits,
        digest,
        forge_item=len(order),
        name_of=lambda c: node.name_of(c.author.peer_id()),
    )
