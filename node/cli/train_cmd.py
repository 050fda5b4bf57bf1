"""`medforge train`: train a task's LoRA plugin on local data; `medforge fingerprint`: print
the base model fingerprint a genesis names. Parse arguments, call ``merge``, print.

With ``--home`` the plugin is trained on the network's base (its fingerprint checked) and, by
default, *continually*: on top of the composite at the tip of the home's main chain, with a
replay of the distilled sets of every commit in it (``merge.pipeline.train.Continual``). The
running node is asked for its head; with no node running the home's store is read offline,
read-only (``node.cli.composite_source``, as `medforge evaluate --home` does); a home whose node
never ran gives the empty composite. ``--independent`` (or no ``--home``) is the paper's
training on the frozen base alone. ``medforge.json`` records which (``"training"``),
and `medforge commit` signs that into the commit.

``--device`` (train, distill, evaluate, predict, commit) picks where the passes run
(``merge.pipeline.device``); it is resolved before any model loads, and a device this machine
lacks exits 2. What is written (adapter, distilled file) is CPU float32 on every device."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.cli.output import add_json, emit, terminal_safe
from node.errors import NodeNotRunning, UsageError

if TYPE_CHECKING:  # torch loads only when a plugin is trained
    from crypto.records import Genesis
    from merge.pipeline.backends.base import DualEncoder
    from merge.pipeline.train import Continual
    from node.shell.home import Home


# The local data both `train` and `distill` read (merge.pipeline.datasets.load_data), and the
# one class-order rule they share, so a plugin and its distilled set always agree.
DATA_FORMAT = """\
data (--data):
  CSV     a header row with the columns text and label, one record per row
  JSONL   one object per line: {"text": "...", "label": "..."}
  folder  DIR/<class name>/<image>.png|jpg|... (CLIP backend)
  A label is a class name (not an index); every class needs at least one record.

