"""What the control endpoint answers: status, the forge log, the head, publish, export.

Every answer is plain JSON data; `medforge status|log|export|commit` render it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from crypto.identity import PublicKey
from crypto.records import Commit, Record, decode_record
from merge.export import export_peft
from merge.fold import Composite, single_task
from node.bundle import verify_bundle
from node.control import ControlError
from node.transport.types import FAULT_COUNTERS

if TYPE_CHECKING:
    from node.service import NodeService


async def handle(node: NodeService, request: dict[str, Any]) -> Any:
    op = request["op"]
    if op == "status":
        return status(node)
    if op == "log":
        return forge_log(node)
    if op == "head":
        return head(node)
    if op == "publish":
        return await publish(node, Path(str(request["bundle"])))
    if op == "publish_record":
        return await publish_record(node, Path(str(request["file"])))
    if op == "export":
        return await export(node, Path(str(request["out"])))
    if op == "stop":
        node.stop()
        return {"stopping": True}
    raise ControlError(f"unknown op {op!r}")


def status(node: NodeService) -> dict[str, Any]:
    core = node.core
    stats = core.statistics()
    conv = core.convergence()
    order = core.order
    peers = []
    now = trio.current_time()
    # Liveness comes from traffic, not from the socket: every peer sends its summary each
    # sync interval, so one silent for three of them is cut off, whatever TCP believes.
    silent_after = 3 * core.config.sync_interval
    for peer, report in sorted(core.peers().items()):
        heard = None if report is None else round(now - report.at, 1)
        peers.append(
            {
                "peer_id": peer,
                "name": node.name_of(peer),
                "member": core.is_member(peer),
                "same_composite": bool(
                    report and report.digest == core.digest and report.head == order.head
                ),
                "records": report.count if report else None,
                "heard_s_ago": heard,
                "live": heard is not None and heard <= silent_after,
            }
        )
    return {
        "name": node.config.name,
        "peer_id": node.identity.public.peer_id(),
        "network": node.genesis.name,
        "network_id": node.genesis.network_id.hex(),
        "listen": list(node.listen_addrs),
        "uptime_s": round(time.time() - node.started_at, 1),
        "peers": peers,
        "peers_connected": stats.peers,
        "peers_live": sum(1 for p in peers if p["live"]),
        "peers_known": len(node.store.peers()),
        "records": stats.complete,
        "pending_records": stats.pending,
        "rejected_records": stats.rejected,
        "blobs": stats.blobs,
        "missing_blobs": len(core.pending_blobs()),
        "set_root": core.root.hex(),
        "forge_item": len(order.commits),
        "head": order.head.hex(),
        "tip": order.tip.hex(),
        "orphans": len(order.orphans),
        "composite_digest": core.digest,
        "converged_with": conv.same_composite,
        "peers_reporting": conv.reporting,
        "garbage": stats.garbage,
        "strangers": stats.strangers,  # messages from peers the roster never named, ignored
        "fetch_queue": stats.queued,
        "validating": stats.validating,
        "invalid_commits": stats.invalid,
        "invalid_by_author": invalid_by_author(node),
        "invalid": [
            {"commit": cid.hex(), "author": node.name_of(PublicKey(key).peer_id()), "reason": why}
            for cid, (key, why) in sorted(core.invalid().items())[:32]
        ],
        "frames": frame_faults(node),
        "equivocators": sorted(node.name_of(PublicKey(k).peer_id()) for k in order.flagged),
        "excluded": excluded(node),
        "store_recovery": node.recovery.as_dict(),  # what opening the store repaired
        "blobs_dropped_when_served": len(node.store.damaged_at_serve),
        "serving_digest": node.composer.digest,
        "merge_error": node.merge_error,
        "faults": dict(node.faults),
        "last_errors": [f"{reason} ({peer[-8:]})" for _, peer, reason in core.errors[-5:]]
        + [message for _, message in node.errors[-5:]],
    }




def frame_faults(node: NodeService) -> dict[str, int]:
    """The transport's frame-level fault counters (below the core's message-level garbage)."""
    stats = node.transport.statistics()
    return {name: int(getattr(stats, name)) for name in FAULT_COUNTERS}


def excluded(node: NodeService) -> list[dict[str, Any]]:
    """Commits held but left out of the order: equivocation (one author, one seq, two
    commits: both out) or revocation."""
    order, out = node.core.order, []
    for cid in sorted(order.excluded):
        commit = node.core.commit(cid)
        if commit is None:
            continue
        why = "equivocation" if commit.author.raw in order.flagged else "revoked"
        out.append({"commit": cid.hex(), "author": node.name_of(commit.author.peer_id()),
                    "seq": commit.seq, "why": why})
    return out


def invalid_by_author(node: NodeService) -> dict[str, int]:
    """How many commits each member signed that every node refuses."""
    counts: dict[str, int] = {}
    for key, _ in node.core.invalid().values():
        name = node.name_of(PublicKey(key).peer_id())
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def forge_log(node: NodeService) -> list[dict[str, Any]]:
    order = node.core.order
    entries = []
    for k, cid in enumerate(order.commits):
        commit = node.core.commit(cid)
        if commit is None:
            continue
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
            }
        )
    return entries


def head(node: NodeService) -> dict[str, Any]:
    """What an author needs to search against the tip: the main chain's commits and blobs."""
    order = node.core.order
    commits = []
    for cid in order.main:
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
    return {"tip": order.tip.hex(), "commits": commits}


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
        raise ControlError("publish a commit as a bundle (it needs its blobs)")
    await node.publish(record)
    return {"record": record.id.hex(), "kind": record.KIND}


async def export(node: NodeService, out: Path) -> dict[str, Any]:
    composer = node.composer
    base = composer.base
    await trio.to_thread.run_sync(export_composite, composer.composite, out, base)
    return {
        "out": str(out),
        "digest": composer.digest,
        "forge_item": len(composer.order),
        "mode": composer.composite.mode,
    }


def export_composite(composite: Composite, out: Path, base: str) -> None:
    """Fusion/stack: one standard PEFT adapter directory. Mixture: one PEFT adapter per member
    under ``members/NNN`` and ``mixture.json`` with the weights (exact floats as hex too)."""
    if composite.mode != "mixture":
        export_peft(composite, out, base=base)
        return
    out.mkdir(parents=True, exist_ok=True)
    members = []
    for k, (member, weight) in enumerate(zip(composite.members, composite.weights, strict=True)):
        export_peft(single_task("stack", member), out / "members" / f"{k:03d}", base=base)
        members.append(
            {
                "dir": f"members/{k:03d}",
                "weight": weight,
                "weight_hex": weight.hex(),
                "name": member.name,
            }
        )
    (out / "mixture.json").write_text(json.dumps({"base": base, "members": members}, indent=2))
