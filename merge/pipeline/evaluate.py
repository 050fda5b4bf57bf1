"""Accuracy, macro-F1 and macro AUC of the base, a single plugin and a composite, per task;
class probabilities for new inputs.

Every row is scored the same way the network would use it, through the backend's frozen
class-name tower: fusion and stack composites add their dense ``ΔW`` (``fold.delta_weights``)
to the base; a mixture outputs ``P(x) = Σ_j λ_j softmax(logits_j(x))`` (the weights as the
composite holds them, not renormalised), computed for several members in one batched forward
pass (``merge.pipeline.multi_lora``; ``batched=False``: the reference, one pass per member with
its dense ``ΔW``). Evaluation uses BLAS and is not bit-exact; it is never part of a digest.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from merge.fold import Composite, delta_weights
from merge.lora import LoraAdapter
from merge.pipeline.backends.base import DualEncoder, cosine_logits
from merge.pipeline.datasets import IMAGE_SUFFIXES, Examples, check_image
from merge.pipeline.errors import DataFormatError, LabelError
from merge.pipeline.metrics import Metrics, Scores, classification_metrics, scores
from merge.pipeline.multi_lora import member_stacks

Delta = Mapping[str, torch.Tensor]
# Labelled records, raw items (texts or image paths) or ready model inputs.
Inputs = Examples | Sequence[str] | torch.Tensor
# A batched mixture pass computes MEMBERS_PER_PASS x MIXTURE_BATCH rows at most: 64, the batch
# of a per-member pass, so it holds no more activations. On one CPU thread larger passes ran
# slower and small input batches pad less (scripts/bench_mixture.py); a GPU wants more rows.
MEMBERS_PER_PASS = 16
MIXTURE_BATCH = 4


def adapter_delta(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """Dense ``{module path: B @ A}`` of one plugin."""
    return delta_weights(adapter.modules)


@torch.no_grad()
def features(
    backend: DualEncoder, data: Inputs, delta: Delta | None, batch_size: int = 64
) -> torch.Tensor:
    """Unit-norm input features of raw records or items (prepared batch by batch) or ready
    inputs."""
    return torch.cat([backend.encode_inputs(x, delta) for x in _batches(backend, data, batch_size)])


def _batches(backend: DualEncoder, data: Inputs, size: int) -> Iterator[torch.Tensor]:
    """Model inputs ``size`` rows at a time (raw records and items prepared batch by batch)."""
    for i in range(0, len(data), size):
        if isinstance(data, torch.Tensor):
            yield data[i : i + size]
        else:
            items = data.items if isinstance(data, Examples) else data
            yield backend.prepare(items[i : i + size])


def probs_with_delta(
    backend: DualEncoder, data: Inputs, classes: Sequence[str], delta: Delta | None
) -> torch.Tensor:
    """Softmax over ``classes`` of scaled cosine logits, with ``delta`` on the input tower."""
    feats = features(backend, data, delta)
    return cosine_logits(feats, backend.encode_classes(classes), backend.logit_scale).softmax(1)


def composite_probs(
    backend: DualEncoder,
    composite: Composite,
    data: Inputs,
    classes: Sequence[str],
    *,
    batched: bool = True,
) -> torch.Tensor:
    """Class probabilities of a composite (an empty one is the base). ``batched=False``
    scores a mixture by the per-member reference path."""
    if composite.is_empty:
        return probs_with_delta(backend, data, classes, None)
    if composite.mode != "mixture":
        return probs_with_delta(backend, data, classes, delta_weights(composite.modules))
    mixture = mixture_probs if batched else mixture_probs_per_member
    return mixture(backend, composite.members, composite.weights, data, classes)


def mixture_probs_per_member(
    backend: DualEncoder,
    members: Sequence[LoraAdapter],
    weights: Sequence[float],
    data: Inputs,
    classes: Sequence[str],
) -> torch.Tensor:
    """The reference ``Σ_j λ_j softmax(logits_j(x))``: one forward pass per member, each with
    that member's dense ``ΔW`` on the base."""
    total = torch.zeros(len(data), len(classes))
    for lam, member in zip(weights, members, strict=True):
        total = total + lam * probs_with_delta(backend, data, classes, adapter_delta(member))
    return total


