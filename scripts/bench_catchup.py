#!/usr/bin/env python3
"""A fresh member catches up with a peer that holds many commits: time to the same digest,
against the lower bound (all blob bytes / loopback throughput measured in the same run), and
how many times either side banned or disconnected the other (target: zero).

    .venv/bin/python scripts/bench_catchup.py [--commits 1000] [--json]

Two real `medforge node run` processes on 127.0.0.1. Alice's store is filled offline with
``--commits`` signed commits (distinct real-format LoRA adapters, 4 Linear 128x128 modules at
rank 8, plus a distilled set); she starts, judges them all, and then bob, with an empty store
and alice as his only bootstrap peer, pulls everything. Writes a plot of bob's progress
(records held over time) next to the JSON report in ``bench-results/``.

bench_flood.py reuses this file's network fixtures (``BASE``, ``SHAPES``, ``adapter_bytes``,
``distilled_bytes``) and process helpers (``start``, ``status``) through ``runpy.run_path``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from crypto.records import BlobRef, Commit, Genesis, Member
from merge.base_shapes import BaseShapes
from merge.pipeline.distill import Distilled, save_distilled
from node.core.order import Entry, root_item
from node.errors import ControlError
from node.forge.netspec import make_spec
from node.shell.control import call
from node.shell.home import Home
from node.shell.store import Store

ROOT = Path(__file__).resolve().parent.parent
BASE = "ca" * 32
WIDTH, MODULES, RANK = 128, 4, 8
SHAPES = BaseShapes(
    {f"layers.{k}": (WIDTH, WIDTH) for k in range(MODULES)}, "text-embeds", (-1, WIDTH)
)
CONFIG = json.dumps({"peft_type": "LORA", "r": RANK, "lora_alpha": RANK}).encode()
MIB = 1 << 20


def adapter_bytes(seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for k in range(MODULES):
        p = f"base_model.model.layers.{k}"
        tensors[f"{p}.lora_A.weight"] = torch.randn(RANK, WIDTH, generator=g) * 0.01
        tensors[f"{p}.lora_B.weight"] = torch.randn(WIDTH, RANK, generator=g) * 0.01
    return save(tensors, metadata={"base": BASE})


def distilled_bytes(tmp: Path) -> bytes:
    g = torch.Generator().manual_seed(0)
    path = tmp / "distilled.safetensors"
    inputs, labels = torch.randn(8, 4, WIDTH, generator=g), torch.arange(8) % 2
    save_distilled(Distilled(inputs, labels, ("a", "b"), "t", "text-embeds", BASE), path)
    return path.read_bytes()


def fill(home: Home, n: int, tmp: Path) -> int:
    """Sign ``n`` chained commits by ``home`` straight into its store; returns blob bytes."""
    distilled = distilled_bytes(tmp)
    blobs = lambda seq: {  # noqa: E731
        "adapter_config": CONFIG, "adapter_model": adapter_bytes(seq), "distilled": distilled,
    }  # fmt: skip
    return sign_into(home, n, blobs, lambda seq: (0.9, 0.1))


Blobs = Callable[[int], dict[str, bytes]]
Coeffs = tuple[float, float]


def sign_into(home: Home, n: int, blobs_of: Blobs, coeffs_of: Callable[[int], Coeffs]) -> int:
    """Sign ``n`` chained commits by ``home`` (commit ``seq``: ``blobs_of(seq)``, coefficients
    ``coeffs_of(seq)``) straight into its store; returns the blob bytes. bench_restart.py
    fills its stores with this too."""
    genesis, identity = home.genesis(), home.identity()
    parent, total = root_item(genesis.network_id), 0
    with Store.open(home.path) as store:
        for seq in range(n):
            refs = {}
            for kind, data in blobs_of(seq).items():
                sha = hashlib.sha256(data).digest()
                store.put_blob(data, sha)
                refs[kind] = BlobRef(sha, len(data))
                total += len(data)
            commit = Commit.create(
                identity,
                network=genesis.network_id,
                seq=seq,
                task=f"t{seq}",
                classes=("a", "b"),
                base=str(genesis.spec["base"]),
                blobs=refs,
                parent=parent,
                coeffs=coeffs_of(seq),
                objective={},
            )
            data = commit.encode()
            store.put_record(hashlib.sha256(data).digest(), commit.KIND, data)
            parent = Entry.of(commit).item
    return total


def start(home: Home, bootstrap: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    config = home.config()
    config.bootstrap = bootstrap
    home.save_config(config)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "node.cli",
            "node",
            "run",
            "--home",
            str(home.path),
            "--sync-interval",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    listen = json.loads(proc.stdout.readline())["listen"][0]
    return proc, f"{listen}/p2p/{home.identity().public.peer_id()}"


def status(home: Home) -> dict[str, Any]:
    try:
        result: dict[str, Any] = call(home.control_path, "status", timeout=30)
    except ControlError:
        return {}
    return result


def wait(
    home: Home,
    n: int,
    limit: float,
    samples: list[tuple[float, int]] | None = None,
    digest: str | None = None,
) -> dict[str, Any]:
    t0, deadline = time.perf_counter(), time.monotonic() + limit
    while True:
        s = status(home)
        if samples is not None and s:
            samples.append((time.perf_counter() - t0, int(s["records"])))
        if (
            s.get("forge_item") == n
            and s.get("composite_digest")
            and (digest is None or s["composite_digest"] == digest)
        ):
            return s
        if time.monotonic() > deadline:
            raise SystemExit(
                f"{home.path.name}: not at forge item {n} after {limit:.0f} s: "
                f"{ {k: s.get(k) for k in ('records', 'forge_item', 'frames')} }"
            )
        time.sleep(0.2)  # another process's state: there is nothing to await


def plot(samples: list[tuple[float, int]], n: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([t for t, _ in samples], [k for _, k in samples])
    ax.axhline(n, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("seconds since bob started")
    ax.set_ylabel("commits held by bob")
    ax.set_title(f"catch-up of {n} commits from one peer")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # scripts/ is not a package: the sibling benchmark is loaded from its file
    bench_transport = runpy.run_path(str(Path(__file__).with_name("bench_transport.py")))

    with tempfile.TemporaryDirectory(prefix="bench-catchup-") as name:
        tmp = Path(name)
        alice, bob = Home.init(tmp / "alice", "alice"), Home.init(tmp / "bob", "bob")
        genesis = Genesis(
            name="catchup",
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
        print(f"signing {args.commits} commits into alice's store ...", file=sys.stderr)
        total = fill(alice, args.commits, tmp)
        mib_s = bench_transport["store_throughput"](16)
        procs = []
        try:
            proc, addr = start(alice, [])
            procs.append(proc)
            print("alice judges her store ...", file=sys.stderr)
            ready = wait(alice, args.commits, 600)
            print("bob catches up ...", file=sys.stderr)
            samples: list[tuple[float, int]] = []
            t0 = time.perf_counter()
            proc, _ = start(bob, [addr])
            procs.append(proc)
            done = wait(bob, args.commits, 1200, samples, ready["composite_digest"])
            seconds = time.perf_counter() - t0
            alice_end = status(alice)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    bound = total / MIB / mib_s
    report = {
        "commits": args.commits,
        "blob_mib": total / MIB,
        "loopback_store_mib_s": mib_s,
        "catch_up_s": seconds,
        "bound_s": bound,
        "ratio": seconds / bound,
        "bans": {"bob": done["frames"]["bans"], "alice": alice_end["frames"]["bans"]},
        "garbage": {"bob": done["garbage"], "alice": alice_end["garbage"]},
        "frames_bob": done["frames"],
        "same_digest": done["composite_digest"] == ready["composite_digest"],
    }
    args.out.mkdir(exist_ok=True)
    (args.out / "catchup.json").write_text(json.dumps(report, indent=2))
    plot(samples, args.commits, args.out / "catchup.png")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{args.commits} commits ({total / MIB:.1f} MiB of blobs) caught up from one peer in "
        f"{seconds:.1f} s = {seconds / bound:.1f}x the bound of {bound:.2f} s "
        f"(loopback {mib_s:.0f} MiB/s); bans: bob {report['bans']['bob']}, alice "
        f"{report['bans']['alice']}; garbage: bob {done['garbage']}, alice "
        f"{alice_end['garbage']}; same digest: {report['same_digest']}"
    )
    print(f"plot: {args.out / 'catchup.png'}")


if __name__ == "__main__":
    main()