class order (--classes): the order given, else the sorted label set (folder names for
images), in `medforge train` and `medforge distill` alike. The distilled file records its
classes, and `medforge commit` signs those."""


def add_data_args(p: argparse.ArgumentParser) -> None:
    """--data and --classes, with the same meaning and default in `train` and `distill`."""
    p.add_argument("--data", type=Path, required=True, help="CSV, JSONL or image folder (below)")
    p.add_argument(
        "--classes", nargs="+", help="class names in label order (default: sorted labels)"
    )


def device_spec(text: str) -> str:
    """argparse ``type`` of ``--device``: the syntax only (availability is checked when the
    command runs, before any model loads; torch is not loaded to build the parser)."""
    from merge.pipeline.device import check_spec
    from merge.pipeline.errors import DeviceError

    try:
        return check_spec(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_device_arg(p: argparse.ArgumentParser, what: str = "training") -> None:
    """``--device``: where ``what`` runs (its outputs are CPU float32 wherever it ran)."""
    from merge.pipeline.device import DEVICE_HELP

    p.add_argument(
        "--device", type=device_spec, default="auto", help=f"where {what} runs: {DEVICE_HELP}"
    )


def add_base_args(p: argparse.ArgumentParser) -> None:
    """The arguments that pick a base model, shared with `medforge distill`."""
    p.add_argument("--backend", choices=("text", "clip"), default="text", help="model kind")
    p.add_argument("--base", default=None, help="base model path or id (text default: MiniLM)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest here)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "train",
        help="train a LoRA plugin for one task on local data",
        epilog=DATA_FORMAT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, help="task name (goes into the commit)")
    add_data_args(p)
    p.add_argument("--out", type=Path, required=True, help="adapter directory to write")
    add_base_args(p)
    add_device_arg(p, "training")
    p.set_defaults(backend=None)  # with --home: the network's; else text
    p.add_argument(
        "--home",
        help="institution home: train on the network's base, continually on top of its "
        "composite (the running node's, else its store read offline) with a replay of its "
        "distilled sets",
    )
    p.add_argument(
        "--independent",
        action="store_true",
        help="train on the frozen base alone (the paper's method), even with --home",
    )
    p.add_argument(
        "--replay-weight", type=float, help="weight of the replay loss (continual; default 1)"
    )
    p.add_argument(
        "--replay-batch", type=int, help="replayed examples per step (default: half a batch)"
    )
    p.add_argument(
        "--prior-correction",
        choices=("auto", "on", "off"),
        default="auto",
        help="continual, when the composite already holds the task (label skew): adjust the "
        "local loss by this institution's class prior (auto: for a fusion network only)",
    )
    p.add_argument(
        "--warm-start",
        choices=("auto", "on", "off"),
        default="auto",
        help="continual, on a composite with a ΔW, start the LoRA on the composite instead "
        "of PEFT's random init: stack, each A on its module's ΔW top singular directions (B "
        "at zero); fusion, each LoRA as the composite's own factors, on the bare base "
        "(either way the start is the composite; auto: on)",
    )
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
        "of a distilled input). `network create --base-file FILE` takes the file --out writes.",
    )
    add_base_args(fp)
    fp.add_argument("--out", type=Path, help="write fingerprint + shape table as JSON here")
    add_json(fp)
    fp.set_defaults(func=run_fingerprint)


def _config(args: argparse.Namespace, kind: str) -> Any:
    from merge.pipeline.train import TrainConfig

    quick = {"steps": 8, "max_val": 64, "progress": False} if args.quick else {}
    given = {
        "steps": args.steps,
        "rank": args.rank,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "replay_weight": args.replay_weight,
        "replay_batch": args.replay_batch,
        "prior_correction": {"on": True, "off": False}.get(args.prior_correction),
        "warm_start": {"on": True, "off": False}.get(args.warm_start),
    }
    chosen = {k: v for k, v in given.items() if v is not None}
    return TrainConfig.for_backend(kind, seed=args.seed, **{**quick, **chosen})


def _check_replay_args(args: argparse.Namespace) -> None:
    import math

    if args.replay_weight is not None and not (
        math.isfinite(args.replay_weight) and args.replay_weight >= 0
    ):
        raise UsageError(f"--replay-weight must be a finite number >= 0, got {args.replay_weight}")
    if args.replay_batch is not None and args.replay_batch < 1:
        raise UsageError(f"--replay-batch must be >= 1, got {args.replay_batch}")


def _network_backend(args: argparse.Namespace, genesis: Genesis, device: str) -> DualEncoder:
    """The network's base (or --backend/--base) on ``device``, refused unless it has the
    genesis' print."""
    from node.forge.author import load_encoder
    from node.forge.netspec import backend, base_fingerprint

    kind, model = backend(genesis)
    fingerprint = base_fingerprint(genesis)
    return load_encoder(args.backend or kind, args.base or model, fingerprint, device)


def _home_head(genesis: Genesis, home: Home) -> tuple[Continual, str]:
    """What to train on, and where it came from: the running node's head, or with no node
    running the main chain of the home's store read offline (nothing is written)."""
    from node.cli.composite_source import read_store
    from node.forge.author import Head, continual
    from node.forge.sources import stored_head
    from node.shell.control import call

    try:
        answer: dict[str, Any] = call(home.control_path, "head", timeout=30)
    except NodeNotRunning:
        records, files = read_store(home, genesis)
        head = stored_head(genesis, records, files)[0] if records else Head.empty(genesis)
        where = f"forge item v{len(head.commits)} of {home.path}'s store (no node running: "
        return continual(genesis, head), where + "read offline)"
    head = Head.from_answer(answer)
    return continual(genesis, head), f"forge item v{len(head.commits)} of the running node"


