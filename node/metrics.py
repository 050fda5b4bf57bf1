"""Prometheus metrics on an optional loopback port (``metrics_port`` in config.toml).

Plain text exposition format written by hand: a dozen gauges and counters do not need a
client library, and a trio listener stops with the node (a library's HTTP thread would not).
Bound to 127.0.0.1 only: scrape it through the operator's own agent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from node.service import NodeService

_METRICS = (
    ("medforge_peers_connected", "gauge", "connected peers", "peers_connected"),
    ("medforge_records", "gauge", "complete records held", "records"),
    ("medforge_records_pending", "gauge", "records waiting for blobs", "pending_records"),
    ("medforge_records_rejected", "gauge", "records refused as invalid", "rejected_records"),
    ("medforge_blobs", "gauge", "blobs held", "blobs"),
    ("medforge_blobs_missing", "gauge", "blobs pending records wait for", "missing_blobs"),
    ("medforge_forge_item", "gauge", "forge items in the current order", "forge_item"),
    ("medforge_orphans", "gauge", "orphan commits after the tip", "orphans"),
    ("medforge_converged_peers", "gauge", "peers reporting our composite", "converged_with"),
    ("medforge_garbage_total", "counter", "protocol violations by peers", "garbage"),
    ("medforge_invalid_commits", "gauge", "commits judged invalid (kept as evidence)",
     "invalid_commits"),
    ("medforge_validating", "gauge", "commits waiting for their verdict", "validating"),
    ("medforge_uptime_seconds", "gauge", "seconds since start", "uptime_s"),
)


def render(status: dict[str, Any]) -> str:
    lines = []
    for name, kind, help_text, key in _METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {status[key]}"]
    lines += [
        "# HELP medforge_faults_total defects of ours (validation, merge) the node survived",
        "# TYPE medforge_faults_total counter",
        *(f'medforge_faults_total{{stage="{k}"}} {v}' for k, v in sorted(status["faults"].items())),
        "# HELP medforge_transport_faults_total frame-level faults seen by the transport",
        "# TYPE medforge_transport_faults_total counter",
        *(
            f'medforge_transport_faults_total{{kind="{k}"}} {v}'
            for k, v in sorted(status["frames"].items())
        ),
        "# HELP medforge_merge_failing 1 while the latest order cannot be folded",
        "# TYPE medforge_merge_failing gauge",
        f"medforge_merge_failing {int(status['merge_error'] is not None)}",
    ]
    return "\n".join(lines) + "\n"


async def serve(
    node: NodeService, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(lambda stream: _answer(node, stream), listeners)


async def _answer(node: NodeService, stream: trio.SocketStream) -> None:
    from node.status import status

    async with stream:
        with trio.move_on_after(5):
            request = await stream.receive_some(4096)
            if not request.startswith(b"GET "):
                await stream.send_all(b"HTTP/1.0 405 Method Not Allowed\r\n\r\n")
                return
            body = render(status(node)).encode()
            head = (
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            try:
                await stream.send_all(head + body)
            except trio.BrokenResourceError:
                pass
