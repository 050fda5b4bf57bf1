"""Quiet the libp2p log lines that say nothing an operator needs to hear.

py-libp2p 0.8.1 logs routine events (the auto-connector's cycle, a stream cut short by a
peer that left, DHT chatter, a relayed stream's end) at INFO to ERROR, some with a
traceback. Each matcher below names one such line; a match is demoted to DEBUG, never
dropped, and every other line passes unchanged. ``install`` runs once, when the libp2p
transport is imported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable


class _Demote(logging.Filter):
    """Re-level the matching records of one libp2p logger to DEBUG, as if libp2p had
    logged them at DEBUG: they are dropped unless DEBUG is enabled on that logger.
    (Lowering ``levelno`` alone is not enough: a handler without a level of its own, like
    the CLI's, emits whatever reaches it.) Every other record passes untouched."""

    def __init__(self, logger: logging.Logger, match: Callable[[logging.LogRecord], bool]):
        super().__init__()
        self._logger = logger
        self._match = match

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not self._match(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self._logger.isEnabledFor(logging.DEBUG)

    @classmethod
    def install(cls, name: str, match: Callable[[logging.LogRecord], bool]) -> None:
        logger = logging.getLogger(name)
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls(logger, match))


# The auto-connector's per-cycle INFO lines (every 10 s while we have fewer than its
# min_connections=50, i.e. always here), whether or not anything changed; the summary
# counts dials dispatched, not made (ours refuses them: Libp2pTransport._guard_dials).
# Lines about a peer really connected ("Auto-connected to peer ...") and errors stay.
_AUTO_CONNECTOR_CYCLE = re.compile(
    r"^(AUTO_CONNECTOR_STATE: "
    r"|Connections \(.*\) below target \(.*\); initiating "
    r"|AutoConnector candidate pool low "
    r"|Auto-connected to \d+ new peers$)"
)


def _auto_connector_cycle(record: logging.LogRecord) -> bool:
    return record.levelno == logging.INFO and bool(_AUTO_CONNECTOR_CYCLE.match(record.getMessage()))


def _identify_to_a_gone_peer(record: logging.LogRecord) -> bool:
    """identify's ERROR, with a full traceback, when the peer it answers has just closed
    the connection (a node stopping, a peer cut off): nothing an operator can act on. Any
    other identify failure stays an ERROR."""
    msg = record.getMessage()
    return (
        record.levelno == logging.ERROR
        and msg.startswith("Error sending identify response to ")
        and ("reset by remote peer" in msg or "Broken pipe" in msg or "closed" in msg)
    )


def _dht_chatter(record: logging.LogRecord) -> bool:
    """The DHT's WARNINGs about single queries that failed (a stream read cut short, a
    peer that went away mid-lookup): Kademlia expects those and retries elsewhere, and a
    five-node network prints dozens a minute. Its ERRORs stay."""
    return record.levelno < logging.ERROR


def _stream_cut_short(record: logging.LogRecord) -> bool:
    """The host's multi-line ERROR when a stream cannot be opened because the connection
    went during negotiation (a peer stopping, a partition, a relayed connection closed), or
    a DHT query's stream failed: the caller gets the exception too (ours: ``ConnectionLost``,
    counted), and a lookup goes on elsewhere. The same ERROR for a peer that does not speak
    the protocol ("protocols not supported") stays."""
    msg = record.getMessage()
    return (
        record.levelno == logging.ERROR
        and msg.startswith("Failed to open stream to peer")
        and ("/ipfs/kad/" in msg or "multiselect communicator" in msg)
    )


def _dial_failed(record: logging.LogRecord) -> bool:
    """The TCP transport's ERROR for each address a dial could not reach (a member's private
    address behind NAT, a host that is down): the dialler gets ``PeerUnreachable``, and
    discovery and the bootstrap loop say, at INFO, whom they could not reach."""
    msg = record.getMessage()
    return record.levelno == logging.ERROR and (
        msg.startswith("Failed to open TCP stream") or msg.startswith("Unexpected error opening")
    )


def _relay_stream_closed(record: logging.LogRecord) -> bool:
    """The relay service's ERRORs when a stream it serves ends: one after each reservation
    (the member closes the stream it reserved on) and four to six per relayed connection
    closed. Reservations refused and relayed dials that fail reach their callers."""
    return record.levelno == logging.ERROR and "stream" in record.getMessage()


def _add_conn_cancelled(record: logging.LogRecord) -> bool:
    """The swarm's WARNING, with a traceback in its text, when a connection still being
    set up is cancelled: a peer that left mid-handshake, or this node stopping. trio's
    ``Cancelled`` is always a scope this process cancelled, never a fault; every other
    ``add_conn`` failure stays a WARNING."""
    msg = record.getMessage()
    return msg.startswith("[ADDCONN_FAIL] ") and ": Cancelled(" in msg.split("\n", 1)[0]


def _muxer_closed_under_reader(record: logging.LogRecord) -> bool:
    """yamux's ERROR when the connection it reads is closed under it (the peer or this node
    closing it): the connection's end, already reported as a disconnect. Other read errors
    stay."""
    msg = record.getMessage()
    return (
        record.levelno == logging.ERROR
        and msg.startswith("Error in handle_incoming for peer ")
        and msg.endswith(": ClosedResourceError: ")
    )


def install() -> None:
    """Attach every matcher to its libp2p logger (idempotent: ``_Demote.install`` is)."""
    _Demote.install("libp2p.network.auto_connector", _auto_connector_cycle)
    _Demote.install("libp2p.host.basic_host", _stream_cut_short)
    _Demote.install("libp2p.transport.tcp.tcp", _dial_failed)
    _Demote.install("libp2p.relay.circuit_v2.protocol", _relay_stream_closed)
    for name in ("libp2p.kad_dht.kad_dht", "libp2p.kad_dht.peer_routing"):
        _Demote.install(name, _dht_chatter)
    _Demote.install("libp2p.identity.identify.identify", _identify_to_a_gone_peer)
    _Demote.install("libp2p.network.swarm", _add_conn_cancelled)
    _Demote.install("libp2p.stream_muxer.yamux.yamux", _muxer_closed_under_reader)
