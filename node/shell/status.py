"""The node's state as one frozen, typed record: what ``NodeService.status()`` returns.

Like trio's ``statistics()``: a snapshot, taken in one step on the trio thread, that the
control socket sends as JSON (``as_dict``), ``medforge status`` renders, and the metrics
endpoint reads through a callable. Nothing here holds a reference to the service; the
helpers below read the sans-IO core and name peers through the function they are given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crypto.identity import PublicKey
from node.core.order import Order
from node.core.protocol import Core
from node.shell.latency import HistogramSnapshot

if TYPE_CHECKING:
    from node.shell.rtt import Rtt

NameOf = Callable[[str], str]  # peer id -> the roster's name for it


@dataclass(frozen=True)
class PeerStatus:
    peer_id: str
    name: str
    member: bool
    same_composite: bool
    records: int | None  # what its last summary said it holds
    heard_s_ago: float | None
    live: bool  # heard within three sync intervals
    addrs: tuple[str, ...] = ()  # where the transport reaches it (empty when not connected)
    rtt_ms: float | None = None  # the last ping round trip; None: not connected, no answer yet
    rtt_smoothed_ms: float | None = None  # EWMA of the round trips (gain 1/8)
    link: str = ""  # where the connection goes, for people: "ip4/tcp", or "relayed by <name>"


@dataclass(frozen=True)
class InvalidEntry:
    commit: str
    author: str
    reason: str


@dataclass(frozen=True)
class ExcludedEntry:
    commit: str
    author: str
    seq: int
    why: str  # "equivocation" or "revoked"


@dataclass(frozen=True)
class NodeStatus:
    name: str
    peer_id: str
    network: str
    network_id: str
    listen: tuple[str, ...]
    roster_epoch: int  # the roster in force: genesis is epoch 0, each update one more
    members: tuple[str, ...]  # names of the members in force
    threshold: int
    started_at: float  # unix time
    uptime_s: float
    peers: tuple[PeerStatus, ...]
    peers_connected: int
    peers_live: int
    peers_known: int
    records: int
    pending_records: int
    rejected_records: int
    blobs: int
    missing_blobs: int
    set_root: str
    forge_item: int
    head: str
    tip: str
    orphans: int
    composite_digest: str | None  # claimed for the current order; None while merging
    converged_with: int
    peers_reporting: int
    garbage: int
    strangers: int  # messages from peers the roster never named, ignored
    fetch_queue: int
    validating: int
    invalid_commits: int
    invalid_by_author: Mapping[str, int]
    invalid: tuple[InvalidEntry, ...]
    frames: Mapping[str, int]  # the transport's frame-level fault counters
    traffic: Mapping[str, int]  # requests and blob transfers, with bytes
    equivocators: tuple[str, ...]
    excluded: tuple[ExcludedEntry, ...]
    store_recovery: Mapping[str, Any]  # what opening the store repaired
    blobs_dropped_when_served: int
    serving_digest: str  # the composite this node serves (its last good fold)
    composite_bytes: int  # tensor bytes of the served composite (a mixture: its members')
    composite_representation: str  # e.g. "stack, 25 modules: 20 factored (rank 160), 5 dense"
    merge_error: str | None
    faults: Mapping[str, int]  # defects of ours (validation, merge) the node survived
    last_errors: tuple[str, ...]
    ping_failures: int  # pings to members that got no good answer (node.shell.rtt)
    commit_merge_latency: HistogramSnapshot  # learned of a commit -> served a fold with it

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the control socket's answer to ``status``)."""
        out = dataclasses.asdict(self)
        out["listen"] = list(self.listen)
        out["equivocators"] = list(self.equivocators)
        out["members"] = list(self.members)
        out["last_errors"] = list(self.last_errors)
        return out


def peer_statuses(
    core: Core,
    now: float,
    name_of: NameOf,
    addrs_of: Callable[[str], tuple[str, ...]],
    rtt_of: Callable[[str], Rtt | None] = lambda peer: None,
) -> tuple[PeerStatus, ...]:
    # Liveness comes from traffic, not from the socket: every peer sends its summary each
    # sync interval, so one silent for three of them is cut off, whatever TCP believes.
    silent_after = 3 * core.config.sync_interval
    order = core.order
    peers = []
    for peer, report in sorted(core.peers().items()):
        heard = None if report is None else round(now - report.at, 1)
        rtt = rtt_of(peer)
        peers.append(
            PeerStatus(
                peer_id=peer,
                name=name_of(peer),
                member=core.is_member(peer),
                same_composite=bool(
                    report and report.digest == core.digest and report.head == order.head
                ),
                records=report.count if report else None,
                heard_s_ago=heard,
                live=heard is not None and heard <= silent_after,
                addrs=(addrs := addrs_of(peer)),
                link=describe_link(addrs, name_of),
                rtt_ms=None if rtt is None else _ms(rtt.last_s),
                rtt_smoothed_ms=None if rtt is None else _ms(rtt.smoothed_s),
            )
        )
    return tuple(peers)


def describe_link(addrs: tuple[str, ...], name_of: NameOf) -> str:
    """A connection's first address for people: ``/ip4/<host>/tcp/<port>``, or, for a
    circuit (``.../p2p/<relay>/p2p-circuit/p2p/<peer>``), the relay it goes through (just
    "relayed" when the address does not name it)."""
    if not addrs:
        return ""
    if "/p2p-circuit" in addrs[0]:
        relay = addrs[0].split("/p2p-circuit")[0].rsplit("/p2p/", 1)[-1]
        return f"relayed by {name_of(relay)}" if relay else "relayed"
    return addrs[0].split("/p2p/")[0]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)  # microseconds: loopback round trips are ~0.1 ms


def author_name(key: bytes, name_of: NameOf) -> str:
    return name_of(PublicKey(key).peer_id())


def invalid_entries(core: Core, name_of: NameOf, limit: int = 32) -> tuple[InvalidEntry, ...]:
    return tuple(
        InvalidEntry(cid.hex(), author_name(key, name_of), why)
        for cid, (key, why) in sorted(core.invalid().items())[:limit]
    )


def invalid_by_author(core: Core, name_of: NameOf) -> dict[str, int]:
    """How many commits each member signed that every node refuses."""
    counts: dict[str, int] = {}
    for key, _ in core.invalid().values():
        name = author_name(key, name_of)
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def excluded(core: Core, name_of: NameOf) -> tuple[ExcludedEntry, ...]:
    """Commits held but left out of the order: equivocation (one author, one seq, two
    commits: both out) or revocation."""
    order: Order = core.order
    out = []
    for cid in sorted(order.excluded):
        commit = core.commit(cid)
        if commit is None:
            continue
        why = "equivocation" if commit.author.raw in order.flagged else "revoked"
        out.append(ExcludedEntry(cid.hex(), name_of(commit.author.peer_id()), commit.seq, why))
    return tuple(out)


def equivocators(core: Core, name_of: NameOf) -> tuple[str, ...]:
    return tuple(sorted(author_name(key, name_of) for key in core.order.flagged))
