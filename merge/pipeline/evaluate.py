"""Accuracy and macro AUC of the base, a single plugin and a composite, per task.

Every row is scored the same way the network would use it, through the backend's frozen
class-name tower: fusion and stack composites add their dense ``ΔW`` (``fold.delta_weights``)
to the base; a mixture outputs ``P(x) = Σ_j λ_j softmax(logits_j(x))`` with one forward pass
per member. Evaluation uses BLAS and is not bit-exact; it is never part of a digest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from merge.fold import Composite, delta_weights
from merge.lora import LoraAdapter
from merge.pipeline.backends.base import DualEncoder, cosine_logits
from merge.pipeline.datasets import Examples
from merge.pipeline.metrics import Metrics, classification_metrics

Delta = Mapping[str, torch.Tensor]


def adapter_delta(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """Dense ``{module path: B @ A}`` of one plugin."""
    return delta_weights(adapter.modules)


@torch.no_grad()
def features(
    backend: DualEncoder, data: Examples | torch.Tensor, delta: Delta | None, batch_size: int = 64
) -> torch.Tensor:
    """Unit-norm input features of raw records (prepared batch by batch) or ready inputs."""
    n = len(data)
    chunks = []
    for i in range(0, n, batch_size):
        x = (
            data[i : i + batch_size]
            if isinstance(data, torch.Tensor)
            else _prep(backend, data, i, batch_size)
        )
        chunks.append(backend.encode_inputs(x, delta))
    return torch.cat(chunks)


def _prep(backend: DualEncoder, data: Examples, i: int, size: int) -> torch.Tensor:
    return backend.prepare(data.items[i : i + size])


def probs_with_delta(
    backend: DualEncoder, data: Examples | torch.Tensor, classes: Sequence[str], delta: Delta | None
) -> torch.Tensor:
    """Softmax over ``classes`` of scaled cosine logits, with ``delta`` on the input tower."""
    feats = features(backend, data, delta)
    return cosine_logits(feats, backend.encode_classes(classes), backend.logit_scale).softmax(1)


def composite_probs(
    backend: DualEncoder,
    composite: Composite,
    data: Examples | torch.Tensor,
    classes: Sequence[str],
) -> torch.Tensor:
    """Class probabilities of a composite (an empty one is the base)."""
    if composite.is_empty:
        return probs_with_delta(backend, data, classes, None)
    if composite.mode != "mixture":
        return probs_with_delta(backend, data, classes, delta_weights(composite.modules))
    total = torch.zeros(len(data), len(classes))
    for lam, member in zip(composite.weights, composite.members, strict=True):
        total = total + lam * probs_with_delta(backend, data, classes, adapter_delta(member))
    return total


Model = LoraAdapter | Composite | None


def model_probs(
    backend: DualEncoder, model: Model, data: Examples | torch.Tensor, classes: Sequence[str]
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
