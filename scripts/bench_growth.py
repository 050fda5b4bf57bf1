#!/usr/bin/env python
"""Growth benchmark (issue 13): what a composite costs as commits accumulate, per mode.

Real commits (signed, with PEFT-format adapter blobs and a distilled set) of CLIP ViT-B/16-
shaped adapters (25 modules of 768x768, r=16) go through the node's own ``Composer`` with
checkpoint files on disk, one commit at a time, as a node folds them. At each size N
(``--commits``, default 1,10,100,1000) it measures, on one thread:

- **apply**: ``merge.fold.apply`` of one more commit onto the composite (median of 9: one
  call's time varies up to 3x with the allocator's state);
- **digest**: ``composite_digest`` of the composite (median of 9);
- **composite**: the tensor bytes it holds, against the dense ΔW (25 x 768 x 768 float32);
- **RSS** of this process;
- **refold d=1 / d=100**: a late orphan whose place in the order is d commits before the tip:
  the time (and the number of commits applied) for a composer to take the new order, starting
  from the state a restarted node is in (the checkpoints on disk, hard-linked per run);
- **restart**: a fresh composer on the same checkpoint files folding the same N commits
  (loads the newest checkpoint, verifies its digest, applies the rest).

The restarted and refolded composers must reach the digest the running one holds: checked by
equality every time (the benchmark stops if not). Targets (issue 13): at 1000 commits stack
apply and digest within 3x of their cost at 10, composite <= 1.1x dense, RSS <= dense + 500
MiB, refold proportional to d, not N. Mixture inference in one batched pass is measured by
``scripts/bench_mixture.py``.

    .venv/bin/python scripts/bench_growth.py                    # ~10 min on 2 cores
    .venv/bin/python scripts/bench_growth.py --quick            # small shapes, CI smoke
    .venv/bin/python scripts/bench_growth.py --modes stack --commits 10,100

Writes ``bench_growth-<tag>.{json,md,png}`` under ``bench-results/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from crypto.identity import Identity
from crypto.records import Commit, Genesis, Member
from merge.base_shapes import BaseShapes
from merge.compaction import Compaction
from merge.digest import composite_digest
from merge.export import peft_files
from merge.fold import Composite, apply
from merge.lora import LoraModule
from merge.pipeline.distill import Distilled, save_distilled
from node.forge.bundle import blob_ref
from node.forge.composer import Composer
from node.forge.footprint import footprint
from node.forge.netspec import make_spec, merge_spec
from node.forge.validate import Rules, check_commit
from node.shell.checkpoint_files import CheckpointFiles

ROOT = Path(__file__).resolve().parents[1]
BASE = "c1" * 32  # a stand-in fingerprint: nothing here loads a model
MODES = ("stack", "fusion", "mixture")
ME = Identity.from_seed(b"\x13" * 32)
CHECK_FROM_EMPTY = 100  # refolds up to this size are also checked against a fold from empty


@dataclass(frozen=True)
class Shape:
    modules: int = 25
    dim: int = 768
    rank: int = 16
    commits: tuple[int, ...] = (1, 10, 100, 1000)
    distances: tuple[int, ...] = (1, 100)
    checkpoint_every: int = 8

    @property
    def dense_bytes(self) -> int:
        return self.modules * self.dim * self.dim * 4


QUICK = Shape(modules=4, dim=32, rank=4, commits=(1, 10, 40), distances=(1, 20))


def module_paths(n: int) -> list[str]:
    """CLIP's vision tower projections, q/k/v of layers 0..11, the first ``n``."""
    kinds = itertools.product(range(12), ("q", "k", "v"))
    return [f"vision_model.encoder.layers.{k}.self_attn.{p}_proj" for k, p in kinds][:n]


def say(t0: float, msg: str) -> None:
    print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)


