#!/usr/bin/env python3
"""A stranger floods a node while two members replicate: honest commit-to-everywhere time
with the flood against the same run without it (target: at most 1.5x), and the flooded
node's peak RSS (bounded).

    .venv/bin/python scripts/bench_flood.py [--commits 5] [--flooders 8] [--json]

Two real `medforge node run` processes on 127.0.0.1 (alice, bob; bob bootstraps to alice).
Alice commits ``--commits`` plugins one after the other; each is timed until bob's node holds
it. Then the same again while a third process, holding a key the roster never named, floods
alice over libp2p with ``--flooders`` concurrent streams of: id lists of random ids, records
signed by unknown keys (resent again and again, and fresh ones), and summaries.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from crypto.identity import Identity
from crypto.records import BlobRef, Commit, Genesis, Member
from merge.lora_config import CONFIG_NAME, WEIGHTS_NAME
from node.core import messages
from node.core.order import root_item
from node.forge.netspec import make_spec
from node.shell.home import Home

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20

# scripts/ is not a package: the catch-up benchmark's fixtures are loaded from its file.
_catchup = runpy.run_path(str(Path(__file__).with_name("bench_catchup.py")))
BASE, SHAPES = _catchup["BASE"], _catchup["SHAPES"]
adapter_bytes, distilled_bytes = _catchup["adapter_bytes"], _catchup["distilled_bytes"]
start, status = _catchup["start"], _catchup["status"]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def commit_plugins(alice: Home, bob: Home, tmp: Path, first: int, n: int) -> list[float]:
    """Alice commits ``n`` plugins through her node; seconds until bob's node holds each."""
    from node.cli import main as cli

    times = []
    for k in range(first, first + n):
        plugin = tmp / f"plugin-{k}"
        plugin.mkdir()
        (plugin / CONFIG_NAME).write_bytes(
            json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 8}).encode()
        )
        (plugin / WEIGHTS_NAME).write_bytes(adapter_bytes(10_000 + k))
        distilled = tmp / "distilled.safetensors"
        if not distilled.exists():
            distilled.write_bytes(distilled_bytes(tmp))
        t0 = time.perf_counter()
        code = cli(
            [
                "commit",
                "--home",
                str(alice.path),
                "--adapter",
                str(plugin),
                "--distilled",
                str(distilled),
                "--task",
                f"t{k}",
                "--coeffs",
                "0.9",
                "0.1",
                "--out",
                str(tmp / f"bundle-{k}"),
            ]
        )
        assert code == 0
        deadline = time.monotonic() + 120
        while status(bob).get("forge_item") != k + 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"bob never got commit {k}")
            time.sleep(0.01)  # another process's state: nothing to await
        times.append(time.perf_counter() - t0)
    return times


# --- the flooder (a separate process) --------------------------------------------------------


async def flood(addr: str, network_hex: str, seconds: float, streams: int) -> None:
    from node.shell.transport.libp2p import Libp2pTransport
    from node.shell.transport.types import TransportConfig

    network = bytes.fromhex(network_hex)
    transport = Libp2pTransport(os.urandom(32), TransportConfig(max_request=1 << 20))

    async def ignore(peer: str, payload: bytes) -> bytes:
        return b""

    transport.set_request_handler(ignore)
    stale = [_unknown_record(network, k) for k in range(50)]
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        peer = await transport.connect(addr)

        async def one(k: int) -> None:
            n = 0
            with trio.move_on_after(seconds):
                while True:
                    n += 1
                    if n % 3 == 0:
                        ids = tuple(os.urandom(32) for _ in range(1000))
                        data = messages.encode(messages.Ids(4, (), ids))
                    elif n % 3 == 1:
                        fresh = _unknown_record(network, 1000 * k + n)
                        data = messages.encode(messages.Records((*stale[:20], fresh)))
                    else:
                        data = messages.encode(messages.Records(tuple(stale)))
                    try:
                        await transport.request(peer, data, max_response=16)
                    except Exception:  # noqa: BLE001 - a flooder does not care
                        await trio.sleep(0.01)

        for k in range(streams):
            nursery.start_soon(one, k)
        await trio.sleep(seconds + 1)
        transport.stop()


def _unknown_record(network: bytes, k: int) -> bytes:
    who = Identity.from_seed(k.to_bytes(32, "big"))
    ref = BlobRef(os.urandom(32), 1000)
    commit = Commit.create(
        who,
        network=network,
        seq=k,
        task="spam",
        classes=("a", "b"),
        base=BASE,
        blobs={"adapter_config": ref, "adapter_model": ref, "distilled": ref},
        parent=root_item(network),
        coeffs=(1.0, 1.0),
        objective={},
    )
    return commit.encode()


# --- the run -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commits", type=int, default=5)
    parser.add_argument("--flooders", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--flood", nargs=3, metavar=("ADDR", "NETWORK", "SECONDS"), help=argparse.SUPPRESS
    )  # the flooder process
    args = parser.parse_args()
    if args.flood:
        addr, network, seconds = args.flood
        trio.run(flood, addr, network, float(seconds), args.flooders)
        return
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as name:
        tmp = Path(name)
        alice, bob = Home.init(tmp / "alice", "alice"), Home.init(tmp / "bob", "bob")
        genesis = Genesis(
            name="flood",
            members=(
                Member("alice", alice.identity().public),
                Member("bob", bob.identity().public),
            ),
            threshold=1,
            spec=make_spec("fusion", BASE, SHAPES),
            nonce=os.urandom(4).hex(),
        )
        for home in (alice, bob):
            home.join(genesis)
        procs = []
        try:
            a, addr = start(alice, [])
            procs.append(a)
            b, _ = start(bob, [addr])
            procs.append(b)
            quiet = commit_plugins(alice, bob, tmp, 0, args.commits)
            rss_before = rss_mib(a.pid)
            seconds = 10.0 + 3.0 * args.commits
            flooder = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--flooders",
                    str(args.flooders),
                    "--flood",
                    addr,
                    genesis.network_id.hex(),
                    str(seconds),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=ROOT,
            )
            time.sleep(5.0)  # let the flood reach full strength before timing
            flooded = commit_plugins(alice, bob, tmp, args.commits, args.commits)
            alice_state = status(alice)
            flooder.wait(timeout=seconds + 60)
            peak = peak_rss_mib(a.pid)
            rss_after = rss_mib(a.pid)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    report: dict[str, Any] = {
        "quiet_s": quiet,
        "flooded_s": flooded,
        "ratio_median": statistics.median(flooded) / statistics.median(quiet),
        "alice_rss_mib": {"before_flood": rss_before, "after_flood": rss_after, "peak": peak},
        "alice_strangers_ignored": alice_state["strangers"] if "strangers" in alice_state else None,
        "alice_records": alice_state.get("records"),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"honest commit -> other node: median {statistics.median(quiet):.3f} s quiet, "
        f"{statistics.median(flooded):.3f} s under a {args.flooders}-stream stranger flood = "
        f"{report['ratio_median']:.2f}x (target <= 1.5x); alice RSS {rss_before:.0f} MiB "
        f"before, {rss_after:.0f} MiB after, peak {peak:.0f} MiB; alice holds "
        f"{alice_state.get('records')} records"
    )


if __name__ == "__main__":
    main()
