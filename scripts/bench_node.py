#!/usr/bin/env python3
"""N real nodes (separate `medforge node run` processes, libp2p on 127.0.0.1): time from a
commit to every node holding the same composite digest, against the lower bound
size / loopback stream throughput measured in the same run; idle CPU and RSS per node.

    .venv/bin/python scripts/bench_node.py [--nodes 5 10] [--json]

The adapter is a real PEFT LoRA (24 Linear 768x768 modules, rank 16: about 2.4 MB) plus a
distilled set; the network is a random tree (each node bootstraps to an earlier one), so a
commit crosses up to depth-of-tree hops.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from crypto.records import Genesis, Member
from merge.base_shapes import BaseShapes, linear_shapes
from merge.lora_config import WEIGHTS_NAME
from merge.pipeline.distill import Distilled, save_distilled
from node.errors import ControlError
from node.forge.netspec import make_spec
from node.shell.control import call
from node.shell.home import Home

ROOT = Path(__file__).resolve().parent.parent
BASE = "bench-base-" + "0" * 52
MIB = 1 << 20


class Wide(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(768, 768) for _ in range(24))


CLASSES = ("a", "b", "c", "d")
SHAPES = BaseShapes(linear_shapes(Wide()), "text-embeds", (-1, 384))


def make_plugin(out: Path) -> tuple[Path, Path]:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    targets = [f"layers.{i}" for i in range(24)]
    model = get_peft_model(Wide(), LoraConfig(r=16, lora_alpha=16, target_modules=targets))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.01)
    adapter = out / "plugin"
    model.save_pretrained(str(adapter))
    weights = adapter / WEIGHTS_NAME
    save_file(load_file(str(weights)), str(weights), metadata={"base": BASE})
    distilled = out / "distilled.safetensors"
    inputs, labels = torch.randn(40, 16, 384, generator=g), torch.arange(40) % 4
    save_distilled(Distilled(inputs, labels, CLASSES, "bench", "text-embeds", BASE), distilled)
    return adapter, distilled


def start(homes: list[Home], seed: int) -> tuple[list[subprocess.Popen[bytes]], int]:
    rng = random.Random(seed)
    procs: list[subprocess.Popen[bytes]] = []
    addrs: list[str] = []
    depth = [0]
    for k, home in enumerate(homes):
        cfg = home.config()
        parent = rng.randrange(k) if k else None
        cfg.bootstrap = [addrs[parent]] if parent is not None else []
        if parent is not None:
            depth.append(depth[parent] + 1)
        home.save_config(cfg)
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
                "2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        addrs.append(json.loads(proc.stdout.readline())["listen"][0])
        procs.append(proc)
    return procs, max(depth)


def statuses(homes: list[Home]) -> list[dict[str, Any]]:
    out = []
    for home in homes:
        try:
            out.append(call(home.control_path, "status", timeout=10))
        except ControlError:
            out.append({})
    return out


def converged(states: list[dict[str, Any]]) -> bool:
    digests = {s.get("composite_digest") for s in states}
    return (
        all(s.get("forge_item") == 1 for s in states) and len(digests) == 1 and None not in digests
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_network(n: int, tmp: Path, adapter: Path, distilled: Path) -> dict[str, Any]:
    from node.cli import main as cli

    homes = [Home.init(tmp / f"n{n}-{k}", f"inst{k}") for k in range(n)]
    genesis = Genesis(
        name=f"bench-{n}",
        members=tuple(Member(h.config().name, h.identity().public) for h in homes),
        threshold=1,
        spec=make_spec("stack", BASE, SHAPES),
        nonce=os.urandom(8).hex(),
    )
    for home in homes:
        home.join(genesis)
    procs, depth = start(homes, seed=n)
    try:
        t0 = time.perf_counter()
        code = cli(
            [
                "commit",
                "--home",
                str(homes[0].path),
                "--adapter",
                str(adapter),
                "--distilled",
                str(distilled),
                "--task",
                "bench",
                "--coeffs",
                "1",
                "1",
                "--out",
                str(tmp / f"bundle-{n}"),
            ]
        )
        assert code == 0
        deadline = time.monotonic() + 120
        while not converged(statuses(homes)):
            if time.monotonic() > deadline:
                raise SystemExit(f"{n} nodes did not converge in 120 s")
            time.sleep(0.05)  # polling other processes' state: nothing to await here
        seconds = time.perf_counter() - t0
        before = [cpu_seconds(p.pid) for p in procs]
        time.sleep(5.0)
        idle = [(cpu_seconds(p.pid) - b) / 5.0 for p, b in zip(procs, before, strict=True)]
        rss = [rss_mib(p.pid) for p in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    return {
        "nodes": n,
        "tree_depth": depth,
        "commit_to_converged_s": seconds,
        "idle_cpu_percent_mean": 100 * sum(idle) / n,
        "rss_mib_mean": sum(rss) / n,
        "rss_mib_max": max(rss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-node-") as name:
        tmp = Path(name)
        adapter, distilled = make_plugin(tmp)
        size = sum(p.stat().st_size for p in (*adapter.iterdir(), distilled)) / MIB
        # scripts/ is not a package: the sibling benchmark is loaded from its file
        bench_transport = runpy.run_path(str(Path(__file__).with_name("bench_transport.py")))
        mib_s = bench_transport["store_throughput"](size)
        rows = [run_network(n, tmp, adapter, distilled) for n in args.nodes]
    out = {"payload_mib": size, "loopback_store_mib_s": mib_s, "runs": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(
        f"payload {size:.2f} MiB; loopback fetch into a store {mib_s:.1f} MiB/s "
        f"-> lower bound {size / mib_s * 1000:.0f} ms per hop"
    )
    for r in rows:
        bound = r["tree_depth"] * size / mib_s
        print(
            f"{r['nodes']:3d} nodes (tree depth {r['tree_depth']}): commit -> same digest "
            f"everywhere in {r['commit_to_converged_s']:.2f} s = "
            f"{r['commit_to_converged_s'] / bound:.1f}x the bound of {bound:.2f} s; idle CPU "
            f"{r['idle_cpu_percent_mean']:.1f}% per node, RSS {r['rss_mib_mean']:.0f} MiB "
            f"(max {r['rss_mib_max']:.0f})"
        )


if __name__ == "__main__":
    main()
