#!/usr/bin/env python3
"""A real node restarted after many commits: how soon it serves its composite again (issue 13).

    .venv/bin/python scripts/bench_restart.py [--commits 1000] [--modes stack,mixture]
                                              [--shape clip|small] [--json]

For each mode, a one-member network's store is filled offline with ``--commits`` signed commits
(distinct real-format LoRA adapters; ``clip``: 25 modules of 768x768 at rank 16, the shape of a
CLIP ViT-B/16 plugin; ``small``: 4 of 128x128 at rank 8), then a real ``medforge node run``
process starts, judges every commit and folds them (``first start``: until ``status`` serves
the composite at the last forge item). It is stopped with SIGTERM (as ``medforge node stop``
does) and started again on the same home: ``restart`` is the time from the new process's start
until it serves the same digest at the same forge item, and the node's RSS then. The digest
after the restart must equal the one before (the benchmark stops if not).

Target (issue 13): a node restarted after 1000 commits serves its composite within seconds.
Writes ``restart.json`` under ``bench-results/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from crypto.records import Genesis, Member
from merge.base_shapes import BaseShapes
from merge.pipeline.distill import Distilled, save_distilled
from node.errors import ControlError
from node.forge.netspec import make_spec
from node.shell.control import call
from node.shell.home import Home

ROOT = Path(__file__).resolve().parent.parent
# scripts/ is not a package: the store filler is bench_catchup.py's, loaded from its file
_catchup = runpy.run_path(str(Path(__file__).with_name("bench_catchup.py")))
BASE = "cb" * 32
MIB = 1 << 20
SHAPES = {"clip": (25, 768, 16), "small": (4, 128, 8)}  # modules, width, rank


@dataclass(frozen=True)
class Result:
    mode: str
    commits: int
    blob_mib: float
    first_start_s: float
    restart_s: float
    rss_after_restart_mib: float
    digest: str


def shapes(shape: str) -> BaseShapes:
    modules, width, _ = SHAPES[shape]
    table = {f"layers.{k}.q": (width, width) for k in range(modules)}
    return BaseShapes(table, "text-embeds", (-1, width))


def adapter_bytes(seed: int, shape: str) -> bytes:
    modules, width, rank = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for k in range(modules):
        p = f"base_model.model.layers.{k}.q"
        tensors[f"{p}.lora_A.weight"] = torch.randn(rank, width, generator=g) * 0.01
        tensors[f"{p}.lora_B.weight"] = torch.randn(width, rank, generator=g) * 0.01
    return save(tensors, metadata={"base": BASE})


def distilled_bytes(tmp: Path, width: int) -> bytes:
    g = torch.Generator().manual_seed(0)
    path = tmp / "distilled.safetensors"
    inputs, labels = torch.randn(4, 4, width, generator=g), torch.arange(4) % 2
    save_distilled(Distilled(inputs, labels, ("a", "b"), "t", "text-embeds", BASE), path)
    return path.read_bytes()


def fill(home: Home, n: int, shape: str, tmp: Path) -> int:
    """Sign ``n`` chained commits by ``home`` straight into its store; returns blob bytes."""
    _, width, rank = SHAPES[shape]
    config = json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": rank}).encode()
    distilled = distilled_bytes(tmp, width)
    blobs = lambda seq: {  # noqa: E731
        "adapter_config": config, "adapter_model": adapter_bytes(seq, shape),
        "distilled": distilled,
    }  # fmt: skip
    # (1, 1) now and then, as continual plugins commit; keep within the spec's range
    coeffs = lambda seq: ((1.0, 1.0), (0.9, 0.8), (0.75, 1.2))[seq % 3]  # noqa: E731
    return _catchup["sign_into"](home, n, blobs, coeffs)  # type: ignore[no-any-return]


def start(home: Home) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "node.cli", "node", "run", "--home", str(home.path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    assert proc.stdout is not None
    proc.stdout.readline()  # the listen line: the process is up
    return proc


def serving(home: Home, n: int, limit: float) -> dict[str, Any]:
    """``status`` once the node serves a composite at forge item ``n``."""
    deadline = time.monotonic() + limit
    while True:
        try:
            s: dict[str, Any] = call(home.control_path, "status", timeout=30)
        except ControlError:
            s = {}
        if s.get("forge_item") == n and s.get("composite_digest"):
            return s
        if time.monotonic() > deadline:
            raise SystemExit(f"not serving forge item {n} after {limit:.0f} s: {s}")
        time.sleep(0.1)  # another process's state: there is nothing to await


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_mode(mode: str, n: int, shape: str, tmp: Path) -> Result:
    home = Home.init(tmp / mode, "alice")
    # As `medforge network create` makes it: a stack network compacts (issue 13)
    spec = make_spec(mode, BASE, shapes(shape), compaction="auto" if mode == "stack" else "off")
    genesis = Genesis("restart", (Member("alice", home.identity().public),), 1, spec, mode)
    home.join(genesis)
    print(f"{mode}: signing {n} commits into the store ...", file=sys.stderr)
    total = fill(home, n, shape, tmp)
    t = time.perf_counter()
    proc = start(home)
    try:
        first = serving(home, n, 3600)
        first_s = time.perf_counter() - t
        print(f"{mode}: first start served item {n} after {first_s:.1f} s", file=sys.stderr)
    finally:
        stop(proc)
    t = time.perf_counter()
    proc = start(home)
    try:
        again = serving(home, n, 600)
        restart_s = time.perf_counter() - t
        rss = rss_mib(proc.pid)
    finally:
        stop(proc)
    if again["composite_digest"] != first["composite_digest"]:
        raise SystemExit(f"{mode}: another digest after the restart")
    print(f"{mode}: restart served item {n} after {restart_s:.2f} s", file=sys.stderr)
    digest = str(first["composite_digest"])
    return Result(mode, n, total / MIB, first_s, restart_s, rss, digest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--modes", default="stack,mixture")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="clip")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-restart-") as name:
            results.append(run_mode(mode, args.commits, args.shape, Path(name)))
    report = {"shape": args.shape, "results": [asdict(r) for r in results]}
    args.out.mkdir(exist_ok=True)
    (args.out / "restart.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for r in results:
        print(
            f"{r.mode}: {r.commits} commits ({r.blob_mib:.0f} MiB of blobs): first start "
            f"{r.first_start_s:.1f} s, restart {r.restart_s:.2f} s to the same digest "
            f"{r.digest[:16]}, RSS {r.rss_after_restart_mib:.0f} MiB"
        )


if __name__ == "__main__":
    main()
