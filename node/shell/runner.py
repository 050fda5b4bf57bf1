"""The composition root: a node service with its control socket and metrics endpoint.

``NodeService`` runs replication and knows nothing of who asks about it. This is where the
pieces meet: the control server gets ``Ops(service).handle``, the metrics endpoint gets the
callable ``service.status``. ``medforge node run`` calls ``run_node``; in-process tests that
talk to a node over its control socket do the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from node.shell import control, metrics
from node.shell.ops import Ops
from node.shell.service import NodeService


@dataclass(frozen=True)
class Endpoints:
    """Where a running node answers (what ``nursery.start(run_node, ...)`` returns)."""

    control: Path
    metrics_port: int | None


async def run_node(service: NodeService, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run ``service`` and its endpoints; return once the service has stopped."""
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        path = service.home.control_path
        await nursery.start(control.serve, path, Ops(service).handle)
        port = service.config.metrics_port
        metrics_port = (
            None
            if port is None
            else await nursery.start(
                partial(metrics.serve, host=service.config.metrics_host), port, service.status
            )
        )
        task_status.started(Endpoints(path, metrics_port))
        await service.stopped.wait()
        nursery.cancel_scope.cancel()
