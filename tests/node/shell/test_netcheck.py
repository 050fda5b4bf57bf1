"""node.shell.netcheck: addresses parsed, and peers probed over real loopback sockets."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from node.shell.netcheck import AddrError, parse_addr, port_taken, reach

PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


@pytest.mark.parametrize(
    ("addr", "host", "port", "peer"),
    [
        (f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}", "10.0.0.1", 4001, PEER),
        ("/ip4/0.0.0.0/tcp/0", "0.0.0.0", 0, None),
        ("/ip6/::1/tcp/5", "::1", 5, None),
        (f"/dns4/node.example.org/tcp/4001/p2p/{PEER}", "node.example.org", 4001, PEER),
    ],
)
def test_addresses_parse(addr: str, host: str, port: int, peer: str | None) -> None:
    endpoint = parse_addr(addr)
    assert (endpoint.host, endpoint.port, endpoint.peer) == (host, port, peer)


@pytest.mark.parametrize(
    ("addr", "why"),
    [
        ("nonsense", "is not a multiaddr"),
        ("/ip4/10.0.0.1/tcp/4001/p2p/garbage", "is not a multiaddr"),
        ("/ip4/10.0.0.1/udp/4001/quic", "is not a TCP address"),
    ],
)
def test_unusable_addresses_say_why(addr: str, why: str) -> None:
    with pytest.raises(AddrError, match=why):
        parse_addr(addr)


@contextmanager
def _serve_once(answer: bytes) -> Iterator[int]:
    """A peer on loopback that accepts one connection, sends ``answer`` and hangs up."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def answer_once() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(answer)

        thread = threading.Thread(target=answer_once, daemon=True)
        thread.start()
        yield server.getsockname()[1]
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("answer", "libp2p", "detail"),
    [
        (b"\x13/multistream/1.0.0\n\x07/noise\n", True, "ms"),
        (b"\x13/multistream/1.0.0\n\x03na\n", False, "no libp2p node: it answered"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", False, "it answered b'HTTP/1.1 400"),
        (b"", False, "it said nothing"),
    ],
)
def test_a_peer_must_answer_multistream_and_accept_noise(
    answer: bytes, libp2p: bool, detail: str
) -> None:
    with _serve_once(answer) as port:
        (result,) = reach([parse_addr(f"/ip4/127.0.0.1/tcp/{port}/p2p/{PEER}")], timeout=2)
        assert result.tcp
        assert result.libp2p is libp2p
        assert detail in result.detail


def test_a_closed_port_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (result,) = reach([parse_addr(f"/ip4/127.0.0.1/tcp/{port}")], timeout=2)
    assert not result.tcp
    assert not result.ok


def test_a_held_port_is_taken_and_port_zero_never_is() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        taken = port_taken(f"/ip4/127.0.0.1/tcp/{port}")
    assert taken is not None
    assert f"port {port} is in use" in taken
    assert port_taken(f"/ip4/127.0.0.1/tcp/{port}") is None  # released
    assert port_taken("/ip4/127.0.0.1/tcp/0") is None