class Blobs:
    """Commit blobs by sha256; an adapter's weights are a pure function of its seed and are
    regenerated on each read (1000 CLIP-sized adapters would hold 2.4 GB)."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.paths = module_paths(shape.modules)
        config, _ = self._files(0)
        self.fixed = {blob_ref(config).sha256: config}
        inputs = torch.linspace(-1, 1, 2 * 4 * shape.dim).reshape(2, 4, shape.dim)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "d.safetensors"
            labels = torch.arange(2)
            save_distilled(Distilled(inputs, labels, ("a", "b"), "t", "text-embeds", BASE), path)
            self.distilled = path.read_bytes()
        self.fixed[blob_ref(self.distilled).sha256] = self.distilled
        self.seeds: dict[bytes, int] = {}
        self.reads = 0

    def _files(self, seed: int) -> tuple[bytes, bytes]:
        g = torch.Generator().manual_seed(seed)
        s, r = self.shape.dim, self.shape.rank
        modules = {
            p: LoraModule(
                A=torch.randn(r, s, generator=g) * 0.02, B=torch.randn(s, r, generator=g) * 0.02
            )
            for p in self.paths
        }
        return peft_files(Composite("stack", modules=modules), base=BASE)

    def refs(self, seed: int) -> dict[str, Any]:
        config, weights = self._files(seed)
        ref = blob_ref(weights)
        self.seeds[ref.sha256] = seed
        return {
            "adapter_config": blob_ref(config),
            "adapter_model": ref,
            "distilled": blob_ref(self.distilled),
        }

    def read(self, sha: bytes) -> bytes:
        self.reads += 1
        if sha in self.fixed:
            return self.fixed[sha]
        return self._files(self.seeds[sha])[1]


def genesis(mode: str, shape: Shape) -> Genesis:
    shapes = BaseShapes(
        {p: (shape.dim, shape.dim) for p in module_paths(shape.modules)},
        "text-embeds",
        (-1, shape.dim),
    )
    compaction = "auto" if mode == "stack" else "off"
    spec = make_spec(mode, BASE, shapes, compaction=compaction)
    return Genesis("growth", (Member("me", ME.public),), 1, spec, f"growth-{mode}")


def commit(g: Genesis, blobs: Blobs, seq: int) -> Commit:
    # Coefficients within the spec's ranges (keep in [0.5, 1]), varied by seq; (1, 1) often,
    # as continual plugins are committed.
    w1 = (1.0, 0.9, 0.75)[seq % 3]
    w2 = (1.0, 0.8, 1.2, 0.6)[seq % 4]
    return Commit.create(
        ME,
        network=g.network_id,
        seq=seq,
        task=f"t{seq}",
        classes=("a", "b"),
        base=BASE,
        blobs=blobs.refs(seq),
        parent=b"\0" * 32,
        coeffs=(w1, w2),
        objective={},
    )


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def median_time(fn: Callable[[], object], repeats: int = 9) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def linked_copy(src: Path, dst: Path) -> Path:
    """The checkpoint files as a restarted node finds them; hard links (the composer only
    ever creates, renames and deletes files), so a run cannot disturb the original."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            os.link(f, dst / f.name)
    return dst


@dataclass
class Point:
    mode: str
    commits: int
    apply_ms: float
    digest_ms: float
    composite_mib: float
    dense_mib: float
    representation: str
    rss_mib: float
    restart_s: float
    restart_applied: int
    refold: dict[str, dict[str, float]]
    # stack: what any dense step that keeps the exact product must spend (dense_floor_ms)
    floor_ms: float | None = None


def dense_floor_ms(shape: Shape) -> float:
    """A lower bound on one commit's dense stack step, measured here: per module, the exact
    product's float64 GEMM alone (``[dim, r] @ [r, dim]``, operands already scaled) plus one
    read-and-write pass over the ``[dim, dim]`` ΔW (``mul`` by w1). Every element of the
    product must be formed exactly (``merge.dense``: float64, whatever the summation order)
    and every element of ΔW read and written, so no dense representation does better on this
    machine; against the factored apply at N=10 it says how far a ratio target is reachable."""
    b = torch.randn(shape.dim, shape.rank, dtype=torch.float64)
    a = torch.randn(shape.rank, shape.dim, dtype=torch.float64)
    w = torch.randn(shape.dim, shape.dim)
    t = torch.tensor(0.9)
    product = torch.empty(shape.dim, shape.dim, dtype=torch.float64)

    def step() -> None:
        for _ in range(shape.modules):
            torch.mm(b, a, out=product)
            torch.mul(w, t)

    step()  # warm
    return median_time(step) * 1e3


