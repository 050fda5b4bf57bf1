"""Transport: one interface (``Transport``), a py-libp2p implementation
(``node.transport.libp2p.Libp2pTransport``, imported on demand because importing libp2p
costs about a second) and an in-memory twin (``MemoryTransport``)."""

from node.transport.base import Transport
from node.transport.memory import MemoryNetwork, MemoryTransport
from node.transport.peerid import addr_peer, peer_id_from_seed
from node.transport.types import (
    BlobProvider,
    BlobSink,
    Event,
    GossipReceived,
    PeerConnected,
    PeerDisconnected,
    PeerId,
    RequestHandler,
    TransportConfig,
    TransportStatistics,
)

__all__ = [
    "BlobProvider",
    "BlobSink",
    "Event",
    "GossipReceived",
    "MemoryNetwork",
    "MemoryTransport",
    "PeerConnected",
    "PeerDisconnected",
    "PeerId",
    "RequestHandler",
    "Transport",
    "TransportConfig",
    "TransportStatistics",
    "addr_peer",
    "peer_id_from_seed",
]
