"""`medforge distill`: distil a small synthetic summary of local data (distribution matching
on the frozen base). Parse arguments, call ``merge.pipeline.distill``, print. ``--device``
picks where matching runs; the file written is CPU float32 on every device."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from node.cli.output import add_json, emit
from node.cli.train_cmd import DATA_FORMAT, add_base_args, add_data_args, add_device_arg


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "distill",
        help="distil a synthetic summary set of local data",
        epilog=DATA_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, help="task name (stored in the file)")
    add_data_args(p)
    p.add_argument("--ipc", type=int, required=True, help="synthetic inputs per class")
    p.add_argument("--out", type=Path, required=True, help="safetensors file to write")
    p.add_argument(
        "--init-from-real",
        action="store_true",
        help="start from real records instead of noise (copies patient data: warns)",
    )
    add_base_args(p)
    add_device_arg(p, "distillation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="matching steps (default 20)")
    p.add_argument("--quick", action="store_true", help="a few steps (CI, smoke tests)")
    add_json(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from merge.pipeline.backends import load_backend
    from merge.pipeline.datasets import load_data
    from merge.pipeline.device import resolve_device
    from merge.pipeline.distill import DistillConfig, RealRecordsWarning, distill, save_distilled

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)  # an absent device fails before anything loads
    chosen = {"ipc": args.ipc, "seed": args.seed, "init_from_real": args.init_from_real}
    if args.steps is not None:
        chosen["steps"] = args.steps
    config = DistillConfig.quick(**chosen) if args.quick else DistillConfig(**chosen)
    records = load_data(args.data, args.classes)
    backend = load_backend(args.backend, args.base, device=device)
    if args.init_from_real:
        print(
            "warning: --init-from-real: the distilled file starts as copies of real "
            "records and will be shared with every peer",
            file=sys.stderr,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RealRecordsWarning)  # printed above, once
        report = distill(backend, records, task=args.task, config=config)
    save_distilled(report.distilled, args.out)
    d = report.distilled
    data = {
        "task": args.task,
        "out": str(args.out),
        "classes": list(d.classes),
        "kind": d.kind,
        "shape": list(d.inputs.shape),
        "base": d.base,
        "seconds": report.seconds,
        "loss_first": report.losses[0] if report.losses else None,
        "loss_last": report.losses[-1] if report.losses else None,
        "device": str(device),
    }
    human = (
        f"distilled {len(d.labels)} {d.kind} inputs ({args.ipc}/class, {len(d.classes)} classes)"
        f" -> {args.out} in {report.seconds:.1f} s on {device}"
    )
    emit(args, data, human)
    return 0
