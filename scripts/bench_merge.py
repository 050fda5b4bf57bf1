#!/usr/bin/env python
"""Benchmark the merge engine against PEFT ``add_weighted_adapter`` on the same adapters.

Part 1 (one Linear of hidden size d, n adapters of rank r, uniform weights 1/n):
time per merge (the merge alone: building the dense ΔW to measure the error is not timed,
for either side), peak RSS growth during the merge, and relative error of the merged ΔW
against the exact Σ w·ΔW (float64), for PEFT ``linear``/``cat``/``svd`` (svd_rank = the
cap, ``svd_full_matrices=False``) and our fusion / stack / stack + QR-SVD rank cap.
Part 2: time to apply one commit to a CLIP ViT-B/16-sized LoRA (q/v of 12 layers, 768, r=16,
~0.59 M parameters) for each mode, and the digest.

    .venv/bin/python scripts/bench_merge.py          # d=4096 n=16 r=16, ~5 min (dense SVDs)
    .venv/bin/python scripts/bench_merge.py --quick  # seconds

Writes bench-results/bench_merge-<tag>.json. One torch thread (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from merge.digest import composite_digest
from merge.export import cap_rank
from merge.fold import apply, delta_weights, fold, single_task
from merge.lora import LoraAdapter, LoraModule, load_adapter
from merge.spec import Limits

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_growth(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """(result, MiB the resident set grew above its level before ``fn``), via VmHWM reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    except OSError:
        return fn(), None
    before = _status_kib("VmRSS")
    out = fn()
    return out, max(0.0, (_status_kib("VmHWM") - before) / 1024)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def timed(fn: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    """(last result, median seconds over ``repeat`` runs)."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


class OneLinear(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d, bias=False)


def make_peft(d: int, n: int, r: int, seed: int) -> Any:
    """A PEFT model with n adapters ``a0..`` of rank r (alpha = r: scale 1), seeded factors."""
    cfg = LoraConfig(r=r, lora_alpha=r, target_modules=["proj"])
    model = get_peft_model(OneLinear(d), cfg, adapter_name="a0")
    for i in range(1, n):
        model.add_adapter(f"a{i}", cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(max(p.shape)))
    return model


def our_adapters(model: Any, n: int, d: int) -> list[LoraAdapter]:
    """The same n adapters as PEFT saves them, read back with the library's loader."""
    shapes = {"proj": (d, d)}  # PEFT's files declare no base: the shape table checks them
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        names = [f"a{i}" for i in range(n)]
        model.save_pretrained(tmp, selected_adapters=names)  # -> tmp/<name>/
        return [
            load_adapter(Path(tmp, name), base="bench", limits=Limits(), shapes=shapes)
            for name in names
        ]


def rel_err(dw: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(dw.double() - exact) / torch.linalg.matrix_norm(exact))


def bench_peft(
    model: Any, n: int, kind: str, exact: torch.Tensor, repeat: int, svd_rank: int | None = None
) -> dict[str, Any]:
    names, weights = [f"a{i}" for i in range(n)], [1.0 / n] * n
    layer = model.base_model.model.proj

    def merge() -> None:
        if "merged" in layer.lora_A:
            model.delete_adapter("merged")
        model.add_weighted_adapter(
            names,
            weights,
            "merged",
            combination_type=kind,
            svd_rank=svd_rank,
            svd_full_matrices=False,
            svd_clamp=None,
        )

    (_, seconds), mib = peak_rss_growth(lambda: timed(merge, repeat))
    dw = layer.get_delta_weight("merged").detach()  # dense ΔW for the error only, not timed
    model.delete_adapter("merged")
    return {
        "method": f"peft-{kind}" + (f"-r{svd_rank}" if svd_rank else ""),
        "seconds": seconds,
        "peak_mib": mib,
        "rel_err": rel_err(dw, exact),
    }


def bench_ours(
    adapters: list[LoraAdapter], mode: str, exact: torch.Tensor, repeat: int, cap: int | None = None
) -> dict[str, Any]:
    w = 1.0 / len(adapters)

    def merge() -> dict[str, LoraModule]:
        c = fold(mode, [(a, (1.0, w)) for a in adapters])  # ΔW = Σ w·ΔW_i (stack: exactly)
        # recompress: run QR + small SVD even where the cap drops nothing (the honest cost).
        return cap_rank(c.modules, cap, recompress=True) if cap is not None else dict(c.modules)

    (modules, seconds), mib = peak_rss_growth(lambda: timed(merge, repeat))
    dw = delta_weights({"proj": modules["proj"]})["proj"]  # dense ΔW for the error only
    return {
        "method": f"ours-{mode}" + (f"-cap{cap}" if cap else ""),
        "seconds": seconds,
        "peak_mib": mib,
        "rel_err": rel_err(dw, exact),
    }


def part1(d: int, n: int, r: int, repeat: int) -> list[dict[str, Any]]:
    model = make_peft(d, n, r, seed=0)
    adapters = our_adapters(model, n, d)
    exact = (
        sum(
            (delta_weights(a.modules)["proj"].double() for a in adapters),
            torch.zeros(d, d, dtype=torch.float64),
        )
        / n
    )
    rows = [bench_peft(model, n, kind, exact, repeat) for kind in ("linear", "cat")]
    for cap in (n * r, r):
        rows.append(bench_peft(model, n, "svd", exact, 1, svd_rank=cap))
        rows.append(bench_ours(adapters, "stack", exact, repeat, cap=cap))
    rows += [bench_ours(adapters, mode, exact, repeat) for mode in ("stack", "fusion")]
    return rows


def vit_adapter(seed: int, r: int = 16, d: int = 768, layers: int = 12) -> LoraAdapter:
    gen = torch.Generator().manual_seed(seed)
    mods = {
        f"vision_model.encoder.layers.{i}.self_attn.{p}_proj": LoraModule(
            A=torch.randn(r, d, generator=gen), B=torch.randn(d, r, generator=gen)
        )
        for i in range(layers)
        for p in ("q", "v")
    }
    return LoraAdapter("clip-vit-b16", mods)


def part2(repeat: int) -> dict[str, Any]:
    head_src, new = vit_adapter(1), vit_adapter(2)
    params = sum(m.A.numel() + m.B.numel() for m in new.modules.values())
    out: dict[str, Any] = {"lora_params": params}
    for mode in ("fusion", "stack", "mixture"):
        head = single_task(mode, head_src)
        merged, seconds = timed(partial(apply, head, new, (0.7, 0.4)), repeat)
        _, digest_s = timed(partial(composite_digest, merged), repeat)
        out[mode] = {"apply_ms": seconds * 1e3, "digest_ms": digest_s * 1e3}
    return out


def report(result: dict[str, Any]) -> None:
    rows = {r["method"]: r for r in result["merge"]}
    print(f"{'method':<22}{'seconds':>12}{'peak MiB':>10}{'rel err':>12}")
    for r in result["merge"]:
        mib = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        print(f"{r['method']:<22}{r['seconds']:>12.5f}{mib:>10}{r['rel_err']:>12.3e}")
    for cap in sorted({int(k.split("-r")[1]) for k in rows if k.startswith("peft-svd")}):
        peft, ours = rows[f"peft-svd-r{cap}"], rows[f"ours-stack-cap{cap}"]
        print(
            f"cap {cap}: ours is {peft['seconds'] / ours['seconds']:.0f}x faster than PEFT svd "
            f"(rel err {ours['rel_err']:.2e} vs {peft['rel_err']:.2e})"
        )
    cat, stack = rows["peft-cat"], rows["ours-stack"]
    print(f"stack vs PEFT cat: {cat['seconds'] / stack['seconds']:.1f}x faster")
    vit = result["apply_one_commit"]
    print(
        f"one commit onto a ViT-B/16 LoRA ({vit['lora_params']} params): "
        + ", ".join(
            f"{m} {vit[m]['apply_ms']:.2f} ms (digest {vit[m]['digest_ms']:.2f} ms)"
            for m in ("fusion", "stack", "mixture")
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; runs in seconds")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--adapters", type=int, default=None)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    d = args.hidden or (256 if args.quick else 4096)
    n = args.adapters or (4 if args.quick else 16)
    repeat = 3 if args.quick else 5
    result = {
        "config": {
            "hidden": d,
            "adapters": n,
            "rank": args.rank,
            "threads": 1,
            "torch": torch.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
        "merge": part1(d, n, args.rank, repeat),
        "apply_one_commit": part2(repeat=20),
    }
    report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_merge-{'quick' if args.quick else 'full'}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