def _hint_namesakes(continual: Continual, task: str, classes: Sequence[str]) -> None:
    """Say so when the composite holds this data's classes under another task name: a
    consortium's shared task named per site trains much worse (``namesakes``)."""
    from merge.pipeline.train import namesakes

    for other in namesakes(continual, task, classes):
        print(
            terminal_safe(
                f"note: the composite's task {other!r} has exactly these classes; if this data "
                f"is for the same task, train with --task {other!r}: replay, distillation and "
                "the prior correction treat each task name as its own task"
            ),
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    import torch

    from merge.pipeline.backends import load_backend
    from merge.pipeline.datasets import load_data
    from merge.pipeline.device import resolve_device
    from merge.pipeline.train import FACTORS_INIT, train_plugin
    from node.shell.home import Home

    torch.set_num_threads(args.threads)
    _check_replay_args(args)
    device = str(resolve_device(args.device))  # an absent device fails before anything loads
    records = load_data(args.data, args.classes)  # every data check runs before the model loads
    continual, why = None, "--independent" if args.independent else "no --home"
    if args.home:
        home = Home(Path(args.home))
        genesis = home.genesis()
        backend = _network_backend(args, genesis, device)
        if not args.independent:
            continual, why = _home_head(genesis, home)
    else:
        backend = load_backend(args.backend or "text", args.base, device=device)
    config = _config(args, backend.kind)
    if continual is not None:
        _hint_namesakes(continual, args.task, records.classes)
    from merge.pipeline.errors import DatasetTooSmallError

    try:
        result = train_plugin(
            backend, records, task=args.task, out=args.out, config=config, continual=continual
        )
    except DatasetTooSmallError as exc:  # say which knob: the split is not the user's count
        raise DatasetTooSmallError(
            f"{exc} ({len(records)} records in {args.data}, less the validation share "
            f"{config.val_fraction:g}): pass a smaller --batch-size, or add records"
        ) from exc
    validation = {"base": result.base.as_dict(), "plugin": result.plugin.as_dict()}
    if result.composite is not None:
        validation["composite"] = result.composite.as_dict()
    training = dict(result.training)
    data = {
        "task": args.task,
        "classes": list(records.classes),
        "out": str(result.out),
        "base": backend.fingerprint,
        "validation": validation,
        "training": training,
        "replay_accuracy": list(result.replay_accuracy) if result.replay_accuracy else None,
        "seconds": result.seconds,
        "seconds_per_step": result.seconds_per_step,
        "steps": config.steps,
        "device": result.device,
        "precision": result.precision,
    }
    if continual is None:
        how = f"independently, on the base alone ({why})"
    else:
        on = "the composite's ΔW" if continual.delta else "the base (no ΔW: empty or mixture)"
        if training.get("init") == FACTORS_INIT:  # fusion: the LoRA started as its factors
            on = "the base, the LoRA starting as the composite's factors"
        how = f"continually on {why}: {on} + replay of {continual.n_replay} distilled examples"
        if "loss" in training:  # the composite already held this task: say which loss it used
            how += f", {training['loss']} local loss"
        if "init" in training:  # the LoRA started on the composite, not at PEFT's init
            how += f", {training['init']} init"
    human = (
        f"plugin for {args.task!r} -> {result.out}\n"
        f"trained {how}\n"
        f"validation accuracy {result.base.accuracy:.3f} (base) -> {result.plugin.accuracy:.3f}"
        f", macro AUC {result.base.auc:.3f} -> {result.plugin.auc:.3f} (n={result.plugin.n})\n"
    )
    if result.composite is not None:
        human += (
            f"the composite it trained on: accuracy {result.composite.accuracy:.3f}, "
            f"macro AUC {result.composite.auc:.3f} on the same split\n"
        )
    if result.replay_accuracy is not None:
        before, after = result.replay_accuracy
        human += f"replayed distilled sets: accuracy {before:.3f} (composite) -> {after:.3f}\n"
    human += (
        f"{config.steps} steps in {result.seconds:.1f} s ({result.seconds_per_step:.2f} s/step)"
        f" on {result.device} ({result.precision})"
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