def run_mode(mode: str, shape: Shape, work: Path, t0: float) -> list[Point]:
    blobs = Blobs(shape)
    g = genesis(mode, shape)
    spec, rules = merge_spec(g), Rules.of(g)
    policy = Compaction.of(spec)
    top = max(shape.commits)
    commits = [commit(g, blobs, seq) for seq in range(top + 1)]  # +1: the commit measured
    orphan = commit(g, blobs, top + 1)
    ckpt = work / f"{mode}-checkpoints"

    def composer(directory: Path) -> Composer:
        files = CheckpointFiles(directory)
        every = shape.checkpoint_every
        return Composer(
            spec, rules, blobs.read, checkpoints=files, checkpoint_every=every, defer_members=True
        )  # as the node makes it (a mixture's members read from the store when used)

    running = composer(ckpt)
    points = []
    for n in range(1, top + 1):
        running.update(commits[:n])
        if n not in shape.commits:
            continue
        nxt = commits[n]
        adapter = check_commit(nxt, {k: blobs.read(r.sha256) for k, r in nxt.blobs.items()}, rules)
        c = running.composite
        apply_s = median_time(partial(apply, c, adapter, nxt.coeffs, compaction=policy))
        digest_s = median_time(partial(composite_digest, c))
        fp = footprint(c)
        rss = rss_mib()  # the running node's state, before the restart and refold experiments
        run_dir = work / f"{mode}-{n}"
        restarted = composer(linked_copy(ckpt, run_dir / "restart"))
        t = time.perf_counter()
        assert restarted.update(commits[:n]) == running.digest, "restart: another digest"
        restart_s = time.perf_counter() - t
        refold = {}
        other = restarted
        for d in (d for d in shape.distances if d < n):
            other = composer(linked_copy(ckpt, run_dir / f"orphan-{d}"))
            other.update(commits[:n])  # the restarted node's state, untimed
            before = other.statistics().applied
            order = [*commits[: n - d], orphan, *commits[n - d : n]]
            t = time.perf_counter()
            got = other.update(order, stable=n - d)
            seconds = time.perf_counter() - t
            if n <= CHECK_FROM_EMPTY:  # beyond, a fold from empty costs minutes
                reference = Composer(spec, rules, blobs.read).update(order)
                assert got == reference, f"refold d={d}: another digest than from empty"
            refold[str(d)] = {"s": seconds, "applied": other.statistics().applied - before}
        point = Point(
            mode,
            n,
            apply_s * 1e3,
            digest_s * 1e3,
            fp.nbytes / 2**20,
            shape.dense_bytes / 2**20,
            fp.representation,
            rss,
            restart_s,
            restarted.statistics().applied,
            refold,
            dense_floor_ms(shape) if mode == "stack" and n == top else None,
        )
        del restarted, other  # their composites are not the running node's memory
        gc.collect()
        points.append(point)
        say(t0, f"{mode} N={n}: {line(point)}")
    return points


def line(p: Point) -> str:
    refold = ", ".join(
        f"refold d={d} {v['s']:.2f} s ({int(v['applied'])} applied)" for d, v in p.refold.items()
    )
    return (
        f"apply {p.apply_ms:.1f} ms, digest {p.digest_ms:.1f} ms, composite "
        f"{p.composite_mib:.1f} MiB ({p.representation}), RSS {p.rss_mib:.0f} MiB, restart "
        f"{p.restart_s:.2f} s ({p.restart_applied} applied){', ' + refold if refold else ''}"
    )


# --- report --------------------------------------------------------------------------------


def ratios(points: Sequence[Point]) -> dict[str, dict[str, float]]:
    """Per mode, the largest N against N=10 (the issue's targets) where both were run."""
    out = {}
    for mode in dict.fromkeys(p.mode for p in points):
        mine = {p.commits: p for p in points if p.mode == mode}
        if 10 not in mine or max(mine) <= 10:
            continue
        big, ten = mine[max(mine)], mine[10]
        out[mode] = {
            "commits": float(big.commits),
            "apply_vs_10": big.apply_ms / ten.apply_ms,
            "digest_vs_10": big.digest_ms / ten.digest_ms,
            "composite_vs_dense": big.composite_mib / big.dense_mib,
            "rss_minus_dense_mib": big.rss_mib - big.dense_mib,
        }
        if big.floor_ms is not None:
            out[mode]["dense_floor_vs_10"] = big.floor_ms / ten.apply_ms
    return out


