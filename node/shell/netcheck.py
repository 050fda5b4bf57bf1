"""Network facts ``medforge doctor`` checks, with plain sockets and no event loop.

- ``parse_addr``: a libp2p multiaddr as ``Endpoint`` (host, TCP port, peer id), or
  ``AddrError`` saying why it is not one the node could use;
- ``reach``: whether an endpoint accepts a TCP connect within a timeout and answers as a
  libp2p node: multistream-select's header, and ``/noise`` accepted as the security
  protocol (the first step of a real dial; no Noise handshake, so its peer id is not
  proven). A transparent proxy or another service on the port accepts TCP, never this;
- ``port_taken``: why a local TCP port cannot be bound now, or None (the node's own
  ``ensure_port_free``, so both refuse the same ports).

Nothing here imports libp2p except ``port_taken``, and only for a fixed port.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import multiaddr
import multiaddr.exceptions

from node.errors import PortInUse

DIAL_TIMEOUT = 3.0  # seconds per TCP connect
_HOSTS = ("ip4", "ip6", "dns", "dns4", "dns6")
_ANY = {"0.0.0.0", "::"}
_LOOPBACK = ("127.", "::1", "localhost")


class AddrError(ValueError):
    """An address the node cannot use; the message says why and what to write instead."""


@dataclass(frozen=True)
class Endpoint:
    addr: str
    host: str
    port: int
    peer: str | None  # the /p2p/ peer id, if the address names one

    @property
    def loopback(self) -> bool:
        return self.host.startswith(_LOOPBACK)

    @property
    def wildcard(self) -> bool:
        return self.host in _ANY


def parse_addr(addr: str) -> Endpoint:
    """``/ip4|ip6|dns*/<host>/tcp/<port>[/p2p/<peer id>]``; anything else is ``AddrError``."""
    try:
        parsed = multiaddr.Multiaddr(addr)
    except (ValueError, multiaddr.exceptions.Error) as exc:
        raise AddrError(f"{addr!r} is not a multiaddr ({exc})") from None
    names = [p.name for p in parsed.protocols()]
    host_proto = next((n for n in names if n in _HOSTS), None)
    if host_proto is None or "tcp" not in names:
        raise AddrError(f"{addr} is not a TCP address (/ip4/<host>/tcp/<port>...)")
    peer = str(parsed.value_for_protocol("p2p")) if "p2p" in names else None
    port = int(parsed.value_for_protocol("tcp"))
    return Endpoint(addr, str(parsed.value_for_protocol(host_proto)), port, peer)


MULTISTREAM = "/multistream/1.0.0"
NOISE = "/noise"


@dataclass(frozen=True)
class Reach:
    endpoint: Endpoint
    tcp: bool  # it accepted a TCP connect
    libp2p: bool  # ... and answered multistream-select, accepting /noise
    detail: str  # "12.3 ms" or what went wrong

    @property
    def ok(self) -> bool:
        return self.libp2p


def reach(endpoints: Sequence[Endpoint], timeout: float = DIAL_TIMEOUT) -> list[Reach]:
    """Probe every endpoint at once (threads): TCP connect, then multistream-select offering
    ``/noise``; each probe, connect included, bounded by ``timeout``."""
    if not endpoints:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(endpoints))) as pool:
        return list(pool.map(lambda e: _connect(e, timeout), endpoints))


def _connect(endpoint: Endpoint, timeout: float) -> Reach:
    host = "127.0.0.1" if endpoint.host == "0.0.0.0" else endpoint.host
    start = time.monotonic()
    try:
        conn = socket.create_connection((host, endpoint.port), timeout=timeout)
    except TimeoutError:
        return Reach(endpoint, False, False, f"no TCP answer within {timeout:g} s (filtered?)")
    except OSError as exc:
        return Reach(endpoint, False, False, exc.strerror or type(exc).__name__)
    with conn:
        try:
            conn.sendall(_frame(MULTISTREAM) + _frame(NOISE))
            frames, raw = _read_frames(conn, 2, start + timeout)
        except OSError as exc:
            frames, raw = [], (exc.strerror or type(exc).__name__).encode()
    if frames != [MULTISTREAM, NOISE]:
        why = f"it answered {raw[:40]!r}" if raw else "it said nothing"
        return Reach(endpoint, True, False, f"accepts TCP but is no libp2p node: {why}")
    return Reach(endpoint, True, True, f"{(time.monotonic() - start) * 1000:.1f} ms")


def _frame(text: str) -> bytes:
    """A multistream-select message: uvarint length, the text, a newline (<128 bytes)."""
    data = text.encode() + b"\n"
    return bytes([len(data)]) + data


def _read_frames(conn: socket.socket, count: int, deadline: float) -> tuple[list[str], bytes]:
    """Up to ``count`` multistream messages and the bytes read; fewer messages if the peer
    closes, stalls or sends something else."""
    raw, at = b"", 0
    frames: list[str] = []
    while len(frames) < count and len(raw) < 1024:
        size = raw[at] if len(raw) > at else None
        if size is not None and size >= 128:
            break  # not a short multistream message: not libp2p
        if size is not None and len(raw) > at + size:
            message = raw[at + 1 : at + 1 + size]
            if not message.endswith(b"\n"):
                break
            frames.append(message[:-1].decode(errors="replace"))
            at += 1 + size
            continue
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = conn.recv(1024)
        except TimeoutError:
            break
        if not chunk:
            break
        raw += chunk
    return frames, raw


def port_taken(listen: str) -> str | None:
    """Why the node could not bind ``listen`` now (another listener holds it), or None."""
    if parse_addr(listen).port == 0:
        return None
    from node.shell.transport.libp2p import ensure_port_free

    try:
        ensure_port_free(listen)
    except PortInUse as exc:
        return str(exc)
    return None
