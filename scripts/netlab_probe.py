#!/usr/bin/env python3
"""netlab's probing tools: an echo server and the clients that measure a path through it.

``scripts/netlab.py``'s ``Host.serve_echo``, ``Host.probe`` and ``Host.udp_echoes`` run this
file inside a host's namespace:

    python scripts/netlab_probe.py echo ADDRESS PORT      # TCP and UDP; prints "ready"
    python scripts/netlab_probe.py probe ADDRESS PORT [--timeout S] [--rtts N] [--bulk BYTES]
    python scripts/netlab_probe.py udp ADDRESS PORT COUNT [--wait S]

The TCP echo first sends the address the connection came from (a NAT host's: its router's),
then echoes; ``probe`` prints the fields of ``netlab.Probe`` as JSON, ``udp`` the number of
distinct echoes.

Why a file of its own: a namespace belongs to a process, so these run as programs of their own
on the host being measured, not in the lab's process; only the standard library, and nothing
of the lab (the lab reads what ``probe`` prints into its ``Probe``).
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

_SO_RCVBUFFORCE = 33  # room for a burst of datagrams, above the net.core.rmem_max cap


def _found(
    connected: bool, error: str, connect_s: float, seen_as: str, rtts: list[float], bulk_s: float
) -> dict[str, Any]:
    """What ``probe`` prints: the fields of ``netlab.Probe`` (times in seconds)."""
    return {
        "connected": connected, "error": error, "connect_s": connect_s, "seen_as": seen_as,
        "rtts": rtts, "bulk_s": bulk_s,
    }  # fmt: skip


def serve_echo(address: str, port: int) -> None:
    """TCP (sends the peer's address and a newline, then echoes) and UDP echo on one port."""
    tcp = socket.create_server((address, port))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
    udp.bind((address, port))
    threading.Thread(target=_echo_udp, args=(udp,), daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, peer = tcp.accept()
        threading.Thread(target=_echo_tcp, args=(conn, peer[0]), daemon=True).start()


def _echo_udp(udp: socket.socket) -> None:
    while True:
        data, peer = udp.recvfrom(65536)
        udp.sendto(data, peer)


def _echo_tcp(conn: socket.socket, peer: str) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn.sendall(f"{peer}\n".encode())
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass


def probe(address: str, port: int, timeout: float, rtts: int, bulk: int) -> dict[str, Any]:
    """Connect to an echo server and measure; an I/O step gets 60 s."""
    start = time.monotonic()
    try:
        conn = socket.create_connection((address, port), timeout=timeout)
    except OSError as error:
        return _found(False, f"{type(error).__name__}: {error}", 0.0, "", [], 0.0)
    connect_s, seen, times, bulk_s, failure = time.monotonic() - start, "", [], 0.0, ""
    with conn:
        conn.settimeout(60)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            seen = _read_line(conn)
            for _ in range(rtts):
                start = time.monotonic()
                conn.sendall(b"x")
                _read_exactly(conn, 1)
                times.append(time.monotonic() - start)
            bulk_s = _echo_bulk(conn, bulk) if bulk else 0.0
        except OSError as error:
            failure = f"{type(error).__name__}: {error}"
    return _found(True, failure, connect_s, seen, times, bulk_s)


def _read_line(conn: socket.socket) -> str:
    line = b""
    while not line.endswith(b"\n"):
        line += _read_exactly(conn, 1)
    return line.decode().strip()


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(min(n - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError("the echo server closed the connection")
        data += chunk
    return data


def _echo_bulk(conn: socket.socket, size: int) -> float:
    start = time.monotonic()
    sender = threading.Thread(target=conn.sendall, args=(bytes(size),), daemon=True)
    sender.start()
    got = 0
    while got < size:
        chunk = conn.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the echo server closed the connection")
        got += len(chunk)
    sender.join()
    return time.monotonic() - start


def udp_echoes(address: str, port: int, count: int, wait: float) -> int:
    """Send ``count`` numbered datagrams at once; how many distinct ones come back within
    ``wait`` s of the last send."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
        sock.connect((address, port))
        for n in range(count):
            sock.send(struct.pack(">I", n))
        back: set[bytes] = set()
        deadline = time.monotonic() + wait
        while len(back) < count and (left := deadline - time.monotonic()) > 0:
            if select.select([sock], [], [], left)[0]:
                try:
                    back.add(sock.recv(64))
                except ConnectionRefusedError:  # an ICMP error for an earlier datagram
                    pass
        return len(back)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    echo = commands.add_parser("echo", help="TCP and UDP echo server")
    echo.add_argument("address")
    echo.add_argument("port", type=int)
    measure = commands.add_parser("probe", help="TCP: connect to an echo server, time, JSON")
    measure.add_argument("address")
    measure.add_argument("port", type=int)
    measure.add_argument("--timeout", type=float, default=2.0)
    measure.add_argument("--rtts", type=int, default=0)
    measure.add_argument("--bulk", type=int, default=0)
    udp = commands.add_parser("udp", help="UDP: count a burst's echoes")
    udp.add_argument("address")
    udp.add_argument("port", type=int)
    udp.add_argument("count", type=int)
    udp.add_argument("--wait", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.command == "echo":
        serve_echo(args.address, args.port)
        return 0
    if args.command == "udp":
        print(udp_echoes(args.address, args.port, args.count, args.wait))
        return 0
    found = probe(args.address, args.port, args.timeout, args.rtts, args.bulk)
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