@torch.no_grad()
def mixture_probs(
    backend: DualEncoder,
    members: Sequence[LoraAdapter],
    weights: Sequence[float],
    data: Inputs,
    classes: Sequence[str],
    *,
    members_per_pass: int = MEMBERS_PER_PASS,
    batch_size: int = MIXTURE_BATCH,
) -> torch.Tensor:
    """``Σ_j λ_j softmax(logits_j(x))`` with up to ``members_per_pass`` members in one batched
    forward pass (``members_per_pass x batch_size`` rows at most); each batch of inputs is
    prepared once for all members."""
    if len(weights) != len(members):
        raise ValueError(f"{len(members)} members but {len(weights)} weights")
    stacks = member_stacks(backend.model, [m.modules for m in members], members_per_pass)
    lams = torch.tensor(weights, dtype=torch.float32)
    g = backend.encode_classes(classes)
    rows = []
    for x in _batches(backend, data, batch_size):
        total = torch.zeros(len(x), len(classes))
        for j, stack in enumerate(stacks):
            lam = lams[j * members_per_pass : j * members_per_pass + stack.size]
            p = cosine_logits(stack.features(backend, x), g, backend.logit_scale).softmax(-1)
            total += torch.einsum("m,mnc->nc", lam, p)
        rows.append(total)
    return torch.cat(rows) if rows else torch.zeros(0, len(classes))


Model = LoraAdapter | Composite | None


def model_probs(
    backend: DualEncoder, model: Model, data: Inputs, classes: Sequence[str]
) -> torch.Tensor:
    """``None``: the zero-shot base; an adapter: that plugin alone; a composite: as merged."""
    if model is None:
        return probs_with_delta(backend, data, classes, None)
    if isinstance(model, LoraAdapter):
        return probs_with_delta(backend, data, classes, adapter_delta(model))
    return composite_probs(backend, model, data, classes)


def evaluate(backend: DualEncoder, model: Model, data: Examples) -> Metrics:
    """Accuracy and macro AUC of ``model`` on one task's records."""
    return classification_metrics(
        model_probs(backend, model, data, data.classes), data.label_tensor()
    )


def evaluate_table(
    backend: DualEncoder, models: Mapping[str, Model], tasks: Mapping[str, Examples]
) -> dict[str, dict[str, Metrics]]:
    """``{row name: {task name: Metrics}}`` for every model on every task."""
    return {
        row: {t: evaluate(backend, m, d) for t, d in tasks.items()} for row, m in models.items()
    }


def mean_over_tasks(row: Mapping[str, Metrics]) -> Metrics:
    """The unweighted mean over tasks (each task counts once, whatever its size)."""
    ms = list(row.values())
    return Metrics(
        accuracy=sum(m.accuracy for m in ms) / len(ms),
        auc=sum(m.auc for m in ms) / len(ms),
        n=sum(m.n for m in ms),
    )


# -- an institution's own held-out data and new inputs (`medforge evaluate`, `predict`) ------


def score(backend: DualEncoder, model: Model, data: Examples) -> Scores:
    """Accuracy, macro-F1 and macro AUC of ``model`` on one task's records."""
    return scores(model_probs(backend, model, data, data.classes), data.label_tensor())


def with_classes(records: Examples, classes: Sequence[str], source: str) -> Examples:
    """``records`` relabelled onto ``classes`` (a task's class list, in its order). Held-out
    data may lack some classes; a label outside ``classes`` is refused, naming it."""
    index = {c: i for i, c in enumerate(classes)}
    stray = sorted({records.classes[y] for y in records.labels} - index.keys())
    if stray:
        raise LabelError(f"{source}: label(s) {stray} are not among the classes {list(classes)}")
    labels = tuple(index[records.classes[y]] for y in records.labels)
    return Examples(records.items, labels, tuple(classes))


def read_inputs(path: Path) -> tuple[str, ...]:
    """Items to predict: a CSV with a ``text`` column or a JSONL file of objects with a
    ``text`` key (a ``label`` is allowed and ignored), or a folder: every image below it,
    in path order (each decoded once here, so a broken file fails now)."""
    if path.is_dir():
        images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataFormatError(f"{path}: no image files ({sorted(IMAGE_SUFFIXES)})")
        for image in images:
            check_image(image)
        return tuple(str(p) for p in images)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        items = _csv_texts(path)
    elif suffix in (".jsonl", ".ndjson"):
        items = _jsonl_texts(path)
    else:
        raise DataFormatError(f"{path}: unknown input format (use .csv, .jsonl or a folder)")
    if not items:
        raise DataFormatError(f"{path}: no inputs")
    return items


def _csv_texts(path: Path) -> tuple[str, ...]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "text" not in (reader.fieldnames or ()):
            raise DataFormatError(f"{path}: missing column 'text'")
        return tuple(row["text"] or "" for row in reader)


def _jsonl_texts(path: Path) -> tuple[str, ...]:
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}: line {n}: not JSON ({e.msg})") from e
        if not isinstance(obj, dict) or "text" not in obj:
            raise DataFormatError(f"{path}: line {n}: needs a key 'text'")
        items.append(str(obj["text"]))
    return tuple(items)
