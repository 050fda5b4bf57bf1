#!/usr/bin/env python3
"""Loopback throughput of the blob stream protocol: the lower bound for the node benchmark.

Two real ``Libp2pTransport`` nodes on 127.0.0.1 (Noise + Yamux); bob fetches blobs of
several sizes from alice with ``fetch_blob`` (sha256 verified while streaming), into a
counting sink ("stream") and into a ``Store`` blob writer ("store": adds fsync + rename).
Also the median round trip of a small request, and the in-memory twin for comparison.

    .venv/bin/python scripts/bench_transport.py [--sizes 1 4 16] [--repeat 3] [--json]

``store_throughput`` is the lower bound the node benchmarks (bench_node.py, bench_catchup.py)
compare against; they load this file with ``runpy.run_path``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from node.shell.store import Store
from node.shell.transport import LinkUp, MemoryNetwork, MemoryTransport, Transport

MIB = 1 << 20


class CountingSink:
    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)


async def wait_connected(t: Transport) -> None:
    with trio.fail_after(10):
        async for event in t.events:
            if isinstance(event, LinkUp):
                return


async def fetch_once(bob: Transport, alice: Transport, sha: bytes, size: int, into: Any) -> float:
    start = time.perf_counter()
    if isinstance(into, Store):
        with into.blob_writer(sha, size) as writer:
            await bob.fetch_blob(alice.peer_id, sha, size=size, sink=writer)
            writer.commit()
    else:
        await bob.fetch_blob(alice.peer_id, sha, size=size, sink=into)
    return time.perf_counter() - start


async def bench_pair(alice: Transport, bob: Transport, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as tmp:
        return await _bench_pair(alice, bob, args, Path(tmp))


async def _bench_pair(
    alice: Transport, bob: Transport, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    files: dict[bytes, Path] = {}
    alice.set_blob_provider(files.get)

    async def echo(peer: str, payload: bytes) -> bytes:
        return payload

    alice.set_request_handler(echo)
    async with trio.open_nursery() as nursery:
        await nursery.start(alice.run)
        await nursery.start(bob.run)
        await bob.connect(alice.listen_addrs[0])
        await wait_connected(bob)
        results: dict[str, Any] = {"fetch": []}
        for mib in args.sizes:
            data = os.urandom(int(mib * MIB))
            sha = hashlib.sha256(data).digest()
            files[sha] = tmp / sha.hex()
            files[sha].write_bytes(data)
            for mode in ("stream", "store"):
                times = []
                for i in range(args.repeat):
                    home = tmp / f"store-{mib}-{i}"
                    into: Any = CountingSink() if mode == "stream" else Store.open(home)
                    times.append(await fetch_once(bob, alice, sha, len(data), into))
                    if isinstance(into, Store):
                        into.close()
                best = min(times)
                results["fetch"].append(
                    {"mib": mib, "into": mode, "seconds": times, "best_mib_s": mib / best}
                )
        rtts = []
        for _ in range(args.requests):
            start = time.perf_counter()
            await bob.request(alice.peer_id, b"ping", max_response=16)
            rtts.append(time.perf_counter() - start)
        results["request_rtt_ms_median"] = 1000 * statistics.median(rtts)
        alice.stop()
        bob.stop()
    return results


def store_throughput(size_mib: float) -> float:
    """Best MiB/s of a fetch of ``size_mib`` into a ``Store`` between two libp2p nodes."""
    from node.shell.transport.libp2p import Libp2pTransport

    args = argparse.Namespace(sizes=[size_mib], repeat=2, requests=5)
    pair = trio.run(
        bench_pair, Libp2pTransport(os.urandom(32)), Libp2pTransport(os.urandom(32)), args
    )
    return float(max(r["best_mib_s"] for r in pair["fetch"] if r["into"] == "store"))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4, 16], help="MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from node.shell.transport.libp2p import Libp2pTransport

    out: dict[str, Any] = {"cpus": os.cpu_count()}
    a, b = Libp2pTransport(b"\1" * 32), Libp2pTransport(b"\2" * 32)
    out["libp2p"] = await bench_pair(a, b, args)
    network = MemoryNetwork()
    a2, b2 = MemoryTransport(network, b"\1" * 32), MemoryTransport(network, b"\2" * 32)
    out["memory"] = await bench_pair(a2, b2, args)
    return out


def report(out: dict[str, Any]) -> None:
    for kind in ("libp2p", "memory"):
        for row in out[kind]["fetch"]:
            secs = ", ".join(f"{s:.3f}" for s in row["seconds"])
            print(
                f"{kind:7s} {row['mib']:6.1f} MiB into {row['into']:6s}: "
                f"best {row['best_mib_s']:7.1f} MiB/s  ({secs} s)"
            )
        print(f"{kind:7s} request round trip: {out[kind]['request_rtt_ms_median']:.2f} ms median")


if __name__ == "__main__":
    arguments = parse()
    result = trio.run(main, arguments)
    if arguments.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
