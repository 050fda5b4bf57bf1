"""`medforge train`: train a task's LoRA plugin on local data; `medforge fingerprint`: print
the base model fingerprint a genesis names. Parse arguments, call ``merge``, print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from node.cli.output import add_json, emit


def add_base_args(p: argparse.ArgumentParser) -> None:
    """The arguments that pick a base model, shared with `medforge distill`."""
    p.add_argument("--backend", choices=("text", "clip"), default="text", help="model kind")
    p.add_argument("--base", default=None, help="base model path or id (text default: MiniLM)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest here)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train a LoRA plugin for one task on local data")
    p.add_argument("--task", required=True, help="task name (goes into the commit)")
    p.add_argument("--classes", nargs="+", required=True, help="class names, in label order")
    p.add_argument("--data", type=Path, required=True, help="CSV/JSONL (text,label) or folder")
    p.add_argument("--out", type=Path, required=True, help="adapter directory to write")
    add_base_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="optimizer steps (default 60)")
    p.add_argument("--rank", type=int, help="LoRA rank (default: 8 text, 16 clip)")
    p.add_argument("--batch-size", type=int, help="examples per step (default 16)")
    p.add_argument("--lr", type=float, help="learning rate (default 2e-3)")
    p.add_argument("--quick", action="store_true", help="a few steps (CI, smoke tests)")
    add_json(p)
    p.set_defaults(func=run)

    fp = sub.add_parser(
        "fingerprint",
        help="the base model's fingerprint and shape table (what a genesis names)",
        description="Print the base model's fingerprint (hex sha256 of config + weights) and "
        "its shape table (every Linear an adapter may target, with its shape, and the shape "
        "of a distilled input). `network create --base FILE` takes the file --out writes.",
    )
    add_base_args(fp)
    fp.add_argument("--out", type=Path, help="write fingerprint + shape table as JSON here")
    add_json(fp)
    fp.set_defaults(func=run_fingerprint)


def _config(args: argparse.Namespace) -> Any:
    from merge.pipeline.train import TrainConfig

    quick = {"steps": 8, "max_val": 64, "progress": False} if args.quick else {}
    given = {"steps": args.steps, "rank": args.rank, "batch_size": args.batch_size, "lr": args.lr}
    chosen = {k: v for k, v in given.items() if v is not None}
    return TrainConfig.for_backend(args.backend, seed=args.seed, **{**quick, **chosen})


def run(args: argparse.Namespace) -> int:
    import torch

    from merge.pipeline.backends import load_backend
    from merge.pipeline.datasets import load_data
    from merge.pipeline.train import train_plugin

    torch.set_num_threads(args.threads)
    config = _config(args)
    records = load_data(args.data, args.classes)  # every data check runs before the model loads
    backend = load_backend(args.backend, args.base)
    result = train_plugin(backend, records, task=args.task, out=args.out, config=config)
    data = {
        "task": args.task,
        "out": str(result.out),
        "base": backend.fingerprint,
        "validation": {"base": result.base.as_dict(), "plugin": result.plugin.as_dict()},
        "seconds": result.seconds,
        "seconds_per_step": result.seconds_per_step,
        "steps": config.steps,
    }
    human = (
        f"plugin for {args.task!r} -> {result.out}\n"
        f"validation accuracy {result.base.accuracy:.3f} (base) -> {result.plugin.accuracy:.3f}"
        f", macro AUC {result.base.auc:.3f} -> {result.plugin.auc:.3f} (n={result.plugin.n})\n"
        f"{config.steps} steps in {result.seconds:.1f} s ({result.seconds_per_step:.2f} s/step)"
    )
    emit(args, data, human)
    return 0


def run_fingerprint(args: argparse.Namespace) -> int:
    import torch

    from merge.base_shapes import shapes_of
    from merge.pipeline.backends import load_backend

    torch.set_num_threads(args.threads)
    backend = load_backend(args.backend, args.base)
    shapes = shapes_of(backend)
    data = {
        "backend": backend.kind,
        "base": args.base or "",
        "fingerprint": backend.fingerprint,
        "shapes": shapes.to_dict(),
    }
    human = backend.fingerprint
    if args.out is not None:
        args.out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        human += (
            f"\n{len(shapes.modules)} Linear modules, distilled inputs {shapes.input_kind} "
            f"{list(shapes.input_shape)}; written to {args.out}"
        )
    emit(args, data, human)
    return 0
