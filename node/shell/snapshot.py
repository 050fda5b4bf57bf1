"""``NodeService.status()``: a running node's state read into one frozen ``NodeStatus``.

The service holds behaviour; this module alone knows which field of the record comes from
which part of it (the core, the transport, the composer, the store). It reads the service
through ``Observed``, the parts a status needs, so it does not import the service (which
imports it); ``node.shell.status`` holds the record and its core-only helpers.
"""

from __future__ import annotations

import time
from typing import Protocol

import trio

from crypto.identity import Identity
from crypto.records import Genesis
from node.core.protocol import Core
from node.forge.composer import Composer
from node.forge.footprint import footprint
from node.shell.home import Config
from node.shell.latency import MergeLatency
from node.shell.rtt import RttProbe
from node.shell.status import (
    NodeStatus,
    equivocators,
    excluded,
    invalid_by_author,
    invalid_entries,
    peer_statuses,
)
from node.shell.store import Store
from node.shell.store_scan import RecoveryReport
from node.shell.transport import PeerId, Transport
from node.shell.transport.types import FAULT_COUNTERS, TRAFFIC_COUNTERS


class Observed(Protocol):
    """What a status reads of a node (``NodeService`` has all of it)."""

    core: Core
    transport: Transport
    composer: Composer
    store: Store
    rtt: RttProbe
    merge_latency: MergeLatency
    identity: Identity
    config: Config
    genesis: Genesis
    started_at: float
    errors: list[tuple[float, str]]
    faults: dict[str, int]
    merge_error: str | None
    recovery: RecoveryReport

    @property
    def listen_addrs(self) -> tuple[str, ...]: ...

    def name_of(self, peer: PeerId) -> str: ...


def snapshot(node: Observed) -> NodeStatus:
    """A frozen snapshot of ``node``, taken in one step on the trio thread."""
    core, order, stats = node.core, node.core.order, node.core.statistics()
    conv = core.convergence()
    now, addrs = trio.current_time(), node.transport.link_addrs
    peers = peer_statuses(core, now, node.name_of, addrs, node.rtt.of)
    roster = core.roster
    transport = node.transport.statistics()
    held = footprint(node.composer.composite)
    return NodeStatus(
        name=node.config.name,
        peer_id=node.identity.public.peer_id(),
        network=node.genesis.name,
        network_id=node.genesis.network_id.hex(),
        listen=tuple(node.listen_addrs),
        roster_epoch=roster.epoch,
        members=tuple(sorted(m.name for m in roster.members.values())),
        threshold=roster.threshold,
        started_at=node.started_at,
        uptime_s=round(time.time() - node.started_at, 1),
        peers=peers,
        peers_connected=stats.peers,
        peers_live=sum(1 for peer in peers if peer.live),
        peers_known=len(node.store.peers()),
        records=stats.complete,
        pending_records=stats.pending,
        rejected_records=stats.rejected,
        blobs=stats.blobs,
        missing_blobs=len(core.pending_blobs()),
        set_root=core.root.hex(),
        forge_item=len(order.commits),
        head=order.head.hex(),
        tip=order.tip.hex(),
        orphans=len(order.orphans),
        composite_digest=core.digest,
        converged_with=conv.same_composite,
        peers_reporting=conv.reporting,
        garbage=stats.garbage,
        strangers=stats.strangers,
        fetch_queue=stats.queued,
        validating=stats.validating,
        invalid_commits=stats.invalid,
        invalid_by_author=invalid_by_author(core, node.name_of),
        invalid=invalid_entries(core, node.name_of),
        frames={name: int(getattr(transport, name)) for name in FAULT_COUNTERS},
        traffic={name: int(getattr(transport, name)) for name in TRAFFIC_COUNTERS},
        equivocators=equivocators(core, node.name_of),
        excluded=excluded(core, node.name_of),
        store_recovery=node.recovery.as_dict(),
        blobs_dropped_when_served=len(node.store.damaged_at_serve),
        serving_digest=node.composer.digest,
        composite_bytes=held.nbytes,
        composite_representation=held.representation,
        merge_error=node.merge_error,
        faults=dict(node.faults),
        last_errors=tuple(
            [f"{reason} ({peer[-8:]})" for _, peer, reason in core.errors[-5:]]
            + [message for _, message in node.errors[-5:]]
        ),
        ping_failures=node.rtt.failures,
        commit_merge_latency=node.merge_latency.snapshot(),
    )