def markdown(points: Sequence[Point], shape: Shape, seconds: float) -> str:
    d = ", ".join(f"d={x}" for x in shape.distances)
    lines = [
        f"# bench_growth: {shape.modules} modules of {shape.dim}x{shape.dim}, r={shape.rank}, "
        f"checkpoint every {shape.checkpoint_every}, one thread ({seconds:.0f} s)",
        "",
        f"| mode | commits | apply | digest | composite (dense {shape.dense_bytes / 2**20:.0f} "
        f"MiB) | representation | RSS | restart | refold after an orphan ({d}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        refold = "; ".join(
            f"d={k}: {v['s']:.2f} s, {int(v['applied'])} applied" for k, v in p.refold.items()
        )
        lines.append(
            f"| {p.mode} | {p.commits} | {p.apply_ms:.1f} ms | {p.digest_ms:.1f} ms | "
            f"{p.composite_mib:.1f} MiB | {p.representation} | {p.rss_mib:.0f} MiB | "
            f"{p.restart_s:.2f} s ({p.restart_applied} applied) | {refold or 'n/a'} |"
        )
    lines += [
        "",
        "Ratios at the largest N (targets: apply, digest <= 3x of N=10; composite",
        "<= 1.1x dense; RSS <= dense + 500 MiB):",
        "",
    ]
    for mode, r in ratios(points).items():
        lines.append(
            f"- {mode} at {int(r['commits'])}: apply {r['apply_vs_10']:.2f}x, digest "
            f"{r['digest_vs_10']:.2f}x of N=10; composite {r['composite_vs_dense']:.2f}x dense; "
            f"RSS dense + {r['rss_minus_dense_mib']:.0f} MiB"
        )
        if "dense_floor_vs_10" in r:
            lines.append(
                f"- {mode}: the dense step's floor (the exact product's float64 GEMMs and one "
                f"pass over ΔW, `dense_floor_ms`) is {r['dense_floor_vs_10']:.2f}x the apply "
                "at N=10 on this machine"
            )
    return "\n".join(lines) + "\n"


def plot(points: Sequence[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("apply_ms", "apply one commit (ms)"),
        ("digest_ms", "digest (ms)"),
        ("composite_mib", "composite (MiB)"),
        ("rss_mib", "process RSS (MiB)"),
        ("restart_s", "restart (s)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for mode in dict.fromkeys(p.mode for p in points):
            mine = [p for p in points if p.mode == mode]
            ax.plot([p.commits for p in mine], [getattr(p, key) for p in mine], "o-", label=mode)
        ax.set_xscale("log")
        ax.set_xlabel("commits")
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle("composite cost as commits accumulate (bench_growth)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Shape]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes and counts (CI smoke)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, of " + str(MODES))
    ap.add_argument("--commits", default=None, help="sizes, e.g. 1,10,100,1000")
    ap.add_argument("--distances", default=None, help="orphan distances from the tip, e.g. 1,100")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = ap.parse_args(argv)
    shape = QUICK if args.quick else Shape()
    try:
        if args.commits:
            shape = replace_ints(shape, "commits", args.commits)
        if args.distances:
            shape = replace_ints(shape, "distances", args.distances)
        modes = tuple(args.modes.split(","))
        if not modes or set(modes) - set(MODES):
            raise ValueError(f"--modes: choose from {MODES}, got {args.modes!r}")
    except ValueError as e:
        ap.error(str(e))
    args.modes = modes
    return args, shape


def replace_ints(shape: Shape, name: str, text: str) -> Shape:
    values = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    if not values or values[0] < 1:
        raise ValueError(f"--{name}: positive integers, got {text!r}")
    return Shape(**{**asdict(shape), name: values})


def in_subprocess(mode: str, argv: Sequence[str] | None, tmp: Path, t0: float) -> list[Point]:
    """This script with ``--modes MODE`` in a fresh process; its points, read back."""
    args = [a for a in (sys.argv[1:] if argv is None else argv)]
    args = [
        a for k, a in enumerate(args) if a != "--modes" and (k == 0 or args[k - 1] != "--modes")
    ]
    args = [a for a in args if not a.startswith("--modes=")]
    out = tmp / f"sub-{mode}"
    cmd = [sys.executable, __file__, *args, "--modes", mode, "--out", str(out), "--tag", mode]
    say(t0, f"{mode}: in its own process")
    subprocess.run(cmd, check=True)
    data = json.loads((out / f"bench_growth-{mode}.json").read_text())
    return [Point(**p) for p in data["points"]]


def main(argv: Sequence[str] | None = None) -> None:
    args, shape = parse(argv)
    torch.set_num_threads(1)  # the fold is single-threaded by design; so is this measure
    t0 = time.perf_counter()
    tag = args.tag or ("quick" if args.quick else "full")
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as tmp:
        for mode in args.modes:
            if len(args.modes) == 1:
                points += run_mode(mode, shape, Path(tmp), t0)
            else:  # a process per mode: each RSS is that mode's alone
                points += in_subprocess(mode, argv, Path(tmp), t0)
    seconds = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(points, shape, seconds)
    (args.out / f"bench_growth-{tag}.md").write_text(text)
    data = {"shape": asdict(shape), "points": [asdict(p) for p in points], "ratios": ratios(points)}
    (args.out / f"bench_growth-{tag}.json").write_text(json.dumps(data, indent=1) + "\n")
    plot(points, args.out / f"bench_growth-{tag}.png")
    print(text)
    say(t0, f"wrote {args.out / f'bench_growth-{tag}.md'} (+ .json, .png)")


if __name__ == "__main__":
    main()
