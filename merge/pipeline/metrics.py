"""Classification metrics on class probabilities: accuracy, macro-F1 and macro one-vs-rest AUC."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Metrics:
    """Accuracy and macro AUC (NaN when no class has both positives and negatives)."""

    accuracy: float
    auc: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "auc": self.auc, "n": float(self.n)}


def binary_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Mann-Whitney AUC with average ranks for ties (what sklearn's roc_auc_score gives)."""
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores.double())
    rank_sum = float(ranks[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    i = 0
    n = x.numel()
    while i < n:
        j = i
        while j + 1 < n and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1  # 1-based average rank of the tie group
        i = j + 1
    return ranks


def macro_auc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean one-vs-rest AUC over the classes that have both positives and negatives."""
    aucs = [binary_auc(probs[:, c], labels == c) for c in range(probs.shape[1])]
    defined = [a for a in aucs if not math.isnan(a)]
    return sum(defined) / len(defined) if defined else math.nan


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> Metrics:
    """Accuracy (argmax; ties go to the lowest class) and macro AUC of ``probs [n, c]``."""
    accuracy = float((probs.argmax(dim=1) == labels).double().mean()) if len(labels) else math.nan
    return Metrics(accuracy=accuracy, auc=macro_auc(probs, labels), n=int(labels.numel()))


def macro_f1(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean per-class F1 of the argmax predictions (ties: the lowest class), over the classes
    that occur among the labels or the predictions: sklearn's ``f1_score(average="macro")``.
    A class that is true or predicted but never hit counts 0; NaN when there is no example."""
    if not len(labels):
        return math.nan
    predicted = probs.argmax(dim=1)
    f1s = []
    for c in sorted(set(labels.tolist()) | set(predicted.tolist())):
        hit = int(((predicted == c) & (labels == c)).sum())
        wrong = int((predicted != labels).logical_and((predicted == c) | (labels == c)).sum())
        f1s.append(2 * hit / (2 * hit + wrong))
    return sum(f1s) / len(f1s)


@dataclass(frozen=True)
class Scores:
    """What ``medforge evaluate`` reports per task: accuracy, macro-F1 and macro AUC (NaN when
    undefined: no example, or no class with both positives and negatives)."""

    accuracy: float
    macro_f1: float
    auc: float
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready: NaN becomes None (strict JSON has no NaN)."""
        return {
            "accuracy": _finite_or_none(self.accuracy),
            "macro_f1": _finite_or_none(self.macro_f1),
            "auc": _finite_or_none(self.auc),
            "n": self.n,
        }


def scores(probs: torch.Tensor, labels: torch.Tensor) -> Scores:
    """Accuracy, macro-F1 and macro AUC of ``probs [n, c]`` against integer ``labels [n]``."""
    m = classification_metrics(probs, labels)
    return Scores(m.accuracy, macro_f1(probs, labels), m.auc, m.n)


def mean_scores(rows: Sequence[Scores]) -> Scores:
    """The unweighted mean over tasks of each score, over the tasks where it is defined (each
    task counts once, whatever its size); ``n`` is the total."""
    return Scores(
        accuracy=_mean_defined([r.accuracy for r in rows]),
        macro_f1=_mean_defined([r.macro_f1 for r in rows]),
        auc=_mean_defined([r.auc for r in rows]),
        n=sum(r.n for r in rows),
    )


def _mean_defined(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


def _finite_or_none(x: float) -> float | None:
    return None if math.isnan(x) else x
