"""Transport: one interface (``Transport``), a py-libp2p implementation
(``node.shell.transport.libp2p.Libp2pTransport``, imported on demand because importing libp2p
costs about a second) and an in-memory twin (``MemoryTransport``)."""

from node.shell.transport.base import Transport
from node.shell.transport.memory import MemoryNetwork, MemoryTransport
from node.shell.transport.peerid import addr_peer, peer_id_from_seed
from node.shell.transport.types import (
    BlobProvider,
    BlobSink,
    Event,
    LinkDown,
    LinkUp,
    PeerId,
    RequestHandler,
    TransportConfig,
    TransportStatistics,
)

__all__ = [
    "BlobProvider",
    "BlobSink",
    "Event",
    "LinkDown",
    "LinkUp",
    "MemoryNetwork",
    "MemoryTransport",
    "PeerId",
    "RequestHandler",
    "Transport",
    "TransportConfig",
    "TransportStatistics",
    "addr_peer",
    "peer_id_from_seed",
]
