"""`medforge evaluate`: score a composite on the institution's own held-out data, per task;
`medforge predict`: its predicted class for new inputs. Parse arguments, call ``merge`` and
``node.forge``, print. Both only read: local data never leaves this process, and neither
the composite's files nor the store change (``node.cli.composite_source``). ``--device``
picks where the forward passes run (resolved before any model loads); the probabilities come
back to the CPU in float32."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.cli.composite_source import SOURCES_HELP, add_source_args, load_source
from node.cli.output import add_json, emit
from node.cli.train_cmd import add_base_args, add_device_arg
from node.errors import UsageError

if TYPE_CHECKING:  # torch loads when a command runs, not when the parser is built
    from merge.pipeline.backends.base import DualEncoder
    from merge.pipeline.datasets import Examples
    from merge.pipeline.metrics import Scores
    from node.forge.sources import Source, Task

TASKS_HELP = (
    "Each commit names a task and its classes; a composite serves several. Each --data is "
    "scored on the task --task names (repeat --task once per --data, in order), else on the "
    "composite's one task whose classes hold every label of the data (an exact match first). "
    "A plugin names its task in medforge.json; an export names none: pass --classes (label "
    "order), which also overrides a task's classes."
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ev = sub.add_parser(
        "evaluate",
        help="accuracy, macro-F1 and macro AUC of a composite on local data, per task",
        description="Score the composite on held-out data: per task accuracy, macro-F1 and "
        f"macro one-vs-rest AUC. {SOURCES_HELP} {TASKS_HELP} The base given "
        "(--backend/--base) must be the one the composite was built for.",
    )
    add_source_args(ev)
    ev.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        metavar="FILE|DIR",
        help="CSV/JSONL (text,label) or an image folder (a sub-folder per class); repeatable",
    )
    ev.add_argument("--task", action="append", metavar="NAME", help="the task of each --data")
    ev.add_argument("--classes", nargs="+", help="class names, in label order")
    add_base_args(ev)
    add_device_arg(ev, "evaluation")
    add_json(ev)
    ev.set_defaults(func=run_evaluate)

    pr = sub.add_parser(
        "predict",
        help="the composite's predicted class (and probability) for new inputs",
        description=f"Predict a class for each input. {SOURCES_HELP} The task is --task, or "
        "the composite's only one; --classes names (or overrides) its classes.",
    )
    add_source_args(pr)
    inputs = pr.add_mutually_exclusive_group(required=True)
    inputs.add_argument(
        "--data",
        type=Path,
        metavar="FILE|DIR",
        help="CSV/JSONL with a text column (a label is ignored) or a folder of images",
    )
    inputs.add_argument("--text", action="append", help="one input text; repeatable")
    pr.add_argument("--task", metavar="NAME", help="the task to predict (its classes)")
    pr.add_argument("--classes", nargs="+", help="class names, in label order")
    pr.add_argument("--top", type=int, default=1, metavar="K", help="show the K likeliest classes")
    add_base_args(pr)
    add_device_arg(pr, "prediction")
    add_json(pr)
    pr.set_defaults(func=run_predict)


# -- evaluate -------------------------------------------------------------------------------


def run_evaluate(args: argparse.Namespace) -> int:
    from merge.pipeline.datasets import load_data

    names = args.task or []
    if names and len(names) != len(args.data):
        raise UsageError(f"{len(args.data)} --data but {len(names)} --task: give one per --data")
    device = _device(args)
    raw = [load_data(path) for path in args.data]  # every data check runs before any model
    source = load_source(args)
    sets = _task_sets(source, args, raw, names)
    backend = _backend(args, source, device)
    from merge.pipeline.evaluate import score
    from merge.pipeline.metrics import mean_scores

    rows = {task.name: score(backend, source.model, data) for task, data in sets}
    mean = mean_scores(list(rows.values())) if len(rows) > 1 else None
    data: dict[str, Any] = {
        "source": source.as_dict(),
        "base": backend.fingerprint,
        "tasks": {
            t.name: {**rows[t.name].as_dict(), "classes": list(t.classes), "data": str(p)}
            for (t, _), p in zip(sets, args.data, strict=True)
        },
        "mean": mean.as_dict() if mean is not None else None,
    }
    emit(args, data, _describe(source) + "\n" + _table(rows, mean))
    return 0


def _task_sets(
    source: Source, args: argparse.Namespace, raw: list[Examples], names: list[str]
) -> list[tuple[Task, Examples]]:
    from merge.pipeline.evaluate import with_classes
    from node.forge.sources import choose_task

    sets = []
    for k, (path, records) in enumerate(zip(args.data, raw, strict=True)):
        task = choose_task(
            source.tasks,
            name=names[k] if names else None,
            classes=args.classes,
            labels=set(records.classes),
            default_name=path.stem,
        )
        sets.append((task, with_classes(records, task.classes, str(path))))
    seen = [t.name for t, _ in sets]
    twice = sorted({n for n in seen if seen.count(n) > 1})
    if twice:
        raise UsageError(f"several --data are for task(s) {twice}: give --task for each")
    return sets


def _table(rows: dict[str, Scores], mean: Scores | None) -> str:
    lines = ["| task | n | accuracy | macro-F1 | macro AUC |", "|---|---|---|---|---|"]
    shown = {**rows, **({"mean": mean} if mean is not None else {})}
    for name, s in shown.items():
        cells = " | ".join(_num(x) for x in (s.accuracy, s.macro_f1, s.auc))
        lines.append(f"| {name} | {s.n} | {cells} |")
    return "\n".join(lines)


def _num(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"  # NaN: undefined (e.g. AUC with one class)


# -- predict --------------------------------------------------------------------------------


def run_predict(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    if args.text and args.backend == "clip":
        raise UsageError("--text is for the text backend: give the clip backend --data DIR")
    device = _device(args)
    from merge.pipeline.evaluate import read_inputs

    items = tuple(args.text) if args.text else read_inputs(args.data)
    source = load_source(args)
    from node.forge.sources import choose_task

    labels = _labels_of(args.data) if args.data is not None and not args.task else None
    task = choose_task(
        source.tasks, name=args.task, classes=args.classes, labels=labels, default_name="task"
    )
    backend = _backend(args, source, device)
    from merge.pipeline.evaluate import model_probs

    probs = model_probs(backend, source.model, items, task.classes)
    k = min(args.top, len(task.classes))
    top = probs.topk(k, dim=1)
    predictions = [
        {
            "input": item,
            "prediction": task.classes[int(idx[0])],
            "probability": float(p[0]),
            "top": [
                {"class": task.classes[int(i)], "probability": float(q)}
                for q, i in zip(p, idx, strict=True)
            ],
        }
        for item, p, idx in zip(items, top.values, top.indices, strict=True)
    ]
    data = {
        "source": source.as_dict(),
        "base": backend.fingerprint,
        "task": task.name,
        "classes": list(task.classes),
        "predictions": predictions,
    }
    lines = [_describe(source), f"task {task.name!r}: {len(items)} input(s)"]
    lines += [_prediction_line(n, row) for n, row in enumerate(predictions, start=1)]
    emit(args, data, "\n".join(lines))
    return 0


def _labels_of(path: Path) -> set[str] | None:
    """The labels a CSV/JSONL file to predict carries (a label column is optional), so that,
    as in `evaluate`, the task whose classes hold them is picked without --task; None when
    the file has none (or is an image folder)."""
    import csv

    labels: set[str] = set()
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                labels = {(row.get("label") or "").strip() for row in csv.DictReader(f)}
        elif path.suffix.lower() in (".jsonl", ".ndjson"):
            for line in path.read_text(encoding="utf-8").splitlines():
                obj = json.loads(line) if line.strip() else {}
                if isinstance(obj, dict) and obj.get("label") is not None:
                    labels.add(str(obj["label"]).strip())
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # read_inputs has already said what is wrong with a file it refuses
    labels.discard("")
    return labels or None


def _prediction_line(n: int, row: dict[str, Any]) -> str:
    text = row["input"] if len(row["input"]) <= 60 else row["input"][:57] + "..."
    line = f"{n:>4}  {row['prediction']}  {row['probability']:.3f}  {text!r}"
    rest = row["top"][1:]
    if rest:
        line += "  (then " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in rest) + ")"
    return line


# -- shared ---------------------------------------------------------------------------------


def _device(args: argparse.Namespace) -> str:
    """``--device`` resolved (an absent device fails now, before any data or model loads)."""
    from merge.pipeline.device import resolve_device

    return str(resolve_device(args.device))


def _backend(args: argparse.Namespace, source: Source, device: str) -> DualEncoder:
    """The base given, on ``device``, refused unless it is the one ``source`` was built for."""
    import torch

    from merge.base_shapes import shapes_of
    from merge.pipeline.backends import load_backend

    torch.set_num_threads(args.threads)
    backend = load_backend(args.backend, args.base, device=device)
    source.check_base(backend.fingerprint, shapes_of(backend).modules)
    return backend


def _describe(source: Source) -> str:
    where = f"{source.kind} {source.path}"
    parts = [f"{where}: {source.mode}"]
    if source.forge_item is not None:
        parts.append(f"forge item v{source.forge_item}")
    if source.digest is not None:
        parts.append(f"digest {source.digest[:16]}")
    parts.append(f"base {source.base[:16]}" if source.base else "base undeclared (shapes fit)")
    return ", ".join(parts) + "".join(f"\n  {note}" for note in source.notes)
