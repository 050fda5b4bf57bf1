"""Prometheus metrics on an optional loopback port (``metrics_port`` in config.toml).

The node's state comes from one callable that returns a ``NodeStatus`` (the service's
``status``), read at each scrape by a ``prometheus_client`` collector: the metrics are a view
of the same frozen record ``medforge status`` shows, never a second set of counters kept in
step by hand. The HTTP side is a small trio listener rather than the library's server thread,
so it stops with the node. Bound to 127.0.0.1 by default: scrape it through the operator's
own agent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from node.shell.latency import HistogramSnapshot
from node.shell.status import NodeStatus, PeerStatus

StatusFn = Callable[[], NodeStatus]

# (name, help, NodeStatus field): one gauge each
_GAUGES = (
    ("medforge_peers_connected", "connected peers", "peers_connected"),
    ("medforge_peers_live", "peers heard within three sync intervals", "peers_live"),
    ("medforge_records", "complete records held", "records"),
    ("medforge_records_pending", "records waiting for blobs", "pending_records"),
    ("medforge_records_rejected", "records refused", "rejected_records"),
    ("medforge_blobs", "blobs held", "blobs"),
    ("medforge_blobs_missing", "blobs pending records wait for", "missing_blobs"),
    ("medforge_forge_item", "forge items in the current order", "forge_item"),
    ("medforge_orphans", "orphan commits after the tip", "orphans"),
    ("medforge_converged_peers", "peers reporting our composite", "converged_with"),
    ("medforge_invalid_commits", "commits judged invalid (kept as evidence)", "invalid_commits"),
    ("medforge_validating", "commits waiting for their verdict", "validating"),
    ("medforge_fetch_queue", "blob fetches waiting for a slot", "fetch_queue"),
    ("medforge_start_time_seconds", "unix time the node started", "started_at"),
)
# (name without _total, help, NodeStatus field): counters only grow
_COUNTERS = (
    ("medforge_garbage", "protocol violations by peers", "garbage"),
    ("medforge_strangers", "messages from peers the roster never named", "strangers"),
    ("medforge_ping_failures", "pings to members that got no good answer", "ping_failures"),
)

# (family, name, help, label, NodeStatus field): one series per key of a mapping
_Family = type[CounterMetricFamily] | type[GaugeMetricFamily]
_LABELLED: tuple[tuple[_Family, str, str, str, str], ...] = (
    (
        CounterMetricFamily,
        "medforge_faults",
        "defects of ours the node survived",
        "stage",
        "faults",
    ),
    (CounterMetricFamily, "medforge_transport_faults", "frame-level faults", "kind", "frames"),
    (CounterMetricFamily, "medforge_traffic", "requests and blob transfers", "kind", "traffic"),
    (
        GaugeMetricFamily,
        "medforge_invalid_by_author",
        "refused commits",
        "author",
        "invalid_by_author",
    ),
)
_PEER_LIVE = "1 while the peer is heard within three sync intervals"
_PEER_SAME = "1 while the peer reports our composite"
_PEER_RTT = "last ping round trip to the peer (absent while unknown)"
_PEER_SRTT = "smoothed ping round trip to the peer (EWMA, gain 1/8)"
_MERGE_LATENCY = "from learning of a commit to serving a composite that includes it"


def _version() -> str:
    try:
        return version("medforge")
    except PackageNotFoundError:
        return "unknown"


class StatusCollector(Collector):
    """Turns one ``NodeStatus`` snapshot per scrape into metric families."""

    def __init__(self, status: StatusFn) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        s = self._status()
        yield InfoMetricFamily("medforge_build", "medforge version", value={"version": _version()})
        for name, help_text, field in _GAUGES:
            yield GaugeMetricFamily(name, help_text, value=float(getattr(s, field)))
        for name, help_text, field in _COUNTERS:
            yield CounterMetricFamily(name, help_text, value=float(getattr(s, field)))
        for family, name, help_text, label, field in _LABELLED:
            yield _labelled(family, name, help_text, label, getattr(s, field))
        yield GaugeMetricFamily(
            "medforge_merge_failing",
            "1 while the latest order cannot be folded",
            value=float(s.merge_error is not None),
        )
        live = GaugeMetricFamily("medforge_peer_live", _PEER_LIVE, labels=["peer", "name"])
        same = GaugeMetricFamily(
            "medforge_peer_same_composite", _PEER_SAME, labels=["peer", "name"]
        )
        for peer in s.peers:
            live.add_metric([peer.peer_id, peer.name], float(peer.live))
            same.add_metric([peer.peer_id, peer.name], float(peer.same_composite))
        yield live
        yield same
        yield from _rtts(s.peers)
        yield _histogram(
            "medforge_commit_merge_latency_seconds", _MERGE_LATENCY, s.commit_merge_latency
        )


def _rtts(peers: tuple[PeerStatus, ...]) -> Iterator[Metric]:
    """Per-peer RTT gauges, in seconds; a peer without a known RTT has no series."""
    last = GaugeMetricFamily("medforge_peer_rtt_seconds", _PEER_RTT, labels=["peer", "name"])
    smoothed = GaugeMetricFamily(
        "medforge_peer_rtt_smoothed_seconds", _PEER_SRTT, labels=["peer", "name"]
    )
    for peer in peers:
        if peer.rtt_ms is not None and peer.rtt_smoothed_ms is not None:
            last.add_metric([peer.peer_id, peer.name], peer.rtt_ms / 1000)
            smoothed.add_metric([peer.peer_id, peer.name], peer.rtt_smoothed_ms / 1000)
    yield last
    yield smoothed


def _histogram(name: str, help_text: str, snap: HistogramSnapshot) -> Metric:
    buckets = [(_le(bound), float(n)) for bound, n in snap.cumulative()]
    return HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=snap.sum)


def _le(bound: float) -> str:
    """A bucket's ``le`` label as prometheus_client writes it: "0.5", "30.0", "+Inf"."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _labelled(
    family: _Family, name: str, help_text: str, label: str, values: Mapping[str, int]
) -> Metric:
    metric: CounterMetricFamily | GaugeMetricFamily = family(name, help_text, labels=[label])
    for key, value in sorted(values.items()):
        metric.add_metric([key], float(value))
    return metric


def registry(status: StatusFn) -> CollectorRegistry:
    """A registry of its own per node (tests run several nodes in one process)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatusCollector(status))
    ProcessCollector(registry=reg)  # process_start_time_seconds, memory, CPU, open fds
    return reg


def render(status: StatusFn) -> bytes:
    return generate_latest(registry(status))


async def serve(
    port: int,
    status: StatusFn,
    *,
    host: str = "127.0.0.1",
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    reg = registry(status)
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(lambda stream: _answer(reg, stream), listeners)


async def _answer(reg: CollectorRegistry, stream: trio.SocketStream) -> None:
    async with stream:
        with trio.move_on_after(5):
            request = await stream.receive_some(4096)
            if not request.startswith(b"GET "):
                await stream.send_all(b"HTTP/1.0 405 Method Not Allowed\r\n\r\n")
                return
            body = generate_latest(reg)
            head = (
                f"HTTP/1.0 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            try:
                await stream.send_all(head + body)
            except trio.BrokenResourceError:
                pass
