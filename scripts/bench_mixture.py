#!/usr/bin/env python
"""Benchmark mixture inference (issue 13): M separate passes against one batched multi-LoRA pass.

A MedForge-Mixture of ``--members`` (16) random LoRA plugins (rank ``--rank``, 8) on the
backend's default targets, scored on N inputs, ``P(x) = Σ_j λ_j softmax(logits_j(x))``:

- ``per-member dense ΔW`` (the baseline, and the reference for the probabilities): one pass
  per member, each with that member's dense ``B @ A`` added to the base through
  ``functional_call`` and its inputs prepared again (``evaluate.mixture_probs_per_member``);
- ``per-member factored``: one pass per member with the low-rank update ``x Aᵀ Bᵀ`` (the
  batched code with one member per pass), at the baseline's input batch (``--batch``, 64: only
  ``ΔW`` is gone) and at the default mixture batch (``MIXTURE_BATCH``: texts pad to the
  longest of fewer texts, but a pass computes fewer rows);
- ``batched K=k``: ``k`` members per pass (``evaluate.mixture_probs``), ``k x batch`` rows;
  ``batched default``: ``MEMBERS_PER_PASS`` x ``MIXTURE_BATCH``, what ``composite_probs`` runs;
- where the time goes: ``base x M`` (M passes of the bare base: the compute that batching cannot
  remove on a CPU, it only shares the weight reads), ``ΔW forming x M`` (``B @ A`` and
  ``W + ΔW`` for every member, outside any forward pass), ``prepare x M`` (tokenising).

Backends: the real offline text base (``load_backend("text", None)``, MiniLM-L6) on ICD-10-CM
descriptions, and a CLIP ViT-B/16-*shaped* model built from a ``CLIPConfig`` with seeded random
weights (no CLIP checkpoint ships offline) on random pixels. Every time is the fastest of
``--repeat`` interleaved rounds on one torch thread; ratios are against the baseline of the same
run.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_mixture.py          # text N=8,128; clip N=4
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_mixture.py --quick  # seconds (2-layer clip)
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_mixture.py --profile  # + top ops per path

Writes ``bench_mixture-<tag>.{json,md}`` under ``bench-results/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from merge.lora import LoraAdapter, LoraModule  # noqa: E402
from merge.pipeline.backends import load_backend  # noqa: E402
from merge.pipeline.backends.base import DualEncoder, delta_params  # noqa: E402
from merge.pipeline.evaluate import (  # noqa: E402
    MEMBERS_PER_PASS,
    MIXTURE_BATCH,
    adapter_delta,
    features,
    mixture_probs,
    mixture_probs_per_member,
)

ROOT = Path(__file__).resolve().parents[1]
Data = Sequence[str] | torch.Tensor


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, CPU seconds of this process, wall seconds). On one torch thread the CPU time
    is the work done, whatever share of a core other processes left us; wall time is not."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - t0


def target_paths(backend: DualEncoder) -> list[str]:
    leaves = set(backend.lora_targets)
    return sorted(
        n
        for n, m in backend.model.named_modules()
        if isinstance(m, torch.nn.Linear) and (n in leaves or n.rsplit(".", 1)[-1] in leaves)
    )


def random_members(backend: DualEncoder, n: int, rank: int) -> list[LoraAdapter]:
    """``n`` seeded plugins: ``A ~ N(0, 1/in)``, ``B ~ N(0, 0.05²)`` on every default target."""
    linears = dict(backend.model.named_modules())
    members = []
    for j in range(n):
        gen = torch.Generator().manual_seed(1000 + j)
        modules = {}
        for p in target_paths(backend):
            out_dim, in_dim = linears[p].weight.shape
            a = torch.randn(rank, in_dim, generator=gen) / math.sqrt(in_dim)
            modules[p] = LoraModule(a, torch.randn(out_dim, rank, generator=gen) * 0.05)
        members.append(LoraAdapter(base=backend.fingerprint, modules=modules, name=f"m{j}"))
    return members


def clip_backend(layers: int, image_size: int) -> DualEncoder:
    """A CLIP ViT-B/16-shaped model (768 wide, 12 heads, patch 16) with seeded random weights;
    the text tower (CLIP-B's shape) reads MiniLM's token ids, as in the tests' tiny CLIP."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from merge.pipeline.backends.clip import ClipBackend
    from merge.pipeline.backends.text import default_text_base

    config = CLIPConfig(
        text_config={"vocab_size": 30522, "bos_token_id": 101, "eos_token_id": 102},
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": layers,
            "num_attention_heads": 12,
            "image_size": image_size,
            "patch_size": 16,
        },
        projection_dim=512,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(config)
    tokenizer = AutoTokenizer.from_pretrained(default_text_base())
    return ClipBackend(model, tokenizer, name=f"clip-vit-b16-shaped-{layers}l-{image_size}px")


def bench_case(
    backend: DualEncoder,
    data: Data,
    classes: Sequence[str],
    members: Sequence[LoraAdapter],
    *,
    per_pass: Sequence[int],
    batch: int,
    repeat: int,
) -> list[dict[str, Any]]:
    """Rows ``{path, kind, cpu_s, wall_s, speedup, max_abs_diff}``: kind ``path`` scores the
    mixture (speedup: baseline / row); kind ``part`` is a piece of the work (speedup: its
    share of the baseline). Rounds interleave every row; a row's time is its fastest round
    (the least disturbed by other processes on a shared machine)."""
    m, rows_per_batch = len(members), min(batch, len(data))
    weights = [1.0 / m] * m
    backend.encode_classes(classes)  # cached: not part of any row

    def batched(k: int, size: int = batch) -> Callable[[], torch.Tensor]:
        return lambda: mixture_probs(
            backend, members, weights, data, classes, members_per_pass=k, batch_size=size
        )

    baseline = f"per-member dense ΔW x{m} (baseline)"
    small = min(MIXTURE_BATCH, len(data))
    paths = {
        baseline: lambda: mixture_probs_per_member(backend, members, weights, data, classes),
        f"per-member factored (K=1, 1x{rows_per_batch} rows)": batched(1),
        f"per-member factored (K=1, 1x{small} rows)": batched(1, MIXTURE_BATCH),
    }
    for k in per_pass:
        paths[f"batched K={k} ({k}x{rows_per_batch} rows a pass)"] = batched(k)
    name = f"batched default K={MEMBERS_PER_PASS} ({MEMBERS_PER_PASS}x{small} rows)"
    paths[name] = batched(MEMBERS_PER_PASS, MIXTURE_BATCH)
    parts: dict[str, Callable[[], Any]] = {
        f"base x{m} (no plugin)": lambda: [features(backend, data, None) for _ in range(m)],
        f"ΔW forming x{m} (B@A, W+ΔW)": lambda: [
            delta_params(backend.model, adapter_delta(a)) for a in members
        ],
    }
    if not isinstance(data, torch.Tensor):
        parts[f"prepare x{m} (tokenise)"] = lambda: [backend.prepare(list(data)) for _ in range(m)]
    best: dict[str, float] = {}
    wall: dict[str, float] = {}
    outs: dict[str, Any] = {}
    for _ in range(repeat):
        for name, fn in {**paths, **parts}.items():
            outs[name], cpu, elapsed = timed(fn)
            best[name] = min(cpu, best.get(name, math.inf))
            wall[name] = min(elapsed, wall.get(name, math.inf))
    ref, base_s = outs[baseline], best[baseline]
    rows = []
    for name in paths:
        diff = float((outs[name] - ref).abs().max())
        rows.append(_row(name, "path", best[name], wall[name], base_s / best[name], diff))
    for name in parts:
        rows.append(_row(name, "part", best[name], wall[name], best[name] / base_s, None))
    return rows


def _row(
    path: str, kind: str, cpu: float, wall: float, speedup: float, diff: float | None
) -> dict[str, Any]:
    return {
        "path": path,
        "kind": kind,
        "cpu_s": cpu,
        "wall_s": wall,
        "speedup": speedup,
        "max_abs_diff": diff,
    }


def _cells(r: dict[str, Any]) -> tuple[str, str]:
    """(speedup or share of the baseline, max abs diff) as printed."""
    ratio = (
        f"{r['speedup']:.2f}x"
        if r["kind"] == "path"
        else f"({100 * r['speedup']:.0f}% of baseline)"
    )
    diff = "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
    return ratio, diff


def profile_paths(
    backend: DualEncoder, data: Data, classes: Sequence[str], members: Sequence[LoraAdapter]
) -> dict[str, str]:
    """torch.profiler's top ops by self CPU time, for the baseline and the default batched
    path."""
    from torch.profiler import ProfilerActivity, profile

    weights = [1.0 / len(members)] * len(members)
    paths = {
        "per-member dense ΔW": lambda: mixture_probs_per_member(
            backend, members, weights, data, classes
        ),
        f"batched default K={MEMBERS_PER_PASS} x {MIXTURE_BATCH}": lambda: mixture_probs(
            backend, members, weights, data, classes
        ),
    }
    tables = {}
    for name, fn in paths.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return tables


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# bench_mixture ({result['tag']})",
        "",
        f"{result['members']} members, rank {result['rank']}, one torch thread, "
        f"fastest of {result['repeat']} interleaved rounds; {result['machine']}; "
        f"torch {result['torch']}.",
        "Speedup: baseline CPU seconds / row CPU seconds (same run; the machine is shared, so "
        "CPU time, not wall time, measures the work). Max |ΔP|: against the baseline's "
        "probabilities.",
        "",
    ]
    for case in result["cases"]:
        lines += [f"## {case['backend']}, N={case['n']} inputs ({case['note']})", ""]
        lines += [
            "| path | CPU s | wall s | speedup (CPU) | max abs diff |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in case["rows"]:
            ratio, diff = _cells(r)
            lines.append(
                f"| {r['path']} | {r['cpu_s']:.3f} | {r['wall_s']:.3f} | {ratio} | {diff} |"
            )
        lines.append("")
    for name, table in result.get("profiles", {}).items():
        lines += [f"## profile: {name}", "", "```", table, "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--text-n", default="8,128", help="comma-separated input counts")
    parser.add_argument("--clip-n", default="4", help="comma-separated; empty: no clip")
    parser.add_argument("--clip-layers", type=int, default=12)
    parser.add_argument("--clip-size", type=int, default=224)
    parser.add_argument("--per-pass", default="4,16", help="batched rows: members per pass")
    parser.add_argument("--batch", type=int, default=64, help="inputs per pass (both paths)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (min)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tag", default="default")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    if args.quick:
        args.text_n, args.clip_n, args.clip_layers, args.clip_size = "8", "2", 2, 64
    torch.set_num_threads(1)
    per_pass = [int(k) for k in args.per_pass.split(",")]
    cases = []

    from merge.pipeline.datasets import icd10_chapters

    text = load_backend("text", None)
    records = icd10_chapters(per_class=8)
    text_members = random_members(text, args.members, args.rank)
    for n in [int(x) for x in args.text_n.split(",") if x]:
        items = list(records.items[:n])
        rows = bench_case(
            text,
            items,
            records.classes,
            text_members,
            per_pass=per_pass,
            batch=args.batch,
            repeat=args.repeat,
        )
        cases.append(
            {
                "backend": "text MiniLM-L6",
                "n": n,
                "note": f"ICD-10-CM texts, {len(records.classes)} classes",
                "rows": rows,
            }
        )
        print_case(cases[-1])
    profiles = {}
    if args.profile:
        profiles = profile_paths(text, list(records.items[:32]), records.classes, text_members)
    if args.clip_n:
        clip = clip_backend(args.clip_layers, args.clip_size)
        clip_members = random_members(clip, args.members, args.rank)
        classes = ("melanoma", "naevus", "keratosis", "carcinoma")
        for n in [int(x) for x in args.clip_n.split(",") if x]:
            pixels = torch.randn(
                n, 3, args.clip_size, args.clip_size, generator=torch.Generator().manual_seed(n)
            )
            rows = bench_case(
                clip,
                pixels,
                classes,
                clip_members,
                per_pass=per_pass,
                batch=args.batch,
                repeat=args.repeat,
            )
            note = f"{args.clip_layers} layers, {args.clip_size} px, random pixels"
            cases.append(
                {"backend": "CLIP ViT-B/16-shaped image tower", "n": n, "note": note, "rows": rows}
            )
            print_case(cases[-1])
    result = {
        "tag": args.tag,
        "members": args.members,
        "rank": args.rank,
        "repeat": args.repeat,
        "batch": args.batch,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "torch": torch.__version__,
        "cases": cases,
        "profiles": profiles,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench_mixture-{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {stem}.json and .md")


def print_case(case: dict[str, Any]) -> None:
    print(f"\n{case['backend']}, N={case['n']} ({case['note']})")
    for r in case["rows"]:
        ratio, diff = _cells(r)
        print(
            f"  {r['path']:<42} {r['cpu_s']:8.3f} s cpu {r['wall_s']:8.3f} s wall"
            f"  {ratio:>20}  {diff}"
        )


if __name__ == "__main__":
    main()
